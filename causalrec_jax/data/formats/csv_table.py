"""Delimited tables (`csv` format) whose columns `data.columns` maps to roles.

Read by the pyarrow adapter of `text`: a header line of column names, fields separated by
`data.sep` (one character, or a regular expression as in pandas), csv quoting honoured.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from causalrec_jax.data.dataset import Dataset, from_arrays
from causalrec_jax.data.formats.common import PathLike, existing_path, parse_numbers, reader_meta
from causalrec_jax.data.formats.dataframe import parse_times, resolve_columns, table_ids
from causalrec_jax.data.formats.text import check_separator, header_cells, load_bytes, read_fields
from causalrec_jax.errors import DataFormatError


def read_csv_table(path: PathLike, columns: Mapping[str, str] | None, *, sep: str = ",") -> Dataset:
    """Reads a delimited table whose columns are mapped to roles.

    A row with more or fewer fields than the header is an error naming its line; an empty
    rating field is kept as NaN for cleaning. Lines that are blank (or hold only separators)
    are skipped. Fields may be quoted (`"a,b"`). A `sep` of more than one character is a
    regular expression, as in pandas.

    Args:
        path: the table file.
        columns: role (`user`, `item`, `rating`, `timestamp`) to column name; None uses the
            default names (`user`/`user_id`, `item`/`item_id`, `rating`, `timestamp`).
        sep: field separator.

    Returns:
        Dataset; timestamps are numbers or, when the column holds ISO 8601 dates, Unix
        seconds.
    """
    file_path = existing_path(path)
    kind = "csv"
    if file_path.is_dir():
        raise DataFormatError("is a folder; expected a csv file", path=str(file_path))
    check_separator(sep)
    blob = load_bytes(file_path)
    header = [cell.strip() for cell in header_cells(blob, sep, "a header line of column names")]
    try:
        roles = resolve_columns(header, columns, f"file {file_path}")
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
    values, where = read_fields(blob, sep, len(header), kinds, quoting=True)
    if not len(where.line_numbers):
        raise DataFormatError("no rows after the header", path=str(file_path), line=2)
    user = table_ids(values[position["user"]], where, f"column {roles['user']!r}")
    item = table_ids(values[position["item"]], where, f"column {roles['item']!r}")
    rating = None
    if "rating" in roles:
        what = f"column {roles['rating']!r} value"
        rating = parse_numbers(values[position["rating"]], where, what)
    timestamp = None
    if "timestamp" in roles:
        timestamp = parse_times(
            pd.Series(values[position["timestamp"]]), where, f"column {roles['timestamp']!r}"
        )
    meta = reader_meta(file_path.stem, kind, path, rating, len(user))
    return from_arrays(user, item, rating, timestamp, meta=meta)
