"""Rollouts and interventions: vmap equals a loop, common random numbers, forced and removed
items, changed worlds, the uplift ground truth, and compilation counts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.sim.env import (
    STREAM_ENV,
    EnvSizes,
    make_env_params,
    reset,
    reset_user,
    step,
    true_uplift,
)
from causalrec_jax.sim.policies import slate_log_prob, slate_policy, softmax_policy, uniform_policy
from causalrec_jax.sim.rollout import (
    Forced,
    Trajectory,
    counterfactual_rollouts,
    force_item,
    remove_item,
    rollout,
    rollout_users,
    uplift_truth,
    with_world,
)

SIZES = EnvSizes(n_users=50, n_items=40, latent_dim=4, slate_size=3, horizon=5)
HORIZON = SIZES.horizon
USERS = jnp.arange(SIZES.n_users, dtype=jnp.int32)
KEY = jax.random.key(42)

rollout_jit = jax.jit(rollout, static_argnums=(1, 4))
rollout_users_jit = jax.jit(rollout_users, static_argnums=(1, 4))
counterfactual_jit = jax.jit(
    counterfactual_rollouts, static_argnums=(1, 4), static_argnames=("policy_axis", "env_axis")
)
uplift_truth_jit = jax.jit(uplift_truth, static_argnums=(1, 4))
forced_policy = force_item(slate_policy)


def _stack(*trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _assert_trees_equal(got, want, rtol=1e-6):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        if jnp.issubdtype(a.dtype, jnp.floating):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def params():
    # Organic consumption frequent enough to be seen in a 50-user, 5-step log.
    return make_env_params(jax.random.key(0), SIZES, organic_offset=-3.0)


@pytest.fixture(scope="module")
def policy(params):
    return softmax_policy(params.user_factors @ params.item_factors.T, SIZES.slate_size)


@pytest.fixture(scope="module")
def log(params, policy):
    return rollout_users_jit(KEY, slate_policy, policy, params, HORIZON, USERS)


def test_trajectory_shapes_and_consistency(log, policy):
    assert isinstance(log, Trajectory)
    n, t, k = SIZES.n_users, HORIZON, SIZES.slate_size
    assert log.user.shape == (n, t) and log.step.shape == (n, t)
    assert log.slate.shape == (n, t, k) and log.slate.dtype == jnp.int32
    assert log.log_prob.shape == (n, t) and log.reward.shape == (n, t)
    for name, leaf in log.info.items():
        assert leaf.shape[:2] == (n, t), name
    np.testing.assert_array_equal(log.user, jnp.broadcast_to(USERS[:, None], (n, t)))
    np.testing.assert_array_equal(log.step, jnp.broadcast_to(jnp.arange(t), (n, t)))
    np.testing.assert_array_equal(log.slate, log.info["slate"])
    np.testing.assert_array_equal(log.user, log.info["user"])
    np.testing.assert_array_equal(log.reward, log.info["clicks"].sum(-1))
    np.testing.assert_array_equal(log.log_prob, log.info["log_prob"])
    logged = jax.vmap(jax.vmap(lambda u, s: slate_log_prob(policy, u, s)))(log.user, log.slate)
    np.testing.assert_allclose(log.log_prob, logged, rtol=1e-5)
    assert all(len(set(row)) == k for row in np.asarray(log.slate).reshape(-1, k))
    # Something happens in this world: clicks and organic consumption.
    assert float(log.reward.sum()) > 20 and int((log.info["organic_item"] >= 0).sum()) > 20


def test_rollout_users_equals_a_python_loop(log, params, policy):
    for user in range(SIZES.n_users):
        one = rollout_jit(jax.random.fold_in(KEY, user), slate_policy, policy, params, HORIZON,
                          user=user)
        _assert_trees_equal(jax.tree.map(lambda leaf, u=user: leaf[u], log), one, rtol=1e-5)


def test_rollout_without_user_meets_the_arriving_user(params, policy):
    key = jax.random.key(8)
    trajectory = rollout_jit(key, slate_policy, policy, params, HORIZON)
    arriving = int(reset(key, params)[0].user)
    np.testing.assert_array_equal(trajectory.user, arriving)
    again = rollout_jit(key, slate_policy, policy, params, HORIZON, user=arriving)
    _assert_trees_equal(trajectory, again)


def test_same_key_same_trajectory_other_key_differs(log, params, policy):
    again = rollout_users_jit(KEY, slate_policy, policy, params, HORIZON, USERS)
    _assert_trees_equal(again, log, rtol=0)
    other = rollout_users_jit(jax.random.key(43), slate_policy, policy, params, HORIZON, USERS)
    assert not np.array_equal(other.slate, log.slate)
    assert not np.array_equal(other.info["examined"], log.info["examined"])


def test_a_users_trajectory_does_not_depend_on_the_batch(log, params, policy):
    # Same batch size (one compiled program), different company: a permutation and repeats.
    for users in (jnp.roll(USERS[::-1], 7), jnp.concatenate([USERS[:10]] * 5)):
        batch = rollout_users_jit(KEY, slate_policy, policy, params, HORIZON, users)
        _assert_trees_equal(batch, jax.tree.map(lambda leaf, u=users: leaf[u], log), rtol=1e-5)


@pytest.fixture(scope="module")
def paired(params):
    """Three policies with one key: two identical (temperature 1) and one colder (0.25)."""
    scores = params.user_factors @ params.item_factors.T
    policies = _stack(*(softmax_policy(scores, 3, temperature=t) for t in (1.0, 1.0, 0.25)))
    return counterfactual_jit(KEY, slate_policy, policies, params, HORIZON, USERS)


def test_counterfactual_identical_policies_do_not_differ(paired, log):
    assert paired.slate.shape == (3, SIZES.n_users, HORIZON, SIZES.slate_size)
    first, second, _ = (jax.tree.map(lambda leaf, i=i: leaf[i], paired) for i in range(3))
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(np.asarray(a) != np.asarray(b), False)
    # ...and equal the log of that policy rolled out alone.
    _assert_trees_equal(first, log, rtol=1e-5)


def test_counterfactual_policies_share_the_exogenous_noise(paired):
    info = paired.info
    assert not np.array_equal(paired.slate[0], paired.slate[2])  # the policies differ...
    # ...but they meet the same users, the same examination draws at every step and, at step
    # 0 (same user state), the same organic choice.
    np.testing.assert_array_equal(paired.user[0], paired.user[2])
    np.testing.assert_array_equal(info["examined"][0], info["examined"][2])
    np.testing.assert_array_equal(info["organic_item"][0, :, 0], info["organic_item"][2, :, 0])
    # The user states drift apart afterwards (otherwise the check above would be vacuous).
    assert not np.array_equal(info["organic_item"][0], info["organic_item"][2]) or not (
        np.array_equal(info["click_probability"][0], info["click_probability"][2])
    )


def test_force_item_keeps_the_slate_distinct():
    def fixed(params, obs, key):
        return jnp.array([5, 9, 2], jnp.int32), jnp.float32(-2.0)

    forced = force_item(fixed)
    obs = reset_user(0, make_env_params(jax.random.key(0), SIZES))[0]
    cases = [((9, 0), [9, 5, 2]), ((2, 2), [5, 9, 2]), ((7, 1), [5, 7, 2]), ((5, 2), [2, 9, 5])]
    for (item, slot), want in cases:
        slate, log_prob = forced(Forced(None, item, slot), obs, jax.random.key(0))
        np.testing.assert_array_equal(slate, want)
        assert float(log_prob) == -2.0


def test_force_item_in_rollouts(log, params, policy):
    item = int(np.bincount(np.asarray(log.slate).ravel()).argmax())  # often already shown
    slots = jnp.arange(SIZES.slate_size, dtype=jnp.int32)
    batch = Forced(policy, jnp.full_like(slots, item), slots)
    forced = counterfactual_jit(KEY, forced_policy, batch, params, HORIZON, USERS,
                                policy_axis=Forced(None, 0, 0))
    inner = np.asarray(log.slate)  # the inner policy's slates: same keys, same observations
    np.testing.assert_array_equal(forced.log_prob, np.broadcast_to(log.log_prob, (3, 50, 5)))
    already = 0
    for slot in range(SIZES.slate_size):
        slates = np.asarray(forced.slate[slot])
        np.testing.assert_array_equal(slates[..., slot], item)
        assert all(len(set(row)) == 3 for row in slates.reshape(-1, 3))
        for other in range(SIZES.slate_size):
            if other == slot:
                continue
            swapped = inner[..., other] == item
            already += int(swapped.sum())
            want = np.where(swapped, inner[..., slot], inner[..., other])
            np.testing.assert_array_equal(slates[..., other], want)
    assert already > 10  # the item was often already elsewhere in the slate
    # The forced item is at slot 0 (examined with probability 1): it is clicked more often.
    clicks_on_item = (forced.info["clicks"][0] & (forced.slate[0] == item)).sum()
    assert int(clicks_on_item) > int((log.info["clicks"] & (log.slate == item)).sum())


@pytest.fixture(scope="module")
def worlds(params, log):
    """A batch of worlds: two without a much-consumed item, one with easier clicks, the base."""
    consumed = np.where(np.asarray(log.info["clicks"]), np.asarray(log.slate), -1).ravel()
    consumed = np.concatenate([consumed, np.asarray(log.info["organic_item"]).ravel()])
    counts = np.bincount(consumed[consumed >= 0], minlength=SIZES.n_items)
    removed = np.argsort(-counts)[:2]
    # with_world makes every scalar an f32 array, so all four worlds share leaf types.
    base = with_world(params, **{name: getattr(params, name) for name in (
        "quality_effect", "temperature", "click_offset", "organic_offset", "drift",
        "satiation_decay", "satiation_strength")})
    batch = _stack(
        remove_item(base, int(removed[0])), remove_item(base, int(removed[1])),
        with_world(base, click_offset=1.0), base,
    )
    return removed, counts, batch


@pytest.fixture(scope="module")
def world_log(worlds, policy):
    _, _, batch = worlds
    return counterfactual_jit(KEY, slate_policy, policy, batch, HORIZON, USERS,
                              policy_axis=None, env_axis=0)


def test_remove_item_via_env_axis(worlds, world_log, log):
    removed, counts, _ = worlds
    _assert_trees_equal(jax.tree.map(lambda leaf: leaf[3], world_log), log, rtol=1e-5)
    for index, item in enumerate(removed):
        assert counts[item] >= 3  # consumed in the base world
        info = jax.tree.map(lambda leaf, i=index: np.asarray(leaf[i]), world_log.info)
        assert (info["slate"] == item).sum() > 0  # still shown (the policy does not know)...
        assert not np.any(info["clicks"] & (info["slate"] == item))  # ...never clicked
        assert not np.any(info["organic_item"] == item)  # ...never consumed organically
        # Common random numbers: the same examination draws as in the base world.
        np.testing.assert_array_equal(info["examined"], log.info["examined"])


def test_with_world_changes_clicks(world_log, log, params):
    easy = jax.tree.map(lambda leaf: np.asarray(leaf[2]), world_log)
    assert float(easy.reward.mean()) > float(log.reward.mean()) + 0.1
    assert float(easy.info["expected_reward"].mean()) > float(log.info["expected_reward"].mean())
    # At step 0 (same state, slate and uniforms) a higher offset only adds clicks.
    base_clicks = np.asarray(log.info["clicks"][:, 0])
    assert np.all(easy.info["clicks"][:, 0] >= base_clicks)
    assert (easy.info["clicks"][:, 0] > base_clicks).sum() > 0
    assert float(with_world(params, click_offset=1.0).click_offset) == 1.0


def test_uplift_truth_shape_range_and_removed_item(worlds, params, policy):
    removed, _, batch = worlds
    truth = uplift_truth_jit(KEY, slate_policy, policy, params, HORIZON, USERS)
    assert truth.shape == (SIZES.n_users, SIZES.n_items) and truth.dtype == jnp.float32
    assert float(truth.min()) >= 0.0 and float(truth.max()) <= 1.0 and float(truth.max()) > 0.1
    no_item = uplift_truth_jit(KEY, slate_policy, policy,
                               jax.tree.map(lambda leaf: leaf[0], batch), HORIZON, USERS)
    np.testing.assert_array_equal(no_item[:, removed[0]], 0.0)
    assert float(no_item.sum()) > 0


def test_uplift_truth_is_the_mean_over_the_logged_states(params, policy, log):
    one_step = uplift_truth_jit(KEY, slate_policy, policy, params, 1, USERS)
    at_reset = jax.vmap(lambda u: true_uplift(reset_user(u, params)[1], params))(USERS)
    np.testing.assert_allclose(one_step, at_reset, rtol=1e-5, atol=1e-7)
    # Replay user 6's logged slates with the rollout's environment keys: the same states.
    user = 6
    truth = uplift_truth_jit(KEY, slate_policy, policy, params, HORIZON, USERS)[user]
    env_key = jax.random.fold_in(jax.random.fold_in(KEY, user), STREAM_ENV)
    _, state = reset_user(user, params)
    total = jnp.zeros(SIZES.n_items)
    for t in range(HORIZON):
        total = total + true_uplift(state, params)
        _, state, reward, *_ = step(jax.random.fold_in(env_key, t), state, log.slate[user, t],
                                    params)
        assert float(reward) == float(log.reward[user, t])
    np.testing.assert_allclose(truth, total / HORIZON, rtol=1e-4, atol=1e-6)


def test_uplift_truth_matches_monte_carlo_of_forced_item(params):
    user = 11
    n_keys = 2000
    inner = uniform_policy(SIZES.n_items, SIZES.slate_size)
    truth = uplift_truth_jit(KEY, slate_policy, inner, params, 1, USERS)[user]
    item = int(jnp.argmax(truth))
    keys = jax.random.split(jax.random.key(5), n_keys)
    slots = jax.random.randint(jax.random.key(6), (n_keys,), 0, SIZES.slate_size)

    @jax.jit
    def effects(keys, slots):
        def one(key, slot):
            trajectory = rollout(key, forced_policy, Forced(inner, item, slot), params, 1,
                                 user=user)
            info = trajectory.info
            return (info["consumed_if_shown"][0, slot].astype(jnp.float32)
                    - info["consumed_if_not_shown"][0, slot].astype(jnp.float32))

        return jax.vmap(one)(keys, slots)

    samples = np.asarray(effects(keys, slots), np.float64)
    mean, stderr = samples.mean(), samples.std(ddof=1) / np.sqrt(n_keys)
    assert float(truth[item]) > 0.1 and stderr > 0
    assert abs(mean - float(truth[item])) < 4 * stderr, (mean, float(truth[item]), stderr)


def test_rollout_users_compiles_once(params, policy):
    traces = []

    def counting_policy(policy_params, obs, key):
        traces.append(1)
        return slate_policy(policy_params, obs, key)

    run = jax.jit(functools.partial(rollout_users, policy_fn=counting_policy, horizon=HORIZON))
    first = run(jax.random.key(1), policy_params=policy, env_params=params, users=USERS)
    traced = len(traces)
    second = run(jax.random.key(2), policy_params=policy, env_params=params, users=USERS)
    assert traced >= 1 and len(traces) == traced  # not traced again
    assert run._cache_size() == 1
    assert not np.array_equal(first.slate, second.slate)
