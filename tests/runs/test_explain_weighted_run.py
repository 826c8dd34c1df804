"""Explaining runs trained with IPS and SNIPS: the re-fit weighs each of the user's rows as
training did (the clipped inverse propensity; SNIPS's weight decay per unit of weight), so
re-fitting a converged user gives back the trained vector, which an unweighted re-fit does
not; and the methods a re-fit cannot reproduce are refused on one line."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from causalrec_jax.cli import main
from causalrec_jax.config import load_config
from causalrec_jax.explain import make_refit_model
from causalrec_jax.models.mf import MF
from causalrec_jax.runs import train as run_train
from causalrec_jax.runs.explain import deletion_model, explain_run
from causalrec_jax.runs.load import load_run
from causalrec_jax.train.loop import seed_slice

from .test_explain_run import N_USERS, write_recbole

# MF trained to convergence (full-batch steps, no validation split: the last epoch is kept)
CONVERGED = [
    'data.format="recbole"', 'data.split="user_random"', "data.split_ratios=[0.9, 0.0, 0.1]",
    "train.epochs=150", 'train.loss="mse"', "model.embedding_dim=3", 'eval.metrics=["rmse"]',
    'train.early_stopping_metric="rmse"', "train.patience=150", "train.weight_decay=0.05",
    "train.batch_size=4096", "train.learning_rate=0.05", "train.checkpoint_every=150",
    'causal.propensity="popularity"', "causal.propensity_clip=0.05"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_recbole(tmp_path_factory.mktemp("weighted_data"))


def trained_run(data_dir, folder, method):
    config = load_config(None, [*CONVERGED, f'data.path="{data_dir}"',
                                f'causal.method="{method}"'])
    run_train.train_run(config, folder, quiet=True)
    return folder


def distances(run_dir):
    """Per user, the relative distance from the trained vector of the weighted re-fit (as
    explain builds it) and of the same re-fit with every weight 1."""
    run = load_run(run_dir)
    model = nnx.merge(run.parts.graphdef, seed_slice(run.parts.params, 0), run.parts.constants)
    weighted, unweighted = [], []
    for user in range(0, N_USERS, 3):
        refit = deletion_model(run, user)
        trained = np.concatenate([np.asarray(model.user_bias[...][user])[None],
                                  np.asarray(model.user_factors[...][user])])
        data = refit.data
        valid = np.asarray(data["valid"])
        weights = np.asarray(data["row_weights"])[valid]
        assert weights.min() >= 1.0 and weights.max() <= 1 / 0.05 + 1e-4  # 1 / clipped p
        plain = make_refit_model(model, user=user, items=np.asarray(data["items"])[valid],
                                 ratings=np.asarray(data["ratings"])[valid], loss="mse",
                                 l2=float(data["l2"]))
        for fit, out in ((refit, weighted), (plain, unweighted)):
            fitted = np.asarray(ravel_pytree(fit.data["theta_start"])[0])
            out.append(np.linalg.norm(fitted - trained) / np.linalg.norm(trained))
    return np.asarray(weighted), np.asarray(unweighted)


@pytest.mark.parametrize("method", ["ips", "snips"])
def test_a_weighted_refit_gives_back_the_trained_user(data_dir, tmp_path, method):
    run_dir = trained_run(data_dir, tmp_path / method, method)
    weighted, unweighted = distances(run_dir)
    # measured: IPS median 3.1e-4 (max 1.0e-3), unweighted 0.33; SNIPS 1.3e-4 (3.4e-4), 0.55
    assert np.median(weighted) < 2e-3 and weighted.max() < 1e-2, weighted
    # the weights matter: ignoring them lands far from the trained users
    assert np.median(unweighted) > 10 * np.median(weighted), (weighted, unweighted)
    result = explain_run(run_dir, "u4", k=3, max_size=8)
    assert "with each row's training weight" in result.explanation.semantics
    assert result.explanation.base_rank == result.served_rank


def test_methods_a_refit_cannot_reproduce_are_refused(data_dir, tmp_path, capsys):
    config = load_config(None, [*CONVERGED, f'data.path="{data_dir}"', 'causal.method="dr"',
                                "train.epochs=2"])
    run_train.train_run(config, tmp_path / "dr", quiet=True)
    assert main(["explain", "--run", str(tmp_path / "dr"), "--user", "u1"]) == 2
    error = capsys.readouterr().err
    assert "causal.method = 'dr'" in error and "'ips', 'snips'" in error
    assert error.count("\n") == 1


def test_row_weights_are_for_pointwise_losses_only():
    model = MF(3, 10, embedding_dim=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="row_weights with loss 'bpr'"):
        make_refit_model(model, user=0, items=[1, 2], loss="bpr", l2=1.0, row_weights=[1, 2])
    with pytest.raises(ValueError, match="expected 2 finite weights"):
        make_refit_model(model, user=0, items=[1, 2], loss="mse", l2=1.0, row_weights=[1, -2])
