r"""Slate policies for the dynamic environment, with exact action probabilities for logging.

Every policy here is one `SlatePolicy` pytree read by `slate_policy(params, obs, key) ->
(slate, log_prob)`: with probability `epsilon` the slate is a Plackett–Luce draw from a softmax
over scores, otherwise the deterministic top-K list (optionally shuffled). Special cases:

- `softmax_policy`: Plackett–Luce over `scores / temperature` (`epsilon = 1`);
- `uniform_policy`: Plackett–Luce over equal scores: a uniformly random ordered slate;
- `top_k_policy`: the K best items by score, in order (`epsilon = 0`);
- `epsilon_greedy_policy`: top-K with probability `1 - epsilon`, else a uniform slate.

Scores come from any model of the library (a `[n_users, n_items]` array, e.g. `make_scorers`'
output) or from one row shared by every user (popularity). The softmax is stored as a
cumulative table `[rows, n_items]` (in blocks), so a step never rescores the catalogue: a
Plackett–Luce slate is drawn by successive sampling — i.i.d. candidates from the softmax
(inverse CDF: a block from the row's block ends, then an entry within it), keeping the first K
distinct ones, which is exactly the Plackett–Luce distribution — in rounds of K candidates
until K distinct items are found. This needs about K random numbers per slate instead of the
`n_items` Gumbels of the Gumbel-top-k trick.

Probabilities. `log_prob` is the exact log probability of the ordered slate:
`log(epsilon PL(slate) + (1 - epsilon) P_top(slate))` with
`PL(a_1..a_K) = prod_k p_{a_k} / (1 - sum_{j<k} p_{a_j})`. `slot_probabilities` gives, for each
logged item, its probability of being at each slot (the marginals of the item-position
estimators): exact for the top-K part, for uniform slates (`1 / n_available`) and for the first
slot of a softmax; other slots of a non-uniform softmax have no closed form and are estimated
by Monte Carlo (`n_samples` slates), which the function's result flags.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from causalrec_jax import streams
from causalrec_jax.errors import ConfigError
from causalrec_jax.sim.env import Observation, block_size


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SlatePolicy:
    """A stochastic slate policy (pytree; vmap over a batch of them for interventions).

    Attributes:
        probabilities: `[rows, n_items]` softmax probabilities (`rows` is 1 when every user
            shares the distribution, else `n_users`).
        cdf_blocks: `[rows, n_blocks, block]` their cumulative sums, padded with the total and
            cut into blocks of about sqrt(n_items) entries.
        coarse: `[rows, n_blocks]` the cumulative sum at the end of each block.
        probability_blocks: `[rows, n_blocks, block]` the probabilities in the same blocks
            (padded with zeros); block_mass: `[rows, n_blocks]` their sums.
        top_items: `[rows, K]` the deterministic top-K list of each row.
        epsilon: probability of a softmax slate instead of the top-K list.
        shuffle: static; True shows the top-K list in a uniformly random order.
        flat: static; True when the softmax is uniform over the available items (its slot
            marginals are then exact at every slot).
        mixture: static; False for a pure softmax (`epsilon` is 1), whose steps skip the
            top-K part. Policies stacked for `vmap` must agree on it (pass `mixture=True`).
    """

    probabilities: jax.Array
    cdf_blocks: jax.Array
    coarse: jax.Array
    probability_blocks: jax.Array
    block_mass: jax.Array
    top_items: jax.Array
    epsilon: jax.Array
    shuffle: bool = dataclasses.field(default=False, metadata=dict(static=True))
    flat: bool = dataclasses.field(default=False, metadata=dict(static=True))
    mixture: bool = dataclasses.field(default=True, metadata=dict(static=True))


def _as_rows(scores: jax.typing.ArrayLike) -> jax.Array:
    scores = jnp.asarray(scores, jnp.float32)
    return scores[None, :] if scores.ndim == 1 else scores


def _tables(logits: jax.Array) -> dict[str, jax.Array]:
    """Softmax probabilities and their blocked cumulative sums (see `SlatePolicy`)."""
    probabilities = jax.nn.softmax(logits, axis=-1)
    cdf = jnp.cumsum(probabilities, axis=-1)
    rows, n_items = cdf.shape
    block = block_size(n_items)
    n_blocks = -(-n_items // block)
    padded = jnp.pad(cdf, ((0, 0), (0, n_blocks * block - n_items)), mode="edge")
    blocks = padded.reshape(rows, n_blocks, block)
    probability_blocks = jnp.pad(
        probabilities, ((0, 0), (0, n_blocks * block - n_items))
    ).reshape(rows, n_blocks, block)
    return dict(probabilities=probabilities, cdf_blocks=blocks, coarse=blocks[:, :, -1],
                probability_blocks=probability_blocks,
                block_mass=probability_blocks.sum(axis=2))


def _masked(scores: jax.Array, available: jax.typing.ArrayLike | None) -> jax.Array:
    if available is None:
        return scores
    return jnp.where(jnp.asarray(available, bool), scores, -jnp.inf)


def make_policy(
    scores: jax.typing.ArrayLike,
    slate_size: int,
    *,
    temperature: float = 1.0,
    epsilon: float = 1.0,
    shuffle: bool = False,
    available: jax.typing.ArrayLike | None = None,
    flat: bool = False,
    mixture: bool | None = None,
) -> SlatePolicy:
    """A `SlatePolicy` from scores `[n_items]` or `[n_users, n_items]`.

    Args:
        scores: model scores (higher is better); one row is shared by all users.
        slate_size: K.
        temperature: softmax temperature (> 0).
        epsilon: probability of a softmax slate (1: Plackett–Luce; 0: deterministic top-K).
        shuffle: show the top-K list in random order.
        available: optional `[n_items]` bool; unavailable items are never shown.
        flat: the caller guarantees a uniform softmax (set by `uniform_policy`).
        mixture: keep the top-K part even at `epsilon = 1` (default: only when epsilon < 1
            or shuffle), so that policies with different epsilons stack for `vmap`.
    """
    if temperature <= 0:
        raise ConfigError(f"policy temperature: got {temperature}, expected > 0")
    if not 0.0 <= epsilon <= 1.0:
        raise ConfigError(f"policy epsilon: got {epsilon}, expected a value in [0, 1]")
    rows = _masked(_as_rows(scores), available)
    n_items = rows.shape[1]
    n_available = n_items if available is None else int(jnp.sum(jnp.asarray(available)))
    if slate_size > n_available:
        raise ConfigError(
            f"policy slate_size: got {slate_size}, expected <= the {n_available} available items"
        )
    top_items = jax.lax.top_k(rows, slate_size)[1].astype(jnp.int32)
    return SlatePolicy(
        **_tables(rows / temperature),
        top_items=top_items,
        epsilon=jnp.float32(epsilon),
        shuffle=bool(shuffle),
        flat=flat,
        mixture=bool(epsilon < 1.0 or shuffle) if mixture is None else bool(mixture),
    )


def softmax_policy(scores, slate_size: int, *, temperature: float = 1.0, available=None):
    """Plackett–Luce slates over `softmax(scores / temperature)`."""
    return make_policy(scores, slate_size, temperature=temperature, available=available)


def uniform_policy(n_items: int, slate_size: int, *, available=None) -> SlatePolicy:
    """Uniformly random ordered slates of distinct (available) items."""
    return make_policy(jnp.zeros(n_items), slate_size, available=available, flat=True)


def top_k_policy(scores, slate_size: int, *, available=None) -> SlatePolicy:
    """The deterministic top-K list (log_prob 0): epsilon-greedy with epsilon 0."""
    return epsilon_greedy_policy(scores, slate_size, 0.0, available=available)


def epsilon_greedy_policy(
    scores, slate_size: int, epsilon: float, *, shuffle: bool = False, available=None
) -> SlatePolicy:
    """Top-K with probability `1 - epsilon`, else a uniformly random slate."""
    n_items = _as_rows(scores).shape[1]
    scores = _as_rows(scores)
    flat = make_policy(jnp.zeros(n_items), slate_size, available=available, flat=True)
    top = make_policy(scores, slate_size, epsilon=0.0, available=available)
    return dataclasses.replace(
        flat, top_items=top.top_items, epsilon=jnp.float32(epsilon),
        shuffle=bool(shuffle), mixture=True,
    )


def _row(table: jax.Array, user: jax.Array) -> jax.Array:
    """The row of `table` for `user` (row 0 when one row is shared by every user)."""
    return jnp.asarray(0 if table.shape[0] == 1 else user, jnp.int32)


def _search(policy: SlatePolicy, row: jax.Array, targets: jax.Array) -> jax.Array:
    """Smallest i with `cdf[row, i] > target` for each target `[m]`.

    Two levels: the block from the row's `coarse` ends, then the entry within that block, so
    each target reads one short contiguous block instead of log2(n) scattered entries.
    """
    n_blocks, block = policy.cdf_blocks.shape[1:]
    coarse = policy.coarse[row]
    chosen = jnp.minimum(jnp.sum(coarse[None, :] <= targets[:, None], axis=1), n_blocks - 1)
    within = jnp.sum(policy.cdf_blocks[row, chosen] <= targets[:, None], axis=1)
    return chosen * block + jnp.minimum(within, block - 1)


def sample_plackett_luce(
    key: jax.Array, policy: SlatePolicy, row: jax.Array, k: int, *, round_size: int | None = None,
    max_rounds: int = 32,
) -> jax.Array:
    """`[k]` distinct items drawn by Plackett–Luce from `policy`'s softmax row (successive
    sampling).

    Candidates are i.i.d. draws from the softmax in rounds of `round_size` (default `2k`);
    the first `k` distinct ones, in draw order, are the slate: sampling with replacement and
    discarding repeats is sampling without replacement with renormalised probabilities. Under
    `vmap` every user runs as many rounds as the unluckiest one, so the first round is made
    large enough that a second one is rare.

    When fewer than `k` items carry float32 probability, or `max_rounds` rounds did not find
    `k` distinct items, the missing slots take the row's highest-scored items not yet chosen
    (`top_items`): the limit of Plackett–Luce as the remaining mass vanishes.
    """
    round_size = 2 * k if round_size is None else round_size
    total = policy.coarse[row, -1]
    limit = jnp.nextafter(total, jnp.float32(0.0))

    def body(carry):
        chosen, count, round_index = carry
        uniforms = jax.random.uniform(streams.index(key, round_index), (round_size,))
        candidates = _search(policy, row, jnp.minimum(uniforms * total, limit))
        seen = jnp.any(candidates[:, None] == chosen[None, :], axis=1)
        same = candidates[:, None] == candidates[None, :]
        repeat = jnp.any(jnp.tril(same, -1), axis=1)  # equals an earlier candidate
        new = ~seen & ~repeat
        slot = count + jnp.cumsum(new) - 1
        slot = jnp.where(new & (slot < k), slot, k)  # index k is out of range: dropped
        chosen = chosen.at[slot].set(candidates, mode="drop")
        return chosen, jnp.minimum(count + jnp.sum(new), k), round_index + 1

    chosen = jnp.full((k,), -1, jnp.int32)
    chosen, count, _ = jax.lax.while_loop(
        lambda carry: (carry[1] < k) & (carry[2] < max_rounds), body,
        (chosen, jnp.zeros((), jnp.int32), 0),
    )
    fallback = policy.top_items[_row(policy.top_items, row)]
    unused = ~jnp.any(fallback[:, None] == chosen[None, :], axis=1)
    fill_slot = jnp.where(unused, count + jnp.cumsum(unused) - 1, k)
    fill = jnp.full((k,), -1, jnp.int32).at[fill_slot].set(fallback, mode="drop")
    return jnp.where(chosen >= 0, chosen, fill)


def _probabilities(policy: SlatePolicy, row: jax.Array, items: jax.Array) -> jax.Array:
    return policy.probabilities[row, items]


def plackett_luce_log_prob(policy: SlatePolicy, row: jax.Array, slate: jax.Array) -> jax.Array:
    """Log probability of the ordered `slate` `[K]` under the softmax of `policy`'s row.

    The mass left before slot k is the mass of the items outside the slate plus that of the
    slate's items from slot k on, both sums of positive terms: no `1 - sum` that cancels when a
    few items hold nearly all the mass. The outside mass reads the block sums of the blocks
    without a slate item and the other entries of the (at most K) blocks with one, not the
    whole row.
    """
    probabilities = _probabilities(policy, row, slate)
    n_blocks, block = policy.probability_blocks.shape[1:]
    slate_blocks = slate // block
    first = ~jnp.any(jnp.tril(slate_blocks[:, None] == slate_blocks[None, :], -1), axis=1)
    touched = jnp.zeros(n_blocks, bool).at[slate_blocks].set(True)
    untouched_mass = jnp.sum(jnp.where(touched, 0.0, policy.block_mass[row]))
    entries = slate_blocks[:, None] * block + jnp.arange(block)[None, :]  # [K, block]
    others = ~jnp.any(entries[:, :, None] == slate[None, None, :], axis=2)
    block_values = policy.probability_blocks[row, slate_blocks]  # [K, block]
    touched_mass = jnp.sum(jnp.where(others & first[:, None], block_values, 0.0))
    outside = untouched_mass + touched_mass
    from_here = jnp.cumsum(probabilities[::-1])[::-1]
    remaining = jnp.maximum(outside + from_here, 1e-38)
    return jnp.sum(jnp.log(jnp.maximum(probabilities, 1e-38)) - jnp.log(remaining))


def slate_log_prob(policy: SlatePolicy, user: jax.Array, slate: jax.Array) -> jax.Array:
    """Exact log probability that `policy` shows the ordered `slate` `[K]` to `user`."""
    row = _row(policy.probabilities, user)
    softmax_log_prob = plackett_luce_log_prob(policy, row, slate)
    if not policy.mixture:
        return softmax_log_prob
    k = slate.shape[0]
    top = policy.top_items[_row(policy.top_items, user)]
    if policy.shuffle:
        same_set = jnp.all(jnp.any(slate[:, None] == top[None, :], axis=1))
        top_log_prob = jnp.where(same_set, -math.lgamma(k + 1), -jnp.inf)
    else:
        top_log_prob = jnp.where(jnp.all(slate == top), 0.0, -jnp.inf)
    # In log space: a Plackett-Luce slate of 1,000 items has probability near float32's floor.
    return jnp.logaddexp(jnp.log(policy.epsilon) + softmax_log_prob,
                         jnp.log1p(-policy.epsilon) + top_log_prob)


def slate_policy(
    policy: SlatePolicy, obs: Observation, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """`policy_fn` of every `SlatePolicy`: `(slate [K] int32, log_prob)` for one user."""
    row = _row(policy.probabilities, obs.user)
    k = policy.top_items.shape[1]
    explore_key, sample_key, shuffle_key = jax.random.split(key, 3)
    if not policy.mixture:
        slate = sample_plackett_luce(sample_key, policy, row, k)
        return slate, slate_log_prob(policy, obs.user, slate)
    top = policy.top_items[_row(policy.top_items, obs.user)]
    if policy.shuffle:
        top = jax.random.permutation(shuffle_key, top)
    explore = jax.random.uniform(explore_key) < policy.epsilon
    sampled = sample_plackett_luce(sample_key, policy, row, k)
    slate = jnp.where(explore, sampled, top)
    return slate, slate_log_prob(policy, obs.user, slate)


class SlotProbabilities(NamedTuple):
    """`probabilities[k, j]`: P(the item logged at slot k is shown at slot j); `exact` flag."""

    probabilities: jax.Array
    exact: jax.Array


def slot_probabilities(
    policy: SlatePolicy,
    user: jax.Array,
    items: jax.Array,
    *,
    key: jax.Array | None = None,
    n_samples: int = 0,
) -> SlotProbabilities:
    """`[K, K]` probabilities that each of `items` `[K]` is at each slot under `policy`.

    Exact for the top-K part, for flat softmaxes and for slot 0 of any softmax; slots >= 1 of a
    non-flat softmax are estimated from `n_samples` Plackett–Luce slates drawn under `key`
    (then `exact` is False). With `n_samples = 0` those entries are left at their slot-0 value
    and `exact` is False too — callers that need them must pass samples.
    """
    row = _row(policy.probabilities, user)
    k = items.shape[0]
    top = policy.top_items[_row(policy.top_items, user)]
    at_top = (items[:, None] == top[None, :]).astype(jnp.float32)  # [K items, K slots]
    in_top = jnp.any(at_top > 0, axis=1, keepdims=True).astype(jnp.float32)
    top_part = in_top / k * jnp.ones((1, k)) if policy.shuffle else at_top
    first = _probabilities(policy, row, items)  # exact slot-0 (and flat) probabilities
    softmax_part = jnp.broadcast_to(first[:, None], (k, k))
    exact = jnp.asarray(policy.flat or k == 1)
    if not (policy.flat or k == 1) and n_samples > 0:
        keys = jax.random.split(key, n_samples)
        draws = jax.vmap(lambda one: sample_plackett_luce(one, policy, row, k))(keys)
        counts = jnp.mean(items[None, :, None] == draws[:, None, :], axis=0)  # [K, K]
        softmax_part = softmax_part.at[:, 1:].set(counts[:, 1:])
    probabilities = policy.epsilon * softmax_part + (1.0 - policy.epsilon) * top_part
    return SlotProbabilities(probabilities, exact | (policy.epsilon == 0))


def inclusion_probabilities(policy: SlatePolicy, user: jax.Array) -> jax.Array:
    """`[n_items]` P(item in the slate) for an epsilon-greedy / top-K / uniform policy (exact).

    Raises:
        ConfigError: the softmax is not flat (Plackett–Luce inclusion has no closed form).
    """
    if not policy.flat:
        raise ConfigError(
            "inclusion probabilities are exact only for uniform, top-K and epsilon-greedy "
            "policies; got a softmax (Plackett–Luce) policy"
        )
    row = _row(policy.probabilities, user)
    k = policy.top_items.shape[1]
    n_items = policy.probabilities.shape[1]
    uniform = policy.probabilities[row] * k  # K slots, each item 1/A at each slot
    in_top = jnp.zeros(n_items).at[policy.top_items[_row(policy.top_items, user)]].set(1.0)
    return policy.epsilon * uniform + (1.0 - policy.epsilon) * in_top


def plackett_luce_slot_frequencies(
    key: jax.Array, policy: SlatePolicy, users: jax.Array, n_samples: int
) -> jax.Array:
    """`[n_users, n_items, K]` Monte-Carlo P(item at slot k) of the softmax part of `policy`.

    `n_samples` Plackett–Luce slates per user, drawn under `fold_in(key, user)`; slot 0 is
    replaced by its exact value (the softmax probability). Memory is `n_users * n_items * K`
    floats: call it on blocks of users.
    """
    k = policy.top_items.shape[1]
    n_items = policy.probabilities.shape[1]

    def one(user):
        row = _row(policy.probabilities, user)
        keys = jax.random.split(streams.index(key, user), n_samples)
        draws = jax.vmap(lambda one_key: sample_plackett_luce(one_key, policy, row, k))(keys)
        counts = jnp.zeros((n_items, k)).at[draws, jnp.arange(k)[None, :]].add(1.0 / n_samples)
        return counts.at[:, 0].set(policy.probabilities[row])

    return jax.vmap(one)(users)


def slot_marginal_table(
    policy: SlatePolicy,
    users: jax.Array,
    *,
    key: jax.Array | None = None,
    n_samples: int = 0,
) -> jax.Array:
    """`[n_users, n_items, K]` P(item at slot k) under `policy` for each of `users` `[n]`.

    Exact for uniform, top-K and epsilon-greedy policies and single-item slates; slots >= 1 of
    a non-flat softmax come from `plackett_luce_slot_frequencies` (`n_samples` slates per user,
    under `key`). Memory is `n * n_items * K` floats: call it on blocks of users.
    """
    users = jnp.asarray(users, jnp.int32)
    k = policy.top_items.shape[1]
    n_items = policy.probabilities.shape[1]
    probability_rows = policy.probabilities[
        jnp.zeros_like(users) if policy.probabilities.shape[0] == 1 else users
    ]
    if policy.flat or k == 1:
        softmax_part = jnp.broadcast_to(probability_rows[:, :, None], (*probability_rows.shape, k))
    else:
        if n_samples < 1 or key is None:
            raise ConfigError(
                "slot marginals of a Plackett–Luce slate (K > 1) need Monte-Carlo samples "
                "(ope.marginal_samples >= 1)"
            )
        softmax_part = plackett_luce_slot_frequencies(key, policy, users, n_samples)
    top = policy.top_items[jnp.zeros_like(users) if policy.top_items.shape[0] == 1 else users]
    at_slot = jax.nn.one_hot(top, n_items, axis=1)  # [n, n_items, K]
    if policy.shuffle:
        at_slot = jnp.broadcast_to(at_slot.sum(axis=2, keepdims=True) / k, at_slot.shape)
    return policy.epsilon * softmax_part + (1.0 - policy.epsilon) * at_slot
