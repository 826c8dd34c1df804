"""Benchmark of compile-once: the same run twice in one process.

    python bench/compile_once.py [--out bench/results/compile_once.json]

A run's programs are cached by their static signature (`ordinary.ProgramSpec`), so the second of
two identical `train_split` calls in one process (a CV fold, a tuning chunk, a test) compiles
nothing. The case trains `configs/ml100k_mf.toml` (BPR-MF, 1,682 items) for a fixed number of
epochs, twice, and reports each call's wall time and the number of XLA compilations during
each (JAX's monitoring events). It uses only `ordinary.train_split(config, split)`, so the same
script measures an older checkout (`PYTHONPATH=/path/to/old/checkout python
bench/compile_once.py`) for a before/after comparison on one machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "compile_once.json"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--data", default=str(ML100K))
    args = parser.parse_args(argv)

    import jax

    from causalrec_jax.config import load_config
    from causalrec_jax.data.loader import load_dataset
    from causalrec_jax.data.split import make_split
    from causalrec_jax.tasks import ordinary

    config = load_config(ROOT / "configs" / "ml100k_mf.toml", [
        f"data.path={json.dumps(args.data)}", f"train.epochs={args.epochs}",
        "train.seeds=1", "train.patience=1000"])
    dataset, truth = load_dataset(config.data, config.sim)
    split = make_split(dataset, config.data, seed=config.run.seed)
    compiles = {"count": 0, "seconds": 0.0}

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == COMPILE_EVENT:
            compiles["count"] += 1
            compiles["seconds"] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    calls = []
    for _ in range(2):
        compiles.update(count=0, seconds=0.0)
        tic = time.perf_counter()
        trained = ordinary.train_split(config, split, truth=truth)
        calls.append({"seconds": round(time.perf_counter() - tic, 3),
                      "compilations": compiles["count"],
                      "compile_seconds": round(compiles["seconds"], 3),
                      "test_ndcg@10": trained.per_seed[0]["test"]["ndcg@10"]})
    report = {
        "case": f"configs/ml100k_mf.toml, {args.epochs} epochs, 1 seed, train_split twice",
        "first_call": calls[0], "second_call": calls[1],
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]},
        "package": ordinary.__file__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
