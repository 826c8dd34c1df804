"""A log stored as partitioned Parquet, read in streamed row groups with bounded memory.

The layout is what a Spark or Beam pipeline writes: a folder of `*.parquet` files, possibly in
Hive partition folders (`day=2026-01-01/part-00000.parquet`). Names starting with `_` or `.`
are skipped at every level, as Parquet readers do (Spark's `_SUCCESS`, our `_causalrec/`).
`data.columns` maps the roles `user`, `item` and optionally `rating` and `timestamp` to the
files' columns (default names as for one Parquet file).

The unit of reading is one row group of one file (`Unit`): its row count is in the file's
footer, so a log's size, the units of every host and the number of steps of an epoch are known
without reading any data. Memory while streaming is bounded by one row group (of the role
columns) plus whatever the consumer buffers.

Id maps (`IdMaps`) turn external ids into dense internal ids: the sorted unique user and item
ids (numerically when all are integers, as `dataset.from_arrays` sorts them, so a small log
read whole gets the same internal ids). `build_id_maps` streams the two columns once;
`write_id_maps` stores them beside the data in `_causalrec/` (`users.parquet`, `items.parquet`,
`manifest.json` listing every data file with its size and row count) so every host reads the
same maps instead of building its own; `read_id_maps` refuses maps whose manifest no longer
matches the files (a missing shard, a new one, a changed size), naming the file.
`IdMaps.digest` is what hosts compare (`parallel.distributed.agree`) to prove they agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from causalrec_jax.data.dataset import sorted_ids
from causalrec_jax.data.formats.common import PathLike, Where
from causalrec_jax.data.formats.dataframe import parse_times, resolve_columns
from causalrec_jax.data.stats import RatingSummary, count_statistics
from causalrec_jax.errors import DataFormatError

MAPS_FOLDER = "_causalrec"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class DataFile:
    """One Parquet file of the log: its path relative to the log's folder, bytes, rows."""

    path: str
    size: int
    rows: int


@dataclass(frozen=True)
class Unit:
    """One row group of one file: what a host reads at a time."""

    file: str
    row_group: int
    rows: int


@dataclass(frozen=True)
class PartitionedLog:
    """A partitioned Parquet log, described from its footers alone.

    Attributes:
        folder: the log's folder.
        roles: role (`user`, `item`, `rating`, `timestamp`) to column name.
        files: every data file, sorted by relative path.
        units: every row group, in file order then row-group order.
    """

    folder: Path
    roles: dict[str, str]
    files: tuple[DataFile, ...]
    units: tuple[Unit, ...]

    @property
    def n_rows(self) -> int:
        return sum(unit.rows for unit in self.units)


def is_partitioned(path: PathLike) -> bool:
    """Whether `path` is a folder (read as a partitioned log) rather than one file."""
    return Path(path).is_dir()


def _data_files(folder: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(name for name in dirs if not name.startswith(("_", ".")))
        found.extend(Path(root) / name for name in names
                     if name.endswith(".parquet") and not name.startswith(("_", ".")))
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def open_log(folder: PathLike, columns: Mapping[str, str] | None = None) -> PartitionedLog:
    """Lists a partitioned log's files and row groups and checks their columns (footers only).

    Every file must hold the role columns; a file that is not Parquet, or lacks a column, is
    an error naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError("expected a folder of Parquet files", path=str(folder))
    paths = _data_files(folder)
    if not paths:
        raise DataFormatError("no *.parquet files in this folder (names starting with _ or . "
                              "are skipped)", path=str(folder))
    files, units, roles = [], [], None
    for path in paths:
        relative = path.relative_to(folder).as_posix()
        try:
            metadata = pq.ParquetFile(path).metadata
        except (OSError, pa.ArrowException) as error:
            message = str(error).replace("\n", " ")
            raise DataFormatError(f"not a Parquet file: {message}", path=str(path)) from None
        present = list(metadata.schema.names)
        if roles is None:
            roles = resolve_columns(present, columns, f"file {path}")
        missing = [name for name in roles.values() if name not in present]
        if missing:
            raise DataFormatError(
                f"column {missing[0]!r} is missing (the log's first file has it); columns "
                f"present: {', '.join(present)}", path=str(path))
        files.append(DataFile(relative, path.stat().st_size, metadata.num_rows))
        units.extend(Unit(relative, group, metadata.row_group(group).num_rows)
                     for group in range(metadata.num_row_groups))
    return PartitionedLog(folder, dict(roles), tuple(files), tuple(units))


@dataclass(frozen=True)
class IdMaps:
    """Sorted unique external ids; internal id `u` is `users[u]`.

    Attributes:
        users: `[n_users]` pyarrow array (int64 or string).
        items: `[n_items]` pyarrow array.
        digest: sha256 of the maps' values: equal on hosts that map ids alike.
    """

    users: pa.Array
    items: pa.Array
    digest: str

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)


def _value_bytes(values: pa.Array) -> list[bytes]:
    """The values of an int64 or string array as bytes that do not depend on its memory
    layout (offsets, validity buffers): equal values, equal bytes."""
    if pa.types.is_integer(values.type):
        return [values.to_numpy(zero_copy_only=False).astype("<i8").tobytes()]
    offsets = np.frombuffer(values.buffers()[1], np.int32)[
        values.offset:values.offset + len(values) + 1]
    data = values.buffers()[2]
    text = b"" if data is None else bytes(memoryview(data)[offsets[0]:offsets[-1]])
    return [(offsets - offsets[0]).astype("<i4").tobytes(), text]


def _digest(users: pa.Array, items: pa.Array) -> str:
    hasher = hashlib.sha256()
    for values in (users, items):
        hasher.update(str(values.type).encode())
        hasher.update(len(values).to_bytes(8, "little"))
        for part in _value_bytes(values):
            hasher.update(len(part).to_bytes(8, "little"))
            hasher.update(part)
    return hasher.hexdigest()


def _id_column(values: pa.ChunkedArray | pa.Array, path: str, role: str, column: str) -> pa.Array:
    """A role's ids as one int64 or string array, normalised as the in-memory readers do:
    dictionaries decoded, strings stripped, whole-number floats as integers. Empty ids and
    other types are an error naming the file and the row."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    what = f"column {column!r} ({role} ids)"
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if values.null_count:
        row = int(pc.index(pc.is_null(values), True).as_py())
        raise DataFormatError(f"row index {row} of its row group: {what} has an empty id",
                              path=path)
    if pa.types.is_floating(values.type):
        as_int = pc.cast(values, pa.int64(), safe=False)
        if not pc.all(pc.equal(pc.cast(as_int, values.type), values)).as_py():
            raise DataFormatError(f"{what} holds numbers that are not whole: expected integer "
                                  "or string ids", path=path)
        values = as_int
    if pa.types.is_integer(values.type):
        try:
            return values.cast(pa.int64())
        except pa.ArrowInvalid:
            raise DataFormatError(f"{what} holds ids beyond int64", path=path) from None
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        values = pc.utf8_trim_whitespace(values.cast(pa.string()))
        empty = pc.equal(pc.utf8_length(values), 0)
        if pc.any(empty).as_py():
            row = int(pc.index(empty, True).as_py())
            raise DataFormatError(f"row index {row} of its row group: {what} has an empty id",
                                  path=path)
        return values
    raise DataFormatError(f"{what} is {values.type}; expected integer or string ids", path=path)


def read_unit(log: PartitionedLog, unit: Unit, names: list[str]) -> pa.Table:
    """The columns `names` of one row group; an error naming the file when it is gone or
    unreadable."""
    path = log.folder / unit.file
    try:
        return pq.ParquetFile(path).read_row_group(unit.row_group, columns=names)
    except FileNotFoundError:
        raise DataFormatError("a shard of the log is missing (listed when the log was opened)",
                              path=str(path)) from None
    except (OSError, pa.ArrowException) as error:
        message = str(error).replace("\n", " ")
        raise DataFormatError(f"row group {unit.row_group} cannot be read: {message}",
                              path=str(path)) from None


def _finish_ids(unique: pa.Array) -> pa.Array:
    """Distinct ids in the order of internal ids (`dataset.sorted_ids`, from the lexical order
    as `dataset.from_arrays` starts from, so ids equal as numbers keep that order)."""
    unique = unique.take(pc.sort_indices(unique))
    order = sorted_ids(unique.to_numpy(zero_copy_only=False))
    return unique.take(pa.array(order))


def build_id_maps(log: PartitionedLog) -> IdMaps:
    """The log's id maps, from one streamed pass over its user and item columns.

    Memory: the distinct ids seen so far (each row group's, merged when they outgrow the
    merged set), plus one row group.
    """
    merged: dict[str, pa.Array | None] = {"user": None, "item": None}
    pending: dict[str, list[pa.Array]] = {"user": [], "item": []}

    def merge(role: str) -> None:
        parts = ([] if merged[role] is None else [merged[role]]) + pending[role]
        merged[role] = pc.unique(pa.concat_arrays(parts)) if parts else merged[role]
        pending[role] = []

    for unit in log.units:
        path = str(log.folder / unit.file)
        table = read_unit(log, unit, [log.roles["user"], log.roles["item"]])
        for role in merged:
            column = log.roles[role]
            ids = pc.unique(_id_column(table[column], path, role, column))
            known = merged[role] if merged[role] is not None else (
                pending[role][0] if pending[role] else None)
            if known is not None and known.type != ids.type:
                raise DataFormatError(
                    f"column {column!r} holds {ids.type} ids here and {known.type} ids in "
                    "earlier files; expected one type", path=path)
            pending[role].append(ids)
            held = sum(len(part) for part in pending[role])
            if held > 2 * (0 if merged[role] is None else len(merged[role])) + 1_000_000:
                merge(role)
    for role in merged:
        merge(role)
    users, items = _finish_ids(merged["user"]), _finish_ids(merged["item"])
    return IdMaps(users, items, _digest(users, items))


def _manifest(log: PartitionedLog, maps: IdMaps) -> dict[str, Any]:
    return {
        "version": MANIFEST_VERSION,
        "roles": log.roles,
        "n_users": maps.n_users,
        "n_items": maps.n_items,
        "digest": maps.digest,
        "files": [{"path": f.path, "size": f.size, "rows": f.rows} for f in log.files],
    }


def check_maps_absent(log: PartitionedLog) -> Path:
    """Where `write_id_maps` writes; an error when maps are there already (built earlier)."""
    target = log.folder / MAPS_FOLDER
    if target.exists():
        raise DataFormatError(f"{MAPS_FOLDER}/ already exists (id maps built earlier); remove it "
                              "to build them again", path=str(log.folder))
    return target


def write_id_maps(log: PartitionedLog, maps: IdMaps) -> Path:
    """Stores `maps` in `<log>/_causalrec/`; refuses when that folder exists.

    Written to a temporary folder beside it and renamed, so a failure leaves nothing behind.
    """
    target = check_maps_absent(log)
    staging = Path(tempfile.mkdtemp(prefix=f"{MAPS_FOLDER}.", dir=log.folder))
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide the maps from other users
        pq.write_table(pa.table({"id": maps.users}), staging / "users.parquet")
        pq.write_table(pa.table({"id": maps.items}), staging / "items.parquet")
        (staging / MANIFEST).write_text(json.dumps(_manifest(log, maps), indent=1) + "\n")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_id_maps(log: PartitionedLog) -> IdMaps | None:
    """The id maps stored beside the log, checked against its files; None when there are none.

    A shard the manifest lists and the folder lacks, a shard the manifest does not list, or one
    whose size or row count changed: an error naming it (rebuild the maps after changing data).
    """
    folder = log.folder / MAPS_FOLDER
    if not folder.exists():
        return None
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest["version"] != MANIFEST_VERSION:
            raise ValueError(f"manifest version {manifest['version']}, expected "
                             f"{MANIFEST_VERSION}")
        listed = {str(entry["path"]): (int(entry["size"]), int(entry["rows"]))
                  for entry in manifest["files"]}
        built_for = {role: manifest["roles"][role] for role in ("user", "item")}
        digest = str(manifest["digest"])
        users = pq.read_table(folder / "users.parquet")["id"].combine_chunks()
        items = pq.read_table(folder / "items.parquet")["id"].combine_chunks()
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as error:
        message = str(error).replace("\n", " ")
        raise DataFormatError(f"unreadable id maps ({message}); remove {MAPS_FOLDER}/ and build "
                              "them again", path=str(folder)) from None
    present = {data_file.path: data_file for data_file in log.files}
    for path, (size, rows) in listed.items():
        if path not in present:
            raise DataFormatError("a shard listed in the id maps' manifest is missing",
                                  path=str(log.folder / path))
        data_file = present[path]
        if (data_file.size, data_file.rows) != (size, rows):
            raise DataFormatError(
                f"this shard changed since the id maps were built ({rows} rows, {size} bytes "
                f"then; {data_file.rows} rows, {data_file.size} bytes now); remove "
                f"{MAPS_FOLDER}/ and build them again", path=str(log.folder / path))
    for path in present:
        if path not in listed:
            raise DataFormatError(
                f"this shard is not in the id maps' manifest (added after they were built); "
                f"remove {MAPS_FOLDER}/ and build them again", path=str(log.folder / path))
    if built_for != {role: log.roles[role] for role in ("user", "item")}:
        raise DataFormatError(f"the id maps were built for the columns {built_for}, not "
                              f"{log.roles}", path=str(manifest_path))
    maps = IdMaps(users, items, _digest(users, items))
    if maps.digest != digest:
        raise DataFormatError("the id maps do not match their manifest's digest; remove "
                              f"{MAPS_FOLDER}/ and build them again", path=str(folder))
    return maps


def id_maps(log: PartitionedLog) -> IdMaps:
    """The stored maps when present (checked), else built by one streamed pass."""
    stored = read_id_maps(log)
    return stored if stored is not None else build_id_maps(log)


def _codes(ids: pa.Array, id_map: pa.Array, path: str, role: str) -> np.ndarray:
    """Internal ids of `ids`; an error naming the first id the map lacks."""
    if pa.types.is_integer(id_map.type):  # sorted numerically: a binary search
        known = id_map.to_numpy()
        values = ids.to_numpy()
        codes = np.minimum(np.searchsorted(known, values), max(len(known) - 1, 0))
        missing = np.flatnonzero(known[codes] != values) if len(known) else np.arange(len(ids))
    else:
        found = pc.index_in(ids, value_set=id_map)
        missing = np.flatnonzero(found.is_null().to_numpy(zero_copy_only=False))
        codes = found.fill_null(0).to_numpy(zero_copy_only=False)
    if len(missing):
        position = int(missing[0])
        raise DataFormatError(
            f"{role} id {ids[position].as_py()!r} (row {position} of this row group) is not in "
            f"the id maps; remove {MAPS_FOLDER}/ and build them again", path=path)
    return codes.astype(np.int32)


def read_block(log: PartitionedLog, maps: IdMaps, unit: Unit,
               timestamps: bool = False) -> dict[str, np.ndarray]:
    """One row group as `{"users", "items": [rows] int32, "ratings": [rows] float32}`
    (ratings 1 when the log has none; `"timestamps"` float64 when asked and present)."""
    path = str(log.folder / unit.file)
    wanted = [log.roles["user"], log.roles["item"]]
    for role in ("rating", "timestamp"):
        if role in log.roles and (role == "rating" or timestamps):
            wanted.append(log.roles[role])
    table = read_unit(log, unit, wanted)
    block = {}
    for role, key, id_map in (("user", "users", maps.users), ("item", "items", maps.items)):
        column = log.roles[role]
        block[key] = _codes(_id_column(table[column], path, role, column), id_map, path, role)
    if "rating" in log.roles:
        ratings = table[log.roles["rating"]]
        if not (pa.types.is_integer(ratings.type) or pa.types.is_floating(ratings.type)):
            raise DataFormatError(f"column {log.roles['rating']!r} (ratings) is {ratings.type}; "
                                  "expected numbers", path=path)
        block["ratings"] = ratings.to_numpy().astype(np.float32)  # nulls become NaN
    else:
        block["ratings"] = np.ones(table.num_rows, np.float32)
    if timestamps and "timestamp" in log.roles:
        column = log.roles["timestamp"]
        # As the in-memory readers parse them: numbers, datetimes, ISO 8601 text.
        block["timestamps"] = parse_times(table[column].to_pandas(), Where(path),
                                          f"column {column!r}")
    return block


def iter_blocks(log: PartitionedLog, maps: IdMaps, units: tuple[Unit, ...] | list[Unit],
                timestamps: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """`read_block` of each unit in turn (one row group in memory at a time)."""
    for unit in units:
        yield read_block(log, maps, unit, timestamps)


def host_units(log: PartitionedLog, process_index: int, process_count: int) -> tuple[Unit, ...]:
    """The row groups host `process_index` of `process_count` reads, in log order.

    Deterministic from the footers alone (every host computes every host's share): row groups,
    largest first, each go to the host with the fewest rows so far (ties: the lowest index).
    A log with fewer row groups than hosts is refused.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process {process_index} of {process_count}")
    if len(log.units) < process_count:
        raise DataFormatError(
            f"{len(log.units)} row groups cannot be shared by {process_count} hosts; write the "
            "log with at least one row group per host", path=str(log.folder))
    return host_shares(log, process_count)[process_index]


def host_shares(log: PartitionedLog, process_count: int) -> list[tuple[Unit, ...]]:
    """Every host's `host_units` (in log order)."""
    loads = [0] * process_count
    shares: list[list[int]] = [[] for _ in range(process_count)]
    ranked = sorted(range(len(log.units)), key=lambda i: (-log.units[i].rows, i))
    for index in ranked:
        host = min(range(process_count), key=lambda h: (loads[h], h))
        shares[host].append(index)
        loads[host] += log.units[index].rows
    return [tuple(log.units[i] for i in sorted(share)) for share in shares]


def log_statistics(log: PartitionedLog, maps: IdMaps | None = None) -> dict[str, Any]:
    """`data.stats.dataset_statistics` of the whole log, streamed one row group at a time.

    Memory: the per-user and per-item counts, the id maps and one row group. The maps are the
    stored ones when present, else built first (a second streamed pass). Adds `partitioned`:
    `files`, `row_groups`, `bytes` and `id_maps` (`"stored"` or `"built"`).
    """
    stored = maps is not None or (log.folder / MAPS_FOLDER).exists()
    maps = maps if maps is not None else id_maps(log)
    user_counts = np.zeros(maps.n_users, np.int64)
    item_counts = np.zeros(maps.n_items, np.int64)
    ratings = RatingSummary()
    low, high = np.inf, -np.inf
    for block in iter_blocks(log, maps, log.units, timestamps=True):
        user_counts += np.bincount(block["users"], minlength=maps.n_users)
        item_counts += np.bincount(block["items"], minlength=maps.n_items)
        ratings.add(block["ratings"])
        if "timestamps" in block:
            finite = block["timestamps"][np.isfinite(block["timestamps"])]
            if len(finite):
                low, high = min(low, finite.min()), max(high, finite.max())
    stats: dict[str, Any] = {"name": log.folder.name, "format": "parquet",
                             "raw_rows": log.n_rows}
    stats.update(count_statistics(user_counts, item_counts, ratings.result()))
    if np.isfinite(low):
        stats["timestamp"] = {"min": float(low), "max": float(high), "span": float(high - low)}
    stats["partitioned"] = {"files": len(log.files), "row_groups": len(log.units),
                            "bytes": sum(data_file.size for data_file in log.files),
                            "id_maps": "stored" if stored else "built"}
    return stats
