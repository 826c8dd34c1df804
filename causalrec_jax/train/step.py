"""The pure training step and the scanned epoch (DESIGN §1, "Train step").

`train_step(state, batch, key) -> (state, metrics)` folds `state.step` into the run key, so a
Python loop over steps, one `lax.scan` over an epoch and a resumed run draw the same negatives
and dropout masks and end with identical parameters. A step whose loss or gradients are not
finite leaves the state unchanged and says so in its metrics; the epoch then stops updating
and reports the first bad batch, so the caller can stop with a clear message and keep the last
good checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from causalrec_jax.config import TrainConfig
from causalrec_jax.errors import ConfigError
from causalrec_jax.train.objectives import Batch, LossFn

# Names of data arrays every step sees whole instead of batched.
SHARED = "shared_"

_STREAM_STEPS = 0
_STREAM_ORDER = 1


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a training run carries from step to step (a pytree).

    Attributes:
        params: the model's trainable parameters (a pytree of arrays).
        opt_state: the optimiser's state.
        step: `[]` int32 number of updates applied.
    """

    params: Any
    opt_state: Any
    step: jax.Array

    def replace(self, **changes: Any) -> TrainState:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def make_optimizer(config: TrainConfig, learning_rate: Any = None) -> optax.GradientTransformation:
    """The optax optimiser of `[train]`.

    `adam` and `sgd` add `weight_decay * params` to the gradient (L2 regularisation, as
    RecBole's `weight_decay`); `adamw` decays the weights apart from the gradient (Loshchilov &
    Hutter, ICLR 2019). `learning_rate` overrides `config.learning_rate`; it may be a traced
    scalar, so a sweep can vmap over it.
    """
    rate = config.learning_rate if learning_rate is None else learning_rate
    if config.optimizer == "adamw":
        return optax.adamw(rate, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        base = optax.adam(rate)
    elif config.optimizer == "sgd":
        base = optax.sgd(rate)
    else:
        raise ConfigError(f"key train.optimizer: unknown optimiser {config.optimizer!r}")
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), base)
    return base


def init_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state at step 0."""
    step = jnp.zeros((), jnp.int32)
    return TrainState(params=params, opt_state=optimizer.init(params), step=step)


def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def make_train_step(
    loss_fn: LossFn, optimizer: optax.GradientTransformation
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds `train_step(state, batch, key) -> (state, metrics)`, pure and jit-able.

    `metrics` has `loss` and `finite` (False when the loss or a gradient was NaN/Inf, in which
    case the returned state is the input state).
    """

    def train_step(state: TrainState, batch: Batch, key: jax.Array):
        step_key = jax.random.fold_in(key, state.step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, step_key
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        new_state = TrainState(params=params, opt_state=opt_state, step=state.step + 1)
        state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        return state, {**aux, "loss": loss, "finite": finite}

    return train_step


def epoch_batches(
    key: jax.Array, data: Batch, n_rows: int, batch_size: int
) -> tuple[Batch, int]:
    """Shuffles the rows and cuts them into `[n_batches, batch_size]` with a padding mask.

    `data` arrays are `[n_rows]` on the device; the permutation is drawn on the device too.
    The padded tail repeats row 0 with `mask = False`, so every batch has the same shape.
    """
    n_batches = max(1, -(-n_rows // batch_size))
    order = jax.random.permutation(key, n_rows)
    padded = jnp.concatenate([order, jnp.zeros(n_batches * batch_size - n_rows, order.dtype)])
    mask = jnp.arange(n_batches * batch_size) < n_rows
    batches = {name: values[padded].reshape(n_batches, batch_size) for name, values in data.items()}
    batches["mask"] = mask.reshape(n_batches, batch_size) & batches.get(
        "mask", jnp.ones_like(mask).reshape(n_batches, batch_size)
    )
    return batches, n_batches


def make_train_epoch(
    train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]],
    *,
    n_rows: int,
    batch_size: int,
) -> Callable[[TrainState, Batch, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds `train_epoch(state, data, key, epoch) -> (state, metrics)`: one `lax.scan`.

    `data` holds `[n_rows]` arrays, shuffled and batched, and arrays whose names start with
    `shared_` (e.g. `shared_seen_pairs`), passed whole to every step.
    The epoch's order comes from `fold_in(key, epoch)`, so resuming at an epoch boundary
    replays the same order. After a non-finite step the remaining steps are skipped (the
    state stays at the last good one). `metrics`: `loss` (mean over the epoch's good batches)
    and `first_bad_batch` (-1 when every batch was finite).
    """

    def train_epoch(state: TrainState, data: Batch, key: jax.Array, epoch: jax.Array):
        # Separate streams for the steps and the data order, so they never share a key.
        step_key = jax.random.fold_in(key, _STREAM_STEPS)
        order_key = jax.random.fold_in(jax.random.fold_in(key, _STREAM_ORDER), epoch)
        rows = {name: values for name, values in data.items() if not name.startswith(SHARED)}
        shared = {name: values for name, values in data.items() if name.startswith(SHARED)}
        batches, n_batches = epoch_batches(order_key, rows, n_rows, batch_size)

        def body(carry, inputs):
            state, first_bad = carry
            index, batch = inputs
            batch = {**batch, **shared}
            new_state, metrics = train_step(state, batch, step_key)
            healthy = first_bad < 0
            state = jax.tree.map(lambda new, old: jnp.where(healthy, new, old), new_state, state)
            bad_now = healthy & ~metrics["finite"]
            first_bad = jnp.where(bad_now, index, first_bad)
            return (state, first_bad), jnp.where(healthy & metrics["finite"], metrics["loss"], 0.0)

        (state, first_bad), batch_losses = jax.lax.scan(
            body, (state, jnp.asarray(-1, jnp.int32)), (jnp.arange(n_batches), batches)
        )
        n_good = jnp.where(first_bad < 0, n_batches, first_bad)
        loss = batch_losses.sum() / jnp.maximum(n_good, 1)
        return state, {"loss": loss, "first_bad_batch": first_bad}

    return train_epoch
