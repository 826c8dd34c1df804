"""Two processes on localhost joined by `jax.distributed` (`causalrec train --distributed`,
2 virtual CPU devices each, gloo between them) train the model one process trains, and the
first of them writes the run folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from causalrec_jax.runs.load import load_run

CONFIG = """
[data]
format = "simulator"
split = "random"
[sim]
n_users = 301
n_items = 203
mean_exposure = 0.1
[model]
name = "mf"
embedding_dim = 8
[train]
loss = "bpr"
epochs = 3
batch_size = 64
learning_rate = 0.05
seeds = 2
"""


def _finish(workers: list[subprocess.Popen], timeout: int = 600) -> list[tuple[int, str]]:
    """Each worker's (return code, stderr); every worker is killed if one hangs or the test
    fails while waiting (a deadlocked job leaves no stray processes)."""
    try:
        errors = [worker.communicate(timeout=timeout)[1] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    return [(worker.returncode, err) for worker, err in zip(workers, errors, strict=True)]


def _job_env(port: int, index: int) -> dict[str, str]:
    """The environment of process `index` of a 2-process localhost job, 2 virtual devices
    each."""
    return {"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(index)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _train(config: Path, out: Path, *extra: str, env: dict | None = None):
    return subprocess.Popen(
        [sys.executable, "-m", "causalrec_jax", "train", "--config", str(config),
         "--out", str(out), "--quiet", *extra],
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    (root / "config.toml").write_text(CONFIG)
    return root


@pytest.fixture(scope="module")
def single(root):
    worker = _train(root / "config.toml", root / "single")
    _, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err[-3000:]
    return root / "single"


def _two_processes(root: Path, mesh: str) -> Path:
    out = root / ("mesh" + mesh.strip("[]").replace(",", "x"))
    if (out / "metrics.json").exists():  # trained by an earlier test of this module
        return out
    port = _free_port()
    workers = [
        _train(root / "config.toml", out, "--distributed", "--set", f"parallel.mesh={mesh}",
               env=_job_env(port, index))
        for index in range(2)]
    for code, err in _finish(workers):
        assert code == 0, err[-3000:]
    return out


@pytest.mark.slow  # make test-all, with the jobs stopped and resumed below
@pytest.mark.parametrize("mesh", [
    "[2,2]",  # each process holds whole tables (the model axis within a process)
    "[1,4]",  # tables split across the processes
])
def test_two_processes_train_what_one_process_trains(root, single, mesh):
    joint_run = _two_processes(root, mesh)
    one = load_run(single).parts.params
    two = load_run(joint_run).parts.params
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two), strict=True):
        assert np.asarray(a).shape == np.asarray(b).shape  # padding cut off
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=5e-5)
    alone = json.loads((single / "metrics.json").read_text())
    joint = json.loads((joint_run / "metrics.json").read_text())
    for metric in ("ndcg@10", "recall@10", "auc"):
        assert joint["test"][metric] == pytest.approx(alone["test"][metric], abs=1e-5)
    assert [s["best_epoch"] for s in joint["per_seed"]] == [
        s["best_epoch"] for s in alone["per_seed"]]
    # the first process wrote the folder (its checkpoints too: one, at the end)
    assert (joint_run / "model").is_dir()
    assert [p.name for p in (joint_run / "checkpoints").iterdir()] == ["2"]


def _interrupted(config: Path, out: Path, stop: int, port: int, index: int, mesh: str):
    worker = Path(__file__).with_name("interrupted_worker.py")
    return subprocess.Popen(
        [sys.executable, str(worker), str(stop), "train", "--config", str(config),
         "--out", str(out), "--quiet", "--distributed", "--set", f"parallel.mesh={mesh}",
         "--set", "train.checkpoint_every=1"],
        env={**os.environ, "JAX_PLATFORMS": "cpu", **_job_env(port, index)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _resumed_job(outs: list[Path]) -> list[subprocess.Popen]:
    """`causalrec train --resume --distributed --out outs[i]` in process i of a 2-process
    job."""
    port = _free_port()
    return [subprocess.Popen(
        [sys.executable, "-m", "causalrec_jax", "train", "--resume", "--distributed",
         "--out", str(out), "--quiet"],
        env={**os.environ, "JAX_PLATFORMS": "cpu", **_job_env(port, index)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index, out in enumerate(outs)]


@pytest.mark.slow  # make test-all (34 s each); make test runs the helpers in one process
@pytest.mark.parametrize("mesh", [
    "[2,2]",  # each process holds whole tables
    "[1,4]",  # tables split across the processes
])
def test_a_job_stopped_after_a_checkpoint_resumes_over_two_processes(root, single, mesh):
    """Checkpoints over several processes: the first process writes them (the whole values
    every process gathers); `--resume --distributed` has the first read the newest and hand
    it to every process, which places its parts. A job stopped by Ctrl-C in its last epoch
    (after its log line, before its checkpoint) ends, resumed from epoch 1's, with the model
    one process trains without a stop."""
    out = root / ("stopped" + mesh.strip("[]").replace(",", "x"))
    port = _free_port()
    workers = [_interrupted(root / "config.toml", out, 2, port, index, mesh)
               for index in range(2)]
    for code, err in _finish(workers):
        assert code == 130, err[-3000:]
        assert ("interrupted; continue it with: causalrec train --resume --distributed --out "
                f"{out} (in every process of the job)") in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["0", "1"]
    assert not (out / "metrics.json").exists()
    # the second process stands for a host without the run folder: the first hands it the
    # run's config.toml and checkpoints
    elsewhere = root / ("no-folder" + mesh.strip("[]").replace(",", "x"))
    for code, err in _finish(_resumed_job([out, elsewhere])):
        assert code == 0, err[-3000:]
    assert not elsewhere.exists()
    one = load_run(single).parts.params
    two = load_run(out).parts.params
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=5e-5)
    alone = json.loads((single / "metrics.json").read_text())
    joint = json.loads((out / "metrics.json").read_text())
    assert joint["test"]["ndcg@10"] == pytest.approx(alone["test"]["ndcg@10"], abs=1e-5)
    assert [s["best_epoch"] for s in joint["per_seed"]] == [
        s["best_epoch"] for s in alone["per_seed"]]
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(line["epoch"], line["seed"]) for line in logged] == [
        (epoch, seed) for epoch in range(3) for seed in (0, 1)]
    if mesh == "[1,4]":  # make test-all: against the same job uninterrupted, to the bit
        straight = load_run(_two_processes(root, mesh)).parts.params
        for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(two), strict=True):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def test_distributed_needs_the_whole_job_layout(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    worker = _train(config, tmp_path / "out", "--distributed",
                    env={"JAX_COORDINATOR_ADDRESS": "localhost:1"})
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 2
    assert ("--distributed: JAX_NUM_PROCESSES, JAX_PROCESS_ID not set; set all of "
            "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID or none") in err
    assert not (tmp_path / "out").exists()


def _job(config: Path, out: Path, *extra: str) -> list[tuple[int, str]]:
    port = _free_port()
    workers = [_train(config, out, "--distributed", *extra, env=_job_env(port, index))
               for index in range(2)]
    return _finish(workers, timeout=300)


def test_a_refusal_of_the_first_process_stops_the_whole_job(root):
    """What only the first process checks (it writes --out) is agreed on by every process:
    an occupied --out stops both, each with one line, and trains nothing."""
    occupied = root / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("a user's file")
    (first, first_err), (second, second_err) = _job(
        root / "config.toml", occupied, "--set", "parallel.mesh=[2,2]")
    assert first == 2 and "already holds files but no run" in first_err
    assert second == 2 and ("--distributed: process 0 of 2 could not start the run"
                            in second_err)
    assert sorted(p.name for p in occupied.iterdir()) == ["mine.txt"]



@pytest.mark.slow  # make test-all (see Makefile)
def test_a_resume_the_first_process_cannot_read_stops_the_whole_job(root):
    """`--resume --distributed` without `--config`: the first process reads the run's
    config.toml for all of them; where it has no run to resume, every process stops with
    one line (none waits), and nothing is written."""
    empty = root / "not-a-run"
    empty.mkdir()
    port = _free_port()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "causalrec_jax", "train", "--resume", "--distributed",
             "--out", str(empty), "--quiet"],
            env={**os.environ, "JAX_PLATFORMS": "cpu", **_job_env(port, index)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in range(2)]
    (first, first_err), (second, second_err) = _finish(workers, timeout=300)
    assert first == 2 and f"--resume: {empty} is not a run folder (no config.toml)" in first_err
    assert second == 2 and ("--distributed: process 0 of 2 could not read the run's "
                            "config.toml (see its message); nothing was resumed") in second_err
    assert list(empty.iterdir()) == []


@pytest.mark.slow  # make test-all (see Makefile)
def test_the_processes_of_a_job_share_one_threefry_lowering(root):
    """A process with another CAUSALREC_UNROLLED_THREEFRY setting (whose floats differ in the
    last bit) stops the job at start-up, every process with one line, nothing written."""
    out = root / "lowerings"
    port = _free_port()
    workers = [_train(root / "config.toml", out, "--distributed", "--set", "parallel.mesh=[2,2]",
                      env={**_job_env(port, index),
                           "CAUSALREC_UNROLLED_THREEFRY": "1" if index else "0"})
               for index in range(2)]
    for code, err in _finish(workers, timeout=300):
        assert code == 2, err[-3000:]
        assert ("--distributed: process 1 did not set CAUSALREC_UNROLLED_THREEFRY as process 0 "
                "did") in err
    assert not out.exists()


@pytest.mark.slow  # make test-all (see Makefile)
def test_a_mesh_must_use_every_process_devices(root):
    results = _job(root / "config.toml", root / "partial_mesh", "--set", "parallel.mesh=[2,1]")
    for code, err in results:
        assert code == 2
        assert "key parallel.mesh: a 2 x 1 mesh over 2 processes must use all 4" in err
    assert not (root / "partial_mesh").exists()


def _walks_config(root: Path) -> Path:
    """A SASRec config on 80 users' walks over 101 items (written once per module)."""
    config = root / "sasrec.toml"
    if not config.exists():
        rng = np.random.default_rng(0)
        lines = ["user,item,time"]
        for user in range(80):
            item = int(rng.integers(101))
            for time in range(int(rng.integers(4, 14))):
                lines.append(f"{user},{item},{time}")
                item = int((item * 7 + 3 + rng.integers(2)) % 101)
        (root / "walks.csv").write_text("\n".join(lines) + "\n")
        config.write_text(f"""
[data]
format = "csv"
path = "{root / 'walks.csv'}"
split = "leave_one_out"
columns = {{user = "user", item = "item", timestamp = "time"}}
[model]
name = "sasrec"
embedding_dim = 8
n_layers = 1
max_len = 8
length_buckets = [4]
[train]
loss = "sampled_softmax"
n_negatives = 16
epochs = 3
batch_size = 16
learning_rate = 0.01
optimizer = "sgd"
seeds = 2
[eval]
metrics = ["hit", "ndcg"]
ks = [1, 10]
positive_threshold = 0.0
""")
    return config


def _sasrec_alone(root: Path) -> Path:
    """The walks' SASRec run trained by one process (once per module)."""
    alone = root / "sasrec_single"
    if not (alone / "metrics.json").exists():
        worker = _train(_walks_config(root), alone)
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    return alone


@pytest.mark.slow  # make test-all (see Makefile)
@pytest.mark.parametrize("mesh", ["[2,2]", "[1,4]"])
def test_two_processes_train_the_sequential_model_one_process_trains(root, mesh):
    """`causalrec train --distributed` of SASRec (two seeds, one after the other): the token
    table split across the processes on 1 x 4, batches across them on 2 x 2; the first
    process writes the folder; the same model as one process (SGD here: Adam would turn
    the key bias's zero gradient, float noise in both, into learning-rate-sized steps)."""
    config, alone = _walks_config(root), _sasrec_alone(root)
    out = root / ("sasrec" + mesh.strip("[]").replace(",", "x"))
    for code, err in _job(config, out, "--set", f"parallel.mesh={mesh}"):
        assert code == 0, err[-3000:]
    one, two = load_run(alone).parts.params, load_run(out).parts.params
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two), strict=True):
        assert np.asarray(a).shape == np.asarray(b).shape  # padding cut off
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    single = json.loads((alone / "metrics.json").read_text())
    joint = json.loads((out / "metrics.json").read_text())
    assert joint["test"] == pytest.approx(single["test"], abs=1e-6)
    assert [s["best_epoch"] for s in joint["per_seed"]] == [
        s["best_epoch"] for s in single["per_seed"]]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["seed0", "seed1"]


@pytest.mark.slow  # make test-all (see Makefile)
def test_a_sequential_job_stopped_after_a_checkpoint_resumes_over_two_processes(root):
    """SASRec over two processes (1 x 4: the token table split across them) stopped by
    Ctrl-C in seed 0's epoch 1 (after its log line, before its checkpoint), resumed with
    `--resume --distributed` (the first process reads seed 0's checkpoint of epoch 0 and
    hands it to both): the model one process trains, each epoch logged once."""
    config, alone = _walks_config(root), _sasrec_alone(root)
    out = root / "sasrec_stopped"
    port = _free_port()
    workers = [_interrupted(config, out, 1, port, index, "[1,4]") for index in range(2)]
    for code, err in _finish(workers):
        assert code == 130, err[-3000:]
    # stopped after epoch 1's log line, before its checkpoint: epoch 0's is the newest
    assert sorted(p.name for p in (out / "checkpoints" / "seed0").iterdir()
                  if p.name.isdigit()) == ["0"]
    for code, err in _finish(_resumed_job([out, out])):
        assert code == 0, err[-3000:]
    for a, b in zip(jax.tree.leaves(load_run(alone).parts.params),
                    jax.tree.leaves(load_run(out).parts.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(line["seed"], line["epoch"]) for line in logged] == [
        (seed, epoch) for seed in (0, 1) for epoch in range(3)]
