"""Interactions from a pandas DataFrame, and the role mapping every table format shares.

`data.columns` maps the roles `user`, `item` (required), `rating` (none: implicit feedback)
and `timestamp` (numbers, or ISO 8601 dates read as Unix seconds) to column names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from causalrec_jax.data.dataset import Dataset, from_arrays
from causalrec_jax.data.formats.common import ROLES, PathLike, Where, parse_numbers, reader_meta
from causalrec_jax.errors import DataFormatError


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
    roles = resolve_columns([str(column) for column in frame.columns], columns, "the dataframe")
    where = Where(None, row_labels=np.asarray(frame.index))
    return frame_to_dataset(
        frame, roles, where, name="dataframe", format_name="dataframe", path=None
    )


def resolve_columns(
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
            raise DataFormatError(
                f"data.columns must map the role {role!r} to a column of {source} "
                f"(data.columns.{role} = \"...\")"
            )
    for role, name in columns.items():
        if name not in present:
            raise DataFormatError(
                f"column {name!r} (data.columns.{role}) is not in {source}; columns present: "
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
                f"present: {', '.join(present)}; set data.columns.{role} to the column's name "
                f"(columns={{'{role}': ...}} in Python)"
            )
    return roles


def frame_to_dataset(
    frame: pd.DataFrame,
    roles: Mapping[str, str],
    where: Where,
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
        rating = parse_numbers(
            frame[roles["rating"]].to_numpy(), where, f"{label} {roles['rating']!r} value"
        )
    timestamp = None
    if "timestamp" in roles:
        timestamp = parse_times(frame[roles["timestamp"]], where, f"{label} {roles['timestamp']!r}")
    meta = reader_meta(name, format_name, path, rating, len(frame))
    return from_arrays(user, item, rating, timestamp, meta=meta)


def table_ids(values: np.ndarray, where: Where, what: str) -> np.ndarray:
    """`[n]` ids of a csv column (int64, or stripped str); an empty id is an error."""
    if values.dtype.kind in "iu":
        return values
    empty = np.flatnonzero(values == "")
    if empty.size:
        raise where.error(int(empty[0]), f"{what} has an empty id")
    return values


def _frame_ids(column: pd.Series, where: Where, what: str) -> np.ndarray:
    values = column.to_numpy()
    if values.dtype.kind in "iu":
        return values
    missing = np.flatnonzero(pd.isna(column).to_numpy() | (column.astype(str).str.strip() == ""))
    if missing.size:
        raise where.error(int(missing[0]), f"{what} has an empty id")
    if values.dtype.kind == "f":
        return values
    return column.astype(str).str.strip().to_numpy(object)


def parse_times(column: pd.Series, where: Where, what: str) -> np.ndarray:
    """`[n]` float64 times: numbers as they are, ISO 8601 dates as Unix seconds.

    A column of numbers and empty values is read as numbers. Otherwise every non-empty value
    must be a date; the first that is not is reported with its own row.
    """
    if pd.api.types.is_datetime64_any_dtype(column):
        return _datetimes_to_seconds(column)
    values = column.to_numpy()
    try:
        return parse_numbers(values, where, f"{what} value")
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
