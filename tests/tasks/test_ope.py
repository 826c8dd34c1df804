"""Off-policy evaluation on the dynamic simulator: truth, unbiasedness over many logs, the run."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.causal import ope
from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.sim import policies
from causalrec_jax.tasks import ope as ope_run

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sim_ope.toml"
SMALL = ["env.n_users=40", "env.n_items=25", "env.latent_dim=4"]
N_LOGS = 2000
ROUNDS_PER_LOG = 50


def _setup(overrides):
    return ope_run.ope_setup(load_config(CONFIG, SMALL + overrides))


@pytest.fixture(scope="module")
def bandit():
    """K = 1: a softmax logging policy and a sharper target on a small world."""
    return _setup(["ope.truth_rounds=200000"])


@pytest.fixture(scope="module")
def slates():
    """K = 3 slates, epsilon-greedy policies (exact slot marginals)."""
    return _setup([
        "env.slate_size=3", "ope.truth_rounds=200000", 'policy.kind="epsilon_greedy"',
        "policy.epsilon=0.6", 'target.kind="epsilon_greedy"', "target.epsilon=0.3",
    ])


def _many_logs(setup, oracle_scale=1.0):
    """`N_LOGS` independent logs of `ROUNDS_PER_LOG` rounds, as `[N_LOGS, rounds]` arrays."""
    config = load_config(CONFIG, SMALL)
    rows = ope_run.log_rounds(jax.random.key(7), setup.logging, setup.env_params,
                              N_LOGS * ROUNDS_PER_LOG)
    users = np.unique(rows["user"])

    def table_fn(block):
        return oracle_scale * ope_run._oracle_table(setup.env_params, block)

    quantities = ope_run._block_quantities(config, jax.random.key(3), setup.logging,
                                           setup.target, table_fn, users, rows)
    target_probs = np.exp(np.asarray(jax.vmap(
        lambda u, s: policies.slate_log_prob(setup.target, u, s))(
            jnp.asarray(rows["user"]), jnp.asarray(rows["slate"]))))
    shape = (N_LOGS, ROUNDS_PER_LOG)
    return {
        "rewards": rows["reward"].reshape(shape),
        "slot_rewards": rows["clicks"].astype(np.float32).reshape(*shape, -1),
        "target": target_probs.reshape(shape),
        "logging": np.exp(rows["log_prob"]).reshape(shape),
        **{name: value.reshape(*shape, *value.shape[1:]) for name, value in quantities.items()
           if name != "exact_value"},
    }


def _assert_unbiased(values, truth):
    values = np.asarray(values, np.float64)
    standard_error = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean() - truth) < 4 * standard_error, (values.mean(), truth, standard_error)


def test_on_policy_truth_matches_the_exact_value(bandit, slates):
    for setup in (bandit, slates):
        assert setup.exact is not None
        assert abs(setup.truth - setup.exact) < 4 * setup.truth_stderr + 1e-6


def test_ips_and_dr_are_unbiased_over_thousands_of_logs(bandit):
    logs = _many_logs(bandit, oracle_scale=0.5)  # a wrong reward model: DR must still be right
    ips = jax.vmap(ope.ips)(logs["rewards"], logs["target"], logs["logging"]).value
    dr = jax.vmap(ope.dr)(logs["rewards"], logs["target"], logs["logging"], logs["q_logged"],
                          logs["q_target"]).value
    dm = jax.vmap(ope.dm)(logs["q_target"]).value
    _assert_unbiased(ips, bandit.exact)
    _assert_unbiased(dr, bandit.exact)
    assert abs(float(np.mean(dm)) - bandit.exact) > 0.2 * bandit.exact  # dm takes the model's bias


def test_slate_estimators_are_unbiased_under_position_based_clicks(slates):
    logs = _many_logs(slates)
    ips = jax.vmap(ope.ips)(logs["rewards"], logs["target"], logs["logging"]).value
    diagonal = lambda x: np.diagonal(x, axis1=-2, axis2=-1)  # noqa: E731
    iips = jax.vmap(ope.iips)(logs["slot_rewards"], diagonal(logs["target_slot"]),
                              diagonal(logs["logging_slot"])).value
    pbm = jax.vmap(lambda r, t, b: ope.pbm_ips(r, t, b, slates.env_params.examination))(
        logs["slot_rewards"], logs["target_slot"], logs["logging_slot"]).value
    for values in (ips, iips, pbm):
        _assert_unbiased(values, slates.exact)
    assert np.std(iips) < np.std(ips)  # slot-level weights: lower variance than slate-level


def test_identical_policies_give_weight_one_and_the_on_policy_mean(bandit):
    rows = ope_run.log_rounds(jax.random.key(0), bandit.target, bandit.env_params, 3000)
    target_probs = np.exp(np.asarray(jax.vmap(lambda u, s: policies.slate_log_prob(
        bandit.target, u, s))(jnp.asarray(rows["user"]), jnp.asarray(rows["slate"]))))
    weights, report = ope.importance_weights(target_probs, np.exp(rows["log_prob"]))
    np.testing.assert_allclose(weights, 1.0, rtol=1e-5)
    assert int(report.n_clipped) == 0
    assert float(report.effective_sample_size) == pytest.approx(3000, rel=1e-4)
    # With weight one, IPS is the on-policy sample mean of the rewards.
    estimate = ope.ips(rows["reward"], target_probs, np.exp(rows["log_prob"]))
    assert float(estimate.value) == pytest.approx(float(np.mean(rows["reward"])), rel=1e-5)
    assert abs(float(estimate.value) - bandit.exact) < 4 * float(estimate.stderr)


def test_streams_of_seeds_never_meet_the_truth_stream():
    config = load_config(CONFIG, SMALL)
    truth = ope_run.truth_key(config)

    def data(key):
        return tuple(np.asarray(jax.random.key_data(key)).ravel())

    seen = {data(truth)}
    for seed in range(40):  # seed index 31 used to fold to the truth key
        streams = ope_run.seed_streams(seed)
        keys = [*streams.values(),
                *(jax.random.fold_in(streams["reward_model"], fold) for fold in range(3))]
        for key in keys:
            assert data(key) not in seen
            seen.add(data(key))


def test_causalrec_ope_writes_the_run_contract(tmp_path, capsys):
    out = tmp_path / "ope"
    status = main(["ope", "--config", str(CONFIG), *sum(
        (["--set", item] for item in SMALL + [
            "ope.n_rounds=500", "ope.truth_rounds=20000", "train.seeds=2",
            "ope.reward_model_epochs=30", "ope.clip=5.0", "run.seed=4"]), []), "--out", str(out)])
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test", "test_std", "per_seed", "seeds", "data", "timing", "versions", "ope",
            "truth", "weights"} <= set(metrics)
    assert "valid" not in metrics  # nothing is validated in an OPE run
    assert metrics["seeds"] == [4, 5]  # run.seed + i
    assert set(metrics["ope"]) == set(ope.ESTIMATORS)
    truth = metrics["truth"]["value"]
    assert abs(truth - metrics["truth"]["exact"]) < 4 * metrics["truth"]["stderr"] + 1e-6
    for name, row in metrics["ope"].items():
        values = [seed["estimate"] for seed in row["per_seed"]]
        assert row["estimate"] == pytest.approx(np.mean(values))
        errors = [abs(v - truth) / truth for v in values]
        assert row["relative_error"] == pytest.approx(np.mean(errors))
        assert metrics["test"][f"{name}_relative_error"] == pytest.approx(np.mean(errors))
        assert metrics["test_std"][f"{name}_estimate"] == pytest.approx(np.std(values, ddof=1))
        assert 0.5 * truth < row["estimate"] < 1.5 * truth
        assert row["weights"] == ope_run.WEIGHT_KINDS[name]
    for entry, seed in zip(metrics["per_seed"], [4, 5], strict=True):
        assert entry["seed"] == seed and entry["best_epoch"] == -1 and entry["valid"] == {}
        assert set(entry["test"]) == set(metrics["test"])
        for report in entry["weights"].values():
            assert report["n"] == 500 and report["max_weight_after"] <= 5.0 + 1e-5
    slate = metrics["weights"]["slate"]
    assert set(metrics["weights"]) == {"slate", "item_position", "position_based"}
    assert slate["max_weight_before"] > 5.0 and 0 < slate["fraction_clipped"] < 1
    assert 0 < slate["effective_sample_size"] < 500
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # one line per reward-model epoch and seed (the seeds metrics.json lists)
    assert [(line["seed"], line["epoch"]) for line in log] == [
        (seed, epoch) for seed in (4, 5) for epoch in range(30)]
    for line in log:
        assert set(line) == {"seed", "epoch", "loss", "seconds"}
    for seed in (4, 5):
        losses = [line["loss"] for line in log if line["seed"] == seed]
        assert losses[-1] < losses[0]  # each seed's reward model learns
    assert log[0]["loss"] != log[30]["loss"]
    assert sum(line["seconds"] for line in log) == pytest.approx(
        metrics["timing"]["reward_model_seconds"], rel=1e-3)
    assert (out / "config.toml").exists()
    assert "rel.error" in capsys.readouterr().out


def test_ope_refuses_an_unknown_estimator(tmp_path, capsys):
    status = main(["ope", "--config", str(CONFIG), "--set", 'ope.estimators=["ips", "dr_os"]',
                   "--out", str(tmp_path / "never")])
    assert status == 2
    assert "ope.estimators" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_the_reward_model_fits_on_the_core_and_compiles_once_across_seeds():
    from causalrec_jax.causal.reward_model import fit_reward_model, reward_table
    from causalrec_jax.train.full_batch import fit_full_batch_jit

    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 2000), rng.integers(0, 20, 2000)
    slots = rng.integers(0, 2, 2000)
    clicks = (items < 5) & (slots == 0)  # items 0-4 are clicked at the first slot only

    def fit(seed, learning_rate=0.05):
        return fit_reward_model(jax.random.key(seed), users, items, slots, clicks, n_users=30,
                                n_items=20, slate_size=2, dim=4, epochs=150,
                                learning_rate=learning_rate, weight_decay=0.1)

    model, losses = fit(0)
    size = fit_full_batch_jit._cache_size()
    _, other_losses = fit(1, learning_rate=0.02)  # another seed and learning rate
    assert fit_full_batch_jit._cache_size() == size
    assert float(losses[-1]) < 0.5 * float(losses[0])
    assert not np.allclose(losses, other_losses)
    table = np.asarray(reward_table(model, jnp.arange(30)))  # [users, items, slots]
    assert table[:, :5, 0].mean() > 0.6 > 0.2 > table[:, 5:, 0].mean()
    assert table[:, :5, 1].mean() < table[:, :5, 0].mean()
