"""Shared test fixtures."""

from __future__ import annotations

import gc
import importlib.util
import os
from pathlib import Path
from typing import Any

# The suite's programs are tiny: compiling them costs more than running them. XLA's CPU
# backend without LLVM's optimisation passes compiles about a third faster (measured on
# tests/runs/test_train_run.py + tests/train/test_sequence_step.py: 139 s -> 90 s on 2 cores)
# and computes the same operations. XLA's older LLVM emitters for fusions
# (--xla_cpu_use_fusion_emitters=false; the MLIR fusion emitters are the default) compile
# about twice as fast again (tests/train/test_step.py: 37 s -> 20 s of CPU time). Set before
# JAX starts its backend, and inherited by the command-line subprocesses tests start; a flag
# already in XLA_FLAGS is left as it is, and CAUSALREC_TEST_XLA_OPT=1 keeps XLA's defaults.
# Timings are measured by `make bench`, never under these flags.
_TEST_XLA_FLAGS = {"xla_backend_optimization_level": "0", "xla_cpu_use_fusion_emitters": "false"}
if os.environ.get("CAUSALREC_TEST_XLA_OPT") != "1":
    _flags = os.environ.get("XLA_FLAGS", "")
    for _name, _value in _TEST_XLA_FLAGS.items():
        if _name not in _flags:
            _flags = f"{_flags} --{_name}={_value}".strip()
    os.environ["XLA_FLAGS"] = _flags

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

# JAX's persistent compilation cache, for the suite and the command-line subprocesses it
# starts, when CAUSALREC_TEST_COMPILATION_CACHE=1 (programs compiled by one run are read back
# by the next). Off by default: with jaxlib 0.10.2 on the CPU, writing an executable to the
# cache segfaulted once in a full run of the suite (not reproduced alone), and a crash must not
# cost CI its run. Users switch the cache on with JAX_COMPILATION_CACHE_DIR (README).
_CACHE_DIR = Path(__file__).resolve().parents[1] / ".jax_cache"
if os.environ.get("CAUSALREC_TEST_COMPILATION_CACHE") == "1":
    jax.config.update("jax_compilation_cache_dir", str(_CACHE_DIR))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE_DIR))  # for subprocesses

# The real datasets live next to the repository (../shared/data from its root); they are
# optional, so tests that need them skip when the folder is absent.
SHARED_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# The longest test files (most compilation), longest first: collected first, so that
# `pytest -n 2 --dist loadfile` (make test) hands them out at the start and the short files fill
# the end of both processes, rather than one process starting a 2-minute file when the other is
# nearly done. Measured per file on 2 cores (every file of 10 s or more); a file not listed
# keeps its place after these, and the order inside a file never changes.
LONG_FILES = (
    "parallel/test_sharded.py",
    "parallel/test_distributed.py",
    "runs/test_train_run.py",
    "explain/test_deletion.py",
    "tasks/test_sequential.py",
    "privacy/test_dpsgd.py",
    "tasks/test_uplift.py",
    "explain/test_search.py",
    "privacy/test_private_run.py",
    "tune/test_search.py",
    "runs/test_serving.py",
    "runs/test_run_contract.py",
    "train/test_sequence_sampling.py",
    "train/test_sequence_step.py",
    "tasks/test_sequential_seq_lines.py",
    "explain/test_planted_experiment.py",
    "parallel/test_streamed.py",
    "runs/test_explain_run.py",
    "privacy/test_federated.py",
    "privacy/test_private_pda.py",
    "privacy/test_silos.py",
    "models/test_sasrec.py",
    "tasks/test_ope.py",
    "causal/test_ope.py",
    "sim/test_world.py",
    "explain/test_greedy_from_singles.py",
    "runs/test_explain_item_features.py",
    "train/test_step.py",
    "tasks/test_ordinary_core.py",
    "runs/test_faults.py",
    "models/test_hstu.py",
    "causal/test_training.py",
    "experiments/test_debias_table.py",
    "sim/test_policies.py",
)


def pytest_configure(config) -> None:
    """Keeps the order below under pytest-xdist: by default `--dist loadfile` hands out the
    files with the most tests first, which put several long files with few tests last."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items) -> None:
    """Moves the files of `LONG_FILES` to the front, in that order (a stable sort: every other
    test keeps its collection order)."""
    tests = Path(__file__).resolve().parent
    rank = {(tests / name).as_posix(): index for index, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(Path(str(item.path)).resolve().as_posix(),
                                         len(LONG_FILES)))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder of real datasets (`coat/`, `ml-100k/`); skips the test when it is absent."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA_DIR} (optional, read-only)")
    return SHARED_DATA_DIR


class CompileCounter:
    """Counts XLA compilations while active (`with counter:`); `counter.count` is the total."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self) -> None:
        self.count = 0

    def _listener(self, event: str, duration: float, **kwargs) -> None:
        if event == self.EVENT:
            self.count += 1

    def __enter__(self) -> CompileCounter:
        import jax

        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        import jax

        jax.monitoring.unregister_event_duration_listener(self._listener)


@pytest.fixture
def compile_counter() -> CompileCounter:
    """A fresh `CompileCounter` (use as `with compile_counter: ...`)."""
    return CompileCounter()


def _memory_mappings() -> int:
    """How many memory mappings this process holds (Linux; 0 where /proc is absent)."""
    try:
        with open("/proc/self/maps") as handle:
            return sum(1 for _ in handle)
    except OSError:
        return 0


# Far below Linux's default vm.max_map_count (65,530).
_MAPPINGS_LIMIT = 20_000


@pytest.fixture(autouse=True, scope="module")
def _close_figures():
    """Closes the pyplot figures a test module left open (a figure a function returns for its
    caller to save is not closed by it): a worker process runs many modules."""
    yield
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops JAX's compiled programs after a test module once the process holds many
    memory mappings.

    Every compiled XLA CPU executable keeps memory mappings; a process that compiled the whole
    suite's programs (well over a thousand) hit a segmentation fault inside the XLA compiler
    late in the run, twice (the mapping limit is the suspected cause). Clearing only past
    `_MAPPINGS_LIMIT` keeps the programs that later modules share compiled.
    """
    yield
    if _memory_mappings() > _MAPPINGS_LIMIT:
        jax.clear_caches()
        gc.collect()


def read_tensorboard(root: Path) -> dict[str, dict[str, list[tuple[int, Any]]]]:
    """`{subfolder: {tag: [(step, value)]}}` of the event files under `root` (a scalar's value
    a float, a text's its string), parsed from their TFRecord framing (8-byte length, 4-byte
    CRC, the `Event` proto, 4-byte CRC) with the protos tensorboardX ships: what TensorBoard
    reads, without TensorBoard."""
    import struct

    from tensorboardX.proto import event_pb2

    found: dict[str, dict[str, list[tuple[int, Any]]]] = {}
    for path in sorted(root.rglob("events.out.tfevents.*")):
        tags = found.setdefault(path.parent.relative_to(root).as_posix(), {})
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    tags.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif value.metadata.plugin_data.plugin_name == "text":
                    text = value.tensor.string_val[0].decode()
                    tags.setdefault(value.tag, []).append((event.step, text))
    return found


@pytest.fixture
def tensorboard_scalars():
    """`read_tensorboard`: the events a run folder's `tensorboard/` holds."""
    return read_tensorboard


@pytest.fixture
def mlflow_client(monkeypatch):
    """`client(uri)`: an `MlflowClient` of the store `uri`; a file store allowed as the
    exporter allows it (MLflow 3 refuses one unless MLFLOW_ALLOW_FILE_STORE is set)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return lambda uri: MlflowClient(tracking_uri=uri)


@pytest.fixture
def check_tracked(tensorboard_scalars, mlflow_client):
    """`check(folder, uri, experiment="causalrec")`: asserts that a finished run folder's
    TensorBoard events and its one MLflow run (in the store `uri`) hold what its files say."""
    return lambda *args, **kwargs: _check_tracked(tensorboard_scalars, mlflow_client, *args,
                                                  **kwargs)


def _check_tracked(read_events, client_of, folder: Path, uri: str,
                   experiment: str = "causalrec") -> None:
    import json

    import numpy as np

    from causalrec_jax.config import config_to_dict, load_config

    def name(metric: str) -> str:  # trackers refuse "@"
        return metric.replace("@", "_at_")

    lines = [json.loads(text) for text in (folder / "log.jsonl").read_text().splitlines()]
    metrics = json.loads((folder / "metrics.json").read_text())

    def group(holder: dict) -> str:
        prefix = f"fold{holder['fold']}/" if "fold" in holder else ""
        return f"{prefix}seed{holder['seed']}"

    def number(value) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    # TensorBoard: a subfolder per member, one event file each; values as float32
    events = read_events(folder / "tensorboard")
    members = {group(line) for line in lines} | {group(e) for e in metrics["per_seed"]}
    assert set(events) == {"mean"} | members
    assert all(len(list((folder / "tensorboard" / g).iterdir())) == 1 for g in events)
    expected: dict[tuple[str, str], list] = {}  # (member or "mean", tag) -> [(step, value)]
    for line in lines:
        values = {"loss": line["loss"]} | {f"valid/{name(m)}": v
                                           for m, v in line.get("valid", {}).items()}
        for tag, value in values.items():
            if number(value):
                expected.setdefault((group(line), tag), []).append((line["epoch"], value))
    for entry in metrics["per_seed"]:
        for metric, value in entry["test"].items():
            if number(value):
                expected[group(entry), f"test/{name(metric)}"] = [
                    (max(entry["best_epoch"], 0), value)]
    for metric, value in metrics["test"].items():
        if number(value):
            expected["mean", f"test/{name(metric)}"] = [(0, value)]
    for (member, tag), points in expected.items():
        assert events[member][tag] == [(step, np.float32(value)) for step, value in points], (
            member, tag)
    epochs = sorted({line["epoch"] for line in lines})
    assert [step for step, _ in events["mean"].get("loss", [])] == epochs
    for step, value in events["mean"].get("loss", []):
        assert value == pytest.approx(np.mean([line["loss"] for line in lines
                                               if line["epoch"] == step]), rel=1e-6)
    ((_, text),) = events["mean"]["config/text_summary"]
    assert text == "".join(f"    {line}\n"
                           for line in (folder / "config.toml").read_text().splitlines())

    # MLflow: one run tagged with the folder; params = the config; metrics = the same values
    client = client_of(uri)
    found = client.get_experiment_by_name(experiment)
    runs = [run for run in client.search_runs([found.experiment_id])
            if run.data.tags["causalrec.folder"] == str(folder.resolve())]
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["causalrec.complete"] == "true"
    config = config_to_dict(load_config(folder / "config.toml"))
    assert run.data.params == {
        f"{section}.{key}": value if isinstance(value, str) else json.dumps(
            list(value) if isinstance(value, tuple) else value)
        for section, values in config.items() for key, value in values.items()}
    for (member, tag), points in expected.items():
        key = tag if member == "mean" else f"{member}/{tag}"
        history = client.get_metric_history(run.info.run_id, key)
        assert [(metric.step, metric.value) for metric in history] == points, key
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert artifacts == {path.name for path in folder.iterdir()} - {
        "checkpoints", "model", "data.npz", "tensorboard"}
    assert {"config.toml", "log.jsonl", "metrics.json"} <= artifacts


def _cycle_walks(n_users: int, n_items: int, length: int, seed: int):
    """`n_users` walks of `length` items along one random `n_items`-cycle (the next item is a
    function of the current one), each from a random start; returns `(walks, order)`, `order`
    the cycle (item `order[i]` is followed by `order[i + 1]`)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    order = rng.permutation(n_items)
    successor = np.empty(n_items, int)
    successor[order] = np.roll(order, -1)
    walks = []
    for _ in range(n_users):
        item, walk = int(rng.integers(n_items)), []
        for _ in range(length):
            walk.append(item)
            item = int(successor[item])
        walks.append(walk)
    return walks, order


def _write_walks(folder: Path) -> tuple[Path, dict[str, str]]:
    """60 users walking one 20-cycle over 20 items (the next item is f(current item)), as
    `folder/walks.csv` (user, item, time); returns its path and the rule `{item: next item}`."""
    import pandas as pd

    walks, order = _cycle_walks(60, 20, 12, seed=0)
    rows = [(user, item, t) for user, walk in enumerate(walks) for t, item in enumerate(walk)]
    path = folder / "walks.csv"
    pd.DataFrame(rows, columns=["user", "item", "time"]).to_csv(path, index=False)
    return path, {str(order[i]): str(order[(i + 1) % 20]) for i in range(20)}


@pytest.fixture(scope="session")
def cycle_walks():
    """The planted cycle walks (`_cycle_walks`): `cycle_walks(n_users, n_items, length, seed)
    -> (walks, order)`."""
    return _cycle_walks


@pytest.fixture(scope="session")
def write_walks():
    """The planted walks' writer (`_write_walks`): `write_walks(folder) -> (path, rule)`."""
    return _write_walks


REPO = Path(__file__).resolve().parents[1]


def _load_repo_script(relative: str):
    """A script of the repository (`experiments/x.py`, `bench/x.py`) loaded as a module, so a
    test calls its `main` and helpers in-process."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_repo_script():
    """`load(relative_path) -> module`: a repository script loaded as a module."""
    return _load_repo_script


@pytest.fixture
def run_repo_script(monkeypatch, capsys):
    """`run(relative_path, argv) -> (exit status, stderr)`: a repository script's `main(argv)`
    run in this process from the repository's root as its command line runs it
    (`runs.script.run_script`: a user's error is one line on stderr and status 2; argparse's
    own exits give their status), without a new interpreter and its imports."""
    from causalrec_jax.runs.script import run_script

    def run(path: str, argv: list[str]) -> tuple[int, str]:
        module = _load_repo_script(path)
        monkeypatch.chdir(Path(__file__).resolve().parents[1])
        capsys.readouterr()
        try:
            code = run_script(lambda: module.main(argv), name=Path(path).name)
        except SystemExit as stop:
            code = stop.code
        return code, capsys.readouterr().err

    return run
