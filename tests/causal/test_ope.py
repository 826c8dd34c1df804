"""Tests of the off-policy estimators: unbiasedness and standard errors on a synthetic contextual
bandit with a known value, limits between estimators, clipping, masking, jit, slates and the
host-side input checks."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.causal import clip as the_clip
from causalrec_jax.causal.ope import (
    ESTIMATORS,
    Estimate,
    WeightReport,
    check_ope_inputs,
    clip_weights,
    dm,
    dr,
    dros,
    iips,
    importance_weights,
    ips,
    pbm_ips,
    position_based_marginals,
    relative_error,
    sndr,
    snips,
    switch_dr,
)
from causalrec_jax.causal.propensity import PropensityError

N_KEYS = 2000
N_ROUNDS = 500

# --- a contextual bandit with 3 contexts x 5 actions and a known value ----------------------

CONTEXT_PROBS = jnp.array([0.5, 0.3, 0.2])
MEAN_REWARDS = jnp.array(
    [
        [0.1, 0.3, 0.5, 0.7, 0.9],
        [0.8, 0.6, 0.4, 0.2, 0.1],
        [0.3, 0.9, 0.2, 0.6, 0.5],
    ]
)
LOGGING_POLICY = jax.nn.softmax(
    jnp.array([[0.5, 0.2, 0.0, -0.2, -0.5], [0.0, 0.3, 0.0, 0.3, 0.0], [-0.3, 0.0, 0.3, 0.0, 0.2]]),
    axis=1,
)
TARGET_POLICY = jax.nn.softmax(
    jnp.array(
        [[-0.5, 0.0, 0.3, 0.6, 1.0], [1.0, 0.5, 0.0, -0.5, -0.5], [0.0, 1.0, -0.5, 0.5, 0.0]]
    ),
    axis=1,
)
# A deliberately wrong reward model.
WRONG_MODEL = 0.5 * MEAN_REWARDS + 0.3
TRUTH = float(jnp.sum(CONTEXT_PROBS[:, None] * TARGET_POLICY * MEAN_REWARDS))


@functools.partial(jax.jit, static_argnames=("n", "deterministic"))
def simulate(key: jax.Array, n: int = N_ROUNDS, deterministic: bool = False) -> dict:
    """`n` logged rounds of the logging policy, with the true and the wrong reward model."""
    context_key, action_key, reward_key = jax.random.split(key, 3)
    contexts = jax.random.choice(context_key, 3, (n,), p=CONTEXT_PROBS)
    actions = jax.random.categorical(action_key, jnp.log(LOGGING_POLICY[contexts]))
    means = MEAN_REWARDS[contexts, actions]
    if deterministic:
        rewards = means
    else:
        rewards = jax.random.bernoulli(reward_key, means).astype(jnp.float32)
    return {
        "rewards": rewards,
        "target_probs": TARGET_POLICY[contexts, actions],
        "logging_probs": LOGGING_POLICY[contexts, actions],
        "true_logged": means,
        "true_target": jnp.sum(TARGET_POLICY[contexts] * MEAN_REWARDS[contexts], axis=1),
        "wrong_logged": WRONG_MODEL[contexts, actions],
        "wrong_target": jnp.sum(TARGET_POLICY[contexts] * WRONG_MODEL[contexts], axis=1),
    }


def bandit_args(data: dict, model: str) -> tuple:
    return (
        data["rewards"],
        data["target_probs"],
        data["logging_probs"],
        data[f"{model}_logged"],
        data[f"{model}_target"],
    )


def all_estimates(key: jax.Array) -> dict[str, Estimate]:
    data = simulate(key)
    ipw = (data["rewards"], data["target_probs"], data["logging_probs"])
    return {
        "ips": ips(*ipw),
        "snips": snips(*ipw),
        "dm": dm(data["true_target"]),
        "dm_wrong": dm(data["wrong_target"]),
        "dr": dr(*bandit_args(data, "wrong")),
        "sndr": sndr(*bandit_args(data, "wrong")),
        "switch_dr": switch_dr(*bandit_args(data, "true"), threshold=1.5),
        "dros": dros(*bandit_args(data, "true"), shrinkage=1.0),
    }


@pytest.fixture(scope="module")
def estimates() -> dict[str, Estimate]:
    keys = jax.random.split(jax.random.key(0), N_KEYS)
    return jax.jit(jax.vmap(all_estimates))(keys)


def test_the_bandit_problem_is_informative():
    weights = TARGET_POLICY / LOGGING_POLICY
    assert float(weights.max()) > 1.5 > 1.0 > float(weights.min())  # switch_dr switches some
    logging_value = float(jnp.sum(CONTEXT_PROBS[:, None] * LOGGING_POLICY * MEAN_REWARDS))
    assert abs(TRUTH - logging_value) > 0.05  # the naive mean reward would be badly biased


@pytest.mark.parametrize("name", ["ips", "dm", "dr", "switch_dr", "dros"])
def test_unbiased_estimators_are_centred_on_the_truth(estimates, name):
    values = np.asarray(estimates[name].value)
    standard_error = values.std(ddof=1) / np.sqrt(N_KEYS)
    assert abs(values.mean() - TRUTH) < 4 * standard_error, (values.mean(), TRUTH)


@pytest.mark.parametrize("name", ["snips", "sndr"])
def test_self_normalised_estimators_are_centred_up_to_an_order_one_over_n_bias(estimates, name):
    values = np.asarray(estimates[name].value)
    standard_error = values.std(ddof=1) / np.sqrt(N_KEYS)
    # The ratio's bias is about -Cov(mean w, mean w (r - V)), at most Var(w) / n for rewards
    # in [0, 1]; Var(w) = E_b[w^2] - 1 under the logging policy.
    second_moment = jnp.sum(CONTEXT_PROBS[:, None] * TARGET_POLICY**2 / LOGGING_POLICY)
    bias_allowance = float(second_moment - 1.0) / N_ROUNDS
    assert abs(values.mean() - TRUTH) < 4 * standard_error + bias_allowance


@pytest.mark.parametrize("name", ["ips", "snips", "dm", "dr", "sndr", "switch_dr", "dros"])
def test_stderr_matches_the_spread_across_datasets(estimates, name):
    spread = float(np.std(np.asarray(estimates[name].value), ddof=1))
    mean_stderr = float(np.mean(np.asarray(estimates[name].stderr)))
    assert 0.85 < mean_stderr / spread < 1.15, (mean_stderr, spread)


def test_dm_with_a_wrong_model_is_biased(estimates):
    values = np.asarray(estimates["dm_wrong"].value)
    standard_error = values.std(ddof=1) / np.sqrt(N_KEYS)
    assert abs(values.mean() - TRUTH) > 20 * standard_error


def test_dr_with_the_true_model_and_deterministic_rewards_has_no_importance_noise():
    def one(key):
        data = simulate(key, deterministic=True)
        return dr(*bandit_args(data, "true")).value - jnp.mean(data["true_target"])

    gaps = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(1), 200))
    np.testing.assert_allclose(np.asarray(gaps), 0.0, atol=1e-6)
    # ... while ips on the same data does carry importance-weighting noise
    data = simulate(jax.random.key(2), deterministic=True)
    ips_gap = ips(data["rewards"], data["target_probs"], data["logging_probs"]).value
    assert abs(float(ips_gap - jnp.mean(data["true_target"]))) > 1e-3


# --- hand-computed values -------------------------------------------------------------------

REWARDS = jnp.array([1.0, 0.0, 1.0, 1.0])
TARGET = jnp.array([0.5, 0.2, 0.9, 0.1])
LOGGING = jnp.array([0.25, 0.5, 0.3, 0.5])  # weights 2, 0.4, 3, 0.2
Q_LOGGED = jnp.array([0.5, 0.5, 0.5, 0.5])
Q_TARGET = jnp.array([0.6, 0.4, 0.7, 0.3])


def test_hand_computed_ips_snips_dr_and_dm():
    weights = np.array([2.0, 0.4, 3.0, 0.2])
    terms = weights * np.asarray(REWARDS)
    estimate = ips(REWARDS, TARGET, LOGGING)
    np.testing.assert_allclose(estimate.value, terms.mean(), rtol=1e-6)
    np.testing.assert_allclose(estimate.stderr, terms.std(ddof=1) / 2.0, rtol=1e-5)
    np.testing.assert_allclose(estimate.n_eff, weights.sum() ** 2 / (weights**2).sum(), rtol=1e-6)
    np.testing.assert_allclose(snips(REWARDS, TARGET, LOGGING).value, 5.2 / 5.6, rtol=1e-6)
    dr_terms = np.asarray(Q_TARGET) + weights * (np.asarray(REWARDS) - 0.5)
    np.testing.assert_allclose(
        dr(REWARDS, TARGET, LOGGING, Q_LOGGED, Q_TARGET).value, dr_terms.mean(), rtol=1e-6
    )
    sndr_value = 0.5 + np.sum(weights * (np.asarray(REWARDS) - 0.5)) / weights.sum()
    np.testing.assert_allclose(
        sndr(REWARDS, TARGET, LOGGING, Q_LOGGED, Q_TARGET).value, sndr_value, rtol=1e-6
    )
    estimate = dm(Q_TARGET)
    np.testing.assert_allclose(estimate.value, 0.5, rtol=1e-6)
    assert float(estimate.n_eff) == 4.0


def test_n_eff_is_n_when_all_weights_are_equal():
    rewards = jnp.arange(6.0) / 6
    target = jnp.full(6, 0.3)
    logging = jnp.full(6, 0.6)
    for estimate in (
        ips(rewards, target, logging),
        snips(rewards, target, logging),
        dr(rewards, target, logging, rewards, rewards),
    ):
        np.testing.assert_allclose(estimate.n_eff, 6.0, rtol=1e-6)
    np.testing.assert_allclose(
        iips(jnp.ones((6, 2)), jnp.full((6, 2), 0.2), jnp.full((6, 2), 0.4)).n_eff, 6.0
    )
    np.testing.assert_allclose(ips(rewards, target, logging, where=jnp.arange(6) < 4).n_eff, 4.0)


# --- limits between estimators ------------------------------------------------------------


@pytest.fixture(scope="module")
def data() -> dict:
    return simulate(jax.random.key(3), n=300)


def test_switch_dr_limits(data):
    args = bandit_args(data, "wrong")
    reference_dr = dr(*args)
    reference_dm = dm(data["wrong_target"])
    at_inf = switch_dr(*args, threshold=jnp.inf)
    at_zero = switch_dr(*args, threshold=0.0)
    np.testing.assert_allclose(at_inf.value, reference_dr.value, rtol=1e-6)
    np.testing.assert_allclose(at_inf.stderr, reference_dr.stderr, rtol=1e-5)
    np.testing.assert_allclose(at_zero.value, reference_dm.value, rtol=1e-6)
    np.testing.assert_allclose(at_zero.stderr, reference_dm.stderr, rtol=1e-5)
    middle = switch_dr(*args, threshold=1.5)
    assert float(middle.value) not in (float(reference_dr.value), float(reference_dm.value))


def test_dros_limits(data):
    args = bandit_args(data, "wrong")
    reference_dr = dr(*args)
    reference_dm = dm(data["wrong_target"])
    np.testing.assert_allclose(dros(*args, shrinkage=1e9).value, reference_dr.value, rtol=1e-5)
    np.testing.assert_allclose(dros(*args, shrinkage=jnp.inf).value, reference_dr.value, rtol=1e-6)
    np.testing.assert_allclose(dros(*args, shrinkage=0.0).value, reference_dm.value, rtol=1e-6)
    assert np.isfinite(float(dros(*args, shrinkage=0.0).stderr))
    middle = float(dros(*args, shrinkage=1.0).value)
    assert abs(middle - float(reference_dr.value)) > 1e-4


def test_estimators_sweep_traced_scalars_with_vmap(data):
    args = bandit_args(data, "wrong")
    thresholds = jnp.array([0.0, 1.5, jnp.inf])
    values = jax.vmap(lambda t: switch_dr(*args, threshold=t).value)(thresholds)
    np.testing.assert_allclose(values[0], dm(data["wrong_target"]).value, rtol=1e-6)
    np.testing.assert_allclose(values[2], dr(*args).value, rtol=1e-6)
    clips = jnp.array([0.5, 1.0, 100.0])
    clipped = jax.vmap(lambda c: ips(*args[:3], clip=c).value)(clips)
    np.testing.assert_allclose(clipped[2], ips(*args[:3]).value, rtol=1e-6)
    assert float(clipped[0]) < float(clipped[1]) < float(clipped[2])


# --- clipping -------------------------------------------------------------------------------


def test_clip_weights_caps_and_reports():
    weights = jnp.array([0.5, 2.0, 4.0, 8.0, 100.0])
    where = jnp.array([True, True, True, True, False])
    clipped, report = clip_weights(weights, 3.0, where=where)
    np.testing.assert_allclose(clipped, [0.5, 2.0, 3.0, 3.0, 0.0])
    assert isinstance(report, WeightReport)
    assert int(report.n) == 4
    assert int(report.n_clipped) == 2
    np.testing.assert_allclose(report.fraction_clipped, 0.5)
    np.testing.assert_allclose(report.max_weight_before, 8.0)
    np.testing.assert_allclose(report.max_weight_after, 3.0)
    np.testing.assert_allclose(report.effective_sample_size, 8.5**2 / (0.25 + 4 + 9 + 9))
    assert report.to_dict()["n_clipped"] == 2

    unclipped, report = clip_weights(weights, None)
    np.testing.assert_allclose(unclipped, weights)
    assert int(report.n_clipped) == 0 and int(report.n) == 5
    # THE clip: 0 clips nothing (as None), a negative bound is refused.
    zero, report = clip_weights(weights, 0.0)
    np.testing.assert_allclose(zero, weights)
    assert int(report.n_clipped) == 0
    with pytest.raises(ValueError, match="max_weight"):
        clip_weights(weights, -1.0)


def test_ope_clips_with_the_one_clip():
    assert clip_weights is the_clip.clip_weights
    assert WeightReport is the_clip.ClipReport


def test_importance_weights_are_the_estimators_weights_with_their_report():
    target = jnp.array([0.2, 0.5, 0.9, 0.1])
    logging = jnp.array([0.1, 0.5, 0.1, 0.4])
    where = jnp.array([True, True, True, False])
    weights, report = importance_weights(target, logging, clip=4.0, where=where)
    np.testing.assert_allclose(weights, [2.0, 1.0, 4.0, 0.0], rtol=1e-6)
    assert int(report.n) == 3 and int(report.n_clipped) == 1
    np.testing.assert_allclose(report.max_weight_before, 9.0, rtol=1e-6)
    rewards = jnp.array([1.0, 0.0, 1.0, 5.0])
    estimate = ips(rewards, target, logging, clip=4.0, where=where)
    np.testing.assert_allclose(estimate.value, (2.0 + 4.0) / 3, rtol=1e-6)
    np.testing.assert_allclose(estimate.n_eff, report.effective_sample_size, rtol=1e-6)
    marginals = jnp.arange(4.0).reshape(1, 2, 2)
    np.testing.assert_allclose(position_based_marginals(marginals, jnp.array([1.0, 0.5])),
                               [[0.5, 2.0 + 1.5]])


def test_clip_in_estimators(data):
    ipw = (data["rewards"], data["target_probs"], data["logging_probs"])
    weights = data["target_probs"] / data["logging_probs"]
    cap = float(jnp.median(weights))
    expected = jnp.mean(jnp.minimum(weights, cap) * data["rewards"])
    np.testing.assert_allclose(ips(*ipw, clip=cap).value, expected, rtol=1e-6)
    assert float(ips(*ipw, clip=cap).value) < float(ips(*ipw).value)
    # clip=None is no clipping, and so is a clip above every weight
    np.testing.assert_allclose(ips(*ipw).value, jnp.mean(weights * data["rewards"]), rtol=1e-6)
    big = float(weights.max()) * 2
    for estimator in (ips, snips):
        np.testing.assert_allclose(estimator(*ipw, clip=big).value, estimator(*ipw).value)
    args = bandit_args(data, "wrong")
    np.testing.assert_allclose(dr(*args, clip=big).value, dr(*args).value)
    clipped_dr = dr(*args, clip=cap)
    expected_dr = jnp.mean(
        data["wrong_target"] + jnp.minimum(weights, cap) * (data["rewards"] - data["wrong_logged"])
    )
    np.testing.assert_allclose(clipped_dr.value, expected_dr, rtol=1e-5)


# --- masking and jit ------------------------------------------------------------------------


def _call(name: str, arrays: dict, where=None) -> Estimate:
    args = (
        arrays["rewards"],
        arrays["target_probs"],
        arrays["logging_probs"],
        arrays["wrong_logged"],
        arrays["wrong_target"],
    )
    if name in ("ips", "snips"):
        return {"ips": ips, "snips": snips}[name](*args[:3], clip=2.0, where=where)
    if name == "dm":
        return dm(args[4], where=where)
    if name == "switch_dr":
        return switch_dr(*args, threshold=1.5, where=where)
    if name == "dros":
        return dros(*args, shrinkage=2.0, where=where)
    return {"dr": dr, "sndr": sndr}[name](*args, clip=2.0, where=where)


BANDIT_ESTIMATORS = ["ips", "snips", "dm", "dr", "sndr", "switch_dr", "dros"]


@pytest.mark.parametrize("name", BANDIT_ESTIMATORS)
def test_where_mask_equals_dropping_rows(data, name):
    where = jnp.arange(300) % 3 != 0
    # padding rows hold garbage that must not leak in, a zero logging probability included
    padded = dict(data)
    padded["logging_probs"] = jnp.where(where, data["logging_probs"], 0.0)
    padded["rewards"] = jnp.where(where, data["rewards"], jnp.nan)
    padded["wrong_target"] = jnp.where(where, data["wrong_target"], 1e6)
    masked = _call(name, padded, where=where)
    kept = {k: v[np.asarray(where)] for k, v in data.items()}
    sliced = _call(name, kept)
    for got, want in zip(masked, sliced, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("name", BANDIT_ESTIMATORS)
def test_jit_equals_eager(data, name):
    where = jnp.arange(300) < 250
    eager = _call(name, data, where=where)
    jitted = jax.jit(lambda arrays, mask: _call(name, arrays, where=mask))(data, where)
    for got, want in zip(jitted, eager, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_everything_masked_is_nan_not_an_error(data):
    nothing = jnp.zeros(300, bool)
    estimate = ips(data["rewards"], data["target_probs"], data["logging_probs"], where=nothing)
    assert np.isnan(float(estimate.value)) and np.isnan(float(estimate.stderr))
    assert float(estimate.n_eff) == 0.0


def test_gradients_are_finite_with_padding_rows():
    def value(target):
        return dr(REWARDS, target, LOGGING.at[3].set(0.0), Q_LOGGED, Q_TARGET,
                  where=jnp.arange(4) < 3).value

    gradient = jax.grad(value)(TARGET)
    assert np.all(np.isfinite(np.asarray(gradient)))
    assert float(gradient[3]) == 0.0


# --- slates: 4 items, 2 slots, position-based clicks ----------------------------------------

N_ITEMS = 4
EXAMINATION = jnp.array([0.9, 0.5])
ATTRACTION = jnp.array([0.8, 0.5, 0.3, 0.2])
SLATES = jnp.array(list(itertools.permutations(range(N_ITEMS), 2)))  # [12, 2], distinct items
SLATE_LOGGING = jax.nn.softmax(jnp.linspace(-0.5, 0.5, len(SLATES)))
SLATE_TARGET = jax.nn.softmax(-jnp.sum(SLATES * jnp.array([1.0, 0.3]), axis=1) * 0.4)
SLATE_TRUTH = float(
    jnp.sum(SLATE_TARGET * jnp.sum(EXAMINATION * ATTRACTION[SLATES], axis=1))
)


def marginals(slate_probs: jax.Array) -> jax.Array:
    """`[N_ITEMS, 2]`: probability that each item is at each slot, by exact enumeration."""
    one_hot = jax.nn.one_hot(SLATES, N_ITEMS)  # [12, 2, N_ITEMS]
    return jnp.einsum("s,ski->ik", slate_probs, one_hot)


@functools.partial(jax.jit, static_argnames="n")
def simulate_slates(key: jax.Array, n: int = N_ROUNDS) -> dict:
    slate_key, click_key = jax.random.split(key)
    chosen = SLATES[jax.random.categorical(slate_key, jnp.log(SLATE_LOGGING), shape=(n,))]
    clicks = jax.random.bernoulli(click_key, EXAMINATION * ATTRACTION[chosen]).astype(jnp.float32)
    target, logging = marginals(SLATE_TARGET), marginals(SLATE_LOGGING)
    slots = jnp.arange(2)
    return {
        "rewards": clicks,
        "target": target[chosen, slots],  # [n, 2]: item at slot k, at slot k
        "logging": logging[chosen, slots],
        "target_pbm": target[chosen],  # [n, 2, 2]: item at slot k, at slot j
        "logging_pbm": logging[chosen],
    }


def slate_estimates(key: jax.Array) -> dict[str, Estimate]:
    data = simulate_slates(key)
    return {
        "iips": iips(data["rewards"], data["target"], data["logging"]),
        "pbm_ips": pbm_ips(data["rewards"], data["target_pbm"], data["logging_pbm"], EXAMINATION),
    }


@pytest.fixture(scope="module")
def slate_results() -> dict[str, Estimate]:
    keys = jax.random.split(jax.random.key(4), N_KEYS)
    return jax.jit(jax.vmap(slate_estimates))(keys)


def test_slate_problem_is_informative():
    logging_value = float(
        jnp.sum(SLATE_LOGGING * jnp.sum(EXAMINATION * ATTRACTION[SLATES], axis=1))
    )
    assert abs(SLATE_TRUTH - logging_value) > 0.03
    np.testing.assert_allclose(marginals(SLATE_LOGGING).sum(axis=0), [1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("name", ["iips", "pbm_ips"])
def test_slate_estimators_are_unbiased_under_position_based_clicks(slate_results, name):
    values = np.asarray(slate_results[name].value)
    standard_error = values.std(ddof=1) / np.sqrt(N_KEYS)
    assert abs(values.mean() - SLATE_TRUTH) < 4 * standard_error, (values.mean(), SLATE_TRUTH)
    mean_stderr = float(np.mean(np.asarray(slate_results[name].stderr)))
    assert 0.85 < mean_stderr / values.std(ddof=1) < 1.15


def test_pbm_ips_has_lower_variance_than_iips(slate_results):
    assert np.std(np.asarray(slate_results["pbm_ips"].value)) < np.std(
        np.asarray(slate_results["iips"].value)
    )


def test_one_slot_slate_estimators_equal_ips(data):
    rewards, target, logging = data["rewards"], data["target_probs"], data["logging_probs"]
    reference = ips(rewards, target, logging, clip=2.0)
    independent = iips(rewards[:, None], target[:, None], logging[:, None], clip=2.0)
    position = pbm_ips(
        rewards[:, None], target[:, None, None], logging[:, None, None], jnp.array([0.7]), clip=2.0
    )
    for estimate in (independent, position):
        for got, want in zip(estimate, reference, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5)


def test_slate_where_mask_equals_dropping_rows():
    data = simulate_slates(jax.random.key(5), n=60)
    where = jnp.arange(60) % 4 != 1
    logging = jnp.where(where[:, None], data["logging"], 0.0)
    masked = iips(data["rewards"], data["target"], logging, where=where)
    keep = np.asarray(where)
    sliced = iips(data["rewards"][keep], data["target"][keep], data["logging"][keep])
    for got, want in zip(masked, sliced, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5)
    masked = pbm_ips(
        data["rewards"], data["target_pbm"], data["logging_pbm"], EXAMINATION, where=where
    )
    sliced = pbm_ips(
        data["rewards"][keep], data["target_pbm"][keep], data["logging_pbm"][keep], EXAMINATION
    )
    for got, want in zip(masked, sliced, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5)


# --- registry, relative error and host-side checks ------------------------------------------


def test_registry_and_relative_error():
    assert ESTIMATORS == (
        "ips", "snips", "dm", "dr", "sndr", "switch_dr", "dros", "pbm_ips", "iips"
    )
    np.testing.assert_allclose(relative_error(Estimate(1.1, 0.0, 1.0), 1.0), 0.1, rtol=1e-5)
    np.testing.assert_allclose(relative_error(jnp.array(-3.0), -2.0), 0.5, rtol=1e-6)


def test_check_ope_inputs_accepts_valid_inputs(data):
    check_ope_inputs(
        data["rewards"], data["target_probs"], data["logging_probs"],
        logged_expected_rewards=data["wrong_logged"],
        target_expected_rewards=data["wrong_target"],
    )
    slates = simulate_slates(jax.random.key(6), n=20)
    check_ope_inputs(slates["rewards"], slates["target"], slates["logging"])
    check_ope_inputs(
        slates["rewards"], slates["target_pbm"], slates["logging_pbm"], examination=EXAMINATION
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"logging_probs": [0.5, 0.0, 0.5, 0.5]}, r"logging_probs: row 1"),
        ({"logging_probs": [0.5, 0.5, np.nan, 0.5]}, r"logging_probs: row 2"),
        ({"logging_probs": [0.5, 0.5, 0.5, 1.5]}, r"logging_probs: row 3"),
        ({"logging_probs": [-0.1, 0.5, 0.5, 0.5]}, r"logging_probs: row 0"),
        ({"target_probs": [0.5, 0.5, -0.1, 0.5]}, r"target_probs: row 2"),
        ({"target_probs": [0.5, 1.2, 0.5, 0.5]}, r"target_probs: row 1"),
        ({"target_probs": [0.5, 0.5, 0.5]}, r"logging_probs: shape"),
        ({"rewards": [1.0, np.inf, 0.0, 1.0]}, r"rewards: row 1"),
        ({"logged_expected_rewards": [0.1, 0.2]}, r"logged_expected_rewards: expected shape"),
    ],
)
def test_check_ope_inputs_names_the_argument_and_row(change, message):
    arguments = {
        "rewards": [1.0, 0.0, 1.0, 1.0],
        "target_probs": [0.5, 0.5, 0.5, 0.5],
        "logging_probs": [0.5, 0.5, 0.5, 0.5],
    }
    keywords = {}
    for name, value in change.items():
        (arguments if name in arguments else keywords)[name] = value
    with pytest.raises(PropensityError, match=message):
        check_ope_inputs(**arguments, **keywords)


def test_check_ope_inputs_ignores_padding_and_checks_slates():
    check_ope_inputs([1.0, 0.0], [0.5, 0.5], [0.5, 0.0], where=[True, False])
    with pytest.raises(PropensityError, match=r"target_probs: shape"):
        check_ope_inputs(np.ones((3, 2)), np.ones((3, 3)), np.ones((3, 3)))
    marginal = np.full((2, 2, 2), 0.5)
    bad = marginal.copy()
    bad[1, 0] = 0.0  # the item logged at slot 0 of row 1 could never be shown
    with pytest.raises(PropensityError, match=r"logging_probs: row 1"):
        check_ope_inputs(np.ones((2, 2)), marginal, bad, examination=[0.9, 0.5])
    with pytest.raises(PropensityError, match="examination"):
        check_ope_inputs(np.ones((2, 2)), marginal, marginal)
