"""Checks, before any training, that a causal configuration can run on the split it gets.

`check_causal_setup(causal, data, split, loss=...)` refuses, with an error naming the config key
to change:

- a method that weights by propensities (`ips`, `snips`, the `dr` family, `rel_mf`) with
  `causal.propensity = "none"`;
- a method trained with a loss it is not defined for (`train.loss`): the weighted pointwise
  estimators need `mse` or `bce`, `rel_mf` and `macr` need `bce`, `pda` needs `bpr`;
- `causal.propensity = "naive_bayes"` without a missing-at-random training slice
  (`data.split = "mar_slice"` with `data.mar_train_fraction > 0`);
- `causal.propensity = "true"` outside the simulator;
- `dr` with `train.loss = "bce"` and an imputed value outside [0, 1] (it is a label);
- a split with an empty test part;
- `causal.propensity = "given"` with a released matrix that is missing, of the wrong shape, or
  NaN, <= 0 or > 1 at a cell the training data observes (a `PropensityError`, which names the
  key and the first bad (user, item) index). Cells the training data does not observe are not
  checked: no estimator divides by their propensity.

Estimated propensities (popularity, naive_bayes, logistic, learned) are checked where they
are computed, by `causal.propensity.clip_propensities`. Every error raised here is a
`CausalRecError` and a `ValueError`.
"""

from __future__ import annotations

import numpy as np

from causalrec_jax.causal.propensity import (
    PROPENSITY_METHODS,
    clip_propensities,
    estimate_propensities,
)
from causalrec_jax.causal.training import (
    ALL_CELL_METHODS,
    DYNAMIC_METHODS,
    FIXED_IMPUTATION_METHODS,
    METHODS_WITH_PROPENSITIES,
    TARGETED_METHODS,
)
from causalrec_jax.config import CausalConfig, DataConfig
from causalrec_jax.data.dataset import Split
from causalrec_jax.errors import ConfigError, SplitError
from causalrec_jax.train.objectives import POINTWISE_LOSSES

# Methods whose estimator divides observed rows by their propensity.
METHODS_NEEDING_PROPENSITIES = ("ips", "snips", "dr", "dr_jl", "mrdr", "dr_mse", "d_ips",
                                "d_dr", "d_dr_jl", "tdr", "tdr_jl", "rel_mf")
# The losses each method is defined for (methods not listed accept any loss).
METHOD_LOSSES: dict[str, tuple[str, ...]] = {
    **{method: POINTWISE_LOSSES for method in ("ips", "snips", "dr", "dr_jl", "mrdr", "dr_mse",
                                               "d_ips", "d_dr", "d_dr_jl", "tdr", "tdr_jl")},
    "rel_mf": ("bce",),
    "macr": ("bce",),
    "pda": ("bpr",),
}
_WHY_LOSS = {
    "rel_mf": "its unbiased pointwise loss is a cross-entropy on implicit 0/1 labels",
    "macr": "it trains its user, item and matching modules with binary cross-entropy",
    "pda": "its popularity-deconfounded score is trained pairwise",
}


def check_causal_setup(
    causal: CausalConfig, data: DataConfig, split: Split, *, loss: str
) -> None:
    """Raises if `causal` cannot train its method on `split`; returns None if it can.

    Args:
        causal: the `[causal]` section (method, propensity source, clip, imputed value).
        data: the `[data]` section (`format`, `split`, `mar_train_fraction`: named in errors).
        split: the split the run trains on; its MAR training slice is
            `split.extra.get("mar_train")`.
        loss: `train.loss`, the loss the method trains with.

    Raises:
        ConfigError: a method / loss / propensity source / MAR slice combination that cannot
            run; the message starts with the key to change ("key causal.propensity: ...").
        SplitError: the split's test part is empty (names the `data.split` keys).
        PropensityError: `causal.propensity = "given"` and the dataset's matrix is missing,
            of the wrong shape, or outside (0, 1] (NaN included) at an observed training cell.
    """
    method, source = causal.method, causal.propensity
    _check_loss(method, loss)
    needs_propensities = method in METHODS_NEEDING_PROPENSITIES
    if needs_propensities and source == "none":
        sources = ", ".join(s for s in PROPENSITY_METHODS if s != "none")
        raise ConfigError(
            f"key causal.propensity: causal.method = {method!r} weights observed rows by "
            f"1 / propensity, so it needs a propensity source; got 'none', expected one of "
            f"{sources}"
        )
    value = causal.imputation_value
    if method in FIXED_IMPUTATION_METHODS and loss == "bce" and value is not None and not (
        0.0 <= value <= 1.0
    ):
        raise ConfigError(
            f"key causal.imputation_value: with train.loss = 'bce' the imputed value is a label "
            f"probability in [0, 1]; got {value}"
        )
    mar_train = split.extra.get("mar_train")
    if source == "naive_bayes" and (mar_train is None or len(mar_train) == 0):
        state = "missing" if mar_train is None else "empty"
        raise ConfigError(
            "key data.mar_train_fraction: causal.propensity = 'naive_bayes' needs a "
            f"missing-at-random training slice, which this split lacks (it is {state}); set "
            f"data.split = 'mar_slice' (now {data.split!r}) with "
            f"data.mar_train_fraction > 0 (now {data.mar_train_fraction})"
        )
    if source == "true" and data.format != "simulator":
        raise ConfigError(
            "key causal.propensity: 'true' propensities exist only for simulated data "
            f"(data.format = 'simulator'), got data.format = {data.format!r}; use "
            "given, popularity, naive_bayes, logistic or learned"
        )
    if len(split.test) == 0:
        keys = (
            "data.mar_train_fraction / data.mar_valid_fraction"
            if data.split == "mar_slice" else "data.split_ratios"
        )
        raise SplitError(f"key {keys}: the split has no test rows (data.split = "
                         f"{data.split!r})")
    if needs_propensities and source == "given":
        _check_given_matrix(split, causal.propensity_clip,
                            every_cell=method in TARGETED_METHODS)


def _check_loss(method: str, loss: str) -> None:
    allowed = METHOD_LOSSES.get(method)
    if allowed is None or loss in allowed:
        return
    why = _WHY_LOSS.get(method, "it re-weights a pointwise loss, one term per observed row")
    raise ConfigError(
        f"key train.loss: causal.method = {method!r} needs train.loss = "
        f"{' or '.join(repr(name) for name in allowed)} ({why}); got {loss!r}"
    )


def _check_given_matrix(split: Split, clip: float, every_cell: bool = False) -> None:
    """The released matrix: right shape, and in (0, 1] at every observed training cell (at
    every cell for the targeted methods, which read the propensity of unobserved cells too)."""
    train = split.train
    matrix = estimate_propensities("given", train)  # raises when missing or misshapen
    observed = np.zeros(matrix.shape, bool)
    observed[train.user, train.item] = True
    cells = "cells" if every_cell else "observed training cells"
    clip_propensities(
        matrix, clip, where=None if every_cell else observed,
        name=f"dataset propensities at {cells} (causal.propensity_clip = {clip})",
    )


def causal_keys_used(causal: CausalConfig) -> tuple[str, ...]:
    """The `[causal]` keys a run of `causal.method` reads (the others would be ignored, so a
    run refuses them: `config.refuse_unused`)."""
    method = causal.method
    keys = ["method"]
    if method in METHODS_WITH_PROPENSITIES:
        keys += ["propensity", "propensity_clip"]
        if causal.propensity == "popularity":
            keys.append("popularity_power")
    if method in FIXED_IMPUTATION_METHODS:
        keys.append("imputation_value")
    if method in DYNAMIC_METHODS:
        keys += ["dynamic_ratio", "dynamic_function"]
    if method in ALL_CELL_METHODS:
        keys.append("cells_per_row")
    if method == "dr_mse":
        keys.append("dr_mse_lambda")
    if method == "pda":
        keys += ["pda_gamma", "pda_inference_gamma"]
    if method == "macr":
        keys += ["macr_alpha", "macr_beta", "macr_c"]
    return tuple(keys)
