"""Losses and the pure training step of the sequential models (SASRec, BERT4Rec).

Batches hold tokens (`data/sequences.py`: 0 = padding, item i = token i + 1). The losses work
in item space: `targets [b, L]` are item ids `0..n_items-1` (token - 1, i.e. columns of the
model's logits) and `mask [b, L]` bool says which positions are trained; every loss is the
mean over trained positions (0 when there are none).

- `full_softmax_loss`: cross-entropy over the whole catalogue (the default; the strongest
  baseline in Klenitskiy & Vasilev, RecSys 2023, "Turning Dross Into Gold Loss: is BERT4Rec
  really better than SASRec?").
- `bce_one_negative_loss`: SASRec's own objective (Kang & McAuley 2018, eq. 5): binary
  cross-entropy of the target against uniformly sampled negatives, one per position by default
  (`train.n_negatives` of them per position).
- `sampled_softmax_loss`: softmax over the target and `n_negatives` negatives, shared by the
  batch (uniform, or by training popularity with an optional logQ correction), or drawn per
  row when the user's own items are excluded (`train.exclude_seen_negatives`, as RecBole's
  sampler). With a uniform proposal the logQ correction is the same constant for every item
  and cancels in the softmax.
- `gbce_loss`: gSASRec's generalised BCE over the target and shared negatives (Petrov &
  Macdonald, RecSys 2023), the positive's probability raised to a calibration power beta.

`make_sequence_objective` turns a loss name into the `loss_fn(params, batch, key) -> (loss,
aux)` of the one training core (`train.step.make_train_step`).
- `masked_item_loss`: BERT4Rec's cloze objective, on positions chosen by `mask_items`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from causalrec_jax.train import losses
from causalrec_jax.train.objectives import resample_seen

LOSSES = ("full_softmax", "bce_one_negative", "sampled_softmax", "gbce", "masked_item")


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def full_softmax_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Cross-entropy over the catalogue.

    Args:
        logits: `[b, L, n_items]`.
        targets: `[b, L]` int item ids (any value where `mask` is False).
        mask: `[b, L]` bool, True where a position is trained.

    Returns:
        `[]` mean cross-entropy over trained positions.
    """
    safe_targets = jnp.where(mask, targets, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe_targets)
    return _masked_mean(losses, mask)


def chunked_softmax_loss(
    hidden: jax.Array,
    item_embeddings: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    chunk_rows: int = 1024,
) -> jax.Array:
    """`full_softmax_loss(hidden @ item_embeddings.T, targets, mask)` without holding the
    `[b, L, n_items]` logits: positions are scored `chunk_rows` at a time under `lax.scan`, and
    each chunk's logits are recomputed in the backward pass (`jax.checkpoint`) instead of
    stored. Temporary memory is `O(chunk_rows * n_items)`; the price is one more logits matmul.

    Args:
        hidden: `[b, L, d]` encoder outputs.
        item_embeddings: `[n_items, d]` output table.
        targets: `[b, L]` int item ids.
        mask: `[b, L]` bool trained positions.
        chunk_rows: positions per chunk (static); the `b * L` positions are padded to a
            multiple of it with untrained rows.

    Returns:
        `[]` mean cross-entropy over trained positions (equal to `full_softmax_loss`).
    """
    dim = hidden.shape[-1]
    rows = hidden.reshape(-1, dim)
    flat_targets = jnp.where(mask, targets, 0).reshape(-1)
    weights = mask.reshape(-1).astype(hidden.dtype)
    chunk_rows = min(chunk_rows, rows.shape[0])
    pad = -rows.shape[0] % chunk_rows
    if pad:
        rows = jnp.pad(rows, ((0, pad), (0, 0)))
        flat_targets = jnp.pad(flat_targets, (0, pad))
        weights = jnp.pad(weights, (0, pad))
    n_chunks = rows.shape[0] // chunk_rows

    @jax.checkpoint
    def chunk_loss(table, chunk_hidden, chunk_targets, chunk_weights):
        logits = chunk_hidden @ table.T
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, chunk_targets)
        return jnp.sum(losses * chunk_weights)

    def body(total, chunk):
        return total + chunk_loss(item_embeddings, *chunk), None

    chunks = (rows.reshape(n_chunks, chunk_rows, dim),
              flat_targets.reshape(n_chunks, chunk_rows),
              weights.reshape(n_chunks, chunk_rows))
    total, _ = jax.lax.scan(body, jnp.zeros((), hidden.dtype), chunks)
    return total / jnp.maximum(jnp.sum(weights), 1.0)


def _uniform_negatives(key: jax.Array, targets: jax.Array, n_items: int) -> jax.Array:
    """One uniform item per position, never the target: `[b, L]`."""
    offset = jax.random.randint(key, targets.shape, 1, max(n_items, 2))
    return (targets + offset) % n_items


def bce_one_negative_loss(
    hidden: jax.Array,
    item_embeddings: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    n_negatives: int = 1,
    negatives: jax.Array | None = None,
    negative_where: jax.Array | None = None,
) -> jax.Array:
    """SASRec's loss: -log s(h.e_target) - sum_j log(1 - s(h.e_negative_j)).

    With `n_negatives = 1` (the paper's) one negative a position. Negatives are uniform over
    the catalogue minus the target, unless given (`negatives`, e.g. redrawn away from the
    user's items; `negative_where` False drops one). Never forms `[b, L, n_items]`.

    Args:
        hidden: `[b, L, d]` encoder outputs.
        item_embeddings: `[n_items, d]` output table (`model.item_embeddings()`).
        targets: `[b, L]` int item ids.
        mask: `[b, L]` bool trained positions.
        key: draws the negatives (unused when `negatives` is given).
        n_negatives: negatives per position (static).
        negatives: `[b, L, n_negatives]` item ids to use instead of drawing them.
        negative_where: `[b, L, n_negatives]` bool, False where a negative does not count.

    Returns:
        `[]` mean loss over trained positions.
    """
    safe_targets = jnp.where(mask, targets, 0)
    if negatives is None:
        negatives = _uniform_negatives(
            key, jnp.broadcast_to(safe_targets[..., None], (*safe_targets.shape, n_negatives)),
            item_embeddings.shape[0])
    positive_logits = jnp.sum(hidden * item_embeddings[safe_targets], axis=-1)
    negative_logits = jnp.einsum("bld,blnd->bln", hidden, item_embeddings[negatives])
    negative_losses = -jax.nn.log_sigmoid(-negative_logits)
    if negative_where is not None:
        negative_losses = jnp.where(negative_where, negative_losses, 0.0)
    losses = -jax.nn.log_sigmoid(positive_logits) + jnp.sum(negative_losses, axis=-1)
    return _masked_mean(losses, mask)


def _shared_negatives(key: jax.Array, n_items: int, n_negatives: int,
                      item_probs: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """`n_negatives` items shared by a batch, uniform or in proportion to `item_probs`, and
    the log-probability of drawing each (`losses.sample_negatives`)."""
    return losses.sample_negatives(key, n_items, (n_negatives,), item_probs=item_probs)


def _candidate_logits(hidden, item_embeddings, targets, mask, key, n_negatives, negatives,
                      negative_where, item_probs=None):
    """The targets (0 where untrained), the negatives (given, or `n_negatives` shared ones
    drawn with `key` by `item_probs`), the positive's logit `[b, L]`, the negatives' `[b, L,
    n]` and which negatives drop out of each position (`[b, L, n]` bool: equal to its target,
    or `negative_where` False). `negatives`: `[n]` shared by the batch or `[b, n]` per row."""
    safe_targets = jnp.where(mask, targets, 0)
    if negatives is None:
        negatives, _ = _shared_negatives(key, item_embeddings.shape[0], n_negatives, item_probs)
    positive_logits = jnp.sum(hidden * item_embeddings[safe_targets], axis=-1)
    if negatives.ndim == 1:
        negative_logits = hidden @ item_embeddings[negatives].T
        dropped = negatives[None, None, :] == safe_targets[..., None]
    else:
        negative_logits = jnp.einsum("bld,bnd->bln", hidden, item_embeddings[negatives])
        dropped = negatives[:, None, :] == safe_targets[..., None]
        if negative_where is not None:
            dropped = dropped | ~negative_where[:, None, :]
    return safe_targets, negatives, positive_logits, negative_logits, dropped


def sampled_softmax_loss(
    hidden: jax.Array,
    item_embeddings: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    n_negatives: int = 100,
    negatives: jax.Array | None = None,
    negative_where: jax.Array | None = None,
    item_probs: jax.Array | None = None,
    logq: bool = False,
) -> jax.Array:
    """Softmax over the target and `n_negatives` negatives.

    By default the negatives are shared by the batch (`[n_negatives]`), drawn uniformly or,
    given `item_probs [n_items]`, in proportion to it (e.g. training popularity). Given
    `negatives` (`[n_negatives]` shared or `[b, n_negatives]` per row, e.g. redrawn away from
    the user's items), those are used, and `negative_where [b, n_negatives]` False drops one.
    A negative equal to a position's target is dropped from that position's softmax (an
    accidental hit), so with every item as a negative this is the full softmax.

    `logq`: the logQ correction (Bengio & Senecal 2008; Yi et al. 2019): every candidate's
    logit, the target's included, minus the log-probability of drawing it under `item_probs`,
    which makes the sampled softmax a consistent estimate of the full one under a non-uniform
    proposal. Under the uniform proposal it shifts every logit equally and changes nothing.

    Args:
        hidden: `[b, L, d]` encoder outputs.
        item_embeddings: `[n_items, d]` output table.
        targets: `[b, L]` int item ids.
        mask: `[b, L]` bool trained positions.
        key: draws the shared negatives (unused when `negatives` is given).
        n_negatives: negatives per batch (static).
        negatives: `[n_negatives]` or `[b, n_negatives]` item ids, or None.
        negative_where: `[b, n_negatives]` bool, or None.
        item_probs: `[n_items]` non-negative sampling weights (None: uniform).
        logq: subtract the log sampling probabilities (needs `item_probs`).

    Returns:
        `[]` mean loss over trained positions; forms `[b, L, 1 + n_negatives]` logits.
    """
    safe_targets, negatives, positive_logits, negative_logits, dropped = _candidate_logits(
        hidden, item_embeddings, targets, mask, key, n_negatives, negatives, negative_where,
        item_probs)
    positive_log_q = negative_log_q = None
    if logq and item_probs is not None:
        log_q = jnp.log(item_probs) - jnp.log(jnp.sum(item_probs))
        # an untrained position reads item 0, which may never be drawn (log q = -inf)
        positive_log_q = jnp.where(mask, log_q[safe_targets], 0.0)
        negative_log_q = log_q[negatives]
        if negatives.ndim == 2:
            negative_log_q = negative_log_q[:, None, :]
    per_position = losses.sampled_softmax_loss(
        positive_logits, negative_logits, negative_log_probs=negative_log_q,
        positive_log_probs=positive_log_q, remove_accidental_hits=dropped, reduce=False)
    return _masked_mean(per_position, mask)


def gbce_beta(n_negatives: int, n_items: int, t: float) -> float:
    """gSASRec's calibration power of the positive: `alpha (t (1 - 1/alpha) + 1/alpha)` with
    `alpha = n_negatives / (n_items - 1)`, the sampling rate of the negatives (Petrov &
    Macdonald, RecSys 2023, eq. 9), capped at 1 (as many negatives as other items); `t = 1`
    makes the sampled BCE calibrated like the full one, `t = 0` is plain BCE (beta = 1)."""
    alpha = min(n_negatives / max(n_items - 1, 1), 1.0)  # more negatives than items: 1
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce_loss(
    hidden: jax.Array,
    item_embeddings: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    n_negatives: int = 256,
    t: float = 0.75,
    negatives: jax.Array | None = None,
    negative_where: jax.Array | None = None,
) -> jax.Array:
    """gSASRec's generalised binary cross-entropy (Petrov & Macdonald, RecSys 2023):
    `-(log s(x+)^beta + sum_j log(1 - s(x-_j))) / (1 + k)` over the target and `k =
    n_negatives` negatives, `beta = gbce_beta(k, n_items, t)`. Written as `beta
    softplus(-x+) + sum_j softplus(x-_j)`, which is stable in float32. Like the reference
    implementation, the sum is divided by the `1 + k` candidates. Negatives as in
    `sampled_softmax_loss` (shared uniform by default; one equal to the target is dropped).

    Returns:
        `[]` mean loss over trained positions.
    """
    *_, positive_logits, negative_logits, dropped = _candidate_logits(
        hidden, item_embeddings, targets, mask, key, n_negatives, negatives, negative_where)
    beta = gbce_beta(n_negatives, item_embeddings.shape[0], t)
    negative_terms = jnp.where(dropped, 0.0, jax.nn.softplus(negative_logits))
    per_position = ((beta * jax.nn.softplus(-positive_logits) + jnp.sum(negative_terms, -1))
                    / (1 + n_negatives))
    return _masked_mean(per_position, mask)


def mask_items(
    key: jax.Array,
    sequences: jax.Array,
    *,
    mask_token: int,
    mask_prob: float = 0.2,
    last_item_prob: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """BERT4Rec's cloze corruption: hides random real items behind `[mask]`.

    Each non-padding position is masked with probability `mask_prob`. With probability
    `last_item_prob` a row instead has only its last item masked (the paper's extra samples
    that match inference, where `[mask]` follows the history).

    Args:
        key: draws the positions.
        sequences: `[b, L]` int32 tokens, left-padded, most recent last.
        mask_token: the `[mask]` token.
        mask_prob: probability of masking each real position.
        last_item_prob: probability that a row masks only its last position.

    Returns:
        `(inputs [b, L] tokens with [mask] substituted, targets [b, L] item ids (token - 1,
        0 where not masked), masked [b, L] bool)`.
    """
    position_key, row_key = jax.random.split(key)
    real = sequences != 0
    masked = real & jax.random.bernoulli(position_key, mask_prob, sequences.shape)
    last_only = jax.random.bernoulli(row_key, last_item_prob, sequences.shape[:1])
    last_column = jnp.zeros_like(real).at[:, -1].set(True) & real
    masked = jnp.where(last_only[:, None], last_column, masked)
    inputs = jnp.where(masked, mask_token, sequences)
    targets = jnp.where(masked, sequences - 1, 0)
    return inputs, targets, masked


def masked_item_loss(logits: jax.Array, targets: jax.Array, masked: jax.Array) -> jax.Array:
    """Cross-entropy over the catalogue at the masked positions (`mask_items`' outputs).

    Args:
        logits: `[b, L, n_items]` from the corrupted inputs.
        targets: `[b, L]` item ids of the hidden items.
        masked: `[b, L]` bool, True where an item was hidden.

    Returns:
        `[]` mean cross-entropy over masked positions.
    """
    return full_softmax_loss(logits, targets, masked)


Batch = dict[str, jax.Array]


def make_sequence_loss(
    graphdef: nnx.GraphDef,
    loss_name: str = "full_softmax",
    *,
    n_negatives: int = 100,
    mask_prob: float = 0.2,
    last_item_prob: float = 0.1,
    chunk_rows: int = 1024,
    logq: bool = False,
    gbce_t: float = 0.75,
    negatives_per_row: bool = False,
) -> Callable[[Any, Batch, jax.Array], jax.Array]:
    """Builds `loss(params, batch, key) -> []`, a pure function of the parameters.

    Batches: next-item losses read `inputs [b, L]` and `targets [b, L]` tokens
    (`data.sequences.training_windows`); `masked_item` reads `sequences [b, L]` tokens
    (`item_windows`) and masks them with the key. An optional `mask [b]` bool drops padded
    rows (a padded last batch). The key is split between dropout and sampling. With the
    shared seen-items data of `objectives.seen_items_data` (`shared_seen_mask` or
    `shared_seen_pairs`) and the window's user `users [b]` in the batch, the sampled losses
    redraw negatives the user has in training (`objectives.resample_seen`). The
    catalogue-wide losses (`full_softmax`, `masked_item`) go through `chunked_softmax_loss`
    (`chunk_rows` positions at a time), so a step never holds the `[b, L, n_items]` logits.
    With `shared_item_probs [n_items]` in the batch (training popularity), `sampled_softmax`
    draws its shared negatives in proportion to it, with the logQ correction when `logq`;
    `gbce` is `gbce_loss` with calibration `gbce_t`. `negatives_per_row`: `sampled_softmax`
    and `gbce` draw `n_negatives` for each row (shared by its positions) instead of one set
    for the batch, by the same proposal (negatives redrawn away from the user's items are
    always per row). With `shared_positions_per_batch []` in the batch (next-item losses), the
    loss is the sum over the batch's trained positions divided by it (the mean number of
    trained positions per batch of the epoch) instead of their mean, so every position of the
    epoch weighs the same whatever the length bucket of its batch.

    Raises:
        ValueError: unknown `loss_name`.
    """
    if loss_name not in LOSSES:
        raise ValueError(f"unknown sequence loss {loss_name!r}; expected one of {LOSSES}")

    def loss_fn(params: Any, batch: Batch, key: jax.Array) -> jax.Array:
        value = batch_mean_loss(params, batch, key)
        if "shared_positions_per_batch" not in batch:
            return value
        # uniform position weights: the batch's sum over the epoch's mean positions a batch
        if loss_name == "masked_item":
            raise ValueError("shared_positions_per_batch weighs next-item targets; "
                             "masked_item draws its positions per step")
        trained = batch["targets"] != 0
        if "mask" in batch:
            trained = trained & batch["mask"][:, None]
        return value * jnp.sum(trained) / batch["shared_positions_per_batch"]

    def batch_mean_loss(params: Any, batch: Batch, key: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, params)
        dropout_key, sample_key = jax.random.split(key)
        if loss_name == "masked_item":
            inputs, targets, trained = mask_items(
                sample_key, batch["sequences"], mask_token=model.mask_token,
                mask_prob=mask_prob, last_item_prob=last_item_prob,
            )
        else:
            inputs = batch["inputs"]
            targets = batch["targets"] - 1
            trained = batch["targets"] != 0
        if "mask" in batch:
            trained = trained & batch["mask"][:, None]
        hidden = model(inputs, key=dropout_key)
        item_embeddings = model.item_embeddings()
        if loss_name in ("full_softmax", "masked_item"):
            return chunked_softmax_loss(hidden, item_embeddings, targets, trained,
                                        chunk_rows=chunk_rows)
        negatives = negative_where = None
        if "shared_seen_mask" in batch or "shared_seen_pairs" in batch:
            negatives, negative_where = _unseen_negatives(
                sample_key, batch, targets, item_embeddings.shape[0], n_negatives,
                per_position=loss_name == "bce_one_negative")
        elif negatives_per_row and loss_name in ("sampled_softmax", "gbce"):
            negatives, _ = losses.sample_negatives(
                sample_key, item_embeddings.shape[0], (targets.shape[0], n_negatives),
                item_probs=batch.get("shared_item_probs"))
        if loss_name == "bce_one_negative":
            return bce_one_negative_loss(
                hidden, item_embeddings, targets, trained, sample_key, n_negatives=n_negatives,
                negatives=negatives, negative_where=negative_where)
        if loss_name == "gbce":
            return gbce_loss(hidden, item_embeddings, targets, trained, sample_key,
                             n_negatives=n_negatives, t=gbce_t, negatives=negatives,
                             negative_where=negative_where)
        return sampled_softmax_loss(
            hidden, item_embeddings, targets, trained, sample_key, n_negatives=n_negatives,
            negatives=negatives, negative_where=negative_where,
            item_probs=batch.get("shared_item_probs"), logq=logq,
        )

    return loss_fn


def _unseen_negatives(key: jax.Array, batch: Batch, targets: jax.Array, n_items: int,
                      n_negatives: int, *, per_position: bool) -> tuple[jax.Array, jax.Array]:
    """Uniform negatives redrawn away from each window's user's training items.

    Returns `(negatives, valid)`, `[b, L, n_negatives]` when `per_position` (bce), else
    `[b, n_negatives]` (sampled softmax: one set per row, shared by its positions).
    """
    batch_size, length = targets.shape
    per_row = length * n_negatives if per_position else n_negatives
    negatives = jax.random.randint(key, (batch_size, per_row), 0, n_items)
    negatives, valid = resample_seen(
        key, batch["users"], negatives, n_items, seen_mask=batch.get("shared_seen_mask"),
        seen_pairs=batch.get("shared_seen_pairs"))
    if per_position:
        shape = (batch_size, length, n_negatives)
        return negatives.reshape(shape), valid.reshape(shape)
    return negatives, valid


def make_sequence_objective(
    graphdef: nnx.GraphDef, loss_name: str = "full_softmax", **loss_options: Any
) -> Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]:
    """`loss_fn(params, batch, key) -> (loss, {"loss": loss})`: `make_sequence_loss` in the
    form of the training core's objectives (`train.step.make_train_step`).

    Args:
        graphdef: from `nnx.split(model, nnx.Param)`.
        loss_name: one of `LOSSES`.
        **loss_options: `n_negatives`, `mask_prob`, `last_item_prob`, `chunk_rows`,
            `logq`, `gbce_t`, `negatives_per_row`.
    """
    loss_fn = make_sequence_loss(graphdef, loss_name, **loss_options)

    def objective(params: Any, batch: Batch, key: jax.Array):
        loss = loss_fn(params, batch, key)
        return loss, {"loss": loss}

    return objective


def make_sequence_train_step(
    graphdef: nnx.GraphDef,
    loss_name: str,
    optimizer: optax.GradientTransformation,
    **loss_options: Any,
) -> Callable[[Any, Any, Batch, jax.Array], tuple[Any, Any, jax.Array]]:
    """Builds `step(params, opt_state, batch, key) -> (params, opt_state, loss)`, pure.

    `graphdef` comes from `nnx.split(model, nnx.Param)` (the sequence models hold only
    parameters). The step uses `key` as given: callers fold in the step number (DESIGN §1)
    and check the loss for NaN. `loss_options` go to `make_sequence_loss`.
    """
    loss_fn = make_sequence_loss(graphdef, loss_name, **loss_options)

    def step(params: Any, opt_state: Any, batch: Batch, key: jax.Array):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step
