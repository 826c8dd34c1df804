r"""Propensity estimation P(O=1 | user, item) and the one place where propensities are clipped.

Inverse-propensity estimators re-weight each observed (user, item) cell by `1 / P(O_ui = 1)`
("Recommendations as Treatments", Schnabel et al., ICML 2016). This module estimates the
propensities as a dense `[n_users, n_items]` float32 matrix with one of these methods
(`causal.propensity`):

- `none`: all ones (unweighted, the naive estimator).
- `given`: the matrix the release provides (Coat's `propensities.ascii`).
- `popularity`: an item-level power law of observation counts (Yang et al., RecSys 2018,
  "Unbiased offline recommender evaluation for missing-not-at-random implicit feedback";
  the same shape as the popularity propensities of Saito et al., WSDM 2020, "Unbiased
  recommender learning from missing-not-at-random implicit feedback")::

      P_i = min(1, c * (n_i + 1) ** popularity_power)

  with `n_i` the number of training cells of item `i` (add-one so that an unseen item has a
  positive propensity) and `c` chosen (bisection) so that the mean of `P` over all cells equals
  the observed density `n_observed / (n_users n_items)`.
- `naive_bayes` (Schnabel et al. 2016, Sec. 5.1): the propensity depends on the rating only::

      P(O=1 | Y=y) = P(Y=y | O=1) P(O=1) / P(Y=y)

  with `P(Y=y | O=1)` from the (MNAR) training ratings, `P(O=1)` the observed density and
  `P(Y=y)` from a missing-at-random sample (the `mar_train` slice of `data.split =
  "mar_slice"`). Both rating distributions get one pseudo-count per rating level (so that no
  level has probability 0) and the ratio is capped at 1. The rating of an unobserved cell is
  unknown, so observed cells hold the propensity of their rating and every other cell the
  marginal `P(O=1)`; only observed cells are ever re-weighted.
- `logistic` (Schnabel et al. 2016, Sec. 5.1): logistic regression of the observation
  indicator of every cell on one-hot user and item ids plus the user and item features when the
  dataset has them, fit full-batch in JAX with optax (Adam, Gaussian prior / L2).
- `learned`: a rank-`d` logistic matrix factorisation `sigmoid(P_u . Q_i + b_u + b_i + b)` of
  the observation indicator, fit the same way (the exposure model of e.g. Liang et al., WWW
  2016, "Modeling user exposure in recommendation").
- `true`: the simulator's own `GroundTruth.propensity`, P(O=1 | u, i, Y_ui).

Clipping is a policy decision made in exactly one function, THE clip of `causal.clip`. Here
`clip_propensities` is its host wrapper for a run: it first validates the propensities
(`check_propensities`: NaN, not positive or above 1 are refused, naming the config key and the
first bad cell), then calls `causal.clip.clip_propensities`, which raises the propensities
below the clip to the clip and reports, in a `ClipReport`, how many it raised, the largest
inverse-propensity weight `1 / p` before and after, and the Kish effective sample size
`(sum w)^2 / sum w^2` of the weights `w = 1 / p`.

The `logistic` and `learned` models are fitted by the training core
(`train.full_batch.fit_full_batch_jit`, Adam from `train.step.make_optimizer`), compiled once
per static setting and data shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from causalrec_jax.causal import clip as the_clip
from causalrec_jax.causal.clip import ClipReport
from causalrec_jax.config import CausalConfig
from causalrec_jax.data.dataset import Dataset
from causalrec_jax.errors import CausalRecError
from causalrec_jax.train.full_batch import (
    check_finite,
    fit_full_batch_jit,
    full_batch_optimizer,
    optimizer_settings,
)

PROPENSITY_METHODS = (
    "none", "given", "popularity", "naive_bayes", "logistic", "learned", "true"
)
# Dense estimators hold a few `[n_users, n_items]` float32 arrays; refuse worlds far beyond the
# released benchmarks (Yahoo! R3 is 15.4M cells) rather than exhaust memory.
MAX_DENSE_CELLS = 200_000_000


class PropensityError(CausalRecError, ValueError):
    """Propensities are missing, malformed (NaN, <= 0, > 1) or of the wrong shape."""


def check_propensity_matrix(
    matrix: Any,
    n_users: int,
    n_items: int,
    name: str = "propensity_matrix",
    *,
    key: str = "causal.propensity",
) -> np.ndarray:
    """The matrix as `[n_users, n_items]` float32, or a `PropensityError` naming `key`, `name`.

    Only the shape is checked here; values are checked by `check_propensities`.

    Args:
        matrix: the propensities, array-like.
        n_users: expected number of rows.
        n_items: expected number of columns.
        name: what the matrix is (a file, "dataset propensities"), for the message.
        key: the config key that chose this matrix, for the message.
    """
    if matrix is None:
        raise PropensityError(f"key {key}: {name}: no propensity matrix (got None)")
    array = np.asarray(matrix)
    if array.shape != (n_users, n_items):
        raise PropensityError(
            f"key {key}: {name}: propensity matrix has shape {array.shape}, expected "
            f"[n_users, n_items] = ({n_users}, {n_items})"
        )
    return array.astype(np.float32, copy=False)


def check_propensities(
    values: Any, where: Any = None, name: str = "propensities",
    key: str = "causal.propensity",
) -> None:
    """Refuses propensities that are NaN, `<= 0` or `> 1` (within `where`), on the host.

    Args:
        values: array of P(O=1), any shape (e.g. `[n]` or `[n_users, n_items]`).
        where: optional boolean mask of the same shape; only these entries are checked.
        name: what the propensities are (a file, "dataset propensities"), for the message.
        key: the config key that chose them, named first in the message.

    Raises:
        PropensityError: naming `key`, `name`, how many are bad and the first bad index.
    """
    values = np.asarray(values)
    mask = np.ones(values.shape, bool) if where is None else np.asarray(where, bool)
    if mask.shape != values.shape:
        raise PropensityError(
            f"key {key}: {name}: mask 'where' has shape {mask.shape}, expected {values.shape}"
        )
    checks = (
        ("NaN", np.isnan(values)),
        ("<= 0", values <= 0),
        ("> 1", values > 1),
    )
    for what, bad in checks:
        bad = bad & mask
        count = int(np.count_nonzero(bad))
        if count:
            first = np.unravel_index(int(np.argmax(bad)), values.shape)
            first = tuple(int(i) for i in first)
            if len(first) == 1:
                at = f"index {first[0]}"
            elif len(first) == 2:
                at = f"(user, item) index {first}"
            else:
                at = f"index {first}"
            remedy = ""
            if what == "<= 0":
                remedy = (
                    "; a cell with propensity 0 could never have been observed and would get "
                    "weight 1/0: fix the source named by causal.propensity (a clip, "
                    "causal.propensity_clip, raises small positive propensities but does not "
                    "repair zeros)"
                )
            raise PropensityError(
                f"key {key}: {name}: {count} propensities are {what} (first at {at}, value "
                f"{values[first]}); propensities must lie in (0, 1]{remedy}"
            )


def clip_propensities(
    propensities: Any,
    clip: float | None,
    *,
    where: Any = None,
    name: str = "propensities",
    key: str = "causal.propensity",
) -> tuple[np.ndarray, ClipReport]:
    """A run's propensity clip: `check_propensities`, then THE clip (`causal.clip`).

    Runs on the host, once per run (not under `jax.jit`), so that it can refuse bad input.

    Args:
        propensities: array of P(O=1) in (0, 1], any shape (e.g. `[n]` at observed cells or
            `[n_users, n_items]`).
        clip: lower bound; None or 0 means no clipping (the report is still computed).
        where: optional boolean mask of the same shape; only these entries are validated,
            clipped and reported (others are returned unchanged), e.g. padding excluded.
        name: what the propensities are, for error messages (a config key or file).
        key: the config key that chose the propensities, named first in error messages.

    Returns:
        `(clipped, report)`: float32 numpy array of the input's shape (`max(p, clip)`) and the
        `causal.clip.ClipReport` of the weights `1 / p` (its `to_dict()` is what runs write
        under "propensity": `n, n_clipped, fraction_clipped, effective_sample_size,
        max_weight_before, max_weight_after`).

    Raises:
        PropensityError: an entry (within `where`) is NaN, <= 0 or > 1, or `clip` is outside
            [0, 1).
    """
    values = np.asarray(propensities, dtype=np.float32)
    clip = 0.0 if clip is None else float(clip)
    if not (0.0 <= clip < 1.0):
        raise PropensityError(
            f"key causal.propensity_clip: got {clip}, expected a value in [0, 1)"
        )
    check_propensities(values, where, name, key)
    mask = np.ones(values.shape, bool) if where is None else np.asarray(where, bool)
    clipped, report = the_clip.clip_propensities(values, clip or None, where=mask)
    clipped = np.where(mask, np.asarray(clipped, np.float32), values).astype(np.float32)
    return clipped, report


def propensity_histogram(propensities: np.ndarray, *, bins_per_decade: int = 10
                         ) -> dict[str, list]:
    """Counts of propensities in bins of equal width in `log10(p)`, for a run's report
    (`metrics.json` "propensity" "histogram"): the distribution the clip acts on, kept in the
    run folder without its `[n]` values.

    Args:
        propensities: `[n]` values in `(0, 1]` (already validated).
        bins_per_decade: bins per factor of 10.

    Returns:
        `{"log10_edges": [e_0, ..., e_B], "counts": [c_1, ..., c_B]}`: the edges are the
        multiples of `1 / bins_per_decade` from the one at or below `log10` of the smallest
        propensity up to 0 (p = 1); bin `b` counts `e_{b-1} <= log10(p) < e_b`, the last one
        also `p = 1`. Empty lists for no propensities.
    """
    logs = np.log10(np.asarray(propensities, np.float64).ravel())
    if logs.size == 0:
        return {"log10_edges": [], "counts": []}
    n_bins = max(int(np.ceil(-logs.min() * bins_per_decade - 1e-9)), 1)
    edges = -np.arange(n_bins, -1, -1) / bins_per_decade
    counts, _ = np.histogram(np.clip(logs, edges[0], 0.0), bins=edges)
    return {"log10_edges": [round(float(edge), 6) for edge in edges],
            "counts": [int(count) for count in counts]}


def observed_matrix(train: Dataset) -> np.ndarray:
    """`[n_users, n_items]` float32 indicator of the cells with at least one training row."""
    _check_size(train)
    observed = np.zeros((train.n_users, train.n_items), dtype=np.float32)
    observed[train.user, train.item] = 1.0
    return observed


def _check_size(train: Dataset) -> None:
    cells = train.n_users * train.n_items
    if cells > MAX_DENSE_CELLS:
        raise PropensityError(
            f"causal.propensity: {train.n_users} users x {train.n_items} items = {cells} cells "
            f"exceed the dense propensity limit of {MAX_DENSE_CELLS}"
        )


def _density(observed: np.ndarray) -> float:
    density = float(observed.mean(dtype=np.float64))
    if density <= 0:
        raise PropensityError("causal.propensity: the training data has no observed cell")
    return density


# --------------------------------------------------------------------------- popularity


def popularity_propensities(train: Dataset, power: float = 0.5) -> np.ndarray:
    """`[n_users, n_items]` `min(1, c (n_i + 1)^power)`, mean over all cells = observed density.

    Args:
        train: the training interactions (MNAR).
        power: the exponent (`causal.popularity_power`); 0 gives the constant density.
    """
    observed = observed_matrix(train)
    density = _density(observed)
    counts = observed.sum(axis=0, dtype=np.float64)
    shape = (counts + 1.0) ** float(power)

    def mean_at(log_scale: float) -> float:
        return float(np.minimum(1.0, np.exp(log_scale) * shape).mean())

    # mean_at is increasing in log_scale, from 0 to 1 > density: bisection.
    low, high = np.log(density) - np.log(shape.max()) - 1.0, -np.log(shape.min()) + 1.0
    for _ in range(100):
        middle = 0.5 * (low + high)
        if mean_at(middle) < density:
            low = middle
        else:
            high = middle
    item_propensity = np.minimum(1.0, np.exp(0.5 * (low + high)) * shape)
    return np.broadcast_to(item_propensity.astype(np.float32), observed.shape).copy()


# --------------------------------------------------------------------------- naive Bayes


class NaiveBayesTable(NamedTuple):
    """Per-rating-level quantities of the naive Bayes propensity model.

    Attributes:
        levels: `[K]` rating levels (sorted).
        observed_given_rating: `[K]` P(O=1 | Y=level), capped at 1.
        rating_given_observed: `[K]` P(Y=level | O=1) from the training ratings.
        rating_marginal: `[K]` P(Y=level) from the MAR sample.
        marginal: P(O=1), the observed density.
    """

    levels: np.ndarray
    observed_given_rating: np.ndarray
    rating_given_observed: np.ndarray
    rating_marginal: np.ndarray
    marginal: float


def naive_bayes_table(train: Dataset, mar: Dataset | None, pseudo_count: float = 1.0):
    """The `NaiveBayesTable` of Schnabel et al. (2016) from MNAR `train` and a MAR sample.

    Raises:
        PropensityError: no MAR sample, or an empty one.
    """
    if mar is None or len(mar) == 0:
        raise PropensityError(
            'causal.propensity = "naive_bayes" needs a missing-at-random sample of ratings: use '
            'data.split = "mar_slice" with data.mar_train_fraction > 0 (the MAR slice is '
            f"{'missing' if mar is None else 'empty'})"
        )
    density = _density(observed_matrix(train))
    train_rating = np.asarray(train.rating, dtype=np.float64)
    mar_rating = np.asarray(mar.rating, dtype=np.float64)
    levels = np.unique(np.concatenate([train_rating, mar_rating]))

    def distribution(ratings: np.ndarray) -> np.ndarray:
        counts = np.array([np.sum(ratings == level) for level in levels], np.float64)
        counts += pseudo_count
        return counts / counts.sum()

    given_observed = distribution(train_rating)
    marginal_rating = distribution(mar_rating)
    observed_given_rating = np.minimum(1.0, given_observed * density / marginal_rating)
    return NaiveBayesTable(
        levels=levels.astype(np.float32),
        observed_given_rating=observed_given_rating.astype(np.float32),
        rating_given_observed=given_observed.astype(np.float32),
        rating_marginal=marginal_rating.astype(np.float32),
        marginal=density,
    )


def naive_bayes_propensities(train: Dataset, mar: Dataset | None) -> np.ndarray:
    """`[n_users, n_items]`: P(O=1 | Y = rating) at observed cells, P(O=1) elsewhere."""
    table = naive_bayes_table(train, mar)
    matrix = np.full((train.n_users, train.n_items), table.marginal, dtype=np.float32)
    index = np.searchsorted(table.levels, np.asarray(train.rating, np.float32))
    matrix[train.user, train.item] = table.observed_given_rating[index]
    return matrix


# --------------------------------------------------------------------------- logistic / MF


def _bce_objective(logits: jax.Array, observed: jax.Array, penalty: jax.Array, l2: float):
    """Mean BCE over all cells plus a Gaussian prior of precision `l2` (per cell-equivalent)."""
    loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, observed))
    return loss + 0.5 * l2 * penalty / observed.size


@dataclasses.dataclass(frozen=True)
class _ObservationLoss:
    """`loss_fn(params, batch, key)` of the training core for a logits model of exposure.

    A frozen dataclass (hashed by its `logits_fn`), so `fit_full_batch_jit` compiles once per
    model kind and data shape; the data and the prior's precision `l2` travel in `batch`.
    """

    logits_fn: Callable[[Any, Any], jax.Array]

    def __call__(self, params, batch, key):
        del key  # the objective samples nothing
        penalty = sum(jnp.sum(jnp.square(leaf)) for name, leaf in params.items() if name != "bias")
        logits = self.logits_fn(params, batch["extra"])
        return _bce_objective(logits, batch["observed"], penalty, batch["l2"]), {}


def _fit(params, observed, extra, *, logits_fn, steps: int, learning_rate: float, l2: float):
    """Full-batch Adam (the core's optimiser, `learning_rate` traced) on the BCE of
    `logits_fn(params, extra)` against `observed`; returns the fitted params."""
    optimizer, hparams = full_batch_optimizer(
        optimizer_settings(learning_rate=learning_rate, weight_decay=0.0), steps)
    batch = {"observed": observed, "extra": extra, "l2": jnp.float32(l2)}
    # The key is unused (a deterministic objective); a fixed one keeps the fit deterministic.
    fit = fit_full_batch_jit(_ObservationLoss(logits_fn), params, batch, jax.random.key(0),
                             hparams, optimizer=optimizer, epochs=steps)
    check_finite(fit, "propensity model (causal.propensity)",
                 "the observation matrix or the learning rate is unusable")
    return fit.state.params


def _logistic_logits(params, extra):
    logits = params["bias"] + params["user"][:, None] + params["item"][None, :]
    if "user_features" in params:
        logits = logits + (extra["user_features"] @ params["user_features"])[:, None]
    if "item_features" in params:
        logits = logits + (extra["item_features"] @ params["item_features"])[None, :]
    return logits


def _mf_logits(params, extra):
    del extra
    return (
        params["user_factors"] @ params["item_factors"].T
        + params["user"][:, None]
        + params["item"][None, :]
        + params["bias"]
    )


def _standardize(features: np.ndarray | None) -> np.ndarray | None:
    if features is None or features.shape[1] == 0:
        return None
    features = np.asarray(features, np.float32)
    std = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(std > 0, std, 1.0)


def logistic_propensities(
    train: Dataset,
    *,
    steps: int = 300,
    learning_rate: float = 0.1,
    l2: float = 1.0,
) -> np.ndarray:
    """`[n_users, n_items]` `sigmoid(b + w_u + v_i + x_u . a + x_i . c)` fit on all cells.

    Zero-initialised (bias at the logit of the density), so deterministic. Features `x_u`,
    `x_i` are the dataset's user / item features, standardised, when present.

    Args:
        train: the training interactions; a cell is observed when it has a row.
        steps: full-batch Adam steps.
        learning_rate: Adam learning rate.
        l2: precision of the Gaussian prior on every weight but the bias.
    """
    observed = observed_matrix(train)
    density = _density(observed)
    params = {
        "bias": jnp.asarray(np.log(density / (1.0 - density)) if density < 1 else 0.0,
                            jnp.float32),
        "user": jnp.zeros(train.n_users, jnp.float32),
        "item": jnp.zeros(train.n_items, jnp.float32),
    }
    extra = {}
    for kind in ("user", "item"):
        features = _standardize(getattr(train, f"{kind}_features"))
        if features is not None:
            extra[f"{kind}_features"] = jnp.asarray(features)
            params[f"{kind}_features"] = jnp.zeros(features.shape[1], jnp.float32)
    params = _fit(
        params, jnp.asarray(observed), extra, logits_fn=_logistic_logits, steps=int(steps),
        learning_rate=float(learning_rate), l2=float(l2),
    )
    return np.asarray(jax.nn.sigmoid(_logistic_logits(params, extra)), dtype=np.float32)


def learned_propensities(
    key: jax.Array,
    train: Dataset,
    *,
    rank: int = 8,
    steps: int = 300,
    learning_rate: float = 0.05,
    l2: float = 10.0,
    init_scale: float = 0.1,
) -> np.ndarray:
    """`[n_users, n_items]` `sigmoid(P_u . Q_i + b_u + b_i + b)`: logistic MF of exposure.

    Args:
        key: `jax.random` key for the factor initialisation (`N(0, init_scale^2)`).
        train: the training interactions; a cell is observed when it has a row.
        rank: factor dimension `d`.
        steps: full-batch Adam steps.
        learning_rate: Adam learning rate.
        l2: precision of the Gaussian prior on factors and per-user / per-item biases.
        init_scale: standard deviation of the initial factors.
    """
    observed = observed_matrix(train)
    density = _density(observed)
    user_key, item_key = jax.random.split(key)
    params = {
        "bias": jnp.asarray(np.log(density / (1.0 - density)) if density < 1 else 0.0,
                            jnp.float32),
        "user": jnp.zeros(train.n_users, jnp.float32),
        "item": jnp.zeros(train.n_items, jnp.float32),
        "user_factors": init_scale * jax.random.normal(user_key, (train.n_users, rank)),
        "item_factors": init_scale * jax.random.normal(item_key, (train.n_items, rank)),
    }
    params = _fit(
        params, jnp.asarray(observed), {}, logits_fn=_mf_logits, steps=int(steps),
        learning_rate=float(learning_rate), l2=float(l2),
    )
    return np.asarray(jax.nn.sigmoid(_mf_logits(params, {})), dtype=np.float32)


# --------------------------------------------------------------------------- dispatch


def estimate_propensities(
    method: str,
    train: Dataset,
    *,
    mar: Dataset | None = None,
    config: CausalConfig | None = None,
    key: jax.Array | None = None,
    truth: Any = None,
) -> np.ndarray:
    """`[n_users, n_items]` float32 P(observed | user, item) by `method` (`causal.propensity`).

    Args:
        method: one of `PROPENSITY_METHODS`.
        train: the (MNAR) training interactions; its id maps fix the matrix shape.
        mar: a missing-at-random sample of ratings (`naive_bayes` only), e.g.
            `split.extra["mar_train"]`.
        config: the `[causal]` section (`popularity_power`); defaults when None.
        key: `jax.random` key (`learned` only).
        truth: the simulator's dense `GroundTruth` (`true` only).

    Returns:
        The unclipped matrix; clip it (and get the report) with `clip_propensities`.

    Raises:
        PropensityError: unknown method, or what the method needs is missing or malformed.
    """
    config = CausalConfig() if config is None else config
    shape = (train.n_users, train.n_items)
    if method == "none":
        return np.ones(shape, np.float32)
    if method == "given":
        if train.propensity_matrix is None:
            raise PropensityError(
                'key causal.propensity: "given" needs a dataset that releases a propensity '
                "matrix (e.g. Coat's propensities.ascii, or the simulator); this dataset has none"
            )
        return check_propensity_matrix(train.propensity_matrix, *shape, "dataset propensities")
    if method == "popularity":
        return popularity_propensities(train, config.popularity_power)
    if method == "naive_bayes":
        return naive_bayes_propensities(train, mar)
    if method == "logistic":
        return logistic_propensities(train)
    if method == "learned":
        if key is None:
            raise PropensityError('causal.propensity = "learned" needs a jax.random key')
        return learned_propensities(key, train)
    if method == "true":
        matrix = getattr(truth, "propensity", None)
        if matrix is None:
            raise PropensityError(
                'causal.propensity = "true" needs the simulator\'s dense ground truth '
                '(data.format = "simulator" with at most sim.max_dense_cells cells)'
            )
        return check_propensity_matrix(jax.device_get(matrix), *shape, "truth.propensity")
    raise PropensityError(
        f"causal.propensity: unknown method {method!r}, expected one of {PROPENSITY_METHODS}"
    )
