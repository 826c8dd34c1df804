r"""A dynamic recommendation environment: slates, position bias, clicks, organic consumption.

Gymnax-style pure functions with explicit keys: `reset(key, params) -> (obs, state)` and
`step(key, state, action, params) -> (obs, state, reward, terminated, truncated, info)`. Static
sizes live in the frozen `EnvSizes`; the world (item catalogue, population, dynamics numbers)
in the `EnvParams` pytree, so `jax.vmap` over it changes a world parameter. One environment is
one user; vmap over keys for a population (`rollout.rollout_users`).

Structural equations for user `u` at step `t` (taste `theta`, satiation `s`, both `[d]`)::

    v_i       = (theta - lambda_s * s) . beta_i / tau + gamma * q_i          utility of item i
    E_k       ~ Bernoulli(e_k)                                               slot k examined
    C_k       = E_k * 1[U_k < sigmoid(v_{a_k} + c)]                          click on slot k
    O         ~ Categorical(softmax(w_1, ..., w_I, 0)),  w_i = kappa v_i + b + gamma_o q_i
                                                              organic consumption (0: none)
    consumed  = {a_k : C_k = 1}  union  {O}
    theta'    = theta + eta * (mean beta of consumed - theta)   (if anything was consumed)
    s'        = rho * s + sum of beta over consumed

`q_i` is the item's log popularity (its quality), `e_k` the examination probability of slot
`k` (position bias), `c` the click offset, `kappa` how much taste drives organic consumption
and `gamma_o` how much more popular items are consumed organically (popular items are bought
anyway): an examined item is clicked when its utility beats a
no-choice option (a binary logit against "no click"), so clicks follow the position-based
model (Richardson et al. 2007; Craswell et al. 2008) under which item-position estimators are
unbiased. The organic choice happens whether or not anything is recommended: it is the
consumption a recommender would get anyway, and the reason recommending has a causal effect
smaller than its click rate (Sato et al., RecSys 2019). Unavailable items (`params.available`
False: an item removed from the catalogue) are never clicked nor consumed organically.

Potential outcomes of each shown slot are explicit in `info`: `consumed_if_shown[k]` (the item
at slot k was consumed, as it was shown: clicked or organic) and `consumed_if_not_shown[k]`
(it would have been consumed had it not been shown: organic only, the same organic draw). So
`info["uplift"] = consumed_if_shown - consumed_if_not_shown` is the realised individual effect.

Exogenous noise: the step key gives one vector of `2K + 1` uniforms laid out as
`[organic, examination_1..K, click_1..K]`; the rollout derives step keys from an environment
stream kept apart from the policy's stream (common random numbers: two policies rolled out with
one key meet the same users and the same noise, so their difference is paired).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from causalrec_jax import streams
from causalrec_jax.errors import ConfigError

INFO_KEYS = (
    "user", "slate", "examined", "clicks", "click_probability", "organic_item",
    "consumed_if_shown", "consumed_if_not_shown", "expected_reward", "log_prob",
)


@dataclasses.dataclass(frozen=True)
class EnvSizes:
    """Static sizes (hashable; a static argument under `jax.jit`).

    Attributes:
        n_users: users in the population (`reset` draws one uniformly).
        n_items: items in the catalogue.
        latent_dim: dimension `d` of tastes and item attributes.
        slate_size: items shown per step, `K`.
        horizon: steps per episode (the rollout's length; `step` itself never truncates).
    """

    n_users: int = 1000
    n_items: int = 1000
    latent_dim: int = 32
    slate_size: int = 10
    horizon: int = 100

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "latent_dim", "slate_size", "horizon"):
            if getattr(self, name) < 1:
                raise ConfigError(f"key env.{name}: got {getattr(self, name)}, expected >= 1")
        if self.slate_size > self.n_items:
            raise ConfigError(
                f"key env.slate_size: got {self.slate_size}, expected <= env.n_items "
                f"({self.n_items}): a slate shows distinct items"
            )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EnvParams:
    """The world: catalogue, population and dynamics (a pytree; vmap over it to intervene).

    Attributes:
        user_factors: `[n_users, d]` initial tastes.
        item_factors: `[n_items, d]` item attributes `beta`.
        item_quality: `[n_items]` log popularity `q` (adds `gamma * q` to utilities).
        available: `[n_items]` bool; False removes an item from the catalogue.
        examination: `[K]` examination probability of each slot (position bias).
        quality_effect: `gamma`.
        temperature: `tau`, divides the taste-attribute dot product.
        click_offset: `c`, the click logit of an examined item is `v + c`.
        organic_offset: `b`, the organic logit of item i is `kappa v_i + b + gamma_o q_i`
            against 0 for "none".
        drift: `eta` in [0, 1], how far taste moves toward what was consumed.
        satiation_decay: `rho` in [0, 1).
        satiation_strength: `lambda_s`, how much satiation lowers similar items' utility.
        organic_quality_effect: `gamma_o`, extra weight of log popularity in organic choice.
        organic_taste_effect: `kappa`, weight of the utility in organic choice.
    """

    user_factors: jax.Array
    item_factors: jax.Array
    item_quality: jax.Array
    available: jax.Array
    examination: jax.Array
    quality_effect: jax.typing.ArrayLike = 0.5
    temperature: jax.typing.ArrayLike = 1.0
    click_offset: jax.typing.ArrayLike = -1.0
    organic_offset: jax.typing.ArrayLike = -8.0
    drift: jax.typing.ArrayLike = 0.05
    satiation_decay: jax.typing.ArrayLike = 0.8
    satiation_strength: jax.typing.ArrayLike = 0.5
    organic_quality_effect: jax.typing.ArrayLike = 0.0
    organic_taste_effect: jax.typing.ArrayLike = 1.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EnvState:
    """One user's state: `user` id, `taste` `[d]`, `satiation` `[d]`, `step` count."""

    user: jax.Array
    taste: jax.Array
    satiation: jax.Array
    step: jax.Array


class Observation(NamedTuple):
    """What a policy sees: the user's id and the step (policies score users by id)."""

    user: jax.Array
    step: jax.Array


def examination_curve(slate_size: int, power: float = 1.0) -> jax.Array:
    """`[K]` examination probabilities `1 / (k + 1) ** power` (k from 0): position bias."""
    return 1.0 / (jnp.arange(slate_size, dtype=jnp.float32) + 1.0) ** power


def make_env_params(
    key: jax.Array,
    sizes: EnvSizes,
    *,
    popularity_sigma: float = 1.0,
    examination_power: float = 1.0,
    **dynamics: Any,
) -> EnvParams:
    """Draws a world: tastes, item attributes and log popularity from `streams.Env` streams.

    Args:
        key: a `jax.random` key.
        sizes: static sizes.
        popularity_sigma: standard deviation of log popularity across items.
        examination_power: position bias exponent of `examination_curve`.
        **dynamics: any scalar field of `EnvParams` (e.g. `click_offset=-0.5`).

    Returns:
        `EnvParams` with `[n_users, d]` and `[n_items, d]` factors of unit-variance dot products.
    """
    scale = sizes.latent_dim**-0.25
    user_factors = scale * jax.random.normal(
        streams.derive(key, streams.Env.USERS), (sizes.n_users, sizes.latent_dim)
    )
    item_factors = scale * jax.random.normal(
        streams.derive(key, streams.Env.ITEMS), (sizes.n_items, sizes.latent_dim)
    )
    quality = popularity_sigma * jax.random.normal(
        streams.derive(key, streams.Env.POPULARITY), (sizes.n_items,)
    )
    unknown = set(dynamics) - {f.name for f in dataclasses.fields(EnvParams)}
    if unknown:
        raise ConfigError(f"make_env_params: unknown world parameter(s) {sorted(unknown)}")
    return EnvParams(
        user_factors=user_factors,
        item_factors=item_factors,
        item_quality=quality,
        available=jnp.ones(sizes.n_items, bool),
        examination=examination_curve(sizes.slate_size, examination_power),
        **{name: jnp.float32(value) for name, value in dynamics.items()},
    )


def sizes_of(params: EnvParams) -> tuple[int, int, int]:
    """`(n_users, n_items, slate_size)` read from the shapes of `params`."""
    return params.user_factors.shape[0], params.item_factors.shape[0], params.examination.shape[0]


def reset_user(user: jax.typing.ArrayLike, params: EnvParams) -> tuple[Observation, EnvState]:
    """Starts an episode for a given `user` (no noise: the user's taste is in `params`)."""
    user = jnp.asarray(user, jnp.int32)
    taste = params.user_factors[user]
    state = EnvState(user=user, taste=taste, satiation=jnp.zeros_like(taste),
                     step=jnp.zeros((), jnp.int32))
    return Observation(user, state.step), state


def reset(key: jax.Array, params: EnvParams) -> tuple[Observation, EnvState]:
    """Starts an episode: a user drawn uniformly from the population under `key`."""
    n_users = params.user_factors.shape[0]
    user = jax.random.randint(streams.derive(key, streams.Env.ARRIVAL), (), 0, n_users)
    return reset_user(user, params)


def utilities(state: EnvState, params: EnvParams) -> jax.Array:
    """`[n_items]` utilities `v_i` of every item for the user in `state`."""
    effective = state.taste - params.satiation_strength * state.satiation
    return (params.item_factors @ effective) / params.temperature + (
        params.quality_effect * params.item_quality
    )


def organic_probabilities(values: jax.Array, params: EnvParams) -> jax.Array:
    """`[n_items]` P(organic consumption = i) from utilities `[n_items]` (the rest is "none")."""
    logits = (params.organic_taste_effect * values + params.organic_offset
              + params.organic_quality_effect * params.item_quality)
    logits = jnp.where(params.available, logits, -jnp.inf)
    normaliser = jnp.logaddexp(0.0, jax.nn.logsumexp(logits))
    return jnp.exp(logits - normaliser)


def click_probabilities(values: jax.Array, slate: jax.Array, params: EnvParams) -> jax.Array:
    """`[K]` P(click on slot k) = examination_k * sigmoid(v_{a_k} + c) (0 if unavailable)."""
    attraction = jax.nn.sigmoid(values[slate] + params.click_offset)
    return params.examination * attraction * params.available[slate]


def true_uplift(state: EnvState, params: EnvParams) -> jax.Array:
    """`[n_items]` effect on consumption of showing each item at a uniformly random slot.

    `mean_k(e_k) * sigmoid(v_i + c) * (1 - P(organic = i))`: showing item `i` adds a click
    unless the user would have consumed it organically anyway (independent noise streams).
    """
    values = utilities(state, params)
    attraction = jax.nn.sigmoid(values + params.click_offset) * params.available
    organic = organic_probabilities(values, params)
    return jnp.mean(params.examination) * attraction * (1.0 - organic)


def _inclusive_cumsum(values: jax.Array) -> jax.Array:
    """Cumulative sums along the last axis as a product with a triangular matrix.

    For the short rows used here a matrix product is far faster on CPU than `jnp.cumsum`
    (which XLA lowers to a windowed reduction).
    """
    n = values.shape[-1]
    return values @ jnp.triu(jnp.ones((n, n), values.dtype))


def _organic_weights(state: EnvState, params: EnvParams) -> jax.Array:
    """Unnormalised organic weights `exp(kappa v_i + b + gamma_o q_i)` ("none" has weight 1).

    One matrix-vector product straight into the logits (the taste scaled by `kappa / tau`
    and the per-item constant folded), one exponential per item, no max-shift: logits are
    capped at 60 (a probability within 1e-26 of one) so float32 cannot overflow. Unavailable
    items get weight 0.
    """
    effective = state.taste - params.satiation_strength * state.satiation
    scale = params.organic_taste_effect / params.temperature
    constant = (params.organic_taste_effect * params.quality_effect
                + params.organic_quality_effect) * params.item_quality + params.organic_offset
    logits = params.item_factors @ (scale * effective) + constant
    return jnp.where(params.available, jnp.exp(jnp.minimum(logits, 60.0)), 0.0)


def block_size(n: int) -> int:
    """Entries per block of a two-level search over `n` entries: about sqrt(n).

    A divisor of `n` when one lies within a factor two of sqrt(n): padding a row on every step
    made XLA's CPU draw over 1,000 items 13x slower than over 1,024.
    """
    root = n**0.5
    divisors = [d for d in range(max(1, int(root / 2)), int(2 * root) + 1) if n % d == 0]
    if divisors:
        return min(divisors, key=lambda d: abs(d - root))
    return max(1, int(round(root)))


def sample_categorical(
    uniform: jax.Array, weights: jax.Array, rest: jax.typing.ArrayLike = 0.0
) -> jax.Array:
    """Inverse-CDF draw of an index with probability `weights[i] / (sum(weights) + rest)`.

    Returns -1 for the remaining mass `rest` (e.g. "no consumption"); with `rest = 0` and
    weights summing to one, `weights` are probabilities.

    Two levels (blocks of about sqrt(n) entries, then within the chosen block) so a draw costs
    one pass over the row plus two short cumulative sums: no full cumulative sum is built.
    """
    n = weights.shape[0]
    block = block_size(n)
    n_blocks = -(-n // block)
    padded = weights if n_blocks * block == n else jnp.pad(weights, (0, n_blocks * block - n))
    padded = padded.reshape(n_blocks, block)
    block_totals = padded.sum(axis=1)
    block_cumulative = _inclusive_cumsum(block_totals)
    uniform = uniform * (block_cumulative[-1] + rest)
    chosen = jnp.sum(block_cumulative <= uniform)  # == n_blocks: beyond every item ("none")
    safe = jnp.minimum(chosen, n_blocks - 1)
    within_cumulative = _inclusive_cumsum(padded[safe])
    # The block's start and its inner sums round differently: keep the remainder inside the
    # block's own (inner) total, so a zero-weight entry can never be drawn.
    remainder = jnp.clip(uniform - (block_cumulative[safe] - block_totals[safe]), 0.0,
                         jnp.nextafter(within_cumulative[-1], jnp.float32(0.0)))
    within = jnp.sum(within_cumulative <= remainder)
    index = safe * block + jnp.minimum(within, block - 1)
    valid = (chosen < n_blocks) & (index < n)
    return jnp.where(valid, index, -1).astype(jnp.int32)


def step(
    key: jax.Array,
    state: EnvState,
    action: jax.Array,
    params: EnvParams,
    *,
    log_prob: jax.typing.ArrayLike = 0.0,
) -> tuple[Observation, EnvState, jax.Array, jax.Array, jax.Array, dict[str, jax.Array]]:
    """One step: the user sees the slate `action` `[K]` (item ids), clicks, consumes, moves on.

    Args:
        key: exogenous noise of this step.
        state: the user's state.
        action: `[K]` int item ids, distinct.
        params: the world.
        log_prob: the policy's log probability of `action`, copied into `info` for logging.

    Returns:
        `(obs, state, reward, terminated, truncated, info)`: reward = number of clicks (float);
        terminated is always False (users do not leave); truncated is never set here (the
        rollout's horizon ends the episode). `info` has the keys `INFO_KEYS`, always with the
        same shapes: `[K]` arrays per slot and scalars otherwise.
    """
    slate = jnp.asarray(action, jnp.int32)
    k = slate.shape[0]
    noise = jax.random.uniform(key, (2 * k + 1,))
    organic_item = sample_categorical(noise[0], _organic_weights(state, params), 1.0)
    effective = state.taste - params.satiation_strength * state.satiation
    slate_values = (params.item_factors[slate] @ effective) / params.temperature + (
        params.quality_effect * params.item_quality[slate]
    )
    examined = noise[1:k + 1] < params.examination
    attraction = jax.nn.sigmoid(slate_values + params.click_offset) * params.available[slate]
    clicks = examined & (noise[k + 1:] < attraction)
    click_probability = params.examination * attraction
    organic_hit = slate == organic_item
    consumed_if_shown = clicks | organic_hit

    # The organic item counts once even when it was also clicked.
    organic_extra = (organic_item >= 0) & ~jnp.any(clicks & organic_hit)
    clicked = clicks.astype(jnp.float32)
    consumed_sum = clicked @ params.item_factors[slate] + jnp.where(
        organic_extra, params.item_factors[jnp.maximum(organic_item, 0)], 0.0
    )
    n_consumed = jnp.sum(clicked) + organic_extra
    mean_consumed = consumed_sum / jnp.maximum(n_consumed, 1.0)
    taste = jnp.where(
        n_consumed > 0, state.taste + params.drift * (mean_consumed - state.taste), state.taste
    )
    satiation = params.satiation_decay * state.satiation + consumed_sum
    new_state = EnvState(user=state.user, taste=taste, satiation=satiation, step=state.step + 1)
    reward = jnp.sum(clicks).astype(jnp.float32)
    info = {
        "user": state.user,
        "slate": slate,
        "examined": examined,
        "clicks": clicks,
        "click_probability": click_probability,
        "organic_item": organic_item,
        "consumed_if_shown": consumed_if_shown,
        "consumed_if_not_shown": organic_hit,
        "expected_reward": jnp.sum(click_probability),
        "log_prob": jnp.asarray(log_prob, jnp.float32),
    }
    obs = Observation(state.user, new_state.step)
    return obs, new_state, reward, jnp.zeros((), bool), jnp.zeros((), bool), info
