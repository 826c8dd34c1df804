"""The debiasing objectives of causal/training.py: the minibatch estimates are unbiased for the
full all-cells losses, joint learning routes each objective to its own model, and the
popularity methods compute the published scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.causal import losses as causal_losses
from causalrec_jax.causal import training
from causalrec_jax.config import CausalConfig
from causalrec_jax.errors import ConfigError

U, I = 6, 5


def table_scorer(params, users, items, key=None):
    return params["table"][users, items]


def world(seed=0):
    rng = np.random.default_rng(seed)
    ratings = rng.integers(1, 6, (U, I)).astype(np.float32)
    propensities = rng.uniform(0.2, 0.9, (U, I)).astype(np.float32)
    observed = rng.uniform(size=(U, I)) < propensities
    observed[0, 0] = True
    users, items = np.nonzero(observed)
    prediction = {"table": jnp.asarray(rng.normal(3.0, 1.0, (U, I)), jnp.float32)}
    imputation = {"table": jnp.asarray(rng.normal(3.0, 1.0, (U, I)), jnp.float32)}
    batch = {
        "users": jnp.asarray(users, jnp.int32), "items": jnp.asarray(items, jnp.int32),
        "ratings": jnp.asarray(ratings[users, items]),
        "propensities": jnp.asarray(propensities[users, items]),
        "mask": jnp.ones(len(users), bool),
    }
    return ratings, propensities, observed, prediction, imputation, batch


def mean_over_keys(loss_fn, params, batch, n_keys):
    keys = jax.random.split(jax.random.key(1), n_keys)
    values = jax.jit(jax.vmap(lambda k: loss_fn(params, batch, k)[0]))(keys)
    return float(values.mean()), float(values.std() / np.sqrt(n_keys))


def test_dr_minibatch_loss_is_unbiased_for_the_full_dr_loss():
    ratings, propensities, observed, prediction, _, batch = world()
    loss_fn = training.make_causal_objective(
        "dr", CausalConfig(cells_per_row=1), "mse", table_scorer, n_users=U, n_items=I,
        n_rows=int(observed.sum()), imputation_value=2.5,
    )
    mean, stderr = mean_over_keys(loss_fn, {"prediction": prediction}, batch, 4000)
    predictions = np.asarray(prediction["table"])
    full = float(causal_losses.dr_loss(
        (predictions - ratings) ** 2, (predictions - 2.5) ** 2, observed, propensities
    ))
    assert abs(mean - full) < 4 * stderr
    assert stderr < 0.05 * abs(full)


@pytest.mark.parametrize("method", ["d_dr", "d_ips"])
def test_dynamic_objectives_estimate_the_dynamic_estimators(method):
    """The objective a D-DR / D-IPS run trains is, in expectation over its uniform cells, the
    estimator of `causal.losses` with f(p)^alpha(p) (Ha et al. 2024) in place of p."""
    ratings, propensities, observed, prediction, _, batch = world(3)
    causal = CausalConfig(cells_per_row=2, dynamic_ratio=0.3)
    loss_fn = training.make_causal_objective(
        method, causal, "mse", table_scorer, n_users=U, n_items=I,
        n_rows=int(observed.sum()), imputation_value=2.5,
    )
    mean, stderr = mean_over_keys(loss_fn, {"prediction": prediction}, batch, 4000)
    predictions = np.asarray(prediction["table"])
    dynamic = causal_losses.dynamic_propensities(propensities, 0.3)
    errors = (predictions - ratings) ** 2
    if method == "d_dr":
        expected = float(causal_losses.dr_loss(errors, (predictions - 2.5) ** 2, observed,
                                               dynamic))
        plain = float(causal_losses.dr_loss(errors, (predictions - 2.5) ** 2, observed,
                                            propensities))
        assert abs(mean - expected) < 4 * stderr
        assert abs(plain - expected) > 8 * stderr  # the dynamic weights do change the loss
    else:
        # D-IPS averages the batch's weighted rows, as IPS does (deterministic).
        expected = float(causal_losses.ips_loss(errors[observed], True, dynamic[observed]))
        assert mean == pytest.approx(expected, rel=1e-5)


def test_dr_minibatch_gradient_is_unbiased():
    ratings, propensities, observed, prediction, _, batch = world(1)
    loss_fn = training.make_causal_objective(
        "dr", CausalConfig(cells_per_row=4), "mse", table_scorer, n_users=U, n_items=I,
        n_rows=int(observed.sum()), imputation_value=3.0,
    )
    keys = jax.random.split(jax.random.key(2), 3000)
    grads = jax.jit(jax.vmap(
        lambda k: jax.grad(lambda p: loss_fn(p, batch, k)[0])({"prediction": prediction})
    ))(keys)["prediction"]["table"]

    def full(table):
        return causal_losses.dr_loss(
            (table - ratings) ** 2, (table - 3.0) ** 2, observed, propensities
        )

    expected = np.asarray(jax.grad(full)(prediction["table"]))
    mean = np.asarray(grads.mean(0))
    stderr = np.asarray(grads.std(0)) / np.sqrt(len(keys)) + 1e-6
    assert np.all(np.abs(mean - expected) < 5 * stderr)


@pytest.mark.parametrize("loss_name", ["mse", "bce"])
@pytest.mark.parametrize("method", ["dr_jl", "mrdr", "dr_mse"])
def test_joint_learning_gives_each_model_its_own_objective(method, loss_name):
    ratings, propensities, observed, prediction, imputation, batch = world(2)
    if loss_name == "bce":
        batch = dict(batch, ratings=(batch["ratings"] >= 4).astype(jnp.float32))
    config = CausalConfig(dr_mse_lambda=0.3)
    n_obs = int(observed.sum())
    loss_fn = training.make_causal_objective(
        method, config, loss_name, table_scorer, n_users=U, n_items=I, n_rows=n_obs,
        imputation_score_pairs=table_scorer,
    )
    params = {"prediction": prediction, "imputation": imputation}
    key = jax.random.key(3)
    grads = jax.grad(lambda p: loss_fn(p, batch, key)[0])(params)
    # The imputation model's gradient is that of the weighted imputation objective alone.
    users, items = batch["users"], batch["items"]
    p = batch["propensities"]
    weights = training.imputation_weights(method, p, config.dr_mse_lambda)
    predicted = prediction["table"][users, items]
    errors = training.pointwise_error(loss_name, predicted, batch["ratings"])

    def imputation_objective(table):
        if loss_name == "mse":
            residuals = batch["ratings"] - table[users, items]
        else:
            fitted = training.pointwise_error(loss_name, predicted,
                                              jax.nn.sigmoid(table[users, items]))
            residuals = errors - fitted
        return n_obs / (U * I) * jnp.mean(weights * residuals**2)

    expected = jax.grad(imputation_objective)(imputation["table"])
    np.testing.assert_allclose(grads["imputation"]["table"], expected, rtol=1e-5, atol=1e-6)
    # The prediction model's gradient is the DR loss's with the imputation held fixed.
    dr_only = training.make_causal_objective(
        "dr_jl", config, loss_name, table_scorer, n_users=U, n_items=I, n_rows=n_obs,
        imputation_score_pairs=lambda params, u, i, key=None: jax.lax.stop_gradient(
            table_scorer(params, u, i)),
    )
    reference = jax.grad(lambda q: dr_only({"prediction": q, "imputation": imputation}, batch,
                                           key)[0])(prediction)
    # dr_only still adds an imputation term, but it has no prediction gradient either way.
    np.testing.assert_allclose(grads["prediction"]["table"], reference["table"], rtol=1e-5,
                               atol=1e-6)


def test_imputation_weights_match_the_published_formulas():
    p = jnp.asarray([0.5, 0.2])
    np.testing.assert_allclose(training.imputation_weights("dr_jl", p), [2.0, 5.0], rtol=1e-6)
    np.testing.assert_allclose(training.imputation_weights("mrdr", p), [2.0, 20.0], rtol=1e-6)
    np.testing.assert_allclose(training.imputation_weights("dr_mse", p, 1.0), [2.0, 80.0],
                               rtol=1e-6)
    np.testing.assert_allclose(training.imputation_weights("dr_mse", p, 0.25),
                               [2.0, 0.25 * 80 + 0.75 * 20], rtol=1e-6)
    with pytest.raises(ConfigError, match="causal.method"):
        training.imputation_weights("ips", p)


def test_rel_mf_minibatch_loss_is_unbiased_for_the_full_loss():
    rng = np.random.default_rng(4)
    clicks = rng.uniform(size=(U, I)) < 0.3
    clicks[0, 0] = True
    theta = rng.uniform(0.1, 1.0, I).astype(np.float32)
    users, items = np.nonzero(clicks)
    logits = jnp.asarray(rng.normal(0, 1.5, (U, I)), jnp.float32)
    batch = {"users": jnp.asarray(users, jnp.int32), "items": jnp.asarray(items, jnp.int32),
             "propensities": jnp.asarray(theta[items]), "mask": jnp.ones(len(users), bool)}
    loss_fn = training.make_causal_objective(
        "rel_mf", CausalConfig(cells_per_row=2), "bce", table_scorer, n_users=U, n_items=I,
        n_rows=len(users),
    )
    mean, stderr = mean_over_keys(loss_fn, {"prediction": {"table": logits}}, batch, 4000)
    full = float(causal_losses.rel_mf_loss(logits, clicks, np.broadcast_to(theta, (U, I))))
    assert abs(mean - full) < 4 * stderr


def test_tdr_step_is_unbiased_for_the_full_tdr_loss_and_its_gradient():
    """With every observed row in the batch, the step's `eta` is the full data's, so its mean
    over uniform-cell draws is `causal.losses.tdr_loss` on the whole matrix, in value and in
    gradient (the step differentiates through `eta`); padding rows change neither; and the
    gradient is not DR's (it would be, were `eta` held fixed)."""
    ratings, propensities, observed, prediction, _, batch = world(3)
    batch = {**batch, "shared_propensity_matrix": jnp.asarray(propensities)}
    config = CausalConfig(cells_per_row=2)
    kwargs = dict(n_users=U, n_items=I, n_rows=int(observed.sum()), imputation_value=2.5)
    loss_fn = training.make_causal_objective("tdr", config, "mse", table_scorer, **kwargs)
    dr_fn = training.make_causal_objective("dr", config, "mse", table_scorer, **kwargs)

    def full(table):
        return causal_losses.tdr_loss((table - ratings) ** 2, (table - 2.5) ** 2, observed,
                                      propensities)

    table = prediction["table"]
    padded = {name: value if name.startswith("shared_") else jnp.concatenate([value, value[:3]])
              for name, value in batch.items()}
    padded["mask"] = padded["mask"].at[-3:].set(False)
    padded["propensities"] = padded["propensities"].at[-3:].set(0.0)
    padded["ratings"] = padded["ratings"].at[-3:].set(jnp.nan)
    keys = jax.random.split(jax.random.key(1), 4000)
    for b in (batch, padded):
        values, grads = jax.jit(jax.vmap(lambda k, b=b: jax.value_and_grad(
            lambda t: loss_fn({"prediction": {"table": t}}, b, k)[0])(table)))(keys)
        stderr = float(values.std() / np.sqrt(len(keys)))
        assert abs(float(values.mean()) - float(full(table))) < 4 * stderr
        grad_stderr = np.asarray(grads.std(0) / np.sqrt(len(keys)))
        np.testing.assert_array_less(np.abs(np.asarray(grads.mean(0) - jax.grad(full)(table))),
                                     4 * grad_stderr + 1e-4)
    dr_grad = jax.grad(lambda t: dr_fn({"prediction": {"table": t}}, batch, keys[0])[0])(table)
    tdr_grad = jax.grad(lambda t: loss_fn({"prediction": {"table": t}}, batch, keys[0])[0])(table)
    assert float(jnp.max(jnp.abs(tdr_grad - dr_grad))) > 1e-3


def test_tdr_jl_trains_its_imputation_as_dr_jl():
    """TDR-JL's imputation objective is DR-JL's: the same gradient for the imputation model;
    the prediction model's differs by the targeting."""
    ratings, propensities, observed, prediction, imputation, batch = world(4)
    batch = {**batch, "shared_propensity_matrix": jnp.asarray(propensities)}
    params = {"prediction": prediction, "imputation": imputation}
    grads = {}
    for method in ("dr_jl", "tdr_jl"):
        loss_fn = training.make_causal_objective(
            method, CausalConfig(), "mse", table_scorer, n_users=U, n_items=I,
            n_rows=int(observed.sum()), imputation_score_pairs=table_scorer)
        grads[method] = jax.grad(lambda p, f=loss_fn: f(p, batch, jax.random.key(0))[0])(params)
    np.testing.assert_allclose(grads["tdr_jl"]["imputation"]["table"],
                               grads["dr_jl"]["imputation"]["table"], rtol=1e-5, atol=1e-7)
    assert float(jnp.max(jnp.abs(grads["tdr_jl"]["prediction"]["table"]
                                 - grads["dr_jl"]["prediction"]["table"]))) > 1e-4


@pytest.mark.parametrize("method", ["dr", "dr_jl", "mrdr", "dr_mse", "d_dr", "d_dr_jl"])
def test_padding_rows_do_not_change_the_loss_or_its_gradient(method):
    """With prediction and imputation equal to the same constant everywhere the uniform cells
    contribute nothing, so the loss is a deterministic function of the observed rows: padding
    rows (mask False, propensity 0) must leave it and its gradient unchanged."""
    _, _, observed, _, _, batch = world(5)
    constant = {"table": jnp.full((U, I), 2.0)}
    params = {"prediction": constant, "imputation": constant}
    loss_fn = training.make_causal_objective(
        method, CausalConfig(), "mse", table_scorer, n_users=U, n_items=I,
        n_rows=int(observed.sum()), imputation_score_pairs=table_scorer, imputation_value=2.0,
    )
    padded = {name: jnp.concatenate([value, value[:3]]) for name, value in batch.items()}
    padded["mask"] = padded["mask"].at[-3:].set(False)
    padded["propensities"] = padded["propensities"].at[-3:].set(0.0)
    padded["ratings"] = padded["ratings"].at[-3:].set(jnp.nan)

    def value_and_grad(b, key):
        return jax.value_and_grad(lambda p: loss_fn(p, b, key)[0])(params)

    plain_value, plain_grads = value_and_grad(batch, jax.random.key(0))
    padded_value, padded_grads = value_and_grad(padded, jax.random.key(1))
    assert float(padded_value) == pytest.approx(float(plain_value), rel=1e-6)
    for a, b in zip(jax.tree.leaves(plain_grads), jax.tree.leaves(padded_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_pda_trains_on_popularity_weighted_scores_and_ranks_by_the_deconfounded_score():
    f = jnp.asarray([[0.3, -0.2, 1.0]], jnp.float32)
    log_pop = np.log(np.asarray([0.5, 0.3, 0.2]))
    config = CausalConfig(pda_gamma=0.2)
    loss_fn = training.make_causal_objective(
        "pda", config, "bpr", table_scorer, n_users=1, n_items=3, n_rows=1,
        log_popularity=log_pop, n_negatives=1,
    )
    batch = {"users": jnp.asarray([0], jnp.int32), "items": jnp.asarray([2], jnp.int32),
             "mask": jnp.ones(1, bool)}
    key = jax.random.key(0)
    loss = float(loss_fn({"prediction": {"table": f}}, batch, key)[0])
    # Recover the negative the step drew to check the value against the paper's formula.
    negative = int(jax.random.randint(jax.random.fold_in(key, 0), (1, 1), 0, 3, jnp.int32)[0, 0])

    def pda_score(item):
        return (float(jax.nn.elu(f[0, item])) + 1.0) * np.exp(0.2 * log_pop[item])

    expected = -np.log(1 / (1 + np.exp(-(pda_score(2) - pda_score(negative)))))
    assert loss == pytest.approx(expected, rel=1e-5)
    _, score_all = training.inference_scorers("pda", config, table_scorer, lambda p, u: p[
        "table"][u])
    # PD (gamma~ = 0) serves ELU'(f) + ... = elu(f) + 1, increasing in f: f's ranking.
    pd_scores = score_all({"prediction": {"table": f}}, jnp.asarray([0]))
    np.testing.assert_allclose(pd_scores, jax.nn.elu(f) + 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.argsort(-pd_scores[0]), np.argsort(-f[0]))
    # Popularity-adjusted inference (PDA) re-adds m_i^gamma~ with the training popularity.
    adjusted = CausalConfig(pda_inference_gamma=0.5)
    pairs, score_all = training.inference_scorers("pda", adjusted, table_scorer,
                                                  lambda p, u: p["table"][u])
    params = {"prediction": {"table": f}, "log_popularity": jnp.asarray(log_pop, jnp.float32)}
    expected = (jax.nn.elu(f[0]) + 1.0) * np.exp(0.5 * log_pop)
    np.testing.assert_allclose(score_all(params, jnp.asarray([0]))[0], expected, rtol=1e-5)
    np.testing.assert_allclose(pairs(params, jnp.asarray([0, 0]), jnp.asarray([1, 2])),
                               expected[1:], rtol=1e-5)


def test_macr_removes_the_direct_popularity_effect_at_inference():
    config = CausalConfig(macr_c=0.5)
    params = {"prediction": {"table": jnp.asarray([[2.0, 1.0]])},
              "user_logit": jnp.asarray([0.3]), "item_logit": jnp.asarray([1.0, -1.0])}
    pairs, all_items = training.inference_scorers(
        "macr", config, table_scorer, lambda p, u: p["table"][u]
    )
    sig = jax.nn.sigmoid
    expected = (jnp.asarray([2.0, 1.0]) - 0.5) * sig(jnp.asarray([1.0, -1.0])) * sig(0.3)
    np.testing.assert_allclose(all_items(params, jnp.asarray([0]))[0], expected, rtol=1e-6)
    np.testing.assert_allclose(pairs(params, jnp.asarray([0, 0]), jnp.asarray([0, 1])),
                               expected, rtol=1e-6)
    loss_fn = training.make_causal_objective(
        "macr", CausalConfig(macr_alpha=0.1, macr_beta=0.2), "bce", table_scorer, n_users=1,
        n_items=2, n_rows=1, n_negatives=1,
    )
    batch = {"users": jnp.asarray([0], jnp.int32), "items": jnp.asarray([0], jnp.int32),
             "mask": jnp.ones(1, bool)}
    value, grads = jax.value_and_grad(lambda p: loss_fn(p, batch, jax.random.key(0))[0])(params)
    assert np.isfinite(float(value)) and float(value) > 0
    # The item module learns: the positive item's logit is pushed up.
    assert float(grads["item_logit"][0]) < 0


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="causal.method"):
        training.make_causal_objective("naive", CausalConfig(), "mse", table_scorer, n_users=2,
                                       n_items=2, n_rows=1)
