"""Checkpoint details of the one core: states written by optax's Adam read back into the
core's Adam, and the helpers that hand a checkpoint from the first process to the others
(bit for bit; here in one process, where they are the identity)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from causalrec_jax.config import TrainConfig
from causalrec_jax.train import checkpoint
from causalrec_jax.train.step import GuardedAdamState, init_state, make_optimizer


def test_a_checkpoint_of_optax_adam_reads_into_the_core_adam(tmp_path):
    """Runs started before the core's Adam (`optax.ScaleByAdamState`) resume: the state's
    fields have the same names, so the arrays read back by path."""
    params = {"table": jnp.arange(12.0).reshape(4, 3)}
    config = TrainConfig(learning_rate=0.01, weight_decay=0.001)
    old = optax.inject_hyperparams(
        lambda learning_rate, weight_decay: optax.chain(
            optax.add_decayed_weights(weight_decay), optax.scale_by_adam(),
            optax.scale_by_learning_rate(learning_rate)))(learning_rate=0.01,
                                                          weight_decay=0.001)
    old_state = init_state(params, old)
    grads = {"table": jnp.ones((4, 3))}
    _, inner = old.update(grads, old_state.opt_state, params)
    written = old_state.replace(opt_state=inner)
    checkpoint.save_checkpoint(tmp_path, 0, {"states": written}, {"epoch": 0})
    new = make_optimizer(config)
    like = {"states": init_state(params, new)}
    assert isinstance(like["states"].opt_state.inner_state[1], GuardedAdamState)
    read, _ = checkpoint.restore_checkpoint(tmp_path, like)
    for a, b in zip(jax.tree.leaves(read), jax.tree.leaves({"states": written}), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert isinstance(read["states"].opt_state.inner_state[1], GuardedAdamState)


def test_the_first_process_values_travel_bit_for_bit():
    from causalrec_jax.train import processes

    values = {"w": np.array([-0.0, 1.5, np.nan, -np.inf], np.float32),
              "keys": np.array([1, 2**32 - 1], np.uint32), "step": np.array(7, np.int32)}
    sent = processes.broadcast_values(values)
    for name, value in values.items():
        assert sent[name].dtype == value.dtype
        assert sent[name].tobytes() == value.tobytes(), name
    assert processes.broadcast_text(None) is None
    assert processes.broadcast_text("") == ""
    assert processes.broadcast_text('{"meta": 1}') == '{"meta": 1}'
    processes.together(None, "read")  # one process: nothing to raise
    with pytest.raises(OSError, match="disk full"):  # one process: its own error
        processes.together(OSError("disk full"), "write")


def test_a_checkpoint_read_into_host_memory_is_numpy(tmp_path):
    """`host_like` targets: the arrays come back as NumPy, onto no device (how a sharded
    run's whole tables are read before each device takes its part)."""
    written = {"table": jnp.arange(12.0).reshape(4, 3), "step": jnp.asarray(3, jnp.int32)}
    checkpoint.save_checkpoint(tmp_path, 0, written, {"epoch": 0})
    read, _ = checkpoint.restore_checkpoint(tmp_path, checkpoint.host_like(written))
    for name, value in written.items():
        assert type(read[name]) is np.ndarray, name
        np.testing.assert_array_equal(read[name], np.asarray(value))
