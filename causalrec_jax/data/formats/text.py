"""Delimited text files (RecBole atomic files, csv tables) read by `pyarrow.csv`.

`read_fields` is a small adapter over `pyarrow.csv.read_csv` that keeps the readers' contract:
every data line (a line after the header that is not blank) must have the header's number of
fields, and the first that does not is one `DataFormatError` naming the file and its 1-based
line; values are stripped strings, numbers or integer ids, each with the line it came from.

How: one numpy pass finds the lines and the blank ones (only whitespace and separators, which
are skipped); pyarrow parses the other lines as string columns (only the columns asked for);
its `invalid_row_handler` collects the rows with a wrong field count, whose line is then
found by their text. Quoted fields that span lines, separators of several characters (a
regular expression, as in pandas) and rows pyarrow does not take one per line go through the
exact line-by-line reading of the standard library's `csv` module instead.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from causalrec_jax.data.formats.common import Where, empty_file_error, separator_name
from causalrec_jax.errors import DataFormatError

_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Blob:
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


def load_bytes(path: Path) -> Blob:
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
    return Blob(path, data, encoding)


def check_separator(sep: str) -> None:
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


def header_cells(blob: Blob, sep: str, expected: str) -> list[str]:
    """The fields of the first line (csv quoting honoured for one-character separators)."""
    line = blob.first_line()
    if not line.strip():
        if not blob.data.strip():
            raise empty_file_error(blob.path, expected)
        raise DataFormatError(f"line 1 is blank; expected {expected}", path=str(blob.path), line=1)
    if len(sep) == 1 and '"' in line:
        return next(csv.reader([line], delimiter=sep))
    return _splitter(sep)(line)


def _no_rows(blob: Blob, kinds: Mapping[int, str]) -> tuple[dict[int, np.ndarray], Where]:
    columns = {index: np.empty(0, dtype=object) for index in kinds}
    return columns, Where(str(blob.path), line_numbers=np.empty(0, dtype=np.int64))


def field_count_error(
    path: Path, line_number: int, text: str, sep: str, n_fields: int, found: int | None = None
) -> DataFormatError:
    """The error of a line with the wrong number of fields (`text`: the line, for a hint)."""
    found = len(_splitter(sep)(text)) if found is None else found
    message = (
        f"expected {n_fields} fields separated by {separator_name(sep)} (as in the header), "
        f"found {found}"
    )
    if sep not in text and len(text.split()) == n_fields:
        rule = "fields must be " + (
            "tab-separated" if sep == "\t" else f"separated by {separator_name(sep)}"
        )
        message += f"; the fields look separated by spaces: {rule}"
    return DataFormatError(message, path=str(path), line=line_number)


def read_fields(
    blob: Blob, sep: str, n_fields: int, kinds: Mapping[int, str], *, quoting: bool
) -> tuple[dict[int, np.ndarray], Where]:
    """Reads fields of every data line (the lines after the header that are not blank).

    Every data line must have `n_fields` fields; the first that does not is an error naming
    its line. Blank lines (only whitespace and separators) are skipped.

    Args:
        blob: the file.
        sep: field separator (one character, or a regex as in pandas).
        n_fields: fields per line, as in the header.
        kinds: field index to what it holds: "id" (int64 when every value is a canonical
            integer, else str), "number" (float64 when every value parses, else str for
            `parse_numbers` to report) or "text" (str). Fields not listed are not read.
        quoting: csv quoting (`"a,b"` is one field); RecBole files have none.

    Returns:
        `{index: [n_rows] values}` (str values stripped, empty fields "") and the line of
        each row.
    """
    if len(sep) == 1 and sep.isascii() and sep not in '\n\r"':
        fields = _arrow_fields(blob, sep, n_fields, kinds, quoting=quoting)
        if fields is not None:
            return fields
    return _python_fields(blob, sep, n_fields, kinds, quoting=quoting)


def _line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`[n_lines]` start, end (line terminator excluded) and end with terminator of each line."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buffer == 10)
    starts = np.concatenate([[0], newlines + 1])
    stops = np.concatenate([newlines + 1, [len(buffer)]])
    if starts[-1] == len(buffer):  # the file ends with a line terminator (or is empty)
        starts, stops = starts[:-1], stops[:-1]
    ends = stops - (stops > starts) * (buffer[np.maximum(stops - 1, 0)] == 10)
    has_cr = ends > starts
    has_cr[has_cr] = buffer[ends[has_cr] - 1] == 13
    return starts, ends - has_cr, stops


def _blank_lines(data: bytes, starts: np.ndarray, ends: np.ndarray, sep: str) -> np.ndarray:
    """`[n_lines]` True where a line holds only whitespace and separators."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    content = buffer > 32
    if ord(sep) > 32:
        content &= buffer != ord(sep)
    blank = ends == starts
    non_empty = np.flatnonzero(~blank)
    if non_empty.size:
        # Each segment runs from a non-empty line to the next one; what lies between (line
        # terminators, empty lines) is no content.
        blank[non_empty] = ~np.logical_or.reduceat(content, starts[non_empty])
    return blank


def _arrow_fields(
    blob: Blob, sep: str, n_fields: int, kinds: Mapping[int, str], *, quoting: bool
) -> tuple[dict[int, np.ndarray], Where] | None:
    """The fields as pyarrow reads them, one row per data line; None to read exactly."""
    data = blob.data if blob.encoding == "utf-8" else blob.data.decode(blob.encoding).encode()
    quoted = quoting and b'"' in data
    if quoted and _quoted_line_break(data):
        return None  # a record spans lines: rows are not lines
    data_lines, body = _data_lines(data, sep)
    if not data_lines.size:
        return _no_rows(blob, kinds)
    invalid: list[str] = []

    def on_invalid_row(row) -> str:
        invalid.append(row.text)
        return "skip"

    names = [str(index) for index in range(n_fields)]
    wanted = sorted(kinds)
    try:
        table = pa_csv.read_csv(
            pa.BufferReader(body),
            read_options=pa_csv.ReadOptions(column_names=names),
            parse_options=pa_csv.ParseOptions(
                delimiter=sep,
                quote_char='"' if quoted else False,
                invalid_row_handler=on_invalid_row,
            ),
            convert_options=pa_csv.ConvertOptions(
                include_columns=[names[index] for index in wanted],
                column_types={names[index]: pa.string() for index in wanted},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid:
        return None
    if invalid:
        error = _first_invalid_line(blob, data, data_lines, invalid, sep, n_fields)
        if error is not None:
            raise error
    if invalid or table.num_rows != len(data_lines):
        return None  # rows are not lines (a lone carriage return splits a line for pyarrow)
    where = Where(str(blob.path), line_numbers=data_lines + 1)
    columns = {
        index: _convert(table.column(names[index]), kinds[index]) for index in wanted
    }
    return columns, where


def _quoted_line_break(data: bytes) -> bool:
    """Whether a line ends inside quotes (an odd number of quote characters before it)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(buffer == 34)
    return bool((np.searchsorted(quotes, np.flatnonzero(buffer == 10)) % 2).any())


def _data_lines(data: bytes, sep: str) -> tuple[np.ndarray, pa.Buffer]:
    """`[n_rows]` 0-based index of each data line (after the header, not blank) and their bytes.

    Blank lines are looked for only when some line starts with whitespace or a separator.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buffer == 10)
    line_starts = newlines[newlines + 1 < len(buffer)] + 1  # of every line but the first
    first = buffer[line_starts]
    if not ((first <= 32) | (first == ord(sep))).any():
        body = memoryview(data)[line_starts[0] :] if len(line_starts) else memoryview(b"")
        return np.arange(1, len(line_starts) + 1), pa.py_buffer(body)
    starts, ends, stops = _line_bounds(data)
    blank = _blank_lines(data, starts, ends, sep)
    blank[:1] = True  # the header is not data
    data_lines = np.flatnonzero(~blank)
    if not data_lines.size:
        return data_lines, pa.py_buffer(b"")
    return data_lines, _data_lines_bytes(data, starts, stops, data_lines)


def _data_lines_bytes(
    data: bytes, starts: np.ndarray, stops: np.ndarray, keep: np.ndarray
) -> pa.Buffer:
    """The bytes of the lines `keep` (ascending), terminators included.

    Copied only when lines between them are left out.
    """
    view = memoryview(data)
    runs = np.split(keep, np.flatnonzero(np.diff(keep) != 1) + 1)
    if len(runs) == 1:
        return pa.py_buffer(view[starts[keep[0]] : stops[keep[-1]]])
    return pa.py_buffer(b"".join(view[starts[run[0]] : stops[run[-1]]] for run in runs))


def _first_invalid_line(
    blob: Blob,
    data: bytes,
    data_lines: np.ndarray,
    invalid: list[str],
    sep: str,
    n_fields: int,
) -> DataFormatError | None:
    """The error of the first data line whose text pyarrow found invalid; None if none is."""
    starts, ends, _ = _line_bounds(data)
    texts = {text.rstrip("\r").encode() for text in invalid}
    lengths = ends[data_lines] - starts[data_lines]
    for line in data_lines[np.isin(lengths, [len(text) for text in texts])]:
        text = data[starts[line] : ends[line]]
        if text in texts:
            return field_count_error(blob.path, int(line) + 1, text.decode(), sep, n_fields)
    return None


def _convert(column: pa.ChunkedArray, kind: str) -> np.ndarray:
    """`[n]` values of one string column: stripped str, int64 ids or float64 numbers."""
    if kind == "text":
        return pc.utf8_trim_whitespace(column).to_numpy(zero_copy_only=False).astype(object)
    if kind == "id":
        for values in (column, pc.utf8_trim_whitespace(column)):
            integers = _cast(values, pa.int64())
            # Canonical when written back the same: not "007", "+7" (nor padded, first try).
            if integers is not None and pc.all(
                pc.equal(pc.cast(integers, pa.string()), values)
            ).as_py():
                return integers.to_numpy()
        return values.to_numpy(zero_copy_only=False).astype(object)
    numbers = _cast(column, pa.float64())
    if numbers is not None:
        return numbers.to_numpy()
    values = pc.utf8_trim_whitespace(column)  # padded, empty (NaN) or text
    numbers = _cast(pc.if_else(pc.equal(values, ""), None, values), pa.float64())
    if numbers is not None:
        return numbers.to_numpy(zero_copy_only=False)
    return values.to_numpy(zero_copy_only=False).astype(object)  # `parse_numbers` reports


def _cast(values: pa.ChunkedArray, to: pa.DataType) -> pa.ChunkedArray | None:
    try:
        return pc.cast(values, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _python_fields(
    blob: Blob, sep: str, n_fields: int, kinds: Mapping[int, str], *, quoting: bool
) -> tuple[dict[int, np.ndarray], Where]:
    """The exact line-by-line reading: quoted line breaks, regex separators, or arrow in doubt."""
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
            raise field_count_error(blob.path, line_number, text, sep, n_fields, len(cells))
        rows.append(cells)
        line_numbers.append(line_number)
    if not rows:
        return _no_rows(blob, kinds)
    columns = {
        index: _convert(pa.chunked_array([pa.array([row[index] for row in rows], pa.string())]),
                        kind)
        for index, kind in kinds.items()
    }
    return columns, Where(str(blob.path), line_numbers=np.array(line_numbers, dtype=np.int64))


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

