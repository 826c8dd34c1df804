"""Experiment tracking: a run folder exported to TensorBoard and to MLflow.

The exporters read the folder (`config.toml`, `log.jsonl`, `metrics.json`, `plots/`), never
the training: a run of every kind (ordinary and causal, sequential, uplift, OPE, tuning's best
run), a diverged run (no `metrics.json` yet) and a run written before this module exports the
same way. `runs.folder.write_run` calls `export_run` once the run's own files are written,
as `[run]` asks:

- `run.tensorboard = true`: event files under `RUN/tensorboard/`, one subfolder per curve
  TensorBoard compares (`tensorboard --logdir runs` shows `NAME/tensorboard/seed3` beside
  `OTHER/tensorboard/seed3`): `seed<S>/` (`fold<F>/seed<S>/` in cross-validation) with that
  seed's `loss` and `valid/<metric>` per epoch (step = epoch) and its `test*/<metric>` at its
  best epoch; `mean/` with the means over the seeds (and folds) logged at each epoch, the
  `metrics.json` blocks `test*/<metric>` (means and stds over seeds, step 0) and the config
  as text. Exporting again rewrites the folder whole: every event is written once.
- `run.mlflow = true` or a tracking URI: one MLflow run per run folder, named after the folder
  (`SEARCH/best` for tuning's best run) and tagged `causalrec.folder` with its absolute path;
  the config as parameters (`section.key`, strings as they are, other values as JSON), the
  same scalars as metrics (`seed<S>/loss`, `seed<S>/valid/<metric>`, the means as `loss`,
  `valid/<metric>`, `test/<metric>`, ...), and the folder's files as artifacts
  (`config.toml`, `metrics.json`, `log.jsonl`, `resumes.json`, `plots/`, ...), but not
  `checkpoints/`, `model/`, `data.npz` or `tensorboard/` (`NOT_ARTIFACTS`: the parameters,
  optimiser states and data splits are the folder's large files, up to gigabytes, and
  `tensorboard/` repeats `log.jsonl`; the folder keeps them). Status FINISHED, or FAILED
  for a folder without `metrics.json` (a diverged run).
  `run.mlflow_experiment` names the experiment (created when missing).

The MLflow store: `run.mlflow = true` means `MLFLOW_TRACKING_URI` when set, else the file
store `mlruns/` of the current directory (`file:` + its absolute path, MLflow's historical
default); a string is a tracking URI (`sqlite:///mlflow.db`, `http://host:5000`, `file:...`)
or a folder for a file store, stored absolute in the run's `config.toml`. MLflow 3 keeps the
file store in "maintenance mode" and refuses it unless `MLFLOW_ALLOW_FILE_STORE=true`; it
needs no server and no database packages (`mlflow-skinny` has none), so the exporter allows
it for its own calls only. `mlflow ui` needs the same variable for a file store.

Metric names: TensorBoard and MLflow accept letters, digits, `_ - . /` (and a few more), not
`@`: `ndcg@10` is exported as `ndcg_at_10` (`tracker_name`). A null in `log.jsonl` (a NaN
loss or metric) is left out: the curve has no point there.

The end of a run exports a new MLflow run (an earlier export of the same folder, e.g. of the
diverged attempt before a `--resume`, stays as it was); `causalrec track --mlflow` reuses the
newest MLflow run tagged with the folder, adding what it lacks (exporting twice adds nothing),
and refuses, naming the difference, when that run holds another value for a parameter or a
(metric, step); `--replace` then deletes the tagged runs (MLflow's deletion: restorable until
`mlflow gc`) and logs a new one. A tracker that fails at the end of a run does not fail the
run: its folder is complete, and a `TrackingWarning` names the `causalrec track` command that
exports it again.

tensorboardX and mlflow are optional extras (`pip install 'causalrec_jax[tensorboard]'`,
`'causalrec_jax[mlflow]'`), imported inside the functions that use them (mlflow takes
seconds to import); `check_tracking` refuses a config that asks for a missing one before the
run trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import tomllib
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from causalrec_jax.config import Config
from causalrec_jax.errors import ConfigError, RunError, TrackingWarning

TENSORBOARD_DIR = "tensorboard"
# The MLflow tag holding the run folder's absolute path (how an export finds its MLflow run).
FOLDER_TAG = "causalrec.folder"
# What a run folder holds that MLflow does not receive as artifacts: the large files
# (parameters, optimiser states, the data's splits) and the event files (log.jsonl again).
NOT_ARTIFACTS = ("checkpoints", "model", "data.npz", TENSORBOARD_DIR)
# The group of the means over seeds (and folds): TensorBoard's `mean/` subfolder, MLflow's
# unprefixed metric names.
MEAN = "mean"
# MLflow's limits on one `log_batch` call.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

# (step, value, wall time in seconds since the epoch) of one scalar.
Point = tuple[int, float, float]


def tracker_name(name: str) -> str:
    """A metric name as TensorBoard and MLflow accept it: `ndcg@10` -> `ndcg_at_10`; any other
    character but letters, digits, `_ - . /` becomes `_`."""
    return re.sub(r"[^\w\-./]", "_", name.replace("@", "_at_"))


def _is_uri(text: str) -> bool:
    """A URI has a scheme of two or more characters (`C:\\runs` is a Windows path)."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.\-]+:", text) is not None


def tracking_uri(value: bool | str) -> str:
    """The MLflow tracking URI `run.mlflow = value` names: for `True`, `MLFLOW_TRACKING_URI`
    when set, else the file store `mlruns/` of the current directory; a string is a URI, or a
    folder (made absolute) of a file store."""
    if value is True:
        value = os.environ.get("MLFLOW_TRACKING_URI") or "mlruns"
    if not isinstance(value, str) or not value:
        raise ConfigError(f"key run.mlflow: got {value!r}, expected true or a tracking URI")
    if _is_uri(value):
        return value
    return Path(value).expanduser().resolve().as_uri()


def absolute_tracking(config: Config) -> Config:
    """`config` with a `run.mlflow` folder stored as its absolute `file:` URI (as `data.path`
    is stored absolute): the run's `config.toml` names the store wherever it is read."""
    if isinstance(config.run.mlflow, str) and not _is_uri(config.run.mlflow):
        run = dataclasses.replace(config.run, mlflow=tracking_uri(config.run.mlflow))
        return dataclasses.replace(config, run=run)
    return config


# tracker -> (the module it imports, the extra that installs it)
EXTRAS = {"tensorboard": ("tensorboardX", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


def require_tracker(tracker: Literal["tensorboard", "mlflow"], asked_by: str) -> None:
    """Raises ConfigError, naming `asked_by` (e.g. `run.tensorboard = true`) and the extra to
    install, when the tracker's package does not import."""
    import importlib

    module, extra = EXTRAS[tracker]
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{asked_by} needs the {extra} extra: pip install "
                          f"'causalrec_jax[{extra}]'") from None


def check_tracking(config: Config) -> None:
    """Refuses, before a run trains, a `[run]` tracker whose package is not installed."""
    if config.run.tensorboard:
        require_tracker("tensorboard", "run.tensorboard = true")
    if config.run.mlflow is not False:
        require_tracker("mlflow", f"run.mlflow = {json.dumps(config.run.mlflow)}")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What the exporters read from a run folder."""

    folder: Path  # absolute
    config: dict[str, Any]  # config.toml as read (sections -> keys -> values)
    config_text: str
    lines: list[dict[str, Any]]  # log.jsonl
    metrics: dict[str, Any] | None  # metrics.json; None for a run that did not finish
    started: float  # config.toml's modification time (seconds since the epoch)
    ended: float  # metrics.json's (log.jsonl's, for a run that did not finish)


def read_run(folder: str | Path) -> RunRecord:
    """Reads the run folder `folder` for the exporters.

    Raises:
        RunError: not a run folder (no `config.toml`, or neither `log.jsonl` nor
            `metrics.json`), or a damaged file.
    """
    folder = Path(folder).resolve()
    config_path, log_path, metrics_path = (folder / name for name in
                                           ("config.toml", "log.jsonl", "metrics.json"))
    if not config_path.is_file() or not (log_path.is_file() or metrics_path.is_file()):
        hint = (f"; a tuning search: export its best run, {folder / 'best'}"
                if (folder / "best" / "config.toml").is_file() else "")
        raise RunError(f"{folder}: not a run folder (it needs config.toml and log.jsonl or "
                       f"metrics.json){hint}")
    config_text = config_path.read_text()
    try:
        config = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as error:
        raise RunError(f"{config_path}: not valid TOML: {error}") from None
    lines = []
    if log_path.is_file():
        texts = [text for text in log_path.read_text().splitlines() if text.strip()]
        for number, text in enumerate(texts, 1):
            try:
                lines.append(json.loads(text))
            except ValueError:
                if number == len(texts):
                    break  # a last line cut off by a kill: not an epoch the run logged whole
                raise RunError(f"{log_path}, line {number}: not a JSON line") from None
    metrics = None
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except ValueError as error:
            raise RunError(f"{metrics_path}: not valid JSON: {error}") from None
    started = config_path.stat().st_mtime
    ended = (metrics_path if metrics is not None else
             log_path if log_path.is_file() else config_path).stat().st_mtime
    return RunRecord(folder=folder, config=config, config_text=config_text, lines=lines,
                     metrics=metrics, started=started, ended=max(ended, started))


def member_group(seed: int, fold: int | None = None) -> str:
    """The group of one trained member: `seed3`, or `fold1/seed3` in cross-validation."""
    return f"seed{seed}" if fold is None else f"fold{fold}/seed{seed}"


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _line_values(line: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """(tag, value) of one `log.jsonl` line: its loss and validation metrics, nulls left out."""
    if _is_number(line.get("loss")):
        yield "loss", float(line["loss"])
    for name, value in (line.get("valid") or {}).items():
        if _is_number(value):
            yield f"valid/{tracker_name(name)}", float(value)


def _final_values(block_holder: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """(tag, value) of every `test*` block of numbers (`test`, `test_std`, `test_full`, ...)
    of `metrics.json` or of one of its `per_seed` entries."""
    for block, values in block_holder.items():
        if block.startswith("test") and isinstance(values, dict):
            for name, value in values.items():
                if _is_number(value):
                    yield f"{block}/{tracker_name(name)}", float(value)


def run_scalars(record: RunRecord) -> dict[str, dict[str, list[Point]]]:
    """Every scalar the trackers receive: `{group: {tag: [(step, value, wall time)]}}`.

    Groups: one per trained member (`member_group`: its `loss` and `valid/<metric>` per
    epoch, its `test*/<metric>` at its best epoch) and `MEAN` (per epoch, the mean of the
    members logged at that epoch; `metrics.json`'s `test*/<metric>` blocks at step 0). Wall
    times: `config.toml`'s time plus the seconds `log.jsonl` records, cumulated per member
    (the mean seconds for `MEAN`); `metrics.json`'s time for the final values. The same folder
    gives the same scalars, so a second export writes the same events.
    """
    groups: dict[str, dict[str, list[Point]]] = {}
    elapsed: dict[str, float] = {}
    by_epoch: dict[int, list[dict[str, Any]]] = {}
    for line in record.lines:
        group = member_group(line["seed"], line.get("fold"))
        seconds = line.get("seconds")
        elapsed[group] = elapsed.get(group, 0.0) + (seconds if _is_number(seconds) else 0.0)
        tags = groups.setdefault(group, {})
        for tag, value in _line_values(line):
            tags.setdefault(tag, []).append((int(line["epoch"]), value,
                                             record.started + elapsed[group]))
        by_epoch.setdefault(int(line["epoch"]), []).append(line)
    mean: dict[str, list[Point]] = {}
    mean_elapsed = 0.0
    for epoch in sorted(by_epoch):
        lines = by_epoch[epoch]
        seconds = [line["seconds"] for line in lines if _is_number(line.get("seconds"))]
        mean_elapsed += sum(seconds) / len(seconds) if seconds else 0.0
        values: dict[str, list[float]] = {}
        for line in lines:
            for tag, value in _line_values(line):
                values.setdefault(tag, []).append(value)
        for tag, members in values.items():
            mean.setdefault(tag, []).append((epoch, sum(members) / len(members),
                                             record.started + mean_elapsed))
    groups[MEAN] = mean
    if record.metrics is not None:
        for tag, value in _final_values(record.metrics):
            mean.setdefault(tag, []).append((0, value, record.ended))
        for entry in record.metrics.get("per_seed") or []:
            if "seed" not in entry:
                continue
            tags = groups.setdefault(member_group(entry["seed"], entry.get("fold")), {})
            best = entry.get("best_epoch")
            step = max(int(best), 0) if _is_number(best) else 0
            for tag, value in _final_values(entry):
                tags.setdefault(tag, []).append((step, value, record.ended))
    return groups


def _writing_folder(final: Path) -> Path:
    """A fresh sibling folder to write `final`'s new contents into."""
    partial = final.with_name(f".{final.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    return partial


def export_tensorboard(folder: str | Path) -> Path:
    """Writes the run's TensorBoard event files into `folder/tensorboard/` (module docstring);
    an earlier export there is replaced whole, once the new one is written. Returns the
    folder of event files."""
    # tensorboardX is an optional extra (the `tensorboard` extra), imported only when used.
    from tensorboardX import SummaryWriter

    record = read_run(folder)
    final = record.folder / TENSORBOARD_DIR
    partial = _writing_folder(final)
    for group, tags in sorted(run_scalars(record).items()):
        writer = SummaryWriter(str(partial / group), max_queue=1_000_000, flush_secs=3600)
        try:
            for tag, points in tags.items():
                for step, value, walltime in points:
                    writer.add_scalar(tag, value, step, walltime=walltime)
            if group == MEAN:
                # indented: a code block in TensorBoard's Markdown text view
                text = "".join(f"    {line}\n" for line in record.config_text.splitlines())
                writer.add_text("config", text, 0, walltime=record.started)
        finally:
            writer.close()
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    return final


@contextlib.contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow 3 refuses its file store unless `MLFLOW_ALLOW_FILE_STORE=true` (maintenance
    mode); it works without a server or database packages, so it is allowed while the
    exporter runs, and the variable restored after."""
    if not uri.startswith("file:"):
        yield
        return
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["MLFLOW_ALLOW_FILE_STORE"]
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


def mlflow_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The config as MLflow parameters: `section.key` -> the value, strings as they are and
    other values (numbers, booleans, lists, tables) as JSON."""
    return {f"{section}.{key}": value if isinstance(value, str) else json.dumps(value)
            for section, values in config.items() if isinstance(values, dict)
            for key, value in values.items()}


def mlflow_metrics(record: RunRecord) -> dict[str, list[Point]]:
    """`run_scalars` as MLflow metric names: `<group>/<tag>` for a member, `<tag>` for the
    means."""
    return {tag if group == MEAN else f"{group}/{tag}": points
            for group, tags in run_scalars(record).items() for tag, points in tags.items()}


def _run_name(folder: Path) -> str:
    """The folder's name; `SEARCH/best` for the best run of a tuning search."""
    if folder.name == "best" and (folder.parent / "best.toml").is_file():
        return f"{folder.parent.name}/best"
    return folder.name


def _artifacts(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir()
                  if path.name not in NOT_ARTIFACTS and not path.name.startswith(".")
                  and not path.name.endswith(".tmp"))


@dataclasses.dataclass(frozen=True)
class MlflowExport:
    """Where an export went: the store, the experiment, the MLflow run, and whether that run
    is new (`"new"`), an earlier export completed (`"reused"`) or replaced (`"replaced"`)."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    run_id: str
    action: Literal["new", "reused", "replaced"]


def _differences(client: Any, run: Any, params: dict[str, str],
                 metrics: dict[str, list[Point]]) -> tuple[list[str], list, dict]:
    """What the MLflow run `run` holds against the folder's values: (the differing values,
    described; the params it lacks; the metric points it lacks, by name)."""
    differences, missing_params = [], []
    for key, value in params.items():
        if key not in run.data.params:
            missing_params.append(key)
        elif run.data.params[key] != value:
            differences.append(f"parameter {key} = {run.data.params[key]!r} (the folder: "
                               f"{value!r})")
    missing_points: dict[str, list[Point]] = {}
    for name, points in metrics.items():
        held: dict[int, list[float]] = {}
        if name in run.data.metrics:
            for metric in client.get_metric_history(run.info.run_id, name):
                held.setdefault(metric.step, []).append(metric.value)
        for point in points:
            step, value, _ = point
            if step not in held:
                missing_points.setdefault(name, []).append(point)
            elif value not in held[step]:
                differences.append(f"metric {name} = {held[step][-1]!r} at step {step} (the "
                                   f"folder: {value!r})")
    return differences, missing_params, missing_points


def export_mlflow(
    folder: str | Path, *, tracking_uri: str, experiment: str = "causalrec",
    earlier: Literal["reuse", "replace", "keep"] = "reuse",
) -> MlflowExport:
    """Logs the run folder `folder` as an MLflow run (module docstring).

    Args:
        folder: the run folder.
        tracking_uri: the MLflow store (`tracking_uri(run.mlflow)`).
        experiment: the experiment's name; created when missing.
        earlier: what to do with MLflow runs of the experiment tagged with this folder:
            "reuse" the newest (log what it lacks; a different value is refused), "replace"
            them (deleted, and a new run logged) or "keep" them (a new run beside them).

    Raises:
        RunError: with "reuse", the MLflow run holds another value for a parameter or a
            (metric, step) than the folder; the experiment is deleted in the store.
    """
    record = read_run(folder)
    with _file_store_allowed(tracking_uri):
        # mlflow is an optional extra (the `mlflow` extra), imported only when used: it
        # takes seconds to import.
        from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            experiment_id = client.create_experiment(experiment)
        elif found.lifecycle_stage != "active":
            raise RunError(f"MLflow experiment {experiment!r} is deleted in {tracking_uri}: "
                           "restore it or choose another run.mlflow_experiment")
        else:
            experiment_id = found.experiment_id
        path = str(record.folder)
        tagged, token = [], None
        while True:  # the runs tagged with this folder (filtered here: a path may hold quotes)
            page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                      max_results=1000, page_token=token)
            tagged += [run for run in page if run.data.tags.get(FOLDER_TAG) == path]
            token = page.token
            if not token:
                break
        tagged.sort(key=lambda run: run.info.start_time or 0, reverse=True)
        params, metrics = mlflow_params(record.config), mlflow_metrics(record)
        action: Literal["new", "reused", "replaced"] = "new"
        if tagged and earlier == "reuse":
            run = tagged[0]
            differences, missing_params, missing_points = _differences(client, run, params,
                                                                       metrics)
            if differences:
                more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
                raise RunError(
                    f"{path}: MLflow run {run.info.run_id} (experiment {experiment!r} in "
                    f"{tracking_uri}) holds {differences[0]}{more}; pass --replace to delete "
                    "it and log the folder as a new MLflow run")
            run_id, action = run.info.run_id, "reused"
            params = {key: params[key] for key in missing_params}
            metrics = missing_points
        else:
            if tagged and earlier == "replace":
                for run in tagged:
                    client.delete_run(run.info.run_id)
                action = "replaced"
            run_id = client.create_run(
                experiment_id, start_time=int(record.started * 1000), run_name=_run_name(
                    record.folder), tags={FOLDER_TAG: path}).info.run_id
        param_list = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(param_list), _PARAMS_PER_BATCH):
            client.log_batch(run_id, params=param_list[start:start + _PARAMS_PER_BATCH])
        metric_list = [Metric(name, value, int(walltime * 1000), step)
                       for name, points in metrics.items()
                       for step, value, walltime in points]
        for start in range(0, len(metric_list), _METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metric_list[start:start + _METRICS_PER_BATCH])
        client.log_batch(run_id, tags=[RunTag("causalrec.complete",
                                              json.dumps(record.metrics is not None))])
        for artifact in _artifacts(record.folder):
            if artifact.is_dir():
                client.log_artifacts(run_id, str(artifact), artifact.name)
            else:
                client.log_artifact(run_id, str(artifact))
        status = RunStatus.FINISHED if record.metrics is not None else RunStatus.FAILED
        client.set_terminated(run_id, RunStatus.to_string(status),
                              end_time=int(record.ended * 1000))
    return MlflowExport(tracking_uri=tracking_uri, experiment=experiment,
                        experiment_id=experiment_id, run_id=run_id, action=action)


def export_run(folder: str | Path, config: Config) -> None:
    """The export `config.run` asks for, at the end of a run (`runs.folder.write_run`, a
    diverged run included). Never raises for a tracker's failure: the run's folder is
    complete, so a failure is a `TrackingWarning` naming the command that exports it again."""
    run = config.run
    if run.tensorboard:
        try:
            export_tensorboard(folder)
        except Exception as error:  # any tracker's failure: the run stands
            _warn_failed(folder, "TensorBoard", "--tensorboard", error)
    if run.mlflow is not False:
        try:
            export_mlflow(folder, tracking_uri=tracking_uri(run.mlflow),
                          experiment=run.mlflow_experiment, earlier="keep")
        except Exception as error:  # any tracker's failure: the run stands
            _warn_failed(folder, "MLflow", "--mlflow", error)


def _warn_failed(folder: str | Path, tracker: str, flag: str, error: Exception) -> None:
    reason = (str(error).strip().splitlines() or [""])[0]
    warnings.warn(TrackingWarning(
        f"{folder}: the run is written, but its export to {tracker} failed "
        f"({type(error).__name__}: {reason}); export it again with: causalrec track --run "
        f"{folder} {flag}"), stacklevel=2)


def track_run(folder: str | Path, *, tensorboard: bool = False,
              mlflow: bool | str | None = None, experiment: str | None = None,
              replace: bool = False) -> list[str]:
    """`causalrec track`: exports an existing run folder; returns one line per tracker.

    Args:
        folder: the run folder.
        tensorboard: write `folder/tensorboard/` (rewritten whole).
        mlflow: export to MLflow: `True` for the run's own `run.mlflow` store (or the
            default, `tracking_uri(True)`, when the run names none), a string for that URI
            or file-store folder; None for no MLflow export.
        experiment: the MLflow experiment (default: the run's `run.mlflow_experiment`).
        replace: delete the MLflow runs of this folder and log a new one (else the newest is
            reused).

    With neither `tensorboard` nor `mlflow`, exports to what the run's `[run]` keys asked.

    Raises:
        RunError: not a run folder, nothing to export, or an MLflow run of the folder that
            holds other values (without `replace`).
        ConfigError: the tracker's extra is not installed.
    """
    record = read_run(folder)
    own = record.config.get("run", {})
    if not tensorboard and mlflow is None:
        tensorboard = bool(own.get("tensorboard", False))
        mlflow = own.get("mlflow", False) or None
        if not tensorboard and mlflow is None:
            raise RunError(f"{folder}: nothing to export: pass --tensorboard and/or --mlflow "
                           "(the run's config sets neither run.tensorboard nor run.mlflow)")
    if tensorboard:
        require_tracker("tensorboard", "--tensorboard")
    if mlflow is not None:
        require_tracker("mlflow", "--mlflow")
    lines = []
    if tensorboard:
        written = export_tensorboard(record.folder)
        lines.append(f"tensorboard: {written} (rewritten; view with: tensorboard --logdir "
                     f"{shlex.quote(str(written))})")
    if mlflow is not None:
        if mlflow is True and isinstance(own.get("mlflow"), str):
            mlflow = own["mlflow"]
        uri = tracking_uri(mlflow)
        name = experiment or own.get("mlflow_experiment") or "causalrec"
        done = export_mlflow(record.folder, tracking_uri=uri, experiment=name,
                             earlier="replace" if replace else "reuse")
        lines.append(f"mlflow: run {done.run_id} ({done.action}) in experiment {name!r} "
                     f"at {uri}")
    return lines
