"""Sequential-model runs: the planted next-item rule is learned end to end, the contract holds."""

import json

import jax
import numpy as np
import pandas as pd
import pytest

from causalrec_jax.cli import main


@pytest.fixture
def planted_csv(tmp_path, write_walks):
    """The planted walks (`write_walks`) as a CSV file."""
    return write_walks(tmp_path)[0]


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


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, write_walks):
    """A trained SASRec run (`_args` as they are: 40 epochs) on the planted walks, and its CSV
    path; trained once for the module, the tests below only read it."""
    folder = tmp_path_factory.mktemp("planted")
    path = write_walks(folder)[0]
    out = folder / "run"
    assert main(_args(path, out)) == 0
    return out, path


def test_sasrec_run_learns_the_planted_rule_and_writes_the_contract(planted_run):
    out, _ = planted_run
    metrics = json.loads((out / "metrics.json").read_text())
    # the next item is determined by the last one: hit@1 near 1 (a single 20-cycle never
    # revisits an item within 12 steps, so masking the history hides no target)
    assert metrics["test"]["hit@1"] > 0.9
    # unmasked, the user's earlier items compete too, and early stopping watched the masked
    # validation: lower, but far above chance (1/20)
    assert metrics["test_unmasked"]["hit@1"] > 0.6
    assert {"valid", "test_std", "per_seed", "seeds", "data", "timing", "versions"} <= set(metrics)
    assert metrics["data"]["n_test"] == 60
    assert metrics["seeds"] == [0]
    [entry] = metrics["per_seed"]
    assert {"seed", "best_epoch", "valid", "test", "test_unmasked"} <= set(entry)
    assert entry["seed"] == 0 and entry["test"] == metrics["test"]
    assert 10 <= metrics["timing"]["peak_rss_mb"] < 1e6
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # one line per epoch: patience 40 = epochs, so no early stop
    assert [line["epoch"] for line in lines] == list(range(40))
    # the keys of every run kind's lines; validation logged both ways: masked (early
    # stopping) and unmasked (RecBole's protocol)
    assert all(set(line) == {"seed", "epoch", "loss", "seconds", "valid"} for line in lines)
    assert {"hit@1", "unmasked_hit@1"} <= set(lines[0]["valid"])
    assert lines[-1]["loss"] < 0.5 * lines[0]["loss"]
    best = lines[entry["best_epoch"]]
    assert best["valid"]["hit@1"] == max(line["valid"]["hit@1"] for line in lines)
    assert entry["valid"] == {k: v for k, v in best["valid"].items() if "unmasked" not in k}
    assert metrics["timing"]["seconds_to_best"] == [entry["seconds_to_best"]]
    assert entry["seconds_to_best"] == pytest.approx(
        sum(line["seconds"] for line in lines[:entry["best_epoch"] + 1]), abs=1e-3)
    assert (out / "plots" / "learning_curve.png").stat().st_size > 1000
    # checkpoints every train.checkpoint_every (5) epochs and at the end (orbax keeps 2)
    assert sorted(p.name for p in (out / "checkpoints" / "seed0").iterdir()
                  if p.name.isdigit()) == ["34", "39"]


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
    assert (out / "model").is_dir() and (out / "checkpoints" / "seed0").is_dir()
    with np.load(out / "data.npz") as data:
        assert data["next_history"].shape == (60, 8)
        assert len(data["test_user"]) == 60 and len(data["user_ids"]) == 60
        # the history recommend reads ends with each user's test item (token = item + 1),
        # after their validation item
        last = np.zeros(60, int)
        last[data["test_user"]] = data["test_item"] + 1
        np.testing.assert_array_equal(data["next_history"][:, -1], last)
        before = np.zeros(60, int)
        before[data["valid_user"]] = data["valid_item"] + 1
        np.testing.assert_array_equal(data["next_history"][:, -2], before)


def test_recommend_on_a_sequential_run_predicts_the_successor_of_the_last_item(
        planted_run, capsys):
    from causalrec_jax.runs.load import load_run, recommend

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
    from causalrec_jax.runs.load import evaluate_run

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
    from causalrec_jax.runs.load import evaluate_run, load_run, recommend
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
    from causalrec_jax.tasks.sequential import sampled_candidates

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


def _small(path, out, *extra):
    """A few quick epochs of a small SASRec on the planted walks (CLI arguments)."""
    return _args(path, out, "train.epochs=4", "train.patience=4", "train.checkpoint_every=2",
                 "model.embedding_dim=8", *extra)


def _params(out):
    from causalrec_jax.runs.load import load_run

    return [np.asarray(leaf) for leaf in jax.tree.leaves(load_run(out).parts.params)]


def _without_timing(per_seed):
    return [{k: v for k, v in entry.items() if k != "seconds_to_best"} for entry in per_seed]


def test_seeds_are_run_seed_plus_i_and_share_one_compiled_step(planted_csv, tmp_path,
                                                               monkeypatch):
    from causalrec_jax.tasks import sequential as sequence_run

    built = []

    def spy(*args, **kwargs):
        built.append(make_bucketed_epoch(*args, **kwargs))
        return built[-1]

    make_bucketed_epoch = sequence_run.make_bucketed_epoch
    monkeypatch.setattr(sequence_run, "make_bucketed_epoch", spy)
    sequence_run._programs.cache_clear()
    out = tmp_path / "r"
    assert main(_small(planted_csv, out, "train.seeds=2", "run.seed=5")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seeds"] == [5, 6]
    assert [entry["seed"] for entry in metrics["per_seed"]] == [5, 6]
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(line["seed"], line["epoch"]) for line in lines] == [
        (seed, epoch) for seed in (5, 6) for epoch in range(4)]
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"seed5", "seed6"}
    # the two seeds start from different parameters, so they train differently
    assert lines[0]["loss"] != lines[4]["loss"]
    # one program for both seeds; one batch width (max_len 8 is the only bucket): one
    # compilation served every batch of both seeds
    info = sequence_run._programs.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    [run_epoch] = built
    assert run_epoch.bucket_step._cache_size() == 1


def test_the_same_seed_twice_gives_identical_metrics_and_parameters(planted_csv, tmp_path):
    assert main(_small(planted_csv, tmp_path / "a")) == 0
    assert main(_small(planted_csv, tmp_path / "b")) == 0
    assert main(_small(planted_csv, tmp_path / "c", "run.seed=1")) == 0
    a, b, c = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in "abc")
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert _without_timing(a["per_seed"]) == _without_timing(b["per_seed"])
    for left, right in zip(_params(tmp_path / "a"), _params(tmp_path / "b"), strict=True):
        np.testing.assert_array_equal(left, right)
    # another seed: another initialisation and order, other parameters
    assert any(not np.array_equal(left, right) for left, right in
               zip(_params(tmp_path / "a"), _params(tmp_path / "c"), strict=True))


@pytest.mark.slow  # make test-all; a private SASRec run with it stays in make test
def test_a_moving_average_changes_the_saved_model_not_the_training(planted_csv, tmp_path):
    """`train.ema_decay` on a sequential run: the same steps (every logged loss), another
    model validated and saved, the one `evaluate` scores."""
    from causalrec_jax.runs.load import evaluate_run

    assert main(_small(planted_csv, tmp_path / "a")) == 0
    assert main(_small(planted_csv, tmp_path / "b", "train.ema_decay=0.9")) == 0

    def losses(out):
        return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]

    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-5)
    assert not all(np.allclose(a, b) for a, b in
                   zip(_params(tmp_path / "a"), _params(tmp_path / "b"), strict=True))
    stored = json.loads((tmp_path / "b" / "metrics.json").read_text())
    again = evaluate_run(tmp_path / "b", "test")["test"]
    assert all(abs(again[name] - value) < 1e-6 for name, value in stored["test"].items())


@pytest.mark.slow  # make test-all (see Makefile)
def test_resume_after_an_interruption_ends_identical_to_an_uninterrupted_run(
        planted_csv, tmp_path, monkeypatch):
    from causalrec_jax.tasks import sequential as sequence_run
    from causalrec_jax.train import checkpoint as checkpoints

    extra = ("train.seeds=2", "train.epochs=6", "train.patience=6")
    assert main(_small(planted_csv, tmp_path / "full", *extra)) == 0
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())

    original_fit = sequence_run.fit

    def interrupted_fit(**kwargs):
        log_fn = kwargs["log_fn"]

        def stop_in_the_second_seed(record):
            log_fn(record)
            if record["epoch"] == 2 and kwargs["description"].startswith("seed 1"):
                raise KeyboardInterrupt

        return original_fit(**{**kwargs, "log_fn": stop_in_the_second_seed})

    monkeypatch.setattr(sequence_run, "fit", interrupted_fit)
    part = tmp_path / "part"
    assert main(_small(planted_csv, part, *extra)) == 130  # Ctrl-C: one line, exit 130
    monkeypatch.setattr(sequence_run, "fit", original_fit)
    assert not (part / "metrics.json").exists()
    # seed 0 finished (epoch 5); seed 1 checkpointed at epoch 1 (every 2 epochs)
    assert checkpoints.latest_epoch(part / "checkpoints" / "seed0") == 5
    assert checkpoints.latest_epoch(part / "checkpoints" / "seed1") == 1
    # a run in the folder: a plain train refuses it, --resume continues it
    assert main(_small(planted_csv, part, *extra)) == 2
    assert main([*_small(planted_csv, part, *extra), "--resume"]) == 0
    resumed = json.loads((part / "metrics.json").read_text())
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]
    assert _without_timing(resumed["per_seed"]) == _without_timing(full["per_seed"])
    for left, right in zip(_params(tmp_path / "full"), _params(part), strict=True):
        np.testing.assert_array_equal(left, right)
    logged = [json.loads(line) for line in (part / "log.jsonl").read_text().splitlines()]
    # seed 1's epoch 2, trained before the interruption, is replayed and logged once
    assert [(line["seed"], line["epoch"]) for line in logged] == [
        (seed, epoch) for seed in (0, 1) for epoch in range(6)]
    uninterrupted = [json.loads(line)
                     for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]

    def without_seconds(lines):
        return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]

    assert without_seconds(logged) == without_seconds(uninterrupted)


SAMPLED_BASE = ('train.loss="sampled_softmax"', "train.n_negatives=3", "train.weight_decay=0.1",
                "train.epochs=2", "train.patience=2")


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sampled_base(tmp_path_factory, write_walks):
    """The walks' CSV and the epoch losses of a short sampled-softmax run with weight decay."""
    folder = tmp_path_factory.mktemp("sampled")
    path = write_walks(folder)[0]
    assert main(_small(path, folder / "base", *SAMPLED_BASE)) == 0
    return path, _losses(folder / "base")


@pytest.mark.parametrize("change", [
    ('train.optimizer="adamw"',),  # decoupled decay instead of L2 in the gradient
    ("train.n_negatives=8",),
    ("train.exclude_seen_negatives=false",),
    ('train.lr_schedule="warmup_cosine"', "train.warmup_steps=3"),
])
def test_the_optimiser_and_negative_keys_change_the_training(sampled_base, tmp_path, change):
    path, base = sampled_base
    assert main(_small(path, tmp_path / "changed", *SAMPLED_BASE, *change)) == 0
    changed = _losses(tmp_path / "changed")
    assert len(base) == len(changed) == 2
    assert all(np.isfinite(base)) and all(np.isfinite(changed))
    assert abs(base[-1] - changed[-1]) > 1e-4, (base, changed)


def test_a_diverging_run_stops_with_a_one_line_error_naming_epoch_and_batch(
        planted_csv, tmp_path, capsys):
    out = tmp_path / "nan"
    assert main(_small(planted_csv, out, "train.learning_rate=1e30")) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "sasrec seed 0" in error and "non-finite loss or gradient at epoch" in error
    assert "batch" in error and "learning_rate" in error
    assert not (out / "metrics.json").exists()


@pytest.mark.slow  # make test-all (see Makefile)
def test_a_seed_diverging_after_good_epochs_writes_the_seeds_so_far(
        planted_csv, tmp_path, capsys, monkeypatch):
    import jax.numpy as jnp

    from causalrec_jax.runs.load import evaluate_run, load_run
    from causalrec_jax.tasks import sequential as sequence_run

    original_fit = sequence_run.fit

    def diverging_fit(**kwargs):
        run_epoch = kwargs["run_epoch"]

        def epoch_fn(states, data, keys, epoch):
            states, out = run_epoch(states, data, keys, epoch)
            if int(epoch) == 2 and kwargs["description"].startswith("seed 0"):
                out = {**out, "first_bad_batch": jnp.zeros_like(out["first_bad_batch"])}
            return states, out

        return original_fit(**{**kwargs, "run_epoch": epoch_fn})

    monkeypatch.setattr(sequence_run, "fit", diverging_fit)
    out = tmp_path / "late"
    assert main(_small(planted_csv, out, "train.seeds=2")) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "sasrec seed 0: non-finite loss or gradient at epoch 2" in error
    metrics = json.loads((out / "metrics.json").read_text())
    # Seed 0's validated epochs 0 and 1 are kept; seed 1 never trained.
    assert metrics["seeds"] == [0] and metrics["diverged"]["epoch"] == 2
    best = metrics["per_seed"][0]["best_epoch"]
    assert best in (0, 1) and f"(best epoch {best})" in error
    # The model holds the one seed written, and serves it.
    assert len(load_run(out).seeds) == 1
    assert evaluate_run(out, "test")["test"] == pytest.approx(metrics["test"])
    # Resumed without the fault it trains on: both seeds, no "diverged".
    monkeypatch.setattr(sequence_run, "fit", original_fit)
    assert main([*_small(planted_csv, out, "train.seeds=2"), "--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["seeds"] == [0, 1] and "diverged" not in resumed
    assert len(load_run(out).seeds) == 2


def test_chunked_catalogue_ranking_gives_the_dense_metrics(planted_run):
    from causalrec_jax.data.loader import load_split
    from causalrec_jax.runs.load import load_run
    from causalrec_jax.tasks import sequential as sequence_run
    from causalrec_jax.train.loop import seed_slice

    out, _ = planted_run
    run = load_run(out)
    split, _ = load_split(run.config.data, run.config.sim, seed=run.config.run.seed)
    scorer = sequence_run.make_scorer(run.parts.graphdef, seed_slice(run.parts.params, 0))
    dense = sequence_run.test_metrics(scorer, run.config, split, 0)
    for item_chunk in (7, 20):  # 20 items: chunks of 7 leave a remainder of 6
        chunked = sequence_run.test_metrics(scorer, run.config, split, 0, item_chunk=item_chunk)
        for part in ("test", "test_unmasked"):
            assert set(chunked[part]) == set(dense[part])
            for name, value in dense[part].items():
                assert chunked[part][name] == pytest.approx(value, abs=1e-9), (part, name)
    valid = sequence_run.valid_metrics(scorer, run.config, split)
    assert sequence_run.valid_metrics(scorer, run.config, split, item_chunk=7) == pytest.approx(
        valid, abs=1e-9)
    # the model learned the rule, so these are not trivially equal zeros
    assert dense["test"]["hit@10"] > 0.5


def test_a_run_folder_of_the_previous_sequential_code_still_loads(planted_run, tmp_path):
    import shutil

    from causalrec_jax.errors import RunError
    from causalrec_jax.runs.load import evaluate_run, load_run, recommend

    out, _ = planted_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    # the previous code wrote no checkpoints/ or plots/, and seeds 0..n-1
    shutil.rmtree(old / "checkpoints")
    shutil.rmtree(old / "plots")
    stored = json.loads((out / "metrics.json").read_text())
    again = evaluate_run(old)
    assert again["test"] == pytest.approx(stored["test"], abs=1e-6)
    assert len(recommend(load_run(old), "3", k=2)) == 2
    # older still: no next_history; refused with one line saying how to retrain
    with np.load(old / "data.npz") as data:
        arrays = {name: data[name] for name in data.files if name != "next_history"}
    np.savez(old / "data.npz", **arrays)
    with pytest.raises(RunError, match="train the run again") as error:
        load_run(old)
    assert "\n" not in str(error.value)
