"""Simulated worlds with known ground truth.

- `world`: a static MNAR world, dense for small worlds and generated in user blocks (with a
  compact `SparseGroundTruth`) for large ones (exported here);
- `env`, `policies`, `rollout`: a dynamic environment in the gymnax style (slates, position
  bias, clicks, organic consumption), slate policies with exact probabilities, and vmapped
  rollouts with common random numbers and interventions;
- `logs`, `simlog`: logged bandit feedback from `[env]` / `[policy]` configs and its folder
  format (import these submodules directly);
- `planted`: histories with planted causal rules (AND, OR, confounders, distractors) and the
  minimal counterfactual explanations they imply, the truth explanations are scored against
  (import the submodule directly);
- `formats`: registers the data formats `simulator`, `simlog` and `planted` into
  `causalrec_jax.data.formats` (done here, on import).
"""

from causalrec_jax.sim import formats  # noqa: F401  registers "simulator", "simlog", "planted"
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
