"""Whole runs: the run folder contract, resume equivalence, seeds, folds, the CLI end to end."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from causalrec_jax import errors, xla_cpu
from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.errors import ConfigError
from causalrec_jax.runs import folder as run_folder
from causalrec_jax.runs import load as run_load
from causalrec_jax.runs import train as run_train
from causalrec_jax.tasks import ordinary
from causalrec_jax.train import checkpoint as checkpoints
from causalrec_jax.train import loop

ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "sim.n_users=60",
    "sim.n_items=40",
    "sim.mean_exposure=0.3",
    'data.split="random"',
    "train.epochs=4",
    "train.batch_size=64",
    'train.loss="bpr"',
    "train.learning_rate=0.05",
    "train.checkpoint_every=2",
    "model.embedding_dim=8",
    "eval.ks=[5]",
    "eval.positive_threshold=0",
    'eval.metrics=["ndcg", "recall", "hit"]',
    'train.early_stopping_metric="ndcg@5"',
    "train.patience=10",
]


def tiny_config(*extra):
    return load_config(None, TINY + list(extra))


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """`run(*extra)`: `(metrics, folder)` of `train_run(tiny_config(*extra))`, trained once for
    the module (tests that read the same run share it; none of them changes its folder)."""
    root = tmp_path_factory.mktemp("tiny")
    done = {}

    def run(*extra):
        if extra not in done:
            out = root / f"run{len(done)}"
            done[extra] = run_train.train_run(tiny_config(*extra), out, quiet=True), out
        return done[extra]

    return run


def test_run_folder_contract(tiny_runs):
    metrics, out = tiny_runs("train.seeds=2")
    for name in (
        "config.toml",
        "metrics.json",
        "log.jsonl",
        "data.npz",
        "plots/learning_curve.png",
    ):
        assert (out / name).exists(), name
    assert checkpoints.latest_epoch(out / "checkpoints") == 3
    written = json.loads((out / "metrics.json").read_text())
    assert written["seeds"] == [0, 1]
    assert set(written["test"]) >= {"ndcg@5", "recall@5", "hit@5"}
    assert len(written["per_seed"]) == 2
    # Mean, sample std and the 95% Student-t interval over the 2 seeds, recomputed by hand.
    values = [entry["test"]["ndcg@5"] for entry in written["per_seed"]]
    mean, std = (values[0] + values[1]) / 2, abs(values[0] - values[1]) / 2**0.5
    half = 12.706204736 * std / 2**0.5  # t(0.975, df = 1)
    assert written["test"]["ndcg@5"] == pytest.approx(mean, abs=1e-9)
    assert written["test_std"]["ndcg@5"] == pytest.approx(std, abs=1e-9)
    assert written["test_ci95"]["ndcg@5"] == pytest.approx([mean - half, mean + half], abs=1e-6)
    assert values[0] != values[1]  # two seeds, two models
    assert written["data"]["n_users"] == 60 and written["data"]["n_train"] > 0
    assert {"train_seconds", "epoch_seconds", "eval_seconds"} <= set(written["timing"])
    assert "jax" in written["versions"]
    # the CPU Threefry lowering the run compiled with (CAUSALREC_UNROLLED_THREEFRY, xla_cpu)
    assert written["versions"]["threefry_cpu"] == xla_cpu.threefry_cpu() in ("rolled",
                                                                             "unrolled")
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # one line per epoch and seed, each with that seed's own loss and validation
    assert [(line["epoch"], line["seed"]) for line in lines] == [
        (epoch, seed) for epoch in range(4) for seed in (0, 1)]
    assert all(set(line) == {"seed", "epoch", "loss", "seconds", "valid"} for line in lines)
    assert lines[0]["loss"] != lines[1]["loss"]
    for entry in written["per_seed"]:
        [best] = [line for line in lines
                  if (line["seed"], line["epoch"]) == (entry["seed"], entry["best_epoch"])]
        assert best["valid"]["ndcg@5"] == pytest.approx(entry["valid"]["ndcg@5"])
    assert metrics["test"] == pytest.approx(written["test"])
    with pytest.raises(errors.RunError, match="already holds a run"):
        run_train.train_run(tiny_config(), out, quiet=True)
    # a finished run is not resumed: its record stays as it was
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    with pytest.raises(errors.RunError, match="finished .* nothing to resume"):
        run_train.train_run(tiny_config("train.seeds=2"), out, quiet=True, resume=True)
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before


def test_trained_model_beats_random_on_the_simulator(tmp_path):
    metrics = run_train.train_run(tiny_config("train.epochs=15"), tmp_path / "r", quiet=True)
    # Random ranking of ~40 items at K=5 gives hit@5 well below 0.5 for users with 1-3
    # test positives; a trained BPR-MF on this popularity-confounded world beats it clearly.
    assert metrics["test"]["hit@5"] > 0.4


@pytest.mark.parametrize("extra", [  # with a moving average, checkpointed (make test-all)
    (), pytest.param(("train.ema_decay=0.8",), marks=pytest.mark.slow)])
def test_resume_ends_identical_to_an_uninterrupted_run(tmp_path, monkeypatch, extra):
    config = tiny_config("train.epochs=6", "train.seeds=2", *extra)
    full = run_train.train_run(config, tmp_path / "full", quiet=True)

    original_fit = loop.fit

    def interrupted_fit(**kwargs):
        def stop_after_epoch_2(record):
            kwargs_log(record)
            if record["epoch"] == 2:
                raise KeyboardInterrupt

        kwargs_log = kwargs["log_fn"]
        kwargs["log_fn"] = stop_after_epoch_2
        return original_fit(**kwargs)

    monkeypatch.setattr(ordinary, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        run_train.train_run(config, tmp_path / "part", quiet=True)
    monkeypatch.setattr(ordinary, "fit", original_fit)
    # The last checkpoint is at epoch 1 (every 2 epochs); resume replays epochs 2..5.
    assert checkpoints.latest_epoch(tmp_path / "part" / "checkpoints") == 1
    # As a user resumes: the run's own config.toml, no --config and no --set again.
    assert main(["train", "--resume", "--out", str(tmp_path / "part"), "--quiet"]) == 0
    resumed = json.loads((tmp_path / "part" / "metrics.json").read_text())
    logged = [json.loads(line)
              for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    # one line per epoch and seed; the replayed epoch 2 is not logged twice
    assert [(line["epoch"], line["seed"]) for line in logged] == [
        (epoch, seed) for epoch in range(6) for seed in (0, 1)]
    uninterrupted = [json.loads(line)
                     for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert _without_seconds(logged) == _without_seconds(uninterrupted)
    assert resumed["test"] == pytest.approx(full["test"], rel=0, abs=0)
    assert resumed["per_seed"] == json.loads((tmp_path / "full" / "metrics.json").read_text())[
        "per_seed"]
    full_params = run_load.load_run(tmp_path / "full").parts.params
    resumed_params = run_load.load_run(tmp_path / "part").parts.params
    for a, b in zip(jax.tree.leaves(full_params), jax.tree.leaves(resumed_params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _without_seconds(lines):
    return [{key: value for key, value in line.items() if key != "seconds"} for line in lines]


@pytest.mark.slow  # make test-all: the resume above, in the cross-validation pipeline
def test_a_resumed_cross_validation_run_logs_each_fold_epoch_once(tmp_path, monkeypatch):
    config = tiny_config("train.cv_folds=2", "train.seeds=2")
    run_train.train_run(config, tmp_path / "full", quiet=True)
    original_fit = loop.fit
    calls = []

    def interrupted_fit(**kwargs):
        calls.append(None)
        log_fn = kwargs["log_fn"]

        def stop_in_the_second_fold(record):
            log_fn(record)
            if len(calls) == 2 and record["epoch"] == 2:
                raise KeyboardInterrupt

        return original_fit(**{**kwargs, "log_fn": stop_in_the_second_fold})

    monkeypatch.setattr(ordinary, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        run_train.train_run(config, tmp_path / "part", quiet=True)
    monkeypatch.setattr(ordinary, "fit", original_fit)
    assert checkpoints.latest_epoch(tmp_path / "part" / "checkpoints" / "fold1") == 1
    resumed = run_train.train_run(config, tmp_path / "part", resume=True, quiet=True)
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert resumed["per_seed"] == full["per_seed"]
    logs = [[json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text()
             .splitlines()] for name in ("full", "part")]
    assert [(line["fold"], line["epoch"], line["seed"]) for line in logs[1]] == [
        (fold, epoch, seed) for fold in (0, 1) for epoch in range(4) for seed in (0, 1)]
    assert _without_seconds(logs[1]) == _without_seconds(logs[0])


def test_cross_validation_reports_folds(tmp_path):
    metrics = run_train.train_run(
        tiny_config("train.cv_folds=3", "train.epochs=2"), tmp_path / "cv", quiet=True
    )
    assert len(metrics["cv"]["folds"]) == 3
    values = [fold["ndcg@5"] for fold in metrics["cv"]["folds"]]
    assert metrics["cv"]["mean"]["ndcg@5"] == pytest.approx(np.mean(values))
    assert metrics["cv"]["std"]["ndcg@5"] == pytest.approx(np.std(values, ddof=1))


def test_cli_train_evaluate_recommend(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text("# tiny\n[sim]\nn_users = 60\nn_items = 40\n")
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "--out", str(out), "--quiet"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ndcg@5" in printed and str(out) in printed
    # The summary: every block the run wrote, each with its protocol; best epoch; time.
    written = json.loads((out / "metrics.json").read_text())
    assert {"valid", "test", "test_truth"} <= set(written)
    for block in ("valid", "test", "test_truth"):
        assert f"\n{block} (" in "\n" + printed
    assert "test_truth (against the simulator's ground truth (every cell)):" in printed
    assert f"best epoch {written['per_seed'][0]['best_epoch']} (per seed); 4 epochs run" \
        in printed
    assert "\ntime " in printed
    assert main(["evaluate", "--run", str(out)]) == 0
    evaluated = capsys.readouterr().out
    stored = written["test"]["ndcg@5"]
    assert f"ndcg@5 {stored:.4f}" in evaluated
    assert "test_truth (" in evaluated  # every block, not only `test`
    # --write replaces the blocks in metrics.json (here with the same numbers, changed first)
    changed = dict(written, test={**written["test"], "ndcg@5": -1.0})
    (out / "metrics.json").write_text(json.dumps(changed))
    assert main(["evaluate", "--run", str(out), "--write"]) == 0
    assert f"wrote {out / 'metrics.json'}" in capsys.readouterr().out
    rewritten = json.loads((out / "metrics.json").read_text())
    assert rewritten["test"]["ndcg@5"] == pytest.approx(stored)
    assert rewritten["per_seed"][0]["test"] == pytest.approx(written["per_seed"][0]["test"])
    assert rewritten["timing"] == written["timing"]
    assert main(["recommend", "--run", str(out), "--user", "7", "--k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    data = np.load(out / "data.npz")
    user = int(np.flatnonzero(data["user_ids"] == "7")[0])
    seen = set(data["item_ids"][data["train_item"][data["train_user"] == user]])
    recommended = [line.split()[1] for line in lines]
    assert not seen & set(recommended)
    scores = [float(line.split()[2]) for line in lines]
    assert scores == sorted(scores, reverse=True)
    assert main(["recommend", "--run", str(out), "--user", "no-such-user"]) == 2
    assert "unknown user id 'no-such-user'" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--set", 'model.name="nope"', "--out", str(tmp_path / "x")]) == 2
    assert "model.name" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--set",
                'data.format="coat"',
                "--set",
                'data.path="/no/such"',
                "--out",
                str(tmp_path / "y"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "/no/such" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path / "missing")]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_host_placement_gives_the_same_run(tmp_path, tiny_runs):
    device, _ = tiny_runs("train.seeds=2")
    host = run_train.train_run(
        tiny_config("train.seeds=2", 'train.data_placement="host"', "train.segment_batches=2"),
        tmp_path / "h",
        quiet=True,
    )
    assert host["test"] == pytest.approx(device["test"], rel=1e-5)


def test_population_members_equal_separate_runs():
    from causalrec_jax.data.loader import load_split

    config = tiny_config("train.epochs=3")
    split, _ = load_split(config.data, config.sim, seed=config.run.seed)
    rates, decays = [0.01, 0.05], [0.0, 1e-3]
    members = [
        ordinary.Member(seed=0, hparams={"learning_rate": lr, "weight_decay": wd})
        for lr in rates
        for wd in decays
    ]
    together = ordinary.train_split(config, split, members=members, evaluate_test=False)
    for index, member in enumerate(members):
        alone_config = tiny_config(
            "train.epochs=3",
            f"train.learning_rate={member.hparams['learning_rate']}",
            f"train.weight_decay={member.hparams['weight_decay']}",
        )
        alone = ordinary.train_split(alone_config, split, evaluate_test=False)
        assert "test" not in together.per_seed[index]
        assert together.per_seed[index]["valid"] == pytest.approx(
            alone.per_seed[0]["valid"], rel=1e-5
        )
        assert together.per_seed[index]["best_epoch"] == alone.per_seed[0]["best_epoch"]


def ratings_config(*extra):
    return load_config(None, [
        "sim.n_users=300", "sim.n_items=100", "sim.mean_exposure=0.1",
        "sim.selection_strength=2.0", 'data.split="mar_slice"', "data.mar_train_fraction=0.0",
        "data.mar_valid_fraction=0.05", 'train.loss="mse"', "train.learning_rate=0.02",
        "train.epochs=25", "train.batch_size=512", "model.embedding_dim=8",
        'eval.protocol="candidates"', 'eval.metrics=["mse", "auc"]', "eval.ks=[5]",
        'train.early_stopping_metric="mse"', "train.patience=30",
    ] + list(extra))


@pytest.fixture(scope="module")
def weighted_runs(tmp_path_factory):
    """`run(method)`: `(metrics, folder)` of a `ratings_config` run of `causal.method` (with the
    true propensities clipped at 0.01; "naive" none), trained once for the module."""
    root = tmp_path_factory.mktemp("weighted")
    done = {}

    def run(method):
        if method not in done:
            extra = [] if method == "naive" else [
                f'causal.method="{method}"', 'causal.propensity="true"',
                "causal.propensity_clip=0.01"]
            done[method] = run_train.train_run(ratings_config(*extra), root / method,
                                               quiet=True), root / method
        return done[method]

    return run


def test_ips_training_with_true_propensities_removes_the_rating_inflation(weighted_runs):
    from causalrec_jax.models.base import make_scorers
    from causalrec_jax.sim.world import simulate_dataset

    (naive, naive_folder), (ips, ips_folder) = weighted_runs("naive"), weighted_runs("ips")
    report = ips["propensity"]
    assert report["method"] == "true" and report["n_clipped"] > 0
    assert 0 < report["effective_sample_size"] < ips["data"]["n_train"]
    assert "propensity" not in naive
    _, truth = simulate_dataset(ratings_config().sim)
    true_mean = float(np.asarray(truth.ratings).mean())

    def mean_prediction(run_dir):
        run = run_load.load_run(run_dir)
        scorers = make_scorers(run.parts.graphdef, run.parts.constants)
        params = jax.tree.map(lambda leaf: leaf[0], run.parts.params)
        return float(np.asarray(scorers.score_all(params, np.arange(300))).mean())

    # Self-selection inflates the observed ratings; the naive fit inherits it, IPS does not.
    naive_bias = mean_prediction(naive_folder) - true_mean
    ips_bias = mean_prediction(ips_folder) - true_mean
    # Measured: naive +0.91, IPS +0.39; MAR test mse 1.93 (naive) vs 1.34 (IPS).
    assert naive_bias > 0.5
    assert abs(ips_bias) < naive_bias / 2
    assert ips["test"]["mse"] < naive["test"]["mse"]


def test_ips_and_doubly_robust_training_beat_naive_on_the_true_ratings(weighted_runs):
    """Error against the true E[Y] on ALL cells of the world (metrics["test_truth"])."""
    truth_mse = {}
    for method in ("naive", "ips", "dr", "dr_jl", "mrdr", "dr_mse"):
        metrics, _ = weighted_runs(method)
        truth_mse[method] = metrics["test_truth"]["truth_mse"]
        assert metrics["per_seed"][0]["test_truth"]["truth_n_users"] == 300
        if method != "naive":
            assert metrics["propensity"]["n_clipped"] > 0
    # Measured: naive 1.59; ips 1.01, dr 1.10, dr_jl 1.00, mrdr 0.97, dr_mse 0.95.
    for method in ("ips", "dr", "dr_jl", "mrdr", "dr_mse"):
        assert truth_mse[method] < 0.8 * truth_mse["naive"], truth_mse


def test_a_targeted_dr_run_reports_every_cells_clip_and_beats_naive_on_the_truth(
        weighted_runs):
    """TDR reads the propensity of the cells it draws, not only the observed rows': the run
    reports the clip over every cell of the world beside the rows'."""
    naive, _ = weighted_runs("naive")
    tdr, _ = weighted_runs("tdr_jl")
    cells = tdr["propensity"]["every_cell"]
    assert cells["n"] == 300 * tdr["data"]["n_items"] > tdr["propensity"]["n"]
    assert cells["n_clipped"] > tdr["propensity"]["n_clipped"] > 0
    assert tdr["test_truth"]["truth_mse"] < 0.8 * naive["test_truth"]["truth_mse"]


def test_popularity_methods_train_and_serve_their_deconfounded_ranking(tmp_path):
    config = ratings_config('causal.method="macr"', 'train.loss="bce"', "causal.macr_c=0.5",
                            'train.early_stopping_metric="auc"', "train.epochs=5")
    metrics = run_train.train_run(config, tmp_path / "macr", quiet=True)
    assert 0.5 < metrics["test"]["auc"] <= 1.0
    run = run_load.load_run(tmp_path / "macr")
    assert set(run.extra) == {"user_logit", "item_logit"}
    top = run_load.recommend(run, run.user_ids[0], k=3)
    assert len(top) == 3
    # The served score is MACR's counterfactual one, (f - c) sigmoid(y_i) sigmoid(y_u).
    from causalrec_jax.models.base import make_scorers

    scorers = make_scorers(run.parts.graphdef, run.parts.constants)
    params = jax.tree.map(lambda leaf: leaf[0], run.parts.params)
    f = np.asarray(scorers.score_all(params, np.asarray([0])))[0]
    item = int(np.flatnonzero(run.item_ids == top[0][0])[0])
    sig = jax.nn.sigmoid
    expected = (f[item] - 0.5) * float(sig(run.extra["item_logit"][0, item])) * float(
        sig(run.extra["user_logit"][0, 0]))
    assert top[0][1] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    pda = run_train.train_run(ratings_config('causal.method="pda"', 'train.loss="bpr"',
                                          "causal.pda_inference_gamma=0.3",
                                          'train.early_stopping_metric="auc"', "train.epochs=5"),
                           tmp_path / "pda", quiet=True)
    assert 0.5 < pda["test"]["auc"] <= 1.0
    # PDA serves ELU'(f) m_i^0.3 with the training popularity it saved beside the model.
    run = run_load.load_run(tmp_path / "pda")
    log_popularity = np.asarray(run.extra["log_popularity"][0])
    assert np.exp(log_popularity[log_popularity > -20]).sum() == pytest.approx(1.0, rel=1e-4)
    (item_id, score), = run_load.recommend(run, run.user_ids[0], k=1)
    params = jax.tree.map(lambda leaf: leaf[0], run.parts.params)
    scorers = make_scorers(run.parts.graphdef, run.parts.constants)
    f = np.asarray(scorers.score_all(params, np.asarray([0])))[0]
    item = int(np.flatnonzero(run.item_ids == item_id)[0])
    expected = (float(jax.nn.elu(f[item])) + 1.0) * float(np.exp(0.3 * log_popularity[item]))
    assert score == pytest.approx(expected, rel=1e-4)


def test_weighted_methods_reject_what_they_cannot_do(tmp_path):
    with pytest.raises(ConfigError, match="causal.propensity"):
        run_train.train_run(ratings_config('causal.method="ips"'), tmp_path / "a", quiet=True)
    with pytest.raises(ConfigError, match="pointwise loss"):
        run_train.train_run(ratings_config('causal.method="snips"', 'causal.propensity="true"',
                                        'train.loss="bpr"'), tmp_path / "b", quiet=True)


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    for argv in (["--out", str(tmp_path / "notes")], ["--out", str(tmp_path / "none")],
                 ["--config", str(ROOT / "configs" / "quickstart.toml"), "--out",
                  str(tmp_path / "notes")]):
        assert main(["train", "--resume", "--quiet", *argv]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and "is not a run folder (no config.toml)" in error[0]
    assert main(["train", "--resume", "--quiet"]) == 2
    assert "needs --out" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["a.txt"]
    assert not (tmp_path / "none").exists()
    (tmp_path / "bytes").mkdir()  # a config.toml that is not text: one line, nothing written
    (tmp_path / "bytes" / "config.toml").write_bytes(b"\xff\xfe[model]")
    assert main(["train", "--resume", "--quiet", "--out", str(tmp_path / "bytes")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"--resume: cannot read {tmp_path / 'bytes' / 'config.toml'}: " \
        "'utf-8' codec can't decode" in error[0]
    assert [p.name for p in (tmp_path / "bytes").iterdir()] == ["config.toml"]


def test_resume_refuses_another_config_and_keeps_the_folder(tiny_runs, tmp_path):
    import shutil

    _, finished = tiny_runs()
    out = tmp_path / "stopped"
    shutil.copytree(finished, out)
    (out / "metrics.json").unlink()  # as a run stopped before it finished
    stored = (out / "config.toml").read_text()
    with pytest.raises(errors.RunError, match="cannot resume with train.seeds = 2"):
        run_train.train_run(tiny_config("train.seeds=2"), out, resume=True, quiet=True)
    assert (out / "config.toml").read_text() == stored


def test_bad_requests_on_runs(tmp_path, tiny_runs):
    _, out = tiny_runs()
    with pytest.raises(errors.RunError, match="--k 0"):
        run_load.recommend(run_load.load_run(out), "1", k=0)
    with pytest.raises(ConfigError, match="train.early_stopping_metric"):
        run_train.train_run(tiny_config('train.early_stopping_metric="ndcg"'), tmp_path / "m",
                         quiet=True)
    cv = tmp_path / "cv"
    run_train.train_run(tiny_config("train.cv_folds=2", "train.epochs=1"), cv, quiet=True)
    with pytest.raises(errors.RunError, match="cross-validation run"):
        run_load.evaluate_run(cv)
    lines = [json.loads(line) for line in (cv / "log.jsonl").read_text().splitlines()]
    assert [(line["fold"], line["epoch"], line["seed"]) for line in lines] == [(0, 0, 0),
                                                                             (1, 0, 0)]


def test_metrics_json_is_strict_json():
    assert run_folder.json_safe({"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32(2)}) \
        == {"a": None, "b": [1.0, None], "c": 2.0}


def test_literature_ndcg_scores_users_without_a_positive_as_one(tmp_path):
    config = ratings_config('eval.metrics=["ndcg", "auc"]', "train.epochs=3", "train.seeds=2",
                            'train.early_stopping_metric="auc"')
    metrics = run_train.train_run(config, tmp_path / "run", quiet=True)
    for entry in metrics["per_seed"]:
        test, literature = entry["test"], entry["test_literature"]
        n_scored, n_none = test["n_users_evaluated"], test["n_users_no_positive"]
        assert n_none > 0
        expected = (test["ndcg@5"] * n_scored + n_none) / (n_scored + n_none)
        assert literature["ndcg@5"] == pytest.approx(expected, rel=1e-5)
        assert "auc" not in literature  # only NDCG changes under the convention
    assert metrics["test_literature"]["ndcg@5"] > metrics["test"]["ndcg@5"]
    assert set(metrics["test_literature_std"]) == {"ndcg@5"}
    # The same positives ranked among all 100 items instead of the user's 16 MAR items.
    assert set(metrics["test_full"]) == {"ndcg@5"}
    assert metrics["test_full"]["ndcg@5"] < metrics["test"]["ndcg@5"]
    # `causalrec evaluate` recomputes every block the run wrote.
    again = run_load.evaluate_run(tmp_path / "run")
    for part in ("test", "test_literature", "test_full", "test_truth"):
        assert again[part] == pytest.approx(metrics[part], rel=1e-5), part


def test_a_refused_run_leaves_no_folder_behind(tmp_path):
    out = tmp_path / "refused"
    with pytest.raises(ConfigError, match="causal.propensity"):
        run_train.train_run(ratings_config('causal.method="dr_jl"'), out, quiet=True)
    assert not out.exists()
    # The same folder then takes a good run without --resume.
    run_train.train_run(ratings_config("train.epochs=1"), out, quiet=True)
    assert (out / "metrics.json").exists()
