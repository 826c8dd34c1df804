"""Our counterfactual explainer and its baselines measured on the planted world's ground truth.

    python experiments/explain_planted.py --out runs/explain_planted [--quick]
        [--config configs/sim_planted.toml] [--rho 0,0.5,0.9,1] [--explainers greedy,beam,...]
        [--per-kind 150] [--set section.key=value ...]

Trains the config (SASRec on `data.format = "planted"`) into the run folder `--out` with
`runs.train.sequence_run`, as `causalrec train` does, and measures every explainer on it
(`runs.planted.explain_planted_run`: greedy and beam search, the single-deletion order and
every baseline, each an order deleted until the item leaves the top-K, against the world's
minimal sets and the exhaustive oracle's on the model); the result is the `"explain"` block of
the run's `metrics.json`. Every other ρ of `--rho` is a run of the same config with
`planted.rho` set, in `--out/rho_sweep/rho_<ρ>/`, measured the same way; the sweep's summary is
`explain.rho_sweep` of the main run. ρ = 1 is reported as not identifiable. Writes into `--out`:
`explain_table.md` / `.csv` (the tables), `explain_bars.png` (grouped bars per explainer) and
`explain_rho.png` (the sweep). `--quick` is a tiny world and a few epochs (seconds, a smoke
test; its numbers mean little).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from causalrec_jax.config import load_config
from causalrec_jax.errors import ConfigError
from causalrec_jax.explain import METHODS
from causalrec_jax.report import explain as report_explain
from causalrec_jax.report.tables import CSV_COLUMNS, markdown_table, write_csv
from causalrec_jax.runs.folder import fresh_out, write_metrics
from causalrec_jax.runs.planted import DEFAULT_METHODS, explain_planted_run
from causalrec_jax.runs.script import run_script
from causalrec_jax.runs.train import sequence_run

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sim_planted.toml"
# --quick: a tiny world (800 users, 40 items, 6 base items, 2 AND + 2 OR rules) and a one-layer
# SASRec trained 15 epochs: about 10 s of training on a quiet 2-core CPU.
QUICK = ("planted.n_users=800", "planted.n_items=40", "planted.history_length=6",
         "planted.n_and_rules=2", "planted.n_or_rules=2", "planted.n_topics=4",
         "planted.antecedent_rate=0.3", "planted.topic_strength=1.0",
         "planted.consequent_rate=0.005", "model.embedding_dim=32", "model.n_layers=1",
         "model.max_len=16", "model.dropout=0.1", "train.epochs=15", "train.patience=15")


def parse_rhos(text: str) -> list[float]:
    """`0,0.5,0.9,1` -> the values; ConfigError (one line) for anything but numbers in
    [0, 1]."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--rho {text!r}: expected numbers in [0, 1] separated by commas, "
                          "e.g. 0,0.5,0.9,1") from None
    if not values or any(not 0.0 <= value <= 1.0 for value in values):
        raise ConfigError(f"--rho {text!r}: expected numbers in [0, 1] separated by commas, "
                          "e.g. 0,0.5,0.9,1")
    return sorted(set(values))


def parse_explainers(text: str) -> list[str]:
    """`greedy,beam,...` -> the names; ConfigError (one line) for a name not in METHODS."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise ConfigError(f"--explainers: unknown explainer {(unknown or [text])[0]!r}: "
                          f"expected some of {', '.join(METHODS)}")
    return names


def _summary(block: dict[str, Any], run: str) -> dict[str, Any]:
    """A sweep entry: what the figure and the table need of one run's block."""
    return {"rho": block["rho"], "identifiable": block["identifiable"], "run": run,
            "learned": block["learned"], "scores": {
                explainer: {truth: by_truth[truth] for truth in ("world", "oracle")}
                for explainer, by_truth in block["scores"].items()}}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="the run folder (new)")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--quick", action="store_true", help="a tiny world, a few epochs")
    parser.add_argument("--rho", default="0,0.5,0.9,1")
    parser.add_argument("--explainers", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--per-kind", type=int, default=150,
                        help="instances per rule kind (AND, OR) at most")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args(argv)
    rhos, methods = parse_rhos(args.rho), parse_explainers(args.explainers)
    if args.per_kind < 1 or args.k < 1:
        raise ConfigError(f"--per-kind {args.per_kind} --k {args.k}: expected both >= 1")
    overrides = [*(QUICK if args.quick else ()), *args.overrides]
    config = load_config(args.config, overrides)
    if config.data.format != "planted":
        raise ConfigError(f"{args.config}: data.format = {config.data.format!r}; this "
                          "experiment needs data.format = 'planted'")
    out = fresh_out(args.out, "explain_planted")
    per_kind = min(args.per_kind, 40) if args.quick else args.per_kind

    def log(line: str) -> None:
        print(f"explain_planted: {line}", file=sys.stderr, flush=True)

    def measure(run: Path) -> dict[str, Any]:
        return explain_planted_run(run, methods=methods, k=args.k, n_per_kind=per_kind,
                                   max_size=4 if args.quick else 10, log_fn=log)

    log(f"training {out} (rho = {config.planted.rho})")
    sequence_run(config, out, quiet=True)
    main_block = measure(out)
    sweep = [_summary(main_block, ".")]
    for rho in rhos:
        if rho == config.planted.rho:
            continue
        run = out / "rho_sweep" / f"rho_{rho:g}"
        log(f"training {run}")
        sequence_run(load_config(args.config, [*overrides, f"planted.rho={rho}"]), run,
                     quiet=True)
        sweep.append(_summary(measure(run), str(run.relative_to(out))))
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["explain"]["rho_sweep"] = sorted(sweep, key=lambda entry: entry["rho"])
    write_metrics(out, metrics)
    write_outputs(out, metrics["explain"])
    log(f"wrote {out / 'metrics.json'} and explain_table.md, explain_bars.png, "
        "explain_rho.png")
    return out


def write_outputs(out: Path, block: dict[str, Any]) -> None:
    """The tables and figures of the main run's block and its sweep, into `out`."""
    sections = ["# Counterfactual explanations on the planted world", "",
                "Protocol: " + report_explain.protocol_text(block) + ".", ""]
    if block.get("skipped"):
        sections += ["Not run: " + "; ".join(f"{method} ({reason})" for method, reason
                                             in block["skipped"].items()) + ".", ""]
    for truth in ("world", "world_strict", "oracle"):
        for group in ("all", "and", "or"):
            sections += [report_explain.explain_table(block, truth, group), ""]
    rows = [[f"{entry['rho']:g}" + ("" if entry["identifiable"] else " (not identifiable)"),
             explainer, *(report_explain._cell(
                 ((entry["scores"][explainer].get(truth) or {}).get("all") or {}).get(score))
                 for truth, score in (("world", "cause_recall"), ("world", "cause_precision"),
                                      ("world", "exact_match"), ("oracle", "cause_recall"),
                                      ("oracle", "cause_precision"),
                                      ("oracle", "optimality_gap"))),
             report_explain._cell((entry["learned"].get("all") or {}).get("loose"))]
            for entry in block["rho_sweep"] for explainer in entry["scores"]]
    sections += ["The sweep over the confounder strength rho (all instances; rho = 1 is not "
                 "identifiable: the confounder always comes with the antecedent).", "",
                 markdown_table(
                     ["rho", "explainer", "recall (world)", "precision (world)",
                      "exact (world)", "recall (oracle)", "precision (oracle)",
                      "optimality gap", "learned (loose)"], rows), ""]
    (out / "explain_table.md").write_text("\n".join(sections))
    csv_rows = report_explain.explain_csv_rows(block, group_name="explain", run=out.name,
                                               kind="sequential", path=str(out))
    for entry in block["rho_sweep"]:
        if entry["run"] != ".":
            csv_rows += [row for row in report_explain.explain_csv_rows(
                entry, group_name="explain_rho_sweep", run=f"{out.name}/{entry['run']}",
                kind="sequential", path=str(out / entry["run"]))
                if row["block"].endswith(".all")]  # the sweep: all instances
    write_csv(out / "explain_table.csv", csv_rows, CSV_COLUMNS)
    report_explain.explain_bars(out / "explain_bars.png", block)
    report_explain.rho_sweep_figure(
        out / "explain_rho.png", block["rho_sweep"],
        title=(f"Explainers against the confounder strength rho "
               f"({block['protocol']['model']}, K = {block['protocol']['k']}, "
               f"{block['protocol']['world']['n_users']} users; one run per rho)"))


if __name__ == "__main__":
    sys.exit(run_script(main, "explain_planted.py"))
