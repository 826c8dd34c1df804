"""What the processes of a job (`jax.distributed`) agree on and hand each other, below the
layers that train: `agree` (every process stops together, with one line, when one of them
cannot go on) and `together` (the same after one process tried something alone, which
re-raises its own error there), used by the command line (`cli`), the run's start-up
(`runs.train`), the streamed epochs (`parallel.streamed`) and the checkpoints of
`train.loop.fit`; `broadcast_text` and `broadcast_values` (what the first process read, on
every process: the run's config on `--resume`, its checkpoints)."""

from __future__ import annotations

import hashlib
from typing import Any

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


def together(error: BaseException | None, what: str, then: str = "nothing was trained",
             token: str | None = None) -> None:
    """After this process tried to `what` (`error` where it failed, None where it did):
    every process stops together (`agree`, comparing `token`, by default `what`), this one
    with its own `error`, the others with one line naming it, so that none waits for it
    forever. In one process: raises `error` when there is one."""
    try:
        agree(None if error is not None else (what if token is None else token), what, then)
    except RunError:
        if error is not None:
            error.__suppress_context__ = True  # its own cause kept, the agreement's hidden
            raise error  # noqa: B904
        raise
    if error is not None:
        raise error


def broadcast_text(text: str | None) -> str | None:
    """The first process's `text` (None: nothing) on every process (a collective; the
    others' `text` is not read)."""
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    data = b"\x00" if text is None else b"\x01" + text.encode()
    size = int(np.asarray(multihost_utils.broadcast_one_to_all(
        np.asarray(len(data), np.int32))))
    mine = np.zeros(size, np.uint8)
    if jax.process_index() == 0:
        mine[:] = np.frombuffer(data, np.uint8)
    sent = bytes(np.asarray(multihost_utils.broadcast_one_to_all(mine)).astype(np.uint8))
    return sent[1:].decode() if sent[:1] == b"\x01" else None


def broadcast_values(tree: Any) -> Any:
    """The first process's NumPy `tree` on every process, bit for bit (a collective; floats
    travel as unsigned integers of their width, since the broadcast sums the others' zeros
    and -0.0 + 0.0 is +0.0)."""
    from jax.experimental import multihost_utils

    def as_bits(leaf):
        leaf = np.asarray(leaf)
        if np.issubdtype(leaf.dtype, np.floating):
            return leaf.view(np.dtype(f"uint{leaf.dtype.itemsize * 8}"))
        return leaf

    # one leaf at a time: a device holds one table's copies at once, not the whole state's
    return jax.tree.map(
        lambda leaf: np.asarray(multihost_utils.broadcast_one_to_all(as_bits(leaf))).view(
            np.asarray(leaf).dtype), tree)
