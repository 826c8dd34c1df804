"""THE clip (causal/clip.py): hand-computed values, traced bounds, masks, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.causal.clip import ClipReport, clip_propensities, clip_weights


def test_clip_weights_caps_and_reports_by_hand():
    weights = jnp.array([1.0, 2.0, 5.0, 10.0])
    clipped, report = clip_weights(weights, 4.0)
    np.testing.assert_allclose(clipped, [1.0, 2.0, 4.0, 4.0])
    assert int(report.n) == 4 and int(report.n_clipped) == 2
    assert float(report.fraction_clipped) == pytest.approx(0.5)
    # Kish ESS of [1, 2, 4, 4]: 11^2 / 37.
    assert float(report.effective_sample_size) == pytest.approx(121 / 37, rel=1e-6)
    assert float(report.max_weight_before) == 10.0 and float(report.max_weight_after) == 4.0


def test_clip_weights_mask_rows_of_slates():
    weights = jnp.array([[1.0, 9.0], [20.0, 30.0]])
    clipped, report = clip_weights(weights, 5.0, where=jnp.array([True, False]))
    np.testing.assert_allclose(clipped, [[1.0, 5.0], [0.0, 0.0]])
    assert int(report.n) == 2 and int(report.n_clipped) == 1
    assert float(report.max_weight_before) == 9.0


def test_clip_propensities_one_sided_by_hand():
    p = jnp.array([0.01, 0.04, 0.5, 1.0])
    clipped, report = clip_propensities(p, 0.05)
    np.testing.assert_allclose(clipped, [0.05, 0.05, 0.5, 1.0], rtol=1e-6)
    assert int(report.n_clipped) == 2
    assert float(report.max_weight_before) == pytest.approx(100.0)
    assert float(report.max_weight_after) == pytest.approx(20.0)
    # Unclipped values come back exactly, clipped ones are exactly the bound (no 1 / (1 / p)
    # round trip either way).
    assert float(clipped[2]) == 0.5
    assert clipped[0] == jnp.float32(0.05) and clipped[1] == jnp.float32(0.05)
    two_sided, _ = clip_propensities(jnp.array([0.01, 0.99]), 0.05, two_sided=True)
    assert two_sided[0] == jnp.float32(0.05) and two_sided[1] == 1 - jnp.float32(0.05)


def test_clip_propensities_two_sided_bounds_both_arms():
    p = jnp.array([0.0, 0.02, 0.3, 0.97, 1.0])
    clipped, report = clip_propensities(p, 0.1, two_sided=True)
    np.testing.assert_allclose(clipped, [0.1, 0.1, 0.3, 0.9, 0.9], rtol=1e-6)
    assert int(report.n) == 10  # each cell has a treated and a control weight
    assert int(report.n_clipped) == 4
    assert float(report.max_weight_after) == pytest.approx(10.0)


def test_no_clip_for_none_zero_and_traced_zero():
    p = jnp.array([0.01, 0.2, 1.0])
    for bound in (None, 0.0):
        clipped, report = clip_propensities(p, bound)
        np.testing.assert_array_equal(clipped, p)
        assert int(report.n_clipped) == 0
    traced, report = jax.jit(clip_propensities)(p, 0.0)
    np.testing.assert_array_equal(traced, p)
    assert int(report.n_clipped) == 0


def test_traced_bound_equals_python_bound_and_vmaps():
    key = jax.random.key(0)
    p = jax.random.uniform(key, (200,), minval=0.001, maxval=1.0)
    bounds = jnp.array([0.0, 0.01, 0.05, 0.2])
    clipped, reports = jax.vmap(lambda b: clip_propensities(p, b))(bounds)
    for row, bound in enumerate([0.0, 0.01, 0.05, 0.2]):
        expected, report = clip_propensities(p, bound)
        np.testing.assert_allclose(clipped[row], expected, rtol=1e-6)
        assert int(reports.n_clipped[row]) == int(report.n_clipped)
        assert int(report.n_clipped) == int(np.sum(np.asarray(p) < bound))
    eager, _ = clip_propensities(p, 0.05)
    jitted, _ = jax.jit(clip_propensities)(p, 0.05)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)


def test_masked_entries_are_filled_and_unreported():
    p = jnp.array([0.0, jnp.nan, 0.5])
    where = jnp.array([False, False, True])
    clipped, report = clip_propensities(p, 0.1, where=where)
    np.testing.assert_array_equal(clipped, [1.0, 1.0, 0.5])
    assert int(report.n) == 1 and int(report.n_clipped) == 0


def test_gradients_finite_at_zero_and_one():
    def total(p):
        clipped, _ = clip_propensities(p, 0.1, two_sided=True)
        return jnp.sum(1.0 / clipped + 1.0 / (1.0 - clipped))

    grads = jax.grad(total)(jnp.array([0.0, 0.3, 1.0]))
    assert bool(jnp.all(jnp.isfinite(grads)))
    # The clipped entries do not move with p; the free one does.
    assert float(grads[0]) == 0.0 and float(grads[2]) == 0.0 and float(grads[1]) != 0.0


def test_report_to_dict_and_bad_bounds():
    _, report = clip_propensities(jnp.zeros((0,)), 0.1)
    assert isinstance(report, ClipReport)
    as_dict = report.to_dict()
    assert as_dict["n"] == 0 and as_dict["max_weight_before"] is None
    with pytest.raises(ValueError, match="clip"):
        clip_propensities(jnp.ones(3), 1.0)
    with pytest.raises(ValueError, match="clip"):
        clip_propensities(jnp.ones(3), 0.5, two_sided=True)
    with pytest.raises(ValueError, match="max_weight"):
        clip_weights(jnp.ones(3), -1.0)
