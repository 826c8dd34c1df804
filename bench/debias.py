"""Benchmark of the debiasing table: wall seconds per method on Coat, and IPS at Yahoo! R3 size.

    python bench/debias.py [--out bench/results/debias.json] [--only CASE ...] [--quick]

Each case runs in its own process, so that its peak memory (max RSS) is its own.

Cases:
- `coat_table`: the whole Coat table of experiments/debias_table.py, every method x 5
  seeds (configs/coat_<method>.toml, their default epochs with early stopping; no tuning):
  wall seconds per method (data, compilation, training, evaluation and the run folder) and in
  total, with each method's first-epoch (compilation) and steady epoch seconds.
- `yahoo_proxy_dr_jl_core`: DR-JL's steady epoch with the one core's step as it was, with
  the core's Adam, and with the epoch's order sorted by NumPy, side by side in one process.
- `yahoo_proxy_ips` / `yahoo_proxy_dr_jl`: the shipped configs/yahoo_<method>.toml (IPS /
  DR-JL, naive Bayes propensities from the MAR slice) x 5 seeds, as a user runs them, on the
  Yahoo! R3 proxy world (`sim/presets.py`: 15,400 users x 1,000 items, 311,286 MNAR ratings,
  10 MAR ratings for each of 5,400 users, the release's rating marginals); compile (first
  epoch) against steady epoch seconds. Its evaluation includes the simulator's `test_truth`
  block (every cell of the world), which a run on the real file does not compute.

A method that fails (not yet wired into training) is recorded with its error, not a crash.
`--quick` trains 2 epochs per run to check that the bench works, and writes nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from causalrec_jax.causal import protocols
from causalrec_jax.sim import presets

ROOT = Path(__file__).resolve().parents[1]
COAT = ROOT.parent / "shared" / "data" / "coat"
YAHOO_RATINGS = 311_704
SEEDS = 5
QUICK_EPOCHS = 2
YAHOO_PROXY = ['data.format="simulator"', *presets.world_overrides("yahoo_r3")]
TIMING_KEYS = ("first_epoch_seconds", "epoch_seconds", "train_seconds", "eval_seconds",
               "test_eval_seconds", "epochs_run", "total_seconds")


def load_table_script():
    """The experiments/debias_table.py module (its methods, protocol and `run_method`)."""
    spec = importlib.util.spec_from_file_location(
        "debias_table", ROOT / "experiments" / "debias_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timing(metrics: dict) -> dict:
    timing = metrics.get("timing", {})
    return {key: timing[key] for key in TIMING_KEYS if key in timing}


def case_coat_table(quick: bool) -> dict:
    """Runs every method of the Coat table in turn; wall seconds per method and in total."""
    table = load_table_script()
    overrides = [*protocols.overrides("a"), *table.TABLE_OVERRIDES, f"train.seeds={SEEDS}",
                 f'data.path="{COAT}"']
    if quick:
        overrides.append(f"train.epochs={QUICK_EPOCHS}")
    methods = {}
    with tempfile.TemporaryDirectory() as folder:
        tic_total = time.perf_counter()
        for method in table.METHODS:
            out = Path(folder) / method
            tic = time.perf_counter()
            row = table.run_method(table.CONFIGS / f"coat_{method}.toml", overrides, out)
            wall = round(time.perf_counter() - tic, 3)
            if row["status"] != "ok":
                methods[method] = {"error": row["error"], "wall_seconds": wall}
            else:
                metrics = json.loads((out / "metrics.json").read_text())
                methods[method] = {"wall_seconds": wall, **_timing(metrics),
                                   "test_auc": row["mean"]["auc"],
                                   "test_ndcg@5": row["mean"]["ndcg@5"]}
            print(method, json.dumps(methods[method]), file=sys.stderr, flush=True)
        total = round(time.perf_counter() - tic_total, 3)
    return {"seeds": SEEDS, "total_wall_seconds": total,
            "n_failed": sum("error" in entry for entry in methods.values()),
            "methods": methods}


def case_yahoo_proxy_ips(quick: bool, method: str = "ips") -> dict:
    """configs/yahoo_<method>.toml (IPS by default) x 5 seeds on the Yahoo! R3 proxy world;
    compile vs steady epoch seconds."""
    from causalrec_jax.config import load_config
    from causalrec_jax.errors import CausalRecError
    from causalrec_jax.runs.train import train_run

    table = load_table_script()
    overrides = [*protocols.overrides("a"), *table.TABLE_OVERRIDES, f"train.seeds={SEEDS}",
                 *YAHOO_PROXY]
    if quick:
        overrides.append(f"train.epochs={QUICK_EPOCHS}")
    with tempfile.TemporaryDirectory() as folder:
        tic = time.perf_counter()
        try:
            config = load_config(table.CONFIGS / f"yahoo_{method}.toml", overrides)
            metrics = train_run(config, Path(folder) / "run", quiet=True)
        except CausalRecError as error:
            return {"error": f"{type(error).__name__}: {error}",
                    "wall_seconds": round(time.perf_counter() - tic, 3)}
        wall = round(time.perf_counter() - tic, 3)
    timing = _timing(metrics)
    return {
        "seeds": SEEDS, "overrides": YAHOO_PROXY, "wall_seconds": wall,
        "n_train": metrics["data"]["n_train"], "n_test": metrics["data"]["n_test"],
        "target_n_train": YAHOO_RATINGS,
        "compile_seconds": timing.get("first_epoch_seconds"),
        "steady_epoch_seconds": timing.get("epoch_seconds"),
        **timing,
        "best_epochs": [entry["best_epoch"] for entry in metrics["per_seed"]],
        "test_auc": metrics["test"].get("auc"), "test_ndcg@5": metrics["test"].get("ndcg@5"),
    }


def case_yahoo_proxy_dr_jl(quick: bool) -> dict:
    """DR-JL (two models, uniform cells each step) x 5 seeds at Yahoo! R3 size."""
    return case_yahoo_proxy_ips(quick, method="dr_jl")


CORE_EPOCHS = 6


def case_yahoo_proxy_dr_jl_core(quick: bool) -> dict:
    """DR-JL x 5 seeds at Yahoo! R3 size, side by side in one process, steady epoch seconds
    of the one core's step (a) as it was but for its two selects made one: optax's
    `scale_by_adam`, its state selected after the update when a step is skipped, and XLA
    sorting each epoch's order; (b) with the core's
    Adam (`train.step.scale_by_guarded_adam`, which keeps its own moments on a skipped step);
    (c) and the order sorted by NumPy (`train.step.permutation`, the same order: this
    machine's default). Same data, seeds and number of epochs: the three train the same
    numbers (to the last bits of XLA's fusion)."""
    import optax

    from causalrec_jax.config import load_config
    from causalrec_jax.runs.train import train_run
    from causalrec_jax.tasks import ordinary
    from causalrec_jax.train import step

    table = load_table_script()
    epochs = QUICK_EPOCHS if quick else CORE_EPOCHS
    overrides = [*protocols.overrides("a"), *table.TABLE_OVERRIDES, f"train.seeds={SEEDS}",
                 *YAHOO_PROXY, f"train.epochs={epochs}", f"train.patience={epochs}"]
    config = load_config(table.CONFIGS / "yahoo_dr_jl.toml", overrides)
    core_adam, host_sorts = step.scale_by_guarded_adam, step.host_sorts
    variants = {"a_optax_adam_xla_sort": (optax.scale_by_adam, lambda: False),
                "b_core_adam_xla_sort": (core_adam, lambda: False),
                "c_core_adam_numpy_sort": (core_adam, host_sorts)}
    results = {}
    try:
        for name, (adam, sorts) in variants.items():
            step.scale_by_guarded_adam, step.host_sorts = adam, sorts
            ordinary._programs.cache_clear()
            with tempfile.TemporaryDirectory() as folder:
                metrics = train_run(config, Path(folder) / "run", quiet=True)
            results[name] = {**_timing(metrics), "test_auc": metrics["test"].get("auc")}
            print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
    finally:
        step.scale_by_guarded_adam, step.host_sorts = core_adam, host_sorts
        ordinary._programs.cache_clear()
    before = results["a_optax_adam_xla_sort"]["epoch_seconds"]
    return {"seeds": SEEDS, "epochs": epochs, **results,
            "speedup": {name: round(before / entry["epoch_seconds"], 3)
                        for name, entry in results.items()}}


CASES = {"coat_table": case_coat_table, "yahoo_proxy_ips": case_yahoo_proxy_ips,
         "yahoo_proxy_dr_jl": case_yahoo_proxy_dr_jl,
         "yahoo_proxy_dr_jl_core": case_yahoo_proxy_dr_jl_core}


def run_case(name: str, quick: bool) -> dict:
    """Runs one case in this process; adds its peak memory."""
    result = CASES[name](quick)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def main() -> None:
    """Runs each case in a subprocess and writes bench/results/debias.json (not with --quick)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "debias.json"))
    parser.add_argument("--case", help="run one case in this process (internal)")
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="run only these cases")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EPOCHS} epochs per run, to check the bench; writes nothing")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.quick)))
        return
    results = {}
    for name in args.only or CASES:
        if name == "coat_table" and not COAT.exists():
            results[name] = {"skipped": f"{COAT} not found"}
            continue
        command = [sys.executable, __file__, "--case", name] + (["--quick"] if args.quick else [])
        tic = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            results[name] = {"error": done.stderr.strip().splitlines()[-1:],
                             "wall_seconds": round(time.perf_counter() - tic, 3)}
        else:
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, json.dumps(results[name]), flush=True)
    if args.quick:
        print(f"--quick: {QUICK_EPOCHS} epochs per run; nothing written")
        return
    import jax

    out = Path(args.out)
    if args.only and out.exists():
        # A partial run updates its cases and keeps the others' last results.
        results = {**json.loads(out.read_text()).get("results", {}), **results}
    report = {"machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                          "jax": jax.__version__, "backend": jax.default_backend(),
                          "cpu_count": os.cpu_count()},
              "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
