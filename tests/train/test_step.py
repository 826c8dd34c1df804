"""The pure train step, the scanned epoch and the loop: jit, vmap, keys, compilations, NaN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.config import ModelConfig, TrainConfig
from causalrec_jax.models.base import make_scorers
from causalrec_jax.models.factory import init_params
from causalrec_jax.train.loop import TrainingDivergedError, fit, seed_slice
from causalrec_jax.train.objectives import make_objective
from causalrec_jax.train.step import (
    epoch_batches,
    epoch_order,
    init_state,
    make_optimizer,
    make_train_epoch,
    make_train_step,
)

N_USERS, N_ITEMS = 20, 15


def toy_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "users": jnp.asarray(rng.integers(0, N_USERS, n), jnp.int32),
        "items": jnp.asarray(rng.integers(0, N_ITEMS, n), jnp.int32),
        "ratings": jnp.asarray(rng.integers(1, 6, n), jnp.float32),
    }


def setup(loss="mse", n_seeds=1, learning_rate=0.05):
    keys = jnp.stack([jax.random.key(s) for s in range(n_seeds)])
    parts = init_params(ModelConfig(name="mf", embedding_dim=4), n_users=N_USERS,
                        n_items=N_ITEMS, keys=keys)
    scorers = make_scorers(parts.graphdef, parts.constants)
    loss_fn = make_objective(loss, scorers.score_pairs, scorers.score_all, n_items=N_ITEMS)
    optimizer = make_optimizer(TrainConfig(learning_rate=learning_rate))
    return parts, loss_fn, optimizer, keys


def batch_of(data, size=16):
    batch = {name: values[:size] for name, values in data.items()}
    batch["mask"] = jnp.ones(size, bool)
    return batch


@pytest.mark.parametrize("loss", ["mse", "bpr"])
def test_jit_equals_eager_for_one_step(loss):
    parts, loss_fn, optimizer, _ = setup(loss)
    state = init_state(seed_slice(parts.params, 0), optimizer)
    step = make_train_step(loss_fn, optimizer)
    key = jax.random.key(7)
    eager_state, eager_metrics = step(state, batch_of(toy_data()), key)
    jit_state, jit_metrics = jax.jit(step)(state, batch_of(toy_data()), key)
    assert int(jit_state.step) == 1
    np.testing.assert_allclose(eager_metrics["loss"], jit_metrics["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(eager_state.params), jax.tree.leaves(jit_state.params),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_step_folds_the_step_into_the_key():
    parts, loss_fn, optimizer, _ = setup("bpr")
    state = init_state(seed_slice(parts.params, 0), optimizer)
    step = jax.jit(make_train_step(loss_fn, optimizer))
    batch, key = batch_of(toy_data()), jax.random.key(3)
    _, first = step(state, batch, key)
    _, again = step(state, batch, key)
    # Same state and key: same negatives, same loss; a later step draws other negatives.
    assert float(first["loss"]) == float(again["loss"])
    later = state.replace(step=jnp.asarray(5, jnp.int32))
    _, other = step(later, batch, key)
    assert float(other["loss"]) != float(first["loss"])


def run_epochs(n_seeds, epochs=3, loss="bpr"):
    parts, loss_fn, optimizer, keys = setup(loss, n_seeds)
    data = toy_data()
    train_epoch = make_train_epoch(make_train_step(loss_fn, optimizer), n_rows=64, batch_size=24)
    states = jax.vmap(lambda p: init_state(p, optimizer))(parts.params)
    return fit(train_epoch=train_epoch, states=states, data=data, keys=keys, epochs=epochs)


def test_vmap_over_seeds_equals_a_loop_over_seeds():
    together = run_epochs(3)
    for seed in range(3):
        parts, loss_fn, optimizer, keys = setup("bpr", 3)
        alone_keys = keys[seed : seed + 1]
        state = jax.vmap(lambda p, o=optimizer: init_state(p, o))(
            jax.tree.map(lambda x, s=seed: x[s : s + 1], parts.params)
        )
        train_epoch = make_train_epoch(make_train_step(loss_fn, optimizer), n_rows=64,
                                       batch_size=24)
        alone = fit(train_epoch=train_epoch, states=state, data=toy_data(), keys=alone_keys,
                    epochs=3)
        for a, b in zip(jax.tree.leaves(seed_slice(together.best_params, seed)),
                        jax.tree.leaves(seed_slice(alone.best_params, 0)), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_same_seed_identical_other_seed_differs():
    first, second = run_epochs(2), run_epochs(2)
    leaves_1, leaves_2 = jax.tree.leaves(first.best_params), jax.tree.leaves(second.best_params)
    for a, b in zip(leaves_1, leaves_2, strict=True):
        np.testing.assert_array_equal(a, b)
    user_table = [leaf for leaf in leaves_1 if leaf.ndim == 3][0]
    assert not np.allclose(user_table[0], user_table[1])


def test_a_run_compiles_the_epoch_once():
    parts, loss_fn, optimizer, keys = setup("bpr", 2)
    traces = []
    inner = make_train_epoch(make_train_step(loss_fn, optimizer), n_rows=64, batch_size=24)

    def counting_epoch(*args):
        traces.append(1)  # runs only while tracing
        return inner(*args)

    states = jax.vmap(lambda p: init_state(p, optimizer))(parts.params)
    result = fit(train_epoch=counting_epoch, states=states, data=toy_data(), keys=keys, epochs=4)
    assert result.timing["epochs_run"] == 4
    assert len(traces) == 1


def test_epoch_batches_cover_every_row_once_with_a_padded_tail():
    data = {"users": jnp.arange(10, dtype=jnp.int32)}
    batches, n_batches = epoch_batches(jax.random.key(0), data, 10, 4)
    assert n_batches == 3 and batches["users"].shape == (3, 4)
    real = np.asarray(batches["users"])[np.asarray(batches["mask"])]
    assert sorted(real.tolist()) == list(range(10))
    assert int(batches["mask"].sum()) == 10


def test_non_finite_loss_stops_with_epoch_and_batch(tmp_path):
    parts, _, optimizer, keys = setup("mse", 1)
    scorers = make_scorers(parts.graphdef, parts.constants)
    data = toy_data()
    data["ratings"] = data["ratings"].at[5].set(jnp.nan)

    def loss_fn(params, batch, key):
        scores = scorers.score_pairs(params, batch["users"], batch["items"])
        loss = jnp.sum(jnp.where(batch["mask"], (scores - batch["ratings"]) ** 2, 0.0))
        return loss, {"loss": loss}

    train_epoch = make_train_epoch(make_train_step(loss_fn, optimizer), n_rows=64, batch_size=8)
    states = jax.vmap(lambda p: init_state(p, optimizer))(parts.params)
    # The batch of epoch 0 that holds row 5 (the NaN rating) is the one the error must name.
    order = np.asarray(epoch_order(keys[0], jnp.int32(0), 64, 8))
    bad_batch = int(np.flatnonzero((order == 5).any(axis=1))[0])
    with pytest.raises(TrainingDivergedError, match=rf"epoch 0, batch {bad_batch} "):
        fit(train_epoch=train_epoch, states=states, data=data, keys=keys, epochs=2,
            checkpoint_dir=tmp_path / "ckpt")
    # Nothing was saved for the diverged epoch.
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_resampled_negatives_avoid_seen_items():
    from causalrec_jax.train.objectives import resample_seen, seen_items_data

    users = np.repeat(np.arange(4), 5)
    items = np.tile(np.arange(5), 4)  # every user has seen items 0..4 of 8
    for dense in (True, False):
        shared = seen_items_data(users, items, 4, 8)
        if not dense:
            codes = np.unique(users * 8 + items).astype(np.int32)
            shared = {"shared_seen_pairs": codes}
        batch_users = jnp.asarray(np.repeat(np.arange(4), 50), jnp.int32)
        negatives = jax.random.randint(jax.random.key(1), (200, 3), 0, 8)
        resampled, valid = resample_seen(
            jax.random.key(2), batch_users, negatives, 8,
            seen_mask=shared.get("shared_seen_mask"), seen_pairs=shared.get("shared_seen_pairs"),
        )
        resampled, valid = np.asarray(resampled), np.asarray(valid)
        # Items 5..7 are the only unseen ones; survivors of three redraws are masked out.
        assert np.all(resampled[valid] >= 5)
        # A negative stays seen after the first draw and 3 redraws with (5/8)^4 = 0.153.
        assert 0.77 < valid.mean() < 0.93


@pytest.mark.parametrize("n_seeds", [1, 2])
def test_streaming_epochs_equal_device_epochs(n_seeds):
    from causalrec_jax.train.step import make_streaming_epoch

    parts, loss_fn, optimizer, keys = setup("bpr", n_seeds)
    step = make_train_step(loss_fn, optimizer)
    data = toy_data(70)
    # fit donates the states' buffers, so each run gets its own copy of the parameters.
    states = jax.vmap(lambda p: init_state(p, optimizer))(jax.tree.map(jnp.copy, parts.params))
    device = fit(train_epoch=make_train_epoch(step, n_rows=70, batch_size=16), states=states,
                 data=data, keys=keys, epochs=3)
    # 5 batches per epoch in segments of 2: the last segment is padded with an empty batch.
    stream = make_streaming_epoch(step, n_rows=70, batch_size=16, segment_batches=2,
                                  vmap_seeds=n_seeds > 1)
    states = jax.vmap(lambda p: init_state(p, optimizer))(parts.params)
    host = fit(train_epoch=None, run_epoch=stream, states=states,
               data={name: np.asarray(values) for name, values in data.items()},
               keys=keys, epochs=3)
    assert int(host.states.step[0]) == int(device.states.step[0]) == 15
    for a, b in zip(jax.tree.leaves(device.best_params), jax.tree.leaves(host.best_params),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert [r["loss"] for r in host.history] == pytest.approx([r["loss"] for r in device.history])


def test_schedules_and_weight_decay():
    from causalrec_jax.train.step import make_schedule

    config = TrainConfig(learning_rate=0.1, lr_schedule="warmup_cosine", warmup_steps=10)
    schedule = make_schedule(config, total_steps=100)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(0.1)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)
    assert make_schedule(TrainConfig(learning_rate=0.1), 100) == 0.1
    # L2 weight decay pulls parameters toward zero even with a zero gradient.
    optimizer = make_optimizer(TrainConfig(optimizer="sgd", learning_rate=0.5, weight_decay=0.1))
    params = {"w": jnp.ones(3)}
    updates, _ = optimizer.update({"w": jnp.zeros(3)}, optimizer.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.05 * np.ones(3), rtol=1e-6)


def test_a_stopped_member_keeps_its_best_while_the_population_trains_on():
    """Member 0 peaks at epoch 0, then worsens for `patience` epochs and would improve
    later; alone it stops, so in a population its best must stay at epoch 0."""
    import optax

    from causalrec_jax.train.step import TrainState

    def train_epoch(state, data, key, epoch):
        params = dict(state.params, w=state.params["w"] + 1.0)
        return state.replace(params=params, step=state.step + 1), {
            "loss": jnp.float32(0.0), "first_bad_batch": jnp.int32(-1)}

    curves = {0: [0.9, 0.5, 0.4, 0.95, 0.99, 0.99], 1: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}

    def evaluate_fn(params):
        epoch = int(params["w"]) - 1
        member = int(round(float(params["member"])))
        return {"auc": curves[member][epoch]}

    states = TrainState(params={"w": jnp.zeros(2), "member": jnp.asarray([0.0, 1.0])},
                        opt_state=optax.EmptyState(), step=jnp.zeros(2, jnp.int32))
    result = fit(train_epoch=train_epoch, states=states, data={},
                 keys=jax.random.split(jax.random.key(0), 2), epochs=6,
                 evaluate_fn=evaluate_fn, metric="auc", patience=2)
    assert result.best_epochs == [0, 5]
    assert result.best_values == pytest.approx([0.9, 0.6])


def _state_leaves(state):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state)]


@pytest.mark.parametrize("optimizer_name", ["adam", "adamw"])
def test_guarded_adam_is_optax_adam_bitwise(optimizer_name):
    """The core's Adam (`scale_by_guarded_adam`) takes the steps optax's Adam takes, to the
    bit, over several jitted steps with weight decay."""
    import optax

    rng = np.random.default_rng(3)
    params = {"table": jnp.asarray(rng.normal(size=(30, 4)), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
    config = TrainConfig(optimizer=optimizer_name, learning_rate=0.01, weight_decay=0.05,
                         adam_beta2=0.98)
    ours = make_optimizer(config)
    if optimizer_name == "adam":
        theirs = optax.chain(optax.add_decayed_weights(0.05), optax.scale_by_adam(b2=0.98),
                             optax.scale_by_learning_rate(0.01))
    else:
        theirs = optax.chain(optax.scale_by_adam(b2=0.98), optax.add_decayed_weights(0.05),
                             optax.scale_by_learning_rate(0.01))

    @jax.jit
    def run(params):
        def body(carry, grads):
            p_ours, s_ours, p_theirs, s_theirs = carry
            u, s_ours = ours.update(grads, s_ours, p_ours, apply=jnp.bool_(True))
            v, s_theirs = theirs.update(grads, s_theirs, p_theirs)
            return (optax.apply_updates(p_ours, u), s_ours,
                    optax.apply_updates(p_theirs, v), s_theirs), None

        grads = jax.tree.map(lambda leaf: jax.random.normal(jax.random.key(1), (7, *leaf.shape)),
                             params)
        (p_ours, s_ours, p_theirs, s_theirs), _ = jax.lax.scan(
            body, (params, ours.init(params), params, theirs.init(params)), grads)
        return p_ours, p_theirs, s_ours.inner_state, s_theirs

    p_ours, p_theirs, s_ours, s_theirs = run(params)
    for a, b in zip(jax.tree.leaves((p_ours, s_ours)), jax.tree.leaves((p_theirs, s_theirs)),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("optimizer_name", ["adam", "adamw", "sgd", "optax_adam"])
def test_a_skipped_step_keeps_the_state_bitwise(optimizer_name):
    """`apply=False` (the epoch's padding and after a bad batch) and a NaN gradient each keep
    the whole state, the first step included (Adam's count is 0 there, so its update is not
    finite): for the core's optimisers and for any optax optimiser."""
    import optax

    parts, _, _, _ = setup("mse", 1)
    scorers = make_scorers(parts.graphdef, parts.constants)
    if optimizer_name == "optax_adam":
        optimizer = optax.adam(0.05)
    else:
        optimizer = make_optimizer(TrainConfig(optimizer=optimizer_name, learning_rate=0.05,
                                               weight_decay=0.01))

    def loss_fn(params, batch, key):
        scores = scorers.score_pairs(params, batch["users"], batch["items"])
        loss = jnp.mean((scores - batch["ratings"]) ** 2)
        return loss, {"loss": loss}

    step = jax.jit(make_train_step(loss_fn, optimizer))
    data = toy_data()
    good = batch_of(data)
    bad = dict(good, ratings=good["ratings"].at[3].set(jnp.nan))
    state = init_state(seed_slice(parts.params, 0), optimizer)
    for _ in range(2):  # at step 0, then after one real step
        kept, metrics = step(state, good, jax.random.key(0), apply=jnp.bool_(False))
        assert bool(metrics["finite"])
        assert all(np.array_equal(a, b, equal_nan=False) for a, b in
                   zip(_state_leaves(kept), _state_leaves(state), strict=True))
        kept, metrics = step(state, bad, jax.random.key(0))
        assert not bool(metrics["finite"])
        assert all(np.array_equal(a, b) for a, b in
                   zip(_state_leaves(kept), _state_leaves(state), strict=True))
        state, metrics = step(state, good, jax.random.key(0))
        assert bool(metrics["finite"])
    assert int(state.step) == 2
    assert all(np.all(np.isfinite(leaf)) for leaf in _state_leaves(state))


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000, 70_000, 311_286])
def test_host_sorted_permutation_is_jax_permutation(n):
    """`permutation(host_sort=True)` (NumPy's sorts) gives `jax.random.permutation`'s order,
    eagerly, jitted and vmapped over seeds, so runs on a CPU train what they trained before."""
    from causalrec_jax.train.step import permutation

    key = jax.random.key(n + 11)
    expected = np.asarray(jax.random.permutation(key, n))
    eager = np.asarray(permutation(key, n, host_sort=True))
    jitted = np.asarray(jax.jit(lambda k: permutation(k, n, host_sort=True))(key))
    assert eager.dtype == expected.dtype
    np.testing.assert_array_equal(eager, expected)
    np.testing.assert_array_equal(jitted, expected)
    keys = jnp.stack([jax.random.key(s) for s in range(3)])
    order = jax.jit(jax.vmap(lambda k: epoch_order(k, jnp.int32(2), n, 64, host_sort=True)))
    plain = jax.jit(jax.vmap(lambda k: epoch_order(k, jnp.int32(2), n, 64)))
    np.testing.assert_array_equal(np.asarray(order(keys)), np.asarray(plain(keys)))


def test_a_resume_with_the_other_threefry_lowering_is_refused(tmp_path, monkeypatch):
    """Checkpoints record the CPU Threefry lowering (`CAUSALREC_UNROLLED_THREEFRY`, whose
    floats differ in the last bit); a resume under the other one is one line naming it, and
    under the same one it goes on."""
    import causalrec_jax.train.loop as loop
    from causalrec_jax.errors import CausalRecError

    parts, _, optimizer, keys = setup("mse", 1)
    scorers = make_scorers(parts.graphdef, parts.constants)

    def loss_fn(params, batch, key):
        scores = scorers.score_pairs(params, batch["users"], batch["items"])
        loss = jnp.sum(jnp.where(batch["mask"], (scores - batch["ratings"]) ** 2, 0.0))
        return loss, {"loss": loss}

    train_epoch = make_train_epoch(make_train_step(loss_fn, optimizer), n_rows=64, batch_size=8)

    def run(epochs):
        params = jax.tree.map(jnp.copy, parts.params)  # the epochs donate what they train
        states = jax.vmap(lambda p: init_state(p, optimizer))(params)
        return fit(train_epoch=train_epoch, states=states, data=toy_data(), keys=keys,
                   epochs=epochs, checkpoint_dir=tmp_path / "ckpt", resume=True)

    here = loop.threefry_cpu()
    assert here in ("rolled", "unrolled")  # the tests run on CPUs
    other = "rolled" if here == "unrolled" else "unrolled"
    monkeypatch.setattr(loop, "threefry_cpu", lambda: other)
    run(1)
    monkeypatch.undo()
    setting = int(other == "unrolled")
    with pytest.raises(CausalRecError, match=(
            rf"the run was trained with CAUSALREC_UNROLLED_THREEFRY={setting} \(the {other} "
            r"Threefry lowering on CPUs, whose floats differ in the last bit\); resume it "
            r"with the same setting")):
        run(2)
    monkeypatch.setattr(loop, "threefry_cpu", lambda: other)
    # the same setting resumes (the checkpoint says its run finished: nothing left to train)
    assert run(2).timing["epochs_run"] == 0
