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

Exogenous noise (from `streams.derive(key, streams.World.*)`, one stream per variable)::

    z_i        ~ N(0, 1)                          standardized log popularity   (World.POPULARITY)
    theta_u    ~ N(0, I_d / sqrt(d))              user taste                    (World.USERS)
    beta_i     ~ N(0, I_d / sqrt(d))              item attributes               (World.ITEMS)
    eps_ui     ~ N(0, 1)                          rating noise                  (World.CELLS)
    u_ui       ~ U(0, 1)                          exposure noise                (World.CELLS)

The cell noise is a function of `(key, u, i)` alone: user `u` has the key
`k_u = fold_in(fold_in(key, World.CELLS), u)`, and the two 32-bit words of the Threefry-2x32
hash of counter `(i, 0)` under `k_u` give `eps_ui` (first word) and `u_ui` (second word). Any
block of users can therefore be generated on its own and gets the same draws as in the whole
matrix. The MAR test items of user `u` are drawn likewise under
`fold_in(fold_in(key, World.MAR), u)`.

Structural equations (sigma_p = popularity_sigma, gamma = quality_effect, tau =
relevance_temperature, c0 = relevance_offset, sigma_y = rating_noise, alpha =
popularity_exposure, s = selection_strength, m = mean_exposure)::

    p_i    = sigma_p * z_i                                                   log popularity_i
    popularity_i = exp(p_i)                                                  (log-normal)
    r_ui   = sigmoid(theta_u . beta_i / tau + gamma * p_i + c0)              P(relevant)
    Y*_ui  = 1 + 4 r_ui + sigma_y * eps_ui
    Y_ui   = clip(round(Y*_ui), 1, 5)                                        (ordered probit)
    E[Y_ui] = 1 + sum_{k=1..4} Phi((1 + 4 r_ui - k - 1/2) / sigma_y)
    pi_ui  = sigmoid(b + alpha * p_i + s * (Y_ui - 3) / 2 + s_{Y_ui})       P(O=1 | u, i, Y_ui)
    O_ui   = 1[u_ui < pi_ui]                                                 (Bernoulli(pi_ui))

`b` is calibrated (bisection, jit-able) so that `mean_ui pi_ui = m`. The exposure logit
takes only five values per item (one per rating level), so the mean is
`sum_{i,k} n_ik sigmoid(b + alpha p_i + s (k-3)/2) / (n_users n_items)` with `n_ik` the number
of users whose rating of item `i` is `k`; bisection runs on this `[5, n_items]` table. At small
propensities `pi_ui ~ popularity_i ** alpha` (Yang et al.'s power law with exponent alpha), and
`exp(s)` is the odds ratio of observing a 5 rather than a 3 (Marlin & Zemel's rating-dependent
missingness). Both popularity effects are per unit of log popularity, so `sigma_p` scales the
confounding: the spread of popularity across items, and with it how much popularity moves
relevance (sd `gamma sigma_p` on the logit) and exposure (sd `alpha sigma_p`). At `sigma_p = 0`
every item is equally popular and exposure depends on the item only through its rating.
The marginal propensity `P(O=1 | u, i) = sum_k P(Y_ui = k) sigmoid(b + alpha p_i + s (k-3)/2)`
is also returned; it is accumulated over the five rating levels, so no `[U, I, 5]` array is
materialised: a world needs about 60 bytes per (user, item) cell, outputs included.

Because no two exogenous variables share draws, changing only the exposure parameters
(`mean_exposure`, `popularity_exposure`, `selection_strength`) with the same key keeps users,
items and ratings identical, and the exposure draws are coupled (same uniforms): common random
numbers for paired comparisons.

(`s_k` = `selection_by_rating[k - 1]`, zeros by default.)

The MNAR log of observed ratings is the training split; a missing-at-random test draws
`mar_items_per_user` distinct items per user uniformly (as the Coat and Yahoo! R3 test sets),
for every user or, with `sim.mar_users = n`, for users 1..n only (users are exchangeable, so
they are a uniform subset; Yahoo! R3 has MAR ratings for 5,400 of its 15,400 users).

Large worlds. `simulate_dataset` builds the dense `GroundTruth` (about 60 bytes per cell) when
`n_users * n_items <= SimConfig.max_dense_cells`; a larger world (say 100,000 x 10,000) is
generated by `simulate_chunked`, which walks over fixed-size blocks of users (the last one
padded), never holds an `[n_users, n_items]` array, and moves only the observed entries and
the MAR sample of each block to the host. It returns a `SparseGroundTruth` (factors,
popularity, exposure base, key and parameters) from which `truth_block` recomputes the dense
quantities of any users on demand, and a `Dataset` whose `propensity_matrix` is None. Its
exposure base is calibrated on the rating counts of a seeded subsample of `calibration_users`
users (all users when there are no more than that, which makes both paths give the same
dataset); `meta["realised_mean_exposure"]` is the mean propensity over all cells (on either
path) and `meta["observed_fraction"]` the fraction of cells observed.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

from causalrec_jax import streams
from causalrec_jax.config import SimConfig
from causalrec_jax.data.dataset import GIVEN_TEST, GIVEN_TRAIN, Dataset
from causalrec_jax.errors import ConfigError
from causalrec_jax.eval.truth import TruthRows

RATING_MIN = 1
RATING_MAX = 5
_RATING_MID = 3.0
_RATING_HALF_RANGE = 2.0
_CALIBRATION_ITERATIONS = 60
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = 0x1BD11BDA
# Cells per block of users in `simulate_chunked` (about 30 bytes each while a block is live).
_BLOCK_CELLS = 1 << 22
# Entries per group in the two-level search for observed cells (`_sparse_nonzero`).
_NONZERO_GROUP = 16
_BLOCK_FIELDS = (
    "relevance", "expected_rating", "ratings", "propensity", "marginal_propensity", "observed"
)


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
        selection_by_rating: `[5]` log-odds added to the exposure logit of a cell rated 1..5,
            `s_k` (Marlin & Zemel's rating-dependent missingness in any shape, e.g. Yahoo! R3's
            U: people rate what they love and, less, what they hate); zeros by default.
    """

    popularity_sigma: jax.typing.ArrayLike = 1.0
    quality_effect: jax.typing.ArrayLike = 0.5
    relevance_temperature: jax.typing.ArrayLike = 1.0
    relevance_offset: jax.typing.ArrayLike = 0.0
    rating_noise: jax.typing.ArrayLike = 0.5
    mean_exposure: jax.typing.ArrayLike = 0.05
    popularity_exposure: jax.typing.ArrayLike = 1.0
    selection_strength: jax.typing.ArrayLike = 1.0
    selection_by_rating: jax.typing.ArrayLike = (0.0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def from_config(cls, config: SimConfig) -> WorldParams:
        """The dynamic part of a `SimConfig` (whose values the config already checked)."""
        return cls(
            popularity_sigma=config.popularity_sigma,
            quality_effect=config.quality_effect,
            relevance_temperature=config.relevance_temperature,
            relevance_offset=config.relevance_offset,
            rating_noise=config.rating_noise,
            mean_exposure=config.mean_exposure,
            popularity_exposure=config.popularity_exposure,
            selection_strength=config.selection_strength,
            selection_by_rating=jnp.asarray(config.selection_by_rating, jnp.float32),
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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseGroundTruth:
    """The compact ground truth of a world too large for dense matrices (`simulate_chunked`).

    Holds what the dense matrices are functions of; `truth_block(truth, None, users)`
    recomputes the rows of any users (relevance, expected rating, realised ratings,
    propensities, exposure) with the equations and noise of `make_world`: the same rows as the
    dense `GroundTruth` whenever the exposure base is the same (`n_users <= calibration_users`).
    A pytree: `jax.jit` functions can take it.

    Attributes:
        key: the world's `jax.random` key (the cell noise is redrawn from it).
        user_factors: `[n_users, d]` user taste `theta_u`.
        item_factors: `[n_items, d]` item attributes `beta_i`.
        item_popularity: `[n_items]` log-normal popularity (the confounder).
        standardized_log_popularity: `[n_items]` `z_i ~ N(0, 1)`.
        exposure_base: `[]` calibrated exposure logit offset `b`.
        params: the world's `WorldParams`.
    """

    key: jax.Array
    user_factors: jax.Array
    item_factors: jax.Array
    item_popularity: jax.Array
    standardized_log_popularity: jax.Array
    exposure_base: jax.Array
    params: WorldParams

    @property
    def n_users(self) -> int:
        """Number of users."""
        return self.user_factors.shape[0]

    @property
    def n_items(self) -> int:
        """Number of items."""
        return self.item_factors.shape[0]


def calibrate_base(
    logits: jax.Array,
    target_mean: jax.typing.ArrayLike,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Offset `b` with `mean(sigmoid(b + logits)) == target_mean`, by bisection (jit-able).

    The mean is increasing in `b`, and with `M = max|logits|` the bracket
    `[logit(m) - M, logit(m) + M]` contains the root, so bisection converges to float precision.

    Args:
        logits: `[...]` exposure logits without the offset.
        target_mean: `[]` target mean propensity in (0, 1).
        weights: `[...]` optional non-negative weights (counts) of the logits; the mean is
            then `sum(weights * sigmoid(b + logits)) / sum(weights)`.

    Returns:
        `[]` the offset `b`.
    """
    centre = jax.scipy.special.logit(jnp.asarray(target_mean, logits.dtype))
    spread = jnp.max(jnp.abs(logits)) + 1.0
    if weights is None:

        def mean_propensity(base):
            return jnp.mean(jax.nn.sigmoid(base + logits))

    else:
        weights = jnp.asarray(weights, logits.dtype)
        total = jnp.sum(weights)

        def mean_propensity(base):
            return jnp.sum(weights * jax.nn.sigmoid(base + logits)) / total

    def bisect(_, bracket):
        low, high = bracket
        middle = 0.5 * (low + high)
        too_high = mean_propensity(middle) > target_mean
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

    (The world's own exposure uses the per-cell uniforms of the module docstring.)

    Args:
        key: a `jax.random` key.
        propensity: `[...]` P(observed) of each entry.

    Returns:
        `[...]` bool exposure indicators.
    """
    return jax.random.bernoulli(key, propensity)


def _mar_rows(key: jax.Array, users: jax.Array, n_items: int, per_user: int) -> jax.Array:
    """`per_user` distinct uniform items for each of `users`, under `fold_in(key, user)`.

    Floyd's algorithm: for `j = 0..per_user-1`, draw `t` uniform on `0..n_items-per_user+j`
    and take `t`, or `n_items-per_user+j` when `t` is already taken; the result is a uniform
    subset without replacement, at a cost independent of `n_items`.

    Returns:
        `[len(users), per_user]` int32 item ids, increasing within each row.
    """
    first = n_items - per_user
    bounds = jnp.arange(first + 1, n_items + 1, dtype=jnp.int32)  # draw j: 0..first+j

    def one_user(user):
        draws = jax.random.randint(streams.index(key, user), (per_user,), 0, bounds)

        def take(j, chosen):
            pick = jnp.where(jnp.any(chosen == draws[j]), first + j, draws[j])
            return chosen.at[j].set(pick)

        chosen = jax.lax.fori_loop(0, per_user, take, jnp.full((per_user,), -1, jnp.int32))
        return jnp.sort(chosen)

    return jax.vmap(one_user)(users).astype(jnp.int32)


def mar_sample(key: jax.Array, n_users: int, n_items: int, per_user: int) -> jax.Array:
    """Missing-at-random test items: `per_user` distinct items per user, uniformly at random.

    User `u`'s items are drawn under `fold_in(key, u)` (Floyd's algorithm), so a user's sample
    does not depend on how many users are drawn with it.

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
    return _mar_rows(key, jnp.arange(n_users, dtype=jnp.int32), n_items, per_user)


def _threefry2x32(key0, key1, count0, count1):
    """The Threefry-2x32 hash (20 rounds), written out so that XLA fuses it into one loop.

    Gives the values of `jax.extend.random.threefry_2x32`, whose CPU lowering is a rolled loop
    that writes the whole state to memory every four rounds (about 3x slower here). Arguments
    are broadcast uint32 arrays; returns the two output words.
    """
    keys = (key0, key1, key0 ^ key1 ^ np.uint32(_THREEFRY_PARITY))
    x0, x1 = count0 + keys[0], count1 + keys[1]
    for step in range(5):
        for rotation in _THREEFRY_ROTATIONS[step % 2]:
            x0 = x0 + x1
            x1 = (x1 << np.uint32(rotation)) | (x1 >> np.uint32(32 - rotation))
            x1 = x0 ^ x1
        x0 = x0 + keys[(step + 1) % 3]
        x1 = x1 + keys[(step + 2) % 3] + np.uint32(step + 1)
    return x0, x1


def _unit_uniform(bits: jax.Array) -> jax.Array:
    """U[0, 1) float32 from the top 23 bits of uint32 `bits`."""
    mantissa = (bits >> np.uint32(9)) | np.uint32(0x3F800000)  # a float in [1, 2)
    return jax.lax.bitcast_convert_type(mantissa, jnp.float32) - 1.0


@functools.partial(jax.jit, static_argnums=2)
def cell_noise(key: jax.Array, users: jax.Array, n_items: int) -> tuple[jax.Array, jax.Array]:
    """The per-cell noise of `users`' rows: rating noise `eps ~ N(0, 1)`, uniforms `u ~ U(0, 1)`.

    A function of `(key, user, item)` only (see the module docstring), so any block of users
    gets the draws those users have in the whole world.

    Args:
        key: the world's `jax.random` key.
        users: `[B]` int user ids.
        n_items: number of items (static).

    Returns:
        `([B, n_items] eps, [B, n_items] u)`, both float32.
    """
    stream = streams.derive(key, streams.World.CELLS)
    user_keys = jax.random.key_data(
        jax.vmap(lambda user: streams.index(stream, user))(users)
    ).reshape(users.shape[0], -1, 2)
    words = user_keys[:, 0]
    for extra in range(1, user_keys.shape[1]):  # keys of more than two words (rbg): folded
        words = words ^ user_keys[:, extra]
    items = jax.lax.iota(jnp.uint32, n_items)[None, :]
    first, second = _threefry2x32(words[:, :1], words[:, 1:], items, jnp.zeros_like(items))
    # eps = sqrt(2) erfinv(v) with v uniform on (-1, 1), as `jax.random.normal`.
    above_minus_one = np.nextafter(np.float32(-1.0), np.float32(0.0))
    symmetric = jnp.maximum(above_minus_one, 2.0 * _unit_uniform(first) - 1.0)
    eps = np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(symmetric)
    return eps, _unit_uniform(second)


def _exogenous(key: jax.Array, sizes: WorldSizes, params: WorldParams):
    """User and item factors, standardized and scaled log popularity."""
    factor_scale = sizes.latent_dim**-0.25  # makes theta_u . beta_i have unit variance
    user_factors = factor_scale * jax.random.normal(
        streams.derive(key, streams.World.USERS), (sizes.n_users, sizes.latent_dim)
    )
    item_factors = factor_scale * jax.random.normal(
        streams.derive(key, streams.World.ITEMS), (sizes.n_items, sizes.latent_dim)
    )
    z = jax.random.normal(streams.derive(key, streams.World.POPULARITY), (sizes.n_items,))
    log_popularity = params.popularity_sigma * z  # the confounder; sigma_p is its strength
    return user_factors, item_factors, z, log_popularity


def _cells(key, params, user_factors, users, item_factors, log_popularity):
    """Relevance, latent rating mean, realised ratings and exposure uniforms of `users`' rows.

    `user_factors` are the rows of `users`; the one place the per-cell equations live, so
    the dense and the chunked worlds compute them alike.
    """
    affinity = user_factors @ item_factors.T
    relevance = jax.nn.sigmoid(
        affinity / params.relevance_temperature
        + params.quality_effect * log_popularity[None, :]
        + params.relevance_offset
    )
    latent_mean = RATING_MIN + (RATING_MAX - RATING_MIN) * relevance
    eps, uniform = cell_noise(key, users, item_factors.shape[0])
    ratings = jnp.clip(
        jnp.floor(latent_mean + params.rating_noise * eps + 0.5), RATING_MIN, RATING_MAX
    ).astype(jnp.int32)
    return relevance, latent_mean, ratings, uniform


def _level_logits(params, log_popularity):
    """`[5, n_items]` exposure logits without the offset, per rating level and item.

    Popularity (Yang et al.) plus self-selection (Marlin & Zemel): a cell's logit depends on
    its item and its rating only.
    """
    levels = jnp.arange(RATING_MIN, RATING_MAX + 1, dtype=jnp.float32)[:, None]
    popularity_logit = params.popularity_exposure * log_popularity[None, :]
    selection_logit = params.selection_strength * (levels - _RATING_MID) / _RATING_HALF_RANGE
    by_rating = jnp.asarray(params.selection_by_rating, jnp.float32)[:, None]
    return popularity_logit + selection_logit + by_rating


def _propensity_table(params, log_popularity, exposure_base):
    """`[5, n_items]` P(O=1 | Y = k, item): the propensity of every cell is one of these."""
    return jax.nn.sigmoid(exposure_base + _level_logits(params, log_popularity))


def _lookup(table, ratings):
    """`table[ratings - 1, item]` for `[B, n_items]` ratings 1..5 (0 elsewhere), as selects."""
    values = jnp.zeros(ratings.shape, table.dtype)
    for level in range(RATING_MIN, RATING_MAX + 1):
        values = jnp.where(ratings == level, table[level - RATING_MIN][None, :], values)
    return values


def _rating_counts(ratings: jax.Array) -> jax.Array:
    """`[5, n_items]` int32 number of rows with rating k = 1..5 per item (0 counts nowhere)."""
    return jnp.stack(
        [jnp.sum(ratings == level, axis=0, dtype=jnp.int32)
         for level in range(RATING_MIN, RATING_MAX + 1)]
    )


def _calibrated_base(params, log_popularity, rating_counts):
    """The exposure base for which the mean propensity over the counted cells is `m`.

    The exposure logit of a cell depends on the item and the rating level only, so the mean
    over cells is a weighted mean over the `[5, n_items]` table.
    """
    logits = _level_logits(params, log_popularity)
    return calibrate_base(logits, params.mean_exposure, weights=rating_counts.astype(logits.dtype))


def _rating_sums(params, latent_mean, table):
    """`E[Y_ui]` and `P(O=1 | u, i)` as sums over the five rating levels.

    Accumulated level by level into `[B, n_items]` arrays (never a `[B, n_items, 5]` one).
    With C_k = P(Y <= k), P(Y = k) = C_k - C_{k-1}; summing by parts, E[Y] = 5 - sum_{k<5} C_k
    and P(O=1 | u, i) = pi(5) - sum_{k<5} C_k (pi(k+1) - pi(k)), pi(k) = `table[k - 1]` the
    propensity given Y = k. C_k via `lax.erf` (absolute error ~1e-7) rather than `norm.cdf`,
    whose tail branches XLA materialises as separate arrays; this way each sum is one pass.
    """
    erf_scale = jnp.maximum(params.rating_noise, 1e-6) * np.sqrt(2.0)  # sigma_y = 0: a step
    expected_rating = jnp.full_like(latent_mean, RATING_MAX)
    marginal_propensity = jnp.broadcast_to(table[-1][None, :], latent_mean.shape)
    for rating in range(RATING_MIN, RATING_MAX):
        at_most = 0.5 + 0.5 * jax.lax.erf((rating + 0.5 - latent_mean) / erf_scale)
        expected_rating = expected_rating - at_most
        step = table[rating + 1 - RATING_MIN] - table[rating - RATING_MIN]
        marginal_propensity = marginal_propensity - at_most * step[None, :]
    return expected_rating, marginal_propensity


def make_world(key: jax.Array, sizes: WorldSizes, params: WorldParams) -> GroundTruth:
    """Draws a world from the structural causal model in the module docstring.

    Pure and jit-able with `sizes` static: `jax.jit(make_world, static_argnums=1)`. Needs
    about 60 bytes per (user, item) cell; `simulate_chunked` draws larger worlds.

    Args:
        key: a `jax.random` key; each exogenous variable uses `streams.derive(key, World.*)`.
        sizes: static sizes.
        params: dynamic parameters.

    Returns:
        The `GroundTruth` of the world.
    """
    user_factors, item_factors, z, log_popularity = _exogenous(key, sizes, params)
    users = jnp.arange(sizes.n_users, dtype=jnp.int32)
    relevance, latent_mean, ratings, uniform = _cells(
        key, params, user_factors, users, item_factors, log_popularity
    )
    exposure_base = _calibrated_base(params, log_popularity, _rating_counts(ratings))
    table = _propensity_table(params, log_popularity, exposure_base)
    propensity = _lookup(table, ratings)
    expected_rating, marginal_propensity = _rating_sums(params, latent_mean, table)
    return GroundTruth(
        user_factors=user_factors,
        item_factors=item_factors,
        item_popularity=jnp.exp(log_popularity),
        standardized_log_popularity=z,
        relevance=relevance,
        expected_rating=expected_rating,
        ratings=ratings,
        propensity=propensity,
        marginal_propensity=marginal_propensity,
        observed=uniform < propensity,
        exposure_base=exposure_base,
    )


@jax.jit
def _sparse_rows(truth: SparseGroundTruth, params: WorldParams, users: jax.Array):
    log_popularity = params.popularity_sigma * truth.standardized_log_popularity
    relevance, latent_mean, ratings, uniform = _cells(
        truth.key, params, truth.user_factors[users], users, truth.item_factors, log_popularity
    )
    table = _propensity_table(params, log_popularity, truth.exposure_base)
    propensity = _lookup(table, ratings)
    expected_rating, marginal_propensity = _rating_sums(params, latent_mean, table)
    return {
        "relevance": relevance,
        "expected_rating": expected_rating,
        "ratings": ratings,
        "propensity": propensity,
        "marginal_propensity": marginal_propensity,
        "observed": uniform < propensity,
    }


def truth_block(
    truth: GroundTruth | SparseGroundTruth,
    params: WorldParams | None,
    users: jax.typing.ArrayLike,
) -> dict[str, jax.Array]:
    """The dense ground truth of some users: `[len(users), n_items]` arrays.

    For a dense `GroundTruth` these are its rows; for a `SparseGroundTruth` they are recomputed
    (jitted, one compilation per distinct `len(users)`, so pass fixed-size blocks), equal to the
    rows the dense world of the same key and parameters has.

    Args:
        truth: the world.
        params: the world's parameters, or None for those a `SparseGroundTruth` holds (ignored
            for a dense `GroundTruth`).
        users: `[B]` int user ids.

    Returns:
        A dict with "relevance", "expected_rating", "ratings" (int32), "propensity" (given the
        realised rating), "marginal_propensity" and "observed" (bool).
    """
    users = jnp.asarray(users, dtype=jnp.int32)
    if isinstance(truth, GroundTruth):
        return {name: getattr(truth, name)[users] for name in _BLOCK_FIELDS}
    return _sparse_rows(truth, truth.params if params is None else params, users)


@functools.partial(jax.jit, static_argnums=1)
def _world_and_mar(
    key: jax.Array, sizes: WorldSizes, params: WorldParams
) -> tuple[GroundTruth, jax.Array]:
    truth = make_world(key, sizes, params)
    mar_items = mar_sample(
        streams.derive(key, streams.World.MAR), sizes.n_users, sizes.n_items,
        sizes.mar_items_per_user,
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


_exogenous_jit = jax.jit(_exogenous, static_argnums=1)
_calibrated_base_jit = jax.jit(_calibrated_base)


@jax.jit
def _block_ratings(key, params, user_factors, item_factors, log_popularity, users, n_valid):
    """`[B, n_items]` int8 ratings of a block of users, 0 in the rows past `n_valid`."""
    _, _, ratings, _ = _cells(
        key, params, user_factors[users], users, item_factors, log_popularity
    )
    valid = jnp.arange(users.shape[0]) < n_valid
    return jnp.where(valid[:, None], ratings, 0).astype(jnp.int8)


@jax.jit
def _block_code(key, params, exposure_base, user_factors, item_factors, log_popularity, users,
                n_valid):
    """`[B, n_items]` int8 `rating + 8 * observed` of a block of users (0 past `n_valid`).

    One pass over the cell hash; the consumers (`_block_extract`) read this array rather than
    being fused with the hash, which XLA would then recompute for each of them.
    """
    _, _, ratings, uniform = _cells(
        key, params, user_factors[users], users, item_factors, log_popularity
    )
    table = _propensity_table(params, log_popularity, exposure_base)
    observed = uniform < _lookup(table, ratings)
    valid = (jnp.arange(users.shape[0]) < n_valid)[:, None]
    return jnp.where(valid, ratings + 8 * observed, 0).astype(jnp.int8)


@functools.partial(jax.jit, static_argnames=("n_items", "per_user", "capacity"))
def _block_extract(key, params, exposure_base, log_popularity, code, users, n_valid, *,
                   n_items, per_user, capacity):
    """The observed entries and MAR sample of a block from its `_block_code`.

    Observed cells come back as flat indices into the block (row-major) in a buffer of
    `capacity` entries; `count` above `capacity` means it overflowed.
    """
    ratings = code & 7  # 0 in padding rows, where the propensity lookup gives 0 as well
    table = _propensity_table(params, log_popularity, exposure_base)
    flat, count = _sparse_nonzero(code.reshape(-1) >= 8, capacity)
    mar_items = _mar_rows(streams.derive(key, streams.World.MAR), users, n_items, per_user)
    return {
        "count": count,
        "flat": flat,
        "rating": ratings.reshape(-1)[flat],
        "mar_items": mar_items,
        "mar_rating": jnp.take_along_axis(ratings, mar_items, axis=1),
        "propensity_sum": jnp.sum(jnp.sum(_lookup(table, ratings), axis=1)),
    }


_rating_counts_jit = jax.jit(_rating_counts)


def _sparse_nonzero(mask: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
    """Increasing int32 indices of the True entries of 1-d `mask`, padded to `capacity`.

    Exact when there are at most `capacity` (the padding is arbitrary). For a sparse mask,
    finds the occupied groups of `_NONZERO_GROUP` entries first and then the entries within
    them: `jnp.nonzero` over the whole mask is a cumulative sum plus a scatter over every
    entry, about 10x slower on CPU.

    Returns:
        `([capacity] int32 indices, [] int32 count)`: the count is the number of True entries
        when that is at most `capacity`, else a number above `capacity` (a lower bound).
    """
    size = mask.shape[0]
    if capacity * _NONZERO_GROUP >= size:
        count = jnp.sum(mask, dtype=jnp.int32)
        return jnp.nonzero(mask, size=capacity, fill_value=0)[0].astype(jnp.int32), count
    groups = jnp.pad(mask, (0, -size % _NONZERO_GROUP)).reshape(-1, _NONZERO_GROUP)
    occupied = jnp.any(groups, axis=1)
    n_occupied = jnp.sum(occupied, dtype=jnp.int32)
    (group_index,) = jnp.nonzero(occupied, size=capacity, fill_value=0)
    # Padding slots repeat group 0: blank them so that its entries are not counted twice.
    picked = groups[group_index] & (jnp.arange(capacity) < n_occupied)[:, None]
    (within,) = jnp.nonzero(picked.reshape(-1), size=capacity, fill_value=0)
    index = group_index[within // _NONZERO_GROUP] * _NONZERO_GROUP + within % _NONZERO_GROUP
    # All entries are in `picked` unless more groups than `capacity` are occupied.
    count = jnp.where(n_occupied > capacity, n_occupied, jnp.sum(picked, dtype=jnp.int32))
    return index.astype(jnp.int32), count


def _blocks(users: np.ndarray, block_users: int):
    """`(padded users [block_users] int32, n_valid)` for consecutive blocks of `users`."""
    for start in range(0, len(users), block_users):
        part = users[start:start + block_users]
        padded = np.full(block_users, part[-1], dtype=np.int32)
        padded[: len(part)] = part
        yield padded, len(part)


def _initial_capacity(block_cells: int, mean_exposure: float) -> int:
    """Room for a block's observed entries: the expected count plus a wide margin.

    A block that overflows it is drawn again with room for at least twice its count.
    """
    expected = block_cells * mean_exposure
    capacity = int(1.5 * expected + 8.0 * np.sqrt(expected) + 1024)
    return min(block_cells, -(-capacity // 1024) * 1024)


def simulate_chunked(
    key: jax.Array,
    sizes: WorldSizes,
    params: WorldParams,
    *,
    calibration_users: int = 2000,
    block_users: int | None = None,
) -> tuple[Dataset, SparseGroundTruth]:
    """Draws a world block by block of users, never holding an `[n_users, n_items]` array.

    Same equations and noise as `make_world`, so a world small enough for both gives the same
    dataset as the dense path of `simulate_dataset` when `n_users <= calibration_users` (the
    exposure base is then calibrated on the same cells). Otherwise the base is calibrated on the
    rating counts of `calibration_users` users drawn without replacement under
    `streams.derive(key, World.CALIBRATION)`, and the realised mean propensity over all cells, in
    `meta["realised_mean_exposure"]`, is close to but not exactly `mean_exposure`.

    Args:
        key: a `jax.random` key.
        sizes: static sizes.
        params: dynamic parameters (scalars).
        calibration_users: users whose cells calibrate the exposure base.
        block_users: users per block (default: about 4M cells per block; the last block is
            padded).

    Returns:
        The dataset (MNAR train rows, MAR test rows, `propensity_matrix` None) and the world's
        `SparseGroundTruth`.
    """
    n_users, n_items, per_user = sizes.n_users, sizes.n_items, sizes.mar_items_per_user
    if calibration_users < 1:
        raise ConfigError(f"key 'sim.calibration_users': got {calibration_users}, expected >= 1")
    if block_users is None:
        block_users = _BLOCK_CELLS // n_items
    block_users = int(max(1, min(n_users, block_users)))
    if block_users * n_items >= 2**31:
        raise ConfigError(
            f"simulate_chunked: blocks of {block_users} users x {n_items} items exceed int32 "
            "cell indices; use smaller blocks"
        )
    user_factors, item_factors, z, log_popularity = _exogenous_jit(key, sizes, params)
    world = (key, params)
    arrays = (user_factors, item_factors, log_popularity)

    if n_users <= calibration_users:
        calibration = np.arange(n_users, dtype=np.int32)
    else:
        chosen = jax.random.choice(
            streams.derive(key, streams.World.CALIBRATION), n_users, (calibration_users,),
            replace=False,
        )
        calibration = np.sort(np.asarray(chosen)).astype(np.int32)
    counts = sum(
        _rating_counts_jit(_block_ratings(*world, *arrays, users, n_valid))
        for users, n_valid in _blocks(calibration, min(block_users, len(calibration)))
    )
    exposure_base = _calibrated_base_jit(params, log_popularity, counts)

    capacity = _initial_capacity(block_users * n_items, float(params.mean_exposure))
    code = functools.partial(_block_code, *world, exposure_base, *arrays)
    extract = functools.partial(
        _block_extract, *world, exposure_base, log_popularity, n_items=n_items, per_user=per_user
    )

    def sample(users, n_valid, capacity):
        return extract(code(users, n_valid), users, n_valid, capacity=capacity)

    blocks = list(_blocks(np.arange(n_users, dtype=np.int32), block_users))
    pending = [sample(users, n_valid, capacity) for users, n_valid in blocks]
    train_user, train_item, train_rating, mar_items, mar_rating = [], [], [], [], []
    propensity_sum = 0.0
    for (users, n_valid), result in zip(blocks, pending, strict=True):
        result = jax.device_get(result)
        count, room = int(result["count"]), capacity
        while count > room:  # overflow: `count` is a lower bound; draw the block again
            # A power of two, so that overflowing blocks share few compilations.
            room = min(block_users * n_items, 1 << (2 * count - 1).bit_length())
            result = jax.device_get(sample(users, n_valid, room))
            count = int(result["count"])
        flat = result["flat"][:count]
        train_user.append(users[flat // n_items])
        train_item.append((flat % n_items).astype(np.int32))
        train_rating.append(result["rating"][:count])
        mar_items.append(result["mar_items"][:n_valid])
        mar_rating.append(result["mar_rating"][:n_valid])
        propensity_sum += float(result["propensity_sum"])

    train_user = np.concatenate(train_user)
    test_user = np.repeat(np.arange(n_users, dtype=np.int32), per_user)
    user = np.concatenate([train_user, test_user]).astype(np.int32)
    item = np.concatenate(train_item + [np.concatenate(mar_items).reshape(-1)]).astype(np.int32)
    rating = np.concatenate(
        train_rating + [np.concatenate(mar_rating).reshape(-1)]
    ).astype(np.float32)
    given_split = np.concatenate(
        [np.full(len(train_user), GIVEN_TRAIN), np.full(len(test_user), GIVEN_TEST)]
    ).astype(np.int8)
    cells = n_users * n_items
    dataset = Dataset(
        user=user,
        item=item,
        rating=rating,
        user_ids=np.arange(1, n_users + 1).astype(str).astype(object),
        item_ids=np.arange(1, n_items + 1).astype(str).astype(object),
        given_split=given_split,
        propensity_matrix=None,
        meta={
            "name": "simulator",
            "format": "simulator",
            "implicit": False,
            "rating_scale": (float(RATING_MIN), float(RATING_MAX)),
            "mnar_train_mar_test": True,
            "mar_items_per_user": int(per_user),
            "ground_truth": "sparse",
            "calibration_users": len(calibration),
            "realised_mean_exposure": propensity_sum / cells,
            "observed_fraction": len(train_user) / cells,
        },
    )
    truth = SparseGroundTruth(
        key=key,
        user_factors=user_factors,
        item_factors=item_factors,
        item_popularity=jnp.exp(log_popularity),
        standardized_log_popularity=z,
        exposure_base=exposure_base,
        params=params,
    )
    return dataset, truth


def simulate_dataset(config: SimConfig) -> tuple[Dataset, GroundTruth | SparseGroundTruth]:
    """The `simulator` data format: a world drawn from `config`, as a Dataset and its truth.

    Worlds of at most `config.max_dense_cells` cells get the dense `GroundTruth` and
    `dataset.propensity_matrix`; larger ones are drawn by `simulate_chunked` and get a
    `SparseGroundTruth` (rows on demand with `truth_block`) and `propensity_matrix` None.
    Either way `meta["realised_mean_exposure"]` is the mean propensity over all cells and
    `meta["calibration_users"]` the number of users the exposure base was calibrated on; a
    world that fits both paths gives the same dataset on each when `n_users <=
    config.calibration_users`.

    Args:
        config: the `[sim]` section; `config.seed` makes the key.

    Returns:
        The dataset (MNAR train rows, MAR test rows) and the world's ground truth.
    """
    sizes = WorldSizes.from_config(config)
    params = WorldParams.from_config(config)
    key = jax.random.key(config.seed)
    cells = sizes.n_users * sizes.n_items
    if cells > config.max_dense_cells:
        dataset, truth = simulate_chunked(
            key, sizes, params, calibration_users=config.calibration_users
        )
    else:
        truth, mar_items = _world_and_mar(key, sizes, params)
        dataset = world_to_dataset(truth, mar_items)
        dataset = dataset.with_meta(
            ground_truth="dense",
            calibration_users=sizes.n_users,
            realised_mean_exposure=float(
                np.mean(dataset.propensity_matrix, dtype=np.float64)
            ),
            observed_fraction=float(np.sum(dataset.given_split == GIVEN_TRAIN)) / cells,
        )
    if 0 < config.mar_users < sizes.n_users:
        keep = (dataset.given_split != GIVEN_TEST) | (dataset.user < config.mar_users)
        dataset = dataset.subset(np.flatnonzero(keep)).with_meta(mar_users=config.mar_users)
    return dataset.with_meta(seed=config.seed), truth


@jax.jit
def _truth_rows(truth: GroundTruth | SparseGroundTruth, users: jax.Array):
    rows = truth_block(truth, None, users)
    return rows["relevance"], rows["expected_rating"]


def truth_rows(truth: GroundTruth | SparseGroundTruth) -> TruthRows:
    """The world as `eval.truth` reads it: its shape and a jitted function of its rows
    (`users [b] -> (relevance, expected_rating)`, each `[b, n_items]`)."""
    return TruthRows(
        n_users=int(truth.user_factors.shape[0]), n_items=int(truth.item_factors.shape[0]),
        rows=lambda users: _truth_rows(truth, users),
    )

