"""World presets (sim/presets.py): the Yahoo! R3 proxy has the release's shape and skew."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.config import load_config
from causalrec_jax.data.split import GIVEN_TEST, GIVEN_TRAIN
from causalrec_jax.errors import ConfigError
from causalrec_jax.sim import presets
from causalrec_jax.sim.world import rating_probabilities, simulate_dataset


def shares(ratings):
    return np.bincount(ratings.astype(int), minlength=6)[1:] / len(ratings)


@pytest.mark.slow  # make test-all (see Makefile)
def test_the_yahoo_proxy_matches_the_published_shape_and_marginals():
    config = load_config(None, presets.world_overrides("yahoo_r3"))
    dataset, _ = simulate_dataset(config.sim)
    train = dataset.given_split == GIVEN_TRAIN
    test = dataset.given_split == GIVEN_TEST
    assert dataset.n_users == 15400 and dataset.n_items == 1000
    assert abs(train.sum() - 311_704) < 0.01 * 311_704  # about 20 MNAR ratings a user
    assert test.sum() == 54_000 and np.unique(dataset.user[test]).size == 5400
    np.testing.assert_allclose(shares(dataset.rating[train]), presets.YAHOO_R3_MNAR, atol=0.025)
    np.testing.assert_allclose(shares(dataset.rating[test]), presets.YAHOO_R3_MAR, atol=0.025)
    # The skew that makes the release hard: 5s are 9x as common in the log as at random.
    assert shares(dataset.rating[train])[4] > 8 * shares(dataset.rating[test])[4]


def test_mar_users_and_selection_by_rating_are_checked_and_act():
    with pytest.raises(ConfigError, match="unknown world preset 'movielens'"):
        presets.world_overrides("movielens")
    with pytest.raises(ConfigError, match="sim.selection_by_rating"):
        load_config(None, ["sim.selection_by_rating=[1.0, 2.0]"])
    with pytest.raises(ConfigError, match="sim.mar_users"):
        load_config(None, ["sim.n_users=50", "sim.mar_users=60"])
    base = ["sim.n_users=300", "sim.n_items=80", "sim.selection_strength=0.0"]
    plain, _ = simulate_dataset(load_config(None, base).sim)
    fives, _ = simulate_dataset(load_config(
        None, [*base, "sim.selection_by_rating=[0.0, 0.0, 0.0, 0.0, 3.0]", "sim.mar_users=100"]
    ).sim)
    for dataset, users in ((plain, 300), (fives, 100)):
        test = dataset.given_split == GIVEN_TEST
        assert np.unique(dataset.user[test]).size == users
    # The same ratings (exposure parameters leave them unchanged), 5s far more often observed.
    train = fives.given_split == GIVEN_TRAIN
    assert shares(fives.rating[train])[4] > 2 * shares(plain.rating[plain.given_split ==
                                                                    GIVEN_TRAIN])[4]


def test_rating_only_selection_keeps_the_ranking_of_the_observed_rating_regression():
    """Why naive MF ranks well on Yahoo!-like logs: when exposure multiplies P(Y = k) by the
    same exp(s_k) in every cell (rating-dependent missingness; popularity only scales it), the
    mean observed rating of a cell, E[Y | u, i, O = 1], is an increasing function of its true
    mean E[Y | u, i] (the ordered-probit family is TP2 in (k, mean), and tilting keeps TP2), so
    a model of the observed ratings ranks cells as the truth does; reweighting by 1 / p fixes
    the level of the ratings, not their order."""
    preset = dict(item.split("=", 1) for item in presets.world_overrides("yahoo_r3"))
    latent = jnp.linspace(0.5, 5.5, 401)
    levels = jnp.arange(1, 6, dtype=jnp.float32)
    tilt = jnp.exp(jnp.asarray(json.loads(preset["sim.selection_by_rating"])))
    for noise in (0.3, 1.1, 2.0):
        probabilities = rating_probabilities(latent, noise)
        true_mean = probabilities @ levels
        tilted = probabilities * tilt
        observed_mean = (tilted @ levels) / tilted.sum(-1)
        assert bool(jnp.all(jnp.diff(true_mean) > 0))
        assert bool(jnp.all(jnp.diff(observed_mean) > 0))  # the same order, strictly
        if noise == float(preset["sim.rating_noise"]):  # the level moves by > 0.5 a rating
            assert float(jnp.max(observed_mean - true_mean)) > 0.5
