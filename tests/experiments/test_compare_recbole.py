"""The pure parts of experiments/compare_recbole.py, without RecBole or torch: reading our run
folders into rows, time to a quality threshold, and the table."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compare():
    path = ROOT / "experiments" / "compare_recbole.py"
    spec = importlib.util.spec_from_file_location("compare_recbole", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(folder: Path, metrics: dict, lines: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


@pytest.fixture
def sequential_run(tmp_path):
    """A SASRec-shaped run: flat validation metrics per line, training+validation seconds."""
    metrics = {
        "test": {"ndcg@10": 0.09, "hit@10": 0.18},
        "test_unmasked": {"ndcg@10": 0.058, "hit@10": 0.117},
        "valid": {"ndcg@10": 0.08},
        "data": {"n_users": 943, "n_items": 1682, "n_train": 98114},
        "timing": {"train_seconds": 31.0, "eval_seconds": 0.7, "peak_rss_mb": 900.5},
        "versions": {"jax": "0.10.2"},
    }
    lines = [{"epoch": 0, "seed": 0, "ndcg@10": 0.03, "hit@10": 0.06, "seconds": 17.0},
             {"epoch": 1, "seed": 0, "ndcg@10": 0.071, "hit@10": 0.1, "seconds": 7.0},
             {"epoch": 2, "seed": 0, "ndcg@10": 0.08, "hit@10": 0.12, "seconds": 6.0},
             {"epoch": 0, "seed": 1, "ndcg@10": 0.5, "hit@10": 0.6, "seconds": 1.0}]
    return write_run(tmp_path / "sasrec", metrics, lines)


@pytest.fixture
def general_run(tmp_path):
    """A LightGCN-shaped run: nested `valid`, training seconds only, eval seconds apart."""
    metrics = {
        "test": {"ndcg@10": 0.32, "hit@10": 0.83},
        "valid": {"ndcg@10": 0.26, "mrr@10": 0.45},
        "data": {"n_users": 943, "n_items": 1682},
        "timing": {"train_seconds": 4.0, "eval_seconds": 2.0, "epoch_seconds": 1.0},
    }
    lines = [{"epoch": e, "loss": 0.5, "seconds": s, "valid": {"ndcg@10": v, "mrr@10": 0.4}}
             for e, s, v in [(0, 2.5, 0.1), (1, 0.5, 0.2), (2, 0.5, 0.25), (3, 0.5, 0.26)]]
    return write_run(tmp_path / "lightgcn", metrics, lines)


def test_seconds_to_reach_first_crossing_and_never(compare):
    curve = [{"seconds": 10.0, "ndcg@10": 0.05}, {"seconds": 20.0, "ndcg@10": 0.0702},
             {"seconds": 30.0, "ndcg@10": 0.09}]
    assert compare.seconds_to_reach(curve, 0.0702) == 20.0  # reaching it exactly counts
    assert compare.seconds_to_reach(curve, 0.06) == 20.0
    assert compare.seconds_to_reach(curve, 0.01) == 10.0
    assert compare.seconds_to_reach(curve, 0.1) is None
    assert compare.seconds_to_reach([], 0.1) is None
    assert compare.seconds_to_reach([{"seconds": 5.0, "hit@10": 0.3}], 0.1) is None


def test_sequential_run_becomes_a_row(compare, sequential_run):
    row = compare.read_our_run(sequential_run, "sasrec", command="causalrec train x")
    # seed 0 only; cumulative seconds, compilation (epoch 0) included
    assert [p["seconds"] for p in row["curve"]] == pytest.approx([17.0, 24.0, 30.0])
    assert [p["ndcg@10"] for p in row["curve"]] == [0.03, 0.071, 0.08]
    assert row["seconds_per_epoch"] == pytest.approx(7.0)
    assert row["epochs_run"] == 3
    # RecBole's protocol is the unmasked one; masked kept apart
    assert row["test_recbole_protocol"] == {"ndcg@10": 0.058, "hit@10": 0.117}
    assert row["test_history_masked"] == {"ndcg@10": 0.09, "hit@10": 0.18}
    assert row["valid_history_masked"] is True
    assert row["train_seconds"] == 31.0
    assert row["peak_mb"] == 900.5  # from metrics.json when not measured
    assert row["data"] == {"n_users": 943, "n_items": 1682}
    assert compare.read_our_run(sequential_run, "sasrec", peak_mb=1200.0)["peak_mb"] == 1200.0


def test_general_run_spreads_eval_seconds_over_epochs(compare, general_run):
    row = compare.read_our_run(general_run, "lightgcn")
    # each epoch gets 2.0 / 4 = 0.5 s of validation on top of its training seconds
    assert [p["epoch_seconds"] for p in row["curve"]] == pytest.approx([3.0, 1.0, 1.0, 1.0])
    assert [p["seconds"] for p in row["curve"]] == pytest.approx([3.0, 4.0, 5.0, 6.0])
    assert row["train_seconds"] == pytest.approx(6.0)
    assert row["seconds_per_epoch"] == pytest.approx(1.0)
    assert row["test_recbole_protocol"]["ndcg@10"] == 0.32
    assert row["test_history_masked"] is None
    assert row["peak_mb"] is None


def test_a_run_with_lines_per_seed_reads_its_first_seed(compare, tmp_path):
    """log.jsonl has one line per epoch and seed; the curve is the first listed seed's."""
    metrics = {"test": {"ndcg@10": 0.3}, "valid": {"ndcg@10": 0.2}, "seeds": [5, 6],
               "data": {}, "timing": {"train_seconds": 2.0, "eval_seconds": 1.0}}
    lines = [{"seed": seed, "epoch": epoch, "loss": 0.5, "seconds": 0.5,
              "valid": {"ndcg@10": value}}
             for epoch in range(2) for seed, value in ((5, 0.1 + epoch), (6, 0.9))]
    row = compare.read_our_run(write_run(tmp_path / "mf", metrics, lines), "lightgcn")
    assert [p["ndcg@10"] for p in row["curve"]] == pytest.approx([0.1, 1.1])
    # each of the 2 epochs gets 1.0 / 2 s of validation
    assert [p["seconds"] for p in row["curve"]] == pytest.approx([1.0, 2.0])


def recbole_row(model, best, curve, capped_at=None):
    return {"library": "recbole", "model": model, "protocol": "p",
            "test_recbole_protocol": {"ndcg@10": 0.0609, "hit@10": 0.1251},
            "test_history_masked": None, "valid_best": {"ndcg@10": best},
            "valid_history_masked": False, "curve": curve, "seconds_per_epoch": 170.0,
            "epochs_run": len(curve), "capped_at": capped_at, "train_seconds": 340.0,
            "peak_mb": 4700.0, "data": {}, "versions": {"recbole": "1.2.1"},
            "command": "compare_recbole.py recbole --model " + model}


def test_thresholds_and_table(compare, sequential_run, general_run):
    rows = [
        compare.read_our_run(sequential_run, "sasrec"),
        compare.read_our_run(general_run, "lightgcn"),
        recbole_row("sasrec", 0.05, [{"seconds": 170.0, "ndcg@10": 0.04},
                                     {"seconds": 340.0, "ndcg@10": 0.05}], capped_at=2),
        recbole_row("lightgcn", 0.2, [{"seconds": 2.0, "ndcg@10": 0.15},
                                      {"seconds": 4.0, "ndcg@10": 0.2}]),
    ]
    rows = compare.add_time_to_quality(rows)
    by = {(r["library"], r["model"]): r for r in rows}
    # SASRec: the 0.0702, whatever RecBole reached here; ours crosses at epoch 1
    assert by["causalrec_jax", "sasrec"]["threshold"] == 0.0702
    assert by["causalrec_jax", "sasrec"]["seconds_to_threshold"] == pytest.approx(24.0)
    assert by["recbole", "sasrec"]["seconds_to_threshold"] is None
    # general models: RecBole's best valid ndcg@10 of this run
    assert by["causalrec_jax", "lightgcn"]["threshold"] == 0.2
    assert by["causalrec_jax", "lightgcn"]["seconds_to_threshold"] == pytest.approx(4.0)
    assert by["recbole", "lightgcn"]["seconds_to_threshold"] == 4.0

    text = compare.render_table(rows, {"date": "2026-01-01", "commands": ["a b", "c d"]})
    lines = text.splitlines()
    assert "- date: 2026-01-01" in lines
    assert "  - `a b`" in lines
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 2 + len(rows)  # header, rule, rows
    # RecBole before ours within a model; sasrec before lightgcn
    assert table[2].startswith("| recbole | sasrec | 0.0609 | 0.1251 | — | 0.0500 |")
    assert "2 (capped at 2 epochs (not converged))" in table[2]
    assert "never reached 0.0702" in table[2]
    assert table[3].startswith("| causalrec_jax | sasrec | 0.0580 | 0.1170 | 0.0900 / 0.1800 |"
                               " 0.0800 (history masked) | 7.0 | 3 | 24.0 (≥ 0.0702) | 31.0 |"
                               " 900.5 |")
    assert table[5].endswith("| 6.0 | — |")  # no peak memory recorded
    assert "Reference (from the issue, not measured by this run)" in text
    assert "2,841 s" in text


def test_write_table_reads_rows_and_writes_both_files(compare, tmp_path, general_run):
    out = tmp_path / "out"
    out.mkdir()
    row = compare.read_our_run(general_run, "lightgcn")
    (out / "ours_lightgcn.json").write_text(json.dumps(row))
    compare.write_table(out)
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 1 and results[0]["threshold"] is None  # no RecBole row to set it
    assert "| causalrec_jax | lightgcn | 0.3200 | 0.8300 |" in (out / "table.md").read_text()
    compare.write_table(out)  # results.json itself is not read back as a row
    assert len(json.loads((out / "results.json").read_text())) == 1


def test_a_sequential_curve_uses_the_unmasked_validation_when_logged(compare, tmp_path):
    metrics = {"test": {"ndcg@10": 0.1}, "test_unmasked": {"ndcg@10": 0.07},
               "valid": {"ndcg@10": 0.12}, "timing": {"train_seconds": 20.0}}
    lines = [{"epoch": 0, "seed": 0, "ndcg@10": 0.09, "unmasked_ndcg@10": 0.05,
              "unmasked_hit@10": 0.1, "seconds": 12.0},
             {"epoch": 1, "seed": 0, "ndcg@10": 0.12, "unmasked_ndcg@10": 0.075,
              "unmasked_hit@10": 0.15, "seconds": 8.0}]
    row = compare.read_our_run(write_run(tmp_path / "s", metrics, lines), "sasrec")
    assert [p["ndcg@10"] for p in row["curve"]] == [0.05, 0.075]
    assert [p["masked_ndcg@10"] for p in row["curve"]] == [0.09, 0.12]
    assert row["valid_best"] == {"ndcg@10": 0.075}
    assert row["valid_history_masked"] is False
    rows = compare.add_time_to_quality([row])
    # the masked curve crosses 0.0702 at 12 s; the unmasked one only at 20 s
    assert rows[0]["seconds_to_threshold"] == 20.0


def test_a_sequential_run_of_the_one_core_reads_its_unmasked_curve(compare, tmp_path):
    """Lines of the one core: training seconds, validation under "valid" with `unmasked_*`."""
    metrics = {"test": {"ndcg@10": 0.09}, "test_unmasked": {"ndcg@10": 0.06},
               "valid": {"ndcg@10": 0.08}, "data": {"n_users": 9, "n_items": 9},
               "timing": {"train_seconds": 20.0, "eval_seconds": 2.0}}
    lines = [{"epoch": e, "seed": 0, "loss": 1.0, "seconds": s,
              "valid": {"ndcg@10": 0.1 + e, "unmasked_ndcg@10": 0.05 + e}}
             for e, s in enumerate([9.0, 5.0])]
    row = compare.read_our_run(write_run(tmp_path / "new", metrics, lines), "sasrec")
    assert [p["ndcg@10"] for p in row["curve"]] == pytest.approx([0.05, 1.05])  # unmasked
    assert [p["masked_ndcg@10"] for p in row["curve"]] == pytest.approx([0.1, 1.1])
    # each epoch gets 2.0 / 2 = 1.0 s of validation on top of its training seconds
    assert [p["seconds"] for p in row["curve"]] == pytest.approx([10.0, 16.0])
    assert row["train_seconds"] == pytest.approx(22.0)
