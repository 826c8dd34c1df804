"""What every model shares: the scoring interface, non-trainable constants, functional use.

Models are Flax NNX modules used functionally (DESIGN §1): `split_model` separates a model
once into a static `graphdef`, the trainable `params` and everything else (`constants`:
feature tables, item counts); `make_scorers` turns the two static parts into pure functions
of `params`, so `jax.jit`, `jax.grad` and `jax.vmap` (over seeds) apply to them directly.

Every model implements the `Recommender` protocol:

- `model(users [b] int32, items [b] int32, *, key=None) -> scores [b] float32`, where a key
  enables dropout (training) and `key=None` is deterministic (evaluation);
- `model.score_all(users [b] int32) -> scores [b, n_items] float32`, always deterministic.

Models know nothing of losses or propensities: a score is an unnormalised real number, and
the loss decides whether it is a rating, a logit or a ranking score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import nnx


class Constant(nnx.Variable):
    """A non-trainable array carried by a model (feature tables, item counts).

    Kept out of `params` by `split_model`, so optimisers, gradients and weight decay never
    touch it, and shared (not stacked) across seeds.
    """


class Recommender(Protocol):
    """The interface every model in `causalrec_jax.models` implements."""

    n_items: int

    def __call__(
        self, users: jax.Array, items: jax.Array, *, key: jax.Array | None = None,
        dropout_rate: jax.Array | float | None = None,
    ) -> jax.Array:
        """Scores pairs: `users [b]`, `items [b]` int32 -> `[b]` float32 (`dropout_rate`, may
        be traced, overrides the model's own rate; models without dropout ignore it)."""
        ...

    def score_all(self, users: jax.Array) -> jax.Array:
        """Scores every item for each user: `users [b]` int32 -> `[b, n_items]` float32."""
        ...


class ModelParts(NamedTuple):
    """A model split for functional use.

    Attributes:
        graphdef: the static structure; hashable, closed over by jitted functions.
        params: the trainable `nnx.Param` leaves (an `nnx.State` pytree); what optimisers
            update and `jax.grad` differentiates. Stacked `[n_seeds, ...]` when made by
            `init_params`.
        constants: every other variable (`Constant` feature tables, counts); never trained.
    """

    graphdef: nnx.GraphDef
    params: nnx.State
    constants: nnx.State


class Scorers(NamedTuple):
    """Pure scoring functions of `params` (see `make_scorers`).

    Attributes:
        score_pairs: `(params, users [b], items [b], key=None) -> scores [b]`.
        score_all: `(params, users [b]) -> scores [b, n_items]`.
    """

    score_pairs: Callable[..., jax.Array]
    score_all: Callable[[Any, jax.Array], jax.Array]


def split_model(model: nnx.Module) -> ModelParts:
    """Splits `model` into `(graphdef, params, constants)`; `nnx.merge` undoes it."""
    # `...` catches every non-Param variable, so a model holding any other state still
    # round-trips through merge.
    graphdef, params, constants = nnx.split(model, nnx.Param, ...)
    return ModelParts(graphdef, params, constants)


def make_scorers(graphdef: nnx.GraphDef, constants: nnx.State) -> Scorers:
    """Builds pure scoring functions of `params` for a split model.

    The model is rebuilt with `nnx.merge` inside each call; under `jax.jit` that happens once,
    at trace time, so it costs nothing per step. `constants` are closed over, so under
    `jax.vmap` over a leading seed axis of `params` they are shared, not copied.

    Args:
        graphdef: from `split_model`.
        constants: from `split_model`.

    Returns:
        `Scorers(score_pairs, score_all)`.
    """

    def score_pairs(
        params: nnx.State, users: jax.Array, items: jax.Array, key: jax.Array | None = None,
        dropout_rate: jax.Array | float | None = None,
    ) -> jax.Array:
        """Scores pairs: `users [b]`, `items [b]` -> `[b]`; `key` enables dropout, at the
        model's own rate or at `dropout_rate` (traced, for a population) when given."""
        model = nnx.merge(graphdef, params, constants)
        if dropout_rate is None:
            return model(users, items, key=key)
        return model(users, items, key=key, dropout_rate=dropout_rate)

    def score_all(params: nnx.State, users: jax.Array) -> jax.Array:
        """Scores every item for each user: `users [b]` -> `[b, n_items]`."""
        model = nnx.merge(graphdef, params, constants)
        return model.score_all(users)

    return Scorers(score_pairs, score_all)


def row_tables(graphdef: nnx.GraphDef) -> dict[str, str] | None:
    """`{attribute: "users" | "items" | "tokens"}`: the model's tables whose row r belongs to
    user (item, or a sequential model's token) r and is read only where that id is read or
    scored (embeddings, biases, feature tables), as
    the model class declares them in `ROW_TABLES`; None for a model that declares none, whose
    score of one user reads other users' rows (LightGCN's propagation) or no row table at all.

    What reads it: per-user gradients that gather a user's rows instead of differentiating
    whole tables (`privacy.dpsgd`), and row-sharded tables.
    """
    return declared_tables(graphdef.nodes[0].type)


def table_kind(path: tuple, tables: dict[str, str]) -> str:
    """The id kind (`users`, `items`, `tokens`) of the row table a leaf's `path` (from
    `jax.tree_util`) names, or "": the kind of the first name on the path that is a row table
    (`row_tables`), so a model state's own leaves and those of a run's parameters
    (`{"prediction": model state, ...}`), its optimiser state or its moving average are read
    alike."""
    for entry in path:
        for attribute in ("key", "name"):
            name = getattr(entry, attribute, None)
            if isinstance(name, str) and name in tables:
                return tables[name]
    return ""


def declared_tables(model_class: type | None) -> dict[str, str] | None:
    """The `ROW_TABLES` a model class declares (`row_tables`), None where it declares none."""
    declared = getattr(model_class, "ROW_TABLES", None)
    return None if declared is None else dict(declared)


def embedding_table(key: jax.Array, n_rows: int, dim: int, scale: float = 0.1) -> nnx.Param:
    """A `[n_rows, dim]` embedding table drawn from N(0, (scale / sqrt(dim))^2).

    The std falls as 1/sqrt(dim) so that an embedding's norm (about `scale`) does not grow
    with the dimension; dot products of two such rows start near zero (std about
    scale^2 / sqrt(dim)), so a model starts close to its biases. At dim = 64 the std is
    0.0125, near the N(0, 0.01) common in the NCF / LightGCN literature.
    """
    std = scale / math.sqrt(dim)
    return nnx.Param(std * jax.random.normal(key, (n_rows, dim), jnp.float32))


# The padding token of sequential models' inputs (item i is token i + 1).
PAD = 0


def split_keys(key: jax.Array | None, n: int) -> list[jax.Array | None]:
    """`n` independent keys from `key`, or `n` Nones (deterministic)."""
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


def dropout(inputs: jax.Array, rate: float | jax.Array, key: jax.Array | None) -> jax.Array:
    """Inverted dropout: zeroes entries with probability `rate`, rescales the rest.

    `rate` may be traced (a hyperparameter a vmapped population varies); a traced 0 gives the
    inputs unchanged, as a Python 0 does.

    Identity when `key` is None (evaluation) or `rate` is 0, so a model without a key is
    deterministic.
    """
    if key is None or (isinstance(rate, int | float) and rate == 0.0):
        return inputs
    keep = jax.random.bernoulli(key, 1.0 - rate, inputs.shape)
    return jnp.where(keep, inputs / (1.0 - rate), 0.0)


def feature_table(features: Any, name: str, n_rows: int) -> Constant | None:
    """Wraps a `[n_rows, d]` feature array as a float32 `Constant`; None stays None.

    Raises:
        ValueError: naming `name` when the array is not `[n_rows, d]`.
    """
    if features is None:
        return None
    array = jnp.asarray(features, jnp.float32)
    if array.ndim != 2 or array.shape[0] != n_rows:
        raise ValueError(f"{name} has shape {array.shape}, expected [{n_rows}, d]")
    return Constant(array)


def feature_width(features: Constant | None) -> int:
    """The width d of a `[n, d]` feature table; 0 for None."""
    return 0 if features is None else features.shape[1]


def with_features(embedding: nnx.Param, features: Constant | None, ids: jax.Array) -> jax.Array:
    """Rows `ids [b]` of an embedding table, followed by their feature rows if any.

    Returns:
        `[b, dim + d]` (`[b, dim]` without features).
    """
    if features is None:
        return embedding[ids]
    return jnp.concatenate([embedding[ids], features[ids]], axis=-1)


class SequenceModel(nnx.Module):
    """What the next-item models share (SASRec, BERT4Rec, HSTU): token rows in, hidden out.

    A subclass holds `n_items`, `max_len` and `token_embedding` (`[n_tokens, d]`: row 0 is
    padding, rows `1..n_items` the items, then any special tokens) and implements
    `__call__(sequences [b, L], *, key=None, token_weights=None) -> hidden [b, L, d]`, where
    position t encodes the history up to `sequences[:, t]`. Training, evaluation,
    recommendation and explanation use only this interface (`tasks.sequential`,
    `train.sequence`, `explain.deletion.make_history_model`).
    """

    n_items: int
    max_len: int
    # The token table's row r belongs to token r and is read only where that token is read
    # or scored (`row_tables`): a sharded run splits it by rows (`parallel.sharding`).
    ROW_TABLES: ClassVar[dict[str, str]] = {"token_embedding": "tokens"}

    def item_embeddings(self) -> jax.Array:
        """The output table `[n_items, d]`: token rows `1..n_items` (no padding, no [mask])."""
        return self.token_embedding[1:self.n_items + 1]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Scores every item: `hidden [..., d]` -> `[..., n_items]` (column i = item i)."""
        return hidden @ self.item_embeddings().T

    def score_next(self, sequences: jax.Array) -> jax.Array:
        """Deterministic scores of the item after each row: `[b, L]` -> `[b, n_items]`."""
        return self.logits(self(sequences)[:, -1])
