"""Tests for causalrec_jax.data.sequences: time order, windows, histories, buckets."""

from __future__ import annotations

import numpy as np
import pytest

from causalrec_jax.data.dataset import Dataset
from causalrec_jax.data.sequences import (
    bucketed_batches,
    history_matrix,
    item_windows,
    training_windows,
    user_sequences,
    window_buckets,
)


def _dataset(user, item, timestamp=None, n_users=3, n_items=10) -> Dataset:
    return Dataset(
        user=np.asarray(user, np.int32),
        item=np.asarray(item, np.int32),
        rating=np.ones(len(user), np.float32),
        user_ids=np.asarray([str(u) for u in range(n_users)]),
        item_ids=np.asarray([str(i) for i in range(n_items)]),
        timestamp=None if timestamp is None else np.asarray(timestamp, np.float64),
    )


def test_user_sequences_order_by_timestamp_then_row():
    dataset = _dataset(
        user=[0, 1, 0, 0, 1, 0],
        item=[5, 7, 3, 9, 2, 4],
        timestamp=[3.0, 1.0, 1.0, 3.0, 0.0, 2.0],
    )
    sequences = user_sequences(dataset)
    assert len(sequences) == 3
    # User 0: t=1 (3), t=2 (4), then the two t=3 rows in row order (5 before 9).
    np.testing.assert_array_equal(sequences[0], [3, 4, 5, 9])
    np.testing.assert_array_equal(sequences[1], [2, 7])
    assert sequences[2].size == 0


def test_user_sequences_without_timestamps_keep_row_order():
    dataset = _dataset(user=[1, 0, 1, 1], item=[4, 1, 0, 8], timestamp=None)
    sequences = user_sequences(dataset)
    np.testing.assert_array_equal(sequences[1], [4, 0, 8])
    np.testing.assert_array_equal(sequences[0], [1])


def test_training_windows_short_sequence_by_hand():
    # Items 3, 4, 5 are tokens 4, 5, 6; inputs seq[:-1], targets seq[1:], left-padded.
    windows = training_windows([np.array([3, 4, 5]), np.array([7]), np.array([1, 2])], 4)
    np.testing.assert_array_equal(windows.inputs, [[0, 0, 4, 5], [0, 0, 0, 2]])
    np.testing.assert_array_equal(windows.targets, [[0, 0, 5, 6], [0, 0, 0, 3]])
    np.testing.assert_array_equal(windows.users, [0, 2])  # user 1 has one item: no window


def test_training_windows_long_sequence_by_hand():
    # 8 items -> 7 targets; windows of 3 end at 7, 4, 1 (targets 4-6, 1-3, 0).
    windows = training_windows([np.arange(8)], 3)
    np.testing.assert_array_equal(
        windows.inputs, [[5, 6, 7], [2, 3, 4], [0, 0, 1]]
    )
    np.testing.assert_array_equal(
        windows.targets, [[6, 7, 8], [3, 4, 5], [0, 0, 2]]
    )


@pytest.mark.parametrize("stride", [None, 1, 2, 3, 5])
def test_every_target_trained_exactly_once(stride):
    rng = np.random.default_rng(0)
    sequences = [rng.permutation(50)[:n] for n in (1, 2, 5, 6, 13, 31)]
    windows = training_windows(sequences, 5, stride=stride)
    for user, sequence in enumerate(sequences):
        rows = windows.users == user
        targets = windows.targets[rows]
        trained = np.sort(targets[targets != 0])
        np.testing.assert_array_equal(trained, np.sort(sequence[1:] + 1))
        # Each trained target follows its input token in the original sequence.
        inputs = windows.inputs[rows]
        for row_inputs, row_targets in zip(inputs, targets, strict=True):
            for token, target in zip(row_inputs, row_targets, strict=True):
                if target:
                    position = int(np.flatnonzero(sequence == token - 1)[0])
                    assert sequence[position + 1] == target - 1


def test_overlapping_windows_keep_longest_context():
    # Stride 2 over 7 targets, window 4: ends 7, 5, 3, 1; later windows train their last 2.
    windows = training_windows([np.arange(8)], 4, stride=2)
    np.testing.assert_array_equal(windows.inputs[0], [4, 5, 6, 7])
    np.testing.assert_array_equal(windows.targets[0], [0, 0, 7, 8])
    np.testing.assert_array_equal(windows.inputs[-1], [0, 0, 0, 1])
    np.testing.assert_array_equal(windows.targets[-1], [0, 0, 0, 2])


def test_all_targets_trains_every_position_of_overlapping_windows():
    # Same windows as above; "all" keeps every target, so targets recur with shorter contexts.
    once = training_windows([np.arange(8)], 4, stride=2)
    every = training_windows([np.arange(8)], 4, stride=2, targets="all")
    np.testing.assert_array_equal(every.inputs, once.inputs)
    np.testing.assert_array_equal(every.targets[0], [5, 6, 7, 8])
    np.testing.assert_array_equal(every.targets[1], [3, 4, 5, 6])
    assert (every.targets != 0).sum() == 4 + 4 + 3 + 1
    # every trained target still follows its input token
    nonzero = every.targets != 0
    np.testing.assert_array_equal(every.targets[nonzero], every.inputs[nonzero] + 1)
    with pytest.raises(ValueError, match="targets"):
        training_windows([np.arange(8)], 4, targets="some")


def test_training_windows_rejects_bad_stride():
    with pytest.raises(ValueError, match="stride"):
        training_windows([np.arange(4)], 3, stride=4)
    with pytest.raises(ValueError, match="max_len"):
        training_windows([np.arange(4)], 0)


def test_item_windows():
    windows, users = item_windows([np.arange(5), np.array([], np.int32), np.array([9])], 3)
    np.testing.assert_array_equal(windows, [[3, 4, 5], [0, 1, 2], [0, 0, 10]])
    np.testing.assert_array_equal(users, [0, 0, 2])


def test_history_matrix_keeps_most_recent_items():
    history = history_matrix([np.arange(6), np.array([], np.int32), np.array([4, 2])], 4)
    np.testing.assert_array_equal(history, [[3, 4, 5, 6], [0, 0, 0, 0], [0, 0, 5, 3]])
    assert history.dtype == np.int32


def test_window_buckets_end_with_max_len():
    assert window_buckets(50, [8, 16, 32, 64]) == (8, 16, 32, 50)
    assert window_buckets(50, []) == (50,)
    assert window_buckets(8, [8, 16]) == (8,)


def test_bucketed_batches_cover_every_row_once_and_drop_only_padding():
    rng = np.random.default_rng(0)
    sequences = [rng.permutation(40)[:n] for n in rng.integers(2, 30, size=45)]
    windows = training_windows(sequences, 20, stride=20)
    arrays = {"inputs": windows.inputs, "targets": windows.targets}
    seen = []
    widths = set()
    for batch in bucketed_batches(arrays, 8, np.random.default_rng(1), [4, 8]):
        width = batch["inputs"].shape[1]
        widths.add(width)
        assert batch["inputs"].shape == batch["targets"].shape == (8, width)
        assert batch["mask"].shape == (8,) and batch["mask"][0]
        for inputs, targets in zip(batch["inputs"][batch["mask"]],
                                   batch["targets"][batch["mask"]], strict=True):
            # the cut row is the window's own tail: put the padding back and find the window
            full = np.concatenate([np.zeros(20 - width, np.int32), inputs])
            match = np.flatnonzero((windows.inputs == full).all(axis=1))
            assert len(match) >= 1
            row = match[0]
            np.testing.assert_array_equal(windows.targets[row, 20 - width:], targets)
            assert (windows.inputs[row, :20 - width] == 0).all()
            # the smallest bucket it fits
            length = int((inputs != 0).sum())
            assert width == min(w for w in (4, 8, 20) if w >= length)
            seen.append(row)
    assert widths == {4, 8, 20}
    assert sorted(seen) == list(range(len(windows)))


def test_bucketed_batches_are_deterministic_for_a_seed():
    windows = training_windows([np.arange(30), np.arange(5)], 10)
    arrays = {"inputs": windows.inputs, "targets": windows.targets}
    first = list(bucketed_batches(arrays, 2, np.random.default_rng(3), [4]))
    again = list(bucketed_batches(arrays, 2, np.random.default_rng(3), [4]))
    assert len(first) == len(again)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
