"""`train.ema_decay`: the moving average of the parameters a run evaluates and saves."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from causalrec_jax.config import TrainConfig, load_config
from causalrec_jax.errors import ConfigError
from causalrec_jax.train.loop import fit, seed_slice
from causalrec_jax.train.step import (
    init_state,
    make_optimizer,
    make_train_epoch,
    make_train_step,
    model_params,
    with_average,
)
from tests.train.test_step import batch_of, setup, toy_data


@pytest.mark.parametrize("decay", [0.5, 0.9])
def test_the_average_is_the_debiased_exponential_average_of_the_applied_steps(decay):
    """After the t-th applied step the average is sum_s d^(t-s) theta_s / sum_s d^(t-s) over
    the parameters after each applied step; a skipped step and a non-finite one change
    nothing (neither the parameters nor the average)."""
    parts, loss_fn, optimizer, _ = setup("mse")
    step = jax.jit(with_average(make_train_step(loss_fn, optimizer), decay))
    state = init_state(seed_slice(parts.params, 0), optimizer, average=True)
    data = toy_data(n=96)
    good = [batch_of({k: v[i * 16:] for k, v in data.items()}) for i in range(5)]
    bad = dict(good[0], ratings=good[0]["ratings"].at[0].set(jnp.nan))
    iterates = []
    for index, batch in enumerate(good):
        if index == 2:
            kept, _ = step(state, batch, jax.random.key(0), apply=jnp.bool_(False))
            assert int(kept.step) == int(state.step)
            np.testing.assert_array_equal(jax.tree.leaves(kept.average)[0],
                                          jax.tree.leaves(state.average)[0])
            kept, metrics = step(state, bad, jax.random.key(0))
            assert not bool(metrics["finite"])
            np.testing.assert_array_equal(jax.tree.leaves(kept.average)[0],
                                          jax.tree.leaves(state.average)[0])
        state, _ = step(state, batch, jax.random.key(index))
        iterates.append(state.params)
        weights = np.array([decay ** (len(iterates) - 1 - s) for s in range(len(iterates))])
        expected = jax.tree.map(
            lambda *leaves, w=weights: sum(x * np.asarray(leaf) for x, leaf in zip(w, leaves,
                                                                                   strict=True))
            / w.sum(), *iterates)
        for got, want in zip(jax.tree.leaves(state.average), jax.tree.leaves(expected),
                             strict=True):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    # the first applied step's average is its parameters; later ones differ from them
    assert int(state.step) == 5
    assert not np.allclose(jax.tree.leaves(state.average)[0], jax.tree.leaves(state.params)[0])


def test_averaging_damps_the_noise_of_noisy_gradients():
    """On a quadratic whose gradients carry Gaussian noise (as DP-SGD's do), SGD's last
    iterate wanders around the optimum; the moving average of the iterates lies far closer
    to it: the reason a private run may average."""
    optimum = jnp.linspace(-1.0, 1.0, 400)

    def loss_fn(params, batch, key):
        noise = 3.0 * jax.random.normal(key, optimum.shape)
        loss = 0.5 * jnp.sum((params["w"] - optimum) ** 2) + jnp.dot(params["w"], noise)
        return loss, {}

    optimizer = make_optimizer(TrainConfig(optimizer="sgd", learning_rate=0.2))
    epoch = jax.jit(make_train_epoch(with_average(make_train_step(loss_fn, optimizer), 0.99),
                                     n_rows=300, batch_size=1))
    state = init_state({"w": jnp.zeros_like(optimum)}, optimizer, average=True)
    state, _ = epoch(state, {"x": jnp.zeros(300)}, jax.random.key(3), jnp.int32(0))
    last = float(jnp.linalg.norm(state.params["w"] - optimum))
    averaged = float(jnp.linalg.norm(model_params(state)["w"] - optimum))
    assert averaged < 0.35 * last  # about 0.21 in theory (an AR(1) process averaged)


def test_fit_validates_and_returns_the_average():
    """`fit` hands the moving average to the validation and keeps it as the best
    parameters; without a moving average it is the parameters themselves."""
    parts, loss_fn, optimizer, keys = setup("mse", 2)
    data = toy_data()
    seen = {}

    def evaluate_fn(params):
        seen["params"] = params
        return {"mse": float(jnp.sum(jax.tree.leaves(params)[0]))}

    results = {}
    for decay in (0.0, 0.7):
        train_epoch = make_train_epoch(with_average(make_train_step(loss_fn, optimizer), decay),
                                       n_rows=64, batch_size=16)
        states = jax.vmap(lambda p, d=decay: init_state(p, optimizer, average=bool(d)))(
            jax.tree.map(jnp.copy, parts.params))  # (fit donates the states)
        result = fit(train_epoch=train_epoch, states=states, data=data, keys=keys, epochs=3,
                     evaluate_fn=evaluate_fn, metric="mse", patience=5)
        final = result.states.average if decay else result.states.params
        np.testing.assert_array_equal(jax.tree.leaves(seen["params"])[0],
                                      jax.tree.leaves(seed_slice(final, 1))[0])
        results[decay] = result
    # both runs take the same steps: the parameters agree, the averages do not
    np.testing.assert_array_equal(jax.tree.leaves(results[0.0].states.params)[0],
                                  jax.tree.leaves(results[0.7].states.params)[0])
    assert not np.allclose(jax.tree.leaves(results[0.0].best_params)[0],
                           jax.tree.leaves(results[0.7].best_params)[0])


def test_the_decay_is_checked_in_one_line():
    with pytest.raises(ConfigError, match=r"train\.ema_decay.*\[0, 1\)"):
        load_config(None, ["train.ema_decay=1.0"])
    with pytest.raises(ConfigError, match=r"train\.ema_decay"):
        with_average(lambda state, batch, key: (state, {}), 1.5)
    assert with_average(optax.sgd, 0) is optax.sgd
