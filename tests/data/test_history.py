"""Histories: time order, most recent kept, left padding with pad_id = n_items."""

from __future__ import annotations

import numpy as np
import pytest

from causalrec_jax.data.dataset import from_arrays
from causalrec_jax.data.history import user_histories
from causalrec_jax.errors import ConfigError


def test_histories_order_truncate_and_pad():
    dataset = from_arrays(
        ["a", "a", "b", "a", "a", "b"],
        ["x", "y", "x", "z", "w", "y"],
        timestamp=[3.0, 1.0, 7.0, 2.0, 5.0, 7.0],
        user_ids=["a", "b", "c"],
        item_ids=["w", "x", "y", "z"],
    )
    histories = user_histories(dataset, max_length=3)
    pad = 4
    assert histories.pad_id == pad == dataset.n_items
    w, x, y, z = 0, 1, 2, 3
    # a in time order is y, z, x, w: the oldest (y) is cut. b's tie keeps row order.
    np.testing.assert_array_equal(histories.items, [[z, x, w], [pad, x, y], [pad, pad, pad]])
    np.testing.assert_array_equal(
        histories.mask, [[True, True, True], [False, True, True], [False, False, False]]
    )
    assert histories.lengths.tolist() == [3, 2, 0]
    assert histories.items.dtype == np.int32 and histories.lengths.dtype == np.int32
    assert histories.max_length == 3


def test_histories_without_timestamps_follow_row_order():
    dataset = from_arrays(["a", "a", "a"], ["z", "x", "y"], item_ids=["x", "y", "z"])
    histories = user_histories(dataset, max_length=5)
    np.testing.assert_array_equal(histories.items, [[3, 3, 2, 0, 1]])
    assert histories.lengths.tolist() == [3]


def test_histories_reject_zero_length():
    with pytest.raises(ConfigError, match="max_length"):
        user_histories(from_arrays(["a"], ["x"]), max_length=0)
