"""Full-batch optimisation on the training core: every epoch is one step of `train.step`.

For small auxiliary models fitted on all their data at once (the propensity models, the reward
model of off-policy evaluation, the uplift models over every (user, item) cell). A fit is the
core's pure step, `train.step.make_train_step(loss_fn, optimizer)` on a `TrainState` from
`init_state`, scanned over the epochs with `lax.scan`: one compiled program per fit. The step
folds `state.step` into the fit's key, so epoch `e` sees `fold_in(key, e)` (objectives that
sample, e.g. pairs, draw new samples each epoch), and a step whose loss or gradient is not
finite leaves the state unchanged and is flagged in `FullBatchFit.finite`.

Compile once. `fit_full_batch_jit` is one module-level `jax.jit` whose static arguments are the
objective, the optimiser and the number of epochs; the data (`batch`), the key and the
optimiser's hyperparameters (`hparams`: learning rate, weight decay) are arguments. So fitting
again with another seed, other data of the same shapes or another learning rate reuses the
compiled program, provided the objective and the optimiser are the *same* (equal and
equally hashed) objects: a module-level function or a frozen dataclass for `loss_fn`, and
`full_batch_optimizer(...)`, which caches one optimiser per static setting.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from causalrec_jax.config import TrainConfig
from causalrec_jax.train.loop import TrainingDivergedError
from causalrec_jax.train.step import (
    OPTIMIZER_HPARAMS,
    TrainState,
    init_state,
    make_optimizer,
    make_train_step,
    set_hyperparams,
)

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


class FullBatchFit(NamedTuple):
    """The result of a full-batch fit.

    Attributes:
        state: the final `TrainState` (`state.params` the fitted parameters).
        losses: `[epochs]` the loss at the start of each epoch (before its step).
        finite: `[epochs]` bool, False where the loss or a gradient was NaN/Inf (that step was
            not applied).
    """

    state: TrainState
    losses: jax.Array
    finite: jax.Array


def fit_full_batch(
    loss_fn: LossFn,
    params: Any,
    batch: Any,
    key: jax.Array,
    hparams: Mapping[str, Any] | None = None,
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
) -> FullBatchFit:
    """Minimises `loss_fn(params, batch, key)` by `epochs` full-batch steps of the core's step.

    Pure and jit-able (see `fit_full_batch_jit` for the compiled-once version).

    Args:
        loss_fn: `(params, batch, key) -> (loss, aux)`, as `train.step.make_train_step` takes;
            `key` is `fold_in(key, epoch)`.
        params: initial parameter pytree.
        batch: the whole data (any pytree of arrays), passed unchanged to every step.
        key: the fit's key.
        hparams: values of the optimiser's injected hyperparameters
            (`train.step.OPTIMIZER_HPARAMS`, e.g. `{"learning_rate": 0.05}`), set on the
            state before the first step (may be traced); None keeps the optimiser's own.
        optimizer: an optax transformation (`full_batch_optimizer`, or the caller's own).
        epochs: number of steps (static).

    Returns:
        A `FullBatchFit`.
    """
    state = init_state(params, optimizer)
    if hparams:
        state = set_hyperparams(state, dict(hparams))
    train_step = make_train_step(loss_fn, optimizer)

    def epoch(state: TrainState, _):
        state, metrics = train_step(state, batch, key)
        return state, (metrics["loss"], metrics["finite"])

    state, (losses, finite) = jax.lax.scan(epoch, state, None, length=epochs)
    return FullBatchFit(state, losses, finite)


fit_full_batch_jit = jax.jit(fit_full_batch, static_argnames=("loss_fn", "optimizer", "epochs"))


@functools.lru_cache(maxsize=64)
def _optimizer(optimizer: str, lr_schedule: str, warmup_steps: int,
               total_steps: int) -> optax.GradientTransformation:
    settings = TrainConfig(optimizer=optimizer, lr_schedule=lr_schedule,
                           warmup_steps=warmup_steps)
    return make_optimizer(settings, total_steps=total_steps)


def full_batch_optimizer(
    settings: TrainConfig, total_steps: int
) -> tuple[optax.GradientTransformation, dict[str, float]]:
    """The `[train]`-style optimiser of `settings` for a fit of `total_steps` steps.

    The optimiser (`train.step.make_optimizer`: `optimizer`, `lr_schedule`, `warmup_steps`) is
    cached by those static settings, so equal settings give the same object and
    `fit_full_batch_jit` compiles once; `learning_rate` and `weight_decay` are returned as
    `hparams`, the traced values the fit sets in the optimiser state. They mean what
    `train.learning_rate` / `train.weight_decay` mean: for `adam` and `sgd`,
    `weight_decay * params` is added to the gradient (L2); `adamw` decays decoupled.

    Args:
        settings: a `TrainConfig` (or the `[train]` section with other values swapped in).
        total_steps: the number of steps of the fit (for the schedule).

    Returns:
        `(optimizer, hparams)`.
    """
    optimizer = _optimizer(settings.optimizer, settings.lr_schedule, int(settings.warmup_steps),
                           int(total_steps))
    values = {name: float(getattr(settings, name)) for name in OPTIMIZER_HPARAMS}
    return optimizer, values


def optimizer_settings(base: TrainConfig | None = None, **values: Any) -> TrainConfig:
    """A `TrainConfig` for `full_batch_optimizer`: `base` (default `TrainConfig()`, plain Adam
    with a constant learning rate) with `values` (e.g. `learning_rate`, `weight_decay`)."""
    return dataclasses.replace(TrainConfig() if base is None else base, **values)


def check_finite(fit: FullBatchFit, what: str, remedy: str) -> None:
    """Raises `TrainingDivergedError` naming `what` when a step of `fit` was not finite.

    Args:
        fit: a (concrete, not traced) `FullBatchFit`, or several stacked.
        what: what was fitted, for the message (e.g. "uplift training").
        remedy: the config key to change (e.g. "lower uplift.learning_rate").
    """
    finite = jnp.asarray(fit.finite)
    if not bool(jnp.all(finite)):
        first = int(jnp.argmin(finite.reshape(-1, finite.shape[-1]).all(axis=0)))
        raise TrainingDivergedError(
            f"{what}: the loss or a gradient became NaN/Inf (first at epoch {first}); {remedy}")


__all__ = [
    "FullBatchFit",
    "check_finite",
    "fit_full_batch",
    "fit_full_batch_jit",
    "full_batch_optimizer",
    "optimizer_settings",
]
