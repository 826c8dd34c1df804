"""Popularity baseline: rank items by how often they were interacted with in training.

The reference non-personalised baseline of the recommender literature (e.g. Cremonesi,
Koren & Turrin, "Performance of Recommender Algorithms on Top-N Recommendation Tasks",
RecSys 2010, "TopPop"): score(u, i) = bias + log(1 + count_i). Under popularity-biased
exposure it is the model a debiased recommender has to beat.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from causalrec_jax.models.base import Constant


class Popularity(nnx.Module):
    """score(u, i) = bias + log(1 + item_counts[i]), the same for every user.

    The log counts are a `Constant`. The one trainable parameter, `bias` (starting at
    `global_bias`), shifts every score equally, so it never changes a ranking; it exists so
    that the baseline runs through the same optimiser and train step as every other model
    and, under a rating loss, fits the rating level.
    """

    def __init__(self, item_counts: Any, *, global_bias: float = 0.0):
        counts = np.asarray(item_counts, np.float64)
        if counts.ndim != 1 or not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise ValueError(
                f"item_counts must be a [n_items] array of finite non-negative counts, got "
                f"shape {counts.shape}"
            )
        self.n_items = int(counts.shape[0])
        self.log_counts = Constant(jnp.asarray(np.log1p(counts), jnp.float32))
        self.bias = nnx.Param(jnp.asarray(global_bias, jnp.float32))

    def __call__(
        self, users: jax.Array, items: jax.Array, *, key: jax.Array | None = None,
        dropout_rate: jax.Array | float | None = None,
    ) -> jax.Array:
        """Scores pairs: `users [b]`, `items [b]` -> `[b]`. `users` and `key` are unused."""
        del users, key, dropout_rate  # no dropout in this model
        return self.bias[...] + self.log_counts[items]

    def score_all(self, users: jax.Array) -> jax.Array:
        """Scores every item: `users [b]` -> `[b, n_items]`, the same row for every user."""
        scores = self.bias[...] + self.log_counts[...]
        return jnp.broadcast_to(scores, (users.shape[0], self.n_items))
