"""Private runs through the one core: the run folder's `"privacy"` object, its epsilon from
the accountant for the steps run, determinism, and one-line refusals naming the key."""

import json

import jax
import numpy as np
import pytest

from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.errors import ConfigError
from causalrec_jax.privacy import accounting
from causalrec_jax.runs import train as run_train

TINY = [
    "sim.n_users=60", "sim.n_items=40", "sim.mean_exposure=0.3", 'data.split="random"',
    "train.epochs=3", "train.batch_size=16", 'train.loss="bpr"', "train.learning_rate=0.05",
    "model.embedding_dim=8", "eval.ks=[5]", "eval.positive_threshold=0",
    'eval.metrics=["ndcg", "recall"]', 'train.early_stopping_metric="ndcg@5"',
    "train.patience=10", 'privacy.level="user"', "privacy.max_examples_per_user=8",
]
KEYS = {"epsilon", "delta", "noise_multiplier", "clip_norm", "level", "accountant", "steps",
        "sampling_rate"}


def config(*extra):
    return load_config(None, TINY + list(extra))


@pytest.fixture(scope="module")
def private_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("private") / "run"
    metrics = run_train.train_run(config("privacy.target_epsilon=4.0"), out, quiet=True)
    return metrics, out


def test_a_private_run_reports_its_accounted_budget(private_run):
    metrics, out = private_run
    written = json.loads((out / "metrics.json").read_text())
    privacy = written["privacy"]
    assert KEYS <= set(privacy)
    assert privacy["level"] == "user" and privacy["accountant"] == "pld"
    assert privacy["delta"] == pytest.approx(1 / 60)
    assert privacy["sampling_rate"] == pytest.approx(16 / 60)
    assert privacy["steps"] == 3 * 4  # ceil(60 / 16) steps an epoch, 3 epochs
    assert privacy["epsilon"] <= 4.0 * 1.001
    assert privacy["epsilon"] == pytest.approx(accounting.epsilon(
        privacy["noise_multiplier"], privacy["sampling_rate"], privacy["steps"],
        privacy["delta"]))
    assert privacy["noise_multiplier"] > 0.5 and privacy["truncation_delta"] < 1e-9
    assert 0 <= written["test"]["ndcg@5"] <= 1


@pytest.mark.slow  # make test-all (15 s), with the 8-device runs of tests/parallel
def test_a_private_run_on_a_one_device_mesh_trains_the_unsharded_model(private_run, tmp_path):
    """The private epoch compiled over a `parallel.mesh` (here 1 x 1, what one device holds;
    `tests/parallel/test_sharded.py` runs 8 virtual devices): the model and the accounting of
    the run without a mesh."""
    metrics, out = private_run
    meshed = run_train.train_run(config("privacy.target_epsilon=4.0", "parallel.mesh=[1,1]"),
                                 tmp_path / "run", quiet=True)
    assert meshed["privacy"] == metrics["privacy"]
    assert meshed["test"] == pytest.approx(metrics["test"], abs=1e-6)
    from causalrec_jax.runs.load import load_run

    for a, b in zip(jax.tree.leaves(load_run(out).parts.params),
                    jax.tree.leaves(load_run(tmp_path / "run").parts.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)


@pytest.mark.slow  # make test-all; a private SASRec run with it stays in make test
def test_a_moving_average_is_post_processing_of_the_same_private_training(
        private_run, tmp_path, capsys):
    """`train.ema_decay` on a private run: the same steps (the logged losses, the budget),
    a different model saved, the one `causalrec evaluate` scores."""
    metrics, out = private_run
    averaged = run_train.train_run(config("privacy.target_epsilon=4.0", "train.ema_decay=0.8"),
                                   tmp_path / "run", quiet=True)
    assert averaged["privacy"] == metrics["privacy"]

    def losses(folder):
        return [json.loads(line)["loss"]
                for line in (folder / "log.jsonl").read_text().splitlines()]

    # (the same arithmetic, fused into another program: equal to the last bits)
    assert losses(tmp_path / "run") == pytest.approx(losses(out), rel=1e-5)
    from causalrec_jax.runs.load import load_run

    assert not all(np.allclose(a, b) for a, b in zip(
        jax.tree.leaves(load_run(out).parts.params),
        jax.tree.leaves(load_run(tmp_path / "run").parts.params), strict=True))
    assert main(["evaluate", "--run", str(tmp_path / "run")]) == 0
    assert f"ndcg@5 {averaged['test']['ndcg@5']:.4f}" in capsys.readouterr().out


def test_example_level_with_a_fixed_noise(tmp_path):
    metrics = run_train.train_run(config('privacy.level="example"', "privacy.noise=1.5",
                                         "privacy.max_examples_per_user=64",
                                         'privacy.accountant="rdp"',
                                         'privacy.user_rows="noised"',
                                         "train.exclude_seen_negatives=false"),
                                  tmp_path / "example", quiet=True)
    privacy = metrics["privacy"]
    assert privacy["level"] == "example" and privacy["noise_multiplier"] == 1.5
    assert privacy["epsilon"] == pytest.approx(accounting.epsilon(
        1.5, privacy["sampling_rate"], privacy["steps"], privacy["delta"], "rdp"))
    assert privacy["max_examples_per_user"] is None


@pytest.mark.parametrize("extra,key", [
    (["privacy.clip=0"], "privacy.clip"),
    (["privacy.delta=0.5"], "privacy.delta"),
    (['model.name="lightgcn"'], "model.name"),
    (['train.loss="softmax"'], "train.loss"),
    (["privacy.target_epsilon=0.0001", "privacy.delta=0.00001", "train.epochs=200",
      "train.batch_size=60"],
     "privacy.target_epsilon"),
    (['train.data_placement="host"'], "train.data_placement"),
    (["privacy.noise=1.0", 'privacy.level="example"', "privacy.max_examples_per_user=64"],
     "privacy.user_rows"),
    (["privacy.noise=1.0", 'privacy.level="example"', "privacy.max_examples_per_user=64",
      'privacy.user_rows="noised"'], "train.exclude_seen_negatives"),
    (['privacy.mechanism="fedavg"', 'privacy.user_rows="noised"', "privacy.noise=1.0"],
     "privacy.user_rows"),
    (['eval.protocol="candidates"', 'eval.metrics=["ndcg", "averagepopularity"]'],
     "eval.metrics"),
])
def test_bad_privacy_settings_are_one_line_errors_naming_the_key(tmp_path, capsys, extra, key):
    out = tmp_path / "refused"
    args = ["train", "--quiet", "--out", str(out)]
    for setting in TINY + extra:
        args += ["--set", setting]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert key in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_privacy_keys_without_a_level_and_causal_methods_are_refused():
    with pytest.raises(ConfigError, match="privacy.clip"):
        run_train.train_run(load_config(None, TINY[:-2] + ["privacy.clip=2.0"]), "unused",
                            quiet=True)
    with pytest.raises(ConfigError, match="causal.method"):
        run_train.train_run(config('causal.method="ips"', 'causal.propensity="true"'), "unused",
                            quiet=True)


@pytest.mark.slow  # make test-all (see Makefile)
def test_a_resumed_private_run_ends_identical_and_accounts_every_step(tmp_path, monkeypatch):
    from causalrec_jax.runs import load as run_load
    from causalrec_jax.tasks import ordinary
    from causalrec_jax.train import loop

    settings = ("train.epochs=4", "train.seeds=2", "train.checkpoint_every=2",
                "privacy.noise=1.0")
    full = run_train.train_run(config(*settings), tmp_path / "full", quiet=True)
    original_fit = loop.fit

    def interrupted_fit(**kwargs):
        log = kwargs["log_fn"]

        def stop_after_epoch_2(record):
            log(record)
            if record["epoch"] == 2:
                raise KeyboardInterrupt

        kwargs["log_fn"] = stop_after_epoch_2
        return original_fit(**kwargs)

    monkeypatch.setattr(ordinary, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        run_train.train_run(config(*settings), tmp_path / "part", quiet=True)
    monkeypatch.setattr(ordinary, "fit", original_fit)
    assert main(["train", "--resume", "--out", str(tmp_path / "part"), "--quiet"]) == 0
    resumed = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert resumed["test"] == full["test"]  # and so a private run is deterministic
    assert resumed["privacy"]["steps"] == full["privacy"]["steps"] == 4 * 4
    assert resumed["privacy"]["epsilon"] == pytest.approx(full["privacy"]["epsilon"])
    for a, b in zip(jax.tree.leaves(run_load.load_run(tmp_path / "full").parts.params),
                    jax.tree.leaves(run_load.load_run(tmp_path / "part").parts.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
