"""The run folder's writing: atomic files, refusal to overwrite, resume checks, versions.

Every run kind (ordinary and causal, sequential, uplift, OPE; tuning's best run is an
ordinary one) writes through these functions, so every folder has the same files written the
same way:

- `write_run` is the one wrapper of a run: it checks `--out` (a non-empty folder is refused
  unless the run resumes its own), stores an absolute `data.path`, checks a resumed run's
  config against its `config.toml`, writes `config.toml` and hands the folder to the kind's
  body. Resumable kinds (checkpoints) write in place and remove a fresh folder when refused
  before training; the others write into a hidden staging folder renamed to `--out` only when
  complete, so a failure leaves nothing half-written. Once the folder is written (or kept by
  a diverged run), it is exported to the trackers `[run]` asks for (`runs.track.export_run`:
  TensorBoard, MLflow), whose packages are checked before the body runs.
- `log.jsonl` has one line per (epoch, seed) with the same keys for every kind (`LOG_KEYS`:
  `seed`, `epoch`, `loss`, `seconds`; `valid` where the kind validates every epoch; `fold` in
  cross-validation): `fit_log_lines` splits a `train.loop.fit` record, `epoch_log_lines`
  writes a seed's losses of a compiled full-batch fit; `start_log` keeps, on resume, the lines
  each checkpoint covers.
- `write_metrics` writes `metrics.json` atomically (NaN as null, strict JSON); `save_model`
  writes `model/` and `data.npz`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np

import causalrec_jax.sim  # noqa: F401  registers the data formats "simulator" and "simlog"
from causalrec_jax.config import (
    Config,
    config_to_dict,
    dump_config,
    load_config,
)
from causalrec_jax.data.dataset import Split
from causalrec_jax.errors import CausalRecError, RunError
from causalrec_jax.runs.track import absolute_tracking, check_tracking, export_run
from causalrec_jax.tasks.ordinary import model_inputs, seed_list
from causalrec_jax.train import checkpoint as checkpoints
from causalrec_jax.train.loop import TrainingDivergedError
from causalrec_jax.xla_cpu import threefry_cpu

# The keys of every `log.jsonl` line, whatever the run kind; `valid` (that seed's validation
# metrics) is added where the kind validates every epoch, `fold` in cross-validation runs.
LOG_KEYS = ("seed", "epoch", "loss", "seconds")


def versions() -> dict[str, str]:
    names = ("causalrec_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if (lowering := threefry_cpu()) is not None:  # CAUSALREC_UNROLLED_THREEFRY (xla_cpu)
        out["threefry_cpu"] = lowering
    return out


def absolute_data_path(config: Config) -> Config:
    if not config.data.path:
        return config
    path = str(Path(config.data.path).expanduser().resolve())
    return dataclasses.replace(config, data=dataclasses.replace(config.data, path=path))


def seed_curves(history: list[dict[str, Any]], metric: str) -> list[dict[str, list]]:
    """Each seed's curves from `train.loop.fit`'s epoch records: `[{"epoch": [...], "loss":
    [...], "valid": [...]}]` in member order (a member stops appearing once halved away)."""
    curves: dict[int, dict[str, list]] = {}
    for record in history:
        losses = record.get("loss_per_seed", [record["loss"]])
        members = record.get("alive", range(len(losses)))
        valid = record.get("valid_per_seed")
        for row, member in enumerate(members):
            curve = curves.setdefault(int(member), {"epoch": [], "loss": [], "valid": []})
            curve["epoch"].append(record["epoch"])
            curve["loss"].append(losses[row])
            value = None if valid is None else valid[row].get(metric)
            curve["valid"].append(math.nan if value is None else value)
    return [curves[member] for member in sorted(curves)]


def plot_learning_curve(path: Path, curves: list[dict[str, list]], metric: str, *,
                        title: str = "", best_epochs: Sequence[int] = ()) -> None:
    """The learning curves of a run's seeds: training loss (left axis) and validation
    `metric` (right axis), one thin line per seed, the mean bold, the spread across seeds
    shaded, each seed's best epoch marked on its validation curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, left = plt.subplots(figsize=(7, 4))
    epochs = sorted({e for curve in curves for e in curve["epoch"]})

    def spread(key):
        table = np.full((len(curves), len(epochs)), np.nan)
        for row, curve in enumerate(curves):
            for epoch, value in zip(curve["epoch"], curve[key], strict=True):
                table[row, epochs.index(epoch)] = value
        return table

    def draw(axis, key, color, label):
        table = spread(key)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an epoch no seed reached
            mean, low, high = (np.nanmean(table, 0), np.nanmin(table, 0),
                               np.nanmax(table, 0))
        if len(curves) > 1:
            axis.fill_between(epochs, low, high, color=color, alpha=0.2,
                              label=f"{label}: min-max over {len(curves)} seeds")
            for row in table:
                axis.plot(epochs, row, color=color, linewidth=0.6, alpha=0.5)
        axis.plot(epochs, mean, color=color, linewidth=2,
                  label=f"{label}" + (" (mean over seeds)" if len(curves) > 1 else ""))
        return table

    draw(left, "loss", "tab:blue", "training loss")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss", color="tab:blue")
    handles, labels = left.get_legend_handles_labels()
    if any(np.isfinite(value) for curve in curves for value in curve["valid"]):
        right = left.twinx()
        table = draw(right, "valid", "tab:orange", f"valid {metric}")
        for row, best in enumerate(best_epochs[:len(curves)]):
            if best in epochs:
                right.plot([best], [table[row, epochs.index(best)]], marker="*",
                           markersize=12, color="tab:red", linestyle="none",
                           label="best epoch" if row == 0 else None)
        right.set_ylabel(f"validation {metric}", color="tab:orange")
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    left.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2,
                fontsize=8, frameon=False)
    left.set_title(title or "learning curves", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def json_safe(value: Any) -> Any:
    """NaN / Inf -> None (JSON null) and numpy scalars -> Python numbers, recursively."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# Keys a resumed run may change: they do not affect what is computed.
_RESUME_FREE_KEYS = {("run", "quiet"), ("run", "name"), ("run", "out_dir"),
                     ("run", "tensorboard"), ("run", "mlflow"), ("run", "mlflow_experiment")}
# Keys a resumed run may change that do change what is computed from then on, but no shape: the
# optimiser's numbers (e.g. a lower learning rate after a divergence), and the device mesh (the
# same model up to the order of float sums: a sharded run's checkpoints store every table at
# its real size, `parallel.checkpoint_view`). Each change is recorded in the run
# folder's `resumes.json` and `metrics.json` ("resumes").
RESUME_CHANGEABLE_KEYS = {("train", "learning_rate"), ("train", "weight_decay"),
                          ("parallel", "mesh")}


def check_resumable(stored: Config, new: Config, out: Path) -> dict[str, list]:
    """Refuses to resume a run with a config that would compute something else; returns the
    changes of `RESUME_CHANGEABLE_KEYS` as `{"section.key": [before, after]}`."""
    old_values, new_values = config_to_dict(stored), config_to_dict(new)
    changes: dict[str, list] = {}
    for section, values in new_values.items():
        for key in sorted(set(values) | set(old_values.get(section, {}))):
            if (section, key) in _RESUME_FREE_KEYS:
                continue
            before, after = old_values.get(section, {}).get(key), values.get(key)
            if before != after and (section, key) in RESUME_CHANGEABLE_KEYS:
                changes[f"{section}.{key}"] = [before, after]
            elif before != after:
                raise RunError(
                    f"{out}: cannot resume with {section}.{key} = {after!r}: the run was "
                    f"started with {before!r} (resume with the same config and --set values)"
                )
    return changes


def finished_run(out: Path) -> bool:
    """Whether the run in `out` finished: its `metrics.json` is written, as a JSON object
    without a `"diverged"` record (a diverged run keeps its checkpoints for a resume at a
    lower learning rate; a stopped one has no `metrics.json`)."""
    path = out / "metrics.json"
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False  # a damaged record: the resume's own checks say what is wrong
    return isinstance(record, dict) and "diverged" not in record


def check_resume(out: str | Path, config: Config) -> dict[str, list]:
    """What `write_run` checks before it resumes the run in `out` with `config` (a run
    folder, not finished, a config that computes the same run), changing nothing; returns
    `check_resumable`'s changes. The first process of a job checks it for every process."""
    out = Path(out)
    refuse_unresumable(out)
    return check_resumable(load_config(out / "config.toml"),
                           absolute_tracking(absolute_data_path(config)), out)


def refuse_unresumable(out: Path) -> None:
    """Raises RunError when `out` holds no run to resume: no `config.toml`, or a run that
    finished (`refuse_finished_run`)."""
    if not (out / "config.toml").is_file():
        raise RunError(f"--resume: {out} is not a run folder (no config.toml); train a new "
                       "run there without --resume")
    refuse_finished_run(out)


def refuse_finished_run(out: Path) -> None:
    """Raises RunError when the run in `out` finished (`finished_run`): resuming it would
    train nothing and rewrite its record."""
    if finished_run(out):
        raise RunError(f"--resume: the run in {out} finished (its metrics.json is written); "
                       "there is nothing to resume, and it is left as it is: train a new run "
                       "with another --out")


def refuse_existing_run(out: str | Path, resumable: bool = True) -> None:
    """Raises RunError when `out` already holds something: a new run never overwrites one."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} is a file, not a folder; pass another --out")
    if out.exists() and any(out.iterdir()):
        if not (out / "config.toml").is_file():  # not a run: nothing to resume
            raise RunError(f"{out} already holds files but no run; pass another --out (a new "
                           "run goes into a new or empty folder)")
        hint = "pass --resume to continue it or" if resumable else "remove it or pass"
        raise RunError(f"{out} already holds a run; {hint} another --out")


def fresh_out(out: str | Path | None, stem: str, root: str | Path = "runs") -> Path:
    """The output folder of a script: `out`, refused (RunError) when it holds anything; or,
    when `out` is None, a new folder `root/stem-YYYYmmdd-HHMMSS` (a suffix `-2`, `-3`, ...
    when that exists), so running a script twice never replaces an earlier result."""
    if out is not None:
        refuse_existing_run(out, resumable=False)
        return Path(out)
    base = Path(root) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, index = base, 1
    while candidate.exists():
        index += 1
        candidate = base.with_name(f"{base.name}-{index}")
    return candidate


def write_run(
    out: str | Path, config: Config, body: Callable[[Config, Path], dict[str, Any]], *,
    kind: str, resume: bool = False, resumable: bool = True,
) -> dict[str, Any]:
    """Runs `body(config, folder) -> metrics` into the run folder `out`: the one wrapper of
    every run kind (see the module docstring); returns the metrics.

    Args:
        out: the run folder (`--out`).
        config: the run's config, its keys already checked by the kind.
        body: computes the run and writes its files into `folder`; `config.toml` (with an
            absolute `data.path`, the config `body` receives) is already there.
        kind: what the run is, for messages (e.g. "an uplift run").
        resume: continue the run in `out` (resumable kinds only).
        resumable: the kind keeps checkpoints and writes in place; otherwise `body` writes
            into a staging folder beside `out` that replaces it only once complete.

    Raises:
        RunError: `out` holds something and the run does not resume its own, `--resume` for
            a kind that keeps no checkpoints or of a run that finished (`finished_run`), or a
            resumed config that differs from the stored one.
        ConfigError: `run.tensorboard` / `run.mlflow` without the tracker's package.

    The trackers `[run]` asks for receive the folder once it is written, and a diverged run's
    kept folder (`runs.track.export_run`; a tracker's failure is a `TrackingWarning`, never
    the run's failure).
    """
    out = Path(out)
    if resume and not resumable:
        raise RunError(f"--resume: {kind} keeps no checkpoints to continue; run it again "
                       "with a new --out")
    if not resume:
        refuse_existing_run(out, resumable=resumable)
    check_tracking(config)  # a missing tracker's extra, before anything is trained
    config = absolute_tracking(absolute_data_path(config))
    resumes_before = config_before = None
    if resume:
        changes = check_resume(out, config)
        config_before = (out / "config.toml").read_text()
        if changes:
            path = out / RESUMES
            resumes_before = path.read_text() if path.exists() else ""
            record_resume(out, changes)
    if not resumable:
        metrics = _write_staged(out, config, body)
        export_run(out, config)
        return metrics
    fresh = not out.exists() or not any(out.iterdir())
    out.mkdir(parents=True, exist_ok=True)
    try:
        dump_config(config, out / "config.toml")
        metrics = body(config, out)
    except CausalRecError as error:
        # A run refused before it trained (bad data, a config the data cannot serve) leaves
        # nothing behind; a refused resume leaves the run's config and resumes as they were;
        # a diverged run keeps its checkpoints for --resume (and its model and metrics when
        # it had good epochs), and goes to the trackers.
        if isinstance(error, TrainingDivergedError):
            export_run(out, config)
        else:
            if fresh:
                shutil.rmtree(out, ignore_errors=True)
            if config_before is not None:
                _replace_text(out / "config.toml", config_before)
            if resumes_before is not None:
                _replace_text(out / RESUMES, resumes_before)
        raise
    export_run(out, config)
    return metrics


def _write_staged(out: Path, config: Config, body: Callable[[Config, Path], dict[str, Any]]
                  ) -> dict[str, Any]:
    """`body` into a fresh hidden folder beside `out` (never a name the user may hold),
    renamed to `out` once complete; any failure, an interruption included, removes it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # a fresh unique name (mkdir refuses an existing one), made with the user's umask
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex}.partial"
    staging.mkdir()
    try:
        dump_config(config, staging / "config.toml")
        metrics = body(config, staging)
        if out.exists():
            out.rmdir()  # empty: `refuse_existing_run` refused anything else
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return metrics


RESUMES = "resumes.json"


def record_resume(out: Path, changes: dict[str, list]) -> None:
    """Appends a resume that changed `RESUME_CHANGEABLE_KEYS` to `out/resumes.json`: the
    changes and the newest checkpoint it continues from."""
    path = out / RESUMES
    resumes = json.loads(path.read_text()) if path.exists() else []
    root = out / "checkpoints"
    folders = [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
    epochs = [e for e in (checkpoints.latest_epoch(f) for f in folders) if e is not None]
    resumes.append({"from_checkpoint_epoch": max(epochs) if epochs else None,
                    "changes": changes})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(resumes, indent=2) + "\n")
    tmp.replace(path)


def _replace_text(path: Path, text: str) -> None:
    """`path` holding `text` again (through a renamed temporary file); removed when `text`
    is empty (the file did not exist)."""
    if not text:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_metrics(folder: Path, metrics: dict[str, Any]) -> None:
    """Writes `folder/metrics.json` whole (a temporary file, then renamed): strict JSON, NaN
    and Inf as null (`json_safe`); adds `versions` when the metrics have none."""
    metrics.setdefault("versions", versions())
    if (folder / RESUMES).exists():
        metrics["resumes"] = json.loads((folder / RESUMES).read_text())
    tmp = folder / "metrics.json.tmp"
    tmp.write_text(json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
    tmp.replace(folder / "metrics.json")


def save_model(folder: Path, config: Config, arrays: dict[str, Any], split: Split,
               data_extra: dict[str, np.ndarray] | None = None,
               seeds: Sequence[int] | None = None) -> None:
    """Writes `folder/model/` (`arrays`, each leaf stacked over the run's seeds, with the
    seeds — `seeds`, default the config's — and the model's name) and `folder/data.npz`
    (`save_data`, plus `data_extra`).

    Both replace what a resumed run had only once written whole: the model is written into a
    hidden folder beside it and swapped in, `data.npz` into a temporary file renamed over it.
    """
    if jax.process_count() > 1:
        if jax.process_index() > 0:
            return  # a job of several processes: the first writes the run folder
        arrays = jax.device_get(arrays)  # orbax refuses one host's device arrays in a job
    model_dir = folder / "model"
    staging = folder / f".model.{uuid.uuid4().hex}.partial"
    try:
        checkpoints.save_checkpoint(staging, 0, arrays,
                                    {"seeds": [int(seed) for seed in (seeds or seed_list(config))],
                                     "model": config.model.name})
        if model_dir.exists():
            old = folder / f".model.{uuid.uuid4().hex}.old"
            model_dir.rename(old)
            staging.rename(model_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    save_data(folder / "data.npz", split, extra=data_extra)


def save_data(path: Path, split: Split, extra: dict[str, np.ndarray] | None = None) -> None:
    """Writes `data.npz` (through a temporary file renamed over it): id maps, training,
    validation and test pairs, item counts, side features and any `extra` arrays a kind of run
    needs besides (sequential runs: histories)."""
    train = split.train
    arrays = {
        "user_ids": train.user_ids.astype(str), "item_ids": train.item_ids.astype(str),
        "train_user": train.user, "train_item": train.item,
        "item_counts": np.bincount(train.item, minlength=train.n_items),
        "global_bias": np.asarray(model_inputs(train, train)["global_bias"]),
    }
    if train.user_features is not None:
        arrays["user_features"] = train.user_features
    if train.item_features is not None:
        arrays["item_features"] = train.item_features
    # Every split's pairs: serving excludes all a user is known to have (runs.load.recommend).
    for part in ("valid", "test"):
        pairs = getattr(split, part)
        if pairs is not None:
            arrays[f"{part}_user"], arrays[f"{part}_item"] = pairs.user, pairs.item
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with tmp.open("wb") as handle:  # a file object: numpy adds no ".npz" to its name
            np.savez_compressed(handle, **arrays, **(extra or {}))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def log_line(seed: int, epoch: int, loss: float, seconds: float, *,
             valid: dict[str, Any] | None = None, fold: int | None = None) -> dict[str, Any]:
    """One `log.jsonl` line: `LOG_KEYS`, plus `valid` and `fold` when given."""
    line: dict[str, Any] = {"seed": int(seed), "epoch": int(epoch), "loss": float(loss),
                            "seconds": round(float(seconds), 6)}
    if valid is not None:
        line["valid"] = valid
    if fold is not None:
        line["fold"] = int(fold)
    return line


def fit_log_lines(record: dict[str, Any], seeds: Sequence[int], *,
                  fold: int | None = None) -> list[dict[str, Any]]:
    """The lines of one `train.loop.fit` epoch record: one per seed trained that epoch.

    Args:
        record: `fit`'s record (`epoch`, `loss_per_seed`, `seconds`; `valid_per_seed` with
            validation; `alive` when only some members still train).
        seeds: the seed value of each member of the population (`metrics.json` "seeds").
        fold: the cross-validation fold, if any.

    `seconds` is the epoch's time, the same on every seed's line: the seeds of a population
    train together in one vmapped program.
    """
    losses = record["loss_per_seed"]
    members = record.get("alive", range(len(losses)))
    valid = record.get("valid_per_seed")
    return [log_line(seeds[member], record["epoch"], loss, record["seconds"],
                     valid=None if valid is None else valid[row], fold=fold)
            for row, (member, loss) in enumerate(zip(members, losses, strict=True))]


def epoch_log_lines(seed: int, losses: Iterable[float], seconds: float) -> list[dict[str, Any]]:
    """The lines of one seed's full-batch fit (uplift, the OPE reward model): one per epoch,
    each with `seconds` the fit's time divided by its epochs (they run as one compiled scan)."""
    losses = [float(loss) for loss in losses]
    per_epoch = seconds / max(len(losses), 1)
    return [log_line(seed, epoch, loss, per_epoch) for epoch, loss in enumerate(losses)]


def epoch_summary(record: dict[str, Any], metric: str, *, prefix: str = "") -> str:
    """One line for a log stream of `fit`'s epoch record (means over the seeds training):
    `[prefix]epoch 3  loss 0.4123  valid ndcg@10 0.1180  0.21 s`. What a run prints per epoch
    when stderr is not a terminal (no progress bar there)."""
    line = f"{prefix}epoch {record['epoch']}  loss {record['loss']:.4f}"
    value = record.get("valid", {}).get(metric)
    if value is not None:
        line += f"  valid {metric} {value:.4f}"
    return line + f"  {record['seconds']:.2f} s"


def append_log(path: Path, lines: Iterable[dict[str, Any]]) -> None:
    """Appends `lines` to `log.jsonl` (NaN as null: valid JSON)."""
    with path.open("a") as handle:
        for line in lines:
            handle.write(json.dumps(json_safe(line)) + "\n")


def trim_log(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    """Removes from `log.jsonl` the lines of the trainings (seed and fold) of `lines` from
    their first epoch in `lines` on: called before a resumed training's first new lines, so an
    epoch trained again is logged once even when the run resumed from an older checkpoint than
    `start_log` trimmed to (a checkpoint whose arrays, not its JSON, were unreadable)."""
    if not path.exists() or not lines:
        return
    first: dict[tuple, int] = {}
    for line in lines:
        key = (line["seed"], line.get("fold"))
        first[key] = min(first.get(key, line["epoch"]), line["epoch"])
    texts = [text for text in path.read_text().splitlines() if text.strip()]
    kept = []
    for text in texts:
        line = json.loads(text)
        key = (line["seed"], line.get("fold"))
        if key not in first or line["epoch"] < first[key]:
            kept.append(text)
    if len(kept) < len(texts):
        _replace_text(path, "".join(text + "\n" for text in kept))


def log_appender(path: Path, *, resume: bool) -> Callable[[list[dict[str, Any]]], None]:
    """`append(lines)` for `log.jsonl`: `append_log`, and on a resumed run, before the first
    lines of each training (seed and fold), `trim_log` of its later epochs."""
    started: set[tuple] = set()

    def append(lines: list[dict[str, Any]]) -> None:
        if resume:
            first = [line for line in lines if (line["seed"], line.get("fold")) not in started]
            if first:  # the first epoch these trainings log since the resume
                trim_log(path, first)
                started.update((line["seed"], line.get("fold")) for line in first)
        append_log(path, lines)

    return append


def start_log(path: Path, *, resume: bool, checkpoint_of: Callable[[dict[str, Any]], Path]
              ) -> None:
    """Starts `log.jsonl`: empty for a new run; on resume, only the lines whose epoch is at
    most the newest checkpoint of the line's own training (`checkpoint_of(line)`: the run's,
    the seed's or the fold's checkpoint folder). Later epochs are trained, and logged, again,
    so a resumed run's log equals an uninterrupted one's (but for `seconds`)."""
    kept = []
    if resume and path.exists():
        newest: dict[Path, int | None] = {}
        texts = [text for text in path.read_text().splitlines() if text.strip()]
        for number, text in enumerate(texts, 1):
            try:
                line = json.loads(text)
            except ValueError:
                if number == len(texts):
                    break  # a line cut off by the kill that stopped the run: trained again
                raise RunError(f"{path}, line {number}: not a JSON line; the log is damaged "
                               "(remove the line to resume)") from None
            epoch = line.get("epoch") if isinstance(line, dict) else None
            if not isinstance(epoch, int) or isinstance(epoch, bool):
                raise RunError(f"{path}, line {number}: expected an object with an integer "
                               "'epoch'; the log is damaged (remove the line to resume)")
            folder = checkpoint_of(line)
            if folder not in newest:
                # an unreadable newest checkpoint is set aside: the run resumes from the one
                # before, and the log is trimmed to it (`trim_log` when only its arrays are
                # unreadable, which `train.loop.fit` finds)
                newest[folder] = checkpoints.set_aside_unreadable(folder)
            if newest[folder] is not None and epoch <= newest[folder]:
                kept.append(text)
    path.write_text("".join(text + "\n" for text in kept))
