"""Baseline explanations: orderings of a user's history, most likely cause first.

Each baseline is a function with one signature,

    order_fn(model: DeletionModel, target: int, *, key: jax.Array) -> order [H] int

returning every valid history position (padding positions last). `explain` then deletes the
items in that order until the target leaves the top-K (`search.ordered_removal`), so each
baseline yields a counterfactual set whose size compares with the searches' sets.

- `random_order`: a uniformly random order (`key`).
- `popular_order`: most popular items first (training counts).
- `similar_order`: the items most similar to the target first (cosine of item embeddings), the
  "because you watched X" heuristic.
- `influence_order`: largest first-order (influence-function) score drop first (Koh & Liang,
  ICML 2017; the estimate ACCENT, Tran et al. SIGIR 2021, searches with); needs a re-fitting
  model. Known to be fragile away from convex objectives (Basu, Pope & Feizi, ICLR 2021).
- `integrated_gradients_order`: largest path-integrated gradient of the target's score with
  respect to the history weights first (Sundararajan, Taly & Yan, ICML 2017), integrated from
  the empty history and, with `n_paths > 1`, also from random sub-histories, in the spirit of
  SPINRec's stochastic path integration (AAAI 2026).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax.explain.deletion import DeletionModel


def _valid_first(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Positions by descending `scores`, valid ones first (ties: earlier position first)."""
    keyed = np.where(valid, scores, -np.inf)
    order = np.argsort(-keyed, kind="stable")
    return np.concatenate([order[valid[order]], order[~valid[order]]]).astype(np.int32)


def random_order(model: DeletionModel, target: int, *, key: jax.Array) -> np.ndarray:
    """A uniformly random order of the history (`key`)."""
    del target
    noise = np.asarray(jax.random.uniform(key, model.history.shape))
    return _valid_first(noise, model.valid)


def popular_order(model: DeletionModel, target: int, *, key: jax.Array) -> np.ndarray:
    """The most popular history items first (`model.item_counts`)."""
    del target, key
    if model.item_counts is None:
        raise ValueError("the most-popular baseline needs the training item counts")
    counts = model.item_counts[np.maximum(model.history, 0)].astype(np.float64)
    return _valid_first(counts, model.valid)


def similar_order(model: DeletionModel, target: int, *, key: jax.Array) -> np.ndarray:
    """The history items most similar to the target first: cosine similarity of the model's
    item embeddings (`model.item_vectors`)."""
    del key
    if model.item_vectors is None:
        raise ValueError("the most-similar baseline needs item embeddings")
    vectors = model.item_vectors / np.maximum(
        np.linalg.norm(model.item_vectors, axis=1, keepdims=True), 1e-12)
    similarity = vectors[np.maximum(model.history, 0)] @ vectors[target]
    return _valid_first(similarity, model.valid)


def influence_effects(model: DeletionModel, target: int) -> np.ndarray:
    """`[H]` first-order estimates of the change of the target's score when deleting each
    position (0 at padding).

    Raises:
        ValueError: a model that re-fits nothing (sequential models read the history
            directly: there is no fitted user vector to take the derivative of).
    """
    if model.influence_fn is None:
        raise ValueError("influence functions need a model whose user vector is re-fitted "
                         "(MF, MLP, NeuMF, LightGCN); sequential models have none")
    return np.asarray(_influence(model.influence_fn, model.data, jnp.asarray(target)))


@functools.partial(jax.jit, static_argnums=0)
def _influence(influence_fn, data, target):
    return influence_fn(data, target)


def influence_order(model: DeletionModel, target: int, *, key: jax.Array) -> np.ndarray:
    """The largest estimated score drop first (`influence_effects`)."""
    del key
    return _valid_first(-influence_effects(model, target), model.valid)


def integrated_gradients(model: DeletionModel, target: int, *, key: jax.Array | None = None,
                         n_steps: int = 16, n_paths: int = 1) -> np.ndarray:
    """`[H]` path-integrated gradients of the target's score in the history weights.

    Attribution of position h on a path from baseline weights `b` to the history (weights 1):
    `(1 - b_h) * mean_t d score / d w_h (b + t (1 - b))` at `n_steps` midpoints t. The first
    path starts from the empty history (b = 0); each further one (`n_paths > 1`, drawn from
    `key`) from a random half of the history, and the attributions are averaged. They sum to
    about the score change between the baseline and the history (completeness).

    Raises:
        ValueError: a model without a differentiable relaxation (`relaxed_fn`).
    """
    if model.relaxed_fn is None:
        raise ValueError("integrated gradients need a differentiable relaxation of deletion")
    valid = model.valid.astype(np.float32)
    baselines = [np.zeros_like(valid)]
    if n_paths > 1:
        if key is None:
            raise ValueError("n_paths > 1 draws random baselines: pass a key")
        draws = np.asarray(jax.random.bernoulli(key, 0.5, (n_paths - 1, len(valid))))
        baselines += list(draws.astype(np.float32) * valid)
    result = _integrated(model.relaxed_fn, model.data, jnp.asarray(np.stack(baselines)),
                         jnp.asarray(valid), jnp.asarray(target), n_steps)
    return np.asarray(result) * model.valid


@functools.partial(jax.jit, static_argnums=(0, 5))
def _integrated(relaxed_fn, data, baselines, valid, target, n_steps: int):
    gradient = jax.grad(lambda weights: relaxed_fn(data, weights)[target])
    midpoints = (jnp.arange(n_steps, dtype=jnp.float32) + 0.5) / n_steps

    def one_path(baseline):
        points = baseline[None, :] + midpoints[:, None] * (valid - baseline)[None, :]
        gradients = jax.lax.map(gradient, points)
        return (valid - baseline) * jnp.mean(gradients, axis=0)

    return jnp.mean(jax.lax.map(one_path, baselines), axis=0)


def integrated_gradients_order(model: DeletionModel, target: int, *,
                               key: jax.Array) -> np.ndarray:
    """The largest integrated-gradient attribution first (`integrated_gradients`, one path
    from the empty history)."""
    return _valid_first(integrated_gradients(model, target, key=key), model.valid)


# name -> order function, all with the signature (model, target, *, key) -> order [H]
BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "random": random_order,
    "popular": popular_order,
    "similar": similar_order,
    "influence": influence_order,
    "integrated_gradients": integrated_gradients_order,
}


def baseline_order(name: str, model: DeletionModel, target: int, *, key: Any) -> np.ndarray:
    """The order of baseline `name` (`BASELINES`)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}: expected one of {', '.join(BASELINES)}")
    return BASELINES[name](model, target, key=key)
