"""Every experiment script runs on a tiny config, and every shipped config loads."""

import importlib.util
import json
from pathlib import Path

import pytest

from causalrec_jax.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_document_their_command(path):
    if path.stem.endswith("_space"):
        from causalrec_jax.tune.space import load_space

        space = load_space(path)
        base = path.with_name(path.stem.removesuffix("_space") + ".toml")
        assert base.exists(), f"{path.name} has no config {base.name} to search around"
        assert space.params
    else:
        load_config(path)
    assert path.read_text().startswith("#"), f"{path.name} must start with its command"


def test_demo_shows_the_bias_and_its_correction(tmp_path):
    demo = load_script("demo")
    results = demo.main(["--set", "sim.n_users=300", "--set", "sim.n_items=120",
                         "--set", "sim.mean_exposure=0.1", "--out", str(tmp_path)])
    bias = results["bias"]
    # Self-selection: people rate what they like, so the log's ratings are too high.
    assert bias["mean_rating_mnar_log"] > bias["mean_rating_mar_test"] + 0.4
    assert abs(bias["item_mean_bias_ips"]) < abs(bias["item_mean_bias_naive"]) / 3
    ranking = results["ranking_mar_candidates"]
    assert ranking["oracle"]["ndcg@5"] > ranking["popularity"]["ndcg@5"] > ranking["random"][
        "ndcg@5"]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["bias"] == pytest.approx(bias)


@pytest.mark.slow  # make test-all (see Makefile)
def test_quickstart_trains_and_reports(tmp_path, capsys):
    quickstart = load_script("quickstart")
    out = tmp_path / "qs"
    metrics = quickstart.main(["--set", "sim.n_users=120", "--set", "sim.n_items=60",
                               "--set", "train.epochs=3", "--set", "train.seeds=2",
                               "--out", str(out)])
    printed = capsys.readouterr().out
    assert f"run folder: {out}" in printed
    assert (out / "metrics.json").exists()
    assert set(metrics["test"]) >= {"mse", "auc", "ndcg@5"}
    assert len(metrics["per_seed"]) == 2
    # naive vs IPS vs DR-JL against the simulator's truth, each with its sim_<method> config.
    comparison = metrics["comparison"]
    assert list(comparison) == ["naive", "ips", "dr", "dr_jl"]
    for row in comparison.values():
        assert row["truth_mse"] > 0 and 0 <= row["truth_auc"] <= 1
    assert "against the simulator's truth" in printed
    # Ratings live on 1..5: a fitted model's error is far below the spread of the scale.
    assert metrics["test"]["mse"] < 4.0


@pytest.mark.parametrize("name", ["quickstart", "demo", "debias_table"])
def test_scripts_refuse_a_folder_that_holds_something(name, tmp_path, capsys):
    from causalrec_jax.runs.script import run_script

    script = load_script(name)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    args = ["--out", str(out)] + (["--data", "simulator"] if name == "debias_table" else [])
    assert run_script(lambda: script.main(args), name=name) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"{name}: error: {out} already holds")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_script_without_out_writes_a_fresh_folder_each_time(tmp_path):
    from causalrec_jax.runs.folder import fresh_out

    first = fresh_out(None, "quickstart", root=tmp_path)
    first.mkdir()
    second = fresh_out(None, "quickstart", root=tmp_path)
    assert first != second and not second.exists()
    assert first.name.startswith("quickstart-") and second.parent == tmp_path
    assert fresh_out(tmp_path / "new", "quickstart") == tmp_path / "new"
