"""Counterfactual deletion: a model's scores for one user after some past interactions are gone.

A counterfactual explanation of a recommendation asks what the model would have recommended
had the user not interacted with some items (PRINCE: Ghazimatin, Balalau, Saha Roy & Weikum,
WSDM 2020; ACCENT: Tran, Ghazimatin & Saha Roy, SIGIR 2021; CountER: Tan, Xu, Geng, Fu, Li &
Zhang, CIKM 2021). What "not interacted" means depends on how a model reads a history, so
deletion is defined here per model, always as a pure function

    score_fn(data, keep [H] float32) -> scores [n_items] float32

of the user's padded history (`H` positions; `keep` is 1 for a kept interaction, 0 for a
deleted one, and is ignored at padding), which `jax.vmap` runs over many deletion masks at once.
`data` is a pytree of arrays (traced), `score_fn` a hashable frozen dataclass (static), so one
compiled program serves every user of a run whose history has the same padded length.

- Sequential models (SASRec, BERT4Rec: `SequenceDeletion`) read the history itself. A deleted
  item is dropped and the older items shift towards the present (left padding grows): the model
  then sees exactly the sequence the user would have had. A pad token left in place would be
  equivalent for SASRec at every position but the last (its positions count real items and its
  attention masks padding keys), but the score is read at the last column, so deleting the most
  recent item in place would read the output of a padding token; drop-and-shift has no such
  case and means the same for BERT4Rec.
- ID-embedding models (MF, MLP, NeuMF: `RefitDeletion`) hold a user vector fitted to the
  history: deleting history changes nothing until that vector is re-fitted on the edited
  history, with every item parameter frozen. The re-fit minimises the per-user share of the
  objective the run trained (`train.loss` with its L2, `RefitDeletion.objective`): in closed
  form for squared error on MF (ridge regression), else by Newton or chord steps, vmapped over
  masks. A score after a deletion is the served score plus the change from the full-history
  re-fit to the edited one, so nothing deleted gives exactly what the run serves and the
  optimisation error of training (early stopping, sampled negatives) cancels; for a converged
  run the full-history re-fit is the trained user (`tests/runs/test_explain_run.py`). With
  `residual = "shared"` that unreproduced part of the served score is instead shared evenly
  among the history's interactions, so deleting everything leaves the re-fit on nothing.
- LightGCN propagates the user's own neighbours into the user's final embedding, so a deletion
  acts twice: the user's layers 1..L are recomputed from the edited neighbour set (item layers
  and item degrees frozen: the deleted item's degree, and the user's share in its neighbours'
  item layers, are second-order and ignored), and the user's layer-0 embedding is re-fitted.

Influence functions (Koh & Liang, ICML 2017) give the first-order change of the re-fit
(`RefitDeletion.influence`), a baseline that `tests/explain` compares with exact re-fitting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree

from causalrec_jax.data.sequences import PAD
from causalrec_jax.models.base import SequenceModel
from causalrec_jax.models.bert4rec import BERT4Rec, append_mask_token
from causalrec_jax.models.lightgcn import LightGCN
from causalrec_jax.models.mf import MF
from causalrec_jax.models.mlp import MLP
from causalrec_jax.models.neumf import NeuMF

# The training losses whose per-user objective a re-fit reproduces (`train.loss`).
REFIT_LOSSES = ("mse", "bce", "bpr", "softmax", "sampled_softmax")
POINTWISE_REFIT_LOSSES = ("mse", "bce")

# Histories are padded to a multiple of this many positions (static shapes: users whose
# histories round to the same length share compiled programs).
HISTORY_MULTIPLE = 32

# The shortest history re-fitted by chord steps by default (BPR, softmax): a deletion from a
# long history moves the optimum little, and chord steps then converge fast; a short history
# is cheap to re-fit by Newton steps.
CHORD_MIN_HISTORY = 64

# Deletion masks per vmapped batch for the re-fits that sum over the catalogue (measured on
# MF-BPR, 200 history items padded to 224, 1,682 items: 0.23 s for all 224 masks at once,
# 0.065 s in batches of 8, 0.11 s in batches of 16: a batch's pairs must stay in cache).
CATALOGUE_CHUNK = 8

# Halvings of a Newton step before giving it up (`_backtrack`).
_HALVINGS = 12

# Levenberg damping of a Newton step, relative to the curvature's mean diagonal. BPR and
# softmax do not see a user bias (it shifts every score alike), so without L2 their curvature
# is singular along it and float32 rounding can make that direction an ascent, which the line
# search then refuses whole; the damping keeps every direction a descent and changes a
# well-conditioned step by about this fraction.
_DAMPING = 1e-5

# The widest span of a user's scores `pair_sigmoid` computes exactly (exponents within +-80).
PAIR_SPAN = 160.0


@dataclasses.dataclass(frozen=True)
class DeletionModel:
    """One user's model under counterfactual deletion: what `explain` searches over.

    Attributes:
        score_fn: `(data, keep [H] float32) -> scores [n_items]`: the model's scores of every
            item after deleting the positions where `keep` is 0; pure, jit- and vmap-able,
            hashable (a static argument of the compiled searches).
        data: the arrays `score_fn` reads (a pytree).
        history: `[H]` int item indices of the user's past interactions, -1 at padding.
        semantics: one sentence saying what deleting means for this model.
        relaxed_fn: `(data, weights [H] float32) -> scores [n_items]`, differentiable in
            `weights` and equal to the model at weights 1: the path of integrated gradients.
        influence_fn: None, or `(data, target) -> [H]`: the first-order (influence-function)
            estimate of the change of the target's score when deleting each position.
        item_vectors: `[n_items, d]` item embeddings (the most-similar-item baseline), or None.
        item_counts: `[n_items]` training interactions per item (most-popular-first), or None.
        n_items: the size of the catalogue scored.
        chunk_size: deletion masks per vmapped batch the searches use by default (None: all
            at once); a re-fit whose objective sums over the catalogue (BPR, softmax) holds a
            `[H, n_items]` array per mask, and batches of a few masks keep it in cache.
        feature_names: names of the user's feature columns (`feature_effects`), or None.
        item_feature_names: names of the item feature columns (`item_feature_effects`), or
            None.
    """

    score_fn: Callable[[Any, jax.Array], jax.Array]
    data: Any
    history: np.ndarray
    semantics: str
    n_items: int
    relaxed_fn: Callable[[Any, jax.Array], jax.Array] | None = None
    influence_fn: Callable[[Any, jax.Array], jax.Array] | None = None
    item_vectors: np.ndarray | None = None
    item_counts: np.ndarray | None = None
    chunk_size: int | None = None
    feature_names: tuple[str, ...] | None = None
    item_feature_names: tuple[str, ...] | None = None

    @property
    def valid(self) -> np.ndarray:
        """`[H]` bool: the positions that hold a past interaction."""
        return self.history >= 0

    def scores(self, keep: Any | None = None) -> np.ndarray:
        """`[n_items]` scores with the positions where `keep` is 0 deleted (None: none)."""
        keep = self.valid if keep is None else np.asarray(keep)
        return np.asarray(_score_once(self.score_fn, self.data, jnp.asarray(keep, jnp.float32)))


def _score_once_impl(score_fn, data, keep):
    return score_fn(data, keep)


_score_once = jax.jit(_score_once_impl, static_argnums=0)


def keep_without(history: np.ndarray, items: Any) -> np.ndarray:
    """`[H]` float32 keep mask deleting every position of `history` that holds one of `items`.

    An item that is not in the history deletes nothing: the mask is then all valid positions.
    """
    history = np.asarray(history)
    return ((history >= 0) & ~np.isin(history, np.asarray(items))).astype(np.float32)


def padded_length(n: int, multiple: int = HISTORY_MULTIPLE) -> int:
    """`n` rounded up to a multiple of `multiple` (at least `multiple`)."""
    return max(multiple, -(-n // multiple) * multiple)


def _pad(values: np.ndarray, length: int, fill) -> np.ndarray:
    values = np.asarray(values)
    out = np.full((length, *values.shape[1:]), fill, values.dtype)
    out[: len(values)] = values
    return out


# ----------------------------------------------------------------------------- sequential


def compact_history(tokens: jax.Array, keep: jax.Array) -> jax.Array:
    """Drops deleted tokens and shifts the older ones towards the end (drop and shift).

    Args:
        tokens: `[H]` int32 tokens, left-padded with `PAD` (0), most recent last.
        keep: `[H]` float or bool; tokens where it is below 0.5 are deleted.

    Returns:
        `[H]` int32: the kept tokens in their order, right-aligned, left-padded with `PAD`.
    """
    kept = jnp.where((keep > 0.5) & (tokens != PAD), tokens, PAD)
    order = jnp.argsort(kept != PAD, stable=True)  # padding first, kept tokens in order
    return kept[order]


@dataclasses.dataclass(frozen=True)
class BoundMethod:
    """`owner.name(*args)`, equal to (and hashing as) any other `BoundMethod` of an equal owner.

    A Python bound method equals another only when bound to the same object, so a jitted
    function that takes `relaxed_fn` or `influence_fn` as a static argument would compile again
    for every user's model; the scorers are frozen dataclasses compared by value, and this
    keeps that equality."""

    owner: Any
    name: str

    def __call__(self, *args: Any) -> Any:
        return getattr(self.owner, self.name)(*args)


@dataclasses.dataclass(frozen=True)
class SequenceDeletion:
    """`score_fn` of a sequential model (SASRec, BERT4Rec): the scores of the next item after
    the edited history, dropped and shifted (`compact_history`), its last `max_len` tokens.

    `data`: `{"params": the model's nnx.Param state, "tokens": [H] int32}`.
    """

    graphdef: Any
    max_len: int

    def __call__(self, data: Any, keep: jax.Array) -> jax.Array:
        model = nnx.merge(self.graphdef, data["params"])
        sequence = compact_history(data["tokens"], keep)[-self.max_len:]
        return model.score_next(sequence[None])[0]

    def relaxed(self, data: Any, weights: jax.Array) -> jax.Array:
        """Scores with each history token's item embedding scaled by `weights` (nothing
        dropped): 1 is the model, 0 leaves only the token's position embedding."""
        model = nnx.merge(self.graphdef, data["params"])
        tokens = data["tokens"][-self.max_len:][None]
        weights = weights[-self.max_len:][None].astype(jnp.float32)
        if isinstance(model, BERT4Rec):
            tokens = append_mask_token(tokens, model.mask_token)
            weights = jnp.concatenate([weights[:, 1:], jnp.ones((1, 1), jnp.float32)], axis=1)
        hidden = model(tokens, token_weights=weights)
        return model.logits(hidden[:, -1])[0]


SEQUENCE_SEMANTICS = (
    "drop and shift: a deleted item is removed from the sequence and older items move one "
    "step towards the present, so the model reads the history the user would have had")


def make_history_model(
    graphdef: nnx.GraphDef, params: Any, tokens: Any, *, item_counts: Any = None,
) -> DeletionModel:
    """The `DeletionModel` of a sequential model for one user's history.

    Args:
        graphdef: the model's structure (`nnx.split(model, nnx.Param)`).
        params: its parameters (one seed).
        tokens: `[H]` int tokens of the user's history (`data.sequences`: item i is token
            i + 1, 0 is padding), left-padded, most recent last; H may exceed the model's
            `max_len` (then a deletion lets an older item into the window, as it would).
        item_counts: `[n_items]` training counts (the most-popular-first baseline), or None.

    Returns:
        A `DeletionModel` whose `history` is the item index of each token (-1 at padding).
    """
    model = nnx.merge(graphdef, params)
    if not isinstance(model, SequenceModel):
        raise ValueError(f"make_history_model needs SASRec, BERT4Rec or HSTU, got "
                         f"{type(model).__name__}")
    tokens = np.asarray(tokens, np.int32)
    scorer = SequenceDeletion(graphdef, model.max_len)
    return DeletionModel(
        score_fn=scorer, data={"params": params, "tokens": jnp.asarray(tokens)},
        history=tokens.astype(np.int64) - 1, semantics=SEQUENCE_SEMANTICS,
        n_items=model.n_items,
        relaxed_fn=BoundMethod(scorer, "relaxed"),
        item_vectors=np.asarray(model.item_embeddings()),
        item_counts=None if item_counts is None else np.asarray(item_counts),
    )


# ----------------------------------------------------------------------------- re-fitting


# Models whose scores are affine in the user's parameters: their score Jacobian is a constant
# (`data["jacobian"]`), the Newton step is exact curvature, and squared error has a closed form.
AFFINE_KINDS = ("mf", "lightgcn")


@dataclasses.dataclass(frozen=True)
class RefitDeletion:
    """`score_fn` of an ID-embedding model: the user's parameters re-fitted on the edited
    history (items frozen), starting from the full-history fit.

    Attributes:
        kind: `mf`, `mlp`, `neumf` or `lightgcn`.
        graphdef: the model's structure (`nnx.split(model)`; None for lightgcn, whose
            propagated arrays are in `data`).
        loss: the run's `train.loss` (`REFIT_LOSSES`).
        exclude_seen: BPR's negatives exclude the user's (kept) history, as training with
            `train.exclude_seen_negatives` does; otherwise every item is a negative.
        n_steps: steps per deletion mask (squared error on MF and LightGCN: solved exactly,
            whatever `n_steps`).
        solver: `newton`: each step recomputes the curvature at the iterate; `chord`: every
            step reuses the full-history curvature (`data["curvature_start"]`), so a step
            costs one gradient (the right choice for BPR and softmax, whose curvature sums
            over the whole catalogue); a deletion moves the optimum little, so chord steps
            from the full-history fit converge fast.
        residual: what becomes of the part of the served score the full-history re-fit does
            not reproduce (`served - refit(full)`: early stopping, sampled negatives). `kept`:
            it stays whole whatever is deleted (the score moves by the difference of two
            re-fits); `shared`: it is shared evenly among the history's interactions, so a
            deletion removes its share, and deleting the whole history leaves the re-fit on
            nothing, as retraining a user with no interactions would. Equal with nothing
            deleted.

    `data` holds `model` (the model's state; lightgcn: `item_final [n_items, d]` and
    `history_layers [L, H, d]`), `items [H]`, `ratings [H]`, `valid [H]`, `pool_base
    [n_items]` (1 for items outside the user's training items), `l2`, `theta_start` (the
    full-history fit), `theta_trained` (the run's), `served [n_items]` and `refit_scores
    [n_items]` (the scores of the trained and of the re-fitted user), `jacobian [n_items, p]`
    (affine kinds), `curvature_start [p, p]` (its lower Cholesky factor, for the chord
    solver) and, for mlp and neumf with user features, `user_features [d_u]`.
    """

    kind: str
    graphdef: Any
    loss: str
    exclude_seen: bool = True
    n_steps: int = 2
    solver: str = "newton"
    residual: str = "kept"

    def __post_init__(self):
        if self.residual not in RESIDUALS:
            raise ValueError(f"residual {self.residual!r}: expected one of "
                             f"{', '.join(RESIDUALS)}")

    # ------------------------------------------------------------------- the user's scores

    def model_scores(self, data: Any, theta: Any, weights: jax.Array,
                     items: jax.Array | None = None) -> jax.Array:
        """Scores of `items [m]` (None: every item) computed by the model's formula for the
        user parameters `theta`; `weights [H]` (the kept history) matter only to LightGCN's
        propagation. Returns `[m]`."""
        if self.kind == "lightgcn":
            table = data["item_final"]
            valid_weights = weights * data["valid"]
            total = jnp.sum(valid_weights)
            scale = jnp.where(total > 0, 1.0 / jnp.sqrt(jnp.where(total > 0, total, 1.0)), 0.0)
            propagated = jnp.einsum("h,lhd->d", valid_weights, data["history_layers"]) * scale
            user = (theta["embedding"] + propagated) / (data["history_layers"].shape[0] + 1)
            rows = table if items is None else table[items]
            return rows @ user
        model = nnx.merge(self.graphdef, data["model"])
        if self.kind == "mf":
            if items is None:
                return (model.global_bias[...] + theta["bias"] + model.item_bias[...]
                        + model.item_factors[...] @ theta["factors"])
            return (model.global_bias[...] + theta["bias"] + model.item_bias[...][items]
                    + model.item_factors[...][items] @ theta["factors"])
        if items is None:
            items = jnp.arange(model.n_items)
        features = data.get("user_features")
        if self.kind == "mlp":
            user = _with_row(theta["embedding"], features)
            hidden = model.tower(user, model.item_inputs(items))
            return model.output(hidden)[..., 0]
        # neumf
        gmf = theta["gmf"] * model.gmf_item_embedding[...][items]
        item_inputs = model.mlp_item_embedding[...][items]
        if model.item_features is not None:
            item_inputs = jnp.concatenate([item_inputs, model.item_features[...][items]], -1)
        hidden = model.tower(_with_row(theta["mlp"], features), item_inputs)
        return model.output(jnp.concatenate([gmf, hidden], axis=-1))[..., 0]

    def user_scores(self, data: Any, theta: Any, weights: jax.Array,
                    items: jax.Array | None = None) -> jax.Array:
        """As `model_scores`; for the affine kinds as `offset + jacobian @ theta` (equal, and
        cheaper: the offset is the score at theta = 0)."""
        if self.kind not in AFFINE_KINDS:
            return self.model_scores(data, theta, weights, items)
        flat, unravel = ravel_pytree(theta)
        offset = self.model_scores(data, unravel(jnp.zeros_like(flat)), weights, items)
        jacobian = data["jacobian"] if items is None else data["jacobian"][items]
        return offset + jacobian @ flat

    # ------------------------------------------------------------------- the objective

    def _pool(self, data: Any, weights: jax.Array) -> jax.Array:
        """`[n_items]` BPR's negative pool: 1 for items outside the kept history."""
        if not self.exclude_seen:
            return jnp.ones_like(data["pool_base"])
        valid = data["valid"].astype(jnp.float32)
        # an item is kept while any of its positions is; no clip: JAX splits the gradient of
        # a clip at its bound in half, which would halve the first-order (influence) effect
        kept = jnp.zeros_like(data["pool_base"]).at[data["items"]].max(weights * valid)
        in_history = jnp.zeros_like(data["pool_base"]).at[data["items"]].max(valid) > 0
        return jnp.where(in_history, 1.0 - kept, data["pool_base"])

    def objective(self, data: Any, theta: Any, weights: jax.Array) -> jax.Array:
        """The user's share of the training objective with the history weighted by `weights`.

        `sum_h w_h r_h loss_h(theta) + l2 / 2 * ||theta||^2` over the valid positions h
        (`r_h`: the row's weight in training, `data["row_weights"]`: 1, or the clipped inverse
        propensity of an IPS / SNIPS run), with
        `loss_h` the run's per-row loss: squared error or logistic loss on the row's rating
        or label (`mse`, `bce`); for `bpr` the exact expectation over the negatives training
        samples uniformly (every item outside the kept history with `exclude_seen`, so a
        deleted item becomes a negative, as it would be for a user who never had it; every
        item otherwise); for `softmax` and `sampled_softmax` the full softmax cross entropy
        (the limit the sampled one estimates).
        """
        weights = weights * data["valid"]
        items = data["items"]
        if self.loss in ("mse", "bce"):
            scores = self.user_scores(data, theta, weights, items)
            if self.loss == "mse":
                row_losses = jnp.square(scores - data["ratings"])
            else:
                row_losses = optax.sigmoid_binary_cross_entropy(scores, data["ratings"])
        else:
            all_scores = self.user_scores(data, theta, weights)
            positive = all_scores[items]
            if self.loss == "bpr":
                pool = self._pool(data, weights)
                pairs = jax.nn.softplus(all_scores[None, :] - positive[:, None])  # [H, n]
                row_losses = (pairs @ pool) / jnp.maximum(jnp.sum(pool), 1.0)
            else:
                row_losses = jax.nn.logsumexp(all_scores) - positive
        flat, _ = ravel_pytree(theta)
        return (jnp.sum(weights * data["row_weights"] * row_losses)
                + 0.5 * data["l2"] * jnp.sum(jnp.square(flat)))

    def gradient(self, data: Any, theta: Any, weights: jax.Array) -> jax.Array:
        """`[p]` the objective's gradient in the flattened `theta`. Automatic differentiation,
        except BPR on the affine kinds: there `J^T ds` with the score gradient `ds` written
        out, one sigmoid per (history, catalogue) pair instead of the three transcendental
        functions of differentiating softplus (the pairs are the whole cost of a step)."""
        flat, unravel = ravel_pytree(theta)
        if not (self.loss == "bpr" and self.kind in AFFINE_KINDS):
            return jax.grad(lambda f: self.objective(data, unravel(f), weights))(flat)
        weights = weights * data["valid"]
        items = data["items"]
        scores = self.user_scores(data, theta, weights)
        pool = self._pool(data, weights)
        # d/ds of sum_h w_h sum_j pool_j softplus(s_j - s_h) / |pool|. The weights enter by
        # two matrix-vector products with the unweighted pairs, not by scaling the [H, n]
        # matrix, which made XLA write a scaled copy per mask (with the other changes of that
        # release, LightGCN's explanation in bench/explain.py went from 1.61 s to 0.66 s)
        pair = pair_sigmoid(scores, items)  # [H, n]
        scaled = weights / jnp.maximum(jnp.sum(pool), 1.0)
        score_gradient = (pool * (scaled @ pair)).at[items].add(-(pair @ pool) * scaled)
        return data["jacobian"].T @ score_gradient + data["l2"] * flat

    def curvature(self, data: Any, theta: Any, weights: jax.Array) -> jax.Array:
        """`[p, p]` the objective's curvature in the flattened `theta`: `J^T (d^2 loss / d
        scores^2) J + l2 I` with `J` the score Jacobian. Exact for the affine kinds (MF,
        LightGCN); for MLP and NeuMF the generalised Gauss-Newton matrix (positive definite,
        so its Newton direction always descends; their ReLU objective is only piecewise
        smooth, so a re-fit may stop at a kink, where the gradient need not vanish). Written
        per loss in closed form: BPR's sum over history x catalogue pairs becomes two matrix
        products."""
        flat, unravel = ravel_pytree(theta)
        weights = weights * data["valid"]
        items = data["items"]
        if self.kind in AFFINE_KINDS:
            jacobian = data["jacobian"]
        else:
            scored = None if self.loss in ("mse", "bce") else jnp.arange(
                data["pool_base"].shape[0])
            jacobian = jax.jacfwd(lambda f: self.model_scores(
                data, unravel(f), weights, items if scored is None else scored))(flat)
        if self.loss in ("mse", "bce"):
            rows = jacobian if self.kind not in AFFINE_KINDS else jacobian[items]
            if self.loss == "mse":
                second = 2.0 * weights * data["row_weights"]
            else:
                probability = jax.nn.sigmoid(self.user_scores(data, theta, weights, items))
                second = weights * data["row_weights"] * probability * (1.0 - probability)
            curvature = (rows * second[:, None]).T @ rows
        else:
            scores = self.user_scores(data, theta, weights)
            rows = jacobian[items]
            if self.loss == "bpr":
                pool = self._pool(data, weights)
                sigma = pair_sigmoid(scores, items)  # sigmoid(s_j - s_h); s(1 - s) symmetric
                second = sigma * (1.0 - sigma)  # [H, n], unweighted (as in `gradient`)
                scaled = weights / jnp.maximum(jnp.sum(pool), 1.0)
                row_sums = (second @ pool) * scaled  # [H]
                column_sums = (scaled @ second) * pool  # [n]
                cross = (second @ (jacobian * pool[:, None])) * scaled[:, None]  # [H, p]
                curvature = ((rows * row_sums[:, None]).T @ rows
                             + (jacobian * column_sums[:, None]).T @ jacobian
                             - rows.T @ cross - cross.T @ rows)
            else:
                probability = jax.nn.softmax(scores)
                mean = jacobian.T @ probability
                curvature = jnp.sum(weights) * (
                    (jacobian * probability[:, None]).T @ jacobian - jnp.outer(mean, mean))
        return curvature + data["l2"] * jnp.eye(flat.shape[0])

    # ------------------------------------------------------------------- the re-fit

    def refit(self, data: Any, theta: Any, weights: jax.Array, n_steps: int,
              solver: str | None = None) -> Any:
        """`theta` after `n_steps` steps on `objective(data, ., weights)`.

        Squared error on an affine kind is solved in closed form (ridge regression). Otherwise
        each step solves `curvature d = gradient` (`solver`: the curvature at the iterate,
        with a backtracking line search, `_backtrack`; or the full-history one for `chord`,
        full steps). Differentiable in `weights` (integrated gradients).
        """
        solver = self.solver if solver is None else solver
        flat, unravel = ravel_pytree(theta)
        weights = weights * data["valid"]
        if self.loss == "mse" and self.kind in AFFINE_KINDS:
            offset = self.model_scores(data, unravel(jnp.zeros_like(flat)), weights,
                                       data["items"])
            rows = data["jacobian"][data["items"]]
            row_weights = weights * data["row_weights"]
            gram = (rows * row_weights[:, None]).T @ rows
            rhs = rows.T @ (row_weights * (data["ratings"] - offset))
            # the objective is sum w (s - r)^2: its minimiser solves (2 G + l2 I) x = 2 b
            system = 2.0 * gram + data["l2"] * jnp.eye(flat.shape[0])
            return unravel(jnp.linalg.solve(system, 2.0 * rhs))

        def value(flat):
            return self.objective(data, unravel(flat), weights)

        def step(flat, _):
            gradient = self.gradient(data, unravel(flat), weights)
            if solver == "chord":
                factor = (data["curvature_start"], True)
                return flat - jax.scipy.linalg.cho_solve(factor, gradient), None
            curvature = damped(self.curvature(data, unravel(flat), weights))
            direction = jnp.linalg.solve(curvature, gradient)
            return flat - _backtrack(value, flat, gradient, direction) * direction, None

        flat, _ = jax.lax.scan(step, flat, None, length=n_steps)
        return unravel(flat)

    def __call__(self, data: Any, keep: jax.Array) -> jax.Array:
        """The served scores plus the change the re-fit attributes to the deletion:
        `served + s(refit(keep)) - s(refit(full history))` (`residual = "kept"`). With
        nothing deleted it is what the run serves; the difference of two re-fits cancels
        training's own optimisation error (early stopping, sampled negatives), and a converged
        run has `refit(full)` at its trained user, where the two coincide. With `residual =
        "shared"`: `s(refit(keep)) + f (served - s(refit(full)))`, `f` the share of the
        history kept (the weights summed over the valid positions, divided by their count)."""
        weights = keep.astype(jnp.float32) * data["valid"]
        theta = self.refit(data, data["theta_start"], weights, self.n_steps)
        residual = data["served"] - data["refit_scores"]
        return self.user_scores(data, theta, weights) + self._share(data, weights) * residual

    def _share(self, data: Any, weights: jax.Array) -> jax.Array:
        """The fraction of the residual a history weighted by `weights` keeps (`residual`)."""
        if self.residual == "kept":
            return jnp.ones((), jnp.float32)
        valid = data["valid"].astype(jnp.float32)
        return jnp.sum(weights * valid) / jnp.maximum(jnp.sum(valid), 1.0)

    def relaxed(self, data: Any, weights: jax.Array) -> jax.Array:
        """The deletion model's scores (`__call__`) at continuous history weights (the path
        of integrated gradients): a weight of w counts the row's loss w times."""
        return self(data, weights)

    def influence(self, data: Any, target: jax.Array) -> jax.Array:
        """`[H]` first-order estimates of the change of the target's score when deleting each
        position (Koh & Liang 2017): with `J(theta, w)` the objective, `H` its Hessian in
        theta and `M = d grad_theta J / d w` at the full-history fit, deleting position h
        (`dw = -e_h`) moves theta by `H^-1 M e_h`, and the score by
        `grad_theta s . H^-1 M e_h - ds/dw_h` (the last term: LightGCN's propagation)."""
        flat, unravel = ravel_pytree(data["theta_start"])
        full = data["valid"].astype(jnp.float32)

        def gradient(flat, weights):
            return jax.grad(lambda f: self.objective(data, unravel(f), weights))(flat)

        def target_score(flat, weights):
            return self.user_scores(data, unravel(flat), weights, target[None])[0]

        hessian = self.curvature(data, unravel(flat), full)
        mixed = jax.jacfwd(gradient, argnums=1)(flat, full)  # [p, H]
        shift = jnp.linalg.solve(damped(hessian), mixed)
        through_theta = jax.grad(target_score)(flat, full) @ shift
        direct = jax.grad(target_score, argnums=1)(flat, full)
        change = through_theta - direct
        if self.residual == "shared":  # the residual's share: linear in the weights, exact
            residual = (data["served"] - data["refit_scores"])[target]
            change = change - jax.grad(lambda w: self._share(data, w))(full) * residual
        return change * data["valid"]

    def gradient_norm(self, data: Any, theta: Any, weights: jax.Array) -> jax.Array:
        """`||grad_theta objective||` at `theta` (a converged re-fit has it near 0)."""
        flat, unravel = ravel_pytree(theta)
        gradient = jax.grad(lambda f: self.objective(data, unravel(f), weights))(flat)
        return jnp.linalg.norm(gradient)


def damped(curvature: jax.Array) -> jax.Array:
    """`curvature + _DAMPING * mean diagonal * I`: what every solve with a user's curvature
    (Newton and chord steps, influence) inverts, so that a direction the loss cannot see
    (BPR's user bias without L2) neither turns a step into an ascent nor makes the Cholesky
    factor NaN."""
    size = curvature.shape[0]
    return curvature + _DAMPING * jnp.trace(curvature) / size * jnp.eye(size)


def pair_sigmoid(scores: jax.Array, items: jax.Array) -> jax.Array:
    """`[H, n]` `sigmoid(scores[j] - scores[items[h]])`, as `e_j / (e_j + e_h)` with
    `e = exp(scores - c)`, `c` the middle of the finite scores' range: n + H exponentials and
    a division per pair instead of a sigmoid per pair. Exact to float32
    rounding while the finite scores span at most `PAIR_SPAN` (every exponent within +-80);
    a wider span (only a diverged fit: sigmoids saturate at a span of 35) gives NaN
    everywhere, which every search reads as a deletion it cannot score, rather than wrong
    numbers. NaN or infinite scores give NaN in their column and row."""
    finite = jnp.isfinite(scores)
    top = jnp.max(jnp.where(finite, scores, -jnp.inf))
    bottom = jnp.min(jnp.where(finite, scores, jnp.inf))
    e = jnp.exp(jnp.where(finite, scores - 0.5 * (top + bottom), jnp.nan))
    pairs = e[None, :] / (e[None, :] + e[items][:, None])
    return jnp.where(top - bottom <= PAIR_SPAN, pairs, jnp.nan)


def _backtrack(value: Callable[[jax.Array], jax.Array], flat: jax.Array,
               gradient: jax.Array, direction: jax.Array) -> jax.Array:
    """The step size along `-direction` by backtracking: 1, halved until the objective falls
    by at least `1e-4 * t * gradient . direction` (Armijo; up to float32 rounding of the
    objective), 0 after `_HALVINGS` halvings (kinks of a ReLU network can need small steps)."""
    start = value(flat)
    slope = jnp.dot(gradient, direction)

    def too_long(state):
        size, count = state
        trial = value(flat - size * direction)
        # float32 slack: near the optimum a step changes the objective by less than its
        # rounding, and refusing it would stall the gradient far above zero
        slack = 1e-6 * jnp.abs(start)
        sufficient = jnp.isfinite(trial) & (trial <= start - 1e-4 * size * slope + slack)
        return ~sufficient & (count < _HALVINGS)

    size, count = jax.lax.while_loop(too_long, lambda s: (s[0] * 0.5, s[1] + 1),
                                     (jnp.ones((), flat.dtype), jnp.zeros((), jnp.int32)))
    return jnp.where((count < _HALVINGS) & (slope > 0), size, 0.0)


def _with_row(vector: jax.Array, features: jax.Array | None) -> jax.Array:
    return vector if features is None else jnp.concatenate([vector, features])


def model_kind(model: nnx.Module) -> str:
    """`mf`, `mlp`, `neumf` or `lightgcn` for a model a re-fit supports.

    Raises:
        ValueError: any other model, naming it.
    """
    for kind, model_class in (("neumf", NeuMF), ("mlp", MLP), ("mf", MF),
                              ("lightgcn", LightGCN)):
        if isinstance(model, model_class):
            return kind
    raise ValueError(f"{type(model).__name__} holds no user representation to re-fit "
                     "(re-fitting covers MF, MLP, NeuMF and LightGCN)")


REFIT_SEMANTICS = {
    "mf": "re-fit: the user's factors and bias are fitted again on the edited history with "
          "every item parameter frozen ({loss}, L2 {l2}; closed form for mse)",
    "mlp": "re-fit: the user's embedding is fitted again on the edited history with the "
           "network and items frozen ({loss}, L2 {l2}; damped Newton steps)",
    "neumf": "re-fit: the user's GMF and MLP embeddings are fitted again on the edited history "
             "with the network and items frozen ({loss}, L2 {l2}; damped Newton steps)",
    "lightgcn": "propagate and re-fit: the user's layers 1..L are recomputed from the edited "
                "neighbours (item layers frozen) and the user's layer-0 embedding is fitted "
                "again ({loss}, L2 {l2}; damped Newton steps)",
}
# Appended to every re-fit's semantics (`RefitDeletion.__call__`).
ANCHORED = ("; a score after a deletion is the served score plus the change from the re-fit "
            "on the full history to the re-fit on the edited one")
SHARED = ("; a score after a deletion is the re-fit on the edited history plus what the "
          "served score adds to the full-history re-fit, shared evenly among the history's "
          "interactions (all of it with nothing deleted, none with everything deleted)")
# `make_refit_model(residual=)`: the part of the served score a re-fit does not reproduce.
RESIDUALS = {"kept": ANCHORED, "shared": SHARED}


def _user_theta(model: nnx.Module, kind: str, user: int) -> dict[str, jax.Array]:
    """The trained parameters of `user`: what a re-fit changes."""
    if kind == "mf":
        return {"factors": model.user_factors[...][user], "bias": model.user_bias[...][user]}
    if kind == "mlp":
        return {"embedding": model.user_embedding[...][user]}
    if kind == "neumf":
        return {"gmf": model.gmf_user_embedding[...][user],
                "mlp": model.mlp_user_embedding[...][user]}
    return {"embedding": model.user_embedding[...][user]}


def _item_vectors(model: nnx.Module, kind: str) -> np.ndarray:
    if kind == "mf":
        return np.asarray(model.item_factors[...])
    if kind == "mlp":
        return np.asarray(model.item_embedding[...])
    if kind == "neumf":
        return np.concatenate([np.asarray(model.gmf_item_embedding[...]),
                               np.asarray(model.mlp_item_embedding[...])], axis=1)
    return np.asarray(model.propagate()[1])


def _lightgcn_arrays(model: LightGCN, items: np.ndarray) -> dict[str, jax.Array]:
    """`item_final [n_items, d]` and `history_layers [L, H, d]`: layer k of each history
    item divided by the square root of its degree (what it sends to the user in layer k+1)."""
    _, item_layers = model.layer_embeddings()
    degree = np.bincount(np.asarray(model.edge_items[...]), minlength=model.n_items)
    inverse_root = 1.0 / np.sqrt(np.maximum(degree[items], 1))
    layers = [np.asarray(layer)[items] * inverse_root[:, None] for layer in item_layers[:-1]]
    dim = item_layers[0].shape[1]
    stacked = np.stack(layers) if layers else np.zeros((0, len(items), dim), np.float32)
    return {"item_final": model.propagate()[1],
            "history_layers": jnp.asarray(stacked, jnp.float32)}


def make_refit_model(
    model: nnx.Module,
    *,
    user: int,
    items: Any,
    ratings: Any = None,
    loss: str,
    l2: float,
    seen_items: Any = None,
    exclude_seen: bool = True,
    n_steps: int = 2,
    base_steps: int = 8,
    solver: str | None = None,
    item_counts: Any = None,
    user_features: Any = None,
    feature_names: Any = None,
    item_feature_names: Any = None,
    pad_to: int | None = None,
    row_weights: Any = None,
    calibrate: bool = False,
    residual: str = "kept",
) -> DeletionModel:
    """The `DeletionModel` of an ID-embedding model (MF, MLP, NeuMF, LightGCN) for one user.

    The user's parameters are first re-fitted on the full history (`base_steps` Newton steps
    from the trained values, stored as `data["theta_start"]`); each deletion mask then takes
    `n_steps` more from there. Effects are differences between two re-fits, so training's own
    optimisation error cancels.

    Args:
        model: the trained model (one seed), e.g. `nnx.merge(graphdef, params, constants)`.
        user: the user's row.
        items: `[m]` int item indices of the user's training rows (the rows of the loss:
            every rated row for mse / bce, the positives for ranking losses).
        ratings: `[m]` their ratings (mse) or 0/1 labels (bce); None: all ones.
        loss: the run's `train.loss` (`REFIT_LOSSES`).
        l2: the L2 coefficient of the per-user objective (`l2 / 2 * ||theta||^2`): the run's
            weight decay times its rows per epoch (`runs.explain`); must be > 0 for a unique
            re-fit when the history is shorter than the user vector.
        seen_items: the user's training items outside the history too (excluded from BPR's
            negatives with `exclude_seen`); None: the history.
        exclude_seen: as `train.exclude_seen_negatives`.
        n_steps: steps per deletion mask (`RefitDeletion`).
        base_steps: Newton steps of the full-history fit.
        solver: `newton` or `chord` (`RefitDeletion`); None: chord for the losses that sum
            over the catalogue (bpr, softmax) on histories of `CHORD_MIN_HISTORY` items or
            more, Newton otherwise.
        item_counts: `[n_items]` training counts (the most-popular-first baseline), or None.
        user_features: the user's feature row `[d_u]` (mlp, neumf with user features;
            None: the model's row of `user`).
        feature_names: the names of those columns, or None.
        item_feature_names: the names of the model's item feature columns, or None.
        pad_to: history length H (at least `m`); None rounds `m` up (`padded_length`).
        row_weights: `[m]` each row's weight in the training loss (an IPS or SNIPS run: the
            clipped inverse propensity, `runs.explain`); None: 1. Pointwise losses only.
        calibrate: replace `l2` by the L2 at least `l2` whose full-history re-fit lands
            nearest the trained user (`calibrate_l2`): training that stops early regularises
            more than its weight decay says, and a run without weight decay leaves a BPR or
            softmax objective with no finite minimum. `data["fit_distance"]` holds the
            relative distance of the full-history re-fit from the trained user either way.
        residual: `kept` or `shared` (`RefitDeletion.residual`): whether the part of the
            served score the full-history re-fit does not reproduce survives every deletion
            or is shared among the history's interactions.

    Raises:
        ValueError: an unknown loss or residual, a model without user vectors, `l2` < 0.
    """
    if loss not in REFIT_LOSSES:
        raise ValueError(f"loss {loss!r}: a re-fit reproduces one of {', '.join(REFIT_LOSSES)}")
    if l2 < 0:
        raise ValueError(f"l2 = {l2}: expected >= 0")
    kind = model_kind(model)
    items = np.asarray(items, np.int64)
    length = padded_length(len(items)) if pad_to is None else int(pad_to)
    if length < len(items):
        raise ValueError(f"pad_to = {pad_to} is shorter than the history ({len(items)})")
    ratings = np.ones(len(items), np.float32) if ratings is None else np.asarray(ratings)
    weighted = row_weights
    if row_weights is None:
        row_weights = np.ones(len(items), np.float32)
    else:
        row_weights = np.asarray(row_weights, np.float32)
        if loss not in POINTWISE_REFIT_LOSSES:
            raise ValueError(f"row_weights with loss {loss!r}: weighted rows are re-fitted for "
                             f"{', '.join(POINTWISE_REFIT_LOSSES)} (the losses IPS and SNIPS "
                             "weight)")
        if row_weights.shape != items.shape or not np.all(np.isfinite(row_weights)) or (
                row_weights < 0).any():
            raise ValueError(f"row_weights: expected {len(items)} finite weights >= 0, one per "
                             "history row")
    pool_base = np.ones(model.n_items, np.float32)
    pool_base[items] = 0.0
    if seen_items is not None:
        pool_base[np.asarray(seen_items, np.int64)] = 0.0
    data: dict[str, Any] = {
        "items": jnp.asarray(_pad(items, length, 0), jnp.int32),
        "ratings": jnp.asarray(_pad(ratings.astype(np.float32), length, 0.0)),
        "valid": jnp.asarray(_pad(np.ones(len(items), bool), length, False)),
        "row_weights": jnp.asarray(_pad(row_weights, length, 0.0)),
        "pool_base": jnp.asarray(pool_base), "l2": jnp.float32(l2),
        "theta_start": _user_theta(model, kind, user),
        "theta_trained": _user_theta(model, kind, user),
    }
    if kind == "lightgcn":
        data.update(_lightgcn_arrays(model, _pad(items, length, 0)))
        graphdef = None
    else:
        graphdef, state = nnx.split(model)
        data["model"] = state
        if user_features is not None and getattr(model, "user_features", None) is not None:
            data["user_features"] = jnp.asarray(user_features, jnp.float32)
        elif getattr(model, "user_features", None) is not None:
            data["user_features"] = model.user_features[...][user]
    if solver is None:
        catalogue_loss = loss in ("bpr", "softmax", "sampled_softmax")
        solver = "chord" if catalogue_loss and len(items) >= CHORD_MIN_HISTORY else "newton"
    scorer = RefitDeletion(kind, graphdef, loss, exclude_seen, n_steps, solver, residual)
    calibrated = ""
    if calibrate:
        chosen, index = calibrate_l2(scorer, data, base_steps)
        if index > 0:  # candidate 0 is the L2 given
            calibrated = (f", calibrated: the L2 >= the run's {l2:.3g} whose full-history "
                          "re-fit lands nearest the trained user")
        data["l2"] = jnp.float32(chosen)
    data.update(_start(scorer, data, base_steps))
    return DeletionModel(
        score_fn=scorer, data=data, history=_pad(items, length, -1),
        semantics=REFIT_SEMANTICS[kind].format(
            loss=loss if weighted is None else f"{loss} with each row's training weight",
            l2=f"{float(data['l2']):.3g}{calibrated}") + RESIDUALS[residual],
        n_items=model.n_items,
        relaxed_fn=BoundMethod(scorer, "relaxed"),
        influence_fn=BoundMethod(scorer, "influence"), item_vectors=_item_vectors(model, kind),
        item_counts=None if item_counts is None else np.asarray(item_counts),
        chunk_size=CATALOGUE_CHUNK if loss in ("bpr", "softmax", "sampled_softmax") else None,
        feature_names=None if feature_names is None else tuple(map(str, feature_names)),
        item_feature_names=(None if item_feature_names is None
                            else tuple(map(str, item_feature_names))),
    )


# Candidate L2 of `calibrate_l2`: the curvature scale (the mean diagonal of the
# unregularised full-history curvature at the trained user) times these.
CALIBRATION_SCALES = 10.0 ** np.arange(-3.0, 2.01, 0.5)


def calibrate_l2(scorer: RefitDeletion, data: Any, base_steps: int) -> tuple[float, int]:
    """The L2 at least `data["l2"]` whose full-history re-fit (`base_steps` Newton steps from
    the trained user) lands nearest the trained user, relative distance in the flattened
    parameters: `data["l2"]` itself and `max(data["l2"], s * CALIBRATION_SCALES)` with `s`
    the curvature scale, all re-fitted in one vmapped call; ties keep the smallest.

    The re-fit treats the trained user as the minimiser of its objective. Training that
    stops early (every run with `train.patience`) is regularised more than its weight decay
    says, and one without weight decay can leave a user objective with no finite minimum
    (BPR on a history a direction separates), where re-fitted effects run away. The
    calibrated L2 is the ridge that best reproduces what training did to this user.

    Returns:
        `(l2, index)`: the chosen L2 and its candidate's index (0: `data["l2"]` itself).
    """
    distances, candidates = _calibration(scorer, data, base_steps)
    distances = np.where(np.isfinite(np.asarray(distances)), np.asarray(distances), np.inf)
    index = int(np.argmin(distances))
    return float(np.asarray(candidates)[index]), index


def _calibration_impl(scorer: RefitDeletion, data: Any, base_steps: int
                      ) -> tuple[jax.Array, jax.Array]:
    theta = data["theta_trained"]
    full = data["valid"].astype(jnp.float32)
    flat, _ = ravel_pytree(theta)
    if scorer.kind in AFFINE_KINDS:
        _, unravel = ravel_pytree(theta)
        data = {**data, "jacobian": jax.jacfwd(
            lambda f: scorer.model_scores(data, unravel(f), full))(flat)}
    bare = scorer.curvature({**data, "l2": jnp.float32(0.0)}, theta, full)
    scale = jnp.trace(bare) / flat.shape[0]
    candidates = jnp.concatenate([data["l2"][None], jnp.maximum(
        data["l2"], scale * jnp.asarray(CALIBRATION_SCALES, jnp.float32))])

    def distance(l2):
        fitted = scorer.refit({**data, "l2": l2}, theta, full, base_steps, solver="newton")
        moved, _ = ravel_pytree(fitted)
        return jnp.linalg.norm(moved - flat) / jnp.maximum(jnp.linalg.norm(flat), 1e-12)

    return jax.vmap(distance)(candidates), candidates


_calibration = jax.jit(_calibration_impl, static_argnums=(0, 2))


def _start_impl(scorer: RefitDeletion, data: Any, base_steps: int) -> dict[str, Any]:
    """The full-history fit (`base_steps` Newton steps from the trained parameters) and its
    scores, the served scores (the trained parameters'), the constant score Jacobian of the
    affine kinds, and the Cholesky factor of the curvature at the fit (the chord solver's)."""
    theta = data["theta_start"]
    full = data["valid"].astype(jnp.float32)
    flat, unravel = ravel_pytree(theta)
    out: dict[str, Any] = {}
    if scorer.kind in AFFINE_KINDS:
        out["jacobian"] = jax.jacfwd(
            lambda f: scorer.model_scores(data, unravel(f), full))(flat)
        data = {**data, **out}
    out["served"] = scorer.model_scores(data, theta, full)
    theta = scorer.refit(data, theta, full, base_steps, solver="newton")
    out["theta_start"] = theta
    moved, _ = ravel_pytree(theta)
    out["fit_distance"] = jnp.linalg.norm(moved - flat) / jnp.maximum(jnp.linalg.norm(flat),
                                                                      1e-12)
    out["refit_scores"] = scorer.user_scores(data, theta, full)
    out["curvature_start"] = jnp.linalg.cholesky(damped(scorer.curvature(data, theta, full)))
    return out


_start = jax.jit(_start_impl, static_argnums=(0, 2))


def feature_effects(model: DeletionModel) -> np.ndarray | None:
    """`[d_u, n_items]` the change of every item's score when each of the user's features is
    set to 0 (the feature removed), or None for a model without user features (MF, LightGCN,
    sequential models, MLP and NeuMF trained without them).

    Features are inputs, not fitted, so this is their direct effect: the trained user vector
    is kept (a feature already 0 has no effect). Every feature in one vmapped call.
    """
    data = model.data
    if not isinstance(model.score_fn, RefitDeletion) or "user_features" not in data:
        return None
    return np.asarray(_feature_effects(model.score_fn, data))


def _feature_effects_impl(scorer: RefitDeletion, data: Any) -> jax.Array:
    full = data["valid"].astype(jnp.float32)
    features = data["user_features"]
    removed = features[None, :] * (1.0 - jnp.eye(features.shape[0], dtype=features.dtype))

    def scores(row):
        return scorer.model_scores({**data, "user_features": row}, data["theta_trained"], full)

    return jax.vmap(scores)(removed) - scores(features)[None, :]


_feature_effects = jax.jit(_feature_effects_impl, static_argnums=0)


def item_feature_effects(model: DeletionModel, target: int) -> np.ndarray | None:
    """`[d_i]` the change of `target`'s score when each of its item features is set to 0
    (the feature removed from the item), or None for a model without item features (MF,
    LightGCN, sequential models, MLP and NeuMF trained without them).

    Like `feature_effects`, a direct effect: the user and every learned parameter are kept, and
    only the target's score moves (a feature the item lacks has effect 0). One vmapped call.
    """
    data = model.data
    scorer = model.score_fn
    if not isinstance(scorer, RefitDeletion) or scorer.kind not in ("mlp", "neumf"):
        return None
    if nnx.merge(scorer.graphdef, data["model"]).item_features is None:
        return None
    return np.asarray(_item_feature_effects(scorer, data, jnp.int32(target)))


def _item_feature_effects_impl(scorer: RefitDeletion, data: Any, target: jax.Array
                               ) -> jax.Array:
    model = nnx.merge(scorer.graphdef, data["model"])
    theta = data["theta_trained"]
    features = data.get("user_features")
    row = model.item_features[...][target]
    removed = row[None, :] * (1.0 - jnp.eye(row.shape[0], dtype=row.dtype))

    def score(item_row):
        if scorer.kind == "mlp":
            item_input = jnp.concatenate([model.item_embedding[...][target], item_row])
            hidden = model.tower(_with_row(theta["embedding"], features), item_input)
            return model.output(hidden)[0]
        gmf = theta["gmf"] * model.gmf_item_embedding[...][target]
        item_input = jnp.concatenate([model.mlp_item_embedding[...][target], item_row])
        hidden = model.tower(_with_row(theta["mlp"], features), item_input)
        return model.output(jnp.concatenate([gmf, hidden]))[0]

    return jax.vmap(score)(removed) - score(row)


_item_feature_effects = jax.jit(_item_feature_effects_impl, static_argnums=0)


def l2_per_user(weight_decay: float, n_rows: int) -> float:
    """The L2 coefficient of the per-user objective that training's weight decay implies.

    A step adds `weight_decay * theta` to the gradient of its batch's mean loss (`train.step`,
    `train.losses.reduce_losses`); an epoch takes `n_rows / batch_size` steps and passes each
    row once, so its summed update is that of `sum_rows loss / batch_size + n_rows /
    batch_size * weight_decay * theta`, whose zero is the minimum of `sum_rows loss + l2 / 2
    ||theta||^2` with `l2 = weight_decay * n_rows` (exact for full batches and for one batch
    holding every row; a partial last batch weighs its rows a little more).
    """
    return float(weight_decay) * n_rows
