"""Uplift runs: cell aggregation, unbiased labels on the simulator, the run contract."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax import uplift_run
from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.sim.logs import SimLog, simulate_log

SMALL = ["env.n_users=60", "env.n_items=30", "env.latent_dim=4", "env.slate_size=3",
         "env.horizon=40", "uplift.epochs=60", "train.seeds=2"]


def test_aggregate_cells_counts_by_hand():
    shape = (3, 2)
    log = SimLog(
        user=np.array([0, 0, 1], np.int32), step=np.array([0, 1, 0], np.int32),
        slate=np.array([[1, 2], [2, 0], [3, 1]], np.int32),
        slate_log_prob=np.zeros(3, np.float32), slot_propensity=np.ones(shape, np.float32),
        examined=np.ones(shape, bool), clicks=np.zeros(shape, bool),
        consumed_if_shown=np.array([[True, False], [False, False], [False, True]]),
        consumed_if_not_shown=np.zeros(shape, bool), click_probability=np.zeros(shape),
        organic_item=np.array([3, 2, 0], np.int32), reward=np.zeros(3, np.float32),
        expected_reward=np.zeros(3, np.float32), propensity_exact=True,
    )
    cells = uplift_run.aggregate_cells(log, n_users=2, n_items=4)
    np.testing.assert_array_equal(cells["n1"], [[1, 1, 2, 0], [0, 1, 0, 1]])
    np.testing.assert_array_equal(cells["c1"], [[0, 1, 0, 0], [0, 1, 0, 0]])
    # user 0 consumed item 3 organically (not shown) and item 2 while it was shown (not counted)
    np.testing.assert_array_equal(cells["c0"], [[0, 0, 0, 1], [1, 0, 0, 0]])
    np.testing.assert_array_equal(cells["steps"], [2, 1])


def test_the_uplift_of_an_item_without_effect_is_estimated_near_zero(monkeypatch):
    config = load_config("configs/sim_uplift.toml", SMALL + ["env.n_users=500", "env.horizon=80"])
    from causalrec_jax.sim import logs

    original = logs.env_from_config

    def with_inert_item(env):
        # Item 0 has utility -10 for everyone (never clicked: no effect of showing it) yet a
        # large organic logit through a negative popularity effect: consumed anyway, often.
        sizes, params = original(env)
        return sizes, dataclasses.replace(
            params, item_factors=params.item_factors.at[0].set(0.0),
            item_quality=params.item_quality.at[0].set(-10.0),
            quality_effect=jnp.float32(1.0), organic_quality_effect=jnp.float32(-1.0),
        )

    monkeypatch.setattr(logs, "env_from_config", with_inert_item)
    log, truth = simulate_log(config, jax.random.key(0))
    cells = uplift_run.aggregate_cells(log, 500, 30)
    steps = cells["steps"][:, None]
    p = truth["inclusion_propensity"]
    labels = cells["c1"] / (steps * p) - cells["c0"] / (steps * (1 - p))
    consumption = (cells["c1"] + cells["c0"]) / steps
    assert np.max(np.abs(truth["true_uplift"][:, 0])) < 1e-4
    estimate = labels[:, 0]
    standard_error = estimate.std(ddof=1) / np.sqrt(len(estimate))
    assert abs(estimate.mean()) < 4 * standard_error
    assert abs(estimate.mean()) < 0.02
    assert consumption.mean(axis=0).argmax() == 0  # yet it is the most consumed item
    item_estimates, item_truth = labels.mean(axis=0), truth["true_uplift"].mean(axis=0)
    assert np.corrcoef(item_estimates, item_truth)[0, 1] > 0.8


def test_uplift_run_beats_the_consumption_baseline_and_writes_the_contract(tmp_path):
    results = {}
    for method in ("consumption", "dr"):
        out = tmp_path / method
        status = main(["train", "--config", "configs/sim_uplift.toml", "--quiet", "--out",
                       str(out), *sum((["--set", s] for s in SMALL + [
                           f'uplift.method="{method}"', "env.n_users=200", "env.horizon=60",
                           "env.n_items=100", "env.slate_size=5"]),
                           [])])
        assert status == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert {"cp@10", "cdcg@10"} == set(metrics["test"]) == set(metrics["test_std"])
        assert len(metrics["per_seed"]) == 2 and metrics["seeds"] == [0, 1]
        assert metrics["data"]["ideal"]["cp@10"] >= metrics["test"]["cp@10"]
        assert (out / "config.toml").exists() and (out / "log.jsonl").exists()
        results[method] = metrics["test"]["cp@10"]
    assert results["dr"] > results["consumption"]


def test_uplift_refuses_a_softmax_logging_policy(capsys):
    status = main(["train", "--config", "configs/sim_uplift.toml", "--quiet", "--out",
                   "/tmp/never_written_uplift", *sum((["--set", s] for s in SMALL + [
                       'policy.kind="softmax"', "train.seeds=1"]), [])])
    assert status == 2
    assert "policy.kind" in capsys.readouterr().err
