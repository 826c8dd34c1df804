"""Biased matrix factorisation.

Koren, Bell & Volinsky, "Matrix Factorization Techniques for Recommender Systems",
IEEE Computer 42(8), 2009, eq. (3):

    score(u, i) = mu + b_u + b_i + <P_u, Q_i>

with a global bias mu, user and item biases b and factor tables P [n_users, dim],
Q [n_items, dim]. Regularisation is the loss's or optimiser's business, not the model's.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from causalrec_jax.models.base import embedding_table


class MF(nnx.Module):
    """Biased matrix factorisation (Koren et al. 2009).

    Factors start at N(0, (init_scale / sqrt(embedding_dim))^2) (see `embedding_table`),
    user and item biases at zero and the global bias at `global_bias` (e.g. the mean training
    rating, so a rating model starts at the right level). All four are trainable.
    """

    # The tables indexed by user or item id, row by row (see `models.base.row_tables`).
    ROW_TABLES: ClassVar[dict[str, str]] = {"user_factors": "users", "user_bias": "users",
                                            "item_factors": "items", "item_bias": "items"}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        *,
        embedding_dim: int,
        key: jax.Array,
        global_bias: float = 0.0,
        init_scale: float = 0.1,
    ):
        user_key, item_key = jax.random.split(key)
        self.n_items = n_items
        self.user_factors = embedding_table(user_key, n_users, embedding_dim, init_scale)
        self.item_factors = embedding_table(item_key, n_items, embedding_dim, init_scale)
        self.user_bias = nnx.Param(jnp.zeros((n_users,), jnp.float32))
        self.item_bias = nnx.Param(jnp.zeros((n_items,), jnp.float32))
        self.global_bias = nnx.Param(jnp.asarray(global_bias, jnp.float32))

    def __call__(
        self, users: jax.Array, items: jax.Array, *, key: jax.Array | None = None,
        dropout_rate: jax.Array | float | None = None,
    ) -> jax.Array:
        """Scores pairs: `users [b]`, `items [b]` -> `[b]`. `key` is unused (no dropout)."""
        del key, dropout_rate  # no dropout in this model
        interaction = jnp.sum(self.user_factors[users] * self.item_factors[items], axis=-1)
        return self.global_bias[...] + self.user_bias[users] + self.item_bias[items] + interaction

    def score_all(self, users: jax.Array) -> jax.Array:
        """Scores every item: `users [b]` -> `[b, n_items]`.

        One `[b, dim] x [dim, n_items]` matmul; memory is the `[b, n_items]` output.
        """
        interaction = self.user_factors[users] @ self.item_factors[...].T
        return (
            self.global_bias[...]
            + self.user_bias[users][:, None]
            + self.item_bias[...][None, :]
            + interaction
        )
