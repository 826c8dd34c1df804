"""Sequential-model runs: the planted next-item rule is learned end to end, the contract holds."""

import json

import numpy as np
import pandas as pd
import pytest

from causalrec_jax.cli import main


@pytest.fixture
def planted_csv(tmp_path):
    """60 users walking one 20-cycle over 20 items: the next item is f(current item)."""
    rng = np.random.default_rng(0)
    order = rng.permutation(20)
    successor = np.empty(20, int)
    successor[order] = np.roll(order, -1)
    rows = []
    for user in range(60):
        item = int(rng.integers(20))
        for t in range(12):
            rows.append((user, item, t))
            item = int(successor[item])
    path = tmp_path / "walks.csv"
    pd.DataFrame(rows, columns=["user", "item", "time"]).to_csv(path, index=False)
    return path


def _args(path, out, *extra):
    sets = ['data.format="csv"', f'data.path="{path}"', 'data.split="leave_one_out"',
            "data.columns={user = \"user\", item = \"item\", timestamp = \"time\"}",
            'model.name="sasrec"', "model.embedding_dim=16", "model.n_layers=1",
            "model.n_heads=1", "model.max_len=8", 'train.loss="full_softmax"',
            "train.learning_rate=0.01", "train.batch_size=32", "train.epochs=40",
            'train.early_stopping_metric="hit@1"', "train.patience=40",
            'eval.metrics=["hit", "ndcg"]', "eval.ks=[1, 10]", "eval.positive_threshold=0.0",
            *extra]
    return ["train", "--quiet", "--out", str(out), *sum((["--set", s] for s in sets), [])]


def test_sasrec_run_learns_the_planted_rule_and_writes_the_contract(planted_csv, tmp_path):
    out = tmp_path / "run"
    assert main(_args(planted_csv, out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the next item is determined by the last one: hit@1 near 1 (a single 20-cycle never
    # revisits an item within 12 steps, so masking the history hides no target)
    assert metrics["test"]["hit@1"] > 0.9
    assert metrics["test_unmasked"]["hit@1"] > 0.9
    assert {"valid", "test_std", "per_seed", "seeds", "data", "timing"} <= set(metrics)
    assert metrics["data"]["n_test"] == 60
    assert metrics["timing"]["peak_rss_mb"] > 0
    assert len(metrics["timing"]["seconds_to_best"]) == 1
    assert (out / "log.jsonl").read_text().count("\n") >= 1


def test_recommend_on_a_sequential_run_says_why_it_cannot(planted_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(planted_csv, out, "train.epochs=1")) == 0
    capsys.readouterr()
    assert main(["recommend", "--run", str(out), "--user", "0"]) == 2
    error = capsys.readouterr().err
    assert "model.name = 'sasrec'" in error and "no model" in error


def test_sequence_models_need_leave_one_out(planted_csv, tmp_path, capsys):
    status = main(_args(planted_csv, tmp_path / "x", 'data.split="random"'))
    assert status == 2
    assert "data.split" in capsys.readouterr().err


def test_sampled_candidates_exclude_seen_items_and_follow_the_weights():
    from causalrec_jax.sequence_run import sampled_candidates

    seen = np.zeros((2000, 6), bool)
    seen[:, 0] = True
    weights = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 5.0])
    mask = sampled_candidates(seen, 1, weights, np.random.default_rng(0))
    assert mask.sum(axis=1).tolist() == [1] * 2000 and not mask[:, 0].any()
    # P(item 5) = 5 / 9 among the unseen items 1..5
    assert abs(mask[:, 5].mean() - 5 / 9) < 4 * np.sqrt(5 / 9 * 4 / 9 / 2000)


def test_sampled_protocol_is_reported_apart_and_is_more_lenient(planted_csv, tmp_path):
    out = tmp_path / "sampled"
    assert main(_args(planted_csv, out, "eval.sampled_negatives=5", "train.epochs=2",
                      'train.early_stopping_metric="ndcg@10"')) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test_sampled"]) == {f"sampled_{m}@{k}" for m in ("hit", "ndcg")
                                            for k in (1, 10)}
    assert metrics["test_sampled"]["sampled_hit@10"] == 1.0  # 6 candidates, all in the top 10
    assert metrics["test_sampled"]["sampled_hit@1"] >= metrics["test"]["hit@1"]
    assert metrics["data"]["sampled_negatives"] == 5
