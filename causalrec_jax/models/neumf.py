"""NeuMF: generalised matrix factorisation fused with an MLP.

He, Liao, Zhang, Nie, Hu & Chua, "Neural Collaborative Filtering", WWW 2017, §3.4, eq. (11):

    phi_GMF = P^G_u * Q^G_i                          (elementwise product, its own embeddings)
    phi_MLP = relu(W_L(... relu(W_1 [P^M_u ; Q^M_i] + b_1) ...) + b_L)
    score(u, i) = h^T [phi_GMF ; phi_MLP] + b

The two towers have separate embeddings, as in the paper. The paper's sigmoid is left to the
loss (the score is a logit), and its optional pre-training of the towers is not done here.
User and item features, when given, are concatenated to the MLP tower's embeddings, as in
`causalrec_jax.models.mlp` (an extension; the paper uses ids only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from causalrec_jax.models.base import (
    embedding_table,
    feature_table,
    feature_width,
    with_features,
)
from causalrec_jax.models.mlp import MLPTower


class NeuMF(nnx.Module):
    """NeuMF (He et al. 2017): a GMF tower and an MLP tower joined by one linear layer.

    Both towers use `embedding_dim`-wide embeddings drawn from
    N(0, (0.1 / sqrt(embedding_dim))^2); the output bias starts at `global_bias`.

    `score_all` never builds the `[b, n_items, embedding_dim]` GMF product: the output
    weights h_GMF are folded into the user side, giving one `[b, dim] x [dim, n_items]`
    matmul. Its memory is the MLP tower's, `[b, n_items, hidden_dims[0]]` float32
    activations (see `causalrec_jax.models.mlp.MLP`).
    """

    # The tables indexed by user or item id, row by row (see `models.base.row_tables`).
    ROW_TABLES: ClassVar[dict[str, str]] = {
        "gmf_user_embedding": "users", "mlp_user_embedding": "users", "user_features": "users",
        "gmf_item_embedding": "items", "mlp_item_embedding": "items", "item_features": "items"}

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
        keys = jax.random.split(key, 6)
        self.n_items = n_items
        self.embedding_dim = embedding_dim
        # Features first: a shape error should come before any initialisation work.
        self.user_features = feature_table(user_features, "user_features", n_users)
        self.item_features = feature_table(item_features, "item_features", n_items)
        self.gmf_user_embedding = embedding_table(keys[0], n_users, embedding_dim)
        self.gmf_item_embedding = embedding_table(keys[1], n_items, embedding_dim)
        self.mlp_user_embedding = embedding_table(keys[2], n_users, embedding_dim)
        self.mlp_item_embedding = embedding_table(keys[3], n_items, embedding_dim)
        self.tower = MLPTower(
            embedding_dim + feature_width(self.user_features),
            embedding_dim + feature_width(self.item_features),
            hidden_dims,
            dropout_rate=dropout_rate,
            rngs=nnx.Rngs(params=keys[4]),
        )
        self.output = nnx.Linear(
            embedding_dim + self.tower.output_dim, 1,
            bias_init=nnx.initializers.constant(global_bias),
            rngs=nnx.Rngs(params=keys[5]),
        )

    def __call__(
        self, users: jax.Array, items: jax.Array, *, key: jax.Array | None = None,
        dropout_rate: jax.Array | float | None = None,
    ) -> jax.Array:
        """Scores pairs: `users [b]`, `items [b]` -> `[b]`; `key` enables dropout (MLP tower)."""
        gmf = self.gmf_user_embedding[users] * self.gmf_item_embedding[items]
        mlp = self.tower(
            with_features(self.mlp_user_embedding, self.user_features, users),
            with_features(self.mlp_item_embedding, self.item_features, items),
            key=key, dropout_rate=dropout_rate,
        )
        return self.output(jnp.concatenate([gmf, mlp], axis=-1))[..., 0]

    def score_all(self, users: jax.Array) -> jax.Array:
        """Scores every item: `users [b]` -> `[b, n_items]` (memory: see the class doc)."""
        kernel = self.output.kernel[...][:, 0]
        gmf_weights, mlp_weights = kernel[: self.embedding_dim], kernel[self.embedding_dim :]
        # h_G^T (p_u * q_i) = (h_G * p_u)^T q_i: one matmul over all items.
        gmf = (self.gmf_user_embedding[users] * gmf_weights) @ self.gmf_item_embedding[...].T
        all_items = jnp.arange(self.n_items)
        hidden = self.tower(
            with_features(self.mlp_user_embedding, self.user_features, users)[:, None, :],
            with_features(self.mlp_item_embedding, self.item_features, all_items)[None],
        )
        return gmf + hidden @ mlp_weights + self.output.bias[...][0]
