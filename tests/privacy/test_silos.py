"""Federated silos (`privacy.silos`): a client holding several users' rows. The partition is
balanced and drawn from the seed; a silo's rows are its users' capped rows; silos of one user
each train what per-user clients train; one silo holding everyone, one local step, is a
centralised step; a silo sends no user row and keeps every one of its users'; a run trains and
accounts per silo; bad settings are one line."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax import streams
from causalrec_jax.config import load_config
from causalrec_jax.errors import ConfigError
from causalrec_jax.models.base import row_tables
from causalrec_jax.privacy import dpsgd, federated
from causalrec_jax.runs import train as run_train
from causalrec_jax.train.step import init_state, make_optimizer

from .test_federated import N_ITEMS, SERVER, TINY, _mf, assert_round_is_a_centralised_step


def _rows(n_users, n_rows, seed=0):
    rng = np.random.default_rng(seed)
    return {"users": rng.integers(0, n_users, n_rows).astype(np.int32),
            "items": rng.integers(0, N_ITEMS, n_rows).astype(np.int32),
            "ratings": rng.integers(1, 6, n_rows).astype(np.float32)}


def _silo_round(parts, units, n_users, n_silos, *, local_steps=1, lr=0.05, loss="mse"):
    spec = dpsgd.make_spec("user", clip=math.inf, noise_multiplier=0.0, n_units=n_silos,
                           expected_batch=n_silos, examples_per_unit=units["unit_mask"].shape[1],
                           local_steps=local_steps, silos=n_silos)
    data = {k: jnp.asarray(v) for k, v in units.items()}
    data["shared_constants"] = parts.constants
    optimizer = make_optimizer(SERVER)
    step = federated.make_federated_round(parts.graphdef, loss, optimizer, spec,
                                          n_users=n_users,
                                          n_items=N_ITEMS, n_negatives=2,
                                          client_learning_rate=lr)
    return spec, data, optimizer, step


def test_the_partition_is_balanced_and_drawn_from_the_seed():
    silo = dpsgd.silo_of_users(10, 3, jax.random.key(0))
    assert sorted(np.bincount(silo, minlength=3).tolist()) == [3, 3, 4]
    np.testing.assert_array_equal(silo, dpsgd.silo_of_users(10, 3, jax.random.key(0)))
    assert not np.array_equal(silo, dpsgd.silo_of_users(10, 3, jax.random.key(1)))
    for bad in (0, 11):
        with pytest.raises(ConfigError, match="key privacy.silos"):
            dpsgd.silo_of_users(10, bad, jax.random.key(0))


def test_a_silo_holds_exactly_its_users_capped_rows():
    rows = _rows(6, 40)
    units = dpsgd.unit_arrays(rows, 6, "user", 5, jax.random.key(0))
    silo = np.array([1, 0, 1, 2, 0, 1], np.int32)
    silos = dpsgd.silo_arrays(units, silo, 3)
    assert "unit_users" not in silos
    for s in range(3):
        members = np.flatnonzero(silo == s)
        keep = silos["unit_mask"][s]
        got = sorted(zip(silos["users"][s][keep].tolist(), silos["items"][s][keep].tolist(),
                         silos["ratings"][s][keep].tolist(), strict=True))
        want = sorted((int(u), int(i), float(r)) for u in members
                      for i, r, m in zip(units["items"][u], units["ratings"][u],
                                         units["unit_mask"][u], strict=True) if m)
        assert got == want
        assert (silos["users"][s][~keep] == 6).all()  # padding: past the user table
    assert silos["unit_mask"].shape[1] == silos["unit_mask"].sum(axis=1).max()


def test_silos_of_one_user_each_train_what_user_clients_train():
    n_users = 4
    rows = _rows(n_users, 20, seed=1)
    parts, params = _mf(n_users)
    units = dpsgd.unit_arrays(rows, n_users, "user", 8, jax.random.key(0))
    silos = dpsgd.silo_arrays(units, np.arange(n_users, dtype=np.int32), n_users)
    _, silo_data, optimizer, silo_step = _silo_round(parts, silos, n_users, n_users,
                                                     local_steps=2)
    spec = dpsgd.make_spec("user", clip=math.inf, noise_multiplier=0.0, n_units=n_users,
                           expected_batch=n_users, examples_per_unit=8, local_steps=2)
    user_data = {k: jnp.asarray(v) for k, v in units.items()}
    user_data["shared_constants"] = parts.constants
    user_step = federated.make_federated_round(parts.graphdef, "mse", optimizer, spec,
                                               n_users=n_users, n_items=N_ITEMS,
                                               n_negatives=2, client_learning_rate=0.05)
    state = init_state({"prediction": params}, optimizer)
    by_silo, _ = jax.jit(silo_step)(state, silo_data, jax.random.key(4))
    by_user, _ = jax.jit(user_step)(state, user_data, jax.random.key(4))
    moved = False
    for a, b, before in zip(jax.tree.leaves(by_silo.params), jax.tree.leaves(by_user.params),
                            jax.tree.leaves(state.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
        moved |= not np.allclose(np.asarray(a), np.asarray(before))
    assert moved


def test_one_silo_of_every_user_one_local_step_is_a_centralised_step():
    n_users = 3
    rows = _rows(n_users, 12, seed=2)
    parts, params = _mf(n_users)
    units = dpsgd.unit_arrays(rows, n_users, "user", 8, jax.random.key(0))
    silos = dpsgd.silo_arrays(units, np.zeros(n_users, np.int32), 1)
    _, data, optimizer, step = _silo_round(parts, silos, n_users, 1)
    assert_round_is_a_centralised_step(parts, params, rows, data, optimizer, step)


def test_a_silo_sends_no_user_row_and_keeps_each_of_its_users():
    n_users = 4
    parts, params = _mf(n_users)
    tables = row_tables(parts.graphdef)
    client = federated.make_client_update(parts.graphdef, "bpr", n_users=n_users,
                                          n_items=N_ITEMS, n_negatives=2, local_steps=3,
                                          client_learning_rate=0.5)
    batch = {"users": jnp.array([1, 1, 3, 3, n_users]), "items": jnp.array([0, 2, 4, 5, 0]),
             "mask": jnp.array([True, True, True, True, False])}
    update, ids, loss, norm, kept = jax.jit(client)({"prediction": params}, parts.constants,
                                                    batch, jax.random.key(1))
    update, kept = update["prediction"], kept["prediction"]
    assert np.asarray(ids["users"])[:2].tolist() == [1, 3]
    assert (np.asarray(ids["users"])[2:] >= n_users).all()
    message = federated.client_message(update, ids, params, tables)
    kinds = dpsgd.table_kinds(params, tables)
    assert [leaf is None for leaf in message["shared"]] == [k == "users" for k in kinds]
    for position, user in enumerate((1, 3)):  # both users' rows trained, kept by the silo
        assert not np.allclose(np.asarray(kept["user_factors"][position]),
                               np.asarray(params["user_factors"][user]))
    assert float(norm) > 0 and np.isfinite(float(loss))


def test_a_silo_run_trains_and_accounts_per_silo(tmp_path):
    metrics = run_train.train_run(
        load_config(None, TINY + ["privacy.silos=6", "train.batch_size=3", "privacy.noise=1.0"]),
        tmp_path / "silos", quiet=True)
    privacy = metrics["privacy"]
    assert privacy["silos"] == 6 and privacy["unit"] == "silo"
    assert privacy["sampling_rate"] == pytest.approx(0.5) and privacy["expected_batch"] == 3
    assert "per silo" in privacy["guarantee"] and 0 < privacy["epsilon"] < math.inf
    assert 0 <= metrics["test"]["ndcg@5"] <= 1


@pytest.mark.parametrize(("extra", "named"), [
    (['privacy.mechanism="dp_sgd"'], "privacy.silos"),  # silos are federated clients
    (["privacy.silos=61"], "privacy.silos"),  # more silos than the 60 users
    (["privacy.silos=-1"], "privacy.silos"),
    (["privacy.item_rows=5"], "privacy.item_rows"),  # DP-FEST counts users, not silos
])
def test_bad_silos_are_one_line(tmp_path, extra, named):
    with pytest.raises(ConfigError, match=f"key {named}"):
        run_train.train_run(load_config(None, TINY + ["privacy.silos=4", *extra]),
                            tmp_path / "bad", quiet=True)
    assert not (tmp_path / "bad").exists()


def test_a_round_leaves_the_users_of_unsampled_silos_bitwise():
    """A padding unit (a slot of a chunk the round runs, past the silos sampled) writes no
    user row: the id it would set is past every table. (With silos, `n_units + 1` is a real
    user's: 7 here, in silo 1, which this round does not sample.)"""
    n_users, n_silos = 12, 6
    rows = _rows(n_users, 60, seed=3)
    parts, params = _mf(n_users)
    units = dpsgd.unit_arrays(rows, n_users, "user", 8, jax.random.key(0))
    silo = np.arange(n_users, dtype=np.int32) % n_silos
    silos = dpsgd.silo_arrays(units, silo, n_silos)
    spec = dpsgd.make_spec("user", clip=math.inf, noise_multiplier=0.0, n_units=n_silos,
                           expected_batch=3, examples_per_unit=silos["unit_mask"].shape[1],
                           local_steps=2, silos=n_silos)
    data = {k: jnp.asarray(v) for k, v in silos.items()}
    data["shared_constants"] = parts.constants
    optimizer = make_optimizer(SERVER)
    step = federated.make_federated_round(parts.graphdef, "mse", optimizer, spec,
                                          n_users=n_users, n_items=N_ITEMS, n_negatives=2,
                                          client_learning_rate=0.05)
    state = init_state({"prediction": params}, optimizer)
    key = jax.random.key(11)
    new, metrics = jax.jit(step)(state, data, key)
    units_drawn, valid, _ = dpsgd.sample_units(
        streams.derive(streams.index(key, 0), streams.Step.UNITS), spec)
    sampled = set(np.asarray(units_drawn)[np.asarray(valid)].tolist())
    # an odd count in chunks of 2: the last chunk run holds a padding unit; silo 1 left out
    assert spec.chunk == 2 and len(sampled) % 2 == 1 and 1 not in sampled
    assert int(metrics["sampled"]) == len(sampled)
    before = np.asarray(params["user_factors"])
    after = np.asarray(new.params["prediction"]["user_factors"])
    for user in range(n_users):
        if silo[user] in sampled:
            assert not np.array_equal(after[user], before[user]), user
        else:
            np.testing.assert_array_equal(after[user], before[user])
