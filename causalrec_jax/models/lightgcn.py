"""LightGCN: linear propagation of embeddings over the user-item graph.

He, Deng, Wang, Li, Zhang & Wang, "LightGCN: Simplifying and Powering Graph Convolution
Network for Recommendation", SIGIR 2020. With R the training interactions and N_u, N_i the
neighbours of a user and an item in the bipartite graph, eq. (3):

    e_u^(k+1) = sum_{i in N_u} 1 / sqrt(|N_u| |N_i|) * e_i^(k)
    e_i^(k+1) = sum_{u in N_i} 1 / sqrt(|N_i| |N_u|) * e_u^(k)

i.e. E^(k+1) = D^-1/2 A D^-1/2 E^(k) with A = [[0, R], [R^T, 0]] (eq. 8-9); eq. (4) and (5):

    e_u = sum_{k=0..L} alpha_k e_u^(k),   alpha_k = 1 / (L + 1),
    score(u, i) = <e_u, e_i>.

Only the layer-0 embeddings e^(0) are parameters. The graph is held as `Constant` edge
arrays (one entry per distinct training pair, with its weight 1 / sqrt(|N_u| |N_i|)) and each
layer is two `jax.ops.segment_sum` over the edges: memory O(|R| dim), never a dense
adjacency. A user or item without a training edge receives nothing from the layers, so its
final embedding is e^(0) / (L + 1) (no division by a zero degree). The graph must come from
the training interactions only: validation or test pairs in it would leak the answers.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from causalrec_jax.models.base import Constant, embedding_table


def normalized_edges(
    users: Any, items: Any, n_users: int, n_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (user, item) edges of a bipartite graph and their symmetric weights.

    Args:
        users: `[n]` int user indices of the training interactions (repeats allowed).
        items: `[n]` int item indices, aligned with `users`.
        n_users: number of users; indices must lie in `[0, n_users)`.
        n_items: number of items; indices must lie in `[0, n_items)`.

    Returns:
        `(edge_users [e] int32, edge_items [e] int32, edge_weights [e] float32)`: each distinct
        pair once, sorted by user then item, weighted 1 / sqrt(deg(user) deg(item)) with
        degrees counted over distinct pairs (the entries of D^-1/2 A D^-1/2).

    Raises:
        ValueError: arrays of different lengths or indices out of range.
    """
    users = np.asarray(users, np.int64).ravel()
    items = np.asarray(items, np.int64).ravel()
    if users.shape != items.shape:
        raise ValueError(
            f"train_edges: {users.shape[0]} users but {items.shape[0]} items; expected equal"
        )
    if len(users) and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"train_edges: user index out of range [0, {n_users})")
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"train_edges: item index out of range [0, {n_items})")
    pairs = np.unique(users * n_items + items)
    edge_users, edge_items = pairs // n_items, pairs % n_items
    user_degree = np.bincount(edge_users, minlength=n_users).astype(np.float64)
    item_degree = np.bincount(edge_items, minlength=n_items).astype(np.float64)
    weights = 1.0 / np.sqrt(user_degree[edge_users] * item_degree[edge_items])
    return edge_users.astype(np.int32), edge_items.astype(np.int32), weights.astype(np.float32)


class LightGCN(nnx.Module):
    """LightGCN (He et al. 2020) over a fixed normalised training graph.

    Layer-0 embeddings start at N(0, (init_scale / sqrt(embedding_dim))^2) (see
    `embedding_table`); there are no biases. Regularisation (the paper's L2 on e^(0)) is the
    optimiser's business (`train.weight_decay`), as for every model.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        *,
        embedding_dim: int,
        n_layers: int,
        train_edges: tuple[Any, Any],
        key: jax.Array,
        init_scale: float = 0.1,
    ):
        """Builds the model.

        Args:
            n_users: number of users.
            n_items: number of items.
            embedding_dim: width of the embeddings.
            n_layers: propagation depth L >= 0 (L = 0 is plain dot-product MF without biases,
                scores scaled by 1).
            train_edges: `(users [n], items [n])` int arrays of the training interactions.
            key: initialisation key.
            init_scale: see `embedding_table`.
        """
        if n_layers < 0:
            raise ValueError(f"n_layers: got {n_layers}, expected an integer >= 0")
        user_key, item_key = jax.random.split(key)
        self.n_users = n_users
        self.n_items = n_items
        self.n_layers = n_layers
        self.user_embedding = embedding_table(user_key, n_users, embedding_dim, init_scale)
        self.item_embedding = embedding_table(item_key, n_items, embedding_dim, init_scale)
        edge_users, edge_items, edge_weights = normalized_edges(*train_edges, n_users, n_items)
        self.edge_users = Constant(jnp.asarray(edge_users))
        self.edge_items = Constant(jnp.asarray(edge_items))
        self.edge_weights = Constant(jnp.asarray(edge_weights))

    def layer_embeddings(self) -> tuple[list[jax.Array], list[jax.Array]]:
        """The embeddings of every layer, 0..L (eq. 3).

        Returns:
            `(users, items)`: lists of L + 1 arrays `[n_users, dim]` and `[n_items, dim]`,
            layer 0 first (the parameters).
        """
        # The barrier keeps XLA from constant-folding the propagation when parameters and
        # graph are all closed over (a jitted scorer of a loaded run): folding scatter-adds
        # over ~10^5 edges takes XLA's evaluator minutes. It changes no value.
        users_k, items_k, edge_users, edge_items, weights = jax.lax.optimization_barrier((
            self.user_embedding[...], self.item_embedding[...], self.edge_users[...],
            self.edge_items[...], self.edge_weights[...][:, None],
        ))
        user_layers, item_layers = [users_k], [items_k]
        for _ in range(self.n_layers):
            users_k, items_k = (
                jax.ops.segment_sum(
                    weights * items_k[edge_items], edge_users, num_segments=self.n_users,
                    indices_are_sorted=True,
                ),
                jax.ops.segment_sum(
                    weights * users_k[edge_users], edge_items, num_segments=self.n_items
                ),
            )
            user_layers.append(users_k)
            item_layers.append(items_k)
        return user_layers, item_layers

    def propagate(self) -> tuple[jax.Array, jax.Array]:
        """The final embeddings, the mean of layers 0..L (eq. 4).

        Returns:
            `(users [n_users, dim], items [n_items, dim])` float32.
        """
        user_layers, item_layers = self.layer_embeddings()
        user_sum, item_sum = user_layers[0], item_layers[0]
        for users_k, items_k in zip(user_layers[1:], item_layers[1:], strict=True):
            user_sum, item_sum = user_sum + users_k, item_sum + items_k
        scale = 1.0 / (self.n_layers + 1)
        return user_sum * scale, item_sum * scale

    def __call__(
        self, users: jax.Array, items: jax.Array, *, key: jax.Array | None = None,
        dropout_rate: jax.Array | float | None = None,
    ) -> jax.Array:
        """Scores pairs: `users [b]`, `items [b]` -> `[b]`. `key` is unused (no dropout).

        Propagates the whole graph once per call.
        """
        del key, dropout_rate  # no dropout in this model
        user_final, item_final = self.propagate()
        return jnp.sum(user_final[users] * item_final[items], axis=-1)

    def score_all(self, users: jax.Array) -> jax.Array:
        """Scores every item: `users [b]` -> `[b, n_items]` (one propagation, one matmul)."""
        user_final, item_final = self.propagate()
        return user_final[users] @ item_final.T
