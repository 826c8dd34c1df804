"""Benchmark of the foundation: reading real data, building the simulated world, evaluation.

    make bench            (or: python bench/foundation.py [--out bench/results/foundation.json])

Compilation is timed apart from steady state (first call vs the median of later calls).
Results go to a JSON file and a short table on stdout. Machine facts are recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from causalrec_jax.config import DataConfig, SimConfig
from causalrec_jax.data.clean import clean
from causalrec_jax.data.dataset import from_arrays
from causalrec_jax.data.formats import read_dataset
from causalrec_jax.data.split import leave_one_out_split, random_split
from causalrec_jax.eval import evaluate_full_ranking
from causalrec_jax.sim.world import simulate_dataset

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def timed(fn, repeats: int = 3) -> dict:
    """First-call seconds (includes compilation) and the median of `repeats` later calls."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    later = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        later.append(time.perf_counter() - start)
    return {"first_seconds": round(first, 4), "steady_seconds": round(statistics.median(later), 4)}


def bench_readers(results: dict) -> None:
    if (SHARED / "ml-100k").exists():
        results["read_ml100k_recbole"] = timed(lambda: read_dataset("recbole", SHARED / "ml-100k"))
    if (SHARED / "coat").exists():
        results["read_coat"] = timed(lambda: read_dataset("coat", SHARED / "coat"))
    # A file the size of Yahoo! R3's train + test, written in the released layout.
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        for name, n in (("train", 311_704), ("test", 54_000)):
            rows = np.stack([rng.integers(1, 15_401, n), rng.integers(1, 1_001, n),
                             rng.integers(1, 6, n)], axis=1)
            np.savetxt(Path(folder) / f"ydata-ymusic-rating-study-v1_0-{name}.txt", rows,
                       fmt="%d", delimiter="\t")
        results["read_yahoo_r3_sized"] = timed(lambda: read_dataset("yahoo_r3", folder), 2)


def bench_cleaning_and_splits(results: dict) -> None:
    rng = np.random.default_rng(1)
    n = 1_000_000
    dataset = from_arrays(rng.integers(0, 6_040, n), rng.integers(0, 3_706, n),
                          rng.integers(1, 6, n).astype(float), rng.random(n) * 1e9)
    config = DataConfig(k_core_users=5, k_core_items=5)
    results["clean_1m_rows_dedupe_kcore"] = timed(lambda: clean(dataset, config), 2)
    results["random_split_1m_rows"] = timed(lambda: random_split(dataset, seed=0), 2)
    results["leave_one_out_1m_rows"] = timed(lambda: leave_one_out_split(dataset), 2)


def bench_simulator(results: dict) -> None:
    results["simulate_default_world_1000x500"] = timed(lambda: simulate_dataset(SimConfig()))
    big = SimConfig(n_users=10_000, n_items=2_000)
    results["simulate_world_10000x2000"] = timed(lambda: simulate_dataset(big), 2)


def bench_full_ranking(results: dict) -> None:
    for n_users, n_items, chunk in ((943, 1_682, 256), (6_040, 3_706, 512)):
        rng = np.random.default_rng(2)
        n = n_users * 20
        data = from_arrays(rng.integers(0, n_users, n), rng.integers(0, n_items, n),
                           user_ids=np.arange(n_users), item_ids=np.arange(n_items))
        split = random_split(data, (0.8, 0.2), seed=0)
        table = jax.random.normal(jax.random.key(0), (n_users, n_items))
        score = jax.jit(lambda users, table=table: table[users])

        def run(score=score, split=split, chunk=chunk):
            return evaluate_full_ranking(
                score, split.train, split.test, ks=[10, 20],
                metrics=["recall", "ndcg", "hit", "mrr", "map", "precision", "itemcoverage"],
                chunk_size=chunk,
            )

        entry = timed(run)
        entry["users_per_second"] = round(n_users / entry["steady_seconds"])
        results[f"full_ranking_{n_users}x{n_items}_chunk{chunk}"] = entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "foundation.json"))
    args = parser.parse_args()
    results: dict = {}
    for step in (bench_readers, bench_cleaning_and_splits, bench_simulator, bench_full_ranking):
        step(results)
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "jax": jax.__version__, "backend": jax.default_backend()},
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'benchmark':<40}{'first s':>10}{'steady s':>10}")
    for name, entry in results.items():
        print(f"{name:<40}{entry['first_seconds']:>10.3f}{entry['steady_seconds']:>10.3f}"
              + (f"   {entry['users_per_second']} users/s" if "users_per_second" in entry else ""))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
