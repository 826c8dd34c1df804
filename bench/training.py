"""Benchmark of training: seconds per epoch, seeds as a vmap axis, peak memory.

    make bench            (or: python bench/training.py [--out bench/results/training.json])

Each case runs in its own process so that its peak memory (max RSS) is its own. Compilation
(the first epoch) is reported apart from the steady-state epoch time.

Cases:
- `ml100k_bpr_mf_1seed` / `_8seeds`: BPR-MF (configs/ml100k_mf.toml) for a fixed number of
  epochs without validation: the wall time of 8 seeds in one vmapped program against 1 seed.
- `ml100k_bpr_mf_to_quality`: the full config with early stopping, as in the README table.
- `sim_100k_x_10k_mf`: MF on a simulated world of 100,000 users x 10,000 items.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


def case_epochs(config_path: str, overrides: list[str], epochs: int) -> dict:
    """Trains for `epochs` epochs without validation; returns timing of the loop."""
    import jax

    from causalrec_jax.config import load_config
    from causalrec_jax.data.dataset import Split
    from causalrec_jax.data.loader import load_split
    from causalrec_jax.tasks import ordinary

    config = load_config(config_path, overrides + [f"train.epochs={epochs}"])
    tic = time.perf_counter()
    split, _ = load_split(config.data, config.sim, seed=config.run.seed)
    data_seconds = time.perf_counter() - tic
    no_valid = Split(train=split.train, valid=None, test=split.test)
    # The test evaluation's seconds per protocol: under the candidates protocol the test is
    # also ranked among all items (the `test_full` block, `ordinary.test_results`).
    by_protocol: dict[str, float] = {}
    evaluate_split = ordinary.evaluate_split

    def timed(eval_config, *args, **kwargs):
        start = time.perf_counter()
        try:
            return evaluate_split(eval_config, *args, **kwargs)
        finally:
            by_protocol[eval_config.protocol] = round(
                by_protocol.get(eval_config.protocol, 0.0) + time.perf_counter() - start, 3)

    ordinary.evaluate_split = timed
    tic = time.perf_counter()
    try:
        trained = ordinary.train_split(config, no_valid)
    finally:
        ordinary.evaluate_split = evaluate_split
    jax.block_until_ready(trained.parts.params)
    return {
        "data_seconds": round(data_seconds, 3),
        "wall_seconds": round(time.perf_counter() - tic, 3),
        "n_train": len(split.train),
        **trained.timing,
        "test_eval_seconds_by_protocol": by_protocol,
    }


def case_run(config_path: str, overrides: list[str]) -> dict:
    """A whole `causalrec train` run (early stopping, evaluation, run folder)."""
    import tempfile

    from causalrec_jax.config import load_config
    from causalrec_jax.runs.train import train_run

    config = load_config(config_path, overrides)
    with tempfile.TemporaryDirectory() as folder:
        tic = time.perf_counter()
        metrics = train_run(config, Path(folder) / "run", quiet=True)
        wall = time.perf_counter() - tic
    return {"wall_seconds": round(wall, 3), "test": metrics["test"], **metrics["timing"],
            "best_epoch": metrics["per_seed"][0]["best_epoch"]}


CASES = {
    "ml100k_bpr_mf_1seed": ("epochs", "configs/ml100k_mf.toml", ["train.seeds=1"], 30),
    "ml100k_bpr_mf_8seeds": ("epochs", "configs/ml100k_mf.toml", ["train.seeds=8"], 30),
    "ml100k_bpr_mf_to_quality": ("run", "configs/ml100k_mf.toml", [], None),
    "sim_100k_x_10k_mf": ("epochs", "configs/quickstart.toml", [
        "sim.n_users=100000", "sim.n_items=10000", "sim.mean_exposure=0.001",
        "train.seeds=1", 'data.split="given"', "train.batch_size=8192"], 5),
}


def run_case(name: str) -> dict:
    kind, config, overrides, epochs = CASES[name]
    config = str(ROOT / config)
    if "ml100k" in name:
        overrides = overrides + [f'data.path="{ML100K}"']
    result = case_epochs(config, overrides, epochs) if kind == "epochs" else case_run(
        config, overrides)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "training.json"))
    parser.add_argument("--case", help="run one case in this process (internal)")
    parser.add_argument("--only", nargs="*", help="run only these cases")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)))
        return
    results = {}
    for name in args.only or CASES:
        if "ml100k" in name and not ML100K.exists():
            results[name] = {"skipped": f"{ML100K} not found"}
            continue
        done = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True,
                              text=True, cwd=ROOT)
        if done.returncode != 0:
            results[name] = {"error": done.stderr.strip().splitlines()[-1:]}
        else:
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, json.dumps(results[name]))
    one, eight = results.get("ml100k_bpr_mf_1seed", {}), results.get("ml100k_bpr_mf_8seeds", {})
    if "train_seconds" in one and "train_seconds" in eight:
        results["seeds_8_over_1_train_time"] = round(
            eight["train_seconds"] / one["train_seconds"], 2)
    import jax

    report = {"machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                          "jax": jax.__version__, "backend": jax.default_backend()},
              "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
