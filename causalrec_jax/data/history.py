"""Per-user interaction histories as padded arrays, for sequential models and explanations.

The layout follows SASRec (Kang & McAuley, ICDM 2018): each row holds a user's items in time
order, most recent last, left-padded to a fixed length so the latest item sits in the last
column. The pad is `n_items`, one id past the last item, so a model can give it its own
(zero) embedding row instead of reserving item 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from causalrec_jax.data.dataset import Dataset
from causalrec_jax.errors import ConfigError


@dataclass(frozen=True, eq=False)
class Histories:
    """Fixed-length item histories of every user.

    Attributes:
        items: `[n_users, max_length]` int32 item ids, oldest to newest, right-aligned;
            `pad_id` where there is no item.
        mask: `[n_users, max_length]` bool, True where `items` holds a real item.
        lengths: `[n_users]` int32 number of real items per user (after truncation).
        pad_id: the padding id, equal to the dataset's `n_items`.
    """

    items: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    pad_id: int

    @property
    def max_length(self) -> int:
        """Number of columns."""
        return self.items.shape[1]


def user_histories(dataset: Dataset, max_length: int) -> Histories:
    """Every user's interactions in time order, keeping the most recent `max_length`.

    Rows are ordered by timestamp, ties (and datasets without timestamps) by row order, so a
    later row counts as more recent. Build histories from the training part of a split, not
    the whole dataset, or the test items leak into the model's input.

    Args:
        dataset: the interactions (duplicates, if kept, appear as repeated items).
        max_length: number of columns, >= 1.

    Returns:
        `Histories` with `[dataset.n_users, max_length]` arrays; users with no interaction
        have an all-pad row and length 0.

    Raises:
        ConfigError: `max_length` < 1.
    """
    if max_length < 1:
        raise ConfigError(f"history max_length (data.max_history) must be >= 1, got {max_length}")
    n = len(dataset)
    row = np.arange(n)
    if dataset.timestamp is None:
        order = np.lexsort((row, dataset.user))
    else:
        order = np.lexsort((row, dataset.timestamp, dataset.user))
    sorted_user = dataset.user[order]
    counts = np.bincount(sorted_user, minlength=dataset.n_users)
    ends = np.cumsum(counts)
    # Distance from the user's newest row: 0 for the newest, which goes in the last column.
    from_end = ends[sorted_user] - 1 - row
    kept = from_end < max_length
    pad_id = dataset.n_items
    items = np.full((dataset.n_users, max_length), pad_id, dtype=np.int32)
    mask = np.zeros((dataset.n_users, max_length), dtype=bool)
    column = max_length - 1 - from_end[kept]
    items[sorted_user[kept], column] = dataset.item[order[kept]]
    mask[sorted_user[kept], column] = True
    lengths = np.minimum(counts, max_length).astype(np.int32)
    return Histories(items=items, mask=mask, lengths=lengths, pad_id=int(pad_id))
