"""Quickstart on the simulated MNAR world: the bias of a naive log, and how the truth exposes it.

Builds the `[sim]` world of the config (known relevance, ratings and propensities), splits it
into the MNAR log (train) and the MAR test, then compares simple estimators of each item's
mean rating (naive, IPS with the true propensities) against the truth, and ranks each user's
MAR test items by random, popularity, naive, IPS and oracle scores (the debiasing literature's
protocol: positives are ratings >= 4, each user ranks only their own test items).

    python experiments/demo.py [--config configs/sim_demo.toml] [--set sim.seed=1] [--out DIR]

Writes `DIR/metrics.json` (default: a fresh `runs/demo-DATE-TIME`; a non-empty `--out` is refused).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import causalrec_jax.sim  # noqa: F401  registers the data format "simulator" this demo reads
from causalrec_jax.config import load_config
from causalrec_jax.data.loader import load_split
from causalrec_jax.eval import evaluate_candidates
from causalrec_jax.runs.folder import fresh_out, write_metrics
from causalrec_jax.runs.script import run_script

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sim_demo.toml"


def item_mean_ratings(train, propensity=None, *, self_normalised=False) -> np.ndarray:
    """`[n_items]` estimates of each item's mean rating over all users, from the MNAR log.

    Without `propensity` the naive mean of the observed ratings. With the true
    `propensity [n_users, n_items]`, the IPS (Horvitz-Thompson) mean weights each observed
    rating by 1 / P(observed) and divides by the number of users: unbiased, but noisy where
    propensities are small; the self-normalised (SNIPS) mean divides by the sum of the weights
    instead, trading a little bias for much less variance. Items never observed are NaN.
    """
    counts = np.bincount(train.item, minlength=train.n_items)
    weights = np.ones(len(train))
    if propensity is not None:
        weights = 1.0 / propensity[train.user, train.item]
    sums = np.bincount(train.item, weights=train.rating * weights, minlength=train.n_items)
    if propensity is not None and not self_normalised:
        denominator = np.full(train.n_items, float(train.n_users))
    else:
        denominator = np.bincount(train.item, weights=weights, minlength=train.n_items)
    return np.where(counts > 0, sums / np.where(counts > 0, denominator, 1.0), np.nan)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", help="a new or empty folder (default: a fresh "
                        "runs/demo-DATE-TIME)")
    args = parser.parse_args(argv)

    config = load_config(args.config, args.overrides)
    out = fresh_out(args.out, "demo")  # refused before any work when it holds something
    split, truth = load_split(config.data, config.sim, seed=config.run.seed)
    train, test = split.train, split.test
    expected_rating = np.asarray(truth.expected_rating)
    propensity = np.asarray(truth.propensity)
    # The estimand: each item's mean of the realised ratings of all users (observed or not).
    true_item_mean = np.asarray(truth.ratings, dtype=np.float64).mean(axis=0)

    estimates = {
        "naive": item_mean_ratings(train),
        "ips": item_mean_ratings(train, propensity),
        "snips": item_mean_ratings(train, propensity, self_normalised=True),
    }
    seen = ~np.isnan(estimates["naive"])
    bias = {
        "mean_rating_mnar_log": float(train.rating.mean()),
        "mean_rating_mar_test": float(test.rating.mean()),
        "mean_rating_truth": float(true_item_mean.mean()),
    }
    for name, estimate in estimates.items():
        error = estimate[seen] - true_item_mean[seen]
        bias[f"item_mean_bias_{name}"] = float(error.mean())
        bias[f"item_mean_mse_{name}"] = float(np.mean(error**2))

    popularity = np.bincount(train.item, minlength=train.n_items).astype(np.float32)
    rng = np.random.default_rng(config.run.seed)
    random_scores = rng.random(train.n_items).astype(np.float32)
    item_scores = {
        "random": random_scores,
        "popularity": popularity,
        **{
            f"{name}_item_mean": np.nan_to_num(estimate, nan=0.0).astype(np.float32)
            for name, estimate in estimates.items()
        },
    }

    def item_scorer(scores):
        return lambda users, items: scores[np.asarray(items)]

    def oracle(users, items):
        return expected_rating[np.asarray(users), np.asarray(items)]

    scorers = {name: item_scorer(scores) for name, scores in item_scores.items()}
    scorers["oracle"] = oracle
    ranking = {}
    for name, scorer in scorers.items():
        result = evaluate_candidates(
            scorer,
            test,
            ks=config.eval.ks,
            metrics=["ndcg", "recall", "precision"],
            positive_threshold=config.eval.positive_threshold,
        )
        ranking[name] = {key: float(value) for key, value in result.items()}

    results = {"bias": bias, "ranking_mar_candidates": ranking, "data": {
        "n_users": train.n_users, "n_items": train.n_items, "n_train": len(train),
        "n_test": len(test)}}
    print_report(results, config.eval.ks)
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out, results)  # atomic, strict JSON (NaN as null), with versions
    print(f"\nwrote {out / 'metrics.json'}")
    return results


def print_report(results: dict, ks) -> None:
    """Prints the demo's two tables."""
    data, bias = results["data"], results["bias"]
    print(f"simulated world: {data['n_users']} users x {data['n_items']} items, "
          f"{data['n_train']} MNAR ratings (train), {data['n_test']} MAR ratings (test)\n")
    print("mean rating  MNAR log {mean_rating_mnar_log:.3f} | MAR test {mean_rating_mar_test:.3f}"
          " | truth {mean_rating_truth:.3f}".format(**bias))
    print("per-item mean rating vs truth (items seen in the log; true propensities):")
    for name in ("naive", "ips", "snips"):
        print(f"  {name:<6} bias {bias[f'item_mean_bias_{name}']:+.3f}   "
              f"MSE {bias[f'item_mean_mse_{name}']:.3f}")
    print()
    columns = [f"{m}@{k}" for k in ks for m in ("ndcg", "recall")]
    print("ranking each user's MAR test items (positive = rating >= 4, users without a "
          "positive left out)")
    print(f"{'scorer':<16}" + "".join(f"{c:>12}" for c in columns))
    for name, values in results["ranking_mar_candidates"].items():
        print(f"{name:<16}" + "".join(f"{values[c]:>12.4f}" for c in columns))


if __name__ == "__main__":
    raise SystemExit(run_script(main))
