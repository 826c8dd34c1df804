"""Quickstart: train biased MF on the simulated MNAR world and evaluate it on MAR ratings.

    python experiments/quickstart.py [--config configs/quickstart.toml] [--set k=v ...]
                                     [--out DIR] [--compare ips,dr,dr_jl]

Trains `train.seeds` models in one vmapped program (see `configs/quickstart.toml`), prints a
table of test metrics (mean ± std over seeds, 95% interval) and the run folder, which
`causalrec evaluate --run DIR` and `causalrec recommend --run DIR --user 1` then read.

Then trains naive MF and each debiasing method of `--compare` (IPS, doubly robust with a
fixed imputation and DR-JL by default) on the same world, each with its tuned
`configs/sim_<method>.toml` (the rows of the simulator table), and prints them against the
simulator's ground truth: the error against the true expected rating of ALL (user, item)
cells, and the ranking of all items by true relevance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from causalrec_jax.config import load_config
from causalrec_jax.runs.folder import fresh_out
from causalrec_jax.runs.script import run_script
from causalrec_jax.runs.train import train_run

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.toml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", help="a new or empty folder (default: a fresh "
                        "runs/quickstart-DATE-TIME)")
    parser.add_argument("--compare", default="ips,dr,dr_jl",
                        help="debiasing methods to compare with naive ('' for none)")
    args = parser.parse_args(argv)

    config = load_config(args.config, args.overrides)
    out = fresh_out(args.out, "quickstart")  # never replaces an earlier run or a user's file
    metrics = train_run(config, out, quiet=True)

    print(f"{config.model.name.upper()} ({config.train.loss} loss) on the simulated world: "
          f"{metrics['data']['n_train']} MNAR training ratings, {len(metrics['seeds'])} seeds, "
          f"{metrics['timing']['total_seconds']:.1f} s")
    print(f"test = MAR ratings, protocol {config.eval.protocol!r}; mean ± std over seeds "
          "[95% interval]")
    for name, mean in metrics["test"].items():
        std = metrics["test_std"][name]
        low, high = metrics["test_ci95"][name]
        print(f"  {name:<14} {mean:.4f} ± {std:.4f}  [{low:.4f}, {high:.4f}]")
    print(f"run folder: {out}")
    methods = [m for m in args.compare.split(",") if m]
    if methods:
        metrics["comparison"] = compare(config, args.overrides, methods, out)
    return metrics


TRUTH_COLUMNS = ("truth_mse", "truth_auc", "truth_ndcg@5")


def compare(config, overrides, methods, out: Path) -> dict:
    """Trains naive and each method of `methods` with its tuned config (configs/sim_<m>.toml,
    `train.seeds` and the `--set` overrides of this run) and prints them against the truth."""
    rows = {}
    for method in ["naive", *methods]:
        variant = load_config(ROOT / "configs" / f"sim_{method}.toml",
                              [f"train.seeds={config.train.seeds}", *overrides])
        metrics = train_run(variant, out / f"compare_{method}", quiet=True)
        rows[method] = _truth_row(metrics, ratings=variant.train.loss == "mse")
    print("\nnaive vs debiased MF, each with its tuned configs/sim_<method>.toml (mean over "
          f"{config.train.seeds} seeds),\nagainst the simulator's truth: error vs the true "
          "E[rating] of all cells, ranking of all items by true relevance")
    print(f"  {'method':<8} {'MAR test mse':>12} {'MAR test auc':>12} "
          + " ".join(f"{c:>13}" for c in TRUTH_COLUMNS))
    for method, row in rows.items():
        print(f"  {method:<8} {_cell(row['mar_test_mse'], 12)} {_cell(row['mar_test_auc'], 12)} "
              + " ".join(_cell(row[c], 13) for c in TRUTH_COLUMNS))
    return rows


def _cell(value, width: int) -> str:
    return f"{'—':>{width}}" if value is None else f"{value:>{width}.4f}"


def _truth_row(metrics: dict, ratings: bool) -> dict:
    # Scores of methods that do not predict ratings (rel_mf, pda, macr) have no mse.
    return {"mar_test_mse": metrics["test"].get("mse") if ratings else None,
            "mar_test_auc": metrics["test"].get("auc"),
            **{name: metrics["test_truth"].get(name) for name in TRUTH_COLUMNS}}


if __name__ == "__main__":
    raise SystemExit(run_script(main))
