"""What the sharded-run workers (`sharded_runs.py`, `sharded_sequence_runs.py`,
`interrupted_worker.py`) share: a run stopped as Ctrl-C stops it, after a given epoch's log
line."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType


def stopping(fit: Callable[..., object], epoch: int) -> Callable[..., object]:
    """`fit` (`train.loop.fit`) raising `KeyboardInterrupt` right after epoch `epoch`'s log
    line (before that epoch's checkpoint)."""

    def stopping_fit(**kwargs):
        log = kwargs["log_fn"]

        def stop(record):
            log(record)
            if record["epoch"] == epoch:
                raise KeyboardInterrupt

        return fit(**{**kwargs, "log_fn": stop})

    return stopping_fit


def stopped_after(task: ModuleType, epoch: int, train: Callable[[], object]) -> bool:
    """Runs `train()` with `task.fit` (the task module's `train.loop.fit`) stopping after
    epoch `epoch` (`stopping`); whether it stopped there."""
    original_fit = task.fit
    task.fit = stopping(original_fit, epoch)
    try:
        train()
    except KeyboardInterrupt:
        return True
    finally:
        task.fit = original_fit
    return False
