"""Rollouts and interventions: vmap equals a loop, common random numbers, forced and removed
items, changed worlds, the uplift ground truth, and compilation counts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax import streams
from causalrec_jax.sim.env import (
    EnvSizes,
    make_env_params,
    reset_user,
    step,
    true_uplift,
)
from causalrec_jax.sim.policies import slate_log_prob, slate_policy, softmax_policy
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
step_jit = jax.jit(step)


def _stack(*trees):
    """Stacks pytrees leaf by leaf (in numpy: no compilation per leaf shape)."""
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)


def _pick(tree, index):
    """Row `index` of every leaf, as numpy."""
    return jax.tree.map(lambda leaf: np.asarray(leaf)[index], tree)


def _assert_trees_equal(got, want, rtol=1e-6):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def params():
    # Organic consumption frequent enough to be seen in a 50-user, 5-step log; every scalar an
    # f32 array (as `with_world` makes them) so changed worlds reuse the compiled programs.
    world = make_env_params(jax.random.key(0), SIZES, organic_offset=-3.0)
    scalars = [field.name for field in dataclasses.fields(world)
               if jnp.ndim(getattr(world, field.name)) == 0]
    return with_world(world, **{name: getattr(world, name) for name in scalars})


@pytest.fixture(scope="module")
def policy(params):
    return softmax_policy(params.user_factors @ params.item_factors.T, SIZES.slate_size)


@pytest.fixture(scope="module")
def log(params, policy):
    """The logging policy's episodes of every user (leaves as numpy)."""
    trajectory = rollout_users_jit(KEY, slate_policy, policy, params, HORIZON, USERS)
    return jax.tree.map(np.asarray, trajectory)


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
    logged = jax.jit(jax.vmap(jax.vmap(lambda u, s: slate_log_prob(policy, u, s))))(
        log.user, log.slate
    )
    np.testing.assert_allclose(log.log_prob, logged, rtol=1e-5)
    assert all(len(set(row)) == k for row in np.asarray(log.slate).reshape(-1, k))
    # Something happens in this world: clicks and organic consumption.
    assert float(log.reward.sum()) > 20 and int((log.info["organic_item"] >= 0).sum()) > 20


def test_rollout_users_equals_a_python_loop(log, params, policy):
    for user in range(SIZES.n_users):
        one = rollout_jit(jax.random.fold_in(KEY, user), slate_policy, policy, params, HORIZON,
                          user=user)
        _assert_trees_equal(_pick(log, user), one, rtol=1e-5)


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
        _assert_trees_equal(batch, _pick(log, np.asarray(users)), rtol=1e-5)


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


@pytest.fixture(scope="module")
def design(params, policy, log):
    """Eight paired interventions rolled out with one key: forced item, slot, policy and world
    per row (one compiled program; `counterfactual_rollouts` batches policies and worlds).

    0, 1, 2: the often-shown item `I` forced at slot 0, 1, 2; 3: `I` at slot 0 in the world
    without `I`; 4: the same in the world without `R` (much consumed in the log); 5: the same
    in a world with easier clicks (offset 1); 6: row 0 again; 7: row 0 with a colder softmax
    (temperature 0.5).
    """
    item = int(np.bincount(log.slate.ravel()).argmax())
    consumed = np.concatenate([np.where(log.info["clicks"], log.slate, -1).ravel(),
                               log.info["organic_item"].ravel()])
    counts = np.bincount(consumed[consumed >= 0], minlength=SIZES.n_items)
    counts[item] = -1
    other = int(counts.argmax())
    colder = softmax_policy(params.user_factors @ params.item_factors.T, 3, temperature=0.5)
    forced = Forced(_stack(*[policy] * 7, colder), np.full(8, item, np.int32),
                    np.array([0, 1, 2, 0, 0, 0, 0, 0], np.int32))
    worlds = _stack(params, params, params, remove_item(params, item),
                    remove_item(params, other), with_world(params, click_offset=1.0),
                    params, params)
    return dict(item=item, other=other, other_count=int(counts[other]), forced=forced,
                worlds=worlds)


def _run_design(key, design):
    """The interventions of `design` under one key (one compiled program for any key)."""
    trajectories = counterfactual_jit(key, forced_policy, design["forced"], design["worlds"],
                                      HORIZON, USERS, policy_axis=0, env_axis=0)
    return jax.tree.map(np.asarray, trajectories)


@pytest.fixture(scope="module")
def designed(design):
    return _run_design(KEY, design)


def test_counterfactual_identical_interventions_do_not_differ(designed):
    assert designed.slate.shape == (8, SIZES.n_users, HORIZON, SIZES.slate_size)
    first, again = _pick(designed, 0), _pick(designed, 6)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a != b, False)


def test_counterfactual_policies_share_the_exogenous_noise(designed):
    base, colder = _pick(designed, 0), _pick(designed, 7)
    assert not np.array_equal(base.slate, colder.slate)  # the policies differ...
    # ...but they meet the same users, the same examination draws at every step and, at step
    # 0 (same user state), the same organic choice.
    np.testing.assert_array_equal(base.user, colder.user)
    np.testing.assert_array_equal(base.info["examined"], colder.info["examined"])
    np.testing.assert_array_equal(base.info["organic_item"][:, 0],
                                  colder.info["organic_item"][:, 0])
    # Later the user states drift apart (so the step-0 check is not vacuous).
    assert not np.array_equal(base.info["organic_item"], colder.info["organic_item"])


def test_force_item_in_rollouts(designed, design, log):
    item = design["item"]
    inner = log.slate  # the inner policy's slates: same keys, same observations
    already = 0
    for slot in range(SIZES.slate_size):
        slates = designed.slate[slot]
        np.testing.assert_allclose(designed.log_prob[slot], log.log_prob, rtol=1e-5)
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
    # Forced at slot 0 (always examined) the item is clicked more often than in the log.
    clicks_on_item = (designed.info["clicks"][0] & (designed.slate[0] == item)).sum()
    assert clicks_on_item > (log.info["clicks"] & (log.slate == item)).sum()


def test_remove_item_via_env_axis(designed, design):
    base = _pick(designed, 0)
    for row, item in ((3, design["item"]), (4, design["other"])):
        info = _pick(designed, row).info
        shown = info["slate"] == item
        assert shown.sum() > 0  # still shown (row 3: at slot 0 of every slate)...
        assert not np.any(info["clicks"] & shown)  # ...never clicked
        assert not np.any(info["organic_item"] == item)  # ...never consumed organically
        assert not np.any(info["consumed_if_shown"] & shown)
        # Common random numbers: the same examination draws and step-0 slates as the base.
        np.testing.assert_array_equal(info["examined"], base.info["examined"])
        np.testing.assert_array_equal(info["slate"][:, 0], base.info["slate"][:, 0])
    assert _pick(designed, 3).info["slate"][..., 0].min() == design["item"]
    # In the base world both items are consumed.
    assert (base.info["clicks"] & (base.slate == design["item"])).sum() > 10
    assert design["other_count"] >= 3


def test_with_world_changes_clicks(designed, params):
    base, easy = _pick(designed, 0), _pick(designed, 5)
    assert easy.reward.mean() > base.reward.mean() + 0.1
    assert easy.info["expected_reward"].mean() > base.info["expected_reward"].mean()
    # At step 0 (same state, slate and uniforms) a higher offset only adds clicks.
    base_clicks = base.info["clicks"][:, 0]
    assert np.all(easy.info["clicks"][:, 0] >= base_clicks)
    assert (easy.info["clicks"][:, 0] > base_clicks).sum() > 0
    changed = with_world(params, click_offset=1.0)
    assert float(changed.click_offset) == 1.0 and float(params.click_offset) == -1.0


@pytest.fixture(scope="module")
def truth(params, policy):
    return uplift_truth_jit(KEY, slate_policy, policy, params, HORIZON, USERS)


def test_uplift_truth_shape_range_and_removed_item(truth, design, params, policy):
    assert truth.shape == (SIZES.n_users, SIZES.n_items) and truth.dtype == jnp.float32
    assert float(truth.min()) >= 0.0 and float(truth.max()) <= 1.0 and float(truth.max()) > 0.1
    item = design["item"]
    no_item = uplift_truth_jit(KEY, slate_policy, policy, remove_item(params, item), HORIZON,
                               USERS)
    np.testing.assert_array_equal(no_item[:, item], 0.0)
    assert float(truth[:, item].min()) > 0 and float(no_item.sum()) > 0


def test_uplift_truth_is_the_mean_over_the_logged_states(truth, params, log):
    # Replay user 6's logged slates with the rollout's environment keys: the same states.
    user = 6
    env_key = jax.random.fold_in(jax.random.fold_in(KEY, user), streams.Env.NOISE)
    _, state = reset_user(user, params)
    total = jnp.zeros(SIZES.n_items)
    for t in range(HORIZON):
        total = total + true_uplift(state, params)
        _, state, reward, *_ = step_jit(jax.random.fold_in(env_key, t), state,
                                        log.slate[user, t], params)
        assert float(reward) == float(log.reward[user, t])
    np.testing.assert_allclose(truth[user], total / HORIZON, rtol=1e-4, atol=1e-6)
    assert not np.allclose(truth[user], true_uplift(reset_user(user, params)[1], params))


def test_uplift_at_reset_matches_monte_carlo_of_forced_item(design, params):
    """Showing the item at a uniformly random slot vs not showing it, at the first step.

    Each run of the design (rows 0-2: the item at slot 0, 1, 2; common random numbers) gives,
    per user, one draw of the effect at a uniformly random slot: the mean over the three slots
    of consumed_if_shown - consumed_if_not_shown at step 0. Its expectation is `true_uplift` at
    the user's initial state (what `uplift_truth` averages over a horizon of 1).
    """
    item = design["item"]
    # Row 7 with the logging policy too: a colder softmax needs many sampling rounds.
    forced = design["forced"]
    design = dict(design, forced=forced._replace(inner=_pick(forced.inner, np.zeros(8, int))))
    at_reset = jax.jit(jax.vmap(lambda u: true_uplift(reset_user(u, params)[1], params)))(USERS)
    slots = np.arange(SIZES.slate_size)
    draws = []
    for run in range(40):  # 40 runs x 50 users = 2000 draws
        info = _run_design(jax.random.key(1000 + run), design).info
        effect = (info["consumed_if_shown"][slots, :, 0, slots]
                  & ~info["consumed_if_not_shown"][slots, :, 0, slots])
        draws.append(effect.mean(axis=0))
    draws = np.stack(draws).astype(np.float64)  # [runs, users]
    truth = np.asarray(at_reset[:, item], np.float64)
    assert truth.mean() > 0.1
    difference = draws - truth[None, :]
    stderr = difference.std(ddof=1) / np.sqrt(difference.size)
    assert abs(difference.mean()) < 4 * stderr, (difference.mean(), stderr)
    # The single (user, item) pair with the largest truth, within 4 standard errors too.
    user = int(np.argmax(truth))
    pair_stderr = max(draws[:, user].std(ddof=1), 1e-3) / np.sqrt(draws.shape[0])
    assert abs(draws[:, user].mean() - truth[user]) < 4 * pair_stderr


def test_no_recompilation(log, params, policy, design, designed, compile_counter):
    # New keys, another policy of the same shape or a changed world: no new compilation. (The
    # jit cache is shared with other tests' shapes, so its size is compared, not fixed at 1.)
    rollout_users_jit(jax.random.key(0), slate_policy, policy, params, HORIZON, USERS)
    size = rollout_users_jit._cache_size()
    hotter = softmax_policy(params.user_factors @ params.item_factors.T, 3, temperature=3.0)
    drifted = with_world(params, drift=0.5)
    with compile_counter:
        first = rollout_users_jit(jax.random.key(1), slate_policy, policy, params, HORIZON, USERS)
        second = rollout_users_jit(jax.random.key(2), slate_policy, policy, params, HORIZON,
                                   USERS)
        rollout_users_jit(KEY, slate_policy, hotter, params, HORIZON, USERS)
        rollout_users_jit(KEY, slate_policy, policy, drifted, HORIZON, USERS)
    assert rollout_users_jit._cache_size() == size
    assert compile_counter.count == 0
    assert not np.array_equal(first.slate, second.slate)
    size = counterfactual_jit._cache_size()
    _run_design(jax.random.key(3), design)
    _run_design(jax.random.key(4), dict(design, worlds=_stack(*[params] * 8)))
    assert counterfactual_jit._cache_size() == size
