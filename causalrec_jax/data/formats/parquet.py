"""Parquet tables (`parquet` format) whose columns `data.columns` maps to roles.

`data.path` is one file, or a folder of them (a partitioned log as Spark or Beam writes it,
`data.partitioned`), read whole here; `parallel.streamed` trains on a folder without loading
it, and `causalrec data` reports a folder's statistics by streaming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa

from causalrec_jax.data import partitioned
from causalrec_jax.data.dataset import Dataset
from causalrec_jax.data.formats.common import PathLike, Where, existing_path
from causalrec_jax.data.formats.dataframe import frame_to_dataset, resolve_columns
from causalrec_jax.errors import DataFormatError


def read_parquet_table(path: PathLike, columns: Mapping[str, str] | None) -> Dataset:
    """Reads a parquet file whose columns are mapped to roles (as `csv_table.read_csv_table`).

    Errors name the file and the row index (parquet has no lines).
    """
    file_path = existing_path(path)
    if file_path.is_dir():
        return _read_folder(file_path, columns, path)
    try:
        frame = pd.read_parquet(file_path, engine="pyarrow")
    except (ValueError, OSError, TypeError, pa.ArrowException) as error:
        # ArrowInvalid ("Parquet magic bytes not found") for a file of another kind.
        message = str(error).replace("\n", " ")
        raise DataFormatError(f"not a parquet file: {message}", path=str(file_path)) from None
    if not len(frame):
        raise DataFormatError("the parquet file has no rows", path=str(file_path))
    roles = resolve_columns([str(column) for column in frame.columns], columns, f"file {file_path}")
    return frame_to_dataset(
        frame, roles, Where(str(file_path)), name=file_path.stem, format_name="parquet", path=path
    )


def _read_folder(folder: Path, columns: Mapping[str, str] | None, path: PathLike) -> Dataset:
    """Every row group of a partitioned log, in log order (files by path, then row group)."""
    log = partitioned.open_log(folder, columns)
    names = list(dict.fromkeys(log.roles.values()))
    parts = [partitioned.read_unit(log, unit, names) for unit in log.units]
    try:  # files written with other widths (int32 / int64, string / large_string) agree
        frame = pa.concat_tables(parts, promote_options="permissive").to_pandas()
    except pa.ArrowException as error:
        message = str(error).replace("\n", " ")
        raise DataFormatError(f"the files' columns do not agree: {message}",
                              path=str(folder)) from None
    if not len(frame):
        raise DataFormatError("the log has no rows", path=str(folder))
    return frame_to_dataset(frame, log.roles, Where(str(folder)), name=folder.name,
                            format_name="parquet", path=path)
