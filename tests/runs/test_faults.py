"""Faults in a user's hands end in one line, never a traceback, and leave nothing half-written:
bad --out paths, damaged run folders, a corrupt checkpoint on --resume, Ctrl-C, a closed pipe."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from causalrec_jax.cli import main
from causalrec_jax.tasks import ordinary
from causalrec_jax.train import checkpoint as checkpoints
from causalrec_jax.train import loop

TINY = ["--set", "sim.n_users=40", "--set", "sim.n_items=30", "--set", "train.epochs=6",
        "--set", "train.checkpoint_every=2", "--set", "model.embedding_dim=4", "--quiet"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def fit_stopped_after_epoch_4(**kwargs):
    """`train.loop.fit` interrupted (Ctrl-C) once epoch 4 is logged; the last checkpoint is
    then epoch 3 (`train.checkpoint_every = 2`)."""
    log = kwargs["log_fn"]

    def stop_after_epoch_4(record):
        log(record)
        if record["epoch"] == 4:
            raise KeyboardInterrupt

    return loop.fit(**{**kwargs, "log_fn": stop_after_epoch_4})


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "good"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_an_out_below_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    assert main(["train", *TINY, "--out", str(tmp_path / "afile" / "run")]) == 2
    line = one_error_line(capsys)
    assert line.startswith("causalrec train: error: ") and "Not a directory" in line
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_damaged_run_folder_is_one_line(good_run, tmp_path, capsys):
    import shutil

    truncated = tmp_path / "truncated"
    shutil.copytree(good_run, truncated)
    data = (good_run / "data.npz").read_bytes()
    (truncated / "data.npz").write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    assert main(["recommend", "--run", str(truncated), "--user", "3"]) == 2
    assert "data.npz is unreadable" in one_error_line(capsys)
    empty = tmp_path / "empty"
    shutil.copytree(good_run, empty)
    shutil.rmtree(empty / "model")
    (empty / "model").mkdir()
    assert main(["evaluate", "--run", str(empty)]) == 2
    assert "model holds no readable model" in one_error_line(capsys)


def test_ctrl_c_before_any_checkpoint_says_how_to_start_again(tmp_path, monkeypatch,
                                                               capsys):
    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ordinary, "fit", interrupted)
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY]) == 130  # no --out: the default folder is named
    out = Path("runs") / "default"
    assert one_error_line(capsys) == (
        "causalrec train: interrupted; continue it (from the start: no checkpoint was written "
        f"yet) with: causalrec train --resume --out {out}")
    monkeypatch.setattr(ordinary, "fit", loop.fit)
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0
    assert (tmp_path / out / "metrics.json").is_file()


def test_a_corrupt_newest_checkpoint_resumes_from_the_one_before(good_run, tmp_path,
                                                                  monkeypatch, capsys):
    part = tmp_path / "part"
    monkeypatch.setattr(ordinary, "fit", fit_stopped_after_epoch_4)
    # Ctrl-C: one line saying how to continue; the checkpoints stay.
    assert main(["train", *TINY, "--out", str(part)]) == 130
    line = one_error_line(capsys)
    assert line == f"causalrec train: interrupted; continue it with: causalrec train --resume " \
                   f"--out {part}"
    monkeypatch.setattr(ordinary, "fit", loop.fit)
    assert checkpoints.latest_epoch(part / "checkpoints") == 3
    for path in (part / "checkpoints" / "3").rglob("*"):
        if path.is_file():
            path.write_text("garbage")
    assert main(["train", "--resume", "--out", str(part), "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("causalrec train: warning: ")
    assert "the checkpoint of epoch 3 is unreadable" in err[0]
    assert "resuming from the checkpoint of epoch 1" in err[0]
    assert (part / "checkpoints" / "corrupt-3").is_dir()
    # The same epoch damaged again after a later resume is set aside beside the first one.
    from causalrec_jax.train.checkpoint import set_aside_unreadable

    (part / "checkpoints" / "corrupt-5").mkdir()
    for path in (part / "checkpoints" / "5").rglob("*"):
        if path.is_file():
            path.write_text("garbage")
    with pytest.warns(UserWarning, match="set aside as corrupt-5-"):
        assert set_aside_unreadable(part / "checkpoints") == 3
    # Ends as the uninterrupted run ended, its log without a replayed epoch twice.
    full = json.loads((good_run / "metrics.json").read_text())
    resumed = json.loads((part / "metrics.json").read_text())
    assert resumed["per_seed"] == full["per_seed"]
    lines = [json.loads(text) for text in (part / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == list(range(6))


def test_a_checkpoint_with_damaged_arrays_is_set_aside_and_the_log_stays_whole(
        good_run, tmp_path, monkeypatch, capsys):
    part = tmp_path / "part"
    monkeypatch.setattr(ordinary, "fit", fit_stopped_after_epoch_4)
    assert main(["train", *TINY, "--out", str(part)]) == 130
    monkeypatch.setattr(ordinary, "fit", loop.fit)
    # The JSON part of epoch 3 reads; its arrays do not.
    damaged = [path for path in (part / "checkpoints" / "3" / "arrays").rglob("*")
               if path.is_file()]
    assert damaged
    for path in damaged:
        path.write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(part), "--quiet"]) == 0
    assert "the checkpoint of epoch 3 is unreadable" in capsys.readouterr().err
    full = json.loads((good_run / "metrics.json").read_text())
    assert json.loads((part / "metrics.json").read_text())["per_seed"] == full["per_seed"]
    lines = [json.loads(text) for text in (part / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == list(range(6))


def test_a_closed_pipe_ends_quietly(tmp_path):
    code = ("import sys; from causalrec_jax.cli import main; "
            "sys.exit(main(['data', '--format', 'simulator', '--set', 'sim.n_users=50', "
            "'--set', 'sim.n_items=20', '--json']))")
    reader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=tmp_path)
    reader.stdout.close()  # the reader is gone before anything is written (`| head -c 0`)
    stderr = reader.stderr.read().decode()
    reader.wait(timeout=120)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert reader.returncode == 1


def test_a_run_into_a_log_stream_prints_a_line_per_epoch(tmp_path, capsys):
    # stderr is not a terminal under pytest: no progress bar, a line per epoch instead
    assert main(["train", *[a for a in TINY if a != "--quiet"], "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    epochs = [line for line in err if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == [str(e) for e in range(6)]
    assert all(" loss " in line and line.endswith(" s") for line in epochs)
    assert main(["train", *TINY, "--out", str(tmp_path / "q")]) == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch")]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("causalrec ")


def test_a_diverged_causal_run_also_suggests_clipping_its_propensities(tmp_path, capsys):
    sets = [*TINY, "--set", 'train.loss="mse"', "--set", "train.learning_rate=1e30",
            "--set", 'causal.method="ips"', "--set", 'causal.propensity="true"']
    assert main(["train", *sets, "--out", str(tmp_path / "ips")]) == 2
    assert "or clip propensities (causal.propensity_clip)" in one_error_line(capsys)


def test_a_diverged_run_says_what_is_kept_and_resumes_with_a_lower_learning_rate(tmp_path,
                                                                               capsys):
    out = tmp_path / "diverged"
    sets = [*TINY, "--set", 'train.loss="mse"', "--set", "train.learning_rate=1e30"]
    assert main(["train", *sets, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert re.search(r"non-finite loss or gradient at epoch [01], batch", line)
    assert "no checkpoint was written before it" in line  # not "the last checkpoint is kept"
    assert "propensity" not in line  # a naive run has no propensities to clip
    assert checkpoints.latest_epoch(out / "checkpoints") is None
    # The lower learning rate the message suggests is accepted on --resume and recorded.
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--set",
                 "train.learning_rate=0.01"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumes"] == [{"from_checkpoint_epoch": None,
                                   "changes": {"train.learning_rate": [1e30, 0.01]}}]
    assert "learning_rate = 0.01" in (out / "config.toml").read_text()
    # The run has finished now: a further resume is refused, whatever it changes.
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--set",
                 "model.embedding_dim=8"]) == 2
    assert "finished (its metrics.json is written)" in one_error_line(capsys)


def test_a_resumed_learning_rate_is_the_one_used_from_the_checkpoint_on(good_run, tmp_path,
                                                                        monkeypatch):
    part = tmp_path / "part"
    monkeypatch.setattr(ordinary, "fit", fit_stopped_after_epoch_4)
    assert main(["train", *TINY, "--out", str(part)]) == 130
    monkeypatch.setattr(ordinary, "fit", loop.fit)
    assert main(["train", "--resume", "--out", str(part), "--quiet", "--set",
                 "train.learning_rate=1e-12"]) == 0
    lines = [json.loads(text) for text in (part / "log.jsonl").read_text().splitlines()]
    full = [json.loads(text) for text in (good_run / "log.jsonl").read_text().splitlines()]
    # Epochs 0..3 as the uninterrupted run (checkpoint at 3); from there a learning rate of
    # almost zero (1e-12) leaves the parameters where they were: the loss (all rows, one batch)
    # no longer moves.
    assert [line["loss"] for line in lines[:4]] == [line["loss"] for line in full[:4]]
    assert lines[4]["loss"] == pytest.approx(lines[5]["loss"], rel=1e-5)
    assert full[4]["loss"] != pytest.approx(full[5]["loss"], rel=1e-4)
    resumes = json.loads((part / "resumes.json").read_text())
    assert resumes == [{"from_checkpoint_epoch": 3,
                        "changes": {"train.learning_rate": [0.001, 1e-12]}}]


def fit_diverging_at_epoch(diverge_at: int):
    """`train.loop.fit` whose epoch `diverge_at` reports a non-finite batch (0) for every seed,
    as a NaN gradient would: the epochs before it are real."""

    def diverging_fit(**kwargs):
        run_epoch = kwargs["run_epoch"]

        def epoch_fn(states, data, keys, epoch):
            states, out = run_epoch(states, data, keys, epoch)
            if int(epoch) == diverge_at:
                out = {**out, "first_bad_batch": jnp.zeros_like(out["first_bad_batch"])}
            return states, out

        return loop.fit(**{**kwargs, "run_epoch": epoch_fn})

    return diverging_fit


def test_a_run_diverging_after_good_epochs_writes_their_best_model_and_metrics(
        good_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "late"
    monkeypatch.setattr(ordinary, "fit", fit_diverging_at_epoch(4))
    assert main(["train", *TINY, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "non-finite loss or gradient at epoch 4" in line
    assert "the checkpoint of epoch 3 is kept" in line
    # Without validation the model of the good epochs is the last one's (epoch 3).
    assert f"(best epoch 3) and its metrics are written to {out}" in line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["diverged"]["epoch"] == 4
    assert [entry["best_epoch"] for entry in metrics["per_seed"]] == [3]
    # The epochs before the divergence are those of the uninterrupted run (the same log), and
    # the model written is that of a run of 4 epochs: the same test metrics.
    log = [json.loads(text) for text in (out / "log.jsonl").read_text().splitlines()]
    full = [json.loads(text) for text in (good_run / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [0, 1, 2, 3]
    assert [entry["loss"] for entry in log] == [entry["loss"] for entry in full[:4]]
    monkeypatch.setattr(ordinary, "fit", loop.fit)
    four = tmp_path / "four"
    assert main(["train", *TINY, "--set", "train.epochs=4", "--out", str(four)]) == 0
    assert metrics["test"] == json.loads((four / "metrics.json").read_text())["test"]
    # The written model serves: evaluate reproduces the metrics, recommend answers.
    from causalrec_jax.runs.load import evaluate_run

    assert evaluate_run(out, "test")["test"] == pytest.approx(metrics["test"])
    import numpy as np

    data = np.load(out / "data.npz")
    user = str(data["user_ids"][data["train_user"][0]])
    assert main(["recommend", "--run", str(out), "--user", user, "--k", "3"]) == 0
    # Resumed with a lower learning rate, it trains on from epoch 3 and ends without "diverged".
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--set",
                 "train.learning_rate=0.0005"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert "diverged" not in resumed
    assert resumed["resumes"][0]["from_checkpoint_epoch"] == 3
    assert [entry["best_epoch"] for entry in resumed["per_seed"]] == [5]


def test_a_run_diverging_in_its_first_epoch_writes_no_model(tmp_path, capsys, monkeypatch):
    out = tmp_path / "early"
    monkeypatch.setattr(ordinary, "fit", fit_diverging_at_epoch(0))
    assert main(["train", *TINY, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "no checkpoint was written before it" in line and "best model" not in line
    assert not (out / "metrics.json").exists() and not (out / "model").exists()


def test_a_resume_refused_after_it_started_leaves_config_and_resumes_as_they_were(
        good_run, tmp_path, capsys, monkeypatch):
    import shutil

    from causalrec_jax.errors import DataFormatError
    from causalrec_jax.runs import train as run_train

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    (run / "metrics.json").unlink()  # as a run stopped before it finished (a finished one
    config_before = (run / "config.toml").read_text()  # is refused before anything starts)

    def unreadable(*args, **kwargs):
        raise DataFormatError("data.path: the data is gone")

    monkeypatch.setattr(run_train, "load_dataset", unreadable)
    assert main(["train", "--resume", "--out", str(run), "--quiet", "--set",
                 "train.learning_rate=0.0005"]) == 2
    assert "the data is gone" in one_error_line(capsys)
    assert (run / "config.toml").read_text() == config_before
    assert not (run / "resumes.json").exists()
    assert not [path.name for path in run.iterdir() if path.name.startswith(".")]


def test_resuming_a_finished_run_is_one_line_and_prints_nothing_else(good_run, tmp_path,
                                                                     capsys):
    import shutil

    run = tmp_path / "done"
    shutil.copytree(good_run, run)
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    assert main(["train", "--resume", "--out", str(run)]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""  # not even the config it would have resumed with
    [line] = printed.err.strip().splitlines()
    assert "finished (its metrics.json is written)" in line and str(run) in line
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before
