r"""Next-item losses of a sequential model that learn from a slate log with confounded exposure.

A round is one user at one step, shown a slate `a_1..a_K` by a logging policy, with clicks
`C_k` and the logging policy's item-position propensities `pi_k(a) = P(a at slot k)`. A
sequential model reads the user's clicks before the round (never the round's own clicks) and
gives `log_probs = log softmax(scores)` over the catalogue, `l_i = -log_probs_i` the
cross-entropy of item `i` as the next click.

**The full-exposure loss.** Had item `i` been shown at slot `k` of the round, it would have
been clicked with probability `mu_{k,i} = E[C_k(i)]` (the potential outcome; in the simulator
`e_k sigmoid(v_i + c)`: examination times attraction). The loss of the full-exposure world is
the next-click cross-entropy every item would have earned at every logged slot::

    L_full = (1/N) sum_{rounds, slots k} sum_i mu_{k,i} l_i          N = number of slots

whose minimiser over a round's softmax ranks items by `sum_k mu_{k,i}`: by attraction alone.
The clicks of the log instead have `E[C_k 1(a_k = i)] = pi_k(i) mu_{k,i}`, so the plain
next-click loss ranks by exposure times attraction: the logging policy's confounding.

Estimators (each a composition of `causal.losses`, the functions tested for unbiasedness
over all cells; here a cell is (round, slot, item) and the observed cell of a slot is the item
shown there, with propensity `pi_k(a_k)`)::

    naive: sum C_k l_{a_k} / sum C_k                     (the plain next-click loss)
    ips:   (1/N) sum C_k l_{a_k} / pi_k(a_k)             (Horvitz–Thompson; Schnabel et al. 2016)
    snips: sum (C_k / pi_k) l_{a_k} / sum C_k / pi_k     (self-normalised; Swaminathan &
                                                          Joachims 2015)
    dr:    (1/N) sum_slots [ sum_i mu_hat l_i + (C_k - mu_hat) l_{a_k} / pi_k(a_k) ]

`ips` and `dr` are unbiased for `L_full` when the propensities are the true ones and every
item has `pi_k(i) > 0` (the log is conditionally unbiased round by round: a round's model
input is fixed by the rounds before it); `snips` estimates `L_full` divided by the mean
full-exposure clicks per slot (the same minimiser). `dr` is the doubly robust estimator of
Dudík, Langford & Li (ICML 2011) applied to the loss as in Wang et al., "Doubly Robust Joint
Learning for Recommendation on Data Missing Not at Random" (ICML 2019): the "error" of cell
(slot k, item i) is `C_k(i) l_i`, its imputation `mu_hat l_i` with a fixed imputed click
probability `mu_hat` (`causal.imputation_value`, default the IPS estimate of the mean
full-exposure click probability of an item at a slot). It is unbiased for any `mu_hat` given
true propensities, and for any propensities if `mu_hat = mu`; its all-item term is computed
exactly from the full softmax (no cells are sampled). Unlike naive and IPS it learns from
slots without a click (a shown, unclicked item's cross-entropy gets the negative weight
`-mu_hat / pi`), and like `rel_mf` its sample loss is not bounded below: the clip
(`causal.propensity_clip`), weight decay and early stopping keep training in range.

Propensities are clipped by THE clip (`causal.clip.clip_propensities`) inside the step, at the
traced `hparams["propensity_clip"]`; `imputation_value` is traced too (`CAUSAL_HPARAMS`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from causalrec_jax import streams
from causalrec_jax.causal import losses as causal_losses
from causalrec_jax.causal.clip import clip_propensities
from causalrec_jax.errors import ConfigError
from causalrec_jax.train.losses import reduce_losses

# The `causal.method`s a sequential model trains with on a slate log.
SEQUENTIAL_METHODS = ("naive", "ips", "snips", "dr")
# Those that divide by the logged propensities.
PROPENSITY_METHODS = ("ips", "snips", "dr")


def slot_losses(log_probs: jax.Array, slates: jax.Array) -> jax.Array:
    """`[..., K]` cross-entropy `-log_probs[a_k]` of each shown item as the next click.

    Args:
        log_probs: `[..., n_items]` log softmax of a round's scores.
        slates: `[..., K]` int item ids shown.
    """
    return -jnp.take_along_axis(log_probs, slates, axis=-1)


def exposure_loss(
    method: str,
    log_probs: jax.Array,
    slates: jax.Array,
    clicks: jax.Array,
    propensities: jax.Array,
    *,
    where: jax.Array,
    imputation_value: jax.typing.ArrayLike = 0.0,
) -> jax.Array:
    """The training loss of `method` (module docstring) over a batch of rounds.

    Args:
        method: one of `SEQUENTIAL_METHODS`.
        log_probs: `[b, R, n_items]` log softmax of each round's scores.
        slates: `[b, R, K]` int items shown.
        clicks: `[b, R, K]` 0/1 clicks.
        propensities: `[b, R, K]` `pi_k(a_k)`, already clipped (unused by naive).
        where: `[b, R, K]` bool, the slots that count (padding False).
        imputation_value: `mu_hat` of `dr` (may be traced).

    Returns:
        A scalar; 0 when nothing counts.
    """
    losses = slot_losses(log_probs, slates)
    clicks = clicks.astype(losses.dtype)
    if method == "naive":
        return causal_losses.naive_loss(losses, clicks, where=where)
    if method == "ips":
        return causal_losses.ips_loss(losses, clicks, propensities, where=where)
    if method == "snips":
        return causal_losses.snips_loss(losses, clicks, propensities, where=where)
    if method == "dr":
        imputed = jnp.asarray(imputation_value, losses.dtype)
        _, per_observed = causal_losses.dr_terms(
            clicks * losses, imputed * losses, where, propensities, where=where)
        # Every slot pays the imputed loss of every item: sum_i mu_hat l_i, exact.
        every_item = imputed * jnp.sum(-log_probs, axis=-1, keepdims=True)
        every_item = jnp.broadcast_to(every_item, losses.shape)
        return reduce_losses(every_item + per_observed, where=where, normalize="count")
    raise ConfigError(f"key causal.method: {method!r} does not train a sequential model; "
                      f"expected one of {', '.join(SEQUENTIAL_METHODS)}")


def full_exposure_loss(
    log_probs: jax.Array,
    click_probabilities: jax.Array,
    *,
    where: jax.Array,
) -> jax.Array:
    """`L_full`: the mean over slots of `sum_i mu_{k,i} l_i` (what ips and dr estimate).

    Args:
        log_probs: `[b, R, n_items]`.
        click_probabilities: `[b, R, K, n_items]` `mu_{k,i}`, P(click on item i had it been
            shown at slot k of the round) (simulator: `e_k * attraction_i`).
        where: `[b, R, K]` bool slots that count.
    """
    per_slot = jnp.einsum("brki,bri->brk", click_probabilities, -log_probs)
    return reduce_losses(per_slot, where=where, normalize="count")


def default_imputation(clicks, propensities, where, n_items: int) -> float:
    """`mu_hat` of `dr` when `causal.imputation_value` is unset: the IPS estimate of the mean
    P(click) of an item at a logged slot, `mean_slots C_k / (pi_k(a_k) n_items)`."""
    import numpy as np  # host-side, once per run

    clicks, propensities, where = (np.asarray(x) for x in (clicks, propensities, where))
    terms = np.where(where, clicks / np.where(where, propensities, 1.0), 0.0)
    return float(terms.sum() / max(where.sum(), 1) / n_items)


def round_log_probs(model: Any, inputs: jax.Array, query: jax.Array, *,
                    key: jax.Array | None = None) -> jax.Array:
    """`[b, R, n_items]` log softmax of the next click at each round of a row.

    Args:
        model: a sequential model (`model(tokens, key=) -> hidden [b, L, d]`,
            `model.logits(hidden) -> [..., n_items]`, the scores the model serves).
        inputs: `[b, L]` click tokens, left-padded.
        query: `[b, R]` the column of the last click before each round (any valid column
            for padding rounds).
        key: dropout key; None is deterministic.
    """
    hidden = model(inputs, key=key)
    queries = jnp.take_along_axis(hidden, query[..., None], axis=1)
    return jax.nn.log_softmax(model.logits(queries), axis=-1)


def make_exposure_objective(graphdef: nnx.GraphDef, method: str, defaults: dict[str, float]):
    """`loss_fn(params, batch, key, *, hparams=None) -> (loss, {"loss": loss})` of a sequential
    model trained with `method` on slate-log rows (`tasks.sequential.exposure_rows`).

    The batch holds `inputs [b, L]` tokens, `query [b, R]`, `slate`, `clicks`, `propensity`
    `[b, R, K]`, `round_mask [b, R]` and the padding `mask [b]`. Propensities are clipped at
    `hparams["propensity_clip"]` by THE clip; `dr` imputes `hparams["imputation_value"]`.
    `defaults` gives both when the state carries no `hparams`.
    """
    if method not in SEQUENTIAL_METHODS:
        raise ConfigError(f"key causal.method: {method!r} does not train a sequential model; "
                          f"expected one of {', '.join(SEQUENTIAL_METHODS)}")

    def loss_fn(params, batch, key, *, hparams=None):
        values = {name: jnp.asarray(value, jnp.float32) for name, value in defaults.items()}
        values.update(hparams or {})
        model = nnx.merge(graphdef, params)
        log_probs = round_log_probs(model, batch["inputs"], batch["query"],
                                    key=streams.derive(key, streams.Step.DROPOUT))
        where = batch["round_mask"] & batch["mask"][:, None]
        where = jnp.broadcast_to(where[..., None], batch["slate"].shape)
        propensities, _ = clip_propensities(batch["propensity"], values["propensity_clip"],
                                            where=where)
        loss = exposure_loss(method, log_probs, batch["slate"], batch["clicks"], propensities,
                             where=where, imputation_value=values["imputation_value"])
        return loss, {"loss": loss}

    return loss_fn
