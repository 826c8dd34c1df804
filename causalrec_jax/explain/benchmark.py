r"""Explainers measured on many instances with a known truth: the planted world's minimal sets
and the oracle's on the trained model (issue 15 item 2).

An *instance* is one recommendation to explain: a user's `DeletionModel` (`explain.deletion`,
built from the history the recommendation was made from), the `target` item and the items
`exclude [n_items]` left out of its ranking. `benchmark_explainers` explains every instance with
each method of `explain.METHODS` the way `explain.explain` does (searches; each baseline an
order deleted until the item leaves the top-K), finds the exhaustive oracle's minimum-size
counterfactual sets on the model, tells which instances the model learned the rule of
(`scores.learned_instances`, loose and strict), and scores every explainer with
`scores.explanation_scores` against both truths, per group of instances (e.g. rule kinds):

- `world`: the world's minimal sets (`PlantedTruth.minimal_sets`, mapped to the model's item
  indices), on the instances the model learned loosely;
- `world_strict`: the same on the instances it learned strictly (the world's sets are the
  model's own, so a faithful explainer can match them);
- `oracle`: the oracle's sets on the model, on the loosely learned instances (a faithful
  explanation of a model that learned an AND rule as an OR is `{A, B}`: right here, half right
  against the world).

The oracle is `search.exhaustive_search` up to `min(oracle_max_size, the greedy set's size)`:
the greedy set is counterfactual, so no minimum set is larger; an instance whose minimum set
exceeds `oracle_max_size` has no oracle sets (counted as `n_without_truth`). Its sets are the
*minimum-size* counterfactual sets (every one of that size), the sets a minimal explanation
can be compared with in size.

The model enters through `make_in_top_k_fn`: every instance's deletion model stacked (data
leaves shared by all instances, such as the model's parameters, are passed once) and scored in
one vmapped, jitted call per batch of edits, as `scores.InTopKFn` asks.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax import streams
from causalrec_jax.explain import search
from causalrec_jax.explain.counterfactual import METHODS, explain
from causalrec_jax.explain.deletion import DeletionModel
from causalrec_jax.explain.scores import (
    SCORE_NAMES,
    InTopKFn,
    explanation_scores,
    learned_instances,
)

# Rows of edits per vmapped call of `make_in_top_k_fn` (the last batch padded: one program).
EDIT_BATCH = 256

# The truths every explainer is scored against (module docstring).
TRUTHS = ("world", "world_strict", "oracle")


@dataclasses.dataclass(frozen=True)
class Instances:
    """Many recommendations to explain, with the world's truth in the model's item indices.

    Attributes:
        models: `[n]` one `DeletionModel` per instance, all with the same `score_fn` and the
            same padded history length `H`.
        targets: `[n]` int the item explained.
        exclude: `[n, n_items]` bool items left out of each ranking (the user's known items).
        minimal_sets: `[n]` the world's minimal counterfactual sets (item indices; `()`: none).
        confounders: `[n]` the confounders in each history (item indices).
        groups: `{name: [n] bool}` subsets scored separately (e.g. `and`, `or`); every
            instance is also scored in `all`.
    """

    models: Sequence[DeletionModel]
    targets: np.ndarray
    exclude: np.ndarray
    minimal_sets: Sequence[tuple[frozenset[int], ...]]
    confounders: Sequence[frozenset[int]]
    groups: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.models)

    @property
    def histories(self) -> np.ndarray:
        """`[n, H]` each model's history (item indices, -1 at padding)."""
        return np.stack([model.history for model in self.models])


def _split_shared(models: Sequence[DeletionModel]) -> tuple[Any, tuple[bool, ...], tuple, tuple]:
    """The models' data leaves as `(treedef, is_shared, shared leaves, stacked leaves)`: a leaf
    that is the same object in every model is passed once, the others stacked `[n, ...]`."""
    flat = [jax.tree_util.tree_flatten(model.data) for model in models]
    treedef = flat[0][1]
    if any(other != treedef for _, other in flat):
        raise ValueError("the instances' deletion models hold data of different structures")
    is_shared, shared, stacked = [], [], []
    for index, leaf in enumerate(flat[0][0]):
        same = all(leaves[index] is leaf for leaves, _ in flat)
        is_shared.append(same)
        if same:
            shared.append(leaf)
        else:
            stacked.append(jnp.stack([jnp.asarray(leaves[index]) for leaves, _ in flat]))
    return treedef, tuple(is_shared), tuple(shared), tuple(stacked)


@functools.partial(jax.jit, static_argnames=("score_fn", "treedef", "is_shared", "k"))
def _in_top_k_rows(score_fn, treedef, is_shared, shared, stacked, exclude, targets, rows, keep,
                   *, k: int) -> jax.Array:
    """`[m]` bool: instance `rows[j]`'s target is in the top-K after the edit `keep[j]`."""

    def one(row, keep_row):
        shared_leaves, stacked_leaves = iter(shared), iter(stacked)
        leaves = [next(shared_leaves) if same else next(stacked_leaves)[row]
                  for same in is_shared]
        data = jax.tree_util.tree_unflatten(treedef, leaves)
        scores = score_fn(data, keep_row.astype(jnp.float32))
        return search.standing(scores, targets[row], exclude[row], k).rank < k

    return jax.vmap(one)(rows, keep)


def make_in_top_k_fn(models: Sequence[DeletionModel], targets: Any, exclude: Any, *, k: int,
                     batch: int = EDIT_BATCH) -> InTopKFn:
    """The `scores.InTopKFn` of many instances: `(instances [m], keep [m, H]) -> [m]` bool,
    whether instance `instances[j]`'s target is in the top-K from its history kept where
    `keep[j]` (pessimistic ties, `exclude` left out), in vmapped calls of `batch` edits.

    Raises:
        ValueError: models with different `score_fn`s or data structures.
    """
    score_fn = models[0].score_fn
    if any(model.score_fn != score_fn for model in models):
        raise ValueError("the instances' deletion models have different score functions")
    treedef, is_shared, shared, stacked = _split_shared(models)
    exclude_j, targets_j = jnp.asarray(exclude, bool), jnp.asarray(targets, jnp.int32)

    def in_top_k_fn(instances: np.ndarray, keep: np.ndarray) -> np.ndarray:
        instances = np.asarray(instances, np.int32)
        keep = np.asarray(keep, bool)
        out = np.zeros(len(instances), bool)
        for start in range(0, len(instances), batch):
            rows = instances[start: start + batch]
            edits = keep[start: start + batch]
            pad = batch - len(rows)
            rows = np.pad(rows, (0, pad))
            edits = np.pad(edits, ((0, pad), (0, 0)))
            result = _in_top_k_rows(score_fn, treedef, is_shared, shared, stacked, exclude_j,
                                    targets_j, jnp.asarray(rows), jnp.asarray(edits), k=k)
            out[start: start + batch - pad] = np.asarray(result)[: batch - pad]
        return out

    return in_top_k_fn


@dataclasses.dataclass(frozen=True)
class ExplainerSets:
    """One explainer's answers on every instance.

    Attributes:
        sets: `[n]` the counterfactual set found, as item indices (empty when none was found
            up to `max_size`, or when the instance was not explained).
        seconds: wall-clock seconds per explained instance (mean, after compilation).
    """

    sets: list[frozenset[int]]
    seconds: float


def explain_instances(instances: Instances, method: str, *, k: int, max_size: int,
                      which: np.ndarray | None = None, key: jax.Array | None = None,
                      beam_width: int = 4) -> ExplainerSets:
    """`explain.explain(model, target, method=...)` on every instance (or those of `which`,
    `[n]` bool), its minimal set as item indices when found.

    Raises:
        ValueError: an unknown method, or one the models cannot run (e.g. influence functions
            of a sequential model).
    """
    if method not in METHODS:
        raise ValueError(f"unknown explainer {method!r}: expected one of {', '.join(METHODS)}")
    key = jax.random.key(0) if key is None else key
    which = np.ones(len(instances), bool) if which is None else np.asarray(which, bool)
    sets: list[frozenset[int]] = [frozenset()] * len(instances)
    timed, seconds = 0, 0.0
    for index in np.flatnonzero(which):
        tic = time.perf_counter()
        explanation = explain(instances.models[index], int(instances.targets[index]), k=k,
                              method=method, max_size=max_size,
                              exclude=instances.exclude[index], beam_width=beam_width,
                              key=streams.index(key, int(index)))
        if timed:  # the first call compiles
            seconds += time.perf_counter() - tic
        timed += 1
        if explanation.found and explanation.size:
            sets[index] = frozenset(
                int(item) for item in explanation.history[explanation.minimal_set])
    return ExplainerSets(sets, seconds / max(timed - 1, 1))


def oracle_instances(instances: Instances, *, k: int, max_size: Any,
                     which: np.ndarray | None = None, chunk_size: int = 256
                     ) -> list[tuple[frozenset[int], ...]]:
    """The exhaustive oracle's minimum-size counterfactual sets of each instance (item
    indices), searched up to `max_size` (an int, or `[n]` ints per instance); `()` when none
    is that small, or for instances outside `which`."""
    which = np.ones(len(instances), bool) if which is None else np.asarray(which, bool)
    sizes = np.broadcast_to(np.asarray(max_size), (len(instances),))
    out: list[tuple[frozenset[int], ...]] = [()] * len(instances)
    for index in np.flatnonzero(which):
        model = instances.models[index]
        result = search.exhaustive_search(
            model.score_fn, model.data, model.valid, int(instances.targets[index]),
            instances.exclude[index], k=k, max_size=max(int(sizes[index]), 1),
            chunk_size=chunk_size)
        if result.size > 0:
            out[index] = tuple(frozenset(int(model.history[p]) for p in chosen)
                               for chosen in result.sets)
    return out


def _restricted(in_top_k_fn: InTopKFn, rows: np.ndarray) -> InTopKFn:
    """`in_top_k_fn` for the instances `rows` (indices into them -> global indices)."""
    return lambda instances, keep: in_top_k_fn(rows[np.asarray(instances)], keep)


def score_sets(instances: Instances, predicted: Sequence[Collection[int]], *,
               oracle: Sequence[tuple[frozenset[int], ...]], learned: np.ndarray,
               learned_strict: np.ndarray, in_top_k_fn: InTopKFn) -> dict[str, dict[str, Any]]:
    """`{truth: {group: scores}}` of one explainer's sets (`TRUTHS`; groups: `all` and
    `instances.groups`; scores: `scores.explanation_scores`)."""
    histories = instances.histories
    groups = {"all": np.ones(len(instances), bool), **instances.groups}
    out: dict[str, dict[str, Any]] = {truth: {} for truth in TRUTHS}
    for group, mask in groups.items():
        rows = np.flatnonzero(mask)
        pick = functools.partial(_pick, rows)
        common = dict(confounders=pick(instances.confounders), oracle_sets=pick(oracle),
                      histories=histories[rows], in_top_k_fn=_restricted(in_top_k_fn, rows))
        out["world"][group] = explanation_scores(
            pick(predicted), pick(instances.minimal_sets), learned=learned[rows], **common)
        out["world_strict"][group] = explanation_scores(
            pick(predicted), pick(instances.minimal_sets), learned=learned_strict[rows],
            **common)
        out["oracle"][group] = explanation_scores(
            pick(predicted), pick(oracle), learned=learned[rows], **common)
    return out


def _pick(rows: np.ndarray, values: Sequence[Any]) -> list[Any]:
    return [values[int(row)] for row in rows]


def benchmark_explainers(instances: Instances, methods: Sequence[str], *, k: int = 10,
                         max_size: int = 10, oracle_max_size: int = 3,
                         key: jax.Array | None = None, beam_width: int = 4,
                         log_fn=None) -> dict[str, Any]:
    """Every explainer of `methods` on every instance the model learned, scored against both
    truths (module docstring).

    Args:
        instances: the recommendations and their world truth.
        methods: names of `explain.METHODS` (searches and baselines); a method the models
            cannot run (e.g. `influence` on a sequential model) is left out and said so
            under `skipped`.
        k: the cut-off of the top-K.
        max_size: the largest set an explainer searches.
        oracle_max_size: the largest set the exhaustive oracle searches.
        key: random key of the `random` baseline (one stream per instance).
        beam_width: sets kept per size by `beam`.
        log_fn: None, or called with a line of progress per step.

    Returns:
        `{"scores": {method: {truth: {group: {score: value}}}}, "learned": {group: {"loose",
        "strict", "n"}}, "seconds": {method: s per instance}, "skipped": {method: reason},
        "oracle": {"max_size", "n_without_sets"}, "n_instances": n}`.

    Raises:
        ValueError: an unknown method name.
    """
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise ValueError(f"unknown explainer {unknown[0]!r}: expected one of "
                         f"{', '.join(METHODS)}")
    say = log_fn or (lambda line: None)
    in_top_k_fn = make_in_top_k_fn(instances.models, instances.targets, instances.exclude, k=k)
    histories = instances.histories
    learned = learned_instances(histories, instances.minimal_sets, in_top_k_fn)
    learned_strict = learned_instances(histories, instances.minimal_sets, in_top_k_fn,
                                       strict=True)
    say(f"learned the rule on {int(learned.sum())} of {len(instances)} instances "
        f"({int(learned_strict.sum())} strictly)")
    answers: dict[str, ExplainerSets] = {}
    skipped: dict[str, str] = {}
    for method in methods:
        tic = time.perf_counter()
        try:  # a probe on the first instance: a baseline the models cannot run raises
            explain(instances.models[0], int(instances.targets[0]), k=k, method=method,
                    max_size=1, exclude=instances.exclude[0])
            answers[method] = explain_instances(instances, method, k=k, max_size=max_size,
                                                which=learned, key=key,
                                                beam_width=beam_width)
        except ValueError as error:  # a baseline this model cannot run
            skipped[method] = str(error)
            say(f"{method}: skipped ({error})")
            continue
        say(f"{method}: {time.perf_counter() - tic:.1f} s")
    bound = np.full(len(instances), oracle_max_size)
    if "greedy" in answers:  # the greedy set is counterfactual: no minimum set is larger
        sizes = np.array([len(found) or oracle_max_size for found in answers["greedy"].sets])
        bound = np.minimum(bound, sizes)
    tic = time.perf_counter()
    oracle = oracle_instances(instances, k=k, max_size=bound, which=learned)
    say(f"oracle: {time.perf_counter() - tic:.1f} s")
    scores = {method: score_sets(instances, answer.sets, oracle=oracle, learned=learned,
                                 learned_strict=learned_strict, in_top_k_fn=in_top_k_fn)
              for method, answer in answers.items()}
    groups = {"all": np.ones(len(instances), bool), **instances.groups}
    return {
        "scores": scores,
        "learned": {group: {"loose": float(learned[mask].mean()) if mask.any() else None,
                            "strict": float(learned_strict[mask].mean()) if mask.any() else None,
                            "n": int(mask.sum()), "n_learned": int(learned[mask].sum()),
                            "n_learned_strict": int(learned_strict[mask].sum())}
                    for group, mask in groups.items()},
        "seconds": {method: answer.seconds for method, answer in answers.items()},
        "skipped": skipped,
        "oracle": {"max_size": oracle_max_size,
                   "n_without_sets": int(sum(1 for i in np.flatnonzero(learned)
                                             if not oracle[i]))},
        "n_instances": len(instances),
    }


__all__ = ["EDIT_BATCH", "SCORE_NAMES", "TRUTHS", "ExplainerSets", "Instances",
           "benchmark_explainers", "explain_instances", "make_in_top_k_fn",
           "oracle_instances", "score_sets"]
