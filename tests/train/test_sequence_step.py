"""The sequence models' step is the training core's step: jit equals eager, vmap over seeds
equals a Python loop, the sampled losses honour their negatives, bad steps change nothing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from causalrec_jax.config import TrainConfig
from causalrec_jax.data.sequences import item_windows, training_windows
from causalrec_jax.models.bert4rec import BERT4Rec
from causalrec_jax.models.sasrec import SASRec
from causalrec_jax.train.objectives import seen_items_data
from causalrec_jax.train.sequence import make_sequence_objective
from causalrec_jax.train.step import (
    init_state,
    make_optimizer,
    make_train_step,
    set_hyperparams,
)

N_ITEMS = 12
MAX_LEN = 6


def _sequences(n_users=8, length=9, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, N_ITEMS, length).astype(np.int32) for _ in range(n_users)]


def _next_item_batch(users=False):
    windows = training_windows(_sequences(), MAX_LEN)
    batch = {"inputs": jnp.asarray(windows.inputs), "targets": jnp.asarray(windows.targets),
             "mask": jnp.ones(len(windows), bool)}
    if users:
        batch["users"] = jnp.asarray(windows.users)
    return batch


def _graph_and_params(model_class, seed):
    model = model_class(N_ITEMS, MAX_LEN, key=jax.random.key(seed), hidden_dim=8, n_layers=1,
                        n_heads=2, dropout_rate=0.3)
    return nnx.split(model, nnx.Param)


def _step(model_class, loss_name, **options):
    """The core step with plain SGD: Adam would turn the rounding noise of gradients that are
    zero in exact arithmetic (an attention key bias) into steps of the full learning rate, so
    two correct programs could not be compared."""
    graphdef, _ = _graph_and_params(model_class, 0)
    config = TrainConfig(optimizer="sgd", learning_rate=0.1, weight_decay=0.05)
    optimizer = make_optimizer(config, total_steps=10)
    objective = make_sequence_objective(graphdef, loss_name, **options)
    return graphdef, optimizer, make_train_step(objective, optimizer)


CASES = [
    (SASRec, "full_softmax", {}),
    (SASRec, "bce_one_negative", {"n_negatives": 2}),
    (SASRec, "sampled_softmax", {"n_negatives": 5}),
    (BERT4Rec, "masked_item", {}),
]


def _batch_for(loss_name):
    if loss_name == "masked_item":
        windows, _ = item_windows(_sequences(), MAX_LEN)
        return {"sequences": jnp.asarray(windows), "mask": jnp.ones(len(windows), bool)}
    return _next_item_batch()


def _assert_trees_close(left, right, **tolerance):
    for a, b in zip(jax.tree.leaves(left), jax.tree.leaves(right), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **tolerance)


# eager execution is slow: the two encoders, one catalogue-wide and one sampled loss
# (SASRec's in make test-all)
@pytest.mark.parametrize(("model_class", "loss_name", "options"),
                         [pytest.param(*CASES[2], marks=pytest.mark.slow), CASES[3]])
def test_jit_equals_eager(model_class, loss_name, options):
    graphdef, optimizer, train_step = _step(model_class, loss_name, **options)
    state = init_state(_graph_and_params(model_class, 0)[1], optimizer)
    batch, key = _batch_for(loss_name), jax.random.key(3)
    eager_state, eager = state, []
    jit_state, jitted = state, []
    jit_step = jax.jit(train_step)
    for _ in range(2):
        eager_state, metrics = train_step(eager_state, batch, key)
        eager.append(float(metrics["loss"]))
        jit_state, metrics = jit_step(jit_state, batch, key)
        jitted.append(float(metrics["loss"]))
    np.testing.assert_allclose(jitted, eager, rtol=1e-5)
    _assert_trees_close(jit_state.params, eager_state.params, rtol=1e-4, atol=1e-5)
    assert int(jit_state.step) == 2
    # the step folds state.step into the key: the two losses differ (dropout, negatives)
    assert len(set(eager)) == 2


# full_softmax shares masked_item's chunked softmax: the sampled losses and BERT4Rec suffice
@pytest.mark.parametrize(("model_class", "loss_name", "options"), CASES[1:])
def test_vmap_over_seeds_equals_a_python_loop(model_class, loss_name, options):
    graphdef, optimizer, train_step = _step(model_class, loss_name, **options)
    states = [init_state(_graph_and_params(model_class, seed)[1], optimizer)
              for seed in range(3)]
    keys = jnp.stack([jax.random.key(10 + seed) for seed in range(3)])
    batch = _batch_for(loss_name)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    vmapped = jax.jit(jax.vmap(train_step, in_axes=(0, None, 0)))
    looped = jax.jit(train_step)
    for _ in range(2):
        stacked, metrics = vmapped(stacked, batch, keys)
        results = [looped(state, batch, key) for state, key in zip(states, keys, strict=True)]
        states = [state for state, _ in results]
        np.testing.assert_allclose(np.asarray(metrics["loss"]),
                                   [float(m["loss"]) for _, m in results], rtol=1e-5)
    for seed, state in enumerate(states):
        _assert_trees_close(jax.tree.map(lambda leaf, s=seed: leaf[s], stacked.params),
                            state.params, rtol=1e-4, atol=1e-5)


def test_adam_and_adamw_give_different_steps_and_equal_ones_without_decay():
    graphdef, params = _graph_and_params(SASRec, 0)
    batch, key = _next_item_batch(), jax.random.key(0)
    results = {}
    for name in ("adam", "adamw"):
        optimizer = make_optimizer(TrainConfig(optimizer=name, learning_rate=1e-2))
        step = jax.jit(make_train_step(make_sequence_objective(graphdef), optimizer))
        for decay in (0.0, 0.1):  # an injected hyperparameter: no recompilation
            state = set_hyperparams(init_state(params, optimizer), {"weight_decay": decay})
            for _ in range(2):
                state, _ = step(state, batch, key)
            results[name, decay] = state.params
    _assert_trees_close(results["adam", 0.0], results["adamw", 0.0], rtol=1e-6)
    differences = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(results["adam", 0.1]), jax.tree.leaves(results["adamw", 0.1]),
        strict=True)]
    assert max(differences) > 1e-4


@pytest.mark.parametrize("loss_name", ["bce_one_negative", "sampled_softmax"])
def test_n_negatives_and_seen_exclusion_change_the_loss(loss_name):
    graphdef, params = _graph_and_params(SASRec, 0)
    batch, key = _next_item_batch(users=True), jax.random.key(1)

    def loss(n_negatives, exclude):
        data = dict(batch)
        if exclude:
            windows = training_windows(_sequences(), MAX_LEN)
            users = np.repeat(windows.users[:, None], MAX_LEN, axis=1)[windows.targets > 0]
            items = windows.targets[windows.targets > 0] - 1
            data.update({name: jnp.asarray(value) for name, value in
                         seen_items_data(users, items, 8, N_ITEMS).items()})
        objective = make_sequence_objective(graphdef, loss_name, n_negatives=n_negatives)
        return float(objective(params, data, key)[0])

    assert np.isfinite(loss(1, False))
    assert abs(loss(1, False) - loss(6, False)) > 1e-4
    assert abs(loss(6, False) - loss(6, True)) > 1e-4


def test_a_non_finite_step_leaves_the_state_unchanged():
    graphdef, optimizer, train_step = _step(SASRec, "full_softmax")
    state = init_state(_graph_and_params(SASRec, 0)[1], optimizer)
    poisoned = state.replace(params=jax.tree.map(lambda leaf: leaf * jnp.nan, state.params))
    new_state, metrics = jax.jit(train_step)(poisoned, _next_item_batch(), jax.random.key(0))
    assert not bool(metrics["finite"])
    assert int(new_state.step) == 0
    for before, after in zip(jax.tree.leaves(dataclasses.asdict(poisoned)),
                             jax.tree.leaves(dataclasses.asdict(new_state)), strict=True):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
