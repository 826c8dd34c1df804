"""experiments/explain_fidelity.py: --quick on a tiny synthetic RecBole dataset writes the
table, curves, retrain rows and plot; unknown models and explainers are one-line errors."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script(load_repo_script):
    return load_repo_script("experiments/explain_fidelity.py")


def tiny_recbole(folder: Path) -> Path:
    """30 users x 40 items, 12 timestamped ratings each, in the RecBole atomic format."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for user in range(30):
        for step, item in enumerate(rng.choice(40, 12, replace=False)):
            lines.append(f"{user + 1}\t{item + 1}\t{rng.integers(1, 6)}\t{1000 + step}")
    (folder / "tiny.inter").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.slow
def test_quick_mode_writes_the_table(script, tmp_path):
    data = tiny_recbole(tmp_path / "tiny")
    out = tmp_path / "out"
    table = script.main(["--out", str(out), "--quick", "--users", "3", "--data", str(data),
                         "--models", "mf,sasrec", "--explainers",
                         "greedy,effects,random,influence", "--retrain-seed", "0"])
    text = table.read_text()
    assert "K_r = 5" in text and "| mf | greedy |" in text and "| sasrec | greedy |" in text
    assert "residual kept whole (`--residual kept`)" in text
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert {row["explainer"] for row in rows if row["model"] == "sasrec"} == {
        "greedy", "effects", "random"}  # no influence functions for a sequential model
    mf_greedy = next(r for r in rows if r["model"] == "mf" and r["explainer"] == "greedy")
    assert 0.0 <= float(mf_greedy["retrain_left@10_found"]) <= 1.0
    assert float(mf_greedy["retrain_left@10_unedited"]) >= 0.0
    for value in ("pos@5,1", "del@5", "ins@5", "cdcg@5"):
        assert 0.0 <= float(mf_greedy[value]) <= 1.0
    assert 0.0 <= float(mf_greedy["found@10"]) <= 1.0
    # the cases an explanation holds: found, and left over the found ones
    assert float(mf_greedy["retrain_valid@10"]) == pytest.approx(
        float(mf_greedy["found@10"]) * float(mf_greedy["retrain_left@10_found"]))
    retrained = list(csv.DictReader((out / "retrain.csv").open()))
    # from seed 0, the explained one: retrained with nothing removed it is the explained
    # model, whose top item is each user's explained item
    assert {r["seed"] for r in retrained} == {"0", "1", "2", "3", "4"}
    assert {r["rank_after_retrain"] for r in retrained
            if r["explainer"] == "nothing" and r["seed"] == "0"} == {"1"}
    greedy_sizes = {r["user"]: r["set_size"] for r in retrained
                    if r["explainer"] == "greedy" and r["found"] == "True"}
    matched = [r for r in retrained if r["explainer"].endswith("@greedy_size")]
    assert {r["explainer"] for r in matched} == {"effects@greedy_size", "random@greedy_size",
                                                 "influence@greedy_size"}
    for row in retrained:
        if row in matched:  # the removal applied: as many items as the user's greedy set
            assert row["set_size"] == greedy_sizes[row["user"]]
        elif row["found"] == "False":  # no set, nothing retrained
            assert row["left_top10"] == "" and row["rank_after_retrain"] == ""
        elif row["explainer"] != "nothing":  # a found set drops the item per the re-fit
            assert int(row["refit_rank_after"]) > 10 and row["left_top10"] in ("True", "False")
        assert int(row["set_size"]) <= 12  # the whole history at most
    assert 0.0 <= float(mf_greedy["retrain_left@10_at_greedy_size"]) <= 1.0
    assert "Re-fits, medians over the users" in text and '"fit_distance"' in text
    assert (out / "fidelity.png").stat().st_size > 10_000
    assert (out / "retrain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(csv.DictReader((out / "curves.csv").open()))) == 5 * len(rows)


@pytest.mark.slow
def test_sets_held_across_the_run_seeds_are_retrained_beside_the_minimal_ones(script,
                                                                           tmp_path):
    data = tiny_recbole(tmp_path / "tiny")
    out = tmp_path / "out"
    table = script.main(["--out", str(out), "--quick", "--users", "4", "--data", str(data),
                         "--models", "mf", "--explainers", "greedy,random", "--run-seeds",
                         "3"])
    text = table.read_text()
    assert "MF trained with 3 seeds" in text and "2 of the 3 seeds" in text
    retrained = list(csv.DictReader((out / "retrain.csv").open()))
    assert {r["seed"] for r in retrained} == {"3", "4", "5", "6", "7"}  # after seeds 0-2
    labels = {r["explainer"] for r in retrained}
    assert {"greedy", "greedy_one_seed", "random", "random@greedy_size"} <= labels
    sizes = {(r["explainer"], r["user"]): (int(r["set_size"]), r["found"])
             for r in retrained}
    for (label, user), (size, found) in sizes.items():
        if label == "greedy" and found == "True":
            # the held set extends the set minimal for seed 0, which it found too
            one_size, one_found = sizes[("greedy_one_seed", user)]
            assert one_found == "True" and size >= one_size
    rows = list(csv.DictReader((out / "table.csv").open()))
    one_seed = next(r for r in rows if r["explainer"] == "greedy_one_seed")
    assert one_seed["pos@5,1"] == "" and 0.0 <= float(one_seed["found@10"]) <= 1.0


@pytest.mark.parametrize("args, message", [
    (["--run-seeds", "3", "--no-retrain"], "--run-seeds 3: the seeds serve the retrain check"),
    (["--run-seeds", "3", "--models", "sasrec"], "which runs on mf without --no-retrain"),
    (["--residual", "shared", "--models", "sasrec"],
     "--residual shared: the re-fit's residual applies to mf and neumf, and --models has "
     "neither"),
    (["--run-seeds", "3", "--retrain-seed", "1"],
     "--retrain-seed 1: the explanations saw seeds 0 to 2 (--run-seeds); expected >= 3"),
    (["--run-seeds", "3", "--quorum", "4"], "--quorum 4: expected --run-seeds above 1"),
])
def test_held_seed_flags_that_would_be_ignored_are_refused(script, tmp_path, args, message):
    from causalrec_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        script.parse(["--out", str(tmp_path), *args])


@pytest.mark.parametrize("flag, value, message", [
    ("--models", "mf,svd", "unknown model 'svd'"),
    ("--explainers", "greedy,lime", "unknown explainer 'lime'"),
    ("--users", "-3", "--users -3: expected an integer >= 1"),
    ("--max-history", "0", "--max-history 0: expected an integer >= 1"),
    ("--pack", "-1", "--pack -1: expected an integer >= 0"),
    ("--set-k", "5", "--set-k 5: expected an integer >= 10"),
    ("--run-seeds", "0", "--run-seeds 0: expected an integer >= 1"),
    ("--quorum", "2", "--quorum 2: expected --run-seeds above 1 and 1 to --run-seeds (1)"),
    ("--retrain-seed", "-1", "--retrain-seed -1: expected an integer >= 0"),
    ("--max-set", "0", "--max-set 0: expected an integer >= 1"),
    ("--residual", "half", "--residual 'half': expected one of kept, shared"),
])
def test_bad_input_is_one_line(tmp_path, flag, value, message, run_repo_script):
    code, err = run_repo_script("experiments/explain_fidelity.py",
                                ["--out", str(tmp_path), flag, value])
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_an_output_folder_in_use_is_refused(tmp_path, run_repo_script):
    (tmp_path / "table.md").write_text("an earlier result\n")
    code, err = run_repo_script("experiments/explain_fidelity.py",
                                ["--out", str(tmp_path), "--quick"])
    assert code == 2
    assert "already holds" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "table.md").read_text() == "an earlier result\n"


def test_a_reused_run_of_another_config_is_refused(script, tmp_path):
    from causalrec_jax.config import dump_config, load_config
    from causalrec_jax.errors import ConfigError

    runs = tmp_path / "old" / "runs"
    (runs / "mf").mkdir(parents=True)
    config = load_config(ROOT / "configs" / "ml100k_mf.toml",
                         ['data.path="../shared/data/ml-100k"', "train.epochs=7"])
    dump_config(config, runs / "mf" / "config.toml")
    (runs / "mf" / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"trained with other values of train\.epochs"):
        script.main(["--out", str(tmp_path / "new"), "--runs", str(runs), "--models", "mf"])


def test_a_reused_run_from_before_a_key_was_added_is_accepted(script, tmp_path, monkeypatch):
    from causalrec_jax.config import dumps_config, load_config

    folder = tmp_path / "runs" / "mf"
    folder.mkdir(parents=True)
    config = load_config(ROOT / "configs" / "ml100k_mf.toml",
                         ['data.path="../shared/data/ml-100k"'])
    # a run written before `model.attention_dim` existed: the key is absent, at its default
    text = dumps_config(config)
    assert "attention_dim = 0\n" in text
    (folder / "config.toml").write_text(text.replace("attention_dim = 0\n", ""))
    checked = []
    monkeypatch.setattr(script, "load_run", lambda path: checked.append(path) or config)
    monkeypatch.setattr(script, "check_unchanged", lambda *args: None)
    script.check_reused(folder, config)
    assert checked == [folder]  # past the config check, on to the data's fingerprint
    (folder / "config.toml").write_text(text.replace("attention_dim = 0\n",
                                                     "attention_dim = 8\n"))
    from causalrec_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=r"other values of model\.attention_dim"):
        script.check_reused(folder, config)


@pytest.mark.parametrize("text", ["[model\nname = ", '[model]\nname = "mf"\nno_such_key = 1\n'])
def test_a_reused_run_with_an_unreadable_config_is_refused(script, tmp_path, text):
    from causalrec_jax.config import load_config
    from causalrec_jax.errors import ConfigError

    folder = tmp_path / "runs" / "mf"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(text)
    config = load_config(ROOT / "configs" / "ml100k_mf.toml")
    with pytest.raises(ConfigError, match="not a readable run config") as error:
        script.check_reused(folder, config)
    assert "\n" not in str(error.value)
