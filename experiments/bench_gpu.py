"""The accelerator benchmark: the library's main workloads at a size a GPU is for, as JSON.

    python experiments/bench_gpu.py [--size full|small] [--only NAME ...] [--dtype float32|bfloat16]
                                    [--out FILE]

`--size full` (the default) is meant for one GPU and about 5 minutes; `--size small` runs the
same code at a size a 2-core CPU finishes in seconds (`tests/experiments/test_bench_gpu.py`).
Every workload runs through the library's own code, reports its compile time apart from its
steady time (the fastest of `--repeats` calls), and:

- `scoring`: full-ranking top-K of a 10^6-item catalogue for a block of users
  (`eval.catalogue.chunked_top_k`): scores per second and achieved FLOP/s (2 * users * items *
  dim per call; compare with the device's matmul peak); `--dtype bfloat16` scores in bf16.
- `simulator`: rollouts of 10^6 users (`sim.rollout.rollout_users`, a softmax slate policy):
  user-steps per second and FLOP/s (`bench/simulate.py`'s count of the dominant operations).
- `mf_seeds`: BPR-MF epochs on a simulated world of 10^6 x 10^5 (ordinary runs,
  `tasks.ordinary.train_split`): one seed against 8 seeds vmapped in one program; the target
  is 8 seeds in at most 2.5x the time of one.
- `population`: the same epochs for a tuning population of 16 learning rates in one program
  against one member (the target: at most 1/4 of 16 separate runs, i.e. <= 4x one member).
- `dr_jl`: DR-JL (two models, uniform cells) epochs on a Yahoo! R3-sized world (15,400 x 1,000).

Peak device memory is the device's `peak_bytes_in_use` where it reports one (GPUs), else the
process's peak RSS. The JSON names the device; figures from a CPU are not GPU figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

WORKLOADS = ("scoring", "simulator", "mf_seeds", "population", "dr_jl")

# (full, small) sizes of each workload.
SIZES = {
    "scoring": {"full": dict(users=4096, items=1_000_000, dim=64, k=100, chunk=131072),
                "small": dict(users=64, items=20_000, dim=16, k=10, chunk=4096)},
    "simulator": {"full": dict(users=1_000_000, items=1_000, dim=32, slate=10, steps=20),
                  "small": dict(users=2_000, items=200, dim=8, slate=5, steps=5)},
    "mf": {"full": dict(users=1_000_000, items=100_000, exposure=2e-5, batch=65536, epochs=2),
           "small": dict(users=500, items=200, exposure=0.05, batch=256, epochs=2)},
    "dr_jl": {"full": dict(users=15_400, items=1_000, exposure=0.02, batch=8192, epochs=3),
              "small": dict(users=400, items=100, exposure=0.1, batch=256, epochs=2)},
}


def _device() -> dict:
    import jax

    device = jax.devices()[0]
    return {"platform": device.platform, "kind": device.device_kind,
            "count": jax.device_count(), "jax": jax.__version__,
            "host": platform.platform(), "python": platform.python_version()}


def _peak_memory() -> dict:
    import jax

    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if stats and "peak_bytes_in_use" in stats:
        return {"peak_device_bytes": int(stats["peak_bytes_in_use"])}
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"peak_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)}


def _time(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, fastest steady seconds) of `fn()` (which blocks on its result)."""
    tic = time.perf_counter()
    fn()
    first = time.perf_counter() - tic
    steady = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        steady.append(time.perf_counter() - tic)
    return first, min(steady)


def scoring(size: str, repeats: int, dtype: str) -> dict:
    import jax
    import jax.numpy as jnp

    from causalrec_jax.eval.catalogue import chunked_top_k

    s = SIZES["scoring"][size]
    key = jax.random.key(0)
    kind = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    queries = jax.random.normal(key, (s["users"], s["dim"]), kind)
    table = jax.random.normal(jax.random.fold_in(key, 1), (s["items"], s["dim"]), kind)
    first, steady = _time(lambda: jax.block_until_ready(
        chunked_top_k(queries, table, s["k"], chunk_size=s["chunk"])), repeats)
    flops = 2.0 * s["users"] * s["items"] * s["dim"]
    return {**s, "dtype": dtype, "first_call_seconds": round(first, 4),
            "compile_seconds": round(first - steady, 4), "steady_seconds": round(steady, 5),
            "scores_per_second": float(f"{s['users'] * s['items'] / steady:.4g}"),
            "flop_per_second": float(f"{flops / steady:.4g}")}


def simulator(size: str, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from causalrec_jax.sim.env import EnvSizes, make_env_params
    from causalrec_jax.sim.policies import slate_policy, softmax_policy
    from causalrec_jax.sim.rollout import rollout_users

    s = SIZES["simulator"][size]
    world = make_env_params(jax.random.key(0), EnvSizes(
        n_users=s["users"], n_items=s["items"], latent_dim=s["dim"], slate_size=s["slate"],
        horizon=s["steps"]))
    policy = softmax_policy(world.user_factors @ world.item_factors.T, s["slate"],
                            temperature=1.0)
    users = jnp.arange(s["users"], dtype=jnp.int32)
    run = jax.jit(lambda key: rollout_users(key, slate_policy, policy, world, s["steps"],
                                            users))
    first, steady = _time(lambda: jax.block_until_ready(run(jax.random.key(1))), repeats)
    user_steps = s["users"] * s["steps"]
    flops = (2 * s["items"] * s["dim"] + 6 * s["items"] + 2 * s["slate"] * s["dim"]
             + 8 * s["dim"])
    return {**s, "first_call_seconds": round(first, 4),
            "compile_seconds": round(first - steady, 4), "steady_seconds": round(steady, 5),
            "user_steps_per_second": float(f"{user_steps / steady:.4g}"),
            "flop_per_second": float(f"{user_steps * flops / steady:.4g}")}


def _epochs(sections: dict, members=None) -> dict:
    """An ordinary run's epochs, no validation: compile (first epoch) and steady epoch."""
    import jax

    from causalrec_jax.config import config_from_dict
    from causalrec_jax.data.dataset import Split
    from causalrec_jax.data.loader import load_split
    from causalrec_jax.tasks import ordinary

    config = config_from_dict(sections)
    split, truth = load_split(config.data, config.sim, seed=config.run.seed)
    tic = time.perf_counter()
    trained = ordinary.train_split(config, Split(train=split.train, valid=None,
                                                 test=split.test),
                                   members=members, evaluate_test=False, truth=truth)
    jax.block_until_ready(trained.parts.params)
    return {"rows": len(split.train), "wall_seconds": round(time.perf_counter() - tic, 3),
            "first_epoch_seconds": trained.timing["first_epoch_seconds"],
            "epoch_seconds": trained.timing["epoch_seconds"]}


def _mf_sections(size: str, seeds: int, loss: str = "bpr", method: str = "naive",
                 key: str = "mf") -> dict:
    s = SIZES[key][size]
    sections = {
        "data": {"format": "simulator", "split": "random"},
        "sim": {"n_users": s["users"], "n_items": s["items"], "mean_exposure": s["exposure"]},
        "model": {"name": "mf", "embedding_dim": 64 if size == "full" else 8},
        "train": {"loss": loss, "epochs": s["epochs"], "batch_size": s["batch"],
                  "seeds": seeds, "learning_rate": 0.01},
        "causal": {"method": method},
        "run": {"quiet": True},
    }
    if method != "naive":
        sections["causal"]["propensity"] = "true"
    return sections


def mf_seeds(size: str) -> dict:
    one = _epochs(_mf_sections(size, 1))
    eight = _epochs(_mf_sections(size, 8))
    return {"one_seed": one, "eight_seeds": eight,
            "eight_over_one": round(eight["epoch_seconds"] / one["epoch_seconds"], 3),
            "target": "<= 2.5"}


def population(size: str) -> dict:
    from causalrec_jax.tasks.ordinary import Member

    members = [Member(seed=0, hparams={"learning_rate": 10 ** (-3 + 2 * i / 15)})
               for i in range(16)]
    one = _epochs(_mf_sections(size, 1), members=members[:1])
    sixteen = _epochs(_mf_sections(size, 1), members=members)
    ratio = sixteen["epoch_seconds"] / (16 * one["epoch_seconds"])
    return {"one_member": one, "sixteen_members": sixteen,
            "population_over_separate": round(ratio, 3), "target": "<= 0.25"}


def dr_jl(size: str) -> dict:
    return _epochs(_mf_sections(size, 5, loss="mse", method="dr_jl", key="dr_jl"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "small"), default="full")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the scoring workload's dtype")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="also write the JSON here (a new file)")
    args = parser.parse_args(argv)
    if args.out and Path(args.out).exists():
        parser.error(f"--out {args.out} exists; give a new file")
    report = {"size": args.size, "device": _device(), "workloads": {}}
    runners = {"scoring": lambda: scoring(args.size, args.repeats, args.dtype),
               "simulator": lambda: simulator(args.size, args.repeats),
               "mf_seeds": lambda: mf_seeds(args.size),
               "population": lambda: population(args.size),
               "dr_jl": lambda: dr_jl(args.size)}
    for name in args.only:
        report["workloads"][name] = runners[name]()
    report["memory"] = _peak_memory()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
