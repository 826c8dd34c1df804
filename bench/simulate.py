"""Benchmark of the dynamic simulator: user-steps per second of the jitted rollout against a
per-user NumPy loop of the same model (the way RecSim and RecoGym step).

    python bench/simulate.py [--out bench/results/simulate.json] [--only CASE ...]
                             [--users 10000 --steps 100 --items 1000 --dim 32 --slate 10]
                             [--loop-users 300] [--gpu-config]

The standard world (`causalrec_jax.sim.env`): 10,000 users x 100 steps, 1,000 items, latent
dimension 32, slates of K = 10 drawn by Plackett–Luce from a softmax over the whole catalogue
(`softmax_policy` of the world's model scores `user_factors @ item_factors.T`, temperature 1).

Cases, each in its own process so that its peak memory (max RSS) is its own:
- `jax_rollout`: `rollout_users(key, slate_policy, policy, world, steps, users)` under
  `jax.jit`, returning the whole `Trajectory` (slates, clicks, organic items, propensities):
  compile seconds (first call minus steady; lowering and compiling timed alone beside it),
  steady seconds (the fastest of `--repeats` calls, the median beside it),
  user-steps/s and achieved FLOP/s.
- `numpy_loop`: the same structural equations (env.step) as a Python loop over users and steps
  with numpy's `default_rng`: `rng.choice(n_items, K, replace=False, p=softmax)` for the slate,
  the utility matvec, organic choice by inverse CDF with a "none" weight 1, examination and
  click Bernoullis, taste drift and satiation. It runs the first `--loop-users` users for all
  steps; its rate is extrapolated to the full world (the JSON says so).
- `gpu_config` (with `--gpu-config`): the configuration meant to reach >= 1e8 user-steps/s on
  one GPU (1,000,000 users x 100 steps in blocks of 100,000 users); measured only when
  `jax.devices()[0].platform == "gpu"`, otherwise recorded as not measured.

When both `jax_rollout` and `numpy_loop` run in one invocation, `comparison` holds the speed-up
and a statistical check that the two implementations agree on the same users: mean clicks per
step and organic rate per step (paired over users, with their standard errors). A partial run
(`--only`) updates its cases, keeps the others' last results and keeps the last comparison,
marked stale.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "simulate.json"
CASES = ("jax_rollout", "numpy_loop", "gpu_config")
DEFAULT_CASES = ("jax_rollout", "numpy_loop")
GPU_USERS, GPU_STEPS, GPU_BLOCK_USERS = 1_000_000, 100, 100_000
GPU_TARGET_USER_STEPS_PER_SECOND = 1e8
FLOP_FORMULA = (
    "2*n_items*latent_dim (utility matvec item_factors @ effective taste) "
    "+ 6*n_items (divide by temperature, add quality_effect*quality, organic offset, cap, "
    "exp, sum) + 2*slate*latent_dim (sum of consumed factors) + 8*latent_dim (effective "
    "taste, drift, satiation); the policy's inverse-CDF searches (comparisons) and the "
    "per-slot sigmoids are not counted"
)
N_WINDOWS = 10


def flops_per_user_step(n_items: int, latent_dim: int, slate: int) -> int:
    """Dominant floating-point operations of one user-step (see `FLOP_FORMULA`)."""
    return 2 * n_items * latent_dim + 6 * n_items + 2 * slate * latent_dim + 8 * latent_dim


def make_world(users: int, steps: int, items: int, dim: int, slate: int, seed: int):
    """The world `EnvParams` and its softmax (Plackett–Luce) `SlatePolicy` over model scores."""
    import jax

    from causalrec_jax.sim.env import EnvSizes, make_env_params
    from causalrec_jax.sim.policies import softmax_policy

    sizes = EnvSizes(n_users=users, n_items=items, latent_dim=dim, slate_size=slate,
                     horizon=steps)
    world = make_env_params(jax.random.key(seed), sizes)
    scores = world.user_factors @ world.item_factors.T
    policy = softmax_policy(scores, slate, temperature=1.0)
    return world, policy


def make_jax_rollout(steps: int):
    """`rollout(key, policy, world, users) -> Trajectory` jitted (leaves `[n_users, T, ...]`)."""
    import jax

    from causalrec_jax.sim.policies import slate_policy
    from causalrec_jax.sim.rollout import rollout_users

    def run(key, policy, world, users):
        return rollout_users(key, slate_policy, policy, world, steps, users)

    return jax.jit(run)


def trajectory_stats(clicks_per_step: np.ndarray, organic_per_step: np.ndarray) -> dict:
    """Per-user means `[n]` and step curves from `[n, T]` clicks counts and organic flags."""
    return {
        "user_clicks": clicks_per_step.mean(axis=1),
        "user_organic": organic_per_step.mean(axis=1),
        "clicks_curve": clicks_per_step.mean(axis=0),
        "organic_curve": organic_per_step.mean(axis=0),
    }


def jax_stats(trajectory, users: int) -> dict:
    """`trajectory_stats` of the first `users` rows of a JAX `Trajectory`."""
    clicks = np.asarray(trajectory.reward[:users], np.float64)
    organic = np.asarray(trajectory.info["organic_item"][:users] >= 0, np.float64)
    return trajectory_stats(clicks, organic)


def numpy_world(world) -> dict:
    """The world's arrays and numbers as float64 numpy (what the loop reads)."""
    fields = ("user_factors", "item_factors", "item_quality", "examination", "quality_effect",
              "temperature", "click_offset", "organic_offset", "drift", "satiation_decay",
              "satiation_strength")
    arrays = {name: np.asarray(getattr(world, name), np.float64) for name in fields}
    arrays["available"] = np.asarray(world.available, bool)
    return arrays


def numpy_loop(world: dict, users: int, steps: int, slate: int, seed: int,
               policy_temperature: float = 1.0) -> dict:
    """The structural equations of `env.step`, one user and one step at a time (numpy).

    Args:
        world: `numpy_world` arrays.
        users: the first `users` users of the world are simulated.
        steps: steps per user.
        slate: K.
        seed: `np.random.default_rng` seed.
        policy_temperature: temperature of the softmax over model scores.

    Returns:
        `[users, steps]` arrays `clicks` (count) and `organic` (1 when something was consumed
        organically).
    """
    rng = np.random.default_rng(seed)
    factors, quality, available = world["item_factors"], world["item_quality"], world["available"]
    examination = world["examination"]
    n_items, latent_dim = factors.shape
    temperature, quality_effect = float(world["temperature"]), float(world["quality_effect"])
    click_offset, organic_offset = float(world["click_offset"]), float(world["organic_offset"])
    drift, decay = float(world["drift"]), float(world["satiation_decay"])
    strength = float(world["satiation_strength"])
    base = quality_effect * quality
    clicks_out = np.zeros((users, steps))
    organic_out = np.zeros((users, steps))
    for user in range(users):
        taste = world["user_factors"][user].copy()
        satiation = np.zeros(latent_dim)
        logits = factors @ taste / policy_temperature  # the model's scores of this user
        logits = np.where(available, logits, -np.inf)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        for t in range(steps):
            chosen = rng.choice(n_items, slate, replace=False, p=probabilities)
            values = factors @ (taste - strength * satiation) / temperature + base
            weights = np.where(available, np.exp(np.minimum(values + organic_offset, 60.0)), 0.0)
            cumulative = np.cumsum(weights)
            target = rng.random() * (cumulative[-1] + 1.0)  # the "none" option has weight 1
            organic = int(np.searchsorted(cumulative, target, side="right"))
            organic = organic if organic < n_items else -1
            examined = rng.random(slate) < examination
            attraction = available[chosen] / (1.0 + np.exp(-(values[chosen] + click_offset)))
            clicks = examined & (rng.random(slate) < attraction)
            organic_extra = organic >= 0 and not np.any(clicks & (chosen == organic))
            consumed = clicks.astype(np.float64) @ factors[chosen]
            if organic_extra:
                consumed = consumed + factors[organic]
            n_consumed = clicks.sum() + organic_extra
            if n_consumed > 0:
                taste = taste + drift * (consumed / n_consumed - taste)
            satiation = decay * satiation + consumed
            clicks_out[user, t] = clicks.sum()
            organic_out[user, t] = organic >= 0
    return {"clicks": clicks_out, "organic": organic_out}


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _summary(stats: dict) -> dict:
    """JSON-sized summary of `trajectory_stats`: means, standard errors, windowed curves."""
    n = len(stats["user_clicks"])
    windows = np.array_split(np.arange(len(stats["clicks_curve"])),
                             min(N_WINDOWS, len(stats["clicks_curve"])))

    def se(values):
        return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")

    return {
        "n_users": n,
        "mean_clicks_per_step": round(float(np.mean(stats["user_clicks"])), 5),
        "mean_clicks_per_step_se": round(se(stats["user_clicks"]), 5),
        "organic_rate_per_step": round(float(np.mean(stats["user_organic"])), 5),
        "organic_rate_per_step_se": round(se(stats["user_organic"]), 5),
        "clicks_per_step_by_window": [round(float(stats["clicks_curve"][w].mean()), 4)
                                      for w in windows],
        "organic_rate_by_window": [round(float(stats["organic_curve"][w].mean()), 4)
                                   for w in windows],
    }


def case_jax_rollout(args) -> dict:
    """Compile and steady seconds of the jitted rollout of the whole world."""
    import jax
    import jax.numpy as jnp

    tic = time.perf_counter()
    world, policy = make_world(args.users, args.steps, args.items, args.dim, args.slate,
                               args.seed)
    jax.block_until_ready(policy)
    setup = time.perf_counter() - tic
    rollout = make_jax_rollout(args.steps)
    key, users = jax.random.key(args.seed + 1), jnp.arange(args.users, dtype=jnp.int32)
    # The first call = lowering and compiling (timed apart) + its first execution.
    tic = time.perf_counter()
    compiled = rollout.lower(key, policy, world, users).compile()
    compile_only = time.perf_counter() - tic
    trajectory = jax.block_until_ready(compiled(key, policy, world, users))
    first = time.perf_counter() - tic
    seconds = []
    for _ in range(args.repeats):
        del trajectory
        tic = time.perf_counter()
        trajectory = jax.block_until_ready(compiled(key, policy, world, users))
        seconds.append(time.perf_counter() - tic)
    # The fastest repeat is the steady time least disturbed by other load on the machine.
    steady = float(np.min(seconds))
    user_steps = args.users * args.steps
    flops = flops_per_user_step(args.items, args.dim, args.slate)
    subset = min(args.loop_users, args.users)
    return {
        "users": args.users, "steps": args.steps, "user_steps": user_steps,
        "world_and_policy_seconds": round(setup, 4),
        "first_call_seconds": round(first, 4),
        "compile_seconds": round(first - steady, 4),
        "lower_and_compile_seconds": round(compile_only, 4),
        "steady_seconds": round(steady, 4),
        "steady_seconds_median": round(float(np.median(seconds)), 4),
        "steady_seconds_all": [round(s, 4) for s in seconds],
        "user_steps_per_second": round(user_steps / steady, 1),
        "flop_per_second": float(f"{user_steps * flops / steady:.4g}"),
        "returns": "the whole Trajectory (slates, clicks, organic items, log propensities)",
        "all_users": _summary(jax_stats(trajectory, args.users)),
        "loop_subset": _summary(jax_stats(trajectory, subset)),
        "_per_user": {name: value.tolist() for name, value in jax_stats(trajectory, subset)
                      .items() if name.startswith("user_")},
    }


def case_numpy_loop(args) -> dict:
    """The per-user numpy loop on the first `--loop-users` users; rate extrapolated."""
    world, _ = make_world(args.users, args.steps, args.items, args.dim, args.slate, args.seed)
    arrays = numpy_world(world)
    users = min(args.loop_users, args.users)
    tic = time.perf_counter()
    out = numpy_loop(arrays, users, args.steps, args.slate, args.seed)
    seconds = time.perf_counter() - tic
    rate = users * args.steps / seconds
    flops = flops_per_user_step(args.items, args.dim, args.slate)
    stats = trajectory_stats(out["clicks"], out["organic"])
    return {
        "users": users, "steps": args.steps, "user_steps": users * args.steps,
        "seconds": round(seconds, 4),
        "user_steps_per_second": round(rate, 1),
        "flop_per_second": float(f"{rate * flops:.4g}"),
        "extrapolated": users < args.users,
        "extrapolated_seconds_for_world": round(args.users * args.steps / rate, 2),
        "note": (f"measured on the first {users} of {args.users} users x {args.steps} steps; "
                 "the rate is per user-step, so the full world's time is extrapolated "
                 "linearly (users are independent)"),
        "loop_subset": _summary(stats),
        "_per_user": {name: value.tolist() for name, value in stats.items()
                      if name.startswith("user_")},
    }


def gpu_plan(args) -> dict:
    """The configuration intended to reach >= 1e8 user-steps/s on one GPU."""
    return {
        "users": GPU_USERS, "steps": GPU_STEPS, "items": args.items, "dim": args.dim,
        "slate": args.slate, "block_users": GPU_BLOCK_USERS,
        "target_user_steps_per_second": GPU_TARGET_USER_STEPS_PER_SECOND,
        "how": ("one jitted rollout_users over blocks of block_users users (the same compiled "
                "program for every block; a user's rows do not depend on its block); each "
                "block's Trajectory stays on the device and is reduced there; timed from the "
                "second block's dispatch after a compile call on the first block"),
        "command": "python bench/simulate.py --only gpu_config --gpu-config",
    }


def case_gpu_config(args) -> dict:
    """Runs `gpu_plan` when the first device is a GPU; otherwise records it unmeasured."""
    import jax
    import jax.numpy as jnp

    plan = gpu_plan(args)
    device = jax.devices()[0]
    if device.platform != "gpu":
        return {**plan, "measured": False,
                "reason": f"no GPU here: jax.devices()[0].platform == {device.platform!r}"}
    tic = time.perf_counter()
    world, policy = make_world(GPU_USERS, GPU_STEPS, args.items, args.dim, args.slate,
                               args.seed)
    jax.block_until_ready(policy)
    setup = time.perf_counter() - tic
    rollout = make_jax_rollout(GPU_STEPS)

    @jax.jit
    def block_totals(key, policy, world, users):
        trajectory = rollout(key, policy, world, users)
        organic = jnp.sum(trajectory.info["organic_item"] >= 0)
        return jnp.sum(trajectory.reward), organic, jnp.sum(trajectory.log_prob)

    key = jax.random.key(args.seed + 1)
    blocks = [jnp.arange(start, start + GPU_BLOCK_USERS, dtype=jnp.int32)
              for start in range(0, GPU_USERS, GPU_BLOCK_USERS)]
    tic = time.perf_counter()
    jax.block_until_ready(block_totals(key, policy, world, blocks[0]))
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    totals = [block_totals(key, policy, world, users) for users in blocks]
    totals = jax.block_until_ready(totals)
    steady = time.perf_counter() - tic
    user_steps = GPU_USERS * GPU_STEPS
    rate = user_steps / steady
    flops = flops_per_user_step(args.items, args.dim, args.slate)
    return {
        **plan, "measured": True, "device": str(device),
        "world_and_policy_seconds": round(setup, 4),
        "first_block_seconds": round(first, 4),
        "compile_seconds": round(first - steady * GPU_BLOCK_USERS / GPU_USERS, 4),
        "steady_seconds": round(steady, 4),
        "user_steps_per_second": round(rate, 1),
        "flop_per_second": float(f"{rate * flops:.4g}"),
        "reaches_target": rate >= GPU_TARGET_USER_STEPS_PER_SECOND,
        "mean_clicks_per_step": round(float(sum(t[0] for t in totals)) / user_steps, 5),
        "organic_rate_per_step": round(float(sum(t[1] for t in totals)) / user_steps, 5),
    }


CASE_FUNCTIONS = {"jax_rollout": case_jax_rollout, "numpy_loop": case_numpy_loop,
                  "gpu_config": case_gpu_config}


def run_case(name: str, args) -> dict:
    """Runs one case in this process; adds its peak memory and when it ran."""
    result = CASE_FUNCTIONS[name](args)
    result["peak_rss_mb"] = _peak_rss_mb()
    # Other processes on the machine slow a timing down: the 1-minute load average shows them.
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    result["timestamp"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return result


def _agreement(jax_result: dict, loop_result: dict, tolerance: float) -> dict:
    """Paired comparison over the users both ran: relative difference, standard error, z."""
    out = {"users": loop_result["users"], "steps": loop_result["steps"],
           "relative_tolerance": tolerance}
    for name, key in (("mean_clicks_per_step", "user_clicks"),
                      ("organic_rate_per_step", "user_organic")):
        jax_values = np.asarray(jax_result["_per_user"][key])
        loop_values = np.asarray(loop_result["_per_user"][key])
        difference = jax_values - loop_values
        n = len(difference)
        se = float(np.std(difference, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        jax_mean, loop_mean = float(jax_values.mean()), float(loop_values.mean())
        relative = (jax_mean - loop_mean) / loop_mean if loop_mean else float("nan")
        z = float(difference.mean() / se) if se > 0 else float("nan")
        out[name] = {"jax": round(jax_mean, 5), "numpy_loop": round(loop_mean, 5),
                     "relative_difference": round(relative, 5),
                     "paired_se": round(se, 5), "z": round(z, 3),
                     "within_tolerance": abs(relative) <= tolerance,
                     "within_4_se": abs(z) <= 4.0}
    # Agreement: within the relative tolerance, and no difference beyond sampling noise.
    out["agree"] = all(out[name]["within_tolerance"] and out[name]["within_4_se"]
                       for name in ("mean_clicks_per_step", "organic_rate_per_step"))
    return out


def compare(results: dict, tolerance: float) -> dict:
    """Speed-up of the jitted rollout over the numpy loop and their statistical agreement."""
    jax_result, loop_result = results["jax_rollout"], results["numpy_loop"]
    return {
        "speedup_jax_over_numpy_loop": round(
            jax_result["user_steps_per_second"] / loop_result["user_steps_per_second"], 1),
        "jax_user_steps_per_second": jax_result["user_steps_per_second"],
        "numpy_loop_user_steps_per_second": loop_result["user_steps_per_second"],
        "numpy_loop_extrapolated": loop_result["extrapolated"],
        "agreement": _agreement(jax_result, loop_result, tolerance),
        "from_timestamps": [jax_result["timestamp"], loop_result["timestamp"]],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--case", choices=CASES, help="run one case in this process (internal)")
    parser.add_argument("--only", nargs="*", choices=CASES, help="run only these cases")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--slate", type=int, default=10)
    parser.add_argument("--loop-users", type=int, default=300,
                        help="users of the numpy loop (its rate is extrapolated)")
    parser.add_argument("--repeats", type=int, default=3, help="steady calls of the JAX rollout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="relative tolerance of the JAX / numpy agreement")
    parser.add_argument("--gpu-config", action="store_true",
                        help="also record (and on a GPU, run) the >= 1e8 user-steps/s config")
    return parser


def _case_argv(args, name: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--case", name,
            "--users", str(args.users), "--steps", str(args.steps), "--items", str(args.items),
            "--dim", str(args.dim), "--slate", str(args.slate),
            "--loop-users", str(args.loop_users), "--repeats", str(args.repeats),
            "--seed", str(args.seed)]


def main(argv: list[str] | None = None) -> dict:
    """Runs each case in a subprocess and writes `--out` (bench/results/simulate.json)."""
    args = build_parser().parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return {}
    config = {"users": args.users, "steps": args.steps, "items": args.items, "dim": args.dim,
              "slate": args.slate, "loop_users": min(args.loop_users, args.users),
              "repeats": args.repeats, "seed": args.seed,
              "policy": ("softmax_policy(user_factors @ item_factors.T, slate, temperature=1.0):"
                         " Plackett–Luce slates over the whole catalogue"),
              "flops_per_user_step": flops_per_user_step(args.items, args.dim, args.slate),
              "flop_formula": FLOP_FORMULA}
    names = list(args.only or DEFAULT_CASES)
    if args.gpu_config and "gpu_config" not in names:
        names.append("gpu_config")
    if args.gpu_config:
        print("gpu config", json.dumps(gpu_plan(args)), flush=True)
    results = {}
    for name in names:
        tic = time.perf_counter()
        done = subprocess.run(_case_argv(args, name), capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            results[name] = {"error": done.stderr.strip().splitlines()[-1:],
                             "wall_seconds": round(time.perf_counter() - tic, 3)}
        else:
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        shown = {key: value for key, value in results[name].items() if key != "_per_user"}
        print(name, json.dumps(shown), flush=True)

    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    if {"jax_rollout", "numpy_loop"} <= {name for name in results if "error" not in
                                         results[name]}:
        comparison = compare(results, args.tolerance)
        print("comparison", json.dumps(comparison), flush=True)
    elif "comparison" in previous:
        # A partial run keeps the last comparison, which no longer matches every case.
        comparison = {**previous["comparison"], "stale": True}
    else:
        comparison = {"skipped": "jax_rollout and numpy_loop did not both run"}
    for result in results.values():
        result.pop("_per_user", None)
    if args.only and "results" in previous:
        results = {**previous["results"], **results}
    import jax

    report = {"machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                          "jax": jax.__version__, "backend": jax.default_backend(),
                          "cpu_count": os.cpu_count()},
              "config": config,
              "results": results,
              "comparison": comparison}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
