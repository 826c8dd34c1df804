"""Benchmark of scoring a 1,000,000-item catalogue in chunks: time and peak memory against the
dense `[batch, n_items]` score matrix.

    python bench/catalogue.py [--out bench/results/catalogue.json]
                              [--items 1000000 --dim 64 --k 10 --chunk 65536 --seen 100]
                              [--batches 256 1024] [--dense-batches 256 1024] [--repeats 5]

A float32 item table of `--items x --dim` (1M x 64 = 256 MB) and a batch of users; each user
has `--seen` item ids to exclude (their training items). Cases, each run for each batch size in
its own process so that its peak memory (max RSS) is its own:
- `chunked_top_k`: `causalrec_jax.eval.catalogue.chunked_top_k` (lax.scan over chunks of
  `--chunk` items, one matmul and a running top-K per chunk, exclusions scattered per chunk).
- `chunked_target_rank`: `chunked_target_rank` of one target per user (pessimistic ties), the
  input of full-ranking hit/ndcg/mrr.
- `dense_top_k`: the reference `lax.top_k((queries @ table.T).at[user, seen].set(-inf), k)`,
  which forms the whole `[batch, n_items]` score matrix (`--dense-batches` only).

Each case reports compile seconds (lowering + compiling, timed alone), the first call and the
steady call (median and fastest of `--repeats`, `block_until_ready`), users/s and items scored/s,
XLA's temporary buffer size for the program (`compiled.memory_analysis()`), and resident
memory: the process's peak (`peak_rss_mb`), its high-water marks after building the table and
after compiling (`ru_maxrss`), and the peak *while scoring* alone (`VmHWM` after resetting it
through `/proc/self/clear_refs` once compiled; Linux only) with its rise over the resident size
before the calls. The analytic sizes: chunk scores `batch * chunk * 4` bytes against the dense
scores `batch * n_items * 4` bytes.
`comparison` checks that chunked and dense top-K agree (same items, scores within float
rounding) and puts their memory side by side.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "catalogue.json"
CASES = ("chunked_top_k", "chunked_target_rank", "dense_top_k")
MB = 2**20
TABLE_BLOCK_ROWS = 16_384


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _status_mb(field: str) -> float | None:
    """`VmRSS` (resident now) or `VmHWM` (resident peak) of this process, in MB (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Resets this process's resident high-water mark (Linux `clear_refs` 5); False if not."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_mb("VmHWM") is not None


def _random_table(key, items: int, dim: int):
    """`[items, dim]` standard normal float32, written block by block into one buffer.

    `jax.random.normal` of the whole table at once holds its random bits and intermediates
    beside it (a 1.2 GB peak for a 256 MB table), which would hide the scoring's own peak.
    """
    import jax
    import jax.numpy as jnp

    rows = min(TABLE_BLOCK_ROWS, items)
    n_blocks = -(-items // rows)

    @jax.jit
    def build(key):
        def write(index, table):
            block = jax.random.normal(jax.random.fold_in(key, index), (rows, dim), jnp.float32)
            # The last block's start is clamped by dynamic_update_slice: it overlaps the one
            # before, which only redraws those rows.
            return jax.lax.dynamic_update_slice_in_dim(table, block, index * rows, axis=0)

        return jax.lax.fori_loop(0, n_blocks, write, jnp.zeros((items, dim), jnp.float32))

    return build(key)


def make_inputs(items: int, dim: int, batch: int, seen: int, seed: int):
    """(queries [batch, dim], table [items, dim], exclude [batch, seen], targets [batch]).

    The table is drawn block by block in place (see `_random_table`); queries, exclusions
    and targets depend on (seed, batch) only, so every case of one batch size sees the same
    users.
    """
    import jax
    import jax.numpy as jnp

    table = _random_table(jax.random.key(seed), items, dim)
    key = jax.random.fold_in(jax.random.key(seed + 1), batch)
    query_key, seen_key, target_key = jax.random.split(key, 3)
    queries = jax.random.normal(query_key, (batch, dim), jnp.float32) / np.sqrt(dim)
    exclude = jax.random.randint(seen_key, (batch, seen), 0, items, jnp.int32)
    # Targets are drawn among the items not excluded (a test positive is never a seen item).
    targets = jax.random.randint(target_key, (batch,), 0, items, jnp.int32)
    exclude = jnp.where(exclude == targets[:, None], -1, exclude)
    return jax.block_until_ready((queries, table, exclude, targets))


def make_program(case: str, k: int, chunk: int):
    """The jitted function of one case: `(queries, table, exclude, targets) -> outputs`."""
    import jax
    import jax.numpy as jnp

    from causalrec_jax.eval.catalogue import chunked_target_rank, chunked_top_k

    if case == "chunked_top_k":
        def program(queries, table, exclude, targets):
            return chunked_top_k(queries, table, k, chunk_size=chunk, exclude=exclude)
    elif case == "chunked_target_rank":
        def program(queries, table, exclude, targets):
            return chunked_target_rank(queries, table, targets, chunk_size=chunk,
                                       exclude=exclude)
    elif case == "dense_top_k":
        def program(queries, table, exclude, targets):
            scores = queries @ table.T
            rows = jnp.arange(queries.shape[0])[:, None]
            # -1 padding lands out of bounds and is dropped, as in the chunked version.
            scores = scores.at[rows, jnp.where(exclude >= 0, exclude, table.shape[0])].set(
                -jnp.inf, mode="drop")
            return jax.lax.top_k(scores, k)
    else:
        raise ValueError(f"unknown case {case!r}")
    return jax.jit(program)


def run_case(case: str, batch: int, args) -> dict:
    """Runs one case at one batch size in this process; returns its timings and memory."""
    import jax

    load_start = round(os.getloadavg()[0], 2)
    tic = time.perf_counter()
    inputs = make_inputs(args.items, args.dim, batch, args.seen, args.seed)
    setup_seconds = time.perf_counter() - tic
    peak_setup = _peak_rss_mb()

    program = make_program(case, args.k, args.chunk)
    tic = time.perf_counter()
    compiled = program.lower(*inputs).compile()
    compile_seconds = time.perf_counter() - tic
    memory = compiled.memory_analysis()
    peak_before_scoring = _peak_rss_mb()
    # Reset the high-water mark so that the scoring calls' own peak can be read apart from
    # the table's construction and the compiler's.
    scoring_peak_known = _reset_peak_rss()
    rss_before_scoring = _status_mb("VmRSS")
    tic = time.perf_counter()
    out = jax.block_until_ready(compiled(*inputs))
    first = time.perf_counter() - tic
    times = []
    for _ in range(args.repeats):
        tic = time.perf_counter()
        out = jax.block_until_ready(compiled(*inputs))
        times.append(time.perf_counter() - tic)
    steady = float(np.median(times))
    peak_scoring = _status_mb("VmHWM") if scoring_peak_known else None
    peak = max(peak_before_scoring, _peak_rss_mb(), peak_scoring or 0.0)
    result = {
        "case": case, "batch": batch,
        "setup_seconds": round(setup_seconds, 3),
        "compile_seconds": round(compile_seconds, 3),
        "first_call_seconds": round(first, 4),
        "steady_seconds": round(steady, 4),
        "steady_seconds_min": round(min(times), 4),
        "repeats": args.repeats,
        "users_per_second": round(batch / steady, 1),
        "items_scored_per_second": float(f"{batch * args.items / steady:.4g}"),
        "xla_temp_mb": None if memory is None else round(memory.temp_size_in_bytes / MB, 1),
        "peak_rss_mb": peak,
        "peak_rss_setup_mb": peak_setup,
        "peak_rss_compile_mb": peak_before_scoring,
        "rss_before_scoring_mb": rss_before_scoring,
        "peak_rss_scoring_mb": peak_scoring,
        "scoring_rss_increase_mb": (None if peak_scoring is None
                                    else round(peak_scoring - rss_before_scoring, 1)),
        "load_average_1min_at_start": load_start,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if case.endswith("top_k"):
        result["_scores"] = np.asarray(out[0]).tolist()
        result["_items"] = np.asarray(out[1]).tolist()
    else:
        ranks = np.asarray(out)
        result["mean_rank"] = round(float(ranks.mean()), 1)
    return result


def compare(results: dict, batches: list[int]) -> dict:
    """Chunked against dense top-K at each batch size both ran: agreement and memory."""
    out = {}
    for batch in batches:
        chunked = results.get(f"chunked_top_k_b{batch}", {})
        dense = results.get(f"dense_top_k_b{batch}", {})
        if "_items" not in chunked or "_items" not in dense:
            continue
        items_c, items_d = np.asarray(chunked["_items"]), np.asarray(dense["_items"])
        scores_c, scores_d = np.asarray(chunked["_scores"]), np.asarray(dense["_scores"])
        out[f"b{batch}"] = {
            "items_equal": bool(np.array_equal(items_c, items_d)),
            "items_equal_fraction": round(float(np.mean(items_c == items_d)), 6),
            "max_abs_score_difference": float(np.max(np.abs(scores_c - scores_d))),
            "peak_rss_mb": {"chunked": chunked["peak_rss_mb"], "dense": dense["peak_rss_mb"]},
            "peak_rss_scoring_mb": {"chunked": chunked["peak_rss_scoring_mb"],
                                    "dense": dense["peak_rss_scoring_mb"]},
            "scoring_rss_increase_mb": {"chunked": chunked["scoring_rss_increase_mb"],
                                        "dense": dense["scoring_rss_increase_mb"]},
            "xla_temp_mb": {"chunked": chunked["xla_temp_mb"], "dense": dense["xla_temp_mb"]},
            "steady_seconds": {"chunked": chunked["steady_seconds"],
                               "dense": dense["steady_seconds"]},
            "dense_over_chunked_peak_rss": round(dense["peak_rss_mb"] / chunked["peak_rss_mb"],
                                                 2),
        }
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--case", choices=CASES, help="run one case in this process (internal)")
    parser.add_argument("--batch", type=int, help="batch size of --case (internal)")
    parser.add_argument("--only", nargs="*", choices=CASES, help="run only these cases")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=65_536)
    parser.add_argument("--seen", type=int, default=100, help="excluded items per user")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--dense-batches", type=int, nargs="*", default=[256, 1024],
                        help="batch sizes of the dense reference (it needs batch*items*4 B)")
    parser.add_argument("--repeats", type=int, default=5, help="steady calls per case")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _case_argv(args, case: str, batch: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--case", case, "--batch", str(batch),
            "--items", str(args.items), "--dim", str(args.dim), "--k", str(args.k),
            "--chunk", str(args.chunk), "--seen", str(args.seen),
            "--repeats", str(args.repeats), "--seed", str(args.seed)]


def main(argv: list[str] | None = None) -> dict:
    """Runs each (case, batch) in a subprocess and writes `--out` (bench/results/catalogue.json)."""
    args = build_parser().parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.batch, args)))
        return {}
    # Other jobs on the machine slow the timings down: the load average shows them.
    load_start = round(os.getloadavg()[0], 2)
    chunk = min(args.chunk, args.items)
    config = {
        "items": args.items, "dim": args.dim, "k": args.k, "chunk": chunk, "seen": args.seen,
        "batches": args.batches, "dense_batches": args.dense_batches,
        "repeats": args.repeats, "seed": args.seed, "dtype": "float32",
        "table_mb": round(args.items * args.dim * 4 / MB, 1),
        "chunk_scores_mb": {f"b{b}": round(b * chunk * 4 / MB, 1) for b in args.batches},
        "dense_scores_mb": {f"b{b}": round(b * args.items * 4 / MB, 1)
                            for b in sorted(set(args.batches) | set(args.dense_batches))},
        "memory_formula": ("chunked temporaries O(batch * chunk * 4 B) (scores of one chunk; "
                           "XLA adds the exclusion mask and top_k buffers of the same order); "
                           "dense scores batch * items * 4 B"),
    }
    runs = []
    for case in args.only or CASES:
        for batch in (args.dense_batches if case == "dense_top_k" else args.batches):
            runs.append((case, batch))
    results = {}
    for case, batch in runs:
        name = f"{case}_b{batch}"
        tic = time.perf_counter()
        done = subprocess.run(_case_argv(args, case, batch), capture_output=True, text=True,
                              cwd=ROOT)
        if done.returncode != 0:
            results[name] = {"error": done.stderr.strip().splitlines()[-3:],
                             "returncode": done.returncode,
                             "wall_seconds": round(time.perf_counter() - tic, 3)}
        else:
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        shown = {key: value for key, value in results[name].items() if not key.startswith("_")}
        print(name, json.dumps(shown), flush=True)
    comparison = compare(results, sorted(set(args.batches) & set(args.dense_batches)))
    print("comparison", json.dumps(comparison), flush=True)
    for result in results.values():
        result.pop("_items", None)
        result.pop("_scores", None)
    import jax

    report = {"machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                          "jax": jax.__version__, "backend": jax.default_backend(),
                          "cpu_count": os.cpu_count(),
                          "load_average_1min_at_start": load_start,
                          "load_average_1min_at_end": round(os.getloadavg()[0], 2)},
              "config": config, "results": results, "comparison": comparison}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
