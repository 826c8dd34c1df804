"""Explicit per-shard programs over a row-sharded table (`jax.shard_map`).

The training program leaves lookups to the partitioner (`parallel.sharding`); these are the
same operations written per shard, for code that wants the communication spelled out, and
the catalogue's top-K, which the partitioner would not split this way:

- `sharded_lookup`: rows of a table sharded `P('model', None)` at ids split over `data`:
  each shard gathers the ids in its own row range (zeros elsewhere) and the shards' parts are
  summed over `model` (one all-reduce of the looked-up rows, never of the table).
  Differentiable: the gradient of a table lands on the shard that holds its rows.
- `sharded_top_k`: each user's K best items over a sharded item table: every shard scores its
  rows and keeps its own K best, the `model` shards' K-lists are gathered (K x shards per
  user) and merged. The same items, scores and tie order as `lax.top_k` over the whole
  catalogue (ties go to the lower item id).
- `sharded_rows_top_k`: the same merge over score rows already split by item over `model`
  (what the partitioner leaves a model's `score_all` over a row-sharded item table with):
  `recommend --all --mesh` serves a catalogue no one device holds this way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P


def _rows_per_shard(table: jax.Array, mesh: Mesh) -> int:
    shards = mesh.shape["model"]
    if table.shape[0] % shards:
        raise ValueError(f"a table of {table.shape[0]} rows cannot be split over {shards} "
                         "model shards; pad it (parallel.pad_rows)")
    return table.shape[0] // shards


def sharded_lookup(table: jax.Array, ids: jax.Array, mesh: Mesh) -> jax.Array:
    """`table[ids]` for `table [n, ...]` row-sharded over `model` and `ids [b]` split over
    `data` (`b` a multiple of the data axis); returns `[b, ...]` split over `data`."""
    n_local = _rows_per_shard(table, mesh)
    spec = P("model", *([None] * (table.ndim - 1)))

    def local(shard, ids):
        local_ids = ids - jax.lax.axis_index("model") * n_local
        inside = (local_ids >= 0) & (local_ids < n_local)
        rows = shard[jnp.where(inside, local_ids, 0)]
        rows = jnp.where(inside.reshape(inside.shape + (1,) * (rows.ndim - 1)), rows, 0)
        return jax.lax.psum(rows, "model")

    return jax.shard_map(local, mesh=mesh, in_specs=(spec, P("data")),
                         out_specs=P("data"))(table, ids)


def sharded_top_k(queries: jax.Array, table: jax.Array, k: int, n_items: int, mesh: Mesh,
                  exclude: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The `k` best of `queries [b, d] @ table[:n_items].T` per row, `table [n, d]`
    row-sharded over `model` (rows past `n_items`: padding, never returned), `queries`
    split over `data`; `exclude [b, n]` bool (split over `data` and `model`) leaves items
    out (a user's seen items). Returns `(scores [b, k], items [b, k])`, best first.
    `k` must not exceed the rows of one shard."""
    n_local = _rows_per_shard(table, mesh)
    if k > n_local:
        raise ValueError(f"k = {k} is more than one shard's {n_local} rows")
    if exclude is None:
        exclude = jnp.zeros((queries.shape[0], table.shape[0]), bool)

    def local(queries, shard, exclude):
        offset = jax.lax.axis_index("model") * n_local
        scores = queries @ shard.T  # [b_local, n_local]
        ids = offset + jnp.arange(n_local)
        scores = jnp.where((ids[None, :] < n_items) & ~exclude, scores, -jnp.inf)
        return _merged_top_k(scores, k, offset)

    # The merged lists are the same on every model shard (each merges the same gathered
    # lists), which the replication check cannot see through `all_gather`: hence check_vma off
    # (here and in `sharded_rows_top_k`).
    return jax.shard_map(local, mesh=mesh,
                         in_specs=(P("data", None), P("model", None), P("data", "model")),
                         out_specs=(P("data", None), P("data", None)),
                         check_vma=False)(queries, table, exclude)


def _merged_top_k(scores: jax.Array, k: int, offset: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inside `shard_map`: this shard's `k` best of `scores [b, n_local]` (its items start
    at `offset`), gathered with every `model` shard's (in shard order) and merged: ties go to
    the lower item id, as `lax.top_k` over the whole row."""
    best, where = jax.lax.top_k(scores, k)
    best = jax.lax.all_gather(best, "model", axis=1, tiled=True)  # [b, shards * k]
    items = jax.lax.all_gather(where + offset, "model", axis=1, tiled=True)
    merged, position = jax.lax.top_k(best, k)
    return merged, jnp.take_along_axis(items, position, axis=1)


def sharded_rows_top_k(scores: jax.Array, k: int, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    """The `k` best of each row of `scores [b, n]`, whose columns (items) are split over
    `model` (`n` a multiple of its size; rows replicated). Returns `(scores [b, k],
    items [b, k])`, best first, as `lax.top_k` (ties to the lower item id). `k` must not
    exceed one shard's columns."""
    n_local = _rows_per_shard(scores.T, mesh)
    if k > n_local:
        raise ValueError(f"k = {k} is more than one shard's {n_local} items")

    def local(scores):
        return _merged_top_k(scores, k, jax.lax.axis_index("model") * n_local)

    return jax.shard_map(local, mesh=mesh, in_specs=P(None, "model"),
                         out_specs=(P(), P()), check_vma=False)(scores)
