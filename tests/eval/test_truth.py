"""Tests of evaluation against the simulator's ground truth (`eval/truth.py`)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.config import SimConfig
from causalrec_jax.data.dataset import Dataset
from causalrec_jax.eval import metrics as metrics_lib
from causalrec_jax.eval.truth import (
    evaluate_against_truth,
    pessimistic_order,
    rank_auc,
    sorts_on_host,
    truth_chunk_metrics,
)
from causalrec_jax.sim.world import GroundTruth, SparseGroundTruth, simulate_dataset, truth_rows

N_USERS, N_ITEMS = 37, 23
KS = (1, 5, 10)
CHUNK = 8  # most tests share this chunk size (and KS): one compilation


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(scope="module")
def world():
    """A hand-made world (no simulator compile): relevance, E[Y] = 1 + 4 r, a random train."""
    rng = np.random.default_rng(11)
    relevance = _sigmoid(1.5 * rng.normal(size=(N_USERS, N_ITEMS))).astype(np.float32)
    truth = _fake_truth(relevance, 1.0 + 4.0 * relevance)
    user, item = np.nonzero(rng.random((N_USERS, N_ITEMS)) < 0.15)
    train = Dataset(
        user=user.astype(np.int32),
        item=item.astype(np.int32),
        rating=np.ones(len(user), np.float32),
        user_ids=np.arange(N_USERS).astype(str).astype(object),
        item_ids=np.arange(N_ITEMS).astype(str).astype(object),
    )
    return train, truth


def _scorer(matrix):
    matrix = jnp.asarray(matrix, jnp.float32)
    return lambda users: matrix[users]


def _fake_truth(relevance, expected_rating=None) -> GroundTruth:
    """A GroundTruth holding only hand-written relevance (other fields are placeholders)."""
    relevance = jnp.asarray(relevance, jnp.float32)
    n_users, n_items = relevance.shape
    zeros = jnp.zeros((n_users, n_items), jnp.float32)
    return GroundTruth(
        user_factors=jnp.zeros((n_users, 2)),
        item_factors=jnp.zeros((n_items, 2)),
        item_popularity=jnp.ones(n_items),
        standardized_log_popularity=jnp.zeros(n_items),
        relevance=relevance,
        expected_rating=zeros if expected_rating is None else jnp.asarray(expected_rating),
        ratings=zeros.astype(jnp.int32),
        propensity=zeros,
        marginal_propensity=zeros,
        observed=zeros.astype(bool),
        exposure_base=jnp.zeros(()),
    )


def _reference(scores, relevance, where, ks, threshold):
    """Numpy per-user loop: graded NDCG, recall and precision with pessimistic ties."""
    scores = np.asarray(scores, np.float64)
    relevance = np.asarray(relevance, np.float64)
    out = {f"{name}@{k}": [] for k in ks for name in ("ndcg", "recall", "precision")}
    for u in range(scores.shape[0]):
        items = np.flatnonzero(where[u])
        if len(items) == 0:
            continue
        rel, score = relevance[u, items], scores[u, items]
        order = np.lexsort((rel, -score))  # score descending, then relevance ascending
        ranked = rel[order]
        ideal = np.sort(rel)[::-1]
        n_relevant = int((rel >= threshold).sum())
        for k in ks:
            discounts = 1.0 / np.log2(np.arange(2, min(k, len(items)) + 2))
            dcg = float(ranked[:k] @ discounts)
            out[f"ndcg@{k}"].append(dcg / float(ideal[:k] @ discounts))
            if n_relevant:
                hits = int((ranked[:k] >= threshold).sum())
                out[f"recall@{k}"].append(hits / n_relevant)
                out[f"precision@{k}"].append(hits / k)
    return {f"truth_{name}": float(np.mean(values)) for name, values in out.items()}


def test_perfect_scorer_scores_one(world):
    _, truth = world
    result = evaluate_against_truth(
        _scorer(truth.relevance), truth_rows(truth), ks=KS, chunk_size=CHUNK
    )
    for k in KS:
        assert result[f"truth_ndcg@{k}"] == pytest.approx(1.0, abs=1e-6)
    assert result["truth_auc"] == 1.0
    assert result["truth_auc_per_user"] == 1.0
    assert result["truth_n_users"] == N_USERS
    # Recall@K of a perfect ranking is min(K, R) / R.
    relevant = np.asarray(truth.relevance) >= 0.5
    n_relevant = relevant.sum(axis=1)
    with_relevant = n_relevant > 0
    assert result["truth_n_users_no_relevant"] == int((~with_relevant).sum())
    for k in KS:
        expected = np.mean(np.minimum(k, n_relevant[with_relevant]) / n_relevant[with_relevant])
        assert result[f"truth_recall@{k}"] == pytest.approx(expected, rel=1e-6)
        precision = np.mean(np.minimum(k, n_relevant[with_relevant]) / k)
        assert result[f"truth_precision@{k}"] == pytest.approx(precision, rel=1e-6)
    # The relevance is not on the rating scale: MSE against E[Y] is large.
    assert result["truth_mse"] > 1.0


def test_expected_rating_scorer_has_zero_mse_and_rating_scale_flag(world):
    _, truth = world
    result = evaluate_against_truth(
        _scorer(truth.expected_rating), truth_rows(truth), ks=KS, chunk_size=CHUNK
    )
    assert result["truth_mse"] == pytest.approx(0.0, abs=1e-12)
    # E[Y] is increasing in r, so it ranks as well as the relevance itself.
    assert result["truth_ndcg@5"] == pytest.approx(1.0, abs=1e-6)
    shifted = evaluate_against_truth(
        _scorer(truth.expected_rating + 0.5), truth_rows(truth), ks=KS, chunk_size=CHUNK
    )
    assert shifted["truth_mse"] == pytest.approx(0.25, rel=1e-5)
    unscaled = evaluate_against_truth(
        _scorer(truth.expected_rating),
        truth_rows(truth),
        ks=KS,
        chunk_size=CHUNK,
        rating_scale=False,
    )
    assert "truth_mse" not in unscaled
    assert unscaled["truth_ndcg@5"] == result["truth_ndcg@5"]


def test_reversed_scorer_is_worst(world):
    _, truth = world
    result = evaluate_against_truth(
        _scorer(-truth.relevance), truth_rows(truth), ks=KS, chunk_size=CHUNK
    )
    assert result["truth_auc"] < 0.1
    assert result["truth_auc_per_user"] < 0.1
    for k in KS:
        assert result[f"truth_ndcg@{k}"] < 0.9
    # Matches the numpy reference (the worst ordering, item by item).
    where = np.ones(truth.relevance.shape, bool)
    reference = _reference(-truth.relevance, truth.relevance, where, KS, 0.5)
    for name, value in reference.items():
        assert result[name] == pytest.approx(value, rel=1e-5), name


def test_results_do_not_depend_on_chunk_size(world):
    train, truth = world
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=truth.relevance.shape), 1)  # many ties
    small = evaluate_against_truth(
        _scorer(scores), truth_rows(truth), ks=KS, train=train, chunk_size=7
    )
    large = evaluate_against_truth(
        _scorer(scores), truth_rows(truth), ks=KS, train=train, chunk_size=256
    )
    assert small.keys() == large.keys()
    for name in small:
        assert small[name] == pytest.approx(large[name], rel=1e-6, abs=1e-9), name
    assert small["truth_auc"] == large["truth_auc"]  # exact: one host-side sort


def test_graded_ndcg_by_hand():
    relevance = np.array([[0.9, 0.2, 0.6, 0.1], [0.3, 0.8, 0.7, 0.4]])
    scores = np.array([[1.0, 3.0, 2.0, 0.0], [5.0, 5.0, 5.0, 0.0]])
    truth = _fake_truth(relevance)
    result = evaluate_against_truth(_scorer(scores), truth_rows(truth), ks=(2,), chunk_size=3)
    log3 = math.log2(3)
    # User 0 ranks items 1, 2 (gains 0.2, 0.6); ideal is 0.9, 0.6.
    user0 = (0.2 + 0.6 / log3) / (0.9 + 0.6 / log3)
    # User 1 ties items 0..2: pessimistically the lowest relevance first (0.3, then 0.7).
    user1 = (0.3 + 0.7 / log3) / (0.8 + 0.7 / log3)
    assert result["truth_ndcg@2"] == pytest.approx((user0 + user1) / 2, rel=1e-6)
    # Relevant (>= 0.5): user 0 has {0, 2}, hits {2}; user 1 has {1, 2}, hits {2}.
    assert result["truth_recall@2"] == pytest.approx(0.5)
    assert result["truth_precision@2"] == pytest.approx(0.5)
    # Global AUC over 8 cells: 4 positives x 4 negatives, counted by hand (ties 1/2).
    # User 0 positives (scores 1, 2) beat negatives with scores 0 (both users) and 1 (tie).
    # Positive scores: 1, 2, 5, 5; negative scores: 3, 0, 5, 0.
    wins = (2 + 0.0) + (2 + 0.0) + (3 + 0.5) + (3 + 0.5)
    assert result["truth_auc"] == pytest.approx(wins / 16)
    assert result["truth_auc"] == pytest.approx(
        float(metrics_lib.auc(scores, relevance >= 0.5)), rel=1e-6
    )


def test_matches_numpy_reference_with_ties_and_mask(world):
    train, truth = world
    rng = np.random.default_rng(1)
    scores = np.round(np.asarray(truth.relevance) + rng.normal(0, 0.3, truth.relevance.shape), 1)
    result = evaluate_against_truth(
        _scorer(scores),
        truth_rows(truth),
        ks=KS,
        train=train,
        chunk_size=CHUNK,
        relevance_threshold=0.6,
    )
    where = np.ones(truth.relevance.shape, bool)
    where[train.user, train.item] = False
    reference = _reference(scores, truth.relevance, where, KS, 0.6)
    for name, value in reference.items():
        assert result[name] == pytest.approx(value, rel=1e-5), name
    labels = np.asarray(truth.relevance) >= 0.6
    assert result["truth_auc"] == pytest.approx(rank_auc(scores[where], labels[where]))
    per_user = np.asarray(metrics_lib.per_user_auc(scores, labels, where=where))
    assert result["truth_auc_per_user"] == pytest.approx(np.nanmean(per_user), rel=1e-6)


def test_masked_train_items_leave_the_ranking(world):
    train, truth = world
    assert len(train.user) > 0
    # Perfect on unmasked cells, but every training item is put on top and scored as a
    # relevant item would never be: masking must make this a perfect ranking again.
    relevance = np.asarray(truth.relevance)
    scores = relevance.copy()
    scores[train.user, train.item] = 10.0 - relevance[train.user, train.item]
    masked = evaluate_against_truth(
        _scorer(scores), truth_rows(truth), ks=KS, train=train, chunk_size=CHUNK
    )
    unmasked = evaluate_against_truth(_scorer(scores), truth_rows(truth), ks=KS, chunk_size=CHUNK)
    for k in KS:
        assert masked[f"truth_ndcg@{k}"] == pytest.approx(1.0, abs=1e-6)
        assert unmasked[f"truth_ndcg@{k}"] < 0.95
    assert masked["truth_auc"] == 1.0
    assert unmasked["truth_auc"] < 1.0
    # A user whose every item is masked is not evaluated.
    everything = Dataset(
        user=np.zeros(N_ITEMS, np.int32),
        item=np.arange(N_ITEMS, dtype=np.int32),
        rating=np.ones(N_ITEMS, np.float32),
        user_ids=train.user_ids,
        item_ids=train.item_ids,
    )
    result = evaluate_against_truth(
        _scorer(relevance), truth_rows(truth), ks=KS, train=everything, chunk_size=CHUNK
    )
    assert result["truth_n_users"] == N_USERS - 1


def test_sparse_world_agrees_with_dense_world():
    # Few enough users to calibrate on all of them: both paths draw the same world.
    config = SimConfig(
        n_users=19,
        n_items=N_ITEMS,
        latent_dim=4,
        mar_items_per_user=3,
        mean_exposure=0.15,
        seed=5,
        max_dense_cells=0,
        calibration_users=100,
    )
    _, sparse = simulate_dataset(config)
    _, dense = simulate_dataset(dataclasses.replace(config, max_dense_cells=10**6))
    assert isinstance(sparse, SparseGroundTruth) and isinstance(dense, GroundTruth)
    rng = np.random.default_rng(2)
    scores = np.asarray(dense.expected_rating) + rng.normal(0, 0.5, dense.relevance.shape)
    on_sparse = evaluate_against_truth(_scorer(scores), truth_rows(sparse), ks=KS, chunk_size=CHUNK)
    on_dense = evaluate_against_truth(_scorer(scores), truth_rows(dense), ks=KS, chunk_size=CHUNK)
    assert on_sparse.keys() == on_dense.keys()
    for name in on_dense:
        assert on_sparse[name] == pytest.approx(on_dense[name], rel=1e-5), name
    assert 0.5 < on_dense["truth_auc"] < 1.0
    assert on_dense["truth_mse"] == pytest.approx(0.25, rel=0.3)


def test_rank_auc_matches_mann_whitney():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 500).astype(np.float32)  # heavy ties
    labels = rng.random(500) < 0.3
    assert rank_auc(scores, labels) == pytest.approx(float(metrics_lib.auc(scores, labels)))
    assert rank_auc([1.0, 1.0], [1, 0]) == 0.5
    assert rank_auc([np.nan, 0.0], [1, 0]) == 0.0  # NaN ranks last
    assert math.isnan(rank_auc([1.0, 2.0], [1, 1]))


def test_rejects_bad_inputs(world):
    train, truth = world
    with pytest.raises(ValueError, match="shape"):
        evaluate_against_truth(lambda users: jnp.zeros((len(users), 3)), truth_rows(truth))
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate_against_truth(_scorer(truth.relevance), truth_rows(truth), chunk_size=0)
    with pytest.raises(TypeError, match="TruthRows"):
        evaluate_against_truth(_scorer(truth.relevance), train)
    with pytest.raises(TypeError, match="TruthRows"):  # the simulator's type, not its rows
        evaluate_against_truth(_scorer(truth.relevance), truth)


@pytest.mark.parametrize("ks", [(1, 3), (5, 12)])  # 12 > the 9 items: padded top lists
def test_the_host_order_gives_the_device_sorts_metrics_exactly(ks):
    rng = np.random.default_rng(3)
    batch, n_items = 40, 9
    # few distinct values: ties in scores and in relevance within and across classes
    scores = rng.integers(-2, 3, (batch, n_items)).astype(np.float32) / 2
    scores[0, :4] = np.nan
    scores[1, :] = -0.0
    scores[1, ::2] = 1e-42  # a denormal: XLA's CPU flushes it to zero, so must the host key
    scores[2, :3] = [np.inf, -np.inf, np.nan]
    relevance = rng.integers(0, 4, (batch, n_items)).astype(np.float32) / 3
    expected = 1 + 4 * relevance
    where = rng.random((batch, n_items)) > 0.25
    where[3] = False  # a user with nothing to rank
    where[4, 1:] = False  # one rankable item
    for mask in (where, None):
        device = truth_chunk_metrics(jnp.asarray(scores), jnp.asarray(relevance),
                                     jnp.asarray(expected), mask, 0.5, ks=ks)
        order = pessimistic_order(scores, relevance, mask)
        host = truth_chunk_metrics(jnp.asarray(scores), jnp.asarray(relevance),
                                   jnp.asarray(expected), mask, 0.5, ks=ks,
                                   order=jnp.asarray(order))
        assert set(device) == set(host)
        for name in device:
            np.testing.assert_array_equal(np.asarray(host[name]), np.asarray(device[name]),
                                          err_msg=name)
        # the rankable prefix is the device's order of values
        rankable = np.ones_like(where) if mask is None else mask
        for row in range(batch):
            kept = order[row][rankable[row][order[row]]]
            clean = np.where(np.isnan(scores[row]), -np.inf, scores[row]) + 0.0
            clean[np.abs(clean) < np.finfo(np.float32).tiny] = 0.0  # flushed, as on the CPU
            values = [(-clean[i], relevance[row, i]) for i in kept]
            assert values == sorted(values)
            assert rankable[row][order[row]].tolist() == sorted(rankable[row], reverse=True)
    assert sorts_on_host(jnp.asarray(scores)) == (jax.default_backend() == "cpu")
