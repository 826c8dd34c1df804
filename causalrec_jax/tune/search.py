"""Hyperparameter search with populations as a vmap axis: `causalrec tune`.

Trials whose static values (shapes: embedding size, layers, loss) agree form one group; each
group trains as few vmapped programs (chunks of at most `max_members` members), each member a
(trial, seed) pair whose dynamic values (`space.DYNAMIC_KEYS`: learning rate, weight decay,
the causal knobs) ride in the training state. Every member equals a separate run of its seed
and values.

Selection reads the validation split only. The chosen configuration is written as
`best.toml`, trained once more as an ordinary run (`OUT/best/`, the only place the test
split is read) and its test metrics reported beside the validation ones. The search folder:

    OUT/config.toml, OUT/space.toml      the base config and the search space
    OUT/trials.jsonl, OUT/trials.csv     one record per trial: values, per-seed validation
                                         metric, mean, best epochs, seconds
    OUT/best.toml                        the chosen configuration, ready for `causalrec train`
    OUT/tune.json                        the choice, its validation and test metrics
    OUT/plots/valid_vs_<key>.png         the validation metric against each hyperparameter
                                         (`tune.plots`: the chosen trial marked, NaN trials
                                         shown, categorical keys on categorical axes)
    OUT/plots/valid_by_trial.png         the validation metric by trial, with the running best
    OUT/best/                            the run folder of the chosen configuration
                                         (exported to the trackers [run] asks for)

`--resume` reads `trials.jsonl` and skips every trial already recorded there (by its values).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from causalrec_jax.causal.checks import causal_keys_used
from causalrec_jax.config import Config, check_selection_metric, dump_config
from causalrec_jax.data.loader import load_dataset
from causalrec_jax.data.split import make_split
from causalrec_jax.errors import ConfigError, RunError
from causalrec_jax.eval.protocol import auto_selection_metric, check_validation_selection
from causalrec_jax.models.factory import model_keys_used
from causalrec_jax.runs.folder import json_safe
from causalrec_jax.runs.track import check_tracking
from causalrec_jax.runs.train import train_run
from causalrec_jax.tasks.ordinary import Member, check_ordinary_keys, seed_list, train_split
from causalrec_jax.train.loop import lower_is_better
from causalrec_jax.tune.plots import plot_trials
from causalrec_jax.tune.space import (
    OptunaSampler,
    SearchSpace,
    apply_trial,
    group_trials,
    make_trials,
    trial_key,
)

SAMPLERS = ("grid", "random", "optuna")


def resolve_metric(config: Config, metric: str | None) -> str:
    """The validation metric to select on, checked against what the run computes.

    `metric` is `valid.NAME@K` or `NAME@K` (default: `train.early_stopping_metric`).
    """
    name = metric or config.train.early_stopping_metric
    if name.startswith("test."):
        raise ConfigError(f"--metric {name}: selection reads the validation split only; use valid.")
    return check_selection_metric(config.eval, name.removeprefix("valid."), "--metric")


def _check_space_keys_used(config: Config, space: SearchSpace) -> None:
    """Refuses, before any trial trains, a `[causal]` or `[model]` key the space sweeps but
    the configured method or model never reads (every trial would ignore it)."""
    used = {"causal": causal_keys_used(config.causal), "model": model_keys_used(config.model)}
    for key in space.keys:
        section, _, name = key.partition(".")
        if section in used and name not in used[section]:
            owner = (f"causal.method = {config.causal.method!r}" if section == "causal"
                     else f"model.name = {config.model.name!r}")
            raise ConfigError(f"key {key}: the space sweeps it, but {owner} does not read it; "
                              "remove it from the space")


def _short(key: str) -> str:
    return key.split(".", 1)[1]


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclasses.dataclass
class _Search:
    """What every batch of trials shares."""

    config: Config
    space: SearchSpace
    split: Any
    seeds: list[int]
    metric: str
    max_members: int
    records_path: Path
    done: dict[str, dict[str, Any]]
    quiet: bool
    truth: Any = None
    n_asked: int = 0
    numbers: dict[str, int] = dataclasses.field(default_factory=dict)

    def run(self, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Trains the trials not done yet, records them; returns the records of all of them."""
        todo = [t for t in trials if trial_key(t) not in self.done]
        # Trials are numbered in the order they were proposed, not the order they train in.
        self.numbers = {trial_key(t): self.n_asked + i for i, t in enumerate(trials)}
        self.n_asked += len(trials)
        groups = group_trials(todo, self.space)
        for group in groups:
            static = {k: v for k, v in todo[group[0]].items() if k not in self.space.dynamic_keys}
            group_config = apply_trial(self.config, static)
            per_chunk = max(1, self.max_members // len(self.seeds))
            for start in range(0, len(group), per_chunk):
                chunk = [todo[i] for i in group[start : start + per_chunk]]
                self._train_chunk(group_config, chunk)
        return [self.done[trial_key(t)] for t in trials]

    def _train_chunk(self, config: Config, chunk: list[dict[str, Any]]) -> None:
        members = [
            Member(seed=seed, hparams={_short(k): float(v) for k, v in trial.items()
                                       if k in self.space.dynamic_keys})
            for trial in chunk
            for seed in self.seeds
        ]
        tic = time.perf_counter()
        trained = train_split(config, self.split, members=members, evaluate_test=False,
                              truth=self.truth)
        seconds = time.perf_counter() - tic
        n_seeds = len(self.seeds)
        with self.records_path.open("a") as handle:
            for index, trial in enumerate(chunk):
                entries = trained.per_seed[index * n_seeds : (index + 1) * n_seeds]
                per_seed = [float(entry["valid"][self.metric]) for entry in entries]
                record = {
                    "trial": self.numbers[trial_key(trial)],
                    "key": trial_key(trial),
                    "values": trial,
                    "valid": float(np.mean(per_seed)),
                    "valid_per_seed": per_seed,
                    "valid_metrics": {
                        name: float(np.mean([e["valid"][name] for e in entries]))
                        for name, value in entries[0]["valid"].items()
                        if isinstance(value, int | float) and "n_users" not in name
                    },
                    "best_epochs": [entry["best_epoch"] for entry in entries],
                    "seconds": round(seconds / len(chunk), 4),
                    "population": len(members),
                }
                self.done[record["key"]] = record
                # A validation metric too few users can be ranked on (NaN) as null, as in
                # metrics.json; the selected metric is never one (refused above).
                line = {**record, "valid_metrics": json_safe(record["valid_metrics"])}
                handle.write(json.dumps(line) + "\n")


def tune(
    config: Config,
    space: SearchSpace,
    out_dir: str | Path,
    *,
    sampler: str = "grid",
    n_trials: int | None = None,
    metric: str | None = None,
    seeds: int | None = None,
    max_members: int = 64,
    batch_size: int = 8,
    resume: bool = False,
    quiet: bool = True,
    space_path: str | Path | None = None,
    frame=None,
) -> dict[str, Any]:
    """Searches `space` around `config`; writes the search folder; returns the summary.

    Args:
        config: the base configuration (its `[data]` split must have a validation part).
        space: the search space (`tune.space.load_space`).
        out_dir: the search folder.
        sampler: `grid`, `random` or `optuna` (TPE, ask-and-tell in batches of `batch_size`).
        n_trials: number of trials (random, optuna; grid: all combinations when None).
        metric: validation metric to select on (default `train.early_stopping_metric`);
            `auto`: pooled AUC when the validation split's AUC is precise enough
            (`eval.protocol.auto_selection_metric`), else mse (the rule and the counts go to
            the summary's `metric_rule`).
        seeds: seeds per trial (default `train.seeds`); a trial's value is the mean over them.
        max_members: the most (trial, seed) members in one vmapped program (memory).
        batch_size: trials asked of optuna at a time (one population).
        resume: continue the search in `out_dir`, skipping recorded trials.
        quiet: no progress output.
        space_path: the space file, copied into the search folder.
        frame: a DataFrame for `data.format = "dataframe"`.
    """
    if n_trials is not None and n_trials < 1:
        raise ConfigError(f"--trials {n_trials}: expected at least 1")
    if max_members < 1:
        raise ConfigError(f"--max-members {max_members}: expected at least 1")
    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    out = Path(out_dir)
    if out.exists() and not resume and any(out.iterdir()):
        raise RunError(
            f"{out} already holds a search; pass --resume to continue it or another --out"
        )
    # A base-config key the runs would ignore is refused before the search, not after it, and
    # so is a tracker (exporting the best run) whose package is missing.
    check_ordinary_keys(config)
    _check_space_keys_used(config, space)
    check_tracking(config)
    metric_key = "--metric" if metric else "train.early_stopping_metric"
    auto = metric in ("auto", "valid.auto")
    if not auto:
        metric = resolve_metric(config, metric)
    dataset, truth = load_dataset(config.data, config.sim, frame=frame,
                                  planted=config.planted)
    split = make_split(dataset, config.data, seed=config.run.seed)
    if split.valid is None or len(split.valid) == 0:
        raise ConfigError(
            f"key data.split: tuning selects on a validation split, and {config.data.split!r} "
            "gives none here (use split_ratios with three parts, leave_one_out, or mar_slice)"
        )
    auto_reason = None
    if auto:
        # Pooled AUC where the validation split is large enough to rank trials, mse where not.
        metric, auto_reason = auto_selection_metric(config.eval, split.valid,
                                                    config.train.loss)
        if not quiet:
            print(auto_reason, flush=True)
    train = dataclasses.replace(
        config.train, early_stopping_metric=metric,
        seeds=config.train.seeds if seeds is None else seeds,
    )
    config = dataclasses.replace(config, train=train)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(config, out / "config.toml")
    if space_path is not None:
        shutil.copyfile(space_path, out / "space.toml")
    # A per-user ranking metric too few validation users can be ranked on is NaN: refused
    # before the first trial (`eval.protocol.check_validation_selection`).
    check_validation_selection(config.eval, split.valid, metric, metric_key)
    records_path = out / "trials.jsonl"
    done = {record["key"]: record for record in _read_records(records_path)} if resume else {}
    if not resume and records_path.exists():
        records_path.unlink()
    search = _Search(config=config, space=space, split=split, seeds=seed_list(config),
                     metric=metric, max_members=max_members, records_path=records_path,
                     done=done, quiet=quiet, truth=truth)
    tic = time.perf_counter()
    lower = lower_is_better(metric)
    if sampler == "optuna":
        if n_trials is None:
            raise ConfigError("--sampler optuna needs --trials N")
        asker = OptunaSampler(space, seed=config.run.seed,
                              direction="minimize" if lower else "maximize")
        records = []
        while len(records) < n_trials:
            asked = asker.ask(min(batch_size, n_trials - len(records)))
            batch = search.run([values for _, values in asked])
            asker.tell([number for number, _ in asked], [r["valid"] for r in batch])
            records.extend(batch)
    else:
        records = search.run(make_trials(space, sampler, n_trials, seed=config.run.seed))
    search_seconds = time.perf_counter() - tic

    finite = [r for r in records if not math.isnan(r["valid"])]
    if not finite:
        raise RunError(f"every trial's validation {metric} is NaN; nothing to choose")
    best = min(finite, key=lambda r: r["valid"]) if lower else max(finite, key=lambda r: r["valid"])
    best_config = apply_trial(config, best["values"])
    dump_config(best_config, out / "best.toml")
    best_dir = out / "best"
    if best_dir.exists():
        shutil.rmtree(best_dir)
    best_run = train_run(best_config, best_dir, quiet=True, frame=frame)
    summary = {
        "metric": f"valid.{metric}",
        "metric_rule": auto_reason,
        "direction": "min" if lower else "max",
        "sampler": sampler,
        "n_trials": len(records),
        "seeds": seed_list(config),
        "best": {"trial": best["trial"], "values": best["values"], "valid": best["valid"],
                 "valid_per_seed": best["valid_per_seed"]},
        "best_run": {"valid": best_run.get("valid", {}), "test": best_run.get("test", {}),
                     "test_std": best_run.get("test_std", {})},
        "timing": {"search_seconds": round(search_seconds, 3)},
    }
    (out / "tune.json").write_text(json.dumps(summary, indent=2) + "\n")
    _write_table(out / "trials.csv", records)
    plot_trials(out / "plots", records, space, metric=metric, lower_is_better=lower,
                chosen=best["trial"], sampler=sampler, name=config.run.name or out.name)
    return summary


def _write_table(path: Path, records: list[dict[str, Any]]) -> None:
    import pandas as pd

    rows = [{"trial": r["trial"], **r["values"], "valid": r["valid"],
             "valid_per_seed": " ".join(f"{v:.6g}" for v in r["valid_per_seed"]),
             "best_epochs": " ".join(map(str, r["best_epochs"])), "seconds": r["seconds"]}
            for r in records]
    pd.DataFrame(rows).to_csv(path, index=False)
