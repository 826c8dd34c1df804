"""BERT4Rec: bidirectional self-attention with a masked-item (cloze) objective.

Sun, Liu, Wu, Pei, Lin, Ou & Jiang, "BERT4Rec: Sequential Recommendation with Bidirectional
Encoder Representations from Transformer", CIKM 2019. The encoder is SASRec's
(`models/sasrec.py`) without the causal mask, and with one extra token, `[mask]` =
`n_items + 1`. Training replaces random items by `[mask]` and predicts them from both sides
(`train/sequence.py: mask_items, masked_item_loss`); inference appends `[mask]` after the
history and reads the prediction at that last position (`append_mask_token`, `score_next`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from causalrec_jax.models.sasrec import SequenceTransformer


class BERT4Rec(SequenceTransformer):
    """BERT4Rec (Sun et al. 2019): bidirectional encoder, `[mask]` token `n_items + 1`.

    `model(sequences [b, L]) -> hidden [b, L, d]`; `model.logits(hidden) -> [b, L, n_items]`
    scores, at each position, the item hidden there (meaningful where the token is `[mask]`).
    Neither padding nor `[mask]` is an output column.
    """

    def __init__(
        self,
        n_items: int,
        max_len: int,
        *,
        key: jax.Array,
        hidden_dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        ffn_dim: int | None = None,
        dropout_rate: float = 0.1,
        init_std: float = 0.02,
        block: str = "transformer",
        positions: str = "from_start",
    ):
        super().__init__(
            n_items, max_len, key=key, causal=False, n_special=1, hidden_dim=hidden_dim,
            n_layers=n_layers, n_heads=n_heads, ffn_dim=ffn_dim, dropout_rate=dropout_rate,
            init_std=init_std, block=block, positions=positions,
        )
        self.mask_token = n_items + 1

    def score_next(self, sequences: jax.Array) -> jax.Array:
        """Scores the item after each history: `[b, L]` tokens -> `[b, n_items]`.

        Drops the oldest column and appends `[mask]` (`append_mask_token`), then reads the
        prediction at the `[mask]`; deterministic.
        """
        return self.logits(self(append_mask_token(sequences, self.mask_token))[:, -1])


def append_mask_token(sequences: jax.Array, mask_token: int) -> jax.Array:
    """Shifts left-padded rows one column left and puts `mask_token` in the last column.

    Args:
        sequences: `[b, L]` int32 tokens, most recent last.
        mask_token: the `[mask]` token (`BERT4Rec.mask_token`).

    Returns:
        `[b, L]`: the last L - 1 tokens of each row followed by `mask_token`.
    """
    mask_column = jnp.full((sequences.shape[0], 1), mask_token, sequences.dtype)
    return jnp.concatenate([sequences[:, 1:], mask_column], axis=1)
