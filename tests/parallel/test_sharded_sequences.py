"""Sharded training of the sequential models (SASRec, HSTU, BERT4Rec): the same run on one
device and on meshes of 8 virtual CPU devices gives the same model, with the token table
row-sharded, batches split over `data`, no table-sized collective in the compiled steps, and a
checkpoint written on a mesh resuming on one device.

The 8 devices exist only in a subprocess (`sharded_sequence_runs.py`), as in `test_sharded.py`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import pytest
from flax import nnx

from causalrec_jax.config import config_from_dict
from causalrec_jax.errors import ConfigError
from causalrec_jax.models.base import row_tables
from causalrec_jax.models.bert4rec import BERT4Rec
from causalrec_jax.models.hstu import HSTU
from causalrec_jax.models.sasrec import SASRec
from causalrec_jax.tasks.sequential import check_sequential_config

from .test_sharded import _sharded_report

SCRIPT = Path(__file__).with_name("sharded_sequence_runs.py")

# The key projection's bias adds the same amount to every score of a query, which the
# softmax ignores: its gradient is zero in exact arithmetic and float noise (1e-9) in either
# program, which Adam divides by its own size into steps of up to the learning rate. Every
# other parameter is compared to `TOLERANCE` (float32 sums in another order over 4 epochs).
ZERO_GRADIENT = "['key_layer']['bias']"
TOLERANCE = 2e-4


def _report(tmp_path_factory, *args: str) -> dict:
    return _sharded_report(tmp_path_factory, *args, script=SCRIPT)


def _check_equal(differences: dict, what: str) -> None:
    assert differences and None not in differences.values(), (what, differences)  # shapes
    for name, difference in differences.items():
        bound = 0.05 if ZERO_GRADIENT in name else TOLERANCE
        assert difference <= bound, (what, name, difference)


def _check_report(report: dict, meshes: tuple[str, ...], widths: int = 2) -> None:
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
    assert hlo["widths"] == widths  # one compiled step per bucket width, each inspected
    # no collective moves a whole table (lookups and negatives gather rows; the gradient of
    # the table stays on its shard), and nothing is all-gathered at all
    assert hlo["table_collectives"] == [] and hlo["all_gathers"] == 0
    # the token table and its Adam moments split by rows (after the seed axis)
    assert "P(None, 'model', None)" in hlo["state_specs"]


@pytest.mark.slow  # make test-all (36 s); the fast tier keeps the 8-device BPR-MF check
def test_sharded_sasrec_equals_one_device(tmp_path_factory):
    # one bucket width in make test (the runs below train two)
    _check_report(_report(tmp_path_factory, "--meshes", "4x2", "--one-width"), ("4x2",),
                  widths=1)


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


@pytest.mark.slow
def test_the_ips_weighted_sequential_run_of_a_slate_log_on_a_mesh_equals_one_device(
        tmp_path_factory):
    """`configs/sim_sasrec_ips.toml` (each shown item weighted by its logged propensity) on
    2 x 4: the same model and the same truth metrics as on one device."""
    report = _report(tmp_path_factory, "--slate-log", "--meshes", "2x4")
    assert report["devices"] == 8
    _check_equal(report["runs"]["2x4"]["differences"], "2x4")
    assert report["runs"]["2x4"]["test_truth"] == pytest.approx(
        report["runs"]["single"]["test_truth"], abs=1e-5)


def test_the_sequential_models_declare_their_token_table():
    """The token table (padding, items, BERT4Rec's [mask]) is the one row table; the padded
    table's extra rows come after every token."""
    for model_class in (SASRec, BERT4Rec, HSTU):
        model = model_class(7, 4, key=jax.random.key(0), hidden_dim=4)
        graphdef, params = nnx.split(model, nnx.Param)
        assert row_tables(graphdef) == {"token_embedding": "tokens"}, model_class
        n_tokens = 9 if model_class is BERT4Rec else 8
        assert params["token_embedding"].shape[0] == n_tokens, model_class


@pytest.mark.parametrize(("sections", "message"), [
    ({"parallel": {"mesh": [2, 1]}}, "key parallel.mesh: a 2 x 1 mesh needs 2 devices"),
    ({"parallel": {"mesh": [1, 1]}, "privacy": {"level": "user", "noise": 1.0}},
     "key parallel.mesh: \\[1, 1\\] with privacy.level = 'user'; a private sequential run "
     "trains on one device"),
    ({"train": {"halving_rung": 2}},
     "key train.halving_rung: 2, but a run of sasrec trains its seeds one after another"),
])
def test_a_sequential_run_refuses_what_it_cannot_do(sections, message):
    if jax.device_count() != 1:
        pytest.skip("the device-count message assumes one device")
    base = {"data": {"format": "csv", "path": "x.csv", "split": "leave_one_out"},
            "model": {"name": "sasrec"}, "train": {"loss": "full_softmax"}}
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    with pytest.raises(ConfigError, match=message):
        check_sequential_config(config_from_dict(base))
