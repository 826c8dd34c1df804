"""The L2 of a run's re-fit (`--refit-l2`): calibrated by default, so a run trained without
weight decay gets a finite re-fit near its trained user; `run` on such a run has no L2 and
says so, in the table and in --json; a number is taken as the L2; anything else is a one-line
error."""

import json

import pytest

from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.errors import RunError
from causalrec_jax.runs import train as run_train
from causalrec_jax.runs.explain import explain_run

from .test_explain_run import write_recbole


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("warnings")
    data_dir = write_recbole(tmp_path)
    out = {}
    for decay in (0.0, 0.001):
        config = load_config(None, [
            'data.format="recbole"', f'data.path="{data_dir}"', 'data.split="user_random"',
            "train.epochs=2", 'train.loss="bpr"', "model.embedding_dim=4", "eval.ks=[5]",
            'eval.metrics=["recall"]', 'train.early_stopping_metric="recall@5"',
            f"train.weight_decay={decay}", "eval.positive_threshold=0.0"])
        out[decay] = tmp_path / f"run_{decay}"
        run_train.train_run(config, out[decay], quiet=True)
    return out


def test_a_run_without_weight_decay_is_calibrated_or_flagged(runs, capsys):
    calibrated = explain_run(runs[0.0], "u3", k=3)
    assert calibrated.refit["l2"] > 0
    # a re-fit landing more than 25% from the trained user is stated as a warning
    far = [f"the full-history re-fit lands {calibrated.refit['fit_distance']:.0%} (relative "
           "distance) from the trained user: the run's training did not end at the minimum of "
           "the objective the re-fit reproduces, so its effects approximate the run's"]
    assert calibrated.warnings == (far if calibrated.refit["fit_distance"] > 0.25 else [])
    bare = explain_run(runs[0.0], "u3", k=3, refit_l2="run")
    assert bare.refit["l2"] == 0
    assert bare.refit["fit_distance"] > calibrated.refit["fit_distance"]
    assert len(bare.warnings) == 1 and "the re-fit has no L2" in bare.warnings[0]
    assert main(["explain", "--run", str(runs[0.0]), "--user", "u3", "--k", "3",
                 "--refit-l2", "run"]) == 0
    out = capsys.readouterr().out
    assert "warning: the re-fit has no L2" in out and "re-fit: L2 0;" in out
    assert main(["explain", "--run", str(runs[0.0]), "--user", "u3", "--k", "3",
                 "--refit-l2", "run", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["warnings"] == bare.warnings
    assert record["refit"] == bare.refit


def test_the_run_l2_is_the_floor_and_a_number_is_taken(runs):
    run_l2 = explain_run(runs[0.001], "u3", k=3, refit_l2="run").refit["l2"]
    assert run_l2 > 0
    assert explain_run(runs[0.001], "u3", k=3).refit["l2"] >= run_l2
    fixed = explain_run(runs[0.001], "u3", k=3, refit_l2="0.75")
    assert fixed.refit["l2"] == pytest.approx(0.75)
    assert "L2 0.75" in fixed.explanation.semantics


@pytest.mark.parametrize("value", ["-1", "abc", "nan"])
def test_a_bad_refit_l2_is_one_line(runs, value, capsys):
    with pytest.raises(RunError, match="--refit-l2"):
        explain_run(runs[0.001], "u3", k=3, refit_l2=value)
    assert main(["explain", "--run", str(runs[0.001]), "--user", "u3",
                 "--refit-l2", value]) != 0
    err = capsys.readouterr().err.strip()
    assert "--refit-l2" in err and len(err.splitlines()) == 1


def test_a_shared_residual_is_taken_and_a_bad_one_is_one_line(runs, capsys):
    shared = explain_run(runs[0.001], "u3", k=3, residual="shared")
    assert "shared evenly among the history's interactions" in shared.explanation.semantics
    assert main(["explain", "--run", str(runs[0.001]), "--user", "u3", "--k", "3",
                 "--residual", "shared", "--json"]) == 0
    assert "shared evenly" in json.loads(capsys.readouterr().out)["semantics"]
    with pytest.raises(RunError, match="--residual 'half': expected one of kept, shared"):
        explain_run(runs[0.001], "u3", k=3, residual="half")
    assert main(["explain", "--run", str(runs[0.001]), "--user", "u3",
                 "--residual", "half"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--residual 'half'" in err and len(err.splitlines()) == 1
