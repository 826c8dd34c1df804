"""Private sequential runs through the one core: SASRec trained with user-level DP-SGD on the
planted walks learns the rule at epsilon = 8 and not under overwhelming noise; the run
folder's `"privacy"` object is the accountant's for the steps run; settings a private
sequential run cannot honour are one line naming the key."""

import json

import jax
import numpy as np
import pytest

from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.errors import ConfigError
from causalrec_jax.privacy import accounting
from causalrec_jax.tasks.sequential import check_sequential_config


def _sets(path, *extra):
    return ['data.format="csv"', f'data.path="{path}"', 'data.split="leave_one_out"',
            "data.columns={user = \"user\", item = \"item\", timestamp = \"time\"}",
            'model.name="sasrec"', "model.embedding_dim=16", "model.n_layers=1",
            "model.n_heads=1", "model.max_len=8", 'train.loss="full_softmax"',
            "train.learning_rate=0.02", "train.batch_size=32", "train.epochs=40",
            'train.early_stopping_metric="hit@1"', "train.patience=40",
            'eval.metrics=["hit", "ndcg"]', "eval.ks=[1, 10]", "eval.positive_threshold=0.0",
            'privacy.level="user"', *extra]


def _train(path, out, *extra):
    args = ["train", "--quiet", "--out", str(out)]
    for value in _sets(path, *extra):
        args += ["--set", value]
    assert main(args) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def walks(tmp_path_factory, write_walks):
    folder = tmp_path_factory.mktemp("walks")
    return folder, write_walks(folder)[0]


def test_a_private_sasrec_learns_the_planted_rule_at_epsilon_8(walks, capsys):
    folder, path = walks
    metrics = _train(path, folder / "eps8", "privacy.target_epsilon=8.0")
    privacy = metrics["privacy"]
    # 60 users, 32 expected a step: 2 steps an epoch, 40 epochs (patience = epochs)
    assert privacy["steps"] == 80 and privacy["steps_per_seed"] == [80]
    assert privacy["level"] == "user" and privacy["user_rows"] is None
    assert privacy["guarantee"] == "DP of every parameter"
    assert privacy["sampling_rate"] == pytest.approx(32 / 60)
    assert privacy["epsilon"] == pytest.approx(accounting.epsilon(
        privacy["noise_multiplier"], privacy["sampling_rate"], 80, 1 / 60))
    assert 7.9 <= privacy["epsilon"] <= 8.0 * 1.001 and privacy["noise_multiplier"] > 1
    # the next item follows from the last one (a 20-cycle): learned under DP too
    assert metrics["test"]["hit@1"] > 0.9
    lines = (folder / "eps8" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 40 and set(json.loads(lines[0])) >= {"seed", "epoch", "loss"}
    # the run folder serves as any other: evaluated again from model/, recommendations
    capsys.readouterr()
    assert main(["evaluate", "--run", str(folder / "eps8")]) == 0
    assert f"{metrics['test']['hit@1']:.4f}" in capsys.readouterr().out
    assert main(["recommend", "--run", str(folder / "eps8"), "--all", "--k", "5",
                 "--out", str(folder / "recs.parquet")]) == 0
    assert (folder / "recs.parquet").stat().st_size > 0


NOISY = ("privacy.noise=200.0", "train.epochs=10", "train.patience=10")


@pytest.fixture(scope="module")
def noisy_run(walks):
    """`(metrics, folder)` of the planted run with noise 200 times the clip."""
    folder, path = walks
    return _train(path, folder / "noise", *NOISY), folder / "noise"


def test_overwhelming_noise_leaves_the_rule_unlearned(noisy_run):
    """The same run with noise 200 times the clip: the noise reaches the parameters (the
    model stays near chance: hit@1 of a 20-item cycle is 0.05 by chance)."""
    metrics, _ = noisy_run
    assert metrics["test"]["hit@1"] < 0.5
    assert metrics["privacy"]["epsilon"] < 0.01


def test_a_moving_average_is_the_model_of_the_same_private_training(walks, noisy_run):
    """`train.ema_decay` on a private sequential run: the same steps (logged losses) and
    budget, another model saved (the average), which `evaluate` scores."""
    from causalrec_jax.runs.load import evaluate_run, load_run  # (only this test reads them)

    plain, plain_folder = noisy_run
    folder, path = walks
    averaged = _train(path, folder / "averaged", *NOISY, "train.ema_decay=0.8")
    assert averaged["privacy"]["epsilon"] == plain["privacy"]["epsilon"]

    def losses(out):
        return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]

    assert losses(folder / "averaged") == pytest.approx(losses(plain_folder), rel=1e-5)
    assert not all(np.allclose(a, b) for a, b in zip(
        jax.tree.leaves(load_run(plain_folder).parts.params),
        jax.tree.leaves(load_run(folder / "averaged").parts.params), strict=True))
    again = evaluate_run(folder / "averaged", "test")["test"]
    assert all(abs(again[k] - v) < 1e-6 for k, v in averaged["test"].items())


@pytest.mark.slow  # make test-all; the round itself is tested in test_dpsgd_sequence.py
def test_fedavg_clients_learn_the_planted_rule(walks):
    """FedAvg, each user a client taking 2 local SGD steps a round on its own windows, the
    server averaging (SGD at learning rate 1): the rule is learned without noise."""
    folder, path = walks
    metrics = _train(path, folder / "fedavg", 'privacy.mechanism="fedavg"',
                     "privacy.local_steps=2", "privacy.client_learning_rate=0.5",
                     'train.optimizer="sgd"', "train.learning_rate=1.0")
    assert metrics["test"]["hit@1"] > 0.9
    privacy = metrics["privacy"]
    assert privacy["mechanism"] == "fedavg" and privacy["local_steps"] == 2
    assert privacy["steps"] == 80 and privacy["epsilon"] is None  # infinite: no noise
    assert privacy["guarantee"] == "none: no noise is added"


@pytest.mark.parametrize("extra,key", [
    (['privacy.level="example"', "privacy.noise=1.0"], "privacy.level"),
    (['privacy.mechanism="fedavg"', 'privacy.level="example"'], "privacy.level"),
    (['train.position_weighting="uniform"', "privacy.noise=1.0"], "train.position_weighting"),
    (["model.length_buckets=[8, 16]", "privacy.noise=1.0"], "model.length_buckets"),
    (["privacy.selection_noise=3.0", "privacy.noise=1.0"], "privacy.selection_noise"),
    (["privacy.contribution_clip=3.0", "privacy.noise=1.0"], "privacy.contribution_clip"),
    (['privacy.mechanism="fedavg"', "privacy.silos=4"], "privacy.silos"),
    (['privacy.user_rows="noised"', "privacy.noise=1.0"], "privacy.user_rows"),
    (["privacy.item_rows=5", "privacy.noise=1.0"], "privacy.item_rows"),
    (["privacy.adaptive_threshold=2.0", "privacy.noise=1.0"], "privacy.adaptive_threshold"),
    (["parallel.mesh=[1, 1]", "privacy.noise=1.0"], "parallel.mesh"),
    (['train.loss="sampled_softmax"', 'train.negative_sampler="popularity"',
      "train.exclude_seen_negatives=false", "privacy.noise=1.0"], "train.negative_sampler"),
    (["privacy.clip=2.0"], "privacy.clip"),  # no noise: nothing is clipped
])
def test_settings_a_private_sequential_run_cannot_honour_are_refused(extra, key):
    config = load_config(None, _sets("x.csv", *extra))
    with pytest.raises(ConfigError, match=f"^key {key}"):
        check_sequential_config(config)


def test_privacy_keys_without_a_level_are_refused():
    sets = [value for value in _sets("x.csv", "privacy.noise=1.0")
            if not value.startswith("privacy.level")]
    with pytest.raises(ConfigError, match="^key privacy.noise"):
        check_sequential_config(load_config(None, sets))


def test_a_slate_log_is_refused():
    config = load_config("configs/sim_sasrec_naive.toml",
                         ['privacy.level="user"', "privacy.noise=1.0"])
    with pytest.raises(ConfigError, match="^key privacy.level: 'user' on a slate log"):
        check_sequential_config(config)


@pytest.mark.slow  # make test-all (see Makefile)
def test_a_private_run_resumed_after_an_interruption_ends_identical(walks, monkeypatch):
    """The private state (its optimiser's state made for the private step's params) goes
    through the same checkpoints: interrupted at epoch 2 and resumed, the run ends as the
    uninterrupted one, its accounting included."""
    from causalrec_jax.tasks import sequential as sequence_run

    folder, path = walks
    extra = ("privacy.noise=1.0", "train.epochs=6", "train.patience=6",
             "train.checkpoint_every=1")
    full = _train(path, folder / "full", *extra)
    original_fit = sequence_run.fit

    def interrupted_fit(**kwargs):
        log_fn = kwargs["log_fn"]

        def stop(record):
            log_fn(record)
            if record["epoch"] == 2:
                raise KeyboardInterrupt

        return original_fit(**{**kwargs, "log_fn": stop})

    monkeypatch.setattr(sequence_run, "fit", interrupted_fit)
    args = ["train", "--quiet", "--out", str(folder / "part")]
    for value in _sets(path, *extra):
        args += ["--set", value]
    assert main(args) == 130
    monkeypatch.setattr(sequence_run, "fit", original_fit)
    assert main([*args, "--resume"]) == 0
    resumed = json.loads((folder / "part" / "metrics.json").read_text())
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]
    assert resumed["privacy"]["steps"] == full["privacy"]["steps"] == 12
    assert resumed["privacy"]["epsilon"] == full["privacy"]["epsilon"]
