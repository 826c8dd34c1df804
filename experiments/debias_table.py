"""The debiasing table: every causal method on one dataset, mean ± std over seeds on MAR ratings.

    python experiments/debias_table.py --data coat|yahoo_r3|simulator|yahoo_proxy [--path DIR]
        [--protocol a|b|a,b] [--methods naive,ips,...] [--seeds 5] [--out DIR]
        [--set section.key=value ...]
    python experiments/debias_table.py --data coat --replot experiments/results/debias_coat.csv

For each method, loads `configs/<prefix>_<method>.toml` (prefix coat, yahoo or sim), applies
the shared protocol (`--protocol`: (a), the default, or (b), the presets of
`causalrec_jax.causal.protocols`; `a,b` runs both in one process, into `DIR/a` and `DIR/b`,
so each compiled training program serves both), `--path` (as `data.path`), `--seeds` (as
`train.seeds`) and the `--set` overrides (to every method, e.g. `--set train.epochs=2`), and
trains it with `runs.train.train_run` into `DIR/<method>` (seeds vmapped in one program).
Writes to `DIR` (default `runs/debias_<data>`):

- `table.md`: the protocol, then one row per method: test auc, ndcg@5, recall@5, ndcg@10 and
  mse as mean ± std over seeds, `literature ndcg@5` (users without a positive score 1, the
  published convention) where the run reports it, the simulator's truth columns where the run
  reports them, and the training seconds;
- `table.csv` (the same with separate mean and std columns) and `table.json`;
- `plots/debias_<data>.png`: test AUC and NDCG@5 per method (on the simulator also
  truth_auc, truth_ndcg@5 and truth_mse), bars from 0 with their means written, error bars =
  std over seeds, chance and naive's level marked (`plot_table`).

`--replot CSV` trains nothing: it reads a saved `table.csv` and redraws its figure as
`<CSV stem>.png` beside it (how `experiments/results/debias_<data>.png` are drawn from
`debias_<data>.csv`).

A method whose run raises `CausalRecError` (for example one not yet wired into training) is
reported as failed, with its message; any other exception propagates.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

from causalrec_jax.causal import protocols
from causalrec_jax.config import load_config
from causalrec_jax.errors import CausalRecError
from causalrec_jax.report import tables as report_tables
from causalrec_jax.report.plots import BarPanel, bar_panels
from causalrec_jax.runs import train as run_train
from causalrec_jax.runs.folder import fresh_out
from causalrec_jax.runs.script import run_script
from causalrec_jax.sim import presets

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

METHODS = ("naive", "ips", "snips", "dr", "dr_jl", "mrdr", "dr_mse", "d_ips", "d_dr", "d_dr_jl",
           "tdr", "tdr_jl", "rel_mf", "pda", "macr")
PREFIX = {"coat": "coat", "yahoo_r3": "yahoo", "simulator": "sim", "yahoo_proxy": "yahoo"}
# yahoo_proxy: the shipped Yahoo! R3 configs, as a user runs them, on the simulated world with
# Yahoo! R3's shape and skew (`sim.presets`), whose ground truth is known.
DATA_OVERRIDES = {
    "yahoo_proxy": ('data.format="simulator"', *presets.world_overrides("yahoo_r3")),
}
# Applied to every method before --set, so that the rows share one protocol: the preset of
# `--protocol` (causal/protocols.py) and the table's metrics. Early stopping stays each
# config's own: validation mse for rating predictors, auc for implicit methods.
TABLE_OVERRIDES = (
    'eval.metrics=["mse", "auc", "ndcg", "recall"]',
    "eval.ks=[5, 10]",
)
# Test metrics of the table (keys of metrics["test"]).
METRICS = ("auc", "ndcg@5", "recall@5", "ndcg@10", "mse")
LITERATURE = "ndcg@5"
TRUTH = ("auc", "ndcg@5", "mse")


def _finite(value: Any) -> float | None:
    """`value` as a float when it is a finite number, else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _pick(values: dict[str, Any] | None, name: str) -> float | None:
    """`values[name]` (or `values["truth_" + name]`) as a finite float, else None."""
    if not values:
        return None
    for key in (name, f"truth_{name}"):
        if key in values:
            return _finite(values[key])
    return None


def summarize_run(metrics: dict[str, Any]) -> dict[str, Any]:
    """The table row of one finished run: mean and std over seeds of each column.

    Reads `metrics["test"]` / `["test_std"]`, `["test_literature"]` / `["test_literature_std"]`
    and `["test_truth"]` / `["test_truth_std"]` (those two only when present) and
    `["timing"]["train_seconds"]`. Missing values are None.
    """
    test, std = metrics.get("test", {}), metrics.get("test_std", {})
    row: dict[str, Any] = {
        "status": "ok",
        "mean": {name: _pick(test, name) for name in METRICS},
        "std": {name: _pick(std, name) for name in METRICS},
        "literature": None,
        "full": None,
        "truth": None,
        "train_seconds": _finite(metrics.get("timing", {}).get("train_seconds")),
        "epochs_run": metrics.get("timing", {}).get("epochs_run"),
        "seeds": list(metrics.get("seeds", [])),
        "error": None,
    }
    if metrics.get("test_literature"):
        row["literature"] = {
            "mean": _pick(metrics["test_literature"], LITERATURE),
            "std": _pick(metrics.get("test_literature_std"), LITERATURE),
        }
    if metrics.get("test_full"):
        row["full"] = {
            "mean": _pick(metrics["test_full"], LITERATURE),
            "std": _pick(metrics.get("test_full_std"), LITERATURE),
        }
    if metrics.get("test_truth"):
        row["truth"] = {
            "mean": {name: _pick(metrics["test_truth"], name) for name in TRUTH},
            "std": {name: _pick(metrics.get("test_truth_std"), name) for name in TRUTH},
        }
    return row


def failed_row(error: Exception) -> dict[str, Any]:
    """The table row of a method whose run raised `error` (a CausalRecError)."""
    return {
        "status": "failed", "mean": dict.fromkeys(METRICS), "std": dict.fromkeys(METRICS),
        "literature": None, "full": None, "truth": None, "train_seconds": None, "epochs_run": None,
        "seeds": [], "error": f"{type(error).__name__}: {error}",
    }


def run_method(config_path: Path, overrides: list[str], out: Path) -> dict[str, Any]:
    """Loads `config_path` with `overrides` and trains it into `out` (a new folder).

    Returns its table row; a `CausalRecError` (bad config, method not wired, unreadable data)
    gives a failed row, anything else propagates.
    """
    try:
        config = load_config(config_path, overrides)
        metrics = run_train.train_run(config, out, quiet=True)
    except CausalRecError as error:
        return failed_row(error)
    row = summarize_run(metrics)
    if config.train.loss != "mse":
        # Scores of a logistic or pairwise loss are not ratings: their mse means nothing.
        row["mean"]["mse"] = row["std"]["mse"] = None
    return row


def has_truth(rows: dict[str, dict[str, Any]]) -> bool:
    """Whether any row reports truth metrics (simulated data)."""
    return any(row["truth"] is not None for row in rows.values())


def protocol_text(data: str, seeds: int, path: str | None, name: str = "a") -> str:
    """The protocol paragraph at the top of table.md, for the preset `name` ("a" or "b")."""
    source = {
        "coat": "Coat (Schnabel et al. 2016)",
        "yahoo_r3": "Yahoo! R3 (Marlin & Zemel 2009)",
        "simulator": "the simulated MNAR world (configs/sim_*.toml [sim])",
        "yahoo_proxy": ("the Yahoo! R3 proxy, a simulated world with the release's shape and "
                        "rating marginals (sim/presets.py), trained with configs/yahoo_*.toml"),
    }[data]
    where = f" from `{path}`" if path else ""
    mar = ("the simulator's MAR ratings are" if data in ("simulator", "yahoo_proxy")
           else "the MAR test of the released data is")
    preset = protocols.protocol(name)
    threshold = f"{preset.positive_threshold:g}"
    if name == "a":
        test = ("the rest is the test (the slices are held out of it). ")
        ndcg = ("users without a positive are left out of ndcg and recall under \"test\" "
                "(`literature ndcg@5` scores them 1")
    else:
        test = ("the test is every MAR rating, the two slices included (as published under "
                "this protocol: the test is not reduced). ")
        ndcg = ("the protocol's ndcg@5 is `literature ndcg@5`, where users without a positive "
                "score 1 (under \"test\" they are left out")
    return (
        f"Protocol ({name}): {source}{where}. Train on the MNAR ratings; {mar} carved (seeded "
        "by `run.seed`: the same carve for every method) into a 5% MAR train slice (only "
        "propensity models such as naive_bayes read it) and a 5% MAR validation slice (early "
        "stopping and tuning on validation mse for the rating predictors, auc for rel_mf, pda "
        f"and macr, which do not predict ratings); {test}"
        f"Candidates protocol: each user ranks their own MAR test items; ratings >= {threshold} "
        f"are positives; AUC pooled over all test pairs; {ndcg}; `full-ranking ndcg@5` ranks "
        "the same positives among all items, seen ones masked). mse only for methods that "
        "predict ratings (train.loss = mse). "
        f"Mean ± std over {seeds} training seeds (vmapped in one program)."
    )


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """One markdown row per method (failed methods carry their message)."""
    truth = has_truth(rows)
    header = ["method", *METRICS, f"literature {LITERATURE}", f"full-ranking {LITERATURE}"]
    if truth:
        header += [f"truth_{name}" for name in TRUTH]
    header.append("train s")
    lines = []  # rows of cells, drawn by report.tables.markdown_table
    for method, row in rows.items():
        if row["status"] != "ok":
            cells = [method, f"failed: {row['error']}"] + [""] * (len(header) - 2)
        else:
            cells = [method] + [report_tables.mean_std_cell(row["mean"][m], row["std"][m])
                                for m in METRICS]
            literature = row["literature"] or {}
            cells.append(report_tables.mean_std_cell(literature.get("mean"), literature.get("std")))
            full = row["full"] or {}
            cells.append(report_tables.mean_std_cell(full.get("mean"), full.get("std")))
            if truth:
                values = row["truth"] or {"mean": {}, "std": {}}
                cells += [report_tables.mean_std_cell(values["mean"].get(m), values["std"].get(m))
                          for m in TRUTH]
            seconds = row["train_seconds"]
            cells.append(report_tables.MISSING if seconds is None else f"{seconds:.1f}")
        lines.append(cells)
    return report_tables.markdown_table(header, lines)


def csv_columns() -> list[str]:
    """Columns of table.csv (the same schema for every dataset)."""
    columns = ["method", "status"]
    for name in METRICS:
        columns += [f"{name}_mean", f"{name}_std"]
    columns += [f"literature_{LITERATURE}_mean", f"literature_{LITERATURE}_std"]
    columns += [f"full_{LITERATURE}_mean", f"full_{LITERATURE}_std"]
    for name in TRUTH:
        columns += [f"truth_{name}_mean", f"truth_{name}_std"]
    return columns + ["train_seconds", "epochs_run", "error"]


def write_csv(path: Path, rows: dict[str, dict[str, Any]]) -> None:
    """Writes table.csv: one line per method, empty cells for missing values."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=csv_columns())
        writer.writeheader()
        for method, row in rows.items():
            record: dict[str, Any] = {"method": method, "status": row["status"],
                                      "train_seconds": row["train_seconds"],
                                      "epochs_run": row["epochs_run"], "error": row["error"]}
            for name in METRICS:
                record[f"{name}_mean"] = row["mean"][name]
                record[f"{name}_std"] = row["std"][name]
            literature = row["literature"] or {}
            record[f"literature_{LITERATURE}_mean"] = literature.get("mean")
            record[f"literature_{LITERATURE}_std"] = literature.get("std")
            full = row["full"] or {}
            record[f"full_{LITERATURE}_mean"] = full.get("mean")
            record[f"full_{LITERATURE}_std"] = full.get("std")
            truth = row["truth"] or {"mean": {}, "std": {}}
            for name in TRUTH:
                record[f"truth_{name}_mean"] = truth["mean"].get(name)
                record[f"truth_{name}_std"] = truth["std"].get(name)
            writer.writerow({key: "" if value is None else value for key, value in
                             record.items()})


def read_table_csv(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of a `table.csv` written by `write_csv` (the inverse of it: empty cells are
    None, numbers floats, `truth` / `literature` / `full` None when all their cells are
    empty); `seeds` is not in the CSV and comes back empty."""

    def number(cell: str) -> float | None:
        return float(cell) if cell != "" else None

    rows: dict[str, dict[str, Any]] = {}
    with path.open(newline="") as handle:
        for record in csv.DictReader(handle):
            row: dict[str, Any] = {
                "status": record["status"],
                "mean": {name: number(record[f"{name}_mean"]) for name in METRICS},
                "std": {name: number(record[f"{name}_std"]) for name in METRICS},
                "train_seconds": number(record["train_seconds"]),
                "epochs_run": int(record["epochs_run"]) if record["epochs_run"] else None,
                "seeds": [],
                "error": record["error"] or None,
            }
            for block, prefix in (("literature", "literature"), ("full", "full")):
                pair = {"mean": number(record[f"{prefix}_{LITERATURE}_mean"]),
                        "std": number(record[f"{prefix}_{LITERATURE}_std"])}
                row[block] = None if pair["mean"] is None and pair["std"] is None else pair
            truth = {"mean": {name: number(record[f"truth_{name}_mean"]) for name in TRUTH},
                     "std": {name: number(record[f"truth_{name}_std"]) for name in TRUTH}}
            empty = all(v is None for part in truth.values() for v in part.values())
            row["truth"] = None if empty else truth
            rows[record["method"]] = row
    return rows


def replot(csv_path: Path, data: str, name: str = "a") -> Path:
    """Redraws the figure of a saved `table.csv` (no training): `<csv stem>.png` beside it,
    under the protocol `name` it was made with."""
    path = csv_path.with_suffix(".png")
    plot_table(path, read_table_csv(csv_path), data, name)
    return path


DATA_NAMES = {"coat": "Coat", "yahoo_r3": "Yahoo! R3", "simulator": "the simulator",
              "yahoo_proxy": "the Yahoo! R3 proxy (simulated)"}


def plot_table(path: Path, rows: dict[str, dict[str, Any]], data: str,
               name: str = "a") -> None:
    """Bars per method, error bars = std over seeds, each bar's mean written above it: test
    AUC and NDCG@5 on the MAR test; on the simulator also its ground truth (truth_auc,
    truth_ndcg@5 against the true relevance of every cell, truth_mse against the true
    ratings). Axes start at 0 (nothing truncated); AUC panels mark chance (0.5), every panel
    naive's level (dotted); a method without a value is marked `failed` or `n/a`. Under
    protocol (b) the NDCG@5 panel is its published convention (users without a positive score
    1). Drawn by `report.plots.bar_panels`."""
    methods = list(rows)
    preset = protocols.protocol(name)
    panels = [("mean", "auc", "test auc (MAR)"), ("mean", "ndcg@5", "test ndcg@5 (MAR)")]
    if preset.ndcg_block == "test_literature":
        panels[1] = ("literature", "ndcg@5", "test ndcg@5 (MAR, no positive = 1)")
    if any(row["truth"] is not None for row in rows.values()):
        panels += [("truth", "auc", "truth_auc (every cell)"),
                   ("truth", "ndcg@5", "truth_ndcg@5 (every cell)"),
                   ("truth", "mse", "truth_mse (lower is better)")]
    bars, missing = [], False  # missing: whether some panel marks a method n/a
    for block, metric, title in panels:
        if block == "mean":
            means = [rows[m]["mean"][metric] for m in methods]
            stds = [rows[m]["std"][metric] for m in methods]
        elif block == "literature":
            pairs = [rows[m]["literature"] or {} for m in methods]
            means = [pair.get("mean") for pair in pairs]
            stds = [pair.get("std") for pair in pairs]
        else:
            truth = [rows[m]["truth"] or {"mean": {}, "std": {}} for m in methods]
            means = [t["mean"].get(metric) for t in truth]
            stds = [t["std"].get(metric) for t in truth]
        finite = [v for v in means if v is not None]
        references = [(0.5, "chance", "--")] if metric == "auc" else []
        if "naive" in rows and means[methods.index("naive")] is not None:
            references.append((means[methods.index("naive")], "naive", ":"))
        labels = ["failed" if rows[m]["status"] == "failed" else "n/a" for m in methods]
        missing |= any(v is None and label == "n/a" for v, label in zip(means, labels,
                                                                          strict=True))
        bars.append(BarPanel(
            title=f"{title}, mean ± std over seeds", values=means, errors=stds,
            color="tab:green" if block == "truth" else "tab:blue",
            top=1.08 if metric != "mse" else (max(finite) if finite else 1.0) * 1.25,
            references=references, missing=labels))
    note = ("trained on MNAR ratings, tested on MAR ratings (each user ranks their own test "
            f"items; ratings ≥ {preset.positive_threshold:g} are positives; protocol ({name}))")
    if missing:
        note += "; n/a: not reported for the method (mse only for rating predictors)"
    bar_panels(path, methods, bars, title=f"Debiasing methods on {DATA_NAMES.get(data, data)}"
               f"\n{note}")


def main(argv=None) -> dict:
    """Runs every method of `--methods` on `--data`; writes and prints the table; returns rows.

    The rows dict maps each method to `{status, mean, std, literature, truth, train_seconds,
    epochs_run, seeds, error}` (`mean` / `std` keyed by auc, ndcg@5, recall@5, ndcg@10, mse).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, choices=sorted(PREFIX))
    parser.add_argument("--path", help="the dataset folder (data.path); default: the config's")
    parser.add_argument("--protocol", default="a",
                        help="the published protocol, or both as a,b (each into DIR/<p>/ in one "
                        "process): (a) AutoDebias/CDR, ratings >= 4, test = the MAR rows left "
                        "after two 5%% slices; (b) StableDR line, ratings >= 3, the whole MAR "
                        "test, users without a positive NDCG = 1")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated, among " + ", ".join(METHODS))
    parser.add_argument("--seeds", type=int, default=5, help="training seeds (train.seeds)")
    parser.add_argument("--out", help="a new or empty folder for the runs (default: a fresh "
                        "runs/debias_<data>-DATE-TIME)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="section.key=value, applied to every method")
    parser.add_argument("--replot", metavar="CSV",
                        help="train nothing: redraw the figure of a saved table.csv into "
                        "<CSV stem>.png beside it (e.g. experiments/results/debias_coat.csv)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.protocol.split(",") if name.strip()]
    if not names or any(name not in protocols.PROTOCOLS for name in names) or len(
            set(names)) < len(names):
        parser.error(f"--protocol {args.protocol}: expected a, b or a,b")
    if args.replot is not None:
        if not Path(args.replot).is_file():
            parser.error(f"--replot {args.replot}: no such file")
        if len(names) > 1:
            parser.error("--replot redraws one table: give its --protocol, a or b")
        print(f"wrote {replot(Path(args.replot), args.data, names[0])}")
        return read_table_csv(Path(args.replot))

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown} (known: {', '.join(METHODS)})")
    if args.seeds < 1:
        parser.error("--seeds: expected an integer >= 1")
    if args.path is not None and args.data in DATA_OVERRIDES:
        parser.error(f"--path: --data {args.data} is simulated; it reads no folder")
    if args.path is not None and not Path(args.path).exists():
        parser.error(f"--path {args.path}: no such folder")
    suffix = "" if names == ["a"] else "_" + "".join(names)
    out = fresh_out(args.out, f"debias_{args.data}{suffix}")  # never replaces earlier runs
    out.mkdir(parents=True, exist_ok=True)
    if len(names) == 1:
        return run_table(args, methods, names[0], out)
    # Both protocols in one process: each compiled training program serves both.
    return {name: run_table(args, methods, name, out / name) for name in names}


def run_table(args: argparse.Namespace, methods: list[str], name: str, out: Path) -> dict:
    """Trains `methods` under the protocol `name` into `out`; writes and prints its table."""
    out.mkdir(parents=True, exist_ok=True)
    overrides = [*protocols.overrides(name), *TABLE_OVERRIDES, f"train.seeds={args.seeds}",
                 *DATA_OVERRIDES.get(args.data, ())]
    if args.path is not None:
        overrides.append(f"data.path={json.dumps(str(args.path))}")
    overrides += args.overrides

    rows: dict[str, dict[str, Any]] = {}
    for method in methods:
        config_path = CONFIGS / f"{PREFIX[args.data]}_{method}.toml"
        rows[method] = run_method(config_path, overrides, out / method)
        row = rows[method]
        status = (f"auc {row['mean']['auc']:.4f}" if row["status"] == "ok" and
                  row["mean"]["auc"] is not None else row["status"])
        print(f"({name}) {method}: {status}", flush=True)

    table = markdown_table(rows)
    protocol = protocol_text(args.data, args.seeds, args.path, name)
    title = f"# Debiasing methods on {args.data}, protocol ({name})"
    (out / "table.md").write_text(f"{title}\n\n{protocol}\n\n{table}\n")
    write_csv(out / "table.csv", rows)
    (out / "table.json").write_text(json.dumps(
        {"data": args.data, "path": args.path, "seeds": args.seeds,
         "preset": name, "protocol": protocol,
         "overrides": overrides, "rows": rows}, indent=2) + "\n")
    plot_table(out / "plots" / f"debias_{args.data}.png", rows, args.data, name)
    print(f"\n{protocol}\n\n{table}\n\nwrote {out / 'table.md'}, table.csv, table.json, "
          f"plots/debias_{args.data}.png")
    return rows


if __name__ == "__main__":
    raise SystemExit(run_script(main))
