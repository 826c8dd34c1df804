"""Searches for counterfactual sets: the oracle on hand-built cases with known minimal sets,
greedy and beam against it, vmapped against looped, and the sets really remove the item."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from causalrec_jax.explain import (
    BASELINES,
    beam_search,
    exhaustive_search,
    explain,
    greedy_search,
    make_history_model,
    ordered_removal,
    pair_deletions,
    single_deletions,
    standing,
)
from causalrec_jax.explain.baselines import baseline_order
from causalrec_jax.explain.deletion import DeletionModel
from causalrec_jax.explain.search import (
    greedy_order,
    held_greedy,
    held_prefix,
    held_standing,
    kth_largest,
    prefix_standings,
    step_choice,
    strongest_first,
)
from causalrec_jax.models.sasrec import SASRec


@dataclasses.dataclass(frozen=True)
class ToyScorer:
    """Item 0's score is `base` minus what the deleted positions take away: each position its
    own amount (`single`), and positions 1 and 2 together `synergy` more; the other items'
    scores are fixed. The minimal sets are then known by hand."""

    def __call__(self, data, keep):
        gone = 1.0 - keep
        drop = data["single"] @ gone + data["synergy"] * gone[1] * gone[2]
        return data["others"].at[0].set(data["base"] - drop)


def toy(competitor: float):
    data = {"single": jnp.asarray([4.0, 1.0, 1.0, 0.5, 0.5]), "synergy": jnp.float32(6.0),
            "base": jnp.float32(10.0),
            "others": jnp.asarray([0.0, competitor, 1.0, 0.0, -1.0, -2.0])}
    valid = jnp.ones(5, bool)
    exclude = jnp.zeros(6, bool)
    return ToyScorer(), data, valid, jnp.asarray(0), exclude


def test_kth_largest_equals_top_k():
    """The bitwise search gives `top_k`'s k-th value: ties, zeros of both signs, negative
    numbers, infinities, subnormals, and fewer than k finite values (then -inf)."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(40, 300)).astype(np.float32) * 3
    rows[:, :80] = np.round(rows[:, :80])  # ties
    rows[1] = 0.0
    rows[1, :5] = -0.0
    rows[2, :] = -np.inf
    rows[3, 7:] = -np.inf  # 7 finite values: the 10th is -inf
    rows[4] = -np.abs(rows[4]) - 1.0
    rows[5, :20] = np.inf
    rows[6, :] = 1e-42  # subnormal
    rows[6, :3] = 3e-42
    for k in (1, 3, 10):
        found = jax.jit(jax.vmap(kth_largest, in_axes=(0, None)), static_argnums=1)(
            jnp.asarray(rows), k)
        expected = jax.lax.top_k(jnp.asarray(rows), k)[0][:, k - 1]
        np.testing.assert_array_equal(found, expected)
    with pytest.raises(ValueError, match="k = 301 of 300 float32"):
        kth_largest(jnp.asarray(rows[0]), 301)


def test_standing_is_pessimistic():
    scores = jnp.asarray([2.0, 2.0, 3.0, 1.0, 5.0])
    exclude = jnp.asarray([False, False, False, False, True])
    result = standing(scores, jnp.asarray(0), exclude, 2)
    assert int(result.rank) == 2  # item 2 above, item 1 ties and wins; item 4 excluded
    assert float(result.margin) == 0.0  # the second best other scores 2.0: out of top-2


def test_a_step_deletes_what_leaves_the_item_lowest_then_the_lowest_margin():
    rank = jnp.asarray([2, 5, 5, 7, 9])
    margin = jnp.asarray([-3.0, 0.9, 0.5, jnp.nan, 0.1])
    usable = jnp.asarray([True, True, True, True, False])
    # 4 is not usable, 3 cannot be scored: of the rank-5 pair, the lower margin; not 0, whose
    # margin is the lowest but which leaves the item higher
    assert int(step_choice(rank, margin, usable)) == 2
    assert int(step_choice(rank, margin, usable.at[2].set(False))) == 1
    order = strongest_first(rank, margin, usable)  # position 4 is padding here
    np.testing.assert_array_equal(np.asarray(order), [2, 1, 0, 3, 4])


@dataclasses.dataclass(frozen=True)
class PassingScorer:
    """Deleting position 0 lifts items 1 and 2 past the target (rank 2) but leaves its margin
    over the 3rd item large; deleting 1 lowers the target itself (rank 1, a small margin);
    deleting 2 lifts item 3. Rank first: {0, 2} (item 3 passes too: out of the top-3);
    the margin alone would take 1 first and need 3 deletions."""

    def __call__(self, data, keep):
        gone = 1.0 - keep
        return jnp.stack([10.0 - 4.0 * gone[1], 9.0 + 2.0 * gone[0], 5.0 + 6.0 * gone[0],
                          4.0 + 7.0 * gone[2], jnp.float32(0.0)])


def test_every_search_follows_the_rank_first_rule():
    args = (PassingScorer(), {}, jnp.ones(3, bool), jnp.asarray(0), jnp.zeros(5, bool))
    singles = single_deletions(*args, k=3)
    np.testing.assert_array_equal(np.asarray(singles.after.rank), [2, 1, 1])
    np.testing.assert_allclose(np.asarray(singles.after.margin), [6.0, 2.0, 5.0])
    greedy = greedy_search(*args, k=3, max_size=3)
    assert bool(greedy.found) and int(greedy.size) == 2
    assert tuple(np.asarray(greedy.order)[:2]) == (0, 2)
    beam = beam_search(*args, k=3, max_size=3, beam_width=1)
    assert beam.found and list(np.asarray(beam.order)[:2]) == [0, 2]
    assert int(greedy_order(*args, k=3, n_steps=1)[0]) == 0
    model = DeletionModel(score_fn=PassingScorer(), data={}, history=np.arange(3),
                          semantics="toy", n_items=5)
    effects = explain(model, 4, k=3, method="effects", exclude=np.zeros(5, bool))
    assert effects.size == 0  # item 4 is already out of the top-3
    effects = explain(model, 0, k=3, method="effects", max_size=3,
                      exclude=np.zeros(5, bool))
    # single deletions: ranks 2, 1, 1 and margins 6, 2, 5, so 0 first, then 1 (the margin
    # alone would order 1, 2, 0)
    assert list(effects.minimal_set) == [0, 1, 2]


def test_the_oracle_finds_the_known_minimal_sets():
    # need a drop of 4.5 (item 0 at 10 against a competitor at 5.5; a tie loses): no single
    # deletion does it; the pairs {0, j} drop 4 + 1 or 4 + 0.5 (a tie), and {1, 2} drops 8
    oracle = exhaustive_search(*toy(5.5), k=1, max_size=3)
    assert oracle.size == 2
    assert sorted(oracle.sets) == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2)]
    assert oracle.evaluations == 5 + 10
    greedy = greedy_search(*toy(5.5), k=1, max_size=3)
    assert bool(greedy.found) and int(greedy.size) == 2
    assert tuple(np.asarray(greedy.order)[:2]) == (0, 1)


def test_greedy_misses_a_synergy_that_beam_and_the_oracle_find():
    # need a drop of 7.5: only the pair {1, 2} (8) at size 2; greedy takes 0 first (4)
    oracle = exhaustive_search(*toy(2.5), k=1, max_size=3)
    assert oracle.size == 2 and oracle.sets == [(1, 2)]
    greedy = greedy_search(*toy(2.5), k=1, max_size=3)
    assert bool(greedy.found) and int(greedy.size) == 3
    beam = beam_search(*toy(2.5), k=1, max_size=3, beam_width=2)
    assert beam.found and beam.size == 2 and set(np.flatnonzero(beam.deleted)) == {1, 2}
    narrow = beam_search(*toy(2.5), k=1, max_size=3, beam_width=1)  # width 1 is greedy
    np.testing.assert_array_equal(narrow.deleted, np.asarray(greedy.deleted))


def test_nothing_to_remove_and_nothing_enough():
    # already out of the top-1: the empty set
    result = greedy_search(*toy(11.0), k=1, max_size=3)
    assert bool(result.found) and int(result.size) == 0
    assert exhaustive_search(*toy(11.0), k=1, max_size=3).size == 0
    # no set of up to 2 deletions is enough
    result = greedy_search(*toy(-0.5), k=1, max_size=2)
    assert not bool(result.found) and int(result.size) == 2
    assert exhaustive_search(*toy(-0.5), k=1, max_size=2).size == -1
    with pytest.raises(ValueError, match="exhaustive search would score"):
        exhaustive_search(*toy(5.5), k=1, max_size=3, max_evaluations=10)


def test_ordered_removal_deletes_a_prefix():
    scorer, data, valid, target, exclude = toy(5.5)
    result = ordered_removal(scorer, data, valid, target, exclude,
                             jnp.asarray([3, 4, 0, 1, 2]), k=1, max_size=5)
    # 3, 4 drop 1; then 0: 5 >= 4.5
    assert bool(result.found) and int(result.size) == 3
    np.testing.assert_array_equal(np.asarray(result.order)[:3], [3, 4, 0])
    assert set(np.flatnonzero(np.asarray(result.deleted))) == {0, 3, 4}


def test_a_prefix_held_under_every_seed():
    scorer, data, valid, target, exclude = toy(5.5)
    stiff = {**data, "others": data["others"].at[1].set(3.0)}  # a drop of 7 needed
    order = np.asarray([3, 4, 0, 1, 2])
    after, counts = prefix_standings(scorer, data, valid, target, exclude, jnp.asarray(order),
                                     k=1)
    np.testing.assert_array_equal(np.asarray(counts), [0, 1, 2, 3, 4, 5])
    # drops 0, 0.5, 1, 5, 6, 13 from a score of 10
    np.testing.assert_allclose(np.asarray(after.score), [10.0, 9.5, 9.0, 5.0, 4.0, -3.0])
    one, agree = held_prefix(scorer, [data], valid, 0, exclude, order, k=1)
    assert one.found and one.size == 3 and agree == 1  # as ordered_removal finds it
    both, agree = held_prefix(scorer, [data, stiff], valid, 0, exclude, order, k=1)
    assert both.found and both.size == 5 and list(both.order[:5]) == [3, 4, 0, 1, 2]
    assert agree == 2  # a majority of 2 is both
    np.testing.assert_allclose(both.after.score, -3.0)  # read from the first model
    assert held_prefix(scorer, [data], valid, 0, exclude, order, k=1, start=4)[0].size == 4
    # repeated and padding entries delete nothing more: the prefix counts positions
    padded, _ = held_prefix(scorer, [data], valid, 0, exclude, [3, 3, -1, 4, 0, 1], k=1)
    assert padded.found and list(padded.order[:3]) == [3, 4, 0] and padded.size == 3
    never = {**data, "others": jnp.full(6, -10.0)}  # -3 after every deletion: still first
    none, agree = held_prefix(scorer, [data, never], valid, 0, exclude, order, k=1)
    assert not none.found and none.size == 5 and agree == 1
    # a majority of three: the stiff model is outvoted; the first model must agree
    three, agree = held_prefix(scorer, [data, stiff, data], valid, 0, exclude, order, k=1)
    assert three.found and three.size == 3 and agree == 2
    assert held_prefix(scorer, [data, stiff, data], valid, 0, exclude, order, k=1,
                       quorum=3)[0].size == 5
    first_out, _ = held_prefix(scorer, [stiff, data, data], valid, 0, exclude, order, k=1)
    assert first_out.size == 5  # two agree at 3, but not the explained one
    with pytest.raises(ValueError, match="quorum = 4: expected 1 to 3"):
        held_prefix(scorer, [data, stiff, data], valid, 0, exclude, order, k=1, quorum=4)


def test_the_greedy_search_across_seeds():
    scorer, data, valid, target, exclude = toy(5.5)
    stiff = {**data, "others": data["others"].at[1].set(3.0)}
    # from {0}: under the stiff model a deletion of 1 or 2 alone leaves the item first (held
    # margin 2) and 3 or 4 leave it 2.5 ahead; 1 first, then 2 (the synergy) takes both out
    held, agree = held_greedy(scorer, [data, stiff], valid, 0, exclude, [0], k=1)
    assert held.found and list(held.order[:3]) == [0, 1, 2] and held.size == 3 and agree == 2
    np.testing.assert_allclose(held.after.score, -2.0)
    padded, _ = held_greedy(scorer, [data, stiff], valid, 0, exclude, [0, -1], k=1)
    assert list(padded.order[:3]) == [0, 1, 2]  # -1 is padding, not the last position
    alone, agree = held_greedy(scorer, [data, stiff], valid, 0, exclude, [0], k=1, quorum=1)
    assert alone.found and alone.size == 2 and agree == 1  # the explained model alone
    never = {**data, "others": jnp.full(6, -10.0)}
    none, agree = held_greedy(scorer, [data, never], valid, 0, exclude, [], k=1)
    assert not none.found and none.size == 5 and agree == 1
    rank, margin = held_standing(jnp.asarray([[3, 0], [1, 5], [2, 5]]),
                                 jnp.asarray([[-1.0, 2.0], [1.0, -3.0], [jnp.nan, -2.0]]), 2)
    # column 0: the 2nd largest rank 2, the first model's 3 -> 2; margins -1, 1, NaN (+inf):
    # the 2nd smallest 1 -> max(-1, 1) = 1. Column 1: the first model holds it in (rank 0)
    np.testing.assert_array_equal(np.asarray(rank), [2, 0])
    np.testing.assert_allclose(np.asarray(margin), [1.0, 2.0])


def test_explain_extends_the_set_until_every_seed_agrees():
    scorer, data, _, _, exclude = toy(5.5)
    stiff = {**data, "others": data["others"].at[1].set(3.0)}
    model = DeletionModel(score_fn=scorer, data=data, history=np.arange(5), semantics="toy",
                          n_items=6)
    other = dataclasses.replace(model, data=stiff)
    alone = explain(model, 0, k=1, exclude=np.asarray(exclude))
    assert alone.found and list(alone.minimal_set) == [0, 1] and alone.seeds == 1
    # under the stiff seed {0, 1} drops 5 < 7: one more deletion, the strongest after the
    # set (2: the synergy with 1)
    held = explain(model, 0, k=1, exclude=np.asarray(exclude), seeds=[other])
    assert held.found and list(held.minimal_set) == [0, 1, 2] and held.seeds == 2
    assert held.agree == 2
    assert held.rank_after_set >= 1
    same = explain(model, 0, k=1, exclude=np.asarray(exclude), seeds=[model])
    assert list(same.minimal_set) == [0, 1] and same.found  # the same model: nothing added
    # an ordered method goes on in its own order
    ordered = explain(model, 0, k=1, method="random", exclude=np.asarray(exclude),
                      key=jax.random.key(3), seeds=[other])
    full = np.asarray(baseline_order("random", model, 0, key=jax.random.key(3)))
    assert list(ordered.minimal_set) == list(full[: ordered.size]) and ordered.found
    outvoted = explain(model, 0, k=1, exclude=np.asarray(exclude), seeds=[other, model])
    assert list(outvoted.minimal_set) == [0, 1] and outvoted.agree == 2
    assert outvoted.seeds == 3 and outvoted.found
    with pytest.raises(ValueError, match="quorum = 3"):
        explain(model, 0, k=1, exclude=np.asarray(exclude), seeds=[other], quorum=3)
    # an item already outside the top-K: the empty set, nothing extended
    competitor = {**data, "others": data["others"].at[1].set(11.0)}
    out = explain(dataclasses.replace(model, data=competitor), 0, k=1,
                  exclude=np.asarray(exclude), seeds=[other])
    assert out.size == 0 and out.found and out.base_rank >= 1
    with pytest.raises(ValueError, match="the explained model's kind"):
        explain(model, 0, k=1, exclude=np.asarray(exclude),
                seeds=[dataclasses.replace(other, score_fn=PassingScorer())])
    with pytest.raises(ValueError, match="same positions"):
        explain(model, 0, k=1, exclude=np.asarray(exclude),
                seeds=[dataclasses.replace(model, history=np.arange(1, 6))])


def test_pair_deletions_show_the_synergy():
    scorer, data, valid, target, exclude = toy(5.5)
    scores = pair_deletions(scorer, data, valid, int(target), exclude, [0, 1, 2], k=1)
    np.testing.assert_allclose(np.diag(scores), [6.0, 9.0, 9.0])  # single deletions
    np.testing.assert_allclose(scores, scores.T)
    singles = np.diag(scores) - 10.0
    interaction = (scores[1, 2] - 10.0) - singles[1] - singles[2]
    assert scores[0, 1] == 5.0 and interaction == -6.0  # {1, 2} drop 6 more together


def rank_of(scores, target, exclude):
    """The pessimistic rank, by numpy."""
    others = ~exclude & (np.arange(len(scores)) != target)
    return int(np.sum(others & (scores >= scores[target])))


def test_vmapped_single_deletions_equal_looped(mf_case):
    model, target, exclude = mf_case
    effects = single_deletions(model.score_fn, model.data, jnp.asarray(model.valid),
                               jnp.asarray(target), jnp.asarray(exclude), k=5)
    for position in np.flatnonzero(model.valid)[:6]:
        keep = model.valid.astype(np.float32)
        keep[position] = 0.0
        scores = model.scores(keep)
        np.testing.assert_allclose(effects.after.score[position], scores[target], rtol=1e-5,
                                   atol=1e-5)
        assert int(effects.after.rank[position]) == rank_of(scores, target, exclude)
    assert int(effects.base.rank) == rank_of(model.scores(), target, exclude)


@pytest.mark.parametrize("method", ["greedy", "beam", "effects", *BASELINES])
def test_the_minimal_explanation_applied_removes_the_item(mf_case, method):
    model, target, exclude = mf_case
    explanation = explain(model, target, k=5, method=method, max_size=12, exclude=exclude,
                          key=jax.random.key(1))
    assert explanation.base_rank < 5
    positions = np.flatnonzero(model.valid)[explanation.minimal_set]
    keep = model.valid.astype(np.float32)
    keep[positions] = 0.0
    scores = model.scores(keep)
    rank = rank_of(scores, target, exclude)
    assert rank == explanation.rank_after_set
    if explanation.found:
        assert rank >= 5
        assert explanation.size == len(set(explanation.minimal_set.tolist()))
    else:
        assert rank < 5 and method in BASELINES
    if method == "greedy":
        assert explanation.found
        # the causes are ranked by their single-deletion score change
        assert np.all(np.diff(explanation.score_deltas[explanation.causes]) >= 0)


def test_a_sequential_explanation():
    model = SASRec(30, 8, key=jax.random.key(1), hidden_dim=8, n_layers=1, dropout_rate=0.0,
                   init_std=0.5)
    graphdef, params = nnx.split(model, nnx.Param)
    tokens = np.asarray([0, 0, 4, 9, 13, 2, 21, 17])
    deletion = make_history_model(graphdef, params, tokens)
    exclude = np.zeros(30, bool)
    exclude[tokens[tokens > 0] - 1] = True
    target = int(np.argmax(np.where(exclude, -np.inf, deletion.scores())))
    explanation = explain(deletion, target, k=3, method="greedy", max_size=6)
    np.testing.assert_array_equal(explanation.history, tokens[2:] - 1)
    oracle = exhaustive_search(deletion.score_fn, deletion.data, deletion.valid, target,
                               exclude, k=3, max_size=6)
    assert explanation.found and oracle.size >= 1
    assert explanation.size >= oracle.size  # the oracle is minimal
    keep = deletion.valid.astype(np.float32)
    keep[np.flatnonzero(deletion.valid)[explanation.minimal_set]] = 0.0
    assert rank_of(deletion.scores(keep), target, exclude) >= 3
