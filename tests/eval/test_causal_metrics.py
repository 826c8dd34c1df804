"""Causal precision / causal DCG against hand-computed values, tie rule, masks, IPS versions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.causal import uplift
from causalrec_jax.eval import causal_metrics as C

# Two users x five items.
SCORES = np.array([[0.9, 0.1, 0.5, 0.7, 0.3], [1.0, 2.0, 3.0, 4.0, 5.0]], np.float32)
TAU = np.array([[0.2, 0.5, -0.1, 0.0, 0.4], [0.3, 0.3, 0.0, -0.2, 0.6]], np.float32)
# User 0 ranks items 0, 3, 2, 4, 1 (tau 0.2, 0.0, -0.1, 0.4, 0.5);
# user 1 ranks items 4, 3, 2, 1, 0 (tau 0.6, -0.2, 0.0, 0.3, 0.3).


def test_hand_computed_values():
    cp3 = C.causal_precision(SCORES, TAU, k=3)
    np.testing.assert_allclose(cp3, [(0.2 + 0.0 - 0.1) / 3, (0.6 - 0.2 + 0.0) / 3], atol=1e-6)
    cdcg3 = C.causal_dcg(SCORES, TAU, k=3)
    np.testing.assert_allclose(
        cdcg3, [0.2 + 0.0 / math.log2(3) - 0.1 / 2, 0.6 - 0.2 / math.log2(3) + 0.0], atol=1e-6
    )
    np.testing.assert_allclose(C.causal_precision(SCORES, TAU, k=1), [0.2, 0.6], atol=1e-6)
    cdcg5 = C.causal_dcg(SCORES, TAU, k=5)
    expected0 = 0.2 + 0.0 - 0.1 / 2 + 0.4 / math.log2(5) + 0.5 / math.log2(6)
    expected1 = 0.6 - 0.2 / math.log2(3) + 0.0 + 0.3 / math.log2(5) + 0.3 / math.log2(6)
    np.testing.assert_allclose(cdcg5, [expected0, expected1], atol=1e-6)
    # K = 5 averages every item: the mean tau whatever the order.
    np.testing.assert_allclose(C.causal_precision(SCORES, TAU, k=5), TAU.mean(axis=1), atol=1e-6)


def test_constant_scores_get_the_lowest_possible_value():
    constant = np.zeros_like(SCORES)
    for k in (1, 2, 3):
        lowest = np.sort(TAU, axis=1)[:, :k]
        np.testing.assert_allclose(
            C.causal_precision(constant, TAU, k=k), lowest.mean(axis=1), atol=1e-6
        )
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        # The worst cdcg puts the lowest tau at the most heavily weighted first position.
        np.testing.assert_allclose(
            C.causal_dcg(constant, TAU, k=k), (lowest * discounts).sum(axis=1), atol=1e-6
        )
    # A partial tie: items 0 and 1 tie at the top; the lower tau (0.2 of item 0) comes first.
    scores = np.array([[1.0, 1.0, 0.0, 0.0, 0.0]], np.float32)
    tau = np.array([[0.2, 0.5, 0.0, 0.0, 0.0]], np.float32)
    assert float(C.causal_precision(scores, tau, k=1)[0]) == pytest.approx(0.2)
    # -0.0 ties with 0.0 (pessimistically), NaN ranks last.
    scores = np.array([[-0.0, 0.0, np.nan, -1.0]], np.float32)
    tau = np.array([[0.5, 0.1, 0.9, 0.3]], np.float32)
    assert float(C.causal_precision(scores, tau, k=1)[0]) == pytest.approx(0.1)
    assert float(C.causal_precision(scores, tau, k=3)[0]) == pytest.approx(0.3)


def test_where_excludes_items_and_short_lists():
    where = np.ones(SCORES.shape, bool)
    where[1, 3] = False  # user 1 loses its second-ranked item (tau -0.2)
    # Padding columns with high scores and high tau must change nothing.
    scores = np.pad(SCORES, ((0, 0), (0, 3)), constant_values=9.0)
    tau = np.pad(TAU, ((0, 0), (0, 3)), constant_values=1.0)
    where = np.pad(where, ((0, 0), (0, 3)), constant_values=False)
    cp = C.causal_precision(scores, tau, k=3, where=where)
    np.testing.assert_allclose(cp, [(0.2 + 0.0 - 0.1) / 3, (0.6 + 0.0 + 0.3) / 3], atol=1e-6)
    cdcg = C.causal_dcg(scores, tau, k=3, where=where)
    np.testing.assert_allclose(cdcg, [0.2 - 0.1 / 2, 0.6 + 0.0 / math.log2(3) + 0.3 / 2], atol=1e-6)
    # Fewer rankable items than K: cp averages the available ones, cdcg sums them; a user
    # with no rankable item gets 0.
    short = np.zeros(SCORES.shape, bool)
    short[0, [1, 4]] = True  # user 0: items 4 (0.3 score, tau 0.4) then 1 (0.1, tau 0.5)
    np.testing.assert_allclose(
        C.causal_precision(SCORES, TAU, k=3, where=short), [0.45, 0.0], atol=1e-6
    )
    np.testing.assert_allclose(
        C.causal_dcg(SCORES, TAU, k=10, where=short), [0.4 + 0.5 / math.log2(3), 0.0], atol=1e-6
    )


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        C.causal_precision(SCORES, TAU, k=0)
    with pytest.raises(ValueError, match="n_users, n_items"):
        C.causal_dcg(SCORES[0], TAU[0], k=1)


def test_ips_causal_metrics_are_unbiased():
    n_users, n_items, k, n_draws = 3, 6, 2, 4000
    key_mu1, key_mu0, key_p, key_s, key_draws = jax.random.split(jax.random.key(0), 5)
    mu1 = jax.random.uniform(key_mu1, (n_users, n_items), minval=0.05, maxval=0.95)
    mu0 = jax.random.uniform(key_mu0, (n_users, n_items), minval=0.05, maxval=0.95)
    propensity = jax.random.uniform(key_p, (n_users, n_items), minval=0.2, maxval=0.8)
    scores = jax.random.normal(key_s, (n_users, n_items))
    where = jnp.ones((n_users, n_items), bool).at[0, int(jnp.argmax(scores[0]))].set(False)
    tau = mu1 - mu0

    @jax.jit
    def estimates(key):
        key_z, key_y = jax.random.split(key)
        z = jax.random.bernoulli(key_z, propensity)
        y = jax.random.bernoulli(key_y, jnp.where(z, mu1, mu0))
        return (
            uplift.ips_causal_precision(scores, z, y, propensity, k=k, where=where),
            uplift.ips_causal_dcg(scores, z, y, propensity, k=k, where=where),
        )

    cp, cdcg = jax.vmap(estimates)(jax.random.split(key_draws, n_draws))
    truths = (
        C.causal_precision(scores, tau, k=k, where=where),
        C.causal_dcg(scores, tau, k=k, where=where),
    )
    for samples, truth in zip((cp, cdcg), truths, strict=True):
        samples = np.asarray(samples, np.float64)
        se = samples.std(axis=0, ddof=1) / np.sqrt(n_draws)
        assert np.all(np.abs(samples.mean(axis=0) - np.asarray(truth)) <= 4 * se), (
            samples.mean(axis=0),
            truth,
        )
    # Clipping changes the estimate (it is a different, biased estimator).
    z = jnp.ones((n_users, n_items))
    clipped = uplift.ips_causal_precision(scores, z, z, propensity, k=k, clip=0.45)
    plain = uplift.ips_causal_precision(scores, z, z, propensity, k=k)
    assert not np.allclose(clipped, plain)
