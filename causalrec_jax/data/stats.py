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
QUANTILES = {"min": 0.0, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9, "max": 1.0}


def dataset_statistics(dataset: Dataset) -> dict[str, Any]:
    """Sizes, density, rating distribution and activity quantiles of a dataset.

    Keys: `name`, `format`, `raw_rows` (from meta, when present), `n_users`, `n_items`,
    `n_interactions`, `users_with_interactions`, `items_with_interactions`, `density`
    (interactions over
    `n_users * n_items`, duplicates included), `rating` (`min`, `mean`, `max`, `distinct`,
    `non_finite`, and `distribution` {value as str: count} when there are at most 20
    distinct finite values), `user_counts` / `item_counts` (min, p25, p50, p75, p90, max of
    interactions per user/item, over users/items with at least one; linear interpolation as
    `np.quantile`; None when empty), `timestamp` (`min`, `max`, `span`, when the dataset has
    finite timestamps), `given_split` (rows per part, when present) and `cleaning` (the
    cleaning report, when present).

    Args:
        dataset: the interactions.
    """
    user_counts = np.bincount(dataset.user, minlength=dataset.n_users)
    item_counts = np.bincount(dataset.item, minlength=dataset.n_items)
    cells = dataset.n_users * dataset.n_items
    stats: dict[str, Any] = {}
    for key in ("name", "format"):
        if key in dataset.meta:
            stats[key] = str(dataset.meta[key])
    if "raw_rows" in dataset.meta:
        stats["raw_rows"] = int(dataset.meta["raw_rows"])
    stats.update(
        n_users=int(dataset.n_users),
        n_items=int(dataset.n_items),
        n_interactions=int(len(dataset)),
        users_with_interactions=int((user_counts > 0).sum()),
        items_with_interactions=int((item_counts > 0).sum()),
        density=float(len(dataset) / cells) if cells else 0.0,
        rating=_rating_summary(dataset.rating),
        user_counts=_quantiles(user_counts[user_counts > 0]),
        item_counts=_quantiles(item_counts[item_counts > 0]),
    )
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


def _rating_summary(rating: np.ndarray) -> dict[str, Any]:
    finite = rating[np.isfinite(rating)].astype(np.float64)
    summary: dict[str, Any] = {"non_finite": int(len(rating) - len(finite))}
    if len(finite) == 0:
        return summary
    values, counts = np.unique(finite, return_counts=True)
    summary.update(
        min=float(finite.min()),
        mean=float(finite.mean()),
        max=float(finite.max()),
        distinct=int(len(values)),
    )
    if len(values) <= MAX_DISTINCT_RATINGS:
        summary["distribution"] = {
            f"{value:g}": int(count) for value, count in zip(values, counts, strict=True)
        }
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
            f"{rating['distinct']} distinct",
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
