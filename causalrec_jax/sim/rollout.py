"""Vectorised rollouts and interventions with common random numbers.

`rollout(key, policy_fn, policy_params, env_params, horizon)` runs one user for `horizon`
steps under `lax.scan` and returns a `Trajectory` whose leaves are `[T, ...]`;
`rollout_users` vmaps it over a population (user `u` gets the key `streams.index(key, u)`:
`key` should be a key derived for the users alone), and `counterfactual_rollouts` vmaps that
over a batch of policies or worlds with one key.

Common random numbers: the environment's noise at step `t` comes from
`index(derive(key, Env.NOISE), t)` and the policy's from `index(derive(key, Env.POLICY), t)`
(`causalrec_jax.streams`), so two rollouts with the same key but different policies (or a
forced item, a removed item, a changed world parameter) meet the same user, examination and
click uniforms and organic draws: their difference is a paired counterfactual, zero when the
policies are the same.

Interventions: `force_item` wraps a policy so that an item is shown at a slot;
`remove_item` takes an item out of the catalogue; `with_world` changes world parameters; a
different policy is simply another `policy_params` (vmap over them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from causalrec_jax import streams
from causalrec_jax.sim.env import (
    EnvParams,
    EnvState,
    Observation,
    reset,
    reset_user,
    step,
    true_uplift,
    utilities,
)

PolicyFn = Callable[[Any, Observation, jax.Array], tuple[jax.Array, jax.Array]]


class Trajectory(NamedTuple):
    """One episode, leaves `[T, ...]` (`[n_users, T, ...]` after `rollout_users`).

    Attributes:
        user: `[T]` the user's id.
        step: `[T]` step index.
        slate: `[T, K]` items shown.
        log_prob: `[T]` the policy's log probability of the slate.
        reward: `[T]` clicks.
        info: the environment's `info` dict, leaves `[T, ...]` (see `env.INFO_KEYS`).
    """

    user: jax.Array
    step: jax.Array
    slate: jax.Array
    log_prob: jax.Array
    reward: jax.Array
    info: dict[str, jax.Array]


def _keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    return streams.derive(key, streams.Env.NOISE), streams.derive(key, streams.Env.POLICY)


def _scan(key, policy_fn, policy_params, env_params, horizon, obs, state, accumulate=None,
          record=None):
    """The episode under `lax.scan`; also sums `accumulate(state)` over the steps' states, and
    stacks `record(state)` of each step's state (None when not asked)."""
    env_key, policy_key = _keys(key)

    def body(carry, t):
        obs, state, total = carry
        slate, log_prob = policy_fn(policy_params, obs, streams.index(policy_key, t))
        if accumulate is not None:
            total = total + accumulate(state)
        recorded = None if record is None else record(state)
        next_obs, next_state, reward, _, _, info = step(
            streams.index(env_key, t), state, slate, env_params, log_prob=log_prob
        )
        return (next_obs, next_state, total), (obs.step, reward, info, recorded)

    total = 0.0 if accumulate is None else jnp.zeros_like(accumulate(state))
    (_, final_state, total), (steps, rewards, info, records) = jax.lax.scan(
        body, (obs, state, total), jnp.arange(horizon)
    )
    # user, slate and log_prob are info's own arrays: each is written once per step.
    trajectory = Trajectory(info["user"], steps, info["slate"], info["log_prob"], rewards, info)
    if record is not None:
        return trajectory, final_state, total, records
    return trajectory, final_state, total


def rollout(
    key: jax.Array,
    policy_fn: PolicyFn,
    policy_params: Any,
    env_params: EnvParams,
    horizon: int,
    *,
    user: jax.typing.ArrayLike | None = None,
) -> Trajectory:
    """One episode of `horizon` steps (`lax.scan`): the arriving user, or `user` if given."""
    obs, state = reset(key, env_params) if user is None else reset_user(user, env_params)
    return _scan(key, policy_fn, policy_params, env_params, horizon, obs, state)[0]


def rollout_users(
    key: jax.Array,
    policy_fn: PolicyFn,
    policy_params: Any,
    env_params: EnvParams,
    horizon: int,
    users: jax.Array,
) -> Trajectory:
    """Episodes of the given `users` `[n]` (vmap; user u's key is `streams.index(key, u)`).

    Leaves are `[n, T, ...]`. A user's trajectory does not depend on which other users are
    in `users`, so any block of users reproduces the same rows as the whole population.
    """

    def one(user):
        return rollout(
            streams.index(key, user), policy_fn, policy_params, env_params, horizon,
            user=user,
        )

    return jax.vmap(one)(jnp.asarray(users, jnp.int32))


def counterfactual_rollouts(
    key: jax.Array,
    policy_fn: PolicyFn,
    policy_params: Any,
    env_params: EnvParams,
    horizon: int,
    users: jax.Array,
    *,
    policy_axis: int | None = 0,
    env_axis: int | None = None,
) -> Trajectory:
    """`rollout_users` vmapped over a batch of policies and/or worlds with ONE key.

    Args:
        policy_axis: axis of `policy_params` holding the batch (None: one policy shared).
        env_axis: axis of `env_params` holding the batch (None: one world shared).

    Returns:
        Leaves `[n_interventions, n_users, T, ...]`, paired by common random numbers.
    """
    return jax.vmap(
        lambda policy, env: rollout_users(key, policy_fn, policy, env, horizon, users),
        in_axes=(policy_axis, env_axis),
    )(policy_params, env_params)


class Forced(NamedTuple):
    """Parameters of a `force_item` policy: the inner policy's params, `item` and `slot`."""

    inner: Any
    item: jax.Array
    slot: jax.Array


def force_item(policy_fn: PolicyFn) -> PolicyFn:
    """A policy that shows `params.item` at `params.slot` and otherwise follows `policy_fn`.

    If the inner slate already holds the item elsewhere, the two slots swap, so the slate stays
    distinct. The reported log probability is the inner policy's, of the slate before the
    intervention (a forced slate is an intervention, not a logging policy). Build its params
    with `Forced(inner_params, item, slot)`; vmap over `item` / `slot` for many interventions.
    """

    def forced(params: Forced, obs: Observation, key: jax.Array):
        slate, log_prob = policy_fn(params.inner, obs, key)
        slot = jnp.asarray(params.slot, jnp.int32)
        item = jnp.asarray(params.item, slate.dtype)
        displaced = slate[slot]
        slate = jnp.where(slate == item, displaced, slate).at[slot].set(item)
        return slate, log_prob

    return forced


def remove_item(env_params: EnvParams, item: jax.typing.ArrayLike) -> EnvParams:
    """The world without `item`: never clicked nor consumed organically."""
    return dataclasses.replace(env_params, available=env_params.available.at[item].set(False))


def with_world(env_params: EnvParams, **changes: Any) -> EnvParams:
    """The world with some parameters changed (e.g. `click_offset=0.0`)."""
    return dataclasses.replace(
        env_params, **{name: jnp.asarray(value, jnp.float32) for name, value in changes.items()}
    )


def uplift_truth(
    key: jax.Array,
    policy_fn: PolicyFn,
    policy_params: Any,
    env_params: EnvParams,
    horizon: int,
    users: jax.Array,
) -> jax.Array:
    """`[n_users, n_items]` true effect of recommending, averaged over the users' episodes.

    For each step of each user's episode under `policy_fn` (the same key as the log, so the
    same states), `env.true_uplift`: the increase in P(consume item) from showing it at a
    uniformly random slot. Its mean over the `horizon` steps is the per-step causal effect
    that uplift learners estimate from that log.
    """

    def one(user):
        obs, state = reset_user(user, env_params)
        _, _, total = _scan(
            streams.index(key, user), policy_fn, policy_params, env_params, horizon, obs,
            state, accumulate=lambda state: true_uplift(state, env_params),
        )
        return total / horizon

    return jax.vmap(one)(jnp.asarray(users, jnp.int32))


def attraction(state: EnvState, env_params: EnvParams) -> jax.Array:
    """`[n_items]` true P(click | shown at slot k, examined) = `sigmoid(v_i + c)` of every item
    for the user in `state` (0 for unavailable items): the relevance a click model removes
    position and exposure from. `E[click at slot k] = e_k * attraction`."""
    values = utilities(state, env_params)
    return jax.nn.sigmoid(values + env_params.click_offset) * env_params.available


def attraction_path(
    key: jax.Array,
    policy_fn: PolicyFn,
    policy_params: Any,
    env_params: EnvParams,
    horizon: int,
    users: jax.Array,
) -> tuple[Trajectory, jax.Array]:
    """The episodes of `rollout_users` (same keys, so the same rows) and the true attraction
    of every item at every step: `[n_users, horizon + 1, n_items]`, step `t` the state the
    slate of step `t` met, step `horizon` the state after the last step (the "next step"
    that a model trained on the episode recommends for).
    """

    def one(user):
        # rollout_users' key and reset, so the same rows; `attraction` of each step's state
        obs, state = reset_user(user, env_params)
        trajectory, final, _, path = _scan(
            streams.index(key, user), policy_fn, policy_params, env_params, horizon, obs,
            state, record=lambda state: attraction(state, env_params))
        return trajectory, jnp.concatenate([path, attraction(final, env_params)[None]])

    return jax.vmap(one)(jnp.asarray(users, jnp.int32))


__all__ = [
    "attraction",
    "attraction_path",
    "EnvState",
    "Forced",
    "PolicyFn",
    "Trajectory",
    "counterfactual_rollouts",
    "force_item",
    "remove_item",
    "rollout",
    "rollout_users",
    "uplift_truth",
    "with_world",
]
