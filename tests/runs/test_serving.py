"""Serving a run: `recommend` excludes everything a user has, and says so when nothing is left;
users the run learned nothing about are refused or served by the documented fallback."""

import numpy as np
import pytest

from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.errors import RunError
from causalrec_jax.runs import load as run_load
from causalrec_jax.runs import train as run_train

N_ITEMS = 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A BPR-MF run on a csv where user "greedy" has every item of the catalogue."""
    folder = tmp_path_factory.mktemp("serving")
    rng = np.random.default_rng(0)
    rows = ["user,item"]
    for user in range(30):
        for item in rng.choice(N_ITEMS, size=8, replace=False):
            rows.append(f"u{user},i{item}")
    rows += [f"greedy,i{item}" for item in range(N_ITEMS)]
    (folder / "log.csv").write_text("\n".join(rows) + "\n")
    config = load_config(None, [
        'data.format="csv"', f'data.path="{folder / "log.csv"}"', 'data.split="random"',
        "train.epochs=2", 'train.loss="bpr"', "model.embedding_dim=4", "eval.ks=[5]",
        'eval.metrics=["recall"]', 'train.early_stopping_metric="recall@5"'])
    run_train.train_run(config, folder / "run", quiet=True)
    return folder / "run"


def known(run, user_id):
    user = int(np.flatnonzero(run.user_ids == user_id)[0])
    return {str(run.item_ids[i]) for i in run_load.known_items(run, user)}


def test_recommendations_exclude_every_split(run_dir):
    run = run_load.load_run(run_dir)
    # The run stores its test pairs too: test items are among what a user is known to have.
    assert {"train_user", "valid_user", "test_user"} <= set(run.data)
    user = int(run.data["test_user"][0])
    user_id = str(run.user_ids[user])
    mine = run.data["test_item"][run.data["test_user"] == user]
    test_items = {str(run.item_ids[i]) for i in mine}
    assert test_items <= known(run, user_id)
    for user_id in [u for u in run.user_ids[:10] if u != "greedy"]:
        top = run_load.recommend(run, user_id, k=N_ITEMS)
        items = [item for item, _ in top]
        assert not set(items) & known(run, user_id)
        assert len(items) == N_ITEMS - len(known(run, user_id))
    # --include-seen ranks the whole catalogue by the model's scores.
    everything = run_load.recommend(run, user_id, k=N_ITEMS, include_seen=True)
    assert len(everything) == N_ITEMS
    scores = [score for _, score in everything]
    assert scores == sorted(scores, reverse=True)
    assert known(run, user_id) & {item for item, _ in everything}


def test_a_user_with_every_item_gets_one_line(run_dir):
    run = run_load.load_run(run_dir)
    with pytest.raises(RunError, match=r"user 'greedy' has interacted with all 20 items.*"
                                       r"--include-seen"):
        run_load.recommend(run, "greedy", k=5)
    assert len(run_load.recommend(run, "greedy", k=5, include_seen=True)) == 5


def test_unknown_and_cold_users_are_refused_or_served_by_popularity(run_dir):
    run = run_load.load_run(run_dir)
    with pytest.raises(RunError, match="unknown user id 'nobody'.*--fallback popularity"):
        run_load.recommend(run, "nobody", k=3)
    counts = run.data["item_counts"]
    top = run_load.recommend(run, "nobody", k=3, fallback="popularity")
    assert [score for _, score in top] == sorted(counts.astype(float), reverse=True)[:3]
    # A user whose training pairs are gone (cold) is never scored by an untrained embedding.
    user_id = str(run.user_ids[0])
    keep = run.data["train_user"] != 0
    run.data["train_user"], run.data["train_item"] = (run.data["train_user"][keep],
                                                      run.data["train_item"][keep])
    with pytest.raises(RunError, match=f"user '{user_id}' has no training interactions"):
        run_load.recommend(run, user_id, k=3)
    served = run_load.recommend(run, user_id, k=N_ITEMS, fallback="popularity")
    assert not {item for item, _ in served} & known(run, user_id)
    assert all(counts[np.flatnonzero(run.item_ids == item)[0]] == score for item, score in served)
    with pytest.raises(RunError, match="--fallback 'recent'"):
        run_load.recommend(run, user_id, k=3, fallback="recent")


def test_the_command_line_serves_and_refuses_in_one_line(run_dir, capsys):
    assert main(["recommend", "--run", str(run_dir), "--user", "u0", "--k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    run = run_load.load_run(run_dir)
    assert not {line.split()[1] for line in lines} & known(run, "u0")
    assert main(["recommend", "--run", str(run_dir), "--user", "greedy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing is left to recommend" in err[0]
    assert main(["recommend", "--run", str(run_dir), "--user", "greedy", "--include-seen",
                 "--k", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["recommend", "--run", str(run_dir), "--user", "nobody", "--fallback",
                 "popularity", "--k", "2"]) == 0
