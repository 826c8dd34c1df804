"""The device mesh of a sharded run: `('data', 'model')`, both axes Auto.

Batches are split over `data` (each slice of the mesh along it trains on its share of the
batch, and the gradients are summed across it), row tables over `model` (each device holds
`rows / model` of every embedding table, `parallel.sharding`). The mesh is a plain
`jax.sharding.Mesh`, whose axes are Auto: the partitioner (GSPMD) places every intermediate
from the shardings of the inputs and outputs. (`jax.make_mesh` defaults to Explicit axes in
jax 0.10, under which every operation must state its sharding.)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from causalrec_jax.config import ParallelConfig
from causalrec_jax.errors import ConfigError

AXES = ("data", "model")


def check_mesh_shape(shape: Sequence[int], n_devices: int) -> tuple[int, int]:
    """`(data, model)` from `shape`, refused in one line naming `parallel.mesh` unless it is
    two integers >= 1 (the config's own check, `config.ParallelConfig`) whose product divides
    `n_devices` (a mesh of fewer devices than there are uses the first `data * model`)."""
    mesh = ParallelConfig(mesh=tuple(shape)).mesh
    if not mesh:
        raise ConfigError("key parallel.mesh: [] is one device, not a mesh; expected [data, "
                          "model]")
    data, model = mesh
    if n_devices % (data * model):
        raise ConfigError(
            f"key parallel.mesh: a {data} x {model} mesh needs {data * model} devices, which "
            f"does not divide the {n_devices} there are ({jax.default_backend()}); choose a "
            "shape whose product divides it")
    return data, model


def check_run_mesh(shape: Sequence[int]) -> tuple[int, int] | None:
    """`parallel.mesh` of a run: `(data, model)`, or None for one device; refused in one line
    when the mesh does not fit the devices (`check_mesh_shape`), and, over several processes
    (`--distributed`), when there is none or it leaves out a process's devices."""
    processes = jax.process_count()
    if processes > 1 and not shape:
        raise ConfigError(f"--distributed: {processes} processes but no parallel.mesh; set "
                          f"one spanning their devices (e.g. [{jax.device_count()}, 1])")
    if not shape:
        return None
    data, model = check_mesh_shape(shape, jax.device_count())
    if processes > 1 and data * model != jax.device_count():
        raise ConfigError(f"key parallel.mesh: a {data} x {model} mesh over {processes} "
                          f"processes must use all {jax.device_count()} of their devices (every "
                          "process holds a part); choose a shape whose product is that")
    return data, model


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `('data', 'model')` mesh of `shape` over the first `data * model` of `devices`
    (default: every device of the default backend, of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    data, model = check_mesh_shape(shape, len(devices))
    grid = np.asarray(devices[: data * model], dtype=object).reshape(data, model)
    return Mesh(grid, AXES)


def padded_count(n: int, shards: int) -> int:
    """`n` rounded up to a multiple of `shards` (a row-sharded table's padded length)."""
    return -(-n // shards) * shards
