"""`causalrec train`: a run of any kind trained into its folder (DESIGN §2).

`train_run` trains ordinary and causal runs (`tasks.ordinary`, with k-fold cross-validation
when `train.cv_folds` is set), `sequence_run` the sequential models (`tasks.sequential`),
`uplift_run` the uplift runs (`tasks.uplift`); `ope_run` writes an off-policy evaluation
(`tasks.ope`). The tasks compute; this module writes the folder, every kind through the same
functions of `runs.folder`: `write_run` (refuse / resume / stage), `log.jsonl` with one line
per (epoch, seed) and the same keys (`runs.folder.LOG_KEYS`), `write_metrics`, `save_model`.
Ordinary and sequential runs keep checkpoints and resume; uplift and OPE runs do not, so their
folder is written whole at the end or not at all.
"""

from __future__ import annotations

import functools
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import causalrec_jax.sim  # noqa: F401  registers the data formats "simulator" and "simlog"
from causalrec_jax.config import Config, check_selection_metric, refuse_unused
from causalrec_jax.data.dataset import concatenate
from causalrec_jax.data.fingerprint import fingerprint, fingerprint_array
from causalrec_jax.data.loader import load_dataset
from causalrec_jax.data.sequences import history_matrix, user_sequences
from causalrec_jax.data.split import kfold_splits, make_split
from causalrec_jax.errors import CausalRecError
from causalrec_jax.eval.summary import aggregate, metric_values, summarize
from causalrec_jax.parallel import agree, is_multiprocess, together
from causalrec_jax.runs.folder import (
    append_log,
    check_resume,
    epoch_log_lines,
    epoch_summary,
    fit_log_lines,
    log_appender,
    plot_learning_curve,
    refuse_existing_run,
    save_model,
    seed_curves,
    start_log,
    versions,
    write_metrics,
    write_run,
)
from causalrec_jax.runs.track import check_tracking
from causalrec_jax.tasks.ope import run_ope
from causalrec_jax.tasks.ordinary import (
    check_ordinary_keys,
    data_summary,
    evaluation_propensity,
    seed_list,
    train_split,
)
from causalrec_jax.tasks.sequential import (
    check_sequential_config,
    exposure_clip_report,
    exposure_rows,
    held_out_rounds,
    load_slate_log,
    sequence_privacy,
    slate_log_attraction,
    train_sequence_seed,
)
from causalrec_jax.tasks.uplift import check_uplift_keys, uplift_metrics, uplift_seed
from causalrec_jax.train.loop import TrainingDivergedError
from causalrec_jax.xla_cpu import ENVIRONMENT, threefry_cpu


def train_run(
    config: Config, out_dir: str | Path, *, resume: bool = False, quiet: bool = False,
    frame=None,
) -> dict[str, Any]:
    """Trains and evaluates the run `config` describes and writes its folder; returns metrics.

    With `train.cv_folds = K`, trains on K folds (`data.kfold_splits`) and reports each fold
    and the mean / std over folds; otherwise uses `data.split`.
    """
    check_ordinary_keys(config)
    check_selection_metric(config.eval, config.train.early_stopping_metric,
                           "train.early_stopping_metric")
    return _in_every_process(
        out_dir, config, resume, lambda config, out, quiet: _write_run(
            config, out, resume=resume, quiet=quiet, frame=frame),
        kind="an ordinary run", quiet=quiet)


def _in_every_process(out_dir: str | Path, config: Config, resume: bool,
                      body_fn: Callable[[Config, Path, bool], dict[str, Any]],
                      *, kind: str, quiet: bool) -> dict[str, Any]:
    """`body_fn(config, folder, quiet) -> metrics` writing the run into `out_dir`
    (`runs.folder.write_run`); over several processes (`--distributed`) every process runs
    it: the first checks `out_dir` for all (every one stops with its line when it is
    occupied, or not a run to resume) and writes the folder and its checkpoints (a resumed
    run's are read by the first and handed to all, `train.loop.fit`), the others the same
    files into a temporary folder of their own, removed after."""
    if is_multiprocess():
        refused = None
        if jax.process_index() == 0:
            try:
                if resume:
                    check_resume(out_dir, config)
                else:
                    refuse_existing_run(out_dir)
                check_tracking(config)
            except CausalRecError as error:
                refused = error
        together(refused, "start the run")
        # one CPU Threefry lowering for the whole job (CAUSALREC_UNROLLED_THREEFRY, xla_cpu)
        agree(f"threefry {threefry_cpu()}", f"set {ENVIRONMENT}")
        if jax.process_index() > 0:
            with tempfile.TemporaryDirectory(prefix="causalrec-process-") as scratch:
                return body_fn(config, Path(scratch), True)
    return write_run(out_dir, config, lambda config, out: body_fn(config, out, quiet), kind=kind,
                     resume=resume)


def _write_run(config: Config, out: Path, *, resume: bool, quiet: bool, frame) -> dict[str, Any]:
    """The body of `train_run` in its folder: data, training, evaluation, the files."""
    tic = time.perf_counter()
    try:
        dataset, truth = load_dataset(config.data, config.sim, frame=frame,
                                      planted=config.planted)
    except CausalRecError as error:  # the other processes of a job stop too
        together(error, "read the data")
    data_fingerprint = fingerprint(dataset)  # evaluate refuses the data if it changed
    agree(json.dumps(data_fingerprint, sort_keys=True, default=str), "read the data")
    propensity = evaluation_propensity(config, dataset)
    progress = not quiet and sys.stderr.isatty()
    seeds = seed_list(config)
    log_path = out / "log.jsonl"
    try:
        start_log(log_path, resume=resume, checkpoint_of=lambda line: (
            out / "checkpoints" / f"fold{line['fold']}" if "fold" in line
            else out / "checkpoints"))
    except CausalRecError as error:  # a damaged log on resume: the others stop too
        together(error, "read the run's log")
    agree("log", "read the run's log")

    append = log_appender(log_path, resume=resume)

    def log_fn(record: dict[str, Any], fold: int | None = None) -> None:
        append(fit_log_lines(record, seeds, fold=fold))
        if not quiet and not progress:  # a log stream, not a terminal: a line per epoch
            prefix = "" if fold is None else f"fold {fold} "
            print(epoch_summary(record, config.train.early_stopping_metric, prefix=prefix),
                  file=sys.stderr, flush=True)

    if config.train.cv_folds:
        folds = list(kfold_splits(dataset, config.train.cv_folds, seed=config.run.seed,
                                  valid_fraction=0.1))
        fold_results = []
        for index, fold in enumerate(folds):
            trained = train_split(config, fold, checkpoint_dir=out / "checkpoints" / f"fold{index}",
                                  resume=resume, progress=progress,
                                  log_fn=functools.partial(log_fn, fold=index),
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
        # A divergence after validated epochs still writes their best model and metrics.
        trained = train_split(config, split, checkpoint_dir=out / "checkpoints", resume=resume,
                              progress=progress, log_fn=log_fn, propensity=propensity,
                              truth=truth, keep_good_epochs=True)
        per_seed, timing = trained.per_seed, dict(trained.timing)
    metrics: dict[str, Any] = {}
    for part in ("test", "test_literature", "test_full", "test_truth", "valid"):
        if part in per_seed[0]:
            metrics.update(aggregate(per_seed, part))
    metrics["per_seed"] = per_seed
    metrics["seeds"] = seeds
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
    metrics["data"]["fingerprint"] = data_fingerprint
    if trained.propensity_report is not None:
        metrics["propensity"] = {"method": config.causal.propensity,
                                 "clip": config.causal.propensity_clip,
                                 **trained.propensity_report}
    if trained.privacy is not None:
        metrics["privacy"] = trained.privacy
    metrics["timing"] = {**timing, "total_seconds": round(time.perf_counter() - tic, 3)}
    metrics["versions"] = versions()
    if truth is not None:
        metrics["data"]["simulator"] = True

    saved = {"params": trained.parts.params}
    if trained.extra:
        saved["causal"] = trained.extra
    save_model(out, config, saved, split, data_extra=fingerprint_array(data_fingerprint))
    (out / "plots").mkdir(exist_ok=True)
    metric = config.train.early_stopping_metric
    plot_learning_curve(out / "plots" / "learning_curve.png",
                        seed_curves(trained.history, metric), metric,
                        title=_plot_title(config, out, per_seed),
                        best_epochs=[entry["best_epoch"] for entry in trained.per_seed])
    if trained.diverged is not None:
        metrics["diverged"] = diverged_record(trained.diverged)
    write_metrics(out, metrics)
    if trained.diverged is not None:
        raise good_epochs_written(trained.diverged, out, per_seed)
    return metrics


def diverged_record(error: TrainingDivergedError) -> dict[str, Any]:
    """`metrics.json` "diverged" of a run whose training diverged after validated epochs: the
    epoch and the message; the rest of the file is the result of the epochs before it."""
    return {"epoch": error.epoch, "message": str(error)}


def good_epochs_written(error: TrainingDivergedError, out: Path,
                        per_seed: list[dict[str, Any]]) -> TrainingDivergedError:
    """The error a run raises once it has written the best model of its good epochs."""
    best = sorted({entry["best_epoch"] for entry in per_seed})
    return TrainingDivergedError(
        f"{error} The best model of the epochs before it (best epoch "
        f"{', '.join(map(str, best))}) and its metrics are written to {out}.",
        partial=error.partial, epoch=error.epoch)


def _plot_title(config: Config, out: Path, per_seed: list[dict[str, Any]]) -> str:
    method = "" if not config.causal.method or config.causal.method == "naive" else (
        f" {config.causal.method}")
    return (f"{out.name}: {config.model.name}{method}, {config.train.loss} loss, "
            f"{len({entry['seed'] for entry in per_seed})} seed(s)")


def sequence_run(config: Config, out: str | Path, *, quiet: bool = True,
                 resume: bool = False, item_chunk: int | None = None) -> dict[str, Any]:
    """All seeds of a sequential model; writes the run folder (see the module docstring).

    With `resume`, continues the run in `out` from each seed's newest checkpoint (its
    `config.toml` must match `config`; a finished run is refused, `runs.folder.finished_run`).
    `item_chunk` forces ranking the catalogue that many items at a time (default: only
    catalogues above `CATALOGUE_CHUNK_ITEMS`).

    Raises:
        RunError: `out` holds a run and `resume` is False, or the configs differ on resume.
        TrainingDivergedError: a NaN/Inf loss or gradient; the checkpoints are kept.
    """
    check_sequential_config(config)
    return _in_every_process(
        out, config, resume, lambda config, out, quiet: _write_sequence_run(
            config, out, quiet=quiet, resume=resume, item_chunk=item_chunk),
        kind=f"a run of {config.model.name}", quiet=quiet)


def _write_sequence_run(config: Config, out: Path, *, quiet: bool, resume: bool,
                        item_chunk: int | None) -> dict[str, Any]:
    tic = time.perf_counter()
    slate_log = attraction = None
    try:
        if config.data.format == "simlog":
            # a slate log: the clicks are the sequences, the rounds the exposure (causal.method)
            slate_log = load_slate_log(config)
            dataset = slate_log.clicks
            attraction = slate_log_attraction(slate_log)
        else:
            dataset, _ = load_dataset(config.data, config.sim, planted=config.planted)
    except CausalRecError as error:  # the other processes of a job stop too
        together(error, "read the data")
    data_fingerprint = fingerprint(dataset)  # evaluate refuses the data if it changed
    agree(json.dumps(data_fingerprint, sort_keys=True, default=str), "read the data")
    split = make_split(dataset, config.data, seed=config.run.seed)
    log_path = out / "log.jsonl"
    try:
        start_log(log_path, resume=resume,
                  checkpoint_of=lambda line: out / "checkpoints" / f"seed{line['seed']}")
    except CausalRecError as error:  # a damaged log on resume: the others stop too
        together(error, "read the run's log")
    agree("log", "read the run's log")

    progress = not quiet and sys.stderr.isatty()

    append = log_appender(log_path, resume=resume)

    def log_fn(record: dict[str, Any]) -> None:
        # each seed trains through its own `fit` (one member), its record naming the seed
        append(fit_log_lines(record, [record["seed"]]))
        if not quiet and not progress:  # a log stream, not a terminal: a line per epoch
            print(epoch_summary(record, config.train.early_stopping_metric,
                                prefix=f"seed {record['seed']} "), file=sys.stderr, flush=True)

    results = []
    for seed in seed_list(config):
        results.append(train_sequence_seed(
            config, split, seed, checkpoint_dir=out / "checkpoints" / f"seed{seed}",
            resume=resume, progress=progress, log_fn=log_fn, item_chunk=item_chunk,
            keep_good_epochs=True, slate_log=slate_log, attraction=attraction))
        if results[-1].diverged is not None:
            break  # the seeds so far are written, the last one's good epochs included
    diverged = results[-1].diverged
    seeds = [result.entry["seed"] for result in results]
    per_seed = [result.entry for result in results]
    metrics: dict[str, Any] = {}
    for part in ("test", "valid", "test_unmasked", "test_sampled", "test_truth", "test_ope"):
        if part in per_seed[0]:
            metrics.update(aggregate(per_seed, part))
    if results[0].privacy is not None:
        metrics["privacy"] = sequence_privacy(results)
    if slate_log is not None:
        rows = exposure_rows(slate_log.log, split.train, config.model.max_len,
                             held_out_rounds(split, split.train.n_users))
        metrics["propensity"] = exposure_clip_report(config, rows)
        metrics["causal"] = {"method": config.causal.method, **per_seed[0].get("hparams", {})}
    timings = [result.timing for result in results]
    metrics.update({
        "per_seed": per_seed,
        "seeds": seeds,
        "data": {"n_users": split.train.n_users, "n_items": split.train.n_items,
                 "n_train": len(split.train), "n_valid": len(split.valid),
                 "n_test": len(split.test), "n_windows": timings[0]["n_windows"],
                 "sampled_negatives": config.eval.sampled_negatives,
                 "sampled_by": config.eval.sampled_by, "fingerprint": data_fingerprint},
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
    everything = concatenate([split.train, split.valid, split.test])
    save_model(out, config, {"params": params}, split, data_extra={
        "next_history": history_matrix(user_sequences(everything), config.model.max_len),
        **fingerprint_array(data_fingerprint),
    }, seeds=seeds)
    (out / "plots").mkdir(exist_ok=True)
    metric = config.train.early_stopping_metric
    plot_learning_curve(out / "plots" / "learning_curve.png",
                        [curve for result in results
                         for curve in seed_curves(result.history, metric)], metric,
                        title=_plot_title(config, out, per_seed),
                        best_epochs=[entry["best_epoch"] for entry in per_seed])
    if diverged is not None:
        metrics["diverged"] = diverged_record(diverged)
    write_metrics(out, metrics)
    if diverged is not None:
        raise good_epochs_written(diverged, out, per_seed)
    return metrics


def uplift_run(config: Config, out: str | Path, *, quiet: bool = True,
               resume: bool = False) -> dict[str, Any]:
    """Runs every seed and writes `config.toml`, `metrics.json` and `log.jsonl` into `out`,
    whole or not at all (`runs.folder.write_run`: a non-empty `out` is refused, and so is
    `resume`: an uplift run keeps no checkpoints)."""
    check_uplift_keys(config)

    def body(config: Config, folder: Path) -> dict[str, Any]:
        per_seed = []
        for seed in seed_list(config):
            per_seed.append(uplift_seed(config, seed))
            if not quiet:
                print(f"seed {seed}: " + ", ".join(
                    f"{name} {value:.4f}" for name, value in per_seed[-1]["test"].items()))
        metrics = uplift_metrics(config, per_seed)
        append_log(folder / "log.jsonl", [
            line for result in per_seed
            for line in epoch_log_lines(result["seed"], result["losses"],
                                        result["train_seconds"])])
        write_metrics(folder, metrics)
        return metrics

    return write_run(out, config, body, resumable=False, resume=resume,
                     kind=f"an uplift run (uplift.method = {config.uplift.method!r})")


def ope_run(config: Config, out: str | Path) -> dict[str, Any]:
    """Runs `run_ope` and writes `out/config.toml`, `out/metrics.json` and `out/log.jsonl`,
    whole or not at all (`runs.folder.write_run`: a non-empty `out` is refused)."""
    # An OPE run reads the world, both policies, [ope], [run] and the seeds of [train]; any
    # other key is refused.
    refuse_unused(config, {"env": None, "policy": None, "target": None, "ope": None,
                           "run": None, "train": ("seeds",)}, "an OPE run")

    def body(config: Config, folder: Path) -> dict[str, Any]:
        metrics = run_ope(config)
        append_log(folder / "log.jsonl", [
            line for fit in metrics.pop("_reward_model") if fit["losses"] is not None
            for line in epoch_log_lines(fit["seed"], fit["losses"], fit["seconds"])])
        write_metrics(folder, metrics)
        return metrics

    return write_run(out, config, body, resumable=False, kind="an OPE run")
