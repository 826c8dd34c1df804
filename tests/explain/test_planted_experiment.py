"""Our explainer recovers planted causes through the code path a run takes: a tiny planted world
trained by `experiments/explain_planted.py --quick` (`runs.train.sequence_run`, a real run
folder), every rule-caused consumption explained (`runs.planted.explain_planted_run`), and the
"explain" block of its metrics.json holding every score for every explainer and truth; bad
input is one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from causalrec_jax.errors import RunError
from causalrec_jax.explain.benchmark import TRUTHS, make_in_top_k_fn
from causalrec_jax.explain.scores import SCORE_NAMES
from causalrec_jax.runs.load import load_run
from causalrec_jax.runs.planted import explain_planted_run, planted_instances
from causalrec_jax.runs.script import run_script

ROOT = Path(__file__).resolve().parents[2]
EXPLAINERS = "greedy,random,similar"


def load_script():
    spec = importlib.util.spec_from_file_location(
        "explain_planted", ROOT / "experiments" / "explain_planted.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The script's --quick mode in a world whose confounder is independent of the antecedent
    (rho = 0: the causes are identifiable): the run folder and its metrics."""
    out = tmp_path_factory.mktemp("explain_planted") / "run"
    load_script().main(["--quick", "--rho", "0", "--set", "planted.rho=0", "--explainers",
                        EXPLAINERS, "--out", str(out)])
    return out, json.loads((out / "metrics.json").read_text())


@pytest.mark.slow  # make test-all: the script's quick run (35 s)
def test_quick_mode_writes_a_run_folder_with_every_score(quick_run):
    out, metrics = quick_run
    # the run contract's blocks are the training's; "explain" is added beside them
    assert {"test", "valid", "per_seed", "seeds", "data", "timing", "versions"} <= set(metrics)
    block = metrics["explain"]
    assert block["explainers"] == EXPLAINERS.split(",")
    assert block["identifiable"] is True and block["rho"] == 0.0
    assert {"k", "learned", "world", "instances"} <= set(block["protocol"])
    for explainer in block["explainers"]:
        for truth in TRUTHS:
            for group in ("all", "and", "or"):
                scores = block["scores"][explainer][truth][group]
                assert set(SCORE_NAMES) <= set(scores), (explainer, truth, group)
    assert set(block["learned"]) == {"all", "and", "or"}
    assert [entry["rho"] for entry in block["rho_sweep"]] == [0.0]
    for name in ("explain_table.md", "explain_table.csv", "explain_bars.png",
                 "explain_rho.png"):
        assert (out / name).stat().st_size > 0, name
    assert "| greedy |" in (out / "explain_table.md").read_text()


@pytest.mark.slow  # make test-all: the script's quick run (35 s)
def test_greedy_recovers_the_planted_causes(quick_run):
    block = quick_run[1]["explain"]
    learned = block["learned"]["all"]
    assert learned["n_learned"] >= 8, learned  # the model learned some rules
    greedy = block["scores"]["greedy"]
    world, oracle = greedy["world"]["all"], greedy["oracle"]["all"]
    assert world["cause_recall"] >= 0.9 and world["cause_precision"] >= 0.8, world
    assert world["coverage"] == 1.0 and world["pn"] == 1.0  # every set is counterfactual
    assert oracle["optimality_gap"] <= 0.1, oracle  # within 10% of the oracle's size
    assert oracle["cause_recall"] >= 0.95, oracle
    # a random order deletes more than the greedy search does
    assert block["scores"]["random"]["world"]["all"]["mean_size"] > world["mean_size"]


@pytest.mark.slow  # make test-all: the script's quick run (35 s)
def test_the_batched_model_call_equals_one_instance_at_a_time(quick_run):
    run = load_run(quick_run[0])
    from causalrec_jax.data.loader import load_dataset

    _, truth = load_dataset(run.config.data, planted=run.config.planted)
    instances, _ = planted_instances(run, truth, n_per_kind=4)
    in_top_k_fn = make_in_top_k_fn(instances.models, instances.targets, instances.exclude, k=10)
    histories = instances.histories
    rows = np.repeat(np.arange(len(instances)), 2)
    keep = np.repeat(histories >= 0, 2, axis=0)
    keep[1::2, -1] = False  # every second edit deletes the newest item
    batched = in_top_k_fn(rows, keep)
    for row, index in enumerate(rows):
        model = instances.models[index]
        scores = model.scores(keep[row])
        others = ~instances.exclude[index]
        others[instances.targets[index]] = False
        rank = int(np.sum(others & (scores >= scores[instances.targets[index]])))
        assert batched[row] == (rank < 10)


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    script = load_script()
    for argv, expected in ((["--explainers", "greedy,oracle"], "unknown explainer 'oracle'"),
                           (["--rho", "0.5,high"], "--rho '0.5,high'"),
                           (["--rho", "1.5"], "numbers in [0, 1]"),
                           (["--per-kind", "0"], "expected both >= 1")):
        monkeypatch.setattr("sys.argv", ["explain_planted.py", *argv,
                                         "--out", str(tmp_path / "never")])
        assert run_script(script.main, "explain_planted.py") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
        assert not (tmp_path / "never").exists()  # refused before anything was written
    with pytest.raises(RunError, match="unknown explainer 'nope'"):
        explain_planted_run(tmp_path, methods=["nope"])
