"""Tests of LightGCN: propagation against a dense reference, the training-only graph, runs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from causalrec_jax.cli import main
from causalrec_jax.config import ModelConfig, load_config
from causalrec_jax.data.loader import load_split
from causalrec_jax.models import LightGCN, make_model, make_scorers, split_model
from causalrec_jax.models.lightgcn import normalized_edges
from causalrec_jax.runs import load as run_load

N_USERS, N_ITEMS, DIM, N_LAYERS = 4, 5, 3, 3
# User 3 and item 4 have no edge; (0, 1) is repeated and must count once.
TRAIN_USERS = np.array([0, 0, 0, 1, 1, 2, 0])
TRAIN_ITEMS = np.array([0, 1, 2, 1, 3, 3, 1])


def _model(n_layers: int = N_LAYERS) -> LightGCN:
    return LightGCN(
        N_USERS, N_ITEMS, embedding_dim=DIM, n_layers=n_layers,
        train_edges=(TRAIN_USERS, TRAIN_ITEMS), key=jax.random.key(0),
    )


def _dense_reference(user_embedding, item_embedding, n_layers):
    """Mean over layers 0..L of (D^-1/2 A D^-1/2)^k E^(0), with a dense numpy adjacency."""
    n_nodes = N_USERS + N_ITEMS
    adjacency = np.zeros((n_nodes, n_nodes))
    adjacency[TRAIN_USERS, N_USERS + TRAIN_ITEMS] = 1.0
    adjacency[N_USERS + TRAIN_ITEMS, TRAIN_USERS] = 1.0
    degree = adjacency.sum(axis=1)
    inverse_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1.0)), 0.0)
    normalized = inverse_sqrt[:, None] * adjacency * inverse_sqrt[None, :]
    layer = np.concatenate([user_embedding, item_embedding]).astype(np.float64)
    total = layer.copy()
    for _ in range(n_layers):
        layer = normalized @ layer
        total += layer
    final = total / (n_layers + 1)
    return final[:N_USERS], final[N_USERS:]


@pytest.mark.parametrize("n_layers", [0, 1, N_LAYERS])
def test_propagation_equals_dense_normalized_adjacency(n_layers):
    model = _model(n_layers)
    users, items = model.propagate()
    expected_users, expected_items = _dense_reference(
        np.asarray(model.user_embedding[...]), np.asarray(model.item_embedding[...]), n_layers
    )
    np.testing.assert_allclose(users, expected_users, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(items, expected_items, rtol=1e-5, atol=1e-6)


def test_edges_are_distinct_pairs_with_symmetric_weights():
    edge_users, edge_items, weights = normalized_edges(TRAIN_USERS, TRAIN_ITEMS, N_USERS, N_ITEMS)
    np.testing.assert_array_equal(edge_users, [0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(edge_items, [0, 1, 2, 1, 3, 3])
    # deg(user 0) = 3, deg(item 1) = 2 -> 1 / sqrt(6); deg(user 2) = 1, deg(item 3) = 2.
    np.testing.assert_allclose(weights[1], 1 / np.sqrt(6), rtol=1e-6)
    np.testing.assert_allclose(weights[5], 1 / np.sqrt(2), rtol=1e-6)
    with pytest.raises(ValueError, match="item index out of range"):
        normalized_edges([0], [N_ITEMS], N_USERS, N_ITEMS)


def test_a_node_without_edges_keeps_only_its_layer_zero_embedding():
    model = _model()
    users, items = model.propagate()
    np.testing.assert_allclose(users[3], model.user_embedding[...][3] / (N_LAYERS + 1), rtol=1e-6)
    np.testing.assert_allclose(items[4], model.item_embedding[...][4] / (N_LAYERS + 1), rtol=1e-6)
    assert np.all(np.isfinite(model.score_all(jnp.arange(N_USERS))))


def test_score_all_agrees_with_pairs_and_gradients_are_finite():
    graphdef, params, constants = split_model(_model())
    scorers = make_scorers(graphdef, constants)
    users, items = jnp.meshgrid(jnp.arange(N_USERS), jnp.arange(N_ITEMS), indexing="ij")
    users, items = users.ravel(), items.ravel()
    pairs = jax.jit(scorers.score_pairs)(params, users, items)
    all_scores = jax.jit(scorers.score_all)(params, jnp.arange(N_USERS))
    np.testing.assert_allclose(all_scores, pairs.reshape(N_USERS, N_ITEMS), rtol=1e-5, atol=1e-7)

    def loss(params):
        return -jnp.mean(jax.nn.log_sigmoid(scorers.score_pairs(params, users, items)))

    grads = jax.jit(jax.grad(loss))(params)
    for path, grad in jax.tree.leaves_with_path(grads):
        assert np.all(np.isfinite(grad)) and np.any(grad != 0), path
    # Only the layer-0 tables are trained; the graph is three constants.
    assert len(jax.tree.leaves(params)) == 2 and len(jax.tree.leaves(constants)) == 3


def test_make_model_needs_the_training_edges():
    config = ModelConfig(name="lightgcn", embedding_dim=DIM, n_layers=2)
    with pytest.raises(ValueError, match="train_edges"):
        make_model(config, n_users=N_USERS, n_items=N_ITEMS, key=jax.random.key(0))
    model = make_model(config, n_users=N_USERS, n_items=N_ITEMS, key=jax.random.key(0),
                       train_edges=(TRAIN_USERS, TRAIN_ITEMS))
    assert isinstance(model, LightGCN) and model.n_layers == 2 and model.n_items == N_ITEMS


TINY = [
    "sim.n_users=60",
    "sim.n_items=40",
    "sim.mean_exposure=0.3",
    'data.split="random"',
    "train.epochs=3",
    "train.batch_size=64",
    'train.loss="bpr"',
    "train.learning_rate=0.05",
    "model.embedding_dim=8",
    'model.name="lightgcn"',
    "eval.ks=[5]",
    "eval.positive_threshold=0",
    'eval.metrics=["ndcg", "recall", "hit"]',
    'train.early_stopping_metric="ndcg@5"',
]


def _pairs(users, items) -> set[tuple[int, int]]:
    return set(zip(np.asarray(users).tolist(), np.asarray(items).tolist(), strict=True))


def test_cli_trains_evaluates_and_recommends_with_a_training_only_graph(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--quiet"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    stored = json.loads((out / "metrics.json").read_text())["test"]["ndcg@5"]
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out)]) == 0
    assert f"ndcg@5 {stored:.4f}" in capsys.readouterr().out
    assert main(["recommend", "--run", str(out), "--user", "7", "--k", "5"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5

    # The graph of the reloaded run is the distinct training pairs: no validation or test
    # pair that is not also a training pair.
    run = run_load.load_run(out)
    model = nnx.merge(run.parts.graphdef,
                      jax.tree.map(lambda leaf: leaf[0], run.parts.params), run.parts.constants)
    graph = _pairs(model.edge_users[...], model.edge_items[...])
    config = load_config(None, TINY)
    split, _ = load_split(config.data, config.sim, seed=config.run.seed)
    train = _pairs(split.train.user, split.train.item)
    assert graph == train
    held_out = _pairs(split.valid.user, split.valid.item) | _pairs(split.test.user, split.test.item)
    assert held_out - train and not graph & (held_out - train)
    assert train == _pairs(run.data["train_user"], run.data["train_item"])
