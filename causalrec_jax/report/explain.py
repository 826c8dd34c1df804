"""Explanation summaries: the `"explain"` block of a run's `metrics.json` as tables and figures.

The block (`runs.planted.explain_planted_run`) scores each explainer against a truth (`world`:
the planted world's minimal counterfactual sets; `world_strict`: the same on the instances the
model learned strictly; `oracle`: the exhaustive oracle's minimum sets on the trained model)
per group of instances (`all`, `and`, `or`): `scores[explainer][truth][group][score]`
(`explain.scores.SCORE_NAMES`). These are numbers of one trained model (seed) on one set of
instances, so a cell is a value, not a mean over seeds.

- `explain_table`: markdown, a row per explainer and a column per score, for one truth and
  group, its protocol in the caption;
- `explain_csv_rows`: the long form in `report.tables.CSV_COLUMNS` (block
  `explain.<truth>.<group>`, metric `<explainer>.<score>`, the value as `mean`, one seed);
- `explain_bars`: grouped bars per explainer of cause recall, cause precision and exact match
  against the world and against the oracle, and the size optimality `1 / (1 + gap)` (1: as
  small as the oracle's smallest set);
- `rho_sweep_figure`: cause recall and precision of each explainer against the confounder
  strength ρ, with the fraction of instances the model learned; ρ = 1 is marked not
  identifiable (no log tells the confounder from the antecedent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from causalrec_jax.report.plots import _finite, _pyplot, _save, wrap_title
from causalrec_jax.report.tables import markdown_table

# Columns of the table, in order (the scores of `explain.scores`, counts last).
TABLE_SCORES = ("cause_recall", "cause_precision", "exact_match", "optimality_gap",
                "mean_size", "coverage", "confounder_fp_rate", "pn", "ps", "f_ns",
                "learned_fraction", "n_scored")
TRUTH_TITLES = {
    "world": "against the world's minimal sets (instances the model learned, loosely)",
    "world_strict": "against the world's minimal sets (instances the model learned strictly)",
    "oracle": "against the oracle's minimum sets on the trained model (instances learned, "
              "loosely)",
}
BAR_SCORES = (("cause_recall", "recall"), ("cause_precision", "precision"),
              ("exact_match", "exact match"))


def _cell(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "—" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


GROUP_TITLES = {"all": "all instances", "and": "AND-rule instances", "or": "OR-rule instances"}


def protocol_text(block: dict[str, Any], *, short: bool = False) -> str:
    """The block's protocol: model, K, world, seeds (`short`), then the instances and the
    learned-instance definition."""
    protocol = block.get("protocol") or {}
    world = protocol.get("world") or {}
    parts = [f"{protocol.get('model', '?')}, top-K with K = {protocol.get('k', '?')}",
             f"sets searched up to {protocol.get('max_size', '?')} items, the oracle up to "
             f"{protocol.get('oracle_max_size', '?')}"]
    if world:
        parts.append(f"world of {world.get('n_users')} users, {world.get('n_items')} items, "
                     f"{world.get('history_length')} base items per user, "
                     f"{world.get('n_and_rules')} AND + {world.get('n_or_rules')} OR rules, "
                     f"rho = {world.get('rho')}, world seed {world.get('seed')}, run seed "
                     f"{protocol.get('run_seed')}")
    if block.get("identifiable") is False:
        parts.append("NOT IDENTIFIABLE (rho = 1: the confounder always comes with the "
                     "antecedent; no explainer can tell them apart)")
    if short:
        return "; ".join(parts)
    if protocol.get("instances"):
        parts.append(f"instances: {protocol['instances']}")
    if protocol.get("learned"):
        parts.append(f"learned: {protocol['learned']}")
    return "; ".join(parts)


def explain_table(block: dict[str, Any], truth: str = "world", group: str = "all",
                  name: str = "", protocol: bool = False) -> str:
    """The markdown table of one truth and group: a caption (with the whole protocol when
    `protocol`), then a row per explainer."""
    rows = []
    for explainer, by_truth in (block.get("scores") or {}).items():
        scores = (by_truth.get(truth) or {}).get(group) or {}
        rows.append([explainer] + [_cell(scores.get(score)) for score in TABLE_SCORES])
    skipped = block.get("skipped") or {}
    caption = (f"Explanations{f' of {name}' if name else ''}, {GROUP_TITLES.get(group, group)}, "
               f"{TRUTH_TITLES.get(truth, truth)}"
               + (" (not identifiable: rho = 1)" if block.get("identifiable") is False else "")
               + "." + (" " + protocol_text(block) + "." if protocol else ""))
    if skipped and protocol:
        caption += " Not run: " + "; ".join(f"{method} ({reason})"
                                            for method, reason in skipped.items()) + "."
    return caption + "\n\n" + markdown_table(
        ["explainer", *TABLE_SCORES], rows, ["---"] + ["---:"] * len(TABLE_SCORES))


def explain_csv_rows(block: dict[str, Any], *, group_name: str, run: str, kind: str,
                     path: str) -> list[dict[str, Any]]:
    """The block's long form (`report.tables.CSV_COLUMNS`), one row per truth, instance group,
    explainer and score (NaN / null as None)."""
    rows = []
    protocol = protocol_text(block, short=True)
    for explainer, by_truth in (block.get("scores") or {}).items():
        for truth, by_group in by_truth.items():
            for group, scores in by_group.items():
                for score, value in scores.items():
                    number = float(value) if isinstance(value, int | float) and not isinstance(
                        value, bool) else math.nan
                    rows.append({"group": group_name, "run": run, "kind": kind, "path": path,
                                 "block": f"explain.{truth}.{group}", "protocol": protocol,
                                 "metric": f"{explainer}.{score}",
                                 "mean": number if math.isfinite(number) else None,
                                 "std": None, "ci95_low": None, "ci95_high": None,
                                 "n_seeds": 1})
    return rows


def _value(block: dict[str, Any], explainer: str, truth: str, group: str, score: str) -> float:
    value = (((block.get("scores") or {}).get(explainer) or {}).get(truth) or {}).get(
        group, {}).get(score)
    return float(value) if _finite(value) else math.nan


def explain_bars(path: Path, block: dict[str, Any], *, group: str = "all",
                 title: str = "") -> Path:
    """Grouped bars per explainer (see the module docstring); returns `path`."""
    plt = _pyplot()
    explainers = list(block.get("scores") or {})
    panels = [("world", "against the world's minimal sets", BAR_SCORES),
              ("oracle", "against the oracle's minimum sets on the model",
               (*BAR_SCORES, ("optimality", "size optimality 1/(1+gap)")))]
    width_inches = max(9.0, 1.1 * len(explainers) + 3)
    figure, axes = plt.subplots(2, 1, figsize=(width_inches, 8.2), sharex=True)
    positions = np.arange(len(explainers))
    for axis, (truth, label, scores) in zip(axes, panels, strict=True):
        width = 0.8 / len(scores)
        for index, (score, score_label) in enumerate(scores):
            if score == "optimality":
                gaps = [_value(block, e, truth, group, "optimality_gap") for e in explainers]
                values = [1.0 / (1.0 + gap) if math.isfinite(gap) else math.nan
                          for gap in gaps]
            else:
                values = [_value(block, e, truth, group, score) for e in explainers]
            offsets = positions - 0.4 + width * (index + 0.5)
            bars = axis.bar(offsets, values, width, label=score_label, color=f"C{index}")
            for bar, value in zip(bars, values, strict=True):
                if math.isfinite(value):
                    axis.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.2f}",
                              ha="center", va="bottom", fontsize=6, rotation=90)
                else:
                    axis.text(bar.get_x() + bar.get_width() / 2, 0.02, "n/a", ha="center",
                              va="bottom", fontsize=6, rotation=90)
        axis.set_ylim(0, 1.18)
        axis.set_ylabel("score (higher is better)")
        axis.set_title(label, fontsize=10)
        axis.axhline(1.0, color="grey", linewidth=0.6, linestyle=":")
        axis.legend(loc="upper right", fontsize=8, ncol=len(scores), frameon=False)
    axes[-1].set_xticks(positions, explainers, rotation=20, ha="right")
    axes[-1].set_xlabel("explainer (each baseline's order deleted until the item leaves the "
                        "top-K)")
    text = title or f"Counterfactual explanations, {GROUP_TITLES.get(group, group)}"
    learned = ((block.get("learned") or {}).get(group) or {}).get("n_learned")
    figure.suptitle(wrap_title(
        f"{text} ({learned} the model learned, loosely: C in its top-K, out of it without "
        f"the rule's antecedents)\n" + protocol_text(block, short=True), width_inches, 9),
        fontsize=9)
    figure.tight_layout()
    _save(figure, path)
    return Path(path)


def rho_sweep_figure(path: Path, sweep: Sequence[dict[str, Any]], *, group: str = "all",
                     truth: str = "world", title: str = "") -> Path:
    """Cause recall, cause precision and the confounder false-positive rate of each explainer
    against ρ, and the fraction of instances the model learned (`sweep` entries: `{"rho",
    "identifiable", "scores", "learned"}` as the `"explain"` block has them); ρ = 1 shaded,
    not identifiable. Returns `path`."""
    plt = _pyplot()
    sweep = sorted(sweep, key=lambda entry: entry["rho"])
    rhos = [entry["rho"] for entry in sweep]
    explainers: list[str] = []
    for entry in sweep:
        explainers += [e for e in entry.get("scores") or {} if e not in explainers]
    figure, axes = plt.subplots(1, 4, figsize=(16, 4.8))
    scores = (("cause_recall", "higher is better"), ("cause_precision", "higher is better"),
              ("confounder_fp_rate", "lower is better"))
    for axis, (score, better) in zip(axes[:3], scores, strict=True):
        for index, explainer in enumerate(explainers):
            values = [_value(entry, explainer, truth, group, score) for entry in sweep]
            axis.plot(rhos, values, marker="os^Dv<>P"[index % 8], color=f"C{index}",
                      label=explainer, linewidth=2.4 if explainer == "greedy" else 1.2)
        axis.set_title(f"{score.replace('_', ' ')} ({better})", fontsize=10)
        axis.set_ylabel(f"{score.replace('_', ' ')}, {truth} truth, {group}")
        axis.set_ylim(0, 1.05)
    for kind, color in (("all", "C0"), ("and", "C1"), ("or", "C2")):
        for level, style in (("loose", "-"), ("strict", "--")):
            values = [((entry.get("learned") or {}).get(kind) or {}).get(level)
                      for entry in sweep]
            axes[3].plot(rhos, [math.nan if v is None else v for v in values], style,
                         marker="o" if level == "loose" else "s", color=color,
                         label=f"{kind}, {level}")
    axes[3].set_title("fraction of instances the model learned", fontsize=10)
    axes[3].set_ylabel("learned fraction")
    axes[3].set_ylim(0, 1.05)
    for axis in axes:
        axis.set_xlabel("confounder strength ρ = P(D copies A)")
        if any(not entry.get("identifiable", True) for entry in sweep):
            axis.axvspan(0.97, 1.03, color="grey", alpha=0.2)
            axis.text(1.0, 1.02, "not identifiable", ha="right", va="top", fontsize=7,
                      rotation=90)
        axis.set_xlim(min(rhos) - 0.05, max(max(rhos), 1.0) + 0.05)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.03, 0.0),
                  ncol=min(len(explainers), 4), fontsize=8, frameon=False,
                  title="explainer", title_fontsize=8)
    handles, labels = axes[3].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower right", bbox_to_anchor=(0.99, 0.0), ncol=3,
                  fontsize=8, frameon=False, title="learned fraction: rule kind, definition",
                  title_fontsize=8)
    figure.suptitle(wrap_title(title or "Explainers against the confounder strength ρ", 16, 10),
                    fontsize=10)
    figure.subplots_adjust(left=0.05, right=0.99, top=0.84, bottom=0.27, wspace=0.3)
    _save(figure, path)
    return Path(path)
