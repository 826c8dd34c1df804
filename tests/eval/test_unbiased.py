"""IPS / SNIPS ranking metrics: hand values, identities, and unbiasedness over many draws."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.eval import metrics as M
from causalrec_jax.eval import unbiased as U

LOG2_3 = math.log2(3.0)
LOG2_5 = math.log2(5.0)
SCORES = jnp.array([[0.9, 0.8, 0.7, 0.6]])
OBSERVED = jnp.array([[1, 0, 1, 0]])


def test_hand_values():
    # Ranking by score: items 0, 1, 2, 3; observed positives 0 (rank 1) and 2 (rank 3).
    # Weights 1/p: item 0 -> 1/0.5 = 2, item 2 -> 1/0.25 = 4; n̂ = 2 + 4 = 6; true |S_u| = 10.
    propensities = jnp.array([[0.5, 1.0, 0.25, 1.0]])
    got = U.unbiased_ranking_metrics(
        SCORES, OBSERVED, propensities, ks=[2, 3], names=U.UNBIASED_METRICS,
        n_relevant=jnp.array([10]),
    )
    got = {name: float(value[0]) for name, value in got.items()}
    idcg2 = 1 + 1 / LOG2_3
    idcg3 = 1 + 1 / LOG2_3 + 0.5
    expected = {
        # recall@3: both in the top 3 -> IPS (2 + 4) / 10 = 0.6, SNIPS 6 / 6 = 1.
        "ips_recall@3": 0.6,
        "snips_recall@3": 1.0,
        # recall@2: only item 0 -> IPS 2 / 10, SNIPS 2 / 6.
        "ips_recall@2": 0.2,
        "snips_recall@2": 1 / 3,
        # DCG@3 = 2 / log2(2) + 4 / log2(4) = 4; IDCG@3 over min(10, 3) = min(6, 3) = 3
        #   positions = 1 + 1/log2(3) + 1/2 = 2.13093 -> NDCG@3 = 1.87712 (may exceed 1).
        "ips_dcg@3": 4.0,
        "ips_ndcg@3": 4 / idcg3,
        "snips_ndcg@3": 4 / idcg3,
        # DCG@2 = 2; IDCG@2 = 1 + 1/log2(3).
        "ips_dcg@2": 2.0,
        "ips_ndcg@2": 2 / idcg2,
        "snips_ndcg@2": 2 / idcg2,
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-6), name
    # The single-estimator functions are the same computation.
    single = U.ips_recall(SCORES, OBSERVED, propensities, k=3, n_relevant=jnp.array([10]))
    assert float(single[0]) == pytest.approx(0.6)
    # Fractional n̂: p = 0.8, 0.4 -> weights 1.25, 2.5, n̂ = 3.75; K = 5 (> 4 candidates).
    #   DCG@5 = 1.25 + 2.5 / 2 = 2.5; IDCG(3.75) = 1 + 1/log2(3) + 1/2 + 0.75/log2(5) = 2.45394.
    propensities = jnp.array([[0.8, 1.0, 0.4, 1.0]])
    expected = 2.5 / (1 + 1 / LOG2_3 + 0.5 + 0.75 / LOG2_5)
    assert float(U.snips_ndcg(SCORES, OBSERVED, propensities, k=5)[0]) == pytest.approx(expected)


def test_full_observation_recovers_plain_metrics():
    key = jax.random.key(0)
    scores = jax.random.normal(key, (12, 25))
    labels = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.3, (12, 25))
    where = jax.random.bernoulli(jax.random.fold_in(key, 2), 0.9, (12, 25))
    n_relevant = jnp.sum(labels & where, axis=1)
    ones = jnp.ones((12, 25))
    got = U.unbiased_ranking_metrics(
        scores, labels, ones, ks=[5], names=U.UNBIASED_METRICS, n_relevant=n_relevant,
        where=where,
    )
    plain = M.ranking_metrics(scores, labels, ks=(5,), names=("recall", "ndcg"), where=where)
    for estimator in ("ips", "snips"):
        np.testing.assert_allclose(got[f"{estimator}_recall@5"], plain["recall@5"], atol=1e-6)
        np.testing.assert_allclose(got[f"{estimator}_ndcg@5"], plain["ndcg@5"], atol=1e-6)


def test_snips_with_constant_propensity_equals_naive_recall():
    # A user-level constant p cancels in SNIPS: it is the plain recall on observed positives.
    key = jax.random.key(1)
    scores = jax.random.normal(key, (10, 30))
    observed = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.2, (10, 30))
    propensities = jnp.linspace(0.1, 0.9, 10)[:, None] * jnp.ones((10, 30))
    np.testing.assert_allclose(
        U.snips_recall(scores, observed, propensities, k=7),
        M.recall(scores, observed, k=7),
        atol=1e-6,
    )


def test_non_positive_propensities_are_rejected():
    with pytest.raises(ValueError, match="propensities must be > 0"):
        U.snips_recall(SCORES, OBSERVED, jnp.array([[0.5, 0.0, 0.5, 0.5]]), k=2)
    with pytest.raises(ValueError, match="non-positive or NaN"):
        U.ips_dcg(SCORES, OBSERVED, jnp.array([[0.5, jnp.nan, 0.5, 0.5]]), k=2)
    with pytest.raises(ValueError, match="propensities must be > 0"):
        U.ips_dcg(SCORES, OBSERVED, jnp.array([-0.1, 0.5, 0.5, 0.5]), k=2)  # item-level [n]
    # Unrankable candidates may carry any propensity: they are never used.
    where = jnp.array([[True, False, True, True]])
    value = U.ips_dcg(SCORES, OBSERVED, jnp.array([[0.5, 0.0, 0.5, 0.5]]), k=2, where=where)
    # List [0, 2, 3] -> weights 2 at rank 1 and 2 at rank 2: 2 + 2/log2(3).
    assert float(value[0]) == pytest.approx(2 + 2 / LOG2_3)
    with pytest.raises(ValueError, match="needs n_relevant"):
        U.unbiased_ranking_metrics(SCORES, OBSERVED, jnp.ones((1, 4)), ks=[2], names=["ips_ndcg"])


def test_jit_matches_eager():
    propensities = jnp.array([[0.5, 1.0, 0.25, 1.0]])
    eager = U.snips_ndcg(SCORES, OBSERVED, propensities, k=3)
    jitted = jax.jit(U.snips_ndcg, static_argnames="k")(SCORES, OBSERVED, propensities, k=3)
    np.testing.assert_allclose(eager, jitted)


def test_ips_is_unbiased_and_naive_is_not():
    # A world with known relevance; the model ranks relevant items higher (noisily) and the
    # logging system observes high-scored items more often (popularity-like MNAR), so naive
    # metrics on observed positives are inflated.
    n_users, n_items, n_draws, k = 30, 40, 2000, 5
    key = jax.random.key(42)
    relevance = jax.random.bernoulli(jax.random.fold_in(key, 0), 0.25, (n_users, n_items))
    relevance = relevance.at[:, 0].set(True)  # every user has a relevant item
    scores = relevance * 1.0 + jax.random.normal(jax.random.fold_in(key, 1), relevance.shape)
    propensities = jnp.clip(jax.nn.sigmoid(2.0 * scores - 2.0), 0.05, 0.95)
    n_relevant = jnp.sum(relevance, axis=1)

    truth_recall = float(jnp.mean(M.recall(scores, relevance, k=k)))
    truth_ndcg = float(jnp.mean(M.ndcg(scores, relevance, k=k)))
    truth_dcg = float(
        jnp.mean(U.ips_dcg(scores, relevance, jnp.ones_like(propensities), k=k))
    )

    def one_draw(draw_key):
        observed = relevance & jax.random.bernoulli(draw_key, propensities)
        estimates = U.unbiased_ranking_metrics(
            scores, observed, propensities, ks=[k], names=("ips_recall", "ips_ndcg", "ips_dcg"),
            n_relevant=n_relevant,
        )
        # Naive: plain recall on observed positives over users with one (as usual practice).
        has = M.has_positive(observed)
        naive = jnp.sum(jnp.where(has, M.recall(scores, observed, k=k), 0.0)) / jnp.sum(has)
        # IPS averages over every user with a relevant item (all of them here).
        means = {name: jnp.mean(value) for name, value in estimates.items()}
        return means, naive

    keys = jax.random.split(jax.random.fold_in(key, 2), n_draws)
    means, naive = jax.jit(jax.vmap(one_draw))(keys)

    def mean_and_error(values):
        values = np.asarray(values, np.float64)
        return values.mean(), values.std(ddof=1) / math.sqrt(len(values))

    for name, truth in (
        (f"ips_recall@{k}", truth_recall),
        (f"ips_ndcg@{k}", truth_ndcg),
        (f"ips_dcg@{k}", truth_dcg),
    ):
        mean, error = mean_and_error(means[name])
        assert abs(mean - truth) < 4 * error, (name, mean, truth, error)
    mean, error = mean_and_error(naive)
    assert mean - truth_recall > 4 * error, (mean, truth_recall, error)
