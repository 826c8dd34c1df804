"""`causalrec tune`: population equals sequential runs, validation-only selection, resume."""

import json

import numpy as np
import pytest

from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.data.loader import load_split
from causalrec_jax.errors import ConfigError
from causalrec_jax.tasks import ordinary
from causalrec_jax.tune import search
from causalrec_jax.tune.space import space_from_dict

BASE = [
    "sim.n_users=60",
    "sim.n_items=40",
    "sim.mean_exposure=0.3",
    'data.split="random"',
    "train.epochs=3",
    "train.batch_size=64",
    'train.loss="bpr"',
    "model.embedding_dim=8",
    "eval.ks=[5]",
    "eval.positive_threshold=0",
    'eval.metrics=["ndcg", "recall"]',
    'train.early_stopping_metric="ndcg@5"',
    "train.patience=10",
]
GRID = {"train": {"learning_rate": [0.01, 0.1], "weight_decay": [0.0, 1e-2]}}


def base_config(*extra):
    return load_config(None, BASE + list(extra))


def test_population_and_sequential_runs_pick_the_same_configuration(tmp_path):
    config = base_config()
    summary = search.tune(config, space_from_dict(GRID), tmp_path / "t", seeds=1)
    split, _ = load_split(config.data, config.sim, seed=config.run.seed)
    sequential = {}
    for lr in GRID["train"]["learning_rate"]:
        for wd in GRID["train"]["weight_decay"]:
            alone = ordinary.train_split(
                base_config(f"train.learning_rate={lr}", f"train.weight_decay={wd}"),
                split,
                evaluate_test=False,
            )
            sequential[(lr, wd)] = alone.per_seed[0]["valid"]["ndcg@5"]
    best_values = summary["best"]["values"]
    chosen = (best_values["train.learning_rate"], best_values["train.weight_decay"])
    assert chosen == max(sequential, key=sequential.get)
    assert summary["best"]["valid"] == pytest.approx(sequential[chosen], rel=1e-5)
    records = [json.loads(line) for line in (tmp_path / "t" / "trials.jsonl").open()]
    assert len(records) == 4
    for record in records:
        key = (record["values"]["train.learning_rate"], record["values"]["train.weight_decay"])
        assert record["valid"] == pytest.approx(sequential[key], rel=1e-5)
    best_toml = load_config(tmp_path / "t" / "best.toml")
    assert best_toml.train.learning_rate == chosen[0]
    assert (tmp_path / "t" / "trials.csv").exists()
    for name in ("valid_vs_train_learning_rate", "valid_vs_train_weight_decay", "valid_by_trial"):
        assert (tmp_path / "t" / "plots" / f"{name}.png").exists(), name
    assert "ndcg@5" in summary["best_run"]["test"]


def test_selection_never_reads_the_test_split(tmp_path, monkeypatch):
    config = base_config()
    clean = search.tune(config, space_from_dict(GRID), tmp_path / "clean", seeds=1)
    original = search.make_split

    def poisoned_split(*args, **kwargs):
        split = original(*args, **kwargs)
        rng = np.random.default_rng(0)
        garbage = split.test.replace(
            item=rng.integers(0, split.test.n_items, len(split.test)).astype(np.int32),
            rating=np.zeros(len(split.test), np.float32),
        )
        return type(split)(train=split.train, valid=split.valid, test=garbage)

    monkeypatch.setattr(search, "make_split", poisoned_split)
    poisoned = search.tune(config, space_from_dict(GRID), tmp_path / "poisoned", seeds=1)
    assert poisoned["best"] == clean["best"]


def test_resume_skips_finished_trials(tmp_path, monkeypatch):
    config = base_config()
    out = tmp_path / "t"
    first = search.tune(config, space_from_dict(GRID), out, seeds=1)
    lines = (out / "trials.jsonl").read_text().splitlines()
    (out / "trials.jsonl").write_text("\n".join(lines[:2]) + "\n")  # as if killed midway
    trained_members = []
    original = search.train_split

    def counting(config, split, *, members, **kwargs):
        trained_members.extend(members)
        return original(config, split, members=members, **kwargs)

    monkeypatch.setattr(search, "train_split", counting)
    resumed = search.tune(config, space_from_dict(GRID), out, seeds=1, resume=True)
    assert len(trained_members) == 2
    assert resumed["best"] == first["best"]
    assert len((out / "trials.jsonl").read_text().splitlines()) == 4


def test_bad_metric_and_missing_validation(tmp_path):
    with pytest.raises(ConfigError, match="does not compute 'mrr@10'"):
        search.tune(base_config(), space_from_dict(GRID), tmp_path / "a", metric="valid.mrr@10")
    with pytest.raises(ConfigError, match="validation split only"):
        search.tune(base_config(), space_from_dict(GRID), tmp_path / "b", metric="test.ndcg@5")
    with pytest.raises(ConfigError, match="validation split"):
        search.tune(
            base_config("data.split_ratios=[0.8, 0.2]"), space_from_dict(GRID), tmp_path / "c"
        )
    # A key the runs would ignore is refused before any trial trains, naming it.
    with pytest.raises(ConfigError, match="key causal.propensity_clip: set to 0.1"):
        search.tune(base_config("causal.propensity_clip=0.1"), space_from_dict(GRID),
                    tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_cli_tune(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text("[train]\nlearning_rate = [0.01, 0.1]\n")
    args = ["tune", "--space", str(space), "--out", str(tmp_path / "t"), "--seeds", "2"]
    for item in BASE:
        args += ["--set", item]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (
        "2 trials, selected on valid.ndcg@5" in printed and "best: train.learning_rate" in printed
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rat = [0.1]\n")
    assert main(["tune", "--space", str(bad), "--out", str(tmp_path / "u")]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_successive_halving_keeps_survivors_identical():
    config = base_config("train.epochs=6")
    split, _ = load_split(config.data, config.sim, seed=config.run.seed)
    members = [ordinary.Member(seed=0, hparams={"learning_rate": lr})
               for lr in (0.002, 0.01, 0.05, 0.1)]
    full = ordinary.train_split(config, split, members=members, evaluate_test=False)
    halved = ordinary.train_split(
        base_config("train.epochs=6", "train.halving_rung=2", "train.halving_keep=0.5"),
        split, members=members, evaluate_test=False,
    )
    dropped_at_rung = [e for e in halved.history if "halving_dropped" in e]
    assert [len(e["halving_dropped"]) for e in dropped_at_rung] == [2, 1]
    survivor = set(range(4)) - {m for e in dropped_at_rung for m in e["halving_dropped"]}
    (winner,) = survivor
    # Members never interact: the one that trains to the end matches its unhalved run, and
    # the members dropped at the first rung keep their results from epochs 0-1.
    assert halved.per_seed[winner]["valid"] == pytest.approx(full.per_seed[winner]["valid"])
    for member in dropped_at_rung[0]["halving_dropped"]:
        assert halved.per_seed[member]["best_epoch"] <= 1
    assert halved.history[-1]["alive"] == [winner]


@pytest.mark.slow  # make test-all (see Makefile): three tuning runs
def test_auto_metric_selects_auc_on_a_large_validation_split_and_mse_on_a_small_one(tmp_path):
    """`--metric auto`: pooled AUC when the validation AUC's standard error is at most 0.03
    (Hanley & McNeil), mse otherwise; the rule and its counts are in the summary."""
    from causalrec_jax.eval.protocol import (
        AUTO_AUC_MAX_STDERR,
        auc_standard_error,
        auto_selection_metric,
    )

    # Coat's 5% slice (about 55 positive, 177 negative ratings) is too small, Yahoo!'s not.
    assert auc_standard_error(55, 177) > AUTO_AUC_MAX_STDERR > auc_standard_error(240, 2460)

    rating_base = ["sim.mean_exposure=0.2", 'data.split="mar_slice"', "train.epochs=2",
                   'train.loss="mse"', "model.embedding_dim=4", "eval.positive_threshold=4",
                   'eval.metrics=["mse", "auc"]', 'train.early_stopping_metric="mse"']
    space = space_from_dict({"train": {"learning_rate": [0.01, 0.05]}})
    for users, mar_fraction, expected in ((100, 0.05, "mse"), (600, 0.3, "auc")):
        config = load_config(None, [*rating_base, f"sim.n_users={users}", "sim.n_items=60",
                                    "sim.mar_items_per_user=20",
                                    f"data.mar_valid_fraction={mar_fraction}"])
        split, _ = load_split(config.data, config.sim, seed=config.run.seed)
        name, why = auto_selection_metric(config.eval, split.valid)
        positives = int((split.valid.rating >= 4).sum())
        assert name == expected, why
        assert (auc_standard_error(positives, len(split.valid) - positives)
                <= AUTO_AUC_MAX_STDERR) == (expected == "auc")
        assert f"{positives} positive" in why
        summary = search.tune(config, space, tmp_path / expected, metric="auto")
        assert summary["metric"] == f"valid.{expected}" and summary["metric_rule"] == why
    # A model that does not predict ratings is selected on AUC whatever the split's size.
    bce = load_config(None, [*rating_base[:3], 'train.loss="bce"', *rating_base[4:],
                             "sim.n_users=100", "sim.n_items=60"])
    split, _ = load_split(bce.data, bce.sim, seed=bce.run.seed)
    assert auto_selection_metric(bce.eval, split.valid, "bce")[0] == "auc"
    with pytest.raises(ConfigError, match="which eval.metrics does not compute; add 'mse'"):
        config = load_config(None, [*rating_base, "sim.n_users=100", "sim.n_items=60",
                                    'eval.metrics=["auc"]', 'train.early_stopping_metric="auc"'])
        search.tune(config, space, tmp_path / "none", metric="auto")
    assert not (tmp_path / "none").exists()


def test_a_space_key_the_method_does_not_read_is_refused_before_any_trial(tmp_path):
    config = base_config()
    space = space_from_dict({"causal": {"dynamic_ratio": [0.1, 0.2]}})
    with pytest.raises(ConfigError, match="key causal.dynamic_ratio: the space sweeps it, but "
                       "causal.method = 'naive' does not read it"):
        search.tune(config, space, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_every_shipped_space_sweeps_only_keys_its_config_reads():
    """Each configs/<name>_space.toml beside configs/<name>.toml passes the check `tune` runs
    before its first trial (a key the method or model never reads is refused)."""
    from pathlib import Path

    from causalrec_jax.tune.space import load_space

    configs = Path(__file__).resolve().parents[2] / "configs"
    spaces = sorted(configs.glob("*_space.toml"))
    assert len(spaces) > 30
    for space_path in spaces:
        config = load_config(configs / space_path.name.replace("_space.toml", ".toml"))
        search._check_space_keys_used(config, load_space(space_path))
