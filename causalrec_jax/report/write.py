"""`causalrec report RUN [RUN ...] --out DIR`: tables and plots comparing run folders.

`write_report` reads the runs (`report.runs`), groups them by what their numbers measure
(ranking runs, uplift runs, OPE runs: `report.runs.KIND_GROUPS`) and writes into `DIR`, a new
or empty folder (never overwritten; written in a hidden staging folder renamed to `DIR` once
complete):

- `report.md`: the runs, the notes on what was skipped, then per group: one table per block
  of `metrics.json` (`test`, `test_literature`, `test_full`, `test_truth`, `test_unmasked`,
  `test_sampled`, `valid`; rows: runs, columns: metrics, cells: mean ± std [95% interval]
  over seeds, the block's protocol in the caption), the OPE table (estimates and relative
  errors against the truth) and the propensity clip reports, each figure embedded;
- `report.csv`: the long form of every table (`report.tables.CSV_COLUMNS`: one line per run,
  block and metric);
- `<group>_bars_<block>.png`: a panel per metric, a bar per run (mean over seeds, error bar
  the 95% Student-t interval of the mean), for every test block;
- `<group>_learning_curves.png`: the runs' training loss and validation metric overlaid;
- `<group>_propensity.png`: the runs' propensity histograms and clip reports;
- `ope_estimates.png`: each OPE run's estimates against the truth and their relative errors;
- for a run whose `metrics.json` has an `"explain"` block (`runs.planted.explain_planted_run`:
  counterfactual explainers scored on a world with planted causes), a section with its
  protocol and a table per truth and rule kind (explainers x scores, `report.explain`), the
  same numbers in `report.csv` (block `explain.<truth>.<group>`, metric
  `<explainer>.<score>`), and `explain_<run>.png`: grouped bars of recall, precision, exact
  match and size optimality per explainer.

What the report cannot show is one line of its notes each (returned, printed by the command):
groups that no table compares with each other, a block only some runs have, a metric no run
defines, a run without `log.jsonl`, a run whose folder stores no propensity histogram.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from causalrec_jax.errors import RunError
from causalrec_jax.report import explain as report_explain
from causalrec_jax.report import plots, tables
from causalrec_jax.report.runs import RunRecord, group_runs, read_runs, seed_curves

GROUP_TITLES = {"ranking": "Ranking runs (ordinary, causal, sequential)",
                "uplift": "Uplift runs", "ope": "Off-policy evaluation runs"}


@dataclasses.dataclass(frozen=True)
class ReportResult:
    """What `write_report` wrote: the folder, its files (in writing order) and the notes."""

    out: Path
    files: list[Path]
    notes: list[str]


def check_out(out: str | Path) -> None:
    """Raises RunError when `out` exists and is not an empty folder: a report never
    overwrites anything."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"--out {out} already holds something; a report never overwrites: "
                       "remove it or pass another --out")


def _names(runs: Sequence[RunRecord]) -> str:
    return ", ".join(run.name for run in runs)


def _seeds_text(runs: Sequence[RunRecord]) -> str:
    counts = sorted({len(run.seeds) for run in runs})
    return " or ".join(map(str, counts)) + " seed" + ("s" if counts != [1] else "")


def run_colors(runs: Sequence[RunRecord]) -> dict[str, str]:
    """A colour per run, the same in every figure of its group (its place in the group)."""
    return {run.name: f"C{index % 10}" for index, run in enumerate(runs)}


def _bars(folder: Path, group: str, block: str, runs: Sequence[RunRecord],
          notes: list[str]) -> Path | None:
    """The bars of one block over the runs that have it (None: no metric to draw)."""
    having = [run for run in runs if run.metrics.get(block)]
    summaries = [tables.block_summaries(run.metrics, block) for run in having]
    colors = run_colors(runs)
    panels, undefined = [], []
    for name in tables.block_metrics(having, block):
        values = [s[name].mean if name in s else None for s in summaries]
        if not any(v is not None and math.isfinite(v) for v in values):
            undefined.append(name)
            continue
        errors = [s[name].ci95_half_width if name in s else None for s in summaries]
        largest = max(abs(v) for v in values if v is not None and math.isfinite(v))
        lower = any(name.endswith(word) or name.split("@")[0].endswith(word)
                    for word in tables.LOWER_IS_BETTER)
        panels.append(plots.BarPanel(
            title=name + (" (lower is better)" if lower else ""), values=values,
            errors=errors, ylabel=name, color=[colors[run.name] for run in having],
            missing=["n/a" if name in s else "absent" for s in summaries],
            references=_uplift_references(having, name) if group == "uplift" else (),
            value_format="{:.4f}" if largest < 0.1 else "{:.3f}"))
    if undefined:
        notes.append(f"skipped: {block} {', '.join(undefined)}: undefined (n/a) in every run "
                     "(no panel)")
    if not panels:
        return None
    path = folder / f"{group}_bars_{block}.png"
    protocol = tables.block_protocol(group, block)
    legend = (f"bar: mean over seeds ({_seeds_text(having)}); error bar: 95% Student-t "
              "interval of the mean" + (" (none for one seed)" if any(
                  len(run.seeds) < 2 for run in having) else ""))
    marks = {label for panel in panels for label, value in zip(panel.missing, panel.values,
                                                                strict=True)
             if value is None or not math.isfinite(value)}
    if marks:
        legend += "; " + "; ".join(text for mark, text in (
            ("n/a", "n/a: undefined"), ("absent", "absent: not computed by the run"))
            if mark in marks)
    plots.bar_panels(path, [run.name for run in having], panels, title=(
        f"{GROUP_TITLES[group]}, {block}" + (f": {protocol}" if protocol else "")
        + f"\n{legend}"))
    return path


def _uplift_references(runs: Sequence[RunRecord], metric: str) -> list[tuple[float, str, str]]:
    """The levels of ranking by the true uplift (`data.ideal`) and by the logging policy's
    scores (`data.logging`), when every run reports the same (one world)."""
    references = []
    for key, label, style in (("ideal", "true uplift", "--"), ("logging", "logging", ":")):
        values = {((run.metrics.get("data") or {}).get(key) or {}).get(metric) for run in runs}
        if len(values) == 1 and isinstance(value := values.pop(), int | float):
            references.append((float(value), label, style))
    return references


def _learning_curves(folder: Path, group: str, runs: Sequence[RunRecord],
                     notes: list[str]) -> Path | None:
    curves = []
    for run in runs:
        if not run.log:
            notes.append(f"skipped: {run.name}: no log.jsonl, not in the learning curves")
            continue
        metric = run.early_stopping_metric
        loss = ("reward model" if run.kind == "ope" else
                (run.config.get("train") or {}).get("loss", ""))
        method = (run.config.get("causal") or {}).get("method", "naive")
        objective = "" if run.kind != "causal" else f"{method} objective"
        curves.append(plots.RunCurves(run.name, seed_curves(run, metric), metric, loss,
                                      color=run_colors(runs)[run.name], objective=objective))
    if not curves:
        return None
    path = folder / f"{group}_learning_curves.png"
    plots.learning_curves(path, curves, title=f"{GROUP_TITLES[group]}: learning curves "
                          "(log.jsonl, one line per epoch and seed)")
    return path


def _propensity(folder: Path, group: str, runs: Sequence[RunRecord],
                notes: list[str]) -> Path | None:
    having = [run for run in runs if run.metrics.get("propensity")]
    if not having:
        return None
    for run in having:
        if not (run.metrics["propensity"].get("histogram") or {}).get("counts"):
            notes.append(f"skipped: {run.name}: the propensity histogram (its run folder "
                         "stores no propensities of its rows; the clip report is drawn)")
    path = folder / f"{group}_propensity.png"
    plots.propensity_figure(path, [run.name for run in having],
                            [run.metrics["propensity"] for run in having],
                            title=f"{GROUP_TITLES[group]}: propensities and their clip",
                            colors=[run_colors(runs)[run.name] for run in having])
    return path


def _ope_estimates(folder: Path, runs: Sequence[RunRecord]) -> Path:
    estimators: list[str] = []
    for run in runs:
        estimators += [name for name in run.metrics["ope"] if name not in estimators]
    panels = []
    for run in runs:
        summaries = tables.block_summaries(run.metrics, "test")
        truth = run.metrics["truth"]

        def column(suffix: str, key: str, summaries=summaries) -> list[float | None]:
            return [getattr(summaries[f"{name}_{suffix}"], key)
                    if f"{name}_{suffix}" in summaries else None for name in estimators]

        estimate, estimate_error = column("estimate", "mean"), column("estimate",
                                                                      "ci95_half_width")
        reach = [v + (e if e is not None and math.isfinite(e) else 0.0)
                 for v, e in zip(estimate, estimate_error, strict=True) if v is not None]
        panels.append(plots.BarPanel(
            title=f"{run.name}: estimates; truth {truth['value']:.4f} ± {truth['stderr']:.4f}",
            values=estimate, errors=estimate_error, color="tab:blue",
            references=[(truth["value"], "truth", "--")],
            top=1.15 * max(reach + [truth["value"]]), ylabel="reward per round (clicks)",
            value_format="{:.3f}"))
        panels.append(plots.BarPanel(
            title=f"{run.name}: relative error (lower is better)",
            values=column("relative_error", "mean"),
            errors=column("relative_error", "ci95_half_width"), color="tab:red",
            ylabel="|estimate − truth| / truth"))
    path = folder / "ope_estimates.png"
    plots.bar_panels(path, estimators, panels, columns=2, title=(
        "Off-policy estimates of the target policy's reward against its on-policy truth\n"
        f"bar: mean over seeds ({_seeds_text(runs)}); error bar: 95% Student-t interval of "
        "the mean"))
    return path


def _group_section(folder: Path, group: str, runs: Sequence[RunRecord],
                   notes: list[str]) -> tuple[str, list[Path]]:
    """The markdown of one group and the figures it wrote."""
    lines = [f"## {GROUP_TITLES[group]}: {_names(runs)}", ""]
    files: list[Path] = []
    fingerprints = {run.name: (run.metrics.get("data") or {}).get("fingerprint", {}).get(
        "sha256") for run in runs}
    if len({value for value in fingerprints.values() if value}) > 1:
        notes.append(f"note: {_names(runs)} were not all trained on the same data (their data "
                     "fingerprints differ): the tables compare runs on different data")

    def figure(path: Path | None, caption: str) -> None:
        if path is not None:
            files.append(path)
            lines.extend([f"![{caption}]({path.name})", ""])

    if group == "ope":
        lines += [tables.ope_table(runs), ""]
        figure(_ope_estimates(folder, runs), "OPE estimates against the truth")
    else:
        for block in tables.BLOCKS:
            having = [run for run in runs if run.metrics.get(block)]
            if not having:
                continue
            if len(having) < len(runs):
                lacking = [run for run in runs if not run.metrics.get(block)]
                notes.append(f"skipped: {block} for {_names(lacking)}: not reported by "
                             f"{'that run' if len(lacking) == 1 else 'those runs'} (only by "
                             f"{_names(having)})")
            lines += [tables.comparison_table(runs, block), ""]
            if block != "valid":
                figure(_bars(folder, group, block, runs, notes), f"{block} metrics")
    if any(run.metrics.get("propensity") for run in runs):
        lines += [tables.propensity_table([run for run in runs
                                           if run.metrics.get("propensity")]), ""]
        figure(_propensity(folder, group, runs, notes), "propensities and their clip")
    figure(_learning_curves(folder, group, runs, notes), "learning curves")
    return "\n".join(lines), files


# The explanation tables of the report (truth, group), in order.
EXPLAIN_TABLES = (("world", "all"), ("world", "and"), ("world", "or"), ("world_strict", "all"),
                  ("oracle", "all"))


def _explain_section(folder: Path, runs: Sequence[RunRecord]) -> tuple[str, list[Path]]:
    """The explanation section of the runs with an `"explain"` block (empty when none)."""
    having = [run for run in runs if isinstance(run.metrics.get("explain"), dict)]
    if not having:
        return "", []
    lines = ["## Counterfactual explanations on planted ground truth", ""]
    files = []
    for run in having:
        block = run.metrics["explain"]
        lines += [f"### {run.name}", "", "Protocol: " + report_explain.protocol_text(block)
                  + ".", ""]
        if block.get("skipped"):
            lines += ["Not run: " + "; ".join(f"{method} ({reason})" for method, reason
                                              in block["skipped"].items()) + ".", ""]
        for truth, group in EXPLAIN_TABLES:
            lines += [report_explain.explain_table(block, truth, group), ""]
        path = report_explain.explain_bars(
            folder / f"explain_{_file_name(run.name)}.png", block,
            title=f"{run.name}: counterfactual explanations, all instances")
        files.append(path)
        lines += [f"![explanations of {run.name}]({path.name})", ""]
    return "\n".join(lines), files


def _file_name(name: str) -> str:
    """`name` with every character but letters, digits, `-`, `_` and `.` as `_`."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _markdown(runs: Sequence[RunRecord], notes: Sequence[str], sections: Sequence[str]) -> str:
    rows = [[run.name, run.kind, run.describe(), str(run.path)] for run in runs]
    lines = [f"# Report on {len(runs)} run{'s' if len(runs) != 1 else ''}", "",
             tables.markdown_table(["run", "kind", "what trained it", "folder"], rows), ""]
    if notes:
        lines += ["Notes (what the report could not show, one line each):", ""]
        lines += [f"- {note}" for note in notes] + [""]
    return "\n".join(lines + list(sections))


def write_report(paths: Sequence[str | Path], out: str | Path) -> ReportResult:
    """Writes the report of the run folders `paths` into the new folder `out` (see the module
    docstring); returns what it wrote.

    Raises:
        RunError: `out` holds something, or a folder of `paths` is not a run (the message
            names it).
    """
    out = Path(out)
    check_out(out)
    runs, notes = read_runs(paths)
    groups = group_runs(runs)
    if len(groups) > 1:
        notes.append("skipped: one table across kinds (" + "; ".join(
            f"{group} runs: {_names(members)}" for group, members in groups.items())
            + "): they measure different things; each group has its own tables and plots")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex}.partial"
    staging.mkdir()
    try:
        sections, figures = [], []
        for group, members in groups.items():
            section, written = _group_section(staging, group, members, notes)
            sections.append(section)
            figures += written
        section, written = _explain_section(staging, runs)
        if section:
            sections.append(section)
            figures += written
        (staging / "report.md").write_text(_markdown(runs, notes, sections))
        csv_rows = tables.csv_rows(runs)
        for run in runs:
            if isinstance(run.metrics.get("explain"), dict):
                csv_rows += report_explain.explain_csv_rows(
                    run.metrics["explain"], group_name=run.group, run=run.name, kind=run.kind,
                    path=str(run.path))
        tables.write_csv(staging / "report.csv", csv_rows)
        if out.exists():
            out.rmdir()  # empty: `check_out` refused anything else
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = [out / "report.md", out / "report.csv"] + [out / path.name for path in figures]
    return ReportResult(out=out, files=files, notes=notes)
