"""Cleaning of interaction logs: invalid rows, duplicate pairs, k-core filtering, binarisation.

Every step is a pure function `Dataset -> (Dataset, report)` where the report is a dict of
plain ints, so `clean` can merge them into `meta["cleaning"]` and a run can say what it threw
away. The k-core filter is the iterative one of the recommender literature (e.g. He &
McAuley, "Ups and Downs", WWW 2016: "5-core" datasets): filter until a fixed point.

All steps are vectorised over rows (sorts and group boundaries, no Python loops over rows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from causalrec_jax.data.dataset import Dataset
from causalrec_jax.errors import ConfigError, DataFormatError

if TYPE_CHECKING:
    from causalrec_jax.config import DataConfig

DEDUPE_POLICIES = ("last", "first", "mean", "keep")


def drop_invalid(
    dataset: Dataset,
    *,
    rating_min: float | None = None,
    rating_max: float | None = None,
    on_invalid: str = "drop",
) -> tuple[Dataset, dict[str, int]]:
    """Drops (or rejects) rows whose rating or timestamp is NaN/Inf or whose rating is out of range.

    The valid rating range is `[rating_min, rating_max]`; a bound left as None falls back to
    `meta["rating_scale"]` (a `(min, max)` pair) when the dataset has one, else is unbounded.

    Args:
        dataset: the interactions.
        rating_min: lowest valid rating, or None.
        rating_max: highest valid rating, or None.
        on_invalid: "drop" to remove invalid rows, "error" to raise on the first kind found.

    Returns:
        The dataset without invalid rows (row order kept) and a report with `invalid_nan`
        (rows with a non-finite rating or timestamp), `invalid_out_of_range` (finite rating
        outside the range) and `invalid_removed` (their sum).

    Raises:
        DataFormatError: with `on_invalid="error"`, naming the field, the number of offending
            rows and the first one (row index, external user and item id).
        ConfigError: `on_invalid` is neither "drop" nor "error".
    """
    if on_invalid not in ("drop", "error"):
        raise ConfigError(f"data.invalid must be 'drop' or 'error', got {on_invalid!r}")
    low, high = _rating_range(dataset, rating_min, rating_max)

    rating_nan = ~np.isfinite(dataset.rating)
    time_nan = (
        np.zeros(len(dataset), dtype=bool)
        if dataset.timestamp is None
        else ~np.isfinite(dataset.timestamp)
    )
    # NaN compares False, so a NaN rating is counted once (as NaN), never as out of range.
    out_of_range = np.zeros(len(dataset), dtype=bool)
    if low is not None:
        out_of_range |= dataset.rating < low
    if high is not None:
        out_of_range |= dataset.rating > high
    nan_rows = rating_nan | time_nan
    out_of_range &= ~nan_rows

    if on_invalid == "error":
        what_range = f"outside [{low}, {high}]"
        for mask, what in (
            (rating_nan, "'rating' is NaN or infinite"),
            (time_nan, "'timestamp' is NaN or infinite"),
            (out_of_range, f"'rating' is {what_range}"),
        ):
            if mask.any():
                raise _invalid_error(dataset, mask, what)

    invalid = nan_rows | out_of_range
    report = {
        "invalid_nan": int(nan_rows.sum()),
        "invalid_out_of_range": int(out_of_range.sum()),
        "invalid_removed": int(invalid.sum()),
    }
    if not invalid.any():
        return dataset, report
    return dataset.subset(~invalid), report


def _rating_range(
    dataset: Dataset, rating_min: float | None, rating_max: float | None
) -> tuple[float | None, float | None]:
    scale = dataset.meta.get("rating_scale")
    if scale is not None:
        scale_min, scale_max = scale
        rating_min = scale_min if rating_min is None else rating_min
        rating_max = scale_max if rating_max is None else rating_max
    return rating_min, rating_max


def _invalid_error(dataset: Dataset, mask: np.ndarray, what: str) -> DataFormatError:
    first = int(np.flatnonzero(mask)[0])
    user = dataset.user_ids[dataset.user[first]]
    item = dataset.item_ids[dataset.item[first]]
    count = int(mask.sum())
    return DataFormatError(
        f"{count} {'row' if count == 1 else 'rows'} where {what}; first at row {first} "
        f'(user {user!r}, item {item!r}). Set data.invalid = "drop" to drop such rows',
        path=dataset.meta.get("path"),
    )


def deduplicate(dataset: Dataset, policy: str = "last") -> tuple[Dataset, dict[str, int]]:
    """Resolves repeated (user, item) pairs.

    Duplicates are looked for within each `given_split` part separately: the same pair in a
    release's train file and its test file (Coat, Yahoo! R3) is two measurements under two
    protocols, not a duplicate. Without `given_split` the whole table is one part.

    Policies:
        "last": keep the latest row by timestamp; ties, or no timestamps, go to the row later
            in file order.
        "first": keep the earliest row (ties: earlier in file order).
        "mean": keep one row whose rating is the mean of the group's ratings and whose
            timestamp (and position) is that of the latest row.
        "keep": keep every row (sequences, where a repeat is a new event); duplicates are only
            counted.

    Surviving rows keep their original relative order.

    Args:
        dataset: the interactions.
        policy: one of `DEDUPE_POLICIES`.

    Returns:
        The deduplicated dataset and a report: `duplicates_found` (rows beyond the first of
        their pair) and `duplicates_removed`.

    Raises:
        ConfigError: unknown policy.
    """
    if policy not in DEDUPE_POLICIES:
        raise ConfigError(f"data.dedupe must be one of {DEDUPE_POLICIES}, got {policy!r}")
    n = len(dataset)
    order, starts = _group_pairs(dataset)
    n_found = n - len(starts)
    report = {"duplicates_found": int(n_found), "duplicates_removed": 0}
    if n_found == 0 or policy == "keep":
        return dataset, report

    ends = np.append(starts[1:], n) - 1
    if policy == "first":
        kept = order[starts]
    else:
        kept = order[ends]
    rating = None
    if policy == "mean":
        sizes = ends - starts + 1
        sums = np.add.reduceat(dataset.rating[order].astype(np.float64), starts)
        rating = np.empty(n, dtype=np.float32)
        rating[kept] = (sums / sizes).astype(np.float32)

    # Sorting the kept row indices restores file order among the survivors.
    position = np.argsort(kept, kind="stable")
    kept = kept[position]
    result = dataset.subset(kept)
    if rating is not None:
        result = result.replace(rating=rating[kept])
    report["duplicates_removed"] = int(n - len(kept))
    return result, report


def _group_pairs(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by (part, user, item, time, row) and the start of each pair's group."""
    n = len(dataset)
    pair = dataset.user.astype(np.int64) * dataset.n_items + dataset.item
    if dataset.given_split is not None:
        pair = dataset.given_split.astype(np.int64) * (dataset.n_users * dataset.n_items) + pair
    row = np.arange(n)
    keys = [row] if dataset.timestamp is None else [row, dataset.timestamp]
    order = np.lexsort((*keys, pair))
    sorted_pair = pair[order]
    starts = np.flatnonzero(np.r_[True, sorted_pair[1:] != sorted_pair[:-1]]) if n else row
    return order, starts


def k_core(
    dataset: Dataset, *, min_user: int = 0, min_item: int = 0
) -> tuple[Dataset, dict[str, int]]:
    """Iterative k-core: removes rows until every user has >= min_user and every item >=
    min_item interactions, then compacts the id maps.

    Counts include every interaction whatever its `given_split` part (a user's test ratings
    count towards their core), so a released split is filtered as one table.

    The id maps drop users (items) that are below their threshold or lost all their
    interactions to the filter; a user that had no interaction to begin with is kept when
    `min_user == 0`. `user_features`, `item_features` and `propensity_matrix` rows/columns are
    re-indexed to match.

    Args:
        dataset: the interactions.
        min_user: minimum interactions per remaining user (0: no constraint).
        min_item: minimum interactions per remaining item.

    Returns:
        The filtered dataset and a report: `k_core_users_removed`, `k_core_items_removed`,
        `k_core_interactions_removed` and `k_core_iterations` (filtering passes that removed
        rows).
    """
    report = {
        "k_core_users_removed": 0,
        "k_core_items_removed": 0,
        "k_core_interactions_removed": 0,
        "k_core_iterations": 0,
    }
    if min_user <= 0 and min_item <= 0:
        return dataset, report

    user_count_before = np.bincount(dataset.user, minlength=dataset.n_users)
    item_count_before = np.bincount(dataset.item, minlength=dataset.n_items)
    keep = np.ones(len(dataset), dtype=bool)
    user_count, item_count = user_count_before, item_count_before
    while True:
        # One pass removes rows of every user and item below threshold; removing them can push
        # others below, hence the loop (it ends: rows only ever decrease).
        row_ok = (user_count[dataset.user] >= min_user) & (item_count[dataset.item] >= min_item)
        newly_removed = keep & ~row_ok
        if not newly_removed.any():
            break
        keep &= row_ok
        report["k_core_iterations"] += 1
        user_count = np.bincount(dataset.user[keep], minlength=dataset.n_users)
        item_count = np.bincount(dataset.item[keep], minlength=dataset.n_items)

    keep_user = (user_count >= min_user) & ((user_count > 0) | (user_count_before == 0))
    keep_item = (item_count >= min_item) & ((item_count > 0) | (item_count_before == 0))
    filtered = dataset.subset(keep) if not keep.all() else dataset
    result = _compact(filtered, keep_user, keep_item)
    report["k_core_users_removed"] = int(dataset.n_users - keep_user.sum())
    report["k_core_items_removed"] = int(dataset.n_items - keep_item.sum())
    report["k_core_interactions_removed"] = int(len(dataset) - keep.sum())
    return result, report


def _compact(dataset: Dataset, keep_user: np.ndarray, keep_item: np.ndarray) -> Dataset:
    """Drops users/items from the id maps and re-indexes rows, features and propensities."""
    if keep_user.all() and keep_item.all():
        return dataset
    new_user = (np.cumsum(keep_user) - 1).astype(np.int32)
    new_item = (np.cumsum(keep_item) - 1).astype(np.int32)

    def rows(values: np.ndarray | None, keep: np.ndarray) -> np.ndarray | None:
        return None if values is None else values[keep]

    propensity = dataset.propensity_matrix
    if propensity is not None:
        propensity = propensity[np.ix_(keep_user, keep_item)]
    return dataset.replace(
        user=new_user[dataset.user],
        item=new_item[dataset.item],
        user_ids=dataset.user_ids[keep_user],
        item_ids=dataset.item_ids[keep_item],
        user_features=rows(dataset.user_features, keep_user),
        item_features=rows(dataset.item_features, keep_item),
        propensity_matrix=propensity,
    )


def binarize(dataset: Dataset, threshold: float) -> Dataset:
    """Ratings >= threshold become label 1.0, the rest 0.0.

    The original ratings are not kept. `meta["binarized_at"]` records the threshold and
    `meta["implicit"]` is set to False (the labels are explicit positives and negatives).

    Args:
        dataset: the interactions.
        threshold: the smallest rating counted as positive.
    """
    labels = (dataset.rating >= threshold).astype(np.float32)
    return dataset.replace(rating=labels).with_meta(binarized_at=float(threshold), implicit=False)


def clean(dataset: Dataset, config: DataConfig) -> Dataset:
    """Applies drop_invalid -> deduplicate -> k_core -> binarize as the config says.

    The merged report (a dict of ints) goes into `meta["cleaning"]`, on top of any entries a
    reader put there. k-core counts every interaction whatever its `given_split` part.

    Args:
        dataset: the interactions as read.
        config: the `[data]` section (`invalid`, `rating_min`, `rating_max`, `dedupe`,
            `k_core_users`, `k_core_items`, `binarize_threshold`).
    """
    report: dict[str, Any] = {"rows_in": len(dataset)}
    dataset, step = drop_invalid(
        dataset,
        rating_min=config.rating_min,
        rating_max=config.rating_max,
        on_invalid=config.invalid,
    )
    report.update(step)
    policy = config.dedupe or dataset.meta.get("default_dedupe", "last")
    dataset, step = deduplicate(dataset, policy)
    report.update(step)
    dataset, step = k_core(dataset, min_user=config.k_core_users, min_item=config.k_core_items)
    report.update(step)
    if config.binarize_threshold is not None:
        dataset = binarize(dataset, config.binarize_threshold)
        report["binarized_positive"] = int((dataset.rating > 0).sum())
    report["rows_out"] = len(dataset)
    previous = dict(dataset.meta.get("cleaning") or {})
    return dataset.with_meta(cleaning={**previous, **report})
