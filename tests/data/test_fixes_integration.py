"""Cross-module behaviour: format defaults reaching cleaning, splits and evaluation."""

import numpy as np
import pytest

from causalrec_jax.config import DataConfig
from causalrec_jax.data.clean import binarize, clean
from causalrec_jax.data.dataset import from_arrays
from causalrec_jax.data.split import temporal_split
from causalrec_jax.errors import SplitError
from causalrec_jax.eval import evaluate_full_ranking


def sequence_dataset():
    # One user's sequence 10 20 10 30: the repeated 10 is a second real event.
    return from_arrays([1, 1, 1, 1], [10, 20, 10, 30], timestamp=[0, 1, 2, 3]).with_meta(
        format="seq_lines", default_dedupe="keep", timestamps_are_positions=True
    )


def test_format_default_dedupe_keeps_repeated_sequence_items():
    dataset = sequence_dataset()
    assert len(clean(dataset, DataConfig())) == 4
    # An explicit policy still wins over the format's default.
    assert len(clean(dataset, DataConfig(dedupe="last"))) == 3


def test_temporal_split_refuses_sequence_positions():
    with pytest.raises(SplitError, match="leave_one_out"):
        temporal_split(sequence_dataset())


def test_ids_beyond_int64_are_kept_as_strings():
    dataset = from_arrays(["99999999999999999999", "5"], ["a", "b"])
    assert sorted(dataset.user_ids) == ["5", "99999999999999999999"]


def test_binarised_labels_are_positives_whatever_the_threshold():
    ratings = from_arrays([1, 1, 2, 2], [1, 2, 1, 2], [5.0, 1.0, 4.0, 2.0],
                          user_ids=[1, 2], item_ids=[1, 2])
    labels = binarize(ratings, 4.0)
    empty = labels.subset(np.zeros(4, bool))
    table = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    # Default eval threshold 4 on 0/1 labels would find no positive; binarised data use > 0.
    result = evaluate_full_ranking(lambda users: table[np.asarray(users)], empty, labels,
                                   ks=[1], metrics=["hit"], positive_threshold=4.0)
    assert result["n_users_evaluated"] == 2
    assert result["hit@1"] == pytest.approx(1.0)


def test_concatenate_train_and_valid():
    from causalrec_jax.data.dataset import concatenate
    from causalrec_jax.data.split import random_split

    dataset = from_arrays(np.arange(20) % 4, np.arange(20) % 5, timestamp=np.arange(20))
    split = random_split(dataset, (0.6, 0.2, 0.2), seed=0)
    both = concatenate([split.train, split.valid])
    assert len(both) == len(split.train) + len(split.valid)
    assert set(both.timestamp) == set(split.train.timestamp) | set(split.valid.timestamp)
    other = from_arrays([1], [1])
    with pytest.raises(ValueError, match="same user and item id maps"):
        concatenate([split.train, other])
