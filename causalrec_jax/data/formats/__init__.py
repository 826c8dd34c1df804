"""Dataset formats (DESIGN.md §2): one module per format, each registered by its name.

File formats read here: RecBole atomic files (`recbole`), MovieLens (`movielens`), Coat
(`coat`), Yahoo! R3 (`yahoo_r3`), one sequence per line (`seq_lines`), `csv` and `parquet`
tables and pandas DataFrames (`dataframe`). `causalrec_jax.sim` registers `simulator` and
`simlog` into the same registry (`registry.register_format`) when it is imported.

Readers do not clean: duplicates, NaN ratings (empty fields, literal "nan") and out-of-range
values of the open formats are kept for `cleaning` to drop and count. What a reader rejects is
text that does not follow its format (a wrong number of fields, a rating that is not a
number, a header that does not match, an empty file); the `DataFormatError` names the file
and the 1-based line. Files may use LF or CRLF line endings.

Every reader sets `meta`: `name`, `format`, `path`, `implicit`, `rating_scale` ((min, max),
or None when unknown or implicit) and `raw_rows` (interactions read, before any cleaning).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from causalrec_jax.data.dataset import Dataset
from causalrec_jax.data.formats.coat import read_coat
from causalrec_jax.data.formats.common import PathLike, existing_path
from causalrec_jax.data.formats.csv_table import read_csv_table
from causalrec_jax.data.formats.dataframe import from_dataframe
from causalrec_jax.data.formats.movielens import read_movielens
from causalrec_jax.data.formats.parquet import read_parquet_table
from causalrec_jax.data.formats.recbole import read_recbole
from causalrec_jax.data.formats.registry import (
    DataFormat,
    Source,
    format_names,
    get_format,
    register_format,
)
from causalrec_jax.data.formats.seq_lines import read_seq_lines
from causalrec_jax.data.formats.yahoo_r3 import YAHOO_TEST_FILE, YAHOO_TRAIN_FILE, read_yahoo_r3
from causalrec_jax.errors import DataFormatError

# The formats of the data layer itself (the simulator's are registered by causalrec_jax.sim).
FORMATS = ("recbole", "movielens", "coat", "yahoo_r3", "seq_lines", "csv", "parquet", "dataframe")


def _file_reader(read_fn):
    """A registry reader of a one-argument file reader: `source.path` in, no ground truth."""

    def read(source: Source) -> tuple[Dataset, Any]:
        return read_fn(source.path), None

    read.__qualname__ = f"read[{read_fn.__name__}]"
    return read


def _read_csv(source: Source) -> tuple[Dataset, Any]:
    return read_csv_table(source.path, source.columns, sep=source.sep), None


def _read_parquet(source: Source) -> tuple[Dataset, Any]:
    return read_parquet_table(source.path, source.columns), None


def _read_dataframe(source: Source) -> tuple[Dataset, Any]:
    if source.frame is None:
        raise DataFormatError("format 'dataframe' needs a pandas DataFrame (frame=...)")
    return from_dataframe(source.frame, source.columns), None


for _name, _reader in (
    ("recbole", read_recbole),
    ("movielens", read_movielens),
    ("coat", read_coat),
    ("yahoo_r3", read_yahoo_r3),
    ("seq_lines", read_seq_lines),
):
    register_format(_name, _file_reader(_reader))
register_format("csv", _read_csv)
register_format("parquet", _read_parquet)
register_format("dataframe", _read_dataframe, needs_path=False)


def read_source(format: str, source: Source) -> tuple[Dataset, Any]:
    """Reads `source` in the registered `format`; returns `(dataset, ground_truth or None)`.

    Raises:
        ConfigError: for a format nobody registered (naming `data.format`).
        DataFormatError: for a missing path, or a file that does not follow the format.
    """
    entry = get_format(format)
    if entry.needs_path:
        if source.path is None or str(source.path) == "":
            raise DataFormatError(f"format {format!r} needs a path to read")
        existing_path(source.path)
    return entry.read_fn(source)


def read_dataset(
    format: str,
    path: PathLike | None = None,
    *,
    columns: Mapping[str, str] | None = None,
    sep: str = ",",
    frame: pd.DataFrame | None = None,
) -> Dataset:
    """Reads a dataset in one of the registered formats (DESIGN.md §2), without cleaning.

    Args:
        format: a registered format name (`FORMATS`, and `simlog` once `causalrec_jax.sim`
            is imported).
        path: file or folder (unused for "dataframe").
        columns: csv / parquet / dataframe: role (`user`, `item`, `rating`, `timestamp`) to
            column name; None or empty uses the default names.
        sep: csv field separator.
        frame: the DataFrame of format "dataframe".

    Returns:
        The raw (uncleaned) Dataset.
    """
    source = Source(path=path, columns=columns or None, sep=sep, frame=frame)
    return read_source(format, source)[0]


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
        sep: csv field separator (`csv_table.read_csv_table`).
        kind: "csv" or "parquet"; None infers it from the suffix (`.parquet`, `.pq` are
            parquet, anything else csv).

    Returns:
        Dataset; timestamps are numbers or, when the column holds ISO 8601 dates, Unix
        seconds.
    """
    file_path = existing_path(path)
    kind = kind or ("parquet" if file_path.suffix.lower() in (".parquet", ".pq") else "csv")
    if kind == "parquet":
        return read_parquet_table(path, columns)
    if kind == "csv":
        return read_csv_table(path, columns, sep=sep)
    raise DataFormatError(f"unknown table kind {kind!r}; expected 'csv' or 'parquet'")


__all__ = [
    "FORMATS",
    "YAHOO_TEST_FILE",
    "YAHOO_TRAIN_FILE",
    "DataFormat",
    "Source",
    "format_names",
    "from_dataframe",
    "get_format",
    "read_coat",
    "read_csv_table",
    "read_dataset",
    "read_movielens",
    "read_parquet_table",
    "read_recbole",
    "read_seq_lines",
    "read_source",
    "read_table",
    "read_yahoo_r3",
    "register_format",
]
