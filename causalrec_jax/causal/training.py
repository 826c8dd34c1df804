r"""Training objectives of the debiasing methods that need more than weights on observed rows.

`causal.method = "naive"` trains the ordinary objective of `train.objectives`. Every other
method is built here by `make_causal_objective` as `loss_fn(params, batch, key, *, hparams)
-> (loss, aux)`, the shape every training step takes; `params` is a dict with the prediction
model's parameters under `"prediction"` and the method's own parameters beside them.

**Tested = run.** Each objective is composed of the estimators of `causal.losses` (`ips_loss`,
`snips_loss`, `dr_terms`, `imputation_loss`, `rel_mf_terms`, `all_cells_estimate`), the
functions whose unbiasedness the tests check on the simulator, and bounds propensities with
the one clip, `causal.clip.clip_propensities`, inside the step. Every causal knob is a traced
hyperparameter (`hparams`, see `CAUSAL_HPARAMS`): a vmapped population can give each member
its own clip, imputed value, lambda, gamma, alpha, beta or c in one compiled program.

- `ips` / `snips` (Schnabel et al., ICML 2016; Swaminathan & Joachims, NeurIPS 2015): the
  pointwise error of each observed row weighted by `1 / p`, averaged over the rows (IPS) or
  self-normalised by the sum of the weights (SNIPS).

**Losses over all cells, estimated by minibatches.** The doubly robust family and `rel_mf`
sum over ALL `N = n_users * n_items` cells, observed or not. Each splits into a sum over all
cells and a sum over the `n_obs` observed (or positive) rows::

    L = (1/N) sum_all a_ui  +  (1/N) sum_obs b_ui

and a step estimates it without bias from `cells_per_row * batch_size` cells drawn uniformly
from the whole matrix (the first sum) and the batch of observed rows (the second)::

    L_hat = mean_uniform a  +  (n_obs / N) mean_batch b

so a batch has static shapes and never materialises the `[U, I]` matrix.

- `dr` (fixed imputation; Wang et al., "Doubly Robust Joint Learning for Recommendation on
  Data Missing Not at Random", ICML 2019): `a = e_hat`, `b = (e - e_hat) / p`, with `e` the
  error of the prediction against the rating and `e_hat` its error against a fixed imputed
  rating (`causal.imputation_value`, default the mean training rating or label).
- `dr_jl` (the same paper): the imputed rating comes from an imputation model of the same
  architecture, trained jointly on `(1/N) sum_obs w (e - e_hat)^2` with `w = 1 / p`. With the
  logistic loss (`bce`, binary labels) `e_hat` is the error against the imputed probability,
  which the error identifies; with the squared error it does not (two imputed ratings give the
  same error), so there the imputed rating is fitted to the rating: `w (r - r_hat)^2`.
- `mrdr` (Guo et al., "Enhanced Doubly Robust Learning for Debiasing Post-Click Conversion
  Rate Estimation", SIGIR 2021): `w = (1 - p) / p^2`, the IPS estimate of the DR estimator's
  variance term, so the imputation is fitted where DR's variance comes from.
- `dr_mse` (Dai et al., "A Generalized Doubly Robust Learning Framework for Debiasing
  Post-Click Conversion Rate Prediction", KDD 2022), our recent variant: the imputation
  minimises an estimate of the DR estimator's mean squared error, bias and variance together::

      w = lambda (1 - p)^2 / p^3  +  (1 - lambda) (1 - p) / p^2

  The first term is the IPS estimate over all cells of the squared-bias contribution
  `((O - p) / p)^2 (e - e_hat)^2` (DR-BIAS, `lambda = 1`), the second that of the variance
  (MRDR, `lambda = 0`); `causal.dr_mse_lambda` trades them off.
- `tdr` / `tdr_jl` (Li et al., "TDR-CL: Targeted Doubly Robust Collaborative Learning for
  Debiased Recommendations", ICLR 2023): DR (fixed imputation) and DR-JL with the imputed
  errors of every cell, observed or drawn, moved to `e_hat + eta (1 / p - 1)`, `eta` the
  least-squares fit of the batch's observed residuals `e - e_hat` on `1 / p - 1`
  (`causal.losses.targeting_coefficient`). The drawn cells' propensities come from the run's
  propensity matrix (`shared_propensity_matrix`), clipped like the rows' (with
  `naive_bayes`, whose propensity depends on the unknown rating, an unobserved cell holds the
  marginal P(O = 1), a stand-in). The step
  differentiates through `eta`, a function of the prediction: held fixed, `eta (1 / p - 1)`
  would not depend on the prediction and the gradient would be DR's exactly (the authors'
  code takes one such step after training). The imputation model of `tdr_jl` is DR-JL's.
- `rel_mf` (Saito et al., "Unbiased Recommender Learning from Missing-Not-At-Random Implicit
  Feedback", WSDM 2020): with clicks `Y` and exposure propensities `theta`, the unbiased
  pointwise loss `sum_all [-(Y/theta) log s - (1 - Y/theta) log(1 - s)]`: `a = -log(1 - s)`,
  `b = (-log s + log(1 - s)) / theta` over the positive rows.

In joint learning the prediction and imputation models are updated in the same step from one
scalar `L_DR(prediction; stop_gradient(imputation)) + L_imp(stop_gradient(prediction);
imputation)`: each model receives exactly its own objective's gradient.

**Popularity deconfounding** (positives with uniformly sampled negatives):

- `pda` (Zhang et al., "Causal Intervention for Leveraging Popularity Bias in Recommendation",
  SIGIR 2021): trains BPR on `ELU'(f_ui) * m_i^gamma`, with `m_i` the item's share of the
  training interactions and `ELU'(x) = elu(x) + 1 > 0`; inference ranks by `ELU'(f_ui)`
  (the deconfounded PD score: popularity's causal path to the click is cut).
- `macr` (Wei et al., "Model-Agnostic Counterfactual Reasoning for Eliminating Popularity Bias
  in Recommender System", KDD 2021): trains `y_ui = f_ui * sigmoid(y_i) * sigmoid(y_u)` with
  binary cross-entropy, plus `alpha` and `beta` times the item-module and user-module losses
  on `sigmoid(y_i)` and `sigmoid(y_u)`; inference removes the direct effect of the item:
  `(f_ui - c) * sigmoid(y_i) * sigmoid(y_u)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax import streams
from causalrec_jax.causal import losses as causal_losses
from causalrec_jax.causal.clip import clip_propensities
from causalrec_jax.config import CausalConfig
from causalrec_jax.errors import ConfigError
from causalrec_jax.train import losses
from causalrec_jax.train.objectives import draw_negatives

# Methods that weight a pointwise loss on the observed rows by inverse propensities.
WEIGHTED_METHODS = ("ips", "snips", "d_ips")
# Methods whose loss sums over every cell (uniform cells are drawn each step).
ALL_CELL_METHODS = ("dr", "dr_jl", "mrdr", "dr_mse", "d_dr", "d_dr_jl", "tdr", "tdr_jl",
                    "rel_mf")
# Doubly robust methods with a learned imputation model.
JOINT_METHODS = ("dr_jl", "mrdr", "dr_mse", "d_dr_jl", "tdr_jl")
DR_METHODS = ("dr", "d_dr", "tdr", *JOINT_METHODS)
# The dynamic estimators (Ha et al. 2024): 1 / f(p)^alpha(p) in place of 1 / p.
DYNAMIC_METHODS = ("d_ips", "d_dr", "d_dr_jl")
# Targeted DR (Li et al. 2023): the imputed errors moved along 1 / p - 1, which reads the
# propensity of every drawn cell (`shared_propensity_matrix`).
TARGETED_METHODS = ("tdr", "tdr_jl")
# Methods with a fixed imputed rating (`causal.imputation_value`).
FIXED_IMPUTATION_METHODS = ("dr", "d_dr", "tdr")
# Methods trained on the positive rows only (implicit feedback).
IMPLICIT_METHODS = ("rel_mf", "pda", "macr")
# Methods that train on positives with uniformly sampled negatives.
SAMPLED_NEGATIVE_METHODS = ("pda", "macr")
# Every method this module builds.
CAUSAL_METHODS = (*WEIGHTED_METHODS, *DR_METHODS, *IMPLICIT_METHODS)
# Methods whose rows carry propensities (clipped in the step by `causal.propensity_clip`).
METHODS_WITH_PROPENSITIES = (*WEIGHTED_METHODS, *ALL_CELL_METHODS)

# The traced causal knobs, each the `[causal]` key of the same name (`imputation_value`: the
# mean training rating when unset). The first seven shape training, the last two inference.
CAUSAL_HPARAMS = ("propensity_clip", "imputation_value", "dr_mse_lambda", "dynamic_ratio",
                  "pda_gamma", "macr_alpha", "macr_beta", "macr_c", "pda_inference_gamma")
INFERENCE_HPARAMS = ("macr_c", "pda_inference_gamma")

Scorer = Callable[..., jax.Array]


def causal_hparams(causal: CausalConfig, imputation_value: float = 0.0) -> dict[str, float]:
    """The traced knobs of `causal` as `{name: value}` (`CAUSAL_HPARAMS`); `imputation_value`
    fills `causal.imputation_value` when it is unset."""
    values = {name: getattr(causal, name) for name in CAUSAL_HPARAMS}
    if values["imputation_value"] is None:
        values["imputation_value"] = imputation_value
    return {name: float(value) for name, value in values.items()}


def as_hparams(values: dict[str, Any]) -> dict[str, jax.Array]:
    """`{name: [] float32}` (or `[n]` for a population) for a state's `hparams`."""
    return {name: jnp.asarray(value, jnp.float32) for name, value in values.items()}


def imputation_weights(method: str, propensities: jax.Array, dr_mse_lambda: Any = 0.5):
    """Per observed row, the weight of `(e - e_hat)^2` in the imputation objective of `method`
    (`causal.losses.imputation_weight`, the one definition)."""
    return causal_losses.imputation_weight(method, propensities, dr_mse_lambda)


def pointwise_error(loss_name: str, predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-cell error of a prediction (`causal.losses`): squared error (`mse`) or logistic
    loss on a logit against a label or a probability in [0, 1] (`bce`)."""
    if loss_name == "mse":
        return causal_losses.squared_error(predictions, targets)
    return causal_losses.binary_cross_entropy_error(predictions, targets)


def _imputed_target(loss_name: str, imputation_scores: jax.Array) -> jax.Array:
    """An imputation model's output as a target: a rating (`mse`) or a probability (`bce`)."""
    return imputation_scores if loss_name == "mse" else jax.nn.sigmoid(imputation_scores)


def macr_parts(params: dict[str, Any], users: jax.Array, items: jax.Array | None):
    """`(sigmoid(y_u) [b], sigmoid(y_i) [b] or [n_items])` of MACR's user and item modules."""
    user_prob = jax.nn.sigmoid(params["user_logit"][users])
    item_logit = params["item_logit"] if items is None else params["item_logit"][items]
    return user_prob, jax.nn.sigmoid(item_logit)


def _inference_value(params: dict[str, Any], causal: CausalConfig, name: str) -> Any:
    """An inference knob: the traced `params["hparams"][name]` if given, else the config's."""
    return params.get("hparams", {}).get(name, getattr(causal, name))


def inference_scorers(method: str, causal: CausalConfig, score_pairs: Scorer, score_all: Scorer):
    """`(score_pairs, score_all)` of the ranking a trained model of `method` serves.

    Both take the whole `params` dict of `make_causal_objective` (plus, for `pda`, the
    `"log_popularity"` of `saved_arrays`, and optionally `"hparams"` with traced
    `INFERENCE_HPARAMS`, defaulting to the config's values). `macr` removes the direct effect
    of popularity, `(f - c) sigmoid(y_i) sigmoid(y_u)`; `pda` serves `ELU'(f) m_i^gamma` with
    `gamma = causal.pda_inference_gamma` (PDA's popularity-adjusted inference; with 0 it is
    `ELU'(f)`, increasing in `f`, so it ranks as the prediction model: the deconfounded PD
    ranking); every other method serves the prediction model.
    """
    if method == "pda":
        def pda_factor(params, items=None):
            if "log_popularity" not in params:  # no popularity to re-add: the PD ranking
                return jnp.ones(() if items is None else jnp.shape(items))
            gamma = _inference_value(params, causal, "pda_inference_gamma")
            log_popularity = params["log_popularity"]
            return jnp.exp(gamma * (log_popularity if items is None else log_popularity[items]))

        def pda_pairs(params, users, items, key=None):
            f = score_pairs(params["prediction"], users, items, key=key)
            return (jax.nn.elu(f) + 1.0) * pda_factor(params, items)

        def pda_all(params, users):
            f = score_all(params["prediction"], users)
            return (jax.nn.elu(f) + 1.0) * jnp.atleast_1d(pda_factor(params))[None, :]

        return pda_pairs, pda_all
    if method == "macr":
        def pairs(params, users, items, key=None):
            user_prob, item_prob = macr_parts(params, users, items)
            f = score_pairs(params["prediction"], users, items, key=key)
            return (f - _inference_value(params, causal, "macr_c")) * item_prob * user_prob

        def all_items(params, users):
            user_prob, item_prob = macr_parts(params, users, None)
            f = score_all(params["prediction"], users)
            c = _inference_value(params, causal, "macr_c")
            return (f - c) * item_prob[None, :] * user_prob[:, None]

        return pairs, all_items

    def plain_pairs(params, users, items, key=None):
        return score_pairs(params["prediction"], users, items, key=key)

    def plain_all(params, users):
        return score_all(params["prediction"], users)

    return plain_pairs, plain_all


def extra_params(method: str, n_users: int, n_items: int) -> dict[str, np.ndarray]:
    """The method's own trainable arrays besides the models (MACR's user and item modules)."""
    if method == "macr":
        return {"user_logit": np.zeros(n_users, np.float32),
                "item_logit": np.zeros(n_items, np.float32)}
    return {}


def saved_arrays(method: str, n_users: int, n_items: int) -> dict[str, np.ndarray]:
    """Zeros shaped like every array besides the model that a run of `method` saves and its
    inference reads: the trainable `extra_params`, and PDA's training popularity."""
    if method == "pda":
        return {"log_popularity": np.zeros(n_items, np.float32)}
    return extra_params(method, n_users, n_items)


def log_popularity(items: np.ndarray, n_items: int) -> np.ndarray:
    """`[n_items]` log of each item's share of the training rows `items` (PDA's `m_i`);
    items never seen get the log of 1e-12 rather than -inf, so `gamma = 0` stays finite."""
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    return np.log(np.maximum(counts / max(counts.sum(), 1.0), 1e-12)).astype(np.float32)


def make_causal_objective(
    method: str,
    causal: CausalConfig,
    loss_name: str,
    score_pairs: Scorer,
    *,
    n_users: int,
    n_items: int,
    n_rows: int,
    imputation_score_pairs: Scorer | None = None,
    imputation_value: float = 0.0,
    log_popularity: np.ndarray | None = None,
    n_negatives: int = 1,
):
    """The training objective of `causal.method` for the methods of this module.

    Args:
        method: one of `CAUSAL_METHODS`.
        causal: the `[causal]` section: `cells_per_row` (static) and the defaults of the
            traced knobs (`CAUSAL_HPARAMS`) when the step passes no `hparams`.
        loss_name: `train.loss`: `mse` or `bce` for ips / snips / the DR family, `bce` for
            rel_mf and macr, `bpr` for pda.
        score_pairs: the prediction model's `(params, users, items, key=None) -> [b]`.
        n_users, n_items: the matrix's shape (uniform cells are drawn from it).
        n_rows: number of observed (DR) or positive (rel_mf) training rows, `n_obs`; a batch
            may carry `shared_observed_share` (`n_obs / N`) instead.
        imputation_score_pairs: the imputation model's scorer (joint DR methods).
        imputation_value: the default fixed imputed rating / label of `dr` (when
            `causal.imputation_value` is unset and no `hparams` are passed).
        log_popularity: `[n_items]` log of each item's share of training interactions (pda);
            a batch may carry `shared_log_popularity` instead.
        n_negatives: sampled negatives per positive (pda, macr).

    Returns:
        `loss_fn(params, batch, key, *, hparams=None) -> (loss, {"loss": loss})`. The batch
        holds `users`, `items`, `mask` and, per method, `ratings` (ratings or 0/1 labels) and
        `propensities` (unclipped `P(O = 1)` of the rows; rel_mf: exposure propensities),
        clipped in the step at `hparams["propensity_clip"]`.
    """
    if method not in CAUSAL_METHODS:
        raise ConfigError(f"key causal.method: {method!r} is not built here ({CAUSAL_METHODS})")
    n_cells = float(n_users) * float(n_items)
    cells_per_row = causal.cells_per_row
    defaults = causal_hparams(causal, imputation_value)
    static_popularity = (None if log_popularity is None
                         else jnp.asarray(log_popularity, jnp.float32))

    def dropout_rate(hparams):
        # The model's dropout rate, when a run traces it (`hparams["dropout"]`).
        return {"dropout_rate": hparams["dropout"]} if "dropout" in hparams else {}

    def dropout_key(key):
        return streams.derive(key, streams.Step.DROPOUT)

    def uniform_cells(key, batch_size):
        cell_key = streams.derive(key, streams.Step.CELLS)
        n = batch_size * cells_per_row
        user_key, item_key = jax.random.split(cell_key)
        return (jax.random.randint(user_key, (n,), 0, n_users, jnp.int32),
                jax.random.randint(item_key, (n,), 0, n_items, jnp.int32))

    def observed_share(batch):
        return batch.get("shared_observed_share", n_rows / n_cells)

    def clipped_propensities(batch, hparams):
        propensities, _ = clip_propensities(batch["propensities"], hparams["propensity_clip"],
                                            where=batch["mask"])
        return propensities

    def weighting_propensities(propensities, hparams):
        # What the estimator divides by: p, or f(p)^alpha(p) for the dynamic methods.
        if method not in DYNAMIC_METHODS:
            return propensities
        return causal_losses.dynamic_propensities(
            propensities, hparams["dynamic_ratio"], causal.dynamic_function)

    def weighted_loss_fn(params, batch, key, hparams):
        where = batch["mask"]
        scores = score_pairs(params["prediction"], batch["users"], batch["items"],
                             key=dropout_key(key), **dropout_rate(hparams))
        # Padding rows' ratings are zeroed: a NaN there would survive a zero cotangent.
        ratings = jnp.where(where, batch["ratings"], 0.0)
        errors = pointwise_error(loss_name, scores, ratings)
        propensities = weighting_propensities(clipped_propensities(batch, hparams), hparams)
        estimator = (causal_losses.snips_loss if method == "snips"
                     else causal_losses.ips_loss)
        return estimator(errors, where, propensities, where=where)

    def dr_loss_fn(params, batch, key, hparams):
        users, items, where = batch["users"], batch["items"], batch["mask"]
        cell_users, cell_items = uniform_cells(key, users.shape[0])
        all_users = jnp.concatenate([users, cell_users])
        all_items = jnp.concatenate([items, cell_items])
        predictions = score_pairs(params["prediction"], all_users, all_items,
                                  key=dropout_key(key), **dropout_rate(hparams))
        if method in FIXED_IMPUTATION_METHODS:
            imputed = jnp.broadcast_to(
                hparams["imputation_value"].astype(predictions.dtype), predictions.shape)
        else:
            imputed = _imputed_target(
                loss_name, imputation_score_pairs(params["imputation"], all_users, all_items)
            )
        n = users.shape[0]
        observed_prediction, cell_prediction = predictions[:n], predictions[n:]
        observed_imputed, cell_imputed = imputed[:n], imputed[n:]
        ratings = jnp.where(where, batch["ratings"], 0.0)
        errors = pointwise_error(loss_name, observed_prediction, ratings)
        propensities = clipped_propensities(batch, hparams)
        frozen = jax.lax.stop_gradient
        share = observed_share(batch)
        # The prediction model's DR loss, the imputation held fixed.
        imputed_errors = pointwise_error(loss_name, observed_prediction, frozen(observed_imputed))
        cell_imputed_errors = pointwise_error(loss_name, cell_prediction, frozen(cell_imputed))
        if method in TARGETED_METHODS:
            # TDR's fluctuation, fitted to this batch's observed residuals (differentiable in
            # the prediction: the gradient of the targeted estimate itself).
            eta = causal_losses.targeting_coefficient(errors, imputed_errors, where,
                                                      propensities, where=where)
            cell_propensities, _ = clip_propensities(
                batch["shared_propensity_matrix"][cell_users, cell_items],
                hparams["propensity_clip"])
            imputed_errors = imputed_errors + eta * causal_losses.targeting_covariate(
                jnp.where(where, propensities, 1.0))
            cell_imputed_errors = cell_imputed_errors + eta * causal_losses.targeting_covariate(
                cell_propensities)
        every_cell, _ = causal_losses.dr_terms(cell_imputed_errors, cell_imputed_errors,
                                               False, 1.0)
        _, per_observed = causal_losses.dr_terms(
            errors, imputed_errors, where, weighting_propensities(propensities, hparams),
            where=where)
        loss = causal_losses.all_cells_estimate(every_cell, per_observed, observed_share=share,
                                                where=where)
        if method in JOINT_METHODS:
            # The imputation model's objective, the prediction held fixed.
            if loss_name == "mse":
                # Squared errors do not identify the imputed rating (q and 2 y_hat - q give the
                # same error), so the imputed rating is fitted to the rating itself.
                targets, fitted = ratings, observed_imputed
            else:
                # The logistic loss is linear in the soft label: its error identifies it.
                targets = frozen(errors)
                fitted = pointwise_error(loss_name, frozen(observed_prediction), observed_imputed)
            loss = loss + share * causal_losses.imputation_loss(
                method, targets, fitted, where, propensities,
                dr_mse_lambda=hparams["dr_mse_lambda"], where=where,
            )
        return loss

    def rel_mf_loss_fn(params, batch, key, hparams):
        users, items, where = batch["users"], batch["items"], batch["mask"]
        cell_users, cell_items = uniform_cells(key, users.shape[0])
        n = users.shape[0]
        logits = score_pairs(params["prediction"], jnp.concatenate([users, cell_users]),
                             jnp.concatenate([items, cell_items]), key=dropout_key(key),
                             **dropout_rate(hparams))
        propensities = clipped_propensities(batch, hparams)
        every_cell, _ = causal_losses.rel_mf_terms(logits[n:])
        _, per_relevance = causal_losses.rel_mf_terms(logits[:n])
        return causal_losses.all_cells_estimate(
            every_cell, per_relevance / propensities, observed_share=observed_share(batch),
            where=where,
        )

    def sampled(params, batch, key, hparams):
        users, items = batch["users"], batch["items"]
        negatives, _, negative_where = draw_negatives(key, batch, users, n_items, n_negatives)
        if negative_where is None:
            negative_where = jnp.ones(negatives.shape, bool)
        width = 1 + n_negatives
        all_users = jnp.repeat(users[:, None], width, axis=1)
        all_items = jnp.concatenate([items[:, None], negatives], axis=1)
        scores = score_pairs(params["prediction"], all_users.reshape(-1), all_items.reshape(-1),
                             key=dropout_key(key), **dropout_rate(hparams)
                             ).reshape(-1, width)
        return all_users, all_items, scores, negative_where

    def pda_loss_fn(params, batch, key, hparams):
        _, all_items, scores, negative_where = sampled(params, batch, key, hparams)
        popularity = batch.get("shared_log_popularity", static_popularity)
        # ELU'(f) * m^gamma, in logs for the popularity factor (m can be tiny).
        trained = (jax.nn.elu(scores) + 1.0) * jnp.exp(
            hparams["pda_gamma"] * popularity[all_items])
        return losses.bpr_loss(trained[:, 0], trained[:, 1:], negative_where=negative_where,
                               where=batch["mask"])

    def macr_loss_fn(params, batch, key, hparams):
        all_users, all_items, scores, negative_where = sampled(params, batch, key, hparams)
        labels = jnp.zeros(scores.shape).at[:, 0].set(1.0)
        where = batch["mask"][:, None] & jnp.concatenate(
            [jnp.ones((scores.shape[0], 1), bool), negative_where], axis=1
        )
        user_logit = params["user_logit"][all_users]
        item_logit = params["item_logit"][all_items]
        combined = scores * jax.nn.sigmoid(item_logit) * jax.nn.sigmoid(user_logit)

        def bce(logits):
            return losses.binary_cross_entropy_loss(
                logits.reshape(-1), labels.reshape(-1), where=where.reshape(-1)
            )

        return (bce(combined) + hparams["macr_alpha"] * bce(item_logit)
                + hparams["macr_beta"] * bce(user_logit))

    body = {
        **dict.fromkeys(WEIGHTED_METHODS, weighted_loss_fn),
        "rel_mf": rel_mf_loss_fn, "pda": pda_loss_fn, "macr": macr_loss_fn,
    }.get(method, dr_loss_fn)

    def loss_fn(params, batch, key, *, hparams=None):
        values = as_hparams(defaults) if hparams is None else {**as_hparams(defaults), **hparams}
        loss = body(params, batch, key, values)
        return loss, {"loss": loss}

    return loss_fn
