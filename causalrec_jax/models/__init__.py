"""Recommendation models as Flax NNX modules, used functionally (DESIGN §1).

    model = make_model(config.model, n_users=..., n_items=..., key=key)
    graphdef, params, constants = split_model(model)
    scorers = make_scorers(graphdef, constants)
    scores = jax.jit(scorers.score_all)(params, user_ids)       # [b, n_items]

One file per model: `mf` (Koren et al. 2009), `mlp` (He et al. 2017, MLP), `neumf`
(He et al. 2017), `lightgcn` (He et al. 2020), `popularity` (the TopPop baseline).
"""

from causalrec_jax.models.base import (
    Constant,
    ModelParts,
    Recommender,
    Scorers,
    make_scorers,
    split_model,
)
from causalrec_jax.models.factory import MODEL_NAMES, init_params, make_model
from causalrec_jax.models.lightgcn import LightGCN
from causalrec_jax.models.mf import MF
from causalrec_jax.models.mlp import MLP, MLPTower
from causalrec_jax.models.neumf import NeuMF
from causalrec_jax.models.popularity import Popularity

__all__ = [
    "MF",
    "MLP",
    "MODEL_NAMES",
    "Constant",
    "LightGCN",
    "MLPTower",
    "ModelParts",
    "NeuMF",
    "Popularity",
    "Recommender",
    "Scorers",
    "init_params",
    "make_model",
    "make_scorers",
    "split_model",
]
