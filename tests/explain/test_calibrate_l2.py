"""The calibrated re-fit L2: the ridge that reproduces the trained user. A user whose trained
vector is the ridge fit at a known L2 gets that L2 back; the run's own L2 is a floor; a BPR
user whose objective has no finite minimum without L2 gets a finite, near re-fit."""

import jax
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree

from causalrec_jax.explain import make_refit_model
from causalrec_jax.explain.deletion import CALIBRATION_SCALES
from causalrec_jax.models.mf import MF

N_ITEMS = 60
HISTORY = np.array([3, 7, 11, 19, 23, 29, 31, 2, 40, 44, 50, 51])


def _with_user(mf, theta):
    """`mf` with user 0's factors and bias set to `theta`."""
    graphdef, state = nnx.split(mf)
    model = nnx.merge(graphdef, state)
    model.user_factors[...] = model.user_factors[...].at[0].set(theta["factors"])
    model.user_bias[...] = model.user_bias[...].at[0].set(theta["bias"])
    return model


def test_calibration_recovers_the_ridge_that_made_the_user():
    mf = MF(2, N_ITEMS, embedding_dim=4, key=jax.random.key(0), init_scale=1.0)
    ratings = np.random.default_rng(0).normal(size=len(HISTORY)).astype(np.float32)
    # the curvature scale of mse: the mean diagonal of 2 X^T X with X = [1, q_h]
    x = np.concatenate([np.ones((len(HISTORY), 1)),
                        np.asarray(mf.item_factors[...])[HISTORY]], axis=1)
    scale = np.trace(2 * x.T @ x) / x.shape[1]
    planted = float(np.float32(scale * CALIBRATION_SCALES[7]))
    ridge = make_refit_model(mf, user=0, items=HISTORY, ratings=ratings, loss="mse",
                             l2=planted)
    trained = _with_user(mf, ridge.data["theta_start"])
    calibrated = make_refit_model(trained, user=0, items=HISTORY, ratings=ratings,
                                  loss="mse", l2=0.0, calibrate=True)
    np.testing.assert_allclose(float(calibrated.data["l2"]), planted, rtol=1e-4)
    assert float(calibrated.data["fit_distance"]) < 1e-4
    assert "calibrated" in calibrated.semantics
    # the run's L2 is a floor: above the planted one, calibration keeps it
    floor = make_refit_model(trained, user=0, items=HISTORY, ratings=ratings, loss="mse",
                             l2=4 * planted, calibrate=True)
    assert float(floor.data["l2"]) == np.float32(4 * planted)
    assert "calibrated" not in floor.semantics
    # a run's L2 float32 cannot hold exactly (0.8), kept: not called calibrated
    kept = _with_user(mf, make_refit_model(mf, user=0, items=HISTORY, ratings=ratings,
                                           loss="mse", l2=0.8).data["theta_start"])
    run_l2 = make_refit_model(kept, user=0, items=HISTORY, ratings=ratings, loss="mse",
                              l2=0.8, calibrate=True)
    assert float(run_l2.data["l2"]) == np.float32(0.8)
    assert "calibrated" not in run_l2.semantics and "L2 0.8;" in run_l2.semantics
    # uncalibrated: the L2 given, and its fit lands away from the user
    plain = make_refit_model(trained, user=0, items=HISTORY, ratings=ratings, loss="mse",
                             l2=0.01 * planted)
    assert float(plain.data["fit_distance"]) > 0.05


def test_bpr_without_l2_runs_away_and_calibration_holds_it():
    mf = MF(2, N_ITEMS, embedding_dim=8, key=jax.random.key(1), init_scale=1.0)
    # a trained user: the converged BPR fit at L2 2
    fitted = make_refit_model(mf, user=0, items=HISTORY, loss="bpr", l2=2.0, base_steps=30)
    trained = _with_user(mf, fitted.data["theta_start"])
    free = make_refit_model(trained, user=0, items=HISTORY, loss="bpr", l2=0.0)
    held = make_refit_model(trained, user=0, items=HISTORY, loss="bpr", l2=0.0,
                            calibrate=True)
    theta, _ = ravel_pytree(held.data["theta_start"])
    assert np.isfinite(np.asarray(theta)).all()
    assert float(free.data["fit_distance"]) > 0.5
    assert float(held.data["fit_distance"]) < 0.1
    # the grid's half decades bracket the L2 that made the user
    assert 2.0 / 10 ** 0.5 <= float(held.data["l2"]) <= 2.0 * 10 ** 0.5
