"""bench/simulate.py runs on a tiny world, and its numpy loop is the simulator's model."""

import importlib.util
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("simulate_bench", ROOT / "bench" / "simulate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # make test-all (see Makefile)
def test_bench_runs_on_a_tiny_world_and_writes_its_json(tmp_path):
    bench = load_bench()
    out = tmp_path / "simulate.json"
    report = bench.main(["--users", "50", "--steps", "5", "--items", "40", "--loop-users", "20",
                         "--repeats", "1", "--gpu-config", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["config"]["flops_per_user_step"] == 2 * 40 * 32 + 6 * 40 + 2 * 10 * 32 + 8 * 32
    assert "2*n_items*latent_dim" in report["config"]["flop_formula"]

    results = report["results"]
    rollout, loop, gpu = results["jax_rollout"], results["numpy_loop"], results["gpu_config"]
    for key in ("first_call_seconds", "steady_seconds", "user_steps_per_second",
                "flop_per_second", "peak_rss_mb"):
        assert rollout[key] > 0, key
    # each figure is rounded on its own, so the difference may be off by a rounding step
    assert abs(rollout["compile_seconds"]
               - (rollout["first_call_seconds"] - rollout["steady_seconds"])) <= 2e-4
    assert rollout["user_steps"] == 50 * 5
    for key in ("seconds", "user_steps_per_second", "flop_per_second", "peak_rss_mb"):
        assert loop[key] > 0, key
    assert loop["users"] == 20 and loop["extrapolated"] is True
    assert "_per_user" not in rollout and "_per_user" not in loop
    if jax.devices()[0].platform == "gpu":
        assert gpu["measured"] and gpu["user_steps_per_second"] > 0
    else:
        assert gpu["measured"] is False and "no GPU" in gpu["reason"]
    assert gpu["users"] * gpu["steps"] >= 1e8 and gpu["block_users"] > 0

    comparison = report["comparison"]
    assert comparison["speedup_jax_over_numpy_loop"] > 0
    agreement = comparison["agreement"]
    assert agreement["users"] == 20
    for name in ("mean_clicks_per_step", "organic_rate_per_step"):
        assert {"jax", "numpy_loop", "relative_difference", "paired_se", "z"} <= set(
            agreement[name])

    # A partial run updates its case, keeps the other and marks the comparison stale.
    partial = bench.main(["--users", "50", "--steps", "5", "--items", "40",
                          "--loop-users", "20", "--only", "numpy_loop", "--out", str(out)])
    assert partial["results"]["jax_rollout"] == rollout
    assert partial["results"]["numpy_loop"]["timestamp"] >= loop["timestamp"]
    assert partial["comparison"]["stale"] is True


def _paired(jax_values: np.ndarray, loop_values: np.ndarray) -> tuple[float, float]:
    """Relative difference of the means and its z score, paired over the same users."""
    difference = jax_values - loop_values
    se = np.std(difference, ddof=1) / math.sqrt(len(difference))
    return (jax_values.mean() - loop_values.mean()) / loop_values.mean(), difference.mean() / se


@pytest.mark.slow  # make test-all (see Makefile)
def test_numpy_loop_and_jax_rollout_agree_statistically():
    bench = load_bench()
    users, steps = 400, 10
    world, policy = bench.make_world(users, steps, 1000, 32, 10, seed=3)
    trajectory = bench.make_jax_rollout(steps)(jax.random.key(4), policy, world,
                                               jnp.arange(users, dtype=jnp.int32))
    jax_stats = bench.jax_stats(trajectory, users)
    loop = bench.numpy_loop(bench.numpy_world(world), users, steps, 10, seed=5)
    loop_stats = bench.trajectory_stats(loop["clicks"], loop["organic"])
    for name in ("user_clicks", "user_organic"):
        relative, z = _paired(jax_stats[name], loop_stats[name])
        assert abs(z) < 4 and abs(relative) < 0.1, (name, relative, z)

    # The check has power: a loop with another click offset is told apart.
    shifted = {**bench.numpy_world(world), "click_offset": np.float64(-0.3)}
    other = bench.numpy_loop(shifted, users, steps, 10, seed=5)
    _, z = _paired(jax_stats["user_clicks"], other["clicks"].mean(axis=1))
    assert z < -4
