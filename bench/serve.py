"""Benchmark of serving every user of a run (`causalrec recommend --all`) against one
`causalrec recommend --user` process per user.

    python bench/serve.py [--data ../shared/data/ml-100k] [--k 100] [--repeats 3]
                          [--sample 50] [--run NAME=FOLDER ...] [--no-cli]
                          [--out bench/results/serve.json]

Without `--run`, two small ml-100k runs are trained first in a temporary folder (serving costs
the same whatever the model learned): BPR-MF (`configs/ml100k_mf.toml`, 2 epochs) and SASRec
(`configs/ml100k_sasrec.toml`, 1 epoch, no sampled test). For each run, in a fresh process:
- `load_seconds`: `load_run`;
- `first_call_seconds`: the first `recommend_all` of every user (k = `--k`, every split's
  items excluded, seed 0), which compiles the run's scoring and the top-K programs;
- `steady_seconds`: the median of `--repeats` further calls (programs cached), and the
  fastest; `compile_seconds_estimate` is first minus steady; `users_per_second`;
- `recommend_seconds_per_user`: the in-process `recommend` of `--sample` users (median), for
  comparison, and `identical_to_recommend`: their lists equal the file's, item for item and
  score for score;
- `peak_rss_mb`: the process's resident peak.
Unless `--no-cli`, the wall time of the commands as a user runs them (process start, imports,
loading the run included): `causalrec recommend --all --k K --out F` once, and `causalrec
recommend --user U --k K` once, extrapolated to one process per user (`one_process_per_user_
seconds_estimate`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "serve.json"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"
TRAIN = {
    "bpr_mf": ("ml100k_mf.toml", ["train.epochs=2"]),
    "sasrec": ("ml100k_sasrec.toml", ["train.epochs=1", "eval.sampled_negatives=0"]),
}


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "causalrec_jax", *args]


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def train_runs(data: Path, folder: Path) -> dict[str, Path]:
    """Trains the small runs of `TRAIN` on `data` into `folder`; returns their folders."""
    runs = {}
    for name, (config, overrides) in TRAIN.items():
        out = folder / name
        sets = [item for value in [f'data.path="{data}"', *overrides]
                for item in ("--set", value)]
        tic = time.perf_counter()
        subprocess.run(_command("train", "--config", str(ROOT / "configs" / config), "--quiet",
                                *sets, "--out", str(out)),
                       check=True, cwd=ROOT, env=_environment(), capture_output=True)
        print(f"trained {name} in {time.perf_counter() - tic:.1f} s", flush=True)
        runs[name] = out
    return runs


def measure(folder: Path, k: int, repeats: int, sample: int) -> dict:
    """Times `recommend_all` on the run `folder` in this process (see the module docstring)."""
    import jax
    import pandas as pd

    from causalrec_jax.runs.load import load_run
    from causalrec_jax.runs.serve import recommend, recommend_all

    scratch = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    try:
        tic = time.perf_counter()
        run = load_run(folder)
        load_seconds = time.perf_counter() - tic
        first = recommend_all(run, k, out=scratch / "first.parquet")
        steady = []
        for index in range(repeats):
            steady.append(recommend_all(run, k, out=scratch / f"steady{index}.parquet"))
        times = [summary.seconds for summary in steady]
        frame = pd.read_parquet(scratch / "first.parquet")
        users = [str(user) for user in run.user_ids[:: max(1, len(run.user_ids) // sample)]]
        users = users[:sample]
        per_user, identical = [], True
        for user in users:
            tic = time.perf_counter()
            top = recommend(run, user, k)
            per_user.append(time.perf_counter() - tic)
            rows = frame[frame["user"] == user]
            identical &= (rows["item"].tolist() == [item for item, _ in top]
                          and rows["score"].tolist() == [np.float32(s) for _, s in top])
        steady_seconds = float(np.median(times))
        return {
            "model": run.config.model.name, "users": first.users, "rows": first.rows,
            "n_items": len(run.item_ids), "k": k, "chunk_users": first.chunk_users,
            "chunks": first.chunks, "skipped_users": first.skipped_users,
            "load_seconds": round(load_seconds, 3),
            "first_call_seconds": round(first.seconds, 3),
            "steady_seconds": round(steady_seconds, 4),
            "steady_seconds_min": round(min(times), 4),
            "repeats": repeats,
            "compile_seconds_estimate": round(first.seconds - steady_seconds, 3),
            "users_per_second": round(first.users / steady_seconds, 1),
            "recommend_seconds_per_user": round(float(np.median(per_user)), 4),
            "recommend_sample_users": len(users),
            "identical_to_recommend": bool(identical),
            "file_mb": round((scratch / "first.parquet").stat().st_size / 2**20, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "backend": jax.default_backend(),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def time_commands(folder: Path, k: int, users: int) -> dict:
    """Wall time of `recommend --all` and of one `recommend --user` process."""
    from causalrec_jax.runs.load import load_run

    user = str(load_run(folder).user_ids[0])
    scratch = Path(tempfile.mkdtemp(prefix="serve-cli-"))
    try:
        tic = time.perf_counter()
        subprocess.run(_command("recommend", "--run", str(folder), "--all", "--k", str(k),
                                "--out", str(scratch / "recs.parquet")),
                       check=True, cwd=ROOT, env=_environment(), capture_output=True)
        all_seconds = time.perf_counter() - tic
        tic = time.perf_counter()
        subprocess.run(_command("recommend", "--run", str(folder), "--user", user, "--k",
                                str(k)),
                       check=True, cwd=ROOT, env=_environment(), capture_output=True)
        one_seconds = time.perf_counter() - tic
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"recommend_all_process_seconds": round(all_seconds, 2),
            "recommend_user_process_seconds": round(one_seconds, 2),
            "one_process_per_user_seconds_estimate": round(one_seconds * users, 1),
            "speedup_over_one_process_per_user": round(one_seconds * users / all_seconds, 1)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the ml-100k folder")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=FOLDER",
                        help="bench this run folder instead of training the small runs")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="steady calls per run")
    parser.add_argument("--sample", type=int, default=50,
                        help="users whose single recommend is timed and compared")
    parser.add_argument("--no-cli", action="store_true", help="skip the command timings")
    parser.add_argument("--measure", help="measure this run folder in this process (internal)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Measures each run in a fresh process and writes `--out` (bench/results/serve.json)."""
    args = build_parser().parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.k, args.repeats, args.sample)))
        return {}
    load_start = round(os.getloadavg()[0], 2)
    trained = None
    if args.run:
        runs = {name: Path(folder) for name, folder in
                (entry.split("=", 1) for entry in args.run)}
    else:
        trained = Path(tempfile.mkdtemp(prefix="serve-runs-"))
        runs = train_runs(Path(args.data).resolve(), trained)
    results = {}
    try:
        for name, folder in runs.items():
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--measure", str(folder),
                 "--k", str(args.k), "--repeats", str(args.repeats), "--sample",
                 str(args.sample)], capture_output=True, text=True, cwd=ROOT,
                env=_environment())
            if done.returncode != 0:
                results[name] = {"error": done.stderr.strip().splitlines()[-3:]}
            else:
                results[name] = json.loads(done.stdout.strip().splitlines()[-1])
                if not args.no_cli:
                    results[name].update(time_commands(folder, args.k, results[name]["users"]))
            print(name, json.dumps(results[name]), flush=True)
    finally:
        if trained is not None:
            shutil.rmtree(trained, ignore_errors=True)
    import jax

    report = {
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                    "jax": jax.__version__, "backend": jax.default_backend(),
                    "devices": [str(device) for device in jax.devices()],
                    "cpu_count": os.cpu_count(), "load_average_1min_at_start": load_start,
                    "load_average_1min_at_end": round(os.getloadavg()[0], 2),
                    "timestamp": datetime.datetime.now(datetime.UTC).isoformat(
                        timespec="seconds")},
        "config": {"k": args.k, "repeats": args.repeats, "sample": args.sample,
                   "runs": {name: str(folder) for name, folder in runs.items()}
                   if args.run else {name: {"config": config, "set": overrides}
                                     for name, (config, overrides) in TRAIN.items()},
                   "protocol": "every user of the run, seed 0, every item of the user's "
                               "training, validation and test pairs excluded"},
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
