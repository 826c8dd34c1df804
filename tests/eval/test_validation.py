"""Validation ranking metrics that mean something (issue 14 item 13).

Under the candidates protocol a user with at most K candidates has recall@K = 1 whatever the
model does, and a list of positives only is ordered perfectly by any scorer. On a validation
split metric@K therefore averages only the users whose list is informative at K, says how
many (`n_users_ranked@K`), and is NaN below `eval.min_ranked_users`; selecting on such a metric
is refused. The test split keeps the published protocol: same numbers, counts added.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from causalrec_jax.config import EvalConfig
from causalrec_jax.data.dataset import from_arrays
from causalrec_jax.errors import ConfigError
from causalrec_jax.eval.protocol import (
    check_validation_selection,
    evaluate_split,
    validation_ranked_users,
)
from causalrec_jax.eval.ranking import evaluate_candidates, informative_lists

LOG2_3 = math.log2(3.0)

# Six users, five items, K in {1, 2}; positives are ratings >= 4.
# user 0: items 0..3, ratings 5 1 4 2, scores .2 .9 .8 .1 -> order 1(-) 2(+) 0(+) 3(-)
#         informative at 1 and 2.
# user 1: items 0, 1, ratings 5 1, scores .3 .6 -> order 1(-) 0(+): 2 candidates, so
#         informative at 1 only (at 2 both items are in the top 2: recall@2 = 1 for any model).
# user 2: items 0, 1, 2, ratings 5 4 5 (no negative), scores .5 .2 .3: never informative.
# user 3: items 0, 1, 2, ratings 1 2 1 (no positive): not evaluated at all.
# user 4: items 2, 3, 4, ratings 4 1 1, scores .9 .7 .1 -> order 2(+) 3(-) 4(-):
#         informative at 1 and 2.
# user 5: no row.
USER = [0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
ITEM = [0, 1, 2, 3, 0, 1, 0, 1, 2, 0, 1, 2, 2, 3, 4]
RATING = [5, 1, 4, 2, 5, 1, 5, 4, 5, 1, 2, 1, 4, 1, 1]
SCORE = [.2, .9, .8, .1, .3, .6, .5, .2, .3, .4, .5, .6, .9, .7, .1]
SCORES = {(u, i): s for u, i, s in zip(USER, ITEM, SCORE, strict=True)}

# Per-user values by hand (users 0, 1, 2, 4).
RECALL = {1: {0: 0.0, 1: 0.0, 2: 1 / 3, 4: 1.0}, 2: {0: 0.5, 1: 1.0, 2: 2 / 3, 4: 1.0}}
NDCG = {1: {0: 0.0, 1: 0.0, 2: 1.0, 4: 1.0},
        2: {0: (1 / LOG2_3) / (1 + 1 / LOG2_3), 1: 1 / LOG2_3, 2: 1.0, 4: 1.0}}
INFORMATIVE = {1: [0, 1, 4], 2: [0, 4]}


def hand_made():
    return from_arrays(np.asarray(USER), np.asarray(ITEM), np.asarray(RATING, float),
                       user_ids=np.arange(6), item_ids=np.arange(5))


def score_pairs(users, items):
    return np.asarray([SCORES.get((int(u), int(i)), 0.0) for u, i in zip(users, items,
                                                                         strict=True)],
                      np.float32)


def eval_config(**changes) -> EvalConfig:
    settings = {"metrics": ("recall", "ndcg", "itemcoverage", "auc", "mse"), "ks": (1, 2),
                "protocol": "candidates", "min_ranked_users": 3}
    return EvalConfig(**{**settings, **changes})


def mean(values: dict[int, float], users) -> float:
    return float(np.mean([values[u] for u in users]))


def test_informative_lists_need_more_than_k_candidates_a_positive_and_a_negative():
    # candidates, positives: 4/2, 2/1, 3/3 (no negative), 3/0 (no positive), 3/1, 0/0
    got = informative_lists(np.array([4, 2, 3, 3, 3, 0]), np.array([2, 1, 3, 0, 1, 0]), [1, 2, 3])
    assert got[1].tolist() == [True, True, False, False, True, False]
    assert got[2].tolist() == [True, False, False, False, True, False]
    assert got[3].tolist() == [True, False, False, False, False, False]


def test_validation_averages_informative_users_only_and_counts_them():
    test = hand_made()
    every = evaluate_candidates(score_pairs, test, ks=[1, 2], metrics=["recall", "ndcg"],
                                positive_threshold=4.0)
    only = evaluate_candidates(score_pairs, test, ks=[1, 2], metrics=["recall", "ndcg"],
                               positive_threshold=4.0, informative_only=True,
                               return_per_user=True)
    for k in (1, 2):
        # The published protocol: every user with a positive (0, 1, 2, 4).
        assert every[f"recall@{k}"] == pytest.approx(mean(RECALL[k], [0, 1, 2, 4]))
        assert every[f"ndcg@{k}"] == pytest.approx(mean(NDCG[k], [0, 1, 2, 4]))
        assert every[f"n_users_ranked@{k}"] == 4
        # Validation: the informative users alone.
        assert only[f"recall@{k}"] == pytest.approx(mean(RECALL[k], INFORMATIVE[k]))
        assert only[f"ndcg@{k}"] == pytest.approx(mean(NDCG[k], INFORMATIVE[k]))
        assert only[f"n_users_ranked@{k}"] == len(INFORMATIVE[k])
        assert every[f"n_users_informative@{k}"] == only[f"n_users_informative@{k}"] == len(
            INFORMATIVE[k])
    assert every["n_users_evaluated"] == only["n_users_evaluated"] == 4
    assert only["n_users_no_positive"] == 1 and only["n_users_without_candidates"] == 1
    # Per-user values: NaN where a user is not ranked at K.
    per_user = only["per_user"]
    assert per_user["user"].tolist() == [0, 1, 2, 4]
    assert np.isnan(per_user["recall@2"]).tolist() == [False, True, True, False]
    assert np.isnan(per_user["recall@1"]).tolist() == [False, False, True, False]


def test_validation_item_coverage_counts_ranked_users_only():
    test = hand_made()
    config = eval_config(metrics=("itemcoverage",), ks=(1,), min_ranked_users=1)
    # Top-1 items: user 0 -> 1, user 1 -> 1, user 2 -> 0, user 4 -> 2.
    published = evaluate_split(config, train=test, test=test, score_pairs_fn=score_pairs)
    validation = evaluate_split(config, train=test, test=test, score_pairs_fn=score_pairs,
                                validation=True)
    assert published["itemcoverage@1"] == pytest.approx(3 / 5)  # {0, 1, 2}
    assert validation["itemcoverage@1"] == pytest.approx(2 / 5)  # user 2 left out: {1, 2}


def test_too_few_ranked_users_give_nan_with_their_count():
    test = hand_made()
    values = evaluate_split(eval_config(), train=test, test=test, score_pairs_fn=score_pairs,
                            validation=True)
    # K = 1: 3 informative users = eval.min_ranked_users: defined.
    assert values["recall@1"] == pytest.approx(mean(RECALL[1], [0, 1, 4]))
    assert values["ndcg@1"] == pytest.approx(mean(NDCG[1], [0, 1, 4]))
    assert values["n_users_ranked@1"] == 3
    # K = 2: 2 users < 3: NaN for every ranking metric at 2, the count kept.
    for name in ("recall@2", "ndcg@2", "itemcoverage@2"):
        assert math.isnan(values[name]), name
    assert values["n_users_ranked@2"] == 2
    # auc_per_user: users 0, 1 and 4 have a positive and a negative.
    assert values["n_users_auc"] == 3 and not math.isnan(values["auc_per_user"])
    # Pooled metrics are unaffected.
    assert not math.isnan(values["auc"]) and not math.isnan(values["mse"])
    stricter = evaluate_split(eval_config(min_ranked_users=4), train=test, test=test,
                              score_pairs_fn=score_pairs, validation=True)
    assert math.isnan(stricter["recall@1"]) and math.isnan(stricter["auc_per_user"])
    assert stricter["n_users_ranked@1"] == 3 and stricter["n_users_auc"] == 3
    # The test split is never restricted: every user with a positive, whatever the minimum.
    published = evaluate_split(eval_config(min_ranked_users=4), train=test, test=test,
                               score_pairs_fn=score_pairs)
    assert published["recall@2"] == pytest.approx(mean(RECALL[2], [0, 1, 2, 4]))
    assert published["n_users_ranked@2"] == 4 and published["n_users_informative@2"] == 2
    assert not math.isnan(published["auc_per_user"])


def test_counts_known_before_training_match_the_evaluation():
    test = hand_made()
    config = eval_config()
    counts = validation_ranked_users(config, test)
    values = evaluate_split(config, train=test, test=test, score_pairs_fn=score_pairs,
                            validation=True)
    assert counts == {"recall@1": 3, "ndcg@1": 3, "itemcoverage@1": 3, "recall@2": 2,
                      "ndcg@2": 2, "itemcoverage@2": 2, "auc_per_user": 3}
    for name, count in counts.items():
        key = "n_users_auc" if name == "auc_per_user" else f"n_users_ranked@{name[-1]}"
        assert values[key] == count
    # Full ranking keeps every user with a positive: nothing restricted, nothing to refuse.
    assert validation_ranked_users(eval_config(protocol="full"), test) == {"auc_per_user": 3}


def test_selecting_on_a_metric_too_few_users_can_be_ranked_on_is_refused():
    test = hand_made()
    with pytest.raises(ConfigError) as error:
        check_validation_selection(eval_config(), test, "ndcg@2", "train.early_stopping_metric")
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        "train.early_stopping_metric = 'ndcg@2': only 2 validation users have more than 2 "
        "candidates, a positive and a negative (eval.min_ranked_users = 3); select on mse or "
        "auc, pooled over all validation ratings, or use a larger validation split")
    with pytest.raises(ConfigError, match=r"only 3 validation users have both a positive and "
                                          r"a negative \(eval.min_ranked_users = 4\)"):
        check_validation_selection(eval_config(min_ranked_users=4), test, "auc_per_user",
                                   "--metric")
    # Enough users, pooled metrics, full ranking: accepted.
    for metric in ("ndcg@1", "recall@1", "mse", "auc", "auc_per_user"):
        check_validation_selection(eval_config(), test, metric, "train.early_stopping_metric")
    check_validation_selection(eval_config(protocol="full"), test, "ndcg@2", "key")
    # No pooled metric computed: the message says to add one.
    with pytest.raises(ConfigError, match=r"select on mse or auc \(add it to eval.metrics\)"):
        check_validation_selection(eval_config(metrics=("ndcg",)), test, "ndcg@2", "key")


def test_min_ranked_users_is_validated():
    with pytest.raises(ConfigError, match="eval.min_ranked_users"):
        EvalConfig(min_ranked_users=0)
    assert EvalConfig().min_ranked_users == 30


# A Coat-like test split (16 MAR items per user, 5 users with 15) scored by a fixed random
# table: the numbers `evaluate_split` gave before validation was restricted (commit b186151).
# The test block must not move.
BEFORE = {
    "recall@5": 0.2788392907008529, "precision@5": 0.3650000084191561,
    "ndcg@5": 0.3525615897029638, "hit@5": 0.95, "mrr@5": 0.5420833352953196,
    "map@5": 0.2188750034198165, "itemcoverage@5": 1.0,
    "recall@10": 0.6348313592374325, "precision@10": 0.40750000569969413,
    "ndcg@10": 0.5042613372206688, "hit@10": 1.0, "mrr@10": 0.5487797640264034,
    "map@10": 0.3169562461785972,
    "recall@15": 0.9327876970171929, "precision@15": 0.39833335801959036,
    "ndcg@15": 0.6486680254340171, "map@15": 0.4402487624436617,
    "n_users_evaluated": 40, "n_users_no_positive": 0, "n_users_without_candidates": 0,
    "literature_ndcg@5": 0.3525615897029638, "literature_ndcg@15": 0.6486680254340171,
    "auc": 0.48778653144836426, "mse": 12.213444709777832,
    "auc_per_user": 0.47205764055252075,
}


def coat_like():
    rng = np.random.default_rng(7)
    n_users, n_items, per_user = 40, 30, 16
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False)
                            for _ in range(n_users)])
    ratings = rng.integers(1, 6, len(users)).astype(float)
    keep = np.ones(len(users), bool)
    keep[np.arange(5) * per_user + 3] = False  # users 0..4 keep 15 items
    dataset = from_arrays(users[keep], items[keep], ratings[keep], user_ids=np.arange(n_users),
                          item_ids=np.arange(n_items))
    table = rng.normal(size=(n_users, n_items)).astype(np.float32)
    return dataset, lambda u, i: table[np.asarray(u), np.asarray(i)]


def test_the_published_test_protocol_gives_the_same_numbers_as_before():
    dataset, pairs = coat_like()
    config = EvalConfig(metrics=("recall", "precision", "ndcg", "hit", "mrr", "map",
                                 "itemcoverage", "auc", "mse"), ks=(5, 10, 15),
                        protocol="candidates")
    test = evaluate_split(config, train=dataset, test=dataset, score_pairs_fn=pairs,
                          literature=True)
    for name, value in BEFORE.items():
        assert test[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    # Only counts were added: every user is ranked at every K; at 15 the five users with
    # 15 items are not informative (their recall@15 is 1 whatever the scores).
    assert [test[f"n_users_ranked@{k}"] for k in (5, 10, 15)] == [40, 40, 40]
    assert [test[f"n_users_informative@{k}"] for k in (5, 10, 15)] == [40, 40, 35]
    # The same split read as validation drops those five at K = 15 only.
    valid = evaluate_split(config, train=dataset, test=dataset, score_pairs_fn=pairs,
                           validation=True)
    per_user = evaluate_candidates(pairs, dataset, ks=[15], metrics=["recall"],
                                   positive_threshold=4.0, return_per_user=True)["per_user"]
    assert valid["recall@5"] == test["recall@5"] and valid["ndcg@10"] == test["ndcg@10"]
    assert valid["n_users_ranked@15"] == 35
    assert valid["recall@15"] == pytest.approx(per_user["recall@15"][5:].mean())
    assert valid["recall@15"] < BEFORE["recall@15"]
