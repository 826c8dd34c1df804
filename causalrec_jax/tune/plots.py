"""Plots of a hyperparameter search, drawn from its trial records (`trials.jsonl`).

- `key_figure`: the validation metric against one key of the space. A grid or a choice is a
  categorical axis, one tick per candidate (numbers in increasing order, other values in the
  space's order) with the trials of a candidate spread side by side; a range is a numeric
  axis, log-scaled for `scale = "log"`.
- `trial_figure`: the validation metric against the trial number (the order trials were
  proposed in), with the running best.

Both mark the chosen trial (a star labelled with its value; the legend adds its number and
metric), draw each trial's
spread over seeds as a vertical bar, and show trials whose metric is NaN (diverged) as red
crosses on the bottom edge, counted in the legend, instead of dropping them. `plot_trials`
writes both kinds to a search's `plots/` folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from causalrec_jax.tune.space import Param, SearchSpace

# Half the width taken by the trials of one candidate on a categorical axis (a tick is 1 wide).
_SPREAD = 0.25
_CHOSEN_STYLE = {"marker": "*", "markersize": 16, "color": "tab:red",
                 "markeredgecolor": "black", "linestyle": "none", "zorder": 5}


def value_label(value: Any) -> str:
    """A value as a label: strings as they are, floats to 4 significant digits, others as
    JSON (true, 64, [64, 32])."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _canonical(value: Any) -> str:
    if isinstance(value, tuple | list):
        return json.dumps([json.loads(_canonical(item)) for item in value])
    return json.dumps(value)


def is_categorical(param: Param) -> bool:
    """Whether `param` is drawn on a categorical axis: every grid and choice is."""
    return param.kind != "range"


def categories(param: Param, values: Sequence[Any] = ()) -> list[Any]:
    """The ticks of a categorical axis: the space's candidates (numbers sorted, others in
    file order), then any value of `values` that is not among them."""
    candidates = list(param.values)
    if candidates and all(isinstance(v, int | float) and not isinstance(v, bool)
                          for v in candidates):
        candidates.sort()
    known = {_canonical(v) for v in candidates}
    for value in values:
        if _canonical(value) not in known:
            known.add(_canonical(value))
            candidates.append(value)
    return candidates


def key_positions(param: Param, values: Sequence[Any]) -> np.ndarray:
    """`[n_trials]` x of each trial's value: the value itself for a range; for a categorical
    key the candidate's index, the trials sharing it spread evenly over ±0.25 in trial order."""
    if not is_categorical(param):
        return np.asarray(values, np.float64)
    index = {_canonical(value): i for i, value in enumerate(categories(param, values))}
    slots = [index[_canonical(value)] for value in values]
    positions = np.asarray(slots, np.float64)
    for slot in set(slots):
        members = [i for i, s in enumerate(slots) if s == slot]
        if len(members) > 1:
            positions[members] += np.linspace(-_SPREAD, _SPREAD, len(members))
    return positions


def _draw_trials(axis, x: np.ndarray, records: Sequence[Mapping[str, Any]], chosen: int | None,
                 metric: str, chosen_text: str, note: str) -> None:
    """Means, seed ranges, NaN crosses, the chosen star (legend: `chosen_text`) and its
    `note` on `axis`."""
    from matplotlib import patheffects

    means = np.asarray([r["valid"] for r in records], np.float64)
    finite = np.isfinite(means)
    axis.plot(x[finite], means[finite], "o", color="tab:blue", markersize=5, alpha=0.8,
              label="trial (mean over seeds)", zorder=3)
    ranges = [[v for v in r.get("valid_per_seed", []) if math.isfinite(v)] for r in records]
    if any(len(seeds) > 1 for seeds in ranges):
        low = [min(s) if len(s) > 1 else np.nan for s in ranges]
        high = [max(s) if len(s) > 1 else np.nan for s in ranges]
        axis.vlines(x, low, high, color="tab:blue", alpha=0.35, linewidth=1.5,
                    label="min–max over seeds", zorder=2)
    if not finite.all():
        # On the bottom edge (x in data, y in axes coordinates): outside any data range.
        axis.plot(x[~finite], np.full((~finite).sum(), 0.0), "x", color="tab:red",
                  markersize=8, markeredgewidth=2, clip_on=False,
                  transform=axis.get_xaxis_transform(),
                  label=f"NaN (diverged): {(~finite).sum()} trial"
                  + ("s" if (~finite).sum() > 1 else ""), zorder=4)
    numbers = [r["trial"] for r in records]
    if chosen is None or chosen not in numbers:
        return
    row = numbers.index(chosen)
    axis.plot([x[row]], [means[row]], gid="chosen",
              label=f"chosen: trial {chosen}{chosen_text}, valid {metric} = {means[row]:.4g}",
              **_CHOSEN_STYLE)
    # A short note beside the star (the legend has the whole of it), on the side away from
    # the edge it is near.
    axis.get_xlim(), axis.get_ylim()  # settles the autoscaled limits before transforming
    fx, _ = axis.transAxes.inverted().transform(axis.transData.transform((x[row], means[row])))
    axis.annotate(note, xy=(x[row], means[row]), xytext=(-10 if fx > 0.6 else 10, 8),
                  textcoords="offset points", ha="right" if fx > 0.6 else "left",
                  va="bottom", fontsize=8, color="tab:red", fontweight="bold", zorder=6,
                  path_effects=[patheffects.withStroke(linewidth=3, foreground="white")])


def _finish(figure, axis, title: str, metric: str, lower_is_better: bool) -> None:
    axis.set_ylabel(f"valid {metric}, mean over seeds\n"
                    f"({'lower' if lower_is_better else 'higher'} is better)", fontsize=9)
    axis.set_title(title, fontsize=9)
    axis.grid(True, alpha=0.3)
    # Below the axes (constrained layout makes room), never over the points.
    figure.legend(*axis.get_legend_handles_labels(), loc="outside lower center", ncol=2,
                  fontsize=8, frameon=False)


def _subtitle(records: Sequence[Mapping[str, Any]], sampler: str) -> str:
    n_nan = sum(not math.isfinite(r["valid"]) for r in records)
    seeds = max((len(r.get("valid_per_seed", [])) for r in records), default=0)
    return (f"{sampler} search, {len(records)} trials"
            + (f" ({n_nan} NaN)" if n_nan else "")
            + (f", {seeds} seed{'s' if seeds != 1 else ''} each" if seeds else ""))


# matplotlib is imported inside the functions: importing it costs about a second, and a
# search imports this module whether or not it gets to plotting.


def key_figure(records: Sequence[Mapping[str, Any]], param: Param, *, metric: str,
               lower_is_better: bool, chosen: int | None, sampler: str = "",
               name: str = "search"):
    """The validation metric against `param.key`, one point per trial (see the module).

    Args:
        records: trial records, each with `trial`, `values` (dotted key -> value), `valid`
            (mean over seeds, NaN for a diverged trial) and `valid_per_seed`.
        param: the key of the space to draw on the x axis.
        metric: the validation metric's name, e.g. "ndcg@10".
        lower_is_better: the metric's direction (for the label).
        chosen: the chosen trial's number (`trial`), or None.
        sampler, name: for the title (the sampler and the search's name).

    Returns:
        The matplotlib Figure (the caller saves and closes it).
    """
    import matplotlib.pyplot as plt

    values = [r["values"][param.key] for r in records]
    x = key_positions(param, values)
    figure, axis = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
    if is_categorical(param):
        ticks = categories(param, values)
        labels = [value_label(v) for v in ticks]
        slanted = sum(len(label) + 2 for label in labels) > 48
        axis.set_xticks(range(len(ticks)), labels, rotation=30 if slanted else 0,
                        ha="right" if slanted else "center")
        axis.set_xlim(-0.5, len(ticks) - 0.5)
        kind = f"{param.kind}: {len(ticks)} candidates"
    else:
        # The whole searched range is shown, not only where trials fell.
        if param.scale == "log":
            axis.set_xscale("log")
            axis.set_xlim(param.low / 1.25, param.high * 1.25)
        else:
            margin = 0.03 * (param.high - param.low)
            axis.set_xlim(param.low - margin, param.high + margin)
        kind = f"range {param.low:g} to {param.high:g}, {param.scale} scale"
    numbers = [r["trial"] for r in records]
    chosen_value = values[numbers.index(chosen)] if chosen in numbers else None
    _draw_trials(axis, x, records, chosen, metric,
                 chosen_text=f" ({param.key} = {value_label(chosen_value)})",
                 note=value_label(chosen_value))
    axis.set_xlabel(f"{param.key} ({kind})", fontsize=9)
    _finish(figure, axis, f"{name}: valid {metric} vs {param.key}\n{_subtitle(records, sampler)}",
            metric, lower_is_better)
    return figure


def running_best(values: Sequence[float], lower_is_better: bool) -> np.ndarray:
    """`[n]` the best of `values[:i + 1]`, NaN ignored (NaN until the first finite value)."""
    array = np.asarray(values, np.float64)
    accumulate = np.fmin.accumulate if lower_is_better else np.fmax.accumulate
    return accumulate(array) if len(array) else array


def trial_figure(records: Sequence[Mapping[str, Any]], *, metric: str, lower_is_better: bool,
                 chosen: int | None, sampler: str = "", name: str = "search"):
    """The validation metric against the trial number, with the running best (a step line).

    Args: as `key_figure`, without `param`. Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ordered = sorted(records, key=lambda r: r["trial"])
    x = np.asarray([r["trial"] for r in ordered], np.float64)
    figure, axis = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
    best = running_best([r["valid"] for r in ordered], lower_is_better)
    axis.step(x, best, where="post", color="tab:green", linewidth=1.5, label="running best",
              zorder=2)
    chosen_valid = {r["trial"]: r["valid"] for r in ordered}.get(chosen)
    _draw_trials(axis, x, ordered, chosen, metric, chosen_text="",
                 note="" if chosen_valid is None else f"{chosen_valid:.4g}")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("trial (in the order proposed)", fontsize=9)
    _finish(figure, axis, f"{name}: valid {metric} by trial\n{_subtitle(records, sampler)}",
            metric, lower_is_better)
    return figure


def plot_trials(folder: str | Path, records: Sequence[Mapping[str, Any]], space: SearchSpace,
                *, metric: str, lower_is_better: bool, chosen: int | None, sampler: str = "",
                name: str = "search") -> list[Path]:
    """Writes `valid_vs_<key>.png` per key of `space` and `valid_by_trial.png` into `folder`.

    Returns the paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    common = {"metric": metric, "lower_is_better": lower_is_better, "chosen": chosen,
              "sampler": sampler, "name": name}
    figures = [(f"valid_vs_{param.key.replace('.', '_')}.png",
                lambda param=param: key_figure(records, param, **common))
               for param in space.params]
    figures.append(("valid_by_trial.png", lambda: trial_figure(records, **common)))
    paths = []
    for filename, draw in figures:
        figure = draw()
        figure.savefig(folder / filename, dpi=110)
        plt.close(figure)
        paths.append(folder / filename)
    return paths
