"""The planted world: its draws follow the config, and its truth is the world's counterfactuals."""

from __future__ import annotations

import dataclasses
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax import streams
from causalrec_jax.config import DataConfig, PlantedConfig, load_config
from causalrec_jax.data.formats import get_format
from causalrec_jax.data.loader import load_split
from causalrec_jax.errors import ConfigError
from causalrec_jax.sim import formats as sim_formats
from causalrec_jax.sim.planted import (
    PAD,
    PlantedHistories,
    PlantedParams,
    PlantedSizes,
    PlantedWorld,
    planted_truth,
    sample_user,
    sample_users,
    simulate_planted,
    user_keys,
)

# One size for the statistics (one compilation; the parameters are traced).
BIG = PlantedSizes(n_users=40_000, n_items=60, history_length=4, n_and_rules=2, n_or_rules=2,
                   n_topics=4)
SMALL = PlantedSizes(n_users=300, n_items=60, history_length=8, n_and_rules=2, n_or_rules=2,
                     n_topics=4)


def _draw(sizes, seed=0, **params):
    return jax.device_get(sample_users(jax.random.key(seed), sizes, PlantedParams(**params)))


def _within(estimate, truth, n, sigmas=4.0):
    """|estimate - truth| within `sigmas` binomial standard errors of n draws."""
    stderr = np.sqrt(max(truth * (1 - truth), 1e-4) / max(n, 1))
    return abs(estimate - truth) <= sigmas * stderr


def test_shapes_are_static_and_histories_hold_what_was_consumed():
    world, h = _draw(SMALL)
    capacity = SMALL.history_length + 4 * SMALL.n_rules
    assert h.items.shape == (SMALL.n_users, capacity)
    assert h.antecedent_consumed.shape == (SMALL.n_users, SMALL.n_rules, 2)
    assert h.consequent_position.shape == (SMALL.n_users, SMALL.n_rules)
    rules = {*np.asarray(world.antecedents).ravel().tolist(), *world.consequent.tolist(),
             *world.confounder.tolist()}
    assert len(rules) == 4 * SMALL.n_rules and np.asarray(world.is_rule_item).sum() == len(rules)
    consumed = (h.antecedent_consumed.sum((1, 2)) + h.confounder_consumed.sum(1)
                + h.consequent_consumed.sum(1))
    np.testing.assert_array_equal(h.length, SMALL.history_length + consumed)
    for user in range(SMALL.n_users):
        items = h.items[user]
        assert (items[: h.length[user]] != PAD).all() and (items[h.length[user]:] == PAD).all()
        real = items[: h.length[user]]
        assert len(set(real.tolist())) == len(real)  # no item twice
        # Exactly the base items and the consumed rule items, each at its recorded position.
        assert sum(item not in rules for item in real.tolist()) == SMALL.history_length
        for rule in range(SMALL.n_rules):
            for slot, item in ((h.consequent_position, world.consequent[rule]),
                               (h.confounder_position, world.confounder[rule])):
                position = slot[user, rule]
                assert (position >= 0) == (item in real)
                assert position < 0 or items[position] == item
            for side in range(2):
                position = h.antecedent_position[user, rule, side]
                assert (position >= 0) == h.antecedent_consumed[user, rule, side]
                assert position < 0 or items[position] == world.antecedents[rule, side]
        # A rule's antecedents and confounder come before its consequent.
        for rule in range(SMALL.n_rules):
            effect = h.consequent_position[user, rule]
            causes = np.append(h.antecedent_position[user, rule], h.confounder_position[user, rule])
            assert effect < 0 or (causes < effect).all()


def test_same_seed_same_world_another_seed_another():
    first, again, other = _draw(SMALL, 3), _draw(SMALL, 3), _draw(SMALL, 4)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1].items, other[1].items)


def test_vmapped_users_equal_a_loop_over_users():
    key = jax.random.key(7)
    params = PlantedParams()
    world, batch = sample_users(key, SMALL, params)
    keys = user_keys(key, jnp.arange(SMALL.n_users))
    for user in (0, 1, 17, SMALL.n_users - 1):
        # The user's own key, derived by hand, gives that user's row.
        own = streams.index(streams.derive(key, streams.Planted.USERS), user)
        assert np.array_equal(jax.random.key_data(own), jax.random.key_data(keys[user]))
        alone = sample_user(own, world, SMALL, params)
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(batch), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[user])


def test_rules_fire_at_the_configured_strengths():
    world, h = _draw(BIG, rule_strength=0.8, consequent_rate=0.05, antecedent_rate=0.3,
                     topic_strength=0.0)
    a, b = h.antecedent_consumed[..., 0], h.antecedent_consumed[..., 1]
    c = h.consequent_consumed
    assert _within(a.mean(), 0.3, a.size) and _within(b.mean(), 0.3, b.size)
    is_and = np.asarray(world.rule_is_and)
    for rule in range(BIG.n_rules):
        holds = (a[:, rule] & b[:, rule]) if is_and[rule] else (a[:, rule] | b[:, rule])
        np.testing.assert_array_equal(holds, h.condition[:, rule])
        assert _within(c[holds, rule].mean(), 0.8, holds.sum()), rule
        assert _within(c[~holds, rule].mean(), 0.05, (~holds).sum()), rule
        # Caused: the condition held and C would not have come at the base rate.
        caused = h.caused[:, rule]
        assert not (caused & ~(holds & c[:, rule])).any()
        assert _within(caused[holds].mean(), 0.8 - 0.05, holds.sum()), rule
    # A consequent comes soon after the later antecedent: later with a longer lag.
    gaps = []
    for lag in (0.05, 0.5):
        _, lagged = _draw(BIG, consequent_lag=lag, topic_strength=0.0)
        both = lagged.consequent_consumed & lagged.antecedent_consumed.all(axis=2)
        gap = lagged.consequent_position - lagged.antecedent_position.max(axis=2)
        assert (gap[both] >= 1).all()
        gaps.append(gap[both].mean())
    assert gaps[0] < 1.5 and gaps[1] > gaps[0] + 0.5, gaps
    # AND fires on both antecedents (0.09), OR on either (0.51).
    assert _within(h.condition[:, is_and].mean(), 0.09, h.condition[:, is_and].size)
    assert _within(h.condition[:, ~is_and].mean(), 0.51, h.condition[:, ~is_and].size)


@pytest.mark.parametrize("rho", [0.0, 0.5, 1.0])
def test_the_confounder_copies_the_first_antecedent_at_rho(rho):
    _, h = _draw(BIG, rho=rho, antecedent_rate=0.3, topic_strength=0.0)
    a = h.antecedent_consumed[..., 0].ravel()
    d = h.confounder_consumed.ravel()
    assert _within(d.mean(), 0.3, d.size)  # the marginal rate of A
    correlation = np.corrcoef(a, d)[0, 1]
    assert abs(correlation - rho) < 4 / np.sqrt(a.size), correlation
    if rho == 1.0:
        np.testing.assert_array_equal(a, d)  # identical: not identifiable from the log
    # The confounder never moves the consequent: P(C | cond, D) = P(C | cond, not D).
    cond, c = h.condition.ravel(), h.consequent_consumed.ravel()
    if 0 < rho < 1:
        with_d, without_d = c[cond & d].mean(), c[cond & ~d].mean()
        assert abs(with_d - without_d) < 4 * np.sqrt(0.09 * (1 / (cond & d).sum()
                                                             + 1 / (cond & ~d).sum()))


def test_topic_and_popularity_shape_the_base_process():
    world, h = _draw(BIG, topic_strength=3.0, popularity_sigma=1.0)
    topic = np.asarray(world.item_topic)
    base = h.items[:, : BIG.history_length]  # all users consume at least these many items
    rule_item = np.asarray(world.is_rule_item)[base]
    own = (topic[base] == h.user_topic[:, None])[~rule_item]
    assert own.mean() > 0.6  # 4 topics: 0.25 without the taste
    # Users of a rule's topic consume its antecedents more: sigmoid(logit(0.15) + 3) = 0.78.
    rule_topic = np.asarray(world.rule_topic)
    mine = h.user_topic[:, None] == rule_topic[None, :]
    boosted = 1 / (1 + np.exp(-(np.log(0.15 / 0.85) + 3.0)))
    assert _within(h.antecedent_consumed[..., 0][mine].mean(), boosted, mine.sum())
    assert _within(h.antecedent_consumed[..., 0][~mine].mean(), 0.15, (~mine).sum())
    # Popular base items are consumed more.
    z = np.asarray(world.standardized_log_popularity)
    counts = np.bincount(h.items[h.items != PAD], minlength=BIG.n_items)
    base_items = ~np.asarray(world.is_rule_item)
    assert np.corrcoef(z[base_items], counts[base_items])[0, 1] > 0.5


def _world_condition(kind, antecedents, history):
    a, b = (item in history for item in antecedents)
    return (a and b) if kind == "and" else (a or b)


def test_minimal_sets_are_the_worlds_minimal_counterfactuals_by_brute_force():
    dataset, truth = simulate_planted(PlantedConfig(
        n_users=200, n_items=60, history_length=6, n_and_rules=2, n_or_rules=2, n_topics=3,
        rho=0.5, seed=1))
    assert truth.caused.any() and (~truth.caused).any()
    for index in range(len(truth)):
        history = set(truth.history[index][truth.history[index] != PAD].tolist())
        rule = truth.rule[index]
        kind, antecedents = truth.rule_kind[rule], truth.rule_antecedents[rule].tolist()
        assert truth.item[index] == truth.rule_consequent[rule]
        assert _world_condition(kind, antecedents, history) == truth.condition[index]
        if not truth.caused[index]:
            assert truth.minimal_sets(index) == ()
            continue
        # Every set of at most 3 history items whose removal breaks the rule, kept if minimal.
        breaking = [frozenset(subset) for size in (1, 2, 3)
                    for subset in itertools.combinations(sorted(history), size)
                    if not _world_condition(kind, antecedents, history - set(subset))]
        minimal = {s for s in breaking if not any(other < s for other in breaking)}
        assert set(truth.minimal_sets(index)) == minimal, (kind, index)
        assert truth.confounders(index) == (
            {int(truth.rule_confounder[rule])} & history)
        assert not truth.distractors(index) & {*antecedents, int(truth.rule_confounder[rule])}
    # The dataset holds exactly the histories.
    users = dataset.user
    for index in range(0, len(truth), 7):
        mine = dataset.item[(users == truth.user[index])
                            & (dataset.timestamp < truth.position[index])]
        assert set(mine.tolist()) == set(truth.history[index][truth.history[index] != PAD])


def test_truth_on_a_hand_built_world():
    # Items: rule 0 (AND) = A 0, B 1, C 2, D 3; rule 1 (OR) = A 4, B 5, C 6, D 7; base 8, 9.
    world = PlantedWorld(
        item_topic=jnp.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 1]),
        standardized_log_popularity=jnp.zeros(10),
        is_rule_item=jnp.arange(10) < 8,
        antecedents=jnp.array([[0, 1], [4, 5]]), consequent=jnp.array([2, 6]),
        confounder=jnp.array([3, 7]), rule_topic=jnp.array([0, 1]),
        rule_is_and=jnp.array([True, False]))
    # User 0: 8 0 3 1 2 9 4 6 (C of rule 0 at 4 after A, D, B; C of rule 1 at 7 after A 4).
    # User 1: 4 5 9 6 8 (OR with both antecedents). User 2: 8 2 9 (C 2 at the base rate).
    items = -np.ones((3, 10), np.int32)
    items[0, :8] = [8, 0, 3, 1, 2, 9, 4, 6]
    items[1, :5] = [4, 5, 9, 6, 8]
    items[2, :3] = [8, 2, 9]
    histories = PlantedHistories(
        items=jnp.asarray(items), length=jnp.array([8, 5, 3]), user_topic=jnp.array([0, 1, 0]),
        antecedent_consumed=jnp.array([[[1, 1], [1, 0]], [[0, 0], [1, 1]], [[0, 0], [0, 0]]],
                                      bool),
        confounder_consumed=jnp.array([[1, 0], [0, 0], [0, 0]], bool),
        condition=jnp.array([[1, 1], [0, 1], [0, 0]], bool),
        consequent_consumed=jnp.array([[1, 1], [0, 1], [1, 0]], bool),
        caused=jnp.array([[1, 1], [0, 1], [0, 0]], bool),
        antecedent_position=jnp.array([[[1, 3], [6, -1]], [[-1, -1], [0, 1]],
                                       [[-1, -1], [-1, -1]]]),
        confounder_position=jnp.array([[2, -1], [-1, -1], [-1, -1]]),
        consequent_position=jnp.array([[4, 7], [-1, 3], [1, -1]]))
    truth = planted_truth(world, histories, PlantedParams(rho=0.5))
    assert truth.user.tolist() == [0, 0, 1, 2] and truth.rule.tolist() == [0, 1, 1, 0]
    assert truth.kind.tolist() == ["and", "or", "or", "and"]
    assert truth.position.tolist() == [4, 7, 3, 1]
    np.testing.assert_array_equal(truth.history[0], [8, 0, 3, 1, -1, -1, -1])
    np.testing.assert_array_equal(truth.history[3], [8, -1, -1, -1, -1, -1, -1])
    assert truth.minimal_sets(0) == (frozenset({0}), frozenset({1}))  # AND: {A} or {B}
    assert truth.minimal_sets(1) == (frozenset({4}),)  # OR with A alone
    assert truth.minimal_sets(2) == (frozenset({4, 5}),)  # OR with both: {A, B}
    assert truth.minimal_sets(3) == ()  # at the base rate: no counterfactual
    assert truth.confounders(0) == {3} and truth.confounders(1) == frozenset()
    assert truth.antecedents(0) == {0, 1} and truth.antecedents(1) == {4}
    assert truth.distractors(0) == {8}  # C 2's topic-mate; A, B, D are the rule's own
    assert truth.distractors(2) == {9} and truth.identifiable
    caused = truth.select(truth.caused)
    assert len(caused) == 3 and caused.all_minimal_sets() == truth.all_minimal_sets()[:3]


def test_the_config_section_is_checked():
    with pytest.raises(ConfigError, match="planted.rule_strength"):
        load_config(overrides=["planted.rule_strength=0.01", "planted.consequent_rate=0.02"])
    with pytest.raises(ConfigError, match="planted.n_items"):
        load_config(overrides=["planted.n_items=40"])  # 8 rules x 4 + 20 base items > 40
    with pytest.raises(ConfigError, match="planted.rho"):
        load_config(overrides=["planted.rho=1.5"])
    with pytest.raises(ConfigError, match="did you mean 'rho'"):
        load_config(overrides=["planted.rhoo=0.5"])
    from causalrec_jax.tasks.ordinary import check_ordinary_keys

    # [planted] is read by data.format = "planted" only.
    with pytest.raises(ConfigError, match="key planted.rho"):
        check_ordinary_keys(load_config(overrides=["planted.rho=0.9"]))
    check_ordinary_keys(load_config(overrides=['data.format="planted"', "planted.rho=0.9"]))


def test_the_format_is_registered_and_splits_by_time():
    assert get_format("planted").read_fn is sim_formats.read_planted
    assert not get_format("planted").needs_path
    planted = PlantedConfig(n_users=50, n_items=60, history_length=6, n_and_rules=1,
                            n_or_rules=1, seed=2)
    split, truth = load_split(DataConfig(format="planted", split="leave_one_out"),
                              planted=planted, seed=0)
    direct, _ = simulate_planted(planted)
    assert split.test.n_interactions == 50 and split.valid.n_interactions == 50
    assert split.train.n_interactions == direct.n_interactions - 100
    assert direct.meta["implicit"] and direct.item_ids[5] == "5"
    # The held-out item is the last of each history.
    last = {int(u): int(t) for u, t in zip(direct.user, direct.timestamp, strict=True)}
    held_out = zip(split.test.user, split.test.timestamp, strict=True)
    assert all(int(t) == last[int(u)] for u, t in held_out)
    np.testing.assert_array_equal(truth.caused, simulate_planted(planted)[1].caused)
    changed = dataclasses.replace(planted, rho=1.0)
    assert simulate_planted(changed)[1].rho == 1.0 and not simulate_planted(changed)[1].identifiable


TINY = ["planted.n_users=60", "planted.n_items=50", "planted.history_length=6",
        "planted.n_and_rules=1", "planted.n_or_rules=1", "planted.n_topics=2"]


def test_mf_trains_on_the_planted_world_through_the_command_line(tmp_path):
    from causalrec_jax.cli import main

    sets = sum((["--set", item] for item in TINY), [])
    out = tmp_path / "mf"
    assert main(["train", "--quiet", "--out", str(out), *sets, "--set", 'data.format="planted"',
                 "--set", 'data.split="leave_one_out"', "--set", 'train.loss="bce"',
                 "--set", "train.epochs=1", "--set", "model.embedding_dim=8",
                 "--set", 'eval.metrics=["ndcg", "recall"]', "--set", "eval.ks=[10]",
                 "--set", 'train.early_stopping_metric="ndcg@10"']) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["n_users"] == 60 and metrics["data"]["n_items"] == 50
    assert 0 <= metrics["test"]["ndcg@10"] <= 1


@pytest.mark.slow
def test_the_shipped_sasrec_config_trains_on_a_tiny_planted_world(tmp_path):
    from causalrec_jax.cli import main

    sets = sum((["--set", item] for item in TINY), [])
    out = tmp_path / "sasrec"
    assert main(["train", "--config", "configs/sim_planted.toml", "--quiet", "--out", str(out),
                 *sets, "--set", "train.epochs=1", "--set", "model.embedding_dim=8",
                 "--set", "model.max_len=16", "--set", "model.n_layers=1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["n_users"] == 60 and 0 <= metrics["test"]["ndcg@10"] <= 1
