"""The `causalrec` command line: `data` on fixtures, real data and malformed files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from causalrec_jax.cli import main


def write_coat(folder: Path, train_rows, test_rows) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.ascii", train_rows), ("test.ascii", test_rows)):
        text = "".join(" ".join(str(v) for v in row) + "\r\n" for row in rows)
        (folder / name).write_text(text, newline="")
    return folder


def test_data_prints_statistics(tmp_path, capsys):
    folder = write_coat(tmp_path / "coat", [[5, 0, 1], [0, 4, 0]], [[0, 3, 0], [2, 0, 0]])
    assert main(["data", "--format", "coat", "--path", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "users             2" in out
    assert "items             3" in out
    assert "interactions      5" in out
    assert "train 3, valid 0, test 2" in out


def test_data_json(tmp_path, capsys):
    folder = write_coat(tmp_path / "coat", [[5, 0, 1], [0, 4, 0]], [[0, 3, 0], [2, 0, 0]])
    assert main(["data", "--format", "coat", "--path", str(folder), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_users"] == 2 and stats["n_items"] == 3 and stats["n_interactions"] == 5


def test_data_csv_with_columns_reports_duplicates_and_invalid(tmp_path, capsys):
    path = tmp_path / "log.csv"
    path.write_text("uid;sku;stars\na;x;5\na;x;4\nb;y;\nb;x;2\n")
    code = main(
        ["data", "--format", "csv", "--path", str(path), "--sep", ";",
         "--columns", "user=uid,item=sku,rating=stars", "--json"]
    )
    assert code == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_interactions"] == 2
    cleaning = stats["cleaning"]
    assert cleaning["duplicates_removed"] == 1
    assert cleaning["invalid_nan"] == 1


def test_data_simulator_needs_no_files(capsys):
    code = main(["data", "--format", "simulator", "--set", "sim.n_users=60",
                 "--set", "sim.n_items=40", "--json"])
    assert code == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_users"] == 60 and stats["n_items"] == 40


def test_malformed_file_is_one_line_error(tmp_path, capsys):
    folder = write_coat(tmp_path / "coat", [[5, 0, 1], [0, 4]], [[0, 3, 0], [2, 0, 0]])
    assert main(["data", "--format", "coat", "--path", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "train.ascii, line 2" in err
    assert "Traceback" not in err


def test_bad_config_key_and_missing_path(capsys):
    assert main(["data", "--format", "coat", "--set", "data.pth=x"]) == 2
    assert "did you mean 'path'" in capsys.readouterr().err
    assert main(["data", "--format", "coat"]) == 2
    assert "--path" in capsys.readouterr().err


def test_data_on_real_coat(shared_data_dir, capsys):
    assert main(["data", "--format", "coat", "--path", str(shared_data_dir / "coat"),
                 "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["n_users"], stats["n_items"], stats["n_interactions"]) == (290, 300, 11600)


@pytest.mark.parametrize("entry", [[sys.executable, "-m", "causalrec_jax"],
                                   [str(Path(sys.executable).parent / "causalrec")]])
def test_installed_entry_points(entry):
    result = subprocess.run(entry + ["--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "data" in result.stdout


# `causalrec simulate`: a tiny world (epsilon-greedy slates: exact propensities, fast).
SIMULATE_SETS = [
    arg
    for value in ("env.n_users=30", "env.n_items=40", "env.horizon=4", "env.slate_size=3",
                  'policy.kind="epsilon_greedy"')
    for arg in ("--set", value)
]
SIMLOG_FILES = {"simlog.json", "impressions.parquet", "rounds.parquet", "truth.npz",
                "config.toml"}


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_simulate_writes_a_simlog_that_data_reads(tmp_path, capsys):
    out = tmp_path / "runs" / "sim"
    assert main(["simulate", *SIMULATE_SETS, "--out", str(out), "--quiet"]) == 0
    summary = capsys.readouterr().out
    assert "120 rounds" in summary and "40 items" in summary and "slates of 3" in summary
    assert "click rate" in summary and "organic" in summary and str(out) in summary
    assert {p.name for p in out.iterdir()} == SIMLOG_FILES
    manifest = json.loads((out / "simlog.json").read_text())
    assert manifest["format"] == "simlog" and manifest["n_rounds"] == 120
    assert main(["data", "--format", "simlog", "--path", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n_users"] == 30 and stats["n_items"] == 40 and stats["raw_rows"] == 360


def test_simulate_same_seed_same_files_other_seed_other_clicks(tmp_path, capsys):
    from causalrec_jax.sim.simlog import read_simlog

    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        args = ["simulate", *SIMULATE_SETS, "--set", f"run.seed={seed}"]
        assert main([*args, "--out", str(tmp_path / name), "--quiet"]) == 0
    assert _folder_bytes(tmp_path / "a") == _folder_bytes(tmp_path / "b")
    clicks_a = read_simlog(tmp_path / "a")[0].clicks
    clicks_c = read_simlog(tmp_path / "c")[0].clicks
    assert not (clicks_a == clicks_c).all()


def test_simulate_refuses_a_folder_that_is_not_a_simlog(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert main(["simulate", *SIMULATE_SETS, "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "causalrec simulate: error" in error and str(out) in error
    assert _folder_bytes(out) == {"metrics.json": b"{}"}


def test_simulate_never_replaces_an_earlier_simlog(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", *SIMULATE_SETS, "--out", str(out), "--quiet"]) == 0
    before = _folder_bytes(out)
    capsys.readouterr()
    assert main(["simulate", *SIMULATE_SETS, "--set", "run.seed=3", "--out", str(out),
                 "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "already holds a simlog" in error
    assert _folder_bytes(out) == before


def test_data_on_a_corrupted_simlog_is_one_line_error(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", *SIMULATE_SETS, "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "simlog.json").read_text())
    (out / "simlog.json").write_text(json.dumps({**manifest, "version": 2}))
    capsys.readouterr()
    assert main(["data", "--format", "simlog", "--path", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "simlog.json" in error and "'version'" in error


@pytest.mark.parametrize("argv", [["recommend", "--run", "r", "--k", "abc"], ["trian"],
                                  ["explain", "--run", "r", "--user", "1", "--max-size"]])
def test_argument_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("causalrec") and "error:" in err[0], err
    assert "--help" in err[0]


def test_an_interrupted_command_ends_without_interpreter_shutdown(monkeypatch):
    import os

    from causalrec_jax import cli

    ended = []

    def exit_now(status):
        ended.append(status)
        raise SystemExit(status)

    monkeypatch.setattr(os, "_exit", exit_now)
    for status, via_exit in ((130, True), (0, False), (2, False)):
        monkeypatch.setattr(cli, "main", lambda status=status: status)
        ended.clear()
        with pytest.raises(SystemExit) as exit_:
            cli.entry()
        assert exit_.value.code == status and (ended == [130]) == via_exit
