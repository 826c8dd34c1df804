"""Off-policy evaluation on the dynamic simulator: truth, unbiasedness over many logs, the run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax import ope_run
from causalrec_jax.causal import ope
from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.sim import policies

SMALL = ["env.n_users=40", "env.n_items=25", "env.latent_dim=4"]
N_LOGS = 2000
ROUNDS_PER_LOG = 50


def _setup(overrides):
    return ope_run.ope_setup(load_config("configs/sim_ope.toml", SMALL + overrides))


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
    config = load_config("configs/sim_ope.toml", SMALL)
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
    config = load_config("configs/sim_ope.toml", SMALL)
    rows = ope_run.log_rounds(jax.random.key(0), bandit.target, bandit.env_params, 3000)
    weights = np.exp(np.asarray(jax.vmap(lambda u, s: policies.slate_log_prob(
        bandit.target, u, s))(jnp.asarray(rows["user"]), jnp.asarray(rows["slate"])))
        - rows["log_prob"])
    np.testing.assert_allclose(weights, 1.0, rtol=1e-5)
    assert config.ope.n_rounds == 10_000


def test_causalrec_ope_writes_the_ope_block(tmp_path, capsys):
    out = tmp_path / "ope"
    status = main(["ope", "--config", "configs/sim_ope.toml", *sum(
        (["--set", item] for item in SMALL + [
            "ope.n_rounds=500", "ope.truth_rounds=20000", "ope.seeds=2",
            "ope.reward_model_epochs=30"]), []), "--out", str(out)])
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["ope"]) == set(ope.ESTIMATORS)
    for row in metrics["ope"].values():
        assert {"estimate", "stderr", "truth", "relative_error"} <= set(row)
        assert np.isfinite(row["estimate"]) and row["relative_error"] >= 0
        assert row["truth"] == metrics["truth"]["value"]
    assert (out / "config.toml").exists()
    assert "relative" in capsys.readouterr().out.replace("rel.error", "relative")


def test_ope_refuses_an_unknown_estimator(capsys):
    status = main(["ope", "--config", "configs/sim_ope.toml", "--set",
                   'ope.estimators=["ips", "dr_os"]'])
    assert status == 2
    assert "ope.estimators" in capsys.readouterr().err
