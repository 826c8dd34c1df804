"""Uplift labels and losses: unbiasedness on a randomized experiment, learning tau."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.causal import uplift as U
from causalrec_jax.eval.causal_metrics import causal_precision

N_DRAWS = 4000

# Eight cells: potential-outcome probabilities and logging propensities (no 0 or 1).
MU1 = jnp.array([0.9, 0.5, 0.3, 0.8, 0.1, 0.6, 0.4, 0.7])
MU0 = jnp.array([0.1, 0.5, 0.6, 0.8, 0.05, 0.2, 0.4, 0.3])
PROPENSITY = jnp.array([0.2, 0.5, 0.7, 0.1, 0.9, 0.35, 0.6, 0.05])
TAU = MU1 - MU0


def draw_cells(key, mu1, mu0, propensity):
    """One randomized experiment: Z ~ Bernoulli(P), Y ~ Bernoulli(mu_Z), per cell."""
    key_z, key_y = jax.random.split(key)
    treatments = jax.random.bernoulli(key_z, propensity)
    outcomes = jax.random.bernoulli(key_y, jnp.where(treatments, mu1, mu0))
    return treatments.astype(jnp.float32), outcomes.astype(jnp.float32)


@jax.jit
def draws(key):
    keys = jax.random.split(key, N_DRAWS)
    return jax.vmap(lambda k: draw_cells(k, MU1, MU0, PROPENSITY))(keys)


def assert_mean_close(samples, expected, n_se=4.0):
    samples = np.asarray(samples, np.float64)
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    assert np.all(np.abs(mean - np.asarray(expected)) <= n_se * se + 1e-9), (mean, expected, se)


def test_ips_label_is_unbiased_for_tau():
    treatments, outcomes = draws(jax.random.key(0))
    labels = U.ips_uplift_label(treatments, outcomes, PROPENSITY)
    assert labels.shape == (N_DRAWS, 8)
    assert_mean_close(labels, TAU)
    # The cells with no effect (mu1 == mu0) average to zero.
    no_effect = np.asarray(TAU) == 0
    assert no_effect.sum() == 3
    assert_mean_close(np.asarray(labels)[:, no_effect], np.zeros(3))


def test_ips_label_values_and_clip():
    z = jnp.array([1, 1, 0, 0])
    y = jnp.array([1, 0, 1, 0])
    p = jnp.array([0.25, 0.25, 0.8, 0.8])
    np.testing.assert_allclose(U.ips_uplift_label(z, y, p), [4.0, 0.0, -5.0, 0.0], rtol=1e-6)
    # clip=0.3 moves 0.25 -> 0.3 and 0.8 -> 0.7.
    np.testing.assert_allclose(
        U.ips_uplift_label(z, y, p, clip=0.3), [1 / 0.3, 0.0, -1 / 0.3, 0.0], rtol=1e-6
    )
    # Unused denominators of 0 never give NaN; masked cells give 0.
    label = U.ips_uplift_label(jnp.array([1, 0]), jnp.array([1, 1]), jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(label, [1.0, -1.0])
    masked = U.ips_uplift_label(z, y, jnp.zeros(4), where=jnp.zeros(4, bool))
    np.testing.assert_array_equal(masked, np.zeros(4))
    with pytest.raises(ValueError, match="clip"):
        U.ips_uplift_label(z, y, p, clip=0.5)


def test_dr_label_unbiased_with_right_propensities_and_wrong_models():
    treatments, outcomes = draws(jax.random.key(1))
    labels = U.dr_uplift_label(treatments, outcomes, PROPENSITY, MU0, MU1)  # models swapped
    assert_mean_close(labels, TAU)


def test_dr_label_exact_in_expectation_with_right_models_and_wrong_propensities():
    treatments, outcomes = draws(jax.random.key(2))
    wrong = 1.0 - PROPENSITY  # every propensity wrong, some badly
    labels = U.dr_uplift_label(treatments, outcomes, wrong, MU1, MU0)
    assert_mean_close(labels, TAU)
    # The IPS label with the same wrong propensities is visibly biased.
    ips = np.asarray(U.ips_uplift_label(treatments, outcomes, wrong)).mean(axis=0)
    assert np.max(np.abs(ips - np.asarray(TAU))) > 0.5
    # Exact expectation, cell by cell: sum over (z, y) of P(z, y) * label(z, y).
    p, m1, m0 = PROPENSITY, MU1, MU0
    expected = 0.0
    for z in (0.0, 1.0):
        for y in (0.0, 1.0):
            pz = p if z else 1 - p
            mu = m1 if z else m0
            py = mu if y else 1 - mu
            expected = expected + pz * py * U.dr_uplift_label(z, y, wrong, m1, m0)
    np.testing.assert_allclose(expected, TAU, atol=1e-6)


def test_uplift_regression_loss_recovers_tau():
    n_items = 20
    key_mu1, key_mu0, key_p, key_draws = jax.random.split(jax.random.key(3), 4)
    mu1 = jax.random.uniform(key_mu1, (n_items,), minval=0.1, maxval=0.9)
    mu0 = jax.random.uniform(key_mu0, (n_items,), minval=0.1, maxval=0.9)
    propensity = jax.random.uniform(key_p, (n_items,), minval=0.3, maxval=0.7)
    keys = jax.random.split(key_draws, 3000)
    z, y = jax.vmap(lambda k: draw_cells(k, mu1, mu0, propensity))(keys)
    labels = U.ips_uplift_label(z, y, propensity)
    # A padding row that must be ignored.
    labels = jnp.concatenate([labels, jnp.full((1, n_items), 100.0)])
    where = jnp.concatenate([jnp.ones((3000, n_items), bool), jnp.zeros((1, n_items), bool)])

    def loss(params):
        predicted = jnp.broadcast_to(params, labels.shape)
        return U.uplift_regression_loss(predicted, labels, where=where)

    @jax.jit
    def fit(params):
        def step(params, _):
            return params - 0.2 * jax.grad(loss)(params) * n_items, None

        return jax.lax.scan(step, params, None, length=200)[0]

    params = fit(jnp.zeros(n_items))
    tau = np.asarray(mu1 - mu0)
    assert np.corrcoef(np.asarray(params), tau)[0, 1] > 0.95
    assert np.max(np.abs(np.asarray(params) - tau)) < 0.2
    # Per-cell losses, masked cells 0.
    per_cell = U.uplift_regression_loss(
        jnp.ones(3), jnp.zeros(3), where=jnp.array([1, 0, 1]), reduce_fn=None
    )
    np.testing.assert_array_equal(per_cell, [1.0, 0.0, 1.0])


def test_dlce_hand_values():
    # One pair: d = s_i - s_j = 1. i treated and consumed (w1_i = 1 / 0.5 = 2); j a control
    # consumed cell (w0_j = 1 / (1 - 0.2) = 1.25).
    loss = U.dlce_loss(1.0, 0.0, 1, 1, 0.5, 0, 1, 0.2)
    expected = (2.0 + 1.25) * np.log1p(np.exp(-1.0))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # Paper's form: negative labels zero; control-consumed i pushes i down: l(s_j - s_i).
    loss = U.dlce_loss(1.0, 0.0, 0, 1, 0.5, 0, 0, 0.5, surrogate="hinge")
    assert float(loss) == pytest.approx(2.0 * 2.0)  # w0 = 2, hinge(-1) = 2
    # Everything masked: 0 with finite zero gradients.
    grad = jax.grad(lambda s: U.dlce_loss(s, 0.0, 1, 1, 0.0, 1, 1, 0.0, where=False))(1.0)
    assert float(grad) == 0.0


def test_dlce_learns_the_causal_ranking_not_the_consumption_rate():
    # 10 items shared by 400 users (item scores are the parameters). Items 0-2 are consumed
    # often but the recommendation changes nothing; items 3-5 are rarely consumed unless
    # recommended; items 6-9 are rarely consumed either way.
    mu1 = jnp.array([0.8, 0.8, 0.7, 0.45, 0.4, 0.35, 0.05, 0.05, 0.1, 0.05])
    mu0 = jnp.array([0.8, 0.8, 0.7, 0.05, 0.05, 0.05, 0.05, 0.05, 0.1, 0.05])
    propensity = jnp.linspace(0.2, 0.8, 10)
    n_users, k = 400, 3
    keys = jax.random.split(jax.random.key(4), n_users)
    z, y = jax.vmap(lambda key: draw_cells(key, mu1, mu0, propensity))(keys)
    p = jnp.broadcast_to(propensity, z.shape)
    # All ordered pairs (i, j), i != j, of each user: [n_users, n_items, n_items].
    where = jnp.broadcast_to(~jnp.eye(10, dtype=bool), (n_users, 10, 10))

    def loss(scores):
        return U.dlce_loss(
            scores[:, None],
            scores[None, :],
            z[:, :, None],
            y[:, :, None],
            p[:, :, None],
            z[:, None, :],
            y[:, None, :],
            p[:, None, :],
            clip=0.05,
            where=where,
        )

    @jax.jit
    def fit(scores):
        def step(scores, _):
            return scores - 1.0 * jax.grad(loss)(scores), None

        return jax.lax.scan(step, scores, None, length=300)[0]

    learned = fit(jnp.zeros(10))
    tau = (mu1 - mu0)[None]
    consumption_rate = jnp.mean(y, axis=0)  # the naive, outcome-based ranking
    cp_dlce = float(causal_precision(learned[None], tau, k=k)[0])
    cp_naive = float(causal_precision(consumption_rate[None], tau, k=k)[0])
    assert cp_naive < 0.05
    assert cp_dlce > 0.3
    assert cp_dlce > cp_naive
    assert set(np.argsort(-np.asarray(learned))[:3].tolist()) == {3, 4, 5}


def test_ulrmf_labels():
    z = jnp.array([1, 1, 0, 0])
    y = jnp.array([1, 0, 1, 0])
    np.testing.assert_array_equal(U.ulrmf_labels(z, y), [1.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(
        U.ulrmf_labels(z, y, where=jnp.array([1, 1, 1, 0])), [1.0, 0.0, 0.0, 0.0]
    )
    # With P = 1/2, the positive rate is (1 + tau) / 2.
    half = jnp.full(8, 0.5)
    keys = jax.random.split(jax.random.key(5), N_DRAWS)
    zs, ys = jax.vmap(lambda key: draw_cells(key, MU1, MU0, half))(keys)
    assert_mean_close(U.ulrmf_labels(zs, ys), (1.0 + TAU) / 2)


def test_labels_jit_and_traced_clip():
    z = jnp.array([1.0, 0.0])
    y = jnp.array([1.0, 1.0])
    p = jnp.array([0.01, 0.99])
    jitted = jax.jit(lambda clip: U.ips_uplift_label(z, y, p, clip=clip))
    np.testing.assert_allclose(jitted(0.1), [10.0, -10.0], rtol=1e-5)


# --- labels of cells observed over T steps (what uplift runs train on) ----------------------


def test_count_labels_by_hand():
    # T = 4 steps, P = 0.25: shown once and consumed (c1 = 1), consumed twice unshown (c0 = 2).
    c1, n1, c0, steps, p = 1.0, 1.0, 2.0, 4.0, 0.25
    w1, w0 = U.ips_weights_from_counts(c1, c0, steps, p)
    assert float(w1) == pytest.approx(1.0 / (4 * 0.25))
    assert float(w0) == pytest.approx(2.0 / (4 * 0.75))
    assert float(U.ips_uplift_label_from_counts(c1, c0, steps, p)) == pytest.approx(1 - 2 / 3)
    dr = U.dr_uplift_label_from_counts(c1, n1, c0, steps, p, 0.5, 0.2)
    expected = 0.5 - 0.2 + (1 - 1 * 0.5) / (4 * 0.25) - (2 - 3 * 0.2) / (4 * 0.75)
    assert float(dr) == pytest.approx(expected, rel=1e-6)
    # THE clip, two-sided: P = 0.25 moves into [0.4, 0.6], so both arms divide by 4 * 0.4 / 0.6.
    clipped = U.ips_uplift_label_from_counts(c1, c0, steps, p, clip=0.4)
    assert float(clipped) == pytest.approx(1 / (4 * 0.4) - 2 / (4 * 0.6), rel=1e-6)


def test_per_step_labels_are_the_single_step_case_of_the_count_labels():
    treatments, outcomes = draws(jax.random.key(5))
    ips_step = jax.vmap(lambda z, y: U.ips_uplift_label(z, y, PROPENSITY))(treatments, outcomes)
    ips_counts = jax.vmap(lambda z, y: U.ips_uplift_label_from_counts(
        z * y, (1 - z) * y, 1.0, PROPENSITY))(treatments, outcomes)
    np.testing.assert_array_equal(ips_step, ips_counts)


def test_count_labels_are_unbiased_over_many_episodes():
    # T steps per cell, Z_t ~ Bernoulli(P) each step: the mean per-step label is unbiased for tau.
    steps = 6

    def episode(key):
        treatments, outcomes = jax.vmap(lambda k: draw_cells(k, MU1, MU0, PROPENSITY))(
            jax.random.split(key, steps))
        c1, n1 = jnp.sum(treatments * outcomes, 0), jnp.sum(treatments, 0)
        c0 = jnp.sum((1 - treatments) * outcomes, 0)
        ips = U.ips_uplift_label_from_counts(c1, c0, steps, PROPENSITY)
        dr = U.dr_uplift_label_from_counts(c1, n1, c0, steps, PROPENSITY, 0.5 * MU1, MU0 + 0.2)
        return ips, dr

    ips, dr = jax.jit(jax.vmap(episode))(jax.random.split(jax.random.key(8), N_DRAWS))
    assert_mean_close(ips, TAU)
    assert_mean_close(dr, TAU)  # wrong outcome models, right propensities


def test_count_labels_mask_cells_without_overlap_and_jit_equals_eager():
    p = jnp.array([0.0, 0.5, 1.0])
    c1, n1, c0 = jnp.array([0.0, 1.0, 2.0]), jnp.array([0.0, 1.0, 2.0]), jnp.array([1.0, 0.0, 0.0])
    where = (p > 0) & (p < 1)
    for function in (U.ips_uplift_label_from_counts, jax.jit(U.ips_uplift_label_from_counts)):
        label = function(c1, c0, 2.0, p, where=where)
        np.testing.assert_allclose(label, [0.0, 1.0, 0.0])
    dr = jax.jit(U.dr_uplift_label_from_counts)(c1, n1, c0, 2.0, p, 0.5, 0.5, where=where)
    np.testing.assert_allclose(dr, [0.0, 1.0, 0.0])  # 0 + (1 - 0.5) / 1 - (0 - 0.5) / 1
    grads = jax.grad(lambda q: jnp.sum(U.ips_uplift_label_from_counts(c1, c0, 2.0, q)))(p)
    assert bool(jnp.all(jnp.isfinite(grads)))  # P = 0 and 1 in unused arms: no NaN
