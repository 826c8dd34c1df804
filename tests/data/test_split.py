"""Splits: sizes follow the ratios, no row is in two parts, no future leaks, seeds reproduce."""

from __future__ import annotations

import numpy as np
import pytest

from causalrec_jax.config import DataConfig
from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN, GIVEN_VALID, from_arrays
from causalrec_jax.data.split import (
    given_split,
    kfold_splits,
    leave_one_out_split,
    make_split,
    mar_slice_split,
    random_split,
    temporal_split,
    user_random_split,
)
from causalrec_jax.errors import SplitError


def table(n=1000, n_users=50, n_items=40, seed=0, **kwargs):
    """Random interactions whose timestamp is the row number: a unique id for each row."""
    rng = np.random.default_rng(seed)
    return from_arrays(
        rng.integers(0, n_users, n),
        rng.integers(0, n_items, n),
        rating=rng.integers(1, 6, n).astype(float),
        timestamp=np.arange(n, dtype=float),
        **kwargs,
    )


def row_ids(part):
    return part.timestamp.astype(int)


def assert_partition(dataset, parts):
    """Every row of the dataset is in exactly one part (checked by row id)."""
    ids = np.concatenate([row_ids(part) for part in parts])
    assert len(ids) == len(np.unique(ids)), "a row is in two parts"
    np.testing.assert_array_equal(np.sort(ids), row_ids(dataset))
    for part in parts:
        # Each row id still carries its own user and item.
        np.testing.assert_array_equal(part.user, dataset.user[row_ids(part)])
        np.testing.assert_array_equal(part.item, dataset.item[row_ids(part)])
        assert part.user_ids is dataset.user_ids and part.item_ids is dataset.item_ids


def test_random_split_sizes_partition_and_seed():
    dataset = table()
    split = random_split(dataset, (0.8, 0.1, 0.1), seed=3)
    assert (len(split.train), len(split.valid), len(split.test)) == (800, 100, 100)
    assert_partition(dataset, [split.train, split.valid, split.test])
    assert split.train.meta["split"] == "random" and split.test.meta["part"] == "test"
    again = random_split(dataset, (0.8, 0.1, 0.1), seed=3)
    np.testing.assert_array_equal(row_ids(again.test), row_ids(split.test))
    other = random_split(dataset, (0.8, 0.1, 0.1), seed=4)
    assert not np.array_equal(row_ids(other.test), row_ids(split.test))
    # Within a part rows keep file order.
    assert np.all(np.diff(row_ids(split.train)) > 0)


def test_random_split_without_valid():
    dataset = table(n=10)
    split = random_split(dataset, (0.7, 0.0, 0.3), seed=0)
    assert split.valid is None
    assert (len(split.train), len(split.test)) == (7, 3)
    split = random_split(dataset, (0.6, 0.4), seed=0)
    assert split.valid is None and len(split.test) == 4


@pytest.mark.parametrize(
    ("ratios", "message"),
    [
        ((0.8, 0.1, 0.05), "sum to 1"),
        ((0.5, 0.2, 0.2, 0.1), r"\(train, valid, test\)"),
        ((1.1, -0.1, 0.0), ">= 0"),
        ((0.9, 0.1, 0.0), "test > 0"),
    ],
)
def test_bad_ratios_raise(ratios, message):
    with pytest.raises(SplitError, match=message):
        random_split(table(n=20), ratios, seed=0)


def test_empty_dataset_raises():
    empty = table(n=10).subset(np.zeros(10, dtype=bool))
    with pytest.raises(SplitError, match="no interactions"):
        random_split(empty, seed=0)


def test_user_random_split_cuts_each_user():
    dataset = table(n=2000, n_users=20)
    split = user_random_split(dataset, (0.8, 0.1, 0.1), seed=1)
    assert_partition(dataset, [split.train, split.valid, split.test])
    counts = np.bincount(dataset.user, minlength=dataset.n_users)
    train = np.bincount(split.train.user, minlength=dataset.n_users)
    test = np.bincount(split.test.user, minlength=dataset.n_users)
    expected_train = np.floor(counts * 0.8 + 0.5 + 1e-9)
    np.testing.assert_array_equal(train, expected_train)
    np.testing.assert_array_equal(test, counts - np.floor(counts * 0.9 + 0.5 + 1e-9))


def test_user_random_split_small_users_stay_in_train():
    # Users with 1..6 and 10 interactions.
    counts = [1, 2, 3, 4, 5, 6, 10]
    users = np.repeat(np.arange(len(counts)), counts)
    dataset = from_arrays(users, np.arange(len(users)), timestamp=np.arange(len(users)))
    split = user_random_split(dataset, (0.8, 0.1, 0.1), seed=0)
    per_part = [
        np.bincount(part.user, minlength=len(counts)).tolist()
        for part in (split.train, split.valid, split.test)
    ]
    assert per_part == [[1, 2, 2, 3, 4, 5, 8], [0, 0, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1, 1]]


def test_temporal_split_never_leaks_future_with_ties():
    rng = np.random.default_rng(0)
    n = 1000
    # Timestamps in blocks of 7 equal values, shuffled over rows.
    time = rng.permutation(np.arange(n) // 7).astype(float)
    dataset = from_arrays(rng.integers(0, 30, n), rng.integers(0, 30, n), timestamp=time)
    split = temporal_split(dataset, (0.8, 0.1, 0.1))
    train, valid, test = split.train.timestamp, split.valid.timestamp, split.test.timestamp
    assert len(train) + len(valid) + len(test) == n
    assert train.max() < valid.min() and valid.max() < test.min()
    # Ties go to the earlier part, so sizes are within one tie block of the ratios.
    assert abs(len(train) - 800) < 7 and abs(len(test) - 100) < 14
    assert split.test.meta["temporal_cuts"] == (float(train.max()), float(valid.max()))


def test_temporal_split_exact_sizes_without_ties():
    dataset = table()
    split = temporal_split(dataset, (0.8, 0.1, 0.1))
    assert row_ids(split.train).tolist() == list(range(800))
    assert row_ids(split.valid).tolist() == list(range(800, 900))
    assert row_ids(split.test).tolist() == list(range(900, 1000))


def test_temporal_split_needs_timestamps():
    with pytest.raises(SplitError, match="'timestamp'"):
        temporal_split(from_arrays(["a", "b"], ["x", "y"]))
    with pytest.raises(SplitError, match="test part empty"):
        temporal_split(from_arrays(["a", "b"], ["x", "y"], timestamp=[1.0, 1.0]))


def test_leave_one_out_takes_latest_per_user():
    dataset = from_arrays(
        ["a", "a", "b", "a", "b", "a", "c", "c", "c"],
        ["w", "x", "x", "y", "y", "z", "x", "y", "z"],
        timestamp=[3.0, 1.0, 4.0, 2.0, 1.0, 5.0, 9.0, 9.0, 9.0],
    )
    split = leave_one_out_split(dataset)

    def pairs(part):
        frame = part.to_frame()
        return sorted(frame.user_id + frame.item_id)

    assert pairs(split.test) == ["az", "cz"]  # c's times tie: the later row is later
    assert pairs(split.valid) == ["aw", "cy"]
    assert pairs(split.train) == ["ax", "ay", "bx", "by", "cx"]
    assert split.train.meta["loo_train_only_users"] == 1
    assert split.test.meta["split"] == "leave_one_out"


def test_leave_one_out_without_timestamps_uses_row_order():
    dataset = from_arrays(["a", "a", "a", "a"], ["x", "y", "z", "w"])
    split = leave_one_out_split(dataset)
    assert split.test.item_ids[split.test.item].tolist() == ["w"]
    assert split.valid.item_ids[split.valid.item].tolist() == ["z"]


def given_table(n_train=200, n_test=1000, n_valid=0):
    codes = np.repeat([GIVEN_TRAIN, GIVEN_VALID, GIVEN_TEST], [n_train, n_valid, n_test])
    return table(n=len(codes), given_split=codes)


def test_given_split_uses_codes():
    dataset = given_table(n_train=30, n_test=20)
    split = given_split(dataset)
    assert split.valid is None
    assert row_ids(split.train).tolist() == list(range(30))
    assert row_ids(split.test).tolist() == list(range(30, 50))
    split = given_split(given_table(n_train=30, n_valid=5, n_test=20))
    assert row_ids(split.valid).tolist() == list(range(30, 35))
    with pytest.raises(SplitError, match="given_split"):
        given_split(table(n=10))


def test_mar_slice_split_carves_disjoint_slices():
    dataset = given_table()
    split = mar_slice_split(dataset, train_fraction=0.05, valid_fraction=0.1, seed=7)
    mar_train = split.extra["mar_train"]
    assert (len(mar_train), len(split.valid), len(split.test)) == (50, 100, 850)
    # The MNAR train is untouched and the MAR rows are partitioned.
    assert row_ids(split.train).tolist() == list(range(200))
    assert_partition(dataset, [split.train, mar_train, split.valid, split.test])
    assert mar_train.meta["part"] == "mar_train"
    assert set(np.unique(mar_train.given_split)) == {GIVEN_TEST}


def test_mar_slice_split_depends_only_on_seed():
    dataset = given_table()
    first = mar_slice_split(dataset, train_fraction=0.05, valid_fraction=0.05, seed=1)
    again = mar_slice_split(dataset, train_fraction=0.05, valid_fraction=0.05, seed=1)
    other = mar_slice_split(dataset, train_fraction=0.05, valid_fraction=0.05, seed=2)
    no_valid = mar_slice_split(dataset, train_fraction=0.05, valid_fraction=0.0, seed=1)

    def mar_train(split):
        return row_ids(split.extra["mar_train"])

    np.testing.assert_array_equal(mar_train(first), mar_train(again))
    assert not np.array_equal(mar_train(first), mar_train(other))
    # The training slice does not move when the validation fraction changes.
    np.testing.assert_array_equal(mar_train(first), mar_train(no_valid))
    np.testing.assert_array_equal(row_ids(first.valid), row_ids(again.valid))
    assert no_valid.valid is None


def test_mar_slice_split_with_the_whole_test_keeps_every_mar_row():
    """Protocol (b) (`data.mar_test = "all"`): the same slices, but the test is not reduced,
    and the validation rows, being test rows, are not masked as seen before the test."""
    dataset = given_table()
    rest = mar_slice_split(dataset, train_fraction=0.05, valid_fraction=0.1, seed=7)
    whole = mar_slice_split(dataset, train_fraction=0.05, valid_fraction=0.1, seed=7, test="all")
    assert len(whole.test) == 1000 and len(rest.test) == 850
    assert set(row_ids(whole.test)) == set(row_ids(rest.test)) | set(row_ids(rest.valid)) | set(
        row_ids(rest.extra["mar_train"]))
    np.testing.assert_array_equal(row_ids(whole.valid), row_ids(rest.valid))
    np.testing.assert_array_equal(row_ids(whole.extra["mar_train"]),
                                  row_ids(rest.extra["mar_train"]))
    assert whole.valid_in_test and not rest.valid_in_test
    assert len(whole.seen_before_test()) == len(whole.train)
    assert len(rest.seen_before_test()) == len(rest.train) + len(rest.valid)
    with pytest.raises(SplitError, match="key data.mar_test"):
        mar_slice_split(dataset, seed=7, test="most")


def test_mar_slice_split_errors():
    with pytest.raises(SplitError, match="given_split"):
        mar_slice_split(table(n=10), seed=0)
    with pytest.raises(SplitError, match="leave a test part"):
        mar_slice_split(given_table(), train_fraction=0.5, valid_fraction=0.5, seed=0)
    with pytest.raises(SplitError, match="already has 5 validation rows"):
        mar_slice_split(given_table(n_valid=5), seed=0)


def test_kfold_each_row_in_exactly_one_test_fold():
    dataset = table(n=103)
    splits = list(kfold_splits(dataset, 5, seed=0))
    assert len(splits) == 5
    tests = np.concatenate([row_ids(split.test) for split in splits])
    np.testing.assert_array_equal(np.sort(tests), np.arange(103))
    for fold, split in enumerate(splits):
        assert split.valid is None and split.test.meta["fold"] == fold
        assert len(split.test) in (20, 21)
        assert_partition(dataset, [split.train, split.test])


def test_kfold_with_validation_fraction():
    dataset = table(n=100)
    splits = list(kfold_splits(dataset, 4, seed=0, valid_fraction=0.2))
    for split in splits:
        assert (len(split.train), len(split.valid), len(split.test)) == (60, 15, 25)
        assert_partition(dataset, [split.train, split.valid, split.test])
    again = list(kfold_splits(dataset, 4, seed=0, valid_fraction=0.2))
    np.testing.assert_array_equal(row_ids(again[2].valid), row_ids(splits[2].valid))


def test_kfold_bad_k_raises_at_call():
    with pytest.raises(SplitError, match="k >= 2"):
        kfold_splits(table(n=10), 1, seed=0)
    with pytest.raises(SplitError, match="at least k=20"):
        kfold_splits(table(n=10), 20, seed=0)


def test_make_split_dispatches_on_config():
    dataset = table()
    split = make_split(dataset, DataConfig(split="temporal", split_ratios=[0.6, 0.2, 0.2]), seed=0)
    assert split.train.meta["split"] == "temporal" and len(split.test) == 200
    split = make_split(dataset, DataConfig(split="random"), seed=5)
    np.testing.assert_array_equal(
        row_ids(split.test), row_ids(random_split(dataset, (0.8, 0.1, 0.1), seed=5).test)
    )
    split = make_split(given_table(), DataConfig(split="mar_slice", mar_train_fraction=0.1), seed=0)
    assert len(split.extra["mar_train"]) == 100
    assert make_split(dataset, DataConfig(split="leave_one_out"), seed=0).valid is not None
    with pytest.raises(SplitError, match="given_split"):
        make_split(dataset, DataConfig(split="given"), seed=0)
