r"""Off-policy evaluation: the value of a target policy from the logged feedback of another.

A logging policy `pi_b` chose action `a_n` in context `x_n` and observed reward `r_n`, for
rounds `n = 1..N`. The value of a target policy `pi_e` is its mean reward per round,
`V(pi_e) = E_x sum_a pi_e(a|x) mu(x, a)` with `mu(x, a) = E[r | x, a]`. Every estimator below is
a mean over rounds of a per-round term `t_n`, with importance weights
`w_n = pi_e(a_n|x_n) / pi_b(a_n|x_n)` and a reward model `q_hat(x, a)` supplied by the caller as
`q_hat_logged_n = q_hat(x_n, a_n)` and `q_hat_target_n = sum_a pi_e(a|x_n) q_hat(x_n, a)`::

    ips:        t = w r                                       (Horvitz & Thompson 1952)
    snips:      V = sum w r / sum w                           (Swaminathan & Joachims, NeurIPS 2015)
    dm:         t = q_hat_target                              (direct method)
    dr:         t = q_hat_target + w (r - q_hat_logged)       (Dudik, Langford & Li, ICML 2011)
    sndr:       t = q_hat_target + (w / mean w) (r - q_hat_logged)
    switch_dr:  t = q_hat_target + w 1[w <= tau] (r - q_hat_logged)
                (Wang, Agarwal & Dudik, "Optimal and Adaptive Off-policy Evaluation in
                Contextual Bandits", ICML 2017; in the form of Open Bandit Pipeline's SwitchDR)
    dros:       t = q_hat_target + w' (r - q_hat_logged),  w' = lambda w / (w^2 + lambda)
                (Su, Dimakopoulou, Krishnamurthy & Dudik, "Doubly Robust Off-policy Evaluation
                with Shrinkage", ICML 2020: optimistic shrinkage)

Unbiasedness (for the expectation over logged data of `N` rounds):

- `ips` is unbiased when `pi_b(a|x) > 0` wherever `pi_e(a|x) > 0` (common support) and the
  logging probabilities are the true ones.
- `snips` is consistent under the same condition, with an `O(1/N)` bias; it is invariant to
  adding a constant to the rewards and its value stays inside the range of the rewards.
- `dm` is unbiased when the reward model is correct, `q_hat = mu`; it needs no propensities.
- `dr` is unbiased when EITHER the logging probabilities are correct (with common support) OR
  `q_hat = mu` (double robustness); with `q_hat = mu` and deterministic rewards every
  correction term is 0 and `dr` equals `dm`.
- `sndr` is consistent when the logging probabilities are correct (`O(1/N)` bias), and unbiased
  when `q_hat = mu`.
- `switch_dr` and `dros` are unbiased when `q_hat = mu`; otherwise they trade bias for variance.
  `switch_dr` with `tau = inf` is `dr` and with `tau = 0` is `dm`; `dros` with
  `lambda -> inf` is `dr` and with `lambda = 0` is `dm`.
- Clipping the weights at `M` (`clip=M`) biases every weighting estimator towards 0 (towards
  the reward model for the DR family) unless no weight exceeds `M`.

Slates of `K` slots (rewards `r_{n,k}` at each slot of the logged slate; Li, Kim & Zitouni,
"Offline Evaluation of Ranking Policies with Click Models", KDD 2018)::

    iips:    t = sum_k r_k pi_e(a_k at k) / pi_b(a_k at k)
             (the item-position model; Open Bandit Pipeline's SlateIndependentIPS)
    pbm_ips: t = sum_k r_k (sum_j e_j pi_e(a_k at j)) / (sum_j e_j pi_b(a_k at j))
             (the position-based model with examination probabilities e_j)

`iips` is unbiased when the expected reward at slot `k` depends only on the item shown there
and on `k` (the item-position model) and `pi_b(a at k) > 0` wherever `pi_e(a at k) > 0`.
`pbm_ips` is unbiased when rewards follow the position-based model,
`E[r_k] = e_k attraction(x, a_k)`, every item appears at most once in a slate, and
`sum_j e_j pi_b(a at j) > 0` wherever `sum_j e_j pi_e(a at j) > 0`; it needs less overlap than
`iips` (an item may move to another slot). With `K = 1` both equal `ips`.

Conventions shared by every estimator:

- Inputs are arrays of `n` rounds (`[n]`; `[n, K]` or `[n, K, K]` for slates). `where` (bool,
  `[n]`) marks the real rounds; rows with False are padding and are excluded from every sum,
  mean, count and effective sample size. Padding rows may hold any numbers (a 0 logging
  probability included): they never turn into NaN.
- Logging probabilities MUST be positive on the real rows (and marginals/examination-weighted
  marginals positive for the logged slot). Nothing is checked under `jit`: call
  `check_ope_inputs` on the host first; it raises `PropensityError` naming the argument and
  the first bad row.
- Weights are clipped in one place, THE clip `causal.clip.clip_weights` (re-exported here),
  which also reports how many were clipped and the Kish effective sample size in a
  `ClipReport`. Every weighting estimator takes `clip` (the largest weight kept; None or 0
  keeps all) and calls it; `weight_reports` gives a run the reports of its estimators.
- Each returns an `Estimate(value, stderr, n_eff)`: `value` the mean of the per-round terms,
  `stderr` their sample standard deviation (`ddof=1`) over `sqrt(n)` (for the self-normalised
  estimators, of the delta-method linearised terms), `n_eff` the Kish effective sample size
  `(sum w)^2 / sum w^2` of the weights the estimator multiplies rewards by (`n` for `dm`).
  With no real rows the value is NaN; with fewer than 2, the stderr is NaN.

All estimators are pure `jax.numpy` functions: jit-able (the scalars `clip`, `threshold`,
`shrinkage` may be traced, so `jax.vmap` sweeps them), vmap-able over datasets and keys.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax.causal.clip import ClipReport, clip_weights
from causalrec_jax.causal.propensity import PropensityError

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

ESTIMATORS = ("ips", "snips", "dm", "dr", "sndr", "switch_dr", "dros", "pbm_ips", "iips")


class Estimate(NamedTuple):
    """An off-policy estimate of a policy's value.

    Attributes:
        value: scalar estimate of the policy value (mean reward per round).
        stderr: scalar standard error: sample std of the per-round terms / sqrt(n) (for the
            self-normalised estimators, of the delta-method linearised terms).
        n_eff: scalar Kish effective sample size `(sum w)^2 / sum w^2` of the importance
            weights used (`n` for `dm`; in rounds, so `n` when all weights are equal).
    """

    value: Array
    stderr: Array
    n_eff: Array


# The one report of THE clip (`causal.clip`); the old name is kept for a transition.
WeightReport = ClipReport


# --- helpers --------------------------------------------------------------------------------


def _float_dtype(*arrays: ArrayLike) -> jnp.dtype:
    dtype = jnp.result_type(*(jnp.asarray(array) for array in arrays))
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def _rows(n: int, where: ArrayLike | None) -> Array:
    """The `[n]` boolean mask of real rows."""
    if where is None:
        return jnp.ones((n,), bool)
    return jnp.broadcast_to(jnp.asarray(where, bool), (n,))


def _expand(mask: Array, ndim: int) -> Array:
    """A `[n]` mask reshaped to broadcast against an array of `ndim` dimensions."""
    return mask.reshape(mask.shape + (1,) * (ndim - 1))


def _kish(weights: Array, valid: Array) -> Array:
    """`(sum w)^2 / sum w^2` over the valid entries; 0 when every valid weight is 0."""
    weights = jnp.where(valid, weights, 0.0)
    total = jnp.sum(weights)
    squares = jnp.sum(weights**2)
    positive = squares > 0
    return jnp.where(positive, total**2 / jnp.where(positive, squares, 1.0), 0.0)


def _mean_and_stderr(terms: Array, mask: Array) -> tuple[Array, Array, Array]:
    """Masked mean of `[n]` terms, its standard error (ddof=1) and the count of real rows."""
    count = jnp.sum(mask)
    countf = count.astype(terms.dtype)
    terms = jnp.where(mask, terms, 0.0)
    mean = jnp.where(count > 0, jnp.sum(terms) / jnp.maximum(countf, 1.0), jnp.nan)
    centred = jnp.where(mask, terms - jnp.where(count > 0, mean, 0.0), 0.0)
    variance = jnp.sum(centred**2) / jnp.maximum(countf - 1.0, 1.0)
    stderr = jnp.where(count > 1, jnp.sqrt(variance / jnp.maximum(countf, 1.0)), jnp.nan)
    return mean, stderr, countf


def _importance_weights(
    target_probs: ArrayLike, logging_probs: ArrayLike, mask: Array, dtype: jnp.dtype
) -> Array:
    """`target / logging` with 0 on padding rows (and a NaN-free gradient there)."""
    target = jnp.asarray(target_probs, dtype)
    logging = jnp.asarray(logging_probs, dtype)
    valid = _expand(mask, logging.ndim)
    safe = jnp.where(valid, logging, 1.0)
    return jnp.where(valid, target / safe, 0.0)


def _bandit_weights(
    target_probs: ArrayLike,
    logging_probs: ArrayLike,
    mask: Array,
    dtype: jnp.dtype,
    clip: ArrayLike | None,
) -> Array:
    weights = _importance_weights(target_probs, logging_probs, mask, dtype)
    weights, _ = clip_weights(weights, clip, where=mask)
    return weights


def importance_weights(
    target_probs: ArrayLike,
    logging_probs: ArrayLike,
    *,
    clip: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> tuple[Array, ClipReport]:
    """The clipped weights `min(pi_e / pi_b, clip)` the estimators use, and THE clip's report.

    Args:
        target_probs: `[n]` (slate-level) or `[n, K]` (slot-level) target probabilities.
        logging_probs: the same under the logging policy (> 0 on real rows).
        clip: largest weight kept; None or 0 keeps all.
        where: optional bool `[n]`; False rows are padding (weight 0, not reported).

    Returns:
        `(weights, report)`: weights shaped like the inputs and a `ClipReport`.
    """
    target = jnp.asarray(target_probs)
    dtype = _float_dtype(target, logging_probs)
    mask = _rows(target.shape[0], where)
    weights = _importance_weights(target, logging_probs, mask, dtype)
    return clip_weights(weights, clip, where=mask)


def position_based_marginals(marginals: ArrayLike, examination: ArrayLike) -> Array:
    """`[n, K]` examination-weighted marginals `sum_j e_j pi(a_k at j)` of `[n, K, K]` ones
    (the denominators and numerators of `pbm_ips`'s weights)."""
    examination = jnp.asarray(examination)
    marginals = jnp.asarray(marginals, _float_dtype(marginals, examination))
    return jnp.einsum("nkj,j->nk", marginals, examination.astype(marginals.dtype))


def _dr_inputs(
    rewards: ArrayLike,
    target_probs: ArrayLike,
    logging_probs: ArrayLike,
    logged_expected_rewards: ArrayLike,
    target_expected_rewards: ArrayLike,
    clip: ArrayLike | None,
    where: ArrayLike | None,
) -> tuple[Array, Array, Array, Array]:
    """`(weights, residuals, q_hat_target, mask)` for the doubly robust family, padding zeroed."""
    dtype = _float_dtype(rewards, logged_expected_rewards, target_expected_rewards)
    rewards = jnp.asarray(rewards, dtype)
    mask = _rows(rewards.shape[0], where)
    weights = _bandit_weights(target_probs, logging_probs, mask, dtype, clip)
    residuals = jnp.where(mask, rewards - jnp.asarray(logged_expected_rewards, dtype), 0.0)
    baseline = jnp.where(mask, jnp.asarray(target_expected_rewards, dtype), 0.0)
    return weights, residuals, baseline, mask


def _doubly_robust(
    weights: Array, residuals: Array, baseline: Array, mask: Array
) -> Estimate:
    terms = baseline + weights * residuals
    value, stderr, _ = _mean_and_stderr(terms, mask)
    return Estimate(value, stderr, _kish(weights, mask))


# --- single-action estimators ---------------------------------------------------------------


def ips(
    rewards: ArrayLike,
    target_probs: ArrayLike,
    logging_probs: ArrayLike,
    *,
    clip: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> Estimate:
    """Inverse propensity scoring: the mean of `w r`, `w = pi_e(a|x) / pi_b(a|x)`.

    Args:
        rewards: `[n]` logged rewards.
        target_probs: `[n]` probability of the logged action under the target policy.
        logging_probs: `[n]` probability of the logged action under the logging policy
            (must be > 0 on real rows).
        clip: largest weight kept (see `clip_weights`); None keeps all.
        where: optional bool `[n]`; False rows are padding.

    Returns:
        An `Estimate`; `n_eff` is the Kish ESS of the (clipped) weights.
    """
    dtype = _float_dtype(rewards)
    rewards = jnp.asarray(rewards, dtype)
    mask = _rows(rewards.shape[0], where)
    weights = _bandit_weights(target_probs, logging_probs, mask, dtype, clip)
    terms = weights * jnp.where(mask, rewards, 0.0)
    value, stderr, _ = _mean_and_stderr(terms, mask)
    return Estimate(value, stderr, _kish(weights, mask))


def snips(
    rewards: ArrayLike,
    target_probs: ArrayLike,
    logging_probs: ArrayLike,
    *,
    clip: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> Estimate:
    """Self-normalised IPS: `sum w r / sum w`.

    The stderr is that of the delta-method terms `V + (w / mean w) (r - V)`. With every weight
    0 the value is NaN.

    Args:
        rewards: `[n]` logged rewards.
        target_probs: `[n]` probability of the logged action under the target policy.
        logging_probs: `[n]` probability of the logged action under the logging policy (> 0).
        clip: largest weight kept (see `clip_weights`); None keeps all.
        where: optional bool `[n]`; False rows are padding.

    Returns:
        An `Estimate`; `n_eff` is the Kish ESS of the (clipped) weights.
    """
    dtype = _float_dtype(rewards)
    rewards = jnp.asarray(rewards, dtype)
    mask = _rows(rewards.shape[0], where)
    rewards = jnp.where(mask, rewards, 0.0)
    weights = _bandit_weights(target_probs, logging_probs, mask, dtype, clip)
    mean_weight, _, _ = _mean_and_stderr(weights, mask)
    normalised = weights / mean_weight
    value, _, _ = _mean_and_stderr(normalised * rewards, mask)
    linearised = value + normalised * (rewards - value)
    _, stderr, _ = _mean_and_stderr(linearised, mask)
    return Estimate(value, stderr, _kish(weights, mask))


def dm(target_expected_rewards: ArrayLike, *, where: ArrayLike | None = None) -> Estimate:
    """Direct method: the mean of the reward model's value of the target policy.

    Args:
        target_expected_rewards: `[n]` `sum_a pi_e(a|x_n) q_hat(x_n, a)`, computed by the caller
            from a reward model.
        where: optional bool `[n]`; False rows are padding.

    Returns:
        An `Estimate` with `n_eff = n` (the number of real rows).
    """
    dtype = _float_dtype(target_expected_rewards)
    baseline = jnp.asarray(target_expected_rewards, dtype)
    mask = _rows(baseline.shape[0], where)
    value, stderr, count = _mean_and_stderr(jnp.where(mask, baseline, 0.0), mask)
    return Estimate(value, stderr, count)


def dr(
    rewards: ArrayLike,
    target_probs: ArrayLike,
    logging_probs: ArrayLike,
    logged_expected_rewards: ArrayLike,
    target_expected_rewards: ArrayLike,
    *,
    clip: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> Estimate:
    """Doubly robust (Dudik et al. 2011): the mean of `q_hat_target + w (r - q_hat_logged)`.

    Args:
        rewards: `[n]` logged rewards.
        target_probs: `[n]` probability of the logged action under the target policy.
        logging_probs: `[n]` probability of the logged action under the logging policy (> 0).
        logged_expected_rewards: `[n]` reward model at the logged action, `q_hat(x_n, a_n)`.
        target_expected_rewards: `[n]` `sum_a pi_e(a|x_n) q_hat(x_n, a)`.
        clip: largest weight kept (see `clip_weights`); None keeps all.
        where: optional bool `[n]`; False rows are padding.

    Returns:
        An `Estimate`; `n_eff` is the Kish ESS of the (clipped) weights.
    """
    weights, residuals, baseline, mask = _dr_inputs(
        rewards, target_probs, logging_probs, logged_expected_rewards, target_expected_rewards,
        clip, where,
    )
    return _doubly_robust(weights, residuals, baseline, mask)


def sndr(
    rewards: ArrayLike,
    target_probs: ArrayLike,
    logging_probs: ArrayLike,
    logged_expected_rewards: ArrayLike,
    target_expected_rewards: ArrayLike,
    *,
    clip: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> Estimate:
    """Self-normalised DR: `dr` with the weights divided by their mean.

    The value is `mean(q_hat_target) + C` with `C = sum w (r - q_hat_logged) / sum w`; the
    stderr is that of the delta-method terms
    `q_hat_target + C + (w / mean w) (r - q_hat_logged - C)`.

    Args:
        rewards: `[n]` logged rewards.
        target_probs: `[n]` probability of the logged action under the target policy.
        logging_probs: `[n]` probability of the logged action under the logging policy (> 0).
        logged_expected_rewards: `[n]` reward model at the logged action, `q_hat(x_n, a_n)`.
        target_expected_rewards: `[n]` `sum_a pi_e(a|x_n) q_hat(x_n, a)`.
        clip: largest weight kept (see `clip_weights`); None keeps all.
        where: optional bool `[n]`; False rows are padding.

    Returns:
        An `Estimate`; `n_eff` is the Kish ESS of the (clipped) weights.
    """
    weights, residuals, baseline, mask = _dr_inputs(
        rewards, target_probs, logging_probs, logged_expected_rewards, target_expected_rewards,
        clip, where,
    )
    mean_weight, _, _ = _mean_and_stderr(weights, mask)
    normalised = weights / mean_weight
    value, _, _ = _mean_and_stderr(baseline + normalised * residuals, mask)
    correction, _, _ = _mean_and_stderr(normalised * residuals, mask)
    linearised = baseline + correction + normalised * (residuals - correction)
    _, stderr, _ = _mean_and_stderr(linearised, mask)
    return Estimate(value, stderr, _kish(weights, mask))


def switch_dr(
    rewards: ArrayLike,
    target_probs: ArrayLike,
    logging_probs: ArrayLike,
    logged_expected_rewards: ArrayLike,
    target_expected_rewards: ArrayLike,
    *,
    threshold: ArrayLike,
    clip: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> Estimate:
    """SWITCH-DR (Wang et al. 2017; Open Bandit Pipeline's form).

    The mean of `q_hat_target + w 1[w <= threshold] (r - q_hat_logged)`: rounds whose weight
    exceeds the threshold fall back to the reward model. `threshold = inf` is `dr`,
    `threshold = 0` is `dm`.

    Args:
        rewards: `[n]` logged rewards.
        target_probs: `[n]` probability of the logged action under the target policy.
        logging_probs: `[n]` probability of the logged action under the logging policy (> 0).
        logged_expected_rewards: `[n]` reward model at the logged action, `q_hat(x_n, a_n)`.
        target_expected_rewards: `[n]` `sum_a pi_e(a|x_n) q_hat(x_n, a)`.
        threshold: scalar switching threshold `tau >= 0` (may be traced).
        clip: largest weight kept (see `clip_weights`), applied before switching.
        where: optional bool `[n]`; False rows are padding.

    Returns:
        An `Estimate`; `n_eff` is the Kish ESS of the switched weights `w 1[w <= tau]`
        (0 when no round keeps its weight).
    """
    weights, residuals, baseline, mask = _dr_inputs(
        rewards, target_probs, logging_probs, logged_expected_rewards, target_expected_rewards,
        clip, where,
    )
    switched = jnp.where(weights <= jnp.asarray(threshold, weights.dtype), weights, 0.0)
    return _doubly_robust(switched, residuals, baseline, mask)


def dros(
    rewards: ArrayLike,
    target_probs: ArrayLike,
    logging_probs: ArrayLike,
    logged_expected_rewards: ArrayLike,
    target_expected_rewards: ArrayLike,
    *,
    shrinkage: ArrayLike,
    clip: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> Estimate:
    """DR with optimistic shrinkage (Su et al. 2020).

    The mean of `q_hat_target + w' (r - q_hat_logged)` with `w' = lambda w / (w^2 + lambda)`.
    `lambda -> inf` (inf included) is `dr`, `lambda = 0` is `dm`.

    Args:
        rewards: `[n]` logged rewards.
        target_probs: `[n]` probability of the logged action under the target policy.
        logging_probs: `[n]` probability of the logged action under the logging policy (> 0).
        logged_expected_rewards: `[n]` reward model at the logged action, `q_hat(x_n, a_n)`.
        target_expected_rewards: `[n]` `sum_a pi_e(a|x_n) q_hat(x_n, a)`.
        shrinkage: scalar `lambda >= 0` (may be traced).
        clip: largest weight kept (see `clip_weights`), applied before shrinking.
        where: optional bool `[n]`; False rows are padding.

    Returns:
        An `Estimate`; `n_eff` is the Kish ESS of the shrunk weights `w'` (0 when all are 0).
    """
    weights, residuals, baseline, mask = _dr_inputs(
        rewards, target_probs, logging_probs, logged_expected_rewards, target_expected_rewards,
        clip, where,
    )
    shrinkage = jnp.asarray(shrinkage, weights.dtype)
    positive = shrinkage > 0
    # w / (w^2 / lambda + 1) is lambda w / (w^2 + lambda) and stays finite at lambda = inf.
    shrunk = jnp.where(
        positive, weights / (weights**2 / jnp.where(positive, shrinkage, 1.0) + 1.0), 0.0
    )
    return _doubly_robust(shrunk, residuals, baseline, mask)


# --- slate estimators -----------------------------------------------------------------------


def _slate_estimate(
    rewards: Array, weights: Array, mask: Array, clip: ArrayLike | None
) -> Estimate:
    """Per-round terms `sum_k w_k r_k` from `[n, K]` slot weights; n_eff in rounds."""
    weights, report = clip_weights(weights, clip, where=mask)
    slots = weights.shape[1]
    terms = jnp.sum(weights * jnp.where(mask[:, None], rewards, 0.0), axis=1)
    value, stderr, _ = _mean_and_stderr(terms, mask)
    return Estimate(value, stderr, report.effective_sample_size / slots)


def iips(
    rewards: ArrayLike,
    target_marginals: ArrayLike,
    logging_marginals: ArrayLike,
    *,
    clip: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> Estimate:
    """Independent (item-position) IPS for slates (Li et al. 2018; OBP's SlateIndependentIPS).

    The per-round term is `sum_k r_k pi_e(a_k at k) / pi_b(a_k at k)`.

    Args:
        rewards: `[n, K]` reward at each slot of the logged slate.
        target_marginals: `[n, K]` probability, under the target policy, that the item logged at
            slot `k` is at slot `k`.
        logging_marginals: `[n, K]` the same under the logging policy (must be > 0).
        clip: largest slot weight kept (see `clip_weights`); None keeps all.
        where: optional bool `[n]`; False rows are padding.

    Returns:
        An `Estimate`; `n_eff` is the Kish ESS of all `n K` slot weights divided by `K`
        (so `n` when all are equal).
    """
    dtype = _float_dtype(rewards)
    rewards = jnp.asarray(rewards, dtype)
    mask = _rows(rewards.shape[0], where)
    weights = _importance_weights(target_marginals, logging_marginals, mask, dtype)
    return _slate_estimate(rewards, weights, mask, clip)


def pbm_ips(
    rewards: ArrayLike,
    target_marginals: ArrayLike,
    logging_marginals: ArrayLike,
    examination: ArrayLike,
    *,
    clip: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> Estimate:
    """Position-based-model IPS for slates (Li et al. 2018).

    The weight of slot `k` is `(sum_j e_j pi_e(a_k at j)) / (sum_j e_j pi_b(a_k at j))`, the
    ratio of the item's expected examination under the two policies; the per-round term is
    `sum_k w_k r_k`.

    Args:
        rewards: `[n, K]` reward at each slot of the logged slate.
        target_marginals: `[n, K, K]`; `[:, k, j]` is the probability that the item logged at
            slot `k` is shown at slot `j` under the target policy.
        logging_marginals: `[n, K, K]` the same under the logging policy (the
            examination-weighted sum over `j` must be > 0).
        examination: `[K]` examination probability of each slot.
        clip: largest slot weight kept (see `clip_weights`); None keeps all.
        where: optional bool `[n]`; False rows are padding.

    Returns:
        An `Estimate`; `n_eff` is the Kish ESS of all `n K` slot weights divided by `K`.
    """
    dtype = _float_dtype(rewards)
    rewards = jnp.asarray(rewards, dtype)
    mask = _rows(rewards.shape[0], where)
    examination = jnp.asarray(examination, dtype)
    target = position_based_marginals(jnp.asarray(target_marginals, dtype), examination)
    logging = position_based_marginals(jnp.asarray(logging_marginals, dtype), examination)
    weights = _importance_weights(target, logging, mask, dtype)
    return _slate_estimate(rewards, weights, mask, clip)


def relative_error(estimate: Estimate | ArrayLike, truth: ArrayLike) -> Array:
    """`|estimate - truth| / |truth|`; `estimate` is an `Estimate` or its value."""
    value = estimate.value if isinstance(estimate, Estimate) else jnp.asarray(estimate)
    truth = jnp.asarray(truth)
    return jnp.abs(value - truth) / jnp.abs(truth)


# --- host-side validation -------------------------------------------------------------------


def _first_bad_row(bad: np.ndarray) -> int | None:
    rows = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim > 1 else bad
    hits = np.flatnonzero(rows)
    return int(hits[0]) if hits.size else None


def _raise_if(bad: np.ndarray, values: np.ndarray, name: str, rule: str) -> None:
    row = _first_bad_row(bad)
    if row is not None:
        shown = values[row] if values.ndim == 1 else values[row].tolist()
        raise PropensityError(f"{name}: row {row} has {shown}; {rule}")


def check_ope_inputs(
    rewards: ArrayLike,
    target_probs: ArrayLike,
    logging_probs: ArrayLike,
    *,
    logged_expected_rewards: ArrayLike | None = None,
    target_expected_rewards: ArrayLike | None = None,
    examination: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> None:
    """Host-side check of an estimator's inputs; raises `PropensityError` on the first problem.

    Call it before the (unchecked, jit-able) estimators. It accepts the bandit inputs (`[n]`
    rewards and probabilities), the `iips` inputs (`[n, K]` rewards and marginals) and the
    `pbm_ips` inputs (`[n, K]` rewards, `[n, K, K]` marginals, `examination [K]`). Only real
    rows (`where` True) are checked for values; the message names the argument and the first
    bad row.

    Checks: shapes agree (probabilities shaped like the rewards, or `[n, K, K]` for the
    position-based model, which then needs `examination [K]`); rewards and reward-model values
    are finite; logging probabilities are in `(0, 1]` (for `[n, K, K]` marginals: in `[0, 1]`
    with a positive examination-weighted sum per slot); target probabilities are in `[0, 1]`.

    Args:
        rewards: `[n]` or `[n, K]`.
        target_probs: target probabilities or marginals, `[n]`, `[n, K]` or `[n, K, K]`.
        logging_probs: logging probabilities or marginals, shaped like `target_probs`.
        logged_expected_rewards: optional `[n]` reward model at the logged actions.
        target_expected_rewards: optional `[n]` reward model's value of the target policy.
        examination: `[K]` slot examination probabilities (position-based model only).
        where: optional bool `[n]`; False rows are padding and are not checked.

    Raises:
        PropensityError: naming the argument (and row) that is wrong.
    """
    rewards = np.asarray(rewards, dtype=float)
    target = np.asarray(target_probs, dtype=float)
    logging = np.asarray(logging_probs, dtype=float)
    if rewards.ndim not in (1, 2):
        raise PropensityError(f"rewards: expected shape [n] or [n, K], got {rewards.shape}")
    n = rewards.shape[0]
    if logging.shape != target.shape:
        raise PropensityError(
            f"logging_probs: shape {logging.shape} does not match target_probs {target.shape}"
        )
    position_based = target.ndim == rewards.ndim + 1
    expected = rewards.shape + ((rewards.shape[-1],) if position_based else ())
    if target.shape != expected or (position_based and rewards.ndim != 2):
        raise PropensityError(
            f"target_probs: shape {target.shape} does not match rewards {rewards.shape} "
            f"(expected {expected})"
        )
    valid = np.ones(n, bool) if where is None else np.asarray(where, bool)
    if valid.shape != (n,):
        raise PropensityError(f"where: expected shape ({n},), got {valid.shape}")
    for name, model in (
        ("logged_expected_rewards", logged_expected_rewards),
        ("target_expected_rewards", target_expected_rewards),
    ):
        if model is None:
            continue
        model = np.asarray(model, dtype=float)
        if model.shape != (n,):
            raise PropensityError(f"{name}: expected shape ({n},), got {model.shape}")
        _raise_if(valid & ~np.isfinite(model), model, name, "must be finite")

    def rows(bad: np.ndarray) -> np.ndarray:
        return bad & valid.reshape((n,) + (1,) * (bad.ndim - 1))

    _raise_if(rows(~np.isfinite(rewards)), rewards, "rewards", "rewards must be finite")
    _raise_if(
        rows(~((target >= 0) & (target <= 1))), target, "target_probs",
        "target probabilities must be in [0, 1]",
    )
    if position_based:
        if examination is None:
            raise PropensityError("examination: required with [n, K, K] marginals")
        exam = np.asarray(examination, dtype=float)
        if exam.shape != (target.shape[-1],):
            raise PropensityError(
                f"examination: expected shape ({target.shape[-1]},), got {exam.shape}"
            )
        if not np.all((exam >= 0) & (exam <= 1)):
            raise PropensityError(f"examination: must be in [0, 1], got {exam.tolist()}")
        _raise_if(
            rows(~((logging >= 0) & (logging <= 1))), logging, "logging_probs",
            "logging marginals must be in [0, 1]",
        )
        _raise_if(
            rows(~(logging @ exam > 0)), logging, "logging_probs",
            "each logged item needs a positive examination-weighted logging marginal",
        )
    else:
        _raise_if(
            rows(~((logging > 0) & (logging <= 1))), logging, "logging_probs",
            "logging probabilities must be in (0, 1] (importance weights divide by them)",
        )
