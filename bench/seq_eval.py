"""Benchmark of a sequential run's per-epoch validation: the dense full ranking against the
target-rank path with users encoded once by length bucket, on a catalogue and users of the
Amazon Toys release's size.

    python bench/seq_eval.py [--out bench/results/seq_eval.json] [--users 19412]
                             [--items 11924] [--max-len 50] [--dim 64] [--repeats 3]

Data: each user has 5 + Geometric(1/4.6) - 1 training items (mean about 8.6, as Toys after
5-core filtering; a few reach `--max-len`) drawn uniformly, and one validation item. Model: a
one-layer SASRec of `--dim` with random parameters (its numbers are not the point; the same
parameters go through every path). One validation, as `causalrec train` runs it every epoch,
yields the masked and the unmasked (RecBole's protocol) numbers:
- `dense`: `evaluate_full_ranking` on `[chunk, n_items]` scores of `max_len` histories, once
  per mask (the path before this release);
- `target_rank`: `evaluate_chunked` with both masks from one encoding of every user, histories
  grouped by `model.length_buckets` (the default 8, 16, ..., max_len), items in chunks of
  `target_rank_item_chunk()` (4,096 on a CPU);
- `target_rank_one_item_chunk`: the same with the whole catalogue in one item chunk.
Each path runs once to compile, then `--repeats` times; the median and fastest seconds are
written, with whether every path gives the dense numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from causalrec_jax.data.dataset import from_arrays  # noqa: E402
from causalrec_jax.data.sequences import history_matrix, user_sequences  # noqa: E402
from causalrec_jax.eval.ranking import evaluate_full_ranking  # noqa: E402
from causalrec_jax.models.sasrec import SASRec  # noqa: E402
from causalrec_jax.tasks.sequential import (  # noqa: E402
    evaluate_chunked,
    make_scorer,
    target_rank_item_chunk,
)

METRICS, KS, CHUNK = ("hit", "ndcg", "recall"), (10, 20), 256
BUCKETS = (8, 16, 32, 64, 128, 256)


def _data(n_users: int, n_items: int, max_len: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = np.minimum(4 + rng.geometric(1 / 4.6, n_users), max_len + 20)
    users = np.repeat(np.arange(n_users), lengths + 1)
    items = rng.integers(0, n_items, len(users))
    times = np.concatenate([np.arange(n + 1) for n in lengths]).astype(np.float64)
    whole = from_arrays(users.astype(str), items.astype(str), None, times)
    last = np.r_[np.flatnonzero(np.diff(whole.user)), len(whole.user) - 1]
    valid = np.zeros(len(whole.user), bool)
    valid[last] = True
    return whole.subset(np.flatnonzero(~valid)), whole.subset(np.flatnonzero(valid))


def _timed(fn, repeats: int) -> tuple[dict, dict]:
    tic = time.perf_counter()
    result = fn()
    first = time.perf_counter() - tic
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return result, {"first_call_seconds": round(first, 3),
                    "median_seconds": round(float(np.median(times)), 3),
                    "fastest_seconds": round(min(times), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/seq_eval.json")
    parser.add_argument("--users", type=int, default=19412)
    parser.add_argument("--items", type=int, default=11924)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    train, valid = _data(args.users, args.items, args.max_len)
    model = SASRec(train.n_items, args.max_len, key=jax.random.key(0), hidden_dim=args.dim,
                   n_layers=1, n_heads=1, dropout_rate=0.0)
    graphdef, params = nnx.split(model, nnx.Param)
    scorer = make_scorer(graphdef, params)
    history = history_matrix(user_sequences(train), args.max_len)
    device_history = jnp.asarray(history)

    def dense():
        return [evaluate_full_ranking(
            lambda users: scorer.score(device_history[users]), train, valid, ks=KS,
            metrics=METRICS, chunk_size=CHUNK, mask_train=mask) for mask in (True, False)]

    def target_rank(item_chunk):
        return lambda: evaluate_chunked(
            scorer.query, history, train, valid, ks=KS, metrics=METRICS, chunk_size=CHUNK,
            item_chunk=item_chunk, masks=(True, False), buckets=BUCKETS)

    dense_numbers, dense_time = _timed(dense, args.repeats)
    ours_numbers, ours_time = _timed(
        target_rank(min(target_rank_item_chunk(), train.n_items)), args.repeats)
    one_chunk_numbers, one_chunk_time = _timed(target_rank(train.n_items), args.repeats)
    same = all(abs(ours[name] - reference[name]) < 1e-9
               for numbers in (ours_numbers, one_chunk_numbers)
               for ours, reference in zip(numbers, dense_numbers, strict=True)
               for name in ours)
    lengths = (history != 0).sum(axis=1)
    result = {
        "bench": "seq_eval",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "device": str(jax.devices()[0]), "load_average": os.getloadavg()},
        "config": {**vars(args), "chunk_size": CHUNK, "buckets": BUCKETS,
                   "mean_history": round(float(lengths.mean()), 2)},
        "dense": dense_time,
        "target_rank": ours_time,
        "target_rank_one_item_chunk": one_chunk_time,
        "speedup_median": round(dense_time["median_seconds"] / ours_time["median_seconds"], 2),
        "one_chunk_over_chunked": round(
            one_chunk_time["median_seconds"] / ours_time["median_seconds"], 2),
        "same_numbers": bool(same),
        "valid_ndcg@10_masked": ours_numbers[0]["ndcg@10"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
