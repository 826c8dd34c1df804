"""The sequential exposure losses (`causal.sequential.exposure_loss`, the function the training
step calls) against the full-exposure loss, over many simulated slate logs.

A log is a dynamic-simulator episode of a few users under an epsilon-greedy popularity policy
(exact slot propensities); the model's next-click log-probabilities of a round depend on the
clicks of the rounds before it (a fixed linear model of the clicked items' attributes), as a
sequential model's do. Over 2,000 logs (vmapped), the mean of `ips - full_exposure_loss` and
`dr - full_exposure_loss` (DR with a wrong imputation) is within 4 standard errors of 0, while
the naive loss is far from the truth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.causal.clip import clip_propensities
from causalrec_jax.causal.sequential import (
    default_imputation,
    exposure_loss,
    full_exposure_loss,
    slot_losses,
)
from causalrec_jax.errors import ConfigError
from causalrec_jax.sim import policies
from causalrec_jax.sim.env import EnvSizes, make_env_params
from causalrec_jax.sim.rollout import attraction_path, rollout_users

N_LOGS = 2000
SIZES = EnvSizes(n_users=6, n_items=12, latent_dim=4, slate_size=3, horizon=4)


@pytest.fixture(scope="module")
def logs():
    world = make_env_params(jax.random.key(0), SIZES, click_offset=0.0)
    policy = policies.epsilon_greedy_policy(world.item_quality, SIZES.slate_size, 0.5,
                                            shuffle=True)
    users = jnp.arange(SIZES.n_users)
    weights = jax.random.normal(jax.random.key(1), (SIZES.n_items, SIZES.latent_dim))

    def one_log(key):
        trajectory, path = attraction_path(key, policies.slate_policy, policy, world,
                                           SIZES.horizon, users)
        slates, clicks = trajectory.slate, trajectory.info["clicks"].astype(jnp.float32)
        propensity = jax.vmap(jax.vmap(lambda user, slate: jnp.diagonal(
            policies.slot_probabilities(policy, user, slate).probabilities)))(
                trajectory.user, slates)
        # the history before each round: the attributes of the items clicked in earlier rounds
        clicked = jnp.einsum("utk,utkd->utd", clicks, world.item_factors[slates])
        history = jnp.cumsum(clicked, axis=1) - clicked
        log_probs = jax.nn.log_softmax(history @ weights.T + 0.5 * world.item_quality, axis=-1)
        mu = world.examination[None, None, :, None] * path[:, :-1, None, :]
        where = jnp.ones(slates.shape, bool)
        clipped, _ = clip_propensities(propensity, None, where=where)
        truth = full_exposure_loss(log_probs, mu, where=where)
        return {
            "truth": truth,
            **{method: exposure_loss(method, log_probs, slates, clicks, clipped, where=where,
                                     imputation_value=0.3) - truth
               for method in ("naive", "ips", "dr")},
        }

    keys = jax.random.split(jax.random.key(2), N_LOGS)
    return {name: np.asarray(value) for name, value in jax.jit(jax.vmap(one_log))(keys).items()}


def _z(differences: np.ndarray) -> float:
    return float(differences.mean() / (differences.std(ddof=1) / np.sqrt(len(differences))))


@pytest.mark.parametrize("method", ["ips", "dr"])
def test_unbiased_for_the_full_exposure_loss(logs, method):
    assert abs(_z(logs[method])) < 4, (method, logs[method].mean(), logs["truth"].mean())


def test_naive_is_biased(logs):
    # the naive loss estimates another quantity (mean CE of clicked items): far from the truth
    assert abs(_z(logs["naive"])) > 20


def test_attraction_path_replays_rollout_users():
    world = make_env_params(jax.random.key(0), SIZES)
    policy = policies.epsilon_greedy_policy(world.item_quality, SIZES.slate_size, 0.5)
    users = jnp.arange(SIZES.n_users)
    key = jax.random.key(5)
    replayed, path = attraction_path(key, policies.slate_policy, policy, world, SIZES.horizon,
                                     users)
    logged = rollout_users(key, policies.slate_policy, policy, world, SIZES.horizon, users)
    np.testing.assert_array_equal(replayed.slate, logged.slate)
    np.testing.assert_array_equal(replayed.info["clicks"], logged.info["clicks"])
    assert path.shape == (SIZES.n_users, SIZES.horizon + 1, SIZES.n_items)
    # E[click at slot k] = e_k * attraction of the shown item in the state of the step
    shown = jnp.take_along_axis(path[:, :-1], replayed.slate, axis=2)
    np.testing.assert_allclose(replayed.info["click_probability"],
                               world.examination * shown, rtol=1e-5)


def test_hand_computed_values_and_finite_gradients():
    log_probs = jnp.log(jnp.asarray([[[0.5, 0.25, 0.25]]]))  # [1, 1, 3]
    slates = jnp.asarray([[[0, 2]]])
    clicks = jnp.asarray([[[1.0, 0.0]]])
    propensity = jnp.asarray([[[0.5, 1e-12]]])
    where = jnp.ones((1, 1, 2), bool)
    l0, l2 = -np.log(0.5), -np.log(0.25)
    np.testing.assert_allclose(slot_losses(log_probs, slates), [[[l0, l2]]], rtol=1e-6)
    np.testing.assert_allclose(exposure_loss("naive", log_probs, slates, clicks, propensity,
                                             where=where), l0, rtol=1e-6)
    np.testing.assert_allclose(exposure_loss("ips", log_probs, slates, clicks, propensity,
                                             where=where), l0 / 0.5 / 2, rtol=1e-6)
    np.testing.assert_allclose(exposure_loss("snips", log_probs, slates, clicks, propensity,
                                             where=where), l0, rtol=1e-6)
    mu = 0.1
    every = mu * (l0 + 2 * l2)
    dr = (2 * every + (1 - mu) * l0 / 0.5 + (0 - mu) * l2 / 1e-12) / 2
    np.testing.assert_allclose(exposure_loss("dr", log_probs, slates, clicks, propensity,
                                             where=where, imputation_value=mu), dr, rtol=1e-5)
    # a masked slot with a zero propensity: finite value and gradient
    masked = jnp.asarray([[[True, False]]])
    zero = propensity.at[..., 1].set(0.0)
    for method in ("ips", "snips", "dr"):
        def loss(log_probs, method=method):
            return exposure_loss(method, log_probs, slates, clicks, zero, where=masked,
                                 imputation_value=mu)

        value, grad = jax.value_and_grad(loss)(log_probs)
        assert np.isfinite(value) and np.all(np.isfinite(grad)), method
    assert exposure_loss("ips", log_probs, slates, clicks, zero,
                         where=jnp.zeros_like(masked)) == 0.0
    assert default_imputation(clicks, propensity.at[..., 1].set(0.25), where, 3) == (
        pytest.approx((1 / 0.5) / 2 / 3))
    with pytest.raises(ConfigError, match="key causal.method"):
        exposure_loss("dr_jl", log_probs, slates, clicks, propensity, where=where)
