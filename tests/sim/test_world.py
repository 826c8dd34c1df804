"""The static simulated world: shapes, calibration, MNAR bias, exposure frequencies, streams."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.config import SimConfig
from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN
from causalrec_jax.errors import ConfigError
from causalrec_jax.sim import (
    WorldParams,
    WorldSizes,
    calibrate_base,
    make_world,
    mar_sample,
    rating_probabilities,
    sample_exposure,
    simulate_dataset,
)
from causalrec_jax.sim import world as world_module
from causalrec_jax.sim.world import GroundTruth, SparseGroundTruth, cell_noise, truth_block

make_world_jit = jax.jit(make_world, static_argnums=1)
SMALL = WorldSizes(n_users=50, n_items=40, latent_dim=4, mar_items_per_user=5)
# Compiling each size costs about a second on CPU, so the tests share a few sizes.
MEDIUM = WorldSizes(n_users=300, n_items=100)


def _split_means(dataset):
    train = dataset.given_split == GIVEN_TRAIN
    return dataset.rating[train], dataset.rating[~train]


def test_shapes_and_value_ranges():
    truth = make_world_jit(jax.random.key(1), SMALL, WorldParams())
    matrices = ("relevance", "expected_rating", "ratings", "propensity", "marginal_propensity")
    for name in matrices + ("observed",):
        assert getattr(truth, name).shape == (50, 40), name
    assert truth.user_factors.shape == (50, 4)
    assert truth.item_factors.shape == (40, 4)
    assert truth.item_popularity.shape == (40,)
    assert truth.exposure_base.shape == ()
    assert truth.ratings.dtype == jnp.int32 and truth.observed.dtype == jnp.bool_
    assert set(np.unique(truth.ratings)) <= {1, 2, 3, 4, 5}
    assert bool(jnp.all(truth.item_popularity > 0))
    for name in ("relevance", "propensity", "marginal_propensity"):
        values = getattr(truth, name)
        assert bool(jnp.all((values > 0) & (values < 1))), name
    assert bool(jnp.all((truth.expected_rating >= 1) & (truth.expected_rating <= 5)))
    # log popularity is sigma * z (popularity_sigma defaults to 1).
    np.testing.assert_allclose(
        jnp.log(truth.item_popularity), truth.standardized_log_popularity, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"mean_exposure": 0.3},
        {"mean_exposure": 0.01, "selection_strength": 4.0, "popularity_exposure": 2.0},
        {"selection_strength": 0.0, "popularity_exposure": 0.0},
    ],
)
def test_mean_propensity_is_calibrated(changes):
    params = dataclasses.replace(WorldParams(), **changes)
    truth = make_world_jit(jax.random.key(2), MEDIUM, params)
    mean = float(jnp.mean(truth.propensity))
    assert abs(mean / params.mean_exposure - 1) < 1e-3
    if params.selection_strength == 0 and params.popularity_exposure == 0:
        np.testing.assert_allclose(truth.propensity, params.mean_exposure, rtol=1e-5)


def test_calibrate_base_hand_case():
    base = calibrate_base(jnp.zeros((7, 3)), 0.2)
    np.testing.assert_allclose(base, np.log(0.2 / 0.8), rtol=1e-5)
    # Two logits -1 and +1 around b: mean of sigmoid(b - 1), sigmoid(b + 1) is 0.5 at b = 0.
    np.testing.assert_allclose(calibrate_base(jnp.array([-1.0, 1.0]), 0.5), 0.0, atol=1e-6)


def test_self_selection_raises_observed_mean():
    dataset, _ = simulate_dataset(SimConfig(selection_strength=1.0, popularity_exposure=0.0))
    observed, mar = _split_means(dataset)
    # With s = 1 the odds of observing a 5 are e^2 those of a 1 (about 3.5 vs 3.0 here).
    assert observed.mean() - mar.mean() > 0.3
    dataset, _ = simulate_dataset(SimConfig(selection_strength=2.0, popularity_exposure=0.0))
    stronger, mar = _split_means(dataset)
    assert stronger.mean() - mar.mean() > observed.mean() - mar.mean() + 0.2


def test_random_exposure_is_unbiased():
    dataset, truth = simulate_dataset(SimConfig(selection_strength=0.0, popularity_exposure=0.0))
    observed, mar = _split_means(dataset)
    stderr = np.sqrt(observed.var() / len(observed) + mar.var() / len(mar))
    assert abs(observed.mean() - mar.mean()) < 4 * stderr
    full = float(jnp.mean(truth.ratings))
    assert abs(observed.mean() - full) < 4 * np.sqrt(observed.var() / len(observed))


def test_popularity_exposure_concentrates_on_popular_items():
    def top_decile_share(popularity_exposure):
        config = SimConfig(selection_strength=0.0, popularity_exposure=popularity_exposure)
        dataset, truth = simulate_dataset(config)
        popularity = np.asarray(truth.item_popularity)
        top = popularity >= np.quantile(popularity, 0.9)
        train = dataset.given_split == GIVEN_TRAIN
        return top[dataset.item[train]].mean(), top.mean(), train.sum()

    share, catalogue_share, _ = top_decile_share(1.0)
    # Exposure ~ e^z puts P(N(1, 1) > 1.28) ~ 0.39 of the mass on the top decile.
    assert share > 0.3 > catalogue_share + 0.15
    share, catalogue_share, n = top_decile_share(0.0)
    assert abs(share - catalogue_share) < 4 * np.sqrt(catalogue_share * (1 - catalogue_share) / n)


def test_popularity_sigma_scales_the_confounder():
    key = jax.random.key(14)
    worlds = {
        sigma: make_world_jit(key, MEDIUM, WorldParams(popularity_sigma=sigma))
        for sigma in (0.0, 0.5, 1.0, 2.0)
    }
    z = worlds[1.0].standardized_log_popularity
    for sigma, truth in worlds.items():
        np.testing.assert_array_equal(truth.standardized_log_popularity, z)
        np.testing.assert_allclose(jnp.log(truth.item_popularity), sigma * z, atol=1e-5)
        # Exogenous users and items do not move with the confounder's strength.
        np.testing.assert_array_equal(truth.user_factors, worlds[1.0].user_factors)
    for low, high in ((0.0, 0.5), (0.5, 1.0), (1.0, 2.0)):
        assert np.abs(np.asarray(worlds[low].relevance - worlds[high].relevance)).max() > 0.05
        assert not np.allclose(worlds[low].propensity, worlds[high].propensity)

    # A stronger confounder spreads both relevance and exposure across items.
    def item_spread(values):
        return float(jnp.std(jnp.mean(values, axis=0)))

    for name in ("relevance", "marginal_propensity"):
        spreads = [item_spread(getattr(worlds[s], name)) for s in (0.0, 0.5, 1.0, 2.0)]
        assert spreads == sorted(spreads) and spreads[-1] > 2 * spreads[0], name

    # sigma_p = 0 removes the popularity path: the propensity is a function of the rating alone
    # (no item effect), and relevance no longer depends on quality_effect.
    flat = worlds[0.0]
    np.testing.assert_array_equal(flat.item_popularity, 1.0)
    ratings = np.asarray(flat.ratings)
    propensity = np.asarray(flat.propensity)
    for rating in np.unique(ratings):
        values = propensity[ratings == rating]
        np.testing.assert_allclose(values, values[0], rtol=1e-6)
    no_quality = make_world_jit(key, MEDIUM, WorldParams(popularity_sigma=0.0, quality_effect=3.0))
    np.testing.assert_allclose(no_quality.relevance, flat.relevance, rtol=1e-6)
    # ... and without self-selection the propensity is constant, the MAR rate.
    constant = make_world_jit(
        key, MEDIUM, WorldParams(popularity_sigma=0.0, selection_strength=0.0, mean_exposure=0.1)
    )
    np.testing.assert_allclose(constant.propensity, 0.1, rtol=1e-5)
    np.testing.assert_allclose(constant.marginal_propensity, 0.1, rtol=1e-5)


def test_propensity_is_a_power_of_popularity():
    # At small propensities pi ~ popularity ** alpha, whatever sigma_p (Yang et al.).
    for sigma, alpha in ((1.0, 1.5), (2.0, 0.5), (0.5, 1.0)):
        params = WorldParams(
            popularity_sigma=sigma,
            popularity_exposure=alpha,
            selection_strength=0.0,
            mean_exposure=1e-3,
        )
        truth = make_world_jit(jax.random.key(15), MEDIUM, params)
        log_popularity = np.log(np.asarray(truth.item_popularity, dtype=np.float64))
        log_propensity = np.log(np.asarray(truth.propensity[0], dtype=np.float64))
        slope = np.polyfit(log_popularity, log_propensity, 1)[0]
        assert abs(slope - alpha) < 0.03 * alpha, (sigma, alpha, slope)


def test_top_decile_share_grows_with_popularity_sigma():
    def top_decile_share(popularity_sigma):
        config = SimConfig(selection_strength=0.0, popularity_sigma=popularity_sigma)
        dataset, truth = simulate_dataset(config)
        # Rank by z, which is the same for every sigma (popularity itself is flat at 0).
        z = np.asarray(truth.standardized_log_popularity)
        top = z >= np.quantile(z, 0.9)
        train = dataset.given_split == GIVEN_TRAIN
        return top[dataset.item[train]].mean(), top.mean(), train.sum()

    shares = {sigma: top_decile_share(sigma) for sigma in (0.0, 0.5, 1.0, 2.0)}
    share, catalogue_share, n = shares[0.0]
    assert abs(share - catalogue_share) < 4 * np.sqrt(catalogue_share * (1 - catalogue_share) / n)
    values = [shares[sigma][0] for sigma in (0.0, 0.5, 1.0, 2.0)]
    assert all(b > a + 0.05 for a, b in zip(values, values[1:], strict=False)), values


def test_expected_rating_and_marginal_propensity_match_rating_probabilities():
    # The level-by-level sums in make_world against the [U, I, 5] formula.
    for rating_noise in (0.5, 1.3, 0.0):
        params = WorldParams(rating_noise=rating_noise, selection_strength=2.0, mean_exposure=0.2)
        truth = make_world_jit(jax.random.key(16), SMALL, params)
        latent_mean = 1 + 4 * truth.relevance
        probabilities = rating_probabilities(latent_mean, rating_noise)
        levels = jnp.arange(1, 6, dtype=jnp.float32)
        np.testing.assert_allclose(truth.expected_rating, probabilities @ levels, atol=2e-5)
        popularity_logit = params.popularity_exposure * jnp.log(truth.item_popularity)
        per_level = jax.nn.sigmoid(
            truth.exposure_base
            + popularity_logit[None, :, None]
            + params.selection_strength * (levels - 3) / 2
        )
        np.testing.assert_allclose(
            truth.marginal_propensity, jnp.sum(probabilities * per_level, -1), atol=2e-6
        )


def test_exposure_frequencies_match_propensities():
    params = WorldParams(mean_exposure=0.3, selection_strength=1.5, popularity_exposure=1.0)
    truth = make_world_jit(jax.random.key(3), SMALL, params)
    n_draws = 2000
    keys = jax.random.split(jax.random.key(4), n_draws)
    draws = jax.jit(jax.vmap(sample_exposure, in_axes=(0, None)))(keys, truth.propensity)
    frequency = np.asarray(draws.mean(axis=0), dtype=np.float64)
    propensity = np.asarray(truth.propensity, dtype=np.float64)
    variance = propensity * (1 - propensity) / n_draws
    z = (frequency - propensity) / np.sqrt(variance)
    # Entries with enough expected counts for the normal approximation.
    enough = n_draws * propensity * (1 - propensity) >= 5
    assert enough.mean() > 0.8
    assert np.abs(z[enough]).max() < 5
    chi_square = np.sum(z[enough] ** 2)
    dof = enough.sum()
    assert abs(chi_square - dof) < 5 * np.sqrt(2 * dof)
    # Binned calibration over all entries: within each propensity decile, the mean frequency
    # matches the mean propensity (entries are independent, so the SE is of the pooled mean).
    edges = np.quantile(propensity, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, propensity, side="right") - 1, 0, 9)
    for b in range(10):
        inside = bins == b
        gap = frequency[inside].mean() - propensity[inside].mean()
        assert abs(gap) < 5 * np.sqrt(variance[inside].sum()) / inside.sum()


def test_realised_exposure_follows_propensity():
    truth = make_world_jit(jax.random.key(5), MEDIUM, WorldParams())
    observed = np.asarray(truth.observed)
    propensity = np.asarray(truth.propensity, dtype=np.float64)
    stderr = np.sqrt(np.sum(propensity * (1 - propensity)))
    assert abs(observed.sum() - propensity.sum()) < 4 * stderr
    # The marginal propensity integrates the rating out; on average it agrees with the
    # propensity given the realised rating.
    assert abs(float(jnp.mean(truth.marginal_propensity)) / 0.05 - 1) < 0.02


def test_rating_probabilities_match_draws():
    mean = jnp.array([1.0, 2.3, 3.0, 3.6, 4.9])
    noise = 0.7
    probabilities = jax.jit(rating_probabilities)(mean, noise)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-6)
    draws = np.asarray(mean + noise * jax.random.normal(jax.random.key(6), (100_000, 5)))
    ratings = np.clip(np.floor(draws + 0.5), 1, 5).astype(np.int32)
    frequency = np.stack([(ratings == k).mean(0) for k in range(1, 6)], axis=-1)
    np.testing.assert_allclose(frequency, probabilities, atol=5e-3)
    # Zero noise is a point mass at the rounded mean, not NaN.
    np.testing.assert_allclose(
        rating_probabilities(jnp.array([2.2]), 0.0), [[0.0, 1.0, 0.0, 0.0, 0.0]], atol=1e-6
    )


def test_expected_rating_is_mean_of_realised_ratings():
    truth = make_world_jit(jax.random.key(7), MEDIUM, WorldParams())
    residual = np.asarray(truth.ratings - truth.expected_rating, dtype=np.float64)
    assert abs(residual.mean()) < 4 * residual.std() / np.sqrt(residual.size)


def test_same_key_same_world_other_key_differs():
    first = make_world_jit(jax.random.key(8), SMALL, WorldParams())
    again = make_world_jit(jax.random.key(8), SMALL, WorldParams())
    other = make_world_jit(jax.random.key(9), SMALL, WorldParams())
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.ratings, other.ratings)
    assert not np.array_equal(first.user_factors, other.user_factors)
    assert not np.array_equal(first.observed, other.observed)


def test_exposure_parameters_keep_users_items_and_ratings():
    key = jax.random.key(10)
    base = make_world_jit(key, SMALL, WorldParams())
    changed = make_world_jit(
        key,
        SMALL,
        WorldParams(mean_exposure=0.2, popularity_exposure=0.0, selection_strength=3.0),
    )
    same = ("user_factors", "item_factors", "item_popularity", "relevance", "expected_rating")
    for name in same + ("ratings",):
        np.testing.assert_array_equal(getattr(base, name), getattr(changed, name), err_msg=name)
    assert not np.array_equal(base.propensity, changed.propensity)
    # Same exposure uniforms: raising only the mean exposure raises every propensity, so the
    # observed set grows and contains the old one (coupled draws).
    more = make_world_jit(key, SMALL, WorldParams(mean_exposure=0.2))
    assert bool(jnp.all(more.propensity > base.propensity))
    assert bool(jnp.all(more.observed | ~base.observed))
    assert int(more.observed.sum()) > int(base.observed.sum())


def test_jit_equals_eager():
    key = jax.random.key(11)
    eager = make_world(key, SMALL, WorldParams())
    jitted = make_world_jit(key, SMALL, WorldParams())
    np.testing.assert_array_equal(eager.ratings, jitted.ratings)
    np.testing.assert_array_equal(eager.observed, jitted.observed)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_world_params_vmap_over_a_sweep():
    params = WorldParams(mean_exposure=jnp.array([0.05, 0.1, 0.2]))
    axes = WorldParams(**{f.name: None for f in dataclasses.fields(WorldParams)})
    axes = dataclasses.replace(axes, mean_exposure=0)
    sweep = jax.jit(jax.vmap(make_world, in_axes=(None, None, axes)), static_argnums=1)
    truths = sweep(jax.random.key(12), SMALL, params)
    np.testing.assert_allclose(truths.propensity.mean(axis=(1, 2)), [0.05, 0.1, 0.2], rtol=1e-3)


def test_mar_sample_distinct_uniform_items():
    items = mar_sample(jax.random.key(13), 2000, 20, 5)
    items = np.asarray(items)
    assert items.shape == (2000, 5) and items.dtype == np.int32
    assert ((items >= 0) & (items < 20)).all()
    assert (np.diff(items, axis=1) > 0).all()  # sorted, hence distinct
    counts = np.bincount(items.ravel(), minlength=20)
    expected = 2000 * 5 / 20
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
    with pytest.raises(ConfigError):
        mar_sample(jax.random.key(0), 3, 4, 5)


def test_simulate_dataset_round_trip():
    # The default sizes, so the compiled world is shared with the bias tests.
    config = SimConfig(mar_items_per_user=7, seed=3)
    n_users, n_items = config.n_users, config.n_items
    dataset, truth = simulate_dataset(config)
    ratings = np.asarray(truth.ratings)
    train = dataset.given_split == GIVEN_TRAIN
    test = dataset.given_split == GIVEN_TEST
    assert train.sum() == int(truth.observed.sum())
    assert test.sum() == n_users * 7
    assert (train | test).all()
    assert (dataset.n_users, dataset.n_items) == (n_users, n_items)
    np.testing.assert_array_equal(dataset.rating, ratings[dataset.user, dataset.item])
    assert np.asarray(truth.observed)[dataset.user[train], dataset.item[train]].all()
    # Each user has 7 distinct MAR items.
    test_pairs = set(zip(dataset.user[test], dataset.item[test], strict=True))
    assert len(test_pairs) == n_users * 7
    np.testing.assert_array_equal(np.bincount(dataset.user[test], minlength=n_users), 7)
    # External ids are "1".."n" and map back to internal ids.
    assert dataset.user_ids[0] == "1" and dataset.item_ids[-1] == str(n_items)
    assert dataset.user_index("17") == 16 and dataset.item_index(str(n_items)) == n_items - 1
    for row in (0, len(dataset) - 1):
        user = dataset.user_index(dataset.user_ids[dataset.user[row]])
        item = dataset.item_index(dataset.item_ids[dataset.item[row]])
        assert dataset.rating[row] == ratings[user, item]
    np.testing.assert_array_equal(dataset.propensity_matrix, np.asarray(truth.propensity))
    assert dataset.propensity_matrix.dtype == np.float32
    assert dataset.meta["format"] == "simulator" and dataset.meta["name"] == "simulator"
    assert dataset.meta["implicit"] is False
    assert dataset.meta["rating_scale"] == (1.0, 5.0)
    assert dataset.meta["mnar_train_mar_test"] is True
    # Same config, same dataset.
    again, _ = simulate_dataset(config)
    np.testing.assert_array_equal(again.rating, dataset.rating)
    np.testing.assert_array_equal(again.item, dataset.item)


@pytest.mark.parametrize(
    "changes",
    [
        {"mean_exposure": 0.0},
        {"mean_exposure": 1.0},
        {"rating_noise": -1.0},
        {"relevance_temperature": 0.0},
        {"mar_items_per_user": 600},
        {"n_users": 0},
        {"max_dense_cells": -1},
        {"calibration_users": 0},
    ],
)
def test_invalid_config_raises(changes):
    with pytest.raises(ConfigError, match="sim."):
        simulate_dataset(SimConfig(**changes))


# ---- large worlds: the chunked generator ----------------------------------------------------

# The chunked tests share one block shape (7 users x 2000 items), hence one compilation.
CHUNK_CONFIG = SimConfig(
    n_users=120, n_items=2000, latent_dim=4, mar_items_per_user=5, mean_exposure=0.1,
    selection_strength=1.5, seed=21,
)
DATASET_FIELDS = ("user", "item", "rating", "given_split")


def _chunked(config, monkeypatch):
    """The chunked world of `config`, in blocks of 7 users (the last one padded)."""
    monkeypatch.setattr(world_module, "_BLOCK_CELLS", 7 * config.n_items)
    return simulate_dataset(dataclasses.replace(config, max_dense_cells=0))


def test_chunked_world_equals_dense_world(monkeypatch):
    dense, dense_truth = simulate_dataset(CHUNK_CONFIG)
    assert isinstance(dense_truth, GroundTruth) and dense.meta["ground_truth"] == "dense"
    # 120 users in blocks of 7: the noise does not depend on the blocks.
    chunked, truth = _chunked(CHUNK_CONFIG, monkeypatch)
    assert isinstance(truth, SparseGroundTruth) and chunked.meta["ground_truth"] == "sparse"
    assert chunked.propensity_matrix is None
    for name in DATASET_FIELDS:
        np.testing.assert_array_equal(getattr(chunked, name), getattr(dense, name), name)
    assert chunked.meta["calibration_users"] == dense.meta["calibration_users"] == 120
    assert chunked.meta["observed_fraction"] == dense.meta["observed_fraction"]
    np.testing.assert_allclose(
        chunked.meta["realised_mean_exposure"], dense.meta["realised_mean_exposure"], rtol=1e-5
    )
    np.testing.assert_allclose(dense.meta["realised_mean_exposure"], 0.1, rtol=1e-3)
    assert float(truth.exposure_base) == float(dense_truth.exposure_base)
    for name in ("user_factors", "item_factors", "item_popularity", "standardized_log_popularity"):
        # Bitwise equal at XLA's default optimisation; the suite compiles without LLVM's passes
        # (conftest), where the two programs' exp/log may differ in the last bit.
        np.testing.assert_allclose(getattr(truth, name), getattr(dense_truth, name), rtol=1e-6,
                                   atol=1e-7, err_msg=name)


def test_truth_block_matches_dense_rows(monkeypatch):
    _, dense = simulate_dataset(CHUNK_CONFIG)
    _, sparse = _chunked(CHUNK_CONFIG, monkeypatch)
    users = np.array([0, 5, 119, 64, 5])
    rows = truth_block(sparse, None, users)
    again = truth_block(sparse, WorldParams.from_config(CHUNK_CONFIG), users)
    dense_rows = truth_block(dense, None, users)
    for name, values in rows.items():
        expected = np.asarray(getattr(dense, name))[users]
        assert values.shape == (5, 2000) and values.dtype == expected.dtype, name
        np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_array_equal(dense_rows[name], expected, err_msg=name)
        np.testing.assert_array_equal(again[name], values, err_msg=name)
    assert set(rows) == {
        "relevance", "expected_rating", "ratings", "propensity", "marginal_propensity", "observed"
    }


def test_chunked_world_calibrates_on_a_subsample(monkeypatch):
    config = dataclasses.replace(CHUNK_CONFIG, n_users=5000, seed=4)
    dataset, truth = _chunked(config, monkeypatch)
    meta = dataset.meta
    assert meta["calibration_users"] == 2000
    # The base is calibrated on 2000 of the 5000 users, the means are over all of them.
    assert abs(meta["realised_mean_exposure"] / config.mean_exposure - 1) < 0.02
    assert abs(meta["observed_fraction"] / config.mean_exposure - 1) < 0.02
    train = dataset.given_split == GIVEN_TRAIN
    assert train.sum() == round(meta["observed_fraction"] * 5000 * 2000)
    np.testing.assert_array_equal(np.bincount(dataset.user[~train], minlength=5000), 5)
    # Train rows are row-major and agree with the recomputed rows of the truth.
    codes = dataset.user[train].astype(np.int64) * 2000 + dataset.item[train]
    assert (np.diff(codes) > 0).all()
    first = 4995  # the padded last block
    rows = truth_block(truth, None, np.arange(first, 5000))
    mine = train & (dataset.user >= first)
    np.testing.assert_array_equal(
        np.stack(np.nonzero(np.asarray(rows["observed"]))),
        [dataset.user[mine] - first, dataset.item[mine]],
    )
    test = ~train & (dataset.user >= first)
    np.testing.assert_array_equal(
        dataset.rating[test],
        np.asarray(rows["ratings"])[dataset.user[test] - first, dataset.item[test]],
    )


def test_chunked_world_redraws_a_block_that_overflows(monkeypatch):
    reference, _ = _chunked(CHUNK_CONFIG, monkeypatch)
    # Blocks hold about 1400 observed entries: most overflow 1024 and are drawn again.
    monkeypatch.setattr(world_module, "_initial_capacity", lambda cells, mean: 1024)
    small, _ = _chunked(CHUNK_CONFIG, monkeypatch)
    for name in DATASET_FIELDS:
        np.testing.assert_array_equal(getattr(small, name), getattr(reference, name), name)


def test_sparse_nonzero_matches_numpy():
    nonzero = jax.jit(world_module._sparse_nonzero, static_argnums=1)
    rng = np.random.default_rng(3)
    # A sparse mask takes the two-level search (capacity * 16 < size), a dense one jnp.nonzero.
    for density, capacity in ((0.002, 64), (0.5, 8192)):
        mask = rng.random(10_003) < density
        expected = np.nonzero(mask)[0]
        index, count = nonzero(jnp.asarray(mask), capacity)
        assert int(count) == len(expected) <= capacity
        np.testing.assert_array_equal(np.asarray(index)[: len(expected)], expected)
    # Too small a buffer: the count says so.
    mask = rng.random(10_003) < 0.002
    _, count = nonzero(jnp.asarray(mask), 8)
    assert int(count) > 8


def test_cell_noise_is_per_user_and_well_distributed():
    key = jax.random.key(5)
    eps, uniform = cell_noise(key, jnp.arange(400), 500)
    others = jnp.asarray(np.random.default_rng(0).integers(0, 400, 400))
    other_eps, other_uniform = cell_noise(key, others, 500)
    np.testing.assert_array_equal(other_eps, eps[others])
    np.testing.assert_array_equal(other_uniform, uniform[others])
    eps, uniform = np.asarray(eps, np.float64), np.asarray(uniform, np.float64)
    n = eps.size
    assert abs(eps.mean()) < 5 / np.sqrt(n) and abs(eps.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(np.mean(eps**3)) < 5 * np.sqrt(15 / n)
    assert abs(np.mean(eps**4) - 3) < 5 * np.sqrt(96 / n)
    assert abs(uniform.mean() - 0.5) < 5 / np.sqrt(12 * n)
    assert 0 <= uniform.min() < uniform.max() < 1
    assert abs(np.corrcoef(eps.ravel(), uniform.ravel())[0, 1]) < 5 / np.sqrt(n)
    # Neighbouring users and items are uncorrelated.
    assert abs(np.corrcoef(eps[1:].ravel(), eps[:-1].ravel())[0, 1]) < 5 / np.sqrt(n)
    assert abs(np.corrcoef(eps[:, 1:].ravel(), eps[:, :-1].ravel())[0, 1]) < 5 / np.sqrt(n)


def test_unrolled_threefry_is_threefry():
    from jax.extend.random import threefry_2x32

    key = jnp.array([0x12345678, 0x9ABCDEF0], jnp.uint32)
    count = jnp.arange(64, dtype=jnp.uint32) * 7919
    first, second = world_module._threefry2x32(key[0], key[1], count[:32], count[32:])
    np.testing.assert_array_equal(jnp.concatenate([first, second]), threefry_2x32(key, count))
