"""A click model for the direct method and doubly robust estimators of off-policy evaluation.

`fit_reward_model` fits the library's biased matrix factorisation (`models.mf.MF`) plus one
logit offset per slot (position bias) to logged impressions by full-batch Adam on the binary
cross-entropy with a Gaussian prior (L2, `weight_decay * sum of squares / impressions`) on the
user and item parameters, one `lax.scan` over epochs:

    q_hat(u, a, k) = sigmoid(MF(u, a) + b_k)

`reward_table` returns `q_hat` for every item at every slot of given users, the table that
`dm` / `dr` average under the target policy's slot marginals.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from causalrec_jax.models.base import make_scorers, split_model
from causalrec_jax.models.mf import MF
from causalrec_jax.train.full_batch import fit_full_batch
from causalrec_jax.train.loop import TrainingDivergedError


class RewardModel(NamedTuple):
    """A fitted click model: MF parameters, slot offsets `[K]` and the scorers to apply them."""

    params: Any
    slot_bias: jax.Array
    graphdef: Any
    constants: Any


def fit_reward_model(
    key: jax.Array,
    users: jax.Array,
    items: jax.Array,
    slots: jax.Array,
    clicks: jax.Array,
    *,
    n_users: int,
    n_items: int,
    slate_size: int,
    dim: int = 32,
    epochs: int = 200,
    learning_rate: float = 0.05,
    weight_decay: float = 1.0,
) -> tuple[RewardModel, jax.Array]:
    """Fits `q_hat` to impressions `[n]` (user, item, slot, click); returns `(model, losses)`.

    Raises:
        TrainingDivergedError: the loss became NaN or Inf.
    """
    parts = split_model(MF(n_users, n_items, embedding_dim=dim, key=key))
    initial = {"mf": parts.params, "slot": jnp.zeros(slate_size, jnp.float32)}
    params, losses = _fit(
        parts.graphdef, parts.constants, initial, jnp.asarray(users, jnp.int32),
        jnp.asarray(items, jnp.int32), jnp.asarray(slots, jnp.int32),
        jnp.asarray(clicks, jnp.float32), jnp.float32(weight_decay),
        epochs=epochs, learning_rate=learning_rate,
    )
    if not bool(jnp.all(jnp.isfinite(losses))):
        raise TrainingDivergedError(
            "reward model (ope.reward_model): the loss became NaN/Inf; lower "
            "ope.reward_model_learning_rate"
        )
    return RewardModel(params["mf"], params["slot"], parts.graphdef, parts.constants), losses


@functools.partial(jax.jit, static_argnums=0, static_argnames=("epochs", "learning_rate"))
def _fit(graphdef, constants, params, users, items, slots, clicks, weight_decay, *, epochs,
         learning_rate):
    """Full-batch Adam epochs under one `lax.scan` (the log is an argument, not a constant)."""
    scorers = make_scorers(graphdef, constants)
    optimizer = optax.adam(learning_rate)

    def loss_fn(params):
        logits = scorers.score_pairs(params["mf"], users, items) + params["slot"][slots]
        # A Gaussian prior on the user and item parameters (not the global and slot biases):
        # with about one impression per (user, item) an unregularised model memorises clicks.
        penalty = sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(params["mf"])
                      if leaf.ndim > 0)
        bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, clicks))
        return bce + weight_decay * penalty / clicks.shape[0]

    return fit_full_batch(lambda params, _key: loss_fn(params), params, optimizer, epochs)


def reward_table(model: RewardModel, users: jax.Array) -> jax.Array:
    """`[n_users, n_items, K]` predicted click probability of every item at every slot."""
    return _table(model.graphdef, model.constants, model.params, model.slot_bias,
                  jnp.asarray(users, jnp.int32))


@functools.partial(jax.jit, static_argnums=0)
def _table(graphdef, constants, params, slot_bias, users):
    logits = make_scorers(graphdef, constants).score_all(params, users)
    return jax.nn.sigmoid(logits[:, :, None] + slot_bias[None, None, :])


__all__ = ["RewardModel", "fit_reward_model", "reward_table"]
