"""A click model for the direct method and doubly robust estimators of off-policy evaluation.

`fit_reward_model` fits the library's biased matrix factorisation (`models.mf.MF`) plus one
logit offset per slot (position bias) to logged impressions by full-batch Adam on the binary
cross-entropy with a Gaussian prior (`weight_decay * sum of squares / impressions`, part of the
objective, on the user and item parameters only) — the training core's step scanned over the
epochs (`train.full_batch.fit_full_batch_jit`, Adam from `train.step.make_optimizer` with
the learning rate traced), compiled once per model size, log size and number of epochs:

    q_hat(u, a, k) = sigmoid(MF(u, a) + b_k)

`reward_table` returns `q_hat` for every item at every slot of given users, the table that
`dm` / `dr` average under the target policy's slot marginals.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from causalrec_jax.models.base import make_scorers, split_model
from causalrec_jax.models.mf import MF
from causalrec_jax.train.full_batch import (
    check_finite,
    fit_full_batch_jit,
    full_batch_optimizer,
    optimizer_settings,
)


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
    batch = {
        "constants": parts.constants, "users": jnp.asarray(users, jnp.int32),
        "items": jnp.asarray(items, jnp.int32), "slots": jnp.asarray(slots, jnp.int32),
        "clicks": jnp.asarray(clicks, jnp.float32), "weight_decay": jnp.float32(weight_decay),
    }
    optimizer, hparams = full_batch_optimizer(
        optimizer_settings(learning_rate=learning_rate, weight_decay=0.0), epochs)
    # The objective samples nothing: the fit's key is unused (the model key initialised MF).
    fit = fit_full_batch_jit(_ClickLoss(parts.graphdef), initial, batch, key, hparams,
                             optimizer=optimizer, epochs=epochs)
    check_finite(fit, "reward model (ope.reward_model)", "lower ope.reward_model_learning_rate")
    params = fit.state.params
    return (RewardModel(params["mf"], params["slot"], parts.graphdef, parts.constants),
            fit.losses)


@dataclasses.dataclass(frozen=True)
class _ClickLoss:
    """`loss_fn(params, batch, key)` of the click model: mean BCE plus the Gaussian prior.

    A frozen dataclass hashed by the model's structure, so every fit of one model size shares
    one compiled program; the log and `weight_decay` travel in `batch`.
    """

    graphdef: Any

    def __call__(self, params, batch, key):
        del key
        scorers = make_scorers(self.graphdef, batch["constants"])
        logits = (scorers.score_pairs(params["mf"], batch["users"], batch["items"])
                  + params["slot"][batch["slots"]])
        # A Gaussian prior on the user and item parameters (not the global and slot biases):
        # with about one impression per (user, item) an unregularised model memorises clicks.
        penalty = sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(params["mf"])
                      if leaf.ndim > 0)
        clicks = batch["clicks"]
        bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, clicks))
        return bce + batch["weight_decay"] * penalty / clicks.shape[0], {}


def reward_table(model: RewardModel, users: jax.Array) -> jax.Array:
    """`[n_users, n_items, K]` predicted click probability of every item at every slot."""
    return _table(model.graphdef, model.constants, model.params, model.slot_bias,
                  jnp.asarray(users, jnp.int32))


@functools.partial(jax.jit, static_argnums=0)
def _table(graphdef, constants, params, slot_bias, users):
    logits = make_scorers(graphdef, constants).score_all(params, users)
    return jax.nn.sigmoid(logits[:, :, None] + slot_bias[None, None, :])


__all__ = ["RewardModel", "fit_reward_model", "reward_table"]
