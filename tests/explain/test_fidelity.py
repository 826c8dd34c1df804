"""Fidelity metrics (POS, DEL, INS, CDCG) on a hand-built scorer whose values are computed by
hand; the greedy ordering; the batched scorer of a real deletion model against a loop."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.explain import fidelity
from causalrec_jax.explain.fidelity import (
    FidelityCurves,
    batch_scorer,
    cdcg_at,
    del_at,
    fidelity_curves,
    ins_at,
    pos_at,
    removal_masks,
    stack_curves,
)
from causalrec_jax.explain.search import greedy_order, greedy_search


@dataclasses.dataclass(frozen=True)
class ToyScores:
    """Item 0 scores `base` minus `single[h]` for each deleted position h; items 1.. fixed."""

    def __call__(self, keeps):
        gone = 1.0 - keeps
        target = self.base - gone @ jnp.asarray(self.single)
        others = jnp.broadcast_to(jnp.asarray(self.others), (keeps.shape[0], len(self.others)))
        return jnp.concatenate([target[:, None], others], axis=1)

    base: float = 5.0
    single: tuple = (3.0, 1.0, 2.0)
    others: tuple = (4.0, 1.5, 0.0)


def softmax_of(target, others=(4.0, 1.5, 0.0)):
    values = np.asarray([target, *others])
    return float(np.exp(target) / np.exp(values).sum())


@pytest.fixture(scope="module")
def hand_curves():
    return fidelity_curves(ToyScores(), order=np.asarray([0, 2, 1]), valid=np.ones(3, bool),
                           target=0, exclude=np.zeros(4, bool), n_steps=3)


def test_curves_by_hand(hand_curves):
    c = hand_curves
    # removal: target 5 -> 2 (pos 0) -> 0 (pos 0, 2) -> -1 (all); item 3 at 0 ties and wins
    np.testing.assert_array_equal(c.removal_rank, [1, 3, 3])
    np.testing.assert_allclose(c.removal_probability, [softmax_of(2), softmax_of(0),
                                                       softmax_of(-1)], rtol=1e-5)
    # insertion: only pos 0 kept -> 5 - 1 - 2 = 2; pos 0, 2 kept -> 4; all kept -> 5
    np.testing.assert_allclose(c.insertion_probability, [softmax_of(2), softmax_of(4),
                                                         softmax_of(5)], rtol=1e-5)
    assert int(c.base_rank) == 0
    np.testing.assert_allclose(float(c.base_probability), softmax_of(5), rtol=1e-5)


def test_metrics_by_hand(hand_curves):
    c = hand_curves
    assert float(pos_at(c, k_r=2, k_e=1)) == 1.0  # rank 1 (2nd) is in the top-2
    assert float(pos_at(c, k_r=1, k_e=1)) == 0.0
    assert float(pos_at(c, k_r=2, k_e=2)) == 0.0
    np.testing.assert_allclose(float(cdcg_at(c, 2)), (1 / np.log2(3) + 1 / np.log2(5)) / 2,
                               rtol=1e-6)
    np.testing.assert_allclose(float(cdcg_at(c, 1)), 1 / np.log2(3), rtol=1e-6)
    np.testing.assert_allclose(float(del_at(c, 2)), (softmax_of(2) + softmax_of(0)) / 2,
                               rtol=1e-5)
    np.testing.assert_allclose(float(ins_at(c, 3)),
                               (softmax_of(2) + softmax_of(4) + softmax_of(5)) / 3, rtol=1e-5)


def test_a_better_order_scores_better():
    args = dict(valid=np.ones(3, bool), target=0, exclude=np.zeros(4, bool), n_steps=3)
    best = fidelity_curves(ToyScores(), order=np.asarray([0, 2, 1]), **args)
    worst = fidelity_curves(ToyScores(), order=np.asarray([1, 2, 0]), **args)
    assert float(del_at(best, 2)) < float(del_at(worst, 2))
    assert float(cdcg_at(best, 2)) < float(cdcg_at(worst, 2))
    assert float(ins_at(best, 1)) > float(ins_at(worst, 1))


def test_masks_skip_padding_and_cap_short_histories():
    valid = np.asarray([False, True, True, False])
    removed, inserted = removal_masks(np.asarray([0, 2, 3, 1]), valid, 3)
    np.testing.assert_array_equal(removed, [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(inserted, [[0, 0, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0]])


def test_excluded_items_are_left_out():
    exclude = np.asarray([False, True, False, False])  # item 1 (score 4) is the user's
    c = fidelity_curves(ToyScores(), order=np.asarray([0, 2, 1]), valid=np.ones(3, bool),
                        target=0, exclude=exclude, n_steps=1)
    assert int(c.removal_rank[0]) == 0
    np.testing.assert_allclose(float(c.removal_probability[0]),
                               softmax_of(2, others=(1.5, 0.0)), rtol=1e-5)


def test_metrics_batch_over_users_and_jit(hand_curves):
    other = jax.tree.map(lambda leaf: leaf + 1, hand_curves)
    stacked = stack_curves([hand_curves, other])
    jitted = jax.jit(cdcg_at, static_argnums=1)(stacked, 2)
    np.testing.assert_allclose(jitted, [float(cdcg_at(hand_curves, 2)),
                                        float(cdcg_at(other, 2))], rtol=1e-6)
    assert pos_at(stacked, 2, 1).shape == (2,)


def test_bad_steps_are_refused(hand_curves):
    with pytest.raises(ValueError, match="K_e = 4"):
        del_at(hand_curves, 4)
    with pytest.raises(ValueError, match="K_r = 0"):
        pos_at(hand_curves, 0, 1)
    assert set(fidelity.METRICS) == {"pos", "del", "ins", "cdcg"}
    assert isinstance(hand_curves, FidelityCurves)


def test_batch_scorer_equals_the_model_one_mask_at_a_time(mf_case):
    model, target, exclude = mf_case
    rng = np.random.default_rng(1)
    keeps = (rng.random((5, len(model.history))) < 0.7).astype(np.float32) * model.valid
    batched = np.asarray(batch_scorer(model)(jnp.asarray(keeps)))
    for row, keep in enumerate(keeps):
        np.testing.assert_allclose(batched[row], model.scores(keep), rtol=1e-4, atol=1e-5)


def test_greedy_order_starts_with_the_greedy_set(mf_case):
    model, target, exclude = mf_case
    args = (model.score_fn, model.data, jnp.asarray(model.valid), jnp.asarray(target),
            jnp.asarray(exclude))
    found = greedy_search(*args, k=3, max_size=6)
    order = np.asarray(greedy_order(*args, k=3, n_steps=6))
    size = int(found.size)
    assert size >= 1
    np.testing.assert_array_equal(order[:size], np.asarray(found.order)[:size])
    valid = model.valid
    assert sorted(order.tolist()) == list(range(len(valid)))  # a permutation
    assert valid[order[: valid.sum()]].all()  # valid positions first
