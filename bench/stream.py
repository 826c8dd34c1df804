"""Benchmark of a log beyond memory: a simulated log written as partitioned Parquet, its id
maps and statistics streamed, and one epoch of BPR-MF trained on it streamed, with the peak
resident memory of each stage.

    python bench/stream.py [--rows 100000000] [--users 1000000] [--items 100000]
                           [--batch 65536] [--window-batches 16] [--dim 32]
                           [--rows-per-file 5000000] [--row-group 131072]
                           [--folder DIR] [--out bench/results/stream.json]

The log: users uniform over `--users` ids (external ids spread over a large range, so the id
maps matter), items drawn with popularity falling as rank^-0.8 over `--items` ids (shuffled),
Hive partitions of 4 files (`day=K/part-NNNNN.parquet`, `--rows-per-file` rows per file in
row groups of `--row-group`), written file by file. Each stage runs in its own process, which
reports its peak resident memory (`ru_maxrss`):

- `write`: the log written (seconds, bytes);
- `ids`: `causalrec data --write-ids` as a user runs it (one streamed pass to build the id
  maps, stored beside the data, then a second for the statistics);
- `train`: one epoch of BPR-MF (Adam, `--dim`, one negative per row) through
  `parallel.streamed.make_stream_epoch`, `--batch` rows a step, windows of
  `--window-batches` batches; compilation is timed apart, on a one-row-group log of the same
  shapes; `rows_per_second` is the epoch's rows over its seconds after compilation.

The model's state (embeddings and Adam's two moments, `(users + items) x dim x 12` bytes) is
the part of the memory that grows with the catalogue; what the streaming holds (one window,
one row group, the id maps) does not grow with the number of rows. `--rows 10000000` beside
the default shows that: same peak, ten times the rows.
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
DEFAULT_OUT = ROOT / "bench" / "results" / "stream.json"
FILES_PER_DAY = 4


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _stage_write(args) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    weights = np.arange(1, args.items + 1, dtype=np.float64) ** -0.8
    cumulative = np.cumsum(weights / weights.sum())
    item_ids = rng.permutation(args.items).astype(np.int64) * 7 + 100
    user_ids = np.sort(rng.choice(10**12, size=args.users, replace=False)).astype(np.int64)
    folder = Path(args.folder)
    start = time.perf_counter()
    for index, first in enumerate(range(0, args.rows, args.rows_per_file)):
        n = min(args.rows_per_file, args.rows - first)
        users = user_ids[rng.integers(0, args.users, n)]
        items = item_ids[np.minimum(np.searchsorted(cumulative, rng.random(n)), args.items - 1)]
        day = folder / f"day={index // FILES_PER_DAY:03d}"
        day.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"user_id": users, "item_id": items}),
                       day / f"part-{index:05d}.parquet", row_group_size=args.row_group)
    (folder / "_SUCCESS").write_text("")
    size = sum(path.stat().st_size for path in folder.rglob("*.parquet"))
    return {"seconds": time.perf_counter() - start, "bytes": size, "peak_rss_mb": _peak_mb()}


def _stage_ids(args) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "causalrec_jax", "data", "--format", "parquet",
                           "--path", args.folder, "--write-ids", "--json"],
                          capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    stats = json.loads(done.stdout)
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": child,
            "statistics": {key: stats[key] for key in
                           ("n_users", "n_items", "n_interactions", "density", "user_counts",
                            "item_counts", "partitioned")}}


def _stage_train(args) -> dict:
    import jax
    import jax.numpy as jnp
    import pyarrow.parquet as pq

    from causalrec_jax.config import ModelConfig, TrainConfig
    from causalrec_jax.data.partitioned import open_log
    from causalrec_jax.models.base import make_scorers
    from causalrec_jax.models.factory import init_params
    from causalrec_jax.parallel import streamed
    from causalrec_jax.train.loop import seed_slice
    from causalrec_jax.train.objectives import make_objective
    from causalrec_jax.train.step import init_state, make_optimizer, make_train_step

    source = streamed.open_source(args.folder)
    n_users, n_items = source.maps.n_users, source.maps.n_items
    parts = init_params(ModelConfig(name="mf", embedding_dim=args.dim), n_users=n_users,
                        n_items=n_items, keys=jnp.stack([jax.random.key(0)]))
    scorers = make_scorers(parts.graphdef, parts.constants)
    loss_fn = make_objective("bpr", scorers.score_pairs, scorers.score_all, n_items=n_items)
    optimizer = make_optimizer(TrainConfig(learning_rate=1e-3))
    state = init_state(seed_slice(parts.params, 0), optimizer)
    step = make_train_step(loss_fn, optimizer)
    run_epoch = streamed.make_stream_epoch(step, batch_size=args.batch,
                                           window_batches=args.window_batches)
    key = jax.random.key(0)
    # Compilation, on a log of one row group with the same shapes (same program).
    warm = Path(tempfile.mkdtemp(prefix="warm-"))
    first = source.log.units[0]
    table = pq.ParquetFile(source.log.folder / first.file).read_row_group(0)
    pq.write_table(table.slice(0, 1000), warm / "part.parquet")
    warm_log = open_log(warm)
    warm_source = streamed.StreamSource(warm_log, source.maps, (warm_log.units,))
    start = time.perf_counter()
    state, _ = run_epoch(state, warm_source, key, 0)
    jax.block_until_ready(state)
    compile_seconds = time.perf_counter() - start
    shutil.rmtree(warm)
    start = time.perf_counter()
    state, metrics = run_epoch(state, source, key, 0)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    state_mb = sum(leaf.nbytes for leaf in jax.tree.leaves((state.params, state.opt_state)))
    return {"epoch_seconds": seconds, "compile_seconds_with_one_window": compile_seconds,
            "rows": metrics["rows"], "rows_per_second": metrics["rows"] / seconds,
            "steps": int(state.step) - 1, "loss": metrics["loss"],
            "windows": metrics["windows"], "window_rows": metrics["window_rows"],
            "state_mb": state_mb / 2**20, "peak_rss_mb": _peak_mb(),
            "n_users": n_users, "n_items": n_items}


STAGES = {"write": _stage_write, "ids": _stage_ids, "train": _stage_train}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--window-batches", type=int, default=16)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--rows-per-file", type=int, default=5_000_000)
    parser.add_argument("--row-group", type=int, default=131_072)
    parser.add_argument("--folder", help="where the log is written (default: a temporary "
                                         "folder, removed at the end)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:  # one stage, in its own process
        report = STAGES[args.stage](args)
        print(json.dumps(report))
        return report
    temporary = args.folder is None
    folder = Path(args.folder or tempfile.mkdtemp(prefix="stream-log-")) / "log"
    if folder.exists():
        raise SystemExit(f"{folder} exists; give a new --folder")
    report = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "settings": {key: getattr(args, key) for key in
                           ("rows", "users", "items", "batch", "window_batches", "dim",
                            "rows_per_file", "row_group")}}
    try:
        for stage in ("write", "ids", "train"):
            command = [sys.executable, __file__, "--stage", stage, "--folder", str(folder)]
            for key, value in report["settings"].items():
                command += [f"--{key.replace('_', '-')}", str(value)]
            done = subprocess.run(command, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            if done.returncode:
                raise SystemExit(f"stage {stage} failed:\n{done.stderr[-3000:]}")
            report[stage] = json.loads(done.stdout.strip().splitlines()[-1])
            print(stage, json.dumps(report[stage]), flush=True)
    finally:
        if temporary:
            shutil.rmtree(folder.parent, ignore_errors=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
