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

Large delimited files (RecBole `.inter`, csv) are read fast: one numpy pass over the bytes
checks the field count of every line (so that errors name the exact line), then pandas' C
parser converts only the columns used. Text is decoded as UTF-8, else latin-1 (never with
replacement characters, which would merge distinct ids). Id columns are read as numbers only
when every value is a plain integer written canonically (`7`, not `007` or `+7`), so numeric
reading never merges ids that differ as text.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN, GIVEN_VALID, Dataset, from_arrays
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
    "simlog",
)

# A categorical side field is an identifier or free text (a zip code, a movie title), not a
# feature, when it has more distinct values than half its rows. Fields with few distinct
# values are always kept so that tiny files (three users, two genders) keep their features.
FREE_TEXT_UNIQUE_FRACTION = 0.5
ALWAYS_KEPT_DISTINCT_VALUES = 20
# A categorical side field with more distinct values (tokens, for token_seq) than this is
# skipped: one-hot columns for 100k brands or categories (Amazon item files) would take
# gigabytes and carry almost no signal per column. Skipped fields are listed in
# `meta["skipped_feature_fields"]`.
MAX_FEATURE_VOCABULARY = 1000

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
    if format == "simlog":
        # Imported here so that data/ never pulls in the simulator's jax code at import time.
        from causalrec_jax.sim.simlog import simlog_to_dataset

        return simlog_to_dataset(path)
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

    RecBole's pre-split benchmark files `NAME.train.inter`, `NAME.test.inter` (and
    `NAME.valid.inter`, optional) are read together, each row's file recorded in
    `given_split` (GIVEN_TRAIN / GIVEN_VALID / GIVEN_TEST); they are used when the folder has
    no plain `NAME.inter`, or when `path` is one of them. Their side files are still
    `NAME.user` / `NAME.item`.

    Side files become features aligned to the id maps (users or items the interactions do
    not mention are ignored; ids without a side row get zeros): `token` fields one-hot
    (`field=value`), `token_seq` fields multi-hot over their space-separated tokens, `float`
    fields as they are (empty = 0). Skipped, and listed in `meta["skipped_feature_fields"]`:
    a token or token_seq field with more distinct values than half its rows (and more than
    20), an identifier or free text (zip code, movie title); one with more than
    `MAX_FEATURE_VOCABULARY` distinct values (tokens); `float_seq` fields. An id on two rows
    of a side file is an error.

    Args:
        path: the folder holding `NAME.inter` (or the split files), or one `.inter` file.

    Returns:
        Dataset with `user_features` `[n_users, d_user]` and `item_features`
        `[n_items, d_item]` when side files with usable fields exist.
    """
    name, folder, files = _recbole_files(_existing(path))
    parts = []
    first: tuple[Path, dict[str, str]] | None = None
    for inter_path, split_code in files:
        header, columns, where = _read_recbole_table(
            inter_path, ("user_id", "item_id"), _recbole_inter_fields, ("user_id", "item_id")
        )
        fields = dict(zip(header.names, header.types, strict=True))
        if first is None:
            first = (inter_path, fields)
        elif fields != first[1]:
            raise DataFormatError(
                f"header fields {_header_text(fields)} differ from those of {first[0].name} "
                f"({_header_text(first[1])})",
                path=str(inter_path),
                line=1,
            )
        n_rows = len(where.line_numbers)
        if not n_rows:
            raise DataFormatError("no interactions after the header", path=str(inter_path), line=2)
        rating_field = _recbole_rating_field(header)
        parts.append(
            {
                "user": _recbole_ids(columns["user_id"], where, "user_id"),
                "item": _recbole_ids(columns["item_id"], where, "item_id"),
                "rating": None
                if rating_field is None
                else _numbers(columns[rating_field], where, rating_field),
                "timestamp": None
                if "timestamp" not in columns
                else _numbers(columns["timestamp"], where, "timestamp"),
                "given_split": None
                if split_code is None
                else np.full(n_rows, split_code, dtype=np.int8),
            }
        )
    user = _concatenate_ids([part["user"] for part in parts])
    item = _concatenate_ids([part["item"] for part in parts])
    rating, timestamp, given_split = (
        None if parts[0][key] is None else np.concatenate([part[key] for part in parts])
        for key in ("rating", "timestamp", "given_split")
    )
    dataset = from_arrays(
        user,
        item,
        rating,
        timestamp,
        given_split=given_split,
        meta=_meta(name, "recbole", path, rating, len(user)),
    )
    skipped: list[str] = []
    user_features, user_names = _recbole_side_features(
        folder / f"{name}.user", "user_id", dataset.user_ids, skipped
    )
    item_features, item_names = _recbole_side_features(
        folder / f"{name}.item", "item_id", dataset.item_ids, skipped
    )
    return dataset.replace(
        user_features=user_features,
        user_feature_names=user_names,
        item_features=item_features,
        item_feature_names=item_names,
        meta={**dataset.meta, "skipped_feature_fields": skipped},
    )


def read_movielens(path: PathLike) -> Dataset:
    """Reads a GroupLens MovieLens release, picking the ratings file by its name.

    `u.data` (ML-100K: tab-separated `user item rating timestamp`), `ratings.dat`
    (ML-1M / 10M: `user::item::rating::timestamp`) or `ratings.csv` (ML-latest / 20M / 25M:
    header `userId,movieId,rating,timestamp`). Ids must be positive integers. The rating scale
    is 1..5 whole stars for `u.data` and 0.5..5 in half stars for `ratings.dat` (ML-10M has
    half stars; ML-1M's whole stars lie inside that scale) and `ratings.csv`. When the folder
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
    scale = (1.0, 5.0) if name == "u.data" else (0.5, 5.0)
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
    whole numbers 1..5: the train file holds ratings users chose to give (MNAR), the test file
    ratings of 10 songs drawn at random for each of the first 5,400 users (MAR).

    Args:
        path: the folder holding `YAHOO_TRAIN_FILE` and `YAHOO_TEST_FILE`, or one of these
            two files (the other is read from the same folder).

    Returns:
        Dataset with `given_split` GIVEN_TRAIN / GIVEN_TEST and
        `meta["mnar_train_mar_test"] = True`.
    """
    folder = _existing(path)
    if folder.is_file():
        if folder.name not in (YAHOO_TRAIN_FILE, YAHOO_TEST_FILE):
            raise DataFormatError(
                f"expected the Yahoo! R3 folder or one of its files {YAHOO_TRAIN_FILE}, "
                f"{YAHOO_TEST_FILE}",
                path=str(folder),
            )
        folder = folder.parent
    parts = []
    for file_name, split_code in ((YAHOO_TRAIN_FILE, GIVEN_TRAIN), (YAHOO_TEST_FILE, GIVEN_TEST)):
        values, where = _read_number_rows(
            _required_file(folder, file_name), None, ("user id", "item id", "rating")
        )
        _check_range(values[:, 2], where, "rating", 1.0, 5.0)
        fractional = np.flatnonzero(values[:, 2] != np.round(values[:, 2]))
        if fractional.size:
            raise where.error(
                int(fractional[0]),
                f"rating {values[fractional[0], 2]:g} is not a whole number 1..5",
            )
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
    (0, 1, 2, ...), which keeps each user's order for leave-last-out splits but is no clock:
    `meta["timestamps_are_positions"]` is True, so that a global temporal cut is refused. An
    item repeated in a line is a real repeat event: `meta["default_dedupe"]` is "keep". A
    user on two lines is an error (their histories would interleave).

    Args:
        path: the file, or a folder holding exactly one `.txt` file.

    Returns:
        Dataset with one row per (user, item) occurrence.
    """
    file_path = _single_txt_file(_existing(path))
    users, items, positions = [], [], []
    line_of_user: dict[str, int] = {}
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
        user = tokens[0]
        if user in line_of_user:
            raise DataFormatError(
                f"user {user!r} already has a sequence on line {line_of_user[user]}; expected "
                "one line per user",
                path=str(file_path),
                line=line_number,
            )
        line_of_user[user] = line_number
        users.append(np.full(len(tokens) - 1, user, dtype=object))
        items.extend(tokens[1:])
        positions.append(np.arange(len(tokens) - 1, dtype=np.float64))
    if not line_of_user:
        raise _empty_file(file_path, "lines 'user item item ...'")
    dataset = from_arrays(
        np.concatenate(users),
        np.array(items, dtype=object),
        None,
        np.concatenate(positions),
        meta={
            **_meta(file_path.stem, "seq_lines", path, None, len(items)),
            "timestamps_are_positions": True,
            "default_dedupe": "keep",
        },
    )
    return dataset


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

    A csv row with more or fewer fields than the header is an error naming its line; an
    empty rating field is kept as NaN for cleaning. Lines that are blank (or hold only
    separators) are skipped. Fields may be quoted (`"a,b"`). A `sep` of more than one
    character is a regular expression, as in pandas.

    Returns:
        Dataset; timestamps are numbers or, when the column holds ISO 8601 dates, Unix
        seconds.
    """
    file_path = _existing(path)
    kind = kind or ("parquet" if file_path.suffix.lower() in (".parquet", ".pq") else "csv")
    if kind not in ("csv", "parquet"):
        raise DataFormatError(f"unknown table kind {kind!r}; expected 'csv' or 'parquet'")
    if kind == "parquet":
        frame = _read_parquet(file_path)
        if not len(frame):
            raise DataFormatError("the parquet file has no rows", path=str(file_path))
        roles = _resolve_columns(
            [str(column) for column in frame.columns], columns, f"file {file_path}"
        )
        return _frame_to_dataset(
            frame,
            roles,
            _Where(str(file_path)),
            name=file_path.stem,
            format_name=kind,
            path=path,
        )
    if file_path.is_dir():
        raise DataFormatError("is a folder; expected a csv file", path=str(file_path))
    _check_separator(sep)
    blob = _load_bytes(file_path)
    header = [cell.strip() for cell in _header_cells(blob, sep, "a header line of column names")]
    try:
        roles = _resolve_columns(header, columns, f"file {file_path}")
    except DataFormatError as error:
        if len(header) > 1:
            raise
        raise DataFormatError(
            f"the header splits into the single column {header[0]!r} on the separator "
            f"{sep!r}; pass the file's separator (sep=...). {error}",
            path=str(file_path),
            line=1,
        ) from None
    position = {role: header.index(name) for role, name in roles.items()}
    kinds = {position[role]: "number" for role in ("rating", "timestamp") if role in position}
    kinds.update({position[role]: "id" for role in ("user", "item")})
    values, where = _read_fields(blob, sep, len(header), kinds, quoting=True)
    if not len(where.line_numbers):
        raise DataFormatError("no rows after the header", path=str(file_path), line=2)
    user = _table_ids(values[position["user"]], where, f"column {roles['user']!r}")
    item = _table_ids(values[position["item"]], where, f"column {roles['item']!r}")
    rating = None
    if "rating" in roles:
        rating = _numbers(values[position["rating"]], where, f"column {roles['rating']!r} value")
    timestamp = None
    if "timestamp" in roles:
        timestamp = _times(
            pd.Series(values[position["timestamp"]]), where, f"column {roles['timestamp']!r}"
        )
    meta = _meta(file_path.stem, kind, path, rating, len(user))
    return from_arrays(user, item, rating, timestamp, meta=meta)


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
    roles = _resolve_columns([str(column) for column in frame.columns], columns, "the dataframe")
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


# --------------------------------------------------------------------------------------------
# Delimited files read fast: a numpy pass over the bytes, then pandas' C parser.

_UTF8_BOM = b"\xef\xbb\xbf"
# Powers 10**1 .. 10**19: the decimal length of a uint64 is 1 + how many of them it reaches.
_POWERS_OF_TEN = np.array([10**power for power in range(1, 20)], dtype=np.uint64)


@dataclass(frozen=True)
class _Blob:
    """The bytes of a text file (byte-order mark removed) and how to decode them."""

    path: Path
    data: bytes
    encoding: str

    def text(self) -> str:
        return self.data.decode(self.encoding)

    def first_line(self) -> str:
        end = self.data.find(b"\n")
        line = self.data if end < 0 else self.data[:end]
        return line.decode(self.encoding).rstrip("\r")


def _load_bytes(path: Path) -> _Blob:
    """Reads a file as bytes; UTF-8 when it decodes as such, else latin-1 (never lossy)."""
    if path.is_dir():
        raise DataFormatError("is a folder; expected a file", path=str(path))
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataFormatError(f"cannot read the file: {error}", path=str(path)) from None
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    try:
        data.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        encoding = "latin-1"
    return _Blob(path, data, encoding)


def _check_separator(sep: str) -> None:
    """A usable field separator: one character, or a regular expression (as in pandas)."""
    if not isinstance(sep, str) or sep == "":
        raise DataFormatError(
            f"invalid field separator {sep!r}: expected a character such as ',' or '\\t'"
        )
    if sep in ("\n", "\r", '"'):
        raise DataFormatError(f"invalid field separator {sep!r}: it cannot split fields")
    if len(sep) > 1 and sep != r"\s+":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "possible nested set"
                re.compile(sep)
        except re.error as error:
            raise DataFormatError(
                f"invalid field separator {sep!r}: a separator of several characters is a "
                f"regular expression, and this one is not valid ({error})"
            ) from None


def _splitter(sep: str) -> Callable[[str], list[str]]:
    """Splits one line into fields: literally for one character, else as a regex."""
    if len(sep) == 1:
        return lambda line: line.split(sep)
    if sep == r"\s+":
        return str.split
    pattern = re.compile(sep)
    return pattern.split


def _header_cells(blob: _Blob, sep: str, expected: str) -> list[str]:
    """The fields of the first line (csv quoting honoured for one-character separators)."""
    line = blob.first_line()
    if not line.strip():
        if not blob.data.strip():
            raise _empty_file(blob.path, expected)
        raise DataFormatError(f"line 1 is blank; expected {expected}", path=str(blob.path), line=1)
    if len(sep) == 1 and '"' in line:
        return next(csv.reader([line], delimiter=sep))
    return _splitter(sep)(line)


@dataclass(frozen=True)
class _Layout:
    """Where the lines and separators of a file lie, from one numpy pass over its bytes.

    Attributes:
        starts: `[n_lines]` byte offset of each line.
        ends: `[n_lines]` byte offset of each line's end (line terminator excluded).
        seps: `[n_seps]` byte offset of each separator, ascending.
        first_sep: `[n_lines]` index in `seps` of the line's first separator.
        counts: `[n_lines]` separators in each line.
        blank: `[n_lines]` True where a line holds only whitespace and separators.
    """

    starts: np.ndarray
    ends: np.ndarray
    seps: np.ndarray
    first_sep: np.ndarray
    counts: np.ndarray
    blank: np.ndarray


def _scan(data: bytes, sep: str) -> _Layout:
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(buf)]])
    if starts[-1] == len(buf):  # the file ends with a line terminator (or is empty)
        starts, ends = starts[:-1], ends[:-1]
    has_cr = ends > starts
    has_cr[has_cr] = buf[ends[has_cr] - 1] == 13
    ends = ends - has_cr
    separator = ord(sep)
    seps = np.flatnonzero(buf == separator)
    first_sep = np.searchsorted(seps, starts)
    counts = np.searchsorted(seps, ends) - first_sep
    # A line whose first byte is content is not blank; the others (empty lines, lines that
    # start with whitespace or a separator) are checked byte by byte.
    blank = ends == starts
    first = buf[np.minimum(starts, max(len(buf) - 1, 0))] if len(buf) else buf
    doubtful = np.flatnonzero(~blank & ((first <= 32) | (first == separator)))
    if doubtful.size > len(starts) // 10:
        content = buf > 32
        if separator > 32:
            content &= buf != separator
        non_empty = np.flatnonzero(~blank)
        # Each segment runs from a non-empty line to the next one; what lies between (line
        # terminators, empty lines) is no content.
        blank[non_empty] = ~np.logical_or.reduceat(content, starts[non_empty])
    else:
        strip = bytes(range(33)) + sep.encode()
        for line in doubtful:
            blank[line] = not data[starts[line] : ends[line]].strip(strip)
    return _Layout(starts, ends, seps, first_sep, counts, blank)


def _fast_separator(sep: str) -> bool:
    return len(sep) == 1 and sep.isascii() and sep not in '\n\r"'


def _read_fields(
    blob: _Blob, sep: str, n_fields: int, kinds: Mapping[int, str], *, quoting: bool
) -> tuple[dict[int, np.ndarray], _Where]:
    """Reads fields of every data line (the lines after the header that are not blank).

    Every data line must have `n_fields` fields; the first that does not is an error naming
    its line. Blank lines (only whitespace and separators) are skipped.

    Args:
        blob: the file.
        sep: field separator (one character, or a regex as in pandas).
        n_fields: fields per line, as in the header.
        kinds: field index to what it holds: "id" (int64 when every value is a canonical
            integer, else str), "number" (numbers, or str for `_numbers` to parse and report)
            or "text" (str). Fields not listed are not converted.
        quoting: csv quoting (`"a,b"` is one field); RecBole files have none.

    Returns:
        `{index: [n_rows] values}` (str values stripped, empty fields "") and the line of
        each row.
    """
    if _fast_separator(sep) and not (quoting and b'"' in blob.data):
        layout = _scan(blob.data, sep)
        data_lines = np.flatnonzero(~layout.blank[1:]) + 1
        bad = np.flatnonzero(layout.counts[data_lines] != n_fields - 1)
        if bad.size:
            line = int(data_lines[bad[0]])
            text = blob.data[layout.starts[line] : layout.ends[line]].decode(blob.encoding)
            raise _field_count_error(blob.path, line + 1, text, sep, n_fields)
        if not data_lines.size:
            return _no_rows(blob, kinds)
        fields = _pandas_fields(blob, layout, data_lines, sep, n_fields, kinds)
        if fields is not None:
            return fields
    return _python_fields(blob, sep, n_fields, kinds, quoting=quoting)


def _no_rows(blob: _Blob, kinds: Mapping[int, str]) -> tuple[dict[int, np.ndarray], _Where]:
    columns = {index: np.empty(0, dtype=object) for index in kinds}
    return columns, _Where(str(blob.path), line_numbers=np.empty(0, dtype=np.int64))


def _field_count_error(
    path: Path, line_number: int, text: str, sep: str, n_fields: int, found: int | None = None
) -> DataFormatError:
    """The error of a line with the wrong number of fields (`text`: the line, for a hint)."""
    found = len(_splitter(sep)(text)) if found is None else found
    message = (
        f"expected {n_fields} fields separated by {_separator_name(sep)} (as in the header), "
        f"found {found}"
    )
    if sep not in text and len(text.split()) == n_fields:
        rule = "fields must be " + (
            "tab-separated" if sep == "\t" else f"separated by {_separator_name(sep)}"
        )
        message += f"; the fields look separated by spaces: {rule}"
    return DataFormatError(message, path=str(path), line=line_number)


def _pandas_fields(
    blob: _Blob,
    layout: _Layout,
    data_lines: np.ndarray,
    sep: str,
    n_fields: int,
    kinds: Mapping[int, str],
) -> tuple[dict[int, np.ndarray], _Where] | None:
    """The fields as pandas' C parser reads them; None when its rows do not match the lines."""
    # pandas skips lines of whitespace alone and reads every other line after the header.
    pandas_lines = np.flatnonzero(~(layout.blank[1:] & (layout.counts[1:] == 0))) + 1
    text_fields = {index: str for index, kind in kinds.items() if kind == "text"}
    frame = _pandas_read(blob, sep, n_fields, sorted(kinds), text_fields)
    if frame is None or len(frame) != len(pandas_lines):
        return None
    rows = np.flatnonzero(~layout.blank[pandas_lines])
    take_all = len(rows) == len(frame)
    columns: dict[int, np.ndarray] = {}
    as_text = []
    for index, kind in kinds.items():
        series = frame[index] if take_all else frame[index].iloc[rows]
        if kind == "text" or _is_text_dtype(series.dtype):
            columns[index] = _clean_text(series)
            continue
        values = series.to_numpy()
        if kind == "id":
            lengths = _field_lengths(layout, data_lines, index, n_fields)
            if values.dtype.kind not in "iu" or not np.array_equal(
                lengths, _decimal_lengths(values)
            ):
                as_text.append(index)  # "007", "+7", "7.0", "1e5": ids that are not numbers
                continue
        if kind == "number" and values.dtype.kind not in "iuf":
            as_text.append(index)  # pandas reads True/False as booleans: text to report
            continue
        columns[index] = values
    if as_text:
        frame = _pandas_read(blob, sep, n_fields, as_text, dict.fromkeys(as_text, str))
        if frame is None or len(frame) != len(pandas_lines):
            return None
        for index in as_text:
            columns[index] = _clean_text(frame[index] if take_all else frame[index].iloc[rows])
    return columns, _Where(str(blob.path), line_numbers=data_lines + 1)


def _pandas_read(
    blob: _Blob, sep: str, n_fields: int, usecols: list[int], dtype: Mapping[int, Any]
) -> pd.DataFrame | None:
    try:
        return pd.read_csv(
            io.BytesIO(blob.data),
            sep=sep,
            header=None,
            skiprows=1,
            names=list(range(n_fields)),
            usecols=usecols,
            dtype=dict(dtype) or None,
            keep_default_na=False,
            na_values=[""],
            quoting=csv.QUOTE_NONE,
            encoding=blob.encoding,
            engine="c",
            low_memory=False,
        )
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def _is_text_dtype(dtype: Any) -> bool:
    return isinstance(dtype, pd.StringDtype) or (isinstance(dtype, np.dtype) and dtype.kind == "O")


def _clean_text(values: pd.Series | np.ndarray) -> np.ndarray:
    """`[n]` object array of stripped str; missing values become ""."""
    series = pd.Series(values, dtype=object) if isinstance(values, np.ndarray) else values
    if not isinstance(series.dtype, pd.StringDtype):
        series = series.astype(object)
        series = series.where(series.notna(), "").astype(str)
    return series.fillna("").str.strip().to_numpy(dtype=object)


def _field_lengths(layout: _Layout, lines: np.ndarray, index: int, n_fields: int) -> np.ndarray:
    """`[n]` byte length of field `index` on each of `lines` (all with `n_fields` fields)."""
    first = layout.first_sep[lines]
    start = layout.starts[lines] if index == 0 else layout.seps[first + index - 1] + 1
    end = layout.ends[lines] if index == n_fields - 1 else layout.seps[first + index]
    return end - start


def _decimal_lengths(values: np.ndarray) -> np.ndarray:
    """`[n]` characters of each integer written in decimal (with its minus sign)."""
    if values.dtype.kind == "u":
        magnitude, negative = values.astype(np.uint64), np.zeros(len(values), dtype=bool)
    else:
        negative = values < 0
        # -(v + 1) + 1 is |v| without overflowing at the smallest int64.
        magnitude = np.where(negative, -(values + 1), values).astype(np.uint64) + negative
    return np.searchsorted(_POWERS_OF_TEN, magnitude, side="right") + 1 + negative


def _python_fields(
    blob: _Blob, sep: str, n_fields: int, kinds: Mapping[int, str], *, quoting: bool
) -> tuple[dict[int, np.ndarray], _Where]:
    """The exact line-by-line reading: quoted csv, regex separators, or pandas in doubt."""
    text = blob.text()
    if quoting and len(sep) == 1:
        records = _csv_records(blob.path, text, sep)
    else:
        split = _splitter(sep)
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        records = ((number, split(line)) for number, line in enumerate(lines, start=1))
    next(records, None)  # the header
    rows, line_numbers = [], []
    for line_number, cells in records:
        if all(not cell.strip() for cell in cells):
            continue
        if len(cells) != n_fields:
            text = sep.join(cells) if len(sep) == 1 else ""
            raise _field_count_error(blob.path, line_number, text, sep, n_fields, len(cells))
        rows.append(cells)
        line_numbers.append(line_number)
    if not rows:
        return _no_rows(blob, kinds)
    columns = {}
    for index in kinds:
        values = np.empty(len(rows), dtype=object)
        values[:] = [row[index].strip() for row in rows]
        columns[index] = values
    return columns, _Where(str(blob.path), line_numbers=np.array(line_numbers, dtype=np.int64))


def _csv_records(path: Path, text: str, sep: str):
    """`(first line, fields)` of each csv record (a quoted field may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    previous = 0
    try:
        for cells in reader:
            yield previous + 1, cells
            previous = reader.line_num
    except csv.Error as error:
        raise DataFormatError(
            f"cannot parse the table: {error}", path=str(path), line=reader.line_num
        ) from None


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


def _is_free_text(values: np.ndarray) -> bool:
    """True when a field has too many distinct values to be a category (ids, titles)."""
    distinct = len(pd.unique(values))
    return distinct > max(FREE_TEXT_UNIQUE_FRACTION * len(values), ALWAYS_KEPT_DISTINCT_VALUES)


def _explode(values: np.ndarray, sep: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of `[n_rows]` str values split on `sep` (None: whitespace), empty ones dropped.

    Returns:
        `[m]` row of each token and `[m]` tokens.
    """
    tokens = pd.Series(values, dtype=object).str.split(sep).explode()
    keep = (tokens.notna() & (tokens.astype(str).str.strip() != "")).to_numpy()
    return tokens.index.to_numpy()[keep], tokens.astype(str).str.strip().to_numpy(object)[keep]


def _non_empty(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(rows, values)` of the non-empty values of a one-token-per-row field."""
    rows = np.flatnonzero(values != "")
    return rows, values[rows]


def _multi_hot(
    field_name: str,
    rows: np.ndarray,
    tokens: np.ndarray,
    target_rows: np.ndarray,
    n_out: int,
    *,
    max_vocabulary: int | None = None,
) -> tuple[np.ndarray, list[str]] | None:
    """Multi-hot encodes one categorical field (one-hot when each row has one token).

    Args:
        field_name: prefix of the column names (`field=value`).
        rows: `[m]` side-file row of each token.
        tokens: `[m]` the tokens (str, non-empty).
        target_rows: `[n_rows]` output row of each side-file row, -1 to ignore it.
        n_out: rows of the output (users or items of the dataset).
        max_vocabulary: more distinct tokens than this gives None (the field is skipped).

    Returns:
        `[n_out, n_values]` float32 matrix and its column names (values in numeric order
        when all are integers, else text order), or None.
    """
    codes, uniques = pd.factorize(tokens)
    if max_vocabulary is not None and len(uniques) > max_vocabulary:
        return None
    uniques = np.asarray(uniques, dtype=object)
    order = np.array(_token_order(list(uniques)), dtype=np.int64)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    targets = target_rows[rows]
    present = targets >= 0
    matrix = np.zeros((n_out, len(uniques)), dtype=np.float32)
    matrix[targets[present], rank[codes[present]]] = 1.0
    return matrix, [f"{field_name}={token}" for token in uniques[order]]


def _token_order(tokens: list[str]) -> list[int]:
    """Order of tokens: numeric when all are integers (ages: 7 before 10), else text order."""
    if all(token.lstrip("-").isdigit() for token in tokens):
        return sorted(range(len(tokens)), key=lambda index: int(tokens[index]))
    return sorted(range(len(tokens)), key=tokens.__getitem__)


def _target_rows(external_ids: np.ndarray, id_map: np.ndarray) -> np.ndarray:
    """`[n_rows]` index of each side-file id in the dataset's id map, -1 when absent."""
    external = np.asarray(external_ids)
    if external.dtype.kind != "O":
        external = external.astype(str).astype(object)
    return pd.Index(np.asarray(id_map, dtype=object)).get_indexer(external).astype(np.int64)


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


# RecBole's benchmark files `NAME.PART.inter` and the split code of each part.
_RECBOLE_PARTS = (("train", GIVEN_TRAIN), ("valid", GIVEN_VALID), ("test", GIVEN_TEST))


def _recbole_part(file_name: str) -> tuple[str, str] | None:
    """`(NAME, part)` of a file `NAME.part.inter`, else None."""
    for part, _ in _RECBOLE_PARTS:
        suffix = f".{part}.inter"
        if file_name.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)], part
    return None


def _recbole_files(path: Path) -> tuple[str, Path, list[tuple[Path, int | None]]]:
    """`(NAME, folder, [(file, split code or None)])` of the interactions to read."""
    if path.is_file():
        part = _recbole_part(path.name)
        if part is None:
            name = path.name.removesuffix(".inter") if path.suffix == ".inter" else path.stem
            return name, path.parent, [(path, None)]
        return part[0], path.parent, _recbole_split_files(path.parent, part[0])
    if not path.is_dir():
        raise DataFormatError("no such file or folder", path=str(path))
    plain, split = set(), set()
    for candidate in path.glob("*.inter"):
        part = _recbole_part(candidate.name)
        if part is None:
            plain.add(candidate.name.removesuffix(".inter"))
        else:
            split.add(part[0])
    names = plain | split
    if path.name in names:
        name = path.name
    elif len(names) == 1:
        (name,) = names
    elif not names:
        raise DataFormatError(
            "expected a RecBole NAME.inter file (or NAME.train.inter, NAME.valid.inter, "
            "NAME.test.inter) in this folder",
            path=str(path),
        )
    else:
        raise DataFormatError(
            f"several RecBole datasets ({', '.join(sorted(names))}); pass one .inter file",
            path=str(path),
        )
    if name in plain:
        return name, path, [(path / f"{name}.inter", None)]
    return name, path, _recbole_split_files(path, name)


def _recbole_split_files(folder: Path, name: str) -> list[tuple[Path, int]]:
    """The benchmark files of NAME: train and test required, valid when present."""
    files = []
    for part, code in _RECBOLE_PARTS:
        file_path = folder / f"{name}.{part}.inter"
        if file_path.is_file():
            files.append((file_path, code))
        elif part != "valid":
            raise DataFormatError(
                f"RecBole benchmark files need {name}.train.inter and {name}.test.inter "
                f"({name}.valid.inter optional); {file_path.name} is missing",
                path=str(folder),
            )
    return files


def _recbole_inter_fields(header: _RecboleHeader) -> list[str]:
    fields = ["user_id", "item_id"]
    rating_field = _recbole_rating_field(header)
    if rating_field is not None:
        fields.append(rating_field)
    if "timestamp" in header.names:
        fields.append("timestamp")
    return fields


def _header_text(fields: Mapping[str, str]) -> str:
    return ", ".join(f"{name}:{type_name}" for name, type_name in fields.items())


def _parse_recbole_header(path: Path, line: str, required: Sequence[str]) -> _RecboleHeader:
    names, types = [], []
    for cell in line.split("\t"):
        parts = cell.split()
        if len(parts) > 1 and all(":" in part for part in parts):
            raise DataFormatError(
                f"header field {cell.strip()!r} holds several 'name:type' fields separated by "
                "spaces; fields must be tab-separated",
                path=str(path),
                line=1,
            )
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
        if name in names:
            raise DataFormatError(f"header names the field {name!r} twice", path=str(path), line=1)
        names.append(name)
        types.append(type_name)
    for name in required:
        if name not in names:
            raise DataFormatError(
                f"header has no {name}: field (found {', '.join(names)})", path=str(path), line=1
            )
    return _RecboleHeader(names, types)


def _read_recbole_table(
    path: Path,
    required: Sequence[str],
    select: Callable[[_RecboleHeader], Sequence[str]],
    id_fields: Sequence[str],
) -> tuple[_RecboleHeader, dict[str, np.ndarray], _Where]:
    """Reads the fields `select(header)` of a RecBole atomic file.

    Token fields in `id_fields` are int64 when every value is a canonical integer, else str;
    float fields are numbers (or str that `_numbers` reports); other fields str.
    """
    blob = _load_bytes(path)
    line = blob.first_line()
    if not line.strip():
        raise _empty_file(path, "a header of 'name:type' fields")
    header = _parse_recbole_header(path, line, required)
    wanted = set(select(header))
    kinds = {}
    for index, (name, type_name) in enumerate(zip(header.names, header.types, strict=True)):
        if name in wanted:
            kinds[index] = (
                "id" if name in id_fields else "number" if type_name == "float" else "text"
            )
    fields, where = _read_fields(blob, "\t", len(header.names), kinds, quoting=False)
    return header, {header.names[index]: values for index, values in fields.items()}, where


def _recbole_ids(values: np.ndarray, where: _Where, field: str) -> np.ndarray:
    """`[n]` ids (int64, or stripped str); an empty id is an error."""
    if values.dtype.kind in "iu":
        return values
    empty = np.flatnonzero(values == "")
    if empty.size:
        raise where.error(int(empty[0]), f"empty {field}")
    return values


def _concatenate_ids(parts: list[np.ndarray]) -> np.ndarray:
    """Ids of several files; as str unless all are int64 (7 and "7" are one id)."""
    if len(parts) == 1:
        return parts[0]
    if all(part.dtype == np.int64 for part in parts):
        return np.concatenate(parts)
    return np.concatenate(
        [part if part.dtype.kind == "O" else part.astype(str).astype(object) for part in parts]
    )


def _recbole_rating_field(header: _RecboleHeader) -> str | None:
    if "rating" in header.names:
        return "rating"
    for name, type_name in zip(header.names, header.types, strict=True):
        if type_name == "float" and ("rating" in name or "label" in name):
            return name
    return None


def _recbole_side_features(
    path: Path, id_field: str, id_map: np.ndarray, skipped: list[str]
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """Features of a `.user` / `.item` file aligned to `id_map`; (None, None) without one.

    Appends the names of the fields not used to `skipped`.
    """
    if not path.is_file():
        return None, None
    header, columns, where = _read_recbole_table(
        path,
        (id_field,),
        lambda header: [
            name
            for name, type_name in zip(header.names, header.types, strict=True)
            if type_name != "float_seq"
        ],
        (id_field,),
    )
    ids = _recbole_ids(columns[id_field], where, id_field)
    if ids.dtype.kind != "O":
        ids = ids.astype(str).astype(object)
    duplicated = np.flatnonzero(pd.Index(ids).duplicated())
    if duplicated.size:
        second = int(duplicated[0])
        first = int(np.flatnonzero(ids == ids[second])[0])
        raise where.error(
            second,
            f"{id_field} {ids[second]!r} is on line {where.line_numbers[first]} too; expected "
            "one row per id",
        )
    target_rows = _target_rows(ids, id_map)
    blocks = []
    for name, type_name in zip(header.names, header.types, strict=True):
        if name == id_field:
            continue
        if type_name == "float_seq":
            skipped.append(name)
            continue
        values = columns[name]
        if type_name == "float":
            numbers = np.nan_to_num(_numbers(values, where, name))
            column = np.zeros((len(id_map), 1), dtype=np.float32)
            present = target_rows >= 0
            column[target_rows[present], 0] = numbers[present]
            blocks.append((column, [name]))
            continue
        if _is_free_text(values):
            skipped.append(name)
            continue
        rows, tokens = _explode(values, None) if type_name == "token_seq" else _non_empty(values)
        block = _multi_hot(
            name, rows, tokens, target_rows, len(id_map), max_vocabulary=MAX_FEATURE_VOCABULARY
        )
        if block is None:
            skipped.append(name)
        else:
            blocks.append(block)
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
        token_rows, genre_index = np.nonzero(flags == 1)
        tokens = np.asarray(genres, dtype=object)[genre_index]
        item_column = _column(rows, 0)
    elif (folder / "movies.dat").is_file():
        rows = _split_lines(folder / "movies.dat", "::", n_fields=3)
        item_column = _column(rows, 0)
        token_rows, tokens = _explode(_column(rows, 2), "|")
    elif (folder / "movies.csv").is_file():
        path = folder / "movies.csv"
        blob = _load_bytes(path)
        header = [cell.strip() for cell in _header_cells(blob, ",", "movieId,title,genres")]
        if "movieId" not in header or "genres" not in header:
            raise DataFormatError(
                "expected the header movieId,title,genres", path=str(path), line=1
            )
        item_index, genre_index = header.index("movieId"), header.index("genres")
        fields, _ = _read_fields(
            blob, ",", len(header), {item_index: "text", genre_index: "text"}, quoting=True
        )
        item_column = fields[item_index]
        token_rows, tokens = _explode(fields[genre_index], "|")
    else:
        return None, None
    listed = tokens != "(no genres listed)"
    return _stack_features(
        [
            _multi_hot(
                "genre",
                token_rows[listed],
                tokens[listed],
                _target_rows(item_column, item_ids),
                len(item_ids),
            )
        ]
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
        _multi_hot(name, *_non_empty(_column(rows, index)), target_rows, len(user_ids))
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
    bad = np.argwhere(~((matrix > 0) & (matrix <= 1)))
    if len(bad):
        row, column = bad[0]
        raise DataFormatError(
            f"propensity {matrix[row, column]:g} in column {column + 1} is not a probability "
            "in (0, 1]",
            # Matrix rows are the file's leading lines: only trailing blank lines are skipped.
            path=str(path),
            line=int(row) + 1,
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


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        import pyarrow
    except ImportError:
        raise DataFormatError(
            "reading parquet needs the pyarrow package, which is not installed "
            "(pip install pyarrow)",
            path=str(path),
        ) from None
    try:
        return pd.read_parquet(path, engine="pyarrow")
    except ImportError as error:
        raise DataFormatError(f"reading parquet needs pyarrow: {error}", path=str(path)) from None
    except (ValueError, OSError, TypeError, pyarrow.ArrowException) as error:
        # ArrowInvalid ("Parquet magic bytes not found") for a file of another kind.
        raise DataFormatError(f"not a parquet file: {error}", path=str(path)) from None


def _resolve_columns(
    present: Sequence[str], columns: Mapping[str, str] | None, source: str
) -> dict[str, str]:
    """Role to column name, checked against the column names `present`."""
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


def _table_ids(values: np.ndarray, where: _Where, what: str) -> np.ndarray:
    """`[n]` ids of a csv column (int64, or stripped str); an empty id is an error."""
    if values.dtype.kind in "iu":
        return values
    empty = np.flatnonzero(values == "")
    if empty.size:
        raise where.error(int(empty[0]), f"{what} has an empty id")
    return values


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
    """`[n]` float64 times: numbers as they are, ISO 8601 dates as Unix seconds.

    A column of numbers and empty values is read as numbers. Otherwise every non-empty value
    must be a date; the first that is not is reported with its own row.
    """
    if pd.api.types.is_datetime64_any_dtype(column):
        return _datetimes_to_seconds(column)
    values = column.to_numpy()
    try:
        return _numbers(values, where, f"{what} value")
    except DataFormatError as not_numeric:
        error = not_numeric
    text = column.astype(object).where(column.notna(), "").astype(str).str.strip()
    empty = (text == "").to_numpy()
    try:
        dates = pd.to_datetime(
            text.where(~empty, None), format="ISO8601", errors="coerce", utc=True
        )
    except (ValueError, TypeError, OverflowError):
        raise error from None
    failed = np.flatnonzero(pd.isna(dates).to_numpy() & ~empty)
    if failed.size == np.count_nonzero(~empty):
        raise error  # no value is a date: a column of text, reported as not a number
    if failed.size:
        first = int(failed[0])
        raise where.error(
            first, f"{what} value {text.iloc[first]!r} is neither a number nor an ISO 8601 date"
        )
    return _datetimes_to_seconds(dates)


def _datetimes_to_seconds(dates: pd.Series) -> np.ndarray:
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_convert("UTC").dt.tz_localize(None)
    nanoseconds = dates.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(np.float64)
    seconds = nanoseconds / 1e9
    seconds[pd.isna(dates).to_numpy()] = np.nan
    return seconds
