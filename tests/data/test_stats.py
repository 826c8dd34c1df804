"""Dataset statistics: hand-computed counts, quantiles and a JSON-safe result."""

from __future__ import annotations

import json

import numpy as np

from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN, from_arrays
from causalrec_jax.data.stats import dataset_statistics, format_statistics


def small_dataset():
    return from_arrays(
        ["a", "a", "b", "c"],
        ["x", "y", "x", "x"],
        rating=[5.0, 3.0, 5.0, 1.0],
        timestamp=[10.0, 20.0, 30.0, 40.0],
        given_split=[GIVEN_TRAIN, GIVEN_TRAIN, GIVEN_TRAIN, GIVEN_TEST],
        user_ids=["a", "b", "c", "d"],
        meta={"name": "tiny", "cleaning": {"duplicates_removed": np.int64(2)}},
    )


def test_statistics_hand_computed():
    stats = dataset_statistics(small_dataset())
    assert stats["name"] == "tiny"
    assert (stats["n_users"], stats["n_items"], stats["n_interactions"]) == (4, 2, 4)
    assert stats["users_with_interactions"] == 3 and stats["items_with_interactions"] == 2
    assert stats["density"] == 0.5
    assert stats["rating"] == {
        "non_finite": 0,
        "min": 1.0,
        "mean": 3.5,
        "max": 5.0,
        "distinct": 3,
        "distribution": {"1": 1, "3": 1, "5": 2},
    }
    # Per-user counts over active users are [2, 1, 1]; per-item counts [3, 1].
    assert stats["user_counts"] == {
        "min": 1.0, "p25": 1.0, "p50": 1.0, "p75": 1.5, "p90": 1.8, "max": 2.0
    }  # fmt: skip
    assert stats["item_counts"] == {
        "min": 1.0, "p25": 1.5, "p50": 2.0, "p75": 2.5, "p90": 2.8, "max": 3.0
    }  # fmt: skip
    assert stats["timestamp"] == {"min": 10.0, "max": 40.0, "span": 30.0}
    assert stats["given_split"] == {"train": 3, "valid": 0, "test": 1}
    assert stats["cleaning"] == {"duplicates_removed": 2}
    assert json.loads(json.dumps(stats)) == stats


def test_many_distinct_ratings_give_summary_only():
    dataset = from_arrays(np.arange(30), np.arange(30), rating=np.arange(30) / 10)
    rating = dataset_statistics(dataset)["rating"]
    assert "distribution" not in rating
    assert rating["distinct"] == 30
    assert np.isclose(rating["mean"], 1.45)
    assert "timestamp" not in dataset_statistics(dataset)


def test_format_statistics_is_readable():
    text = format_statistics(dataset_statistics(small_dataset()))
    assert "users             4 (3 with interactions)" in text
    assert "density           50.0000%" in text
    assert "1: 1, 3: 1, 5: 2" in text
    assert "given split       train 3, valid 0, test 1" in text
    assert "duplicates_removed 2" in text


def test_empty_dataset_statistics():
    empty = small_dataset().subset(np.zeros(4, dtype=bool))
    stats = dataset_statistics(empty)
    assert stats["n_interactions"] == 0 and stats["user_counts"] is None
    assert "users" in format_statistics(stats)
