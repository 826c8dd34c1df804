"""Objectives: a loss name and a scorer become `loss_fn(params, batch, key) -> (loss, aux)`.

A batch is a dict of equally long `[batch_size]` arrays with a `mask` (padding rows are
False): `users`, `items`, and `ratings` (pointwise losses) or positives only (ranking losses,
whose negatives are sampled on the device inside the step). `weights` (e.g. inverse
propensities) are optional and multiply each example's loss. The objective is generic over the
scorer: it never looks inside the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from causalrec_jax.train import losses

Batch = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]

POINTWISE_LOSSES = ("mse", "bce")
RANKING_LOSSES = ("bpr", "softmax", "sampled_softmax")

# Fold-in ids separating the step key's uses, so adding one never shifts another's draws.
_STREAM_NEGATIVES = 0
_STREAM_DROPOUT = 1


def make_objective(
    loss_name: str,
    score_pairs: Callable[..., jax.Array],
    score_all: Callable[[Any, jax.Array], jax.Array],
    *,
    n_items: int,
    n_negatives: int = 1,
) -> LossFn:
    """The training objective of `train.loss` for a model's pure scorers.

    Args:
        loss_name: `mse`, `bce`, `bpr`, `softmax` or `sampled_softmax`.
        score_pairs: `(params, users [b], items [b], key=None) -> [b]`.
        score_all: `(params, users [b]) -> [b, n_items]` (for the full softmax).
        n_items: catalogue size (negatives are drawn from `0..n_items-1`).
        n_negatives: uniform negatives per positive for `bpr` / `sampled_softmax`.

    Returns:
        `loss_fn(params, batch, key) -> (loss, {"loss": loss})`, differentiable in `params`.
    """
    losses.get_loss(loss_name)  # a clear ConfigError for an unknown name

    def pair_scores(params, users, items, key):
        return score_pairs(params, users, items, key=jax.random.fold_in(key, _STREAM_DROPOUT))

    def loss_fn(params, batch: Batch, key: jax.Array):
        where = batch["mask"]
        weights = batch.get("weights")
        users, items = batch["users"], batch["items"]
        if loss_name == "mse":
            scores = pair_scores(params, users, items, key)
            loss = losses.mse_loss(scores, batch["ratings"], weights=weights, where=where)
        elif loss_name == "bce":
            scores = pair_scores(params, users, items, key)
            loss = losses.binary_cross_entropy_loss(
                scores, batch["ratings"], weights=weights, where=where
            )
        elif loss_name == "softmax":
            scores = score_all(params, users)
            loss = losses.softmax_cross_entropy_loss(scores, items, weights=weights, where=where)
        else:
            negative_key = jax.random.fold_in(key, _STREAM_NEGATIVES)
            negatives, log_probs = losses.sample_negatives(
                negative_key, n_items, (users.shape[0], n_negatives)
            )
            n_candidates = 1 + n_negatives
            all_users = jnp.repeat(users[:, None], n_candidates, axis=1).reshape(-1)
            all_items = jnp.concatenate([items[:, None], negatives], axis=1).reshape(-1)
            scores = pair_scores(params, all_users, all_items, key).reshape(-1, n_candidates)
            if loss_name == "bpr":
                loss = losses.bpr_loss(scores[:, 0], scores[:, 1:], weights=weights, where=where)
            else:
                loss = losses.sampled_softmax_loss(
                    scores[:, 0], scores[:, 1:], negative_log_probs=log_probs,
                    weights=weights, where=where,
                )
        return loss, {"loss": loss}

    return loss_fn


def batch_fields(loss_name: str) -> tuple[str, ...]:
    """The per-example arrays a loss reads (besides `mask` and optional `weights`)."""
    if loss_name in POINTWISE_LOSSES:
        return ("users", "items", "ratings")
    return ("users", "items")
