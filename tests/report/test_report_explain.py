"""causalrec report on runs with an "explain" block: a table per truth and rule kind
(explainers x scores) in report.md, the same numbers in report.csv, and grouped bars per
explainer. The block is written by hand in the shape `runs.planted.explain_planted_run` writes,
so nothing trains."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from causalrec_jax.explain.scores import SCORE_NAMES
from causalrec_jax.report import explain as report_explain
from causalrec_jax.report.write import EXPLAIN_TABLES, write_report

# explainer -> (recall, precision, exact match, optimality gap) against the world; the oracle's
# are these numbers + 0.05 (gap: the same).
NUMBERS = {"greedy": (0.95, 0.85, 0.8, 0.0), "random": (0.6, 0.3, 0.1, 1.5),
           "integrated_gradients": (0.9, 0.7, 0.6, None)}


def _scores(recall, precision, exact, gap, shift=0.0) -> dict:
    scores = {name: 0.5 for name in SCORE_NAMES}
    scores.update({"cause_recall": recall + shift, "cause_precision": precision + shift,
                   "exact_match": exact + shift, "optimality_gap": gap, "n_scored": 40})
    return scores


def explain_block(rho: float = 0.5) -> dict:
    scores = {}
    for explainer, (recall, precision, exact, gap) in NUMBERS.items():
        world = {group: _scores(recall, precision, exact, gap) for group in ("all", "and", "or")}
        oracle = {group: _scores(recall, precision, exact, gap, 0.05)
                  for group in ("all", "and", "or")}
        scores[explainer] = {"world": world, "world_strict": world, "oracle": oracle}
    return {"protocol": {"model": "sasrec", "k": 10, "max_size": 10, "oracle_max_size": 3,
                         "learned": "loose: C in the top-K ...",
                         "instances": "rule-caused consumptions",
                         "world": {"n_users": 2000, "n_items": 100, "history_length": 10,
                                   "n_and_rules": 4, "n_or_rules": 4, "rho": rho, "seed": 0},
                         "run_seed": 0},
            "rho": rho, "identifiable": rho < 1, "explainers": list(NUMBERS),
            "scores": scores,
            "learned": {g: {"loose": 0.6, "strict": 0.3, "n": 80, "n_learned": 48,
                            "n_learned_strict": 24} for g in ("all", "and", "or")},
            "skipped": {"influence": "sequential models have none"}}


def ranking_run(folder: Path, explain: dict | None = None) -> Path:
    """A sequential run of one seed in the run contract's shape, with `explain` when given."""
    folder.mkdir(parents=True)
    metrics = {"test": {"ndcg@10": 0.2}, "test_std": {"ndcg@10": 0.0},
               "valid": {"ndcg@10": 0.2}, "per_seed": [
                   {"seed": 0, "best_epoch": 1, "valid": {"ndcg@10": 0.2},
                    "test": {"ndcg@10": 0.2}}],
               "seeds": [0], "data": {"n_users": 50, "n_windows": 10}, "timing": {},
               "versions": {}}
    if explain is not None:
        metrics["explain"] = explain
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.toml").write_text('[model]\nname = "sasrec"\n[train]\n'
                                        'early_stopping_metric = "ndcg@10"\n')
    (folder / "log.jsonl").write_text(json.dumps(
        {"seed": 0, "epoch": 0, "loss": 1.0, "seconds": 0.1, "valid": {"ndcg@10": 0.2}}) + "\n")
    return folder


def explained_run(folder: Path, rho: float = 0.5) -> Path:
    return ranking_run(folder, explain_block(rho))


@pytest.fixture
def figures(monkeypatch):
    """The figures written while the test runs (pyplot's close is kept from discarding)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    return kept


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_report_tables_and_csv_hold_the_explain_block(tmp_path, figures):
    run = explained_run(tmp_path / "planted")
    plain = ranking_run(tmp_path / "plain")
    result = write_report([run, plain], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Counterfactual explanations on planted ground truth" in text
    assert "### planted" in text and "### plain" not in text  # only runs with the block
    assert "K = 10" in text and "Not run: influence" in text
    header = "| explainer | " + " | ".join(report_explain.TABLE_SCORES) + " |"
    assert text.count(header) == len(EXPLAIN_TABLES)
    assert "| greedy | 0.950 | 0.850 | 0.800 | 0.000 |" in text
    assert "| integrated_gradients | 0.900 | 0.700 | 0.600 | — |" in text  # null gap
    assert "against the oracle's minimum sets" in text
    assert "![explanations of planted](explain_planted.png)" in text
    assert (tmp_path / "report" / "explain_planted.png") in result.files
    rows = _read_csv(tmp_path / "report" / "report.csv")
    mine = {(r["block"], r["metric"]): r for r in rows if r["block"].startswith("explain.")}
    assert float(mine[("explain.world.all", "greedy.cause_recall")]["mean"]) == 0.95
    assert float(mine[("explain.oracle.and", "random.exact_match")]["mean"]) == pytest.approx(0.15)
    assert mine[("explain.world.all", "integrated_gradients.optimality_gap")]["mean"] == ""
    assert {r["run"] for r in rows if r["block"].startswith("explain.")} == {"planted"}
    assert any(r["block"] == "test" for r in rows)  # the run's other blocks stay


def test_explain_bars_are_grouped_per_explainer_with_labels(tmp_path, figures):
    write_report([explained_run(tmp_path / "planted")], tmp_path / "report")
    figure = next(f for f in figures if "counterfactual explanations" in (f.get_suptitle()
                                                                          or ""))
    world, oracle = figure.axes
    assert [label.get_text() for label in oracle.get_xticklabels()] == list(NUMBERS)
    assert world.get_ylabel() and oracle.get_xlabel()
    legend = [text.get_text() for text in oracle.get_legend().get_texts()]
    assert legend == ["recall", "precision", "exact match", "size optimality 1/(1+gap)"]
    heights = [bar.get_height() for bar in world.patches]  # grouped: score by score
    assert heights[:3] == pytest.approx([0.95, 0.6, 0.9])  # recall of each explainer
    assert heights[3:6] == pytest.approx([0.85, 0.3, 0.7])  # precision
    optimality = [bar.get_height() for bar in oracle.patches][9:]
    assert optimality[:2] == pytest.approx([1.0, 1 / 2.5]) and math.isnan(optimality[2])
    assert "K = 10" in figure.get_suptitle()


def test_a_not_identifiable_block_says_so(tmp_path):
    table = report_explain.explain_table(explain_block(rho=1.0), "world", "and")
    assert "not identifiable" in table and "AND-rule instances" in table
    path = report_explain.rho_sweep_figure(tmp_path / "sweep.png", [
        {**explain_block(rho), "rho": rho} for rho in (0.0, 0.5, 1.0)])
    assert path.is_file() and path.stat().st_size > 0
