"""causalrec report: run folders read by kind, tables of mean ± std and the 95% interval over
seeds (markdown, CSV), figures with the expected panels and numbers, runs of incompatible
kinds reported apart, and bad input refused in one line. The run folders are written by hand
(metrics.json, log.jsonl, config.toml in the run contract's shape), so no test trains."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from causalrec_jax.cli import main
from causalrec_jax.errors import RunError
from causalrec_jax.report import plots, tables
from causalrec_jax.report.runs import read_run, read_runs
from causalrec_jax.report.write import write_report

# t quantile of a 95% two-sided interval with 2 degrees of freedom (3 seeds), from a table.
T_975_DF2 = 4.302652729749464
SEEDS = [0, 1, 2]


def _write(folder: Path, metrics: dict, config: str, log: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.toml").write_text(config)
    (folder / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in log))
    return folder


def _block(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """`{block: means, block_std: stds}` of per-seed values (no stored interval)."""
    return {"means": {k: float(np.mean(v)) for k, v in values.items()},
            "stds": {k: float(np.std(v, ddof=1)) for k, v in values.items()}}


def ranking_run(folder: Path, *, ndcg: list[float], mse: list[float], loss: str = "bpr",
                causal: bool = False) -> Path:
    """An ordinary (or causal) run of 3 seeds, 3 epochs: test ndcg@5 and mse per seed."""
    test = _block({"ndcg@5": ndcg, "mse": mse})
    per_seed = [{"seed": seed, "best_epoch": 2, "valid": {"ndcg@5": 0.3},
                 "test": {"ndcg@5": ndcg[i], "mse": mse[i], "n_users_ranked@5": 40}}
                for i, seed in enumerate(SEEDS)]
    metrics = {"test": {**test["means"], "auc": None}, "test_std": test["stds"],
               "valid": {"ndcg@5": 0.3}, "valid_std": {"ndcg@5": 0.0},
               "per_seed": per_seed, "seeds": SEEDS,
               "data": {"n_users": 50, "fingerprint": {"sha256": "same"}},
               "timing": {"train_seconds": 1.0}, "versions": {}}
    config = (f'[model]\nname = "mf"\n[train]\nloss = "{loss}"\n'
              'early_stopping_metric = "ndcg@5"\n[causal]\n'
              + ('method = "ips"\npropensity = "popularity"\n' if causal else 'method = "naive"\n'))
    if causal:
        truth = [0.6, 0.62, 0.64]
        metrics["test_truth"] = {"truth_auc": 0.62}
        metrics["test_truth_std"] = {"truth_auc": 0.02}
        for entry, value in zip(per_seed, truth, strict=True):
            entry["test_truth"] = {"truth_auc": value}
        metrics["propensity"] = {
            "method": "popularity", "clip": 0.05, "n": 100, "n_clipped": 10,
            "fraction_clipped": 0.1, "effective_sample_size": 60.0,
            "max_weight_before": 50.0, "max_weight_after": 20.0,
            "histogram": {"log10_edges": [-2.0, -1.5, -1.0, -0.5, 0.0],
                          "counts": [10, 30, 40, 20]}}
    log = [{"seed": seed, "epoch": epoch, "loss": 1.0 / (epoch + 1) + 0.1 * seed,
            "seconds": 0.1, "valid": {"ndcg@5": 0.1 * epoch + 0.01 * seed}}
           for epoch in range(3) for seed in SEEDS]
    return _write(folder, metrics, config, log)


def uplift_run(folder: Path) -> Path:
    per_seed = [{"seed": s, "best_epoch": 4, "valid": {}, "test": {"cp@10": 0.1 + 0.01 * s}}
                for s in SEEDS]
    metrics = {"test": {"cp@10": 0.11}, "test_std": {"cp@10": 0.01}, "per_seed": per_seed,
               "seeds": SEEDS, "timing": {},
               "data": {"mean_true_uplift": 0.1, "ideal": {"cp@10": 0.2},
                        "logging": {"cp@10": 0.05}},
               "versions": {}}
    log = [{"seed": s, "epoch": e, "loss": 0.2, "seconds": 0.1} for e in range(2) for s in SEEDS]
    return _write(folder, metrics, '[uplift]\nmethod = "dr"\n', log)


def ope_run(folder: Path) -> Path:
    estimates = {"ips": [0.8, 0.9, 1.0], "dr": [0.85, 0.9, 0.95]}
    truth = 0.9
    per_seed = [{"seed": seed, "best_epoch": -1, "valid": {}, "test": {
        f"{name}_{key}": value for name, values in estimates.items()
        for key, value in (("estimate", values[i]),
                           ("relative_error", abs(values[i] - truth) / truth))}}
        for i, seed in enumerate(SEEDS)]
    test = {key: float(np.mean([e["test"][key] for e in per_seed])) for key in per_seed[0]["test"]}
    metrics = {"test": test, "per_seed": per_seed, "seeds": SEEDS,
               "ope": {name: {"estimate": float(np.mean(v)), "n_eff": 100.0}
                       for name, v in estimates.items()},
               "truth": {"value": truth, "stderr": 0.01, "rounds": 1000},
               "data": {}, "timing": {}, "versions": {}}
    return _write(folder, metrics, '[ope]\nn_rounds = 100\n', [])


@pytest.fixture
def figures(monkeypatch):
    """The figures written while the test runs (pyplot's close is kept from discarding)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    return kept


def _figure(kept, path_title: str):
    """The kept figure whose suptitle contains `path_title`."""
    found = [f for f in kept if f.get_suptitle() and path_title in f.get_suptitle()]
    assert len(found) == 1, [f.get_suptitle() for f in kept]
    return found[0]


def _levels(axis) -> list:
    """The reference lines of a panel (drawn, unlike the error bars' caps, markers only)."""
    return [line for line in axis.lines if line.get_linestyle() not in ("None", "")]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_kind_of_a_run_is_told_from_its_files(tmp_path):
    assert read_run(ranking_run(tmp_path / "a", ndcg=[0.1] * 3, mse=[1] * 3)).kind == "ordinary"
    assert read_run(ranking_run(tmp_path / "b", ndcg=[0.1] * 3, mse=[1] * 3,
                                causal=True)).kind == "causal"
    assert read_run(uplift_run(tmp_path / "u")).kind == "uplift"
    assert read_run(ope_run(tmp_path / "o")).kind == "ope"
    # a search folder is read as its best run
    search = tmp_path / "search"
    ranking_run(search / "best", ndcg=[0.1] * 3, mse=[1] * 3)
    (search / "tune.json").write_text("{}")
    run = read_run(search)
    assert run.path == search / "best" and run.tuned and run.kind == "ordinary"
    runs, notes = read_runs([search, search / "best"])
    assert len(runs) == 1 and any("given twice" in note for note in notes)
    # two folders of one name are told apart by their parents
    runs, _ = read_runs([ranking_run(tmp_path / "x" / "run", ndcg=[0.1] * 3, mse=[1] * 3),
                         ranking_run(tmp_path / "y" / "run", ndcg=[0.1] * 3, mse=[1] * 3)])
    assert [run.name for run in runs] == ["x/run", "y/run"]


def test_the_95_interval_is_a_t_interval_over_seeds(tmp_path):
    run = read_run(ranking_run(tmp_path / "a", ndcg=[0.1, 0.2, 0.3], mse=[1.0, 1.0, 1.0]))
    ndcg = tables.block_summaries(run.metrics, "test")["ndcg@5"]
    half = T_975_DF2 * 0.1 / math.sqrt(3)  # std 0.1 over 3 seeds
    assert ndcg.mean == pytest.approx(0.2) and ndcg.std == pytest.approx(0.1)
    assert (ndcg.ci95_low, ndcg.ci95_high) == pytest.approx((0.2 - half, 0.2 + half))
    assert ndcg.n_seeds == 3
    assert tables.summary_cell(ndcg) == f"0.2000 ± 0.1000 [{0.2 - half:.4f}, {0.2 + half:.4f}]"
    # a stored interval is the run's own record and is read as it is
    stored = dict(run.metrics, test_ci95={"ndcg@5": [0.15, 0.25]})
    assert tables.block_summaries(stored, "test")["ndcg@5"].ci95_low == 0.15
    # undefined (null) and one seed: no interval, said so
    assert tables.summary_cell(tables.block_summaries(run.metrics, "test")["auc"]) == "n/a"
    one = dict(run.metrics, per_seed=run.metrics["per_seed"][:1], seeds=[0])
    single = tables.block_summaries(one, "test")["ndcg@5"]
    assert math.isnan(single.ci95_low) and tables.summary_cell(single).endswith("(1 seed)")


def test_a_report_writes_its_tables_and_the_csv_reads_back_the_runs_numbers(tmp_path, figures,
                                                                             capsys):
    naive = ranking_run(tmp_path / "naive", ndcg=[0.1, 0.2, 0.3], mse=[1.0, 1.2, 1.1])
    ips = ranking_run(tmp_path / "ips", ndcg=[0.3, 0.35, 0.4], mse=[0.9, 1.0, 0.95],
                      loss="mse", causal=True)
    out = tmp_path / "report"
    assert main(["report", str(naive), str(ips), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    names = {"report.md", "report.csv", "ranking_bars_test.png", "ranking_bars_test_truth.png",
             "ranking_propensity.png", "ranking_learning_curves.png"}
    assert {path.name for path in out.iterdir()} == names
    assert all(str(out / name) in printed for name in names)
    for name in names - {"report.md", "report.csv"}:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / name).stat().st_size > 20_000
    # report.csv: one line per run, block and metric; the means and stds of metrics.json
    rows = _read_csv(out / "report.csv")
    assert list(rows[0]) == list(tables.CSV_COLUMNS)
    for folder in (naive, ips):
        metrics = json.loads((folder / "metrics.json").read_text())
        for block in ("test", "valid", "test_truth"):
            for metric, mean in (metrics.get(block) or {}).items():
                line = [r for r in rows if r["run"] == folder.name and r["block"] == block
                        and r["metric"] == metric]
                assert len(line) == 1, (folder.name, block, metric)
                if mean is None:
                    assert line[0]["mean"] == "" and line[0]["ci95_low"] == ""
                    continue
                assert float(line[0]["mean"]) == mean
                assert float(line[0]["std"]) == metrics[f"{block}_std"][metric]
    line = next(r for r in rows if r["run"] == "naive" and r["metric"] == "ndcg@5"
                and r["block"] == "test")
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert float(line["ci95_low"]) == pytest.approx(0.2 - half)
    assert float(line["ci95_high"]) == pytest.approx(0.2 + half)
    assert line["n_seeds"] == "3" and line["protocol"].startswith("test split")
    # report.md: every block's table, its protocol as the caption; the figures embedded
    text = (out / "report.md").read_text()
    assert "**test** (test split, the library's protocol" in text
    assert "| run | ndcg@5 | mse | auc |" in text
    assert f"| naive | 0.2000 ± 0.1000 [{0.2 - half:.4f}, {0.2 + half:.4f}] |" in text
    assert "**test_truth** (against the simulator's ground truth" in text
    assert "| ips | popularity | 0.05 | 100 | 10 | 0.1000 | 60.0 | 0.6000 |" in text
    for name in names - {"report.md", "report.csv"}:
        assert f"]({name})" in text
    # what the report could not show, one line each
    assert "skipped: test_truth for naive: not reported by that run (only by ips)" in text
    assert "skipped: test auc: undefined (n/a) in every run (no panel)" in printed


def test_the_figures_hold_the_runs_numbers(tmp_path, figures):
    naive = ranking_run(tmp_path / "naive", ndcg=[0.1, 0.2, 0.3], mse=[1.0, 1.2, 1.1])
    ips = ranking_run(tmp_path / "ips", ndcg=[0.3, 0.35, 0.4], mse=[0.9, 1.0, 0.95],
                      loss="mse", causal=True)
    write_report([naive, ips], tmp_path / "report")
    # metric bars: a panel per defined metric (auc is null everywhere: none), a bar per run
    # at its mean, the error bar the 95% interval, from 0, runs named on the x axis
    bars = _figure(figures, "Ranking runs (ordinary, causal, sequential), test:")
    axes = [axis for axis in bars.axes if axis.get_visible()]
    assert [axis.get_title() for axis in axes] == ["ndcg@5", "mse (lower is better)"]
    ndcg = axes[0]
    assert [bar.get_height() for bar in ndcg.patches] == pytest.approx([0.2, 0.35])
    assert [label.get_text() for label in ndcg.get_xticklabels()] == ["naive", "ips"]
    assert ndcg.get_ylim()[0] == 0.0 and ndcg.get_ylabel() == "ndcg@5"
    segments = ndcg.collections[0].get_segments()  # the error bars, one per run
    half = T_975_DF2 * 0.05 / math.sqrt(3)  # ips: std 0.05
    assert segments[1][:, 1] == pytest.approx([0.35 - half, 0.35 + half])
    assert "95% Student-t interval" in bars.get_suptitle()
    # learning curves: one panel per loss function, one per validation metric; each run's
    # line is its mean over seeds
    curves = _figure(figures, "learning curves")
    titles = [axis.get_title() for axis in curves.axes if axis.get_visible()]
    assert titles == ["training bpr loss: mean over seeds, band = min–max",
                      "training mse loss: mean over seeds, band = min–max",
                      "validation ndcg@5 (early stopping): mean over seeds, band = min–max"]
    bpr = curves.axes[0].lines[0]
    assert list(bpr.get_xdata()) == [0, 1, 2]
    assert bpr.get_ydata() == pytest.approx([1.1, 0.6, 1 / 3 + 0.1])  # seeds add 0, .1, .2
    assert [line.get_label() for line in curves.axes[2].lines] == ["naive (3 seeds)",
                                                                   "ips (3 seeds)"]
    assert curves.axes[0].get_xlabel() == "epoch"
    # propensities: the stored histogram as shares of rows on a log axis, the clip marked;
    # then the clip report's bars
    propensity = _figure(figures, "propensities and their clip")
    histogram = propensity.axes[0]
    assert histogram.get_xscale() == "log"
    assert histogram.patches[0].get_data().values == pytest.approx([0.1, 0.3, 0.4, 0.2])
    assert [list(line.get_xdata()) for line in histogram.lines] == [[0.05, 0.05]]
    assert [bar.get_height() for bar in propensity.axes[1].patches] == [0.6]  # ESS / n
    assert [bar.get_height() for bar in propensity.axes[2].patches] == [0.1]  # clipped
    assert [bar.get_height() for bar in propensity.axes[3].patches] == [50.0, 20.0]


def test_runs_of_other_kinds_are_reported_apart_saying_what_was_skipped(tmp_path, figures,
                                                                        capsys):
    naive = ranking_run(tmp_path / "naive", ndcg=[0.1, 0.2, 0.3], mse=[1.0, 1.2, 1.1])
    uplift = uplift_run(tmp_path / "uplift")
    ope = ope_run(tmp_path / "ope")
    out = tmp_path / "report"
    assert main(["report", str(naive), str(uplift), str(ope), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    skipped = [line for line in printed if line.startswith("skipped: one table across kinds")]
    assert skipped == ["skipped: one table across kinds (ranking runs: naive; uplift runs: "
                       "uplift; ope runs: ope): they measure different things; each group "
                       "has its own tables and plots"]
    written = {path.name for path in out.iterdir()}
    assert {"ranking_bars_test.png", "uplift_bars_test.png", "ope_estimates.png",
            "uplift_learning_curves.png"} <= written
    assert "ope_learning_curves.png" not in written  # its log.jsonl is empty
    assert "skipped: ope: no log.jsonl, not in the learning curves" in printed
    text = (out / "report.md").read_text()
    for heading in ("## Ranking runs (ordinary, causal, sequential): naive",
                    "## Uplift runs: uplift", "## Off-policy evaluation runs: ope"):
        assert heading in text
    # each group's bars name only its own runs
    ranking = _figure(figures, "Ranking runs (ordinary, causal, sequential), test:")
    assert {label.get_text() for axis in ranking.axes
            for label in axis.get_xticklabels()} == {"naive"}
    # uplift: causal precision against the true uplift, the ideal and logging levels marked
    uplift_bars = _figure(figures, "Uplift runs, test: every user's items")
    axis = uplift_bars.axes[0]
    assert [bar.get_height() for bar in axis.patches] == pytest.approx([0.11])
    assert sorted(line.get_ydata()[0] for line in _levels(axis)) == [0.05, 0.2]
    assert {"true uplift", "logging"} <= {text.get_text() for text in axis.texts}
    # OPE: estimates against the truth, relative errors; a panel each
    estimates = _figure(figures, "Off-policy estimates")
    first, second = estimates.axes[:2]
    assert [bar.get_height() for bar in first.patches] == pytest.approx([0.9, 0.9])
    assert [list(line.get_ydata()) for line in _levels(first)] == [[0.9, 0.9]]  # the truth
    assert [bar.get_height() for bar in second.patches] == pytest.approx(
        [np.mean([1 / 9, 0, 1 / 9]), np.mean([0.05 / 0.9, 0, 0.05 / 0.9])])
    assert "| ope | ips | 0.9000 ± 0.1000" in text and "| 0.9000 ± 0.0100 |" in text


def test_bad_input_is_one_line_naming_it_and_writes_nothing(tmp_path, capsys):
    run = ranking_run(tmp_path / "run", ndcg=[0.1, 0.2, 0.3], mse=[1.0, 1.2, 1.1])
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    out = tmp_path / "out"
    cases = [(tmp_path / "empty", f"{tmp_path / 'empty'} is not a run folder (no metrics.json)"),
             (tmp_path / "missing", f"{tmp_path / 'missing'}: no such run folder"),
             (broken, f"{broken / 'metrics.json'}: not valid JSON (line 1")]
    for folder, message in cases:
        assert main(["report", str(run), str(folder), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("causalrec report: error: ")
        assert message in err
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging
    # an occupied --out is refused and left as it was
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["report", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out} already holds something" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(RunError, match="no run folders given"):
        read_runs([])


def test_bar_panels_mark_missing_values_and_start_at_zero(tmp_path):
    figure = plots.bar_panels(tmp_path / "bars.png", ["a", "b", "c"], [
        plots.BarPanel("x", [0.5, None, 0.25], [0.1, None, float("nan")],
                       missing=["n/a", "failed", "n/a"], references=[(0.4, "level", ":")]),
        plots.BarPanel("y", [-1.0, 2.0, 1.0])], title="t")
    first, second = figure.axes[:2]
    assert first.get_ylim()[0] == 0.0
    assert first.get_ylim()[1] == pytest.approx(1.15 * 0.6)
    texts = [text.get_text() for text in first.texts]
    assert "failed" in texts and "level" in texts and "0.500" in texts
    assert second.get_ylim()[0] < -1.0  # a negative value: the axis goes below 0
    assert (tmp_path / "bars.png").stat().st_size > 5_000
