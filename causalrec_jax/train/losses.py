"""Training losses for recommenders, as pure `jax.numpy` functions shaped like optax's losses.

Every loss takes two arrays positionally (what the model scored, what happened) and the same
keywords for the causal losses to plug into:

    loss(scores, targets, *, weights=None, where=None, normalize="count", reduce=True)

- `where` (bool, `[batch]`) marks the valid examples; padding rows are False. Masked entries
  contribute exactly 0 to the loss and 0 to every gradient (given finite padded inputs).
- `weights` (`[batch]`) multiply each example's loss: inverse propensities for IPS (Schnabel
  et al., "Recommendations as Treatments: Debiasing Learning and Evaluation", ICML 2016),
  self-normalised for SNIPS (Swaminathan & Joachims, "The Self-Normalized Estimator for
  Counterfactual Learning", NeurIPS 2015), imputation terms for doubly robust losses (Wang et
  al., "Doubly Robust Joint Learning for Recommendation on Data Missing Not at Random", ICML
  2019) — the causal losses pass their weights here instead of re-implementing the reduction.
- The reduction (`reduce_losses`) is one rule for all losses, with `l_i` the per-example loss,
  `w_i` the weight (1 when absent) and `m_i` the `where` mask:

      normalize="count":    sum_i m_i w_i l_i / sum_i m_i      (Horvitz–Thompson mean)
      normalize="weights":  sum_i m_i w_i l_i / sum_i m_i w_i  (self-normalised mean, SNIPS)

  The default normaliser is the number of valid entries, NOT the sum of weights: with IPS
  weights `w_i = o_i / p_i` over a population marked by `where` this is the unbiased
  Horvitz–Thompson estimate of the population mean (Horvitz & Thompson, JASA 1952). When a
  batch holds only observed entries, it differs from the estimate over all user–item pairs by
  the constant factor n_pairs / n_observed, which does not move the minimiser. A zero
  normaliser (everything masked, or all weights zero under "weights") gives a loss of 0 with
  zero, finite gradients — never NaN.
- `reduce=False` returns the per-example values `m_i w_i l_i` (`[batch]`, masked entries 0),
  e.g. for per-example gradient clipping in DP-SGD.

Losses:
- `mse_loss`: squared error on explicit ratings (Koren et al., "Matrix Factorization
  Techniques for Recommender Systems", Computer 2009).
- `binary_cross_entropy_loss`: logistic loss on implicit feedback / clicks (He et al., "Neural
  Collaborative Filtering", WWW 2017), numerically stable through `log_sigmoid`.
- `bpr_loss`: Bayesian personalised ranking, `-log sigmoid(s_pos - s_neg)` averaged over the
  negatives (Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI
  2009).
- `softmax_cross_entropy_loss`: full softmax over the catalogue (Covington et al., "Deep
  Neural Networks for YouTube Recommendations", RecSys 2016; the SASRec/BERT4Rec training
  objective in its full-softmax form).
- `sampled_softmax_loss`: softmax over the positive and sampled negatives, with the logQ
  correction `s - log q` (Bengio & Senécal, "Adaptive Importance Sampling to Accelerate
  Training of a Neural Probabilistic Language Model", IEEE TNN 2008; Yi et al.,
  "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations", RecSys
  2019).
- `sample_negatives`: negative item ids drawn on the device, uniformly or from `item_probs`,
  with their log-probabilities for the logQ correction.

Masked logits are set to a large negative *finite* value (half the dtype's lowest), not -inf,
so that `exp` underflows to 0 while gradients stay finite.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from causalrec_jax.errors import ConfigError

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Normalize = Literal["count", "weights"]

_NORMALIZERS = ("count", "weights")


def _masked_logit_value(dtype: jnp.dtype) -> Array:
    # Half the lowest finite value: exp(value - max) underflows to exactly 0 and `value - max`
    # cannot overflow to -inf for any max below half the largest float, so gradients of the
    # logsumexp stay finite (0 for masked entries).
    return jnp.asarray(jnp.finfo(dtype).min / 2, dtype)


def _float_dtype(*arrays: ArrayLike) -> jnp.dtype:
    dtype = jnp.result_type(*arrays)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def reduce_losses(
    losses: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    normalize: Normalize = "count",
    reduce: bool = True,
) -> Array:
    """The weighted, masked mean of per-example losses — the one reduction every loss uses.

    Args:
        losses: per-example losses, `[batch]` (any shape works; the mean is over all entries).
        weights: per-example weights broadcastable to `losses` (e.g. inverse propensities);
            None means 1. Weights of masked entries are ignored, even if inf or NaN.
        where: bool mask broadcastable to `losses`; False entries are left out. None keeps all.
        normalize: "count" divides by the number of valid entries (Horvitz–Thompson, unbiased
            with IPS weights); "weights" divides by the sum of valid weights (self-normalised,
            as SNIPS). Ignored when `reduce=False`.
        reduce: False returns the per-example values `where * weights * losses` instead.

    Returns:
        A scalar, or an array shaped like `losses` when `reduce=False`. A zero normaliser
        gives 0 (with zero gradients), never NaN.

    Raises:
        ValueError: `normalize` is not "count" or "weights".
    """
    if normalize not in _NORMALIZERS:
        raise ValueError(f"normalize must be one of {_NORMALIZERS}, got {normalize!r}")
    losses = jnp.asarray(losses)
    dtype = _float_dtype(losses)
    losses = losses.astype(dtype)
    if where is None:
        mask = jnp.ones(losses.shape, bool)
    else:
        mask = jnp.broadcast_to(jnp.asarray(where, bool), losses.shape)
    # Select, not multiply: a padded entry holding inf or NaN must not turn into NaN (0 * inf),
    # and `jnp.where` sends a zero cotangent to the branch it did not pick.
    safe_losses = jnp.where(mask, losses, 0)
    if weights is None:
        safe_weights = mask.astype(dtype)
    else:
        weights = jnp.broadcast_to(jnp.asarray(weights), losses.shape).astype(dtype)
        safe_weights = jnp.where(mask, weights, 0)
    weighted = safe_weights * safe_losses
    if not reduce:
        return weighted
    numerator = jnp.sum(weighted)
    if normalize == "count":
        denominator = jnp.sum(mask).astype(dtype)
    else:
        denominator = jnp.sum(safe_weights)
    # The numerator is 0 whenever the count is 0, so dividing by 1 there gives the promised 0;
    # `jnp.where` (not `maximum`) keeps fractional weight sums below 1 exact.
    safe_denominator = jnp.where(denominator == 0, jnp.ones_like(denominator), denominator)
    return numerator / safe_denominator


def mse_loss(
    predictions: ArrayLike,
    ratings: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    normalize: Normalize = "count",
    reduce: bool = True,
) -> Array:
    """Squared error `(prediction - rating)^2` on explicit ratings.

    Args:
        predictions: predicted ratings, `[batch]`.
        ratings: observed ratings, `[batch]`.
        weights: per-example weights, `[batch]` (e.g. inverse propensities); None means 1.
        where: bool `[batch]`, False for padding; None keeps all.
        normalize: "count" or "weights"; see `reduce_losses`.
        reduce: False returns the weighted per-example losses `[batch]`.

    Returns:
        The weighted mean squared error (a scalar), or `[batch]` when `reduce=False`.
    """
    predictions = jnp.asarray(predictions)
    dtype = _float_dtype(predictions, ratings)
    errors = predictions.astype(dtype) - jnp.asarray(ratings, dtype)
    return reduce_losses(
        jnp.square(errors), weights=weights, where=where, normalize=normalize, reduce=reduce
    )


def binary_cross_entropy_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    normalize: Normalize = "count",
    reduce: bool = True,
) -> Array:
    """Logistic loss `-y log sigmoid(x) - (1 - y) log sigmoid(-x)` on logits.

    Computed with `log_sigmoid` (through `optax.sigmoid_binary_cross_entropy`), so logits of
    any magnitude give a finite loss and finite gradients.

    Args:
        logits: scores before the sigmoid, `[batch]`.
        labels: targets in `[0, 1]` (clicks, or soft labels), `[batch]`.
        weights: per-example weights, `[batch]`; None means 1.
        where: bool `[batch]`, False for padding; None keeps all.
        normalize: "count" or "weights"; see `reduce_losses`.
        reduce: False returns the weighted per-example losses `[batch]`.

    Returns:
        The weighted mean cross entropy (a scalar), or `[batch]` when `reduce=False`.
    """
    logits = jnp.asarray(logits)
    dtype = _float_dtype(logits, labels)
    per_example = optax.sigmoid_binary_cross_entropy(
        logits.astype(dtype), jnp.asarray(labels, dtype)
    )
    return reduce_losses(
        per_example, weights=weights, where=where, normalize=normalize, reduce=reduce
    )


def bpr_loss(
    positive_scores: ArrayLike,
    negative_scores: ArrayLike,
    *,
    negative_where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    normalize: Normalize = "count",
    reduce: bool = True,
) -> Array:
    """Bayesian personalised ranking loss, `-log sigmoid(s_pos - s_neg)` (Rendle et al. 2009).

    Each example's loss is the mean over its (valid) negatives; the examples are then reduced
    with `reduce_losses`.

    Args:
        positive_scores: scores of the observed items, `[batch]`.
        negative_scores: scores of the sampled negatives, `[batch, n_negatives]` or `[batch]`
            (one negative each).
        negative_where: bool `[batch, n_negatives]`, False for negatives to leave out (padding,
            accidental hits); None keeps all. An example with no valid negative has loss 0.
        weights: per-example weights, `[batch]`; None means 1.
        where: bool `[batch]`, False for padding examples; None keeps all.
        normalize: "count" or "weights"; see `reduce_losses`.
        reduce: False returns the weighted per-example losses `[batch]`.

    Returns:
        The weighted mean BPR loss (a scalar), or `[batch]` when `reduce=False`.
    """
    positive_scores = jnp.asarray(positive_scores)
    negative_scores = jnp.asarray(negative_scores)
    dtype = _float_dtype(positive_scores, negative_scores)
    if negative_scores.ndim == positive_scores.ndim:
        negative_scores = negative_scores[..., None]
    differences = positive_scores.astype(dtype)[..., None] - negative_scores.astype(dtype)
    pair_losses = -jax.nn.log_sigmoid(differences)
    per_example = reduce_losses(
        pair_losses, where=negative_where, reduce=False
    ).sum(axis=-1)
    if negative_where is None:
        per_example = per_example / pair_losses.shape[-1]
    else:
        n_valid = jnp.broadcast_to(jnp.asarray(negative_where, bool), pair_losses.shape).sum(-1)
        per_example = per_example / jnp.maximum(n_valid, 1).astype(dtype)
    return reduce_losses(
        per_example, weights=weights, where=where, normalize=normalize, reduce=reduce
    )


def softmax_cross_entropy_loss(
    scores: ArrayLike,
    positives: ArrayLike,
    *,
    where_items: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    normalize: Normalize = "count",
    reduce: bool = True,
) -> Array:
    """Full softmax cross entropy over the catalogue, `-log softmax(scores)[positive]`.

    Args:
        scores: scores of every item, `[batch, n_items]`.
        positives: the positive item id of each example, int `[batch]`, in `0..n_items-1`.
            Ids outside that range are clipped, so padding rows may hold any id (e.g. -1)
            provided `where` masks them.
        where_items: bool `[batch, n_items]` (or `[n_items]`), False for items left out of the
            softmax (padding ids, items seen in training). The positive is always kept, even
            if `where_items` excludes it: excluding it would make the loss meaningless.
        weights: per-example weights, `[batch]`; None means 1.
        where: bool `[batch]`, False for padding examples; None keeps all.
        normalize: "count" or "weights"; see `reduce_losses`.
        reduce: False returns the weighted per-example losses `[batch]`.

    Returns:
        The weighted mean cross entropy (a scalar), or `[batch]` when `reduce=False`.
    """
    scores = jnp.asarray(scores)
    scores = scores.astype(_float_dtype(scores))
    n_items = scores.shape[-1]
    positives = jnp.clip(jnp.asarray(positives).astype(jnp.int32), 0, n_items - 1)
    if where_items is not None:
        is_positive = jax.nn.one_hot(positives, n_items, dtype=bool)
        keep = jnp.broadcast_to(jnp.asarray(where_items, bool), scores.shape) | is_positive
        scores = jnp.where(keep, scores, _masked_logit_value(scores.dtype))
    per_example = optax.softmax_cross_entropy_with_integer_labels(scores, positives)
    return reduce_losses(
        per_example, weights=weights, where=where, normalize=normalize, reduce=reduce
    )


def sampled_softmax_loss(
    positive_scores: ArrayLike,
    negative_scores: ArrayLike,
    *,
    negative_log_probs: ArrayLike | None = None,
    positive_log_probs: ArrayLike | None = None,
    remove_accidental_hits: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    normalize: Normalize = "count",
    reduce: bool = True,
) -> Array:
    """Softmax cross entropy over the positive and sampled negatives, with logQ correction.

    The candidates' logits are `[s_pos - log q_pos, s_neg_1 - log q_1, ...]` and the loss is
    `-log softmax(logits)[0]`. Subtracting the log sampling probability makes the sampled
    softmax a consistent estimate of the full softmax when negatives are drawn from `q`
    (Bengio & Senécal 2008; Yi et al. 2019). A uniform `q` shifts every corrected logit by the
    same constant and so changes nothing.

    Args:
        positive_scores: scores of the observed items, `[batch]`.
        negative_scores: scores of the sampled negatives, `[batch, n_negatives]`.
        negative_log_probs: log sampling probability of each negative, `[batch, n_negatives]`
            or `[n_negatives]` (as `sample_negatives` returns); None for no correction.
        positive_log_probs: log sampling probability of each positive, `[batch]`, for when the
            positives come from the same proposal (in-batch negatives); None leaves the
            positive's logit uncorrected.
        remove_accidental_hits: bool `[batch, n_negatives]`, True for sampled negatives that
            are in fact positives of the user; they are dropped from the softmax.
        weights: per-example weights, `[batch]`; None means 1.
        where: bool `[batch]`, False for padding examples; None keeps all.
        normalize: "count" or "weights"; see `reduce_losses`.
        reduce: False returns the weighted per-example losses `[batch]`.

    Returns:
        The weighted mean sampled softmax loss (a scalar), or `[batch]` when `reduce=False`.
    """
    positive_scores = jnp.asarray(positive_scores)
    negative_scores = jnp.asarray(negative_scores)
    dtype = _float_dtype(positive_scores, negative_scores)
    positive_logits = positive_scores.astype(dtype)
    negative_logits = negative_scores.astype(dtype)
    if positive_log_probs is not None:
        positive_logits = positive_logits - jnp.asarray(positive_log_probs, dtype)
    if negative_log_probs is not None:
        negative_logits = negative_logits - jnp.asarray(negative_log_probs, dtype)
    if remove_accidental_hits is not None:
        hits = jnp.broadcast_to(jnp.asarray(remove_accidental_hits, bool), negative_logits.shape)
        negative_logits = jnp.where(hits, _masked_logit_value(dtype), negative_logits)
    logits = jnp.concatenate([positive_logits[..., None], negative_logits], axis=-1)
    # The positive sits at index 0 of every row.
    per_example = jax.nn.logsumexp(logits, axis=-1) - positive_logits
    return reduce_losses(
        per_example, weights=weights, where=where, normalize=normalize, reduce=reduce
    )


def sample_negatives(
    key: Array,
    n_items: int,
    shape: Sequence[int],
    *,
    item_probs: ArrayLike | None = None,
    exclude: ArrayLike | None = None,
) -> tuple[Array, Array]:
    """Negative item ids drawn on the device, with replacement, and their log-probabilities.

    Items are drawn uniformly from `0..n_items-1`, or in proportion to `item_probs` (e.g.
    popularity^0.75). Accidental hits — a sampled negative that is in fact a positive of the
    user — are NOT removed unless `exclude` marks the user's positives (or the caller passes a
    mask to `sampled_softmax_loss(remove_accidental_hits=...)` / `bpr_loss(negative_where=...)`):
    with uniform sampling from a large catalogue they are rare and usually ignored.

    Args:
        key: a `jax.random` key.
        n_items: catalogue size (static).
        shape: output shape (static), e.g. `(batch, n_negatives)`.
        item_probs: nonnegative sampling weights, `[n_items]` or `[*lead, n_items]` with `lead`
            a prefix of `shape` (one distribution per row); normalised here. None is uniform.
        exclude: bool `[n_items]` or `[*lead, n_items]` (`lead` a prefix of `shape`), True for
            items never to draw (padding ids, a user's positives); the remaining probabilities
            are renormalised. Every row must keep an item of positive probability.

    Returns:
        `(items, log_probs)`: int32 ids and the log-probability under which each was drawn
        (float32), both shaped `shape`. `log_probs` fits `sampled_softmax_loss`'s
        `negative_log_probs`.
    """
    shape = tuple(int(size) for size in shape)
    if item_probs is None and exclude is None:
        items = jax.random.randint(key, shape, 0, n_items, dtype=jnp.int32)
        return items, jnp.full(shape, -math.log(n_items), jnp.float32)

    probs = jnp.ones((n_items,), jnp.float32)
    if item_probs is not None:
        probs = jnp.asarray(item_probs, jnp.float32)
    if exclude is not None:
        probs = jnp.where(jnp.asarray(exclude, bool), 0.0, probs)
    probs = jax.lax.stop_gradient(probs)
    if probs.shape[-1:] != (n_items,):
        raise ValueError(f"item_probs/exclude must end in n_items={n_items}, got {probs.shape}")
    lead = probs.shape[:-1]
    if shape[: len(lead)] != lead:
        raise ValueError(
            f"item_probs/exclude lead shape {lead} must be a prefix of the sample shape {shape}"
        )
    n_rows = math.prod(lead)
    per_row = math.prod(shape[len(lead) :])
    rows = probs.reshape(n_rows, n_items)

    # Inverse-CDF sampling: O(n_items) memory per row, unlike Gumbel-max (`categorical`), which
    # would draw `n_items` noises per sample.
    cdf = jnp.cumsum(rows, axis=-1)
    totals = cdf[:, -1:]
    uniforms = jax.random.uniform(key, (n_rows, per_row), jnp.float32) * totals
    # side="right" returns the first item whose cdf exceeds u, so zero-probability items (a
    # flat step of the cdf) are never returned.
    items = jax.vmap(lambda row_cdf, row_u: jnp.searchsorted(row_cdf, row_u, side="right"))(
        cdf, uniforms
    )
    # `u * total` can round up to `total`; fall back to the last item that can be drawn.
    last_drawable = n_items - 1 - jnp.argmax(rows[:, ::-1] > 0, axis=-1)
    items = jnp.minimum(items, last_drawable[:, None]).astype(jnp.int32)
    log_probs = jnp.log(jnp.take_along_axis(rows, items, axis=-1)) - jnp.log(totals)
    return items.reshape(shape), log_probs.reshape(shape)


LossFunction = Callable[..., Array]

LOSSES: dict[str, LossFunction] = {
    "mse": mse_loss,
    "bce": binary_cross_entropy_loss,
    "bpr": bpr_loss,
    "softmax": softmax_cross_entropy_loss,
    "sampled_softmax": sampled_softmax_loss,
}


def get_loss(name: str) -> LossFunction:
    """The loss registered under `name` (the config's `train.loss`).

    Raises:
        ConfigError: `name` is not a registered loss; the message lists the valid names and
            the closest one.
    """
    if name in LOSSES:
        return LOSSES[name]
    valid = ", ".join(sorted(LOSSES))
    message = f"train.loss: unknown loss {name!r}; expected one of {valid}"
    close = difflib.get_close_matches(str(name), list(LOSSES), n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    raise ConfigError(message)
