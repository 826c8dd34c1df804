"""`causalrec train`: a run of any kind trained into its folder (DESIGN §2).

`train_run` trains ordinary and causal runs (`tasks.ordinary`, with k-fold cross-validation
when `train.cv_folds` is set), `sequence_run` the sequential models (`tasks.sequential`),
`uplift_run` the uplift runs (`tasks.uplift`); `ope_run` writes an off-policy evaluation
(`tasks.ope`). The tasks compute; this module writes the folder.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import causalrec_jax.sim  # noqa: F401  registers the data formats "simulator" and "simlog"
from causalrec_jax.config import (
    Config,
    check_selection_metric,
    dump_config,
    load_config,
    refuse_unused,
)
from causalrec_jax.data.dataset import Split, concatenate
from causalrec_jax.data.loader import load_dataset, load_split
from causalrec_jax.data.sequences import history_matrix, user_sequences
from causalrec_jax.data.split import kfold_splits, make_split
from causalrec_jax.errors import CausalRecError
from causalrec_jax.eval.summary import aggregate, metric_values, summarize
from causalrec_jax.runs.folder import (
    absolute_data_path,
    check_resumable,
    json_safe,
    plot_learning_curve,
    refuse_existing_run,
    versions,
    write_run_folder,
)
from causalrec_jax.tasks.ope import ope_log, run_ope
from causalrec_jax.tasks.ordinary import (
    check_ordinary_keys,
    data_summary,
    evaluation_propensity,
    save_data,
    seed_list,
    train_split,
)
from causalrec_jax.tasks.sequential import check_sequential_config, train_sequence_seed
from causalrec_jax.tasks.uplift import check_uplift_keys, uplift_log, uplift_metrics, uplift_seed
from causalrec_jax.train import checkpoint as checkpoints
from causalrec_jax.train.loop import TrainingDivergedError


def train_run(
    config: Config, out_dir: str | Path, *, resume: bool = False, quiet: bool = False,
    frame=None,
) -> dict[str, Any]:
    """Trains and evaluates the run `config` describes and writes its folder; returns metrics.

    With `train.cv_folds = K`, trains on K folds (`data.kfold_splits`) and reports each fold
    and the mean / std over folds; otherwise uses `data.split`.
    """
    out = Path(out_dir)
    check_ordinary_keys(config)
    if not resume:
        refuse_existing_run(out)
    config = absolute_data_path(config)
    if resume and (out / "config.toml").exists():
        check_resumable(load_config(out / "config.toml"), config, out)
    check_selection_metric(config.eval, config.train.early_stopping_metric,
                           "train.early_stopping_metric")
    fresh = not out.exists() or not any(out.iterdir())
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _write_run(config, out, resume=resume, quiet=quiet, frame=frame)
    except CausalRecError as error:
        # A run refused before it trained (bad data, a config the data cannot serve) leaves
        # nothing behind; a diverged one keeps its checkpoints for --resume.
        if fresh and not isinstance(error, TrainingDivergedError):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_run(config: Config, out: Path, *, resume: bool, quiet: bool, frame) -> dict[str, Any]:
    """The body of `train_run` once `out` exists: data, training, evaluation, the folder."""
    dump_config(config, out / "config.toml")
    tic = time.perf_counter()
    dataset, truth = load_dataset(config.data, config.sim, frame=frame)
    propensity = evaluation_propensity(config, dataset)
    progress = not quiet and sys.stderr.isatty()
    log_path = out / "log.jsonl"
    if not resume and log_path.exists():
        log_path.unlink()
    if resume and log_path.exists() and not config.train.cv_folds:
        # Epochs after the last checkpoint are trained (and logged) again.
        last = checkpoints.latest_epoch(out / "checkpoints")
        kept = [line for line in log_path.read_text().splitlines()
                if line.strip() and last is not None and json.loads(line)["epoch"] <= last]
        log_path.write_text("".join(line + "\n" for line in kept))

    def log_fn(record: dict[str, Any]) -> None:
        with log_path.open("a") as handle:
            handle.write(json.dumps(json_safe(record)) + "\n")  # NaN as null: valid JSON

    if config.train.cv_folds:
        folds = list(kfold_splits(dataset, config.train.cv_folds, seed=config.run.seed,
                                  valid_fraction=0.1))
        fold_results = []
        for index, fold in enumerate(folds):
            def fold_log(record, index=index):
                log_fn({"fold": index, **record})

            trained = train_split(config, fold, checkpoint_dir=out / "checkpoints" / f"fold{index}",
                                  resume=resume, progress=progress, log_fn=fold_log,
                                  propensity=propensity, truth=truth)
            fold_results.append(trained)
        per_seed = [dict(entry, fold=index) for index, trained in enumerate(fold_results)
                    for entry in trained.per_seed]
        trained, split = fold_results[0], folds[0]
        timing = {key: sum(t.timing.get(key, 0.0) for t in fold_results)
                  for key in ("train_seconds", "eval_seconds", "test_eval_seconds")}
        timing["epoch_seconds"] = trained.timing["epoch_seconds"]
    else:
        split = make_split(dataset, config.data, seed=config.run.seed)
        trained = train_split(config, split, checkpoint_dir=out / "checkpoints", resume=resume,
                              progress=progress, log_fn=log_fn, propensity=propensity,
                              truth=truth)
        per_seed, timing = trained.per_seed, dict(trained.timing)
    metrics: dict[str, Any] = {}
    for part in ("test", "test_literature", "test_full", "test_truth", "valid"):
        if part in per_seed[0]:
            metrics.update(aggregate(per_seed, part))
    metrics["per_seed"] = per_seed
    metrics["seeds"] = seed_list(config)
    if config.train.cv_folds:
        by_fold = [
            {name: float(np.mean([e["test"][name] for e in per_seed if e["fold"] == f]))
             for name in metric_values(per_seed[0]["test"])}
            for f in range(config.train.cv_folds)
        ]
        metrics["cv"] = {"folds": by_fold, **{
            key: {name: s[key] for name, s in
                  ((n, summarize([fold[n] for fold in by_fold])) for n in by_fold[0])}
            for key in ("mean", "std")}}
    metrics["data"] = data_summary(split, per_seed)
    if trained.propensity_report is not None:
        metrics["propensity"] = {"method": config.causal.propensity,
                                 "clip": config.causal.propensity_clip,
                                 **trained.propensity_report}
    metrics["timing"] = {**timing, "total_seconds": round(time.perf_counter() - tic, 3)}
    metrics["versions"] = versions()
    if truth is not None:
        metrics["data"]["simulator"] = True

    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    saved = {"params": trained.parts.params}
    if trained.extra:
        saved["causal"] = trained.extra
    checkpoints.save_checkpoint(model_dir, 0, saved,
                                {"seeds": seed_list(config), "model": config.model.name})
    save_data(out / "data.npz", split)
    (out / "plots").mkdir(exist_ok=True)
    plot_learning_curve(out / "plots" / "learning_curve.png", trained.history,
                         config.train.early_stopping_metric)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
    tmp.replace(out / "metrics.json")
    return metrics


def _save_model(folder: Path, config: Config, split: Split, params: Any) -> None:
    """Writes `model/` (best parameters stacked over seeds) and `data.npz` into `folder`."""
    model_dir = folder / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    checkpoints.save_checkpoint(model_dir, 0, {"params": params},
                                {"seeds": seed_list(config), "model": config.model.name})
    everything = concatenate([split.train, split.valid, split.test])
    save_data(folder / "data.npz", split, extra={
        "test_user": split.test.user, "test_item": split.test.item,
        "next_history": history_matrix(user_sequences(everything), config.model.max_len),
    })


def _kept_log_lines(log_path: Path, checkpoint_root: Path) -> list[str]:
    """The lines of `log.jsonl` a resumed run keeps: each seed's epochs up to its newest
    checkpoint (later epochs are trained, and logged, again)."""
    kept = []
    for line in log_path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        last = checkpoints.latest_epoch(checkpoint_root / f"seed{record.get('seed')}")
        if last is not None and record["epoch"] <= last:
            kept.append(line)
    return kept


def sequence_run(config: Config, out: str | Path, *, quiet: bool = True,
                 resume: bool = False, item_chunk: int | None = None) -> dict[str, Any]:
    """All seeds of a sequential model; writes the run folder (see the module docstring).

    With `resume`, continues the run in `out` from each seed's newest checkpoint (its
    `config.toml` must match `config`); a finished run is only re-evaluated and re-written.
    `item_chunk` forces ranking the catalogue that many items at a time (default: only
    catalogues above `CATALOGUE_CHUNK_ITEMS`).

    Raises:
        RunError: `out` holds a run and `resume` is False, or the configs differ on resume.
        TrainingDivergedError: a NaN/Inf loss or gradient; the checkpoints are kept.
    """
    check_sequential_config(config)
    out = Path(out)
    if not resume:
        refuse_existing_run(out)
    config = absolute_data_path(config)
    if resume and (out / "config.toml").exists():
        check_resumable(load_config(out / "config.toml"), config, out)
    fresh = not out.exists() or not any(out.iterdir())
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _write_sequence_run(config, out, quiet=quiet, resume=resume,
                                   item_chunk=item_chunk)
    except CausalRecError as error:
        # refused before training: leave nothing behind; diverged: keep the checkpoints
        if fresh and not isinstance(error, TrainingDivergedError):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_sequence_run(config: Config, out: Path, *, quiet: bool, resume: bool,
                        item_chunk: int | None) -> dict[str, Any]:
    tic = time.perf_counter()
    dump_config(config, out / "config.toml")
    split, _ = load_split(config)
    log_path = out / "log.jsonl"
    kept = _kept_log_lines(log_path, out / "checkpoints") if resume and log_path.exists() else []
    log_path.write_text("".join(line + "\n" for line in kept))

    def log_fn(record: dict[str, Any]) -> None:
        with log_path.open("a") as handle:
            handle.write(json.dumps(json_safe(record)) + "\n")

    progress = not quiet and sys.stderr.isatty()
    seeds = seed_list(config)
    results = [
        train_sequence_seed(config, split, seed, checkpoint_dir=out / "checkpoints" / f"seed{seed}",
                            resume=resume, progress=progress, log_fn=log_fn,
                            item_chunk=item_chunk)
        for seed in seeds
    ]
    per_seed = [result.entry for result in results]
    metrics: dict[str, Any] = {}
    for part in ("test", "valid", "test_unmasked", "test_sampled"):
        metrics.update(aggregate(per_seed, part))
    timings = [result.timing for result in results]
    metrics.update({
        "per_seed": per_seed,
        "seeds": seeds,
        "data": {"n_users": split.train.n_users, "n_items": split.train.n_items,
                 "n_train": len(split.train), "n_valid": len(split.valid),
                 "n_test": len(split.test), "n_windows": timings[0]["n_windows"],
                 "sampled_negatives": config.eval.sampled_negatives,
                 "sampled_by": config.eval.sampled_by},
        "timing": {"train_seconds": round(sum(t["train_seconds"] for t in timings), 4),
                   "epoch_seconds": float(np.median([t["epoch_seconds"] for t in timings])),
                   "first_epoch_seconds": timings[0]["first_epoch_seconds"],
                   "eval_seconds": round(sum(t["eval_seconds"] for t in timings), 4),
                   "test_eval_seconds": round(sum(t["test_eval_seconds"] for t in timings), 4),
                   "seconds_to_best": [entry["seconds_to_best"] for entry in per_seed],
                   "total_seconds": round(time.perf_counter() - tic, 3),
                   # the whole process's peak resident memory (Linux: ru_maxrss is in KiB)
                   "peak_rss_mb": round(
                       resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
        "versions": versions(),
    })
    params = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                          *(result.best_params for result in results))
    _save_model(out, config, split, params)
    (out / "plots").mkdir(exist_ok=True)
    plot_learning_curve(out / "plots" / "learning_curve.png", results[0].history,
                         config.train.early_stopping_metric)
    staging = out / "metrics.json.tmp"
    staging.write_text(json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
    staging.replace(out / "metrics.json")
    return metrics


def uplift_run(config: Config, out: str | Path, *, quiet: bool = True) -> dict[str, Any]:
    """Runs every seed and writes `config.toml`, `metrics.json`, `log.jsonl` into `out`."""
    check_uplift_keys(config)
    config = absolute_data_path(config)  # config.toml names the simlog wherever it is read
    per_seed = []
    for seed in seed_list(config):
        per_seed.append(uplift_seed(config, seed))
        if not quiet:
            print(f"seed {seed}: " + ", ".join(
                f"{name} {value:.4f}" for name, value in per_seed[-1]["test"].items()))
    metrics = uplift_metrics(config, per_seed)
    write_run_folder(Path(out), config, metrics, uplift_log(per_seed))
    return metrics


def ope_run(config: Config, out: str | Path) -> dict[str, Any]:
    """Runs `run_ope` and writes `out/config.toml`, `out/metrics.json` and `out/log.jsonl`
    (atomically, by `runs.folder.write_run_folder`)."""
    # An OPE run reads the world, both policies, [ope] and [run]; any other key is refused.
    refuse_unused(config, {"env": None, "policy": None, "target": None, "ope": None,
                           "run": None}, "an OPE run")
    metrics = run_ope(config)
    losses = metrics.pop("_losses")
    seconds = (metrics["timing"]["reward_model_seconds"] / config.ope.reward_model_epochs
               if losses is not None else None)
    write_run_folder(out, config, metrics, ope_log(losses, seconds))
    return metrics
