"""What the sharded-run workers (`sharded_runs.py`, `sharded_sequence_runs.py`) share: a run
stopped as Ctrl-C stops it, after a given epoch's log line."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType


def stopped_after(task: ModuleType, epoch: int, train: Callable[[], object]) -> bool:
    """Runs `train()` with `task.fit` (the task module's `train.loop.fit`) raising
    `KeyboardInterrupt` right after epoch `epoch` is logged; whether it stopped there."""
    original_fit = task.fit

    def stopping_fit(**kwargs):
        log = kwargs["log_fn"]

        def stop(record):
            log(record)
            if record["epoch"] == epoch:
                raise KeyboardInterrupt

        return original_fit(**{**kwargs, "log_fn": stop})

    task.fit = stopping_fit
    try:
        train()
    except KeyboardInterrupt:
        return True
    finally:
        task.fit = original_fit
    return False
