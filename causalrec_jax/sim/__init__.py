"""Simulated worlds with known ground truth: a static MNAR world (`world`)."""

from causalrec_jax.sim.world import (
    GroundTruth,
    WorldParams,
    WorldSizes,
    calibrate_base,
    make_world,
    mar_sample,
    rating_probabilities,
    sample_exposure,
    simulate_dataset,
    world_to_dataset,
)

__all__ = [
    "GroundTruth",
    "WorldParams",
    "WorldSizes",
    "calibrate_base",
    "make_world",
    "mar_sample",
    "rating_probabilities",
    "sample_exposure",
    "simulate_dataset",
    "world_to_dataset",
]
