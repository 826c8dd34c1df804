"""Tests of causalrec_jax.models: values, interface agreement, jit / vmap / grad, dropout."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from causalrec_jax.config import ModelConfig
from causalrec_jax.errors import ConfigError
from causalrec_jax.models import (
    MF,
    MODEL_NAMES,
    Constant,
    ModelParts,
    Scorers,
    init_params,
    make_model,
    make_scorers,
    split_model,
)

N_USERS, N_ITEMS = 5, 7
USER_FEATURES = np.linspace(-1.0, 1.0, N_USERS * 2).reshape(N_USERS, 2)
ITEM_FEATURES = np.linspace(0.0, 1.0, N_ITEMS * 3).reshape(N_ITEMS, 3)
ITEM_COUNTS = np.array([0, 3, 1, 10, 2, 5, 0])
# lightgcn's training graph: (user, item) pairs; user 4 and item 6 have no edge.
TRAIN_EDGES = (np.array([0, 0, 1, 2, 3, 3]), np.array([1, 3, 3, 0, 5, 2]))


# Dropout is on in the shared models: it acts only when a key is passed.
DROPOUT = 0.5


def _config(name: str, dropout: float = DROPOUT) -> ModelConfig:
    return ModelConfig(name=name, embedding_dim=4, hidden_dims=[8, 4], dropout=dropout)


def _model(name: str, key: jax.Array, dropout: float = DROPOUT):
    """A tiny model; mlp and neumf get side features."""
    return make_model(
        _config(name, dropout), n_users=N_USERS, n_items=N_ITEMS, key=key,
        user_features=USER_FEATURES, item_features=ITEM_FEATURES, item_counts=ITEM_COUNTS,
        global_bias=0.5, train_edges=TRAIN_EDGES,
    )


# Building a model runs eagerly, and every jitted function is a fresh XLA program, so the
# tests share one model per name (seed 1) and one jitted copy of its scorers: the suite
# compiles each program once.
@functools.cache
def _split(name: str) -> tuple[ModelParts, Scorers]:
    """The shared model of `name`, split, and its scorers."""
    parts = split_model(_model(name, jax.random.key(1)))
    return parts, make_scorers(parts.graphdef, parts.constants)


@functools.cache
def _jitted(name: str) -> Scorers:
    """`jax.jit` of the shared model's scorers."""
    _, scorers = _split(name)
    return Scorers(jax.jit(scorers.score_pairs), jax.jit(scorers.score_all))


def _all_pairs() -> tuple[jax.Array, jax.Array]:
    """Every (user, item) pair, users major: two `[N_USERS * N_ITEMS]` int32 arrays."""
    users, items = jnp.meshgrid(jnp.arange(N_USERS), jnp.arange(N_ITEMS), indexing="ij")
    return users.ravel().astype(jnp.int32), items.ravel().astype(jnp.int32)


def _assert_trees_close(a, b, **kwargs) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kwargs)


def test_mf_scores_match_hand_computation():
    # Hand-set factors in the first two dimensions of users 0-1 and items 0-2, zeros
    # elsewhere (the shared test sizes, so no new shapes to compile).
    user_factors = np.zeros((N_USERS, 4), np.float32)
    user_factors[:2, :2] = [[1.0, 2.0], [0.0, -1.0]]
    item_factors = np.zeros((N_ITEMS, 4), np.float32)
    item_factors[:3, :2] = [[1.0, 0.0], [0.5, 0.5], [-1.0, 2.0]]
    model = MF(N_USERS, N_ITEMS, embedding_dim=4, key=jax.random.key(0))
    model.user_factors[...] = user_factors
    model.item_factors[...] = item_factors
    model.user_bias[...] = np.array([0.1, -0.2, 0.0, 0.0, 0.0], np.float32)
    model.item_bias[...] = np.array([0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0], np.float32)
    model.global_bias[...] = np.float32(3.0)
    graphdef, params, constants = split_model(model)
    scorers = make_scorers(graphdef, constants)

    scores = np.asarray(scorers.score_pairs(params, *_all_pairs())).reshape(N_USERS, N_ITEMS)
    # 3 + b_u + b_i + <P_u, Q_i>: 3+.1+0+1, 3+.1+2+(-1+4), 3-.2+1+(0-.5), 3-.2+2+(0-2).
    np.testing.assert_allclose(
        [scores[0, 0], scores[0, 2], scores[1, 1], scores[1, 2]], [4.1, 8.1, 3.3, 2.8], rtol=1e-6
    )
    # User 1 against items 3-6 (zero factors and biases): 3 - 0.2.
    all_scores = scorers.score_all(params, jnp.arange(N_USERS, dtype=jnp.int32))
    np.testing.assert_allclose(all_scores[1], [2.8, 3.3, 2.8, 2.8, 2.8, 2.8, 2.8], rtol=1e-6)


def test_mf_initialisation():
    model = MF(500, 500, embedding_dim=16, key=jax.random.key(0), global_bias=3.5)
    assert float(model.global_bias[...]) == 3.5
    assert not np.any(model.user_bias[...]) and not np.any(model.item_bias[...])
    # Documented std: 0.1 / sqrt(dim) = 0.025; user and item tables drawn independently.
    np.testing.assert_allclose(np.std(model.user_factors[...]), 0.025, rtol=0.05)
    np.testing.assert_allclose(np.std(model.item_factors[...]), 0.025, rtol=0.05)
    assert not np.allclose(model.user_factors[...], model.item_factors[...])


def test_popularity_scores_log_counts_plus_bias():
    parts, scorers = _split("popularity")
    expected = 0.5 + np.log1p(ITEM_COUNTS)
    scores = scorers.score_all(parts.params, jnp.array([0, 3], jnp.int32))
    np.testing.assert_allclose(scores, np.stack([expected, expected]), rtol=1e-6)
    assert int(jnp.argmax(scores[0])) == int(np.argmax(ITEM_COUNTS))


def test_mlp_split_first_layer_equals_one_linear_over_concatenation():
    model = nnx.merge(*_split("mlp")[0])
    users, items = jnp.array([0, 4], jnp.int32), jnp.array([6, 2], jnp.int32)
    inputs = jnp.concatenate([model.user_inputs(users), model.item_inputs(items)], axis=-1)
    # Features enter the inputs: embedding dim 4 plus d_u = 2 and d_i = 3.
    assert inputs.shape == (2, 4 + 2 + 4 + 3)
    tower = model.tower
    kernel = jnp.concatenate(
        [tower.user_projection.kernel[...], tower.item_projection.kernel[...]], axis=0
    )
    hidden = jax.nn.relu(inputs @ kernel + tower.user_projection.bias[...])
    hidden = jax.nn.relu(tower.layers[0](hidden))
    expected = hidden @ model.output.kernel[...][:, 0] + model.output.bias[...][0]
    np.testing.assert_allclose(model(users, items), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_score_all_equals_pairwise_scores(name):
    parts, scorers = _split(name)
    users, items = _all_pairs()
    pairs = scorers.score_pairs(parts.params, users, items)
    all_scores = scorers.score_all(parts.params, jnp.arange(N_USERS, dtype=jnp.int32))
    assert pairs.shape == (N_USERS * N_ITEMS,) and pairs.dtype == jnp.float32
    assert all_scores.shape == (N_USERS, N_ITEMS) and all_scores.dtype == jnp.float32
    np.testing.assert_allclose(all_scores, pairs.reshape(N_USERS, N_ITEMS), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_jit_equals_eager(name):
    parts, scorers = _split(name)
    jitted = _jitted(name)
    users, items = _all_pairs()
    key = jax.random.key(7)
    np.testing.assert_allclose(
        jitted.score_pairs(parts.params, users, items, key),
        scorers.score_pairs(parts.params, users, items, key), rtol=1e-5, atol=1e-6,
    )
    all_users = jnp.arange(N_USERS, dtype=jnp.int32)
    np.testing.assert_allclose(
        jitted.score_all(parts.params, all_users), scorers.score_all(parts.params, all_users),
        rtol=1e-5, atol=1e-6,
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_init_params_vmap_over_seeds_equals_python_loop(name):
    keys = jax.random.split(jax.random.key(3), 3)
    parts = init_params(
        _config(name), n_users=N_USERS, n_items=N_ITEMS, keys=keys,
        user_features=USER_FEATURES, item_features=ITEM_FEATURES, item_counts=ITEM_COUNTS,
        global_bias=0.5, train_edges=TRAIN_EDGES,
    )
    scorers = make_scorers(parts.graphdef, parts.constants)
    users = jnp.arange(N_USERS, dtype=jnp.int32)
    vmapped = jax.jit(jax.vmap(scorers.score_all, in_axes=(0, None)))(parts.params, users)
    assert vmapped.shape == (3, N_USERS, N_ITEMS)
    for seed, key in enumerate(keys):
        seed_params = jax.tree.map(lambda leaf, s=seed: np.asarray(leaf)[s], parts.params)
        _assert_trees_close(seed_params, split_model(_model(name, key)).params, rtol=0, atol=0)
        np.testing.assert_allclose(
            vmapped[seed], _jitted(name).score_all(seed_params, users), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("name", ["mf", "mlp", "neumf", "lightgcn"])
def test_same_key_same_params_other_key_different(name):
    params = jax.tree.map(np.asarray, _split(name)[0].params)
    again = split_model(_model(name, jax.random.key(1))).params
    other = split_model(_model(name, jax.random.key(2))).params
    _assert_trees_close(params, again, rtol=0, atol=0)
    random_leaves = [
        (a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(other), strict=True)
        if np.std(a) > 0  # biases start at a constant whatever the key
    ]
    assert random_leaves
    assert all(not np.allclose(a, b) for a, b in random_leaves)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_grad_finite_and_nonzero_for_every_param_and_constants_excluded(name):
    (_, params, constants), scorers = _split(name)
    users, items = _all_pairs()
    targets = jnp.linspace(-1.0, 3.0, users.shape[0])

    def loss(params):
        scores = scorers.score_pairs(params, users, items)
        return jnp.mean((scores - targets) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for path, grad in jax.tree.leaves_with_path(grads):
        grad = np.asarray(grad)
        assert np.all(np.isfinite(grad)), path
        assert np.any(grad != 0), path

    def is_variable(x):
        return isinstance(x, nnx.Variable)

    assert {type(v) for v in jax.tree.leaves(params, is_leaf=is_variable)} == {nnx.Param}
    assert {type(v) for v in jax.tree.leaves(constants, is_leaf=is_variable)} <= {Constant}
    expected_constants = {"mf": 0, "mlp": 2, "neumf": 2, "lightgcn": 3, "popularity": 1}[name]
    assert len(jax.tree.leaves(constants)) == expected_constants


@pytest.mark.parametrize("name", ["mlp", "neumf"])
def test_dropout_only_with_a_key(name):
    params = _split(name)[0].params
    score_pairs = _jitted(name).score_pairs
    users, items = _all_pairs()
    deterministic = score_pairs(params, users, items)
    np.testing.assert_array_equal(deterministic, score_pairs(params, users, items))
    first = score_pairs(params, users, items, jax.random.key(1))
    np.testing.assert_array_equal(first, score_pairs(params, users, items, jax.random.key(1)))
    assert not np.allclose(first, score_pairs(params, users, items, jax.random.key(2)))
    assert not np.allclose(first, deterministic)
    # Without a key the model is the same function as one built with dropout 0.
    no_dropout = _model(name, jax.random.key(1), dropout=0.0)
    np.testing.assert_allclose(deterministic, no_dropout(users, items), rtol=1e-6)


def test_mf_lightgcn_and_popularity_ignore_the_key():
    users, items = _all_pairs()
    for name in ("mf", "lightgcn", "popularity"):
        parts, scorers = _split(name)
        np.testing.assert_array_equal(
            scorers.score_pairs(parts.params, users, items, jax.random.key(1)),
            scorers.score_pairs(parts.params, users, items),
        )


def test_models_also_work_in_graph_mode():
    with nnx.set_graph_mode(True):
        graphdef, params, constants = split_model(_model("neumf", jax.random.key(1)))
        scores = make_scorers(graphdef, constants).score_all(params, jnp.arange(N_USERS))
    np.testing.assert_allclose(
        scores, _split("neumf")[1].score_all(params, jnp.arange(N_USERS)), rtol=1e-6
    )


@pytest.mark.parametrize("name", ["not_a_model"])
def test_make_model_rejects_unknown_or_unimplemented_name(name):
    config = dataclasses.replace(ModelConfig(), name=name)
    with pytest.raises(ConfigError, match=r"model\.name.*mf, mlp, neumf, lightgcn, popularity"):
        make_model(config, n_users=2, n_items=3, key=jax.random.key(0))


def test_make_model_rejects_bad_inputs():
    key = jax.random.key(0)
    with pytest.raises(ConfigError, match=r"model\.hidden_dims"):
        make_model(ModelConfig(name="neumf", hidden_dims=[]), n_users=2, n_items=3, key=key)
    with pytest.raises(ValueError, match="item_features"):
        make_model(_config("mlp"), n_users=2, n_items=3, key=key, item_features=np.ones((4, 2)))
    with pytest.raises(ValueError, match="user_features"):
        make_model(_config("neumf"), n_users=2, n_items=3, key=key, user_features=np.ones(2))
    with pytest.raises(ValueError, match="item_counts"):
        make_model(_config("popularity"), n_users=2, n_items=3, key=key)
    with pytest.raises(ValueError, match="item_counts"):
        make_model(_config("popularity"), n_users=2, n_items=3, key=key, item_counts=[1, 2])
