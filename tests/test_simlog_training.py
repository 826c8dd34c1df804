"""A simulated log trains with the ordinary training and evaluation code (format simlog)."""

import json

from causalrec_jax.cli import main

TINY = ["env.n_users=40", "env.n_items=30", "env.latent_dim=4", "env.horizon=6",
        "env.slate_size=4"]


def test_simulate_then_train_on_the_simlog(tmp_path):
    log = tmp_path / "log"
    sets = sum((["--set", item] for item in TINY), [])
    assert main(["simulate", "--config", "configs/sim_log.toml", "--quiet", "--out", str(log),
                 *sets]) == 0
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/sim_log.toml", "--quiet", "--out", str(run),
                 *sets, "--set", f'data.path="{log}"', "--set", "train.epochs=2"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["n_users"] == 40 and metrics["data"]["n_items"] == 30
    assert 0.0 <= metrics["test"]["auc"] <= 1.0
