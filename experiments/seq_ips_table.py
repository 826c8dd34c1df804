"""Naive, IPS and DR SASRec on slate logs, confounded and not: the README's table.

For each world (`confounded`: configs/sim_seq_log.toml, epsilon-greedy over popularity;
`unconfounded`: the same world logged by a uniform policy) and each seed s, a log is drawn
with run.seed = s and the three configs configs/sim_sasrec_{naive,ips,dr}.toml train on it
(run.seed = s). Writes experiments/results/seq_ips.json and .md: per method the mean over
seeds of test_truth and test_ope, and the margin over naive (paired by seed) with its 95%
t-interval.

    python experiments/seq_ips_table.py --seeds 3 --out runs/seq_ips
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np
from scipy import stats

from causalrec_jax.config import load_config
from causalrec_jax.runs.train import sequence_run
from causalrec_jax.sim.logs import simulate_log
from causalrec_jax.sim.simlog import write_simlog

WORLDS = {"confounded": [], "unconfounded": ['policy.kind="uniform"']}
METHODS = ("naive", "ips", "dr")
NAMES = ("truth_ndcg@10", "truth_recall@10")


def interval(values):
    values = np.asarray(values, float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/seq_ips")
    parser.add_argument("--set", action="append", default=[], help="extra overrides")
    args = parser.parse_args()
    out = Path(args.out)
    results = {}
    for world, policy_overrides in WORLDS.items():
        for seed in range(args.seeds):
            log_config = load_config("configs/sim_seq_log.toml",
                                     [*policy_overrides, f"run.seed={seed}"])
            log_dir = out / f"{world}_log{seed}"
            if not log_dir.exists():
                log, truth = simulate_log(log_config.env, log_config.policy,
                                          jax.random.key(seed))
                write_simlog(log_dir, log, truth, log_config)
            for method in METHODS:
                run_dir = out / f"{world}_{method}{seed}"
                if (run_dir / "metrics.json").exists():
                    metrics = json.loads((run_dir / "metrics.json").read_text())
                else:
                    config = load_config(f"configs/sim_sasrec_{method}.toml", [
                        f'data.path="{log_dir}"', f"run.seed={seed}", *args.set])
                    metrics = sequence_run(config, run_dir)
                results.setdefault(world, {}).setdefault(method, []).append({
                    "seed": seed, **metrics["test_truth"], **metrics["test_ope"],
                    "test_ndcg@10": metrics["test"]["ndcg@10"]})
                print(world, method, seed, {name: round(metrics["test_truth"][name], 4)
                                            for name in NAMES}, flush=True)
    lines = ["| world | method | truth ndcg@10 | truth recall@10 | margin over naive (ndcg) "
             "| logged test ndcg@10 | iips estimate | on-policy value |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for world, by_method in results.items():
        naive = np.array([r["truth_ndcg@10"] for r in by_method["naive"]])
        for method, rows in by_method.items():
            ndcg = [r["truth_ndcg@10"] for r in rows]
            margin, half = interval(np.array(ndcg) - naive)
            mean, ndcg_half = interval(ndcg)
            recall, recall_half = interval([r["truth_recall@10"] for r in rows])
            lines.append(
                f"| {world} | {method} | {mean:.4f} ± {ndcg_half:.4f} | {recall:.4f} ± "
                f"{recall_half:.4f} | {margin:+.4f} ± {half:.4f} | "
                f"{np.mean([r['test_ndcg@10'] for r in rows]):.4f} | "
                f"{np.mean([r['iips_estimate'] for r in rows]):.3f} | "
                f"{np.mean([r['on_policy_value'] for r in rows]):.3f} |")
    table = "\n".join(lines)
    print(table)
    target = Path("experiments/results")
    target.mkdir(parents=True, exist_ok=True)
    (target / "seq_ips.json").write_text(json.dumps(results, indent=1))
    (target / "seq_ips.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
