"""experiments/scaling.py: the shipped Amazon configs (SASRec and HSTU) trained at two widths on
a planted file; the parameter counts are the models', the table and the plot are written, a
resumed call reads finished runs back, and bad input is one line."""

import csv
from pathlib import Path

import jax
import pytest
from flax import nnx

SCRIPT = "experiments/scaling.py"
ROOT = Path(__file__).resolve().parents[2]
QUICK = ["model.max_len=8", "train.epochs=2", "train.batch_size=16", "eval.ks=[1, 10]",
         'train.early_stopping_metric="ndcg@10"', "train.seeds=2"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, cycle_walks):
    walks, _ = cycle_walks(40, 30, 12, seed=2)
    path = tmp_path_factory.mktemp("scaling") / "Planted.txt"
    path.write_text("\n".join(f"u{user} " + " ".join(f"i{item}" for item in walk)
                              for user, walk in enumerate(walks)) + "\n")
    return path


def count(model) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.slow  # the script's run of 8 trainings; its refusals and resume stay in make test
def test_two_models_at_two_widths(planted, tmp_path, load_repo_script):
    from causalrec_jax.models.hstu import HSTU
    from causalrec_jax.models.sasrec import SASRec

    script = load_repo_script(SCRIPT)
    out = tmp_path / "out"
    args = ["--config", str(ROOT / "configs/sports_sasrec.toml"), "--config",
            str(ROOT / "configs/sports_hstu.toml"), "--dims", "8,16", "--out", str(out),
            "--set", f'data.path="{planted}"', *sum((["--set", s] for s in QUICK), [])]
    table = script.main(args)
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [(row["model"], row["embedding_dim"]) for row in rows] == [
        ("sasrec", "8"), ("sasrec", "16"), ("hstu", "8"), ("hstu", "16")]
    key = jax.random.key(0)
    # the shipped configs' structures at each width, counted independently
    expected = {("sasrec", d): count(SASRec(30, 8, key=key, hidden_dim=d, n_layers=1, n_heads=1,
                                            ffn_dim=d, block="sasrec", positions="from_end"))
                for d in (8, 16)}
    expected |= {("hstu", d): count(HSTU(30, 8, key=key, hidden_dim=d, n_layers=2, n_heads=1,
                                         temperature=0.05)) for d in (8, 16)}
    for row in rows:
        assert int(row["parameters"]) == expected[row["model"], int(row["embedding_dim"])]
        # two seeds: the count is one seed's, and the table gives their spread
        assert 0.0 < float(row["test_ndcg@10"]) <= 1.0 and row["seeds"] == "2"
        assert float(row["test_ndcg@10_std"]) >= 0.0 and len(row["best_epochs"].split()) == 2
    text = table.read_text()
    assert "every item ranked with the user's history masked" in text and "| hstu | 16 |" in text
    image = (out / "scaling.png").read_bytes()
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 10_000
    # resumed: the finished runs are read back, not trained again
    stamps = {path: path.stat().st_mtime_ns for path in out.glob("runs/*/metrics.json")}
    assert len(stamps) == 4
    script.main([*args, "--resume"])
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    assert list(csv.DictReader((out / "table.csv").open())) == rows
    # a resumed call with other settings, or into a folder this script did not make: refused
    from causalrec_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="made with other --config, --dims or --set"):
        script.main([*args, "--resume", "--set", "train.epochs=3"])
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("the user's\n")
    with pytest.raises(ConfigError, match="holds no readable scaling.json"):
        script.main([*(str(foreign) if value == str(out) else value for value in args),
                     "--resume"])
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(("args", "message"), [
    (["--dims", "64"], "--dims 64: expected at least 2 distinct integers >= 1"),
    (["--dims", "64,x"], "--dims '64,x': expected comma-separated integers"),
    (["--config", "configs/ml100k_mf.toml"], "model.name = 'mf'; the scaling script trains "
                                             "sequential models"),
    (["--dims", "30,64", "--config", "configs/sports_sasrec.toml", "--set",
      "model.n_heads=4"], "model.embedding_dim 30 is not divisible by model.n_heads 4"),
    (["--metric", "ndcg@5"], "--metric 'ndcg@5': configs/sports_sasrec.toml evaluates"),
    (["--set", "model.embedding_dim=64"], "--set model.embedding_dim: the widths come from"),
    (["--config", "configs/toys_hstu.toml"], "the --config files read different data"),
    # the data is read when the first run starts: nothing finished, no folder left behind
    (["--set", 'data.path="no/such/file.txt"'], "no/such/file.txt"),
])
def test_bad_input_is_one_line(tmp_path, args, message, run_repo_script):
    if "--config" not in args or "toys_hstu" in " ".join(args):
        args = [*args, "--config", "configs/sports_sasrec.toml"]
    code, err = run_repo_script(SCRIPT, ["--out", str(tmp_path / "out"), *args])
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_resume_reads_an_override_as_its_value_not_its_spelling(tmp_path, load_repo_script):
    """`--set data.path=X` and `--set data.path="X"` are one setting: a resume spelled the
    other way is accepted, also against a marker that stored the raw strings; another value
    is still refused."""
    import argparse
    import json

    from causalrec_jax.errors import ConfigError

    script = load_repo_script("experiments/scaling.py")
    configs = [Path("configs/sports_sasrec.toml")]

    def args(setting, resume):
        return argparse.Namespace(config=configs, dims=[32, 64], overrides=[setting],
                                  resume=resume)

    marker = script.check_marker(tmp_path, args('data.path="a/b.txt"', False))
    (tmp_path / "scaling.json").write_text(json.dumps(marker))
    assert script.check_marker(tmp_path, args("data.path=a/b.txt", True)) == marker
    old = dict(marker, sets=['data.path="a/b.txt"'])  # the raw strings of an older marker
    (tmp_path / "scaling.json").write_text(json.dumps(old))
    assert script.check_marker(tmp_path, args("data.path=a/b.txt", True)) == marker
    with pytest.raises(ConfigError, match="made with other --config, --dims or --set"):
        script.check_marker(tmp_path, args("data.path=a/c.txt", True))
