"""The MLP recommender: a feed-forward network over user and item representations.

He, Liao, Zhang, Nie, Hu & Chua, "Neural Collaborative Filtering", WWW 2017, §3.3 (the MLP
instance of NCF), generalised as in Covington et al., "Deep Neural Networks for YouTube
Recommendations", RecSys 2016, by concatenating side features to the embeddings:

    z_0 = [P_u ; x_u ; Q_i ; y_i]
    z_l = relu(W_l z_{l-1} + b_l),   l = 1..L   (widths `hidden_dims`)
    score(u, i) = w^T z_L + b

with user and item features x_u, y_i (when the dataset has them) held as constants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from causalrec_jax import streams
from causalrec_jax.models.base import (
    dropout,
    embedding_table,
    feature_table,
    feature_width,
    with_features,
)


class MLPTower(nnx.Module):
    """ReLU layers over `[user_inputs ; item_inputs]`, with the first layer split in two.

    relu(W [u ; i] + b) is computed as relu(W_user u + W_item i + b): identical for a pair,
    but when scoring all items the user and item halves are projected separately and only
    their broadcast sum, `[b, n_items, hidden_dims[0]]`, is materialised (never the
    `[b, n_items, user_dim + item_dim]` concatenation). Dropout follows every hidden layer
    when a key is given.
    """

    def __init__(
        self,
        user_dim: int,
        item_dim: int,
        hidden_dims: Sequence[int],
        *,
        dropout_rate: float,
        rngs: nnx.Rngs,
    ):
        if not hidden_dims:
            raise ValueError("hidden_dims must list at least one hidden layer width")
        width = hidden_dims[0]
        # Each half gets the LeCun-normal variance of one Linear over the concatenation,
        # 1 / (user_dim + item_dim), rather than 1 / (its own fan-in).
        fan_in = user_dim + item_dim
        self.user_projection = nnx.Linear(
            user_dim, width, kernel_init=_lecun_part(user_dim / fan_in), rngs=rngs
        )
        self.item_projection = nnx.Linear(
            item_dim, width, use_bias=False, kernel_init=_lecun_part(item_dim / fan_in),
            rngs=rngs,
        )
        self.layers = nnx.List(
            [nnx.Linear(d_in, d_out, rngs=rngs)
             for d_in, d_out in zip(hidden_dims[:-1], hidden_dims[1:], strict=True)]
        )
        self.dropout_rate = dropout_rate
        self.output_dim = hidden_dims[-1]

    def __call__(
        self, user_inputs: jax.Array, item_inputs: jax.Array, *, key: jax.Array | None = None,
        dropout_rate: jax.Array | float | None = None,
    ) -> jax.Array:
        """Runs the tower on broadcastable inputs.

        Args:
            user_inputs: `[..., user_dim]`.
            item_inputs: `[..., item_dim]`; its leading axes broadcast against the user's
                (`[b, 1, d_u]` with `[1, n_items, d_i]` scores all items).
            key: enables dropout; None is deterministic.
            dropout_rate: overrides the tower's rate (may be traced); None keeps it.

        Returns:
            `[..., hidden_dims[-1]]`, the broadcast leading shape.
        """
        rate = self.dropout_rate if dropout_rate is None else dropout_rate
        hidden = jax.nn.relu(self.user_projection(user_inputs) + self.item_projection(item_inputs))
        hidden = dropout(hidden, rate, _layer_key(key, 0))
        for index, layer in enumerate(self.layers):
            hidden = jax.nn.relu(layer(hidden))
            hidden = dropout(hidden, rate, _layer_key(key, index + 1))
        return hidden


class MLP(nnx.Module):
    """The MLP recommender (NCF's MLP, He et al. 2017), with optional side features.

    Embeddings start at N(0, (0.1 / sqrt(embedding_dim))^2), hidden layers LeCun normal, and
    the output bias at `global_bias`. Features are float `Constant`s, never trained.

    `score_all` materialises `[b, n_items, hidden_dims[0]]` float32 activations (plus the
    smaller later layers): 4 * b * n_items * hidden_dims[0] bytes, e.g. 655 MB for b = 256,
    10^4 items and width 64; pick the evaluation chunk size accordingly.
    """

    # The tables indexed by user or item id, row by row (see `models.base.row_tables`).
    ROW_TABLES: ClassVar[dict[str, str]] = {"user_embedding": "users", "user_features": "users",
                                            "item_embedding": "items", "item_features": "items"}

    def __init__(
        self,
        n_users: int,
        n_items: int,
        *,
        embedding_dim: int,
        hidden_dims: Sequence[int],
        key: jax.Array,
        dropout_rate: float = 0.0,
        user_features: Any = None,
        item_features: Any = None,
        global_bias: float = 0.0,
    ):
        user_key, item_key, tower_key, output_key = jax.random.split(key, 4)
        self.n_items = n_items
        # Features first: a shape error should come before any initialisation work.
        self.user_features = feature_table(user_features, "user_features", n_users)
        self.item_features = feature_table(item_features, "item_features", n_items)
        self.user_embedding = embedding_table(user_key, n_users, embedding_dim)
        self.item_embedding = embedding_table(item_key, n_items, embedding_dim)
        self.tower = MLPTower(
            embedding_dim + feature_width(self.user_features),
            embedding_dim + feature_width(self.item_features),
            hidden_dims,
            dropout_rate=dropout_rate,
            rngs=nnx.Rngs(params=tower_key),
        )
        self.output = nnx.Linear(
            self.tower.output_dim, 1, bias_init=nnx.initializers.constant(global_bias),
            rngs=nnx.Rngs(params=output_key),
        )

    def __call__(
        self, users: jax.Array, items: jax.Array, *, key: jax.Array | None = None,
        dropout_rate: jax.Array | float | None = None,
    ) -> jax.Array:
        """Scores pairs: `users [b]`, `items [b]` -> `[b]`; `key` enables dropout (at
        `dropout_rate` when given, else the model's)."""
        hidden = self.tower(self.user_inputs(users), self.item_inputs(items), key=key,
                            dropout_rate=dropout_rate)
        return self.output(hidden)[..., 0]

    def score_all(self, users: jax.Array) -> jax.Array:
        """Scores every item: `users [b]` -> `[b, n_items]` (memory: see the class doc)."""
        all_items = jnp.arange(self.n_items)
        hidden = self.tower(self.user_inputs(users)[:, None, :], self.item_inputs(all_items)[None])
        return self.output(hidden)[..., 0]

    def user_inputs(self, users: jax.Array) -> jax.Array:
        """`[b]` -> `[b, embedding_dim + d_u]`: the embedding, then the features if any."""
        return with_features(self.user_embedding, self.user_features, users)

    def item_inputs(self, items: jax.Array) -> jax.Array:
        """`[b]` -> `[b, embedding_dim + d_i]`: the embedding, then the features if any."""
        return with_features(self.item_embedding, self.item_features, items)


def _lecun_part(fraction: float) -> jax.nn.initializers.Initializer:
    """LeCun normal scaled to `fraction` of its variance."""
    return nnx.initializers.variance_scaling(fraction, "fan_in", "truncated_normal")


def _layer_key(key: jax.Array | None, index: int) -> jax.Array | None:
    """A distinct dropout key per layer; None stays None (deterministic)."""
    return None if key is None else streams.index(key, index)
