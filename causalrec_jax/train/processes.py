"""What the processes of a job (`jax.distributed`) agree on, below the layers that train:
`agree` (every process stops together, with one line, when one of them cannot go on), used
by the run's start-up (`runs.train`), the streamed epochs (`parallel.streamed`) and the
checkpoints of `train.loop.fit`."""

from __future__ import annotations

import hashlib

import jax
import numpy as np

from causalrec_jax.errors import RunError


def agree(token: str | None, what: str, then: str = "nothing was trained") -> None:
    """Every process's `token` compared (a collective): None where this process failed to
    `what`. Raises the same one-line `RunError` on every process when one failed or their
    tokens differ (a host with another copy of the data), so that no process goes on into a
    program the others never reach; nothing in a single process."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    mine = np.zeros(33, np.uint8)
    if token is not None:
        mine[0] = 1
        mine[1:] = np.frombuffer(hashlib.sha256(token.encode()).digest(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine))
    failed = [int(index) for index in np.flatnonzero(every[:, 0] == 0)]
    if failed:
        raise RunError(f"--distributed: process {', '.join(map(str, failed))} of "
                       f"{len(every)} could not {what} (see its message); {then}")
    differ = [int(index) for index in np.flatnonzero((every[:, 1:] != every[0, 1:]).any(1))]
    if differ:
        raise RunError(f"--distributed: process {', '.join(map(str, differ))} did not {what} "
                       "as process 0 did (another copy of the data or config?); every "
                       "process must build the same run")
