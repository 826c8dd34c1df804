r"""Debiasing estimators of the full-information loss, as pure `jax.numpy` functions.

The ideal ("full-information") loss of a recommender is the mean over ALL `N` (user, item)
cells of a pointwise error `e_ui = error(prediction_ui, rating_ui)`, most of whose ratings are
never seen. With `O_ui = 1` for the observed cells and `p_ui = P(O_ui = 1)` their propensities
(Schnabel et al., "Recommendations as Treatments: Debiasing Learning and Evaluation", ICML
2016), the estimators here are::

    naive:  sum O e / sum O                                   (biased when data are MNAR)
    ips:    (1/N) sum O e / p                                 (Horvitz–Thompson, unbiased)
    snips:  sum (O / p) e / sum O / p                         (self-normalised, consistent)
    dr:     (1/N) sum [ e_hat + O (e - e_hat) / p ]           (doubly robust)

`dr` (Wang et al., "Doubly Robust Joint Learning for Recommendation on Data Missing Not at
Random", ICML 2019) is unbiased when either the propensities or the imputed errors `e_hat`
are correct. Its imputation model is trained with one of

    dr_jl_imputation_loss:  (1/N) sum O (e - e_hat)^2 / p               (Wang et al. 2019)
    mrdr_imputation_loss:   (1/N) sum O (1 - p) / p^2 (e - e_hat)^2     (Guo et al., "Enhanced
                            Doubly Robust Learning for Debiasing Post-Click Conversion Rate
                            Estimation", SIGIR 2021: the MRDR objective, which targets the
                            variance of the DR estimator rather than the imputation error)
    dr_mse_imputation_loss: (1/N) sum O w (e - e_hat)^2 with w = lambda (1 - p)^2 / p^3
                            + (1 - lambda) (1 - p) / p^2 (Dai et al., "A Generalized Doubly
                            Robust Learning Framework for Debiasing Post-Click Conversion Rate
                            Prediction", KDD 2022: DR's squared bias and variance together)

and, for implicit feedback, `rel_mf_loss` (Saito et al., WSDM 2020).

**Dynamic estimators** (Ha et al., "Fine-Grained Dynamic Framework for Bias-Variance Joint
Optimization on Data Missing Not at Random", NeurIPS 2024, Eq. (2)): D-IPS and D-DR divide by
`f(p)^alpha` instead of `p`, with `f` increasing, `f(0) = 0`, `f(1) = 1`, `f(p) > p` (their
Table 1: `log(p + 1) / log 2`, `sin(p) / sin 1`, `tanh(p) / tanh 1`; `p` itself gives the
plain estimators at `alpha = 1`), and a per-cell exponent in [0, 1] that minimises
`w1 * bias + w2 * variance` of the cell's term when `p` is right (their Eq. (5), Theorem 3.5)::

    alpha(p) = min(max(ln(2 (w2 / w1) (1 - p)) / ln f(p), 0), 1)

`dynamic_propensities` returns `f(p)^alpha(p)`: pass it where `ips_loss` / `dr_terms` take
propensities. The estimators are then biased even with the true propensities — the
expectation of D-DR is the truth minus `(1/N) sum (1 - p / f(p)^alpha) (e - e_hat)` (the
absolute value of this is their Lemma D.1's bias), of D-IPS the same with `e` for
`e - e_hat` — in exchange for a bounded variance as `p -> 0` (`dynamic_bias_weights` gives
the factor `1 - p / f(p)^alpha`; the tests check both against simulated exposure).

**Targeted DR** (Li, Lyu, Zheng and Wu, "TDR-CL: Targeted Doubly Robust Collaborative Learning
for Debiased Recommendations", ICLR 2023, arXiv 2203.10258): targeted maximum likelihood's
one-parameter fluctuation of the imputed errors, with the clever covariate `h = 1 / p - 1`::

    e_tilde = e_hat + eta h,    eta = sum_obs (e - e_hat) h / sum_obs h^2

(the least-squares fit of the observed residuals on `h`; `targeting_coefficient`), and TDR is
DR with `e_tilde` in place of `e_hat` (`tdr_loss`). The fit makes `sum_obs (e - e_tilde) h
= 0`, that is `sum_obs (e - e_tilde) / p = sum_obs (e - e_tilde)`: the correction term keeps
DR's form but its observed residuals weigh as if unweighted, which is where TDR's smaller
variance under a misspecified imputation comes from. With the true propensities TDR is not
exactly unbiased: `eta` is fitted on the same draw, so `E[TDR] - truth = E[eta c]` with `c =
(1/N) (sum_all h - sum_obs h / p)`, which has mean 0; the covariance of the two is of the order
of `1 / n_obs` (the tests measure it against exposure draws of the simulator).

Conventions shared by every function:

- Inputs are arrays of cells of any (common, broadcastable) shape: a batch of cells that mixes
  observed and unobserved ones (as DR training samples all cells), or the full `[U, I]` matrix.
  `observed` is 0/1 or bool. `where` (bool) marks the cells that belong to the population;
  padding is False. `N` is the number of cells with `where` True (all cells when None).
- The reduction is `causalrec_jax.train.losses.reduce_losses`, the one rule of every loss:
  the Horvitz–Thompson estimators divide by the number of valid cells (`normalize="count"`),
  SNIPS by the sum of the valid weights (`normalize="weights"`).
- Propensities are NOT clipped or validated here: clipping is a policy decision made in one
  place, `causalrec_jax.causal.propensity.clip_propensities`, which the caller applies first
  (and which reports how many were clipped). The losses only guarantee that cells which do not
  contribute — masked by `where`, or unobserved for the `O / p` terms — never turn a zero or
  non-finite propensity into NaN, in the value or in any gradient. An observed, unmasked cell
  with propensity 0 gives inf, as the estimator itself does.
- Errors of unobserved cells are ignored by the `O / p` terms but must be finite (fill missing
  ratings with any finite number): a NaN error multiplied by a zero cotangent is still NaN in
  the backward pass.
- When an imputation model is trained with `dr_jl_imputation_loss` / `mrdr_imputation_loss`,
  pass `jax.lax.stop_gradient(errors)` if the prediction model must not move with it (the
  alternating updates of DR-JL).

All functions are jit-, vmap- and grad-safe; everything masked gives a loss of 0 with zero,
finite gradients.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from causalrec_jax.errors import ConfigError
from causalrec_jax.train.losses import Normalize, reduce_losses

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _float_dtype(*arrays: ArrayLike) -> jnp.dtype:
    dtype = jnp.result_type(*arrays)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def _cells(errors: ArrayLike, *others: ArrayLike | None) -> tuple[Array, ...]:
    """Broadcasts `errors` and `others` (None kept) to one shape; errors as floats."""
    errors = jnp.asarray(errors)
    shape = jnp.broadcast_shapes(errors.shape, *(jnp.shape(x) for x in others if x is not None))
    dtype = _float_dtype(errors)
    errors = jnp.broadcast_to(errors.astype(dtype), shape)
    rest = tuple(None if x is None else jnp.broadcast_to(jnp.asarray(x), shape) for x in others)
    return (errors, *rest)


def _valid(shape: tuple[int, ...], where: ArrayLike | None) -> Array:
    if where is None:
        return jnp.ones(shape, bool)
    return jnp.broadcast_to(jnp.asarray(where, bool), shape)


def _inverse_propensity_weights(
    observed: Array, propensities: Array, valid: Array, dtype: jnp.dtype, power: int = 1
) -> tuple[Array, Array]:
    """`(O / p^power, active)` with 0 wherever `O == 0` or the cell is masked.

    The double `where` keeps the value AND the gradient finite for cells that do not
    contribute (a zero propensity there would give `0 * inf = NaN` otherwise).
    """
    active = valid & (jnp.asarray(observed) != 0)
    propensities = propensities.astype(dtype)
    safe = jnp.where(active, propensities, jnp.ones_like(propensities))
    weights = jnp.where(active, 1.0 / safe**power, jnp.zeros_like(safe))
    return weights, active


def squared_error(predictions: ArrayLike, ratings: ArrayLike) -> Array:
    """Pointwise squared error `(prediction - rating)^2`, shaped like the broadcast inputs."""
    predictions = jnp.asarray(predictions)
    dtype = _float_dtype(predictions, ratings)
    return jnp.square(predictions.astype(dtype) - jnp.asarray(ratings, dtype))


def binary_cross_entropy_error(logits: ArrayLike, labels: ArrayLike) -> Array:
    """Pointwise logistic loss `-y log sigmoid(x) - (1 - y) log sigmoid(-x)` on logits.

    Stable for logits of any magnitude (through `log_sigmoid`, via optax). Labels in `[0, 1]`.
    """
    logits = jnp.asarray(logits)
    dtype = _float_dtype(logits, labels)
    return optax.sigmoid_binary_cross_entropy(logits.astype(dtype), jnp.asarray(labels, dtype))


def naive_loss(errors: ArrayLike, observed: ArrayLike, *, where: ArrayLike | None = None) -> Array:
    """Mean error over the observed cells, `sum O e / sum O` (biased under MNAR exposure).

    Args:
        errors: pointwise errors `e`, `[...]`.
        observed: 0/1 or bool `O`, broadcastable to `errors`.
        where: bool mask of valid cells; None keeps all.

    Returns:
        A scalar; 0 when no valid cell is observed.
    """
    errors, observed = _cells(errors, observed)
    valid = _valid(errors.shape, where) & (observed != 0)
    return reduce_losses(errors, where=valid, normalize="count")


def ips_loss(
    errors: ArrayLike,
    observed: ArrayLike,
    propensities: ArrayLike,
    *,
    where: ArrayLike | None = None,
) -> Array:
    """Inverse propensity score estimate `(1/N) sum O e / p` (Horvitz–Thompson; unbiased).

    Args:
        errors: pointwise errors `e`, `[...]` (finite; unobserved cells' values are ignored).
        observed: 0/1 or bool `O`, broadcastable to `errors`.
        propensities: `P(O = 1)` of each cell, already clipped by the caller.
        where: bool mask of the population's cells; `N` is their number. None keeps all.

    Returns:
        A scalar; 0 when everything is masked.
    """
    errors, observed, propensities = _cells(errors, observed, propensities)
    valid = _valid(errors.shape, where)
    weights, active = _inverse_propensity_weights(observed, propensities, valid, errors.dtype)
    errors = jnp.where(active, errors, jnp.zeros_like(errors))
    return reduce_losses(errors, weights=weights, where=valid, normalize="count")


def snips_loss(
    errors: ArrayLike,
    observed: ArrayLike,
    propensities: ArrayLike,
    *,
    where: ArrayLike | None = None,
) -> Array:
    """Self-normalised IPS, `sum (O / p) e / sum O / p` (Swaminathan & Joachims 2015).

    Biased for a finite sample but consistent, and usually of much smaller variance than IPS.
    Arguments as `ips_loss`. Returns a scalar; 0 when no valid cell is observed.
    """
    errors, observed, propensities = _cells(errors, observed, propensities)
    valid = _valid(errors.shape, where)
    weights, active = _inverse_propensity_weights(observed, propensities, valid, errors.dtype)
    errors = jnp.where(active, errors, jnp.zeros_like(errors))
    return reduce_losses(errors, weights=weights, where=active, normalize="weights")


def dr_loss(
    errors: ArrayLike,
    imputed_errors: ArrayLike,
    observed: ArrayLike,
    propensities: ArrayLike,
    *,
    where: ArrayLike | None = None,
) -> Array:
    """Doubly robust estimate `(1/N) sum [e_hat + O (e - e_hat) / p]` (Wang et al. 2019).

    Unbiased when the propensities are correct (whatever `e_hat`) or when the imputed errors
    equal `E[e]` cell by cell (whatever `p`).

    Args:
        errors: pointwise errors `e`, `[...]` (finite; unobserved cells' values are ignored).
        imputed_errors: imputed errors `e_hat`, broadcastable to `errors`; used in every valid
            cell, observed or not.
        observed: 0/1 or bool `O`.
        propensities: `P(O = 1)` of each cell, already clipped by the caller.
        where: bool mask of the population's cells; `N` is their number. None keeps all.

    Returns:
        A scalar; 0 when everything is masked.
    """
    every_cell, per_observed = dr_terms(
        errors, imputed_errors, observed, propensities, where=where
    )
    valid = _valid(every_cell.shape, where)
    return reduce_losses(every_cell + per_observed, where=valid, normalize="count")


def dr_terms(
    errors: ArrayLike,
    imputed_errors: ArrayLike,
    observed: ArrayLike,
    propensities: ArrayLike,
    *,
    where: ArrayLike | None = None,
) -> tuple[Array, Array]:
    """The doubly robust per-cell loss split as `a + b`: `a = e_hat`, paid by every cell, and
    `b = O (e - e_hat) / p`, nonzero only on observed valid cells.

    `dr_loss` is the mean of `a + b` over the valid cells; a training step estimates the two
    sums from different samples (`all_cells_estimate`). Arguments as `dr_loss`.

    Returns:
        `(a, b)`, both shaped like the broadcast inputs.
    """
    errors, imputed_errors, observed, propensities = _cells(
        errors, imputed_errors, observed, propensities
    )
    imputed_errors = imputed_errors.astype(errors.dtype)
    valid = _valid(errors.shape, where)
    weights, active = _inverse_propensity_weights(observed, propensities, valid, errors.dtype)
    residuals = jnp.where(active, errors - imputed_errors, jnp.zeros_like(errors))
    return imputed_errors, weights * residuals


def targeting_covariate(propensities: ArrayLike) -> Array:
    """TDR's clever covariate `h = 1 / p - 1` (Li et al. 2023): 0 where `p = 1`. Propensities
    in (0, 1], already clipped by the caller."""
    return 1.0 / jnp.asarray(propensities) - 1.0


def targeting_coefficient(
    errors: ArrayLike,
    imputed_errors: ArrayLike,
    observed: ArrayLike,
    propensities: ArrayLike,
    *,
    where: ArrayLike | None = None,
) -> Array:
    """TDR's `eta = sum_obs (e - e_hat) h / sum_obs h^2`, `h = 1 / p - 1` (Li et al. 2023): the
    least-squares fluctuation of the imputed errors along `h` fitted to the residuals of the
    observed valid cells. 0 when no such cell has `p < 1`. Differentiable in `errors` and
    `imputed_errors` (a training step differentiates through it). Arguments as `dr_loss`.
    """
    errors, imputed_errors, observed, propensities = _cells(
        errors, imputed_errors, observed, propensities
    )
    valid = _valid(errors.shape, where)
    active = valid & (jnp.asarray(observed) != 0)
    safe = jnp.where(active, propensities.astype(errors.dtype), 1.0)
    covariate = jnp.where(active, targeting_covariate(safe), 0.0)
    residuals = jnp.where(active, errors - imputed_errors.astype(errors.dtype), 0.0)
    denominator = jnp.sum(jnp.square(covariate))
    positive = denominator > 0
    return jnp.where(positive, jnp.sum(residuals * covariate)
                     / jnp.where(positive, denominator, 1.0), 0.0)


def tdr_loss(
    errors: ArrayLike,
    imputed_errors: ArrayLike,
    observed: ArrayLike,
    propensities: ArrayLike,
    *,
    where: ArrayLike | None = None,
) -> Array:
    """Targeted doubly robust estimate (Li et al. 2023): `dr_loss` with the imputed errors
    `e_hat + eta h` of every valid cell, `eta = targeting_coefficient(...)`, `h = 1 / p - 1`.

    Unlike `dr_loss` it reads the propensity of every valid cell, observed or not (the
    covariate of the unobserved ones moves their imputed errors): those must be in (0, 1].
    Arguments as `dr_loss`.

    Returns:
        A scalar; 0 when everything is masked.
    """
    errors, imputed_errors, observed, propensities = _cells(
        errors, imputed_errors, observed, propensities
    )
    valid = _valid(errors.shape, where)
    eta = targeting_coefficient(errors, imputed_errors, observed, propensities, where=valid)
    covariate = targeting_covariate(jnp.where(valid, propensities.astype(errors.dtype), 1.0))
    targeted = imputed_errors.astype(errors.dtype) + eta * covariate
    return dr_loss(errors, targeted, observed, propensities, where=valid)


def all_cells_estimate(
    cell_terms: ArrayLike,
    observed_terms: ArrayLike,
    *,
    observed_share: ArrayLike,
    where: ArrayLike | None = None,
) -> Array:
    """Minibatch estimate of `(1/N) sum_all a + (1/N) sum_obs b` (the DR family, rel_mf).

    With `cell_terms` the `a` of cells drawn uniformly from all `N` cells and `observed_terms`
    the `b` of a batch drawn uniformly from the `n_obs` observed rows (padding masked by
    `where`), `mean(a) + (n_obs / N) mean_where(b)` is unbiased for the all-cells loss, and
    its gradient for the gradient: the `[U, I]` matrix is never formed and shapes stay static.

    Args:
        cell_terms: `[m]` per-cell terms `a` of the uniform cells.
        observed_terms: `[b]` per-row terms `b` of the observed batch.
        observed_share: `n_obs / N` (may be traced).
        where: `[b]` bool, the batch's real rows.

    Returns:
        A scalar.
    """
    cell_terms = jnp.asarray(cell_terms)
    observed_terms = jnp.asarray(observed_terms)
    valid = _valid(observed_terms.shape, where)
    return jnp.mean(cell_terms) + observed_share * reduce_losses(
        observed_terms, where=valid, normalize="count"
    )


def imputation_weight(
    method: str, propensities: ArrayLike, dr_mse_lambda: ArrayLike = 0.5
) -> Array:
    """The weight of an observed cell's `(e - e_hat)^2` in `method`'s imputation objective.

    `dr_jl` (and `d_dr_jl` and `tdr_jl`, whose imputation is DR-JL's: Ha et al. 2024 and Li
    et al. 2023 leave it as the base method's): `1 / p`; `mrdr`: `(1 - p) / p^2` (the IPS
    estimate of DR's variance term); `dr_mse`: `lambda (1 - p)^2 / p^3 + (1 - lambda) (1 - p)
    / p^2` (DR's squared bias and variance terms; Dai et al., KDD 2022). Propensities must be
    positive (mask the others).
    """
    p = jnp.asarray(propensities)
    if method in ("dr_jl", "d_dr_jl", "tdr_jl"):
        return 1.0 / p
    variance = (1.0 - p) / jnp.square(p)
    if method == "mrdr":
        return variance
    if method == "dr_mse":
        bias = jnp.square(1.0 - p) / (p * jnp.square(p))
        return dr_mse_lambda * bias + (1.0 - dr_mse_lambda) * variance
    raise ConfigError(f"key causal.method: {method!r} has no imputation model")


# The functions `f` of the dynamic estimators (Ha et al. 2024, Table 1).
DYNAMIC_FUNCTIONS = ("log", "sin", "tanh", "identity")


def _dynamic_f(p: Array, function: str) -> Array:
    if function == "log":
        return jnp.log1p(p) / jnp.log(2.0)
    if function == "sin":
        return jnp.sin(p) / jnp.sin(1.0)
    if function == "tanh":
        return jnp.tanh(p) / jnp.tanh(1.0)
    if function == "identity":
        return p
    raise ConfigError(
        f"key causal.dynamic_function: expected one of {', '.join(DYNAMIC_FUNCTIONS)}, "
        f"got {function!r}"
    )


def dynamic_exponent(propensities: ArrayLike, ratio: ArrayLike = 0.1,
                     function: str = "log") -> Array:
    """Per-cell `alpha(p) = min(max(ln(2 r (1 - p)) / ln f(p), 0), 1)` with `r = w2 / w1`
    (Ha et al. 2024, Eq. (5)); 1 where `f(p) = 1` (there `f^alpha = 1` whatever `alpha`).
    Propensities in (0, 1]; `ratio` may be traced."""
    p = jnp.asarray(propensities)
    log_f = jnp.log(_dynamic_f(p, function))
    numerator = jnp.log(jnp.maximum(2.0 * ratio * (1.0 - p), jnp.finfo(p.dtype).tiny))
    safe = jnp.where(log_f < 0, log_f, -1.0)
    return jnp.where(log_f < 0, jnp.clip(numerator / safe, 0.0, 1.0), 1.0)


def dynamic_propensities(propensities: ArrayLike, ratio: ArrayLike = 0.1,
                         function: str = "log") -> Array:
    """`f(p)^alpha(p)`, the denominators of D-IPS and D-DR (Ha et al. 2024, Eq. (2) with the
    exponent of Eq. (5)): the propensities to hand `ips_loss` / `dr_terms` in place of `p`.
    At least `p` cell by cell when `f(p) >= p` (every `f` but identity), so the weights are
    never larger than IPS's. Propensities in (0, 1], already clipped by the caller."""
    p = jnp.asarray(propensities)
    return _dynamic_f(p, function) ** dynamic_exponent(p, ratio, function)


def dynamic_bias_weights(propensities: ArrayLike, ratio: ArrayLike = 0.1,
                         function: str = "log") -> Array:
    """`1 - p / f(p)^alpha(p)` per cell: with the true propensities, D-DR's expectation is the
    truth minus the mean over all cells of this factor times `e - e_hat` (D-IPS's: times `e`;
    Ha et al. 2024, Lemma D.1, which states its absolute value)."""
    p = jnp.asarray(propensities)
    return 1.0 - p / dynamic_propensities(p, ratio, function)


def dr_jl_imputation_loss(
    errors: ArrayLike,
    imputed_errors: ArrayLike,
    observed: ArrayLike,
    propensities: ArrayLike,
    *,
    where: ArrayLike | None = None,
    normalize: Normalize = "count",
) -> Array:
    """DR-JL imputation objective `(1/N) sum O (e - e_hat)^2 / p` (Wang et al. 2019).

    With `normalize="count"` (default) this is the IPS estimate of the mean squared
    imputation error over all `N` valid cells; `normalize="weights"` divides by `sum O / p`
    instead (its self-normalised form). Same minimiser either way within one batch.

    Args:
        errors: the prediction model's errors `e` (stop their gradient to train only the
            imputation model).
        imputed_errors: the imputation model's `e_hat`.
        observed: 0/1 or bool `O`.
        propensities: `P(O = 1)`, already clipped by the caller.
        where: bool mask of valid cells; None keeps all.
        normalize: "count" or "weights", as `reduce_losses`.

    Returns:
        A scalar; 0 when everything is masked.
    """
    return _weighted_imputation_loss(
        errors, imputed_errors, observed, propensities, where, normalize, "dr_jl", 0.0
    )


def mrdr_imputation_loss(
    errors: ArrayLike,
    imputed_errors: ArrayLike,
    observed: ArrayLike,
    propensities: ArrayLike,
    *,
    where: ArrayLike | None = None,
    normalize: Normalize = "count",
) -> Array:
    """MRDR imputation objective `(1/N) sum O (1 - p) / p^2 (e - e_hat)^2` (Guo et al. 2021).

    The weight `(1 - p) / p^2` makes the objective an estimate of the DR estimator's variance
    term, so the imputation is fitted where it matters for DR (low-propensity cells). Arguments
    and normalisation as `dr_jl_imputation_loss`.
    """
    return _weighted_imputation_loss(
        errors, imputed_errors, observed, propensities, where, normalize, "mrdr", 0.0
    )


def dr_mse_imputation_loss(
    errors: ArrayLike,
    imputed_errors: ArrayLike,
    observed: ArrayLike,
    propensities: ArrayLike,
    *,
    dr_mse_lambda: float = 0.5,
    where: ArrayLike | None = None,
    normalize: Normalize = "count",
) -> Array:
    """DR-MSE imputation objective (Dai et al., KDD 2022): `(1/N) sum O w (e - e_hat)^2` with
    `w = lambda (1 - p)^2 / p^3 + (1 - lambda) (1 - p) / p^2`, an estimate of the DR
    estimator's squared bias (`lambda = 1`, DR-BIAS) and variance (`lambda = 0`, MRDR).
    Arguments and normalisation as `dr_jl_imputation_loss`."""
    return _weighted_imputation_loss(
        errors, imputed_errors, observed, propensities, where, normalize, "dr_mse",
        dr_mse_lambda,
    )


def imputation_loss(
    method: str,
    errors: ArrayLike,
    imputed_errors: ArrayLike,
    observed: ArrayLike,
    propensities: ArrayLike,
    *,
    dr_mse_lambda: ArrayLike = 0.5,
    where: ArrayLike | None = None,
    normalize: Normalize = "count",
) -> Array:
    """The imputation objective of `method` (`dr_jl`, `mrdr`, `dr_mse`):
    `(1/N) sum O w(p) (e - e_hat)^2` with `w = imputation_weight(method, p, dr_mse_lambda)`.

    The three named losses above are this function; `dr_mse_lambda` may be traced.
    Arguments and normalisation as `dr_jl_imputation_loss`.
    """
    return _weighted_imputation_loss(
        errors, imputed_errors, observed, propensities, where, normalize, method, dr_mse_lambda
    )


def _weighted_imputation_loss(
    errors, imputed_errors, observed, propensities, where, normalize, method, dr_mse_lambda
) -> Array:
    errors, imputed_errors, observed, propensities = _cells(
        errors, imputed_errors, observed, propensities
    )
    imputed_errors = imputed_errors.astype(errors.dtype)
    valid = _valid(errors.shape, where)
    active = valid & (jnp.asarray(observed) != 0)
    # Inactive cells get p = 1 before the division, so value and gradient stay finite.
    safe = jnp.where(active, propensities.astype(errors.dtype), 1.0)
    weights = jnp.where(active, imputation_weight(method, safe, dr_mse_lambda), 0.0)
    residuals = jnp.where(active, errors - imputed_errors, jnp.zeros_like(errors))
    return reduce_losses(jnp.square(residuals), weights=weights, where=valid, normalize=normalize)


def rel_mf_loss(
    logits: ArrayLike,
    clicks: ArrayLike,
    propensities: ArrayLike,
    *,
    where: ArrayLike | None = None,
) -> Array:
    """Unbiased pointwise loss for implicit feedback (Saito et al., WSDM 2020), over cells:

        (1/N) sum [ -(Y / theta) log sigmoid(x) - (1 - Y / theta) log sigmoid(-x) ]

    with clicks `Y` and exposure propensities `theta` (clipped by the caller). Unbiased for
    the loss on true relevance; unbounded below where `Y / theta > 1` (clipping, weight decay
    and early stopping keep training in range). Cells without a click ignore `theta`.
    """
    logits, clicks, propensities = _cells(logits, clicks, propensities)
    valid = _valid(logits.shape, where)
    weights, _ = _inverse_propensity_weights(clicks, propensities, valid, logits.dtype)
    every_cell, per_relevance = rel_mf_terms(logits)
    relevance = weights * clicks.astype(logits.dtype)
    return reduce_losses(every_cell + relevance * per_relevance, where=valid, normalize="count")


def rel_mf_terms(logits: ArrayLike) -> tuple[Array, Array]:
    """rel_mf's per-cell loss as `a + (Y / theta) b`: `(a, b) = (-log(1 - s), log(1 - s) -
    log s)` with `s = sigmoid(logits)`; `a` is paid by every cell, `b` per unit of estimated
    relevance (`causal.training` estimates the two sums from different samples)."""
    logits = jnp.asarray(logits)
    return -jax.nn.log_sigmoid(-logits), jax.nn.log_sigmoid(-logits) - jax.nn.log_sigmoid(logits)


Estimator = Callable[..., Array]

# Estimators of the full-information loss, by the name `causal.method` uses. "dr" takes the
# imputed errors as its second positional argument; the others take
# `(errors, observed[, propensities])`.
ESTIMATORS: dict[str, Estimator] = {
    "naive": naive_loss,
    "ips": ips_loss,
    "snips": snips_loss,
    "dr": dr_loss,
}


def get_estimator(name: str) -> Estimator:
    """The estimator registered under `name`.

    Raises:
        ConfigError: `name` is not registered; the message lists the valid names and the
            closest one.
    """
    if name in ESTIMATORS:
        return ESTIMATORS[name]
    valid = ", ".join(sorted(ESTIMATORS))
    message = f"causal.method: unknown estimator {name!r}; expected one of {valid}"
    close = difflib.get_close_matches(str(name), list(ESTIMATORS), n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    raise ConfigError(message)
