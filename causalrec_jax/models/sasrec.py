"""SASRec: self-attentive sequential recommendation.

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. A user's recent items
(tokens, `data/sequences.py`: 0 = padding, item i = token i + 1) go through

    e_t = E[s_t] + P[p_t]                                (item + learned position embedding)
    h = LayerNorm(Block_L(... Block_1(e)))               (pre-LN Transformer blocks)
    Block(x) = x' + FFN(LN(x')),  x' = x + Attn(LN(x))   (causal multi-head self-attention)
    logits_t = h_t E[1:n_items+1]^T                      (tied item embeddings)

so `logits[b, t, i]` scores item i as the item after `s[b, t]`. The padding row (and
BERT4Rec's `[mask]` row) are not output columns, so they can never be recommended. That is
the default block; `KangBlock` (SASRec's own layer) and `LiGRBlock` (gated, no final
LayerNorm) are the alternatives.

Positions: `p_t` counts the row's real items from the oldest (0, 1, ...), not columns. For a
full window this is SASRec's absolute position; for a left-padded row it makes the outputs
independent of how much padding there is (a history padded to a bucket of 32 or 64 gives the
same scores), and under the causal mask `p_t` depends only on items up to t. With
`positions="from_end"` (RecTools' SASRec) `p_t` counts from the newest item instead, so the
item a ranking follows is always position 0; `p_t` then also tells position t how many items
follow it (not which), so a prefix's outputs change when an item is appended.

The attention is written out here rather than taken from `nnx.MultiHeadAttention`: the model
needs one mask combining causal order with key padding, and dropout driven by an explicit key
(DESIGN §1: randomness is explicit), whereas NNX's layer draws dropout from `Rngs` stored in
the module. Thirty lines of einsum keep both visible.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from causalrec_jax.models.base import PAD, SequenceModel, dropout, split_keys


class SelfAttention(nnx.Module):
    """Multi-head scaled dot-product self-attention with a boolean mask and explicit dropout."""

    def __init__(self, hidden_dim: int, n_heads: int, *, dropout_rate: float, rngs: nnx.Rngs):
        if hidden_dim % n_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.query_layer = nnx.Linear(hidden_dim, hidden_dim, rngs=rngs)
        self.key_layer = nnx.Linear(hidden_dim, hidden_dim, rngs=rngs)
        self.value_layer = nnx.Linear(hidden_dim, hidden_dim, rngs=rngs)
        self.output_layer = nnx.Linear(hidden_dim, hidden_dim, rngs=rngs)
        self.dropout_rate = dropout_rate

    def __call__(
        self, inputs: jax.Array, allowed: jax.Array, *, key: jax.Array | None = None,
        context: jax.Array | None = None,
    ) -> jax.Array:
        """Attends `inputs [b, L, d]` under `allowed [b, L_query, L_key]` bool -> `[b, L, d]`.

        Queries come from `inputs`, keys and values from `context [b, L, d]` (default:
        `inputs`). Every query must be allowed at least one key (the model always allows the
        diagonal), so no softmax row is empty.
        """
        batch, length, hidden = inputs.shape
        head_dim = hidden // self.n_heads
        context = inputs if context is None else context

        def heads(values: jax.Array) -> jax.Array:
            return values.reshape(batch, length, self.n_heads, head_dim)

        query = heads(self.query_layer(inputs))
        keys = heads(self.key_layer(context))
        value = heads(self.value_layer(context))
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, keys) / jnp.sqrt(head_dim)
        scores = jnp.where(allowed[:, None], scores, jnp.finfo(scores.dtype).min)
        weights = dropout(jax.nn.softmax(scores, axis=-1), self.dropout_rate, key)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
        return self.output_layer(attended.reshape(batch, length, hidden))


class _PreNormBlock(nnx.Module):
    """The parts every block has: a normalised self-attention and the FFN's input norm."""

    def __init__(self, hidden_dim: int, n_heads: int, *, dropout_rate: float, rngs: nnx.Rngs):
        self.attention_norm = nnx.LayerNorm(hidden_dim, rngs=rngs)
        self.attention = SelfAttention(
            hidden_dim, n_heads, dropout_rate=dropout_rate, rngs=rngs
        )
        self.ffn_norm = nnx.LayerNorm(hidden_dim, rngs=rngs)
        self.dropout_rate = dropout_rate


class _TwoLayerFFNBlock(_PreNormBlock):
    """A normalised self-attention and a two-layer FFN with biases (`ffn_in`, `ffn_out`)."""

    def __init__(
        self, hidden_dim: int, n_heads: int, ffn_dim: int, *, dropout_rate: float,
        rngs: nnx.Rngs,
    ):
        super().__init__(hidden_dim, n_heads, dropout_rate=dropout_rate, rngs=rngs)
        self.ffn_in = nnx.Linear(hidden_dim, ffn_dim, rngs=rngs)
        self.ffn_out = nnx.Linear(ffn_dim, hidden_dim, rngs=rngs)


class TransformerBlock(_TwoLayerFFNBlock):
    """Pre-LN block: `x + Attn(LN(x))`, then `+ FFN(LN(.))` (GELU), dropout after each."""

    def __call__(
        self, inputs: jax.Array, allowed: jax.Array, *, key: jax.Array | None = None
    ) -> jax.Array:
        """`inputs [b, L, d]`, `allowed [b, L, L]` bool -> `[b, L, d]`."""
        attention_key, attention_out_key, ffn_hidden_key, ffn_out_key = split_keys(key, 4)
        attended = self.attention(self.attention_norm(inputs), allowed, key=attention_key)
        hidden = inputs + dropout(attended, self.dropout_rate, attention_out_key)
        inner = dropout(
            jax.nn.gelu(self.ffn_in(self.ffn_norm(hidden))), self.dropout_rate, ffn_hidden_key
        )
        return hidden + dropout(self.ffn_out(inner), self.dropout_rate, ffn_out_key)


class KangBlock(_TwoLayerFFNBlock):
    """SASRec's own block (Kang & McAuley 2018, as RecTools' SASRec runs it; their TF code
    has no output projection after the attention):
    the normalised stream queries the raw one and is the attention's residual, and the ReLU
    FFN's residual is its normalised input:

        q = LN(x),  h = q + Attn(queries q, keys and values x)
        f = LN(h),  y = f + W_2 ReLU(W_1 f)

    dropout on the attention weights, inside the FFN and on its output."""

    def __call__(
        self, inputs: jax.Array, allowed: jax.Array, *, key: jax.Array | None = None
    ) -> jax.Array:
        """`inputs [b, L, d]`, `allowed [b, L, L]` bool -> `[b, L, d]`."""
        attention_key, ffn_hidden_key, ffn_out_key = split_keys(key, 3)
        query = self.attention_norm(inputs)
        hidden = query + self.attention(query, allowed, key=attention_key, context=inputs)
        normed = self.ffn_norm(hidden)
        inner = dropout(jax.nn.relu(self.ffn_in(normed)), self.dropout_rate, ffn_hidden_key)
        return normed + dropout(self.ffn_out(inner), self.dropout_rate, ffn_out_key)


class LiGRBlock(_PreNormBlock):
    """LiGR block (LinkedIn's gated residual layer, as eSASRec uses it; Tikhonovich et al.,
    RecSys 2025): each sublayer's output enters the residual stream through a sigmoid gate
    computed from the stream itself, and the FFN is a bias-free SwiGLU:

        h = x + s(W_a x + b_a) * Attn(LN(x))
        y = h + s(W_f h + b_f) * W_2 (SiLU(W_1 LN(h)) * W_3 LN(h))

    dropout after the attention, inside the FFN and on both sublayer outputs."""

    def __init__(
        self, hidden_dim: int, n_heads: int, ffn_dim: int, *, dropout_rate: float,
        rngs: nnx.Rngs,
    ):
        super().__init__(hidden_dim, n_heads, dropout_rate=dropout_rate, rngs=rngs)
        self.attention_gate = nnx.Linear(hidden_dim, hidden_dim, rngs=rngs)
        self.ffn_in = nnx.Linear(hidden_dim, ffn_dim, use_bias=False, rngs=rngs)
        self.ffn_value = nnx.Linear(hidden_dim, ffn_dim, use_bias=False, rngs=rngs)
        self.ffn_out = nnx.Linear(ffn_dim, hidden_dim, use_bias=False, rngs=rngs)
        self.ffn_gate = nnx.Linear(hidden_dim, hidden_dim, rngs=rngs)

    def __call__(
        self, inputs: jax.Array, allowed: jax.Array, *, key: jax.Array | None = None
    ) -> jax.Array:
        """`inputs [b, L, d]`, `allowed [b, L, L]` bool -> `[b, L, d]`."""
        attention_key, attention_out_key, ffn_hidden_key, ffn_out_key = split_keys(key, 4)
        attended = self.attention(self.attention_norm(inputs), allowed, key=attention_key)
        hidden = inputs + jax.nn.sigmoid(self.attention_gate(inputs)) * dropout(
            attended, self.dropout_rate, attention_out_key)
        normed = self.ffn_norm(hidden)
        inner = dropout(jax.nn.silu(self.ffn_in(normed)) * self.ffn_value(normed),
                        self.dropout_rate, ffn_hidden_key)
        return hidden + jax.nn.sigmoid(self.ffn_gate(hidden)) * dropout(
            self.ffn_out(inner), self.dropout_rate, ffn_out_key)


BLOCKS = {"transformer": TransformerBlock, "sasrec": KangBlock, "ligr": LiGRBlock}
POSITIONS = ("from_start", "from_end")


class SequenceTransformer(SequenceModel):
    """The encoder shared by SASRec (causal) and BERT4Rec (bidirectional).

    Token rows: 0 = padding, `1..n_items` = items, then `n_special` extra tokens (BERT4Rec's
    `[mask]`). Output logits cover the items only. `block`: `"transformer"` (pre-LN blocks,
    GELU FFN of `ffn_dim`, a final LayerNorm), `"sasrec"` (`KangBlock`s, ReLU FFN of
    `ffn_dim`, a final LayerNorm) or `"ligr"` (`LiGRBlock`s, SwiGLU of `ffn_dim`, no final
    norm, as in eSASRec). `positions`: `"from_start"` numbers a row's real items from the
    oldest, `"from_end"` from the newest (RecTools' inverse positions).
    """

    def __init__(
        self,
        n_items: int,
        max_len: int,
        *,
        key: jax.Array,
        causal: bool,
        n_special: int = 0,
        hidden_dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 1,
        ffn_dim: int | None = None,
        dropout_rate: float = 0.2,
        init_std: float = 0.02,
        block: str = "transformer",
        positions: str = "from_start",
    ):
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}: expected one of {', '.join(BLOCKS)}")
        if positions not in POSITIONS:
            raise ValueError(f"unknown positions {positions!r}: expected one of "
                             f"{', '.join(POSITIONS)}")
        self.from_end = positions == "from_end"
        item_key, position_key, layer_key = jax.random.split(key, 3)
        rngs = nnx.Rngs(params=layer_key)
        self.n_items = n_items
        self.max_len = max_len
        self.causal = causal
        self.dropout_rate = dropout_rate
        n_tokens = n_items + 1 + n_special
        self.token_embedding = nnx.Param(
            init_std * jax.random.normal(item_key, (n_tokens, hidden_dim), jnp.float32)
        )
        self.position_embedding = nnx.Param(
            init_std * jax.random.normal(position_key, (max_len, hidden_dim), jnp.float32)
        )
        self.blocks = nnx.List([
            BLOCKS[block](
                hidden_dim, n_heads, ffn_dim or 4 * hidden_dim, dropout_rate=dropout_rate,
                rngs=rngs,
            )
            for _ in range(n_layers)
        ])
        self.final_norm = (nnx.LayerNorm(hidden_dim, rngs=rngs) if block != "ligr" else None)

    def __call__(
        self, sequences: jax.Array, *, key: jax.Array | None = None,
        token_weights: jax.Array | None = None,
    ) -> jax.Array:
        """Encodes token rows: `sequences [b, L]` int32 (L <= max_len) -> hidden `[b, L, d]`.

        A key enables dropout (training); `key=None` is deterministic. Outputs at padding
        positions are finite but meaningless; outputs elsewhere never depend on them.
        `token_weights [b, L]` float, when given, scales each token's item embedding (not its
        position embedding): a continuous relaxation of removing items, for path-integrated
        gradients (`causalrec_jax.explain`); None (the default) is the model itself.
        """
        length = sequences.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        real = sequences != PAD
        counted = jnp.cumsum(real[:, ::-1], axis=1)[:, ::-1] if self.from_end else jnp.cumsum(
            real, axis=1)
        positions = jnp.clip(counted - 1, 0, self.max_len - 1)
        items = self.token_embedding[sequences]
        if token_weights is not None:
            items = items * token_weights[..., None].astype(items.dtype)
        hidden = items + self.position_embedding[positions]
        hidden = jnp.where(real[..., None], hidden, 0.0)
        embedding_key, *block_keys = split_keys(key, 1 + len(self.blocks))
        hidden = dropout(hidden, self.dropout_rate, embedding_key)
        allowed = jnp.broadcast_to(real[:, None, :], (*sequences.shape, length))
        if self.causal:
            allowed = allowed & jnp.tril(jnp.ones((length, length), bool))
        # Each query may attend to itself, so padding queries (which see no real key under
        # the causal mask) keep a non-empty softmax; real queries allow themselves anyway.
        allowed = allowed | jnp.eye(length, dtype=bool)
        for block, block_key in zip(self.blocks, block_keys, strict=True):
            hidden = block(hidden, allowed, key=block_key)
        return hidden if self.final_norm is None else self.final_norm(hidden)


class SASRec(SequenceTransformer):
    """SASRec (Kang & McAuley 2018): causal self-attention over the user's recent items.

    `model(sequences [b, L]) -> hidden [b, L, d]`; `model.logits(hidden) -> [b, L, n_items]`,
    where position t scores the item that follows `sequences[:, t]`.
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
        ffn_dim: int | None = None,
        dropout_rate: float = 0.2,
        init_std: float = 0.02,
        block: str = "transformer",
        positions: str = "from_start",
    ):
        super().__init__(
            n_items, max_len, key=key, causal=True, hidden_dim=hidden_dim, n_layers=n_layers,
            n_heads=n_heads, ffn_dim=ffn_dim, dropout_rate=dropout_rate, init_std=init_std,
            block=block, positions=positions,
        )
