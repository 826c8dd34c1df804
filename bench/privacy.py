"""Benchmark of DP-SGD: the cost of a private step against the ordinary step, side by side.

    make bench            (or: python bench/privacy.py [--out bench/results/privacy.json])

BPR-MF at MovieLens-100K's size (943 users, 1,682 items, 64 dimensions, 4 negatives per
positive, 80,000 training rows drawn at random) on the CPU, in one process, one case after the
other: the ordinary step on batches of 2,048 rows (`train.step.make_train_step`), and the DP
step (`privacy.dpsgd.make_dp_train_step`) at example level with 2,048 rows expected per step
and at user level with 2,048 rows expected per step (about 45 users of up to 64 rows). Each case
runs `--steps` steps as one scanned epoch; compilation (the first call) is timed apart from
the steady state: `--repeats` rounds, each calling every case once in turn, so a slow spell
of the machine falls on all of them alike. A case's `step_seconds` is the median over the
rounds, `fastest_step_seconds` the least-disturbed call; `ratio_to_ordinary` is the median
over the rounds of each round's DP call over its ordinary call (its range beside it), and
`ratio_of_fastest` the ratio of the fastest calls. Issue 18's target: a DP step costs at
most 3x an ordinary one (`met`: by the median ratio). The cases run twice: with jax's own
Threefry lowering on CPUs (the default: `results`) and with the unrolled one
`CAUSALREC_UNROLLED_THREEFRY=1` registers (`causalrec_jax.xla_cpu`: `unrolled_threefry`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax import xla_cpu
from causalrec_jax.config import ModelConfig, TrainConfig
from causalrec_jax.models.base import make_scorers
from causalrec_jax.models.factory import init_params
from causalrec_jax.privacy import dpsgd
from causalrec_jax.train.objectives import make_objective, seen_items_data
from causalrec_jax.train.step import (
    init_state,
    make_optimizer,
    make_train_epoch,
    make_train_step,
)

ROOT = Path(__file__).resolve().parents[1]
N_USERS, N_ITEMS, N_ROWS, DIM, NEGATIVES, BATCH = 943, 1682, 80_000, 64, 4, 2048


def _rows(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # users with ml-100k's skew: a few heavy users, many light ones
    weights = rng.pareto(1.5, N_USERS) + 1
    users = rng.choice(N_USERS, N_ROWS, p=weights / weights.sum()).astype(np.int32)
    items = rng.zipf(1.3, N_ROWS) % N_ITEMS
    return {"users": users, "items": items.astype(np.int32)}


def _first_call(fn, args) -> float:
    tic = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - tic


def _rounds(cases: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each case's call in `repeats` rounds, the cases called in turn within a
    round: a slow spell of the machine (a shared 2-core VM) falls on every case alike, and
    each round's ratios compare calls made within a second of each other."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (fn, args) in cases.items():
            tic = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - tic)
    return times


def run(steps: int, repeats: int) -> dict:
    rows = _rows()
    parts = init_params(ModelConfig(name="mf", embedding_dim=DIM), n_users=N_USERS,
                        n_items=N_ITEMS, keys=jax.random.key(0)[None])
    params = {"prediction": jax.tree.map(lambda leaf: leaf[0], parts.params)}
    optimizer = make_optimizer(TrainConfig(learning_rate=1e-3))
    seen = {k: jnp.asarray(v) for k, v in seen_items_data(rows["users"], rows["items"],
                                                          N_USERS, N_ITEMS).items()}
    key = jax.random.key(1)
    cases, info = {}, {}

    scorers = make_scorers(parts.graphdef, parts.constants)
    objective = make_objective("bpr", scorers.score_pairs, scorers.score_all, n_items=N_ITEMS,
                               n_negatives=NEGATIVES)
    step = make_train_step(lambda p, b, k: objective(p["prediction"], b, k), optimizer)
    n_rows = steps * BATCH
    epoch = jax.jit(make_train_epoch(step, n_rows=n_rows, batch_size=BATCH))
    data = {"users": jnp.asarray(rows["users"][:n_rows]),
            "items": jnp.asarray(rows["items"][:n_rows]), **seen}
    state = init_state(params, optimizer)
    cases["ordinary"] = (epoch, (state, data, key, jnp.int32(0)))
    info["ordinary"] = {"rows_per_step": BATCH}

    for level, per_user in (("example", 1), ("user", 64)):
        n_units = N_ROWS if level == "example" else N_USERS
        units = dpsgd.unit_arrays(rows, N_USERS, level, per_user, jax.random.key(0))
        # as many rows per step as the ordinary step's, on average
        expected = BATCH / (float(units["unit_mask"].sum()) / n_units)
        spec = dpsgd.make_spec(level, clip=1.0, noise_multiplier=1.0, n_units=n_units,
                               expected_batch=expected, examples_per_unit=per_user)
        spec = dpsgd.DPSpec(**{**spec.__dict__, "steps_per_epoch": steps})
        unit_data = {k: jnp.asarray(v) for k, v in units.items()}
        unit_data.update(seen, shared_constants=parts.constants)
        dp_step = dpsgd.make_dp_train_step(parts.graphdef, "bpr", optimizer, spec,
                                           n_users=N_USERS, n_items=N_ITEMS,
                                           n_negatives=NEGATIVES)
        dp_epoch = jax.jit(dpsgd.make_dp_epoch(dp_step, spec))
        cases[f"dp_{level}"] = (dp_epoch, (state, unit_data, key, jnp.int32(0)))
        info[f"dp_{level}"] = {
            "expected_units": round(expected, 1), "capacity": spec.capacity,
            "expected_rows_per_step": round(float(units["unit_mask"].sum())
                                            * spec.sampling_rate, 1)}

    first = {name: _first_call(fn, args) for name, (fn, args) in cases.items()}
    times = _rounds(cases, repeats)
    results = {}
    for name, seconds in times.items():
        results[name] = {
            **info[name], "first_call_seconds": round(first[name], 3),
            "steady_seconds": round(statistics.median(seconds), 4),
            "step_seconds": round(statistics.median(seconds) / steps, 5),
            "fastest_step_seconds": round(min(seconds) / steps, 5)}
        if name != "ordinary":
            per_round = [dp / plain for dp, plain in zip(seconds, times["ordinary"],
                                                         strict=True)]
            results[name].update(
                ratio_to_ordinary=round(statistics.median(per_round), 2),
                ratio_range=[round(min(per_round), 2), round(max(per_round), 2)],
                ratio_of_fastest=round(min(seconds) / min(times["ordinary"]), 2))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "privacy.json"))
    args = parser.parse_args()
    load = os.getloadavg()[0]
    # The same cases with jax's own (rolled) Threefry lowering on CPUs, the default, and side
    # by side with the unrolled one CAUSALREC_UNROLLED_THREEFRY=1 registers (`xla_cpu`).
    xla_cpu.use_unrolled(False)
    jax.clear_caches()
    results = run(args.steps, args.repeats)
    unrolled = None
    if xla_cpu.use_unrolled(True):
        jax.clear_caches()
        unrolled = run(args.steps, args.repeats)
        xla_cpu.use_unrolled(xla_cpu.UNROLLED)
        jax.clear_caches()
    out = {
        "case": f"BPR-MF, {N_USERS} users x {N_ITEMS} items, dim {DIM}, {NEGATIVES} negatives, "
                f"{BATCH} rows per step (expected, for DP), {args.steps} steps per call",
        "results": results,
        "target": "a DP step costs <= 3x an ordinary step (issue 18)",
        "met": all(r["ratio_to_ordinary"] <= 3 for name, r in results.items()
                   if name.startswith("dp_")),
        "unrolled_threefry": unrolled and {
            name: {"step_seconds": r["step_seconds"],
                   "first_call_seconds": r["first_call_seconds"],
                   "ratio_to_ordinary": r.get("ratio_to_ordinary"),
                   "speedup": round(results[name]["step_seconds"] / r["step_seconds"], 2)}
            for name, r in unrolled.items()},
        "machine": {"platform": platform.platform(), "jax": jax.__version__,
                    "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
                    "load_average_before_after": [round(load, 2),
                                                  round(os.getloadavg()[0], 2)]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
