"""Building models from a `ModelConfig`: one model (`make_model`) or one per seed (`init_params`).

Kept apart from `base.py` because it imports every model, and every model imports `base`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from causalrec_jax.config import ModelConfig
from causalrec_jax.errors import ConfigError
from causalrec_jax.models.base import ModelParts, declared_tables, split_model
from causalrec_jax.models.lightgcn import LightGCN
from causalrec_jax.models.mf import MF
from causalrec_jax.models.mlp import MLP
from causalrec_jax.models.neumf import NeuMF
from causalrec_jax.models.popularity import Popularity

# The `model.name` values make_model builds.
MODEL_NAMES: tuple[str, ...] = ("mf", "mlp", "neumf", "lightgcn", "popularity")

# The class each name builds.
MODEL_CLASSES = {"mf": MF, "mlp": MLP, "neumf": NeuMF, "lightgcn": LightGCN,
                 "popularity": Popularity}


def declared_row_tables(name: str) -> dict[str, str] | None:
    """The row tables (`models.base.row_tables`) the model `name` declares, None for none."""
    return declared_tables(MODEL_CLASSES.get(name))


def make_model(
    config: ModelConfig,
    *,
    n_users: int,
    n_items: int,
    key: jax.Array,
    user_features: Any = None,
    item_features: Any = None,
    item_counts: Any = None,
    global_bias: float = 0.0,
    train_edges: tuple[Any, Any] | None = None,
) -> nnx.Module:
    """Builds the model `config.name` names.

    Args:
        config: the `[model]` section; `embedding_dim`, `hidden_dims` and `dropout` are used
            where the model has them.
        n_users: number of users (rows of the user tables).
        n_items: number of items.
        key: initialisation key; the same key gives identical parameters.
        user_features: optional `[n_users, d_u]` floats, used by mlp and neumf (ignored by
            the others, so a caller can always pass the dataset's).
        item_features: optional `[n_items, d_i]` floats, likewise.
        item_counts: `[n_items]` training interactions per item; required by popularity.
        global_bias: the initial global bias / output bias (e.g. the mean training rating).
        train_edges: `(users [n], items [n])` int arrays of the TRAINING interactions only;
            required by lightgcn, whose propagation graph they are (ignored by the others).

    Returns:
        An `nnx.Module` with the `Recommender` interface (`causalrec_jax.models.base`).

    Raises:
        ConfigError: an unknown or not yet implemented `model.name`, or `model.hidden_dims`
            empty for a model with hidden layers.
        ValueError: feature or count arrays whose shapes do not match `n_users` / `n_items`,
            popularity without `item_counts`, or lightgcn without `train_edges`.
    """
    name = config.name
    if name in ("mlp", "neumf") and not config.hidden_dims:
        raise ConfigError(
            f"key model.hidden_dims: got [], expected at least one hidden layer width for "
            f"model.name = {name!r}"
        )
    if name == "mf":
        return MF(
            n_users, n_items, embedding_dim=config.embedding_dim, key=key,
            global_bias=global_bias,
        )
    if name in ("mlp", "neumf"):
        model_class = MLP if name == "mlp" else NeuMF
        return model_class(
            n_users, n_items, embedding_dim=config.embedding_dim,
            hidden_dims=tuple(config.hidden_dims), key=key, dropout_rate=config.dropout,
            user_features=user_features, item_features=item_features,
            global_bias=global_bias,
        )
    if name == "lightgcn":
        if train_edges is None:
            raise ValueError(
                "model.name = 'lightgcn' needs train_edges (the training (user, item) pairs)"
            )
        return LightGCN(
            n_users, n_items, embedding_dim=config.embedding_dim, n_layers=config.n_layers,
            train_edges=train_edges, key=key,
        )
    if name == "popularity":
        if item_counts is None:
            raise ValueError("model.name = 'popularity' needs item_counts (train count per item)")
        model = Popularity(item_counts, global_bias=global_bias)
        if model.n_items != n_items:
            raise ValueError(f"item_counts has {model.n_items} entries, expected n_items={n_items}")
        return model
    raise ConfigError(
        f"key model.name: got {name!r}, expected one of {', '.join(MODEL_NAMES)} "
        f"(the models implemented so far)"
    )


def init_params(
    config: ModelConfig,
    *,
    n_users: int,
    n_items: int,
    keys: jax.Array,
    user_features: Any = None,
    item_features: Any = None,
    item_counts: Any = None,
    global_bias: float = 0.0,
    train_edges: tuple[Any, Any] | None = None,
) -> ModelParts:
    """Builds one model per key and stacks their parameters, for `jax.vmap` over seeds.

    Args:
        config, n_users, n_items, user_features, item_features, item_counts, global_bias,
            train_edges: as in `make_model`.
        keys: `[n_seeds]` initialisation keys.

    Returns:
        `ModelParts(graphdef, params, constants)`: `params` leaves have a leading
        `[n_seeds]` axis, and seed s equals `split_model(make_model(..., key=keys[s])).params`;
        `graphdef` and `constants` are shared by all seeds (constants do not depend on the key).
    """

    def build(key: jax.Array) -> ModelParts:
        return split_model(
            make_model(
                config, n_users=n_users, n_items=n_items, key=key, user_features=user_features,
                item_features=item_features, item_counts=item_counts, global_bias=global_bias,
                train_edges=train_edges,
            )
        )

    # A Python loop, not jax.vmap / jax.jit over construction: after the first seed every
    # eager op is already compiled, so each further seed costs milliseconds, whereas a
    # vmapped or jitted initialiser is a fresh XLA program (seconds to compile on CPU).
    parts = [build(key) for key in keys]
    params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(p.params for p in parts))
    return ModelParts(parts[0].graphdef, params, parts[0].constants)


# The `[model]` keys each model of this factory reads (besides `name`).
_MODEL_KEYS = {
    "mf": ("embedding_dim",),
    "mlp": ("embedding_dim", "hidden_dims", "dropout"),
    "neumf": ("embedding_dim", "hidden_dims", "dropout"),
    "lightgcn": ("embedding_dim", "n_layers"),
    "popularity": (),
}


def model_keys_used(config: ModelConfig) -> tuple[str, ...]:
    """The `[model]` keys `make_model` reads for `config.name` (the others would be ignored,
    so a run refuses them: `config.refuse_unused`); every key for a model not built here."""
    if config.name not in _MODEL_KEYS:
        return tuple(f.name for f in dataclasses.fields(config))
    return ("name", *_MODEL_KEYS[config.name])

