"""experiments/debias_table.py: the table of debiasing methods runs, writes and reports."""

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from causalrec_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
COAT = ROOT.parent / "shared" / "data" / "coat"


def load_table_script():
    spec = importlib.util.spec_from_file_location(
        "debias_table", ROOT / "experiments" / "debias_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # make test-all (see Makefile)
@pytest.mark.skipif(not COAT.exists(), reason=f"Coat data not found at {COAT}")
def test_coat_table_has_one_finite_row_per_method(tmp_path, capsys):
    table = load_table_script()
    methods = ["naive", "ips", "snips"]
    rows = table.main(["--data", "coat", "--path", str(COAT), "--methods", ",".join(methods),
                       "--seeds", "2", "--set", "train.epochs=3", "--out", str(tmp_path)])
    assert list(rows) == methods
    for name in ("table.md", "table.csv", "table.json", "plots/debias_coat.png"):
        assert (tmp_path / name).exists(), name
    for method in methods:
        assert (tmp_path / method / "metrics.json").exists()
    lines = read_csv(tmp_path / "table.csv")
    assert [line["method"] for line in lines] == methods
    for line in lines:
        assert line["status"] == "ok", line["error"]
        auc = float(line["auc_mean"])
        assert math.isfinite(auc) and 0.5 < auc < 1.0
        assert float(line["auc_std"]) >= 0.0
    markdown = (tmp_path / "table.md").read_text()
    assert "candidates protocol" in markdown.lower()
    for method in methods:
        assert f"| {method} |" in markdown
    assert "| method | auc | ndcg@5 |" in capsys.readouterr().out
    written = json.loads((tmp_path / "table.json").read_text())
    assert written["rows"]["ips"]["mean"]["auc"] == pytest.approx(rows["ips"]["mean"]["auc"])
    assert len(written["rows"]["naive"]["seeds"]) == 2


@pytest.mark.slow  # make test-all (see Makefile)
def test_simulator_table_on_a_tiny_world(tmp_path):
    table = load_table_script()
    rows = table.main(["--data", "simulator", "--methods", "naive,ips", "--seeds", "2",
                       "--set", "sim.n_users=150", "--set", "sim.n_items=60",
                       "--set", "train.epochs=2", "--out", str(tmp_path)])
    assert set(rows) == {"naive", "ips"}
    assert all(row["status"] == "ok" for row in rows.values())
    assert (tmp_path / "plots" / "debias_simulator.png").exists()
    lines = read_csv(tmp_path / "table.csv")
    assert [line["method"] for line in lines] == ["naive", "ips"]
    assert all(math.isfinite(float(line["auc_mean"])) for line in lines)
    if rows["naive"]["truth"] is not None:  # the runner reports the simulator's truth metrics
        assert "truth_auc" in (tmp_path / "table.md").read_text()
        assert math.isfinite(float(lines[0]["truth_auc_mean"]))


def test_a_failing_method_is_a_failed_row_and_other_errors_propagate(tmp_path, monkeypatch):
    table = load_table_script()

    def not_wired(config, out, quiet=True):
        if config.causal.method == "ips":
            raise ConfigError("key causal.method: not wired yet")
        raise RuntimeError("a bug")

    monkeypatch.setattr(table.run_train, "train_run", not_wired)
    args = ["--data", "simulator", "--seeds", "1"]
    rows = table.main(args + ["--methods", "ips", "--out", str(tmp_path / "a")])
    assert rows["ips"]["status"] == "failed" and "not wired yet" in rows["ips"]["error"]
    assert "failed: ConfigError: key causal.method: not wired yet" in (
        tmp_path / "a" / "table.md").read_text()
    assert read_csv(tmp_path / "a" / "table.csv")[0]["status"] == "failed"
    with pytest.raises(RuntimeError, match="a bug"):
        table.main(args + ["--methods", "naive", "--out", str(tmp_path / "b")])


def test_rows_read_literature_and_truth_metrics_when_present():
    table = load_table_script()
    metrics = {
        "test": {"auc": 0.7, "ndcg@5": 0.5, "recall@5": 0.4, "ndcg@10": 0.6, "mse": 1.1},
        "test_std": {"auc": 0.01, "ndcg@5": 0.02, "recall@5": 0.03, "ndcg@10": 0.0, "mse": 0.1},
        "test_literature": {"ndcg@5": 0.55}, "test_literature_std": {"ndcg@5": 0.01},
        "test_full": {"ndcg@5": 0.25}, "test_full_std": {"ndcg@5": 0.02},
        "test_truth": {"auc": 0.8, "ndcg@5": 0.6, "mse": 0.9},
        "timing": {"train_seconds": 2.5, "epochs_run": 3}, "seeds": [0, 1],
    }
    row = table.summarize_run(metrics)
    assert row["literature"] == {"mean": 0.55, "std": 0.01}
    assert row["full"] == {"mean": 0.25, "std": 0.02}
    assert row["truth"]["mean"]["auc"] == 0.8 and row["truth"]["std"]["auc"] is None
    markdown = table.markdown_table({"naive": row, "ips": table.summarize_run(
        {k: v for k, v in metrics.items() if k not in ("test_literature", "test_truth")})})
    assert "truth_auc" in markdown and "0.5500 ± 0.0100" in markdown
    assert "full-ranking ndcg@5" in markdown and "0.2500 ± 0.0200" in markdown
    assert "| ips |" in markdown and "—" in markdown


@pytest.mark.slow  # make test-all (see Makefile)
def test_yahoo_configs_run_on_a_folder_in_the_released_layout(tmp_path):
    """The yahoo_<method> configs train on any folder laid out as Yahoo! R3 is released
    (tab-separated `user item rating`, ids from 1; MNAR train file, MAR test file)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "yahoo"
    folder.mkdir()
    n_users, n_items = 60, 40
    train_rows, test_rows = [], []
    for user in range(1, n_users + 1):
        for item in rng.choice(n_items, 8, replace=False) + 1:
            train_rows.append(f"{user}\t{item}\t{rng.integers(1, 6)}")
        for item in rng.choice(n_items, 10, replace=False) + 1:
            test_rows.append(f"{user}\t{item}\t{rng.integers(1, 6)}")
    (folder / "ydata-ymusic-rating-study-v1_0-train.txt").write_text("\n".join(train_rows) + "\n")
    (folder / "ydata-ymusic-rating-study-v1_0-test.txt").write_text("\n".join(test_rows) + "\n")
    table = load_table_script()
    rows = table.main(["--data", "yahoo_r3", "--path", str(folder), "--methods",
                       "ips,dr_jl,rel_mf", "--seeds", "2", "--set", "train.epochs=2",
                       "--out", str(tmp_path / "out")])
    for method in ("ips", "dr_jl", "rel_mf"):
        assert rows[method]["status"] == "ok", rows[method]["error"]
        assert 0.0 <= rows[method]["mean"]["auc"] <= 1.0


def test_the_plot_has_truth_panels_on_the_simulator_and_untruncated_axes(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    table = load_table_script()
    row = {"status": "ok", "mean": {"auc": 0.7, "ndcg@5": 0.6}, "std": {"auc": 0.01,
                                                                         "ndcg@5": 0.02},
           "truth": {"mean": {"auc": 0.68, "ndcg@5": 0.88, "mse": 1.2},
                     "std": {"auc": 0.0, "ndcg@5": 0.0, "mse": 0.0}}}
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to inspect it
    table.plot_table(tmp_path / "p.png", {"naive": row, "ips": dict(row, truth=None)},
                     "simulator")
    axes = [axis for axis in figures[0].axes if axis.get_visible()]
    titles = [axis.get_title() for axis in axes]
    assert [t.split(",")[0] for t in titles] == [
        "test auc (MAR)", "test ndcg@5 (MAR)", "truth_auc (every cell)",
        "truth_ndcg@5 (every cell)", "truth_mse (lower is better)"]
    assert all(axis.get_ylim()[0] == 0.0 for axis in axes)
    assert (tmp_path / "p.png").stat().st_size > 10_000
    figures.clear()
    table.plot_table(tmp_path / "q.png", {"naive": dict(row, truth=None)}, "coat")
    assert len([a for a in figures[0].axes if a.get_visible()]) == 2


@pytest.mark.parametrize("data", ["coat", "simulator"])
def test_replot_redraws_the_saved_figure_from_its_csv(tmp_path, monkeypatch, data):
    """`--replot CSV` trains nothing: the figure of experiments/results/debias_<data>.png
    comes back from its CSV, every bar at the CSV's mean."""
    import shutil

    import matplotlib.pyplot as plt

    table = load_table_script()
    saved = ROOT / "experiments" / "results" / f"debias_{data}.csv"
    csv_path = tmp_path / saved.name
    shutil.copyfile(saved, csv_path)
    monkeypatch.setattr(table.run_train, "train_run", None)  # nothing may train
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    rows = table.main(["--data", data, "--replot", str(csv_path)])
    assert (tmp_path / f"debias_{data}.png").stat().st_size > 50_000
    # The CSV reads back into the rows that write it again byte for byte.
    table.write_csv(tmp_path / "again.csv", rows)
    assert (tmp_path / "again.csv").read_text() == saved.read_text()
    lines = read_csv(saved)
    axes = [axis for axis in figures[0].axes if axis.get_visible()]
    assert len(axes) == (5 if data == "simulator" else 2)
    auc = axes[0]
    heights = [bar.get_height() for bar in auc.patches]
    assert heights == pytest.approx([float(line["auc_mean"]) for line in lines])
    assert [label.get_text() for label in auc.get_xticklabels()] == [
        line["method"] for line in lines]
    assert all(axis.get_ylim()[0] == 0.0 for axis in axes)
    assert any(list(line.get_ydata()) == [0.5, 0.5] for line in auc.lines)  # chance
    texts = [text.get_text() for text in auc.texts]
    assert "chance" in texts and "naive" in texts and f"{heights[0]:.3f}" in texts
    if data == "simulator":  # mse of the methods that do not predict ratings: marked n/a
        assert [t.get_text() for t in axes[4].texts].count("n/a") == 3


def test_replot_needs_an_existing_csv(tmp_path, capsys):
    table = load_table_script()
    with pytest.raises(SystemExit):
        table.main(["--data", "coat", "--replot", str(tmp_path / "missing.csv")])
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow  # make test-all (see Makefile)
@pytest.mark.skipif(not COAT.exists(), reason=f"Coat data not found at {COAT}")
def test_protocol_b_runs_the_stabledr_preset(tmp_path):
    """`--protocol b`: ratings >= 3 positive, the whole MAR test (4,640 Coat ratings, the
    slices included), the literature NDCG (no positive = 1) as the protocol's figure."""
    table = load_table_script()
    rows = table.main(["--data", "coat", "--path", str(COAT), "--protocol", "b",
                       "--methods", "naive", "--seeds", "1", "--set", "train.epochs=2",
                       "--out", str(tmp_path / "b")])
    assert rows["naive"]["status"] == "ok" and rows["naive"]["literature"]["mean"] is not None
    written = json.loads((tmp_path / "b" / "table.json").read_text())
    assert written["preset"] == "b" and "ratings >= 3 are positives" in written["protocol"]
    assert 'data.mar_test="all"' in written["overrides"]
    metrics = json.loads((tmp_path / "b" / "naive" / "metrics.json").read_text())
    counts = metrics["per_seed"][0]["test"]
    # Every Coat user is tested; 9 have no rating >= 3 (under (a), >= 4, 63 of 281 would not).
    assert counts["n_users_evaluated"] + counts["n_users_no_positive"] == 290
    assert counts["n_users_no_positive"] == 9
    assert (tmp_path / "b" / "plots" / "debias_coat.png").stat().st_size > 10_000


@pytest.mark.slow  # make test-all (see Makefile)
def test_the_yahoo_proxy_trains_the_shipped_yahoo_configs_on_the_simulated_world(tmp_path,
                                                                                capsys):
    """`--data yahoo_proxy`: configs/yahoo_<method>.toml on the simulated Yahoo! R3 world
    (shrunk here by later --set values); --path is refused, it reads no folder."""
    table = load_table_script()
    rows = table.main(["--data", "yahoo_proxy", "--methods", "naive,dr_jl", "--seeds", "1",
                       "--set", "sim.n_users=600", "--set", "sim.mar_users=200",
                       "--set", "sim.n_items=120", "--set", "train.epochs=2",
                       "--out", str(tmp_path / "proxy")])
    assert all(row["status"] == "ok" for row in rows.values()), rows
    assert rows["naive"]["truth"] is not None  # the ground truth is known
    written = json.loads((tmp_path / "proxy" / "table.json").read_text())
    assert 'data.format="simulator"' in written["overrides"]
    assert "Yahoo! R3 proxy" in written["protocol"]
    with pytest.raises(SystemExit):
        table.main(["--data", "yahoo_proxy", "--path", str(tmp_path), "--out",
                    str(tmp_path / "x")])
    assert "reads no folder" in capsys.readouterr().err
