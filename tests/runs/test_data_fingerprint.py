"""A run knows its data: `evaluate` on changed data refuses in one line, saying what changed."""

import json

import numpy as np
import pytest

from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.data.dataset import from_arrays
from causalrec_jax.data.fingerprint import changes, fingerprint
from causalrec_jax.errors import DataChangedError
from causalrec_jax.runs import load as run_load
from causalrec_jax.runs import train as run_train


def test_the_fingerprint_follows_content_and_order():
    users, items = np.array(["a", "b", "b"]), np.array(["x", "y", "x"])
    base = from_arrays(users, items)
    again = from_arrays(users.copy(), items.copy())
    assert fingerprint(base) == fingerprint(again)
    reordered = from_arrays(users[::-1], items[::-1])
    assert fingerprint(reordered)["sha256"] != fingerprint(base)["sha256"]
    assert changes(fingerprint(base), fingerprint(reordered)) == (
        "the same counts, other content (edited or reordered rows)")
    fewer = from_arrays(users[1:], items[1:])
    assert changes(fingerprint(base), fingerprint(fewer)) == "n_interactions 3 -> 2, n_users 2 -> 1"
    rated = from_arrays(users, items, np.array([1.0, 2.0, 3.0]))
    assert fingerprint(rated)["sha256"] != fingerprint(base)["sha256"]
    assert changes(fingerprint(base), fingerprint(again)) is None


@pytest.mark.parametrize("stored", ["{not json", '{"version": 1}', "[1, 2]"])
def test_a_damaged_stored_fingerprint_is_one_clear_error(stored):
    from causalrec_jax.data.fingerprint import check_unchanged
    from causalrec_jax.errors import RunError

    base = from_arrays(np.array(["a"]), np.array(["x"]))
    with pytest.raises(RunError, match=r"^data.npz: the stored data fingerprint is damaged"):
        check_unchanged({"fingerprint": np.asarray(stored)}, base, "log.csv")


@pytest.fixture
def csv_run(tmp_path):
    rng = np.random.default_rng(1)
    rows = [f"u{u},i{i},{rng.integers(1, 6)}" for u in range(40)
            for i in rng.choice(25, size=8, replace=False)]
    path = tmp_path / "log.csv"
    path.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    config = load_config(None, [
        'data.format="csv"', f'data.path="{path}"', 'data.split="random"', "train.epochs=2",
        'train.loss="bpr"', "model.embedding_dim=4", "eval.ks=[5]", "eval.positive_threshold=3",
        'eval.metrics=["recall"]', 'train.early_stopping_metric="recall@5"'])
    metrics = run_train.train_run(config, tmp_path / "run", quiet=True)
    return path, rows, tmp_path / "run", metrics


def test_evaluate_refuses_changed_data_and_agrees_on_the_same(csv_run, capsys):
    path, rows, run, metrics = csv_run
    stored = json.loads((run / "metrics.json").read_text())["data"]["fingerprint"]
    assert stored["n_interactions"] == len(rows) and len(stored["sha256"]) == 64
    again = run_load.evaluate_run(run)
    assert again["test"]["recall@5"] == pytest.approx(metrics["test"]["recall@5"])
    # Shuffled, 30 rows fewer: the split would differ; refused, saying what changed.
    order = np.random.default_rng(2).permutation(len(rows))[30:]
    path.write_text("user,item,rating\n" + "\n".join(rows[i] for i in order) + "\n")
    with pytest.raises(DataChangedError, match=rf"n_interactions {len(rows)} -> {len(rows) - 30}"):
        run_load.evaluate_run(run)
    assert main(["evaluate", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the data changed since the run was trained" in err[0]
    # Only reordered: the same counts, still another split.
    path.write_text("user,item,rating\n" + "\n".join(reversed(rows)) + "\n")
    with pytest.raises(DataChangedError, match="reordered rows"):
        run_load.evaluate_run(run)
    # Put back as it was: evaluated again, the same numbers.
    path.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    assert run_load.evaluate_run(run)["test"] == pytest.approx(again["test"])


@pytest.mark.slow  # make test-all: the ordinary run's refusal above, in the sequential pipeline
def test_a_sequential_run_refuses_changed_sequences(tmp_path):
    rng = np.random.default_rng(3)
    lines = [" ".join([f"{user}"] + [str(i) for i in rng.choice(30, size=6, replace=False) + 1])
             for user in range(1, 41)]
    path = tmp_path / "Toys.txt"
    path.write_text("\n".join(lines) + "\n")
    config = load_config(None, [
        'data.format="seq_lines"', f'data.path="{path}"', 'data.split="leave_one_out"',
        'model.name="sasrec"', "model.embedding_dim=8", "model.n_layers=1", "model.max_len=8",
        "train.epochs=1", "train.batch_size=32", 'train.loss="sampled_softmax"',
        'eval.metrics=["ndcg"]', "eval.ks=[5]", 'train.early_stopping_metric="ndcg@5"'])
    run_train.sequence_run(config, tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]["fingerprint"]
    assert stored["n_interactions"] == 240
    run_load.evaluate_run(tmp_path / "run")  # the same data: evaluated
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataChangedError, match="n_interactions 240 -> 234, n_users 40 -> 39"):
        run_load.evaluate_run(tmp_path / "run")
