"""Parquet tables (`parquet` format) whose columns `data.columns` maps to roles."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import pyarrow as pa

from causalrec_jax.data.dataset import Dataset
from causalrec_jax.data.formats.common import PathLike, Where, existing_path
from causalrec_jax.data.formats.dataframe import frame_to_dataset, resolve_columns
from causalrec_jax.errors import DataFormatError


def read_parquet_table(path: PathLike, columns: Mapping[str, str] | None) -> Dataset:
    """Reads a parquet file whose columns are mapped to roles (as `csv_table.read_csv_table`).

    Errors name the file and the row index (parquet has no lines).
    """
    file_path = existing_path(path)
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
