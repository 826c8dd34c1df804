"""Uplift runs: cell aggregation, the run's own labels unbiased on the simulator, the one clip,
compile once, named streams and the run contract."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.causal import uplift
from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.runs.train import uplift_run as run_uplift
from causalrec_jax.sim import policies
from causalrec_jax.sim.logs import SimLog, env_from_config, policy_from_config, simulate_log
from causalrec_jax.sim.rollout import rollout_users, uplift_truth
from causalrec_jax.tasks import uplift as uplift_run
from causalrec_jax.train.full_batch import fit_full_batch_jit

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sim_uplift.toml"
SMALL = ["env.n_users=60", "env.n_items=30", "env.latent_dim=4", "env.slate_size=3",
         "env.horizon=40", "uplift.epochs=60", "train.seeds=2"]
N_LOGS = 300


def _cli(out, overrides):
    return main(["train", "--config", str(CONFIG), "--quiet", "--out", str(out),
                 *sum((["--set", s] for s in overrides), [])])


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


def test_the_run_builds_its_labels_from_causal_uplift():
    # Tested = run: the functions uplift_run trains on are the ones tests/causal checks.
    assert uplift_run.ips_uplift_label_from_counts is uplift.ips_uplift_label_from_counts
    assert uplift_run.dr_uplift_label_from_counts is uplift.dr_uplift_label_from_counts
    assert uplift_run.ips_weights_from_counts is uplift.ips_weights_from_counts
    assert uplift_run.uplift_regression_loss is uplift.uplift_regression_loss
    assert uplift_run.dlce_pair_loss is uplift.dlce_pair_loss


def _cells(trajectory, n_items):
    """`aggregate_cells` in jax.numpy, on one `[U, T, ...]` trajectory (vmap-able)."""
    shown = jax.nn.one_hot(trajectory.slate, n_items)  # [U, T, K, I]
    consumed = trajectory.info["consumed_if_shown"][..., None]
    organic = trajectory.info["organic_item"]  # [U, T]
    outside = (organic >= 0) & ~jnp.any(trajectory.slate == organic[..., None], axis=-1)
    return {"n1": shown.sum(axis=(1, 2)), "c1": (shown * consumed).sum(axis=(1, 2)),
            "c0": (jax.nn.one_hot(organic, n_items) * outside[..., None]).sum(axis=1),
            "steps": jnp.full(organic.shape[:1], organic.shape[1], jnp.float32)}


@pytest.fixture(scope="module")
def many_logs():
    """`N_LOGS` independent logs of a small world (vmap over keys): the cells, the policy's
    inclusion probabilities and each log's true uplift `[N_LOGS, U, I]`."""
    config = load_config(CONFIG, SMALL)  # the world of the runs below: compiled once
    sizes, params = env_from_config(config.env)
    policy = policy_from_config(config.policy, params, sizes.slate_size)
    users = jnp.arange(sizes.n_users)

    def one(key):
        trajectory = rollout_users(key, policies.slate_policy, policy, params, sizes.horizon,
                                   users)
        truth = uplift_truth(key, policies.slate_policy, policy, params, sizes.horizon, users)
        return _cells(trajectory, sizes.n_items), truth

    keys = jax.random.split(jax.random.key(11), N_LOGS)
    cells, truth = jax.jit(jax.vmap(one))(keys)
    inclusion = jax.vmap(lambda user: policies.inclusion_probabilities(policy, user))(users)
    # The vmapped aggregation is the run's: compare one log with `aggregate_cells`.
    log, log_truth = simulate_log(config.env, config.policy, keys[0], marginal_samples=1)
    reference = uplift_run.aggregate_cells(log, sizes.n_users, sizes.n_items)
    for name in ("n1", "c1", "c0", "steps"):
        np.testing.assert_array_equal(np.asarray(cells[name][0]), reference[name])
    np.testing.assert_allclose(np.asarray(truth[0]), log_truth["true_uplift"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(inclusion), log_truth["inclusion_propensity"])
    return cells, np.asarray(inclusion), np.asarray(truth)


def _assert_unbiased_per_item(labels, truth):
    """Per item (mean over users), the mean over logs of label - truth is within 4 standard
    errors of 0; and the labels are not trivially 0."""
    errors = np.asarray(labels - truth, np.float64).mean(axis=1)  # [N_LOGS, I]
    mean = errors.mean(axis=0)
    standard_error = errors.std(axis=0, ddof=1) / np.sqrt(errors.shape[0])
    assert np.all(np.abs(mean) < 4 * standard_error), (mean, standard_error)
    assert np.abs(np.asarray(truth)).mean() > 10 * standard_error.mean()  # a real signal


def test_the_runs_ips_label_is_unbiased_for_the_true_uplift(many_logs):
    cells, inclusion, truth = many_logs
    steps = cells["steps"][:, :, None]
    labels = jax.vmap(uplift_run.ips_uplift_label_from_counts, in_axes=(0, 0, 0, None))(
        cells["c1"], cells["c0"], steps, inclusion)
    _assert_unbiased_per_item(labels, truth)


def test_the_runs_dr_label_is_unbiased_with_wrong_outcome_models(many_logs):
    cells, inclusion, truth = many_logs
    steps = cells["steps"][:, :, None]
    wrong_treated, wrong_control = jnp.full(inclusion.shape, 0.3), jnp.full(inclusion.shape, 0.1)
    labels = jax.vmap(lambda c1, n1, c0, t: uplift_run.dr_uplift_label_from_counts(
        c1, n1, c0, t, inclusion, wrong_treated, wrong_control))(
            cells["c1"], cells["n1"], cells["c0"], steps)
    _assert_unbiased_per_item(labels, truth)


def test_the_uplift_of_an_item_without_effect_is_estimated_near_zero(monkeypatch):
    config = load_config(CONFIG, SMALL + ["env.n_users=500", "env.horizon=80"])
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
    log, truth = simulate_log(config.env, config.policy, jax.random.key(0))
    cells = uplift_run.aggregate_cells(log, 500, 30)
    steps = cells["steps"][:, None]
    labels = np.asarray(uplift_run.ips_uplift_label_from_counts(
        cells["c1"], cells["c0"], steps, truth["inclusion_propensity"]))
    consumption = (cells["c1"] + cells["c0"]) / steps
    assert np.max(np.abs(truth["true_uplift"][:, 0])) < 1e-4
    estimate = labels[:, 0]
    standard_error = estimate.std(ddof=1) / np.sqrt(len(estimate))
    assert abs(estimate.mean()) < 4 * standard_error
    assert abs(estimate.mean()) < 0.02
    assert consumption.mean(axis=0).argmax() == 0  # yet it is the most consumed item
    item_estimates, item_truth = labels.mean(axis=0), truth["true_uplift"].mean(axis=0)
    assert np.corrcoef(item_estimates, item_truth)[0, 1] > 0.8


def test_cells_without_overlap_are_masked_and_counted_not_clipped():
    config = load_config(CONFIG, SMALL + ['uplift.method="ips"', "uplift.epochs=5"])
    n_users, n_items = 4, 3
    cells = {"n1": np.array([[0, 2, 4]] * n_users, np.float32),
             "c1": np.array([[0, 1, 3]] * n_users, np.float32),
             "c0": np.array([[2, 0, 0]] * n_users, np.float32),
             "steps": np.full(n_users, 4.0, np.float32)}
    propensity = np.array([[0.0, 0.5, 1.0]] * n_users, np.float32)  # never / half / always
    keys = uplift_run.seed_streams(0)
    scores, losses, report = uplift_run.train_uplift(config, keys, cells, propensity)
    assert scores.shape == (n_users, n_items) and bool(jnp.all(jnp.isfinite(scores)))
    assert bool(jnp.all(jnp.isfinite(losses)))
    assert report["n_cells_without_overlap"] == 2 * n_users
    assert report["n"] == 2 * n_users  # only the overlapping column, both arms
    assert report["max_weight_before"] == pytest.approx(2.0)  # 1 / 0.5, never 1 / 1e-6
    label = uplift.ips_uplift_label_from_counts(
        cells["c1"], cells["c0"], cells["steps"][:, None], propensity,
        where=(propensity > 0) & (propensity < 1))
    np.testing.assert_allclose(label, [[0.0, 0.5, 0.0]] * n_users)


def test_the_clip_is_applied_once_and_reported():
    config = load_config(CONFIG, SMALL + ['uplift.method="ips"', "uplift.epochs=5",
                                          "uplift.clip=0.3"])
    cells = {"n1": np.array([[1.0, 1.0]]), "c1": np.array([[1.0, 0.0]]),
             "c0": np.array([[0.0, 1.0]]), "steps": np.array([2.0])}
    propensity = np.array([[0.1, 0.5]], np.float32)
    _, _, report = uplift_run.train_uplift(config, uplift_run.seed_streams(0), cells,
                                           propensity)
    assert report["clip"] == 0.3 and report["n"] == 4
    assert report["n_clipped"] == 1  # the treated arm of P = 0.1: weight 10 -> 1 / 0.3
    assert report["max_weight_before"] == pytest.approx(10.0)
    assert report["max_weight_after"] == pytest.approx(1 / 0.3, rel=1e-5)


def test_streams_of_a_seed_are_distinct_from_each_other_and_from_the_log_users():
    keys = uplift_run.seed_streams(5)
    data = {name: tuple(np.asarray(jax.random.key_data(key)).ravel())
            for name, key in keys.items()}
    users = {tuple(np.asarray(jax.random.key_data(jax.random.fold_in(keys["log"], u))).ravel())
             for u in range(100)}
    assert len(set(data.values())) == len(data)
    assert not set(data.values()) & users  # no model key is a user's rollout key
    other = uplift_run.seed_streams(6)
    assert tuple(np.asarray(jax.random.key_data(other["log"])).ravel()) != data["log"]


def test_uplift_run_beats_the_consumption_baseline_and_writes_the_contract(tmp_path):
    results = {}
    for method in ("consumption", "dr"):
        out = tmp_path / method
        status = _cli(out, SMALL + [f'uplift.method="{method}"', "env.n_users=200",
                                    "env.horizon=60", "env.n_items=100", "env.slate_size=5",
                                    "run.seed=3"])
        assert status == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert {"test", "test_std", "per_seed", "seeds", "data", "timing", "versions",
                "propensity"} <= set(metrics)
        assert "valid" not in metrics  # no validation in uplift runs
        assert {"cp@10", "cdcg@10"} == set(metrics["test"]) == set(metrics["test_std"])
        assert metrics["seeds"] == [3, 4]  # run.seed + i
        assert [entry["seed"] for entry in metrics["per_seed"]] == [3, 4]
        for entry in metrics["per_seed"]:
            assert entry["best_epoch"] == 59 and entry["valid"] == {}
            assert set(entry["test"]) == {"cp@10", "cdcg@10"}
        per_seed = [entry["test"]["cp@10"] for entry in metrics["per_seed"]]
        assert metrics["test"]["cp@10"] == pytest.approx(np.mean(per_seed))
        assert metrics["test_std"]["cp@10"] == pytest.approx(np.std(per_seed, ddof=1))
        assert metrics["data"]["ideal"]["cp@10"] > metrics["test"]["cp@10"] > 0
        assert metrics["propensity"]["n"] == 2 * 200 * 100
        assert metrics["propensity"]["n_cells_without_overlap"] == 0
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        # one line per epoch and seed, each seed's own fit
        assert [(line["seed"], line["epoch"]) for line in log] == [
            (seed, epoch) for seed in (3, 4) for epoch in range(60)]
        for line in log:
            assert set(line) == {"seed", "epoch", "loss", "seconds"}
        for seed in (3, 4):
            losses = [line["loss"] for line in log if line["seed"] == seed]
            assert losses[-1] < losses[0]
        assert log[0]["loss"] != log[60]["loss"]
        train_seconds = metrics["timing"]["train_seconds"]
        assert sum(line["seconds"] for line in log) == pytest.approx(train_seconds, rel=1e-3)
        assert (out / "config.toml").exists()
        results[method] = metrics["test"]["cp@10"]
    assert results["dr"] > results["consumption"]


def test_a_second_seed_and_a_second_run_compile_nothing(tmp_path):
    config = load_config(CONFIG, SMALL + ['uplift.method="dr"', "train.seeds=1"])
    run_uplift(config, tmp_path / "first")  # compiles every program once
    fits = fit_full_batch_jit._cache_size()
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        another_seed = dataclasses.replace(config, run=dataclasses.replace(config.run, seed=9))
        run_uplift(another_seed, tmp_path / "second")
        run_uplift(config, tmp_path / "third")
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert fit_full_batch_jit._cache_size() == fits
    assert compiles == []
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())
    third = json.loads((tmp_path / "third" / "metrics.json").read_text())
    assert first["test"] == third["test"]  # same seed, same numbers


def test_uplift_refuses_a_softmax_logging_policy(tmp_path, capsys):
    out = tmp_path / "never_written"
    status = _cli(out, SMALL + ['policy.kind="softmax"', "train.seeds=1"])
    assert status == 2
    assert "policy.kind" in capsys.readouterr().err
    assert not out.exists()
