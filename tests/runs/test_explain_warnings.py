"""An explanation of a run trained without weight decay says that its re-fit has no L2 (BPR's
per-user objective may have no finite minimum), in the table and in --json; a run with weight
decay carries no warning."""

import json

from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.runs import train as run_train
from causalrec_jax.runs.explain import explain_run

from .test_explain_run import write_recbole


def test_a_run_without_weight_decay_is_flagged(tmp_path, capsys):
    data_dir = write_recbole(tmp_path)
    runs = {}
    for decay in (0.0, 0.001):
        config = load_config(None, [
            'data.format="recbole"', f'data.path="{data_dir}"', 'data.split="user_random"',
            "train.epochs=2", 'train.loss="bpr"', "model.embedding_dim=4", "eval.ks=[5]",
            'eval.metrics=["recall"]', 'train.early_stopping_metric="recall@5"',
            f"train.weight_decay={decay}", "eval.positive_threshold=0.0"])
        runs[decay] = tmp_path / f"run_{decay}"
        run_train.train_run(config, runs[decay], quiet=True)
    assert explain_run(runs[0.001], "u3", k=3).warnings == []
    flagged = explain_run(runs[0.0], "u3", k=3).warnings
    assert len(flagged) == 1 and "without weight decay" in flagged[0]
    assert main(["explain", "--run", str(runs[0.0]), "--user", "u3", "--k", "3"]) == 0
    assert "warning: the run trained without weight decay" in capsys.readouterr().out
    assert main(["explain", "--run", str(runs[0.0]), "--user", "u3", "--k", "3",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == flagged
