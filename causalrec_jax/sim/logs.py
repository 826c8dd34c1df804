"""From `[env]` / `[policy]` configs to worlds, policies and logged bandit feedback.

`simulate_log(env, policy, key)` rolls the logging policy out for every user of the world for
`env.horizon` steps and returns a `SimLog` of numpy arrays, one row per round (a user at a
step) with `[K]` columns per slot: what `causalrec simulate` writes in the `simlog` format
(`sim.simlog`) and what off-policy evaluation and uplift learning read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax import streams
from causalrec_jax.config import EnvConfig, PolicyConfig
from causalrec_jax.errors import ConfigError
from causalrec_jax.sim import policies
from causalrec_jax.sim.env import EnvParams, EnvSizes, make_env_params
from causalrec_jax.sim.rollout import attraction_path, rollout_users, uplift_truth


def env_from_config(env: EnvConfig) -> tuple[EnvSizes, EnvParams]:
    """Static sizes and the drawn world of an `[env]` section (world key from `env.seed`)."""
    sizes = EnvSizes(env.n_users, env.n_items, env.latent_dim, env.slate_size, env.horizon)
    params = make_env_params(
        jax.random.key(env.seed), sizes,
        popularity_sigma=env.popularity_sigma, examination_power=env.examination_power,
        quality_effect=env.quality_effect, temperature=env.temperature,
        click_offset=env.click_offset, organic_offset=env.organic_offset, drift=env.drift,
        satiation_decay=env.satiation_decay, satiation_strength=env.satiation_strength,
        organic_quality_effect=env.organic_quality_effect,
        organic_taste_effect=env.organic_taste_effect,
    )
    return sizes, params


def oracle_scores(params: EnvParams) -> jax.Array:
    """`[n_users, n_items]` true utilities at the start of each user's episode."""
    return (params.user_factors @ params.item_factors.T) / params.temperature + (
        params.quality_effect * params.item_quality
    )


def policy_scores(
    policy: PolicyConfig, params: EnvParams, score_table: np.ndarray | jax.Array | None = None
) -> jax.Array:
    """Scores `[n_users, n_items]` (or `[n_items]` shared) a `[policy]` section ranks by.

    Args:
        policy: the `[policy]` (or `[target]`) section.
        params: the world.
        score_table: `[n_users, n_items]` the scores of `policy.scores = "run"`: a trained
            model's, mapped onto the world's users and items by the caller (the simulator
            never reads run folders; `runs.load.run_score_table` builds it). Unused otherwise.

    Raises:
        ConfigError: `scores = "run"` without a score table of the world's shape.
    """
    n_users, n_items = params.user_factors.shape[0], params.item_factors.shape[0]
    noise_key = streams.derive(jax.random.key(policy.seed), streams.Policy.SCORES)
    if policy.scores == "oracle":
        return oracle_scores(params)
    if policy.scores == "noisy_oracle":
        noise = jax.random.normal(noise_key, (n_users, n_items))
        return oracle_scores(params) + policy.score_noise * noise
    if policy.scores == "popularity":
        return params.item_quality
    if policy.scores == "random":
        return jax.random.normal(noise_key, (n_users, n_items))
    if score_table is None:
        raise ConfigError(
            'key policy.scores: "run" needs the score table of the run policy.run, which this '
            "command does not build (causalrec simulate does)"
        )
    if tuple(np.shape(score_table)) != (n_users, n_items):
        raise ConfigError(
            f"key policy.run: its score table is {tuple(np.shape(score_table))}, expected the "
            f"world's ({n_users}, {n_items})"
        )
    return jnp.asarray(score_table, jnp.float32)


def policy_from_config(
    policy: PolicyConfig,
    params: EnvParams,
    slate_size: int,
    score_table: np.ndarray | jax.Array | None = None,
) -> policies.SlatePolicy:
    """The `SlatePolicy` of a `[policy]` (or `[target]`) section.

    `score_table`: the scores of `policy.scores = "run"`, as in `policy_scores`.
    """
    scores = policy_scores(policy, params, score_table)
    if policy.kind == "softmax":
        return policies.softmax_policy(scores, slate_size, temperature=policy.temperature)
    if policy.kind == "uniform":
        return policies.uniform_policy(params.item_factors.shape[0], slate_size)
    if policy.kind == "top_k":
        return policies.top_k_policy(scores, slate_size)
    return policies.epsilon_greedy_policy(
        scores, slate_size, policy.epsilon, shuffle=policy.shuffle
    )


@dataclasses.dataclass(frozen=True)
class SimLog:
    """Logged bandit feedback, one row per round (user at a step), numpy arrays.

    Attributes:
        user, step: `[R]` int32.
        slate: `[R, K]` int32 items shown, slot 0 first.
        slate_log_prob: `[R]` the logging policy's log probability of the ordered slate.
        slot_propensity: `[R, K]` P(the item shown at slot k is at slot k) under the logging
            policy (the item-position marginal; estimated for Plackett–Luce slots >= 1).
        examined, clicks, consumed_if_shown, consumed_if_not_shown: `[R, K]` bool.
        click_probability: `[R, K]` true P(click) of each slot.
        organic_item: `[R]` int32 the item consumed without a recommendation (-1: none).
        reward: `[R]` clicks; expected_reward: `[R]` its expectation given the slate.
        propensity_exact: whether `slot_propensity` is exact.
    """

    user: np.ndarray
    step: np.ndarray
    slate: np.ndarray
    slate_log_prob: np.ndarray
    slot_propensity: np.ndarray
    examined: np.ndarray
    clicks: np.ndarray
    consumed_if_shown: np.ndarray
    consumed_if_not_shown: np.ndarray
    click_probability: np.ndarray
    organic_item: np.ndarray
    reward: np.ndarray
    expected_reward: np.ndarray
    propensity_exact: bool

    @property
    def n_rounds(self) -> int:
        return len(self.user)


def _flatten(values: jax.Array) -> np.ndarray:
    values = np.asarray(values)
    return values.reshape(values.shape[0] * values.shape[1], *values.shape[2:])


def _exact_part(policy, user, slate):
    return jnp.diagonal(policies.slot_probabilities(policy, user, slate).probabilities)


# Compiled once per shape, with the policy as an argument (not baked into the program).
_exact_slot_values = jax.jit(jax.vmap(jax.vmap(_exact_part, in_axes=(None, None, 0)),
                                      in_axes=(None, 0, 0)))
_slot_frequencies = jax.jit(policies.plackett_luce_slot_frequencies,
                            static_argnames="n_samples")
_rollout_users = jax.jit(rollout_users, static_argnums=(1, 4))
_uplift_truth = jax.jit(uplift_truth, static_argnums=(1, 4))
_attraction_path = jax.jit(attraction_path, static_argnums=(1, 4))


def slot_propensities(
    key: jax.Array, policy: policies.SlatePolicy, users: jax.Array, slates: jax.Array,
    n_samples: int, *, block_users: int = 64,
) -> tuple[np.ndarray, bool]:
    """`[n_users, T, K]` P(slates[u, t, k] at slot k) under `policy`, and whether exact.

    Exact for uniform, top-K and epsilon-greedy policies and for single-item slates; for
    Plackett–Luce slots >= 1 the softmax part is estimated from `n_samples` slates per user
    (`policies.plackett_luce_slot_frequencies`), computed in blocks of users.
    """
    k = slates.shape[2]
    exact = bool(policy.flat or k == 1 or float(policy.epsilon) == 0.0)

    exact_values = _exact_slot_values(policy, users, slates)
    if exact:
        return np.asarray(exact_values), True

    def frequencies_fn(block):
        return _slot_frequencies(key, policy, block, n_samples=n_samples)

    # exact_values = epsilon * p(item) + (1 - epsilon) * top part; swap in the estimate.
    epsilon = float(policy.epsilon)
    values = np.asarray(exact_values).copy()
    probabilities = np.asarray(policy.probabilities)
    users_np, slates_np = np.asarray(users), np.asarray(slates)
    rows = users_np if probabilities.shape[0] > 1 else np.zeros_like(users_np)
    for start in range(0, len(users_np), block_users):
        block = users_np[start:start + block_users]
        padded = np.pad(block, (0, block_users - len(block)), mode="edge")
        frequencies = np.asarray(frequencies_fn(jnp.asarray(padded)))[: len(block)]
        block_slates = slates_np[start:start + block_users]
        index = np.arange(len(block))[:, None, None]
        estimated = frequencies[index, block_slates, np.arange(k)[None, None, :]]
        first = probabilities[rows[start:start + block_users][:, None, None], block_slates]
        values[start:start + block_users] += epsilon * (estimated - first)
    return values, False


def simulate_log(
    env: EnvConfig, policy: PolicyConfig, key: jax.Array, *, users: np.ndarray | None = None,
    horizon: int | None = None, marginal_samples: int = 2000,
    score_table: np.ndarray | jax.Array | None = None,
) -> tuple[SimLog, dict[str, Any]]:
    """Rolls out the `[policy]` section on the `[env]` world; returns `(log, truth)`.

    Args:
        env: the `[env]` section (the world comes from `env.seed`).
        policy: the `[policy]` section (the logging policy).
        key: the log's noise. User `u`'s episode has the key `streams.index(key, u)` and the
            slot marginals `streams.derive(key, streams.Log.SLOT_PROPENSITIES)`: the users are
            indexed at the level of that stream id (user 1's key is the marginals' key), as
            every published log was drawn.
        users: which users (default: all, in order); horizon: steps (default `env.horizon`).
        marginal_samples: Monte-Carlo slates per round for Plackett–Luce slot marginals.
        score_table: `[n_users, n_items]` the scores of `policy.scores = "run"`
            (`policy_scores`).

    Returns:
        The `SimLog` and a dict of ground truth: the world's arrays, `true_uplift`
        `[n_users, n_items]` (mean over the logged episode of the effect of showing each item),
        and `inclusion_propensity` `[n_users, n_items]` (exact P(item in slate), only for
        uniform / top-K / epsilon-greedy policies).
    """
    sizes, params = env_from_config(env)
    horizon = sizes.horizon if horizon is None else horizon
    logging = policy_from_config(policy, params, sizes.slate_size, score_table)
    users = jnp.arange(sizes.n_users) if users is None else jnp.asarray(users, jnp.int32)
    trajectory = _rollout_users(key, policies.slate_policy, logging, params, horizon, users)
    info = trajectory.info
    slot_prop, exact = slot_propensities(
        streams.derive(key, streams.Log.SLOT_PROPENSITIES), logging, users, trajectory.slate,
        marginal_samples,
    )
    log = SimLog(
        user=_flatten(trajectory.user).astype(np.int32),
        step=_flatten(trajectory.step).astype(np.int32),
        slate=_flatten(trajectory.slate).astype(np.int32),
        slate_log_prob=_flatten(trajectory.log_prob).astype(np.float32),
        slot_propensity=_flatten(slot_prop).astype(np.float32),
        examined=_flatten(info["examined"]),
        clicks=_flatten(info["clicks"]),
        consumed_if_shown=_flatten(info["consumed_if_shown"]),
        consumed_if_not_shown=_flatten(info["consumed_if_not_shown"]),
        click_probability=_flatten(info["click_probability"]).astype(np.float32),
        organic_item=_flatten(info["organic_item"]).astype(np.int32),
        reward=_flatten(trajectory.reward).astype(np.float32),
        expected_reward=_flatten(info["expected_reward"]).astype(np.float32),
        propensity_exact=exact,
    )
    truth = {
        "user_factors": np.asarray(params.user_factors),
        "item_factors": np.asarray(params.item_factors),
        "item_quality": np.asarray(params.item_quality),
        "examination": np.asarray(params.examination),
        "users": np.asarray(users),
        "true_uplift": np.asarray(
            _uplift_truth(key, policies.slate_policy, logging, params, horizon, users)
        ),
    }
    if logging.flat:
        inclusion = jax.vmap(lambda user: policies.inclusion_probabilities(logging, user))(users)
        truth["inclusion_propensity"] = np.asarray(inclusion, np.float32)
    return log, truth


def log_attraction(
    env: EnvConfig, policy: PolicyConfig, key: jax.Array, users: np.ndarray, horizon: int,
    *, block_users: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """The true attraction of every item at every step of the episodes `simulate_log(env,
    policy, key, users=users, horizon=horizon)` logged (the same keys replay the same states).

    Returns:
        `(slates [n, T, K] int32, attraction [n, T + 1, n_items] float32)`: the replayed slates
        (callers check them against the log's) and `rollout.attraction`, `sigmoid(v + c)`, of
        each user's state before each step and after the last one.

    Raises:
        ConfigError: `policy.scores = "run"` (its score table lives in a run folder).
    """
    if policy.scores == "run":
        raise ConfigError('key policy.scores: a log of a "run" policy cannot be replayed here '
                          "(its scores live in the run folder policy.run)")
    sizes, params = env_from_config(env)
    logging = policy_from_config(policy, params, sizes.slate_size)
    users = np.asarray(users, np.int32)
    slates, paths = [], []
    for start in range(0, len(users), block_users):
        block = users[start:start + block_users]
        padded = np.pad(block, (0, block_users - len(block)), mode="edge")
        trajectory, path = _attraction_path(key, policies.slate_policy, logging, params,
                                            horizon, jnp.asarray(padded))
        slates.append(np.asarray(trajectory.slate)[: len(block)])
        paths.append(np.asarray(path, np.float32)[: len(block)])
    k, n_items = sizes.slate_size, sizes.n_items
    if not slates:
        return (np.zeros((0, horizon, k), np.int32),
                np.zeros((0, horizon + 1, n_items), np.float32))
    return np.concatenate(slates).astype(np.int32), np.concatenate(paths)
