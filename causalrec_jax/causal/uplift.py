r"""Learning the causal effect (uplift) of recommending, as pure `jax.numpy` functions.

Setting. Each (user, item) cell has a treatment `Z` in {0, 1} (the item was recommended or
not), an outcome `Y` in {0, 1} (the user consumed it) and the logging policy's propensity
`P = P(Z = 1 | user, item)`. With potential outcomes `Y(1)`, `Y(0)` the causal effect of
recommending is

    tau_ui = E[Y_ui(1) - Y_ui(0)] = mu1_ui - mu0_ui.

Only one potential outcome of a cell is ever seen, so `tau` is learned from *transformed
outcomes*, labels whose expectation over the treatment draw is `tau` (assuming `Z` is
independent of the potential outcomes given the cell, and `0 < P < 1`):

    ips label:  tau_ips = Z Y / P - (1 - Z) Y / (1 - P)
    dr label:   tau_dr  = mu1_hat - mu0_hat + Z (Y - mu1_hat) / P - (1 - Z) (Y - mu0_hat) / (1 - P)

The first is the IPS estimator of the causal effect of Sato et al., "Unbiased Learning for the
Causal Effect of Recommendation", RecSys 2020 (their `tau_hat^IPS`; with capped propensities
`max(P, chi_1)` and `max(1 - P, chi_0)` it becomes their capped IPS estimator, biased but of
lower variance). The second is the augmented IPS ("doubly robust") transformed outcome:
unbiased when either the propensities or the outcome models `mu1_hat`, `mu0_hat` are right.

Losses built on them:

- `uplift_regression_loss`: squared error to a transformed label (pointwise learning of tau).
- `dlce_loss`: the pairwise DLCE objective of Sato et al. 2020 (see its docstring for the
  formula and derivation).
- `ulrmf_labels`: the label transformation of ULRMF / ULBPR in Sato et al., "Uplift-based
  Evaluation and Optimization of Recommenders", RecSys 2019: cells with `(Z, Y) = (1, 1)` or
  `(0, 0)` are positive, `(1, 0)` and `(0, 1)` negative. With `P(Z = 1) = 1/2` independent of
  the potential outcomes, `P(positive) = (mu1 + 1 - mu0) / 2 = (1 + tau) / 2`, so a model of the
  positive probability ranks cells by `tau`.

Propensity clipping (`clip`). Both `P` and `1 - P` are divided by, so the uplift functions clip
two-sidedly with THE clip, `causal.clip.clip_propensities(..., two_sided=True)` (jit-able, the
bound may be traced): `P` is moved into `[clip, 1 - clip]` (for `clip` in `[0, 1/2)`), i.e. the
treated term divides by `max(P, clip)` and the control term by `max(1 - P, clip)`, the
propensity capping of Sato et al. 2020 with `chi_1 = chi_0 = clip`. `None` (or 0) leaves the
propensities as they are. Clipping trades bias for variance: a clipped label is no longer
unbiased for the cells whose propensity was moved. A run clips once itself to get the
`ClipReport` it writes (`tasks.uplift`) and passes the clipped propensities with `clip=None`.

Logs of `T` steps per user. A run aggregates each (user, item) cell over the steps: `n1` steps
shown, `c1` of them consumed, `c0` consumed without being shown. The `*_from_counts` functions
give the mean over the steps of the per-step labels above (`ips_uplift_label` and
`dr_uplift_label` are their `T = 1` case, computed by the same code), and
`ips_weights_from_counts` the weights `dlce_pair_loss` takes.

`where` (bool, broadcastable to the cells) marks the cells that count: masked cells get label 0
and contribute 0 to every loss and gradient, whatever their (finite or not) propensity. Cells
whose denominator is never used (the control term of a treated cell, and vice versa) never turn
a propensity of 0 or 1 into NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from causalrec_jax.causal.clip import clip_propensities
from causalrec_jax.eval.causal_metrics import labelled_causal_dcg, labelled_causal_precision

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

SURROGATES: tuple[str, ...] = ("logistic", "hinge")


def _float_dtype(*arrays: ArrayLike) -> jnp.dtype:
    dtype = jnp.result_type(*arrays)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def _valid(shape: tuple[int, ...], where: ArrayLike | None) -> Array:
    if where is None:
        return jnp.ones(shape, bool)
    return jnp.broadcast_to(jnp.asarray(where, bool), shape)


def _bounded(
    propensities: ArrayLike, clip: ArrayLike | None, valid: Array, dtype: jnp.dtype
) -> Array:
    """`P` moved into `[clip, 1 - clip]` by THE clip (two-sided); 1/2 on masked cells."""
    propensities = jnp.asarray(propensities, dtype)
    bounded, _ = clip_propensities(propensities, clip, where=valid, two_sided=True)
    return bounded.astype(dtype)


def _inverse_propensity_terms(
    treated_numerators: ArrayLike,
    control_numerators: ArrayLike,
    steps: ArrayLike,
    propensities: Array,
    valid: Array,
    dtype: jnp.dtype,
) -> tuple[Array, Array]:
    """`(a / (T P), b / (T (1 - P)))` for already clipped `P`; 0 where the numerator is 0 or
    the cell is masked, with a finite value and gradient there (the double `where`), so a
    propensity of 0 or 1 in the unused arm never turns into NaN."""
    treated_numerators = jnp.asarray(treated_numerators, dtype)
    control_numerators = jnp.asarray(control_numerators, dtype)
    steps = jnp.asarray(steps, dtype)
    uses_treated = valid & (treated_numerators != 0)
    uses_control = valid & (control_numerators != 0)
    safe_treated = jnp.where(uses_treated, steps * propensities, 1.0)
    safe_control = jnp.where(uses_control, steps * (1.0 - propensities), 1.0)
    treated = jnp.where(uses_treated, treated_numerators / safe_treated, 0.0)
    control = jnp.where(uses_control, control_numerators / safe_control, 0.0)
    return treated.astype(dtype), control.astype(dtype)


def _treatment_weights(
    treatments: ArrayLike,
    propensities: ArrayLike,
    clip: float | None,
    valid: Array,
    dtype: jnp.dtype,
) -> tuple[Array, Array]:
    """`(Z / max(P, clip), (1 - Z) / max(1 - P, clip))`, 0 where a term does not apply."""
    treated = (jnp.asarray(treatments) != 0).astype(dtype)
    return _inverse_propensity_terms(
        treated, 1.0 - treated, 1.0, _bounded(propensities, clip, valid, dtype), valid, dtype
    )


def _check_clip(clip: float | None) -> None:
    # Only Python numbers are checked: a traced clip (a swept hyperparameter) passes through.
    if isinstance(clip, int | float) and not 0.0 <= float(clip) < 0.5:
        raise ValueError(f"clip must be in [0, 0.5) or None, got {clip}")


def ips_weights_from_counts(
    consumed_shown: ArrayLike,
    consumed_not_shown: ArrayLike,
    steps: ArrayLike,
    propensities: ArrayLike,
    *,
    clip: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> tuple[Array, Array]:
    """Time-aggregated IPS weights `(w1, w0)` of cells observed over `T` steps.

        w1 = c1 / (T P),    w0 = c0 / (T (1 - P))

    `c1` counts the steps the item was shown and consumed, `c0` the steps it was consumed
    without being shown. With `Z_t ~ Bernoulli(P)` at each step, `E[w1] = mean_t mu1_t` and
    `E[w0] = mean_t mu0_t`: `w1 - w0` (`ips_uplift_label_from_counts`) is the mean over the
    `T` steps of the per-step label of `ips_uplift_label` (which is the case `T = 1`), and
    `(w1, w0)` are the weights of `dlce_pair_loss`.

    Args:
        consumed_shown: `[...]` `c1`. consumed_not_shown: `[...]` `c0`.
        steps: `[...]` `T`, broadcastable (e.g. `[n_users, 1]`).
        propensities: `[...]` `P(shown)` per step (the logging policy's inclusion probability).
        clip: move `P` into `[clip, 1 - clip]` first (THE clip, two-sided); None for none.
        where: `[...]` bool, cells that count; masked cells get 0.

    Returns:
        `(w1, w0)`, each `[...]` float.
    """
    _check_clip(clip)
    shape = jnp.broadcast_shapes(jnp.shape(consumed_shown), jnp.shape(consumed_not_shown),
                                 jnp.shape(steps), jnp.shape(propensities))
    dtype = _float_dtype(consumed_shown, propensities)
    valid = _valid(shape, where)
    bounded = _bounded(jnp.broadcast_to(jnp.asarray(propensities), shape), clip, valid, dtype)
    return _inverse_propensity_terms(
        jnp.broadcast_to(jnp.asarray(consumed_shown), shape),
        jnp.broadcast_to(jnp.asarray(consumed_not_shown), shape),
        jnp.broadcast_to(jnp.asarray(steps), shape), bounded, valid, dtype,
    )


def ips_uplift_label_from_counts(
    consumed_shown: ArrayLike,
    consumed_not_shown: ArrayLike,
    steps: ArrayLike,
    propensities: ArrayLike,
    *,
    clip: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> Array:
    """The IPS label of cells observed over `T` steps: `c1 / (T P) - c0 / (T (1 - P))`.

    Unbiased for the mean over the steps of the per-step effect `tau_t = mu1_t - mu0_t`
    when `0 < P < 1` and `clip` is None (see `ips_weights_from_counts`).

    Args: as `ips_weights_from_counts`.

    Returns:
        `[...]` float labels; 0 on masked cells.
    """
    treated, control = ips_weights_from_counts(
        consumed_shown, consumed_not_shown, steps, propensities, clip=clip, where=where)
    return treated - control


def dr_uplift_label_from_counts(
    consumed_shown: ArrayLike,
    shown: ArrayLike,
    consumed_not_shown: ArrayLike,
    steps: ArrayLike,
    propensities: ArrayLike,
    treated_outcome_predictions: ArrayLike,
    control_outcome_predictions: ArrayLike,
    *,
    clip: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> Array:
    """The doubly robust label of cells observed over `T` steps (shown `n1` times):

        mu1_hat - mu0_hat + (c1 - n1 mu1_hat) / (T P) - (c0 - (T - n1) mu0_hat) / (T (1 - P))

    the mean over the steps of the per-step label of `dr_uplift_label` (the case `T = 1`).
    Unbiased for the mean per-step effect when the propensities are right (any outcome
    models) or the outcome models are.

    Args:
        consumed_shown: `[...]` `c1`. shown: `[...]` `n1`. consumed_not_shown: `[...]` `c0`.
        steps: `[...]` `T`, broadcastable. propensities: `[...]` `P(shown)` per step.
        treated_outcome_predictions: `[...]` `mu1_hat`. control_outcome_predictions: `mu0_hat`.
        clip: move `P` into `[clip, 1 - clip]` first (THE clip, two-sided); None for none.
        where: `[...]` bool, cells that count; masked cells get 0.

    Returns:
        `[...]` float labels.
    """
    _check_clip(clip)
    inputs = (consumed_shown, shown, consumed_not_shown, steps, propensities,
              treated_outcome_predictions, control_outcome_predictions)
    shape = jnp.broadcast_shapes(*(jnp.shape(x) for x in inputs))
    dtype = _float_dtype(consumed_shown, propensities, treated_outcome_predictions)
    c1, n1, c0, steps, propensities, mu1, mu0 = (
        jnp.broadcast_to(jnp.asarray(x), shape).astype(dtype) for x in inputs
    )
    valid = _valid(shape, where)
    treated, control = _inverse_propensity_terms(
        c1 - n1 * mu1, c0 - (steps - n1) * mu0, steps,
        _bounded(propensities, clip, valid, dtype), valid, dtype,
    )
    return jnp.where(valid, mu1 - mu0 + treated - control, 0.0)


def ips_uplift_label(
    treatments: ArrayLike,
    outcomes: ArrayLike,
    propensities: ArrayLike,
    *,
    clip: float | None = None,
    where: ArrayLike | None = None,
) -> Array:
    """The IPS transformed outcome `Z Y / P - (1 - Z) Y / (1 - P)` of each cell.

    Unbiased for `tau = mu1 - mu0` per cell when `Z ~ Bernoulli(P)` independently of the
    potential outcomes and `clip` is None: `E[Z Y / P] = mu1`, `E[(1 - Z) Y / (1 - P)] = mu0`.

    Args:
        treatments: `[...]` 0/1 or bool, 1 where the item was recommended.
        outcomes: `[...]` 0/1 (or any real outcome), broadcastable to `treatments`.
        propensities: `[...]` `P(Z = 1)` of the logging policy.
        clip: move `P` into `[clip, 1 - clip]` first (see the module docstring); None for none.
        where: `[...]` bool, cells that count; masked cells get 0.

    Returns:
        `[...]` float labels, the broadcast shape of the inputs.
    """
    treated = (jnp.asarray(treatments) != 0).astype(_float_dtype(outcomes, propensities))
    outcomes = jnp.asarray(outcomes)
    return ips_uplift_label_from_counts(
        treated * outcomes, (1.0 - treated) * outcomes, 1.0, propensities, clip=clip,
        where=where,
    )


def dr_uplift_label(
    treatments: ArrayLike,
    outcomes: ArrayLike,
    propensities: ArrayLike,
    treated_outcome_predictions: ArrayLike,
    control_outcome_predictions: ArrayLike,
    *,
    clip: float | None = None,
    where: ArrayLike | None = None,
) -> Array:
    """The doubly robust transformed outcome of each cell.

        mu1_hat - mu0_hat + Z (Y - mu1_hat) / P - (1 - Z) (Y - mu0_hat) / (1 - P)

    Unbiased for `tau` per cell when the propensities are right (any outcome models), or when
    the outcome models are right (`mu1_hat = E[Y(1)]`, `mu0_hat = E[Y(0)]`, any propensities in
    (0, 1)): the correction terms then have mean zero.

    Args:
        treatments: `[...]` 0/1 or bool.
        outcomes: `[...]` observed outcomes.
        propensities: `[...]` `P(Z = 1)`.
        treated_outcome_predictions: `[...]` `mu1_hat`, the predicted `E[Y(1)]`.
        control_outcome_predictions: `[...]` `mu0_hat`, the predicted `E[Y(0)]`.
        clip: move `P` into `[clip, 1 - clip]` first; None for none.
        where: `[...]` bool, cells that count; masked cells get 0.

    Returns:
        `[...]` float labels, the broadcast shape of the inputs.
    """
    treated = (jnp.asarray(treatments) != 0).astype(
        _float_dtype(outcomes, propensities, treated_outcome_predictions))
    outcomes = jnp.asarray(outcomes)
    return dr_uplift_label_from_counts(
        treated * outcomes, treated, (1.0 - treated) * outcomes, 1.0, propensities,
        treated_outcome_predictions, control_outcome_predictions, clip=clip, where=where,
    )


def uplift_regression_loss(
    predicted_uplift: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduce_fn: Callable[[Array], Array] | None = jnp.mean,
) -> Array:
    """Squared error of predicted uplift to a transformed label: pointwise learning of tau.

    For an unbiased label (`E[label] = tau`) drawn independently of the prediction `f`,
    `E[(f - label)^2] = (f - tau)^2 + Var(label)`: in expectation the loss is the squared error
    to the true, unobservable `tau` plus a constant that does not depend on `f`, so both have
    the same minimiser.

    Args:
        predicted_uplift: `[...]` model outputs `f_ui`.
        labels: `[...]` transformed outcomes (`ips_uplift_label`, `dr_uplift_label`).
        where: `[...]` bool, cells that count.
        reduce_fn: reduction of the per-cell losses (default mean over the `where` cells);
            None returns the per-cell losses with masked cells 0.

    Returns:
        Scalar (or `[...]` with `reduce_fn=None`). All cells masked gives 0 with zero gradients.
    """
    predicted_uplift = jnp.asarray(predicted_uplift)
    dtype = _float_dtype(predicted_uplift, labels)
    shape = jnp.broadcast_shapes(predicted_uplift.shape, jnp.shape(labels))
    valid = _valid(shape, where)
    error = predicted_uplift.astype(dtype) - jnp.asarray(labels, dtype)
    losses = jnp.where(valid, jnp.square(jnp.broadcast_to(error, shape)), 0.0)
    if reduce_fn is None:
        return losses
    if reduce_fn is jnp.mean:
        count = jnp.sum(valid)
        return jnp.sum(losses) / jnp.maximum(count, 1).astype(dtype)
    return reduce_fn(losses)


def _surrogate(name: str) -> Callable[[Array], Array]:
    # An upper bound of the step 1[x <= 0] (up to a constant factor), decreasing in x.
    if name == "logistic":
        return lambda x: jax.nn.softplus(-x)
    if name == "hinge":
        return lambda x: jnp.maximum(1.0 - x, 0.0)
    raise ValueError(f"unknown surrogate {name!r}; expected one of {', '.join(SURROGATES)}")


def dlce_loss(
    positive_scores: ArrayLike,
    negative_scores: ArrayLike,
    treatments_pos: ArrayLike,
    outcomes_pos: ArrayLike,
    propensities_pos: ArrayLike,
    treatments_neg: ArrayLike,
    outcomes_neg: ArrayLike,
    propensities_neg: ArrayLike,
    *,
    clip: float | None = None,
    where: ArrayLike | None = None,
    surrogate: str = "logistic",
    omega: float = 1.0,
) -> Array:
    r"""The DLCE pairwise objective (Sato et al. 2020) on pairs `(i, j)` of one user's items.

    Sato et al., "Unbiased Learning for the Causal Effect of Recommendation", RecSys 2020,
    learn to rank by `tau` by minimising the causal extension of the average rank: each item's
    rank weighted by its causal effect, `sum_i tau_i sum_j 1[s_j >= s_i]` (a high-`tau` item
    placed low costs much; a negative-`tau` item placed high is rewarded). Replacing `tau_i`
    by its capped IPS estimate and the step by a smooth upper bound gives, per pair:

        w1_i = Z_i Y_i / max(P_i, chi_1),      w0_i = (1 - Z_i) Y_i / max(1 - P_i, chi_0)
        loss_ij = w1_i l(s_i - s_j) + w0_i l(s_j - s_i)

    The second term comes from `-w0_i 1[s_j >= s_i] = w0_i 1[s_i > s_j] - w0_i`: dropping the
    constant turns the negative weight of a consumed-without-recommendation cell into a
    positive weight on the reversed order, so the loss stays bounded below (a consumed control
    item is pushed *down*). With the step function `l(x) = 1[x <= 0]` this is, in expectation
    over `Z`, the causal average rank up to a constant (unbiased); `l` here is the logistic
    `softplus(-omega x)` (DLCE's log-loss upper bound) or the hinge `max(0, 1 - omega x)`.

    This function scores both cells of a pair with their own labels (symmetrised):

        loss_ij = w1_i l(d) + w0_i l(-d) + w1_j l(-d) + w0_j l(d),   d = s_i - s_j

    When `(i, j)` is an ordered pair drawn uniformly, the `j` terms are the same estimator
    with roles swapped (twice the paper's loss in expectation). The paper's own sampling —
    `i` among the consumed cells (`Y_i = 1`, the only cells with non-zero weight), `j` a
    uniformly drawn item of the same user — is recovered by passing `outcomes_neg = 0`. For a
    pair, the expected logistic loss is minimised at `d = log((mu1_i + mu0_j) / (mu0_i +
    mu1_j))`, which is positive exactly when `tau_i > tau_j`: the minimiser ranks by `tau`.

    Source: the formula above is reconstructed from the paper's derivation (IPS estimate of
    the causal effect, capping with `chi_1`, `chi_0`, the sign flip of the control term and the
    upper-bound surrogates with the scale `omega`); the paper's equation numbers could not be
    checked from here and are therefore not cited.

    Args:
        positive_scores: `[...]` scores `s_i` of the first cell of each pair.
        negative_scores: `[...]` scores `s_j` of the second cell.
        treatments_pos: `[...]` `Z_i`. outcomes_pos: `[...]` `Y_i`. propensities_pos: `P_i`.
        treatments_neg: `[...]` `Z_j`. outcomes_neg: `[...]` `Y_j` (0 for the paper's form).
        propensities_neg: `[...]` `P_j`.
        clip: propensity capping, `chi_1 = chi_0 = clip` (P moved into `[clip, 1 - clip]`).
        where: `[...]` bool, pairs that count (padding False).
        surrogate: `"logistic"` or `"hinge"`.
        omega: scale of the score difference inside the surrogate (> 0).

    Returns:
        Scalar mean of `loss_ij` over the `where` pairs (0, with zero gradients, if none).
    """
    _check_clip(clip)
    _surrogate(surrogate)  # an unknown surrogate fails before any work
    positive_scores = jnp.asarray(positive_scores)
    inputs = (
        positive_scores,
        negative_scores,
        treatments_pos,
        outcomes_pos,
        propensities_pos,
        treatments_neg,
        outcomes_neg,
        propensities_neg,
    )
    shape = jnp.broadcast_shapes(*(jnp.shape(x) for x in inputs))
    dtype = _float_dtype(positive_scores, negative_scores)
    valid = _valid(shape, where)

    def weights(treatments, outcomes, propensities):
        treated, control = _treatment_weights(
            jnp.broadcast_to(jnp.asarray(treatments), shape),
            jnp.broadcast_to(jnp.asarray(propensities), shape),
            clip,
            valid,
            dtype,
        )
        outcomes = jnp.where(valid, jnp.broadcast_to(jnp.asarray(outcomes, dtype), shape), 0.0)
        return treated * outcomes, control * outcomes

    treated_pos, control_pos = weights(treatments_pos, outcomes_pos, propensities_pos)
    treated_neg, control_neg = weights(treatments_neg, outcomes_neg, propensities_neg)
    difference = positive_scores.astype(dtype) - jnp.asarray(negative_scores, dtype)
    return dlce_pair_loss(
        jnp.broadcast_to(difference, shape), treated_pos, control_pos, treated_neg, control_neg,
        where=valid, surrogate=surrogate, omega=omega,
    )


def dlce_pair_loss(
    differences: ArrayLike,
    treated_pos: ArrayLike,
    control_pos: ArrayLike,
    treated_neg: ArrayLike,
    control_neg: ArrayLike,
    *,
    where: ArrayLike | None = None,
    surrogate: str = "logistic",
    omega: float = 1.0,
) -> Array:
    """`dlce_loss` from the IPS weights directly: `(w1_i + w0_j) l(d) + (w0_i + w1_j) l(-d)`.

    For weights already aggregated over time (e.g. `w1 = consumed-when-shown / (T P)`, `w0 =
    consumed-when-not-shown / (T (1 - P))` per cell of a log of `T` steps), which `dlce_loss`
    computes from one step's `Z`, `Y`, `P`.

    Args:
        differences: `[...]` score differences `d = s_i - s_j`.
        treated_pos, control_pos: `[...]` `w1_i`, `w0_i`; treated_neg, control_neg: `w1_j`, `w0_j`.
        where: `[...]` bool, pairs that count.
        surrogate: `"logistic"` or `"hinge"`; omega: scale of `d` inside it.

    Returns:
        Scalar mean over the `where` pairs (0 if none).
    """
    loss_fn = _surrogate(surrogate)
    differences = jnp.asarray(differences)
    valid = _valid(differences.shape, where)
    scaled = jnp.where(valid, omega * differences, 0.0)
    up = loss_fn(scaled)  # l(s_i - s_j): penalises j above i
    down = loss_fn(-scaled)  # l(s_j - s_i): penalises i above j
    losses = (jnp.asarray(treated_pos) + jnp.asarray(control_neg)) * up + (
        jnp.asarray(control_pos) + jnp.asarray(treated_neg)
    ) * down
    losses = jnp.where(valid, losses, 0.0)
    return jnp.sum(losses) / jnp.maximum(jnp.sum(valid), 1).astype(scaled.dtype)


def ulrmf_labels(
    treatments: ArrayLike, outcomes: ArrayLike, *, where: ArrayLike | None = None
) -> Array:
    """ULRMF / ULBPR labels (Sato et al. 2019): 1 for `(Z, Y)` in {(1, 1), (0, 0)}, else 0.

    A treated-and-consumed cell may be a persuadable or a sure thing; an untreated-and-not-
    consumed cell may be a persuadable or a lost cause; both are "positive" for uplift. The
    transformation needs the treatment to be assigned independently of the potential outcomes
    with probability 1/2 (a balanced randomized experiment): then `P(label = 1) = (1 + tau) / 2`,
    increasing in `tau`. With other or varying propensities the label mixes `tau` with the
    consumption rate (Sato et al. 2019 tune how often each kind of cell is sampled instead).

    Args:
        treatments: `[...]` 0/1 or bool.
        outcomes: `[...]` 0/1 or bool.
        where: `[...]` bool; masked cells get label 0.

    Returns:
        `[...]` float32 labels in {0, 1}.
    """
    treated = jnp.asarray(treatments) != 0
    consumed = jnp.asarray(outcomes) != 0
    shape = jnp.broadcast_shapes(treated.shape, consumed.shape)
    positive = jnp.broadcast_to(treated == consumed, shape) & _valid(shape, where)
    return positive.astype(jnp.float32)


def ips_causal_precision(
    scores: ArrayLike,
    treatments: ArrayLike,
    outcomes: ArrayLike,
    propensities: ArrayLike,
    *,
    k: int,
    where: ArrayLike | None = None,
    clip: float | None = None,
) -> Array:
    """CP@K of Sato et al. 2019 from logged data: the mean IPS uplift label of the top K.

    Args:
        scores: `[n_users, n_items]` float.
        treatments: `[n_users, n_items]` 0/1, recommended by the logging policy.
        outcomes: `[n_users, n_items]` 0/1, consumed.
        propensities: `[n_users, n_items]` `P(Z = 1)` of the logging policy.
        k: list length (static).
        where: `[n_users, n_items]` bool rankable mask, or None.
        clip: propensities moved into `[clip, 1 - clip]` (biased, lower variance); None: none.

    Returns:
        `[n_users]` estimates (`eval.causal_metrics.labelled_causal_precision` of the labels);
        unbiased for `causal_precision` when scores are distinct, propensities right and
        `clip` None.
    """
    labels = ips_uplift_label(treatments, outcomes, propensities, clip=clip, where=where)
    return labelled_causal_precision(scores, labels, k=k, where=where)


def ips_causal_dcg(
    scores: ArrayLike,
    treatments: ArrayLike,
    outcomes: ArrayLike,
    propensities: ArrayLike,
    *,
    k: int,
    where: ArrayLike | None = None,
    clip: float | None = None,
) -> Array:
    """CDCG@K from logged data with the IPS uplift label; arguments as `ips_causal_precision`.

    Returns:
        `[n_users]` estimates, unbiased for `causal_dcg` under the same conditions.
    """
    labels = ips_uplift_label(treatments, outcomes, propensities, clip=clip, where=where)
    return labelled_causal_dcg(scores, labels, k=k, where=where)

