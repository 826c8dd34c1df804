"""A whole training run as one pure function: `make_train(...) -> train(key, hparams, data)`.

The shape of PureJaxRL's `make_train` (Lu et al., "Discovered Policy Optimisation", NeurIPS
2022), for recommenders: everything static (shapes, step counts, the model's structure, the
loss, the optimiser's form) is closed over by `make_train`; everything a sweep varies is an
argument — the run key and a `hparams` pytree of traced numbers (the optimiser's learning rate
and weight decay, the loss's causal knobs). So

    jax.jit(jax.vmap(train, in_axes=(0, 0, None)))(keys, hparams, data)

trains seeds × configurations as one compiled program, with no host round trip: the epochs
run under `lax.scan`, each epoch the same scanned `step.make_train_epoch` the host driver
(`train.loop.fit`, which adds early stopping, checkpoints and logging) runs one call at a
time. A run of `fit` without validation for `epochs` epochs and `train` give the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from causalrec_jax import streams
from causalrec_jax.train.step import (
    TrainState,
    init_state,
    make_train_epoch,
    make_train_step,
    set_hyperparams,
    with_average,
)


def make_train(
    *,
    init_fn: Callable[[jax.Array], Any],
    loss_fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]],
    optimizer: optax.GradientTransformation,
    n_rows: int,
    batch_size: int,
    epochs: int,
    ema_decay: float = 0.0,
) -> Callable[[jax.Array, dict[str, Any], dict[str, Any]], tuple[TrainState, dict[str, Any]]]:
    """Builds `train(key, hparams, data) -> (state, history)`, pure and jit-/vmap-able.

    Args:
        init_fn: `key -> params`, the model's initial trainable parameters.
        loss_fn: `(params, batch, key, *, hparams) -> (loss, aux)` (the `hparams` keyword
            only when `hparams["loss"]` is given).
        optimizer: built with `step.make_optimizer` (its learning rate and weight decay are
            injected hyperparameters, set from `hparams["optimizer"]`).
        n_rows: training rows in `data` (static).
        batch_size: rows per step (static).
        epochs: epochs to train (static).
        ema_decay: `train.ema_decay` (static): the state keeps the moving average of the
            parameters (`step.with_average`, `TrainState.average`, the model `fit` keeps:
            `step.model_params`); 0: none.

    Returns:
        `train(key, hparams, data)`: `key` a typed run key; `hparams` a dict with optional
        `"optimizer"` (`{"learning_rate": [], "weight_decay": []}`) and `"loss"` (the loss's
        traced knobs, passed as `hparams=`); `data` the `[n_rows]` arrays and `shared_` arrays
        of `step.make_train_epoch`. Returns the final `TrainState` and the history
        `{"loss": [epochs], "first_bad_batch": [epochs]}`; after a non-finite step the state
        stays at the last good one (as in `fit`, which stops there with an error).
    """
    train_epoch = make_train_epoch(with_average(make_train_step(loss_fn, optimizer), ema_decay),
                                   n_rows=n_rows, batch_size=batch_size)

    def train(key: jax.Array, hparams: dict[str, Any], data: dict[str, Any]):
        params = init_fn(streams.derive(key, streams.Run.INIT))
        state = init_state(params, optimizer, hparams.get("loss"), average=bool(ema_decay))
        if hparams.get("optimizer"):
            state = set_hyperparams(state, hparams["optimizer"])
        train_key = streams.derive(key, streams.Run.TRAIN)

        def one_epoch(carry, epoch):
            state, healthy = carry
            new_state, metrics = train_epoch(state, data, train_key, epoch)
            # After a bad epoch nothing moves (fit would have stopped there).
            state = jax.tree.map(lambda new, old: jnp.where(healthy, new, old), new_state, state)
            healthy = healthy & (metrics["first_bad_batch"] < 0)
            return (state, healthy), metrics

        (state, _), history = jax.lax.scan(
            one_epoch, (state, jnp.asarray(True)), jnp.arange(epochs, dtype=jnp.int32))
        return state, history

    return train
