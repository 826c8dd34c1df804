"""`train.program.make_train`: a whole run as one pure function, vmapped over seeds and
traced hyperparameters (optimiser and causal knobs) in one compiled program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from causalrec_jax import streams
from causalrec_jax.causal.training import as_hparams, causal_hparams, make_causal_objective
from causalrec_jax.config import CausalConfig, TrainConfig, config_from_dict
from causalrec_jax.models.base import make_scorers
from causalrec_jax.models.factory import make_model
from causalrec_jax.train.loop import fit
from causalrec_jax.train.program import make_train
from causalrec_jax.train.step import (
    init_state,
    make_optimizer,
    make_train_epoch,
    make_train_step,
    model_params,
    set_hyperparams,
    with_average,
)

N_USERS, N_ITEMS, N_ROWS = 20, 15, 120
MODEL = config_from_dict({"model": {"name": "mf", "embedding_dim": 4}}).model


def _model_parts():
    model = make_model(MODEL, n_users=N_USERS, n_items=N_ITEMS, key=jax.random.key(0))
    graphdef, _, constants = nnx.split(model, nnx.Param, ...)
    return graphdef, constants


GRAPHDEF, CONSTANTS = _model_parts()
SCORERS = make_scorers(GRAPHDEF, CONSTANTS)


def init_fn(key):
    model = make_model(MODEL, n_users=N_USERS, n_items=N_ITEMS, key=key, global_bias=3.0)
    return {"prediction": nnx.split(model, nnx.Param, ...)[1]}


def _data():
    rng = np.random.default_rng(0)
    return {
        "users": jnp.asarray(rng.integers(0, N_USERS, N_ROWS), jnp.int32),
        "items": jnp.asarray(rng.integers(0, N_ITEMS, N_ROWS), jnp.int32),
        "ratings": jnp.asarray(rng.integers(1, 6, N_ROWS), jnp.float32),
        "propensities": jnp.asarray(rng.uniform(0.02, 1.0, N_ROWS), jnp.float32),
    }


LOSS_FN = make_causal_objective("ips", CausalConfig(), "mse", SCORERS.score_pairs,
                                n_users=N_USERS, n_items=N_ITEMS, n_rows=N_ROWS)
OPTIMIZER = make_optimizer(TrainConfig(learning_rate=0.01), total_steps=40)
TRAIN = make_train(init_fn=init_fn, loss_fn=LOSS_FN, optimizer=OPTIMIZER, n_rows=N_ROWS,
                   batch_size=32, epochs=10)


def _hparams(learning_rate: float, clip: float) -> dict:
    loss = as_hparams({**causal_hparams(CausalConfig(), 3.0), "propensity_clip": clip})
    return {"optimizer": {"learning_rate": jnp.float32(learning_rate),
                          "weight_decay": jnp.float32(0.0)},
            "loss": loss}


def _stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def test_vmap_over_seeds_and_hparams_equals_a_loop_in_one_program(compile_counter):
    data = _data()
    members = [(0, 0.01, 0.0), (1, 0.01, 0.0), (0, 0.03, 0.0), (0, 0.01, 0.2)]
    keys = jnp.stack([jax.random.key(seed) for seed, _, _ in members])
    hparams = _stack([_hparams(lr, clip) for _, lr, clip in members])
    program = jax.jit(jax.vmap(TRAIN, in_axes=(0, 0, None)))
    states, history = program(keys, hparams, data)
    assert history["loss"].shape == (4, 10)
    assert bool(jnp.all(history["first_bad_batch"] == -1))
    single = jax.jit(TRAIN)
    for row, (seed, lr, clip) in enumerate(members):
        state, _ = single(jax.random.key(seed), _hparams(lr, clip), data)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(states.params),
                        strict=True):
            np.testing.assert_allclose(a, b[row], rtol=1e-5, atol=1e-6)
    final = np.asarray(history["loss"][:, -1])
    # Seed, learning rate and clip each change the outcome; training lowers the loss.
    assert len({round(float(v), 6) for v in final}) == 4
    assert bool(jnp.all(history["loss"][:, -1] < history["loss"][:, 0]))
    # Other values of the traced hyperparameters reuse the compiled program.
    with compile_counter:
        program(keys, _stack([_hparams(0.02, 0.1)] * 4), data)
    assert compile_counter.count == 0


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_make_train_equals_the_host_driver_without_validation(ema_decay):
    """The whole-run program trains what `fit` trains and, with a moving average, keeps the
    average `fit` returns as its model."""
    data = _data()
    train = TRAIN if not ema_decay else make_train(
        init_fn=init_fn, loss_fn=LOSS_FN, optimizer=OPTIMIZER, n_rows=N_ROWS, batch_size=32,
        epochs=10, ema_decay=ema_decay)
    state, history = jax.jit(train)(jax.random.key(3), _hparams(0.01, 0.05), data)
    key = jax.random.key(3)
    params = init_fn(jax.random.fold_in(key, streams.Run.INIT))
    loop_state = init_state(params, OPTIMIZER, _hparams(0.01, 0.05)["loss"],
                            average=bool(ema_decay))
    loop_state = set_hyperparams(loop_state, _hparams(0.01, 0.05)["optimizer"])
    states = jax.tree.map(lambda leaf: leaf[None], loop_state)
    train_epoch = make_train_epoch(with_average(make_train_step(LOSS_FN, OPTIMIZER), ema_decay),
                                   n_rows=N_ROWS, batch_size=32)
    result = fit(train_epoch=train_epoch, states=states, data=data,
                 keys=jax.random.fold_in(key, streams.Run.TRAIN)[None], epochs=10)
    for a, b in zip(jax.tree.leaves(model_params(state)),
                    jax.tree.leaves(result.best_params), strict=True):
        np.testing.assert_allclose(a, b[0], rtol=1e-5, atol=1e-6)
    assert (state.average is None) == (not ema_decay)
    np.testing.assert_allclose([r["loss"] for r in result.history], history["loss"], rtol=1e-5)


def test_a_diverging_member_stops_at_its_last_good_state():
    data = _data()
    data["ratings"] = data["ratings"].at[5].set(jnp.nan)  # a NaN target: every epoch is bad
    state, history = jax.jit(TRAIN)(jax.random.key(0), _hparams(0.01, 0.0), data)
    assert int(history["first_bad_batch"][0]) >= 0
    initial = init_fn(jax.random.fold_in(jax.random.key(0), streams.Run.INIT))
    # The NaN row sits in some batch of epoch 0: steps before it applied, none after.
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(state.params))
    moved = any(not np.allclose(a, b) for a, b in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(initial), strict=True))
    assert moved or int(history["first_bad_batch"][0]) == 0
