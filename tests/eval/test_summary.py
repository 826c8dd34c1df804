"""Seed summaries (eval/summary.py): hand-computed means, stds and Student-t intervals."""

import math

import pytest

from causalrec_jax.eval.summary import aggregate, metric_values, summarize


def test_summarize_by_hand():
    s = summarize([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df = 2) * std / sqrt(n)
    assert (s["ci95_low"], s["ci95_high"]) == pytest.approx((2.0 - half, 2.0 + half))
    # NaN seeds are left out; one value has no spread; none is all NaN.
    assert summarize([4.0, math.nan]) == {"mean": 4.0, "std": 0.0, "ci95_low": 4.0,
                                          "ci95_high": 4.0}
    assert math.isnan(summarize([math.nan])["mean"])


def test_aggregate_skips_counts_and_names_blocks():
    per_seed = [{"test": {"auc": 0.6, "n_users_evaluated": 10}},
                {"test": {"auc": 0.8, "n_users_evaluated": 10}}]
    assert metric_values(per_seed[0]["test"]) == {"auc": 0.6}
    out = aggregate(per_seed, "test")
    assert set(out) == {"test", "test_std", "test_ci95"}
    assert out["test"] == {"auc": pytest.approx(0.7)}
    assert out["test_std"]["auc"] == pytest.approx(math.sqrt(0.02))
    assert aggregate(per_seed, "valid") == {}
