"""`CAUSALREC_UNROLLED_THREEFRY=1` registers jax's unrolled Threefry lowering on CPUs
(`causalrec_jax.xla_cpu`): every key, bit, integer and permutation stays bit for bit what
jax's own CPU lowering gives, and floats drawn from them differ at most in their last bit (XLA
fuses the conversion with the hash differently). Each lowering is computed in a fresh process:
one that imports causalrec_jax with the variable set, one that never imports it."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import causalrec_jax.xla_cpu as xla_cpu

DRAWS = """
import sys
import jax, jax.numpy as jnp, numpy as np
if sys.argv[2] == "ours":
    import causalrec_jax.xla_cpu as xla_cpu
    assert xla_cpu.UNROLLED
    text = jax.jit(lambda k: jax.random.bits(k, (16,))).lower(jax.random.key(0)).as_text()
    assert "while" not in text  # jax's own CPU lowering is a while loop
key = jax.random.key(7)
keys = jax.random.split(key, 3)
out = {
    "bits": jax.random.bits(key, (1000,), jnp.uint32),
    "split": jax.random.key_data(jax.random.split(key, 5)),
    "fold_in": jax.random.key_data(jax.random.fold_in(key, 12345)),
    "randint": jax.random.randint(key, (513,), 0, 1682),
    "permutation": jax.random.permutation(key, 3001),
    "vmap_fold_in": jax.random.key_data(
        jax.vmap(lambda u: jax.random.fold_in(key, u))(jnp.arange(115))),
    "normal": jax.random.normal(key, (64, 33)),
    "uniform": jax.random.uniform(key, (257,)),
    "jit_vmap_normal": jax.jit(jax.vmap(lambda k: jax.random.normal(k, (40,))))(keys),
}
np.savez(sys.argv[1], **{name: np.asarray(value) for name, value in out.items()})
"""


def _draws(path, which, unrolled):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop(xla_cpu.ENVIRONMENT, None)
    if unrolled:
        env[xla_cpu.ENVIRONMENT] = "1"
    done = subprocess.run([sys.executable, "-c", DRAWS, str(path), which],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(path)


def test_unrolled_threefry_draws_what_jax_draws(tmp_path):
    ours = _draws(tmp_path / "ours.npz", "ours", unrolled=True)
    theirs = _draws(tmp_path / "jax.npz", "jax", unrolled=False)
    assert sorted(ours.files) == sorted(theirs.files)
    for name in ours.files:
        if np.issubdtype(ours[name].dtype, np.floating):
            np.testing.assert_allclose(ours[name], theirs[name], rtol=3e-7, atol=1e-7,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_the_default_is_jax_lowering():
    """Without the variable nothing is registered (this test process has none set)."""
    import jax

    if os.environ.get(xla_cpu.ENVIRONMENT, "0") in ("", "0"):
        assert not xla_cpu.UNROLLED
        text = jax.jit(lambda k: jax.random.bits(k, (16,))).lower(jax.random.key(0)).as_text()
        assert "stablehlo.while" in text


def test_a_value_neither_on_nor_off_registers_nothing_and_is_refused_in_one_line(
        tmp_path, monkeypatch):
    """An import registers nothing and says nothing; `causalrec` stops before anything runs,
    with one line naming the value, and so does training from a user's own code (`fit`)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", xla_cpu.ENVIRONMENT: "yes"}
    done = subprocess.run(
        [sys.executable, "-c", "import causalrec_jax.xla_cpu as x; print(x.UNROLLED)"],
        capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False" and done.stderr == ""
    done = subprocess.run(
        [sys.executable, "-m", "causalrec_jax", "train", "--config", "configs/quickstart.toml",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=120,
        cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "causalrec train: error: CAUSALREC_UNROLLED_THREEFRY='yes': expected 1 or true (on), "
        "0 or false (off)"]
    assert not (tmp_path / "run").exists()
    from causalrec_jax.errors import ConfigError
    from causalrec_jax.train.loop import fit

    monkeypatch.setenv(xla_cpu.ENVIRONMENT, "on")
    with pytest.raises(ConfigError, match=r"CAUSALREC_UNROLLED_THREEFRY='on': expected 1"):
        fit(train_epoch=None, states=None, data={}, keys=None, epochs=1)


def test_use_unrolled_is_what_runs_record():
    """`threefry_cpu` (recorded in metrics.json and checkpoints) follows `use_unrolled`."""
    was = xla_cpu.UNROLLED
    try:
        assert xla_cpu.use_unrolled(True) and xla_cpu.threefry_cpu() == "unrolled"
        assert xla_cpu.use_unrolled(False) and xla_cpu.threefry_cpu() == "rolled"
    finally:
        xla_cpu.use_unrolled(was)
