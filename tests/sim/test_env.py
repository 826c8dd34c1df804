"""The dynamic environment: reset/step contract, structural equations, exact sampling."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax import streams
from causalrec_jax.errors import ConfigError
from causalrec_jax.sim.env import (
    INFO_KEYS,
    EnvSizes,
    EnvState,
    Observation,
    click_probabilities,
    make_env_params,
    organic_probabilities,
    reset,
    reset_user,
    sample_categorical,
    step,
    true_uplift,
    utilities,
)
from causalrec_jax.sim.rollout import remove_item, with_world

SIZES = EnvSizes(n_users=50, n_items=40, latent_dim=4, slate_size=3, horizon=5)
N_KEYS = 20_000

step_jit = jax.jit(step)
# One compiled program for every many-keys check: keys and slates batched, one state and world.
step_many = jax.jit(jax.vmap(step, in_axes=(0, None, 0, None)))


@pytest.fixture(scope="module")
def params():
    return make_env_params(jax.random.key(0), SIZES)


@pytest.fixture(scope="module")
def organic_world(params):
    """A world with frequent organic consumption (offset -2) and one item removed."""
    return remove_item(with_world(params, organic_offset=-2.0), _most_organic(params, user=3))


def _most_organic(params, user):
    _, state = reset_user(user, params)
    return int(jnp.argmax(organic_probabilities(utilities(state, params), params)))


@pytest.fixture(scope="module")
def many_steps(organic_world, params):
    """`N_KEYS` steps of user 3 on random slates that often hold the removed item."""
    removed = _most_organic(params, user=3)
    _, state = reset_user(3, organic_world)
    keys = jax.random.split(jax.random.key(1), N_KEYS)
    slate_keys = jax.random.split(jax.random.key(2), N_KEYS)
    # Slates from a pool of 6 items that includes the removed and the most likely organic ones.
    values = utilities(state, organic_world)
    pool = jnp.argsort(-organic_probabilities(values, organic_world))[:5]
    pool = jnp.concatenate([jnp.array([removed]), pool]).astype(jnp.int32)
    slates = jax.vmap(lambda key: jax.random.permutation(key, pool)[:3])(slate_keys)
    obs, new_state, reward, terminated, truncated, info = step_many(
        keys, state, slates, organic_world
    )
    return dict(removed=removed, state=state, slates=slates, reward=reward, info=info)


def test_sizes_validate():
    with pytest.raises(ConfigError, match="slate_size"):
        EnvSizes(n_items=3, slate_size=4)
    with pytest.raises(ConfigError, match="n_users"):
        EnvSizes(n_users=0)
    with pytest.raises(ConfigError, match="unknown world parameter"):
        make_env_params(jax.random.key(0), SIZES, click_ofset=0.0)


def test_make_env_params_shapes(params):
    assert params.user_factors.shape == (50, 4)
    assert params.item_factors.shape == (40, 4)
    assert params.item_quality.shape == (40,)
    assert params.available.shape == (40,) and params.available.dtype == jnp.bool_
    np.testing.assert_allclose(params.examination, [1.0, 1 / 2, 1 / 3], rtol=1e-6)
    changed = make_env_params(jax.random.key(0), SIZES, click_offset=0.25)
    assert float(changed.click_offset) == 0.25
    np.testing.assert_array_equal(changed.user_factors, params.user_factors)


def test_reset_contract(params):
    obs, state = reset(jax.random.key(5), params)
    assert isinstance(obs, Observation) and isinstance(state, EnvState)
    assert obs.user.shape == () and obs.user.dtype == jnp.int32
    assert obs.step.shape == () and obs.step.dtype == jnp.int32 and int(obs.step) == 0
    assert 0 <= int(state.user) < SIZES.n_users
    np.testing.assert_array_equal(state.taste, params.user_factors[int(state.user)])
    np.testing.assert_array_equal(state.satiation, jnp.zeros(SIZES.latent_dim))
    users = jax.jit(jax.vmap(lambda key: reset(key, params)[1].user))(
        jax.random.split(jax.random.key(6), 2000)
    )
    # Uniform arrival: every user arrives, roughly 40 times each.
    counts = np.bincount(np.asarray(users), minlength=SIZES.n_users)
    assert counts.min() > 10 and counts.max() < 80
    assert int(reset(jax.random.key(5), params)[1].user) == int(state.user)


def test_step_contract_and_jit_equals_eager(params):
    _, state = reset_user(7, params)
    slate = jnp.array([4, 11, 30], jnp.int32)
    key = jax.random.key(3)
    eager = step(key, state, slate, params, log_prob=-1.5)
    jitted = step_jit(key, state, slate, params, log_prob=-1.5)
    obs, new_state, reward, terminated, truncated, info = eager
    assert int(obs.user) == 7 and int(obs.step) == 1 and int(new_state.step) == 1
    assert new_state.taste.shape == (4,) and new_state.satiation.shape == (4,)
    assert reward.shape == () and reward.dtype == jnp.float32
    for flag in (terminated, truncated):
        assert flag.shape == () and flag.dtype == jnp.bool_ and not bool(flag)
    assert tuple(info) == INFO_KEYS
    expected = {
        "user": ((), jnp.int32), "slate": ((3,), jnp.int32), "examined": ((3,), jnp.bool_),
        "clicks": ((3,), jnp.bool_), "click_probability": ((3,), jnp.float32),
        "organic_item": ((), jnp.int32), "consumed_if_shown": ((3,), jnp.bool_),
        "consumed_if_not_shown": ((3,), jnp.bool_), "expected_reward": ((), jnp.float32),
        "log_prob": ((), jnp.float32),
    }
    for name, (shape, dtype) in expected.items():
        assert info[name].shape == shape and info[name].dtype == dtype, name
    assert float(info["log_prob"]) == -1.5
    np.testing.assert_allclose(
        info["click_probability"], click_probabilities(utilities(state, params), slate, params)
    )
    np.testing.assert_allclose(info["expected_reward"], info["click_probability"].sum(), 1e-6)
    for got, want in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_step_identities_over_many_keys(many_steps):
    info = many_steps["info"]
    slates = np.asarray(many_steps["slates"])
    clicks = np.asarray(info["clicks"])
    organic = np.asarray(info["organic_item"])
    np.testing.assert_array_equal(info["slate"], slates)
    assert not np.any(clicks & ~np.asarray(info["examined"])), "a click on an unexamined slot"
    np.testing.assert_array_equal(info["consumed_if_not_shown"], slates == organic[:, None])
    shown = np.asarray(info["consumed_if_shown"])
    np.testing.assert_array_equal(shown, clicks | (slates == organic[:, None]))
    assert np.all(shown >= clicks)
    np.testing.assert_array_equal(many_steps["reward"], clicks.sum(axis=1))
    # The checks above are not vacuous: clicks, organic hits inside the slate, and both at once.
    hits = slates == organic[:, None]
    assert clicks.sum() > 1000 and hits.sum() > 500 and (clicks & hits).sum() > 50


def test_removed_item_is_never_consumed(many_steps):
    removed = many_steps["removed"]
    info = many_steps["info"]
    slates = np.asarray(many_steps["slates"])
    assert (slates == removed).sum() > 5000  # it is shown often...
    assert not np.any(np.asarray(info["clicks"]) & (slates == removed))  # ...never clicked
    assert not np.any(np.asarray(info["organic_item"]) == removed)  # ...never organic
    assert not np.any(np.asarray(info["click_probability"])[slates == removed] > 0)


def test_organic_frequencies_match_organic_probabilities(many_steps, organic_world):
    state = many_steps["state"]
    probabilities = np.asarray(
        organic_probabilities(utilities(state, organic_world), organic_world), np.float64
    )
    assert probabilities[many_steps["removed"]] == 0.0
    expected = np.append(probabilities, 1.0 - probabilities.sum())  # last: "none" (-1)
    organic = np.asarray(many_steps["info"]["organic_item"])
    counts = np.bincount(np.where(organic < 0, SIZES.n_items, organic), minlength=41)
    frequencies = counts / N_KEYS
    stderr = np.sqrt(expected * (1 - expected) / N_KEYS)
    assert np.all(np.abs(frequencies - expected) <= 4.5 * stderr + 2e-4), np.max(
        np.abs(frequencies - expected)
    )
    assert 0.05 < expected[-1] < 0.95  # both "something" and "none" are well represented


def test_click_frequencies_match_click_probability(organic_world, many_steps):
    world = organic_world  # the world of `many_steps`: no new compilation
    _, state = reset_user(12, world)
    slate = np.setdiff1d([3, 17, 25, 30], [many_steps["removed"]])[:3].astype(np.int32)
    keys = jax.random.split(jax.random.key(9), N_KEYS)
    *_, info = step_many(keys, state, jnp.broadcast_to(slate, (N_KEYS, 3)), world)
    probability = np.asarray(info["click_probability"][0], np.float64)
    np.testing.assert_allclose(info["click_probability"], np.broadcast_to(probability, (N_KEYS, 3)))
    frequencies = np.asarray(info["clicks"]).mean(axis=0)
    stderr = np.sqrt(probability * (1 - probability) / N_KEYS)
    assert np.all(np.abs(frequencies - probability) < 4.5 * stderr), (frequencies, probability)
    np.testing.assert_allclose(
        np.asarray(info["examined"]).mean(axis=0), world.examination, atol=0.015
    )


def _one_consumption_world(params, **changes):
    """Slot 0 always examined and clicked, other slots never examined, no organic choice."""
    world = dataclasses.replace(params, examination=jnp.array([1.0, 0.0, 0.0]))
    return with_world(world, click_offset=50.0, organic_offset=-100.0, **changes)


def test_drift_moves_taste_to_the_consumed_item(params):
    world = _one_consumption_world(params, drift=1.0)
    _, state = reset_user(4, world)
    slate = jnp.array([9, 2, 33], jnp.int32)
    _, new_state, reward, *_, info = step(jax.random.key(0), state, slate, world)
    np.testing.assert_array_equal(info["clicks"], [True, False, False])
    assert int(info["organic_item"]) == -1 and float(reward) == 1.0
    np.testing.assert_allclose(new_state.taste, params.item_factors[9], rtol=1e-6)
    np.testing.assert_allclose(new_state.satiation, params.item_factors[9], rtol=1e-6)
    # Partial drift: theta + eta (beta - theta).
    world = _one_consumption_world(params, drift=0.25)
    _, new_state, *_ = step(jax.random.key(0), state, slate, world)
    want = state.taste + 0.25 * (params.item_factors[9] - state.taste)
    np.testing.assert_allclose(new_state.taste, want, rtol=1e-5, atol=1e-6)


def test_drift_averages_click_and_organic_and_counts_an_item_once(params):
    # Item 0 is overwhelmingly the organic choice; slot 1 (item 1) is always clicked.
    quality = jnp.zeros(40).at[0].set(200.0)
    world = dataclasses.replace(
        params, item_quality=quality, examination=jnp.array([0.0, 1.0, 0.0])
    )
    world = with_world(world, quality_effect=1.0, click_offset=50.0, organic_offset=0.0,
                       drift=1.0, satiation_decay=0.5)
    _, state = reset_user(4, world)
    beta = params.item_factors
    _, new_state, _, _, _, info = step(jax.random.key(1), state, jnp.array([0, 1, 2]), world)
    assert int(info["organic_item"]) == 0
    np.testing.assert_array_equal(info["clicks"], [False, True, False])
    np.testing.assert_array_equal(info["consumed_if_shown"], [True, True, False])
    np.testing.assert_array_equal(info["consumed_if_not_shown"], [True, False, False])
    np.testing.assert_allclose(new_state.taste, (beta[0] + beta[1]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_state.satiation, beta[0] + beta[1], rtol=1e-5, atol=1e-6)
    # The organic item is also clicked: consumed once, not twice.
    world = dataclasses.replace(world, examination=jnp.array([1.0, 0.0, 0.0]))
    _, new_state, reward, _, _, info = step(jax.random.key(1), state, jnp.array([0, 1, 2]), world)
    np.testing.assert_array_equal(info["clicks"], [True, False, False])
    assert int(info["organic_item"]) == 0 and float(reward) == 1.0
    np.testing.assert_allclose(new_state.taste, beta[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_state.satiation, beta[0], rtol=1e-5, atol=1e-6)


def test_satiation_decays_when_nothing_is_consumed(params):
    world = dataclasses.replace(params, examination=jnp.zeros(3))
    world = with_world(world, organic_offset=-100.0, satiation_decay=0.7, drift=1.0)
    _, state = reset_user(4, world)
    state = dataclasses.replace(state, satiation=jnp.array([1.0, -2.0, 0.5, 3.0]))
    _, new_state, reward, *_, info = step(jax.random.key(2), state, jnp.array([0, 1, 2]), world)
    assert float(reward) == 0.0 and int(info["organic_item"]) == -1
    np.testing.assert_allclose(new_state.satiation, 0.7 * state.satiation, rtol=1e-6)
    np.testing.assert_array_equal(new_state.taste, state.taste)


def test_satiation_lowers_utility_of_similar_items(params):
    _, state = reset_user(4, params)
    sated = dataclasses.replace(state, satiation=params.item_factors[6])
    drop = utilities(state, params) - utilities(sated, params)
    want = 0.5 * params.item_factors @ params.item_factors[6]  # lambda_s beta_i . s / tau
    np.testing.assert_allclose(drop, want, rtol=1e-4, atol=1e-5)


def test_true_uplift_formula(params):
    _, state = reset_user(8, params)
    values = utilities(state, params)
    want = (
        params.examination.mean()
        * jax.nn.sigmoid(values + params.click_offset)
        * (1 - organic_probabilities(values, params))
    )
    np.testing.assert_allclose(true_uplift(state, params), want, rtol=1e-6)
    removed = remove_item(params, 5)
    assert float(true_uplift(state, removed)[5]) == 0.0


# --- sample_categorical -----------------------------------------------------------------------


@pytest.mark.parametrize("rest", [0.0, 1.0])
def test_sample_categorical_frequencies(rest):
    weights = jnp.array([0.5, 0.0, 2.0, 1.0, 0.25, 3.0, 0.0, 1.25, 0.7, 0.05, 0.0])
    uniforms = jax.random.uniform(jax.random.key(11), (N_KEYS,))
    draws = np.asarray(jax.jit(jax.vmap(sample_categorical, (0, None, None)))(
        uniforms, weights, rest
    ))
    total = float(weights.sum()) + rest
    expected = np.append(np.asarray(weights) / total, rest / total)
    counts = np.bincount(np.where(draws < 0, 11, draws), minlength=12)
    assert draws.min() >= -1 and draws.max() < 11
    assert np.max(np.abs(counts / N_KEYS - expected)) < 0.01
    assert np.all(counts[:11][np.asarray(weights) == 0] == 0)
    if rest == 0.0:
        assert not np.any(draws == -1)


@pytest.mark.parametrize(
    "weights, rest, uniform, index",
    [
        # Inverse CDF: the smallest i with cdf(i) > u * total.
        ([1.0, 1.0, 1.0, 1.0], 0.0, 0.0, 0),
        ([1.0, 1.0, 1.0, 1.0], 0.0, 0.25, 1),
        ([1.0, 1.0, 1.0, 1.0], 0.0, 0.5, 2),
        ([1.0, 1.0, 1.0, 1.0], 0.0, 0.75, 3),
        ([1.0, 1.0, 1.0, 1.0], 0.0, float(np.float32(1) - np.float32(2**-24)), 3),
        ([1.0, 1.0, 1.0, 1.0], 4.0, 0.5, -1),
        ([1.0, 1.0, 1.0, 1.0], 4.0, 0.4375, 3),
        ([1.0, 0.0, 1.0], 0.0, 0.5, 2),  # a zero weight is skipped
        ([0.0, 1.0, 0.0], 0.0, 0.0, 1),
        ([0.0, 0.0, 0.0], 0.0, 0.3, -1),  # nothing to draw
        ([2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 0.0, 0.999, 0),  # zero (and padded) tail
        ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0], 1.0, 0.0, 6),
    ],
)
def test_sample_categorical_exact_boundaries(weights, rest, uniform, index):
    got = sample_categorical(jnp.float32(uniform), jnp.array(weights, jnp.float32), rest)
    assert got.dtype == jnp.int32 and int(got) == index


def test_sample_categorical_never_draws_a_zero_weight():
    weights = jnp.array([0.5995937, 0.07755911, 0.0, 0.58814335], jnp.float32)
    uniform = jnp.float32(0.5351733565330505)  # u * total is (in float32) the end of block 0
    for draw in (sample_categorical, jax.jit(sample_categorical)):
        assert int(draw(uniform, weights, 0.0)) != 2


def test_streams_are_distinct():
    ids = [int(stream) for stream in streams.Env]
    assert len(set(ids)) == len(ids) and min(ids) >= 16  # the static world uses ids below 16
