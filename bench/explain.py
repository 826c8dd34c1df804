"""Benchmark of counterfactual explanations: one recommendation of a user with 200 past items.

    python bench/explain.py [--out bench/results/explain.json] [--history 200] [--repeats 5]
                            [--cases mf_mse mf_bpr lightgcn_bpr mlp_bpr sasrec_50 sasrec_200]

Each case builds a model of MovieLens-100K's size (943 users, 1,682 items, 64 dimensions; the
models of `configs/ml100k_*.toml`) with random parameters (speed does not depend on training),
gives one user a history of `--history` random items, and explains the user's top item with
`causalrec_jax.explain.explain(method="greedy", k=10, max_size=10)`: every single deletion in
one vmapped call, then the greedy search (each step re-scores every remaining deletion). It
reports the time to build the user's deletion model (the full-history re-fit; compiled on the
first call) and, for the re-fitted models, the steady time to build it with the L2 calibrated
as `causalrec explain` does (`calibrated_build_seconds`: the grid of full-history re-fits of
`explain.deletion.calibrate_l2`, then the re-fit), the first `explain` (compilation
included) and the steady one (median and fastest of `--repeats`, after compilation), the
single deletions alone, and the greedy set's size (the number of greedy steps, each `history`
deletion masks). The target of issue 15: under one
second on CPU after compilation. Each case also times the greedy search restricted to the 32
strongest single deletions (`explain(n_candidates=32)`, `--candidates 32`), and says whether it
found the same set.

- `mf_mse`: MF, squared error: the closed-form (ridge) re-fit.
- `mf_bpr`, `lightgcn_bpr` (3 layers, a random graph of about 106 items per user): BPR, whose
  per-user objective sums over history x catalogue pairs (all non-history items are the
  negatives): two chord steps from the full-history fit per deletion mask.
- `mlp_bpr`: the MLP of `configs/ml100k_mlp.toml` (hidden 128, 64), BPR, Gauss-Newton steps.
- `sasrec_50`, `sasrec_200`: SASRec (2 layers, 64 wide) with a window of 50 (the config's) and
  of 200 items: drop and shift, one forward pass per deletion mask.

It also reports how well influence functions (first order) match exact re-fitting, on MF
(convex in the user) and on the MLP (not convex): the correlation and the largest error of the
estimated single-deletion score changes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("mf_mse", "mf_bpr", "lightgcn_bpr", "mlp_bpr", "sasrec_50", "sasrec_200")
N_USERS, N_ITEMS, DIM = 943, 1682, 64
# The restricted greedy also timed: only among this many strongest single deletions.
CANDIDATES = 32


def build(case: str, history: int, calibrate: bool = False):
    """`(deletion model, exclude [n_items] bool)` of one case; `calibrate`: the re-fit L2
    calibrated (`make_refit_model(calibrate=True)`, as `causalrec explain` builds it)."""
    import jax
    import numpy as np
    from flax import nnx

    from causalrec_jax.explain import make_history_model, make_refit_model
    from causalrec_jax.models.lightgcn import LightGCN
    from causalrec_jax.models.mf import MF
    from causalrec_jax.models.mlp import MLP
    from causalrec_jax.models.sasrec import SASRec

    rng = np.random.default_rng(0)
    items = rng.choice(N_ITEMS, history, replace=False)
    counts = rng.integers(0, 500, N_ITEMS)
    key = jax.random.key(0)
    if case.startswith("sasrec"):
        max_len = int(case.split("_")[1])
        model = SASRec(N_ITEMS, max_len, key=key, hidden_dim=DIM, n_layers=2, n_heads=1,
                       dropout_rate=0.0)
        graphdef, params = nnx.split(model, nnx.Param)
        deletion = make_history_model(graphdef, params, items + 1, item_counts=counts)
    else:
        if case.startswith("mf"):
            model = MF(N_USERS, N_ITEMS, embedding_dim=DIM, key=key, init_scale=1.0)
        elif case.startswith("mlp"):
            model = MLP(N_USERS, N_ITEMS, embedding_dim=DIM, hidden_dims=(128, 64), key=key)
        else:
            users = np.repeat(np.arange(1, N_USERS), 106)
            others = rng.integers(0, N_ITEMS, len(users))
            edges = (np.concatenate([np.zeros(history, int), users]),
                     np.concatenate([items, others]))
            model = LightGCN(N_USERS, N_ITEMS, embedding_dim=DIM, n_layers=3,
                             train_edges=edges, key=key, init_scale=1.0)
        loss = case.split("_")[1]
        ratings = rng.integers(1, 6, history).astype(np.float32)
        deletion = make_refit_model(model, user=0, items=items, ratings=ratings, loss=loss,
                                    l2=1.0, item_counts=counts, calibrate=calibrate)
    exclude = np.zeros(N_ITEMS, bool)
    exclude[items] = True
    return deletion, exclude


def run_case(case: str, history: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from causalrec_jax.explain import explain, influence_effects, single_deletions

    tic = time.perf_counter()
    deletion, exclude = build(case, history)
    build_seconds = time.perf_counter() - tic
    scores = deletion.scores()
    target = int(np.argmax(np.where(exclude, -np.inf, scores)))

    def once(n_candidates=None):
        return explain(deletion, target, k=10, method="greedy", max_size=10, exclude=exclude,
                       n_candidates=n_candidates)

    tic = time.perf_counter()
    once()
    first_seconds = time.perf_counter() - tic
    steady = []
    for _ in range(repeats):
        tic = time.perf_counter()
        result = once()
        steady.append(time.perf_counter() - tic)
    once(CANDIDATES)
    pruned = []
    for _ in range(repeats):
        tic = time.perf_counter()
        pruned_result = once(CANDIDATES)
        pruned.append(time.perf_counter() - tic)
    args = (deletion.score_fn, deletion.data, jnp.asarray(deletion.valid),
            jnp.asarray(target), jnp.asarray(exclude))
    jax.block_until_ready(single_deletions(*args, k=10, chunk_size=deletion.chunk_size))
    singles = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(single_deletions(*args, k=10, chunk_size=deletion.chunk_size))
        singles.append(time.perf_counter() - tic)
    out = {
        "history": history, "semantics": deletion.semantics,
        "build_seconds": round(build_seconds, 3), "first_explain_seconds": round(first_seconds, 3),
        "steady_explain_seconds": {"median": round(statistics.median(steady), 4),
                                   "min": round(min(steady), 4)},
        "single_deletions_seconds": {"median": round(statistics.median(singles), 4),
                                     "min": round(min(singles), 4)},
        "greedy_size": result.size, "greedy_found": result.found,
        # the single deletions (H masks) give the greedy's first step; each later step H more
        "greedy_masks_scored": history * max(result.size, 1),
        "under_one_second": statistics.median(steady) < 1.0,
        f"greedy_among_{CANDIDATES}_strongest": {
            "steady_explain_seconds": {"median": round(statistics.median(pruned), 4),
                                       "min": round(min(pruned), 4)},
            "size": pruned_result.size, "found": pruned_result.found,
            "same_set": sorted(pruned_result.minimal_set.tolist())
            == sorted(result.minimal_set.tolist())},
    }
    if not case.startswith("sasrec"):  # the calibrated build, after its compilation
        build(case, history, calibrate=True)
        calibrated = []
        for _ in range(repeats):
            tic = time.perf_counter()
            built, _ = build(case, history, calibrate=True)
            jax.block_until_ready(built.data["theta_start"])
            calibrated.append(time.perf_counter() - tic)
        out["calibrated_build_seconds"] = {"median": round(statistics.median(calibrated), 4),
                                           "min": round(min(calibrated), 4)}
    if deletion.influence_fn is not None and case in ("mf_bpr", "mlp_bpr"):
        exact = result.score_deltas
        estimate = influence_effects(deletion, target)[deletion.valid]
        out["influence_vs_exact"] = {
            "correlation": round(float(np.corrcoef(exact, estimate)[0, 1]), 4),
            "largest_error_over_largest_effect": round(
                float(np.abs(exact - estimate).max() / np.abs(exact).max()), 4)}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "explain.json"))
    parser.add_argument("--history", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    args = parser.parse_args(argv)

    import os

    import jax

    load_before = os.getloadavg()
    results = {}
    for case in args.cases:
        results[case] = run_case(case, args.history, args.repeats)
        print(case, json.dumps({k: v for k, v in results[case].items() if k != "semantics"}),
              flush=True)
    record = {
        "case": f"explain one recommendation (greedy, k=10, max_size=10) of a user with "
                f"{args.history} past items, ML-100K-sized models with random parameters",
        "results": results,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
                    "cpu_count": os.cpu_count(),
                    # other processes share the cores: timings grow with the load
                    "load_average_before_after": [round(load_before[0], 2),
                                                  round(os.getloadavg()[0], 2)]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
