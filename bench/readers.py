"""Benchmark of the delimited-text readers: ml-100k and a few million synthetic rows.

    make bench            (or: python bench/readers.py [--rows 3000000] [--out FILE])

Times `read_dataset` (the public entry point, no cleaning) on:
- ml-100k as released to us (RecBole atomic files, with the `.user` / `.item` side files);
- ml-100k written as MovieLens `u.data` (tab-separated `user item rating timestamp`);
- `--rows` synthetic interactions (integer ids, ratings 1..5, Unix timestamps) written as a
  csv with a header, a RecBole `.inter` file and a MovieLens `u.data` file;
- the same number of rows with string ids (`u123`), as a csv.

Each entry holds the first call and the median of later calls (seconds) and the rows per
second of the steady state. Results go to `bench/results/readers.json` and a table on stdout.
The files are written to a temporary folder, never next to the shared data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from causalrec_jax.data.dataset import Dataset
from causalrec_jax.data.formats import read_dataset

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def timed(read_fn: Callable[[], Dataset], n_rows: int, repeats: int) -> dict:
    """First-call seconds, the median of `repeats` later calls and steady rows per second.

    Also the interactions the reader returned (`interactions`, to check against `rows`).
    """
    start = time.perf_counter()
    dataset = read_fn()
    first = time.perf_counter() - start
    later = []
    for _ in range(repeats):
        start = time.perf_counter()
        read_fn()
        later.append(time.perf_counter() - start)
    steady = statistics.median(later)
    return {
        "rows": n_rows,
        "interactions": dataset.n_interactions,
        "first_seconds": round(first, 4),
        "steady_seconds": round(steady, 4),
        "rows_per_second": round(n_rows / steady),
    }


def synthetic_frame(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """`n_rows` interactions of 100k users and 50k items, ratings 1..5, Unix timestamps."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user": rng.integers(1, 100_001, n_rows),
            "item": rng.integers(1, 50_001, n_rows),
            "rating": rng.integers(1, 6, n_rows),
            "timestamp": rng.integers(800_000_000, 1_700_000_000, n_rows),
        }
    )


def write_files(folder: Path, n_rows: int) -> dict[str, tuple[str, Path, int]]:
    """Writes every benchmarked file; returns name -> (format, path, rows)."""
    cases: dict[str, tuple[str, Path, int]] = {}
    ml100k = SHARED / "ml-100k"
    if (ml100k / "ml-100k.inter").is_file():
        cases["ml100k_recbole"] = ("recbole", ml100k, 100_000)
        inter = pd.read_csv(ml100k / "ml-100k.inter", sep="\t")
        (folder / "ml100k").mkdir()
        inter.to_csv(folder / "ml100k" / "u.data", sep="\t", header=False, index=False)
        cases["ml100k_u_data"] = ("movielens", folder / "ml100k" / "u.data", len(inter))
    frame = synthetic_frame(n_rows)
    frame.to_csv(folder / "big.csv", index=False)
    cases["synthetic_csv"] = ("csv", folder / "big.csv", n_rows)
    (folder / "big").mkdir()
    frame.to_csv(
        folder / "big" / "big.inter",
        sep="\t",
        index=False,
        header=["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
    )
    cases["synthetic_recbole"] = ("recbole", folder / "big", n_rows)
    (folder / "ml").mkdir()
    frame.to_csv(folder / "ml" / "u.data", sep="\t", header=False, index=False)
    cases["synthetic_u_data"] = ("movielens", folder / "ml" / "u.data", n_rows)
    text_ids = frame.assign(
        user="u" + frame["user"].astype(str), item="i" + frame["item"].astype(str)
    )
    text_ids.to_csv(folder / "text_ids.csv", index=False)
    cases["synthetic_csv_text_ids"] = ("csv", folder / "text_ids.csv", n_rows)
    return cases


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark; returns (and writes) the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "readers.json"))
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        cases = write_files(Path(folder), args.rows)
        for name, (format_name, path, n_rows) in cases.items():
            repeats = args.repeats if n_rows > 200_000 else 5 * args.repeats
            results[name] = timed(lambda f=format_name, p=path: read_dataset(f, p), n_rows, repeats)
            print(f"{name:<26}{results[name]['first_seconds']:>10.3f}"
                  f"{results[name]['steady_seconds']:>10.3f}{results[name]['rows_per_second']:>14,}")
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()},
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
