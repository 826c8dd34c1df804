"""`causalrec explain` on a trained SASRec run, checked from outside the explainer: the window
it explains is the one `recommend` reads, its standing with the whole history is the served
rank, and its minimal set, deleted from that window by drop and shift, really takes the item
out of the top-K of the run's own scorer (`tasks.sequential.make_score_next`)."""

import json

import numpy as np
import pandas as pd
import pytest

from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.data.sequences import to_tokens
from causalrec_jax.runs import train as run_train
from causalrec_jax.runs.explain import explain_run
from causalrec_jax.runs.load import known_items, load_run, recommend
from causalrec_jax.tasks.sequential import make_score_next
from causalrec_jax.train.loop import seed_slice

MAX_LEN = 8
K = 3


@pytest.fixture(scope="module")
def sasrec_run(tmp_path_factory):
    """Walks over 20 items where item t+1 tends to follow item t, so the model leans on the
    latest items of a history; 2 seeds so that the seed index matters."""
    folder = tmp_path_factory.mktemp("explain_seq")
    rng = np.random.default_rng(0)
    rows = []
    for user in range(40):
        item = int(rng.integers(20))
        for step in range(10):
            rows.append((f"u{user}", f"i{item}", step))
            item = (item + 1) % 20 if rng.random() < 0.7 else int(rng.integers(20))
    pd.DataFrame(rows, columns=["user", "item", "time"]).to_csv(folder / "walks.csv",
                                                                 index=False)
    config = load_config(None, [
        'data.format="csv"', f'data.path="{folder / "walks.csv"}"',
        'data.split="leave_one_out"', 'data.columns={user = "user", item = "item", '
        'timestamp = "time"}', 'model.name="sasrec"', "model.embedding_dim=16",
        "model.n_layers=1", "model.n_heads=1", f"model.max_len={MAX_LEN}",
        'train.loss="full_softmax"', "train.epochs=4", "train.seeds=2",
        'eval.metrics=["hit"]', "eval.ks=[5]", "eval.positive_threshold=0.0",
        'train.early_stopping_metric="hit@5"'])
    run_train.sequence_run(config, folder / "run", quiet=True)
    return folder / "run"


def rank_in(scores: np.ndarray, item: int, exclude: np.ndarray) -> int:
    others = ~exclude & (np.arange(len(scores)) != item)
    return int(np.sum(others & (scores >= scores[item])))


@pytest.mark.parametrize("seed_index", [0, 1])
def test_the_minimal_set_dropped_from_the_window_leaves_the_top_k(sasrec_run, seed_index):
    run = load_run(sasrec_run)
    score_next = make_score_next(run.parts.graphdef)
    params = seed_slice(run.parts.params, seed_index)
    checked = 0
    for user_id in ("u1", "u4", "u9", "u17"):
        result = explain_run(sasrec_run, user_id, k=K, max_size=MAX_LEN, seed_index=seed_index)
        e = result.explanation
        user = int(np.flatnonzero(run.user_ids == user_id)[0])
        window = run.data["next_history"][user]
        # the explained history is the window recommend reads, oldest first
        assert result.history_ids == [str(run.item_ids[t - 1]) for t in window if t != 0]
        np.testing.assert_array_equal(to_tokens(e.history), window[window != 0])
        exclude = np.zeros(len(run.item_ids), bool)
        exclude[known_items(run, user)] = True
        served = np.asarray(score_next(params, window[None]))[0]
        assert e.base_rank == rank_in(served, e.target, exclude) == result.served_rank
        top = recommend(run, user_id, k=1, seed_index=seed_index)[0][0]
        assert result.item_id == top and e.base_rank == 0
        # drop and shift: the kept items, most recent last, left-padded with 0
        kept = np.delete(window[window != 0], e.minimal_set)
        edited = np.zeros(MAX_LEN, np.int32)
        edited[MAX_LEN - len(kept):] = kept
        after = np.asarray(score_next(params, edited[None]))[0]
        rank = rank_in(after, e.target, exclude)
        assert rank == e.rank_after_set
        assert (rank >= K) == e.found
        np.testing.assert_allclose(after[e.target], e.score_after_set, rtol=1e-5, atol=1e-5)
        checked += e.found
    assert checked >= 2  # most top items of a 3-step chain rest on a few recent items


def test_the_command_explains_a_sequential_run_as_json(sasrec_run, capsys):
    assert main(["explain", "--run", str(sasrec_run), "--user", "u4", "--k", str(K),
                 "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    result = explain_run(sasrec_run, "u4", k=K)
    assert payload["item"] == result.item_id
    assert "drop" in payload["semantics"]
    assert [row["item"] for row in payload["causes"]][:3] == [
        result.history_ids[i] for i in result.explanation.causes[:3]]


def test_a_refit_l2_on_a_sequential_run_is_refused(sasrec_run):
    from causalrec_jax.errors import RunError

    with pytest.raises(RunError, match="--refit-l2 run: .* re-fits nothing"):
        explain_run(sasrec_run, "u4", k=K, refit_l2="run")
    with pytest.raises(RunError, match="--residual shared: .* re-fits nothing"):
        explain_run(sasrec_run, "u4", k=K, residual="shared")
    from causalrec_jax.runs.explain import deletion_model
    from causalrec_jax.runs.load import load_run

    with pytest.raises(ValueError, match="residual 'shared': a sasrec run .* re-fits nothing"):
        deletion_model(load_run(sasrec_run), 0, residual="shared")
