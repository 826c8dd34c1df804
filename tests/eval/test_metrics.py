"""Per-user ranking metrics, AUC and rating errors against hand-computed values."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.eval import metrics as M

NAMES = M.RANKING_METRICS
LOG2_3 = math.log2(3.0)  # discount of rank 2 is 1/log2(3) = 0.6309298
LOG2_5 = math.log2(5.0)  # discount of rank 4 is 1/log2(5) = 0.4306766


HAND_KS = (1, 2, 3, 4, 5)
HAND_SHAPE = (4, 16)


def all_metrics(scores, labels, k, where=None, pad=True):
    """Every metric at `k` as numpy. With `pad`, the small hand cases are padded to one shape
    with unrankable (`where=False`) rows and columns -- which must change nothing -- so all of
    them share one compilation."""
    scores = np.asarray(scores, np.float32)
    labels = np.asarray(labels)
    where = np.ones(scores.shape, bool) if where is None else np.asarray(where, bool)
    batch, n = scores.shape
    ks = (k,)
    if pad:
        assert k in HAND_KS and batch <= HAND_SHAPE[0] and n <= HAND_SHAPE[1]
        ks = HAND_KS
        padding = ((0, HAND_SHAPE[0] - batch), (0, HAND_SHAPE[1] - n))
        # Padded candidates get high scores and positive labels: masking must ignore them.
        scores = np.pad(scores, padding, constant_values=9.0)
        labels = np.pad(labels, padding, constant_values=1)
        where = np.pad(where, padding, constant_values=False)
    out = M.ranking_metrics(scores, labels, ks=ks, where=where)
    return {name: np.asarray(out[f"{name}@{k}"])[:batch] for name in NAMES}


def assert_metrics(got, expected, row=0):
    for name, value in expected.items():
        assert got[name][row] == pytest.approx(value, abs=1e-6), name


def test_plain_ranking_by_hand():
    # Scores strictly decreasing: the list is items 0, 1, 2, 3, 4; relevant items 1 and 3
    # (ranks 2 and 4), R = 2.
    scores = [[0.9, 0.8, 0.7, 0.6, 0.5]]
    labels = [[0, 1, 0, 1, 0]]
    # K = 3: top 3 = [0, 1, 2], rel = [0, 1, 0].
    #   hit = 1; precision = 1/3; recall = 1/2; mrr = 1/2
    #   DCG = 1/log2(3); IDCG = 1 + 1/log2(3) (min(R, K) = 2) -> ndcg = 0.6309/1.6309 = 0.38685
    #   AP = (precision@2 = 1/2) / min(2, 3) = 0.25
    assert_metrics(
        all_metrics(scores, labels, 3),
        {
            "hit": 1.0,
            "precision": 1 / 3,
            "recall": 0.5,
            "mrr": 0.5,
            "ndcg": (1 / LOG2_3) / (1 + 1 / LOG2_3),
            "map": 0.25,
        },
    )
    # K = 5: rel = [0, 1, 0, 1, 0]. precision = 2/5, recall = 1,
    #   DCG = 1/log2(3) + 1/log2(5) = 1.06161 -> ndcg = 1.06161 / 1.63093 = 0.65092
    #   AP = (1/2 + 2/4) / min(2, 5) = 0.5
    assert_metrics(
        all_metrics(scores, labels, 5),
        {
            "hit": 1.0,
            "precision": 0.4,
            "recall": 1.0,
            "mrr": 0.5,
            "ndcg": (1 / LOG2_3 + 1 / LOG2_5) / (1 + 1 / LOG2_3),
            "map": 0.5,
        },
    )


def test_all_tied_positives_lose_every_tie():
    # All four scores equal: non-relevant items 1, 2 take ranks 1, 2; relevant 0, 3 ranks 3, 4.
    scores = [[1.0, 1.0, 1.0, 1.0]]
    labels = [[1, 0, 0, 1]]
    # K = 2: top 2 holds only the two non-relevant items -> every metric is 0.
    assert_metrics(all_metrics(scores, labels, 2), {name: 0.0 for name in NAMES})
    # K = 4: rel = [0, 0, 1, 1]; hit 1, precision 2/4, recall 2/2, mrr 1/3,
    #   DCG = 1/log2(4) + 1/log2(5) = 0.5 + 0.43068 -> ndcg = 0.93068 / 1.63093 = 0.57064,
    #   AP = (1/3 + 2/4) / 2 = 0.41667.
    assert_metrics(
        all_metrics(scores, labels, 4),
        {
            "hit": 1.0,
            "precision": 0.5,
            "recall": 1.0,
            "mrr": 1 / 3,
            "ndcg": (0.5 + 1 / LOG2_5) / (1 + 1 / LOG2_3),
            "map": (1 / 3 + 2 / 4) / 2,
        },
    )


def test_partial_tie():
    # Item 1 (0.9) first; items 0 (relevant) and 2 tie at 0.5 -> item 2 at rank 2, item 0 at 3.
    scores = [[0.5, 0.9, 0.5, 0.1]]
    labels = [[1, 0, 0, 0]]
    assert_metrics(all_metrics(scores, labels, 2), {name: 0.0 for name in NAMES})
    # K = 3: rel = [0, 0, 1]; ndcg = (1/log2(4)) / 1 = 0.5; mrr = 1/3; AP = (1/3)/1.
    assert_metrics(
        all_metrics(scores, labels, 3),
        {"hit": 1.0, "precision": 1 / 3, "recall": 1.0, "mrr": 1 / 3, "ndcg": 0.5, "map": 1 / 3},
    )


def test_k_larger_than_candidates():
    # Two candidates, K = 5: list = [0, 1], relevant item 1 at rank 2, R = 1.
    #   precision = 1/5 (divides by K); recall = 1; ndcg = (1/log2(3)) / 1; mrr = 1/2;
    #   AP = (1/2) / min(1, 5) = 0.5.
    # Unpadded too: K > n_candidates pads the list inside ranked_topk.
    for pad in (True, False):
        assert_metrics(
            all_metrics([[0.2, 0.1]], [[0, 1]], 5, pad=pad),
            {
                "hit": 1.0,
                "precision": 0.2,
                "recall": 1.0,
                "mrr": 0.5,
                "ndcg": 1 / LOG2_3,
                "map": 0.5,
            },
        )


def test_more_relevant_than_k():
    # R = 3 > K = 2: list [0 (rel), 1, 2 (rel), 3 (rel)], top 2 rel = [1, 0].
    #   DCG = 1; IDCG over min(3, 2) = 2 positions = 1 + 1/log2(3) -> ndcg = 0.61315;
    #   recall = 1/3 (R not capped); precision = 1/2; AP = (1/1) / min(3, 2) = 0.5.
    assert_metrics(
        all_metrics([[0.9, 0.8, 0.7, 0.6]], [[1, 0, 1, 1]], 2),
        {
            "hit": 1.0,
            "precision": 0.5,
            "recall": 1 / 3,
            "mrr": 1.0,
            "ndcg": 1 / (1 + 1 / LOG2_3),
            "map": 0.5,
        },
    )


def test_masked_items_are_not_ranked_nor_relevant():
    # Item 0 (score 0.9, relevant) is masked: the list is [1 (rel), 2, 3 (rel)], R = 2.
    #   K = 2: rel = [1, 0]; recall 1/2, precision 1/2, ndcg = 1 / (1 + 1/log2(3)), AP = 1/2.
    got = all_metrics(
        [[0.9, 0.8, 0.7, 0.6]], [[1, 1, 0, 1]], 2, where=[[False, True, True, True]]
    )
    assert_metrics(
        got,
        {
            "hit": 1.0,
            "precision": 0.5,
            "recall": 0.5,
            "mrr": 1.0,
            "ndcg": 1 / (1 + 1 / LOG2_3),
            "map": 0.5,
        },
    )
    # A masked higher-scored non-relevant item does not push the relevant one down.
    assert_metrics(
        all_metrics([[0.9, 0.8]], [[0, 1]], 1, where=[[False, True]]),
        {"hit": 1.0, "precision": 1.0, "recall": 1.0, "mrr": 1.0, "ndcg": 1.0, "map": 1.0},
    )
    # Masked slots never fill the list: 1 rankable candidate, K = 3 -> precision 1/3.
    got = all_metrics([[0.1, 5.0, 7.0]], [[1, 0, 0]], 3, where=[[True, False, False]])
    assert got["precision"][0] == pytest.approx(1 / 3)
    assert got["ndcg"][0] == pytest.approx(1.0)


def test_user_without_positive_scores_zero_and_is_flagged():
    scores = jnp.array([[0.3, 0.2, 0.1], [0.3, 0.2, 0.1], [0.3, 0.2, 0.1]])
    labels = jnp.array([[0, 0, 0], [1, 0, 0], [1, 0, 0]])
    where = jnp.array([[True, True, True], [True, True, True], [False, True, True]])
    got = all_metrics(scores, labels, 2, where=where)
    for name in NAMES:
        assert got[name][0] == 0.0 and got[name][2] == 0.0, name  # never 1
        assert got[name][1] == 1.0 or name == "precision", name
    np.testing.assert_array_equal(M.has_positive(labels, where), [False, True, False])


def test_nan_ranks_last_and_signed_zeros_tie():
    # NaN score of the relevant item -> ranked last.
    got = all_metrics([[jnp.nan, 0.5, 0.4]], [[1, 0, 0]], 2)
    assert got["hit"][0] == 0.0
    assert all_metrics([[jnp.nan, 0.5, 0.4]], [[1, 0, 0]], 3)["mrr"][0] == pytest.approx(1 / 3)
    # 0.0 and -0.0 tie, so the relevant item loses whichever zero it has.
    assert all_metrics([[-0.0, 0.0]], [[0, 1]], 1)["hit"][0] == 0.0
    assert all_metrics([[0.0, -0.0]], [[1, 0]], 1)["hit"][0] == 0.0


def reference_metrics(scores, labels, where, k):
    """Brute force: sort rankable items by (-score, relevant, index) and apply the formulas."""
    out = {name: [] for name in NAMES}
    for s, l, w in zip(scores, labels, where, strict=True):
        ranked = sorted(
            (j for j in range(len(s)) if w[j]), key=lambda j: (-s[j], l[j] > 0, j)
        )
        rel = [1.0 if l[j] > 0 else 0.0 for j in ranked[:k]]
        rel += [0.0] * (k - len(rel))
        n_rel = sum(1 for j in range(len(s)) if w[j] and l[j] > 0)
        hits = sum(rel)
        dcg = sum(r / math.log2(i + 2) for i, r in enumerate(rel))
        idcg = sum(1 / math.log2(i + 2) for i in range(min(n_rel, k)))
        first = next((i for i, r in enumerate(rel) if r), None)
        ap = sum(r * sum(rel[: i + 1]) / (i + 1) for i, r in enumerate(rel))
        out["hit"].append(float(hits > 0))
        out["precision"].append(hits / k)
        out["recall"].append(hits / n_rel if n_rel else 0.0)
        out["ndcg"].append(dcg / idcg if n_rel else 0.0)
        out["mrr"].append(0.0 if first is None else 1 / (first + 1))
        out["map"].append(ap / min(n_rel, k) if n_rel else 0.0)
    return out


def test_matches_brute_force_with_ties_and_masks():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(64, 9)).astype(np.float32)  # many ties
    labels = rng.random((64, 9)) < 0.3
    where = rng.random((64, 9)) < 0.8
    ks = (1, 3, 7, 12)
    got = M.ranking_metrics(scores, labels, ks=ks, where=where)
    for k in ks:
        expected = reference_metrics(scores, labels, where, k)
        for name in NAMES:
            np.testing.assert_allclose(
                got[f"{name}@{k}"], expected[name], atol=1e-6, err_msg=f"{name}@{k}"
            )


def test_single_metric_functions_agree_with_ranking_metrics():
    key = jax.random.key(0)
    scores = jax.random.normal(key, (8, 20))
    labels = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.2, (8, 20))
    where = jax.random.bernoulli(jax.random.fold_in(key, 2), 0.9, (8, 20))
    together = M.ranking_metrics(scores, labels, ks=(5,), where=where)
    for name in NAMES:
        single = getattr(M, name)(scores, labels, k=5, where=where)
        np.testing.assert_array_equal(single, together[f"{name}@5"])


def test_jit_equals_eager():
    # Op-by-op execution is the reference XLA's jit must not change (e.g. by simplifying away
    # the -0.0 normalisation); a few metrics keep the slow eager run short.
    key = jax.random.key(1)
    scores = jnp.round(jax.random.normal(key, (6, 12)), 1)  # some ties
    scores = scores.at[:, 0].set(-0.0).at[:, 1].set(0.0)  # signed zeros must tie
    labels = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.3, (6, 12))
    labels = labels.at[:, 0].set(False).at[:, 1].set(True)
    where = jax.random.bernoulli(jax.random.fold_in(key, 2), 0.9, (6, 12))
    names = ("ndcg", "map")
    with jax.disable_jit():
        eager = M.ranking_metrics(scores, labels, ks=(1, 15), names=names, where=where)
    jitted = jax.jit(M.ranking_metrics, static_argnames=("ks", "names"))(
        scores, labels, ks=(1, 15), names=names, where=where
    )
    for name, value in eager.items():
        np.testing.assert_array_equal(value, jitted[name], err_msg=name)


def test_constant_scores_are_no_better_than_random():
    rng = np.random.default_rng(0)
    n_items = 50
    labels = rng.random((200, n_items)) < 0.1
    labels[:, 0] = True  # every user has a positive
    scores = np.zeros((200, n_items), np.float32)
    ks = (1, 5, 10, n_items)
    constant = M.ranking_metrics(scores, labels, ks=ks)
    # K <= #non-relevant candidates for every user: all relevant items sit below the top K.
    assert (labels.sum(1) <= n_items - 10).all()
    for k in ks[:3]:
        for name in NAMES:
            assert np.all(constant[f"{name}@{k}"] == 0.0), (name, k)
    # Even with K = n_items, the constant model is at or below a random model.
    random = M.ranking_metrics(rng.random((200, n_items)).astype(np.float32), labels, ks=ks)
    for name in ("ndcg", "mrr", "map"):
        key = f"{name}@{n_items}"
        assert constant[key].mean() <= random[key].mean() + 1e-6, name


def test_item_topk_ignores_labels_ties_to_lower_index():
    scores = jnp.array([[0.5, 0.9, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]])
    where = jnp.array([[True, True, False, True], [False, True, False, False]])
    np.testing.assert_array_equal(M.item_topk(scores, k=3, where=where), [[1, 0, 3], [1, -1, -1]])


def test_ideal_dcg_integer_and_fractional():
    # 0 -> 0; 1 -> 1; 2 -> 1 + 1/log2(3); 3.75 -> 1 + 1/log2(3) + 1/2 + 0.75/log2(5);
    # 10 with K = 5 -> capped at 5 positions.
    got = M.ideal_dcg(jnp.array([0.0, 1.0, 2.0, 3.75, 10.0]), 5)
    five = sum(1 / math.log2(j + 1) for j in range(1, 6))
    expected = [0.0, 1.0, 1 + 1 / LOG2_3, 1 + 1 / LOG2_3 + 0.5 + 0.75 / LOG2_5, five]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


# ----------------------------------------------------------------------------- AUC, errors


def test_auc_by_hand():
    # Positives 0.35, 0.8; negatives 0.1, 0.4. Pairs (pos > neg): 0.35>0.1, 0.8>0.1, 0.8>0.4;
    # 0.35<0.4 -> 3/4.
    assert float(M.auc(jnp.array([0.1, 0.4, 0.35, 0.8]), jnp.array([0, 0, 1, 1]))) == 0.75
    # With a tie: positives 0.5, 0.9; negatives 0.5, 0.2.
    #   (0.5 vs 0.5) = 1/2, (0.5 vs 0.2) = 1, (0.9 vs 0.5) = 1, (0.9 vs 0.2) = 1 -> 3.5/4.
    assert float(M.auc(jnp.array([0.5, 0.5, 0.2, 0.9]), jnp.array([1, 0, 0, 1]))) == 0.875
    # Constant scores: every pair ties -> 1/2.
    assert float(M.auc(jnp.ones(6), jnp.array([1, 0, 1, 0, 0, 1]))) == 0.5
    # `where` drops the negative 0.4: pairs 0.35>0.1, 0.8>0.1 -> 1.
    where = jnp.array([True, False, True, True])
    assert float(M.auc(jnp.array([0.1, 0.4, 0.35, 0.8]), jnp.array([0, 0, 1, 1]), where)) == 1.0
    assert math.isnan(float(M.auc(jnp.array([0.1, 0.2]), jnp.array([1, 1]))))


def test_auc_matches_pairwise_count():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 20, size=500).astype(np.float32)  # many ties
    labels = rng.random(500) < 0.3
    where = rng.random(500) < 0.9
    positive = scores[labels & where]
    negative = scores[~labels & where]
    difference = positive[:, None] - negative[None, :]
    expected = ((difference > 0).sum() + 0.5 * (difference == 0).sum()) / difference.size
    assert float(M.auc(scores, labels, where)) == pytest.approx(expected, abs=1e-6)


def test_per_user_auc():
    scores = jnp.array([[0.1, 0.4, 0.35, 0.8], [0.5, 0.5, 0.2, 0.9], [1.0, 2.0, 3.0, 4.0]])
    labels = jnp.array([[0, 0, 1, 1], [1, 0, 0, 1], [1, 1, 0, 0]])
    where = jnp.array([[True] * 4, [True] * 4, [True, True, False, False]])
    got = M.per_user_auc(scores, labels, where=where)
    # Row 3 has only positives among its rankable candidates -> undefined (NaN).
    np.testing.assert_allclose(got[:2], [0.75, 0.875])
    assert math.isnan(float(got[2]))
    np.testing.assert_array_equal(M.has_both_classes(labels, where), [True, True, False])


def test_rating_errors_by_hand():
    predictions = jnp.array([1.0, 2.0, 3.0])
    ratings = jnp.array([1.0, 3.0, 5.0])
    # Errors 0, -1, -2: MSE = (0 + 1 + 4) / 3 = 5/3, RMSE = sqrt(5/3), MAE = 3/3 = 1.
    assert float(M.mse(predictions, ratings)) == pytest.approx(5 / 3)
    assert float(M.rmse(predictions, ratings)) == pytest.approx(math.sqrt(5 / 3))
    assert float(M.mae(predictions, ratings)) == pytest.approx(1.0)
    # Without the last pair: MSE = 1/2, MAE = 1/2.
    where = jnp.array([True, True, False])
    assert float(M.mse(predictions, ratings, where)) == pytest.approx(0.5)
    assert float(M.mae(predictions, ratings, where)) == pytest.approx(0.5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="k must be"):
        M.recall(jnp.ones((2, 3)), jnp.ones((2, 3)), k=0)
    with pytest.raises(ValueError, match="batch, n_candidates"):
        M.recall(jnp.ones(3), jnp.ones(3), k=1)
