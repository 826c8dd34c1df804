"""Per-user item sequences and the padded arrays sequential models train and infer on.

Token convention (SASRec, BERT4Rec): arrays built here hold *tokens*, not item ids. Token 0 is
padding and item `i` (internal id `0..n_items-1`) is token `i + 1`; a model's embedding table
therefore has `n_items + 1` rows (BERT4Rec adds a `[mask]` token, `n_items + 1`), and its
output logits have `n_items` columns, column `i` for item `i` (token `i + 1`). Rows are
left-padded: the most recent item sits in the last column.

(`data/history.py` pads with `n_items` instead, for the non-sequential models; the sequence
models use 0 so that one padding id serves every catalogue size and bucketed length.)

Everything here is numpy: this module never imports jax or flax (DESIGN §1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from causalrec_jax.data.dataset import Dataset

PAD = 0


def to_tokens(items: np.ndarray) -> np.ndarray:
    """Item ids `[...]` (0-based) -> tokens `[...]` int32 (item + 1; 0 stays free for padding)."""
    return np.asarray(items, np.int32) + 1


def user_sequences(dataset: Dataset) -> list[np.ndarray]:
    """Every user's items in time order.

    Rows are ordered by timestamp, ties (and datasets without timestamps) by row order, so a
    later row counts as more recent (a stable sort). Build sequences from the training part of
    a split, not the whole dataset, or the test items leak into the model's input.

    Args:
        dataset: the interactions.

    Returns:
        `n_users` int32 arrays of internal item ids (0-based, not tokens), oldest first; users
        with no interaction get an empty array.
    """
    row = np.arange(len(dataset))
    if dataset.timestamp is None:
        order = np.lexsort((row, dataset.user))
    else:
        order = np.lexsort((row, dataset.timestamp, dataset.user))
    counts = np.bincount(dataset.user, minlength=dataset.n_users)
    items = dataset.item[order].astype(np.int32)
    return list(np.split(items, np.cumsum(counts)[:-1]))


@dataclass(frozen=True, eq=False)
class Windows:
    """Padded next-item training windows (tokens; 0 is padding and "no target").

    Attributes:
        inputs: `[n_windows, max_len]` int32 input tokens, left-padded.
        targets: `[n_windows, max_len]` int32: the token that follows `inputs[w, t]`, or 0
            where position t trains nothing (padding, or a target another window trains).
        users: `[n_windows]` int32 internal user id of each window.
    """

    inputs: np.ndarray
    targets: np.ndarray
    users: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


def _window_ends(length: int, max_len: int, stride: int) -> list[int]:
    """Exclusive end indices of the windows over `length` positions, latest first."""
    ends = []
    end = length
    while end > 0:
        ends.append(end)
        end -= stride
    return ends


def _check(max_len: int, stride: int | None) -> int:
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    stride = max_len if stride is None else stride
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride must be in 1..max_len={max_len}, got {stride}")
    return stride


WINDOW_TARGETS = ("once", "all")


def training_windows(
    sequences: Sequence[np.ndarray], max_len: int, *, stride: int | None = None,
    targets: str = "once",
) -> Windows:
    """Next-item windows: inputs `seq[:-1]`, targets `seq[1:]`, every position trained at once.

    Under a causal mask the output at position t sees only `inputs[:t+1]` and is trained to
    predict `targets[t]`, so one window trains all its positions. A sequence with more than
    `max_len` targets is cut into windows ending at `n - 1`, `n - 1 - stride`, ... (n items).
    When `stride < max_len` windows overlap. With `targets="once"` each target is then kept
    only in the window that gives it the longest context (the earliest window holding it),
    i.e. only the last `stride` target positions of a window are trained, so every target is
    trained exactly once whatever the stride. With `targets="all"` every position of every
    window is trained: a target recurs with shorter contexts (sliding-window augmentation, more
    gradient signal for the same forward pass). Users with fewer than two items give no
    window.

    Args:
        sequences: per-user item ids (0-based), oldest first (`user_sequences`).
        max_len: window length (columns).
        stride: distance between consecutive window ends; default (and at most) `max_len`.
        targets: "once" or "all" (above).

    Returns:
        `Windows` of tokens (item id + 1), left-padded with 0.

    Raises:
        ValueError: `max_len` < 1, `stride` outside 1..max_len, or unknown `targets`.
    """
    stride = _check(max_len, stride)
    if targets not in WINDOW_TARGETS:
        raise ValueError(f"targets must be one of {WINDOW_TARGETS}, got {targets!r}")
    train_once = targets == "once"
    inputs, targets, users = [], [], []
    for user, sequence in enumerate(sequences):
        tokens = to_tokens(sequence)
        n_targets = len(tokens) - 1
        ends = _window_ends(n_targets, max_len, stride)
        for rank, end in enumerate(ends):
            start = max(0, end - max_len)
            row_inputs = np.zeros(max_len, np.int32)
            row_targets = np.zeros(max_len, np.int32)
            width = end - start
            row_inputs[max_len - width:] = tokens[start:end]
            row_targets[max_len - width:] = tokens[start + 1:end + 1]
            if train_once and stride < max_len and rank + 1 < len(ends):
                # Targets before end - stride are trained by the previous window in time.
                row_targets[: max_len - stride] = PAD
            inputs.append(row_inputs)
            targets.append(row_targets)
            users.append(user)
    if not users:
        empty = np.zeros((0, max_len), np.int32)
        return Windows(empty, empty.copy(), np.zeros(0, np.int32))
    return Windows(np.stack(inputs), np.stack(targets), np.asarray(users, np.int32))


def item_windows(
    sequences: Sequence[np.ndarray], max_len: int, *, stride: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Windows of the sequences themselves (for masked-item training, BERT4Rec).

    A sequence of n items gives windows ending at n, n - stride, ...; each left-padded.

    Args:
        sequences: per-user item ids (0-based), oldest first.
        max_len: window length.
        stride: distance between window ends; default (and at most) `max_len`.

    Returns:
        `(windows [n_windows, max_len] int32 tokens, users [n_windows] int32)`; users with no
        item give no window.
    """
    stride = _check(max_len, stride)
    rows, users = [], []
    for user, sequence in enumerate(sequences):
        tokens = to_tokens(sequence)
        for end in _window_ends(len(tokens), max_len, stride):
            start = max(0, end - max_len)
            row = np.zeros(max_len, np.int32)
            row[max_len - (end - start):] = tokens[start:end]
            rows.append(row)
            users.append(user)
    if not rows:
        return np.zeros((0, max_len), np.int32), np.zeros(0, np.int32)
    return np.stack(rows), np.asarray(users, np.int32)


def history_matrix(sequences: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """The last `max_len` items of every user, for inference.

    Args:
        sequences: per-user item ids (0-based), oldest first.
        max_len: columns.

    Returns:
        `[n_users, max_len]` int32 tokens, most recent item last, left-padded with 0.
    """
    _check(max_len, None)
    matrix = np.zeros((len(sequences), max_len), np.int32)
    for user, sequence in enumerate(sequences):
        recent = to_tokens(sequence[-max_len:])
        if len(recent):
            matrix[user, max_len - len(recent):] = recent
    return matrix


def window_buckets(max_len: int, buckets: Sequence[int]) -> tuple[int, ...]:
    """The padded lengths batches may take: the `buckets` shorter than `max_len`, and `max_len`.

    Args:
        max_len: the window length (the longest bucket).
        buckets: requested lengths; empty means one length, `max_len`.

    Returns:
        Sorted distinct lengths ending with `max_len`.
    """
    return tuple(sorted({int(b) for b in buckets if 1 <= b < max_len} | {max_len}))


def bucketed_batches(
    arrays: dict[str, np.ndarray],
    batch_size: int,
    rng: np.random.Generator,
    buckets: Sequence[int] = (),
):
    """Shuffled batches of left-padded windows, each cut to the shortest bucket its rows fit.

    Rows are grouped by the bucket of their real length (non-zero tokens of the first array),
    shuffled within the bucket and batched; the batches of all buckets are then shuffled
    together. A batch keeps only its last `bucket` columns, which drops padding alone (rows
    are left-padded), so a dataset of short sequences trains on short arrays while the step
    compiles once per bucket, not once per length. The last batch of a bucket is filled with
    repeated rows masked out by `mask`.

    Args:
        arrays: `[n, max_len]` int32 token arrays with the same rows (e.g. inputs and
            targets); the first one's non-zero entries define a row's length.
        batch_size: rows per batch.
        rng: shuffles rows and batch order.
        buckets: padded lengths (`window_buckets`); empty: every batch is `max_len` wide.

    Yields:
        `{name: [batch_size, bucket] int32, ..., "mask": [batch_size] bool}`.
    """
    first = next(iter(arrays.values()))
    n, max_len = first.shape
    sizes = window_buckets(max_len, buckets)
    lengths = (first != PAD).sum(axis=1)
    bucket_of = np.searchsorted(np.asarray(sizes), lengths)
    plan = []
    for index, width in enumerate(sizes):
        rows = np.flatnonzero(bucket_of == index)
        rows = rows[rng.permutation(len(rows))]
        plan.extend((width, rows[start:start + batch_size])
                    for start in range(0, len(rows), batch_size))
    for position in rng.permutation(len(plan)):
        width, rows = plan[position]
        mask = np.zeros(batch_size, bool)
        mask[:len(rows)] = True
        rows = np.resize(rows, batch_size)
        yield {**{name: value[rows, max_len - width:] for name, value in arrays.items()},
               "mask": mask}
