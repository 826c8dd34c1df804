"""The simlog folder format: exact round trips, the Dataset view, validation, atomic writing."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

from causalrec_jax.config import load_config
from causalrec_jax.data.formats import read_dataset
from causalrec_jax.errors import DataFormatError
from causalrec_jax.sim import simlog
from causalrec_jax.sim.logs import simulate_log
from causalrec_jax.sim.simlog import read_manifest, read_simlog, simlog_to_dataset, write_simlog

# A tiny world; epsilon-greedy slates have exact propensities (no Monte-Carlo marginals), and
# the same sizes as tests/test_cli.py's so one process compiles the rollout once.
SMALL = [
    "env.n_users=30", "env.n_items=40", "env.horizon=4", "env.slate_size=3",
    'policy.kind="epsilon_greedy"',
]
DOCUMENTED_FILES = {"simlog.json", "impressions.parquet", "rounds.parquet", "truth.npz",
                    "config.toml"}


@pytest.fixture(scope="module")
def simulated():
    config = load_config(None, SMALL)
    log, truth = simulate_log(config.env, config.policy, jax.random.key(config.run.seed),
                              marginal_samples=50)
    return config, log, truth


@pytest.fixture
def written(tmp_path, simulated):
    config, log, truth = simulated
    out = tmp_path / "log"
    write_simlog(out, log, truth, config)
    return out


def test_round_trip_is_exact(written, simulated):
    _, log, truth = simulated
    assert {p.name for p in written.iterdir()} == DOCUMENTED_FILES
    read_log, read_truth = read_simlog(written)
    for field in dataclasses.fields(log):
        expected, got = getattr(log, field.name), getattr(read_log, field.name)
        if field.name == "propensity_exact":
            assert got is expected is True
            continue
        assert got.dtype == expected.dtype, field.name
        assert got.shape == expected.shape, field.name
        np.testing.assert_array_equal(got, expected, err_msg=field.name)
    assert set(read_truth) == set(truth)
    assert "inclusion_propensity" in read_truth
    for name, value in truth.items():
        assert read_truth[name].dtype == value.dtype, name
        np.testing.assert_array_equal(read_truth[name], value, err_msg=name)


def test_manifest_documents_the_log(written, simulated):
    config, log, _ = simulated
    manifest = read_manifest(written)
    assert manifest["format"] == "simlog" and manifest["version"] == 1
    assert (manifest["n_rounds"], manifest["n_users"], manifest["n_items"]) == (120, 30, 40)
    assert (manifest["slate_size"], manifest["horizon"]) == (3, 4)
    assert manifest["propensity_exact"] is True
    assert manifest["env"] == dataclasses.asdict(config.env)
    assert manifest["policy"]["kind"] == "epsilon_greedy"
    assert manifest["seed"] == config.run.seed
    assert set(manifest["files"]) == DOCUMENTED_FILES - {"simlog.json"}
    impressions = pq.read_table(written / "impressions.parquet")
    assert impressions.column_names == list(simlog.IMPRESSION_COLUMNS)
    assert [str(t) for t in impressions.schema.types] == [
        "int64", "int32", "int32", "int8", "int32", "bool", "bool", "bool", "bool", "float",
        "float", "float",
    ]
    rounds = pq.read_table(written / "rounds.parquet")
    assert rounds.column_names == list(simlog.ROUND_COLUMNS) and rounds.num_rows == 120
    assert (written / "config.toml").read_text().startswith("[data]")


def test_round_trip_without_inclusion_propensity(tmp_path, simulated):
    config, log, truth = simulated
    truth = {k: v for k, v in truth.items() if k != "inclusion_propensity"}
    write_simlog(tmp_path / "log", dataclasses.replace(log, propensity_exact=False), truth,
                 config)
    read_log, read_truth = read_simlog(tmp_path / "log" / "simlog.json")
    assert set(read_truth) == set(truth) and read_log.propensity_exact is False


def test_dataset_has_the_world_and_one_row_per_impression(written, simulated):
    _, log, _ = simulated
    dataset = read_dataset("simlog", written)
    assert dataset.n_users == 30 and dataset.n_items == 40
    assert list(dataset.user_ids) == [str(u) for u in range(30)]
    assert list(dataset.item_ids) == [str(i) for i in range(40)]
    assert dataset.n_interactions == log.n_rounds * 3
    np.testing.assert_array_equal(dataset.user, np.repeat(log.user, 3))
    np.testing.assert_array_equal(dataset.item, log.slate.reshape(-1))
    assert dataset.rating.dtype == np.float32
    np.testing.assert_array_equal(dataset.rating, log.clicks.reshape(-1).astype(np.float32))
    assert dataset.timestamp.dtype == np.float64
    np.testing.assert_array_equal(dataset.timestamp, np.repeat(np.arange(120.0), 3))
    assert dataset.meta["name"] == "log" and dataset.meta["format"] == "simlog"
    assert dataset.meta["implicit"] is True and dataset.meta["simlog"]["n_rounds"] == 120
    assert simlog_to_dataset(written).n_interactions == dataset.n_interactions


def test_dataset_keeps_users_and_items_never_shown(tmp_path, simulated):
    config, log, truth = simulated
    shown = log.user < 10  # users 10..29 and some items never appear
    part = dataclasses.replace(log, **{
        f.name: getattr(log, f.name)[shown] for f in dataclasses.fields(log)
        if f.name != "propensity_exact"
    })
    write_simlog(tmp_path / "part", part, truth, config)
    dataset = read_dataset("simlog", tmp_path / "part")
    assert dataset.n_users == 30 and dataset.n_items == 40
    assert dataset.user.max() < 10 and dataset.n_interactions == part.n_rounds * 3


def test_data_layer_does_not_import_the_simulator():
    code = (
        "import sys, causalrec_jax.data.readers, causalrec_jax.data.loader; "
        "assert 'causalrec_jax.sim.simlog' not in sys.modules; "
        "assert 'causalrec_jax.sim.logs' not in sys.modules; assert 'flax' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_existing_folder_that_is_not_a_simlog_is_refused_and_untouched(tmp_path, simulated):
    config, log, truth = simulated
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DataFormatError, match="not a simlog folder") as error:
        write_simlog(out, log, truth, config)
    assert str(out) in str(error.value)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no temporary left
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataFormatError, match="not a folder"):
        write_simlog(a_file, log, truth, config)


def test_an_existing_simlog_is_only_replaced_on_request(tmp_path, simulated):
    config, log, truth = simulated
    out = tmp_path / "log"
    out.mkdir()
    write_simlog(out, log, truth, config)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataFormatError, match="already holds a simlog"):
        write_simlog(out, log, truth, config)  # never replaced unless asked
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    write_simlog(out, log, truth, config, replace=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # identical bytes
    assert [p.name for p in tmp_path.iterdir()] == ["log"]


def test_failure_during_writing_leaves_no_folder(tmp_path, simulated, monkeypatch):
    config, log, truth = simulated

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(simlog, "_write_npz", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_simlog(tmp_path / "log", log, truth, config)
    assert list(tmp_path.iterdir()) == []
    # An existing simlog stays as it was.
    monkeypatch.undo()
    write_simlog(tmp_path / "log", log, truth, config)
    before = {p.name: p.read_bytes() for p in (tmp_path / "log").iterdir()}
    monkeypatch.setattr(simlog, "_write_npz", fail)
    with pytest.raises(RuntimeError):
        write_simlog(tmp_path / "log", log, truth, config, replace=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "log").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["log"]


def _rewrite_table(path: Path, change) -> None:
    table = pq.read_table(path)
    pq.write_table(change(table), path)


def _set_column(name, transform):
    def change(table):
        index = table.column_names.index(name)
        values = transform(table.column(name).to_numpy().copy())
        return table.set_column(index, name, [values])
    return change


def _edit_manifest(**changes):
    def edit(folder: Path):
        manifest = json.loads((folder / "simlog.json").read_text())
        manifest.update(changes)
        (folder / "simlog.json").write_text(json.dumps(manifest))
    return edit


def _drop(name: str):
    return lambda folder: (folder / name).unlink()


def _table(file: str, change):
    return lambda folder: _rewrite_table(folder / file, change)


def _with(values_fn):
    def transform(values):
        values[5] = values_fn(values[5])
        return values
    return transform


def _drop_truth_array(folder: Path) -> None:
    with np.load(folder / "truth.npz") as archive:
        arrays = {k: archive[k] for k in archive.files if k != "true_uplift"}
    np.savez(folder / "truth.npz", **arrays)


CORRUPTIONS = {
    "column dropped": (
        _table("impressions.parquet", lambda t: t.drop_columns(["click"])),
        ["impressions.parquet", "'click'"],
    ),
    "version 2": (_edit_manifest(version=2), ["simlog.json", "'version'", "2"]),
    "wrong format": (_edit_manifest(format="csv"), ["simlog.json", "'format'"]),
    "manifest missing": (_drop("simlog.json"), ["simlog.json", "missing"]),
    "policy section missing": (_edit_manifest(policy=None), ["simlog.json", "'policy'"]),
    "seed not an integer": (_edit_manifest(seed="0"), ["simlog.json", "'seed'"]),
    "impressions missing": (_drop("impressions.parquet"), ["impressions.parquet", "missing"]),
    "rounds missing": (_drop("rounds.parquet"), ["rounds.parquet", "missing"]),
    "truth missing": (_drop("truth.npz"), ["truth.npz", "missing"]),
    "truth array missing": (_drop_truth_array, ["truth.npz", "'true_uplift'"]),
    "n_rounds disagrees": (_edit_manifest(n_rounds=119), ["impressions.parquet", "360 rows",
                                                          "357"]),
    "slate_size disagrees": (_edit_manifest(slate_size=4), ["impressions.parquet", "rows"]),
    "item out of range": (
        _table("impressions.parquet", _set_column("item", _with(lambda v: 40))),
        ["impressions.parquet", "'item'", "row 5"],
    ),
    "user out of range": (
        _table("impressions.parquet", _set_column("user", _with(lambda v: -1))),
        ["impressions.parquet", "'user'", "row 5"],
    ),
    "n_users smaller": (_edit_manifest(n_users=5), ["impressions.parquet", "'user'"]),
    "organic item out of range": (
        _table("rounds.parquet", _set_column("organic_item", _with(lambda v: 99))),
        ["rounds.parquet", "'organic_item'"],
    ),
    "rounds disagree with impressions": (
        _table("rounds.parquet", _set_column("user", _with(lambda v: (v + 1) % 30))),
        ["rounds.parquet", "'user'", "row 5"],
    ),
    "column of the wrong type": (
        _table("impressions.parquet",
               _set_column("click", lambda v: v.astype(np.float32))),
        ["impressions.parquet", "'click'", "bool"],
    ),
    "not parquet": (
        lambda folder: (folder / "rounds.parquet").write_text("user,item\n1,2\n"),
        ["rounds.parquet", "parquet"],
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupted_folder_is_an_error_naming_file_and_column(name, written):
    corrupt, expected = CORRUPTIONS[name]
    corrupt(written)
    readers = [read_simlog]
    if name not in ("rounds missing", "truth missing", "truth array missing",
                    "organic item out of range", "rounds disagree with impressions",
                    "not parquet"):
        readers.append(lambda path: read_dataset("simlog", path))  # also the data layer
    for reader in readers:
        with pytest.raises(DataFormatError) as error:
            reader(written)
        message = str(error.value)
        for part in expected:
            assert part in message, (name, message)


def test_missing_folder(tmp_path):
    with pytest.raises(DataFormatError, match="no such simlog folder"):
        read_simlog(tmp_path / "nowhere")
