"""Full-batch optimisation: every epoch is one gradient step on the whole objective.

For small auxiliary models fitted on all their data at once (propensity models, the reward
model of off-policy evaluation, uplift models over every (user, item) cell): the epochs run
under one `lax.scan`, so the whole fit is one compiled program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def fit_full_batch(
    loss_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    optimizer: optax.GradientTransformation,
    epochs: int,
    key: jax.Array | None = None,
) -> tuple[Any, jax.Array]:
    """Minimises `loss_fn(params, epoch_key)` by `epochs` full-batch steps of `optimizer`.

    Args:
        loss_fn: scalar objective of the parameters and a per-epoch key (`fold_in(key, epoch)`,
            for objectives that sample, e.g. pairs); objectives without sampling ignore it.
        params: initial parameter pytree.
        optimizer: an optax transformation.
        epochs: number of steps (static).
        key: base key of the per-epoch keys (default `jax.random.key(0)`).

    Returns:
        `(params, losses)`: the final parameters and the `[epochs]` losses before each step.
    """
    key = jax.random.key(0) if key is None else key

    def epoch(carry, index):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, jax.random.fold_in(key, index))
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    (params, _), losses = jax.lax.scan(
        epoch, (params, optimizer.init(params)), jnp.arange(epochs)
    )
    return params, losses
