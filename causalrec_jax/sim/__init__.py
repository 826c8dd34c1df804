"""Simulated worlds with known ground truth: a static MNAR world (`world`), dense for small
worlds and generated in user blocks (with a compact `SparseGroundTruth`) for large ones."""

from causalrec_jax.sim.world import (
    GroundTruth,
    SparseGroundTruth,
    WorldParams,
    WorldSizes,
    calibrate_base,
    make_world,
    mar_sample,
    rating_probabilities,
    sample_exposure,
    simulate_chunked,
    simulate_dataset,
    truth_block,
    world_to_dataset,
)

__all__ = [
    "GroundTruth",
    "SparseGroundTruth",
    "WorldParams",
    "WorldSizes",
    "calibrate_base",
    "make_world",
    "mar_sample",
    "rating_probabilities",
    "sample_exposure",
    "simulate_chunked",
    "simulate_dataset",
    "truth_block",
    "world_to_dataset",
]
