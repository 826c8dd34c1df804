"""IPS and SNIPS estimates of ranking metrics from missing-not-at-random implicit feedback.

Yang, Cui, Xuan, Wang, Belongie & Estrin, RecSys 2018, "Unbiased Offline Recommender
Evaluation for Missing-Not-At-Random Implicit Feedback". For a user u with relevant set S_u,
a metric that sums a per-item gain over the relevant items,

    M_u = (1 / Z_u) * sum_{i in S_u} c(rank_i),

is estimated from the observed positives O_u (a subset of S_u; item i in S_u observed with
propensity p_ui = P(observed | relevant) > 0) by weighting each observed positive by 1/p_ui:

    sum_{i in O_u} c(rank_i) / p_ui    is unbiased for    sum_{i in S_u} c(rank_i),

because E[1(i in O_u)] = p_ui and the model's ranking does not depend on which items were
observed. Gains used here (positions of the pessimistic ranking of `metrics.py`):

    recall@K:  c(r) = 1[r <= K],               Z_u = |S_u|
    ndcg@K:    c(r) = 1[r <= K] / log2(r + 1), Z_u = IDCG@K(|S_u|)
                                                      = sum_{j <= min(|S_u|, K)} 1/log2(j + 1)
    dcg@K:     c(r) = 1[r <= K] / log2(r + 1), Z_u = 1

Estimators (per user; the caller averages over users):

- `ips_*` (Yang et al.'s IPS): divide by the true normaliser Z_u computed from the true number
  of relevant items `n_relevant` = |S_u| (known in simulation). Exactly unbiased for M_u;
  average over users with |S_u| > 0, *including* users with no observed positive (their
  estimate is 0, and dropping them biases the average upwards).
- `snips_*` (self-normalised): |S_u| is replaced by its IPS estimate n̂_u = sum_{i in O_u} 1/p_ui,
  so snips_recall@K = sum_{O_u} c/p / sum_{O_u} 1/p (a weighted mean of the gains, in [0, 1])
  and snips_ndcg@K = sum_{O_u} c/p / IDCG@K(n̂_u), with IDCG interpolated linearly between
  integers (see `metrics.ideal_dcg`). Consistent as observations grow, not unbiased for a
  finite sample; snips_ndcg of a single user may exceed 1. Defined (and averaged) only for
  users with at least one observed positive.
  This normalises each user separately, a per-user variant: Yang et al. 2018 normalise the
  SNIPS estimate once over all users.
- `ips_dcg@K`: the unnormalised IPS sum, unbiased for DCG@K, no normaliser needed.

hit@K and mrr@K are not sums of per-item gains (they depend on the first relevant item only),
so no IPS version is offered.

Ranks are computed with the observed positives as the relevant items, so ties between an
observed positive and an unobserved relevant item are broken against the observed one, while
the full-information metric would break them by index. With untied (continuous) scores the two
rankings coincide and the IPS estimates are exactly unbiased.

Propensities are used as given: clipping belongs to `causalrec_jax.causal` (DESIGN §1: one
clip, in one place). Non-positive or NaN propensities of rankable candidates raise ValueError
when the arrays are concrete; under `jax.jit` they cannot be checked and yield inf/NaN.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax.eval import metrics as metrics_lib

UNBIASED_METRICS: tuple[str, ...] = (
    "ips_recall",
    "snips_recall",
    "ips_ndcg",
    "snips_ndcg",
    "ips_dcg",
)


class WeightedGains(NamedTuple):
    """IPS-weighted sums of one user's observed positives.

    Attributes:
        recall_sum: `[batch]` sum over observed positives in the top K of 1/p.
        dcg_sum: `[batch]` sum over observed positives in the top K of 1/(p log2(rank+1)).
        n_relevant_estimate: `[batch]` sum over all observed rankable positives of 1/p, the
            IPS estimate of |S_u|.
    """

    recall_sum: jax.Array
    dcg_sum: jax.Array
    n_relevant_estimate: jax.Array


def check_propensities(propensities: jax.Array, where: jax.Array | None = None) -> None:
    """Raises ValueError if a rankable candidate's propensity is <= 0 or NaN.

    Skipped (silently) when the arrays are traced under `jax.jit` / `jax.vmap`.

    Args:
        propensities: `[batch, n_candidates]` or `[n_candidates]` P(observed | relevant).
        where: rankable mask broadcastable with `propensities`, or None for all.
    """
    try:
        values = np.asarray(propensities)
        mask = np.ones((), bool) if where is None else np.asarray(where, dtype=bool)
    except jax.errors.TracerArrayConversionError:
        return
    values, mask = np.broadcast_arrays(values, mask)
    bad = mask & ~(values > 0)  # "not > 0" also catches NaN
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"propensities must be > 0 for every rankable candidate; found {int(bad.sum())} "
            f"non-positive or NaN values (first at index {first}: {values[first]!r}). "
            "Clip or estimate them upstream (causalrec_jax.causal owns propensity clipping)."
        )


def _safe_inverse(propensities: jax.Array, use: jax.Array) -> jax.Array:
    # 1/p where used, 0 elsewhere (a masked-out zero propensity must not create inf * 0).
    return jnp.where(use, 1.0 / jnp.where(use, propensities, 1.0), 0.0)


def weighted_gains(
    scores: jax.Array,
    observed: jax.Array,
    propensities: jax.Array,
    *,
    k: int,
    where: jax.Array | None = None,
) -> WeightedGains:
    """The IPS-weighted sums every estimator here is built from.

    Args:
        scores: `[batch, n_candidates]` model scores.
        observed: `[batch, n_candidates]`; observed positives where > 0.
        propensities: `[batch, n_candidates]` (or `[n_candidates]`) P(observed | relevant).
        k: cut-off K (static).
        where: `[batch, n_candidates]` bool rankable mask, or None.

    Returns:
        `WeightedGains` of `[batch]` arrays.
    """
    scores = jnp.asarray(scores)
    check_propensities(propensities, where)
    where = None if where is None else jnp.asarray(where)
    return _weighted_gains(scores, jnp.asarray(observed), jnp.asarray(propensities), where, k=k)


@functools.partial(jax.jit, static_argnames=("k",))
def _weighted_gains(
    scores: jax.Array,
    observed: jax.Array,
    propensities: jax.Array,
    where: jax.Array | None,
    *,
    k: int,
) -> WeightedGains:
    propensities = jnp.broadcast_to(propensities.astype(jnp.float32), scores.shape)
    rankable = (
        jnp.ones(scores.shape, bool)
        if where is None
        else jnp.broadcast_to(where.astype(bool), scores.shape)
    )
    observed = (observed > 0) & rankable
    top = metrics_lib.ranked_topk(scores, observed, k=k, where=rankable)
    inverse = _safe_inverse(propensities, observed)
    top_inverse = jnp.take_along_axis(inverse, jnp.maximum(top.items, 0), axis=-1)
    top_inverse = jnp.where(top.relevant, top_inverse, 0.0)
    discounts = 1.0 / jnp.log2(jnp.arange(2, k + 2, dtype=jnp.float32))
    return WeightedGains(
        recall_sum=jnp.sum(top_inverse, axis=-1),
        dcg_sum=jnp.sum(top_inverse * discounts, axis=-1),
        n_relevant_estimate=jnp.sum(inverse, axis=-1),
    )


def _divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


def _from_gains(
    gains: WeightedGains, name: str, k: int, n_relevant: jax.Array | None
) -> jax.Array:
    if name in ("ips_recall", "ips_ndcg") and n_relevant is None:
        raise ValueError(f"{name} needs n_relevant (the true number of relevant items per user)")
    if name == "ips_recall":
        return _divide(gains.recall_sum, jnp.asarray(n_relevant, jnp.float32))
    if name == "snips_recall":
        return _divide(gains.recall_sum, gains.n_relevant_estimate)
    if name == "ips_ndcg":
        return _divide(gains.dcg_sum, metrics_lib.ideal_dcg(jnp.asarray(n_relevant), k))
    if name == "snips_ndcg":
        return _divide(gains.dcg_sum, metrics_lib.ideal_dcg(gains.n_relevant_estimate, k))
    if name == "ips_dcg":
        return gains.dcg_sum
    raise ValueError(f"unknown unbiased metric {name!r}; expected one of {UNBIASED_METRICS}")


def ips_recall(
    scores: jax.Array,
    observed: jax.Array,
    propensities: jax.Array,
    *,
    k: int,
    n_relevant: jax.Array,
    where: jax.Array | None = None,
) -> jax.Array:
    """IPS recall@K: sum over observed positives in the top K of 1/p, over |S_u|; `[batch]`.

    `n_relevant` `[batch]` is the true |S_u|; the value is 0 where it is 0.
    """
    gains = weighted_gains(scores, observed, propensities, k=k, where=where)
    return _from_gains(gains, "ips_recall", k, n_relevant)


def snips_recall(
    scores: jax.Array,
    observed: jax.Array,
    propensities: jax.Array,
    *,
    k: int,
    where: jax.Array | None = None,
) -> jax.Array:
    """SNIPS recall@K: the 1/p-weighted fraction of observed positives in the top K; `[batch]`.

    0 for a user with no observed positive (exclude them with `metrics.has_positive`).
    """
    gains = weighted_gains(scores, observed, propensities, k=k, where=where)
    return _from_gains(gains, "snips_recall", k, None)


def ips_dcg(
    scores: jax.Array,
    observed: jax.Array,
    propensities: jax.Array,
    *,
    k: int,
    where: jax.Array | None = None,
) -> jax.Array:
    """IPS DCG@K: sum over observed positives in the top K of 1/(p log2(rank+1)); `[batch]`."""
    gains = weighted_gains(scores, observed, propensities, k=k, where=where)
    return _from_gains(gains, "ips_dcg", k, None)


def ips_ndcg(
    scores: jax.Array,
    observed: jax.Array,
    propensities: jax.Array,
    *,
    k: int,
    n_relevant: jax.Array,
    where: jax.Array | None = None,
) -> jax.Array:
    """IPS NDCG@K: `ips_dcg` over IDCG@K(|S_u|) with the true `n_relevant`; `[batch]`."""
    gains = weighted_gains(scores, observed, propensities, k=k, where=where)
    return _from_gains(gains, "ips_ndcg", k, n_relevant)


def snips_ndcg(
    scores: jax.Array,
    observed: jax.Array,
    propensities: jax.Array,
    *,
    k: int,
    where: jax.Array | None = None,
) -> jax.Array:
    """SNIPS NDCG@K: `ips_dcg` over IDCG@K(n̂_u), n̂_u = sum over observed of 1/p; `[batch]`."""
    gains = weighted_gains(scores, observed, propensities, k=k, where=where)
    return _from_gains(gains, "snips_ndcg", k, None)


def unbiased_ranking_metrics(
    scores: jax.Array,
    observed: jax.Array,
    propensities: jax.Array,
    *,
    ks: Sequence[int],
    names: Sequence[str] = ("snips_recall", "snips_ndcg", "ips_dcg"),
    n_relevant: jax.Array | None = None,
    where: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Several estimators at several cut-offs; `{"snips_ndcg@10": [batch], ...}`.

    `ips_recall` / `ips_ndcg` need `n_relevant` `[batch]`. Average `ips_*` over users with
    `n_relevant > 0` and `snips_*` over users with an observed positive (`metrics.has_positive`).
    """
    out = {}
    for k in sorted(set(ks)):
        gains = weighted_gains(scores, observed, propensities, k=k, where=where)
        for name in names:
            out[f"{name}@{k}"] = _from_gains(gains, name, k, n_relevant)
    return out
