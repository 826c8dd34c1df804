"""Federated rounds: one client and one local step is a centralised step, user rows never
appear in what a client sends, a client moves the DP-FedAvg sum by at most C, and a run
trains through the one core."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.config import ModelConfig, TrainConfig, load_config
from causalrec_jax.errors import ConfigError
from causalrec_jax.models.base import make_scorers, row_tables
from causalrec_jax.models.factory import init_params
from causalrec_jax.privacy import dpsgd, federated
from causalrec_jax.runs import train as run_train
from causalrec_jax.train.objectives import make_objective
from causalrec_jax.train.step import init_state, make_optimizer, make_train_step

N_ITEMS = 7
SERVER = TrainConfig(optimizer="sgd", learning_rate=1.0)  # FedAvg's averaging


def _mf(n_users):
    parts = init_params(ModelConfig(name="mf", embedding_dim=3), n_users=n_users,
                        n_items=N_ITEMS, keys=jax.random.key(2)[None])
    return parts, jax.tree.map(lambda leaf: leaf[0], parts.params)


def _round(parts, rows, n_users, *, clip=math.inf, noise=0.0, local_steps=1, lr=0.05,
           server=SERVER, loss="mse"):
    spec = dpsgd.make_spec("user", clip=clip, noise_multiplier=noise, n_units=n_users,
                           expected_batch=n_users, examples_per_unit=8,
                           local_steps=local_steps)
    units = dpsgd.unit_arrays(rows, n_users, "user", 8, jax.random.key(0))
    data = {k: jnp.asarray(v) for k, v in units.items()}
    data["shared_constants"] = parts.constants
    optimizer = make_optimizer(server)
    step = federated.make_federated_round(parts.graphdef, loss, optimizer, spec,
                                          n_users=n_users, n_items=N_ITEMS, n_negatives=2,
                                          client_learning_rate=lr)
    return spec, data, optimizer, step


def test_one_client_one_local_step_is_a_centralised_step():
    rows = {"users": np.zeros(5, np.int32), "items": np.array([0, 3, 3, 5, 6], np.int32),
            "ratings": np.array([5, 1, 2, 4, 3], np.float32)}
    parts, params = _mf(1)
    spec, data, optimizer, step = _round(parts, rows, 1)
    assert_round_is_a_centralised_step(parts, params, rows, data, optimizer, step)


def assert_round_is_a_centralised_step(parts, params, rows, data, optimizer, step, lr=0.05):
    """A round (`step` on `data`) moves every parameter as one SGD step at the clients'
    learning rate `lr` on the mean MSE over all `rows` does."""
    state = init_state({"prediction": params}, optimizer)
    federated_state, _ = jax.jit(step)(state, data, jax.random.key(0))
    scorers = make_scorers(parts.graphdef, parts.constants)
    objective = make_objective("mse", scorers.score_pairs, scorers.score_all, n_items=N_ITEMS)
    central = make_optimizer(TrainConfig(optimizer="sgd", learning_rate=lr))
    ordinary = make_train_step(lambda p, b, k: objective(p["prediction"], b, k), central)
    batch = {k: jnp.asarray(v) for k, v in rows.items()}
    batch["mask"] = jnp.ones(len(rows["users"]), bool)
    central_state, _ = jax.jit(ordinary)(init_state({"prediction": params}, central), batch,
                                         jax.random.key(0))
    for a, b in zip(jax.tree.leaves(federated_state.params),
                    jax.tree.leaves(central_state.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_user_rows_never_appear_in_what_a_client_sends():
    parts, params = _mf(3)
    tables = row_tables(parts.graphdef)
    client = federated.make_client_update(parts.graphdef, "bpr", n_users=3, n_items=N_ITEMS,
                                          n_negatives=2, local_steps=3,
                                          client_learning_rate=0.5)
    batch = {"users": jnp.full(4, 1), "items": jnp.array([0, 2, 4, 4]),
             "mask": jnp.array([True, True, True, False])}
    # a unit function reads the run's parameters, the model state under "prediction"
    update, ids, loss, norm, kept = client({"prediction": params}, parts.constants, batch,
                                           jax.random.key(1))
    update, kept = update["prediction"], kept["prediction"]
    message = federated.client_message(update, ids, params, tables)
    kinds = dpsgd.table_kinds(params, tables)
    assert [leaf is None for leaf in message["shared"]] == [k == "users" for k in kinds]
    sent = jax.tree.leaves(message)
    user_rows = [np.asarray(leaf) for leaf, k in zip(jax.tree.leaves(kept), kinds,
                                                     strict=True) if k == "users"]
    for leaf in sent:
        for row in user_rows:
            assert not (np.asarray(leaf).shape == row.shape
                        and np.allclose(np.asarray(leaf), row))
    # the client did train its own rows, and they stay with it (`kept`)
    assert not np.allclose(np.asarray(kept["user_factors"][0]),
                           np.asarray(params["user_factors"][1]))
    assert float(norm) > 0 and np.isfinite(float(loss))


def test_a_client_moves_the_dp_fedavg_sum_by_at_most_the_clip():
    rng = np.random.default_rng(0)
    rows = {"users": rng.integers(0, 4, 20).astype(np.int32),
            "items": rng.integers(0, N_ITEMS, 20).astype(np.int32)}
    parts, params = _mf(4)
    spec, data, optimizer, step = _round(parts, rows, 4, clip=0.01, local_steps=2, lr=0.5,
                                         loss="bpr")
    state = init_state({"prediction": params}, optimizer)

    def shared_change(data):
        new, _ = jax.jit(step)(state, data, jax.random.key(3))
        return {k: (np.asarray(params[k]) - np.asarray(new.params["prediction"][k]))
                * spec.expected_batch for k in ("item_factors", "item_bias", "global_bias")}

    full = shared_change(data)
    less = shared_change(dict(data, unit_mask=data["unit_mask"].at[2].set(False)))
    change = math.sqrt(sum(float(np.sum((full[k] - less[k]) ** 2)) for k in full))
    assert 0.99 * spec.clip <= change <= spec.clip * (1 + 1e-4)


TINY = [
    "sim.n_users=60", "sim.n_items=40", "sim.mean_exposure=0.3", 'data.split="random"',
    "train.epochs=2", "train.batch_size=20", 'train.loss="bpr"', "train.learning_rate=0.05",
    "model.embedding_dim=8", "eval.ks=[5]", "eval.positive_threshold=0",
    'eval.metrics=["ndcg", "recall"]', 'train.early_stopping_metric="ndcg@5"',
    'privacy.level="user"', 'privacy.mechanism="fedavg"', "privacy.local_steps=2",
    "privacy.client_learning_rate=0.5", "privacy.max_examples_per_user=16",
]


@pytest.mark.slow  # make test-all (see Makefile): test_silos.py runs a federated run
def test_federated_runs_through_the_one_core(tmp_path):
    plain = run_train.train_run(load_config(None, TINY), tmp_path / "fedavg", quiet=True)
    assert plain["privacy"]["mechanism"] == "fedavg"
    assert plain["privacy"]["epsilon"] is None or math.isinf(plain["privacy"]["epsilon"])
    assert plain["privacy"]["local_steps"] == 2 and plain["privacy"]["clip_norm"] is None
    private = run_train.train_run(load_config(None, TINY + ["privacy.noise=1.0"]),
                                  tmp_path / "dp_fedavg", quiet=True)
    assert private["privacy"]["clip_norm"] == 1.0
    assert 0 < private["privacy"]["epsilon"] < math.inf
    with pytest.raises(ConfigError, match="privacy.level"):
        run_train.train_run(load_config(None, TINY + ['privacy.level="example"',
                                                      "privacy.max_examples_per_user=64"]),
                            tmp_path / "bad", quiet=True)
    with pytest.raises(ConfigError, match="privacy.local_steps"):
        run_train.train_run(load_config(None, TINY[:-4] + ["privacy.local_steps=3"]),
                            tmp_path / "bad2", quiet=True)
