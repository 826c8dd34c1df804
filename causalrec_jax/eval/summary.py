"""Summaries of a run's seeds: mean, sample standard deviation and a 95% Student-t interval.

Every run kind reports its metrics over seeds through `aggregate`, so `metrics.json` has the
same `part`, `part_std` and `part_ci95` blocks whatever trained the seeds. `BLOCK_PROTOCOLS`
says what each block measures (the command line prints it, reports caption their tables
with it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

# What each block of metrics.json measures: `causalrec train` prints it beside the block, a
# report states it as the caption of the block's table.
BLOCK_PROTOCOLS = {
    "valid": "validation split, the early-stopping criterion's; per-user metrics over the "
             "users they can rank, n/a below eval.min_ranked_users",
    "test": "test split, the library's protocol (users without a positive left out)",
    "test_literature": "test, the debiasing literature's protocol (users without a positive "
                       "score ndcg 1)",
    "test_full": "test positives ranked among all items (seen ones masked)",
    "test_truth": "against the simulator's ground truth (every cell)",
    "test_unmasked": "test, the user's history not masked (RecBole's sequential protocol)",
    "test_sampled": "test item among sampled negatives (inflates every metric)",
}


def summarize(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation and a 95% Student-t interval of the mean."""
    array = np.asarray([v for v in values if not math.isnan(v)], np.float64)
    if len(array) == 0:
        return {"mean": math.nan, "std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan}
    mean = float(array.mean())
    if len(array) == 1:
        return {"mean": mean, "std": 0.0, "ci95_low": mean, "ci95_high": mean}
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(array) - 1)) * std / math.sqrt(len(array))
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def metric_values(values: dict[str, Any]) -> dict[str, float]:
    """The metric values of an evaluation result, without its counts of users (`n_users_*`)."""
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, int | float) and "n_users" not in key
    }


def aggregate(per_seed: list[dict[str, Any]], part: str) -> dict[str, dict[str, float]]:
    """`{part: means, part_std: stds, part_ci95: [low, high]}` over seeds of `per_seed[s][part]`."""
    names = list(metric_values(per_seed[0].get(part, {})))
    if not names:
        return {}
    summaries = {name: summarize([seed[part][name] for seed in per_seed]) for name in names}
    return {
        part: {name: s["mean"] for name, s in summaries.items()},
        f"{part}_std": {name: s["std"] for name, s in summaries.items()},
        f"{part}_ci95": {name: [s["ci95_low"], s["ci95_high"]] for name, s in summaries.items()},
    }
