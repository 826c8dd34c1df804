"""Several processes (hosts) training one run: `jax.distributed` start-up and global inputs.

`start` calls `jax.distributed.initialize`, which finds the coordinator, the number of
processes and this process's index by itself under SLURM, Open MPI and Kubernetes Jobs
(JobSet / indexed Jobs), or reads them from the environment (`JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`) where nothing else provides them. On CPU the processes
exchange through gloo. After it, `jax.devices()` lists every process's devices, and a
`parallel.mesh` spans them: every process runs the same program on its own devices.

Each process builds the run's inputs itself (the same config and seed give the same data,
parameters and keys everywhere); `to_global` turns them into global arrays with
`jax.make_array_from_process_local_data`, replicated over the mesh, as a jitted program over
devices of several processes takes them. `host_values` brings a global array's whole value
back to every process (`multihost_utils.process_allgather`) for what runs per process:
evaluation, the run folder. `agree` makes every process stop together, with one message, when
one of them cannot start the run or builds other inputs.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from causalrec_jax.errors import ConfigError
from causalrec_jax.train.processes import agree, together  # noqa: F401  (re-exported)

# Where `start` reads the job's layout when no cluster environment gives it.
ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def start() -> None:
    """Joins this process to the job (`jax.distributed.initialize`); call it before anything
    else touches JAX. A second call does nothing."""
    if jax.distributed.is_initialized():
        return
    address, processes, index = (os.environ.get(name) for name in ENVIRONMENT)
    given = [value is not None for value in (address, processes, index)]
    if any(given) and not all(given):
        missing = [name for name, there in zip(ENVIRONMENT, given, strict=True) if not there]
        raise ConfigError(f"--distributed: {', '.join(missing)} not set; set all of "
                          f"{', '.join(ENVIRONMENT)} or none (a cluster job gives them)")
    # CPU processes need a collectives library to exchange (a no-op for accelerators)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        if all(given):
            jax.distributed.initialize(coordinator_address=address,
                                       num_processes=int(processes), process_id=int(index))
        else:
            jax.distributed.initialize()
    except (RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"--distributed: jax.distributed.initialize failed: {first} (outside "
                          "a SLURM, Open MPI or Kubernetes job, set "
                          f"{', '.join(ENVIRONMENT)})") from None


def is_multiprocess() -> bool:
    """Whether this run spans several processes."""
    return jax.process_count() > 1


def to_global(tree: Any, mesh: Mesh) -> Any:
    """`tree`'s arrays (the same values in every process) as global arrays replicated over
    `mesh`; unchanged in a single process. Typed PRNG keys stay keys."""
    if not is_multiprocess():
        return tree
    everywhere = NamedSharding(mesh, P())

    def one(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype,
                                                                 jax.dtypes.prng_key):
            data = jax.make_array_from_process_local_data(
                everywhere, np.asarray(jax.random.key_data(leaf)))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return jax.make_array_from_process_local_data(everywhere, np.asarray(leaf))

    return jax.tree.map(one, tree)


def local_copy(value: Any) -> Any:
    """A replicated (or single-device) array's value from this process's own copy, with no
    collective: NumPy for data, a local key for a typed PRNG key (unchanged when this process
    holds the whole array already)."""
    if not isinstance(value, jax.Array) or value.is_fully_addressable:
        return value if isinstance(value, jax.Array) and jax.dtypes.issubdtype(
            value.dtype, jax.dtypes.prng_key) else np.asarray(value)
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        data = np.asarray(jax.random.key_data(value).addressable_data(0))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
    return np.asarray(value.addressable_data(0))


def host_values(tree: Any) -> Any:
    """`tree`'s global arrays as NumPy arrays holding their whole value, in every process
    (a collective: every process must call it); unchanged in a single process."""
    if not is_multiprocess():
        return tree
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def from_first(metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` as the first process computed them, on every process (a collective): the
    numbers every process's early stopping reads, so that no host stops at another epoch or
    keeps other best parameters (a device's nondeterministic sums could differ between hosts).
    Unchanged in a single process."""
    if not is_multiprocess():
        return metrics
    from jax.experimental import multihost_utils

    numbers = {name: value for name, value in metrics.items()
               if isinstance(value, (int, float, np.integer, np.floating))
               and not isinstance(value, bool)}
    sent = multihost_utils.broadcast_one_to_all(
        {name: np.float64(value) for name, value in numbers.items()})
    return {**metrics, **{name: type(numbers[name])(np.asarray(value).item())
                          for name, value in sent.items()}}
