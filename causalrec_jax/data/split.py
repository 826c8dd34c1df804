"""Train/validation/test splits, cut so that nothing leaks between parts.

Every function returns a `Split` whose parts share the dataset's id maps (a model trained on
`train` scores `test`). Each row of the dataset lands in at most one part (exactly one, except
for `kfold_splits`, where each row is in exactly one *test* fold). Within a part rows keep
their original order. Each part's `meta` records `split` (the protocol name) and `part`.

Protocols:
- `random_split`: global shuffle of interactions.
- `user_random_split`: each user's interactions shuffled and cut (every user in train).
- `temporal_split`: global time cut; no interaction in an earlier part is later than one in a
  later part, and equal timestamps never straddle a cut.
- `leave_one_out_split`: per user, last -> test, second last -> valid (as in SASRec, Kang &
  McAuley, ICDM 2018; BERT4Rec).
- `given_split`: the release's own split (Coat, Yahoo! R3, the simulator's MAR test).
- `mar_slice_split`: the release's split, with uniform slices of the MAR test carved out as an
  unbiased training slice and a validation set (as in AutoDebias, Chen et al., SIGIR 2021, and
  KD-Label, Liu et al., SIGIR 2020).
- `kfold_splits`: k folds over shuffled interactions.

Randomness: functions that sample take `seed: int` and draw from `np.random.default_rng(seed)`
only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN, GIVEN_VALID, Dataset, Split
from causalrec_jax.errors import SplitError

if TYPE_CHECKING:
    from causalrec_jax.config import DataConfig

SPLITS = ("random", "user_random", "temporal", "leave_one_out", "given", "mar_slice")
# What the MAR test keeps under `mar_slice` (`data.mar_test`).
MAR_TESTS = ("rest", "all")

# Guards half-up rounding against float error: a cumulative ratio such as 0.7 + 0.2 is
# 0.8999999999999999, so 5 * (0.7 + 0.2) lands a hair below the 4.5 it means.
_ROUND_EPS = 1e-9


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """(train, valid, test) fractions from 2 or 3 ratios summing to 1."""
    values = [float(r) for r in ratios]
    if len(values) == 2:
        values = [values[0], 0.0, values[1]]
    if len(values) != 3:
        raise SplitError(
            f"split ratios must be (train, valid, test) or (train, test), got {list(ratios)} "
            "(data.split_ratios)"
        )
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise SplitError(f"split ratios must be finite and >= 0, got {list(ratios)}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise SplitError(
            f"split ratios must sum to 1, got {list(ratios)} (sum {sum(values):g}); "
            "set data.split_ratios"
        )
    if values[0] == 0 or values[2] == 0:
        raise SplitError(f"split ratios need train > 0 and test > 0, got {list(ratios)}")
    return values[0], values[1], values[2]


def _round_half_up(values: np.ndarray | float) -> np.ndarray:
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5 + _ROUND_EPS).astype(np.int64)


def _part(dataset: Dataset, rows: np.ndarray, split: str, part: str) -> Dataset:
    """The rows (sorted into file order) as a part, with `split` and `part` in meta."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    return dataset.subset(rows).with_meta(split=split, part=part)


def _require_rows(dataset: Dataset, split: str) -> None:
    if len(dataset) == 0:
        raise SplitError(f"cannot make a {split!r} split of a dataset with no interactions")


def _user_groups(dataset: Dataset, random_key: np.ndarray | None = None):
    """Rows grouped by user, ordered within a user by `random_key` or else by time then row.

    Returns:
        `order` `[n]` (row indices, grouped by user), `position` `[n]` (0-based position of
        each row of `order` within its user) and `count` `[n]` (its user's row count).
    """
    n = len(dataset)
    row = np.arange(n)
    if random_key is not None:
        keys = (row, random_key, dataset.user)
    elif dataset.timestamp is not None:
        keys = (row, dataset.timestamp, dataset.user)
    else:
        keys = (row, dataset.user)
    order = np.lexsort(keys)
    sorted_user = dataset.user[order]
    counts = np.bincount(sorted_user, minlength=dataset.n_users)
    starts = np.cumsum(counts) - counts
    position = row - starts[sorted_user]
    return order, position, counts[sorted_user]


def random_split(
    dataset: Dataset, ratios: Sequence[float] = (0.8, 0.1, 0.1), *, seed: int
) -> Split:
    """Shuffles all interactions and cuts them by ratios.

    Part sizes are `round(n * cumulative ratio)` differences (half up). `valid` is None when
    its ratio is 0.

    Args:
        dataset: the interactions.
        ratios: (train, valid, test) or (train, test) fractions summing to 1.
        seed: seed of the shuffle.

    Raises:
        SplitError: ratios malformed or the dataset empty.
    """
    train_ratio, valid_ratio, _ = _check_ratios(ratios)
    _require_rows(dataset, "random")
    n = len(dataset)
    permutation = np.random.default_rng(seed).permutation(n)
    cut_train, cut_valid = _round_half_up(np.array([train_ratio, train_ratio + valid_ratio]) * n)
    cut_valid = min(cut_valid, n)
    return Split(
        train=_part(dataset, permutation[:cut_train], "random", "train"),
        valid=None
        if valid_ratio == 0
        else _part(dataset, permutation[cut_train:cut_valid], "random", "valid"),
        test=_part(dataset, permutation[cut_valid:], "random", "test"),
    )


def user_random_split(
    dataset: Dataset, ratios: Sequence[float] = (0.8, 0.1, 0.1), *, seed: int
) -> Split:
    """Shuffles each user's interactions and cuts them by ratios.

    Rounding: a user with `c` interactions puts the first `max(1, round(c * r_train))` of
    their shuffled rows in train and rows up to `round(c * (r_train + r_valid))` in valid,
    the rest in test (half up). So every user with any interaction has one in train, and a
    user with few interactions may have none in valid or test. With (0.8, 0.1, 0.1) the
    train/valid/test counts are 1/0/0 for c = 1, 2/0/0 for c = 2, 2/1/0 for c = 3, 3/1/0
    for c = 4, 4/1/0 for c = 5, 5/0/1 for c = 6 and 8/1/1 for c = 10.

    Args:
        dataset: the interactions.
        ratios: (train, valid, test) or (train, test) fractions summing to 1.
        seed: seed of the shuffles.
    """
    train_ratio, valid_ratio, _ = _check_ratios(ratios)
    _require_rows(dataset, "user_random")
    rng = np.random.default_rng(seed)
    order, position, count = _user_groups(dataset, random_key=rng.random(len(dataset)))
    cut_train = np.maximum(1, _round_half_up(count * train_ratio))
    cut_valid = np.maximum(cut_train, _round_half_up(count * (train_ratio + valid_ratio)))
    in_train = position < cut_train
    in_valid = ~in_train & (position < cut_valid)
    in_test = position >= cut_valid
    return Split(
        train=_part(dataset, order[in_train], "user_random", "train"),
        valid=None if valid_ratio == 0 else _part(dataset, order[in_valid], "user_random", "valid"),
        test=_part(dataset, order[in_test], "user_random", "test"),
    )


def temporal_split(dataset: Dataset, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> Split:
    """Global time cut: the earliest interactions train, the next validate, the latest test.

    Cut times are the timestamps at the `round(n * cumulative ratio)`-th position in time
    order. All rows with the cut's timestamp go to the earlier part, so
    `max(train time) < min(valid time)` and `max(valid time) < min(test time)` strictly, and
    parts can be a little larger or smaller than the ratios when timestamps tie. The cut
    times are in each part's `meta["temporal_cuts"]`.

    Args:
        dataset: the interactions, with timestamps.
        ratios: (train, valid, test) or (train, test) fractions summing to 1.

    Raises:
        SplitError: no timestamps, non-finite timestamps, or ties leave the test part empty.
    """
    train_ratio, valid_ratio, _ = _check_ratios(ratios)
    _require_rows(dataset, "temporal")
    if dataset.timestamp is None:
        raise SplitError(
            "a 'temporal' split needs the 'timestamp' field, which this dataset lacks; "
            'use data.split = "random" or a format with times'
        )
    if dataset.meta.get("timestamps_are_positions"):
        raise SplitError(
            "a 'temporal' split needs wall-clock times, but this dataset's timestamps are "
            "positions within each user's sequence (format seq_lines); a global cut would keep "
            'only the tails of the longest sequences: use data.split = "leave_one_out"'
        )
    time = dataset.timestamp
    if not np.isfinite(time).all():
        raise SplitError(
            f"a 'temporal' split needs finite timestamps; {int((~np.isfinite(time)).sum())} "
            'are NaN/Inf (clean with data.invalid = "drop")'
        )
    n = len(dataset)
    sorted_time = np.sort(time)
    counts = _round_half_up(np.array([train_ratio, train_ratio + valid_ratio]) * n)
    # The cut is the time of the last row the ratio would give the earlier part; rows at that
    # time all stay earlier, so simultaneous events are never split across parts.
    cuts = [(sorted_time[c - 1] if c > 0 else -np.inf) if c < n else np.inf for c in counts]
    cut_train, cut_valid = cuts[0], max(cuts[0], cuts[1])
    in_train = time <= cut_train
    in_valid = ~in_train & (time <= cut_valid)
    in_test = time > cut_valid
    if not in_test.any():
        raise SplitError(
            f"the 'temporal' split left the test part empty: {n} rows, the latest "
            f"{int((time == sorted_time[-1]).sum())} share timestamp {sorted_time[-1]!r}"
        )

    def part(mask: np.ndarray, name: str) -> Dataset:
        return _part(dataset, np.flatnonzero(mask), "temporal", name).with_meta(
            temporal_cuts=(float(cut_train), float(cut_valid))
        )

    return Split(
        train=part(in_train, "train"),
        valid=None if valid_ratio == 0 else part(in_valid, "valid"),
        test=part(in_test, "test"),
    )


def leave_one_out_split(dataset: Dataset) -> Split:
    """Per user in time order: the last interaction -> test, the second last -> valid.

    Ties in time (or no timestamps) are broken by row order (a later row is later). Users
    with fewer than 3 interactions keep all of them in train (they would otherwise lose their
    whole history); their number is `meta["loo_train_only_users"]` in every part.

    Args:
        dataset: the interactions.
    """
    _require_rows(dataset, "leave_one_out")
    order, position, count = _user_groups(dataset)
    from_end = count - 1 - position
    eligible = count >= 3
    in_test = eligible & (from_end == 0)
    in_valid = eligible & (from_end == 1)
    in_train = ~(in_test | in_valid)
    user_counts = np.bincount(dataset.user, minlength=dataset.n_users)
    train_only = int(((user_counts > 0) & (user_counts < 3)).sum())

    def part(mask: np.ndarray, name: str) -> Dataset:
        return _part(dataset, order[mask], "leave_one_out", name).with_meta(
            loo_train_only_users=train_only
        )

    return Split(
        train=part(in_train, "train"), valid=part(in_valid, "valid"), test=part(in_test, "test")
    )


def _given_codes(dataset: Dataset, split: str) -> np.ndarray:
    if dataset.given_split is None:
        raise SplitError(
            f"a {split!r} split needs the release's own split ('given_split'), which this "
            f"dataset ({dataset.meta.get('format', 'unknown format')}) lacks; use "
            'data.split = "random", "temporal" or "leave_one_out"'
        )
    codes = dataset.given_split
    unknown = ~np.isin(codes, (GIVEN_TRAIN, GIVEN_VALID, GIVEN_TEST))
    if unknown.any():
        raise SplitError(
            f"given_split holds unknown codes {sorted(set(codes[unknown].tolist()))}; "
            f"expected {GIVEN_TRAIN} (train), {GIVEN_VALID} (valid), {GIVEN_TEST} (test)"
        )
    if not (codes == GIVEN_TEST).any():
        raise SplitError(f"given_split has no test rows (code {GIVEN_TEST})")
    return codes


def given_split(dataset: Dataset) -> Split:
    """The release's own split from `dataset.given_split`; `valid` is None when it has none.

    Raises:
        SplitError: the dataset has no `given_split`, unknown codes, or no test rows.
    """
    codes = _given_codes(dataset, "given")
    valid_rows = np.flatnonzero(codes == GIVEN_VALID)
    return Split(
        train=_part(dataset, np.flatnonzero(codes == GIVEN_TRAIN), "given", "train"),
        valid=None if len(valid_rows) == 0 else _part(dataset, valid_rows, "given", "valid"),
        test=_part(dataset, np.flatnonzero(codes == GIVEN_TEST), "given", "test"),
    )


def mar_slice_split(
    dataset: Dataset,
    *,
    train_fraction: float = 0.05,
    valid_fraction: float = 0.05,
    seed: int,
    test: str = "rest",
) -> Split:
    """The release's split with uniform slices of the MAR test carved out.

    The MNAR train part stays `train`. The MAR test rows (code `GIVEN_TEST`) are permuted
    with `seed` alone; the first `round(train_fraction * n_test)` go to `extra["mar_train"]`
    (an unbiased training slice), the next `round(valid_fraction * n_test)` to `valid`, the
    rest stay `test`. The carve depends only on the seed and the MAR rows, so it is identical
    whatever else is configured, and `mar_train` does not change with `valid_fraction`.

    With `test = "all"` the test is every MAR row, the slices included, as the StableDR line
    of papers evaluates (their "protocol (b)": the test is not reduced); the slices are carved
    the same way, so they overlap the test and `Split.valid_in_test` is set.

    A release with its own validation rows keeps them as `valid` only when
    `valid_fraction == 0` (mixing them with MAR rows would mix protocols).

    Args:
        dataset: the interactions with `given_split`.
        train_fraction: share of MAR test rows moved to `extra["mar_train"]`, in [0, 1).
        valid_fraction: share moved to `valid`, in [0, 1); the two sum to less than 1.
        seed: seed of the carve.
        test: "rest" (the MAR rows left after the slices) or "all" (every MAR row).

    Raises:
        SplitError: no `given_split`, fractions out of range, a positive fraction that
            rounds to an empty slice, slices that leave no test rows or a test rating for
            fewer than half the users with MAR ratings, or a given validation part together
            with `valid_fraction > 0`.
    """
    codes = _given_codes(dataset, "mar_slice")
    if test not in MAR_TESTS:
        raise SplitError(f"key data.mar_test: expected one of {', '.join(MAR_TESTS)}, got {test!r}")
    for name, value in (("train_fraction", train_fraction), ("valid_fraction", valid_fraction)):
        if not (math.isfinite(value) and 0 <= value < 1):
            raise SplitError(f"mar_slice {name} must be in [0, 1), got {value} (data.mar_{name})")
    if train_fraction + valid_fraction >= 1:
        raise SplitError(
            f"key data.mar_train_fraction / data.mar_valid_fraction: mar_slice fractions must "
            f"leave a test part: train_fraction {train_fraction} + valid_fraction "
            f"{valid_fraction} >= 1"
        )
    given_valid = np.flatnonzero(codes == GIVEN_VALID)
    if len(given_valid) and valid_fraction > 0:
        raise SplitError(
            f"the release already has {len(given_valid)} validation rows; set "
            'data.mar_valid_fraction = 0 to use them, or use data.split = "given"'
        )
    test_rows = np.flatnonzero(codes == GIVEN_TEST)
    n_test = len(test_rows)
    carved = test_rows[np.random.default_rng(seed).permutation(n_test)]
    n_mar_train = int(_round_half_up(train_fraction * n_test))
    n_valid = int(_round_half_up(valid_fraction * n_test))
    _check_mar_slices(dataset, test_rows, carved, train_fraction, n_mar_train, valid_fraction,
                      n_valid, reduced=test != "all")
    mar_train = carved[:n_mar_train]
    valid_rows = carved[n_mar_train : n_mar_train + n_valid] if valid_fraction > 0 else given_valid
    test_rows_kept = test_rows if test == "all" else carved[n_mar_train + n_valid :]
    extra = {}
    if train_fraction > 0:
        extra["mar_train"] = _part(dataset, mar_train, "mar_slice", "mar_train")
    return Split(
        train=_part(dataset, np.flatnonzero(codes == GIVEN_TRAIN), "mar_slice", "train"),
        valid=None if len(valid_rows) == 0 else _part(dataset, valid_rows, "mar_slice", "valid"),
        test=_part(dataset, test_rows_kept, "mar_slice", "test"),
        extra=extra,
        valid_in_test=test == "all" and valid_fraction > 0,
    )


def _check_mar_slices(
    dataset: Dataset,
    test_rows: np.ndarray,
    carved: np.ndarray,
    train_fraction: float,
    n_mar_train: int,
    valid_fraction: float,
    n_valid: int,
    reduced: bool = True,
) -> None:
    """SplitError naming the fraction's key when a slice rounds to empty or (when the slices
    leave the test, `reduced`) eats the test."""
    n_test = len(test_rows)
    for name, fraction, count in (
        ("train", train_fraction, n_mar_train),
        ("valid", valid_fraction, n_valid),
    ):
        if fraction > 0 and count == 0:
            raise SplitError(
                f"key data.mar_{name}_fraction: {fraction} of the {n_test} MAR test rows rounds "
                f"to an empty mar_{name} slice; use at least {0.5 / n_test:.3g} (one row) or 0 "
                "for no slice"
            )
    if not reduced:
        return
    n_left = n_test - n_mar_train - n_valid
    if n_left <= 0:
        raise SplitError(
            f"key data.mar_train_fraction / data.mar_valid_fraction: slices of {n_mar_train} + "
            f"{n_valid} rows leave none of the {n_test} MAR test rows for the test part; "
            "lower the fractions"
        )
    users_before = np.unique(dataset.user[test_rows])
    users_after = np.unique(dataset.user[carved[n_mar_train + n_valid :]])
    if 2 * len(users_after) < len(users_before):
        raise SplitError(
            f"key data.mar_train_fraction / data.mar_valid_fraction: slices of {n_mar_train} + "
            f"{n_valid} of the {n_test} MAR test rows leave a test rating for only "
            f"{len(users_after)} of the {len(users_before)} users with MAR ratings (fewer than "
            "half); lower the fractions"
        )


def kfold_splits(
    dataset: Dataset, k: int, *, seed: int, valid_fraction: float = 0.0
) -> Iterator[Split]:
    """k splits over interactions shuffled once: fold i is the test part of split i.

    Fold sizes differ by at most one (`np.array_split`). With `valid_fraction > 0`, a share
    `round(valid_fraction * n_train)` of each split's training rows, drawn with
    `default_rng((seed, i))`, becomes `valid`. Each part's meta has `fold` and `n_folds`.
    Arguments are checked when called, before the first split is drawn.

    Args:
        dataset: the interactions.
        k: number of folds, 2 <= k <= n.
        seed: seed of the shuffle (and of the validation draws).
        valid_fraction: share of each training part held out for validation, in [0, 1).

    Yields:
        `Split`s for folds 0..k-1.

    Raises:
        SplitError: k < 2, k > n, or valid_fraction out of range.
    """
    if k < 2:
        raise SplitError(f"k-fold needs k >= 2 folds, got k={k}")
    if k > len(dataset):
        raise SplitError(
            f"k-fold needs at least k={k} interactions, the dataset has {len(dataset)}"
        )
    if not (math.isfinite(valid_fraction) and 0 <= valid_fraction < 1):
        raise SplitError(f"k-fold valid_fraction must be in [0, 1), got {valid_fraction}")
    folds = np.array_split(np.random.default_rng(seed).permutation(len(dataset)), k)
    return _kfold(dataset, folds, seed, valid_fraction)


def _kfold(
    dataset: Dataset, folds: list[np.ndarray], seed: int, valid_fraction: float
) -> Iterator[Split]:
    k = len(folds)
    for i in range(k):
        train = np.concatenate([fold for j, fold in enumerate(folds) if j != i])
        valid = None
        if valid_fraction > 0:
            n_valid = int(_round_half_up(valid_fraction * len(train)))
            shuffled = np.random.default_rng((seed, i)).permutation(np.sort(train))
            valid, train = shuffled[:n_valid], shuffled[n_valid:]

        def part(rows: np.ndarray, name: str, fold: int = i) -> Dataset:
            return _part(dataset, rows, "kfold", name).with_meta(fold=fold, n_folds=k)

        yield Split(
            train=part(train, "train"),
            valid=None if valid is None else part(valid, "valid"),
            test=part(folds[i], "test"),
        )


def make_split(dataset: Dataset, config: DataConfig, *, seed: int) -> Split:
    """The split `config.split` names, with the config's ratios and fractions.

    Args:
        dataset: the (cleaned) interactions.
        config: the `[data]` section (`split`, `split_ratios`, `mar_train_fraction`,
            `mar_valid_fraction`, `mar_test`).
        seed: seed for the protocols that sample.

    Raises:
        SplitError: unknown split name, or the protocol's own errors.
    """
    name = config.split
    if name == "random":
        return random_split(dataset, config.split_ratios, seed=seed)
    if name == "user_random":
        return user_random_split(dataset, config.split_ratios, seed=seed)
    if name == "temporal":
        return temporal_split(dataset, config.split_ratios)
    if name == "leave_one_out":
        return leave_one_out_split(dataset)
    if name == "given":
        return given_split(dataset)
    if name == "mar_slice":
        return mar_slice_split(
            dataset,
            train_fraction=config.mar_train_fraction,
            valid_fraction=config.mar_valid_fraction,
            test=config.mar_test,
            seed=seed,
        )
    raise SplitError(f"unknown data.split {name!r}; expected one of {SPLITS}")
