"""Readers: one function per released dataset format, each returning a raw `Dataset`.

Formats (see DESIGN.md §2): RecBole atomic files, MovieLens (`u.data`, `ratings.dat`,
`ratings.csv`), Coat (Schnabel et al., ICML 2016, "Recommendations as Treatments"),
Yahoo! R3 (Marlin & Zemel, RecSys 2009), one-sequence-per-line text (the S3-Rec / ICLRec
release format), csv / parquet tables and pandas DataFrames.

Readers do not clean: duplicates, NaN ratings (empty fields, literal "nan") and out-of-range
values of the open formats are kept for `cleaning` to drop and count. What a reader rejects is
text that does not follow its format (a wrong number of fields, a rating that is not a
number, a header that does not match, an empty file); the `DataFormatError` names the file
and the 1-based line. Files may use LF or CRLF line endings.

Every reader sets `meta`: `name`, `format`, `path`, `implicit`, `rating_scale` ((min, max),
or None when unknown or implicit) and `raw_rows` (interactions read, before any cleaning).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN, Dataset, from_arrays
from causalrec_jax.errors import DataFormatError

PathLike = str | os.PathLike

ROLES = ("user", "item", "rating", "timestamp")
FORMATS = (
    "recbole",
    "movielens",
    "coat",
    "yahoo_r3",
    "seq_lines",
    "csv",
    "parquet",
    "dataframe",
)

# A categorical side field is an identifier or free text (a zip code, a movie title), not a
# feature, when it has more distinct values than half its rows. Fields with few distinct
# values are always kept so that tiny files (three users, two genders) keep their features.
FREE_TEXT_UNIQUE_FRACTION = 0.5
ALWAYS_KEPT_DISTINCT_VALUES = 20

# The 19 genres of MovieLens 100K, in the column order of `u.item` (used without `u.genre`).
MOVIELENS_100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


# --------------------------------------------------------------------------------------------
# Where rows came from, so that every error names the file and line (or frame row).


@dataclass(frozen=True)
class _Where:
    """Names the origin of row `i` of parsed values in error messages.

    Attributes:
        path: the file read, or None for an in-memory DataFrame.
        line_numbers: `[n]` 1-based file line of each row, or None (parquet, DataFrame).
        row_labels: `[n]` DataFrame index labels, or None.
    """

    path: str | None
    line_numbers: np.ndarray | None = None
    row_labels: np.ndarray | None = None

    def error(self, row: int, message: str) -> DataFormatError:
        if self.line_numbers is not None:
            return DataFormatError(message, path=self.path, line=int(self.line_numbers[row]))
        if self.path is not None:
            return DataFormatError(f"row index {row}: {message}", path=self.path)
        label = row if self.row_labels is None else self.row_labels[row]
        # numpy scalars would print as np.int64(11); the user wrote 11.
        label = label.item() if isinstance(label, np.generic) else label
        return DataFormatError(f"row index {label!r}: {message}")


@dataclass(frozen=True)
class _Rows:
    """The fields of the non-blank lines of a text file.

    Attributes:
        fields: `[n_rows, n_fields]` object array of str.
        where: origin of each row (file and line numbers).
    """

    fields: np.ndarray
    where: _Where

    def __len__(self) -> int:
        return len(self.fields)


# --------------------------------------------------------------------------------------------
# Public readers.


def read_dataset(
    format: str,
    path: PathLike | None = None,
    *,
    columns: Mapping[str, str] | None = None,
    sep: str = ",",
    frame: pd.DataFrame | None = None,
) -> Dataset:
    """Reads a dataset in one of the formats of DESIGN.md §2.

    Args:
        format: one of `FORMATS`.
        path: file or folder (unused for "dataframe").
        columns: csv / parquet / dataframe: role (`user`, `item`, `rating`, `timestamp`) to
            column name; None or empty uses the default names.
        sep: csv field separator.
        frame: the DataFrame of format "dataframe".

    Returns:
        The raw (uncleaned) Dataset.
    """
    if format not in FORMATS:
        raise DataFormatError(
            f"unknown data format {format!r}; expected one of {', '.join(FORMATS)}"
        )
    columns = columns or None
    if format == "dataframe":
        if frame is None:
            raise DataFormatError("format 'dataframe' needs a pandas DataFrame (frame=...)")
        return from_dataframe(frame, columns)
    if path is None or str(path) == "":
        raise DataFormatError(f"format {format!r} needs a path to read")
    _existing(path)
    if format in ("csv", "parquet"):
        return read_table(path, columns, sep=sep, kind=format)
    readers: dict[str, Callable[[PathLike], Dataset]] = {
        "recbole": read_recbole,
        "movielens": read_movielens,
        "coat": read_coat,
        "yahoo_r3": read_yahoo_r3,
        "seq_lines": read_seq_lines,
    }
    return readers[format](path)


def read_recbole(path: PathLike) -> Dataset:
    """Reads RecBole atomic files: `NAME.inter` and, when present, `NAME.user` / `NAME.item`.

    The header holds `field:type` cells (types `token`, `token_seq`, `float`, `float_seq`),
    tab-separated. Fields used: `user_id`, `item_id`, `rating` (else a float field whose name
    contains "rating" or "label"; none means implicit feedback) and `timestamp`.

    Side files become features aligned to the id maps (users or items the interactions do
    not mention are ignored; ids without a side row get zeros): `token` fields one-hot
    (`field=value`), `token_seq` fields multi-hot over their space-separated tokens, `float`
    fields as they are (empty = 0). A token or token_seq field with more distinct values than
    half its rows (and more than 20) is an identifier or free text (zip code, movie title)
    and is skipped; `float_seq` fields are skipped.

    Args:
        path: the folder holding `NAME.inter`, or the `.inter` file itself.

    Returns:
        Dataset with `user_features` `[n_users, d_user]` and `item_features`
        `[n_items, d_item]` when side files with usable fields exist.
    """
    inter_path = _recbole_inter_file(_existing(path))
    header, rows = _read_recbole_file(inter_path, required=("user_id", "item_id"))
    if not len(rows):
        raise DataFormatError("no interactions after the header", path=str(inter_path), line=2)
    user = _ids(rows, header.index("user_id"))
    item = _ids(rows, header.index("item_id"))
    rating_field = _recbole_rating_field(header)
    rating = None
    if rating_field is not None:
        rating = _numbers(_column(rows, header.index(rating_field)), rows.where, rating_field)
    timestamp = None
    if "timestamp" in header.names:
        timestamp = _numbers(_column(rows, header.index("timestamp")), rows.where, "timestamp")
    dataset = from_arrays(
        user,
        item,
        rating,
        timestamp,
        meta=_meta(inter_path.stem, "recbole", path, rating, len(rows)),
    )
    user_features, user_names = _recbole_side_features(
        inter_path.with_suffix(".user"), "user_id", dataset.user_ids
    )
    item_features, item_names = _recbole_side_features(
        inter_path.with_suffix(".item"), "item_id", dataset.item_ids
    )
    return dataset.replace(
        user_features=user_features,
        user_feature_names=user_names,
        item_features=item_features,
        item_feature_names=item_names,
    )


def read_movielens(path: PathLike) -> Dataset:
    """Reads a GroupLens MovieLens release, picking the ratings file by its name.

    `u.data` (ML-100K: tab-separated `user item rating timestamp`), `ratings.dat`
    (ML-1M / 10M: `user::item::rating::timestamp`) or `ratings.csv` (ML-latest / 20M / 25M:
    header `userId,movieId,rating,timestamp`). Ids must be positive integers. When the folder
    also holds them, item genres become multi-hot `item_features` (`u.item` with `u.genre`,
    `movies.dat`, `movies.csv`) and user gender, age and occupation one-hot `user_features`
    (`u.user`, `users.dat`).

    Args:
        path: the release folder or the ratings file.

    Returns:
        Dataset with ratings and Unix-second timestamps.
    """
    ratings_path = _movielens_ratings_file(_existing(path))
    name = ratings_path.name
    if name == "ratings.csv":
        _expect_header(ratings_path, "userId,movieId,rating,timestamp", ",")
    separator = {"ratings.csv": ",", "u.data": "\t"}.get(name, "::")
    values, where = _read_number_rows(
        ratings_path,
        separator,
        ("user id", "item id", "rating", "timestamp"),
        skip_lines=1 if name == "ratings.csv" else 0,
    )
    user = _positive_ids(values[:, 0], where, "user id")
    item = _positive_ids(values[:, 1], where, "item id")
    rating, timestamp = values[:, 2], values[:, 3]
    scale = (0.5, 5.0) if name == "ratings.csv" else (1.0, 5.0)
    dataset = from_arrays(
        user,
        item,
        rating,
        timestamp,
        meta={
            **_meta(ratings_path.parent.name, "movielens", path, rating, len(rating)),
            "rating_scale": scale,
        },
    )
    folder = ratings_path.parent
    item_features, item_names = _movielens_item_features(folder, dataset.item_ids)
    user_features, user_names = _movielens_user_features(folder, dataset.user_ids)
    return dataset.replace(
        user_features=user_features,
        user_feature_names=user_names,
        item_features=item_features,
        item_feature_names=item_names,
    )


def read_coat(path: PathLike) -> Dataset:
    """Reads the Coat shopping dataset (Schnabel et al., ICML 2016).

    `train.ascii` (MNAR, self-selected) and `test.ascii` (MAR, uniformly drawn) are
    `[n_users, n_items]` matrices of ratings 0..5, 0 meaning not rated. Users are rows and
    items columns, with external ids "1".."N" (1-based, as in the literature); the id maps
    hold every row and column. Optional: `propensities.ascii` (`[n_users, n_items]`) and,
    in `user_item_features/` (or the folder itself), `user_features.ascii` /
    `item_features.ascii` with column names in `*_features_map.txt` (one name a line).

    Args:
        path: the Coat folder.

    Returns:
        Dataset of the nonzero entries (train ones first, row-major), `given_split` GIVEN_TRAIN
        / GIVEN_TEST, `propensity_matrix` and features when their files exist,
        `meta["mnar_train_mar_test"] = True`.
    """
    folder = _existing(path)
    train = _read_rating_matrix(_required_file(folder, "train.ascii"))
    test_path = _required_file(folder, "test.ascii")
    test = _read_rating_matrix(test_path)
    if train.shape != test.shape:
        raise DataFormatError(
            f"test matrix is {test.shape[0]} x {test.shape[1]} but train.ascii is "
            f"{train.shape[0]} x {train.shape[1]}; expected equal shapes",
            path=str(test_path),
        )
    n_users, n_items = train.shape
    train_user, train_item = np.nonzero(train)
    test_user, test_item = np.nonzero(test)
    user = np.concatenate([train_user, test_user]) + 1
    item = np.concatenate([train_item, test_item]) + 1
    rating = np.concatenate([train[train_user, train_item], test[test_user, test_item]])
    given_split = np.concatenate(
        [np.full(len(train_user), GIVEN_TRAIN), np.full(len(test_user), GIVEN_TEST)]
    )
    dataset = from_arrays(
        user,
        item,
        rating,
        given_split=given_split,
        user_ids=np.arange(1, n_users + 1),
        item_ids=np.arange(1, n_items + 1),
        meta={
            **_meta("coat", "coat", path, rating, len(rating)),
            "rating_scale": (1.0, 5.0),
            "mnar_train_mar_test": True,
        },
    )
    user_features, user_names = _coat_features(folder, "user", n_users)
    item_features, item_names = _coat_features(folder, "item", n_items)
    return dataset.replace(
        propensity_matrix=_coat_propensities(folder, train.shape),
        user_features=user_features,
        user_feature_names=user_names,
        item_features=item_features,
        item_feature_names=item_names,
    )


YAHOO_TRAIN_FILE = "ydata-ymusic-rating-study-v1_0-train.txt"
YAHOO_TEST_FILE = "ydata-ymusic-rating-study-v1_0-test.txt"


def read_yahoo_r3(path: PathLike) -> Dataset:
    """Reads Yahoo! R3 music ratings (Marlin & Zemel, RecSys 2009).

    Two files of whitespace-separated `user item rating` lines, ids starting at 1, ratings
    1..5: the train file holds ratings users chose to give (MNAR), the test file ratings of
    10 songs drawn at random for each of the first 5,400 users (MAR).

    Args:
        path: the folder holding `YAHOO_TRAIN_FILE` and `YAHOO_TEST_FILE`.

    Returns:
        Dataset with `given_split` GIVEN_TRAIN / GIVEN_TEST and
        `meta["mnar_train_mar_test"] = True`.
    """
    folder = _existing(path)
    parts = []
    for file_name, split_code in ((YAHOO_TRAIN_FILE, GIVEN_TRAIN), (YAHOO_TEST_FILE, GIVEN_TEST)):
        values, where = _read_number_rows(
            _required_file(folder, file_name), None, ("user id", "item id", "rating")
        )
        _check_range(values[:, 2], where, "rating", 1.0, 5.0)
        parts.append(
            (
                _positive_ids(values[:, 0], where, "user id"),
                _positive_ids(values[:, 1], where, "item id"),
                values[:, 2],
                np.full(len(values), split_code),
            )
        )
    user, item, rating, given_split = (
        np.concatenate(values) for values in zip(*parts, strict=True)
    )
    return from_arrays(
        user,
        item,
        rating,
        given_split=given_split,
        meta={
            **_meta("yahoo_r3", "yahoo_r3", path, rating, len(rating)),
            "rating_scale": (1.0, 5.0),
            "mnar_train_mar_test": True,
        },
    )


def read_seq_lines(path: PathLike) -> Dataset:
    """Reads one sequence per line, `user item item ...` in time order (e.g. `Beauty.txt`).

    Implicit feedback; the timestamp of an interaction is its position in the line
    (0, 1, 2, ...), which keeps each user's order for temporal splits.

    Args:
        path: the file, or a folder holding exactly one `.txt` file.

    Returns:
        Dataset with one row per (user, item) occurrence.
    """
    file_path = _single_txt_file(_existing(path))
    users, items, positions, line_numbers = [], [], [], []
    for line_number, line in _numbered_lines(file_path):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) == 1:
            raise DataFormatError(
                f"user {tokens[0]!r} has no items; expected 'user item item ...'",
                path=str(file_path),
                line=line_number,
            )
        users.extend([tokens[0]] * (len(tokens) - 1))
        items.extend(tokens[1:])
        positions.extend(range(len(tokens) - 1))
        line_numbers.append(line_number)
    if not line_numbers:
        raise _empty_file(file_path, "lines 'user item item ...'")
    return from_arrays(
        np.array(users, dtype=object),
        np.array(items, dtype=object),
        None,
        np.array(positions, dtype=np.float64),
        meta=_meta(file_path.stem, "seq_lines", path, None, len(users)),
    )


def read_table(
    path: PathLike,
    columns: Mapping[str, str] | None,
    *,
    sep: str = ",",
    kind: str | None = None,
) -> Dataset:
    """Reads a csv or parquet table whose columns are mapped to roles.

    Args:
        path: the table file.
        columns: role (`user`, `item`, `rating`, `timestamp`) to column name; user and item
            are required, no rating means implicit feedback. None uses the default names
            (`user`/`user_id`, `item`/`item_id`, `rating`, `timestamp`).
        sep: csv field separator.
        kind: "csv" or "parquet"; None infers it from the suffix (`.parquet`, `.pq` are
            parquet, anything else csv).

    Returns:
        Dataset; timestamps are numbers or, when the column holds dates, Unix seconds.
    """
    file_path = _existing(path)
    kind = kind or ("parquet" if file_path.suffix.lower() in (".parquet", ".pq") else "csv")
    if kind not in ("csv", "parquet"):
        raise DataFormatError(f"unknown table kind {kind!r}; expected 'csv' or 'parquet'")
    if kind == "csv":
        frame = _read_csv_frame(file_path, sep)
        # Row i of the frame is line i + 2: the header is line 1 and blank lines were kept.
        line_numbers = np.arange(len(frame)) + 2
        not_blank = _non_blank_rows(frame)
        frame = frame.iloc[not_blank]
        where = _Where(str(file_path), line_numbers=line_numbers[not_blank])
    else:
        frame = pd.read_parquet(file_path)
        where = _Where(str(file_path))
    if not len(frame):
        raise DataFormatError("no rows after the header", path=str(file_path), line=2)
    roles = _resolve_columns(frame, columns, f"file {file_path}")
    return _frame_to_dataset(frame, roles, where, name=file_path.stem, format_name=kind, path=path)


def from_dataframe(frame: pd.DataFrame, columns: Mapping[str, str] | None = None) -> Dataset:
    """Builds a Dataset from a pandas DataFrame whose columns are mapped to roles.

    Args:
        frame: `[n, ...]` interactions, one row each.
        columns: role to column name as in `read_table`; None uses the default names.

    Returns:
        Dataset with `meta["format"] == "dataframe"`.
    """
    if not len(frame):
        raise DataFormatError("the dataframe has no rows")
    roles = _resolve_columns(frame, columns, "the dataframe")
    where = _Where(None, row_labels=np.asarray(frame.index))
    return _frame_to_dataset(
        frame, roles, where, name="dataframe", format_name="dataframe", path=None
    )


# --------------------------------------------------------------------------------------------
# Reading text: lines, fields, numbers.


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataFormatError("no such file or folder", path=str(path))
    return path


def _required_file(folder: Path, name: str) -> Path:
    file_path = folder / name
    if not file_path.is_file():
        raise DataFormatError(f"expected the file {name} in this folder", path=str(folder))
    return file_path


def _read_text(path: Path) -> str:
    # Text mode turns CRLF into LF. Old releases (MovieLens `u.item`) are latin-1, not UTF-8.
    try:
        # "utf-8-sig" also drops the byte-order mark some spreadsheet exports start with.
        with open(path, encoding="utf-8-sig") as handle:
            return handle.read()
    except UnicodeDecodeError:
        with open(path, encoding="latin-1") as handle:
            return handle.read()


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """`(line_number, line)` of each line, 1-based, without line endings."""
    lines = _read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return list(enumerate(lines, start=1))


def _empty_file(path: Path, expected: str) -> DataFormatError:
    return DataFormatError(f"the file is empty; expected {expected}", path=str(path), line=1)


def _split_lines(path: Path, separator: str | None, *, n_fields: int, skip_lines: int = 0) -> _Rows:
    """Splits the non-blank lines of a file into exactly `n_fields` fields each.

    Args:
        path: the file.
        separator: field separator; None splits on runs of whitespace.
        n_fields: fields expected on every line.
        skip_lines: header lines to skip.
    """
    numbered = [
        (number, line) for number, line in _numbered_lines(path)[skip_lines:] if line.strip()
    ]
    if not numbered:
        raise _empty_file(path, f"lines of {n_fields} fields")
    split = [line.split(separator) for _, line in numbered]
    lengths = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
    wrong = np.flatnonzero(lengths != n_fields)
    if wrong.size:
        first = int(wrong[0])
        raise DataFormatError(
            f"expected {n_fields} fields separated by {_separator_name(separator)}, "
            f"found {lengths[first]}",
            path=str(path),
            line=numbered[first][0],
        )
    fields = np.empty((len(split), n_fields), dtype=object)
    fields[:] = split
    line_numbers = np.fromiter((number for number, _ in numbered), dtype=np.int64)
    return _Rows(fields, _Where(str(path), line_numbers=line_numbers))


def _read_number_rows(
    path: Path, separator: str | None, field_names: Sequence[str], *, skip_lines: int = 0
) -> tuple[np.ndarray, _Where]:
    """Reads a file of numeric fields as `[n_rows, n_fields]` float64.

    pandas' C parser reads a well-formed file quickly; on any doubt (a parse error, a wrong
    field count, an empty field, blank lines that shift line numbers) the exact line-by-line
    parser reads it again, so that errors name the first bad line.

    Args:
        path: the file.
        separator: field separator; None splits on runs of whitespace.
        field_names: what each field holds, for error messages.
        skip_lines: header lines to skip.

    Returns:
        The values and, for error messages, the line of each row.
    """
    fast = _fast_number_rows(path, separator, len(field_names), skip_lines)
    if fast is not None:
        return fast
    rows = _split_lines(path, separator, n_fields=len(field_names), skip_lines=skip_lines)
    columns = [
        _numbers(_column(rows, index), rows.where, name) for index, name in enumerate(field_names)
    ]
    return np.stack(columns, axis=1), rows.where


def _fast_number_rows(
    path: Path, separator: str | None, n_fields: int, skip_lines: int
) -> tuple[np.ndarray, _Where] | None:
    """The values when pandas parses the file cleanly, one row per line; else None."""
    text = _read_text(path)
    n_lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    # "::" would need pandas' slow Python engine; ":" splits it into fields with empty ones
    # in between, which must all be empty for the file to be well-formed.
    pandas_separator = {None: r"\s+", "::": ":"}.get(separator, separator)
    width = 2 * n_fields - 1 if separator == "::" else n_fields
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=pandas_separator,
            header=None,
            skiprows=skip_lines,
            dtype=np.float64,
            engine="c",
        )
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    values = frame.to_numpy(dtype=np.float64)
    if values.shape != (n_lines - skip_lines, width):
        return None
    if separator == "::":
        if not np.isnan(values[:, 1::2]).all():
            return None
        values = values[:, 0::2]
    if np.isnan(values).any():
        return None
    line_numbers = np.arange(skip_lines + 1, n_lines + 1)
    return values, _Where(str(path), line_numbers=line_numbers)


def _separator_name(separator: str | None) -> str:
    return {None: "whitespace", "\t": "tabs", ",": "commas"}.get(separator, repr(separator))


def _expect_header(path: Path, expected: str, separator: str) -> None:
    numbered = _numbered_lines(path)
    if not numbered or not numbered[0][1].strip():
        raise _empty_file(path, f"the header {expected!r}")
    found = [cell.strip() for cell in numbered[0][1].split(separator)]
    if found != expected.split(separator):
        raise DataFormatError(
            f"header is {numbered[0][1].strip()!r}, expected {expected!r}", path=str(path), line=1
        )


def _column(rows: _Rows, index: int) -> np.ndarray:
    """`[n_rows]` str field `index` of every row, surrounding whitespace removed."""
    return np.array([value.strip() for value in rows.fields[:, index]], dtype=object)


def _numbers(values: np.ndarray, where: _Where, what: str) -> np.ndarray:
    """Parses `[n]` values as float64; empty or "nan" gives NaN, other text an error."""
    values = np.asarray(values)
    try:
        return values.astype(np.float64)
    except (ValueError, TypeError):
        pass  # Some value is empty or text: find which, slowly.
    series = pd.Series(values, dtype=object)
    parsed = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    text = series.astype(str).str.strip().str.lower()
    missing = pd.isna(series).to_numpy() | text.isin(["", "nan"]).to_numpy()
    bad = np.flatnonzero(np.isnan(parsed) & ~missing)
    if bad.size:
        first = int(bad[0])
        raise where.error(first, f"{what} {values[first]!r} is not a number")
    return parsed


def _positive_ids(values: np.ndarray, where: _Where, what: str) -> np.ndarray:
    """Parses `[n]` ids that must be integers >= 1 (MovieLens, Yahoo! R3) as int64."""
    numbers = _numbers(values, where, what)
    bad = np.flatnonzero(~np.isfinite(numbers) | (numbers < 1) | (numbers != np.round(numbers)))
    if bad.size:
        first = int(bad[0])
        raise where.error(
            first, f"{what} {numbers[first]:g} is not a positive integer (ids start at 1)"
        )
    return numbers.astype(np.int64)


def _check_range(values: np.ndarray, where: _Where, what: str, low: float, high: float) -> None:
    bad = np.flatnonzero((values < low) | (values > high))
    if bad.size:
        first = int(bad[0])
        raise where.error(first, f"{what} {values[first]:g} is outside {low:g}..{high:g}")


def _ids(rows: _Rows, index: int) -> np.ndarray:
    """`[n]` external id strings of field `index`; an empty id is an error."""
    values = _column(rows, index)
    empty = np.flatnonzero(values == "")
    if empty.size:
        raise rows.where.error(int(empty[0]), f"empty id in field {index + 1}")
    return values


def _meta(
    name: str, format_name: str, path: PathLike | None, rating: np.ndarray | None, n_rows: int
) -> dict[str, Any]:
    """The `meta` every reader sets; `rating_scale` is the observed range unless overridden."""
    scale = None
    if rating is not None and np.isfinite(rating).any():
        scale = (float(np.nanmin(rating)), float(np.nanmax(rating)))
    return {
        "name": name,
        "format": format_name,
        "path": None if path is None else str(path),
        "implicit": rating is None,
        "rating_scale": scale,
        "raw_rows": int(n_rows),
    }


# --------------------------------------------------------------------------------------------
# Categorical features shared by RecBole and MovieLens side files.


def _is_free_text(values: Sequence[str]) -> bool:
    """True when a field has too many distinct values to be a category (ids, titles)."""
    distinct = len(set(values))
    return distinct > max(FREE_TEXT_UNIQUE_FRACTION * len(values), ALWAYS_KEPT_DISTINCT_VALUES)


def _multi_hot(
    field_name: str, tokens_per_row: Sequence[Sequence[str]], target_rows: np.ndarray, n_out: int
) -> tuple[np.ndarray, list[str]]:
    """Multi-hot encodes one categorical field (one-hot when each row has one token).

    Args:
        field_name: prefix of the column names (`field=value`).
        tokens_per_row: `[n_rows]` tokens of each side-file row.
        target_rows: `[n_rows]` output row of each side-file row, -1 to ignore it.
        n_out: rows of the output (users or items of the dataset).

    Returns:
        `[n_out, n_values]` float32 matrix and its column names.
    """
    vocabulary = _sorted_tokens({token for tokens in tokens_per_row for token in tokens if token})
    column_of = {token: column for column, token in enumerate(vocabulary)}
    matrix = np.zeros((n_out, len(vocabulary)), dtype=np.float32)
    for target, tokens in zip(target_rows, tokens_per_row, strict=True):
        if target >= 0:
            matrix[target, [column_of[token] for token in tokens if token]] = 1.0
    return matrix, [f"{field_name}={token}" for token in vocabulary]


def _sorted_tokens(tokens: set[str]) -> list[str]:
    """Tokens in numeric order when all are integers (ages: 7 before 10), else text order."""
    if all(token.lstrip("-").isdigit() for token in tokens):
        return sorted(tokens, key=int)
    return sorted(tokens)


def _target_rows(external_ids: Sequence[str], id_map: np.ndarray) -> np.ndarray:
    """`[n_rows]` index of each side-file id in the dataset's id map, -1 when absent."""
    index_of = {external: index for index, external in enumerate(id_map)}
    return np.fromiter(
        (index_of.get(external, -1) for external in external_ids),
        dtype=np.int64,
        count=len(external_ids),
    )


def _stack_features(
    blocks: list[tuple[np.ndarray, list[str]]],
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    blocks = [(matrix, names) for matrix, names in blocks if matrix.shape[1]]
    if not blocks:
        return None, None
    matrix = np.concatenate([matrix for matrix, _ in blocks], axis=1).astype(np.float32)
    return matrix, tuple(name for _, names in blocks for name in names)


# --------------------------------------------------------------------------------------------
# RecBole.

_RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


@dataclass(frozen=True)
class _RecboleHeader:
    """Field names and types of a RecBole header line."""

    names: list[str]
    types: list[str]

    def index(self, name: str) -> int:
        return self.names.index(name)


def _recbole_inter_file(path: Path) -> Path:
    if path.is_file():
        return path
    candidates = sorted(path.glob("*.inter"))
    named = [candidate for candidate in candidates if candidate.stem == path.name]
    if named:
        return named[0]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DataFormatError("expected a RecBole NAME.inter file in this folder", path=str(path))
    raise DataFormatError(
        f"several .inter files ({', '.join(c.name for c in candidates)}); pass one of them",
        path=str(path),
    )


def _parse_recbole_header(path: Path, line: str, required: Sequence[str]) -> _RecboleHeader:
    names, types = [], []
    for cell in line.split("\t"):
        name, colon, type_name = cell.strip().rpartition(":")
        if not colon or not name:
            raise DataFormatError(
                f"header field {cell.strip()!r} is not 'name:type'", path=str(path), line=1
            )
        if type_name not in _RECBOLE_TYPES:
            raise DataFormatError(
                f"header field {cell.strip()!r} has unknown type {type_name!r}; expected one "
                f"of {', '.join(_RECBOLE_TYPES)}",
                path=str(path),
                line=1,
            )
        names.append(name)
        types.append(type_name)
    for name in required:
        if name not in names:
            raise DataFormatError(
                f"header has no {name}: field (found {', '.join(names)})", path=str(path), line=1
            )
    return _RecboleHeader(names, types)


def _read_recbole_file(path: Path, required: Sequence[str]) -> tuple[_RecboleHeader, _Rows]:
    numbered = _numbered_lines(path)
    if not numbered or not numbered[0][1].strip():
        raise _empty_file(path, "a header of 'name:type' fields")
    header = _parse_recbole_header(path, numbered[0][1], required)
    if len(numbered) == 1 or not any(line.strip() for _, line in numbered[1:]):
        return header, _Rows(
            np.empty((0, len(header.names)), dtype=object),
            _Where(str(path), line_numbers=np.empty(0, dtype=np.int64)),
        )
    return header, _split_lines(path, "\t", n_fields=len(header.names), skip_lines=1)


def _recbole_rating_field(header: _RecboleHeader) -> str | None:
    if "rating" in header.names:
        return "rating"
    for name, type_name in zip(header.names, header.types, strict=True):
        if type_name == "float" and ("rating" in name or "label" in name):
            return name
    return None


def _recbole_side_features(
    path: Path, id_field: str, id_map: np.ndarray
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """Features of a `.user` / `.item` file aligned to `id_map`; (None, None) without one."""
    if not path.is_file():
        return None, None
    header, rows = _read_recbole_file(path, required=(id_field,))
    target_rows = _target_rows(_ids(rows, header.index(id_field)), id_map)
    blocks = []
    for index, (name, type_name) in enumerate(zip(header.names, header.types, strict=True)):
        if name == id_field or type_name == "float_seq":
            continue
        values = _column(rows, index)
        if type_name == "float":
            numbers = np.nan_to_num(_numbers(values, rows.where, name))
            column = np.zeros((len(id_map), 1), dtype=np.float32)
            present = target_rows >= 0
            column[target_rows[present], 0] = numbers[present]
            blocks.append((column, [name]))
        elif not _is_free_text(list(values)):
            tokens = [value.split() if type_name == "token_seq" else [value] for value in values]
            blocks.append(_multi_hot(name, tokens, target_rows, len(id_map)))
    return _stack_features(blocks)


# --------------------------------------------------------------------------------------------
# MovieLens.

_MOVIELENS_RATING_FILES = ("u.data", "ratings.dat", "ratings.csv")


def _movielens_ratings_file(path: Path) -> Path:
    if path.is_file():
        if path.name not in _MOVIELENS_RATING_FILES:
            raise DataFormatError(
                "unknown MovieLens file name; expected one of "
                f"{', '.join(_MOVIELENS_RATING_FILES)}",
                path=str(path),
            )
        return path
    for name in _MOVIELENS_RATING_FILES:
        if (path / name).is_file():
            return path / name
    raise DataFormatError(
        f"expected a MovieLens ratings file ({', '.join(_MOVIELENS_RATING_FILES)}) in this folder",
        path=str(path),
    )


def _movielens_item_features(
    folder: Path, item_ids: np.ndarray
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """Multi-hot genres from `u.item`, `movies.dat` or `movies.csv`, when one exists."""
    if (folder / "u.item").is_file():
        genres = _movielens_100k_genre_names(folder)
        rows = _split_lines(folder / "u.item", "|", n_fields=5 + len(genres))
        flags = _numbers(rows.fields[:, 5:].ravel(), rows.where, "genre flag")
        flags = flags.reshape(len(rows), len(genres))
        tokens = [[genres[j] for j in np.flatnonzero(row == 1)] for row in flags]
        item_column = _column(rows, 0)
    elif (folder / "movies.dat").is_file():
        rows = _split_lines(folder / "movies.dat", "::", n_fields=3)
        item_column = _column(rows, 0)
        tokens = [value.split("|") for value in _column(rows, 2)]
    elif (folder / "movies.csv").is_file():
        frame = _read_csv_frame(folder / "movies.csv", ",")
        if "movieId" not in frame.columns or "genres" not in frame.columns:
            raise DataFormatError(
                "expected the header movieId,title,genres", path=str(folder / "movies.csv"), line=1
            )
        item_column = frame["movieId"].astype(str).str.strip().to_numpy(object)
        tokens = [value.split("|") for value in frame["genres"].astype(str)]
    else:
        return None, None
    tokens = [[token for token in row if token != "(no genres listed)"] for row in tokens]
    return _stack_features(
        [_multi_hot("genre", tokens, _target_rows(item_column, item_ids), len(item_ids))]
    )


def _movielens_100k_genre_names(folder: Path) -> tuple[str, ...]:
    """Genre names in `u.item` column order, from `u.genre` (`name|index`) when present."""
    genre_path = folder / "u.genre"
    if not genre_path.is_file():
        return MOVIELENS_100K_GENRES
    rows = _split_lines(genre_path, "|", n_fields=2)
    order = _numbers(_column(rows, 1), rows.where, "genre index").astype(np.int64)
    names = _column(rows, 0)
    return tuple(names[np.argsort(order)])


def _movielens_user_features(
    folder: Path, user_ids: np.ndarray
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """One-hot gender, age and occupation from `u.user` or `users.dat`, when one exists."""
    if (folder / "u.user").is_file():
        rows = _split_lines(folder / "u.user", "|", n_fields=5)
        fields = {"age": 1, "gender": 2, "occupation": 3}
    elif (folder / "users.dat").is_file():
        rows = _split_lines(folder / "users.dat", "::", n_fields=5)
        fields = {"gender": 1, "age": 2, "occupation": 3}
    else:
        return None, None
    target_rows = _target_rows(_column(rows, 0), user_ids)
    blocks = [
        _multi_hot(name, [[value] for value in _column(rows, index)], target_rows, len(user_ids))
        for name, index in fields.items()
    ]
    return _stack_features(blocks)


# --------------------------------------------------------------------------------------------
# Coat.


def _read_matrix(path: Path) -> np.ndarray:
    """A whitespace-separated matrix of numbers, `[n_rows, n_columns]` float64."""
    numbered = _numbered_lines(path)
    # Trailing blank lines are an artefact of the writer; blank lines inside are missing rows.
    while numbered and not numbered[-1][1].strip():
        numbered.pop()
    if not numbered:
        raise _empty_file(path, "a whitespace-separated matrix")
    split = [line.split() for _, line in numbered]
    width = len(split[0])
    for (line_number, _), cells in zip(numbered, split, strict=True):
        if not cells:
            raise DataFormatError(
                "blank line inside the matrix (a missing row)", path=str(path), line=line_number
            )
        if len(cells) != width:
            raise DataFormatError(
                f"row has {len(cells)} values, expected {width} (as on line 1)",
                path=str(path),
                line=line_number,
            )
    flat = np.array([cell for cells in split for cell in cells], dtype=object)
    line_numbers = np.repeat([number for number, _ in numbered], width)
    values = _numbers(flat, _Where(str(path), line_numbers=line_numbers), "value")
    bad = np.flatnonzero(np.isnan(values))
    if bad.size:
        raise DataFormatError(
            f"value {flat[bad[0]]!r} is missing; expected a number",
            path=str(path),
            line=int(line_numbers[bad[0]]),
        )
    return values.reshape(len(split), width)


def _read_rating_matrix(path: Path) -> np.ndarray:
    """A Coat rating matrix: integers 0..5, 0 = not rated."""
    matrix = _read_matrix(path)
    bad = np.argwhere((matrix < 0) | (matrix > 5) | (matrix != np.round(matrix)))
    if len(bad):
        row, column = bad[0]
        raise DataFormatError(
            f"value {matrix[row, column]:g} in column {column + 1} is not a rating 0..5",
            # Matrix rows are the file's leading lines: only trailing blank lines are skipped.
            path=str(path),
            line=int(row) + 1,
        )
    return matrix.astype(np.float32)


def _coat_propensities(folder: Path, shape: tuple[int, int]) -> np.ndarray | None:
    path = folder / "propensities.ascii"
    if not path.is_file():
        return None
    matrix = _read_matrix(path)
    if matrix.shape != shape:
        raise DataFormatError(
            f"propensity matrix is {matrix.shape[0]} x {matrix.shape[1]}, expected "
            f"{shape[0]} x {shape[1]} as train.ascii",
            path=str(path),
        )
    return matrix.astype(np.float32)


def _coat_features(
    folder: Path, kind: str, n_rows: int
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """`[n_rows, d]` features of `{kind}_features.ascii` with names from the map file."""
    for base in (folder / "user_item_features", folder):
        path = base / f"{kind}_features.ascii"
        if path.is_file():
            break
    else:
        return None, None
    matrix = _read_matrix(path)
    if matrix.shape[0] != n_rows:
        raise DataFormatError(
            f"{matrix.shape[0]} rows, expected one per {kind} ({n_rows})", path=str(path)
        )
    map_path = base / f"{kind}_features_map.txt"
    names = tuple(f"feature_{column}" for column in range(matrix.shape[1]))
    if map_path.is_file():
        names = tuple(line.strip() for _, line in _numbered_lines(map_path) if line.strip())
        if len(names) != matrix.shape[1]:
            raise DataFormatError(
                f"{len(names)} feature names, but {path.name} has {matrix.shape[1]} columns",
                path=str(map_path),
            )
    return matrix.astype(np.float32), names


# --------------------------------------------------------------------------------------------
# One sequence per line.


def _single_txt_file(path: Path) -> Path:
    if path.is_file():
        return path
    candidates = sorted(path.glob("*.txt"))
    if len(candidates) != 1:
        found = ", ".join(candidate.name for candidate in candidates) or "none"
        raise DataFormatError(
            f"expected exactly one .txt file in this folder, found {found}", path=str(path)
        )
    return candidates[0]


# --------------------------------------------------------------------------------------------
# Tables and DataFrames.


def _read_csv_frame(path: Path, sep: str) -> pd.DataFrame:
    """The csv as str cells, blank lines kept (so that row i is line i + 2)."""
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            encoding_errors="replace",
        )
    except pd.errors.EmptyDataError:
        raise _empty_file(path, "a header line of column names") from None
    except pd.errors.ParserError as error:
        raise DataFormatError(f"cannot parse the table: {error}", path=str(path)) from None
    frame.columns = [str(column).strip() for column in frame.columns]
    return frame


def _resolve_columns(
    frame: pd.DataFrame, columns: Mapping[str, str] | None, source: str
) -> dict[str, str]:
    """Role to column name, checked against the frame's columns."""
    present = [str(column) for column in frame.columns]
    if not columns:
        return _default_columns(present, source)
    unknown = [role for role in columns if role not in ROLES]
    if unknown:
        raise DataFormatError(
            f"unknown column role(s) {', '.join(map(repr, unknown))}; expected roles "
            f"{', '.join(ROLES)}"
        )
    for role in ("user", "item"):
        if role not in columns:
            raise DataFormatError(f"columns must map the role {role!r} to a column of {source}")
    for role, name in columns.items():
        if name not in present:
            raise DataFormatError(
                f"column {name!r} (role {role!r}) is not in {source}; columns present: "
                f"{', '.join(present)}"
            )
    return dict(columns)


def _default_columns(present: Sequence[str], source: str) -> dict[str, str]:
    roles = {}
    for role, candidates in (
        ("user", ("user", "user_id")),
        ("item", ("item", "item_id")),
        ("rating", ("rating",)),
        ("timestamp", ("timestamp",)),
    ):
        found = [name for name in candidates if name in present]
        if found:
            roles[role] = found[0]
        elif role in ("user", "item"):
            raise DataFormatError(
                f"no {role} column in {source} (looked for {' or '.join(candidates)}); columns "
                f"present: {', '.join(present)}; pass columns={{'{role}': ...}}"
            )
    return roles


def _non_blank_rows(frame: pd.DataFrame) -> np.ndarray:
    """Indices of the csv rows that are not blank lines (every cell empty)."""
    if not len(frame.columns):
        return np.arange(len(frame))
    blank = np.ones(len(frame), dtype=bool)
    for name in frame.columns:
        blank &= (frame[name].str.strip() == "").to_numpy()
    return np.flatnonzero(~blank)


def _frame_to_dataset(
    frame: pd.DataFrame,
    roles: Mapping[str, str],
    where: _Where,
    *,
    name: str,
    format_name: str,
    path: PathLike | None,
) -> Dataset:
    """Interactions from the mapped columns of a table or DataFrame."""
    label = "dataframe column" if where.path is None else "column"
    user = _frame_ids(frame[roles["user"]], where, f"{label} {roles['user']!r}")
    item = _frame_ids(frame[roles["item"]], where, f"{label} {roles['item']!r}")
    rating = None
    if "rating" in roles:
        rating = _numbers(
            frame[roles["rating"]].to_numpy(), where, f"{label} {roles['rating']!r} value"
        )
    timestamp = None
    if "timestamp" in roles:
        timestamp = _times(frame[roles["timestamp"]], where, f"{label} {roles['timestamp']!r}")
    meta = _meta(name, format_name, path, rating, len(frame))
    return from_arrays(user, item, rating, timestamp, meta=meta)


def _frame_ids(column: pd.Series, where: _Where, what: str) -> np.ndarray:
    values = column.to_numpy()
    if values.dtype.kind in "iu":
        return values
    missing = np.flatnonzero(pd.isna(column).to_numpy() | (column.astype(str).str.strip() == ""))
    if missing.size:
        raise where.error(int(missing[0]), f"{what} has an empty id")
    if values.dtype.kind == "f":
        return values
    return column.astype(str).str.strip().to_numpy(object)


def _times(column: pd.Series, where: _Where, what: str) -> np.ndarray:
    """`[n]` float64 times: numbers as they are, dates as Unix seconds."""
    if pd.api.types.is_datetime64_any_dtype(column):
        return _datetimes_to_seconds(column)
    values = column.to_numpy()
    try:
        return _numbers(values, where, f"{what} value")
    except DataFormatError as not_numeric:
        try:
            dates = pd.to_datetime(column.replace("", None), format="ISO8601")
        except (ValueError, TypeError):
            raise not_numeric from None
        return _datetimes_to_seconds(dates)


def _datetimes_to_seconds(dates: pd.Series) -> np.ndarray:
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_convert("UTC").dt.tz_localize(None)
    nanoseconds = dates.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(np.float64)
    seconds = nanoseconds / 1e9
    seconds[pd.isna(dates).to_numpy()] = np.nan
    return seconds
