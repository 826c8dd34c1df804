"""Slate policies: exact ordered-slate probabilities, sampling frequencies, slot and inclusion
marginals, rows per user, availability masks, checked against full enumeration."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.errors import ConfigError
from causalrec_jax.sim import policies
from causalrec_jax.sim.env import Observation
from causalrec_jax.sim.policies import (
    epsilon_greedy_policy,
    inclusion_probabilities,
    make_policy,
    sample_plackett_luce,
    slate_log_prob,
    slate_policy,
    slot_probabilities,
    softmax_policy,
    top_k_policy,
    uniform_policy,
)

N_ITEMS = 5
N_SAMPLES = 20_000
# One key array for every sampling call, so the jitted sampler compiles once per policy shape.
KEYS = jax.random.split(jax.random.key(0), N_SAMPLES)
SCORES = jnp.array([0.3, -1.0, 1.2, 0.0, 0.8])
USER_SCORES = jnp.array(
    [[0.3, -1.0, 1.2, 0.0, 0.8], [2.0, 0.5, -0.5, 1.0, 0.0], [-1.0, 0.0, 0.5, 1.5, 0.2]]
)


def _obs(user: int = 0) -> Observation:
    return Observation(jnp.int32(user), jnp.int32(0))


@jax.jit
def _sample(policy, user, keys):
    return jax.vmap(lambda key: slate_policy(policy, _obs_traced(user), key))(keys)


def _obs_traced(user):
    return Observation(jnp.asarray(user, jnp.int32), jnp.int32(0))


@jax.jit
def _log_probs(policy, user, slates):
    return jax.vmap(lambda slate: slate_log_prob(policy, user, slate))(slates)


def _ordered_slates(k: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(N_ITEMS), k)), np.int32)


def _codes(slates: np.ndarray) -> np.ndarray:
    return (slates * N_ITEMS ** np.arange(slates.shape[-1])).sum(axis=-1)


def _enumerate(policy, user=0):
    """`(slates [S, K], probabilities [S])` over every ordered slate of distinct items."""
    k = policy.top_items.shape[1]
    slates = _ordered_slates(k)
    return slates, np.asarray(jnp.exp(_log_probs(policy, user, jnp.asarray(slates))), np.float64)


def _slot_table(slates, probabilities):
    """`[n_items, K]` P(item at slot j) by enumeration."""
    table = np.zeros((N_ITEMS, slates.shape[1]))
    for slot in range(slates.shape[1]):
        np.add.at(table[:, slot], slates[:, slot], probabilities)
    return table


# K = 3 everywhere: policies of one shape and static fields share one compiled sampler.
POLICIES = {
    "softmax": lambda: softmax_policy(SCORES, 3),
    "softmax_hot": lambda: softmax_policy(SCORES, 3, temperature=0.5),
    "uniform": lambda: uniform_policy(N_ITEMS, 3),
    "top_k": lambda: top_k_policy(SCORES, 3),
    "epsilon_greedy": lambda: epsilon_greedy_policy(SCORES, 3, 0.3),
    "epsilon_greedy_shuffle": lambda: epsilon_greedy_policy(SCORES, 3, 0.3, shuffle=True),
    "shuffled_top_k": lambda: epsilon_greedy_policy(SCORES, 3, 0.0, shuffle=True),
}
FLAT = ("uniform", "epsilon_greedy", "epsilon_greedy_shuffle", "shuffled_top_k")


@pytest.fixture(scope="module")
def sampled():
    """Per policy: enumeration and `N_SAMPLES` sampled slates (one jit per static variant)."""
    out = {}
    for name, build in POLICIES.items():
        policy = build()
        slates, log_probs = _sample(policy, 0, KEYS)
        all_slates, probabilities = _enumerate(policy)
        out[name] = dict(policy=policy, slates=np.asarray(slates), log_probs=log_probs,
                         all_slates=all_slates, probabilities=probabilities)
    return out


@pytest.mark.parametrize("name", list(POLICIES))
def test_ordered_slate_probabilities_sum_to_one(sampled, name):
    probabilities = sampled[name]["probabilities"]
    assert abs(probabilities.sum() - 1.0) < 1e-5
    assert np.all(probabilities >= 0)


@pytest.mark.parametrize("name", list(POLICIES))
def test_sampling_frequencies_match_slate_probabilities(sampled, name):
    case = sampled[name]
    slates = case["slates"]
    k = slates.shape[1]
    assert slates.dtype == np.int32
    assert np.all((slates >= 0) & (slates < N_ITEMS))
    assert all(len(set(row)) == k for row in slates[:2000])
    counts = np.bincount(_codes(slates), minlength=N_ITEMS**k)[_codes(case["all_slates"])]
    assert counts.sum() == N_SAMPLES  # every sampled slate is an ordered slate of distinct items
    expected = case["probabilities"]
    stderr = np.sqrt(expected * (1 - expected) / N_SAMPLES)
    assert np.max(np.abs(counts / N_SAMPLES - expected) - 4.5 * stderr) < 1e-3
    # The reported log_prob is the one of the sampled slate.
    np.testing.assert_allclose(
        case["log_probs"], _log_probs(case["policy"], 0, jnp.asarray(slates)), rtol=1e-6
    )


def test_softmax_first_slot_and_plackett_luce_formula():
    policy = softmax_policy(SCORES, 3, temperature=2.0)
    p = np.asarray(jax.nn.softmax(SCORES / 2.0), np.float64)
    slates, probabilities = _enumerate(policy)
    for slate, probability in zip(slates[::7], probabilities[::7], strict=True):
        a, b, c = slate
        want = p[a] * p[b] / (1 - p[a]) * p[c] / (1 - p[a] - p[b])
        np.testing.assert_allclose(probability, want, rtol=1e-5)


def test_top_k_is_deterministic_with_log_prob_zero(sampled):
    case = sampled["top_k"]
    np.testing.assert_array_equal(case["slates"], np.broadcast_to([2, 4, 0], (N_SAMPLES, 3)))
    np.testing.assert_array_equal(case["log_probs"], 0.0)


def test_shuffled_top_k_is_a_uniform_order_of_the_top_set(sampled):
    case = sampled["shuffled_top_k"]
    top_set = {0, 2, 4}
    for slate, probability in zip(case["all_slates"], case["probabilities"], strict=True):
        want = 1 / 6 if set(slate) == top_set else 0.0
        assert abs(probability - want) < 1e-6
    assert {frozenset(row) for row in case["slates"][:500]} == {frozenset(top_set)}


def test_sample_plackett_luce_returns_k_distinct_items():
    # Rounds of one candidate: many rounds, each adding at most one item.
    round_size = 1
    policy = softmax_policy(SCORES, 5, temperature=0.5)  # K = n_items: every item, hardest case
    keys = jax.random.split(jax.random.key(3), 500)
    draws = jax.jit(jax.vmap(
        lambda key: sample_plackett_luce(key, policy, jnp.int32(0), 5, round_size=round_size)
    ))(keys)
    np.testing.assert_array_equal(np.sort(np.asarray(draws), axis=1),
                                  np.broadcast_to(np.arange(5), (500, 5)))
    # Successive sampling is Plackett-Luce: the first item follows the softmax.
    first = np.bincount(np.asarray(draws[:, 0]), minlength=5) / 500
    np.testing.assert_allclose(first, jax.nn.softmax(SCORES / 0.5), atol=0.08)


@pytest.mark.parametrize("name", FLAT + ("top_k",))
def test_slot_probabilities_exact(sampled, name):
    case = sampled[name]
    policy = case["policy"]
    k = policy.top_items.shape[1]
    table = _slot_table(case["all_slates"], case["probabilities"])
    np.testing.assert_allclose(table.sum(axis=0), 1.0, atol=1e-5)
    # Cover the catalogue with sets of K items (each call takes exactly K items).
    for start in range(0, N_ITEMS, k):
        items = (np.arange(start, start + k) % N_ITEMS).astype(np.int32)
        result = slot_probabilities(policy, jnp.int32(0), jnp.asarray(items))
        assert result.probabilities.shape == (k, k)
        assert bool(result.exact)
        np.testing.assert_allclose(result.probabilities, table[items], atol=1e-6)


def test_slot_probabilities_monte_carlo_for_softmax(sampled):
    case = sampled["softmax"]
    table = _slot_table(case["all_slates"], case["probabilities"])
    estimate = jax.jit(lambda policy, items: slot_probabilities(
        policy, jnp.int32(0), items, key=jax.random.key(7), n_samples=4000
    ))
    for items in ([0, 1, 2], [3, 4, 0]):
        result = estimate(case["policy"], jnp.array(items, jnp.int32))
        assert not bool(result.exact)
        np.testing.assert_allclose(result.probabilities[:, 0], table[items, 0], atol=1e-6)
        np.testing.assert_allclose(result.probabilities, table[items], atol=0.02)


@pytest.mark.parametrize("name", FLAT)
def test_inclusion_probabilities_match_enumeration(sampled, name):
    case = sampled[name]
    k = case["all_slates"].shape[1]
    inclusion = np.asarray(inclusion_probabilities(case["policy"], jnp.int32(0)))
    want = _slot_table(case["all_slates"], case["probabilities"]).sum(axis=1)
    np.testing.assert_allclose(inclusion, want, atol=1e-6)
    assert abs(inclusion.sum() - k) < 1e-5


def test_inclusion_probabilities_of_top_k():
    inclusion = inclusion_probabilities(top_k_policy(SCORES, 3), jnp.int32(0))
    np.testing.assert_allclose(inclusion, [1.0, 0.0, 1.0, 0.0, 1.0])


def test_inclusion_probabilities_rejects_softmax():
    with pytest.raises(ConfigError, match="Plackett"):
        inclusion_probabilities(softmax_policy(SCORES, 3), jnp.int32(0))


def test_make_policy_validates():
    with pytest.raises(ConfigError, match="temperature"):
        softmax_policy(SCORES, 3, temperature=0.0)
    with pytest.raises(ConfigError, match="epsilon"):
        make_policy(SCORES, 3, epsilon=1.5)
    with pytest.raises(ConfigError, match="slate_size"):
        uniform_policy(N_ITEMS, 3, available=jnp.array([True, False, True, False, False]))


def test_shared_row_and_per_user_rows():
    shared = softmax_policy(SCORES, 3)
    per_user = softmax_policy(USER_SCORES, 3)
    assert shared.probabilities.shape == (1, N_ITEMS)
    assert per_user.probabilities.shape == (3, N_ITEMS)
    slates = jnp.asarray(_ordered_slates(3))
    # A shared row gives every user the same distribution.
    np.testing.assert_array_equal(_log_probs(shared, 0, slates), _log_probs(shared, 2, slates))
    for user in range(3):
        alone = softmax_policy(USER_SCORES[user], 3)
        np.testing.assert_allclose(
            _log_probs(per_user, user, slates), _log_probs(alone, 0, slates), rtol=1e-5
        )
    # Sampling reads the user's row: user 1 and user 2 get different slate distributions.
    for user in range(3):
        first = np.bincount(np.asarray(_sample(per_user, user, KEYS)[0][:, 0]), minlength=5)
        np.testing.assert_allclose(first / N_SAMPLES, jax.nn.softmax(USER_SCORES[user]),
                                   atol=0.015)
    top = top_k_policy(USER_SCORES, 3)
    for user in range(3):
        slates, log_probs = _sample(top, user, KEYS)
        np.testing.assert_array_equal(slates[3], jnp.argsort(-USER_SCORES[user])[:3])
        np.testing.assert_array_equal(log_probs, 0.0)


@pytest.mark.parametrize("kind", ["softmax", "uniform", "top_k", "epsilon_greedy"])
def test_unavailable_items_are_never_shown(kind):
    available = jnp.array([True, False, True, True, True])
    policy = {
        "softmax": lambda: softmax_policy(SCORES, 3, available=available),
        "uniform": lambda: uniform_policy(N_ITEMS, 3, available=available),
        "top_k": lambda: top_k_policy(jnp.array([0.0, 3.0, 1.0, 1.5, 2.5]), 3,
                                      available=available),
        "epsilon_greedy": lambda: epsilon_greedy_policy(SCORES, 3, 0.5, available=available),
    }[kind]()
    slates, _ = _sample(policy, 0, KEYS)
    slates = np.asarray(slates)
    assert not np.isin(slates, 1).any()
    all_slates, probabilities = _enumerate(policy)
    assert abs(probabilities.sum() - 1) < 1e-5
    assert np.all(probabilities[np.isin(all_slates, 1).any(axis=1)] == 0)
    assert np.all(probabilities[~np.isin(all_slates, 1).any(axis=1)] > 0) or kind == "top_k"
    if kind == "top_k":
        np.testing.assert_array_equal(slates[0], [4, 3, 2])
    if kind in ("uniform", "epsilon_greedy"):
        inclusion = inclusion_probabilities(policy, jnp.int32(0))
        assert float(inclusion[1]) == 0.0
        assert abs(float(inclusion.sum()) - 3) < 1e-5


# --- bugs ----------------------------------------------------------------------------------


def test_peaked_softmax_slate_probabilities_sum_to_one():
    policy = softmax_policy(jnp.arange(5.0), 3, temperature=0.1)
    _, probabilities = _enumerate(policy)
    assert np.all(probabilities <= 1.0)
    assert abs(probabilities.sum() - 1.0) < 1e-3


def _bounded_while_loop(record, cap=1000):
    """`lax.while_loop` that stops after `cap` iterations and records when it had to."""
    original = jax.lax.while_loop

    def bounded(cond_fun, body_fun, init):
        def cond(carry):
            return cond_fun(carry[0]) & (carry[1] < cap)

        def body(carry):
            return body_fun(carry[0]), carry[1] + 1

        state, iterations = original(cond, body, (init, 0))
        if not isinstance(iterations, jax.core.Tracer):
            record.append(int(iterations))
        return state

    return bounded


@pytest.mark.parametrize(
    "build, want",
    [
        (lambda: top_k_policy(jnp.array([500.0, 3.0, 2.0, 1.0, 0.0]), 3), [0, 1, 2]),
        (lambda: softmax_policy(jnp.arange(5.0), 3, temperature=0.01), [4, 3, 2]),
    ],
    ids=["top_k_popularity_counts", "softmax_low_temperature"],
)
def test_peaked_scores_do_not_hang(monkeypatch, build, want):
    iterations: list[int] = []
    monkeypatch.setattr(policies.jax.lax, "while_loop", _bounded_while_loop(iterations))
    slate, _ = slate_policy(build(), _obs(), jax.random.key(0))
    assert not any(count >= 1000 for count in iterations), "the sampling loop hit the cap"
    np.testing.assert_array_equal(slate, want)
