"""Training epochs streamed from a partitioned Parquet log that does not fit in memory.

Each host reads its own row groups (`data.partitioned.host_units`: every host computes every
host's share from the files' footers, so no coordination is needed), in an order drawn anew
each epoch, and cuts that stream into *windows* of `window_batches x batch_size` rows. A window
is the shuffle buffer: its rows are permuted, cut into batches, sent to the device and trained
as one `lax.scan` segment of the in-memory epoch's own step (`train.step.make_scan_batches`:
same step function, same per-step keys). JAX dispatches the segment asynchronously, so the
host reads the next window while the device trains on this one, and then waits: at most two
windows are in flight, so memory does not grow with the log. Memory on the host: two windows,
one row group and the id maps.

Every host runs the same number of windows: the largest host's (known from the footers). A
host that has run out feeds all-padding windows, which apply no step. With several processes
a step's batch is every host's local batch side by side (`batch_size` rows per host), built
with `jax.make_array_from_process_local_data`.

Randomness (`streams`): the row-group order of host `h` in epoch `e` is a permutation keyed
`index(index(derive(train_key, Epoch.STREAM_UNITS), e), h)`; window `w`'s shuffle is a NumPy
Philox generator keyed by the data of `index(index(index(derive(train_key,
Epoch.STREAM_WINDOWS), e), h), w)`. All of an epoch's keys are drawn in one device call at its
start, so the reading loop never waits for the device. `epoch_plan` and `window_permutation`
are that order, public so that a test can replay it on the log read whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from causalrec_jax import streams
from causalrec_jax.data.partitioned import (
    IdMaps,
    PartitionedLog,
    Unit,
    host_shares,
    host_units,
    id_maps,
    iter_blocks,
    open_log,
)
from causalrec_jax.errors import CausalRecError, ConfigError
from causalrec_jax.parallel.distributed import agree, local_copy, to_global, together
from causalrec_jax.parallel.sharding import batch_sharding, replicated, state_shardings
from causalrec_jax.train.step import make_scan_batches

FIELDS = ("users", "items", "ratings")


@dataclass(frozen=True)
class StreamSource:
    """A partitioned log as this host streams it.

    Attributes:
        log: the log's files and row groups (`data.partitioned.open_log`).
        maps: the id maps every host uses.
        shares: every host's row groups (`data.partitioned.host_shares`).
        process_index: this host.
        keep_fn: `block -> [rows] bool`, the rows a step trains on (e.g. a ranking loss's
            positives); None: every row. Rows not kept stay in the stream, masked.
    """

    log: PartitionedLog
    maps: IdMaps
    shares: tuple[tuple[Unit, ...], ...]
    process_index: int = 0
    keep_fn: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None

    @property
    def process_count(self) -> int:
        return len(self.shares)

    @property
    def units(self) -> tuple[Unit, ...]:
        """This host's row groups, in log order."""
        return self.shares[self.process_index]

    def host_rows(self) -> list[int]:
        return [sum(unit.rows for unit in share) for share in self.shares]


def open_source(folder: Any, columns: Mapping[str, str] | None = None, *,
                process_index: int | None = None, process_count: int | None = None,
                keep_fn: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None,
                ) -> StreamSource:
    """A log's `StreamSource` for this process (`jax.process_index()` of
    `jax.process_count()` by default).

    The id maps are the stored ones when present (checked against the files), else built by one
    streamed pass. With several processes the hosts compare (`agree`) the maps' digest and
    the files' paths, sizes and row counts (which every host's share comes from): hosts that
    differ, or a host that cannot open the log, stop every host with one error naming them.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    joint = process_count > 1 and jax.process_count() > 1
    what = f"open the log {folder} (its files, row groups and id maps)"
    try:
        log = open_log(folder, columns)
        if len(log.units) < process_count:
            host_units(log, process_index, process_count)  # its one-line refusal
        maps = id_maps(log)
    except CausalRecError as error:
        if joint:  # the others stop too, naming this process, instead of waiting for it
            together(error, what)
        raise
    if joint:
        # The maps, and the footers every host's share and the epoch's windows come from.
        agree(json.dumps([maps.digest, log.roles,
                          [(f.path, f.size, f.rows) for f in log.files]]), what)
    shares = tuple(host_shares(log, process_count))
    return StreamSource(log, maps, shares, process_index, keep_fn)


@dataclass(frozen=True)
class EpochPlan:
    """One epoch of one host, drawn before any data is read.

    Attributes:
        units: this host's row groups in the epoch's order.
        n_windows: windows every host runs (the largest host's count).
        window_seeds: `[n_windows]` uint64 Philox keys of this host's window shuffles.
        n_batches: batches holding at least one real row on some host (the epoch's steps).
    """

    units: tuple[Unit, ...]
    n_windows: int
    window_seeds: np.ndarray
    n_batches: int


def epoch_plan(source: StreamSource, key: jax.Array, epoch: int, batch_size: int,
               window_batches: int) -> EpochPlan:
    """The row-group order and window keys of `source`'s host in `epoch` (see the module)."""
    window_rows = batch_size * window_batches
    rows = source.host_rows()
    n_windows = max(1, max(-(-count // window_rows) for count in rows))
    n_batches = max(-(-count // batch_size) for count in rows)
    host = source.process_index
    units_key = streams.index(streams.index(
        streams.derive(key, streams.Epoch.STREAM_UNITS), epoch), host)
    windows_key = streams.index(streams.index(
        streams.derive(key, streams.Epoch.STREAM_WINDOWS), epoch), host)
    order, seeds = _draw_plan(units_key, windows_key, len(source.units), n_windows)
    words = np.asarray(seeds).astype(np.uint64)  # [n_windows, 2] uint32 words
    window_seeds = (words[:, 0] << np.uint64(32)) | words[:, 1]
    units = tuple(source.units[int(i)] for i in np.asarray(order))
    return EpochPlan(units, n_windows, window_seeds, n_batches)


def _draw_plan(units_key, windows_key, n_units, n_windows):
    order = jax.random.permutation(units_key, n_units)
    keys = jax.vmap(lambda w: streams.index(windows_key, w))(jnp.arange(n_windows))
    return jax.device_get((order, jax.random.key_data(keys)))


def window_permutation(seed: np.uint64, n_rows: int) -> np.ndarray:
    """`[n_rows]` the shuffle of a window holding `n_rows` real rows."""
    return np.random.Generator(np.random.Philox(key=int(seed))).permutation(n_rows)


def iter_windows(source: StreamSource, plan: EpochPlan, batch_size: int, window_batches: int,
                 fields: tuple[str, ...] = FIELDS) -> Iterator[dict[str, np.ndarray]]:
    """This host's windows of `plan`: `{field: [window_batches, batch_size], "mask": bool}`.

    Reads one row group at a time; yields exactly `plan.n_windows` windows (the last ones
    all padding on a host with fewer rows). A row is masked when `source.keep_fn` leaves it
    out or its rating is not finite (a null rating: no row trains on NaN).
    """
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"fields {sorted(unknown)}: a streamed window holds {FIELDS}")
    window_rows = batch_size * window_batches
    emitted = 0

    def window(rows: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        n_real = 0 if rows is None else len(rows["keep"])
        order = np.zeros(window_rows, np.int64)
        valid = np.zeros(window_rows, bool)
        if n_real:
            order[:n_real] = window_permutation(plan.window_seeds[emitted], n_real)
            valid[:n_real] = True
        batch = {}
        for name in fields:
            values = (np.zeros(1, np.float32 if name == "ratings" else np.int32)
                      if rows is None else rows[name])
            batch[name] = values[order].reshape(window_batches, batch_size)
        keep = valid if rows is None else valid & rows["keep"][order]
        batch["mask"] = keep.reshape(window_batches, batch_size)
        return batch

    # The rows read and not yet windowed: `buffer[cursor:]` (one copy per row group read).
    buffer: dict[str, np.ndarray] | None = None
    cursor = 0
    for block in iter_blocks(source.log, source.maps, plan.units):
        keep = np.isfinite(block["ratings"])
        if source.keep_fn is not None:
            keep &= np.asarray(source.keep_fn(block), bool)
        # A masked NaN would still reach the gradient (0 x NaN): masked ratings become 0.
        block = {**{name: block[name] for name in fields}, "keep": keep}
        if "ratings" in block:
            block["ratings"] = np.where(np.isfinite(block["ratings"]), block["ratings"],
                                        np.float32(0))
        if buffer is None or cursor == len(buffer["keep"]):
            buffer = block
        else:
            buffer = {name: np.concatenate([buffer[name][cursor:], block[name]])
                      for name in block}
        cursor = 0
        while len(buffer["keep"]) - cursor >= window_rows:
            yield window({name: values[cursor:cursor + window_rows]
                          for name, values in buffer.items()})
            emitted += 1
            cursor += window_rows
    if buffer is not None and cursor < len(buffer["keep"]):
        yield window({name: values[cursor:] for name, values in buffer.items()})
        emitted += 1
    while emitted < plan.n_windows:
        yield window(None)
        emitted += 1


def make_stream_epoch(
    train_step: Callable[..., Any],
    *,
    batch_size: int,
    window_batches: int,
    mesh: Mesh | None = None,
    tables: Mapping[str, str] | None = None,
    fields: tuple[str, ...] = FIELDS,
) -> Callable[..., tuple[Any, dict[str, Any]]]:
    """Builds `run_epoch(state, source, key, epoch, shared=None) -> (state, metrics)`.

    A host function (its segment program is jitted once, the state donated). `batch_size` is
    each host's share of a step's batch. `mesh`: the state's row tables (`tables`, as
    `parallel.sharding`) sharded over `model` and each batch over `data` (needed with several
    processes); None: one device. `shared`: arrays every step sees whole (e.g. the model's
    constants), replicated. `metrics`: `loss` (mean over the epoch's real batches before a
    non-finite one), `first_bad_batch` (-1 when all were finite), `rows` (this host's).
    """
    scan_batches = make_scan_batches(train_step)
    window_rows = batch_size * window_batches
    programs: dict[Any, Callable[..., Any]] = {}

    def program(state: Any) -> Callable[..., Any]:
        signature = jax.tree.structure(state)
        if signature not in programs:
            if mesh is None:
                programs[signature] = jax.jit(scan_batches, donate_argnums=(0,))
            else:
                shardings = state_shardings(state, mesh, dict(tables or {}))
                everywhere = replicated(mesh)
                programs[signature] = jax.jit(
                    scan_batches,
                    in_shardings=(shardings, batch_sharding(mesh), everywhere, everywhere,
                                  everywhere, everywhere),
                    out_shardings=(shardings, everywhere, everywhere), donate_argnums=(0,))
        return programs[signature]

    def place(batch: dict[str, np.ndarray], process_count: int) -> dict[str, jax.Array]:
        if mesh is None:
            return {name: jnp.asarray(values) for name, values in batch.items()}
        sharding = batch_sharding(mesh)
        if process_count == 1:
            return jax.device_put(batch, sharding)
        shape = (window_batches, batch_size * process_count)
        return {name: jax.make_array_from_process_local_data(sharding, values, shape)
                for name, values in batch.items()}

    def run_epoch(state: Any, source: StreamSource, key: jax.Array, epoch: int,
                  shared: dict[str, Any] | None = None):
        if source.process_count > 1 and (mesh is None
                                         or mesh.shape["data"] % source.process_count):
            raise ConfigError(
                f"a log streamed by {source.process_count} processes needs a mesh whose data "
                f"axis splits over them (each holds its own rows of a batch); got "
                f"{None if mesh is None else dict(mesh.shape)}")
        plan = epoch_plan(source, key, epoch, batch_size, window_batches)
        step_program = program(state)
        if mesh is None:
            def put(tree):
                return tree
        elif source.process_count == 1:
            def put(tree):
                return jax.device_put(tree, replicated(mesh))
        else:
            def put(tree):
                return to_global(tree, mesh)
        shared, key = put({} if shared is None else shared), put(key)
        first_bad = put(jnp.asarray(-1, jnp.int32))
        losses = []
        for index, batch in enumerate(iter_windows(source, plan, batch_size, window_batches,
                                                   fields)):
            state, first_bad, window_losses = step_program(
                state, place(batch, source.process_count), shared, key, first_bad,
                put(jnp.asarray(index * window_batches, jnp.int32)))
            if losses:  # at most two windows in flight: the host reads ahead by one, no more
                losses[-1].block_until_ready()
            losses.append(window_losses)
        # Replicated results: every process holds their whole value.
        batch_losses = np.concatenate([local_copy(part) for part in losses])[: plan.n_batches]
        bad = int(local_copy(first_bad))
        n_good = plan.n_batches if bad < 0 else bad
        return state, {"loss": float(batch_losses.sum() / max(n_good, 1)),
                       "first_bad_batch": bad,
                       "rows": source.host_rows()[source.process_index],
                       "windows": plan.n_windows, "window_rows": window_rows}

    return run_epoch

