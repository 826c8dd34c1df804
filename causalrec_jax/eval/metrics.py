"""Per-user ranking metrics at K, AUC and rating errors, as pure `jax.numpy` functions.

Every ranking metric has the signature `fn(scores, labels, *, k, where=None) -> [batch]` on
padded arrays (DESIGN §1): `scores` `[batch, n_candidates]`, `labels` `[batch, n_candidates]`
(an item is *relevant* when its label is > 0), and `where` `[batch, n_candidates]` bool marks
the *rankable* candidates. Padding and masked training items have `where=False`: they are never
ranked, never relevant, and take no place in the list. The caller averages the per-user values,
over the users that `has_positive` marks (DESIGN §2).

Ranking rule (pessimistic ties, DESIGN §3). Rankable candidates are put in one total order:

    by score, descending; among equal scores every non-relevant item comes before every
    relevant one; among equal-scored items of the same kind the lower index comes first.

Equivalently, the 1-based rank of a rankable candidate `i` with score `s_i` is

    relevant i:      1 + #{j : s_j > s_i} + #{j non-relevant : s_j == s_i}
                       + #{j < i relevant : s_j == s_i}
    non-relevant i:  1 + #{j : s_j > s_i} + #{j < i non-relevant : s_j == s_i}

(j ranging over rankable candidates).
This is a real permutation, so hit/MRR/NDCG/MAP/recall/precision are all computed from one
list and agree with each other. The order among tied *relevant* items does not change any
binary-gain metric (they occupy the same positions whichever way round), so "the positive loses
every tie" holds for every metric: a constant-score model places all relevant items below all
non-relevant ones and scores 0 whenever K <= #non-relevant candidates. NaN scores rank last
(as -inf) and -0.0 equals 0.0.

Definitions (binary gain; `rel_j` = 1 when position j of the list holds a relevant item;
`R` = #relevant rankable candidates; positions j = 1..K; as RecBole, Zhao et al. 2021,
"RecBole: Towards a Unified, Comprehensive and Efficient Framework for Recommendation Algorithms"):

    hit@K       = 1[sum_j rel_j > 0]
    mrr@K       = 1 / (first j with rel_j = 1), 0 if none in the top K
    precision@K = sum_j rel_j / K                 (K even when fewer candidates exist)
    recall@K    = sum_j rel_j / R                 (R not capped by K)
    ndcg@K      = sum_j rel_j / log2(j + 1)  /  sum_{j=1}^{min(R, K)} 1 / log2(j + 1)
    map@K       = sum_j rel_j * precision@j  /  min(R, K)

Users with R = 0 get 0 for every ranking metric (a finite placeholder, never 1); they must be
left out of averages with `has_positive`.

Implementation: instead of an `O(n^2)` pairwise rank, the candidates are permuted so that the
tie rule becomes "lower index first" (non-relevant, then relevant, then unrankable, each group
in original order) and `jax.lax.top_k` — which breaks ties by lower index — returns the top K.
Memory is `O(batch * n_candidates)`.

AUC is the Mann–Whitney statistic (Hanley & McNeil 1982): the fraction of (positive, negative)
pairs ordered correctly, ties counting 1/2.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

RANKING_METRICS: tuple[str, ...] = ("recall", "precision", "ndcg", "hit", "mrr", "map")


class RankedTopK(NamedTuple):
    """The top K of each user's pessimistic ranking.

    Attributes:
        items: `[batch, k]` int32 candidate index at each position, -1 where the list has fewer
            than K rankable candidates.
        relevant: `[batch, k]` bool, True where the position holds a relevant candidate.
        n_relevant: `[batch]` int32 number of relevant rankable candidates (R).
    """

    items: jax.Array
    relevant: jax.Array
    n_relevant: jax.Array


def _arrays(*values):
    # Public functions accept anything array-like; the jitted cores take arrays (or None).
    return tuple(None if value is None else jnp.asarray(value) for value in values)


def _rankable(scores: jax.Array, where: jax.Array | None) -> jax.Array:
    if where is None:
        return jnp.ones(scores.shape, dtype=bool)
    return jnp.broadcast_to(jnp.asarray(where, dtype=bool), scores.shape)


def _clean_scores(scores: jax.Array) -> jax.Array:
    # NaN would otherwise sort above +inf in top_k; -0.0 becomes 0.0 so that the two zeros tie
    # (top_k orders -0.0 below 0.0). A `where`, not `+ 0.0`, which XLA may simplify away.
    scores = jnp.asarray(scores)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)
    return jnp.where(jnp.isnan(scores), -jnp.inf, jnp.where(scores == 0, 0.0, scores))


@jax.jit
def has_positive(labels: jax.Array, where: jax.Array | None = None) -> jax.Array:
    """Whether each user has at least one relevant rankable candidate.

    Args:
        labels: `[batch, n_candidates]`; relevant where > 0.
        where: `[batch, n_candidates]` bool rankable mask, or None for all.

    Returns:
        `[batch]` bool: the users whose ranking metrics are defined and may be averaged.
    """
    labels = jnp.asarray(labels)
    return jnp.any((labels > 0) & _rankable(labels, where), axis=-1)


def ranked_topk(
    scores: jax.Array, labels: jax.Array, *, k: int, where: jax.Array | None = None
) -> RankedTopK:
    """The first K positions of each user's pessimistic ranking (see the module docstring).

    Args:
        scores: `[batch, n_candidates]` float.
        labels: `[batch, n_candidates]`; relevant where > 0.
        k: list length (static). May exceed `n_candidates`: missing positions are empty.
        where: `[batch, n_candidates]` bool rankable mask, or None for all.

    Returns:
        A `RankedTopK` with `items`, `relevant` `[batch, k]` and `n_relevant` `[batch]`.
    """
    scores, labels, where = _arrays(scores, labels, where)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [batch, n_candidates], got shape {scores.shape}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return _ranked_topk(scores, labels, where, k=int(k))


@functools.partial(jax.jit, static_argnames=("k",))
def _ranked_topk(
    scores: jax.Array, labels: jax.Array, where: jax.Array | None, *, k: int
) -> RankedTopK:
    scores = _clean_scores(scores)
    batch, n = scores.shape
    rankable = _rankable(scores, where)
    relevant = (jnp.asarray(labels) > 0) & rankable
    irrelevant = rankable & ~relevant
    unrankable = ~rankable
    n_irrelevant = jnp.sum(irrelevant, axis=-1, keepdims=True, dtype=jnp.int32)
    n_relevant = jnp.sum(relevant, axis=-1, keepdims=True, dtype=jnp.int32)

    # Slot of each candidate in the permuted row: [non-relevant | relevant | unrankable],
    # each group in original index order, so "lower slot first" is exactly the tie rule.
    def running(mask: jax.Array) -> jax.Array:
        return jnp.cumsum(mask, axis=-1, dtype=jnp.int32) - 1

    slot = jnp.where(
        irrelevant,
        running(irrelevant),
        jnp.where(
            relevant,
            n_irrelevant + running(relevant),
            n_irrelevant + n_relevant + running(unrankable),
        ),
    )
    rows = jnp.arange(batch)[:, None]
    permuted_scores = jnp.zeros_like(scores).at[rows, slot].set(
        jnp.where(rankable, scores, -jnp.inf), unique_indices=True
    )
    candidate = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n))
    permuted_items = jnp.zeros((batch, n), jnp.int32).at[rows, slot].set(
        candidate, unique_indices=True
    )
    if k > n:
        # Extra empty columns come after every real slot, so they fill the tail of the list.
        pad = k - n
        permuted_scores = jnp.pad(permuted_scores, ((0, 0), (0, pad)), constant_values=-jnp.inf)
        permuted_items = jnp.pad(permuted_items, ((0, 0), (0, pad)), constant_values=-1)
    _, top_slot = jax.lax.top_k(permuted_scores, k)
    items = jnp.take_along_axis(permuted_items, top_slot, axis=-1)
    n_rankable = n_irrelevant + n_relevant
    is_ranked = top_slot < n_rankable
    is_relevant = (top_slot >= n_irrelevant) & is_ranked
    return RankedTopK(
        items=jnp.where(is_ranked, items, -1),
        relevant=is_relevant,
        n_relevant=n_relevant[:, 0],
    )


def _discounts(k: int) -> jax.Array:
    # 1 / log2(rank + 1) for rank = 1..k.
    return 1.0 / jnp.log2(jnp.arange(2, k + 2, dtype=jnp.float32))


def ideal_dcg(n_relevant: jax.Array, k: int) -> jax.Array:
    """Ideal DCG@K: the sum of the first `min(n_relevant, k)` discounts; `[batch]`.

    `n_relevant` may be fractional (an estimated count): the fraction of the next position's
    discount is added, so the function is continuous and equals the usual IDCG at integers.
    """
    discounts = _discounts(k)
    cumulative = jnp.concatenate([jnp.zeros((1,), jnp.float32), jnp.cumsum(discounts)])
    count = jnp.clip(jnp.asarray(n_relevant, jnp.float32), 0.0, float(k))
    whole = jnp.floor(count).astype(jnp.int32)
    fraction = count - whole
    next_discount = jnp.concatenate([discounts, jnp.zeros((1,), jnp.float32)])[whole]
    return cumulative[whole] + fraction * next_discount


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    # 0 where the denominator is 0 (users without positives); the double where keeps
    # gradients finite.
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


def metrics_from_topk(top: RankedTopK, names: Sequence[str], k: int) -> dict[str, jax.Array]:
    """Ranking metrics at `k` from a (possibly longer) `RankedTopK`; `{name: [batch]}`.

    Only the first `k` positions of `top` are used, so one `ranked_topk` at max K serves all
    cut-offs (the list is a fixed total order, so its prefix is the top-k).
    """
    relevant = top.relevant[:, :k].astype(jnp.float32)
    n_relevant = top.n_relevant.astype(jnp.float32)
    n_hits = jnp.sum(relevant, axis=-1)
    positions = jnp.arange(1, k + 1, dtype=jnp.float32)
    out: dict[str, jax.Array] = {}
    for name in names:
        if name == "hit":
            value = (n_hits > 0).astype(jnp.float32)
        elif name == "precision":
            value = n_hits / k
        elif name == "recall":
            value = _safe_divide(n_hits, n_relevant)
        elif name == "ndcg":
            dcg = jnp.sum(relevant * _discounts(k), axis=-1)
            value = _safe_divide(dcg, ideal_dcg(top.n_relevant, k))
        elif name == "mrr":
            value = jnp.max(relevant / positions, axis=-1)
        elif name == "map":
            precision_at = jnp.cumsum(relevant, axis=-1) / positions
            value = _safe_divide(
                jnp.sum(relevant * precision_at, axis=-1), jnp.minimum(n_relevant, k)
            )
        else:
            raise ValueError(
                f"unknown ranking metric {name!r}; expected one of {', '.join(RANKING_METRICS)}"
            )
        out[name] = value
    return out


def ranking_metrics(
    scores: jax.Array,
    labels: jax.Array,
    *,
    ks: Sequence[int],
    names: Sequence[str] = RANKING_METRICS,
    where: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Several ranking metrics at several cut-offs from one `top_k`.

    Args:
        scores: `[batch, n_candidates]` float.
        labels: `[batch, n_candidates]`; relevant where > 0.
        ks: cut-offs (static).
        names: metric names among `RANKING_METRICS`.
        where: `[batch, n_candidates]` bool rankable mask, or None.

    Returns:
        `{"ndcg@10": [batch], ...}` for every name and K.
    """
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError("ks must not be empty")
    top = ranked_topk(scores, labels, k=max(ks), where=where)
    return _metrics_at(top, ks=ks, names=tuple(names))


@functools.partial(jax.jit, static_argnames=("ks", "names"))
def _metrics_at(top: RankedTopK, *, ks: tuple[int, ...], names: tuple[str, ...]):
    out = {}
    for k in ks:
        for name, value in metrics_from_topk(top, names, k).items():
            out[f"{name}@{k}"] = value
    return out


def _single(name: str):
    def metric(
        scores: jax.Array, labels: jax.Array, *, k: int, where: jax.Array | None = None
    ) -> jax.Array:
        return ranking_metrics(scores, labels, ks=(k,), names=(name,), where=where)[f"{name}@{k}"]

    return metric


def recall(
    scores: jax.Array, labels: jax.Array, *, k: int, where: jax.Array | None = None
) -> jax.Array:
    """Recall@K: relevant items in the top K over all relevant rankable items; `[batch]`."""
    return _single("recall")(scores, labels, k=k, where=where)


def precision(
    scores: jax.Array, labels: jax.Array, *, k: int, where: jax.Array | None = None
) -> jax.Array:
    """Precision@K: relevant items in the top K divided by K; `[batch]`."""
    return _single("precision")(scores, labels, k=k, where=where)


def ndcg(
    scores: jax.Array, labels: jax.Array, *, k: int, where: jax.Array | None = None
) -> jax.Array:
    """NDCG@K with binary gain, discount 1/log2(rank+1), IDCG over min(R, K); `[batch]`."""
    return _single("ndcg")(scores, labels, k=k, where=where)


def hit(
    scores: jax.Array, labels: jax.Array, *, k: int, where: jax.Array | None = None
) -> jax.Array:
    """Hit@K: 1 when any relevant item is in the top K; `[batch]`."""
    return _single("hit")(scores, labels, k=k, where=where)


def mrr(
    scores: jax.Array, labels: jax.Array, *, k: int, where: jax.Array | None = None
) -> jax.Array:
    """MRR@K: reciprocal rank of the first relevant item in the top K, else 0; `[batch]`."""
    return _single("mrr")(scores, labels, k=k, where=where)


def map(  # the metric's conventional name (RecBole's "map"); shadows the builtin here.
    scores: jax.Array, labels: jax.Array, *, k: int, where: jax.Array | None = None
) -> jax.Array:
    """MAP@K: sum of precision@j at relevant positions j <= K over min(R, K); `[batch]`."""
    return _single("map")(scores, labels, k=k, where=where)


def item_topk(scores: jax.Array, *, k: int, where: jax.Array | None = None) -> jax.Array:
    """Each user's top-K recommended candidates (for item coverage), ignoring labels.

    Ties go to the lower index; unrankable candidates are never returned.

    Args:
        scores: `[batch, n_candidates]` float.
        k: list length (static).
        where: `[batch, n_candidates]` bool rankable mask, or None.

    Returns:
        `[batch, k]` int32 candidate indices; -1 where fewer than K candidates are rankable.
    """
    scores = jnp.asarray(scores)
    return ranked_topk(scores, jnp.zeros(scores.shape, jnp.int8), k=k, where=where).items


# ----------------------------------------------------------------------------- pointwise


def _mann_whitney(
    scores: jax.Array, positive: jax.Array, negative: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum over positives of #negatives below + 0.5 #tied, n_positive, n_negative) of a row."""
    n_negative = jnp.sum(negative)
    # Sorted negative scores, non-negatives pushed to the end as +inf and never counted
    # (the searchsorted counts are clipped at n_negative).
    sorted_negative = jnp.sort(jnp.where(negative, scores, jnp.inf))
    below = jnp.searchsorted(sorted_negative, scores, side="left")
    at_or_below = jnp.searchsorted(sorted_negative, scores, side="right")
    below = jnp.minimum(below, n_negative).astype(jnp.float32)
    at_or_below = jnp.minimum(at_or_below, n_negative).astype(jnp.float32)
    wins = jnp.where(positive, 0.5 * (below + at_or_below), 0.0)
    return jnp.sum(wins), jnp.sum(positive), n_negative


@jax.jit
def auc(scores: jax.Array, labels: jax.Array, where: jax.Array | None = None) -> jax.Array:
    """Global AUC over all (score, label) pairs, ties counted 1/2 (Mann–Whitney U / n+ n-).

    Args:
        scores: any shape, float (NaN treated as -inf).
        labels: same shape; positive where > 0, negative otherwise.
        where: same shape bool, which pairs count; None for all.

    Returns:
        Scalar AUC; NaN when there is no positive or no negative.
    """
    scores = _clean_scores(scores).reshape(-1)
    valid = _rankable(scores, None if where is None else jnp.asarray(where).reshape(-1))
    positive = (jnp.asarray(labels).reshape(-1) > 0) & valid
    negative = valid & ~positive
    wins, n_positive, n_negative = _mann_whitney(scores, positive, negative)
    pairs = n_positive.astype(jnp.float32) * n_negative.astype(jnp.float32)
    return jnp.where(pairs > 0, wins / jnp.where(pairs > 0, pairs, 1.0), jnp.nan)


@jax.jit
def per_user_auc(
    scores: jax.Array, labels: jax.Array, *, where: jax.Array | None = None
) -> jax.Array:
    """AUC of each user's row, ties counted 1/2.

    Args:
        scores: `[batch, n_candidates]` float.
        labels: `[batch, n_candidates]`; positive where > 0.
        where: `[batch, n_candidates]` bool, which candidates count; None for all.

    Returns:
        `[batch]` AUC; NaN for a user with no positive or no negative (undefined), so that
        averages must skip them (`has_both_classes`, or `jnp.nanmean`).
    """
    scores = _clean_scores(scores)
    valid = _rankable(scores, where)
    positive = (jnp.asarray(labels) > 0) & valid
    negative = valid & ~positive
    wins, n_positive, n_negative = jax.vmap(_mann_whitney)(scores, positive, negative)
    pairs = n_positive.astype(jnp.float32) * n_negative.astype(jnp.float32)
    return jnp.where(pairs > 0, wins / jnp.where(pairs > 0, pairs, 1.0), jnp.nan)


@jax.jit
def has_both_classes(labels: jax.Array, where: jax.Array | None = None) -> jax.Array:
    """`[batch]` bool: users with at least one positive and one negative (AUC defined)."""
    labels = jnp.asarray(labels)
    valid = _rankable(labels, where)
    positive = (labels > 0) & valid
    return jnp.any(positive, axis=-1) & jnp.any(valid & ~positive, axis=-1)


def _masked_mean(values: jax.Array, where: jax.Array | None) -> jax.Array:
    if where is None:
        return jnp.mean(values)
    where = jnp.broadcast_to(jnp.asarray(where, dtype=bool), values.shape)
    return jnp.sum(jnp.where(where, values, 0.0)) / jnp.sum(where)


@jax.jit
def mse(predictions: jax.Array, ratings: jax.Array, where: jax.Array | None = None) -> jax.Array:
    """Mean squared error over the (prediction, rating) pairs selected by `where`; scalar."""
    error = jnp.asarray(predictions, jnp.float32) - jnp.asarray(ratings, jnp.float32)
    return _masked_mean(error**2, where)


@jax.jit
def rmse(predictions: jax.Array, ratings: jax.Array, where: jax.Array | None = None) -> jax.Array:
    """Root mean squared error (the square root of `mse`); scalar."""
    return jnp.sqrt(mse(predictions, ratings, where))


@jax.jit
def mae(predictions: jax.Array, ratings: jax.Array, where: jax.Array | None = None) -> jax.Array:
    """Mean absolute error over the selected pairs; scalar."""
    error = jnp.asarray(predictions, jnp.float32) - jnp.asarray(ratings, jnp.float32)
    return _masked_mean(jnp.abs(error), where)
