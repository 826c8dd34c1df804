"""Experiment tracking (`runs/track.py`): a run folder exported to TensorBoard and MLflow, read
back from the event files and the MLflow store and compared with `log.jsonl`, `metrics.json`
and `config.toml`; exporting again duplicates nothing; a diverged run is exported as FAILED; a
tracker's failure leaves the run whole; a missing extra is refused before anything trains."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from causalrec_jax import errors
from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.runs import folder as run_folder
from causalrec_jax.runs import track
from causalrec_jax.runs import train as run_train
from causalrec_jax.train.loop import TrainingDivergedError
from causalrec_jax.tune.search import tune
from causalrec_jax.tune.space import space_from_dict

SEEDS = [3, 4]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EXPERIMENT = "tests"


def _lines(folder: Path) -> list[dict]:
    return [json.loads(text) for text in (folder / "log.jsonl").read_text().splitlines()]


def _body(config, folder: Path) -> dict:
    """A run kind's body, without training: the files every kind writes (2 seeds, 3 epochs,
    validation every epoch), a plot, and the large folders MLflow does not receive."""
    rng = np.random.default_rng(0)
    run_folder.append_log(folder / "log.jsonl", [
        run_folder.log_line(seed, epoch, float(rng.uniform()), 0.25,
                            valid={"ndcg@5": float(rng.uniform()), "auc": float("nan")})
        for epoch in range(3) for seed in SEEDS])
    per_seed = [{"seed": seed, "best_epoch": best, "valid": {},
                 "test": {"ndcg@5": float(rng.uniform()), "auc": None, "n_users": 50}}
                for seed, best in zip(SEEDS, (1, 2), strict=True)]
    metrics = {"test": {"ndcg@5": 0.3, "auc": None}, "test_std": {"ndcg@5": 0.01},
               "test_ci95": {"ndcg@5": [0.2, 0.4]}, "per_seed": per_seed, "seeds": SEEDS}
    (folder / "plots").mkdir()
    (folder / "plots" / "learning_curve.png").write_bytes(b"\x89PNG")
    for large in ("checkpoints", "model"):
        (folder / large).mkdir()
        (folder / large / "parameters").write_bytes(b"0" * 1000)
    (folder / "data.npz").write_bytes(b"0" * 1000)
    run_folder.write_metrics(folder, metrics)
    return metrics


@pytest.fixture
def tracked(tmp_path, monkeypatch):
    """A run folder written through `write_run` with `run.tensorboard = true` and
    `run.mlflow` a relative folder (stored absolute): (run folder, tracking URI)."""
    monkeypatch.chdir(tmp_path)  # run.mlflow = "mlruns" is relative to the current directory
    config = load_config(None, ["run.tensorboard=true", 'run.mlflow="mlruns"',
                                f'run.mlflow_experiment="{EXPERIMENT}"'])
    run_folder.write_run(tmp_path / "tiny", config, _body, kind="a test run")
    return tmp_path / "tiny", (tmp_path / "mlruns").as_uri()


def test_the_trackers_hold_the_folders_log_metrics_config_and_files(tracked, check_tracked,
                                                                     tensorboard_scalars,
                                                                     mlflow_client):
    folder, uri = tracked
    check_tracked(folder, uri, EXPERIMENT)
    # by hand, some values check_tracked derives
    lines = _lines(folder)
    events = tensorboard_scalars(folder / "tensorboard")
    assert set(events) == {"mean", "seed3", "seed4"}
    assert events["seed4"]["loss"] == [(epoch, np.float32(lines[2 * epoch + 1]["loss"]))
                                       for epoch in range(3)]
    assert "valid/auc" not in events["seed4"]  # NaN (null) in every line: no point
    assert events["mean"]["test/ndcg_at_5"] == [(0, np.float32(0.3))]
    assert events["mean"]["test_std/ndcg_at_5"] == [(0, np.float32(0.01))]
    client = mlflow_client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.run_name == "tiny"
    assert run.data.params["train.epochs"] == "20" and run.data.params["eval.ks"] == "[5, 10, 20]"
    assert run.data.params["run.mlflow"] == uri  # the folder, stored as its absolute URI
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id,
                                                                 "seed3/loss")] == [
        (line["epoch"], line["loss"]) for line in lines if line["seed"] == 3]
    assert run.data.metrics["seed4/test/ndcg_at_5"] == json.loads(
        (folder / "metrics.json").read_text())["per_seed"][1]["test"]["ndcg@5"]
    assert [item.path for item in client.list_artifacts(run.info.run_id, "plots")] == [
        "plots/learning_curve.png"]
    assert {item.path for item in client.list_artifacts(run.info.run_id)} == {
        "config.toml", "log.jsonl", "metrics.json", "plots"}


def test_exporting_again_writes_nothing_twice_and_a_changed_folder_is_refused(
        tracked, tmp_path, capsys, tensorboard_scalars, mlflow_client):
    folder, _ = tracked
    uri = (tmp_path / "store").as_uri()
    before = tensorboard_scalars(folder / "tensorboard")
    for _ in range(2):
        assert main(["track", "--run", str(folder), "--tensorboard", "--mlflow", uri]) == 0
    out = capsys.readouterr().out
    assert "(new) in experiment 'tests'" in out and "(reused) in experiment 'tests'" in out
    assert tensorboard_scalars(folder / "tensorboard") == before
    assert all(len(list(group.iterdir())) == 1 for group in (folder / "tensorboard").iterdir())
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "seed3/loss")) == 3
    # A log that no longer says what the MLflow run holds: refused in one line, then replaced.
    lines = _lines(folder)
    lines[0]["loss"] += 1.0
    (folder / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["track", "--run", str(folder), "--mlflow", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"MLflow run {run.info.run_id}" in err and "--replace" in err
    assert f"metric seed3/loss = {lines[0]['loss'] - 1.0!r} at step 0" in err
    assert main(["track", "--run", str(folder), "--mlflow", uri, "--replace"]) == 0
    assert "(replaced)" in capsys.readouterr().out
    (new,) = client.search_runs([experiment.experiment_id])
    assert new.info.run_id != run.info.run_id
    assert client.get_run(run.info.run_id).info.lifecycle_stage == "deleted"
    assert client.get_metric_history(new.info.run_id, "seed3/loss")[0].value == lines[0]["loss"]


def _config(tmp_path: Path, *overrides: str):
    return load_config(None, ["run.tensorboard=true", f'run.mlflow="{tmp_path / "mlruns"}"',
                              *overrides])


def test_a_diverged_run_is_exported_as_failed_with_the_epochs_it_logged(
        tmp_path, tensorboard_scalars, mlflow_client):
    out = tmp_path / "diverged"

    def body(config, folder):
        run_folder.append_log(folder / "log.jsonl", [
            run_folder.log_line(0, 0, 0.5, 0.1, valid={"ndcg@10": 0.2}),
            run_folder.log_line(0, 1, float("nan"), 0.1, valid={"ndcg@10": 0.1})])
        raise TrainingDivergedError("non-finite loss at epoch 1")

    with pytest.raises(TrainingDivergedError):
        run_folder.write_run(out, _config(tmp_path), body, kind="a test run")
    # the NaN loss (null in log.jsonl) is no point of the curve
    assert tensorboard_scalars(out / "tensorboard")["seed0"] == {
        "loss": [(0, 0.5)], "valid/ndcg_at_10": [(0, np.float32(0.2)), (1, np.float32(0.1))]}
    client = mlflow_client((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("causalrec").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["causalrec.complete"] == "false"
    assert run.data.metrics == {"seed0/loss": 0.5, "seed0/valid/ndcg_at_10": 0.1, "loss": 0.5,
                                "valid/ndcg_at_10": 0.1}


def test_a_tracker_failure_is_a_warning_and_the_run_stays_whole(tmp_path, monkeypatch):
    def failing(*args, **kwargs):
        raise OSError("the store is read-only")

    monkeypatch.setattr(track, "export_mlflow", failing)

    def body(config, folder):
        run_folder.append_log(folder / "log.jsonl", [run_folder.log_line(0, 0, 0.5, 0.1)])
        run_folder.write_metrics(folder, {"test": {"auc": 0.7}})
        return {"test": {"auc": 0.7}}

    out = tmp_path / "run"
    with pytest.warns(errors.TrackingWarning) as caught:
        metrics = run_folder.write_run(out, _config(tmp_path), body, kind="a test run",
                                       resumable=False)
    assert metrics == {"test": {"auc": 0.7}}
    assert {path.name for path in out.iterdir()} == {"config.toml", "log.jsonl", "metrics.json",
                                                     "tensorboard"}
    (warning,) = caught
    assert str(warning.message) == (
        f"{out}: the run is written, but its export to MLflow failed (OSError: the store is "
        f"read-only); export it again with: causalrec track --run {out} --mlflow")


@pytest.mark.parametrize("tracker, key", [("tensorboardX", "run.tensorboard=true"),
                                          ("mlflow", "run.mlflow=true")])
def test_a_missing_extra_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys,
                                                         tracker, key):
    monkeypatch.setitem(sys.modules, tracker, None)  # the import fails
    extra = "tensorboard" if tracker == "tensorboardX" else "mlflow"
    config = load_config(None, [key])
    out = tmp_path / "run"
    with pytest.raises(errors.ConfigError, match=rf"^{key.replace('=', ' = ')} needs the "
                       rf"{extra} extra: pip install 'causalrec_jax\[{extra}\]'$"):
        run_train.train_run(config, out)
    space = space_from_dict({"train": {"learning_rate": [0.01, 0.03]}}, "space.toml")
    with pytest.raises(errors.ConfigError, match=f"needs the {extra} extra"):
        tune(config, space, tmp_path / "search")
    assert not out.exists() and not (tmp_path / "search").exists()
    # and on the command line: one line, status 2
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.toml").write_text("")
    (tmp_path / "old" / "log.jsonl").write_text("")
    flag = "--tensorboard" if extra == "tensorboard" else "--mlflow"
    assert main(["track", "--run", str(tmp_path / "old"), flag]) == 2
    assert capsys.readouterr().err.strip() == (
        f"causalrec track: error: {flag} needs the {extra} extra: pip install "
        f"'causalrec_jax[{extra}]'")


def test_the_tracking_uri_of_a_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert track.tracking_uri(True) == (tmp_path / "mlruns").as_uri()  # MLflow's old default
    assert track.tracking_uri("stores/a") == (tmp_path / "stores" / "a").as_uri()
    for uri in ("sqlite:///mlflow.db", "http://localhost:5000", "file:///x/mlruns"):
        assert track.tracking_uri(uri) == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert track.tracking_uri(True) == "sqlite:///elsewhere.db"
    assert track.tracker_name("ips_ndcg@10") == "ips_ndcg_at_10"


def test_every_run_kind_and_resume_accept_the_tracking_keys(tmp_path, monkeypatch):
    keys = ["run.tensorboard=true", 'run.mlflow="sqlite:///x.db"', 'run.mlflow_experiment="e"']
    reached = []
    monkeypatch.setattr(run_train, "write_run", lambda out, config, *a, **k: reached.append(
        k["kind"]) or {})
    run_train.train_run(load_config(None, keys), tmp_path / "a")
    run_train.sequence_run(load_config(None, [*keys, 'model.name="sasrec"',
                                              'data.split="leave_one_out"',
                                              'train.loss="full_softmax"']), tmp_path / "b")
    run_train.uplift_run(load_config(CONFIGS / "sim_uplift.toml", keys), tmp_path / "c")
    run_train.ope_run(load_config(CONFIGS / "sim_ope.toml", keys), tmp_path / "d")
    assert len(reached) == 4
    stored, resumed = load_config(None), load_config(None, keys)
    assert run_folder.check_resumable(stored, resumed, tmp_path) == {}
    for bad in ('run.mlflow=""', 'run.mlflow_experiment=""'):
        with pytest.raises(errors.ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])


def test_run_scalars_name_folds_and_leave_nulls_out(tmp_path):
    folder = tmp_path / "cv"
    folder.mkdir()
    (folder / "config.toml").write_text("[run]\nseed = 0\n")
    run_folder.append_log(folder / "log.jsonl", [
        run_folder.log_line(0, 0, 1.0, 2.0, fold=0, valid={"auc": 0.5, "mse": float("nan")}),
        run_folder.log_line(0, 0, 3.0, 2.0, fold=1, valid={"auc": 0.7, "mse": 1.0}),
        run_folder.log_line(0, 1, 2.0, 2.0, fold=1, valid={"auc": 0.9, "mse": 2.0})])
    (folder / "metrics.json").write_text(json.dumps({
        "test": {"auc": 0.6, "n/a": None}, "test_ci95": {"auc": [0.5, 0.7]}, "valid": {},
        "per_seed": [{"seed": 0, "fold": 1, "best_epoch": 1, "test": {"auc": 0.65}}]}))
    record = track.read_run(folder)
    scalars = {group: {tag: [(step, value) for step, value, _ in points]
                       for tag, points in tags.items()}
               for group, tags in track.run_scalars(record).items()}
    assert scalars == {
        "fold0/seed0": {"loss": [(0, 1.0)], "valid/auc": [(0, 0.5)]},
        "fold1/seed0": {"loss": [(0, 3.0), (1, 2.0)], "valid/auc": [(0, 0.7), (1, 0.9)],
                        "valid/mse": [(0, 1.0), (1, 2.0)], "test/auc": [(1, 0.65)]},
        "mean": {"loss": [(0, 2.0), (1, 2.0)], "valid/auc": [(0, 0.6), (1, 0.9)],
                 "valid/mse": [(0, 1.0), (1, 2.0)], "test/auc": [(0, 0.6)]}}
    # wall times: config.toml's time plus each member's seconds so far
    fold1 = track.run_scalars(record)["fold1/seed0"]["loss"]
    assert [walltime - record.started for _, _, walltime in fold1] == pytest.approx([2, 4])


def test_track_says_what_is_not_a_run_and_when_there_is_nothing_to_export(tmp_path, capsys):
    search = tmp_path / "search"
    (search / "best").mkdir(parents=True)
    for path in (search / "config.toml", search / "best" / "config.toml"):
        path.write_text("")
    assert main(["track", "--run", str(search), "--tensorboard"]) == 2
    assert f"export its best run, {search.resolve() / 'best'}" in capsys.readouterr().err
    (search / "best" / "log.jsonl").write_text("")
    assert main(["track", "--run", str(search / "best")]) == 2
    assert "nothing to export: pass --tensorboard and/or --mlflow" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a folder with an empty log exports without noise
        assert main(["track", "--run", str(search / "best"), "--tensorboard"]) == 0
