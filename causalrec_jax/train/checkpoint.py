"""Checkpoints with orbax-checkpoint: arrays through `StandardSave`, bookkeeping as JSON.

A checkpoint holds one pytree of arrays (train states, best-so-far parameters, early-stopping
counters, the run key) and one JSON object (epoch, history, anything else the loop needs to
carry on exactly where it stopped). Checkpoints are numbered by epoch; orbax writes each to a
temporary folder and renames it when complete, so a run killed mid-save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from causalrec_jax.errors import CheckpointWarning


def _manager(directory: str | Path, max_to_keep: int | None = 2) -> ocp.CheckpointManager:
    # In a job of several processes (`jax.distributed`) a process reads and writes its own
    # files alone (host arrays; only the first writes a run folder, `runs.folder.save_model`):
    # orbax would otherwise wait at barriers for processes that write nothing there.
    alone = (ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()},
        barrier_sync_key_prefix=f"process{jax.process_index()}")
        if jax.process_count() > 1 else ocp.options.MultiprocessingOptions())
    if jax.process_count() > 1:  # orbax creates the root itself only for all processes
        Path(directory).resolve().mkdir(parents=True, exist_ok=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           create=jax.process_count() == 1,
                                           multiprocessing_options=alone)
    return ocp.CheckpointManager(Path(directory).resolve(), options=options)


def save_checkpoint(
    directory: str | Path, epoch: int, arrays: Any, meta: dict[str, Any]
) -> None:
    """Writes checkpoint `epoch` (arrays pytree + JSON meta) and waits until it is complete."""
    manager = _manager(directory)
    try:
        manager.save(
            epoch,
            args=ocp.args.Composite(
                arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        manager.wait_until_finished()
    finally:
        manager.close()


def latest_epoch(directory: str | Path) -> int | None:
    """The newest complete checkpoint's epoch, or None when there is none."""
    if not Path(directory).exists():
        return None
    manager = _manager(directory)
    try:
        return manager.latest_step()
    finally:
        manager.close()


def restore_checkpoint(
    directory: str | Path, like: Any, epoch: int | None = None, *, meta_only: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Reads checkpoint `epoch` (default: the newest) into arrays shaped like `like` (placed
    as its leaves' shardings; a NumPy leaf is read into host memory as NumPy, `host_like`).

    With `meta_only`, reads only the JSON part (e.g. to learn the arrays' shapes first).

    Returns:
        `(arrays, meta)` (`arrays` is None with `meta_only`).
    """
    manager = _manager(directory)
    try:
        epoch = manager.latest_step() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        if meta_only:
            restored = manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            return None, dict(restored["meta"])
        # NumPy leaves of `like` are read into host memory (no device holds them)
        abstract = jax.tree.map(
            lambda leaf: leaf if isinstance(leaf, np.ndarray)
            else ocp.utils.to_shape_dtype_struct(leaf), like)
        restored = manager.restore(
            epoch,
            args=ocp.args.Composite(
                arrays=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["arrays"], dict(restored["meta"])
    finally:
        manager.close()


def set_aside_unreadable(directory: str | Path, like: Any = None) -> int | None:
    """The newest checkpoint in `directory` that reads back (its JSON part, and its arrays
    shaped like `like` when given); newer ones that do not are renamed `corrupt-EPOCH` (kept
    for a post-mortem, no longer seen as checkpoints), each with a `CheckpointWarning`.
    Returns that epoch, or None when no checkpoint reads."""
    if not Path(directory).exists():
        return None
    epochs = steps(directory)
    for index, epoch in enumerate(epochs):
        try:
            restore_checkpoint(directory, like, epoch, meta_only=like is None)
            return epoch
        except Exception as error:  # orbax, JSON and tensorstore failures alike
            set_aside(directory, epoch, error, epochs[index + 1:])
    return None


def steps(directory: str | Path) -> list[int]:
    """The epochs of the checkpoints in `directory`, newest first."""
    manager = _manager(directory)
    try:
        return sorted(manager.all_steps(), reverse=True)
    finally:
        manager.close()


def set_aside(directory: str | Path, epoch: int, error: Exception, older: list[int]) -> None:
    """Renames the unreadable checkpoint `epoch` of `directory` to `corrupt-EPOCH` (a unique
    name when that exists), with a `CheckpointWarning` naming `error` and what a resume then
    continues from (the newest of the `older` epochs)."""
    import warnings

    folder = Path(directory) / str(epoch)
    aside = folder.with_name(f"corrupt-{epoch}")
    if aside.exists():  # set aside before, at an earlier resume
        aside = folder.with_name(f"corrupt-{epoch}-{uuid.uuid4().hex[:8]}")
    folder.rename(aside)
    then = (f"resuming from the checkpoint of epoch {max(older)}" if older
            else "no older checkpoint: training starts again")
    warnings.warn(CheckpointWarning(
        f"{folder}: the checkpoint of epoch {epoch} is unreadable "
        f"({type(error).__name__}); set aside as {aside.name}, {then}"), stacklevel=3)


def host_like(tree: Any) -> Any:
    """`tree`'s shapes and dtypes as NumPy templates that hold no memory (a zero broadcast to
    each shape): what `restore_checkpoint` reads into host memory as new NumPy arrays, so
    that no device holds a whole table a mesh shards (nor one too large for any device)."""
    return jax.tree.map(
        lambda leaf: np.broadcast_to(np.zeros((), leaf.dtype), leaf.shape), tree)
