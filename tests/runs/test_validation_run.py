"""Validation ranking metrics through the path a run takes: `train_split`'s evaluation, the
early-stopping refusal, `metrics.json`, `log.jsonl`, the printed summary and `causalrec
evaluate --split valid` (issue 14 item 13)."""

import json
import math

import pytest

from causalrec_jax.cli import format_metrics, main
from causalrec_jax.config import load_config
from causalrec_jax.data.loader import load_dataset
from causalrec_jax.data.split import make_split
from causalrec_jax.errors import ConfigError
from causalrec_jax.eval.protocol import validation_ranked_users
from causalrec_jax.runs import load as run_load
from causalrec_jax.runs import train as run_train

# A small Coat-like world: MNAR training ratings, a MAR slice of 10 items per user carved into
# validation and test, each user ranking their own MAR items.
SLICE = [
    "sim.n_users=60", "sim.n_items=40", "sim.mean_exposure=0.2", "sim.mar_items_per_user=10",
    'data.split="mar_slice"', "data.mar_train_fraction=0.0", "data.mar_valid_fraction=0.05",
    'train.loss="mse"', "train.epochs=3", "train.batch_size=256", "train.patience=10",
    "model.embedding_dim=4", 'eval.protocol="candidates"',
    'eval.metrics=["mse", "auc", "ndcg", "recall"]', "eval.ks=[5]",
    'train.early_stopping_metric="mse"',
]


def config_of(*extra):
    return load_config(None, SLICE + list(extra))


@pytest.fixture(scope="module")
def slice_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("valid") / "run"
    metrics = run_train.train_run(config_of(), out, quiet=True)
    return out, metrics


def test_a_five_percent_slice_reports_null_validation_ranking_metrics(slice_run):
    out, metrics = slice_run
    # Under one validation rating per user: no list has more than 5 items.
    assert metrics["data"]["n_valid"] < metrics["data"]["n_users"]
    assert metrics["data"]["valid_n_users_ranked@5"] == 0
    assert metrics["data"]["valid_n_users_evaluated"] > 0  # users with a positive, unranked
    written = json.loads((out / "metrics.json").read_text())
    for block in (written["valid"], written["per_seed"][0]["valid"]):
        assert block["ndcg@5"] is None and block["recall@5"] is None
        assert block["mse"] > 0 and 0 <= block["auc"] <= 1
    assert written["per_seed"][0]["valid"]["n_users_ranked@5"] == 0
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    assert all(line["valid"]["ndcg@5"] is None and line["valid"]["n_users_ranked@5"] == 0
               for line in lines)
    # The test block keeps the published protocol: numbers for every user with a positive.
    test = written["per_seed"][0]["test"]
    assert 0 < test["ndcg@5"] <= 1 and test["n_users_ranked@5"] == test["n_users_evaluated"]
    assert test["n_users_informative@5"] <= test["n_users_evaluated"]


def test_the_summary_says_not_available_and_how_many_users(slice_run):
    out, metrics = slice_run
    text = format_metrics(metrics)
    valid_line = text.splitlines()[1]
    assert "ndcg@5 n/a (0 users)" in valid_line and "recall@5 n/a (0 users)" in valid_line
    assert "nan" not in text
    # The same from metrics.json read back (null values).
    assert format_metrics(json.loads((out / "metrics.json").read_text())) == text


def test_evaluate_valid_reproduces_the_block_and_prints_it(slice_run, capsys):
    out, metrics = slice_run
    again = run_load.evaluate_run(out, "valid")
    assert math.isnan(again["valid"]["ndcg@5"])
    assert again["valid"]["mse"] == pytest.approx(metrics["valid"]["mse"], rel=1e-6)
    assert again["per_seed"][0]["valid"]["n_users_ranked@5"] == 0
    assert main(["evaluate", "--run", str(out), "--split", "valid"]) == 0
    assert "ndcg@5 n/a (0 users)" in capsys.readouterr().out


def test_early_stopping_on_a_metric_no_user_can_be_ranked_on_is_refused(tmp_path):
    config = config_of('train.early_stopping_metric="ndcg@5"')
    with pytest.raises(ConfigError) as error:
        run_train.train_run(config, tmp_path / "refused", quiet=True)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("train.early_stopping_metric = 'ndcg@5': only 0 validation "
                              "users have more than 5 candidates, a positive and a negative "
                              "(eval.min_ranked_users = 30); select on mse or auc")
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())


def test_a_larger_slice_ranks_informative_users_and_can_select_on_them(tmp_path):
    config = config_of("data.mar_valid_fraction=0.6", "eval.min_ranked_users=5",
                       'train.early_stopping_metric="ndcg@5"')
    dataset, _ = load_dataset(config.data, config.sim)
    split = make_split(dataset, config.data, seed=config.run.seed)
    expected = validation_ranked_users(config.eval, split.valid)["ndcg@5"]
    assert 5 <= expected < len(set(split.valid.user.tolist()))
    metrics = run_train.train_run(config, tmp_path / "run", quiet=True)
    valid = metrics["per_seed"][0]["valid"]
    assert valid["n_users_ranked@5"] == valid["n_users_informative@5"] == expected
    assert valid["n_users_ranked@5"] < valid["n_users_evaluated"]
    assert 0 < valid["ndcg@5"] < 1
    assert f"ndcg@5 {metrics['valid']['ndcg@5']:.4f} ({expected} users)" in format_metrics(
        metrics)


def test_tuning_on_such_a_metric_is_refused_before_the_first_trial(tmp_path):
    from causalrec_jax.tune import search
    from causalrec_jax.tune.space import space_from_dict

    space = space_from_dict({"train": {"learning_rate": [0.01, 0.1]}})
    with pytest.raises(ConfigError, match=r"^--metric = 'recall@5': only 0 validation users "
                                          r"have more than 5 candidates"):
        search.tune(config_of(), space, tmp_path / "t", metric="valid.recall@5", seeds=1,
                    quiet=True)
    assert not (tmp_path / "t" / "trials.jsonl").exists()
