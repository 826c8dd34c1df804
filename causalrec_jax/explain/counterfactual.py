"""One counterfactual explanation of one recommendation: `explain(model, target, ...)`.

For a user's `DeletionModel` (`explain.deletion`) and a recommended item: the effect of each
past interaction on the item's score and rank by single deletion (all in one vmapped call),
the causes ranked by that effect, and a minimal counterfactual set, the fewest past
interactions whose removal drops the item out of the top-K, by the chosen method (`METHODS`):

- `greedy`, `beam`: the searches of `explain.search` (PRINCE, Ghazimatin et al. WSDM 2020;
  ACCENT, Tran et al. SIGIR 2021; CountER, Tan et al. CIKM 2021 frame the same question);
- `exhaustive`: the oracle (the true minimal set; small histories only);
- `effects`: deleting in the order of the single-deletion effects (`search.strongest_first`:
  the largest rank after the deletion, then the lowest margin; no extra model call);
- the baselines of `explain.baselines` (`random`, `popular`, `similar`, `influence`,
  `integrated_gradients`), each an order deleted until the item leaves the top-K.

With `seeds` (the deletion models of the same user under the run's other seeds), the set is
extended until it removes the item from the top-K under the explained model and a majority
of all (`search.held_prefix`, `quorum`): the explained model's minimal set stops where that
one model just lets the item go, while a retrained model lands elsewhere by its seed alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax.explain import search
from causalrec_jax.explain.baselines import BASELINES, baseline_order
from causalrec_jax.explain.deletion import DeletionModel

SEARCH_METHODS = ("greedy", "beam", "exhaustive", "effects")
METHODS = SEARCH_METHODS + tuple(BASELINES)


class Explanation(NamedTuple):
    """A counterfactual explanation of why `target` is recommended.

    History arrays are over the user's valid history positions, in history order (oldest
    first), so `history[i]` is the item index of past interaction i.

    Attributes:
        target: the item explained.
        method: how `minimal_set` was found (`METHODS`).
        k: the cut-off: the item is "recommended" while its rank is below k.
        base_score: the item's score with the whole history.
        base_rank: its 0-based rank (pessimistic ties, the user's known items left out).
        history: `[n]` item indices of the past interactions.
        score_deltas: `[n]` the item's score after deleting each interaction alone, minus
            `base_score`.
        rank_after: `[n]` its rank after deleting each alone.
        causes: `[n]` indices into `history`, the largest score drop first.
        minimal_set: indices into `history` of the counterfactual set, in the order deleted.
        found: whether deleting `minimal_set` removes the item from the top-K.
        score_after_set: the item's score after deleting `minimal_set`.
        rank_after_set: its rank after deleting `minimal_set`.
        semantics: what deleting means for this model.
        seeds: how many models `found` was checked under: 1, the explained one; more, with
            the run's other seeds (`explain(..., seeds=...)`).
        agree: under how many of them deleting `minimal_set` removes the item from the top-K
            (`found` with seeds: the explained one and at least the quorum).
    """

    target: int
    method: str
    k: int
    base_score: float
    base_rank: int
    history: np.ndarray
    score_deltas: np.ndarray
    rank_after: np.ndarray
    causes: np.ndarray
    minimal_set: np.ndarray
    found: bool
    score_after_set: float
    rank_after_set: int
    semantics: str
    seeds: int = 1
    agree: int = 1

    @property
    def size(self) -> int:
        """The number of interactions in `minimal_set`."""
        return len(self.minimal_set)


def default_exclude(model: DeletionModel) -> np.ndarray:
    """`[n_items]` bool: the user's history items (what `recommend` leaves out)."""
    exclude = np.zeros(model.n_items, bool)
    exclude[model.history[model.valid]] = True
    return exclude


def explain(model: DeletionModel, target: int, *, k: int = 10, method: str = "greedy",
            max_size: int = 10, exclude: Any = None, beam_width: int = 4,
            key: jax.Array | None = None, chunk_size: int | None = None,
            n_candidates: int | None = None,
            seeds: Sequence[DeletionModel] = (), quorum: int | None = None) -> Explanation:
    """Explains why `target` is recommended to the user of `model`.

    Args:
        model: the user's deletion model (`make_history_model`, `make_refit_model`).
        target: the item index explained.
        k: the cut-off of the top-K.
        method: how to find the minimal set (`METHODS`).
        max_size: the largest set searched.
        exclude: `[n_items]` bool items left out of the ranking (the user's known items);
            None: the history items.
        beam_width: sets kept per size by `beam`.
        key: random key of the `random` baseline (default `jax.random.key(0)`).
        chunk_size: deletion masks per vmapped batch (None: the model's `chunk_size`).
        n_candidates: `greedy` deletes only among the `n_candidates` strongest single
            deletions (`search.strongest_first`), scoring that many masks per step instead
            of the whole history; None: every past interaction (exact greedy).
        seeds: the same user's deletion models under the run's other seeds (same history):
            the method's set is then extended until deleting it removes the item from the
            top-K under `model` and `quorum` models in all (None: a majority of the
            1 + len(seeds)), in the method's own order for the ordered methods (`effects`,
            the baselines: `search.held_prefix`), else by greedy steps on the standing across
            the seeds (`search.held_greedy`, over the whole history whatever
            `n_candidates`); `found` says whether one did, within the whole history
            (`max_size` bounds the method's own search only). An item already outside the
            top-K under `model` gets the empty set, as without seeds.

    Returns:
        `Explanation`.

    Raises:
        ValueError: an unknown method, `k` or `max_size` below 1, a target out of range or
            among the excluded items, a baseline the model does not support, or `seeds` with
            another history than `model`'s, or a quorum outside 1..1 + len(seeds).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
    if k < 1 or max_size < 1:
        raise ValueError(f"k = {k} and max_size = {max_size}: expected both >= 1")
    exclude = default_exclude(model) if exclude is None else np.asarray(exclude, bool)
    chunk_size = model.chunk_size if chunk_size is None else chunk_size
    n_items = len(exclude)
    if k >= n_items:
        raise ValueError(f"k = {k}: expected fewer than the {n_items} items of the catalogue")
    if not 0 <= target < n_items:
        raise ValueError(f"item index {target} is outside the catalogue of {n_items} items")
    if exclude[target]:
        raise ValueError(f"item index {target} is one the user already has")
    valid = model.valid
    for other in seeds:
        if not np.array_equal(other.history, model.history):
            raise ValueError("seeds: every model must hold the explained user's history "
                             f"({int(valid.sum())} interactions), in the same positions")
        if (other.score_fn != model.score_fn
                or jax.tree.structure(other.data) != jax.tree.structure(model.data)):
            raise ValueError("seeds: every model must be the explained model's kind (the same "
                             "score_fn and data structure: another seed of the same run)")
    if quorum is not None and not 1 <= quorum <= 1 + len(seeds):
        raise ValueError(f"quorum = {quorum}: expected 1 to {1 + len(seeds)} (the explained "
                         "model and its seeds)")
    args = (model.score_fn, model.data, jnp.asarray(valid), jnp.asarray(target),
            jnp.asarray(exclude))
    effects = search.single_deletions(*args, k=k, chunk_size=chunk_size)
    base = effects.base
    positions = np.flatnonzero(valid)
    deltas = (np.asarray(effects.after.score) - float(base.score))[positions]
    rank_after = np.asarray(effects.after.rank)[positions]
    causes = np.lexsort((-rank_after, deltas))  # largest drop first, then largest rank
    # capped at the padded length, not the count of valid positions: users whose histories
    # pad alike share the compiled search (`max_size` is static)
    max_size = min(max_size, max(len(valid), 1))
    if method == "greedy":
        candidates = None
        if n_candidates is not None and n_candidates < len(positions):
            candidates = search.strongest_first(effects.after.rank, effects.after.margin,
                                                valid)[:n_candidates]
        result = search.greedy_search(*args, k=k, max_size=max_size, chunk_size=chunk_size,
                                      candidates=candidates, singles=effects)
    elif method == "beam":
        result = search.beam_search(*args, k=k, max_size=max_size, beam_width=beam_width,
                                    chunk_size=chunk_size)
    elif method == "exhaustive":
        result = _oracle_result(model, *args[2:], k=k, max_size=max_size)
    else:
        if method == "effects":
            full_order = np.asarray(search.strongest_first(effects.after.rank,
                                                           effects.after.margin, valid))
        else:
            full_order = baseline_order(method, model, target,
                                        key=jax.random.key(0) if key is None else key)
        result = search.ordered_removal(*args, jnp.asarray(full_order), k=k,
                                        max_size=max_size, chunk_size=chunk_size)
    agree = int(result.after.rank >= k)
    if seeds and base.rank < k:  # an item outside the top-K already: nothing to extend
        result, agree = _held(
            model, seeds, result, args, k=k, chunk_size=chunk_size, quorum=quorum,
            order=None if method in ("greedy", "beam", "exhaustive") else full_order)
    order = np.asarray(result.order)
    order = order[order >= 0][: int(result.size)]
    index_of = np.full(len(valid), -1)
    index_of[positions] = np.arange(len(positions))
    return Explanation(
        target=int(target), method=method, k=k, base_score=float(base.score),
        base_rank=int(base.rank), history=model.history[positions], score_deltas=deltas,
        rank_after=rank_after, causes=causes, minimal_set=index_of[order],
        found=bool(result.found), score_after_set=float(result.after.score),
        rank_after_set=int(result.after.rank), semantics=model.semantics,
        seeds=1 + len(seeds), agree=agree)


def _held(model: DeletionModel, seeds: Sequence[DeletionModel], result: search.SearchResult,
          args: tuple, *, k: int, chunk_size: int | None, quorum: int | None,
          order: np.ndarray | None) -> tuple[search.SearchResult, int]:
    """`result`'s set extended until it holds under `model` and a quorum of all: in
    `order` (the method's own, whose prefix the set is), else by greedy steps on the standing
    across the seeds (`search.held_greedy`)."""
    chosen = np.asarray(result.order)
    chosen = chosen[chosen >= 0][: int(result.size)]
    datas = [model.data, *(other.data for other in seeds)]
    if order is None:  # a search: greedy steps on the standing across the seeds
        return search.held_greedy(args[0], datas, model.valid, int(args[3]),
                                  np.asarray(args[4]), chosen, k=k, quorum=quorum,
                                  chunk_size=chunk_size)
    order = np.asarray(order, np.int32)
    order = np.concatenate([chosen, order[~np.isin(order, chosen)]])
    return search.held_prefix(args[0], datas, model.valid, int(args[3]), np.asarray(args[4]),
                              order, k=k, start=len(chosen), quorum=quorum,
                              chunk_size=chunk_size)


def _oracle_result(model: DeletionModel, valid, target, exclude, *, k: int,
                   max_size: int) -> search.SearchResult:
    """The exhaustive search's first minimal set (by `search.step_choice`'s rule: the item's
    largest rank, then its lowest margin) as a `SearchResult`."""
    oracle = search.exhaustive_search(model.score_fn, model.data, valid, target, exclude,
                                      k=k, max_size=max_size)
    valid = np.asarray(valid)
    if oracle.size < 0:
        full = search.evaluate_masks(model.score_fn, model.data,
                                     jnp.asarray(valid[None].astype(np.float32)), target,
                                     exclude, k=k)
        after = search.Standing(*(np.asarray(leaf)[0] for leaf in full))
        return search.set_result((), after, False, len(valid), max_size)
    keeps = np.repeat(valid[None].astype(np.float32), len(oracle.sets), axis=0)
    for row, chosen in enumerate(oracle.sets):
        keeps[row, list(chosen)] = 0.0
    results = search.evaluate_masks(model.score_fn, model.data, jnp.asarray(keeps), target,
                                    exclude, k=k)
    best = int(search.strongest_first(results.rank, results.margin,
                                      np.ones(len(oracle.sets), bool))[0])
    after = search.Standing(*(np.asarray(leaf)[best] for leaf in results))
    return search.set_result(oracle.sets[best], after, True, len(valid), max_size)
