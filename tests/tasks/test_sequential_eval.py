"""The sequential runs' evaluation: users encoded once by length bucket, the target's rank
counted in item chunks, gives the numbers of the dense full ranking of `max_len` histories,
masked and unmasked, for histories of every length."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from causalrec_jax.data.dataset import from_arrays
from causalrec_jax.data.sequences import history_matrix, user_sequences
from causalrec_jax.eval.ranking import evaluate_full_ranking
from causalrec_jax.models.bert4rec import BERT4Rec
from causalrec_jax.models.hstu import HSTU
from causalrec_jax.models.sasrec import SASRec
from causalrec_jax.tasks.sequential import evaluate_chunked, make_scorer, user_queries

N_USERS, N_ITEMS, MAX_LEN = 40, 17, 12


def _data(seed=0):
    """Users with 1..20 training items (some longer than MAX_LEN, most shorter, some exactly a
    bucket's width) and one test item each, sometimes one they already have; one test row
    has rating 0 (not a positive: never ranked)."""
    rng = np.random.default_rng(seed)
    users, items, times, ratings = [], [], [], []
    for user in range(N_USERS):
        length = int(rng.integers(2, 22)) if user >= 3 else (3, 5, 9)[user]
        users += [f"u{user}"] * length
        items += [f"i{item}" for item in rng.integers(0, N_ITEMS, length)]
        times += list(range(length))
        ratings += [1.0] * (length - 1) + [0.0 if user == 5 else 1.0]
    whole = from_arrays(np.asarray(users), np.asarray(items), np.asarray(ratings),
                        np.asarray(times, np.float64))
    last = np.r_[np.flatnonzero(np.diff(whole.user)), len(whole.user) - 1]
    test = np.zeros(len(whole.user), bool)
    test[last] = True
    return whole.subset(np.flatnonzero(~test)), whole.subset(np.flatnonzero(test))


@pytest.mark.parametrize("model_class", [SASRec, BERT4Rec, HSTU])
def test_bucketed_chunked_evaluation_equals_the_dense_ranking(model_class):
    train, test = _data()
    model = model_class(N_ITEMS, MAX_LEN, key=jax.random.key(3), hidden_dim=8, n_layers=2,
                        n_heads=2, dropout_rate=0.0)
    graphdef, params = nnx.split(model, nnx.Param)
    scorer = make_scorer(graphdef, params)
    history = history_matrix(user_sequences(train), MAX_LEN)
    lengths = (history != 0).sum(axis=1)
    assert lengths.min() < 4 and lengths.max() == MAX_LEN  # every bucket is used
    assert {2, 4, 8} <= set(lengths.tolist())  # a history exactly a bucket's width
    users = np.arange(N_USERS)
    queries, _ = user_queries(scorer.query, history, users, chunk_size=6, buckets=(2, 4, 8))
    full, _ = scorer.query(jnp.asarray(history))
    np.testing.assert_allclose(queries, np.asarray(full), rtol=1e-4, atol=1e-5)
    ks, metrics = (1, 5, 10), ("hit", "ndcg", "mrr", "recall")
    chunked = evaluate_chunked(scorer.query, history, train, test, ks=ks, metrics=metrics,
                               chunk_size=6, item_chunk=5, masks=(True, False),
                               buckets=(2, 4, 8))
    for mask, ours in zip((True, False), chunked, strict=True):
        dense = evaluate_full_ranking(
            lambda u: scorer.score(jnp.asarray(history)[u]), train, test, ks=ks,
            metrics=metrics, chunk_size=6, mask_train=mask)
        assert set(ours) == {f"{m}@{k}" for m in metrics for k in ks}
        for name, value in ours.items():
            assert value == pytest.approx(dense[name], abs=1e-9), (mask, name)
    assert chunked[0]["hit@10"] != chunked[1]["hit@10"]  # masking matters here


def test_no_rankable_user_gives_nan_not_an_empty_result():
    train, test = _data()
    model = SASRec(N_ITEMS, MAX_LEN, key=jax.random.key(0), hidden_dim=8, n_layers=1,
                   n_heads=1, dropout_rate=0.0)
    scorer = make_scorer(*nnx.split(model, nnx.Param))
    history = history_matrix(user_sequences(train), MAX_LEN)
    # every user's target is an item they already have: none is rankable with the mask
    first_items = test.replace(item=np.asarray([user_sequences(train)[u][0]
                                                for u in test.user], test.item.dtype))
    masked, unmasked = evaluate_chunked(scorer.query, history, train, first_items, ks=(10,),
                                        metrics=("ndcg",), chunk_size=8, item_chunk=5,
                                        masks=(True, False))
    assert set(masked) == {"ndcg@10"} and np.isnan(masked["ndcg@10"])
    assert 0 < unmasked["ndcg@10"] <= 1
