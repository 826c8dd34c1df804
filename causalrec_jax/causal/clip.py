r"""THE clip: the one place propensities and importance weights are bounded, with its report.

Every estimator that divides by a probability — IPS / SNIPS / doubly robust training losses,
the off-policy estimators, the uplift labels — bounds its weights here and nowhere else, so a
run's `metrics.json` can say exactly how much was clipped and what that did to the effective
sample size (Kish, "Survey Sampling", 1965: `(sum w)^2 / sum w^2`).

Two views of one operation:

- `clip_weights(weights, max_weight)`: `w -> min(w, max_weight)` (the clipped IPS of Ionides,
  "Truncated Importance Sampling", JCGS 2008; `lambda` in Open Bandit Pipeline's estimators).
- `clip_propensities(p, clip)`: `p -> max(p, clip)`, which is `clip_weights` applied to the
  inverse-propensity weights `1 / p` with `max_weight = 1 / clip`. With `two_sided=True` also
  `1 - p -> max(1 - p, clip)` (the control-arm weight `1 / (1 - p)` of uplift labels; the
  propensity capping of Sato et al., RecSys 2020), so `p` lands in `[clip, 1 - clip]`.

Both are pure `jax.numpy` functions: jit-, vmap- and grad-safe, with the bound allowed to be a
traced scalar (a hyperparameter a vmapped population sweeps). A bound of `None` or `0` clips
nothing (the report is still computed). Padding (`where` False) is left out of the report and
never turns a zero or non-finite value into NaN. Validation of the inputs (NaN, `p <= 0`,
`p > 1`) is a host-side check done once per run (`causal.propensity.check_propensities`),
not here: under `jit` nothing can raise.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# What a run whose loss divides by propensities adds to a divergence's advice (`train.loop.fit`).
DIVERGED_HINT = "clip propensities (causal.propensity_clip)"

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


class ClipReport(NamedTuple):
    """What a clip did, as jnp scalars (stackable over a vmapped population).

    Attributes:
        n: number of weights considered (entries where `where` is True).
        n_clipped: how many weights were above the bound and lowered to it.
        fraction_clipped: `n_clipped / n` (0 when `n == 0`).
        effective_sample_size: Kish ESS `(sum w)^2 / sum w^2` of the weights after clipping
            (`n` when all are equal, 0 when all are 0).
        max_weight_before: largest weight before clipping (NaN when `n == 0`).
        max_weight_after: largest weight after clipping (NaN when `n == 0`).
    """

    n: Array
    n_clipped: Array
    fraction_clipped: Array
    effective_sample_size: Array
    max_weight_before: Array
    max_weight_after: Array

    def to_dict(self) -> dict[str, Any]:
        """Plain Python numbers (NaN as None) for `metrics.json`; lists for stacked reports."""
        out: dict[str, Any] = {}
        for name, value in self._asdict().items():
            array = np.asarray(value)
            item = array.item() if array.ndim == 0 else array.tolist()
            if isinstance(item, float) and np.isnan(item):
                item = None
            out[name] = item
        return out


def _float_dtype(array: Array) -> jnp.dtype:
    dtype = array.dtype
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def _valid(shape: tuple[int, ...], where: ArrayLike | None) -> Array:
    """`where` as a bool mask over `shape`: broadcast from the leading axes (a `[n]` row mask
    covers `[n, K]` slot weights) or from the trailing ones, as numpy broadcasting allows."""
    if where is None:
        return jnp.ones(shape, bool)
    mask = jnp.asarray(where, bool)
    if mask.ndim < len(shape) and mask.shape == shape[: mask.ndim]:
        mask = mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim))
    return jnp.broadcast_to(mask, shape)


def _kish(weights: Array, valid: Array) -> Array:
    weights = jnp.where(valid, weights, 0.0)
    squares = jnp.sum(jnp.square(weights))
    positive = squares > 0
    return jnp.where(positive, jnp.square(jnp.sum(weights)) / jnp.where(positive, squares, 1.0),
                     0.0)


def _report(before: Array, after: Array, clipped: Array, valid: Array) -> ClipReport:
    n = jnp.sum(valid).astype(jnp.int32)
    n_clipped = jnp.sum(clipped & valid).astype(jnp.int32)
    dtype = after.dtype
    fraction = jnp.where(n > 0, n_clipped.astype(dtype) / jnp.maximum(n.astype(dtype), 1.0), 0.0)

    def largest(array: Array) -> Array:
        top = jnp.max(jnp.where(valid, array, -jnp.inf), initial=-jnp.inf)
        return jnp.where(n > 0, top, jnp.nan).astype(dtype)

    return ClipReport(
        n=n,
        n_clipped=n_clipped,
        fraction_clipped=fraction,
        effective_sample_size=_kish(after, valid),
        max_weight_before=largest(before),
        max_weight_after=largest(after),
    )


def _is_off(bound: ArrayLike | None) -> bool:
    """True for a bound that is statically "no clipping" (None or a Python 0)."""
    return bound is None or (isinstance(bound, int | float) and float(bound) == 0.0)


def clip_weights(
    weights: ArrayLike, max_weight: ArrayLike | None, *, where: ArrayLike | None = None
) -> tuple[Array, ClipReport]:
    """Caps importance weights at `max_weight`.

    Args:
        weights: non-negative weights, any shape (`[n]`, `[n, K]` slots, `[U, I]` cells).
        max_weight: the largest weight kept, a positive scalar (may be traced; `inf` keeps
            all); None or 0 clips nothing.
        where: bool mask broadcastable to `weights` (a `[n]` mask covers `[n, K]`); masked
            entries are set to 0 and left out of the report.

    Returns:
        `(clipped, report)`: `min(w, max_weight)` on valid entries and 0 on masked ones, shaped
        like `weights`, and a `ClipReport`.

    Raises:
        ValueError: `max_weight` is a negative Python number (a traced one is not checked).
    """
    weights = jnp.asarray(weights)
    weights = weights.astype(_float_dtype(weights))
    if isinstance(max_weight, int | float) and max_weight < 0:
        raise ValueError(f"max_weight must be positive, 0 or None, got {max_weight!r}")
    valid = _valid(weights.shape, where)
    weights = jnp.where(valid, weights, 0.0)
    if _is_off(max_weight):
        return weights, _report(weights, weights, jnp.zeros(weights.shape, bool), valid)
    bound = jnp.asarray(max_weight, weights.dtype)
    # A traced bound of 0 means "no clipping", as a Python 0 does.
    bound = jnp.where(bound > 0, bound, jnp.inf)
    above = valid & (weights > bound)
    clipped = jnp.where(above, bound, weights)
    return clipped, _report(weights, clipped, above, valid)


def clip_propensities(
    propensities: ArrayLike,
    clip: ArrayLike | None,
    *,
    where: ArrayLike | None = None,
    two_sided: bool = False,
) -> tuple[Array, ClipReport]:
    """Raises propensities below `clip` to `clip` (and, two-sided, lowers those above
    `1 - clip` to `1 - clip`): `clip_weights` on the weights `1 / p` (and `1 / (1 - p)`)
    with `max_weight = 1 / clip`.

    Args:
        propensities: probabilities in `(0, 1]` (two-sided: `[0, 1]`), any shape.
        clip: the bound, a scalar in `[0, 1)` (two-sided `[0, 1/2)`), may be traced; None or
            0 clips nothing.
        where: bool mask broadcastable to `propensities`; masked entries are returned as 1
            (two-sided: 1/2), so that dividing by them stays finite, and are not reported.
        two_sided: also bound `1 - p` (both arms of a treatment are divided by).

    Returns:
        `(clipped, report)`: the propensities, float, shaped like the input, and the
        `ClipReport` of the weights `1 / p` (two-sided: of `1 / p` and `1 / (1 - p)`, each
        valid entry counted twice).

    Raises:
        ValueError: `clip` is a Python number outside the range above.
    """
    values = jnp.asarray(propensities)
    values = values.astype(_float_dtype(values))
    upper = 0.5 if two_sided else 1.0
    if isinstance(clip, int | float) and not 0.0 <= float(clip) < upper:
        raise ValueError(f"clip must be in [0, {upper}) or None, got {clip!r}")
    valid = _valid(values.shape, where)
    fill = 0.5 if two_sided else 1.0
    values = jnp.where(valid, values, fill)
    max_weight = None if _is_off(clip) else 1.0 / jnp.asarray(clip, values.dtype)
    # The arms divided by: p (and 1 - p), stacked on a leading axis so one clip reports both.
    arms = jnp.stack([values, 1.0 - values]) if two_sided else values[None]
    arm_valid = jnp.broadcast_to(valid[None], arms.shape)
    positive = arms > 0
    # 1 / 0 = inf is a legal weight before clipping (a cell never shown in one arm); the
    # double where keeps the gradient finite.
    weights = jnp.where(positive, 1.0 / jnp.where(positive, arms, 1.0), jnp.inf)
    clipped, report = clip_weights(weights, max_weight, where=arm_valid)
    # Only the entries the clip moved are replaced, by the bound itself (exactly `clip`, not
    # the round trip `1 / (1 / clip)`); the others keep their exact value.
    moved = arm_valid & (clipped < weights)
    bound = jnp.asarray(0.0 if max_weight is None else clip, values.dtype)
    bounded = jnp.where(moved, bound, arms)
    if two_sided:
        # Below 1/2 only the lower bound can bind, above it only the upper one (clip < 1/2).
        out = jnp.where(values < 0.5, bounded[0], 1.0 - bounded[1])
    else:
        out = bounded[0]
    return jnp.where(valid, out, fill), report
