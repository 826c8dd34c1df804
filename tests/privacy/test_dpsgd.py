"""DP-SGD's step against brute force: clipped sums over gathered rows equal per-unit
`jax.grad` over whole tables (repeated ids included), one unit moves the sum by at most C,
sigma = 0 without clipping is the ordinary step, the noise has std sigma * C, Poisson sampling
keeps its rate, and models or losses without per-user gradients are refused."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from causalrec_jax import streams
from causalrec_jax.config import ModelConfig, TrainConfig
from causalrec_jax.errors import ConfigError
from causalrec_jax.models.base import make_scorers, row_tables
from causalrec_jax.models.factory import init_params
from causalrec_jax.privacy import dpsgd
from causalrec_jax.train.objectives import make_objective, seen_items_data
from causalrec_jax.train.step import init_state, make_optimizer, make_train_step

N_USERS, N_ITEMS = 6, 9
# user 0 reads item 2 twice: its gradient row for item 2 is the sum of both uses
ROWS = {
    "users": np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 5], np.int32),
    "items": np.array([2, 2, 5, 1, 3, 8, 0, 4, 6, 7, 2, 5], np.int32),
    "ratings": np.array([5, 4, 3, 1, 2, 5, 4, 4, 3, 2, 1, 5], np.float32),
}


def _model(name="mf"):
    config = ModelConfig(name=name, embedding_dim=3, hidden_dims=(4,))
    return init_params(config, n_users=N_USERS, n_items=N_ITEMS, keys=jax.random.key(1)[None])


def _setup(loss, level="user", clip=0.05, noise=0.0, user_rows="noised", name="mf",
           n_negatives=3, rows=ROWS, learning_rate=1.0, optimizer="sgd", seen=True):
    parts = _model(name)
    params = jax.tree.map(lambda leaf: leaf[0], parts.params)
    n_units = N_USERS if level == "user" else len(rows["users"])
    spec = dpsgd.make_spec(level, clip=clip, noise_multiplier=noise, n_units=n_units,
                           expected_batch=n_units, examples_per_unit=4 if level == "user"
                           else 1, user_rows=user_rows)
    fields = ("users", "items", "ratings") if loss in ("mse", "bce") else ("users", "items")
    units = dpsgd.unit_arrays({k: rows[k] for k in fields}, N_USERS, level,
                              spec.examples_per_unit, jax.random.key(0))
    data = {k: jnp.asarray(v) for k, v in units.items()}
    data["shared_constants"] = parts.constants
    if seen:
        data.update({k: jnp.asarray(v) for k, v in seen_items_data(
            rows["users"], rows["items"], N_USERS, N_ITEMS).items()})
    opt = make_optimizer(TrainConfig(optimizer=optimizer, learning_rate=learning_rate,
                                     adam_beta2=0.999))
    step = dpsgd.make_dp_train_step(parts.graphdef, loss, opt, spec, n_users=N_USERS,
                                    n_items=N_ITEMS, n_negatives=n_negatives)
    state = init_state({"prediction": params}, opt)
    return parts, params, spec, data, step, state, opt


def _summed_update(step, state, data, key, spec):
    """The pre-noise clipped sum, read from one SGD step at learning rate 1 (sigma = 0)."""
    new_state, metrics = jax.jit(step)(state, data, key)
    delta = jax.tree.map(lambda old, new: (old - new) * spec.expected_batch,
                         state.params["prediction"], new_state.params["prediction"])
    return delta, metrics


def _clipped_objective_sum(objective, params, data, key, spec, hparams, per_unit):
    """Sum over the units of each unit's clipped `jax.grad` of a run's `objective` (params
    `{"prediction": model state, ...}`, whole tables), a user's rows `per_unit` wide: what
    the private step's pre-noise sum must be, unit by unit, with each unit's own key."""
    unit_stream = streams.derive(streams.index(key, 0), streams.Step.UNIT)
    shared = {k: v for k, v in data.items() if k.startswith("shared_")}
    total = jax.tree.map(jnp.zeros_like, params)

    @jax.jit
    def unit_grad(p, batch, unit):
        def summed(p):
            value, _ = objective(p, batch, streams.index(unit_stream, unit), hparams=hparams)
            return value * jnp.sum(batch["mask"])
        return jax.grad(summed)(p)

    for unit in range(spec.n_units):
        batch = {"items": data["items"][unit], "mask": data["unit_mask"][unit],
                 "users": jnp.full(per_unit, data["unit_users"][unit]), **shared}
        grads = unit_grad(params, batch, unit)
        norm = jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(grads)))
        total = jax.tree.map(lambda t, g, n=norm: t + g * jnp.minimum(1.0, spec.clip / n),
                             total, grads)
    return total


def _pairs(a, b):
    return zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)


def _distance(a, b):
    return np.sqrt(sum(float(jnp.sum((x - y) ** 2)) for x, y in _pairs(a, b)))


def _brute_force(parts, params, spec, data, key, loss, n_negatives, private_users):
    """Sum over units of each unit's clipped `jax.grad` over the WHOLE parameter tables."""
    scorers = make_scorers(parts.graphdef, parts.constants)
    objective = make_objective(loss, scorers.score_pairs, scorers.score_all, n_items=N_ITEMS,
                               n_negatives=n_negatives)
    tables = row_tables(parts.graphdef)
    step_key = streams.index(key, 0)
    unit_stream = streams.derive(step_key, streams.Step.UNIT)
    shared = {k: v for k, v in data.items() if k.startswith("shared_")}
    total = jax.tree.map(jnp.zeros_like, params)
    for unit in range(spec.n_units):
        batch = {k: data[k][unit] for k in ("items", "ratings") if k in data}
        batch["users"] = jnp.full(spec.examples_per_unit, data["unit_users"][unit])
        batch["mask"] = data["unit_mask"][unit]
        n_rows = jnp.sum(batch["mask"])

        def summed(p, batch=batch, n_rows=n_rows, unit=unit):
            value, _ = objective(p, {**batch, **shared}, streams.index(unit_stream, unit))
            return value * n_rows

        grads = jax.grad(summed)(params)
        paths = jax.tree_util.tree_flatten_with_path(grads)[0]
        private = [not (not private_users and tables.get(path[0].key) == "users")
                   for path, _ in paths]
        leaves = [leaf for _, leaf in paths]
        kept = list(zip(leaves, private, strict=True))
        norm = jnp.sqrt(sum(jnp.sum(leaf**2) for leaf, keep in kept if keep))
        factor = jnp.minimum(1.0, spec.clip / norm)
        clipped = [leaf * factor if keep else leaf for leaf, keep in kept]
        grads = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(grads), clipped)
        total = jax.tree.map(jnp.add, total, grads)
    return total


@pytest.mark.parametrize("loss,user_rows,name,level", [
    ("bpr", "noised", "mf", "user"), ("bpr", "local", "mf", "user"),
    ("mse", "noised", "mf", "user"), ("sampled_softmax", "local", "mlp", "user"),
    ("bce", "noised", "neumf", "user"),
    # one-row units: every slot's negatives drawn before the chunks, a few ids compared
    ("bpr", "noised", "mf", "example"),
])
def test_clipped_sums_equal_a_brute_force_loop_over_whole_tables(loss, user_rows, name,
                                                                 level):
    rows = ROWS if loss != "bce" else {**ROWS, "ratings": (ROWS["ratings"] > 3).astype(
        np.float32)}
    parts, params, spec, data, step, state, _ = _setup(loss, user_rows=user_rows, name=name,
                                                       rows=rows, level=level)
    key = jax.random.key(7)
    got, metrics = _summed_update(step, state, data, key, spec)
    want = _brute_force(parts, params, spec, data, key, loss, 3, user_rows == "noised")
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-3, atol=2e-6)
    assert int(metrics["clipped"]) >= 1  # the clip bound was active
    # user 0's repeated item 2: its row is non-zero in the sum (the de-duplicated gather)
    assert np.abs(np.asarray(want["item_bias"][2] if name == "mf" else 1.0)).max() > 0


def test_one_unit_moves_the_clipped_sum_by_at_most_the_clip():
    parts, params, spec, data, step, state, _ = _setup("bpr", clip=0.05)
    key = jax.random.key(3)
    full, _ = _summed_update(step, state, data, key, spec)
    without = dict(data, unit_mask=data["unit_mask"].at[3].set(False))  # user 3 removed
    less, _ = _summed_update(step, state, without, key, spec)
    change = _distance(full, less)
    assert change <= spec.clip * (1 + 1e-4)
    assert change >= 0.99 * spec.clip  # user 3's gradient exceeded C, so it counts C exactly


def test_example_level_one_row_moves_the_sum_by_at_most_the_clip():
    parts, params, spec, data, step, state, _ = _setup("bpr", level="example", clip=0.02)
    key = jax.random.key(4)
    full, _ = _summed_update(step, state, data, key, spec)
    without = dict(data, unit_mask=data["unit_mask"].at[1].set(False))  # one row removed
    less, _ = _summed_update(step, state, without, key, spec)
    change = _distance(full, less)
    assert 0.99 * spec.clip <= change <= spec.clip * (1 + 1e-4)


def test_without_noise_or_clipping_a_dp_step_is_the_ordinary_step():
    parts, params, spec, data, step, state, opt = _setup(
        "mse", level="example", clip=1e6, optimizer="adam", learning_rate=0.01)
    key = jax.random.key(5)
    private_state, _ = jax.jit(step)(state, data, key)
    scorers = make_scorers(parts.graphdef, parts.constants)
    objective = make_objective("mse", scorers.score_pairs, scorers.score_all, n_items=N_ITEMS)
    ordinary = make_train_step(lambda p, b, k: objective(p["prediction"], b, k), opt)
    batch = {k: jnp.asarray(v) for k, v in ROWS.items()}
    batch["mask"] = jnp.ones(len(ROWS["users"]), bool)
    plain_state, _ = jax.jit(ordinary)(state, batch, key)
    for a, b in _pairs(private_state.params, plain_state.params):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_the_noise_has_standard_deviation_sigma_times_clip():
    parts, params, spec, data, step, state, _ = _setup("bpr", clip=0.5, noise=2.0)
    data = dict(data, unit_mask=jnp.zeros_like(data["unit_mask"]))  # no gradient: noise only
    noisy, _ = _summed_update(step, state, data, jax.random.key(6), spec)
    values = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(noisy)])
    assert values.size >= 60
    # sigma * C = 1.0; the sample std of n normals is within 4 / sqrt(2n) of it
    assert abs(values.std() - 1.0) < 4 / np.sqrt(2 * values.size)
    assert abs(values.mean()) < 4 / np.sqrt(values.size)


def test_local_user_rows_get_no_noise_and_shared_rows_do():
    parts, params, spec, data, step, state, _ = _setup("bpr", clip=0.5, noise=2.0,
                                                       user_rows="local")
    data = dict(data, unit_mask=jnp.zeros_like(data["unit_mask"]))
    noisy, _ = _summed_update(step, state, data, jax.random.key(6), spec)
    assert float(jnp.abs(noisy["user_factors"]).max()) == 0.0
    assert float(jnp.abs(noisy["user_bias"]).max()) == 0.0
    assert float(jnp.abs(noisy["item_factors"]).max()) > 0.1


def test_poisson_sampling_keeps_its_rate_and_reports_what_overflows():
    spec = dpsgd.make_spec("user", clip=1.0, noise_multiplier=1.0, n_units=1000,
                           expected_batch=50, examples_per_unit=2)
    assert spec.capacity > 50 and dpsgd.overflow_probability(1000, 0.05, spec.capacity) <= 1e-12
    counts = []
    for seed in range(200):
        units, valid, n = dpsgd.sample_units(jax.random.key(seed), spec)
        kept = np.asarray(units)[np.asarray(valid)]
        assert len(np.unique(kept)) == len(kept) == int(n)  # no overflow at this capacity
        counts.append(int(n))
    # mean of 200 Binomial(1000, 0.05) counts: 50 with std 6.9 / sqrt(200) = 0.49
    assert abs(np.mean(counts) - 50) < 2.0
    small = spec.__class__(**{**spec.__dict__, "capacity": 30})
    units, valid, n = dpsgd.sample_units(jax.random.key(0), small)
    assert int(valid.sum()) == min(30, int(n))


def test_user_units_hold_a_uniform_cap_of_each_users_rows():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(5), [0, 3, 10, 1, 7]).astype(np.int32)
    items = rng.integers(0, 50, len(users)).astype(np.int32)
    units = dpsgd.unit_arrays({"users": users, "items": items}, 5, "user", 4,
                              jax.random.key(1))
    assert units["items"].shape == (5, 4)
    assert units["unit_mask"].sum(1).tolist() == [0, 3, 4, 1, 4]
    for user in range(5):
        kept = units["items"][user][units["unit_mask"][user]]
        assert set(kept) <= set(items[users == user])
    example = dpsgd.unit_arrays({"users": users, "items": items}, 5, "example", 4,
                                jax.random.key(1))
    assert example["items"].shape == (len(users), 1) and example["unit_mask"].all()


def test_models_and_losses_without_per_user_gradients_are_refused():
    config = ModelConfig(name="lightgcn", embedding_dim=3, n_layers=1)
    parts = init_params(config, n_users=3, n_items=4, keys=jax.random.key(0)[None],
                        train_edges=(np.array([0, 1]), np.array([1, 2])))
    with pytest.raises(ConfigError, match="key model.name"):
        dpsgd.make_unit_gradient(parts.graphdef, "bpr", n_users=3, n_items=4, n_negatives=1)
    mf = _model()
    unit_gradient = dpsgd.make_unit_gradient(mf.graphdef, "softmax", n_users=N_USERS,
                                             n_items=N_ITEMS, n_negatives=1)
    batch = {"users": jnp.zeros(2, jnp.int32), "items": jnp.zeros(2, jnp.int32),
             "mask": jnp.ones(2, bool)}
    with pytest.raises(ConfigError, match="key train.loss"):
        unit_gradient({"prediction": jax.tree.map(lambda x: x[0], mf.params)}, mf.constants,
                      batch, jax.random.key(0))
    for kwargs, key in (({"clip": 0.0}, "privacy.clip"), ({"noise_multiplier": -1.0},
                                                           "privacy.noise")):
        arguments = {"clip": 1.0, "noise_multiplier": 1.0, **kwargs}
        with pytest.raises(ConfigError, match=key):
            dpsgd.make_spec("user", n_units=10, expected_batch=2, examples_per_unit=2,
                            **arguments)


def test_the_dp_epoch_is_one_scan_and_replays_from_the_step_count():
    parts, params, spec, data, step, state, _ = _setup("bpr", clip=0.5, noise=1.0,
                                                       optimizer="adam", learning_rate=0.01)
    epoch = jax.jit(dpsgd.make_dp_epoch(step, spec))
    key = jax.random.key(9)
    once, metrics = epoch(state, data, key, jnp.int32(0))
    again, _ = epoch(state, data, key, jnp.int32(0))
    assert int(once.step) == spec.steps_per_epoch == 1
    assert int(metrics["first_bad_batch"]) == -1 and np.isfinite(float(metrics["loss"]))
    for a, b in _pairs(once.params, again.params):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a python loop of steps under the epoch's key equals the epoch
    looped, _ = jax.jit(step)(state, data, streams.derive(key, streams.Epoch.STEPS))
    for a, b in _pairs(once.params, looped.params):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    assert optax is not None


def test_item_selection_counts_units_once_and_keeps_the_largest_noisy_counts():
    units = {"items": np.array([[2, 2, 5], [1, 2, 0], [2, 7, 7]]),
             "unit_mask": np.array([[True, True, True], [True, True, False],
                                    [True, True, False]])}
    counts = dpsgd.item_counts(units, 9)
    assert counts.tolist() == [0, 1, 3, 0, 0, 1, 0, 1, 0]  # unit 0's two 2s count once
    spec = dpsgd.make_spec("user", clip=1.0, noise_multiplier=1.0, n_units=3,
                           expected_batch=1, examples_per_unit=3, item_rows=2,
                           selection_noise=1e-6)
    chosen = dpsgd.select_items(jax.random.key(0), counts, spec)
    assert chosen.sum() == 2 and chosen[2] == 1  # the most held item; then one of the 1s
    noisy = dataclasses.replace(spec, selection_noise=50.0)
    picks = {tuple(np.flatnonzero(dpsgd.select_items(jax.random.key(s), counts, noisy)))
             for s in range(20)}
    assert len(picks) > 1  # the noise moves the choice
    with pytest.raises(ConfigError, match="privacy.item_rows"):
        dpsgd.make_spec("user", clip=1.0, noise_multiplier=1.0, n_units=3, expected_batch=1,
                        examples_per_unit=3, item_rows=2, selection_noise=0.0)


def test_unselected_item_rows_get_neither_gradient_nor_noise():
    parts, params, spec, data, step, state, _ = _setup("bpr", clip=0.5, noise=2.0,
                                                       user_rows="local")
    chosen = jnp.zeros(N_ITEMS).at[jnp.array([2, 5])].set(1.0)
    update, _ = _summed_update(step, state, {**data, dpsgd.TRAINED_ITEMS: chosen},
                               jax.random.key(8), spec)
    moved = np.flatnonzero(np.abs(np.asarray(update["item_factors"])).sum(1) > 0)
    assert moved.tolist() == [2, 5]
    assert np.flatnonzero(np.asarray(update["item_bias"])).tolist() == [2, 5]
    # without noise, each unit's clipped norm is over its selected rows (and dense ones) only
    quiet = _setup("bpr", clip=1e6, user_rows="local")
    full, _ = _summed_update(quiet[4], quiet[5], {**quiet[3], dpsgd.TRAINED_ITEMS: chosen},
                             jax.random.key(8), quiet[2])
    plain, _ = _summed_update(quiet[4], quiet[5], quiet[3], jax.random.key(8), quiet[2])
    np.testing.assert_allclose(np.asarray(full["item_factors"])[[2, 5]],
                               np.asarray(plain["item_factors"])[[2, 5]], rtol=1e-5)


def test_a_step_takes_units_of_one_row_in_8_chunks_and_units_of_several_in_2():
    for per_unit, chunks in ((1, dpsgd.CHUNKS_PER_STEP), (64, dpsgd.CHUNKS_PER_STEP_OF_USERS)):
        spec = dpsgd.make_spec("user" if per_unit > 1 else "example", clip=1.0,
                               noise_multiplier=1.0, n_units=943, expected_batch=45.0,
                               examples_per_unit=per_unit)
        assert spec.chunk == -(-45 // chunks)
        assert spec.capacity % spec.chunk == 0
        assert spec.capacity >= dpsgd.capacity_for(943, 45 / 943)


def test_marked_and_compared_unique_ids_equal_sorted_unique_ids():
    """Marked in a vector (many ids into a small table) or compared pairwise (a few ids:
    `COMPARED_IDS`), a unit's ids are `jnp.unique`'s, padding id included."""
    rng = np.random.default_rng(5)
    cases = ((40, 320), (1682, 320), (1682, 5), (9, 12), (100_000, 40), (3, 5))
    branches = {"compared" if slots <= dpsgd.COMPARED_IDS
                else "marked" if size <= dpsgd.MARKED_ROWS_PER_ID * slots else "sorted"
                for size, slots in cases}
    assert branches == {"compared", "marked", "sorted"}
    for size, slots in cases:
        for _ in range(20):
            # ids in [0, size], `size` itself the padding of a silo's rows
            values = jnp.asarray(rng.integers(0, size + 1, slots), jnp.int32)
            got = dpsgd.unique_ids({"items": values}, {"items": size})["items"]
            want = jnp.unique(values, size=slots, fill_value=size)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
            assert got.dtype == values.dtype
    # under vmap, as a step takes it per unit
    batch = jnp.asarray(rng.integers(0, 50, (6, 20)), jnp.int32)
    got = jax.vmap(lambda v: dpsgd.unique_ids({"users": v}, {"users": 50})["users"])(batch)
    for row, values in zip(np.asarray(got), np.asarray(batch), strict=True):
        uniq = np.unique(values)
        np.testing.assert_array_equal(row[:len(uniq)], uniq)
        assert (row[len(uniq):] == 50).all()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_skipped_private_step_keeps_the_state_bitwise(optimizer):
    """`apply=False` (the DP epoch's after a bad step) and a non-finite loss (a NaN rating)
    keep the whole state, the first step included; a good step then moves it."""
    _, _, _, data, step, state, _ = _setup("mse", noise=1.0, optimizer=optimizer,
                                           learning_rate=0.01)
    step = jax.jit(step)
    key = jax.random.key(3)
    bad = dict(data, ratings=data["ratings"].at[0, 0].set(jnp.nan))

    def same(a, b):
        return all(np.array_equal(np.asarray(x), np.asarray(y))
                   for x, y in _pairs(a, b))

    kept, metrics = step(state, data, key, apply=jnp.bool_(False))
    assert bool(metrics["finite"]) and same(kept, state)
    kept, metrics = step(state, bad, key)
    assert not bool(metrics["finite"]) and same(kept, state)
    moved, metrics = step(state, data, key)
    assert bool(metrics["finite"]) and not same(moved, state) and int(moved.step) == 1
