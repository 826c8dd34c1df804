"""The figures of reports and experiments, drawn from plain numbers (no run folders here).

- `bar_panels`: one panel per metric, a bar per name (run, method, estimator) with its error
  bar, the mean written above it, reference levels marked at the right edge, a name without
  a value marked (`n/a`, `failed`); axes from 0 unless a value is negative. The report's
  metric bars, its OPE and clip-report bars and `experiments/debias_table.py`'s figure.
- `learning_curves`: runs overlaid, training loss and the validation metric against the
  epoch (a panel per loss function and per metric), each run's mean over seeds with its
  min-max band.
- `propensity_figure`: the stored histograms of the training rows' propensities (log scale,
  the clip marked) beside the clip reports (effective sample size, fraction clipped, largest
  weight before and after the clip).
- `ope_sweep_figure`: relative error of off-policy estimators against the log size, one
  column per target policy (`experiments/ope_sweep.py`).

Each function writes a PNG and returns the (closed) matplotlib figure, for tests to read.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path, dpi: int = 120):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    _pyplot().close(figure)
    return figure


def wrap_title(text: str, width_inches: float, fontsize: float = 10) -> str:
    """`text` with each line broken at spaces to fit a figure `width_inches` wide (about 0.55
    of the font size per character); lines that fit are left as they are."""
    import textwrap

    columns = max(int(width_inches * 72 / (0.55 * fontsize)), 20)
    return "\n".join(textwrap.fill(line, columns) if len(line) > columns else line
                     for line in text.split("\n"))


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


# ---------------------------------------------------------------------------------------------
# Bars
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BarPanel:
    """One panel of `bar_panels`.

    Attributes:
        title: the panel's title (say what the bars and the error bars are).
        values: a value per name; None or NaN: no bar, `missing` written instead.
        errors: the error bar's half-width per name (None or NaN: none); empty: none at all.
        color: the bars' colour, or one per name.
        top: the upper limit of the y axis (default: 1.15 × the highest bar with its error).
        references: `(value, label, line style)` levels drawn across the panel and labelled
            outside its right edge.
        missing: the text written in place of each missing value (default `n/a`; `failed`
            in red).
        ylabel: the y axis label.
        value_format: how the value above each bar is written.
    """

    title: str
    values: Sequence[float | None]
    errors: Sequence[float | None] = ()
    color: str | Sequence[str] = "tab:blue"
    top: float | None = None
    references: Sequence[tuple[float, str, str]] = ()
    missing: Sequence[str] = ()
    ylabel: str = ""
    value_format: str = "{:.3f}"


def draw_bars(axis, names: Sequence[str], panel: BarPanel) -> None:
    """Draws `panel` on `axis`: a bar per name (see `bar_panels`)."""
    from matplotlib import patheffects

    values = [value if _finite(value) else None for value in panel.values]
    errors = [error if _finite(error) else None for error in
              (panel.errors or [None] * len(names))]
    positions = list(range(len(names)))
    axis.bar(positions, [math.nan if v is None else v for v in values],
             yerr=[0.0 if e is None else e for e in errors] if panel.errors else None,
             capsize=3,
             color=panel.color if isinstance(panel.color, str) else list(panel.color))
    reach = [v + (e or 0.0) for v, e in zip(values, errors, strict=True) if v is not None]
    lowest = [v - (e or 0.0) for v, e in zip(values, errors, strict=True) if v is not None]
    reach += [value for value, _, _ in panel.references]
    top = panel.top if panel.top is not None else (
        1.15 * max(reach) if reach and max(reach) > 0 else 1.0)
    bottom = 0.0 if not lowest or min(v for v in values if v is not None) >= 0 else (
        1.15 * min(lowest))
    axis.set_ylim(bottom, top)
    if bottom < 0:
        axis.axhline(0.0, color="black", linewidth=0.8)
    # Every name keeps its slot, with or without a bar (autoscale would drop empty ones).
    axis.set_xlim(-0.6, len(names) - 0.4)
    level = axis.get_yaxis_transform()  # x in axes coordinates, y in data
    references = sorted(panel.references)
    for order, (value, label, style) in enumerate(references):
        axis.axhline(value, color="grey", linestyle=style, linewidth=1)
        # Labelled outside the right edge, never over a bar; of two lines, the lower one's
        # label hangs below it and the upper one's sits above, so they never meet.
        axis.text(1.01, value, label, transform=level, ha="left", fontsize=7,
                  va="center" if len(references) == 1 else ("top", "bottom")[order % 2],
                  color="dimgrey")
    span = axis.get_ylim()[1] - min(axis.get_ylim()[0], 0.0)
    missing = list(panel.missing) or ["n/a"] * len(names)
    for index, (value, error) in enumerate(zip(values, errors, strict=True)):
        if value is None:
            axis.text(index, axis.get_ylim()[0] + 0.03 * span, missing[index], ha="center",
                      va="bottom", fontsize=8,
                      color="tab:red" if missing[index] == "failed" else "dimgrey")
        else:
            axis.text(index, value + (error or 0.0) + 0.01 * span,
                      panel.value_format.format(value), ha="center", va="bottom", fontsize=7,
                      path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")])
    axis.set_xticks(positions, names, rotation=45, ha="right")
    axis.set_title(panel.title, fontsize=9)
    if panel.ylabel:
        axis.set_ylabel(panel.ylabel, fontsize=8)


def panel_columns(n_panels: int) -> int:
    """Columns of a grid of `n_panels`: all in one line up to 3, then 2 × 2, then 3 wide up
    to 9 panels and 4 wide beyond."""
    if n_panels <= 3:
        return max(n_panels, 1)
    if n_panels == 4:
        return 2
    return 3 if n_panels <= 9 else 4


def bar_panels(path: Path, names: Sequence[str], panels: Sequence[BarPanel], *,
               title: str, columns: int | None = None):
    """Writes a grid of bar panels (one per `panels`, a bar per name) to `path`; returns the
    figure. Panels are `3.6` inches tall and at least 4 wide, wider for many names."""
    plt = _pyplot()
    columns = columns or panel_columns(len(panels))
    lines = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(lines, columns, squeeze=False, layout="constrained",
                                figsize=(columns * max(4.0, 0.55 * len(names) + 1.5),
                                         3.6 * lines + 0.6))
    for axis, panel in zip(axes.flat, panels, strict=False):
        draw_bars(axis, names, panel)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle(wrap_title(title, figure.get_figwidth()), fontsize=10)
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------
# Learning curves
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunCurves:
    """The learning curves of one run: `curves` one per seed (and fold), each `{"epoch":
    [...], "loss": [...], "valid": [...]}`; `metric` the validation metric of `valid`
    (None: the run does not validate every epoch); `loss` what its loss is (e.g. `mse`);
    `objective` what it is summed into where that differs between runs of one loss (e.g.
    `ips-weighted`); `color` its colour (default: its place among the runs)."""

    name: str
    curves: Sequence[dict[str, Sequence[float]]]
    metric: str | None = None
    loss: str = ""
    color: str | None = None
    objective: str = ""


def _epoch_table(curves, key: str) -> tuple[list[int], np.ndarray]:
    """`(epochs, [n_curves, n_epochs])` of `key`, NaN where a curve has no such epoch."""
    epochs = sorted({int(e) for curve in curves for e in curve["epoch"]})
    column = {epoch: index for index, epoch in enumerate(epochs)}
    table = np.full((len(curves), len(epochs)), np.nan)
    for row, curve in enumerate(curves):
        for epoch, value in zip(curve["epoch"], curve[key], strict=True):
            table[row, column[int(epoch)]] = np.nan if value is None else value
    return epochs, table


def _spread(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over the rows, NaN where no row has a value."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an epoch no seed reached
        return np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0)


def _draw_curves(axis, runs: Sequence[tuple[int, RunCurves]], key: str) -> bool:
    """Each run's mean over its curves of `key` as a line, the min-max as a band; the y axis
    logarithmic when the runs' positive levels differ by more than a factor of 30 (an
    IPS-weighted loss beside an unweighted one). Returns whether it is."""
    levels = []
    for index, run in runs:
        epochs, table = _epoch_table(run.curves, key)
        mean, low, high = _spread(table)
        color = run.color or f"C{index % 10}"
        if len(run.curves) > 1:
            axis.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
        seeds = f"{len(run.curves)} seed{'s' if len(run.curves) > 1 else ''}"
        objective = f"{run.objective}, " if key == "loss" and run.objective else ""
        axis.plot(epochs, mean, color=color, linewidth=1.8,
                  marker="o" if len(epochs) <= 15 else None, markersize=3,
                  label=f"{run.name} ({objective}{seeds})")
        levels += [value for value in mean if np.isfinite(value) and value > 0]
    log_scale = bool(levels) and max(levels) > 30 * min(levels)
    if log_scale:
        axis.set_yscale("log")
    axis.set_xlabel("epoch")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    return log_scale


def learning_curves(path: Path, runs: Sequence[RunCurves], *, title: str):
    """Writes the runs' learning curves overlaid to `path`; returns the figure.

    One panel per loss function (training loss against the epoch: only losses of one
    function share an axis), then one per validation metric the runs early-stopped on
    (runs that validate every epoch). Each run is one colour in every panel: its mean over
    seeds as a line, the min-max over seeds as a band (a single seed: the line alone)."""
    plt = _pyplot()
    indexed = [(index, run) for index, run in enumerate(runs) if run.curves]
    losses = list(dict.fromkeys(run.loss for _, run in indexed))
    metrics = list(dict.fromkeys(
        run.metric for _, run in indexed
        if run.metric and any(np.isfinite(v) for c in run.curves for v in c["valid"])))
    n_panels = len(losses) + len(metrics)
    columns = panel_columns(n_panels)
    lines = math.ceil(n_panels / columns)
    figure, axes = plt.subplots(lines, columns, squeeze=False, layout="constrained",
                                figsize=(5.0 * columns + 0.4, 4.0 * lines + 0.6))
    flat = list(axes.flat)
    for axis, loss in zip(flat, losses, strict=False):
        log_scale = _draw_curves(axis, [(i, run) for i, run in indexed if run.loss == loss],
                                 "loss")
        name = f"{loss} loss" if loss else "loss"
        axis.set_ylabel(f"training {name}" + (" (log scale)" if log_scale else ""))
        axis.set_title(f"training {name}: mean over seeds, band = min–max", fontsize=9)
    for axis, metric in zip(flat[len(losses):], metrics, strict=False):
        log_scale = _draw_curves(axis, [(i, run) for i, run in indexed
                                        if run.metric == metric], "valid")
        axis.set_ylabel(f"validation {metric}" + (" (log scale)" if log_scale else ""))
        axis.set_title(f"validation {metric} (early stopping): mean over seeds, "
                       "band = min–max", fontsize=9)
    for axis in flat[n_panels:]:
        axis.set_visible(False)
    figure.suptitle(wrap_title(title, figure.get_figwidth()), fontsize=10)
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------
# Propensities and their clip
# ---------------------------------------------------------------------------------------------

def propensity_figure(path: Path, names: Sequence[str], reports: Sequence[dict[str, Any]], *,
                      title: str, colors: Sequence[str] | None = None):
    """Writes the propensity panels of the runs `names` (their `metrics.json` "propensity"
    blocks) to `path`; returns the figure.

    A histogram panel of the training rows' propensities (share of rows per bin, log scale,
    each run's clip a dashed line) when some report stores its `histogram`; then the clip
    reports: Kish's effective sample size over the number of weights, the fraction of
    weights the clip lowered, and the largest weight 1/p before and after the clip. Each run
    has one colour in every panel (`colors`, default `C0`, `C1`, ...)."""
    plt = _pyplot()
    colors = list(colors or [f"C{index % 10}" for index in range(len(names))])
    stored = [index for index, report in enumerate(reports) if report.get("histogram",
                                                                          {}).get("counts")]
    panels = 3 + bool(stored)
    figure, axes = plt.subplots(1, panels, squeeze=False, layout="constrained",
                                figsize=(max(4.0, 0.55 * len(names) + 1.5) * (panels - 1)
                                         + (5.5 if stored else 0.0), 4.2))
    axes = list(axes.flat)
    if stored:
        axis = axes.pop(0)
        for index in stored:
            histogram = reports[index]["histogram"]
            counts = np.asarray(histogram["counts"], np.float64)
            edges = 10.0 ** np.asarray(histogram["log10_edges"], np.float64)
            color = colors[index]
            # Later runs thinner and dashed: runs on the same rows draw the same histogram.
            order = stored.index(index)
            axis.stairs(counts / max(counts.sum(), 1.0), edges, color=color,
                        linewidth=max(3.2 - 1.0 * order, 1.0),
                        linestyle=("-", "--", ":", "-.")[order % 4],
                        label=f"{names[index]} ({int(counts.sum()):,} rows)")
            clip = reports[index].get("clip") or 0.0
            if clip > 0:
                axis.axvline(clip, color=color, linestyle="--", linewidth=1,
                             label=f"{names[index]}: clip at {clip:g}")
        axis.set_xscale("log")
        axis.set_xlabel("propensity p = P(observed) of a training row (log scale)")
        axis.set_ylabel("share of training rows")
        axis.set_title("training rows' propensities (before the clip)", fontsize=9)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7, loc="best")

    def value(report: dict[str, Any], key: str) -> float | None:
        number = report.get(key)
        return float(number) if isinstance(number, int | float) else None

    ess = [None if not value(r, "n") else (value(r, "effective_sample_size") or 0.0)
           / value(r, "n") for r in reports]
    draw_bars(axes[0], names, BarPanel(
        "effective sample size / n\n(Kish, after the clip)", ess, top=1.08,
        ylabel="(Σw)² / Σw² / n", color=colors))
    draw_bars(axes[1], names, BarPanel(
        "fraction of weights\nthe clip lowered", [value(r, "fraction_clipped") for r in reports],
        top=max([1e-3] + [1.15 * (value(r, "fraction_clipped") or 0.0) for r in reports]),
        ylabel="clipped / n", color=colors, value_format="{:.4f}"))
    axis = axes[2]
    before = [value(r, "max_weight_before") for r in reports]
    after = [value(r, "max_weight_after") for r in reports]
    positions = np.arange(len(names))
    axis.bar(positions - 0.2, [math.nan if v is None else v for v in before], width=0.4,
             color=colors, alpha=0.35, hatch="//", edgecolor="black", linewidth=0.5)
    axis.bar(positions + 0.2, [math.nan if v is None else v for v in after], width=0.4,
             color=colors, edgecolor="black", linewidth=0.5)
    for index, (first, second) in enumerate(zip(before, after, strict=True)):
        for offset, number in ((-0.2, first), (0.2, second)):
            if number is not None:
                axis.text(index + offset, number, f"{number:,.1f}", ha="center",
                          va="bottom", fontsize=7)
    finite = [v for v in before + after if v is not None]
    axis.set_ylim(0.0, 1.45 * max(finite) if finite else 1.0)  # room for the legend
    axis.set_xlim(-0.6, len(names) - 0.4)
    axis.set_xticks(positions, names, rotation=45, ha="right")
    axis.set_ylabel("largest weight 1 / p", fontsize=8)
    axis.set_title("largest weight 1 / p, before and\nafter the clip", fontsize=9)
    from matplotlib.patches import Patch

    axis.legend([Patch(facecolor="lightgrey", hatch="//", edgecolor="black"),
                 Patch(facecolor="dimgrey", edgecolor="black")],
                ["before the clip (hatched)", "after the clip"], fontsize=7,
                loc="upper center", ncol=2)
    note = ("" if len(stored) == len(reports) else
            "\nno histogram for " + ", ".join(n for i, n in enumerate(names) if i not in stored)
            + ": the run folder stores no propensities of its rows, only the clip report")
    figure.suptitle(wrap_title(title + note, figure.get_figwidth()), fontsize=10)
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------
# Off-policy estimators against the log size (experiments/ope_sweep.py)
# ---------------------------------------------------------------------------------------------

# The two rows of the figure: estimators that only reweight the logged rewards, and those
# that use a reward model. An estimator in neither goes to the second row.
WEIGHTING = ("ips", "snips", "pbm_ips", "iips")
STYLES = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--"),
          ("X", "-."), ("*", ":")]
# Estimators whose every relative-error statistic agrees to within this (i.e. estimates equal
# to 1e-5 of the truth) are drawn as one line: float32 sums of the same weights differ in
# the 7th digit.
SAME_WITHIN = 1e-5


def identical_groups(payload: dict[str, Any]) -> list[list[str]]:
    """The estimators of a sweep grouped by equal results (every mean, std, min and max of
    every setting and size within `SAME_WITHIN`), in `payload["estimators"]` order: at K = 1
    pbm_ips and iips ARE ips, and drawing them as three lines would hide two."""

    def numbers(name: str) -> np.ndarray:
        return np.asarray([[stats[key] for stats in payload["summary"][s["setting"]][name].values()
                            for key in ("mean", "std", "min", "max")]
                           for s in payload["settings"]], np.float64)

    groups: list[list[str]] = []
    for name in payload["estimators"]:
        for group in groups:
            if np.allclose(numbers(name), numbers(group[0]), rtol=0.0, atol=SAME_WITHIN):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups


def _world(payload: dict[str, Any]) -> str:
    """`1,000 users × 1,000 items` from the payload (older payloads: from the protocol)."""
    import re

    world = payload.get("world")
    if world is None:
        found = re.search(r"`(\d+)` users, `(\d+)` items", payload.get("protocol", ""))
        if found is None:
            return ""
        world = {"n_users": int(found[1]), "n_items": int(found[2])}
    return f"{world['n_users']:,} users × {world['n_items']:,} items, "


def size_label(n: int) -> str:
    """A log size as a tick label: 1k, 30k, 1.5M, or the number under 1,000."""
    for scale, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= scale:
            return f"{n / scale:g}{suffix}"
    return str(n)


def ope_sweep_figure(path: Path, payload: dict[str, Any]):
    """Relative error vs log size of a sweep (`experiments/ope_sweep.py`'s json payload):
    one column per divergence setting, one row per estimator family (reweighting only; with
    a reward model), all panels on one log-log scale. Each estimator has its own marker, line
    style and a small horizontal offset, so no line hides another; estimators with identical
    results are one line named after all of them. Points are means over seeds, bars ± one
    standard error of that mean (std / sqrt(seeds)); the legends sit outside the panels.
    Writes `path`; returns the figure."""
    plt = _pyplot()
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    settings, sizes = payload["settings"], payload["sizes"]
    groups = identical_groups(payload)
    rows = [[g for g in groups if g[0] in WEIGHTING], [g for g in groups if g[0] not in WEIGHTING]]
    rows = [row for row in rows if row]
    row_names = ["reweighting only", "with a reward model"] if len(rows) == 2 else [""]
    fig, axes = plt.subplots(len(rows), len(settings), squeeze=False, sharex=True, sharey=True,
                             figsize=(3.6 * len(settings) + 2.4, 3.3 * len(rows) + 1.0),
                             layout="constrained")
    floor = 1e-6  # log axes: an error of exactly 0 is drawn at the floor
    means_seen = []
    for row_index, row in enumerate(rows):
        # Offsets in decades, spread symmetrically around each log size.
        offsets = np.linspace(-0.045, 0.045, len(row)) if len(row) > 1 else [0.0]
        for column, setting in enumerate(settings):
            axis = axes[row_index][column]
            block = payload["summary"][setting["setting"]]
            for index, group in enumerate(row):
                stats = [block[group[0]][str(n)] for n in sizes]
                mean = np.maximum([s["mean"] for s in stats], floor)
                stderr = np.asarray([s["std"] for s in stats]) / math.sqrt(payload["seeds"])
                low, high = np.maximum(mean - stderr, floor), mean + stderr
                means_seen.extend(mean)
                x = np.asarray(sizes, np.float64) * 10.0 ** offsets[index]
                marker, style = STYLES[index % len(STYLES)]
                label = " = ".join(group)
                if len(group) > 1:
                    label += f" (equal here, within {SAME_WITHIN:g})"
                line = axis.errorbar(x, mean, yerr=[mean - low, high - mean], marker=marker,
                                     linestyle=style, markersize=5, linewidth=1.4, capsize=0,
                                     elinewidth=1.0, color=f"C{index}", label=label)
                line[2][0].set_alpha(0.45)  # the bars lighter than the lines
            axis.axhline(0.01, color="grey", linewidth=0.8, linestyle=(0, (1, 3)),
                         label="1% error")
            axis.set_xscale("log")
            axis.set_yscale("log")
            # One tick per log size, labelled as written (1k, 30k): no 3×10^2 clutter.
            axis.xaxis.set_major_locator(FixedLocator(sizes))
            axis.xaxis.set_major_formatter(FixedFormatter([size_label(n) for n in sizes]))
            axis.xaxis.set_minor_locator(NullLocator())
            axis.grid(True, which="major", alpha=0.3)
            if row_index == 0:
                axis.set_title(f"{setting['setting']}: KL(target‖logging) = "
                               f"{setting['kl']:.2f} nats,\nESS/n = "
                               f"{setting['ess_fraction']:.2f}, truth = "
                               f"{setting['truth']:.4f}", fontsize=9)
            if row_index == len(rows) - 1:
                axis.set_xlabel("logged rounds n (log scale; k = 1,000)", fontsize=9)
            if column == 0:
                axis.set_ylabel((f"{row_names[row_index]}\n" if row_names[row_index] else "")
                                + "|estimate − truth| / truth", fontsize=9)
        axes[row_index][-1].legend(loc="center left", bbox_to_anchor=(1.03, 0.5), fontsize=8,
                                   frameon=False, title=row_names[row_index] or None,
                                   title_fontsize=8)
    # The axes span the means (bars below the floor of the view are cut at the bottom edge).
    axes[0][0].set_ylim(min(means_seen) / 3.0, max(means_seen) * 2.5)
    axes[0][0].set_xlim(min(sizes) / 1.6, max(sizes) * 1.6)
    slate = payload.get("slate_size")
    fig.suptitle(
        "Off-policy estimators on the simulator: relative error vs log size and target policy\n"
        f"{_world(payload)}"
        + (f"slates of K = {slate}, " if slate else "")
        + f"{payload['seeds']} seeds per point (marker: mean, bar: ± 1 standard error over "
        "seeds); the points of one log size are offset sideways to keep them apart",
        fontsize=10)
    return _save(fig, path)


def scaling_figure(path: Path, rows: Sequence[dict[str, Any]], metric: str, title: str):
    """Test `metric` against the parameter count (log scale), one line per `rows[i]["model"]`
    with each row's `test_<metric>_std` as error bars and its width (`embedding_dim`) beside
    its point (`experiments/scaling.py`). Writes `path`; returns the figure."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    for model in dict.fromkeys(row["model"] for row in rows):
        mine = sorted((row for row in rows if row["model"] == model),
                      key=lambda row: row["parameters"])
        axis.errorbar([row["parameters"] for row in mine],
                      [row[f"test_{metric}"] for row in mine],
                      yerr=[row[f"test_{metric}_std"] for row in mine], marker="o",
                      capsize=3, label=model)
        for row in mine:
            axis.annotate(f"d={row['embedding_dim']}",
                          (row["parameters"], row[f"test_{metric}"]),
                          textcoords="offset points", xytext=(4, -12), fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("learned parameters (one seed, item table included; log scale)")
    axis.set_ylabel(f"test {metric} (full ranking, history masked)")
    axis.set_title(wrap_title(title, 6.4), fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return _save(figure, path)


def privacy_figure(path: Path, rows: Sequence[dict[str, Any]], metrics: Sequence[str],
                   title: str):
    """One panel per name of `metrics`: its test mean (error bars: std over seeds) against
    epsilon (log scale), one line per `rows[i]["mechanism"]`; rows with epsilon inf (not
    private) are drawn as a dashed level across each panel (`experiments/privacy_utility.py`).
    Writes `path`; returns the figure."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.2),
                                squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for mechanism in dict.fromkeys(row["mechanism"] for row in rows):
            mine = sorted((row for row in rows if row["mechanism"] == mechanism
                           and math.isfinite(row["epsilon"]) and _finite(row.get(metric))),
                          key=lambda row: row["epsilon"])
            if mine:
                axis.errorbar([row["epsilon"] for row in mine], [row[metric] for row in mine],
                              yerr=[row.get(f"{metric}_std") or 0.0 for row in mine],
                              marker="o", capsize=3, label=mechanism)
        for row in rows:
            if not math.isfinite(row["epsilon"]) and _finite(row.get(metric)):
                axis.axhline(row[metric], linestyle="--", color="0.4",
                             label=f"{row['mechanism']} (not private)")
        axis.set_xscale("log")
        axis.set_xlabel("epsilon (delta = 1/n_users)")
        axis.set_ylabel(f"test {metric}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(wrap_title(title, 5.2 * len(metrics)), fontsize=10)
    figure.tight_layout()
    return _save(figure, path)
