"""Serving a run: `recommend` excludes everything a user has, and says so when nothing is left;
users the run learned nothing about are refused or served by the documented fallback.
`recommend_all` (`recommend --all`) writes every user's list to parquet, equal to `recommend`'s
user by user, for ordinary, sequential and causal runs, and refuses what it cannot do in one
line."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from causalrec_jax.cli import main
from causalrec_jax.config import dump_config, load_config
from causalrec_jax.errors import RunError
from causalrec_jax.parallel import make_mesh
from causalrec_jax.runs import load as run_load
from causalrec_jax.runs import serve as run_serve
from causalrec_jax.runs import train as run_train

N_ITEMS = 20
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


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
    printed = capsys.readouterr()
    assert len(printed.out.strip().splitlines()) == 2
    # the list says it is the popularity fallback, on stderr (stdout stays the list)
    [note] = printed.err.strip().splitlines()
    assert "unknown user id 'nobody'" in note and "training counts" in note
    assert main(["recommend", "--run", str(run_dir), "--user", "u0", "--fallback",
                 "popularity", "--k", "2"]) == 0
    assert capsys.readouterr().err == ""  # a known user is scored by the model


# ----------------------------------------------------------------------------- every user


def read_lists(path) -> dict[str, list[tuple[str, float]]]:
    """The parquet file of `recommend_all` as `{user: [(item, score), ...]}`, rank order."""
    frame = pd.read_parquet(path)
    lists: dict[str, list[tuple[str, float]]] = {}
    for user, group in frame.groupby("user", sort=False):
        assert group["rank"].tolist() == list(range(1, len(group) + 1))
        lists[user] = list(zip(group["item"], group["score"].astype(float), strict=True))
    return lists


def expected_lists(run, k, **options) -> dict[str, list[tuple[str, float]]]:
    """`recommend` of every user it serves (a user with nothing left has no list)."""
    lists = {}
    for user_id in map(str, run.user_ids):
        try:
            lists[user_id] = run_load.recommend(run, user_id, k, **options)
        except RunError as error:
            assert "nothing is left" in str(error) or "no training interactions" in str(error)
    return lists


def test_every_users_list_round_trips_equal_to_recommend(run_dir, tmp_path):
    run = run_load.load_run(run_dir)
    out = tmp_path / "recs.parquet"
    summary = run_serve.recommend_all(run, 5, out=out)
    table = pq.read_table(out)
    assert table.schema.names == ["user", "rank", "item", "score", "fallback"]
    assert [str(field.type) for field in table.schema] == ["string", "int32", "string",
                                                           "float", "bool"]
    assert json.loads(table.schema.metadata[b"causalrec"])["seed"] == 0
    assert not table.column("fallback").to_numpy().any()
    lists = read_lists(out)
    # Identical to `recommend`, user by user: the same items in the same order, the same
    # float32 scores to the last bit; "greedy" (every item known) gets no row.
    assert lists == expected_lists(run, 5)
    assert "greedy" not in lists and len(lists) == len(run.user_ids) - 1
    for user_id, top in lists.items():
        assert not {item for item, _ in top} & known(run, user_id)
    assert (summary.users, summary.rows, summary.empty_users, summary.short_users,
            summary.skipped_users) == (30, 150, 1, 0, 0)
    assert not list(tmp_path.glob(".*partial"))  # the temporary file is gone
    # Chunks of 7 users (the last one padded) give the same lists.
    again = run_serve.recommend_all(run, 5, out=tmp_path / "chunked.parquet", chunk_users=7)
    assert again.chunks == 5
    chunked = read_lists(tmp_path / "chunked.parquet")
    assert {user: [item for item, _ in top] for user, top in chunked.items()} == {
        user: [item for item, _ in top] for user, top in lists.items()}
    for user, top in chunked.items():
        np.testing.assert_allclose([s for _, s in top], [s for _, s in lists[user]],
                                   rtol=1e-6)


def test_the_known_item_table_is_known_items_of_every_user(run_dir):
    run = run_load.load_run(run_dir)
    indptr, items = run_serve.known_item_lists(run)
    for user in range(len(run.user_ids)):
        np.testing.assert_array_equal(items[indptr[user]:indptr[user + 1]],
                                      run_load.known_items(run, user))


def test_include_seen_and_short_lists(run_dir, tmp_path):
    run = run_load.load_run(run_dir)
    summary = run_serve.recommend_all(run, 3, out=tmp_path / "seen.parquet", include_seen=True)
    lists = read_lists(tmp_path / "seen.parquet")
    assert lists == expected_lists(run, 3, include_seen=True)
    assert len(lists["greedy"]) == 3 and summary.rows == 3 * len(run.user_ids)
    # k = the catalogue: every user gets exactly the items they do not have, best first.
    summary = run_serve.recommend_all(run, N_ITEMS, out=tmp_path / "short.parquet")
    lists = read_lists(tmp_path / "short.parquet")
    assert lists == expected_lists(run, N_ITEMS)
    for user_id, top in lists.items():
        assert len(top) == N_ITEMS - len(known(run, user_id))
    assert summary.short_users == 30 and summary.empty_users == 1
    assert summary.rows == sum(N_ITEMS - len(known(run, u)) for u in lists)


def test_cold_users_are_skipped_or_served_by_popularity(run_dir, tmp_path):
    run = run_load.load_run(run_dir)
    cold = str(run.user_ids[0])
    keep = run.data["train_user"] != 0
    run.data["train_user"], run.data["train_item"] = (run.data["train_user"][keep],
                                                      run.data["train_item"][keep])
    skipped = run_serve.recommend_all(run, 4, out=tmp_path / "skip.parquet")
    assert skipped.skipped_users == 1 and cold not in read_lists(tmp_path / "skip.parquet")
    served = run_serve.recommend_all(run, 4, out=tmp_path / "pop.parquet",
                                     fallback="popularity")
    assert served.fallback_users == 1 and served.skipped_users == 0
    frame = pd.read_parquet(tmp_path / "pop.parquet")
    assert set(frame.loc[frame["fallback"], "user"]) == {cold}
    lists = read_lists(tmp_path / "pop.parquet")
    assert lists == expected_lists(run, 4, fallback="popularity")
    counts = run.data["item_counts"]
    assert all(counts[np.flatnonzero(run.item_ids == item)[0]] == score
               for item, score in lists[cold])
    assert not {item for item, _ in lists[cold]} & known(run, cold)


def test_bad_requests_are_refused_before_anything_is_written(run_dir, tmp_path):
    run = run_load.load_run(run_dir)
    out = tmp_path / "recs.parquet"
    out.write_text("mine")
    with pytest.raises(RunError, match="exists: refusing to overwrite"):
        run_serve.recommend_all(run, 5, out=out)
    assert out.read_text() == "mine"
    for options, message in [({"k": 0}, "--k 0"), ({"seed_index": 1}, "--seed-index 1"),
                             ({"fallback": "recent"}, "--fallback 'recent'")]:
        fresh = tmp_path / f"{message[2:6]}.parquet"
        with pytest.raises(RunError, match=message):
            run_serve.recommend_all(run, **{"k": 5, **options}, out=fresh)
        assert not fresh.exists()
    with pytest.raises(RunError, match="--seed-index -1"):
        run_load.recommend(run, "u0", 3, seed_index=-1)
    assert not list(tmp_path.glob(".*partial"))


def test_the_command_line_serves_every_user_in_one_line(run_dir, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    assert main(["recommend", "--run", str(run_dir), "--all", "--k", "4", "--out",
                 str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1 and not captured.err
    assert "served 30 users (1 with nothing left): 120 rows, top 4 of seed 0" in captured.out
    assert read_lists(out) == expected_lists(run_load.load_run(run_dir), 4)
    # One model shard: the sharded path (padding, merge of shard lists) on one device.
    meshed = tmp_path / "meshed.parquet"
    assert main(["recommend", "--run", str(run_dir), "--all", "--k", "4", "--out",
                 str(meshed), "--mesh", "1,1"]) == 0
    capsys.readouterr()
    assert read_lists(meshed) == read_lists(out)
    before = out.read_bytes()
    for argv, message in [
        (["--all", "--out", str(out)], "exists: refusing to overwrite"),
        (["--all"], "--all writes a parquet file: give --out"),
        (["--user", "u0", "--all", "--out", str(tmp_path / "x.parquet")],
         "--user and --all exclude each other"),
        ([], "give either --user USER_ID"),
        (["--user", "u0", "--out", str(tmp_path / "x.parquet")], "--out is where --all"),
        (["--all", "--out", str(tmp_path / "x.parquet"), "--seed-index", "3"],
         "--seed-index 3: the run holds 1 seed"),
        (["--all", "--out", str(tmp_path / "x.parquet"), "--mesh", "1,2"],
         "--mesh: a 1 x 2 mesh needs 2 devices"),
        (["--user", "u0", "--mesh", "1,1"], "--mesh serves every user (--all)"),
    ]:
        assert main(["recommend", "--run", str(run_dir), *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert out.read_bytes() == before and not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize("kind", ["uplift", "ope"])
def test_runs_without_a_model_cannot_serve(kind, tmp_path, capsys):
    folder = tmp_path / kind
    folder.mkdir()
    overrides = ['uplift.method="dr"'] if kind == "uplift" else []
    dump_config(load_config(None, overrides), folder / "config.toml")
    if kind == "ope":
        (folder / "metrics.json").write_text(json.dumps({"test": {}, "ope": {"ips": {}}}))
    out = tmp_path / "recs.parquet"
    assert main(["recommend", "--run", str(folder), "--all", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no model" in err[0]
    assert ("uplift.method = 'dr'" if kind == "uplift" else "off-policy evaluation") in err[0]
    assert not out.exists()


WALKS = ['data.format="csv"', 'data.split="leave_one_out"',
         'data.columns={user = "user", item = "item", timestamp = "time"}',
         'model.name="sasrec"', "model.embedding_dim=8", "model.n_layers=1", "model.n_heads=1",
         "model.max_len=6", 'train.loss="full_softmax"', "train.epochs=1",
         'eval.metrics=["hit"]', "eval.ks=[5]", "eval.positive_threshold=0.0",
         'train.early_stopping_metric="hit@5"']


def test_a_sequential_run_serves_every_user_as_recommend_does(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(user, int(rng.integers(15)), step) for user in range(25) for step in range(8)]
    pd.DataFrame(rows, columns=["user", "item", "time"]).to_csv(tmp_path / "walks.csv",
                                                                 index=False)
    config = load_config(None, [*WALKS, f'data.path="{tmp_path / "walks.csv"}"'])
    run_train.sequence_run(config, tmp_path / "run", quiet=True)
    run = run_load.load_run(tmp_path / "run")
    summary = run_serve.recommend_all(run, 4, out=tmp_path / "recs.parquet")
    assert summary.seed == config.run.seed and summary.users == 25
    assert read_lists(tmp_path / "recs.parquet") == expected_lists(run, 4)
    with pytest.raises(RunError, match="--mesh: a run of sasrec serves from one device "
                                       "\\(its scores come from the history encoder"):
        run_serve.recommend_all(run, 4, out=tmp_path / "m.parquet", mesh=make_mesh([1, 1]))


def test_a_causal_run_serves_its_own_ranking(run_dir, tmp_path):
    """MACR on the fixture's log: served by its counterfactual score, with its own arrays."""
    config = load_config(run_dir / "config.toml", [
        'causal.method="macr"', 'train.loss="bce"', "train.epochs=2", "train.seeds=2"])
    run_train.train_run(config, tmp_path / "run", quiet=True)
    run = run_load.load_run(tmp_path / "run")
    assert set(run.extra) == {"user_logit", "item_logit"}
    summary = run_serve.recommend_all(run, 5, out=tmp_path / "recs.parquet", seed_index=1)
    lists = read_lists(tmp_path / "recs.parquet")
    assert summary.users == len(lists) == len(run.user_ids) - 1  # all but "greedy"
    assert lists == expected_lists(run, 5, seed_index=1)
    with pytest.raises(RunError, match="--mesh: causal.method = 'macr' serves from one device"):
        run_serve.recommend_all(run, 5, out=tmp_path / "m.parquet", mesh=make_mesh([1, 1]))


@pytest.mark.parametrize("model", ["neumf", "lightgcn"])
def test_models_without_factor_tables_serve_every_user_as_recommend_does(model, run_dir,
                                                                          tmp_path):
    """NeuMF (an MLP over the pair) and LightGCN (a propagated graph) serve through their
    `score_all`, as `recommend` does."""
    config = load_config(run_dir / "config.toml", [f'model.name="{model}"', "train.epochs=1"])
    run_train.train_run(config, tmp_path / "run", quiet=True)
    run = run_load.load_run(tmp_path / "run")
    run_serve.recommend_all(run, 5, out=tmp_path / "recs.parquet")
    assert read_lists(tmp_path / "recs.parquet") == expected_lists(run, 5)
    if model == "lightgcn":  # no row tables of its own to split
        with pytest.raises(RunError, match="--mesh: model.name = 'lightgcn' serves from one"):
            run_serve.recommend_all(run, 5, out=tmp_path / "m.parquet", mesh=make_mesh([1, 1]))


def test_skipped_users_are_one_line_on_stderr(run_dir, tmp_path, capsys, monkeypatch):
    def cold_first(run):
        represented = np.ones(len(run.user_ids), bool)
        represented[:3] = False
        return represented

    monkeypatch.setattr(run_serve, "represented_users", cold_first)
    out = tmp_path / "recs.parquet"
    assert main(["recommend", "--run", str(run_dir), "--all", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "skipped 3 user(s)" in captured.err
    assert "--fallback popularity" in captured.err
    user_ids = list(map(str, run_load.load_run(run_dir).user_ids))
    assert set(pd.read_parquet(out)["user"]) == set(user_ids[3:]) - {"greedy"}
    # Nobody to serve: a valid file with the columns and no row.
    monkeypatch.setattr(run_serve, "represented_users",
                        lambda run: np.zeros(len(run.user_ids), bool))
    assert main(["recommend", "--run", str(run_dir), "--all", "--out",
                 str(tmp_path / "none.parquet")]) == 0
    assert "served 0 users" in capsys.readouterr().out
    empty = pd.read_parquet(tmp_path / "none.parquet")
    assert len(empty) == 0 and list(empty.columns) == list(run_serve.COLUMNS)
