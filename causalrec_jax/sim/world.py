r"""A static simulated world: users, items, ratings and MNAR exposure with known ground truth.

The world is a structural causal model (SCM) in the sense of "Recommendations as Treatments"
(Schnabel et al., ICML 2016): every (user, item) pair has a potential rating `Y_ui` that exists
whether or not it is observed, and an exposure indicator `O_ui` (the "treatment") decides which
ratings reach the log. Exposure is missing not at random through two paths:

- popularity exposure: popular items are shown and rated more often, with a propensity that
  grows as a power of popularity (Yang et al., RecSys 2018, "Unbiased offline recommender
  evaluation for missing-not-at-random implicit feedback");
- self-selection: users rate what they like, so the chance of observing a rating grows with the
  rating itself (Marlin & Zemel, RecSys 2009, "Collaborative prediction and ranking with
  non-random missing data").

Item popularity also raises true relevance, so it is a confounder of exposure and outcome;
`popularity_sigma` is its strength (0 removes the popularity path from both).

Exogenous noise (each an independent `jax.random.fold_in(key, stream)` stream)::

    z_i        ~ N(0, 1)                          standardized log popularity   (STREAM_POPULARITY)
    theta_u    ~ N(0, I_d / sqrt(d))              user taste                    (STREAM_USERS)
    beta_i     ~ N(0, I_d / sqrt(d))              item attributes               (STREAM_ITEMS)
    eps_ui     ~ N(0, 1)                          rating noise                  (STREAM_RATINGS)
    u_ui       ~ U(0, 1)                          exposure noise                (STREAM_EXPOSURE)

Structural equations (sigma_p = popularity_sigma, gamma = quality_effect, tau =
relevance_temperature, c0 = relevance_offset, sigma_y = rating_noise, alpha =
popularity_exposure, s = selection_strength, m = mean_exposure)::

    p_i    = sigma_p * z_i                                                   log popularity_i
    popularity_i = exp(p_i)                                                  (log-normal)
    r_ui   = sigmoid(theta_u . beta_i / tau + gamma * p_i + c0)              P(relevant)
    Y*_ui  = 1 + 4 r_ui + sigma_y * eps_ui
    Y_ui   = clip(round(Y*_ui), 1, 5)                                        (ordered probit)
    E[Y_ui] = 1 + sum_{k=1..4} Phi((1 + 4 r_ui - k - 1/2) / sigma_y)
    pi_ui  = sigmoid(b + alpha * p_i + s * (Y_ui - 3) / 2)                  P(O=1 | u, i, Y_ui)
    O_ui   = 1[u_ui < pi_ui]                                                 (Bernoulli(pi_ui))

`b` is calibrated (bisection, jit-able) so that `mean_ui pi_ui = m`. At small propensities
`pi_ui ~ popularity_i ** alpha` (Yang et al.'s power law with exponent alpha), and `exp(s)` is
the odds ratio of observing a 5 rather than a 3 (Marlin & Zemel's rating-dependent
missingness). Both popularity effects are per unit of log popularity, so `sigma_p` scales the
confounding: the spread of popularity across items, and with it how much popularity moves
relevance (sd `gamma sigma_p` on the logit) and exposure (sd `alpha sigma_p`). At `sigma_p = 0`
every item is equally popular and exposure depends on the item only through its rating.
The marginal propensity `P(O=1 | u, i) = sum_k P(Y_ui = k) sigmoid(b + alpha p_i + s (k-3)/2)`
is also returned; it is accumulated over the five rating levels, so no `[U, I, 5]` array is
materialised: a world needs about 60 bytes per (user, item) cell, outputs included.

Because every exogenous variable has its own stream, changing only the exposure parameters
(`mean_exposure`, `popularity_exposure`, `selection_strength`) with the same key keeps users,
items and ratings identical, and the exposure draws are coupled (same uniforms): common random
numbers for paired comparisons.

The MNAR log of observed ratings is the training split; a missing-at-random test draws
`mar_items_per_user` distinct items per user uniformly (as the Coat and Yahoo! R3 test sets).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

from causalrec_jax.config import SimConfig
from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN, Dataset
from causalrec_jax.errors import ConfigError

# Stream ids for `jax.random.fold_in`: one per exogenous variable, so changing how one is used
# never shifts the draws of another. Later modules (the dynamic environment) use ids >= 16.
STREAM_USERS = 0
STREAM_ITEMS = 1
STREAM_POPULARITY = 2
STREAM_RATINGS = 3
STREAM_EXPOSURE = 4
STREAM_MAR = 5

RATING_MIN = 1
RATING_MAX = 5
_RATING_MID = 3.0
_RATING_HALF_RANGE = 2.0
_CALIBRATION_ITERATIONS = 60


@dataclasses.dataclass(frozen=True)
class WorldSizes:
    """Static sizes of the world (hashable; a static argument under `jax.jit`).

    Attributes:
        n_users: number of users.
        n_items: number of items.
        latent_dim: dimension `d` of the user and item factors.
        mar_items_per_user: items per user in the missing-at-random test sample.
    """

    n_users: int = 1000
    n_items: int = 500
    latent_dim: int = 8
    mar_items_per_user: int = 10

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "latent_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"key 'sim.{name}': got {getattr(self, name)}, expected >= 1")
        if not 0 <= self.mar_items_per_user <= self.n_items:
            raise ConfigError(
                f"key 'sim.mar_items_per_user': got {self.mar_items_per_user}, expected "
                f"0..n_items ({self.n_items})"
            )

    @classmethod
    def from_config(cls, config: SimConfig) -> WorldSizes:
        """The static part of a `SimConfig`."""
        return cls(
            n_users=config.n_users,
            n_items=config.n_items,
            latent_dim=config.latent_dim,
            mar_items_per_user=config.mar_items_per_user,
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class WorldParams:
    """Dynamic numbers of the world (a pytree: `jax.vmap` over it to sweep a parameter).

    Attributes:
        popularity_sigma: strength of the popularity confounder, `sigma_p`: log popularity is
            `sigma_p * z_i` with `z_i ~ N(0, 1)` (0 makes every item equally popular).
        quality_effect: effect of log popularity on relevance logits, `gamma`.
        relevance_temperature: divides the factor dot product, `tau`.
        relevance_offset: constant added to relevance logits, `c0`.
        rating_noise: standard deviation of the latent rating noise, `sigma_y`.
        mean_exposure: target mean propensity `m` in (0, 1).
        popularity_exposure: effect of log popularity on exposure logits, `alpha` (the
            exponent of the power law `propensity ~ popularity ** alpha`).
        selection_strength: effect of the centred rating `(Y - 3) / 2` on exposure logits, `s`.
    """

    popularity_sigma: jax.typing.ArrayLike = 1.0
    quality_effect: jax.typing.ArrayLike = 0.5
    relevance_temperature: jax.typing.ArrayLike = 1.0
    relevance_offset: jax.typing.ArrayLike = 0.0
    rating_noise: jax.typing.ArrayLike = 0.5
    mean_exposure: jax.typing.ArrayLike = 0.05
    popularity_exposure: jax.typing.ArrayLike = 1.0
    selection_strength: jax.typing.ArrayLike = 1.0

    @classmethod
    def from_config(cls, config: SimConfig) -> WorldParams:
        """The dynamic part of a `SimConfig`, checked for values the model cannot take."""
        if not 0.0 < config.mean_exposure < 1.0:
            raise ConfigError(
                f"key 'sim.mean_exposure': got {config.mean_exposure}, expected a number in (0, 1)"
            )
        for name in ("popularity_sigma", "rating_noise"):
            if getattr(config, name) < 0:
                raise ConfigError(f"key 'sim.{name}': got {getattr(config, name)}, expected >= 0")
        if config.relevance_temperature <= 0:
            raise ConfigError(
                f"key 'sim.relevance_temperature': got {config.relevance_temperature}, expected > 0"
            )
        return cls(
            popularity_sigma=config.popularity_sigma,
            quality_effect=config.quality_effect,
            relevance_temperature=config.relevance_temperature,
            relevance_offset=config.relevance_offset,
            rating_noise=config.rating_noise,
            mean_exposure=config.mean_exposure,
            popularity_exposure=config.popularity_exposure,
            selection_strength=config.selection_strength,
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """Everything the simulator knows and a learner does not.

    Attributes:
        user_factors: `[n_users, d]` user taste `theta_u`.
        item_factors: `[n_items, d]` item attributes `beta_i`.
        item_popularity: `[n_items]` log-normal popularity (the confounder).
        standardized_log_popularity: `[n_items]` `z_i ~ N(0, 1)`, with
            `log(popularity_i) = sigma_p * z_i`.
        relevance: `[n_users, n_items]` true P(relevant), `r_ui`.
        expected_rating: `[n_users, n_items]` mean of the rating distribution, `E[Y_ui]`.
        ratings: `[n_users, n_items]` int32 realised potential ratings `Y_ui` in 1..5.
        propensity: `[n_users, n_items]` P(O=1 | u, i, Y_ui) given the realised rating.
        marginal_propensity: `[n_users, n_items]` P(O=1 | u, i), rating integrated out.
        observed: `[n_users, n_items]` bool exposure draw `O_ui`.
        exposure_base: `[]` calibrated exposure logit offset `b`.
    """

    user_factors: jax.Array
    item_factors: jax.Array
    item_popularity: jax.Array
    standardized_log_popularity: jax.Array
    relevance: jax.Array
    expected_rating: jax.Array
    ratings: jax.Array
    propensity: jax.Array
    marginal_propensity: jax.Array
    observed: jax.Array
    exposure_base: jax.Array


def calibrate_base(logits: jax.Array, target_mean: jax.typing.ArrayLike) -> jax.Array:
    """Offset `b` with `mean(sigmoid(b + logits)) == target_mean`, by bisection (jit-able).

    The mean is increasing in `b`, and with `M = max|logits|` the bracket
    `[logit(m) - M, logit(m) + M]` contains the root, so bisection converges to float precision.

    Args:
        logits: `[...]` exposure logits without the offset.
        target_mean: `[]` target mean propensity in (0, 1).

    Returns:
        `[]` the offset `b`.
    """
    centre = jax.scipy.special.logit(jnp.asarray(target_mean, logits.dtype))
    spread = jnp.max(jnp.abs(logits)) + 1.0

    def bisect(_, bracket):
        low, high = bracket
        middle = 0.5 * (low + high)
        too_high = jnp.mean(jax.nn.sigmoid(middle + logits)) > target_mean
        return jnp.where(too_high, low, middle), jnp.where(too_high, middle, high)

    low, high = jax.lax.fori_loop(
        0, _CALIBRATION_ITERATIONS, bisect, (centre - spread, centre + spread)
    )
    return 0.5 * (low + high)


def rating_probabilities(mean: jax.Array, noise: jax.typing.ArrayLike) -> jax.Array:
    """P(Y = k) for k = 1..5 under the ordered probit `Y = clip(round(mean + noise * eps))`.

    Args:
        mean: `[...]` latent rating mean `1 + 4 r`.
        noise: `[]` latent rating noise `sigma_y` (0 gives a point mass).

    Returns:
        `[..., 5]` probabilities of the ratings 1..5.
    """
    thresholds = jnp.arange(RATING_MIN, RATING_MAX, dtype=mean.dtype) + 0.5  # 1.5 .. 4.5
    scale = jnp.maximum(noise, 1e-6)  # sigma_y = 0 is a step function, not a NaN
    below = norm.cdf((thresholds - mean[..., None]) / scale)
    cumulative = jnp.concatenate(
        [jnp.zeros_like(below[..., :1]), below, jnp.ones_like(below[..., :1])], axis=-1
    )
    return jnp.diff(cumulative, axis=-1)


def sample_exposure(key: jax.Array, propensity: jax.Array) -> jax.Array:
    """Draws which entries are observed: `O ~ Bernoulli(propensity)`.

    Args:
        key: a `jax.random` key.
        propensity: `[...]` P(observed) of each entry.

    Returns:
        `[...]` bool exposure indicators.
    """
    return jax.random.bernoulli(key, propensity)


def mar_sample(key: jax.Array, n_users: int, n_items: int, per_user: int) -> jax.Array:
    """Missing-at-random test items: `per_user` distinct items per user, uniformly at random.

    The `per_user` largest of i.i.d. uniform scores are a uniform subset without replacement.

    Args:
        key: a `jax.random` key.
        n_users: number of users (static).
        n_items: number of items (static).
        per_user: items per user (static), at most `n_items`.

    Returns:
        `[n_users, per_user]` int32 item ids, increasing within each row.
    """
    if not 0 <= per_user <= n_items:
        raise ConfigError(f"mar_sample: per_user={per_user} must be in 0..n_items ({n_items})")
    scores = jax.random.uniform(key, (n_users, n_items))
    _, items = jax.lax.top_k(scores, per_user)
    return jnp.sort(items, axis=-1).astype(jnp.int32)


def make_world(key: jax.Array, sizes: WorldSizes, params: WorldParams) -> GroundTruth:
    """Draws a world from the structural causal model in the module docstring.

    Pure and jit-able with `sizes` static: `jax.jit(make_world, static_argnums=1)`.

    Args:
        key: a `jax.random` key; each exogenous variable uses `fold_in(key, STREAM_*)`.
        sizes: static sizes.
        params: dynamic parameters.

    Returns:
        The `GroundTruth` of the world.
    """
    n_users, n_items, dim = sizes.n_users, sizes.n_items, sizes.latent_dim
    factor_scale = dim**-0.25  # makes theta_u . beta_i have unit variance
    user_factors = factor_scale * jax.random.normal(
        jax.random.fold_in(key, STREAM_USERS), (n_users, dim)
    )
    item_factors = factor_scale * jax.random.normal(
        jax.random.fold_in(key, STREAM_ITEMS), (n_items, dim)
    )
    z = jax.random.normal(jax.random.fold_in(key, STREAM_POPULARITY), (n_items,))
    log_popularity = params.popularity_sigma * z  # the confounder; sigma_p is its strength
    item_popularity = jnp.exp(log_popularity)

    affinity = user_factors @ item_factors.T
    relevance = jax.nn.sigmoid(
        affinity / params.relevance_temperature
        + params.quality_effect * log_popularity[None, :]
        + params.relevance_offset
    )
    latent_mean = RATING_MIN + (RATING_MAX - RATING_MIN) * relevance
    rating_noise = jax.random.normal(jax.random.fold_in(key, STREAM_RATINGS), (n_users, n_items))
    ratings = jnp.clip(
        jnp.floor(latent_mean + params.rating_noise * rating_noise + 0.5), RATING_MIN, RATING_MAX
    ).astype(jnp.int32)

    # Exposure logits without the offset: popularity (Yang et al.) + self-selection (Marlin).
    popularity_logit = params.popularity_exposure * log_popularity[None, :]
    selection_logit = params.selection_strength * (ratings - _RATING_MID) / _RATING_HALF_RANGE
    exposure_base = calibrate_base(popularity_logit + selection_logit, params.mean_exposure)
    propensity = jax.nn.sigmoid(exposure_base + popularity_logit + selection_logit)

    # E[Y] and P(O=1 | u, i) as sums over the five rating levels, accumulated level by level
    # into [n_users, n_items] arrays (never a [n_users, n_items, 5] one). With C_k = P(Y <= k),
    # P(Y = k) = C_k - C_{k-1}; summing by parts, E[Y] = 5 - sum_{k<5} C_k and
    # P(O=1 | u, i) = pi(5) - sum_{k<5} C_k (pi(k+1) - pi(k)), pi(k) the propensity given Y = k.
    # C_k via `lax.erf` (absolute error ~1e-7) rather than `norm.cdf`, whose tail branches XLA
    # materialises as separate [n_users, n_items] arrays; this way each sum is one fused pass.
    erf_scale = jnp.maximum(params.rating_noise, 1e-6) * np.sqrt(2.0)  # sigma_y = 0: a step

    def propensity_given(rating):
        selection = params.selection_strength * (rating - _RATING_MID) / _RATING_HALF_RANGE
        return jax.nn.sigmoid(exposure_base + popularity_logit + selection)

    expected_rating = jnp.full_like(latent_mean, RATING_MAX)
    marginal_propensity = propensity_given(RATING_MAX)
    for rating in range(RATING_MIN, RATING_MAX):
        at_most = 0.5 + 0.5 * jax.lax.erf((rating + 0.5 - latent_mean) / erf_scale)
        expected_rating = expected_rating - at_most
        marginal_propensity = marginal_propensity - at_most * (
            propensity_given(rating + 1) - propensity_given(rating)
        )

    observed = sample_exposure(jax.random.fold_in(key, STREAM_EXPOSURE), propensity)
    return GroundTruth(
        user_factors=user_factors,
        item_factors=item_factors,
        item_popularity=item_popularity,
        standardized_log_popularity=z,
        relevance=relevance,
        expected_rating=expected_rating,
        ratings=ratings,
        propensity=propensity,
        marginal_propensity=marginal_propensity,
        observed=observed,
        exposure_base=exposure_base,
    )


@functools.partial(jax.jit, static_argnums=1)
def _world_and_mar(
    key: jax.Array, sizes: WorldSizes, params: WorldParams
) -> tuple[GroundTruth, jax.Array]:
    truth = make_world(key, sizes, params)
    mar_items = mar_sample(
        jax.random.fold_in(key, STREAM_MAR), sizes.n_users, sizes.n_items, sizes.mar_items_per_user
    )
    return truth, mar_items


def world_to_dataset(truth: GroundTruth, mar_items: jax.Array) -> Dataset:
    """The learner's view: observed MNAR ratings to train on, a MAR sample to test on.

    Rows are the observed entries (row-major, `given_split == GIVEN_TRAIN`) followed by the MAR
    sample (user-major, `given_split == GIVEN_TEST`); an entry may appear in both. External ids
    are "1".."n_users" and "1".."n_items".

    Args:
        truth: the world.
        mar_items: `[n_users, per_user]` item ids of the MAR test sample.

    Returns:
        A `Dataset` with `propensity_matrix = truth.propensity` and `meta["format"] ==
        "simulator"`.
    """
    ratings, observed, propensity, mar_items = jax.device_get(
        (truth.ratings, truth.observed, truth.propensity, mar_items)
    )
    n_users, n_items = ratings.shape
    per_user = mar_items.shape[1]
    train_user, train_item = np.nonzero(observed)
    test_user = np.repeat(np.arange(n_users), per_user)
    test_item = np.asarray(mar_items).reshape(-1)
    user = np.concatenate([train_user, test_user]).astype(np.int32)
    item = np.concatenate([train_item, test_item]).astype(np.int32)
    given_split = np.concatenate(
        [np.full(len(train_user), GIVEN_TRAIN), np.full(len(test_user), GIVEN_TEST)]
    ).astype(np.int8)
    return Dataset(
        user=user,
        item=item,
        rating=ratings[user, item].astype(np.float32),
        user_ids=np.arange(1, n_users + 1).astype(str).astype(object),
        item_ids=np.arange(1, n_items + 1).astype(str).astype(object),
        given_split=given_split,
        propensity_matrix=np.asarray(propensity, dtype=np.float32),
        meta={
            "name": "simulator",
            "format": "simulator",
            "implicit": False,
            "rating_scale": (float(RATING_MIN), float(RATING_MAX)),
            "mnar_train_mar_test": True,
            "mar_items_per_user": int(per_user),
        },
    )


def simulate_dataset(config: SimConfig) -> tuple[Dataset, GroundTruth]:
    """The `simulator` data format: a world drawn from `config`, as a Dataset and its truth.

    Args:
        config: the `[sim]` section; `config.seed` makes the key.

    Returns:
        The dataset (MNAR train rows, MAR test rows) and the world's `GroundTruth`.
    """
    sizes = WorldSizes.from_config(config)
    params = WorldParams.from_config(config)
    truth, mar_items = _world_and_mar(jax.random.key(config.seed), sizes, params)
    dataset = world_to_dataset(truth, mar_items)
    return dataset.with_meta(seed=config.seed), truth
