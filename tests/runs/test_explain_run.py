"""`causalrec explain` on trained runs: the table, --json, the chart, titles, one-line errors,
and the re-fit of a trained user giving back (about) the trained user."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from causalrec_jax.cli import main
from causalrec_jax.config import dump_config, load_config
from causalrec_jax.errors import RunError
from causalrec_jax.runs import train as run_train
from causalrec_jax.runs.explain import deletion_model, explain_run
from causalrec_jax.runs.load import known_items, load_run
from causalrec_jax.train.loop import seed_slice

N_USERS, N_ITEMS = 30, 25


def write_recbole(folder):
    """A RecBole dataset with titles: each user rates 10 items, 1..5."""
    rng = np.random.default_rng(0)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for user in range(N_USERS):
        for t, item in enumerate(rng.choice(N_ITEMS, size=10, replace=False)):
            rating = 1 + (item + user) % 5
            lines.append(f"u{user}\ti{item}\t{rating}\t{t}")
    (folder / "toy.inter").write_text("\n".join(lines) + "\n")
    titles = ["item_id:token\tmovie_title:token_seq\tyear:token"]
    titles += [f"i{item}\tFilm number {item}\t{1990 + item}" for item in range(N_ITEMS)]
    (folder / "toy.item").write_text("\n".join(titles) + "\n")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_recbole(tmp_path_factory.mktemp("explain_data"))


@pytest.fixture(scope="module")
def bpr_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain_run") / "run"
    config = load_config(None, [
        'data.format="recbole"', f'data.path="{data_dir}"', 'data.split="user_random"',
        "train.epochs=3", 'train.loss="bpr"', "model.embedding_dim=4", "eval.ks=[5]",
        'eval.metrics=["recall"]', 'train.early_stopping_metric="recall@5"',
        "train.weight_decay=0.001", "eval.positive_threshold=0.0"])
    run_train.train_run(config, out, quiet=True)
    return out


def test_explain_prints_causes_with_titles_and_writes_a_chart(bpr_run, tmp_path, capsys):
    png = tmp_path / "why.png"
    assert main(["explain", "--run", str(bpr_run), "--user", "u3", "--k", "3",
                 "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "for user 'u3' (mf)" in out and "Film number" in out
    assert "deletion: re-fit" in out
    assert ("minimal counterfactual explanation (greedy)" in out
            or "no counterfactual set" in out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without --item: the user's top recommendation is explained
    top = out.splitlines()[0]
    run = load_run(bpr_run)
    from causalrec_jax.runs.load import recommend

    assert f"why '{recommend(run, 'u3', k=1)[0][0]} " in top


def test_explain_never_replaces_a_file(bpr_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = ["explain", "--run", str(bpr_run), "--user", "u3", "--k", "3"]
    assert main(command) == 0 and main(command) == 0  # the default chart, twice
    charts = sorted(path.name for path in tmp_path.iterdir())
    [first] = [name for name in charts if not name.endswith("-2.png")]
    assert charts == sorted([first, first.replace(".png", "-2.png")])
    capsys.readouterr()
    mine = tmp_path / "mine.png"
    mine.write_text("the user's own file")
    for png, expected in ((mine, "the file exists"), (tmp_path / "notes.txt", "image format")):
        assert main([*command, "--png", str(png)]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and expected in error and str(png) in error
    assert mine.read_text() == "the user's own file"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*charts, "mine.png"])


def test_explain_json_holds_every_number(bpr_run, tmp_path, capsys):
    run = load_run(bpr_run)
    user = int(np.flatnonzero(run.user_ids == "u5")[0])
    known = set(known_items(run, user).tolist())
    item = next(str(run.item_ids[i]) for i in range(N_ITEMS) if i not in known)
    assert main(["explain", "--run", str(bpr_run), "--user", "u5", "--item", item, "--json",
                 "--method", "exhaustive", "--max-size", "3", "--k", "2",
                 "--png", str(tmp_path / "x.png")]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["user"] == "u5" and record["item"] == item
    assert record["title"] == f"Film number {item[1:]}" and record["method"] == "exhaustive"
    assert len(record["causes"]) == len(deletion_model(run, user).history[
        deletion_model(run, user).valid])
    changes = [cause["score_change"] for cause in record["causes"]]
    assert changes == sorted(changes)
    assert all({"item", "score_change", "rank_after", "rank_change", "title"} <= set(c)
               for c in record["causes"])
    assert record["size"] == len(record["minimal_set"]) and record["png"].endswith("x.png")
    if record["found"] and record["size"]:
        assert record["rank_after_set"] > 2


def test_the_run_level_explanation_applied_removes_the_item(bpr_run):
    result = explain_run(bpr_run, "u7", k=3, max_size=8)
    explanation = result.explanation
    run = load_run(bpr_run)
    user = int(np.flatnonzero(run.user_ids == "u7")[0])
    model = deletion_model(run, user)
    keep = model.valid.astype(np.float32)
    keep[np.flatnonzero(model.valid)[explanation.minimal_set]] = 0.0
    scores = model.scores(keep)
    exclude = np.zeros(N_ITEMS, bool)
    exclude[known_items(run, user)] = True
    others = ~exclude & (np.arange(N_ITEMS) != explanation.target)
    rank = int(np.sum(others & (scores >= scores[explanation.target])))
    assert rank == explanation.rank_after_set
    assert (rank >= 3) == explanation.found


@pytest.mark.slow  # make test-all (see Makefile)
def test_a_set_held_across_seeds_removes_the_item_under_every_seed(data_dir, tmp_path,
                                                                    capsys):
    out = tmp_path / "three_seeds"
    config = load_config(None, [
        'data.format="recbole"', f'data.path="{data_dir}"', 'data.split="user_random"',
        "train.epochs=3", 'train.loss="bpr"', "model.embedding_dim=4", "eval.ks=[5]",
        'eval.metrics=["recall"]', 'train.early_stopping_metric="recall@5"',
        "train.weight_decay=0.001", "eval.positive_threshold=0.0", "train.seeds=3"])
    run_train.train_run(config, out, quiet=True)
    run = load_run(out)
    held_any = False
    for user_id, quorum in (("u1", 3), ("u4", None), ("u7", 3), ("u9", None)):
        minimal = explain_run(out, user_id, k=3, max_size=10).explanation
        held = explain_run(out, user_id, k=3, max_size=10, hold_seeds=True,
                           quorum=quorum).explanation
        assert held.seeds == 3 and held.target == minimal.target
        # the held set extends the minimal one
        assert list(held.minimal_set[: minimal.size]) == list(minimal.minimal_set)
        user = int(np.flatnonzero(run.user_ids == user_id)[0])
        exclude = np.zeros(N_ITEMS, bool)
        exclude[known_items(run, user)] = True
        others = ~exclude & (np.arange(N_ITEMS) != held.target)
        ranks = []
        for seed_index in range(3):
            model = deletion_model(run, user, seed_index=seed_index)
            keep = model.valid.astype(np.float32)
            keep[np.flatnonzero(model.valid)[held.minimal_set]] = 0.0
            scores = model.scores(keep)
            ranks.append(int(np.sum(others & (scores >= scores[held.target]))))
        assert ranks[0] == held.rank_after_set
        assert held.agree == sum(rank >= 3 for rank in ranks)
        # the explained seed and a quorum (default: a majority, 2 of 3)
        assert held.found == (ranks[0] >= 3 and held.agree >= (quorum or 2))
        held_any |= held.found and held.size > minimal.size
    assert held_any  # some set needed more than the explained seed's minimal one
    with pytest.raises(RunError, match="--quorum 4: expected --hold-seeds and 1 to 3"):
        explain_run(out, "u1", k=3, hold_seeds=True, quorum=4)
    assert main(["explain", "--run", str(out), "--user", "u4", "--k", "3", "--hold-seeds",
                 "--png", str(tmp_path / "held.png")]) == 0
    assert "seeds" in capsys.readouterr().out


def test_holding_across_seeds_needs_a_run_of_several(bpr_run, capsys):
    assert main(["explain", "--run", str(bpr_run), "--user", "u1", "--hold-seeds"]) == 2
    error = capsys.readouterr().err
    assert "--hold-seeds" in error and "train.seeds >= 2" in error and error.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["--user", "nobody"], "unknown user id 'nobody'"),
    (["--user", "u1", "--item", "i999"], "unknown item id 'i999'"),
    (["--user", "u1", "--method", "magic"], "--method 'magic'"),
])
def test_bad_input_is_one_line(bpr_run, capsys, args, message):
    assert main(["explain", "--run", str(bpr_run), *args]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_an_item_the_user_has_is_refused(bpr_run, capsys):
    run = load_run(bpr_run)
    user = int(np.flatnonzero(run.user_ids == "u2")[0])
    item = str(run.item_ids[known_items(run, user)[0]])
    assert main(["explain", "--run", str(bpr_run), "--user", "u2", "--item", item]) == 2
    error = capsys.readouterr().err
    assert f"user 'u2' already has item '{item}'" in error and error.count("\n") == 1


@pytest.mark.parametrize("kind", ["uplift", "ope"])
def test_runs_that_cannot_be_explained_are_named(tmp_path, capsys, kind):
    out = tmp_path / kind
    out.mkdir()
    if kind == "uplift":
        dump_config(load_config(None, ['uplift.method="dr"']), out / "config.toml")
    else:
        dump_config(load_config(None, []), out / "config.toml")
        (out / "metrics.json").write_text(json.dumps({"ope": {}, "test": {}}))
    assert main(["explain", "--run", str(out), "--user", "0"]) == 2
    error = capsys.readouterr().err
    assert ("an uplift run" if kind == "uplift" else "an OPE run") in error
    assert error.count("\n") == 1


def test_refitting_a_trained_user_gives_back_the_trained_user(data_dir, tmp_path):
    """The semantics' sanity check: MF trained to convergence (squared error, L2, full-batch
    steps, no validation split, so the last epoch is kept) minimises each user's share of the
    objective, so re-fitting a user on the full history with the items frozen, under the L2
    the weight decay implies, lands on the trained vector."""
    out = tmp_path / "mse"
    config = load_config(None, [
        'data.format="recbole"', f'data.path="{data_dir}"', 'data.split="user_random"',
        "data.split_ratios=[0.9, 0.0, 0.1]", "train.epochs=150", 'train.loss="mse"',
        "model.embedding_dim=3", 'eval.metrics=["rmse"]', 'train.early_stopping_metric="rmse"',
        "train.patience=150", "train.weight_decay=0.05", "train.batch_size=4096",
        "train.learning_rate=0.05", "train.checkpoint_every=150"])
    run_train.train_run(config, out, quiet=True)
    run = load_run(out)
    model = nnx.merge(run.parts.graphdef, seed_slice(run.parts.params, 0), run.parts.constants)
    distances, correlations = [], []
    for user in range(0, N_USERS, 3):
        refit = deletion_model(run, user)
        trained = np.concatenate([np.asarray(model.user_bias[...][user])[None],
                                  np.asarray(model.user_factors[...][user])])
        fitted = np.asarray(ravel_pytree(refit.data["theta_start"])[0])
        distances.append(np.linalg.norm(fitted - trained) / np.linalg.norm(trained))
        served = np.asarray(run.score_all_fn(0)(jnp.asarray([user])))[0]
        correlations.append(np.corrcoef(served, refit.scores())[0, 1])
    # measured: median relative distance 1.2e-4, largest 5e-4; correlation 1 - 3e-8
    assert np.median(distances) < 1e-3 and max(distances) < 5e-3, distances
    assert min(correlations) > 0.99999, correlations
