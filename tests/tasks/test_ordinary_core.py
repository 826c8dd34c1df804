"""The one training core of ordinary and causal runs (ordinary.ProgramSpec / _programs):

- tested = run: the objective a run builds (`ordinary._objective`, through an MF model) is
  unbiased for the full-information loss on the simulator, with its true propensities;
- every causal knob is a traced hyperparameter: a population of members with different clips
  or lambdas equals separate runs with those values, in one compiled program;
- compile once: a second identical run in one process compiles nothing.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.causal.training import as_hparams, causal_hparams
from causalrec_jax.config import CausalConfig, config_from_dict
from causalrec_jax.data.loader import load_dataset
from causalrec_jax.data.split import make_split
from causalrec_jax.models import base as base_models
from causalrec_jax.models.factory import init_params
from causalrec_jax.sim.world import WorldParams, WorldSizes, make_world, sample_exposure
from causalrec_jax.tasks import ordinary

N_DRAWS = 3000


@pytest.fixture(scope="module")
def world():
    """A small MNAR world, a fixed MF model and its true full-information squared error."""
    sizes = WorldSizes(n_users=30, n_items=20)
    truth = jax.jit(make_world, static_argnums=1)(
        jax.random.key(0), sizes, WorldParams(mean_exposure=0.25, selection_strength=1.5))
    config = config_from_dict({"model": {"name": "mf", "embedding_dim": 4}})
    parts = init_params(config.model, n_users=30, n_items=20, keys=jax.random.key(3)[None],
                        global_bias=3.0)
    params = jax.tree.map(lambda leaf: leaf[0] * 4.0, parts.params)  # spread the predictions
    users, items = (a.reshape(-1) for a in jnp.meshgrid(jnp.arange(30), jnp.arange(20),
                                                         indexing="ij"))
    predictions = base_models.make_scorers(parts.graphdef, parts.constants).score_pairs(
        params, users, items)
    ratings = truth.ratings.reshape(-1)
    true_loss = float(jnp.mean(jnp.square(predictions - ratings)))
    return {"truth": truth, "parts": parts, "params": params, "users": users, "items": items,
            "ratings": ratings, "true_loss": true_loss}


def _spec(world, method: str) -> ordinary.ProgramSpec:
    parts = world["parts"]
    return ordinary.ProgramSpec(
        graphdef=parts.graphdef, imputation_graphdef=None, loss="mse", method=method,
        cells_per_row=1, n_users=30, n_items=20, n_rows=600, batch_size=600, n_negatives=1,
        optimizer="adam", lr_schedule="constant", warmup_steps=0, total_steps=1, n_seeds=1)


def _draws(world, method: str, imputation_value: float = 2.0) -> np.ndarray:
    """The run's objective on every cell of `N_DRAWS` exposure draws (observed ones masked
    in), scaled by the draw's observed share `n_obs / N` for the weighted methods (their batch
    mean is over observed rows), as an estimate of the full-information loss."""
    loss_fn = ordinary._objective(_spec(world, method))
    propensity = world["truth"].propensity.reshape(-1)
    hparams = as_hparams(causal_hparams(CausalConfig(), imputation_value))

    def one(key):
        observed = sample_exposure(key, world["truth"].propensity).reshape(-1) > 0
        share = jnp.mean(observed.astype(jnp.float32))
        batch = {"users": world["users"], "items": world["items"], "ratings": world["ratings"],
                 "propensities": propensity, "mask": observed,
                 "shared_constants": world["parts"].constants, "shared_observed_share": share}
        loss, _ = loss_fn({"prediction": world["params"]}, batch, jax.random.fold_in(key, 1),
                          hparams=hparams)
        return loss * share if method in ("ips", "snips") else loss

    keys = jax.random.split(jax.random.key(11), N_DRAWS)
    return np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)


def _z(values: np.ndarray, truth: float) -> float:
    return (values.mean() - truth) / (values.std(ddof=1) / np.sqrt(len(values)))


def test_the_objective_a_run_builds_is_unbiased_for_ips_and_dr(world):
    truth = world["true_loss"]
    ips, dr = _draws(world, "ips"), _draws(world, "dr")
    # Within 4 standard errors of the truth, and the estimates are not degenerate.
    assert abs(_z(ips, truth)) < 4, (ips.mean(), truth)
    assert abs(_z(dr, truth)) < 4, (dr.mean(), truth)
    assert ips.std() > 0 and dr.std() > 0


def test_the_tdr_objective_a_run_builds_estimates_the_tdr_loss_of_its_draw(world):
    """Tested = run for targeted DR: on each exposure draw the run's TDR objective (uniform
    cells drawn from the whole matrix, their propensities read from the shared matrix) is an
    unbiased estimate of `causal.losses.tdr_loss` of that draw on the whole matrix (the
    batch holds every observed row, so its eta is the draw's)."""
    from causalrec_jax.causal import losses as causal_losses

    loss_fn = ordinary._objective(_spec(world, "tdr"))
    matrix = world["truth"].propensity
    propensity = matrix.reshape(-1)
    hparams = as_hparams(causal_hparams(CausalConfig(), 2.0))
    predictions = base_models.make_scorers(world["parts"].graphdef, world["parts"].constants
                                           ).score_pairs(world["params"], world["users"],
                                                         world["items"])
    errors = jnp.square(predictions - world["ratings"])
    imputed = jnp.square(predictions - 2.0)

    def one(key):
        observed = sample_exposure(key, matrix).reshape(-1) > 0
        share = jnp.mean(observed.astype(jnp.float32))
        batch = {"users": world["users"], "items": world["items"], "ratings": world["ratings"],
                 "propensities": propensity, "mask": observed,
                 "shared_constants": world["parts"].constants, "shared_observed_share": share,
                 "shared_propensity_matrix": matrix}
        loss, _ = loss_fn({"prediction": world["params"]}, batch, jax.random.fold_in(key, 1),
                          hparams=hparams)
        return loss - causal_losses.tdr_loss(errors, imputed, observed, propensity)

    keys = jax.random.split(jax.random.key(13), N_DRAWS)
    differences = np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)
    assert abs(_z(differences, 0.0)) < 4
    assert differences.std() > 0  # the uniform cells are a real sample


def test_snips_run_objective_is_consistent_and_naive_is_biased(world):
    truth = world["true_loss"]
    # SNIPS (unscaled: it is a self-normalised mean) is biased only by O(1/n); the naive
    # objective (the plain mse of the observed rows) is biased by selection on the rating.
    snips_loss_fn = ordinary._objective(_spec(world, "snips"))
    naive_loss_fn = ordinary._objective(_spec(world, "naive"))
    propensity = world["truth"].propensity.reshape(-1)
    hparams = as_hparams(causal_hparams(CausalConfig(), 0.0))

    def both(key):
        observed = sample_exposure(key, world["truth"].propensity).reshape(-1) > 0
        batch = {"users": world["users"], "items": world["items"], "ratings": world["ratings"],
                 "propensities": propensity, "mask": observed,
                 "shared_constants": world["parts"].constants}
        params = {"prediction": world["params"]}
        return (snips_loss_fn(params, batch, key, hparams=hparams)[0],
                naive_loss_fn(params, batch, key)[0])

    snips, naive = jax.jit(jax.vmap(both))(jax.random.split(jax.random.key(5), 1000))
    assert abs(float(snips.mean()) - truth) < 0.03 * truth
    assert abs(_z(np.asarray(naive, np.float64), truth)) > 4


def test_clip_is_applied_inside_the_run_objective(world):
    """The traced clip moves the run's IPS objective exactly as clipping the inputs would."""
    loss_fn = ordinary._objective(_spec(world, "ips"))
    propensity = world["truth"].propensity.reshape(-1)
    mask = jnp.ones(600, bool)
    batch = {"users": world["users"], "items": world["items"], "ratings": world["ratings"],
             "propensities": propensity, "mask": mask,
             "shared_constants": world["parts"].constants}
    params = {"prediction": world["params"]}
    base = causal_hparams(CausalConfig(), 0.0)
    values = []
    for clip in (0.0, 0.3):
        hparams = as_hparams({**base, "propensity_clip": clip})
        values.append(float(loss_fn(params, batch, jax.random.key(0), hparams=hparams)[0]))
    predictions = base_models.make_scorers(world["parts"].graphdef, world["parts"].constants
                                      ).score_pairs(world["params"], world["users"],
                                                    world["items"])
    errors = np.square(np.asarray(predictions - world["ratings"], np.float64))
    p = np.asarray(propensity, np.float64)
    np.testing.assert_allclose(values[0], np.mean(errors / p), rtol=1e-4)
    np.testing.assert_allclose(values[1], np.mean(errors / np.maximum(p, 0.3)), rtol=1e-4)
    assert p.min() < 0.3  # the clip binds somewhere


# ------------------------------------------------------------------ traced knobs, compile once


def _sim_config(method: str, **causal) -> object:
    return config_from_dict({
        "run": {"seed": 0},
        "data": {"format": "simulator", "split": "mar_slice"},
        "sim": {"n_users": 60, "n_items": 40},
        "model": {"name": "mf", "embedding_dim": 4},
        "causal": {"method": method, "propensity": "true", **causal},
        "train": {"loss": "mse", "epochs": 3, "batch_size": 256, "patience": 10,
                  "early_stopping_metric": "mse", "learning_rate": 0.02},
        "eval": {"protocol": "candidates", "metrics": ["mse", "auc"], "ks": [5]},
    })


@pytest.fixture(scope="module")
def sim_split():
    config = _sim_config("dr_mse")
    dataset, truth = load_dataset(config.data, config.sim)
    return make_split(dataset, config.data, seed=0), truth


def _final_params(trained) -> np.ndarray:
    leaves = jax.tree.leaves(trained.parts.params)
    return np.concatenate([np.asarray(leaf).reshape(len(np.asarray(leaves[0])), -1)
                           for leaf in leaves], axis=1)


def test_a_population_over_causal_knobs_equals_separate_runs(sim_split):
    split, truth = sim_split
    config = _sim_config("dr_mse", propensity_clip=0.05, dr_mse_lambda=0.5)
    members = [ordinary.Member(seed=0, hparams={"propensity_clip": 0.02, "dr_mse_lambda": 0.1}),
               ordinary.Member(seed=0, hparams={"propensity_clip": 0.2, "dr_mse_lambda": 0.9})]
    population = ordinary.train_split(config, split, members=members, evaluate_test=False,
                                    truth=truth)
    together = _final_params(population)
    for row, member in enumerate(members):
        alone_config = dataclasses.replace(config, causal=dataclasses.replace(
            config.causal, **member.hparams))
        alone = ordinary.train_split(alone_config, split, members=[ordinary.Member(seed=0)],
                                   evaluate_test=False, truth=truth)
        np.testing.assert_allclose(together[row], _final_params(alone)[0], rtol=2e-4,
                                   atol=2e-5)
    # The knobs matter: the two members trained to different parameters.
    assert np.abs(together[0] - together[1]).max() > 1e-3


def test_a_population_over_dropout_rates_equals_separate_runs(sim_split):
    split, truth = sim_split
    config = dataclasses.replace(
        _sim_config("naive"),
        model=config_from_dict({"model": {"name": "mlp", "embedding_dim": 4,
                                          "hidden_dims": [8], "dropout": 0.1}}).model)
    members = [ordinary.Member(seed=0, hparams={"dropout": 0.0}),
               ordinary.Member(seed=0, hparams={"dropout": 0.5})]
    together = _final_params(ordinary.train_split(config, split, members=members,
                                                evaluate_test=False, truth=truth))
    for row, member in enumerate(members):
        alone_config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, dropout=member.hparams["dropout"]))
        alone = ordinary.train_split(alone_config, split, evaluate_test=False, truth=truth)
        np.testing.assert_allclose(together[row], _final_params(alone)[0], rtol=2e-4,
                                   atol=2e-5)
    assert np.abs(together[0] - together[1]).max() > 1e-3


def test_a_second_identical_run_compiles_nothing(sim_split, compile_counter):
    split, truth = sim_split
    config = _sim_config("ips", propensity_clip=0.05)
    first = ordinary.train_split(config, split, truth=truth)
    with compile_counter:
        second = ordinary.train_split(config, split, truth=truth)
        # A different traced value (learning rate, clip) reuses the same program too.
        other = dataclasses.replace(
            config, train=dataclasses.replace(config.train, learning_rate=0.05),
            causal=dataclasses.replace(config.causal, propensity_clip=0.2))
        third = ordinary.train_split(other, split, truth=truth)
    assert compile_counter.count == 0
    assert first.per_seed[0]["test"] == second.per_seed[0]["test"]
    assert third.per_seed[0]["test"]["mse"] != first.per_seed[0]["test"]["mse"]


def test_an_ordinary_run_trains_with_the_configs_adam_beta2(sim_split):
    """`train.adam_beta2` reaches the optimiser of an ordinary run (part of its static spec):
    beta2 0.5 trains to other parameters than the default 0.999."""
    split, truth = sim_split
    config = _sim_config("naive")
    default = _final_params(ordinary.train_split(config, split, evaluate_test=False,
                                                 truth=truth))
    fast = dataclasses.replace(config, train=dataclasses.replace(config.train, adam_beta2=0.5))
    other = _final_params(ordinary.train_split(fast, split, evaluate_test=False, truth=truth))
    assert np.abs(default - other).max() > 1e-3


def test_the_dynamic_function_reaches_the_compiled_training_program(sim_split):
    """`causal.dynamic_function` is part of the program's static signature: a D-IPS run with
    f = identity trains other parameters than one with f = log (it used to be dropped when
    the program was built)."""
    split, truth = sim_split
    final = {}
    for function in ("log", "identity"):
        # A small w2 / w1 keeps alpha = 1 (where alpha is interior f^alpha = 2 r (1 - p) for
        # every f), so the weights are 1 / f(p): log2(1 + p) against p.
        config = _sim_config("d_ips", dynamic_function=function, dynamic_ratio=0.005)
        trained = ordinary.train_split(config, split, members=[ordinary.Member(seed=0)],
                                       evaluate_test=False, truth=truth)
        final[function] = _final_params(trained)[0]
    assert np.abs(final["log"] - final["identity"]).max() > 1e-3
