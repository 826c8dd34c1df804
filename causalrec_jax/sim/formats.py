"""The simulator's data formats, registered into the data layer's format registry.

`simulator` (a static world generated from `[sim]`, `world.simulate_dataset`, with its ground
truth), `simlog` (a folder written by `causalrec simulate`, `simlog.simlog_to_dataset`) and
`planted` (histories with planted causal rules generated from `[planted]`,
`planted.simulate_planted`, with its `PlantedTruth`). The data layer never imports the
simulator: importing `causalrec_jax.sim` registers these formats (its `__init__` imports this
module), so that `data.loader.load_dataset` reads them like any other format.
"""

from __future__ import annotations

from typing import Any

from causalrec_jax.config import PlantedConfig, SimConfig
from causalrec_jax.data.dataset import Dataset
from causalrec_jax.data.formats.registry import Source, register_format
from causalrec_jax.sim.planted import simulate_planted
from causalrec_jax.sim.simlog import simlog_to_dataset
from causalrec_jax.sim.world import simulate_dataset


def read_simulator(source: Source) -> tuple[Dataset, Any]:
    """The world of `source.sim` (defaults when None): `(dataset, GroundTruth)`."""
    return simulate_dataset(source.sim or SimConfig())


def read_simlog_folder(source: Source) -> tuple[Dataset, Any]:
    """The impressions of the simlog folder `source.path`; no ground truth is read."""
    return simlog_to_dataset(source.path), None


def read_planted(source: Source) -> tuple[Dataset, Any]:
    """The planted world of `source.planted` (defaults when None): `(dataset, PlantedTruth)`."""
    return simulate_planted(source.planted or PlantedConfig())


def register_formats() -> None:
    """Registers `simulator`, `simlog` and `planted` (again: a no-op)."""
    register_format("simulator", read_simulator, needs_path=False)
    register_format("simlog", read_simlog_folder)
    register_format("planted", read_planted, needs_path=False)


register_formats()
