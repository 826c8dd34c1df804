"""The evaluation drivers: full ranking in chunks, candidate lists, pointwise errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.data.dataset import Dataset
from causalrec_jax.eval import metrics as M
from causalrec_jax.eval.ranking import (
    evaluate_candidates,
    evaluate_full_ranking,
    evaluate_pointwise,
    gini_index,
)

ALL = ["recall", "precision", "ndcg", "hit", "mrr", "map", "itemcoverage"]
LOG2_5 = math.log2(5.0)


def make_dataset(user, item, rating=None, *, n_users, n_items, implicit=False) -> Dataset:
    user = np.asarray(user, np.int32)
    rating = np.ones(len(user), np.float32) if rating is None else rating
    return Dataset(
        user=user,
        item=np.asarray(item, np.int32),
        rating=np.asarray(rating, np.float32),
        user_ids=np.array([str(u) for u in range(n_users)], dtype=object),
        item_ids=np.array([f"i{i}" for i in range(n_items)], dtype=object),
        meta={"implicit": implicit},
    )


# Three users, five items.
# user 0: trains on item 0; test item 1 (rating 5, positive), item 2 (rating 2, not positive).
# user 1: trains on items 1, 2; test item 3 (rating 4, positive).
# user 2: test item 4 (rating 1): no positive at threshold 4.
TRAIN = make_dataset([0, 1, 1], [0, 1, 2], [5, 5, 3], n_users=3, n_items=5)
TEST = make_dataset([0, 0, 1, 2], [1, 2, 3, 4], [5, 2, 4, 1], n_users=3, n_items=5)
SCORES = jnp.array(
    [
        [0.9, 0.1, 0.8, 0.5, 0.3],
        [0.2, 0.9, 0.9, 0.7, 0.1],
        [0.5, 0.4, 0.3, 0.2, 0.1],
    ]
)


def table_score_fn(user_ids):
    return SCORES[user_ids]


def test_full_ranking_by_hand():
    got = evaluate_full_ranking(
        table_score_fn, TRAIN, TEST, ks=[2, 5], metrics=ALL, chunk_size=2, positive_threshold=4.0
    )
    # user 0 (item 0 masked): list = [2 (0.8), 3 (0.5), 4 (0.3), 1 (0.1)]; positive item 1 at
    #   rank 4. @2: all 0. @5: hit 1, recall 1, precision 1/5, mrr 1/4, ndcg 1/log2(5),
    #   map = (1/4) / 1.
    # user 1 (items 1, 2 masked): list = [3 (0.7), 0 (0.2), 4 (0.1)]; positive 3 at rank 1.
    #   @2: hit 1, recall 1, precision 1/2, mrr 1, ndcg 1, map 1. @5: precision 1/5.
    # user 2: no positive -> left out.
    expected = {
        "hit@2": 0.5, "recall@2": 0.5, "precision@2": 0.25, "mrr@2": 0.5, "ndcg@2": 0.5,
        "map@2": 0.5,
        "hit@5": 1.0, "recall@5": 1.0, "precision@5": 0.2, "mrr@5": (0.25 + 1) / 2,
        "ndcg@5": (1 / LOG2_5 + 1) / 2, "map@5": (0.25 + 1) / 2,
        # top-2 items: user 0 {2, 3}, user 1 {3, 0} -> {0, 2, 3} = 3 of 5 items.
        # top-5: user 0 {2, 3, 4, 1}, user 1 {3, 0, 4} -> all 5 items.
        "itemcoverage@2": 0.6, "itemcoverage@5": 1.0,
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    assert got["n_users_evaluated"] == 2
    assert got["n_users_no_positive"] == 1
    # Keys come grouped by K, in the order of `metrics`, then the counts.
    assert list(got)[:7] == [f"{name}@2" for name in ALL]


def test_popularity_list_metrics_by_hand():
    got = evaluate_full_ranking(
        table_score_fn, TRAIN, TEST, ks=[2], positive_threshold=4.0,
        metrics=["ndcg", "itemcoverage", "averagepopularity", "giniindex"],
    )
    # top-2 lists of the evaluated users: user 0 {2, 3}, user 1 {3, 0}; training counts
    # item 0: 1, item 1: 1, item 2: 1, items 3, 4: 0 -> mean popularity per list (1 + 0) / 2
    # and (0 + 1) / 2: 0.5. Recommendation counts [1, 0, 1, 2, 0], sorted [0, 0, 1, 1, 2]:
    # Gini = sum((2i - 6) c_i) / (5 * 4) over i = 1..5 = (0 + 0 + 0 + 2 + 8) / 20 = 0.5.
    assert got["averagepopularity@2"] == pytest.approx(0.5)
    assert got["giniindex@2"] == pytest.approx(0.5)
    assert got["itemcoverage@2"] == pytest.approx(0.6)
    assert list(got)[:4] == ["ndcg@2", "itemcoverage@2", "averagepopularity@2", "giniindex@2"]
    assert gini_index(np.array([3, 3, 3])) == pytest.approx(0.0)  # every item equally
    assert gini_index(np.array([0, 0, 0, 9])) == pytest.approx(0.75)  # one item: (n - 1) / n
    with pytest.raises(ValueError, match="averagepopularity"):
        evaluate_candidates(lambda u, i: SCORES[u, i], TEST, ks=[2], positive_threshold=4.0,
                            metrics=["averagepopularity"])


def test_full_ranking_without_masking_and_threshold():
    got = evaluate_full_ranking(
        table_score_fn, TRAIN, TEST, ks=[5], metrics=["ndcg"], mask_train=False,
        positive_threshold=4.0,
    )
    # user 0 unmasked: list = [0, 2, 3, 4, 1] -> positive at rank 5: ndcg = 1/log2(6).
    # user 1 unmasked: list = [1, 2, 3, 0, 4] (ties 1, 2 by index) -> positive 3 at rank 3:
    #   ndcg = 1/log2(4) = 1/2.
    assert got["ndcg@5"] == pytest.approx((1 / math.log2(6) + 0.5) / 2)

    # positive_threshold=None: every test row is positive (rating > 0); user 2 now counts.
    got = evaluate_full_ranking(
        table_score_fn, TRAIN, TEST, ks=[1], metrics=["hit", "recall"], positive_threshold=None
    )
    # user 0: positives {1, 2}; list [2, 3, 4, 1] -> hit@1 = 1, recall@1 = 1/2.
    # user 1: hit@1 = 1, recall 1. user 2: positive 4, list [0, 1, 2, 3, 4] -> 0.
    assert got["hit@1"] == pytest.approx(2 / 3)
    assert got["recall@1"] == pytest.approx(1.5 / 3)
    assert got["n_users_evaluated"] == 3 and got["n_users_no_positive"] == 0


def test_implicit_data_use_label_above_zero():
    test = make_dataset([0, 1], [1, 3], n_users=3, n_items=5, implicit=True)
    got = evaluate_full_ranking(
        table_score_fn, TRAIN, test, ks=[5], metrics=["hit"], positive_threshold=4.0
    )
    assert got["n_users_evaluated"] == 2 and got["hit@5"] == 1.0


def test_test_positive_masked_as_training_item_is_not_counted():
    # user 1's only test positive (item 1) is also a training item: masked -> no positive.
    test = make_dataset([0, 1], [1, 1], [5, 5], n_users=3, n_items=5)
    got = evaluate_full_ranking(
        table_score_fn, TRAIN, test, ks=[5], metrics=["hit"], positive_threshold=4.0
    )
    assert got["n_users_evaluated"] == 1 and got["n_users_no_positive"] == 2


def random_split(key_seed: int, n_users: int, n_items: int, n_train: int, n_test: int):
    """Each user gets n_train training and n_test disjoint test items, drawn at random."""
    rng = np.random.default_rng(key_seed)
    items = np.argsort(rng.random((n_users, n_items)), axis=1)[:, : n_train + n_test]
    users = np.repeat(np.arange(n_users), n_train + n_test).reshape(n_users, -1)
    train = make_dataset(
        users[:, :n_train].ravel(), items[:, :n_train].ravel(),
        n_users=n_users, n_items=n_items, implicit=True,
    )
    test = make_dataset(
        users[:, n_train:].ravel(), items[:, n_train:].ravel(),
        n_users=n_users, n_items=n_items, implicit=True,
    )
    return train, test


@jax.jit
def random_scores(key, user_ids, n_items_like):
    # One independent stream per user, so a user's scores do not depend on the chunking.
    def one(user):
        return jax.random.uniform(jax.random.fold_in(key, user), n_items_like.shape)

    return jax.vmap(one)(user_ids)


def test_results_do_not_depend_on_chunk_size():
    n_users, n_items = 37, 60
    train, test = random_split(0, n_users, n_items, 5, 3)
    # Drop user 4's test rows so a user without positives sits inside a chunk.
    test = test.subset(test.user != 4)
    shape = jnp.zeros(n_items)
    key = jax.random.key(7)
    scores_fn = jax.jit(lambda users: jnp.round(random_scores(key, users, shape), 1))  # ties
    results = [
        evaluate_full_ranking(
            scores_fn, train, test, ks=[1, 5, 10], metrics=ALL, chunk_size=chunk_size,
            return_per_user=True,
        )
        for chunk_size in (1, 6, 64)
    ]
    first = results[0]
    assert first["n_users_evaluated"] == 36 and first["n_users_no_positive"] == 1
    for other in results[1:]:
        for name, value in first.items():
            if name == "per_user":
                for key_name, array in value.items():
                    np.testing.assert_array_equal(array, other["per_user"][key_name])
            else:
                assert other[name] == value, name


def test_full_ranking_matches_dense_metrics():
    n_users, n_items = 20, 30
    train, test = random_split(1, n_users, n_items, 4, 2)
    key = jax.random.key(3)
    shape = jnp.zeros(n_items)
    got = evaluate_full_ranking(
        lambda users: random_scores(key, users, shape), train, test, ks=[3, 10],
        metrics=["ndcg", "map"], chunk_size=8, return_per_user=True,
    )
    scores = random_scores(key, jnp.arange(n_users), shape)
    labels = test.interaction_matrix() > 0
    where = ~(train.interaction_matrix() > 0)
    dense = M.ranking_metrics(scores, labels, ks=(3, 10), names=("ndcg", "map"), where=where)
    for name in ("ndcg@3", "map@10"):
        np.testing.assert_allclose(got["per_user"][name], dense[name], atol=1e-7)
        assert got[name] == pytest.approx(float(np.mean(dense[name])), abs=1e-6)
    np.testing.assert_array_equal(got["per_user"]["user"], np.arange(n_users))


def test_score_fn_traced_once_for_all_chunks():
    traces = []

    @jax.jit
    def score_fn(user_ids):
        traces.append(user_ids.shape)
        return jnp.tile(-user_ids[:, None].astype(jnp.float32), (1, 30)) + jnp.arange(30.0)

    train, test = random_split(2, 50, 30, 3, 1)
    evaluate_full_ranking(score_fn, train, test, ks=[5], metrics=["hit"], chunk_size=16)
    assert traces == [(16,)]  # 50 users = 3 full chunks + a padded one, one trace


def test_constant_model_scores_zero():
    train, test = random_split(3, 40, 50, 10, 3)
    got = evaluate_full_ranking(
        lambda users: jnp.zeros((len(users), 50)), train, test, ks=[5, 20],
        metrics=["recall", "precision", "ndcg", "hit", "mrr", "map"],
    )
    for name, value in got.items():
        if "@" in name:
            assert value == 0.0, name


def test_random_model_hit_rate_is_near_its_expectation():
    # 943 users x 1,682 items, 20 training items masked and one test positive per user: a
    # random ranking puts the positive in the top 10 with probability 10 / (1682 - 20).
    n_users, n_items, k = 943, 1682, 10
    train, test = random_split(4, n_users, n_items, 20, 1)
    shape = jnp.zeros(n_items)
    hits = []
    for seed in range(3):
        key = jax.random.key(100 + seed)
        got = evaluate_full_ranking(
            lambda users, key=key: random_scores(key, users, shape), train, test,
            ks=[k], metrics=["hit", "recall"], chunk_size=256,
        )
        assert got["hit@10"] == got["recall@10"]  # one positive per user
        hits.append(got["hit@10"])
    p = k / (n_items - 20)
    standard_error = math.sqrt(p * (1 - p) / (3 * n_users))
    assert abs(np.mean(hits) - p) < 4 * standard_error


def test_candidates_protocol_and_literature_ndcg():
    # Coat-like: each user ranks only their own test items; positives have rating >= 4.
    # user 0: items 0 (5), 1 (1), 2 (4); user 1: items 1 (4), 3 (2); user 2: items 0 (1), 4 (2)
    # (no positive); user 3: no test row.
    test = make_dataset(
        [0, 0, 0, 1, 1, 2, 2], [0, 1, 2, 1, 3, 0, 4], [5, 1, 4, 4, 2, 1, 2],
        n_users=4, n_items=5,
    )
    table = jnp.array(
        [
            [0.1, 0.9, 0.5, 0.0, 0.0],
            [0.0, 0.2, 0.0, 0.8, 0.0],
            [0.3, 0.0, 0.0, 0.0, 0.6],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    got = evaluate_candidates(
        lambda users, items: table[users, items], test, ks=[2, 3],
        metrics=["ndcg", "recall", "itemcoverage"], positive_threshold=4.0,
        literature_ndcg=True, batch_size=4, chunk_size=2,
    )
    # user 0: list [1 (0.9), 2 (0.5, pos), 0 (0.1, pos)], R = 2.
    #   ndcg@2 = (1/log2(3)) / (1 + 1/log2(3)) = 0.38685; recall@2 = 1/2.
    #   ndcg@3 = (1/log2(3) + 1/2) / (1 + 1/log2(3)) = 0.69343; recall@3 = 1.
    # user 1: list [3 (0.8), 1 (0.2, pos)], R = 1: ndcg@2 = ndcg@3 = 1/log2(3); recall 1.
    ndcg0_2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    ndcg0_3 = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    ndcg1 = 1 / math.log2(3)
    assert got["ndcg@2"] == pytest.approx((ndcg0_2 + ndcg1) / 2)
    assert got["ndcg@3"] == pytest.approx((ndcg0_3 + ndcg1) / 2)
    assert got["recall@2"] == pytest.approx(0.75)
    assert got["recall@3"] == pytest.approx(1.0)
    # Literature: user 2 (no positive) scores 1 and is averaged in, separately named.
    assert got["literature_ndcg@2"] == pytest.approx((ndcg0_2 + ndcg1 + 1) / 3)
    assert got["literature_ndcg@3"] == pytest.approx((ndcg0_3 + ndcg1 + 1) / 3)
    # Coverage over evaluated users' lists: @2 {1, 2} U {3, 1} = 3 of 5 items.
    assert got["itemcoverage@2"] == pytest.approx(0.6)
    assert got["n_users_evaluated"] == 2
    assert got["n_users_no_positive"] == 1
    assert got["n_users_without_candidates"] == 1
    # Without the option no literature key appears, and the main keys are unchanged.
    plain = evaluate_candidates(
        lambda users, items: table[users, items], test, ks=[2, 3], metrics=["ndcg"],
        positive_threshold=4.0,
    )
    assert not any(name.startswith("literature_") for name in plain)
    assert plain["ndcg@2"] == pytest.approx(got["ndcg@2"])


def test_pointwise_by_hand():
    predictions = np.array([4.0, 2.0, 5.0, 1.0, 3.0])
    ratings = np.array([5.0, 1.0, 4.0, 2.0, 4.0])
    user = np.array([0, 0, 0, 1, 1])
    got = evaluate_pointwise(predictions, ratings, labels_threshold=4.0, user=user)
    # Errors -1, 1, 1, -1, -1: MSE = 1, RMSE = 1, MAE = 1.
    assert got["mse"] == pytest.approx(1.0)
    assert got["rmse"] == pytest.approx(1.0)
    assert got["mae"] == pytest.approx(1.0)
    # Labels (>= 4): [1, 0, 1, 0, 1]. Positives 4, 5, 3 vs negatives 2, 1: all 6 pairs right.
    assert got["auc"] == pytest.approx(1.0)
    # user 0: positives 4, 5 vs negative 2 -> 1; user 1: positive 3 vs negative 1 -> 1.
    assert got["auc_per_user"] == pytest.approx(1.0) and got["n_users_auc"] == 2
    # A user with one class only is skipped: user 1 has only positives here.
    got = evaluate_pointwise(predictions, np.array([5, 1, 4, 4, 4.0]), labels_threshold=4.0,
                             user=user)
    assert got["n_users_auc"] == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_full_ranking(table_score_fn, TRAIN, TEST, ks=[5], metrics=["ndcg", "ncdg"])
    with pytest.raises(ValueError, match="ks must be"):
        evaluate_full_ranking(table_score_fn, TRAIN, TEST, ks=[0], metrics=["ndcg"])
    other = make_dataset([0], [0], n_users=3, n_items=6)
    with pytest.raises(ValueError, match="share id maps"):
        evaluate_full_ranking(table_score_fn, TRAIN, other, ks=[5], metrics=["ndcg"])
    with pytest.raises(ValueError, match="returned shape"):
        evaluate_full_ranking(
            lambda users: jnp.zeros((len(users), 4)), TRAIN, TEST, ks=[5], metrics=["ndcg"]
        )
    # Pointwise names are accepted (an EvalConfig lists them) and computed elsewhere.
    got = evaluate_full_ranking(
        table_score_fn, TRAIN, TEST, ks=[5], metrics=["ndcg", "auc", "mse"],
        positive_threshold=4.0,
    )
    assert "auc" not in got and "ndcg@5" in got
