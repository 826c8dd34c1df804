"""Sharded training of the sequential models (SASRec, HSTU, BERT4Rec): the same run on one
device and on meshes of 8 virtual CPU devices gives the same model, with the token table
row-sharded, batches split over `data`, no table-sized collective in the compiled steps, and a
checkpoint written on a mesh resuming on one device.

The 8 devices exist only in a subprocess (`sharded_sequence_runs.py`), as in `test_sharded.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from causalrec_jax.config import config_from_dict
from causalrec_jax.errors import ConfigError
from causalrec_jax.models.base import row_tables
from causalrec_jax.models.hstu import HSTU
from causalrec_jax.models.sasrec import SASRec
from causalrec_jax.tasks.sequential import check_sequential_config

SCRIPT = Path(__file__).with_name("sharded_sequence_runs.py")

# The key projection's bias adds the same amount to every score of a query, which the
# softmax ignores: its gradient is zero in exact arithmetic and float noise (1e-9) in either
# program, which Adam divides by its own size into steps of up to the learning rate. Every
# other parameter is compared to `TOLERANCE` (float32 sums in another order over 4 epochs).
ZERO_GRADIENT = "['key_layer']['bias']"
TOLERANCE = 2e-4


def _report(tmp_path_factory, *args: str) -> dict:
    out = tmp_path_factory.mktemp("sharded_sequences")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, str(SCRIPT), str(out / "runs"), *args], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_equal(differences: dict, what: str) -> None:
    assert differences and None not in differences.values(), (what, differences)  # shapes
    for name, difference in differences.items():
        bound = 0.05 if ZERO_GRADIENT in name else TOLERANCE
        assert difference <= bound, (what, name, difference)


def _check_report(report: dict, meshes: tuple[str, ...]) -> None:
    assert report["devices"] == 8
    single = report["runs"]["single"]
    for mesh in meshes:
        run = report["runs"][mesh]
        # the model written to the run folder has the real token count, not the padded one
        _check_equal(run["differences"], mesh)
        assert run["best_epoch"] == single["best_epoch"], mesh
        for metric, value in single["test"].items():
            assert run["test"][metric] == pytest.approx(value, abs=1e-6), (mesh, metric)
    hlo = report["hlo"]
    assert hlo["widths"] == 2  # one compiled step per bucket width, both inspected
    # no collective moves a whole table (lookups and negatives gather rows; the gradient of
    # the table stays on its shard), and nothing is all-gathered at all
    assert hlo["table_collectives"] == [] and hlo["all_gathers"] == 0
    # the token table and its Adam moments split by rows (after the seed axis)
    assert "P(None, 'model', None)" in hlo["state_specs"]


def test_sharded_sasrec_equals_one_device(tmp_path_factory):
    _check_report(_report(tmp_path_factory, "--meshes", "4x2"), ("4x2",))


# The runs below are in `make test-all` (the slow tests), to keep `make test` within its
# 10 minutes: the checkpoint's view is the ordinary runs' (`parallel.checkpoint_view`, whose
# 8 -> 4 -> 1 restore `test_sharded.py` runs in `make test`).
@pytest.mark.slow
def test_a_checkpoint_of_a_mesh_resumes_on_one_device(tmp_path_factory):
    """Stopped on the 4 x 2 mesh after epoch 2, resumed on one device: the checkpoint holds
    the token table at its real size, and the run ends with the uninterrupted run's model."""
    report = _report(tmp_path_factory, "--meshes", "4x2", "--checkpoints")
    _check_report(report, ("4x2",))
    checkpoints = report["checkpoints"]
    assert checkpoints["interrupted"]
    assert checkpoints["epochs"] == [0, 1, 2, 3]  # each epoch logged once
    _check_equal(checkpoints["differences"], "resumed")


@pytest.mark.slow
@pytest.mark.parametrize(("model", "loss"), [("hstu", "sampled_softmax"),
                                             ("bert4rec", "masked_item"),
                                             ("sasrec", "full_softmax")])
def test_every_sequential_model_and_loss_on_every_mesh_equals_one_device(
        tmp_path_factory, model, loss):
    meshes = ("1x1", "8x1", "2x4")
    report = _report(tmp_path_factory, "--model", model, "--loss", loss, "--meshes",
                     ",".join(meshes))
    _check_report(report, meshes)
    assert set(report["runs"]["1x1"]["differences"].values()) == {0.0}  # the same program


def test_the_sequential_models_declare_their_token_table():
    for model_class in (SASRec, HSTU):
        import jax
        from flax import nnx

        graphdef, _ = nnx.split(model_class(7, 4, key=jax.random.key(0), hidden_dim=4),
                                nnx.Param)
        assert row_tables(graphdef) == {"token_embedding": "tokens"}


def test_a_sequential_mesh_is_checked_against_the_devices():
    sections = {"data": {"format": "csv", "path": "x.csv", "split": "leave_one_out"},
                "model": {"name": "sasrec"}, "train": {"loss": "full_softmax"},
                "parallel": {"mesh": [2, 1]}}
    with pytest.raises(ConfigError, match="key parallel.mesh: a 2 x 1 mesh needs 2 devices"):
        check_sequential_config(config_from_dict(sections))
