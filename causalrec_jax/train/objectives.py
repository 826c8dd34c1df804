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
import numpy as np

from causalrec_jax import streams
from causalrec_jax.errors import ConfigError
from causalrec_jax.train import losses

Batch = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]

POINTWISE_LOSSES = ("mse", "bce")
RANKING_LOSSES = ("bpr", "softmax", "sampled_softmax")

_RESAMPLE_ROUNDS = 3


def make_objective(
    loss_name: str,
    score_pairs: Callable[..., jax.Array],
    score_all: Callable[[Any, jax.Array], jax.Array],
    *,
    n_items: int,
    n_negatives: int = 1,
    normalize: str = "count",
) -> LossFn:
    """The training objective of `train.loss` for a model's pure scorers.

    Args:
        loss_name: `mse`, `bce`, `bpr`, `softmax` or `sampled_softmax`.
        score_pairs: `(params, users [b], items [b], key=None) -> [b]`.
        score_all: `(params, users [b]) -> [b, n_items]` (for the full softmax).
        n_items: catalogue size (negatives are drawn from `0..n_items-1`).
        n_negatives: uniform negatives per positive for `bpr` / `sampled_softmax`.
        normalize: how weighted pointwise losses are averaged: "count" (inverse-propensity
            weights: IPS) or "weights" (self-normalised: SNIPS); see `losses.reduce_losses`.

    Returns:
        `loss_fn(params, batch, key, *, hparams=None) -> (loss, {"loss": loss})`,
        differentiable in `params`; `hparams["dropout"]` (traced), when given, is the model's
        dropout rate.
    """
    losses.get_loss(loss_name)  # a clear ConfigError for an unknown name

    def loss_fn(params, batch: Batch, key: jax.Array, *, hparams=None):
        rate = {} if not hparams or "dropout" not in hparams else {
            "dropout_rate": hparams["dropout"]}

        def pair_scores(params, users, items, key):
            return score_pairs(params, users, items, key=streams.derive(key, streams.Step.DROPOUT),
                               **rate)

        where = batch["mask"]
        weights = batch.get("weights")
        users, items = batch["users"], batch["items"]
        if loss_name == "mse":
            scores = pair_scores(params, users, items, key)
            loss = losses.mse_loss(
                scores, batch["ratings"], weights=weights, where=where, normalize=normalize
            )
        elif loss_name == "bce":
            scores = pair_scores(params, users, items, key)
            loss = losses.binary_cross_entropy_loss(
                scores, batch["ratings"], weights=weights, where=where, normalize=normalize
            )
        elif loss_name == "softmax":
            scores = score_all(params, users)
            loss = losses.softmax_cross_entropy_loss(scores, items, weights=weights, where=where)
        else:
            all_users, all_items, log_probs, negative_where = ranking_pairs(
                key, batch, n_items, n_negatives)
            scores = pair_scores(params, all_users, all_items, key).reshape(-1, 1 + n_negatives)
            if loss_name == "bpr":
                loss = losses.bpr_loss(
                    scores[:, 0], scores[:, 1:], negative_where=negative_where,
                    weights=weights, where=where,
                )
            else:
                loss = losses.sampled_softmax_loss(
                    scores[:, 0], scores[:, 1:], negative_log_probs=log_probs,
                    remove_accidental_hits=(
                        None if negative_where is None else ~negative_where
                    ),
                    weights=weights, where=where,
                )
        return loss, {"loss": loss}

    return loss_fn


def scored_pairs(loss_name: str, batch: Batch, key: jax.Array, n_items: int,
                 n_negatives: int) -> tuple[jax.Array, jax.Array]:
    """`(users [m], items [m])`: every (user, item) pair `make_objective`'s loss scores on
    `batch` with the step `key`: the rows themselves (pointwise losses), or each positive
    followed by its sampled negatives (`ranking_pairs`). The full softmax scores every item,
    so it has no such list (a ConfigError). What reads it: per-user gradients over the rows
    the loss touches (`privacy.dpsgd`)."""
    if loss_name in POINTWISE_LOSSES:
        return batch["users"], batch["items"]
    if loss_name == "softmax":
        raise ConfigError("key train.loss: 'softmax' scores the whole catalogue for every "
                          "row, so no row's gradient touches only its own items")
    users, items, _, _ = ranking_pairs(key, batch, n_items, n_negatives)
    return users, items


def ranking_pairs(key: jax.Array, batch: Batch, n_items: int, n_negatives: int
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """A ranking loss's scored pairs: `(users, items)`, both `[b * (1 + n_negatives)]`, row
    by row the positive then its negatives (`draw_negatives` of the step `key`), with the
    negatives' log-probabilities and validity."""
    users, items = batch["users"], batch["items"]
    negatives, log_probs, negative_where = draw_negatives(key, batch, users, n_items,
                                                          n_negatives)
    n_candidates = 1 + n_negatives
    all_users = jnp.repeat(users[:, None], n_candidates, axis=1).reshape(-1)
    all_items = jnp.concatenate([items[:, None], negatives], axis=1).reshape(-1)
    return all_users, all_items, log_probs, negative_where


# A batch may carry its step key's negatives already drawn (`with_drawn_negatives`), so a
# caller that needed them first (a private unit's gathered rows) does not draw them twice.
DRAWN_NEGATIVES, DRAWN_LOG_PROBS, DRAWN_WHERE = ("drawn_negatives", "drawn_log_probs",
                                                 "drawn_where")


def with_drawn_negatives(loss_name: str, batch: Batch, key: jax.Array, n_items: int,
                         n_negatives: int, samples_negatives: bool = False
                         ) -> tuple[jax.Array, jax.Array, Batch]:
    """`(users, items, batch)`: `scored_pairs` and the batch carrying the negatives drawn for
    them (a ranking loss, or `samples_negatives`: an objective that draws negatives whatever
    its loss, PDA's and MACR's), which `draw_negatives` of the same `key` then returns
    instead of drawing again (the same values: `privacy.dpsgd` reads the pairs to gather a
    unit's rows, then its objective scores them)."""
    if not samples_negatives and (loss_name in POINTWISE_LOSSES or loss_name == "softmax"):
        users, items = scored_pairs(loss_name, batch, key, n_items, n_negatives)
        return users, items, batch
    drawn = {**batch, **drawn_negatives(loss_name, batch, key, n_items, n_negatives,
                                      samples_negatives)}
    users, items, _, _ = ranking_pairs(key, drawn, n_items, n_negatives)
    return users, items, drawn


def drawn_negatives(loss_name: str, batch: Batch, key: jax.Array, n_items: int,
                    n_negatives: int, samples_negatives: bool = False) -> dict[str, jax.Array]:
    """The negatives a ranking loss (or, with `samples_negatives`, any objective that samples
    them) draws with `key` for `batch` (`draw_negatives`), as the batch entries that make a
    later `draw_negatives` of the same key return them (`DRAWN_*`); `{}` for a loss that
    draws none. A batch that carries them already gets them back."""
    if not samples_negatives and (loss_name in POINTWISE_LOSSES or loss_name == "softmax"):
        return {}
    negatives, log_probs, negative_where = draw_negatives(key, batch, batch["users"],
                                                          n_items, n_negatives)
    drawn = {DRAWN_NEGATIVES: negatives, DRAWN_LOG_PROBS: log_probs}
    if negative_where is not None:
        drawn[DRAWN_WHERE] = negative_where
    return drawn


def draw_negatives(key: jax.Array, batch: Batch, users: jax.Array, n_items: int,
                   n_negatives: int) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """`[b, n_negatives]` uniform negatives of the step `key`, their log-probabilities, and
    which are valid: None, or False where a seen item survived `resample_seen` (when the
    batch carries the shared seen-items data)."""
    if DRAWN_NEGATIVES in batch:  # this key's draw, made once already (`with_drawn_negatives`)
        return (batch[DRAWN_NEGATIVES], batch[DRAWN_LOG_PROBS], batch.get(DRAWN_WHERE))
    negative_key = streams.derive(key, streams.Step.NEGATIVES)
    negatives, log_probs = losses.sample_negatives(
        negative_key, n_items, (users.shape[0], n_negatives)
    )
    negative_where = None
    if "shared_seen_mask" in batch or "shared_seen_pairs" in batch:
        negatives, negative_where = resample_seen(
            negative_key, users, negatives, n_items,
            seen_mask=batch.get("shared_seen_mask"), seen_pairs=batch.get("shared_seen_pairs"),
        )
    return negatives, log_probs, negative_where


# Up to this many (user, item) cells the seen items are a dense bool mask (a fast gather);
# beyond it, sorted pair codes searched in O(log n) (memory O(n_train)).
DENSE_SEEN_LIMIT = 1 << 26


def seen_items_data(users, items, n_users: int, n_items: int) -> dict[str, np.ndarray]:
    """Shared data for `resample_seen`: `shared_seen_mask [n_users, n_items]` when small,
    else sorted int32 `shared_seen_pairs` (`user * n_items + item`); empty when neither fits
    (n_users * n_items >= 2^31: negatives are then drawn without excluding seen items)."""
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    if n_users * n_items <= DENSE_SEEN_LIMIT:
        mask = np.zeros((n_users, n_items), bool)
        mask[users, items] = True
        return {"shared_seen_mask": mask}
    if n_users * n_items < 2**31:
        return {"shared_seen_pairs": np.unique(users * n_items + items).astype(np.int32)}
    return {}


def resample_seen(
    key: jax.Array,
    users: jax.Array,
    negatives: jax.Array,
    n_items: int,
    *,
    seen_mask: jax.Array | None = None,
    seen_pairs: jax.Array | None = None,
    rounds: int = _RESAMPLE_ROUNDS,
) -> tuple[jax.Array, jax.Array]:
    """Redraws negatives that are items the user has in training (as RecBole's sampler does).

    Negatives still seen after `rounds` redraws are marked False in the returned mask, so the
    loss ignores them.

    Args:
        key: the step's negative-sampling key.
        users: `[b]` users.
        negatives: `[b, n_negatives]` sampled items.
        n_items: catalogue size.
        seen_mask: `[n_users, n_items]` bool training pairs, or None.
        seen_pairs: sorted int32 codes `user * n_items + item` (used without `seen_mask`).
        rounds: redraw attempts.

    Returns:
        `(negatives, valid)`, both `[b, n_negatives]`.
    """

    def is_seen(items):
        if seen_mask is not None:
            return seen_mask[users[:, None], items]
        codes = users[:, None] * n_items + items
        index = jnp.clip(jnp.searchsorted(seen_pairs, codes), 0, seen_pairs.shape[0] - 1)
        return seen_pairs[index] == codes

    for attempt in range(rounds):
        redraw = jax.random.randint(
            streams.index(key, attempt + 1), negatives.shape, 0, n_items, negatives.dtype
        )
        negatives = jnp.where(is_seen(negatives), redraw, negatives)
    return negatives, ~is_seen(negatives)


def batch_fields(loss_name: str) -> tuple[str, ...]:
    """The per-example arrays a loss reads (besides `mask` and optional `weights`)."""
    if loss_name in POINTWISE_LOSSES:
        return ("users", "items", "ratings")
    return ("users", "items")
