"""Benchmark of `causalrec tune`: 16 configurations as one vmapped population vs 16 runs.

    make bench            (or: python bench/tune.py [--epochs 50] [--out bench/results/tune.json])

MF-BPR on ml-100k (configs/ml100k_mf.toml), 4 learning rates x 4 weight decays
(configs/ml100k_mf_space.toml), one seed each, validation every epoch with early stopping on
mrr@10. The population is `train_split` with 16 members; the sequential side calls the same
`train_split` 16 times with one member each (each compiles its own program, as separate runs
would). Both read the data once; both choose a best configuration, which must agree. A third
run adds successive halving (every 5 epochs keep the better half) to the population.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "tune.json"))
    args = parser.parse_args()
    if not ML100K.exists():
        print(f"skipped: {ML100K} not found")
        return
    import jax

    from causalrec_jax.config import load_config
    from causalrec_jax.data.loader import load_split
    from causalrec_jax.tasks.ordinary import Member, train_split
    from causalrec_jax.tune.space import load_space, make_trials

    config = load_config(ROOT / "configs" / "ml100k_mf.toml",
                         [f'data.path="{ML100K}"', f"train.epochs={args.epochs}"])
    trials = make_trials(load_space(ROOT / "configs" / "ml100k_mf_space.toml"), "grid", None, 0)
    split, _ = load_split(config.data, config.sim, seed=config.run.seed)
    metric = config.train.early_stopping_metric

    def members_of(trial):
        return Member(seed=0, hparams={key.split(".")[1]: value for key, value in trial.items()})

    tic = time.perf_counter()
    population = train_split(config, split, members=[members_of(t) for t in trials],
                             evaluate_test=False)
    population_seconds = time.perf_counter() - tic
    population_valid = [entry["valid"][metric] for entry in population.per_seed]

    tic = time.perf_counter()
    sequential_valid = []
    for trial in trials:
        alone = train_split(config, split, members=[members_of(trial)], evaluate_test=False)
        sequential_valid.append(alone.per_seed[0]["valid"][metric])
    sequential_seconds = time.perf_counter() - tic

    halving_config = load_config(ROOT / "configs" / "ml100k_mf.toml", [
        f'data.path="{ML100K}"', f"train.epochs={args.epochs}", "train.halving_rung=5",
        "train.halving_keep=0.5"])
    tic = time.perf_counter()
    halved = train_split(halving_config, split, members=[members_of(t) for t in trials],
                         evaluate_test=False)
    halving_seconds = time.perf_counter() - tic
    halving_valid = [entry["valid"][metric] for entry in halved.per_seed]
    best_halving = max(range(len(trials)), key=lambda i: halving_valid[i])

    best_population = max(range(len(trials)), key=lambda i: population_valid[i])
    best_sequential = max(range(len(trials)), key=lambda i: sequential_valid[i])
    result = {
        "trials": len(trials),
        "epochs_max": args.epochs,
        "population_seconds": round(population_seconds, 2),
        "population_epoch_seconds": population.timing["epoch_seconds"],
        "population_epochs_run": population.timing["epochs_run"],
        "sequential_seconds": round(sequential_seconds, 2),
        "ratio_population_over_sequential": round(population_seconds / sequential_seconds, 3),
        "same_best": best_population == best_sequential,
        "halving_population_seconds": round(halving_seconds, 2),
        "ratio_halving_over_sequential": round(halving_seconds / sequential_seconds, 3),
        "halving_same_best": best_halving == best_sequential,
        "best": trials[best_population],
        f"best_valid_{metric}": population_valid[best_population],
        "max_abs_valid_difference": max(abs(a - b) for a, b in
                                        zip(population_valid, sequential_valid, strict=True)),
    }
    report = {"machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                          "jax": jax.__version__, "backend": jax.default_backend()},
              "result": result}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
