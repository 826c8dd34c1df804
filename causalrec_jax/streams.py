"""Named, hierarchical random streams: every `jax.random.fold_in` of the library, by name.

A key is split into roles by folding a *stream id* into it; a role's key is split further the
same way, so the streams form a tree (run seed -> role -> sub-role). Each level is an
`enum.IntEnum` whose values are unique (`@enum.unique`), so no id serves two roles at one
level. A *data index* (a seed, an epoch, a step, a user) is never folded at the level of stream
ids: it is folded into a key that was first derived for that index family (`index`), so
"user 2" can never equal "stream 2".

    key = jax.random.key(seed)                  # a run seed
    init_key = derive(key, Run.INIT)            # the model's initialisation
    train_key = derive(key, Run.TRAIN)          # the training loop's draws
    order_key = index(derive(train_key, Epoch.ORDER), epoch)   # one epoch's shuffle

The numeric values are those the library used before the streams were named, so results are
unchanged by naming them.
"""

from __future__ import annotations

import enum

import jax


@enum.unique
class Run(enum.IntEnum):
    """Roles of a run seed's key (`tasks.ordinary`, `train.program`)."""

    INIT = 0  # the prediction model's initial parameters
    TRAIN = 1  # everything the training loop draws (orders, negatives, dropout, cells)
    IMPUTATION = 2  # the imputation model of the joint doubly robust methods
    PROPENSITY_MODEL = 7919  # a learned / logistic propensity model fitted for the run


@enum.unique
class Epoch(enum.IntEnum):
    """Roles of the training key within the loop (`train.step`)."""

    STEPS = 0  # the per-step keys (the step index is folded in under this stream)
    ORDER = 1  # the epoch's shuffle (the epoch index is folded in under this stream)


@enum.unique
class Step(enum.IntEnum):
    """Roles of one step's key inside a loss (`train.objectives`, `causal.training`)."""

    NEGATIVES = 0  # sampled negative items
    DROPOUT = 1  # the model's dropout masks
    CELLS = 2  # cells drawn uniformly from the whole matrix (the all-cells losses)


def derive(key: jax.Array, stream: enum.IntEnum) -> jax.Array:
    """The key of the named `stream` under `key` (one level down the tree)."""
    return jax.random.fold_in(key, int(stream))


def index(key: jax.Array, position: int | jax.Array) -> jax.Array:
    """The key of item `position` of an index family (a seed, epoch, step or user) whose
    stream `key` is; `key` must come from `derive`, never be a level of stream ids itself."""
    return jax.random.fold_in(key, position)
