"""Epochs streamed from a partitioned Parquet log equal in-memory epochs over the same order:
one process, and two processes on localhost joined by `jax.distributed`, each reading its
own row groups; hosts whose id maps differ stop with one error."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.config import ModelConfig, TrainConfig
from causalrec_jax.data.formats import read_table
from causalrec_jax.errors import ConfigError
from causalrec_jax.models.base import make_scorers
from causalrec_jax.models.factory import init_params
from causalrec_jax.parallel import streamed
from causalrec_jax.train.loop import seed_slice
from causalrec_jax.train.objectives import make_objective
from causalrec_jax.train.step import init_state, make_optimizer, make_scan_batches, make_train_step
from tests.data.test_partitioned import frame_of, write_log

BATCH, WINDOW_BATCHES = 16, 3


def positives(block):
    return block["ratings"] >= 3


def model_setup(loss, n_users, n_items):
    parts = init_params(ModelConfig(name="mf", embedding_dim=4), n_users=n_users,
                        n_items=n_items, keys=jnp.stack([jax.random.key(0)]))
    scorers = make_scorers(parts.graphdef, parts.constants)
    loss_fn = make_objective(loss, scorers.score_pairs, scorers.score_all, n_items=n_items)
    optimizer = make_optimizer(TrainConfig(learning_rate=0.05))
    state = init_state(seed_slice(parts.params, 0), optimizer)
    return make_train_step(loss_fn, optimizer), state


def in_memory_order(sources, plans, log):
    """`[n_batches, hosts x BATCH]` rows of the log read whole (-1: padding), replaying each
    host's plan: its row groups in order, windows of WINDOW_BATCHES x BATCH rows shuffled."""
    offsets, start = {}, 0
    for unit in log.units:
        offsets[unit] = start
        start += unit.rows
    window_rows = BATCH * WINDOW_BATCHES
    per_host = []
    for plan in plans:
        stream = np.concatenate([np.arange(offsets[u], offsets[u] + u.rows) for u in plan.units])
        windows = []
        for index in range(plan.n_windows):
            rows = stream[index * window_rows:(index + 1) * window_rows]
            order = np.full(window_rows, -1)
            order[:len(rows)] = rows[streamed.window_permutation(plan.window_seeds[index],
                                                                 len(rows))]
            windows.append(order.reshape(WINDOW_BATCHES, BATCH))
        per_host.append(np.concatenate(windows))
    return np.concatenate(per_host, axis=1)


def reference_epochs(step, state, whole, order_fn, epochs, keep, n_batches):
    """Epochs over the log read whole, in `order_fn`'s order: the state and each epoch's mean
    loss over its first `n_batches` batches. Rows with a NaN rating are masked (rating 0)."""
    scan = jax.jit(make_scan_batches(step))
    key = jax.random.key(11)
    finite = np.isfinite(whole.rating)
    data = {"users": whole.user, "items": whole.item,
            "ratings": np.where(finite, whole.rating, 0).astype(np.float32)}
    losses = []
    for epoch in range(epochs):
        order = order_fn(key, epoch)
        valid = order >= 0
        safe = np.where(valid, order, 0)
        batches = {name: jnp.asarray(values[safe]) for name, values in data.items()}
        batches["mask"] = jnp.asarray(valid & keep[safe] & finite[safe])
        state, bad, batch_losses = scan(state, batches, {}, key, jnp.int32(-1), jnp.int32(0))
        assert int(bad) == -1
        losses.append(float(np.asarray(batch_losses)[:n_batches].mean()))
    return state, losses


@pytest.fixture(scope="module")
def log_folder(tmp_path_factory):
    # 3 files of 67/67/66 rows in row groups of 7: windows of 48 rows span row groups; two
    # ratings are missing (NaN), which no step may train on.
    frame = frame_of(200, seed=4)
    frame.loc[[5, 77], "rating"] = np.nan
    return write_log(tmp_path_factory.mktemp("streamed") / "log", frame)


@pytest.mark.parametrize("loss", ["mse", "bpr"])
def test_streamed_epochs_equal_in_memory_epochs(log_folder, loss):
    keep_fn = positives if loss == "bpr" else None
    source = streamed.open_source(log_folder, keep_fn=keep_fn)
    whole = read_table(log_folder, None, kind="parquet")
    keep = whole.rating >= 3 if loss == "bpr" else np.ones(len(whole), bool)
    step, state = model_setup(loss, source.maps.n_users, source.maps.n_items)
    run_epoch = streamed.make_stream_epoch(step, batch_size=BATCH, window_batches=WINDOW_BATCHES)
    key = jax.random.key(11)
    streamed_state = jax.tree.map(jnp.copy, state)
    losses = []
    for epoch in range(2):
        streamed_state, metrics = run_epoch(streamed_state, source, key, epoch)
        assert metrics["first_bad_batch"] == -1 and np.isfinite(metrics["loss"])
        assert metrics["windows"] == 5 and metrics["rows"] == 200  # 200 rows / 48 per window
        losses.append(metrics["loss"])
    assert int(streamed_state.step) == 2 * 13  # ceil(200 / 16) steps per epoch

    def order_fn(key, epoch):
        plan = streamed.epoch_plan(source, key, epoch, BATCH, WINDOW_BATCHES)
        return in_memory_order([source], [plan], source.log)

    reference, reference_losses = reference_epochs(step, state, whole, order_fn, 2, keep, 13)
    for a, b in zip(jax.tree.leaves(reference.params), jax.tree.leaves(streamed_state.params),
                    strict=True):
        assert np.all(np.isfinite(b))
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert losses == pytest.approx(reference_losses, rel=1e-6)


def test_epochs_draw_new_orders_and_hosts_read_disjoint_rows(log_folder):
    key = jax.random.key(3)
    sources = [streamed.open_source(log_folder, process_index=h, process_count=2)
               for h in range(2)]
    plans = [streamed.epoch_plan(s, key, 0, BATCH, WINDOW_BATCHES) for s in sources]
    assert plans[0].n_windows == plans[1].n_windows  # the largest host's count
    assert set(plans[0].units).isdisjoint(plans[1].units)
    assert set(plans[0].units) | set(plans[1].units) == set(sources[0].log.units)
    seen = []
    for source, plan in zip(sources, plans, strict=True):
        windows = list(streamed.iter_windows(source, plan, BATCH, WINDOW_BATCHES))
        assert len(windows) == plan.n_windows
        seen.append(sum(int(w["mask"].sum()) for w in windows))
    assert sum(seen) == 198  # the two rows with a missing rating are masked
    again = streamed.epoch_plan(sources[0], key, 0, BATCH, WINDOW_BATCHES)
    later = streamed.epoch_plan(sources[0], key, 1, BATCH, WINDOW_BATCHES)
    assert again.units == plans[0].units
    np.testing.assert_array_equal(again.window_seeds, plans[0].window_seeds)
    assert later.units != plans[0].units
    assert not np.array_equal(later.window_seeds, plans[0].window_seeds)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _workers(folders: list[Path], out: Path):
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2"}
    script = Path(__file__).with_name("streamed_worker.py")
    workers = [subprocess.Popen(
        [sys.executable, str(script), str(folders[index]), str(out), str(BATCH),
         str(WINDOW_BATCHES)], env={**env, "JAX_PROCESS_ID": str(index)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for index in range(2)]
    return [(worker.wait(timeout=300), *worker.communicate()) for worker in workers]


@pytest.mark.slow  # make test-all (see Makefile)
def test_two_processes_stream_their_own_row_groups_into_one_training(log_folder, tmp_path):
    results = _workers([log_folder, log_folder], tmp_path / "params.npz")
    for code, _, err in results:
        assert code == 0, err[-3000:]
    trained = np.load(tmp_path / "params.npz")
    sources = [streamed.open_source(log_folder, process_index=h, process_count=2)
               for h in range(2)]
    whole = read_table(log_folder, None, kind="parquet")
    step, state = model_setup("mse", sources[0].maps.n_users, sources[0].maps.n_items)

    def order_fn(key, epoch):
        plans = [streamed.epoch_plan(s, key, epoch, BATCH, WINDOW_BATCHES) for s in sources]
        return in_memory_order(sources, plans, sources[0].log)

    reference, _ = reference_epochs(step, state, whole, order_fn, 2, np.ones(len(whole), bool),
                                    7)
    leaves = jax.tree_util.tree_leaves_with_path(reference.params)
    assert len(leaves) == len(trained.files)
    for path, value in leaves:
        np.testing.assert_allclose(trained[jax.tree_util.keystr(path)], value, rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("second, message", [
    ("other ids", "process 1 did not open the log"),
    ("missing", "process 1 of 2 could not open the log"),
])
def test_hosts_that_cannot_agree_on_the_log_stop_with_one_error(log_folder, tmp_path, second,
                                                                message):
    other = (write_log(tmp_path / "other", frame_of(200, seed=5, string_ids=True))
             if second == "other ids" else tmp_path / "nowhere")
    results = _workers([log_folder, other], tmp_path / "params.npz")
    for index, (code, _, err) in enumerate(results):
        assert code == 1
        if second == "missing" and index == 1:  # its own error names the folder
            assert "nowhere: expected a folder of Parquet files" in err, err[-2000:]
        else:
            assert message in err, err[-2000:]
    assert not (tmp_path / "params.npz").exists()


def test_several_processes_need_a_mesh_split_over_them(log_folder):
    source = streamed.open_source(log_folder, process_index=0, process_count=2)
    step, state = model_setup("mse", source.maps.n_users, source.maps.n_items)
    run_epoch = streamed.make_stream_epoch(step, batch_size=BATCH, window_batches=WINDOW_BATCHES)
    with pytest.raises(ConfigError, match="a log streamed by 2 processes needs a mesh"):
        run_epoch(state, source, jax.random.key(0), 0)
