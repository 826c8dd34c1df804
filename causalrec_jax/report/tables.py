"""Tables of runs: mean ± std and the 95% interval over seeds, in markdown and CSV.

`block_summaries` reads one block of a run's `metrics.json` (`test`, `valid`, `test_truth`,
...): the mean and standard deviation over seeds the run recorded, and the 95% Student-t
interval of the mean (`eval.summary.summarize`) the run recorded under `<block>_ci95`, or,
for a run written before it did, computed from the seeds' values in `per_seed`. One seed has
no interval (NaN), not a zero-width one. `markdown_table` draws any table in markdown (the
experiment scripts' tables too); `comparison_table` is the table of one block over runs, its
caption the block's protocol (`block_protocol`: `eval.summary.BLOCK_PROTOCOLS` for ranking
runs); `csv_rows` is the long form of
every block of every run (one line per run, block and metric) that `write_csv` writes.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from causalrec_jax.eval.summary import BLOCK_PROTOCOLS, summarize
from causalrec_jax.report.runs import RunRecord

MISSING = "—"
CSV_COLUMNS = ("group", "run", "kind", "path", "block", "protocol", "metric", "mean", "std",
               "ci95_low", "ci95_high", "n_seeds")
# Blocks of metrics.json over seeds, in the order a report shows them.
BLOCKS = ("test", "test_literature", "test_full", "test_truth", "test_unmasked",
          "test_sampled", "valid")
# What `test` measures in the groups whose runs are not ranking runs (the ranking kinds'
# blocks: `eval.summary.BLOCK_PROTOCOLS`).
GROUP_PROTOCOLS = {
    "uplift": {"test": "every user's items ranked by predicted uplift, scored against the "
                       "simulator's true uplift (nothing masked)"},
    "ope": {"test": "estimates of the target policy's reward from the logging policy's log, "
                    "and their relative error against its on-policy truth"},
}
# Metrics where lower is better (for titles).
LOWER_IS_BETTER = ("mse", "rmse", "mae", "relative_error")


@dataclasses.dataclass(frozen=True)
class Summary:
    """One metric of one run over its seeds: `mean`, sample `std`, the 95% Student-t
    interval of the mean `[ci95_low, ci95_high]` (NaN for fewer than two seeds) and
    `n_seeds`, the seeds with a value. NaN means not defined (JSON null)."""

    mean: float
    std: float
    ci95_low: float
    ci95_high: float
    n_seeds: int

    @property
    def ci95_half_width(self) -> float:
        return (self.ci95_high - self.ci95_low) / 2.0


def _number(value: Any) -> float:
    """A metrics.json value as a float; null and non-numbers are NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def metric_names(values: dict[str, Any] | None) -> list[str]:
    """The metric names of a block, without its user counts (`n_users_*`), null ones kept."""
    return [name for name, value in (values or {}).items()
            if "n_users" not in name and (value is None or isinstance(value, int | float))
            and not isinstance(value, bool)]


def block_protocol(group: str, block: str) -> str:
    """What `block` of a run of `group` (`report.runs.KIND_GROUPS`) measures."""
    return GROUP_PROTOCOLS.get(group, {}).get(block, BLOCK_PROTOCOLS.get(block, ""))


def block_summaries(metrics: dict[str, Any], block: str) -> dict[str, Summary]:
    """Every metric of `metrics[block]` summarised over seeds (see the module docstring)."""
    means = metrics.get(block) or {}
    stds = metrics.get(f"{block}_std") or {}
    intervals = metrics.get(f"{block}_ci95") or {}
    per_seed = metrics.get("per_seed") or []
    out = {}
    for name in metric_names(means):
        values = [_number((entry.get(block) or {}).get(name)) for entry in per_seed]
        values = [value for value in values if math.isfinite(value)]
        computed = summarize(values) if values else None
        n_seeds = len(values) if per_seed else len(metrics.get("seeds") or [])
        mean = _number(means[name])
        std = _number(stds[name]) if name in stds else (
            computed["std"] if computed else math.nan)
        interval = intervals.get(name)
        if isinstance(interval, list | tuple) and len(interval) == 2:
            low, high = _number(interval[0]), _number(interval[1])
        elif computed:
            low, high = computed["ci95_low"], computed["ci95_high"]
        else:
            low = high = math.nan
        if n_seeds < 2 or not math.isfinite(mean):
            low = high = math.nan
        out[name] = Summary(mean, std, low, high, n_seeds)
    return out


def summary_cell(summary: Summary | None, digits: int = 4) -> str:
    """`0.4169 ± 0.0181 [0.2543, 0.5795]`; `0.4169 (1 seed)`; `n/a` (null); `—` (absent)."""
    if summary is None:
        return MISSING
    if not math.isfinite(summary.mean):
        return "n/a"
    text = f"{summary.mean:.{digits}f}"
    if summary.n_seeds < 2:
        return f"{text} (1 seed)"
    if math.isfinite(summary.std):
        text += f" ± {summary.std:.{digits}f}"
    if math.isfinite(summary.ci95_low):
        text += f" [{summary.ci95_low:.{digits}f}, {summary.ci95_high:.{digits}f}]"
    return text


def mean_std_cell(mean: float | None, std: float | None, digits: int = 4) -> str:
    """`0.7000 ± 0.0100`; the mean alone without a std; `—` without a mean."""
    if mean is None:
        return MISSING
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   align: Sequence[str] | None = None) -> str:
    """A markdown table: `header`, then `rows` (cells as text; `|` and newlines escaped).
    `align` gives each column's alignment row cell (`---`, `---:`); default `---`."""

    def clean(cell: str) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    align = list(align) if align is not None else ["---"] * len(header)
    lines = ["| " + " | ".join(clean(cell) for cell in header) + " |",
             "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(clean(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def block_metrics(runs: Sequence[RunRecord], block: str) -> list[str]:
    """The metric names of `block` over `runs`, in the order they first appear."""
    names: list[str] = []
    for run in runs:
        names += [name for name in metric_names(run.metrics.get(block)) if name not in names]
    return names


def comparison_table(runs: Sequence[RunRecord], block: str) -> str:
    """The markdown table of `block` over the runs that have it: a caption line naming the
    block, its protocol and what the cells hold, then one row per run, one column per metric."""
    having = [run for run in runs if run.metrics.get(block)]
    names = block_metrics(having, block)
    protocol = block_protocol(having[0].group, block) if having else ""
    caption = (f"**{block}**" + (f" ({protocol})" if protocol else "") + ": mean ± std over "
               "seeds [95% Student-t interval of the mean]")
    rows = []
    for run in having:
        summaries = block_summaries(run.metrics, block)
        rows.append([run.name] + [summary_cell(summaries.get(name)) for name in names])
    return caption + "\n\n" + markdown_table(["run", *names], rows)


def ope_table(runs: Sequence[RunRecord]) -> str:
    """The markdown table of OPE runs: one row per (run, estimator) with its estimate and
    relative error |estimate - truth| / truth over seeds (mean ± std [95% interval]), the
    truth (± its standard error) and the effective sample size."""
    rows = []
    for run in runs:
        summaries = block_summaries(run.metrics, "test")
        truth = run.metrics["truth"]
        truth_text = f"{truth['value']:.4f} ± {truth['stderr']:.4f}"
        for name, estimator in run.metrics["ope"].items():
            rows.append([run.name, name, summary_cell(summaries.get(f"{name}_estimate")),
                         truth_text, summary_cell(summaries.get(f"{name}_relative_error")),
                         f"{estimator.get('n_eff', math.nan):,.0f}"])
    caption = ("**OPE** (estimates of the target policy's reward from the logging policy's "
               "log, against its on-policy truth ± standard error): mean ± std over seeds "
               "[95% Student-t interval of the mean]")
    return caption + "\n\n" + markdown_table(
        ["run", "estimator", "estimate", "truth", "relative error", "n_eff"], rows)


def propensity_table(runs: Sequence[RunRecord]) -> str:
    """The markdown table of the clip reports (`metrics.json` "propensity") of `runs`."""
    rows = []
    for run in runs:
        report = run.metrics["propensity"]
        n = _number(report.get("n"))
        ess = _number(report.get("effective_sample_size"))

        def number(key: str, digits: int = 2, report=report) -> str:
            value = _number(report.get(key))
            return "n/a" if not math.isfinite(value) else f"{value:,.{digits}f}"

        rows.append([run.name, str(report.get("method", "—")), str(report.get("clip", "—")),
                     number("n", 0), number("n_clipped", 0), number("fraction_clipped", 4),
                     number("effective_sample_size", 1),
                     f"{ess / n:.4f}" if n and math.isfinite(ess) else "n/a",
                     number("max_weight_before"), number("max_weight_after")])
    caption = ("**Propensity clip reports** (the weights 1 / p of the training rows; ESS is "
               "Kish's effective sample size (Σw)² / Σw²)")
    return caption + "\n\n" + markdown_table(
        ["run", "propensity", "clip", "n", "clipped", "fraction clipped", "ESS", "ESS / n",
         "max weight before", "max weight after"], rows)


def csv_rows(runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per (run, block, metric) of every block over seeds (`BLOCKS`), `CSV_COLUMNS`;
    NaN as None."""
    rows = []
    for run in runs:
        for block in BLOCKS:
            for name, summary in block_summaries(run.metrics, block).items():
                row = {"group": run.group, "run": run.name, "kind": run.kind,
                       "path": str(run.path), "block": block,
                       "protocol": block_protocol(run.group, block), "metric": name,
                       "n_seeds": summary.n_seeds}
                for key in ("mean", "std", "ci95_low", "ci95_high"):
                    value = getattr(summary, key)
                    row[key] = value if math.isfinite(value) else None
                rows.append(row)
    return rows


def write_csv(path: Path, rows: Sequence[dict[str, Any]],
              columns: Sequence[str] = CSV_COLUMNS) -> None:
    """Writes `rows` (dicts keyed by `columns`) as CSV; None is an empty cell."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()}
                         for row in rows)
