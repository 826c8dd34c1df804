"""What every reader shares: where a row came from, paths, lines, numbers and `meta`.

Every error a reader raises is one `DataFormatError` naming the file and the 1-based line (or
the DataFrame row) and what was expected. Text is decoded as UTF-8, else latin-1 (never with
replacement characters, which would merge distinct ids); LF and CRLF line endings alike.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from causalrec_jax.errors import DataFormatError

PathLike = str | os.PathLike

ROLES = ("user", "item", "rating", "timestamp")


@dataclass(frozen=True)
class Where:
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
class Rows:
    """The fields of the non-blank lines of a text file.

    Attributes:
        fields: `[n_rows, n_fields]` object array of str.
        where: origin of each row (file and line numbers).
    """

    fields: np.ndarray
    where: Where

    def __len__(self) -> int:
        return len(self.fields)


def existing_path(path: PathLike) -> Path:
    """`path` as a `Path`; an error naming it when it does not exist."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError("no such file or folder", path=str(path))
    return path


def required_file(folder: Path, name: str) -> Path:
    """The file `name` of `folder`; an error naming the folder when it is missing."""
    file_path = folder / name
    if not file_path.is_file():
        raise DataFormatError(f"expected the file {name} in this folder", path=str(folder))
    return file_path


def read_text(path: Path) -> str:
    """The text of a file: UTF-8 (byte-order mark dropped), else latin-1."""
    # Text mode turns CRLF into LF. Old releases (MovieLens `u.item`) are latin-1, not UTF-8.
    try:
        # "utf-8-sig" also drops the byte-order mark some spreadsheet exports start with.
        with open(path, encoding="utf-8-sig") as handle:
            return handle.read()
    except UnicodeDecodeError:
        with open(path, encoding="latin-1") as handle:
            return handle.read()


def numbered_lines(path: Path) -> list[tuple[int, str]]:
    """`(line_number, line)` of each line, 1-based, without line endings."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return list(enumerate(lines, start=1))


def empty_file_error(path: Path, expected: str) -> DataFormatError:
    """The error of an empty file, naming what it should have held."""
    return DataFormatError(f"the file is empty; expected {expected}", path=str(path), line=1)


def split_lines(path: Path, separator: str | None, *, n_fields: int, skip_lines: int = 0) -> Rows:
    """Splits the non-blank lines of a file into exactly `n_fields` fields each.

    Args:
        path: the file.
        separator: field separator; None splits on runs of whitespace.
        n_fields: fields expected on every line.
        skip_lines: header lines to skip.
    """
    numbered = [
        (number, line) for number, line in numbered_lines(path)[skip_lines:] if line.strip()
    ]
    if not numbered:
        raise empty_file_error(path, f"lines of {n_fields} fields")
    split = [line.split(separator) for _, line in numbered]
    lengths = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
    wrong = np.flatnonzero(lengths != n_fields)
    if wrong.size:
        first = int(wrong[0])
        raise DataFormatError(
            f"expected {n_fields} fields separated by {separator_name(separator)}, "
            f"found {lengths[first]}",
            path=str(path),
            line=numbered[first][0],
        )
    fields = np.empty((len(split), n_fields), dtype=object)
    fields[:] = split
    line_numbers = np.fromiter((number for number, _ in numbered), dtype=np.int64)
    return Rows(fields, Where(str(path), line_numbers=line_numbers))


def read_number_rows(
    path: Path, separator: str | None, field_names: Sequence[str], *, skip_lines: int = 0
) -> tuple[np.ndarray, Where]:
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
    rows = split_lines(path, separator, n_fields=len(field_names), skip_lines=skip_lines)
    columns = [
        parse_numbers(row_field(rows, index), rows.where, name)
        for index, name in enumerate(field_names)
    ]
    return np.stack(columns, axis=1), rows.where


def _fast_number_rows(
    path: Path, separator: str | None, n_fields: int, skip_lines: int
) -> tuple[np.ndarray, Where] | None:
    """The values when pandas parses the file cleanly, one row per line; else None."""
    text = read_text(path)
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
    return values, Where(str(path), line_numbers=line_numbers)


def separator_name(separator: str | None) -> str:
    """How an error names a separator ("tabs", "commas", "whitespace" or its repr)."""
    return {None: "whitespace", "\t": "tabs", ",": "commas"}.get(separator, repr(separator))


def expect_header(path: Path, expected: str, separator: str) -> None:
    """Checks that line 1 is the header `expected` (cells compared stripped)."""
    numbered = numbered_lines(path)
    if not numbered or not numbered[0][1].strip():
        raise empty_file_error(path, f"the header {expected!r}")
    found = [cell.strip() for cell in numbered[0][1].split(separator)]
    if found != expected.split(separator):
        raise DataFormatError(
            f"header is {numbered[0][1].strip()!r}, expected {expected!r}", path=str(path), line=1
        )


def row_field(rows: Rows, index: int) -> np.ndarray:
    """`[n_rows]` str field `index` of every row, surrounding whitespace removed."""
    return np.array([value.strip() for value in rows.fields[:, index]], dtype=object)


def parse_numbers(values: np.ndarray, where: Where, what: str) -> np.ndarray:
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


def positive_ids(values: np.ndarray, where: Where, what: str) -> np.ndarray:
    """Parses `[n]` ids that must be integers >= 1 (MovieLens, Yahoo! R3) as int64."""
    numbers = parse_numbers(values, where, what)
    bad = np.flatnonzero(~np.isfinite(numbers) | (numbers < 1) | (numbers != np.round(numbers)))
    if bad.size:
        first = int(bad[0])
        raise where.error(
            first, f"{what} {numbers[first]:g} is not a positive integer (ids start at 1)"
        )
    return numbers.astype(np.int64)


def check_range(values: np.ndarray, where: Where, what: str, low: float, high: float) -> None:
    """Raises an error naming the row of the first of `[n]` values outside `low..high`."""
    bad = np.flatnonzero((values < low) | (values > high))
    if bad.size:
        first = int(bad[0])
        raise where.error(first, f"{what} {values[first]:g} is outside {low:g}..{high:g}")


def reader_meta(
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

