"""HSTU: hierarchical sequential transduction units.

Zhai, Liao, Liu, Wang, Li, Cao, Gao, Gong, Gu, He, Lu & Shi, "Actions Speak Louder than Words:
Trillion-Parameter Sequential Transducers for Generative Recommendations", ICML 2024, §3.1,
eqs. (1)-(3). A user's recent items (tokens, `data/sequences.py`: 0 = padding, item i =
token i + 1) go through

    x_t = sqrt(d) E[s_t] + P[p_t]                       (item + learned position embedding)
    U, V, Q, K = split(SiLU(Norm(x) W_uvqk))            (eq. 1: one projection, no bias)
    A_h = SiLU(Q_h K_h^T + rab^{p,t}) / N  (causal)     (eq. 2: pointwise, no softmax)
    x <- x + W_o Dropout(U * Norm(concat_h A_h V_h))    (eq. 3, residual)
    h = OutNorm(x_L)                                    (output)
    logits_t = h_t . e_i  (tied item table)

per layer, `Norm` a layer norm without parameters. `rab^{p,t}` is a learned relative
attention bias: a position term `w^p[p_q - p_k]` per layer (the distance back, 0..max_len-1),
plus, when timestamps are passed (`HSTU(..., n_time_buckets > 0)` and
`model(sequences, timestamps=...)`), a time term `w^t[bucket(t_{q+1} - t_k)]` with log-spaced
buckets `floor(ln(max(|dt|, 1)) / 0.301)` clipped to `n_time_buckets`: the time from each
key's event to the event the query predicts (the last position uses its own time). The
sequential task's windows carry tokens only, so runs train with the position bias alone.

`N` is the model's `max_len`, a constant: the pointwise attention sums over real keys without
renormalising, so dividing by the padded width instead (as a fixed-width implementation
does) would make a history's scores depend on how much padding its bucket adds. Positions
`p_t` count the row's real items from the oldest, so left padding changes no output.

Output similarity: with `temperature = 0` the outputs go through a final layer norm and score
items by dot product (SASRec's head); with `temperature > 0` outputs and item embeddings are
L2-normalised and the score is their cosine divided by the temperature (the public-dataset
setting of the paper's reference code: cosine, temperature 0.05, sampled softmax).
`item_embeddings()` returns the normalised table then, so every loss, `score_next`, chunked
catalogue ranking and explanation (`explain.deletion`) see the same scores.

Dropout (explicit key, DESIGN §1) is applied to the input embeddings and to each layer's gated
attention output before `W_o`, where the paper's reference applies it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from causalrec_jax.models.base import PAD, SequenceModel, dropout, split_keys

# The time bias's bucket width in natural-log units (about 0.43 doublings of the time gap).
TIME_BUCKET_WIDTH = 0.301


def time_buckets(timestamps: jax.Array, n_buckets: int) -> jax.Array:
    """Bucketed log time gaps `[b, L_query, L_key]` int32 in `0..n_buckets`.

    The query at position q predicts the event at q + 1, so its time is `timestamps[:, q + 1]`
    (the last position's own time); the gap to key k is that time minus `timestamps[:, k]`.

    Args:
        timestamps: `[b, L]` numbers (seconds, or any unit), left-padded rows like the tokens.
        n_buckets: the largest bucket.
    """
    timestamps = timestamps.astype(jnp.float32)
    query_times = jnp.concatenate([timestamps[:, 1:], timestamps[:, -1:]], axis=1)
    gaps = jnp.abs(query_times[:, :, None] - timestamps[:, None, :])
    buckets = jnp.floor(jnp.log(jnp.maximum(gaps, 1.0)) / TIME_BUCKET_WIDTH)
    return jnp.clip(buckets, 0, n_buckets).astype(jnp.int32)


class HSTULayer(nnx.Module):
    """One sequential transduction unit (eqs. 1-3) with its own relative attention bias."""

    def __init__(
        self, hidden_dim: int, n_heads: int, attention_dim: int, linear_dim: int,
        max_len: int, *, dropout_rate: float, n_time_buckets: int, init_std: float,
        rngs: nnx.Rngs,
    ):
        self.n_heads = n_heads
        self.attention_dim = attention_dim
        self.linear_dim = linear_dim
        self.max_len = max_len
        self.dropout_rate = dropout_rate
        self.n_time_buckets = n_time_buckets
        projected = n_heads * (2 * linear_dim + 2 * attention_dim)
        self.input_norm = nnx.LayerNorm(hidden_dim, epsilon=1e-6, use_bias=False,
                                        use_scale=False, rngs=rngs)
        self.uvqk = nnx.Linear(hidden_dim, projected, use_bias=False,
                               kernel_init=nnx.initializers.normal(init_std), rngs=rngs)
        self.attention_norm = nnx.LayerNorm(n_heads * linear_dim, epsilon=1e-6, use_bias=False,
                                            use_scale=False, rngs=rngs)
        self.output = nnx.Linear(n_heads * linear_dim, hidden_dim,
                                 kernel_init=nnx.initializers.xavier_uniform(), rngs=rngs)
        self.position_bias = nnx.Param(init_std * jax.random.normal(
            rngs.params(), (max_len,), jnp.float32))
        self.time_bias = (nnx.Param(init_std * jax.random.normal(
            rngs.params(), (n_time_buckets + 1,), jnp.float32)) if n_time_buckets else None)

    def __call__(
        self, inputs: jax.Array, allowed: jax.Array, distance: jax.Array,
        buckets: jax.Array | None = None, *, key: jax.Array | None = None,
    ) -> jax.Array:
        """One layer: `inputs [b, L, d]` -> `[b, L, d]`.

        Args:
            inputs: the residual stream.
            allowed: `[b, L, L]` bool, True where query q may read key k (causal, real key).
            distance: `[b, L, L]` int32, `p_q - p_k` clipped to `0..max_len-1`.
            buckets: `[b, L, L]` int32 time buckets (`time_buckets`), or None.
            key: dropout key; None is deterministic.
        """
        batch, length, _ = inputs.shape
        heads, qk_dim, v_dim = self.n_heads, self.attention_dim, self.linear_dim
        projected = jax.nn.silu(self.uvqk(self.input_norm(inputs)))
        gate, value, query, keys = jnp.split(
            projected, [heads * v_dim, 2 * heads * v_dim, 2 * heads * v_dim + heads * qk_dim],
            axis=-1)
        query = query.reshape(batch, length, heads, qk_dim)
        keys = keys.reshape(batch, length, heads, qk_dim)
        value = value.reshape(batch, length, heads, v_dim)
        bias = self.position_bias[distance]
        if buckets is not None and self.time_bias is not None:
            bias = bias + self.time_bias[buckets]
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, keys) + bias[:, None]
        weights = jnp.where(allowed[:, None], jax.nn.silu(scores) / self.max_len, 0.0)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
        attended = self.attention_norm(attended.reshape(batch, length, heads * v_dim))
        return inputs + self.output(dropout(gate * attended, self.dropout_rate, key))


class HSTU(SequenceModel):
    """HSTU (Zhai et al. 2024): stacked causal sequential transduction units.

    `model(sequences [b, L]) -> hidden [b, L, d]`; `model.logits(hidden) -> [b, L, n_items]`,
    where position t scores the item that follows `sequences[:, t]` (as SASRec's).
    """

    def __init__(
        self,
        n_items: int,
        max_len: int,
        *,
        key: jax.Array,
        hidden_dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 1,
        attention_dim: int | None = None,
        linear_dim: int | None = None,
        dropout_rate: float = 0.2,
        temperature: float = 0.0,
        n_time_buckets: int = 0,
        init_std: float = 0.02,
    ):
        """Builds the model.

        Args:
            n_items: catalogue size; token rows are `n_items + 1` (row 0 = padding).
            max_len: the longest history, the position tables' size and the attention's `N`.
            key: initialisation key.
            hidden_dim: `d`, the embedding and residual width.
            n_layers: stacked units.
            n_heads: attention heads.
            attention_dim: per-head query/key width; None = `hidden_dim // n_heads`.
            linear_dim: per-head value/gate width; None = `hidden_dim // n_heads`.
            dropout_rate: dropout on the input embeddings and before each `W_o`.
            temperature: 0 = final layer norm and dot product; > 0 = cosine / temperature.
            n_time_buckets: > 0 adds the time term of the relative bias (used when
                `timestamps` are passed); 0 = position bias only (no time parameters).
            init_std: std of the embedding tables, the biases and `W_uvqk`.
        """
        default = hidden_dim // n_heads
        attention_dim = attention_dim or default
        linear_dim = linear_dim or default
        if min(attention_dim, linear_dim) < 1:
            raise ValueError(f"hidden_dim {hidden_dim} over n_heads {n_heads} leaves no width "
                             "per head; give attention_dim and linear_dim")
        if temperature < 0:
            raise ValueError(f"temperature {temperature} must be >= 0 (0 = dot product)")
        item_key, position_key, layer_key = jax.random.split(key, 3)
        rngs = nnx.Rngs(params=layer_key)
        self.n_items = n_items
        self.max_len = max_len
        self.hidden_dim = hidden_dim
        self.dropout_rate = dropout_rate
        self.temperature = float(temperature)
        self.n_time_buckets = n_time_buckets
        self.token_embedding = nnx.Param(
            init_std * jax.random.normal(item_key, (n_items + 1, hidden_dim), jnp.float32))
        self.position_embedding = nnx.Param(
            init_std * jax.random.normal(position_key, (max_len, hidden_dim), jnp.float32))
        self.layers = nnx.List([
            HSTULayer(hidden_dim, n_heads, attention_dim, linear_dim, max_len,
                      dropout_rate=dropout_rate, n_time_buckets=n_time_buckets,
                      init_std=init_std, rngs=rngs)
            for _ in range(n_layers)
        ])
        self.final_norm = (nnx.LayerNorm(hidden_dim, rngs=rngs) if not temperature else None)

    def __call__(
        self, sequences: jax.Array, *, key: jax.Array | None = None,
        token_weights: jax.Array | None = None, timestamps: jax.Array | None = None,
    ) -> jax.Array:
        """Encodes token rows: `sequences [b, L]` int32 (L <= max_len) -> hidden `[b, L, d]`.

        A key enables dropout (training); `key=None` is deterministic. Outputs at padding
        positions are finite but meaningless; outputs elsewhere never depend on them.
        `token_weights [b, L]` float scales each token's item embedding (not its position):
        the relaxation `causalrec_jax.explain` integrates gradients along. `timestamps
        [b, L]` add the time term of the attention bias (needs `n_time_buckets > 0`).
        """
        length = sequences.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        if timestamps is not None and not self.n_time_buckets:
            raise ValueError("timestamps given to an HSTU built with n_time_buckets = 0")
        real = sequences != PAD
        positions = jnp.clip(jnp.cumsum(real, axis=1) - 1, 0, self.max_len - 1)
        items = self.token_embedding[sequences] * math.sqrt(self.hidden_dim)
        if token_weights is not None:
            items = items * token_weights[..., None].astype(items.dtype)
        hidden = items + self.position_embedding[positions]
        hidden = jnp.where(real[..., None], hidden, 0.0)
        embedding_key, *layer_keys = split_keys(key, 1 + len(self.layers))
        hidden = dropout(hidden, self.dropout_rate, embedding_key)
        causal = jnp.tril(jnp.ones((length, length), bool))
        allowed = causal[None] & real[:, None, :] & real[:, :, None]
        distance = jnp.clip(positions[:, :, None] - positions[:, None, :], 0, self.max_len - 1)
        buckets = (None if timestamps is None
                   else time_buckets(timestamps, self.n_time_buckets))
        for layer, layer_key in zip(self.layers, layer_keys, strict=True):
            hidden = layer(hidden, allowed, distance, buckets, key=layer_key)
        if self.final_norm is not None:
            return self.final_norm(hidden)
        return _unit(hidden) / self.temperature

    def item_embeddings(self) -> jax.Array:
        """The output table `[n_items, d]` (L2-normalised rows when `temperature > 0`)."""
        table = self.token_embedding[1:self.n_items + 1]
        return table if self.final_norm is not None else _unit(table)


def _unit(vectors: jax.Array) -> jax.Array:
    """Rows scaled to unit L2 norm. A zero row (a padding position's output at
    initialisation) stays zero with a finite gradient: the squared norm is floored before
    the square root, whose gradient at 0 would be NaN (and NaN times a zero loss weight is
    still NaN)."""
    squared = jnp.sum(jnp.square(vectors), axis=-1, keepdims=True)
    return vectors * jax.lax.rsqrt(jnp.maximum(squared, 1e-12))


def parameter_count(n_items: int, max_len: int, *, hidden_dim: int, n_layers: int,
                    n_heads: int, attention_dim: int, linear_dim: int, temperature: float = 0.0,
                    n_time_buckets: int = 0) -> int:
    """The number of trainable scalars of `HSTU(...)` with these sizes (for tests and reports):
    item and position tables, per layer `W_uvqk`, `W_o` and its bias, the position bias and the
    time bias, and the final layer norm's scale and bias when `temperature = 0`."""
    per_layer = (hidden_dim * n_heads * (2 * linear_dim + 2 * attention_dim)
                 + n_heads * linear_dim * hidden_dim + hidden_dim
                 + max_len + (n_time_buckets + 1 if n_time_buckets else 0))
    head = 0 if temperature else 2 * hidden_dim
    return (n_items + 1) * hidden_dim + max_len * hidden_dim + n_layers * per_layer + head
