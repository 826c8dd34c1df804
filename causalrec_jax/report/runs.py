"""Run folders read back for a report: what kind of run each holds, its metrics, its
learning curves, and a short name to show it by.

A run folder is what `causalrec train`, `causalrec ope` or `causalrec tune` (its `best/`)
wrote (DESIGN.md §2): `metrics.json` with a `test` block and `per_seed`, `config.toml`, and
`log.jsonl` (one line per epoch and seed). The kind is told from those files alone, without
loading the config schema, so a run written by an older version still reads:

- `ope`: `metrics.json` has the estimators' block `ope` and the on-policy `truth`;
- `uplift`: the config sets `uplift.method` (or the data block reports `mean_true_uplift`);
- `sequential`: the metrics have `test_unmasked` or the data block `n_windows`;
- `causal`: the config's `causal.method` is a debiasing method, or the run reports
  propensities (`propensity`);
- `ordinary`: anything else.

Kinds whose numbers share one table (`KIND_GROUPS`): the ranking kinds (ordinary, causal,
sequential: the same metric names), uplift runs (causal precision and DCG) and OPE runs
(estimates against the truth). A search folder (`causalrec tune --out SEARCH`) is read as
its best run, `SEARCH/best`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from causalrec_jax.errors import RunError

# The group of each kind: runs of one group are compared in one table and one set of plots.
KIND_GROUPS = {"ordinary": "ranking", "causal": "ranking", "sequential": "ranking",
               "uplift": "uplift", "ope": "ope"}
GROUP_ORDER = ("ranking", "uplift", "ope")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run folder, read.

    Attributes:
        path: the folder.
        name: how tables and legends name it (unique among the runs of a report).
        kind: `ordinary`, `causal`, `sequential`, `uplift` or `ope`.
        metrics: its `metrics.json`.
        config: its `config.toml` as a plain dict (empty when the folder has none).
        log: its `log.jsonl` lines.
        tuned: the best run of a search (`SEARCH/best`).
    """

    path: Path
    name: str
    kind: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    log: tuple[dict[str, Any], ...]
    tuned: bool = False

    @property
    def group(self) -> str:
        return KIND_GROUPS[self.kind]

    @property
    def seeds(self) -> list[int]:
        return list(self.metrics.get("seeds") or [e.get("seed") for e in self.per_seed])

    @property
    def per_seed(self) -> list[dict[str, Any]]:
        return list(self.metrics.get("per_seed") or [])

    @property
    def early_stopping_metric(self) -> str | None:
        """The validation metric the run early-stopped on (None for kinds without one)."""
        if self.kind in ("uplift", "ope"):
            return None
        return (self.config.get("train") or {}).get("early_stopping_metric")

    def describe(self) -> str:
        """`mf, dr_jl (propensity true), mse loss, 2 seeds`: what trained the run."""
        model = (self.config.get("model") or {}).get("name", "")
        train = self.config.get("train") or {}
        causal = self.config.get("causal") or {}
        parts = []
        if self.kind == "ope":
            target = self.config.get("target") or {}
            parts.append("off-policy evaluation" + (f", target {target.get('kind')}"
                                                    if target.get("kind") else ""))
        elif self.kind == "uplift":
            parts.append(f"uplift {(self.config.get('uplift') or {}).get('method', '')}".strip())
        else:
            if model:
                parts.append(model)
            if causal.get("method") and causal["method"] != "naive":
                parts.append(f"{causal['method']} (propensity {causal.get('propensity')})")
            if train.get("loss"):
                parts.append(f"{train['loss']} loss")
        if self.tuned:
            parts.append("best of a search")
        seeds = len(self.seeds)
        parts.append(f"{seeds} seed{'s' if seeds != 1 else ''}")
        return ", ".join(parts)


def run_kind(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """The kind of a run from its metrics and config (see the module docstring)."""
    data = metrics.get("data") or {}
    if "ope" in metrics and "truth" in metrics:
        return "ope"
    if (config.get("uplift") or {}).get("method") or "mean_true_uplift" in data:
        return "uplift"
    if "test_unmasked" in metrics or "n_windows" in data:
        return "sequential"
    method = (config.get("causal") or {}).get("method", "naive")
    if "propensity" in metrics or method not in ("naive", "", None):
        return "causal"
    return "ordinary"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None


def read_log(path: Path) -> tuple[dict[str, Any], ...]:
    """The lines of a `log.jsonl` (none when the file is absent)."""
    if not path.is_file():
        return ()
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise RunError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
    return tuple(lines)


def read_run(path: str | Path, name: str | None = None) -> RunRecord:
    """Reads the run folder `path` (a search folder: its best run).

    Raises:
        RunError: `path` is no folder, or holds no run (`metrics.json` with a `test` block
            and `per_seed`), or a file of it does not parse; the message names the folder.
    """
    path = Path(path)
    tuned = False
    if not path.is_dir():
        raise RunError(f"{path}: no such run folder")
    if not (path / "metrics.json").is_file() and (path / "best" / "metrics.json").is_file():
        path, tuned = path / "best", True  # a search folder: its best run
    elif (path / "metrics.json").is_file() and (path.parent / "tune.json").is_file():
        tuned = path.name == "best"
    if not (path / "metrics.json").is_file():
        raise RunError(f"{path} is not a run folder (no metrics.json)")
    metrics = _read_json(path / "metrics.json")
    if not isinstance(metrics, dict) or "test" not in metrics or "per_seed" not in metrics:
        raise RunError(f"{path} is not a run folder (its metrics.json has no test block "
                       "and per_seed)")
    config: dict[str, Any] = {}
    if (path / "config.toml").is_file():
        try:
            config = tomllib.loads((path / "config.toml").read_text())
        except tomllib.TOMLDecodeError as error:
            raise RunError(f"{path / 'config.toml'}: not valid TOML ({error})") from None
    return RunRecord(path=path, name=name or path.name, kind=run_kind(metrics, config),
                     metrics=metrics, config=config, log=read_log(path / "log.jsonl"),
                     tuned=tuned)


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Short names of the folders, unique among them: the folder's name, or as many of its
    last path parts as tell it from the others (`a/run`, `b/run`)."""
    parts = [Path(path).resolve().parts for path in paths]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return names
        depth += 1


def read_runs(paths: Sequence[str | Path]) -> tuple[list[RunRecord], list[str]]:
    """Reads every folder of `paths` (each once); returns the runs and the notes on what was
    read otherwise than given (a search folder read as its best run, a folder given twice).

    Raises:
        RunError: a folder is not a run (`read_run`); nothing was given.
    """
    if not paths:
        raise RunError("no run folders given")
    runs, notes, seen = [], [], set()
    for path in paths:
        run = read_run(path)
        if run.path.resolve() in seen:
            notes.append(f"skipped: {path} given twice; reported once")
            continue
        seen.add(run.path.resolve())
        if run.tuned and Path(path).resolve() != run.path.resolve():
            notes.append(f"{path} is a search folder: reporting its best run, {run.path}")
        runs.append(run)
    names = unique_names([run.path for run in runs])
    return [dataclasses.replace(run, name=name) for run, name in zip(runs, names,
                                                                       strict=True)], notes


def group_runs(runs: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """The runs by group (`KIND_GROUPS`), in `GROUP_ORDER`, each keeping the given order."""
    groups = {group: [run for run in runs if run.group == group] for group in GROUP_ORDER}
    return {group: members for group, members in groups.items() if members}


def seed_curves(run: RunRecord, metric: str | None) -> list[dict[str, list[float]]]:
    """The run's learning curves from `log.jsonl`, one per (fold, seed): `{"epoch": [...],
    "loss": [...], "valid": [...]}`, `valid` the validation `metric` of each epoch (NaN where
    the line has none; all NaN for kinds that do not validate every epoch)."""
    curves: dict[tuple, dict[str, list[float]]] = {}
    for line in run.log:
        key = (line.get("fold"), line.get("seed"))
        curve = curves.setdefault(key, {"epoch": [], "loss": [], "valid": []})
        curve["epoch"].append(int(line["epoch"]))
        loss = line.get("loss")
        curve["loss"].append(math.nan if loss is None else float(loss))
        value = (line.get("valid") or {}).get(metric) if metric else None
        curve["valid"].append(math.nan if value is None else float(value))
    return [curves[key] for key in sorted(curves, key=lambda k: (k[0] or 0, k[1] or 0))]
