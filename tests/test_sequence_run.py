"""Sequential-model runs: the planted next-item rule is learned end to end, the contract holds."""

import json

import numpy as np
import pandas as pd
import pytest

from causalrec_jax.cli import main


def _write_walks(folder):
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
    path = folder / "walks.csv"
    pd.DataFrame(rows, columns=["user", "item", "time"]).to_csv(path, index=False)
    return path


@pytest.fixture
def planted_csv(tmp_path):
    """The planted walks (`_write_walks`) as a CSV file."""
    return _write_walks(tmp_path)


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
    # unmasked, the user's earlier items compete too, and early stopping watched the masked
    # validation: lower, but far above chance (1/20)
    assert metrics["test_unmasked"]["hit@1"] > 0.6
    assert {"valid", "test_std", "per_seed", "seeds", "data", "timing"} <= set(metrics)
    assert metrics["data"]["n_test"] == 60
    assert metrics["timing"]["peak_rss_mb"] > 0
    assert len(metrics["timing"]["seconds_to_best"]) == 1
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(lines) >= 1
    # validation is logged both ways: masked (early stopping) and unmasked (RecBole's protocol)
    assert {"hit@1", "unmasked_hit@1", "seconds"} <= set(lines[0])


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """A trained SASRec run on the planted walks (the fixture's data), and its CSV path."""
    folder = tmp_path_factory.mktemp("planted")
    path = _write_walks(folder)
    out = folder / "run"
    assert main(_args(path, out, "train.epochs=25")) == 0
    return out, path


def _successors_and_histories(path):
    """The planted successor of each raw item id, and each raw user's items in time order."""
    frame = pd.read_csv(path).sort_values(["user", "time"])
    histories = {str(user): [str(i) for i in group["item"]]
                 for user, group in frame.groupby("user")}
    successor = {}
    for items in histories.values():
        successor.update(zip(items[:-1], items[1:], strict=True))
    return successor, histories


def test_a_sequential_run_saves_its_model_and_data(planted_run):
    out, _ = planted_run
    assert (out / "model").is_dir() and (out / "data.npz").exists()
    assert not out.with_name(out.name + ".partial").exists()
    with np.load(out / "data.npz") as data:
        assert data["next_history"].shape == (60, 8)
        assert len(data["test_user"]) == 60 and len(data["user_ids"]) == 60


def test_recommend_on_a_sequential_run_predicts_the_successor_of_the_last_item(
        planted_run, capsys):
    from causalrec_jax.runner import load_run, recommend

    out, path = planted_run
    successor, histories = _successors_and_histories(path)
    run = load_run(out)
    hits = 0
    for user in ("0", "7", "23", "41", "59"):
        top = recommend(run, user, k=5)
        items = [item for item, _ in top]
        assert len(items) == 5 == len(set(items))
        assert not set(items) & set(histories[user])  # the whole history is masked
        scores = [score for _, score in top]
        assert scores == sorted(scores, reverse=True)
        hits += items[0] == successor[histories[user][-1]]  # after the test item
    assert hits == 5
    capsys.readouterr()
    assert main(["recommend", "--run", str(out), "--user", "7", "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split()[:2] == ["1", successor[histories["7"][-1]]]


def test_evaluate_on_a_sequential_run_reproduces_the_stored_metrics(planted_run, capsys):
    from causalrec_jax.runner import evaluate_run

    out, _ = planted_run
    stored = json.loads((out / "metrics.json").read_text())
    again = evaluate_run(out, "test")
    for part in ("test", "test_unmasked"):
        assert set(again[part]) == set(stored[part])
        for name, value in stored[part].items():
            assert abs(again[part][name] - value) < 1e-6, (part, name)
    valid = evaluate_run(out, "valid")["valid"]
    assert all(abs(valid[name] - value) < 1e-6 for name, value in stored["valid"].items())
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out)]) == 0
    assert "hit@1" in capsys.readouterr().out


def test_a_bert4rec_run_round_trips(planted_csv, tmp_path):
    from flax import nnx

    from causalrec_jax.models.bert4rec import BERT4Rec
    from causalrec_jax.runner import evaluate_run, load_run, recommend
    from causalrec_jax.train.loop import seed_slice

    out = tmp_path / "bert"
    assert main(_args(planted_csv, out, 'model.name="bert4rec"', 'train.loss="masked_item"',
                      "train.epochs=2", "train.seeds=2")) == 0
    run = load_run(out)
    assert isinstance(nnx.merge(run.parts.graphdef, seed_slice(run.parts.params, 1)), BERT4Rec)
    stored = json.loads((out / "metrics.json").read_text())
    again = evaluate_run(out)
    for seed, stored_seed in zip(again["per_seed"], stored["per_seed"], strict=True):
        assert seed["test"] == pytest.approx(stored_seed["test"], abs=1e-6)
    top = recommend(run, "3", k=4, seed_index=1)
    assert len({item for item, _ in top}) == 4


def test_recommend_on_an_uplift_run_says_why_it_cannot(tmp_path, capsys):
    from causalrec_jax.config import dump_config, load_config

    out = tmp_path / "uplift"
    out.mkdir()
    dump_config(load_config(None, ['uplift.method="dr"']), out / "config.toml")
    assert main(["recommend", "--run", str(out), "--user", "0"]) == 2
    error = capsys.readouterr().err
    assert "uplift.method = 'dr'" in error and "no model" in error


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


def test_the_seeds_of_a_run_share_one_compiled_step(planted_csv, tmp_path):
    from causalrec_jax import sequence_run

    sequence_run._programs.cache_clear()
    assert main(_args(planted_csv, tmp_path / "r", "train.seeds=2", "train.epochs=2")) == 0
    info = sequence_run._programs.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    # one batch width (max_len 8 is the only bucket): one compilation served both seeds
    import jax
    from flax import nnx

    from causalrec_jax.config import load_config

    config = load_config(tmp_path / "r" / "config.toml")
    n_items = json.loads((tmp_path / "r" / "metrics.json").read_text())["data"]["n_items"]
    graphdef = nnx.split(sequence_run._model(config, n_items, jax.random.key(9)), nnx.Param)[0]
    _, step, _ = sequence_run._programs(graphdef, "full_softmax", config.train.learning_rate,
                                        config.train.weight_decay)
    assert step._cache_size() == 1


def test_a_sequential_run_never_overwrites_a_run_and_cannot_resume(planted_csv, tmp_path,
                                                                   capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert main(_args(planted_csv, out, "train.epochs=1")) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == "{}"
    assert main([*_args(planted_csv, tmp_path / "new", "train.epochs=1"), "--resume"]) == 2
    assert "keeps no checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
