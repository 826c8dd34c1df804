"""One run contract for every run kind (DESIGN §2): the same metrics.json top-level keys,
`seeds` = run.seed + i, every per_seed entry `{seed, best_epoch, valid, test, ...}`, and
log.jsonl with one line per epoch (and seed) with the same keys, whatever trained the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from causalrec_jax.cli import main
from causalrec_jax.tune.search import tune
from causalrec_jax.tune.space import space_from_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TOP_LEVEL = {"test", "test_std", "test_ci95", "per_seed", "seeds", "data", "timing",
             "versions"}
PER_SEED = {"seed", "best_epoch", "valid", "test"}
LOG_LINE = {"epoch", "loss", "loss_per_seed", "seconds"}

ORDINARY = ["sim.n_users=60", "sim.n_items=40", "sim.mean_exposure=0.3", 'data.split="random"',
            "train.epochs=3", "train.batch_size=64", 'train.loss="bpr"', "train.seeds=2",
            "model.embedding_dim=8", "eval.ks=[5]", "eval.positive_threshold=0",
            'train.early_stopping_metric="ndcg@5"', "run.seed=3"]
CAUSAL = ["sim.n_users=60", "sim.n_items=40", "train.epochs=3", "train.seeds=2", "run.seed=3",
          "train.batch_size=256"]
UPLIFT = ["env.n_users=40", "env.n_items=20", "env.latent_dim=4", "env.slate_size=3",
          "env.horizon=10", "uplift.epochs=5", "train.seeds=2", "run.seed=3"]
OPE = ["env.n_users=40", "env.n_items=25", "env.latent_dim=4", "ope.seeds=2", "run.seed=3",
       "ope.n_rounds=500", "ope.truth_rounds=2000", "ope.reward_model_epochs=5"]

KINDS = {
    "ordinary": ("train", None, ORDINARY),
    "causal": ("train", "sim_dr_jl.toml", CAUSAL),
    "uplift": ("train", "sim_uplift.toml", UPLIFT),
    "ope": ("ope", "sim_ope.toml", OPE),
}


def _sets(overrides):
    return sum((["--set", item] for item in overrides), [])


def check_contract(folder: Path, n_seeds: int, first_seed: int) -> dict:
    """Asserts the contract on a run folder; returns its metrics."""
    metrics = json.loads((folder / "metrics.json").read_text())
    assert TOP_LEVEL <= set(metrics), TOP_LEVEL - set(metrics)
    assert metrics["seeds"] == [first_seed + i for i in range(n_seeds)]
    assert [entry["seed"] for entry in metrics["per_seed"]] == metrics["seeds"]
    for entry in metrics["per_seed"]:
        assert PER_SEED <= set(entry), PER_SEED - set(entry)
        assert isinstance(entry["best_epoch"], int) and isinstance(entry["valid"], dict)
        assert set(metrics["test"]) <= set(entry["test"])  # per seed also counts users
    lines = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    for line in lines:
        assert LOG_LINE <= set(line), LOG_LINE - set(line)
        assert len(line["loss_per_seed"]) in (1, n_seeds)
    assert (folder / "config.toml").exists()
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_run_kind_writes_the_same_contract(tmp_path, kind):
    command, config, overrides = KINDS[kind]
    out = tmp_path / kind
    config_args = [] if config is None else ["--config", str(CONFIGS / config)]
    quiet = ["--quiet"] if command == "train" else []
    assert main([command, *config_args, *quiet, "--out", str(out), *_sets(overrides)]) == 0
    metrics = check_contract(out, n_seeds=2, first_seed=3)
    lines = (out / "log.jsonl").read_text().splitlines()
    if kind in ("ordinary", "causal"):
        assert {entry["best_epoch"] for entry in metrics["per_seed"]} <= {0, 1, 2}
        assert len(lines) == 3 and all(json.loads(line)["valid"] for line in lines)


@pytest.mark.slow
def test_tunings_best_run_writes_the_same_contract(tmp_path):
    from causalrec_jax.config import load_config

    config = load_config(None, ORDINARY)
    space = space_from_dict({"train": {"learning_rate": [0.01, 0.03]}}, "space.toml")
    tune(config, space, tmp_path / "tune", metric="valid.ndcg@5", seeds=1)
    check_contract(tmp_path / "tune" / "best", n_seeds=1, first_seed=3)


@pytest.mark.slow
def test_a_sequential_run_writes_the_same_contract(tmp_path):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = [(user, int(rng.integers(15)), step) for user in range(30) for step in range(8)]
    path = tmp_path / "walks.csv"
    pd.DataFrame(rows, columns=["user", "item", "time"]).to_csv(path, index=False)
    sets = ['data.format="csv"', f'data.path="{path}"', 'data.split="leave_one_out"',
            'data.columns={user = "user", item = "item", timestamp = "time"}',
            'model.name="sasrec"', "model.embedding_dim=8", "model.n_layers=1",
            "model.n_heads=1", "model.max_len=6", 'train.loss="full_softmax"',
            "train.epochs=2", "train.seeds=2", "run.seed=3", 'eval.metrics=["hit", "ndcg"]',
            "eval.ks=[5]", "eval.positive_threshold=0.0", 'train.early_stopping_metric="hit@5"']
    out = tmp_path / "sequential"
    assert main(["train", "--quiet", "--out", str(out), *_sets(sets)]) == 0
    check_contract(out, n_seeds=2, first_seed=3)
