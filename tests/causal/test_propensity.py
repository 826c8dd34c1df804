"""Propensity clipping (one place, reported) and estimators recovering the simulator's truth."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.stats import spearmanr

from causalrec_jax.causal import clip as the_clip
from causalrec_jax.causal.propensity import (
    PROPENSITY_METHODS,
    ClipReport,
    PropensityError,
    check_propensities,
    check_propensity_matrix,
    clip_propensities,
    estimate_propensities,
    learned_propensities,
    naive_bayes_table,
    propensity_histogram,
)
from causalrec_jax.config import CausalConfig, SimConfig
from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN
from causalrec_jax.errors import CausalRecError
from causalrec_jax.sim.world import simulate_dataset

N_USERS, N_ITEMS = 200, 80


def _world(**overrides):
    config = SimConfig(n_users=N_USERS, n_items=N_ITEMS, mean_exposure=0.1, **overrides)
    dataset, truth = simulate_dataset(config)
    train = dataset.subset(dataset.given_split == GIVEN_TRAIN)
    mar = dataset.subset(dataset.given_split == GIVEN_TEST)
    return train, mar, truth


@pytest.fixture(scope="module")
def world():
    """MNAR world with rating-dependent selection; the MAR sample covers every cell."""
    return _world(mar_items_per_user=N_ITEMS)


@pytest.fixture(scope="module")
def popularity_world():
    """Exposure through popularity only (no self-selection)."""
    return _world(selection_strength=0.0, popularity_exposure=1.0, mar_items_per_user=N_ITEMS)


def _expected_log_likelihood(estimate, truth):
    """Expected Bernoulli log-likelihood of a fresh exposure draw (held-out in expectation)."""
    marginal = np.asarray(truth.marginal_propensity, np.float64)
    p = np.clip(np.asarray(estimate, np.float64), 1e-6, 1 - 1e-6)
    return float(np.mean(marginal * np.log(p) + (1 - marginal) * np.log1p(-p)))


# ----------------------------------------------------------------------------- clipping


def test_clip_report_hand_case():
    p = np.array([0.5, 0.01, 0.2, 0.04, 1.0], np.float32)
    clipped, report = clip_propensities(p, 0.05)
    np.testing.assert_allclose(clipped, [0.5, 0.05, 0.2, 0.05, 1.0])
    weights = np.array([2.0, 20.0, 5.0, 20.0, 1.0])
    assert isinstance(report, ClipReport)
    assert report.n == 5
    assert report.n_clipped == 2
    assert report.fraction_clipped == pytest.approx(0.4)
    assert report.effective_sample_size == pytest.approx(
        weights.sum() ** 2 / np.square(weights).sum(), rel=1e-6
    )
    assert report.effective_sample_size == pytest.approx(48.0**2 / 830.0, rel=1e-6)
    assert report.max_weight_before == pytest.approx(100.0)  # 1 / the smallest propensity
    assert report.max_weight_after == pytest.approx(20.0)
    as_dict = report.to_dict()
    assert as_dict["n_clipped"] == 2 and isinstance(as_dict["n_clipped"], int)
    assert isinstance(as_dict["effective_sample_size"], float)


@pytest.mark.parametrize("clip", [None, 0.0])
def test_no_clip_still_reports_ess(clip):
    p = np.array([0.5, 0.25, 0.25, 0.5], np.float32)
    clipped, report = clip_propensities(p, clip)
    np.testing.assert_array_equal(clipped, p)
    assert report.n_clipped == 0 and report.fraction_clipped == 0.0
    assert report.effective_sample_size == pytest.approx(12.0**2 / 40.0)


def test_equal_weights_give_full_ess_and_where_masks():
    p = np.array([[0.2, 0.2], [0.2, 0.0]], np.float32)  # the 0 is padding
    where = np.array([[True, True], [True, False]])
    clipped, report = clip_propensities(p, 0.5, where=where)
    np.testing.assert_allclose(clipped, [[0.5, 0.5], [0.5, 0.0]])
    assert report.n == 3 and report.n_clipped == 3
    assert report.effective_sample_size == pytest.approx(3.0)
    _, empty = clip_propensities(p, 0.1, where=np.zeros_like(where))
    assert empty.n == 0 and empty.to_dict()["max_weight_before"] is None


def test_the_host_wrapper_is_the_clip_after_the_check():
    p = np.array([0.5, 0.01, 0.2, 0.04, 1.0], np.float32)
    clipped, report = clip_propensities(p, 0.05)
    expected, expected_report = the_clip.clip_propensities(p, 0.05)
    assert isinstance(report, the_clip.ClipReport)
    np.testing.assert_array_equal(clipped, np.asarray(expected))
    assert report.to_dict() == expected_report.to_dict()
    assert clipped.dtype == np.float32 and isinstance(clipped, np.ndarray)
    check_propensities(p)  # valid: returns without raising
    with pytest.raises(PropensityError, match=r"key causal\.propensity: p: 1 propensities are > 1"):
        check_propensities(np.array([0.5, 2.0]), name="p")


@pytest.mark.parametrize(
    "bad, what, index",
    [
        ([0.5, 0.0, 0.0], "<= 0", "index 1"),
        ([0.5, 0.3, -0.1], "<= 0", "index 2"),
        ([np.nan, 0.5, 0.5], "NaN", "index 0"),
        ([0.5, 1.5, 0.5], "> 1", "index 1"),
    ],
)
def test_invalid_propensities_raise(bad, what, index):
    with pytest.raises(PropensityError, match="coat propensities") as error:
        clip_propensities(np.array(bad, np.float32), 0.1, name="coat propensities")
    message = str(error.value)
    assert what in message and index in message
    assert isinstance(error.value, ValueError) and isinstance(error.value, CausalRecError)
    n_bad = 2 if bad == [0.5, 0.0, 0.0] else 1
    assert f"{n_bad} propensities" in message


def test_zero_is_an_error_even_when_a_clip_would_raise_it():
    with pytest.raises(PropensityError):
        clip_propensities(np.array([0.0, 0.5]), 0.1)


def test_wrong_shape_names_the_matrix():
    with pytest.raises(PropensityError, match=r"propensities\.ascii.*\(290, 300\)"):
        check_propensity_matrix(np.ones((300, 290)), 290, 300, "propensities.ascii")
    matrix = check_propensity_matrix(np.ones((2, 3), np.float64), 2, 3, "m")
    assert matrix.dtype == np.float32


# ----------------------------------------------------------------------------- estimators


@pytest.mark.parametrize("method", PROPENSITY_METHODS)
def test_estimator_shape_and_range(world, method):
    train, mar, truth = world
    matrix = estimate_propensities(
        method, train, mar=mar, config=CausalConfig(), key=jax.random.key(0), truth=truth
    )
    assert matrix.shape == (N_USERS, N_ITEMS) and matrix.dtype == np.float32
    assert np.all(matrix > 0) and np.all(matrix <= 1) and np.all(np.isfinite(matrix))
    clip_propensities(matrix, 0.0)  # valid everywhere


def test_given_uses_dataset_matrix_and_errors_without(world):
    train, _, truth = world
    given = estimate_propensities("given", train)
    np.testing.assert_array_equal(given, np.asarray(truth.propensity, np.float32))
    with pytest.raises(PropensityError, match="causal.propensity"):
        estimate_propensities("given", train.replace(propensity_matrix=None))
    with pytest.raises(PropensityError, match=r"dataset propensities.*\(200, 80\)"):
        estimate_propensities("given", train.replace(propensity_matrix=np.ones((3, 3))))


def test_missing_inputs_raise(world):
    train, mar, _ = world
    with pytest.raises(PropensityError, match='data.split = "mar_slice".*mar_train_fraction'):
        estimate_propensities("naive_bayes", train)
    with pytest.raises(PropensityError, match="empty"):
        estimate_propensities("naive_bayes", train, mar=mar.subset(np.zeros(len(mar), bool)))
    with pytest.raises(PropensityError, match="truth"):
        estimate_propensities("true", train, truth=None)
    with pytest.raises(PropensityError, match="key"):
        estimate_propensities("learned", train)
    with pytest.raises(PropensityError, match="unknown method"):
        estimate_propensities("oracle", train)


def test_naive_bayes_recovers_rating_level_observation_rates(world):
    train, mar, truth = world
    ratings = np.asarray(truth.ratings)
    observed = np.asarray(truth.observed)
    table = naive_bayes_table(train, mar)
    np.testing.assert_allclose(table.levels, [1, 2, 3, 4, 5])
    empirical = np.array([observed[ratings == k].mean() for k in range(1, 6)])
    # Selection strength 1: observation rates rise with the rating.
    assert np.all(np.diff(empirical) > 0)
    np.testing.assert_allclose(table.observed_given_rating, empirical, rtol=0.1, atol=0.005)
    matrix = estimate_propensities("naive_bayes", train, mar=mar)
    rows = np.searchsorted(table.levels, train.rating)
    np.testing.assert_allclose(
        matrix[train.user, train.item], table.observed_given_rating[rows]
    )
    unobserved = ~observed
    np.testing.assert_allclose(matrix[unobserved], observed.mean(), rtol=1e-5)


def test_popularity_matches_density_and_ranks_like_truth(popularity_world):
    train, _, truth = popularity_world
    matrix = estimate_propensities("popularity", train, config=CausalConfig(popularity_power=1.0))
    density = len(train) / (N_USERS * N_ITEMS)
    assert matrix.mean() == pytest.approx(density, rel=1e-4)
    np.testing.assert_array_equal(matrix, np.broadcast_to(matrix[0], matrix.shape))
    item_truth = np.asarray(truth.marginal_propensity).mean(axis=0)
    rho = spearmanr(matrix[0], item_truth).statistic
    assert rho > 0.5
    flat = estimate_propensities("popularity", train, config=CausalConfig(popularity_power=0.0))
    np.testing.assert_allclose(flat, density, rtol=1e-4)


@pytest.mark.parametrize("method", ["logistic", "learned"])
def test_fitted_models_beat_constant_on_held_out_draws(world, method):
    train, _, truth = world
    matrix = estimate_propensities(method, train, key=jax.random.key(1))
    density = len(train) / (N_USERS * N_ITEMS)
    assert matrix.mean() == pytest.approx(density, rel=0.05)
    constant = _expected_log_likelihood(np.full(matrix.shape, density), truth)
    fitted = _expected_log_likelihood(matrix, truth)
    assert fitted > constant + 0.02


def test_logistic_is_deterministic_and_learned_follows_key(world):
    train, _, _ = world
    np.testing.assert_array_equal(
        estimate_propensities("logistic", train), estimate_propensities("logistic", train)
    )
    first = estimate_propensities("learned", train, key=jax.random.key(3))
    again = estimate_propensities("learned", train, key=jax.random.key(3))
    other = estimate_propensities("learned", train, key=jax.random.key(4))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_logistic_uses_features(world):
    train, _, truth = world
    # An item feature equal to the true log popularity is the exposure driver.
    feature = np.log(np.asarray(truth.item_popularity, np.float32))[:, None]
    with_features = train.replace(item_features=feature)
    matrix = estimate_propensities("logistic", with_features)
    assert matrix.shape == (N_USERS, N_ITEMS)
    assert _expected_log_likelihood(matrix, truth) >= _expected_log_likelihood(
        estimate_propensities("logistic", train), truth
    ) - 1e-3


def test_learned_propensities_compile_once_across_seeds(world):
    from causalrec_jax.train.full_batch import fit_full_batch_jit

    train, _, _ = world
    first = learned_propensities(jax.random.key(0), train, steps=20)
    size = fit_full_batch_jit._cache_size()
    second = learned_propensities(jax.random.key(1), train, steps=20)
    again = learned_propensities(jax.random.key(0), train, steps=20)
    assert fit_full_batch_jit._cache_size() == size  # another seed: the same program
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)


def test_the_propensity_histogram_counts_rows_per_tenth_of_a_decade():
    histogram = propensity_histogram(np.asarray([1.0, 0.5, 0.1, 0.099, 0.0101], np.float32))
    edges = histogram["log10_edges"]
    assert edges[0] == -2.0 and edges[-1] == 0.0 and len(edges) == 21
    counts = dict(zip(edges[:-1], histogram["counts"], strict=True))
    # log10: 0 (the last bin holds p = 1), -0.30, -1.0, -1.004, -1.996
    assert counts[-0.1] == 1 and counts[-0.4] == 1 and counts[-1.0] == 1
    assert counts[-1.1] == 1 and counts[-2.0] == 1 and sum(counts.values()) == 5
    assert propensity_histogram(np.ones(3)) == {"log10_edges": [-0.1, 0.0], "counts": [3]}
    assert propensity_histogram(np.zeros(0)) == {"log10_edges": [], "counts": []}
