"""Chunked catalogue scoring equals the dense computation: top-K, target ranks, metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.data.dataset import Dataset
from causalrec_jax.eval import catalogue
from causalrec_jax.eval.catalogue import chunked_target_rank, chunked_top_k, metrics_from_ranks
from causalrec_jax.eval.metrics import ranking_metrics
from causalrec_jax.eval.ranking import evaluate_full_ranking


def integer_problem(seed: int, batch: int, n_items: int, dim: int = 3, levels: int = 3):
    """Small integer vectors: scores are exact small integers, so ties are everywhere."""
    rng = np.random.default_rng(seed)
    queries = rng.integers(-1, 2, (batch, dim)).astype(np.float32)
    table = rng.integers(0, levels, (n_items, dim)).astype(np.float32)
    return jnp.asarray(queries), jnp.asarray(table)


def random_exclude(seed: int, batch: int, n_items: int, m: int) -> np.ndarray:
    """`[batch, m]` distinct item ids per user, the tail of some rows padded with -1."""
    rng = np.random.default_rng(seed)
    exclude = np.stack([rng.choice(n_items, m, replace=False) for _ in range(batch)])
    lengths = rng.integers(0, m + 1, batch)
    exclude[np.arange(m)[None, :] >= lengths[:, None]] = -1
    return exclude.astype(np.int32)


def dense_mask(exclude: np.ndarray, n_items: int) -> np.ndarray:
    mask = np.zeros((exclude.shape[0], n_items), bool)
    rows, cols = np.nonzero(exclude >= 0)
    mask[rows, exclude[rows, cols]] = True
    return mask


def dense_top_k(queries, table, k, excluded=None, bias=None):
    scores = queries @ table.T
    if bias is not None:
        scores = scores + bias[None, :]
    if excluded is not None:
        scores = jnp.where(excluded, -jnp.inf, scores)
    return jax.lax.top_k(scores, k)


@pytest.mark.parametrize(
    "n_items, chunk_size, k",
    [(103, 16, 5), (103, 16, 16), (64, 16, 7), (10, 64, 10), (50, 20, 15), (37, 37, 1)],
)
def test_top_k_equals_dense_with_ties(n_items, chunk_size, k):
    # k=15 with chunk 20 and n=50 leaves a last chunk of 10 < k items.
    queries, table = integer_problem(0, batch=9, n_items=n_items)
    scores, items = chunked_top_k(queries, table, k, chunk_size=chunk_size)
    want_scores, want_items = dense_top_k(queries, table, k)
    assert items.dtype == jnp.int32 and items.shape == (9, k)
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_array_equal(scores, want_scores)


def test_top_k_equals_dense_on_float_tables_with_bias():
    rng = np.random.default_rng(1)
    queries = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(1000, 8)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=1000), jnp.float32)
    scores, items = chunked_top_k(queries, table, 10, chunk_size=128, item_bias=bias)
    want_scores, want_items = dense_top_k(queries, table, 10, bias=bias)
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("m", [1, 12, 90])
def test_top_k_with_exclusion_equals_masked_dense(m):
    # m=90 of 100 items leaves some users fewer than k=20 rankable items: excluded ones then
    # fill the list at -inf in id order, as the masked dense top_k does.
    n_items = 100
    queries, table = integer_problem(2, batch=7, n_items=n_items)
    exclude = random_exclude(3, 7, n_items, m)
    scores, items = chunked_top_k(queries, table, 20, chunk_size=32, exclude=exclude)
    want_scores, want_items = dense_top_k(
        queries, table, 20, excluded=jnp.asarray(dense_mask(exclude, n_items))
    )
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_array_equal(scores, want_scores)


@pytest.mark.parametrize("chunk_size", [3, 4])
def test_signed_zeros_tie_as_in_item_topk(chunk_size):
    from causalrec_jax.eval.metrics import item_topk

    # A zero user vector: items whose entries are negative score -0.0, the others +0.0.
    table = jnp.asarray([[-1.0, -2.0], [1.0, 2.0], [-3.0, -1.0], [2.0, 1.0]])
    query = jnp.zeros((1, 2))
    scores = query @ table.T
    assert bool(jnp.signbit(scores[0, 0])) and not bool(jnp.signbit(scores[0, 1]))
    _, items = chunked_top_k(query, table, 3, chunk_size=chunk_size)
    np.testing.assert_array_equal(items, item_topk(scores, k=3))
    np.testing.assert_array_equal(items, [[0, 1, 2]])  # all tied: lower index first


def test_top_k_jits_once_for_inputs_of_one_shape():
    before = catalogue._chunked_top_k._cache_size()
    outs = []
    for seed in (10, 11):
        queries, table = integer_problem(seed, batch=4, n_items=77)
        exclude = random_exclude(seed, 4, 77, 5)
        outs.append(chunked_top_k(queries, table, 3, chunk_size=16, exclude=exclude))
        want = dense_top_k(queries, table, 3, excluded=jnp.asarray(dense_mask(exclude, 77)))
        np.testing.assert_array_equal(outs[-1][1], want[1])
    assert catalogue._chunked_top_k._cache_size() == before + 1
    assert not np.array_equal(outs[0][1], outs[1][1])


def test_top_k_rejects_bad_sizes():
    queries, table = integer_problem(0, batch=2, n_items=10)
    with pytest.raises(ValueError, match="k must be in"):
        chunked_top_k(queries, table, 11)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_top_k(queries, table, 5, chunk_size=4)
    with pytest.raises(ValueError, match="exclude"):
        chunked_top_k(queries, table, 2, exclude=jnp.zeros((3, 2), jnp.int32))


def dense_rank(queries, table, targets, excluded, pessimistic):
    scores = np.asarray(queries @ table.T)
    target = scores[np.arange(len(targets)), targets][:, None]
    others = ~excluded.copy()
    others[np.arange(len(targets)), targets] = False
    beats = scores >= target if pessimistic else scores > target
    return np.sum(beats & others, axis=1)


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("n_items, chunk_size", [(103, 16), (40, 40), (29, 64)])
def test_target_rank_equals_dense_count(ties, n_items, chunk_size):
    queries, table = integer_problem(4, batch=11, n_items=n_items)
    exclude = random_exclude(5, 11, n_items, 6)
    excluded = dense_mask(exclude, n_items)
    rng = np.random.default_rng(6)
    targets = np.array([rng.choice(np.flatnonzero(~row)) for row in excluded], np.int32)
    ranks = chunked_target_rank(
        queries, table, targets, chunk_size=chunk_size, exclude=exclude, ties=ties
    )
    assert ranks.dtype == jnp.int32
    want = dense_rank(queries, table, targets, excluded, ties == "pessimistic")
    np.testing.assert_array_equal(ranks, want)
    no_mask = chunked_target_rank(queries, table, targets, chunk_size=chunk_size, ties=ties)
    np.testing.assert_array_equal(
        no_mask, dense_rank(queries, table, targets, np.zeros_like(excluded), ties == "pessimistic")
    )


def test_constant_scores_rank_every_target_last():
    table = jnp.ones((50, 2), jnp.float32)
    queries = jnp.ones((3, 2), jnp.float32)
    targets = jnp.array([0, 25, 49])
    pessimistic = chunked_target_rank(queries, table, targets, chunk_size=8)
    optimistic = chunked_target_rank(queries, table, targets, chunk_size=8, ties="optimistic")
    np.testing.assert_array_equal(pessimistic, [49, 49, 49])
    np.testing.assert_array_equal(optimistic, [0, 0, 0])
    values = metrics_from_ranks(pessimistic, ks=[10])
    assert float(jnp.sum(values["hit@10"])) == 0.0


def test_metrics_from_ranks_by_hand():
    got = metrics_from_ranks(jnp.array([0, 1, 4, 10]), ks=[5], names=["hit", "ndcg", "mrr"])
    assert list(got) == ["hit@5", "ndcg@5", "mrr@5"]
    np.testing.assert_allclose(got["hit@5"], [1, 1, 1, 0])
    np.testing.assert_allclose(got["ndcg@5"], [1, 1 / np.log2(3), 1 / np.log2(6), 0], rtol=1e-6)
    np.testing.assert_allclose(got["mrr@5"], [1, 1 / 2, 1 / 5, 0], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown"):
        metrics_from_ranks(jnp.array([0]), ks=[5], names=["auc"])


def make_dataset(user, item, n_users, n_items) -> Dataset:
    return Dataset(
        user=np.asarray(user, np.int32),
        item=np.asarray(item, np.int32),
        rating=np.ones(len(user), np.float32),
        user_ids=np.array([str(u) for u in range(n_users)], dtype=object),
        item_ids=np.array([f"i{i}" for i in range(n_items)], dtype=object),
        meta={"implicit": True},
    )


def test_metrics_from_ranks_equal_the_repository_evaluators():
    # One test positive per user, training items masked, integer scores full of ties.
    n_users, n_items, m = 12, 60, 8
    queries, table = integer_problem(7, batch=n_users, n_items=n_items)
    exclude = random_exclude(8, n_users, n_items, m)
    excluded = dense_mask(exclude, n_items)
    rng = np.random.default_rng(9)
    targets = np.array([rng.choice(np.flatnonzero(~row)) for row in excluded], np.int32)
    rows, cols = np.nonzero(exclude >= 0)
    train = make_dataset(rows, exclude[rows, cols], n_users, n_items)
    test = make_dataset(np.arange(n_users), targets, n_users, n_items)
    ks, names = (1, 5, 20), ("hit", "ndcg", "mrr", "recall", "precision", "map")

    ranks = chunked_target_rank(queries, table, targets, chunk_size=16, exclude=exclude)
    got = metrics_from_ranks(ranks, ks=ks, names=names)

    scores = queries @ table.T
    labels = np.zeros((n_users, n_items), bool)
    labels[np.arange(n_users), targets] = True
    dense = ranking_metrics(scores, labels, ks=ks, names=names, where=~excluded)
    full = evaluate_full_ranking(
        lambda users: scores[users], train, test, ks=ks, metrics=names, chunk_size=5,
        return_per_user=True,
    )
    assert full["n_users_evaluated"] == n_users
    assert set(got) == set(dense)
    for name, value in got.items():
        np.testing.assert_allclose(value, dense[name], rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(value, full["per_user"][name], rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(float(jnp.mean(value)), full[name], rtol=1e-6, err_msg=name)
    # Ties matter here: the optimistic count would score better.
    optimistic = chunked_target_rank(
        queries, table, targets, chunk_size=16, exclude=exclude, ties="optimistic"
    )
    assert np.any(np.asarray(optimistic) < np.asarray(ranks))


def test_compiled_temporaries_are_bounded_by_the_chunk_not_the_catalogue():
    # Compiled only (nothing runs): XLA's temporary buffers for a 100k-item catalogue.
    batch, n_items, dim, chunk = 64, 100_000, 16, 2048
    queries = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
    table = jax.ShapeDtypeStruct((n_items, dim), jnp.float32)
    exclude = jax.ShapeDtypeStruct((batch, 10), jnp.int32)
    targets = jax.ShapeDtypeStruct((batch,), jnp.int32)
    top = catalogue._chunked_top_k.lower(
        queries, table, exclude, None, k=10, chunk_size=chunk, precision=None
    ).compile()
    rank = catalogue._chunked_target_rank.lower(
        queries, table, targets, exclude, None, chunk_size=chunk, pessimistic=True,
        precision=None,
    ).compile()
    chunk_bytes, dense_bytes = batch * chunk * 4, batch * n_items * 4
    for compiled in (top, rank):
        memory = compiled.memory_analysis()
        if memory is None:  # a backend without memory analysis
            pytest.skip("no memory_analysis on this backend")
        assert memory.temp_size_in_bytes <= 4 * chunk_bytes < dense_bytes / 10
