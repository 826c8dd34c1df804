"""Summary statistics of a dataset, for `causalrec data` and for `metrics.json["data"]`.

Everything returned is plain Python (ints, floats, strings, dicts), so it can be written as
JSON directly.
"""

from __future__ import annotations

import datetime
import textwrap
from typing import Any

import numpy as np

from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN, GIVEN_VALID, Dataset

# Ratings with at most this many distinct values are reported as a value -> count table.
MAX_DISTINCT_RATINGS = 20
# A streamed rating column keeps counts per value up to this many distinct values.
MAX_TRACKED_RATINGS = 100_000
QUANTILES = {"min": 0.0, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9, "max": 1.0}


def dataset_statistics(dataset: Dataset) -> dict[str, Any]:
    """Sizes, density, rating distribution and activity quantiles of a dataset.

    Keys: `name`, `format`, `raw_rows` (from meta, when present), `n_users`, `n_items`,
    `n_interactions`, `users_with_interactions`, `items_with_interactions`, `density`
    (interactions over
    `n_users * n_items`, duplicates included), `rating` (`min`, `mean`, `max`, `distinct`
    (None beyond 100,000 distinct values),
    `non_finite`, and `distribution` {value as str: count} when there are at most 20
    distinct finite values), `user_counts` / `item_counts` (min, p25, p50, p75, p90, max of
    interactions per user/item, over users/items with at least one; linear interpolation as
    `np.quantile`; None when empty), `timestamp` (`min`, `max`, `span`, when the dataset has
    finite timestamps), `given_split` (rows per part, when present) and `cleaning` (the
    cleaning report, when present).

    Args:
        dataset: the interactions.
    """
    stats: dict[str, Any] = {}
    for key in ("name", "format"):
        if key in dataset.meta:
            stats[key] = str(dataset.meta[key])
    if "raw_rows" in dataset.meta:
        stats["raw_rows"] = int(dataset.meta["raw_rows"])
    summary = RatingSummary()
    summary.add(dataset.rating)
    stats.update(count_statistics(
        np.bincount(dataset.user, minlength=dataset.n_users),
        np.bincount(dataset.item, minlength=dataset.n_items), summary.result()))
    if dataset.timestamp is not None:
        finite = dataset.timestamp[np.isfinite(dataset.timestamp)]
        if len(finite):
            low, high = float(finite.min()), float(finite.max())
            stats["timestamp"] = {"min": low, "max": high, "span": high - low}
    if dataset.given_split is not None:
        codes = dataset.given_split
        stats["given_split"] = {
            name: int((codes == code).sum())
            for name, code in (("train", GIVEN_TRAIN), ("valid", GIVEN_VALID), ("test", GIVEN_TEST))
        }
    cleaning = dataset.meta.get("cleaning")
    if cleaning:
        stats["cleaning"] = {str(key): _plain(value) for key, value in cleaning.items()}
    return stats


def count_statistics(user_counts: np.ndarray, item_counts: np.ndarray,
                     rating: dict[str, Any]) -> dict[str, Any]:
    """The statistics that follow from interactions per user and per item (`[n_users]`,
    `[n_items]`) and a `RatingSummary` result: what a streamed log accumulates."""
    n_rows = int(user_counts.sum())
    cells = len(user_counts) * len(item_counts)
    return {
        "n_users": int(len(user_counts)),
        "n_items": int(len(item_counts)),
        "n_interactions": n_rows,
        "users_with_interactions": int((user_counts > 0).sum()),
        "items_with_interactions": int((item_counts > 0).sum()),
        "density": float(n_rows / cells) if cells else 0.0,
        "rating": rating,
        "user_counts": _quantiles(user_counts[user_counts > 0]),
        "item_counts": _quantiles(item_counts[item_counts > 0]),
    }


class RatingSummary:
    """`rating` of the statistics, accumulated over chunks of ratings (`add`, then `result`).

    Counts per distinct value are kept while there are at most `MAX_TRACKED_RATINGS` of them
    (beyond, `distinct` is None: a continuous column streamed)."""

    def __init__(self) -> None:
        self.n_finite = 0
        self.non_finite = 0
        self.total = 0.0
        self.low = np.inf
        self.high = -np.inf
        self.counts: dict[float, int] | None = {}

    def add(self, rating: np.ndarray) -> None:
        rating = np.asarray(rating)
        finite = rating[np.isfinite(rating)].astype(np.float64)
        self.non_finite += int(len(rating) - len(finite))
        if not len(finite):
            return
        self.n_finite += len(finite)
        self.total += float(finite.sum())
        self.low, self.high = min(self.low, finite.min()), max(self.high, finite.max())
        if self.counts is not None:
            values, counts = np.unique(finite, return_counts=True)
            if len(values) > MAX_TRACKED_RATINGS:
                self.counts = None
                return
            for value, count in zip(values.tolist(), counts.tolist(), strict=True):
                self.counts[value] = self.counts.get(value, 0) + count
            if len(self.counts) > MAX_TRACKED_RATINGS:
                self.counts = None

    def result(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"non_finite": self.non_finite}
        if not self.n_finite:
            return summary
        summary.update(min=float(self.low), mean=self.total / self.n_finite,
                       max=float(self.high),
                       distinct=None if self.counts is None else len(self.counts))
        if self.counts is not None and len(self.counts) <= MAX_DISTINCT_RATINGS:
            summary["distribution"] = {f"{value:g}": count
                                       for value, count in sorted(self.counts.items())}
        return summary


def _quantiles(counts: np.ndarray) -> dict[str, float] | None:
    if len(counts) == 0:
        return None
    values = np.quantile(counts, list(QUANTILES.values()))
    return {name: float(value) for name, value in zip(QUANTILES, values, strict=True)}


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def format_statistics(stats: dict[str, Any]) -> str:
    """A readable text block of `dataset_statistics` output, for the terminal."""
    lines = []

    def add(label: str, text: str) -> None:
        lines.append(f"{label:<18}{text}")

    labels = list(dict.fromkeys(str(stats[k]) for k in ("name", "format") if k in stats))
    if labels:
        add("dataset", " ".join(labels))
    if "raw_rows" in stats:
        add("rows read", f"{stats['raw_rows']:,}")
    add("users", f"{stats['n_users']:,} ({stats['users_with_interactions']:,} with interactions)")
    add("items", f"{stats['n_items']:,} ({stats['items_with_interactions']:,} with interactions)")
    add("interactions", f"{stats['n_interactions']:,}")
    add("density", f"{stats['density']:.4%}")
    rating = stats.get("rating", {})
    if "min" in rating:
        add(
            "ratings",
            f"min {rating['min']:g}, mean {rating['mean']:.3f}, max {rating['max']:g}, "
            f"{'many' if rating['distinct'] is None else rating['distinct']} distinct",
        )
        if "distribution" in rating:
            add("", ", ".join(f"{v}: {c:,}" for v, c in rating["distribution"].items()))
    if rating.get("non_finite"):
        add("", f"{rating['non_finite']:,} non-finite ratings")
    for label, key in (("per-user count", "user_counts"), ("per-item count", "item_counts")):
        quantiles = stats.get(key)
        if quantiles:
            add(label, ", ".join(f"{name} {value:g}" for name, value in quantiles.items()))
    if "timestamp" in stats:
        time = stats["timestamp"]
        add("timestamps", _format_time_range(time["min"], time["max"]))
    if "given_split" in stats:
        add("given split", ", ".join(f"{k} {v:,}" for k, v in stats["given_split"].items()))
    if "partitioned" in stats:
        parts = stats["partitioned"]
        add("partitioned", f"{parts['files']:,} files, {parts['row_groups']:,} row groups, "
            f"{parts['bytes'] / 2**20:,.1f} MiB; id maps {parts['id_maps']}")
    if "cleaning" in stats:
        entries = ", ".join(f"{k} {v}" for k, v in stats["cleaning"].items())
        for index, line in enumerate(textwrap.wrap(entries, width=80)):
            add("cleaning" if index == 0 else "", line)
    return "\n".join(lines)


def _format_time_range(low: float, high: float) -> str:
    """Unix seconds (as most logs store them) also shown as UTC dates; other clocks as numbers."""
    text = f"{low:.10g} .. {high:.10g}"
    # 1995-01-01 .. 2100-01-01 in Unix seconds: outside it, the column is not wall-clock time.
    if 7.8e8 <= low <= high <= 4.1e9:
        def date(seconds: float) -> str:
            return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d")

        text += f" ({date(low)} .. {date(high)} UTC, {(high - low) / 86400:.0f} days)"
    return text
