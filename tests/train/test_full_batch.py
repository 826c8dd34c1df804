"""fit_full_batch: the core's step scanned over epochs; minimises, sees per-epoch keys, flags
non-finite steps, and compiles once per static signature."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from causalrec_jax.config import TrainConfig
from causalrec_jax.train.full_batch import (
    check_finite,
    fit_full_batch,
    fit_full_batch_jit,
    full_batch_optimizer,
    optimizer_settings,
)
from causalrec_jax.train.loop import TrainingDivergedError
from causalrec_jax.train.step import init_state, make_train_step


def _quadratic(params, batch, key):
    del key
    return jnp.sum(jnp.square(params["w"] - batch["target"])), {}


def _noisy(params, batch, key):  # a stochastic objective: its minimiser is the noise mean 0
    del batch
    return jnp.square(params - jax.random.normal(key)), {}


def test_minimises_a_quadratic_and_records_losses():
    target = jnp.array([1.0, -2.0, 3.0])
    fit = fit_full_batch(_quadratic, {"w": jnp.zeros(3)}, {"target": target}, jax.random.key(0),
                         optimizer=optax.adam(0.1), epochs=300)
    np.testing.assert_allclose(fit.state.params["w"], target, atol=1e-2)
    assert fit.losses.shape == (300,) and float(fit.losses[0]) == 14.0
    assert float(fit.losses[-1]) < 1e-3 and bool(jnp.all(fit.finite))
    assert int(fit.state.step) == 300


def test_equals_a_python_loop_over_the_core_step():
    optimizer = optax.sgd(0.05)
    key = jax.random.key(3)
    fit = fit_full_batch(_noisy, jnp.float32(0.0), {}, key, optimizer=optimizer, epochs=7)
    step = jax.jit(make_train_step(_noisy, optimizer))
    state = init_state(jnp.float32(0.0), optimizer)
    for _ in range(7):
        state, _ = step(state, {}, key)
    np.testing.assert_allclose(float(fit.state.params), float(state.params), rtol=1e-6)


def test_each_epoch_gets_its_own_key_and_the_fit_is_deterministic():
    def run(seed):
        return fit_full_batch(_noisy, jnp.float32(0.0), {}, jax.random.key(seed),
                              optimizer=optax.sgd(0.05), epochs=400).state.params

    first, again, other = run(1), run(1), run(2)
    assert float(first) == float(again)
    assert float(first) != float(other)
    assert abs(float(first)) < 0.5  # near the noise mean 0, not stuck at one draw


def test_hparams_set_the_injected_learning_rate():
    optimizer, hparams = full_batch_optimizer(optimizer_settings(learning_rate=0.1), 50)
    assert hparams == {"learning_rate": pytest.approx(0.1), "weight_decay": 0.0}
    batch = {"target": jnp.array([1.0, 1.0])}
    slow = fit_full_batch(_quadratic, {"w": jnp.zeros(2)}, batch, jax.random.key(0),
                          {"learning_rate": 1e-4}, optimizer=optimizer, epochs=50)
    fast = fit_full_batch(_quadratic, {"w": jnp.zeros(2)}, batch, jax.random.key(0), hparams,
                          optimizer=optimizer, epochs=50)
    assert float(slow.losses[-1]) > 1.9 > 0.1 > float(fast.losses[-1])


def test_weight_decay_means_what_train_weight_decay_means():
    # adam: weight_decay * params is added to the gradient, so at the optimum of
    # (w - 1)^2 + wd w^2 / 2 the parameter is 2 / (2 + wd).
    optimizer, hparams = full_batch_optimizer(
        optimizer_settings(learning_rate=0.05, weight_decay=2.0), 2000)
    fit = fit_full_batch(_quadratic, {"w": jnp.zeros(1)}, {"target": jnp.ones(1)},
                         jax.random.key(0), hparams, optimizer=optimizer, epochs=2000)
    np.testing.assert_allclose(fit.state.params["w"], [0.5], atol=2e-3)


def test_compiles_once_across_seeds_data_and_learning_rates():
    settings = optimizer_settings(TrainConfig(), learning_rate=0.1)
    optimizer, hparams = full_batch_optimizer(settings, 30)
    again, _ = full_batch_optimizer(optimizer_settings(learning_rate=0.3), 30)
    assert again is optimizer  # cached by its static settings

    def fit(seed, target, rate):
        return fit_full_batch_jit(_quadratic, {"w": jnp.zeros(2)}, {"target": target},
                                  jax.random.key(seed), {**hparams, "learning_rate": rate},
                                  optimizer=optimizer, epochs=30)

    fit(0, jnp.ones(2), 0.1)
    size = fit_full_batch_jit._cache_size()
    other = fit(1, jnp.array([2.0, -1.0]), 0.3)
    assert fit_full_batch_jit._cache_size() == size
    assert float(other.losses[0]) == 5.0


def test_a_non_finite_step_is_flagged_skipped_and_refused():
    def loss(params, batch, key):
        del batch, key
        return jnp.log(params), {}  # NaN once params < 0

    fit = fit_full_batch(loss, jnp.float32(0.5), {}, jax.random.key(0),
                         optimizer=optax.sgd(1.0), epochs=5)
    assert not bool(jnp.all(fit.finite))
    assert bool(jnp.isfinite(fit.state.params))  # the bad step was not applied
    with pytest.raises(TrainingDivergedError, match="toy model: .*lower toy.rate"):
        check_finite(fit, "toy model", "lower toy.rate")
