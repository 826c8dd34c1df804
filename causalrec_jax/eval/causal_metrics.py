r"""Ranking metrics of the causal effect (uplift) of recommending, per user.

Sato et al., "Uplift-based Evaluation and Optimization of Recommenders", RecSys 2019, evaluate
a recommender by the causal effect of the items it puts in the top K:

    cp@K   = (1 / K) sum_{j=1}^{K} tau_(j)                (causal precision, CP@K)
    cdcg@K = sum_{j=1}^{K} tau_(j) / log2(j + 1)          (causal DCG, CDCG@K)

where `tau_(j)` is the causal effect of the item at rank `j` (starting at 1). `tau` may be
negative (a recommendation that lowers consumption), so both metrics may be negative.

Signature: `fn(scores, true_uplift, *, k, where=None) -> [n_users]` on padded
`[n_users, n_items]` arrays (DESIGN §1), the caller averages. `causal_precision` and
`causal_dcg` use the true uplift (a simulator's `mu1 - mu0`); the paper computes CP@K from
logged data with an estimate of `tau` instead: `labelled_causal_precision` /
`labelled_causal_dcg` rank by score and average any per-cell label, and
`causal.uplift.ips_causal_precision` / `ips_causal_dcg` give them the IPS label
`Z Y / P - (1 - Z) Y / (1 - P)` (eval takes labels as arrays; the estimator lives in causal/).

Ranking rule. Items with `where=False` (padding, masked training items) are never ranked.
Rankable items are ordered by score, descending (NaN scores last, -0.0 equal to 0.0, as in
`causalrec_jax.eval.metrics`); among equal scores the item with the LOWER true uplift comes
first (then the lower index), the pessimistic tie rule of DESIGN §3 extended to a real-valued
gain: a constant-score model gets the lowest cp@K / cdcg@K any ranking could. For the IPS
versions the true uplift is unknown and ties go to the lower index: breaking them by the noisy
label would make the top K depend on the draw and bias the estimate. With distinct scores
`ips_causal_precision` is unbiased for `causal_precision` (for a fixed ranking the estimate is
a fixed linear combination of unbiased labels).

Users with fewer than K rankable items: cp averages over the items that are ranked
(`min(K, n_rankable)` of them), cdcg sums over them; a user with no rankable item gets 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from causalrec_jax.eval.metrics import _clean_scores, _discounts, _rankable

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _check(scores: Array, k: int) -> int:
    if scores.ndim != 2:
        raise ValueError(f"scores must be [n_users, n_items], got shape {scores.shape}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def _ranked_gains(
    scores: Array, gains: Array, tie_values: Array, where: Array | None, k: int
) -> tuple[Array, Array]:
    """The gains at the first K positions and whether each position holds a ranked item.

    Order: rankable first; score descending; `tie_values` ascending; index ascending.

    Returns:
        `(gains [n_users, k], filled [n_users, k] bool)`; empty positions have gain 0.
    """
    scores = _clean_scores(scores)
    n_users, n_items = scores.shape
    rankable = _rankable(scores, where)
    unrankable_key = (~rankable).astype(jnp.int32)
    # _clean_scores made every zero +0.0; negated they are all -0.0, so zeros still tie.
    score_key = jnp.where(rankable, -scores, jnp.inf)
    tie_key = jnp.where(rankable, jnp.asarray(tie_values, scores.dtype), 0.0)
    gains = jnp.where(rankable, jnp.asarray(gains, scores.dtype), 0.0)
    # Stable sort: the original index breaks the remaining ties (lower first).
    _, _, _, sorted_gains, sorted_rankable = jax.lax.sort(
        (unrankable_key, score_key, tie_key, gains, rankable),
        dimension=-1,
        is_stable=True,
        num_keys=3,
    )
    if k > n_items:
        pad = ((0, 0), (0, k - n_items))
        sorted_gains = jnp.pad(sorted_gains, pad)
        sorted_rankable = jnp.pad(sorted_rankable, pad)
    return sorted_gains[:, :k], sorted_rankable[:, :k]


def _precision(gains: Array, filled: Array) -> Array:
    count = jnp.sum(filled, axis=-1)
    total = jnp.sum(jnp.where(filled, gains, 0.0), axis=-1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def _dcg(gains: Array, filled: Array, k: int) -> Array:
    return jnp.sum(jnp.where(filled, gains * _discounts(k), 0.0), axis=-1)


@functools.partial(jax.jit, static_argnames=("k", "name"))
def _true_metric(scores, true_uplift, where, *, k: int, name: str) -> Array:
    true_uplift = jnp.broadcast_to(jnp.asarray(true_uplift, jnp.float32), scores.shape)
    gains, filled = _ranked_gains(scores, true_uplift, true_uplift, where, k)
    return _precision(gains, filled) if name == "cp" else _dcg(gains, filled, k)


@functools.partial(jax.jit, static_argnames=("k", "name"))
def _labelled_metric(scores, labels, where, *, k: int, name: str) -> Array:
    labels = jnp.broadcast_to(jnp.asarray(labels, jnp.float32), scores.shape)
    gains, filled = _ranked_gains(scores, labels, jnp.zeros(scores.shape), where, k)
    return _precision(gains, filled) if name == "cp" else _dcg(gains, filled, k)


def causal_precision(
    scores: ArrayLike, true_uplift: ArrayLike, *, k: int, where: ArrayLike | None = None
) -> Array:
    """cp@K: the mean true uplift of each user's top K items.

    Args:
        scores: `[n_users, n_items]` float.
        true_uplift: `[n_users, n_items]` `tau = E[Y(1) - Y(0)]` of each cell.
        k: list length (static).
        where: `[n_users, n_items]` bool rankable mask, or None for all.

    Returns:
        `[n_users]`: mean of `tau` over the top `min(K, n_rankable)` items (pessimistic ties,
        see the module docstring); 0 for a user with no rankable item.
    """
    scores = jnp.asarray(scores)
    k = _check(scores, k)
    where = None if where is None else jnp.asarray(where)
    return _true_metric(scores, jnp.asarray(true_uplift), where, k=k, name="cp")


def causal_dcg(
    scores: ArrayLike, true_uplift: ArrayLike, *, k: int, where: ArrayLike | None = None
) -> Array:
    """cdcg@K: `sum_{j=1}^{K} tau_(j) / log2(j + 1)` over each user's top K items.

    Args:
        scores: `[n_users, n_items]` float.
        true_uplift: `[n_users, n_items]` true causal effect of each cell.
        k: list length (static).
        where: `[n_users, n_items]` bool rankable mask, or None for all.

    Returns:
        `[n_users]`: the sum over the ranked positions (fewer than K when fewer items are
        rankable); 0 for a user with no rankable item.
    """
    scores = jnp.asarray(scores)
    k = _check(scores, k)
    where = None if where is None else jnp.asarray(where)
    return _true_metric(scores, jnp.asarray(true_uplift), where, k=k, name="cdcg")


def labelled_causal_precision(
    scores: ArrayLike, labels: ArrayLike, *, k: int, where: ArrayLike | None = None
) -> Array:
    """cp@K with an estimated effect per cell (e.g. the IPS uplift label of
    `causal.uplift.ips_causal_precision`): the mean label of each user's top K items.

    Args:
        scores: `[n_users, n_items]` float.
        labels: `[n_users, n_items]` estimated effects (masked cells' values unused).
        k: list length (static).
        where: `[n_users, n_items]` bool rankable mask, or None.

    Returns:
        `[n_users]`; ties in `scores` go to the lower index (the label is an estimate, so
        breaking ties by it would bias the result).
    """
    scores = jnp.asarray(scores)
    k = _check(scores, k)
    where = None if where is None else jnp.asarray(where)
    return _labelled_metric(scores, jnp.asarray(labels), where, k=k, name="cp")


def labelled_causal_dcg(
    scores: ArrayLike, labels: ArrayLike, *, k: int, where: ArrayLike | None = None
) -> Array:
    """cdcg@K with an estimated effect per cell; arguments as `labelled_causal_precision`."""
    scores = jnp.asarray(scores)
    k = _check(scores, k)
    where = None if where is None else jnp.asarray(where)
    return _labelled_metric(scores, jnp.asarray(labels), where, k=k, name="cdcg")
