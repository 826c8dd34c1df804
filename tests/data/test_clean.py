"""Cleaning: invalid rows, each dedupe policy, iterative k-core with compaction, binarize."""

from __future__ import annotations

import numpy as np
import pytest

from causalrec_jax.config import DataConfig
from causalrec_jax.data.clean import binarize, clean, deduplicate, drop_invalid, k_core
from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN, from_arrays
from causalrec_jax.errors import ConfigError, DataFormatError


def duplicated_table():
    # Pair (a, x) appears three times (rows 0, 2, 4); every other pair once.
    return from_arrays(
        ["a", "a", "a", "b", "a", "b"],
        ["x", "y", "x", "x", "x", "y"],
        rating=[1.0, 2.0, 4.0, 4.0, 5.0, 1.0],
        timestamp=[10.0, 5.0, 30.0, 20.0, 20.0, 1.0],
    )


def rows_of(dataset):
    frame = dataset.to_frame()
    return list(zip(frame.user_id, frame.item_id, frame.rating, frame.timestamp, strict=True))


def test_dedupe_last_keeps_latest_in_time_and_file_order():
    result, report = deduplicate(duplicated_table(), "last")
    assert report == {"duplicates_found": 2, "duplicates_removed": 2}
    assert rows_of(result) == [
        ("a", "y", 2.0, 5.0),
        ("a", "x", 4.0, 30.0),
        ("b", "x", 4.0, 20.0),
        ("b", "y", 1.0, 1.0),
    ]


def test_dedupe_first_keeps_earliest():
    result, report = deduplicate(duplicated_table(), "first")
    assert report["duplicates_removed"] == 2
    assert rows_of(result) == [
        ("a", "x", 1.0, 10.0),
        ("a", "y", 2.0, 5.0),
        ("b", "x", 4.0, 20.0),
        ("b", "y", 1.0, 1.0),
    ]


def test_dedupe_mean_averages_rating_and_keeps_latest_time():
    result, _ = deduplicate(duplicated_table(), "mean")
    frame = result.to_frame()
    assert list(frame.user_id + frame.item_id) == ["ay", "ax", "bx", "by"]
    np.testing.assert_allclose(frame.rating, [2.0, 10.0 / 3.0, 4.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(frame.timestamp, [5.0, 30.0, 20.0, 1.0])


def test_dedupe_keep_counts_but_keeps_all():
    dataset = duplicated_table()
    result, report = deduplicate(dataset, "keep")
    assert report == {"duplicates_found": 2, "duplicates_removed": 0}
    assert len(result) == len(dataset)


def test_dedupe_ties_and_no_timestamp_use_file_order():
    tied = from_arrays(["a", "a", "a"], ["x", "x", "x"], [1.0, 2.0, 3.0], [7.0, 7.0, 7.0])
    untimed = from_arrays(["a", "a", "a"], ["x", "x", "x"], [1.0, 2.0, 3.0])
    for dataset in (tied, untimed):
        assert deduplicate(dataset, "last")[0].rating.tolist() == [3.0]
        assert deduplicate(dataset, "first")[0].rating.tolist() == [1.0]


def test_dedupe_is_per_given_split_part():
    dataset = from_arrays(
        ["a", "a", "a"],
        ["x", "x", "x"],
        [1.0, 2.0, 3.0],
        given_split=[GIVEN_TRAIN, GIVEN_TEST, GIVEN_TEST],
    )
    result, report = deduplicate(dataset, "last")
    assert report["duplicates_found"] == 1
    assert result.rating.tolist() == [1.0, 3.0]
    assert result.given_split.tolist() == [GIVEN_TRAIN, GIVEN_TEST]


def test_dedupe_rejects_unknown_policy():
    with pytest.raises(ConfigError, match="dedupe"):
        deduplicate(duplicated_table(), "latest")


def invalid_table(meta=None):
    return from_arrays(
        ["a", "b", "c", "d", "e"],
        ["x", "x", "y", "y", "x"],
        rating=[3.0, np.nan, 9.0, 4.0, 0.0],
        timestamp=[1.0, 2.0, 3.0, np.inf, 5.0],
        meta=meta,
    )


def test_drop_invalid_counts_nan_and_out_of_range():
    result, report = drop_invalid(invalid_table(), rating_min=1, rating_max=5)
    assert report == {"invalid_nan": 2, "invalid_out_of_range": 2, "invalid_removed": 4}
    assert result.to_frame().user_id.tolist() == ["a"]


def test_drop_invalid_falls_back_to_rating_scale():
    result, report = drop_invalid(invalid_table({"rating_scale": (1, 5)}))
    assert report["invalid_out_of_range"] == 2
    # An explicit bound wins over the scale.
    _, report = drop_invalid(invalid_table({"rating_scale": (1, 5)}), rating_max=10)
    assert report["invalid_out_of_range"] == 1
    # No bounds at all: only non-finite rows go.
    _, report = drop_invalid(invalid_table())
    assert report == {"invalid_nan": 2, "invalid_out_of_range": 0, "invalid_removed": 2}


def test_drop_invalid_error_names_field_count_and_row():
    with pytest.raises(DataFormatError, match=r"1 row where 'rating' is NaN.*row 1.*'b'.*'x'"):
        drop_invalid(invalid_table(), on_invalid="error")
    clean_ratings = from_arrays(["a", "b"], ["x", "y"], [1.0, 7.0], meta={"path": "f.csv"})
    with pytest.raises(DataFormatError, match=r"f.csv: 1 row where 'rating' is outside"):
        drop_invalid(clean_ratings, rating_max=5, on_invalid="error")


def k_core_table():
    # Item i3 has one rating; removing it leaves u3 with one, so u3 goes in a second pass.
    pairs = [
        ("u1", "i1"), ("u1", "i2"), ("u1", "i4"),
        ("u2", "i1"), ("u2", "i2"), ("u2", "i4"),
        ("u3", "i2"), ("u3", "i3"),
        ("u4", "i1"), ("u4", "i2"), ("u4", "i4"),
    ]  # fmt: skip
    users, items = zip(*pairs, strict=True)
    dataset = from_arrays(users, items, rating=np.arange(len(pairs), dtype=float))
    return dataset.replace(
        user_features=np.arange(4, dtype=np.float32)[:, None] * 10,
        item_features=np.arange(4, dtype=np.float32)[:, None],
        propensity_matrix=(np.arange(4)[:, None] * 10 + np.arange(4)[None, :]).astype(np.float32),
    )


def test_k_core_iterates_and_compacts_id_maps():
    result, report = k_core(k_core_table(), min_user=2, min_item=2)
    assert report == {
        "k_core_users_removed": 1,
        "k_core_items_removed": 1,
        "k_core_interactions_removed": 2,
        "k_core_iterations": 2,
    }
    assert result.user_ids.tolist() == ["u1", "u2", "u4"]
    assert result.item_ids.tolist() == ["i1", "i2", "i4"]
    assert np.bincount(result.user).min() >= 2 and np.bincount(result.item).min() >= 2
    # Features and propensities follow their users/items to the new indices.
    assert result.user_features[:, 0].tolist() == [0.0, 10.0, 30.0]
    assert result.item_features[:, 0].tolist() == [0.0, 1.0, 3.0]
    np.testing.assert_array_equal(result.propensity_matrix, [[0, 1, 3], [10, 11, 13], [30, 31, 33]])
    frame = result.to_frame()
    assert list(frame.user_id + frame.item_id)[-3:] == ["u4i1", "u4i2", "u4i4"]
    assert result.rating.tolist() == [0, 1, 2, 3, 4, 5, 8, 9, 10]


def test_k_core_zero_is_a_no_op_and_keeps_cold_users():
    dataset = from_arrays(["a"], ["x"], user_ids=["a", "cold"])
    assert k_core(dataset)[0] is dataset
    result, report = k_core(dataset, min_item=1)
    assert result.user_ids.tolist() == ["a", "cold"]
    assert report["k_core_users_removed"] == 0


def test_binarize():
    dataset = from_arrays(["a"] * 4, ["w", "x", "y", "z"], rating=[1.0, 3.0, 4.0, 5.0])
    result = binarize(dataset, 4)
    assert result.rating.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert result.rating.dtype == np.float32
    assert result.meta["binarized_at"] == 4.0 and result.meta["implicit"] is False


def test_clean_applies_every_step_and_reports_ints():
    dataset = from_arrays(
        ["a", "a", "a", "b", "b", "c"],
        ["x", "x", "y", "x", "y", "x"],
        rating=[1.0, 5.0, 4.0, np.nan, 2.0, 5.0],
        timestamp=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    )
    config = DataConfig(dedupe="last", k_core_users=2, binarize_threshold=4.0)
    result = clean(dataset, config)
    report = result.meta["cleaning"]
    assert report["rows_in"] == 6 and report["rows_out"] == 2
    assert report["invalid_nan"] == 1
    assert report["duplicates_removed"] == 1
    # b keeps one rating after the NaN row goes, c has one: both below the 2-core.
    assert report["k_core_users_removed"] == 2
    assert result.user_ids.tolist() == ["a"]
    assert result.rating.tolist() == [1.0, 1.0]
    assert all(isinstance(value, int) for value in report.values())
