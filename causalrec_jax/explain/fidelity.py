"""Fidelity of an explanation: does removing the items it ranks first really move the model?

The counterfactual fidelity metrics of Baklanov, Bogina, Elisha, Schein, Allerhand, Barkan &
Koenigstein, "Refining Fidelity Metrics for Explainable Recommendations" (SIGIR 2025), as
SPINRec (Barkan et al., "Fidelity-Aware Recommendation Explanations via Stochastic Path
Integration", AAAI 2026) reports them. An explainer gives an ordering of the user's history
(most explaining first); the model is asked again with its top-k items removed (or with only
them kept), for k = 1, ..., K_e, fixed lengths rather than percentages of the history (the
refinement of Baklanov et al.):

- `removal_rank[k]`: the target's 0-based rank among the candidates after removing the top k
  (pessimistic ties, the user's known items left out, as everywhere in `explain`);
- `removal_probability[k]`: its probability then;
- `insertion_probability[k]`: its probability with only the top k kept (inserted into the
  empty history);

and the metrics, per user (the caller averages over users):

- `POS@K_r,K_e = 1[rank after removing the top K_e < K_r]`: the item is still in the top-K_r
  (lower is better); the value at exactly K_e removed items (a fixed-length diagnostic).
- `DEL@K_e = (1 / K_e) sum_{k=1..K_e} removal_probability[k]`: the area under the deletion
  curve over steps 1..K_e (lower is better).
- `INS@K_e = (1 / K_e) sum_{k=1..K_e} insertion_probability[k]`: the area under the insertion
  curve (higher is better).
- `CDCG@K_e = (1 / K_e) sum_{k=1..K_e} 1 / log2(2 + removal_rank[k])`: the counterfactual DCG
  of the item's (1-based) rank r, 1 / log2(1 + r), as items are removed, averaged over the
  steps like DEL (lower is better).

Where the papers were ambiguous, and what is chosen here:
- Aggregation over K_e. The released evaluation code of Baklanov et al. reports every metric
  at each step k = 1..K_e; SPINRec's tables report DEL, INS and CDCG as areas under these
  curves and POS at fixed K_e. Here DEL, INS and CDCG are areas (means over steps 1..K_e) and
  POS is the value at K_e; `FidelityCurves` keeps every step, so either reading is one line.
- "Probability". The papers read the recommender's output probability (a sigmoid or softmax
  of its models). Here it is the softmax of the model's scores over the candidates (the
  catalogue less the user's known items, target included): the output of softmax-trained
  models (SASRec) and a monotone, comparable [0, 1] reading of any other score (BPR-MF).
- CDCG's gain. The released code gives 1 / log2(index + 2) with a 0-based index in the full
  ranking (0 when the item is absent, which cannot happen in a full ranking); the same here.
- Histories shorter than K_e: every item is removed (inserted) at the steps beyond the
  history's length, so the curves stay defined.

Every function is pure jax: `removal_masks` and the per-row standing are jit- and vmap-able,
and `fidelity_curves` scores all 2 K_e edited histories of a user in one batched call of a
score callback `scores_fn(keeps [m, H]) -> scores [m, n_items]` (`batch_scorer` builds it from
a `DeletionModel`). The metric functions take curves with any leading (user) axes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from causalrec_jax.eval.catalogue import pessimistic_rank
from causalrec_jax.explain.deletion import DeletionModel

ScoresFn = Callable[[jax.Array], jax.Array]


class FidelityCurves(NamedTuple):
    """The target under an explainer's ordering (leaves `[..., K_e]`, step k at index k - 1).

    Attributes:
        removal_rank: 0-based rank after removing the top k items (pessimistic ties).
        removal_probability: softmax probability over the candidates after removing them.
        insertion_probability: the same with only the top k items kept.
        base_rank: the rank with the whole history (`[...]`).
        base_probability: the probability with the whole history (`[...]`).
    """

    removal_rank: jax.Array
    removal_probability: jax.Array
    insertion_probability: jax.Array
    base_rank: jax.Array
    base_probability: jax.Array


def removal_masks(order: jax.Array, valid: jax.Array, n_steps: int
                  ) -> tuple[jax.Array, jax.Array]:
    """Keep masks of the top-k removals and insertions, k = 1..n_steps.

    Args:
        order: `[H]` int history positions, most explaining first (padding positions in it
            are skipped).
        valid: `[H]` bool positions holding a past interaction.
        n_steps: K_e, the most items removed.

    Returns:
        `(removed, inserted)`, each `[n_steps, H]` float32: row k - 1 keeps every valid
        position but the first k valid ones of `order` (`removed`), or only them
        (`inserted`).
    """
    valid = jnp.asarray(valid, bool)
    order = jnp.asarray(order, jnp.int32)
    in_order = valid[order]
    place = jnp.cumsum(in_order) - 1  # 0-based place of each valid entry of order
    # place of each position among the valid entries of `order` (H: never chosen)
    history_len = valid.shape[0]
    position_place = jnp.full(history_len, history_len, jnp.int32).at[order].set(
        jnp.where(in_order, place, history_len).astype(jnp.int32))
    steps = jnp.arange(1, n_steps + 1)[:, None]
    top = (position_place[None, :] < steps) & valid[None, :]
    removed = (valid[None, :] & ~top).astype(jnp.float32)
    return removed, top.astype(jnp.float32)


def target_standing(scores: jax.Array, target: jax.Array, exclude: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
    """The target's 0-based rank (pessimistic ties) and softmax probability over the
    candidates (not excluded, target included) of `scores [n_items]`; vmap for batches."""
    candidates = ~exclude | (jnp.arange(scores.shape[0]) == target)
    log_norm = jax.nn.logsumexp(jnp.where(candidates, scores, -jnp.inf))
    return pessimistic_rank(scores, target, exclude), jnp.exp(scores[target] - log_norm)


def fidelity_curves(scores_fn: ScoresFn, order: Any, valid: Any, target: Any, exclude: Any,
                    *, n_steps: int) -> FidelityCurves:
    """The target's rank and probability as the explainer's top items are removed (and
    inserted), k = 1..n_steps, with the whole history as the base: `2 n_steps + 1` edited
    histories in one call of `scores_fn`.

    Args:
        scores_fn: `keeps [m, H] float32 -> scores [m, n_items]` (`batch_scorer`).
        order: `[H]` the explainer's ordering of the history positions.
        valid: `[H]` bool history positions.
        target: the item explained.
        exclude: `[n_items]` bool items left out of the ranking (the user's known items).
        n_steps: K_e, the most items removed.

    Returns:
        `FidelityCurves` with `[n_steps]` curves.
    """
    valid = jnp.asarray(valid, bool)
    removed, inserted = removal_masks(order, valid, n_steps)
    keeps = jnp.concatenate([valid[None].astype(jnp.float32), removed, inserted])
    scores = scores_fn(keeps)
    ranks, probabilities = jax.vmap(target_standing, in_axes=(0, None, None))(
        scores, jnp.asarray(target), jnp.asarray(exclude, bool))
    return FidelityCurves(
        removal_rank=ranks[1: n_steps + 1], removal_probability=probabilities[1: n_steps + 1],
        insertion_probability=probabilities[n_steps + 1:], base_rank=ranks[0],
        base_probability=probabilities[0])


def batch_scorer(model: DeletionModel, chunk_size: int | None = None) -> ScoresFn:
    """`keeps [m, H] -> scores [m, n_items]` of a deletion model: every mask in one compiled,
    vmapped call (in batches of `chunk_size` masks; None: the model's `chunk_size`)."""
    chunk = model.chunk_size if chunk_size is None else chunk_size
    return functools.partial(_batch_scores, model.score_fn, model.data, chunk_size=chunk)


@functools.partial(jax.jit, static_argnames=("score_fn", "chunk_size"))
def _batch_scores(score_fn, data, keeps, *, chunk_size=None):
    def one(keep):
        return score_fn(data, keep)

    if chunk_size is None or chunk_size >= keeps.shape[0]:
        return jax.vmap(one)(keeps)
    return jax.lax.map(one, keeps, batch_size=chunk_size)


def _check_steps(curve: jax.Array, k_e: int) -> None:
    if not 1 <= k_e <= curve.shape[-1]:
        raise ValueError(f"K_e = {k_e}: the curves hold steps 1..{curve.shape[-1]}")


def pos_at(curves: FidelityCurves, k_r: int, k_e: int) -> jax.Array:
    """`POS@K_r,K_e`, `[...]` float: 1 where the target is still in the top-K_r after
    removing the explainer's top K_e items (lower is better)."""
    _check_steps(curves.removal_rank, k_e)
    if k_r < 1:
        raise ValueError(f"K_r = {k_r}: expected >= 1")
    return (curves.removal_rank[..., k_e - 1] < k_r).astype(jnp.float32)


def del_at(curves: FidelityCurves, k_e: int) -> jax.Array:
    """`DEL@K_e`: mean probability of the target over removal steps 1..K_e (lower better)."""
    _check_steps(curves.removal_probability, k_e)
    return jnp.mean(curves.removal_probability[..., :k_e], axis=-1)


def ins_at(curves: FidelityCurves, k_e: int) -> jax.Array:
    """`INS@K_e`: mean probability of the target over insertion steps 1..K_e, from the empty
    history (higher is better)."""
    _check_steps(curves.insertion_probability, k_e)
    return jnp.mean(curves.insertion_probability[..., :k_e], axis=-1)


def cdcg_at(curves: FidelityCurves, k_e: int) -> jax.Array:
    """`CDCG@K_e`: mean over removal steps 1..K_e of `1 / log2(2 + rank)` (0-based rank), the
    counterfactual DCG of the target's position (lower is better)."""
    _check_steps(curves.removal_rank, k_e)
    ranks = curves.removal_rank[..., :k_e].astype(jnp.float32)
    return jnp.mean(1.0 / jnp.log2(ranks + 2.0), axis=-1)


def stack_curves(curves: list[FidelityCurves]) -> FidelityCurves:
    """Users' curves stacked on a leading axis (`[n_users, K_e]` leaves)."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *curves)


METRICS = ("pos", "del", "ins", "cdcg")
