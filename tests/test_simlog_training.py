"""A simulated log trains with the ordinary training and evaluation code (format simlog)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.errors import ConfigError
from causalrec_jax.runs.load import load_run, run_score_table
from causalrec_jax.sim.logs import env_from_config, policy_scores

TINY = ["env.n_users=40", "env.n_items=30", "env.latent_dim=4", "env.horizon=6",
        "env.slate_size=4"]


@pytest.mark.slow  # make test-all (see Makefile)
def test_simulate_then_train_on_the_simlog(tmp_path):
    log = tmp_path / "log"
    sets = sum((["--set", item] for item in TINY), [])
    assert main(["simulate", "--config", "configs/sim_log.toml", "--quiet", "--out", str(log),
                 *sets]) == 0
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/sim_log_mf.toml", "--quiet", "--out", str(run),
                 "--set", f'data.path="{log}"', "--set", "train.epochs=2"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["n_users"] == 40 and metrics["data"]["n_items"] == 30
    assert 0.0 <= metrics["test"]["auc"] <= 1.0


@pytest.mark.slow  # make test-all (see Makefile)
def test_a_trained_run_drives_the_logging_policy(tmp_path):
    """policy.scores = "run": the softmax policy ranks by the scores of a model of the library."""
    log, run = tmp_path / "log", tmp_path / "run"
    sets = sum((["--set", item] for item in TINY), [])
    assert main(["simulate", "--config", "configs/sim_log.toml", "--quiet", "--out", str(log),
                 *sets]) == 0
    assert main(["train", "--config", "configs/sim_log_mf.toml", "--quiet", "--out", str(run),
                 "--set", f'data.path="{log}"', "--set", "train.epochs=2"]) == 0
    config = load_config("configs/sim_log.toml", TINY + ['policy.scores="run"',
                                                          f'policy.run="{run}"'])
    _, world = env_from_config(config.env)
    with pytest.raises(ConfigError, match="policy.scores"):  # sim/ never reads a run folder
        policy_scores(config.policy, world)
    table = run_score_table(run, config.env.n_users, config.env.n_items)
    with pytest.raises(ConfigError, match=r"\(40, 30\)"):
        policy_scores(config.policy, world, table[:, :5])
    scores = policy_scores(config.policy, world, table)
    loaded = load_run(run)
    expected = loaded.score_all_fn()(jnp.arange(40))
    users = loaded.user_ids.astype(int)
    items = loaded.item_ids.astype(int)
    np.testing.assert_allclose(np.asarray(scores)[np.ix_(users, items)], expected, rtol=1e-5)
    assert main(["simulate", "--config", "configs/sim_log.toml", "--quiet", "--out",
                 str(tmp_path / "log2"), *sets, "--set", 'policy.scores="run"', "--set",
                 f'policy.run="{run}"']) == 0
