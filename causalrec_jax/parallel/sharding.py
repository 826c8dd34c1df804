"""Row-sharded embedding tables and data-parallel batches over a `('data', 'model')` mesh.

A model's row tables (`models.base.row_tables`: the embeddings and biases whose row r belongs
to user or item r) are split by rows over the mesh's `model` axis, `P('model', None)`, so a
catalogue larger than one device's memory trains; every other parameter is replicated. The
optimiser's state follows its parameters: Adam's moments of a row table are sharded as the
table (the rule reads the table's name in the leaf's path, which optax's states repeat). A
batch is split over `data`. The training program is the one core's epoch (`train.step`),
compiled with these shardings as its explicit input and output shardings and the states
donated; the partitioner (GSPMD) turns a lookup of a row-sharded table into a local masked
gather and a batch-sized all-reduce, and the gradient of a table into a shard-sized one, so
no device ever holds or moves a whole table (`table_collectives` checks a compiled program
for that).

The row count of a sharded table must divide by the `model` axis: `pad_rows` appends zero rows
(ids past the real count, which no lookup reads and no sampled negative draws, so they get no
gradient and stay zero under Adam and weight decay; DP-SGD's noise reaches them, which
nothing reads either) and `unpad_rows` cuts them off again
before anything is scored or written, so a run folder never sees them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from causalrec_jax.models.base import table_kind
from causalrec_jax.parallel.distributed import host_values, is_multiprocess
from causalrec_jax.parallel.mesh import padded_count
from causalrec_jax.train.checkpoint import host_like
from causalrec_jax.train.loop import CheckpointView, place


def _map_tables(fn: Callable[[jax.Array, str], jax.Array], tree: Any,
                tables: dict[str, str]) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: fn(leaf, table_kind(path, tables)), tree)


def pad_rows(tree: Any, tables: dict[str, str], counts: dict[str, int], multiple: int,
             row_axis: int = 0) -> Any:
    """`tree` with every row table (axis `row_axis`, of length `counts[kind]`) padded with
    zero rows to a multiple of `multiple`; other leaves unchanged. NumPy tables are padded on
    the host (`np.pad`), others by JAX."""

    def pad(leaf, kind):
        if not kind or jnp.ndim(leaf) <= row_axis:
            return leaf
        n = counts[kind]
        if leaf.shape[row_axis] != n:
            raise ValueError(f"a {kind} table of {leaf.shape[row_axis]} rows, expected {n}")
        extra = padded_count(n, multiple) - n
        widths = [(0, 0)] * leaf.ndim
        widths[row_axis] = (0, extra)
        if not extra:
            return leaf
        return (np.pad if isinstance(leaf, np.ndarray) else jnp.pad)(leaf, widths)

    return _map_tables(pad, tree, tables)


def unpad_rows(tree: Any, tables: dict[str, str], counts: dict[str, int], row_axis: int = 0
               ) -> Any:
    """`tree` with every row table cut back to its first `counts[kind]` rows."""

    def cut(leaf, kind):
        if not kind or jnp.ndim(leaf) <= row_axis:
            return leaf
        return jax.lax.slice_in_dim(leaf, 0, counts[kind], axis=row_axis)

    return _map_tables(cut, tree, tables)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """An epoch's `[n_batches, batch_size]` rows: each batch split over `data`."""
    return NamedSharding(mesh, P(None, "data"))


def state_shardings(tree: Any, mesh: Mesh, tables: dict[str, str], row_axis: int = 0) -> Any:
    """A `NamedSharding` per leaf of `tree` (parameters, optimiser state, a whole
    `TrainState`; arrays or `jax.ShapeDtypeStruct`s, e.g. from `jax.eval_shape`): a row
    table's rows (axis `row_axis`) over `model`, every other leaf replicated."""

    def sharding(leaf, kind):
        if not kind or len(leaf.shape) <= row_axis:
            return replicated(mesh)
        spec = [None] * len(leaf.shape)
        spec[row_axis] = "model"
        return NamedSharding(mesh, P(*spec))

    return _map_tables(sharding, tree, tables)


def make_sharded_run_epoch(run_epoch: Callable[..., Any], mesh: Mesh,
                           tables: dict[str, str]) -> Callable[..., Any]:
    """`run_epoch(states, data, keys, epoch) -> (states, metrics)` (seeds stacked on axis 0
    of every state leaf) compiled over `mesh`, with explicit shardings: the states
    row-sharded (`state_shardings`, rows on axis 1) in and out, and donated; the data, keys
    and metrics replicated. Compiled on the first call for each structure of states and data
    (their shardings are read from the shapes); `.program(states, data)` gives that jitted
    function (e.g. to `.lower(...)` it and read its HLO)."""
    programs: dict[Any, Callable[..., Any]] = {}
    everywhere = replicated(mesh)

    def program(states: Any, data: Any) -> Callable[..., Any]:
        signature = (jax.tree.structure(states), jax.tree.structure(data))
        if signature not in programs:
            shardings = state_shardings(states, mesh, tables, row_axis=1)
            programs[signature] = jax.jit(
                run_epoch, in_shardings=(shardings, everywhere, everywhere, everywhere),
                out_shardings=(shardings, everywhere), donate_argnums=(0,))
        return programs[signature]

    def sharded(states, data, keys, epoch):
        return program(states, data)(states, data, keys, epoch)

    sharded.program = program
    return sharded


def whole_tables(params: Any, tables: dict[str, str], counts: dict[str, int],
                 row_axis: int = 0) -> Any:
    """`params` of a sharded run with the padding rows cut off (rows on `row_axis`), gathered
    whole on one local device of each host (over several processes a collective,
    `host_values`): what validation, the test and the run folder read. On ml-100k with 8
    virtual CPU devices, validation from the sharded tables took 63 s, from these 6.2 s."""
    values = unpad_rows(params, tables, counts, row_axis)
    values = host_values(values) if is_multiprocess() else jax.device_get(values)
    return jax.device_put(values, jax.local_devices()[0])  # scored without copying per block


def checkpoint_view(tables: dict[str, str], counts: dict[str, int],
                    mesh_shape: tuple[int, ...]) -> CheckpointView:
    """How a sharded run stores its checkpoints (`train.loop.CheckpointView`, seeds stacked
    on axis 0): every row table at its real row count whatever the padding, so a checkpoint
    written on one mesh resumes on another or on one device; read back whole, then padded and
    placed as the current mesh's states are. The whole values are read into host memory
    (NumPy, `train.checkpoint.host_like`), never onto a device: a table may fit no single
    device; every process pads them there and places its own devices' parts."""

    def save(arrays):
        return unpad_rows(arrays, tables, counts, row_axis=1)

    def stored(like):
        return host_like(jax.eval_shape(save, like))

    def load(read, like):
        host = jax.tree.map(np.asarray, read)
        return place(pad_rows(host, tables, counts, mesh_shape[1], row_axis=1), like)

    return CheckpointView(save=save, stored=stored, load=load)


# A collective in an HLO module's text: its result shapes (e.g. `f32[1000,16]{1,0}`, or a
# tuple of them) and its kind.
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "reduce-scatter", "collective-permute")
_COLLECTIVE = re.compile(
    r"=\s*\(?((?:[a-z0-9]+\[[0-9,]*\][^ ]*,?\s*)+)\)?\s*"
    r"(all-gather|all-reduce|all-to-all|reduce-scatter|collective-permute)(?:-start)?\(")
_SHAPE = re.compile(r"[a-z0-9]+\[([0-9,]*)\]")


def table_collectives(hlo_text: str, rows: int) -> list[str]:
    """The collectives of a compiled program (`jitted.lower(...).compile().as_text()`) whose
    result has an axis of at least `rows` elements (the smallest sharded table's padded row
    count): a gathered or reduced whole table, which a row-sharded program must not move."""
    found = []
    for line in hlo_text.splitlines():
        match = _COLLECTIVE.search(line)
        if not match:
            continue
        for dims in _SHAPE.findall(match.group(1)):
            if any(int(d) >= rows for d in dims.split(",") if d):
                found.append(line.strip())
                break
    return found
