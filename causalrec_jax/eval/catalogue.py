"""Scoring a huge catalogue in item chunks: top-K and the rank of a target, in bounded memory.

A dense evaluation forms the `[batch, n_items]` score matrix (`queries @ item_table.T`): for
256 users and 1,000,000 items that is 1 GB of float32, before `top_k` adds its own temporaries.
The functions here walk the catalogue `chunk_size` items at a time with `lax.scan`: each step
scores one chunk with one matmul and folds it into a small running summary, so temporary memory
is `O(batch * chunk_size)` whatever `n_items` is. Nothing of shape `[batch, n_items]` is ever
formed; shapes are static, so each function compiles once per (batch, n_items, dim, k,
chunk_size).

- `chunked_top_k`: each user's K best items; identical to `jax.lax.top_k(scores, k)` on the
  full row, ties included (the lower item index first).
- `chunked_target_rank`: the 0-based rank of one target item per user, counted chunk by chunk.
  With `ties="pessimistic"` (the default, DESIGN §3) the target loses every tie, the rule of
  `causalrec_jax.eval.metrics`; `ties="optimistic"` counts only strictly higher items.
- `metrics_from_ranks`: hit/ndcg/mrr (and recall/precision/map) at K for one relevant item per
  user, from those ranks; equal to `ranking_metrics` / `evaluate_full_ranking` on the same
  scores when each user has exactly one test positive.

Seen items are masked with `exclude`, a padded `[batch, m]` int32 array of item ids (-1 is
padding): inside each chunk those columns are set to -inf (top-K) or not counted (rank).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp

from causalrec_jax.eval.metrics import RANKING_METRICS, _clean_scores

Ties = Literal["pessimistic", "optimistic"]


# ----------------------------------------------------------------------------- helpers


def _check_sizes(queries, item_table, k: int | None, chunk_size: int) -> int:
    """Validates shapes; returns the chunk size actually used (at most n_items)."""
    if queries.ndim != 2 or item_table.ndim != 2 or queries.shape[1] != item_table.shape[1]:
        raise ValueError(
            f"queries must be [batch, dim] and item_table [n_items, dim], got {queries.shape} "
            f"and {item_table.shape}"
        )
    n_items = item_table.shape[0]
    if n_items < 1:
        raise ValueError("item_table must hold at least one item")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = min(int(chunk_size), n_items)
    if k is not None:
        if not 1 <= k <= n_items:
            raise ValueError(f"k must be in [1, n_items={n_items}], got {k}")
        if k > chunk_size:
            raise ValueError(f"k={k} must not exceed chunk_size={chunk_size}")
    return chunk_size


def _check_exclude(exclude, batch: int):
    if exclude is None:
        return None
    exclude = jnp.asarray(exclude)
    if exclude.ndim != 2 or exclude.shape[0] != batch:
        raise ValueError(f"exclude must be [batch={batch}, m], got shape {exclude.shape}")
    if not jnp.issubdtype(exclude.dtype, jnp.integer):
        raise ValueError(f"exclude must hold integer item ids, got dtype {exclude.dtype}")
    return exclude.astype(jnp.int32)


def _chunk_scores(queries, item_table, item_bias, start, size: int, precision):
    """Scores `[batch, size]` of items `start .. start + size - 1`, plus their ids `[size]`.

    `dynamic_slice` reads the chunk straight from the table: padding the table to a multiple
    of the chunk size instead would copy all of it (another 256 MB at 1M x 64).
    """
    rows = jax.lax.dynamic_slice_in_dim(item_table, start, size, axis=0)
    scores = jnp.matmul(queries, rows.T, precision=precision)
    if item_bias is not None:
        scores = scores + jax.lax.dynamic_slice_in_dim(item_bias, start, size)[None, :]
    # -0.0 and +0.0 tie, as everywhere in the library (`top_k` alone orders -0.0 lower).
    scores = jnp.where(scores == 0, jnp.zeros_like(scores), scores)
    return scores, start + jnp.arange(size, dtype=jnp.int32)


def _excluded_in_chunk(exclude, start, size: int) -> jax.Array:
    """`[batch, size]` bool: which of the chunk's columns each user excludes.

    A scatter of the `[batch, m]` ids shifted to the chunk; ids outside the chunk (and the -1
    padding) land out of bounds and are dropped, so no `[batch, n_items]` mask is formed.
    """
    batch = exclude.shape[0]
    local = exclude - start
    inside = (exclude >= 0) & (local >= 0) & (local < size)
    column = jnp.where(inside, local, size)
    rows = jnp.arange(batch)[:, None]
    return jnp.zeros((batch, size), bool).at[rows, column].set(True, mode="drop")


def _chunk_plan(n_items: int, chunk_size: int) -> tuple[int, int]:
    """(number of full chunks, size of the last partial chunk, 0 when none)."""
    return n_items // chunk_size, n_items % chunk_size


# ----------------------------------------------------------------------------- top-K


def chunked_top_k(
    queries: jax.Array,
    item_table: jax.Array,
    k: int,
    *,
    chunk_size: int = 65536,
    exclude: jax.Array | None = None,
    item_bias: jax.Array | None = None,
    precision: jax.lax.PrecisionLike = None,
) -> tuple[jax.Array, jax.Array]:
    """Each user's K highest-scoring items, scanning the catalogue `chunk_size` items at a time.

    Scores are `queries @ item_table.T (+ item_bias)`. The result equals
    `jax.lax.top_k(scores, k)` on the full rows, ties to the lower item index (and NaN ordered
    as `top_k` orders it), but temporary memory is `O(batch * chunk_size)`.

    Args:
        queries: `[batch, dim]` user vectors.
        item_table: `[n_items, dim]` item vectors; `n_items` need not divide by `chunk_size`.
        k: list length (static), `1 <= k <= min(chunk_size, n_items)`.
        chunk_size: items scored per step (static); clipped to `n_items`.
        exclude: `[batch, m]` int item ids to mask per user (score -inf), -1 for padding.
        item_bias: `[n_items]` added to every user's scores, or None.
        precision: matmul precision (`jax.lax.Precision`), None for the default.

    Returns:
        `(scores [batch, k], items [batch, k] int32)`, best first. Excluded items come back
        (with score -inf) only when fewer than K items are left.
    """
    queries, item_table = jnp.asarray(queries), jnp.asarray(item_table)
    chunk_size = _check_sizes(queries, item_table, int(k), chunk_size)
    exclude = _check_exclude(exclude, queries.shape[0])
    item_bias = None if item_bias is None else jnp.asarray(item_bias)
    return _chunked_top_k(
        queries, item_table, exclude, item_bias, k=int(k), chunk_size=chunk_size,
        precision=precision,
    )


@functools.partial(jax.jit, static_argnames=("k", "chunk_size", "precision"))
def _chunked_top_k(queries, item_table, exclude, item_bias, *, k, chunk_size, precision):
    n_full, remainder = _chunk_plan(item_table.shape[0], chunk_size)

    def chunk_top(start, size):
        scores, items = _chunk_scores(queries, item_table, item_bias, start, size, precision)
        if exclude is not None:
            scores = jnp.where(_excluded_in_chunk(exclude, start, size), -jnp.inf, scores)
        top_scores, top_columns = jax.lax.top_k(scores, min(k, size))
        return top_scores, items[top_columns]

    def merge(best, new):
        # Earlier chunks hold lower item ids, and each list is in (score desc, id asc) order;
        # so with the running list first, top_k's "lower position wins a tie" is exactly
        # "lower item id wins", and the merged list is the top K of everything seen.
        scores = jnp.concatenate([best[0], new[0]], axis=1)
        items = jnp.concatenate([best[1], new[1]], axis=1)
        top_scores, position = jax.lax.top_k(scores, k)
        return top_scores, jnp.take_along_axis(items, position, axis=1)

    # The first chunk seeds the running list: seeding with (-inf, dummy id) instead would let
    # the dummies win ties against real items scored -inf (e.g. excluded ones).
    best = chunk_top(jnp.int32(0), chunk_size)

    def step(best, index):
        return merge(best, chunk_top(index * chunk_size, chunk_size)), None

    best, _ = jax.lax.scan(step, best, jnp.arange(1, n_full, dtype=jnp.int32))
    if remainder:
        # The last partial chunk has its own static size: no padding, no copy of the table.
        last = chunk_top(jnp.int32(n_full * chunk_size), remainder)
        if remainder < k:
            pad = k - remainder
            last = (jnp.pad(last[0], ((0, 0), (0, pad)), constant_values=-jnp.inf),
                    jnp.pad(last[1], ((0, 0), (0, pad)), constant_values=-1))
        best = merge(best, last)
    return best


# ----------------------------------------------------------------------------- target rank


def pessimistic_rank(scores: jax.Array, target: jax.Array, exclude: jax.Array) -> jax.Array:
    """The 0-based rank of item `target` in one user's `scores [n_items]` among the items not
    in `exclude [n_items]` (bool), ties counted against it: the number of other candidates
    scoring at least as high, NaN scores counted as -inf (as everywhere in `eval`). The one
    dense rank of `explain`, its fidelity metrics and the retrain check; vmap for batches
    (`chunked_target_rank` does the same over a catalogue too large to score at once)."""
    scores = _clean_scores(scores)
    others = ~exclude & (jnp.arange(scores.shape[0]) != target)
    return jnp.sum(others & (scores >= scores[target])).astype(jnp.int32)


def chunked_target_rank(
    queries: jax.Array,
    item_table: jax.Array,
    targets: jax.Array,
    *,
    chunk_size: int = 65536,
    exclude: jax.Array | None = None,
    item_bias: jax.Array | None = None,
    ties: Ties = "pessimistic",
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """0-based rank of each user's target item in the whole catalogue, in item chunks.

    The rank counts the other, non-excluded items that beat the target: with
    `ties="pessimistic"` (DESIGN §3, the rule of `causalrec_jax.eval.metrics`) those scoring
    higher *or equal*, so a constant-score model ranks every target last; with
    `ties="optimistic"` only those scoring strictly higher. NaN scores count as -inf and -0.0
    equals 0.0, as in `metrics`. A target that is itself in `exclude` is still ranked among the
    non-excluded items (`evaluate_full_ranking` would drop such a user; filter them out first).

    The target's score is the row-wise dot `queries . item_table[targets]`; on float data it
    may differ from the matmul's value in the last bit, which only matters for near-exact ties.

    Args:
        queries: `[batch, dim]` user vectors.
        item_table: `[n_items, dim]` item vectors.
        targets: `[batch]` int target item id per user.
        chunk_size: items scored per step (static); clipped to `n_items`.
        exclude: `[batch, m]` int item ids not ranked for each user, -1 for padding.
        item_bias: `[n_items]` added to every user's scores, or None.
        ties: "pessimistic" (the target loses ties) or "optimistic" (it wins them).
        precision: matmul precision (`jax.lax.Precision`), None for the default.

    Returns:
        `[batch]` int32 ranks in `[0, n_items - 1]`.
    """
    queries, item_table = jnp.asarray(queries), jnp.asarray(item_table)
    chunk_size = _check_sizes(queries, item_table, None, chunk_size)
    targets = jnp.asarray(targets)
    if targets.shape != (queries.shape[0],):
        raise ValueError(f"targets must be [batch={queries.shape[0]}], got {targets.shape}")
    if ties not in ("pessimistic", "optimistic"):
        raise ValueError(f"ties must be 'pessimistic' or 'optimistic', got {ties!r}")
    exclude = _check_exclude(exclude, queries.shape[0])
    item_bias = None if item_bias is None else jnp.asarray(item_bias)
    return _chunked_target_rank(
        queries, item_table, targets.astype(jnp.int32), exclude, item_bias,
        chunk_size=chunk_size, pessimistic=ties == "pessimistic", precision=precision,
    )


@functools.partial(jax.jit, static_argnames=("chunk_size", "pessimistic", "precision"))
def _chunked_target_rank(
    queries, item_table, targets, exclude, item_bias, *, chunk_size, pessimistic, precision
):
    n_full, remainder = _chunk_plan(item_table.shape[0], chunk_size)
    target_scores = jnp.sum(queries * item_table[targets], axis=-1)
    if item_bias is not None:
        target_scores = target_scores + item_bias[targets]
    target_scores = _clean_scores(target_scores)[:, None]

    def count(start, size):
        scores, items = _chunk_scores(queries, item_table, item_bias, start, size, precision)
        scores = _clean_scores(scores)
        # The target is never compared with itself (its two computed scores may differ in the
        # last bit), and excluded items take no place in the ranking.
        counted = items[None, :] != targets[:, None]
        if exclude is not None:
            counted = counted & ~_excluded_in_chunk(exclude, start, size)
        beats = scores >= target_scores if pessimistic else scores > target_scores
        return jnp.sum(counted & beats, axis=-1, dtype=jnp.int32)

    def step(total, index):
        return total + count(index * chunk_size, chunk_size), None

    total = jnp.zeros(queries.shape[0], jnp.int32)
    total, _ = jax.lax.scan(step, total, jnp.arange(n_full, dtype=jnp.int32))
    if remainder:
        total = total + count(jnp.int32(n_full * chunk_size), remainder)
    return total


# ----------------------------------------------------------------------------- metrics


def metrics_from_ranks(
    ranks: jax.Array,
    ks: Sequence[int],
    names: Sequence[str] = ("hit", "ndcg", "mrr"),
) -> dict[str, jax.Array]:
    """Ranking metrics at each K for one relevant item per user, from its 0-based rank.

    With a single relevant item (R = 1), the definitions of `causalrec_jax.eval.metrics` reduce
    to: hit@K = recall@K = 1[rank < K]; precision@K = hit@K / K;
    ndcg@K = 1 / log2(rank + 2) if rank < K (the ideal DCG is 1); mrr@K = map@K =
    1 / (rank + 1) if rank < K; each 0 otherwise.

    Args:
        ranks: `[batch]` int 0-based ranks (e.g. from `chunked_target_rank`).
        ks: cut-offs K.
        names: metric names among `RANKING_METRICS`.

    Returns:
        `{"hit@10": [batch] float32, ...}`, K by K, names in the order given (as
        `ranking_metrics`); the caller averages.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive integers, got {list(ks)}")
    names = tuple(name.lower() for name in names)
    for name in names:
        if name not in RANKING_METRICS:
            raise ValueError(
                f"unknown ranking metric {name!r}; expected one of {', '.join(RANKING_METRICS)}"
            )
    values = _metrics_from_ranks(jnp.asarray(ranks), ks=ks, names=names)
    # jit returns dicts with sorted keys; restore K by K, names in the order given.
    return {f"{name}@{k}": values[f"{name}@{k}"] for k in ks for name in names}


@functools.partial(jax.jit, static_argnames=("ks", "names"))
def _metrics_from_ranks(ranks, *, ks, names):
    position = ranks.astype(jnp.float32) + 1.0  # 1-based
    out = {}
    for k in ks:
        inside = ranks < k
        values = {
            "hit": inside.astype(jnp.float32),
            "recall": inside.astype(jnp.float32),
            "precision": inside.astype(jnp.float32) / k,
            "ndcg": jnp.where(inside, 1.0 / jnp.log2(position + 1.0), 0.0),
            "mrr": jnp.where(inside, 1.0 / position, 0.0),
            "map": jnp.where(inside, 1.0 / position, 0.0),
        }
        for name in names:
            out[f"{name}@{k}"] = values[name]
    return out
