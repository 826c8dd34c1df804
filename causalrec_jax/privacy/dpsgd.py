"""DP-SGD for the models of the one core, user-level by default (Abadi et al., CCS 2016;
user-level: McMahan et al., ICLR 2018, "Learning Differentially Private Recurrent Language
Models").

A privacy unit is a user (`level = "user"`: every training row of one user, capped at
`max_examples_per_user`, is what one neighbouring dataset adds or removes) or one training row
(`level = "example"`). Each step

1. samples every unit independently with probability `q = expected_batch / n_units` (Poisson
   sampling), padded to a fixed `capacity` with a mask, so the step has one static shape;
2. takes each sampled unit's gradient of the *sum* of its rows' losses, over the rows of the
   embedding tables the unit's loss reads (its user's rows, its items' and its sampled
   negatives' rows: `models.base.row_tables`) and the dense parameters, never whole tables
   per unit. The rows are gathered per unit after de-duplicating the ids (`unique_ids`), so
   an item a unit reads twice gets one gradient row, the sum of both uses: its norm is the
   norm of what the unit adds to the table (summing repeated rows after the norm would
   understate it);
3. clips each unit's whole gradient to norm `clip` (C) and sums the clipped gradients: rows
   scattered back into full-size tables, dense parameters added;
4. adds `N(0, (noise_multiplier * C)^2)` to every coordinate of every parameter (every row of
   every table: which rows a batch touched is itself private), and divides by the *expected*
   batch `q * n_units` (dividing by the realised count would leak it);
5. hands the result to the run's optimiser, like the ordinary step.

Capacity: a step holds at most `capacity` sampled units; more are dropped (truncated Poisson
sampling). `capacity` is the least count a Binomial(n_units, q) exceeds with probability at
most `OVERFLOW_PROBABILITY` per step; the run's report gives `steps * P(overflow)` as
`truncation_delta`, to be added to its delta: the guarantee of the exactly Poisson-sampled
mechanism holds for this one up to that probability.

Example level: one row's influence is bounded by clipping only if no other row's gradient
depends on it, so it needs every parameter noised (`user_rows = "noised"`: a user row trained
locally on all of a user's rows carries one row into the others' gradients) and negatives
drawn without the user's seen items (`train.exclude_seen_negatives = false`); runs refuse
anything else.

Sequence models (SASRec, HSTU, BERT4Rec; `make_sequence_unit_gradient`): a unit is a user's
training windows (at most `max_examples_per_user` of them; runs refuse units of one window,
which overlap and so are not one interaction each), and its gradient is
taken over the whole token table and the encoder: a softmax-family loss reads the rows of the
targets, of the sampled negatives (drawn per unit) or of every item, so the table's gradient
is dense per unit (`chunk x n_tokens x d` floats a chunk). These models have no user rows:
every parameter is noised.

Not private (and so reported as such): the training loss a run logs and the choice of the best
epoch on validation data read the data without noise.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from causalrec_jax import streams
from causalrec_jax.errors import ConfigError
from causalrec_jax.models.base import make_scorers, row_tables, table_kind
from causalrec_jax.privacy.accounting import combined_noise_multiplier
from causalrec_jax.train.objectives import (
    drawn_negatives,
    make_objective,
    with_drawn_negatives,
)
from causalrec_jax.train.step import TrainState, all_finite, epoch_loss, guarded_update

LEVELS = ("user", "example")
# The `shared_` array of the item rows a run trains (`select_items`), when it selects some.
TRAINED_ITEMS = "shared_trained_items"
USER_ROWS = ("local", "noised")

# A step takes its units' gradients in about this many chunks (`DPSpec.chunk`): units of one
# row (example level) in 8, units of several rows (user level, federated clients) in 2. On the
# 2-core CPU (`bench/privacy.py`, BPR-MF at ml-100k's size, 2,048 rows a step) 2 chunks cut a
# user-level step from 11.3 ms to 9.0-9.3 ms and slowed an example-level one from 9.1 to 10.3
# ms. With 2 chunks a step that samples more units than expected runs a third chunk, mostly
# padding; measured, that is still the faster choice.
CHUNKS_PER_STEP = 8
# A unit of at most this many ids of a kind (one row and its negatives, at example level)
# de-duplicates them by comparing every pair (`unique_ids`): XLA's CPU sort calls a
# comparator per comparison.
COMPARED_IDS = 16
CHUNKS_PER_STEP_OF_USERS = 2

# Per step, the probability that more units are sampled than the step holds (`capacity`).
OVERFLOW_PROBABILITY = 1e-12

@dataclasses.dataclass(frozen=True)
class DPSpec:
    """The static description of a DP-SGD step (hashable: part of a program's signature).

    Attributes:
        level: `user` or `example`.
        clip: C, the bound on each unit's gradient norm.
        noise_multiplier: sigma; the noise's standard deviation is sigma * C.
        n_units: privacy units (users, or training rows).
        expected_batch: `q * n_units`, units sampled per step on average (the divisor).
        capacity: sampled units a step holds (static).
        examples_per_unit: rows per unit (`max_examples_per_user`; 1 at example level).
        steps_per_epoch: steps in one pass (`ceil(n_units / expected_batch)`).
        user_rows: `local`: the users' own rows (embeddings, biases) are trained on their
            own data without clipping or noise, and only the shared parameters (item rows,
            dense layers) are private: joint differential privacy (Kearns et al., ITCS
            2014), where what user u is shown depends on other users' data only through the
            private shared parameters (the billboard lemma, Hsu et al., STOC 2014), as in
            private matrix completion (Jain et al., COLT 2018; Chien et al., NeurIPS 2021)
            and as federated training keeps user vectors on the client. `noised`: every
            parameter, user rows included, is clipped and noised (the whole model may be
            published).
        chunk: units whose gradients are taken together (one vmapped call); a step runs
            only the chunks that hold sampled units (`capacity` is a multiple of it).
        item_rows: 0: every item row trains (and is noised every step); N > 0: only the N
            items that `select_items` chooses once, under DP, from noisy counts of the units
            holding each item (the filtering of DP-FEST, Ghazi et al., NeurIPS 2023, "Sparsity-
            Preserving Differentially Private Training of Large Embedding Models"): the other
            item rows stay at their initial values and get neither gradient nor noise, so
            rare items do not random-walk on pure noise. Accounted as one more Gaussian
            mechanism (`accounting.dp_sgd_event`).
        selection_noise: the noise multiplier of the noisy item counts (`noisy_counts`: std
            `selection_noise * sqrt(examples_per_unit)` on each count, as a user adds 1 to
            each of at most `examples_per_unit` counts) that choose those items and give a
            private PDA run its popularity; 0 when nothing reads them.
        adaptive_threshold: 0: off; tau > 0: DP-AdaFEST (Ghazi et al., NeurIPS 2023, the
            same paper's adaptive algorithm): each step selects its own item rows. Every
            sampled unit's contribution map (1 on each item row its gradient touches: its
            items and its sampled negatives, after de-duplication) is clipped to L2 norm
            `contribution_clip` (`C_1`: scaled by `min(1, C_1 / sqrt(m))` for a unit touching
            `m` rows), the maps are summed, `N(0, (adaptive_noise * C_1)^2)` is added to each
            row's count, and the rows whose noisy count is at least tau are the step's
            selection: only their gradient rows are kept and only they are noised; the other
            item rows get neither (their gradient is dropped: a bias for sparsity). User rows
            and dense parameters are treated as without it. The selection and the gradient
            are two Gaussian mechanisms on the same sample, accounted as one of noise
            multiplier `accounted_noise_multiplier` (`accounting.combined_noise_multiplier`).
        adaptive_noise: sigma_1, the noise multiplier of the per-step counts (0 when off).
        contribution_clip: C_1, the bound on a unit's contribution map's L2 norm.
        local_steps: 0 for DP-SGD; federated training (`privacy.federated`): the steps each
            client takes on its own data in a round. A client keeps its own user rows.
        silos: 0: each unit is one user (or one row); S > 0 (federated only): each unit is a
            silo, a client holding several users' rows (`silo_arrays`), whose rows carry
            their own user ids; the guarantee is then per silo (a silo's whole data, so each
            of its users').
    """

    level: str
    clip: float
    noise_multiplier: float
    n_units: int
    expected_batch: float
    capacity: int
    examples_per_unit: int
    steps_per_epoch: int
    user_rows: str = "local"
    chunk: int = 1
    item_rows: int = 0
    selection_noise: float = 0.0
    local_steps: int = 0
    silos: int = 0
    adaptive_threshold: float = 0.0
    adaptive_noise: float = 0.0
    contribution_clip: float = 1.0

    @property
    def sampling_rate(self) -> float:
        return self.expected_batch / self.n_units

    @property
    def accounted_noise_multiplier(self) -> float:
        """The noise multiplier a step is accounted at: `noise_multiplier`, or with AdaFEST's
        per-step selection the combination of both (`accounting.combined_noise_multiplier`)."""
        if not self.adaptive_threshold:
            return self.noise_multiplier
        return combined_noise_multiplier(self.noise_multiplier, self.adaptive_noise)


def capacity_for(n_units: int, sampling_rate: float,
                 overflow: float = OVERFLOW_PROBABILITY) -> int:
    """The least c with P(Binomial(n_units, sampling_rate) > c) <= `overflow`."""
    if sampling_rate >= 1.0:
        return n_units
    return int(min(n_units, stats.binom.isf(overflow, n_units, sampling_rate) + 1))


def overflow_probability(n_units: int, sampling_rate: float, capacity: int) -> float:
    """P(Binomial(n_units, sampling_rate) > capacity): one step dropping sampled units."""
    return float(stats.binom.sf(capacity, n_units, sampling_rate))


def steps_per_epoch(n_units: int, expected_batch: float) -> int:
    """Steps of one pass over the units: `ceil(n_units / expected_batch)`."""
    return max(1, math.ceil(n_units / min(expected_batch, n_units)))


def make_spec(level: str, *, clip: float, noise_multiplier: float, n_units: int,
              expected_batch: float, examples_per_unit: int, user_rows: str = "local",
              item_rows: int = 0, selection_noise: float = 0.0, local_steps: int = 0,
              silos: int = 0, adaptive_threshold: float = 0.0, adaptive_noise: float = 0.0,
              contribution_clip: float = 1.0) -> DPSpec:
    """A `DPSpec`, its capacity and steps per epoch derived; a ConfigError names the key of
    a value out of range."""
    if level not in LEVELS:
        raise ConfigError(f"key privacy.level: got {level!r}, expected one of "
                          f"{', '.join(LEVELS)}")
    if not clip > 0:
        raise ConfigError(f"key privacy.clip: got {clip!r}, expected a number > 0")
    if not noise_multiplier >= 0:
        raise ConfigError(f"key privacy.noise: got {noise_multiplier!r}, expected a number "
                          ">= 0")
    if local_steps < 0 or (local_steps and (level != "user" or user_rows != "local")):
        raise ConfigError(f"key privacy.local_steps: got {local_steps!r} at level {level!r} "
                          f"with user rows {user_rows!r}; federated clients are users who "
                          "keep their own rows (level 'user', user_rows 'local')")
    if silos < 0 or (silos and (not local_steps or silos != n_units)):
        raise ConfigError(f"key privacy.silos: got {silos!r} with privacy.local_steps = "
                          f"{local_steps!r} over {n_units} units; silos are federated clients "
                          "(privacy.mechanism = 'fedavg'), each silo one unit")
    if user_rows not in USER_ROWS:
        raise ConfigError(f"key privacy.user_rows: got {user_rows!r}, expected one of "
                          f"{', '.join(USER_ROWS)}")
    if n_units < 1:
        raise ConfigError("no privacy units: the training split has no rows")
    if item_rows < 0 or (item_rows and not selection_noise > 0):
        raise ConfigError(f"key privacy.item_rows: got {item_rows!r} with "
                          f"privacy.selection_noise = {selection_noise!r}; expected 0 (every "
                          "item row trains) or N > 0 with a selection noise > 0")
    if adaptive_threshold < 0 or (adaptive_threshold and (item_rows or local_steps)):
        raise ConfigError(f"key privacy.adaptive_threshold: got {adaptive_threshold!r} with "
                          f"privacy.item_rows = {item_rows!r} and local_steps = "
                          f"{local_steps!r}; expected 0, or tau > 0 without DP-FEST's "
                          "selection and without federated rounds")
    if adaptive_threshold and not adaptive_noise > 0:
        raise ConfigError(f"key privacy.adaptive_noise: got {adaptive_noise!r}, expected a "
                          "number > 0 with privacy.adaptive_threshold > 0")
    if adaptive_threshold and not contribution_clip > 0:
        raise ConfigError(f"key privacy.contribution_clip: got {contribution_clip!r}, "
                          "expected a number > 0")
    expected_batch = float(min(expected_batch, n_units))
    rate = expected_batch / n_units
    chunks = CHUNKS_PER_STEP if examples_per_unit == 1 else CHUNKS_PER_STEP_OF_USERS
    chunk = max(1, math.ceil(expected_batch / chunks))
    capacity = chunk * math.ceil(capacity_for(n_units, rate) / chunk)
    return DPSpec(level=level, clip=float(clip), noise_multiplier=float(noise_multiplier),
                  n_units=int(n_units), expected_batch=expected_batch, capacity=capacity,
                  examples_per_unit=int(examples_per_unit), chunk=chunk,
                  steps_per_epoch=steps_per_epoch(n_units, expected_batch),
                  user_rows=user_rows, item_rows=int(item_rows),
                  selection_noise=float(selection_noise),
                  local_steps=int(local_steps), silos=int(silos),
                  adaptive_threshold=float(adaptive_threshold),
                  adaptive_noise=float(adaptive_noise) if adaptive_threshold else 0.0,
                  contribution_clip=float(contribution_clip))


# ----------------------------------------------------------------------------- units


def unit_arrays(rows: dict[str, np.ndarray], n_users: int, level: str, max_examples: int,
                key: jax.Array) -> dict[str, np.ndarray]:
    """The training rows grouped into privacy units (numpy, built once per run).

    Args:
        rows: `[n_rows]` arrays with `users` and `items` (and `ratings`, `weights`, ... as the
            loss reads them).
        n_users: users of the dataset (every user is a unit at user level, those without
            rows empty).
        level: `user` (a unit holds up to `max_examples` of one user's rows, a uniform draw
            of `key` when the user has more) or `example` (a unit is one row).
        max_examples: the cap on a user's rows.
        key: the draw of the kept rows (`streams.Run.PRIVATE_ROWS` of the run's seed).

    Returns:
        `unit_users [n_units]` and, for every row array, `[n_units, k]` (`k = max_examples`
        at user level, 1 at example level) with `unit_mask [n_units, k]`; `users` holds the
        unit's user in every slot, padding too, so a step reads each row's user from it as it
        does a silo's (`silo_arrays`).
    """
    users = np.asarray(rows["users"], np.int64)
    if level == "example":
        out = {name: np.asarray(values)[:, None] for name, values in rows.items()}
        out["unit_users"] = users.astype(np.int32)
        out["unit_mask"] = np.ones((len(users), 1), bool)
        return out
    # each user's rows in a random order, then the first max_examples of each user
    order = np.lexsort((np.asarray(jax.random.uniform(key, (len(users),))), users))
    sorted_users = users[order]
    starts = np.searchsorted(sorted_users, np.arange(n_users))
    rank = np.arange(len(order)) - starts[sorted_users]
    keep = rank < max_examples
    picked, slot = order[keep], rank[keep]
    out = {}
    for name, values in rows.items():
        values = np.asarray(values)
        table = np.zeros((n_users, max_examples) + values.shape[1:], values.dtype)
        if name == "users":  # every slot, padding too, holds its unit's user
            table[:] = np.arange(n_users, dtype=values.dtype)[:, None]
        table[users[picked], slot] = values[picked]
        out[name] = table
    out["unit_mask"] = np.zeros((n_users, max_examples), bool)
    out["unit_mask"][users[picked], slot] = True
    out["unit_users"] = np.arange(n_users, dtype=np.int32)
    return out


def silo_of_users(n_users: int, n_silos: int, key: jax.Array) -> np.ndarray:
    """`[n_users]` int32, each user's silo: the users in an order drawn by `key`
    (`streams.Run.SILOS` of the run's seed) dealt to the silos in turn, so silo sizes differ
    by at most one user and a silo's users are not neighbours in the dataset's id order."""
    if not 1 <= n_silos <= n_users:
        raise ConfigError(f"key privacy.silos: got {n_silos!r}, expected 1 to the {n_users} "
                          "users of the training split")
    order = np.asarray(jax.random.permutation(key, n_users))
    silo = np.empty(n_users, np.int32)
    silo[order] = np.arange(n_users) % n_silos
    return silo


def silo_arrays(units: dict[str, np.ndarray], silo: np.ndarray, n_silos: int
                ) -> dict[str, np.ndarray]:
    """User-level unit arrays (`unit_arrays`, `[n_users, k]`, each user's rows already capped
    at `max_examples_per_user`) regrouped into silos, `[n_silos, m]`: a silo's users' rows
    side by side in user order, `m` the largest silo's row count. `users` holds each row's
    own user; a padding row's is `n_users`, an id past the user table: `unique_ids` drops it
    (or keeps it as its own padding), scatters and `set_rows` drop it, and the gathers that
    clamp it to the last row read that row for a masked row only, whose loss and gradient
    are zero. No `unit_users` (a silo has many)."""
    mask = np.asarray(units["unit_mask"])
    n_users = mask.shape[0]
    users, slots = np.nonzero(mask)  # in user order, then slot order
    order = np.argsort(silo[users], kind="stable")
    users, slots = users[order], slots[order]
    silo_of_row = silo[users]
    starts = np.searchsorted(silo_of_row, np.arange(n_silos))
    position = np.arange(len(users)) - starts[silo_of_row]
    width = max(int(position.max()) + 1 if len(position) else 1, 1)
    out = {}
    for name, values in units.items():
        if name in ("unit_mask", "unit_users"):
            continue
        values = np.asarray(values)
        fill = n_users if name == "users" else 0
        table = np.full((n_silos, width) + values.shape[2:], fill, values.dtype)
        table[silo_of_row, position] = values[users, slots]
        out[name] = table
    out["unit_mask"] = np.zeros((n_silos, width), bool)
    out["unit_mask"][silo_of_row, position] = True
    return out


def item_counts(units: dict[str, np.ndarray], n_items: int) -> np.ndarray:
    """`[n_items]` how many units hold each item (once per unit, whatever its repeats)."""
    items = np.asarray(units["items"])
    mask = np.asarray(units["unit_mask"])
    unit = np.broadcast_to(np.arange(items.shape[0])[:, None], items.shape)
    pairs = np.unique(unit[mask].astype(np.int64) * n_items + items[mask])
    return np.bincount(pairs % n_items, minlength=n_items)


def noisy_counts(key: jax.Array, counts: np.ndarray, spec: DPSpec) -> np.ndarray:
    """`counts` (`item_counts`) plus Gaussian noise of std `spec.selection_noise *
    sqrt(examples_per_unit)` (the counts' L2 sensitivity to one unit), float64: the one
    Gaussian mechanism the accountant composes for the item counts, whatever reads them
    (`select_items`, `noisy_log_popularity`)."""
    sensitivity = math.sqrt(spec.examples_per_unit)
    noise = np.asarray(jax.random.normal(key, counts.shape), np.float64)
    return counts + spec.selection_noise * sensitivity * noise


def noisy_log_popularity(noisy: np.ndarray) -> np.ndarray:
    """PDA's `[n_items]` log popularity share from noisy counts (`noisy_counts`), each
    floored at 1 (as if every item were held once: noise alone can make a count 0 or
    negative, whose log would weigh the item down without end); post-processing, no budget
    spent."""
    counts = np.maximum(noisy, 1.0)
    return np.log(counts / counts.sum()).astype(np.float32)


def select_items(key: jax.Array, counts: np.ndarray, spec: DPSpec) -> np.ndarray:
    """`[n_items]` float32, 1 on the `spec.item_rows` items whose counts are largest after
    Gaussian noise of std `spec.selection_noise * sqrt(examples_per_unit)` (the counts' L2
    sensitivity to one unit), 0 elsewhere; a post-processing of the noisy counts, so the
    choice costs the one Gaussian mechanism the accountant composes."""
    return top_items(noisy_counts(key, counts, spec), spec.item_rows)


def top_items(noisy: np.ndarray, n: int) -> np.ndarray:
    """`[n_items]` float32, 1 on the `n` items of largest noisy count (`noisy_counts`)."""
    chosen = np.zeros(len(noisy), np.float32)
    chosen[np.argsort(-noisy, kind="stable")[:n]] = 1.0
    return chosen


def with_chunk(spec: DPSpec, chunk: int) -> DPSpec:
    """`spec` taking its units `chunk` at a time (at least 1), its capacity rounded up to a
    multiple of it: a unit that holds much more than MF's rows (a sequence model's windows,
    each with its dense table gradient) sets a smaller chunk to bound a step's memory."""
    chunk = max(1, int(chunk))
    capacity = chunk * math.ceil(capacity_for(spec.n_units, spec.sampling_rate) / chunk)
    return dataclasses.replace(spec, chunk=chunk, capacity=capacity)


def sample_units(key: jax.Array, spec: DPSpec) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Poisson sampling: `(units [capacity], valid [capacity], n_sampled [])`: each unit is
    in with probability `spec.sampling_rate`; the first `capacity` sampled are kept, padding
    slots hold unit 0 with `valid` False."""
    sampled = jax.random.uniform(key, (spec.n_units,)) < spec.sampling_rate
    (units,) = jnp.nonzero(sampled, size=spec.capacity, fill_value=spec.n_units)
    valid = units < spec.n_units
    return jnp.where(valid, units, 0), valid, jnp.sum(sampled)


# ----------------------------------------------------------------------------- gradients


def table_kinds(state: Any, tables: dict[str, str]) -> list[str]:
    """For each leaf of a state (a model state or a run's parameters, `{"prediction": model
    state, ...}`), the id kind of its rows ("users", "items") or "" (`models.base.
    table_kind`)."""
    return [table_kind(path, tables)
            for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]


def gather_rows(state: Any, tables: dict[str, str], ids: dict[str, jax.Array]) -> Any:
    """The state with each row table cut to the rows `ids[kind]` (an id past the table's end,
    the padding of `unique_ids`, reads its last row: a row no score will read)."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    kinds = table_kinds(state, tables)
    out = [leaf[jnp.minimum(ids[kind], leaf.shape[0] - 1)] if kind else leaf
           for leaf, kind in zip(leaves, kinds, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out)


def scatter_rows(total: Any, tables: dict[str, str], grads: Any,
                 ids: dict[str, jax.Array]) -> Any:
    """`total` (full-size, like the run's parameters) plus per-unit gradients summed over the
    units: `grads` leaves `[units, ...]`, row tables `[units, m, ...]` added at the ids
    `ids[kind] [units, m]` (padding ids dropped), dense leaves summed."""
    leaves = jax.tree_util.tree_leaves(grads)
    targets, treedef = jax.tree_util.tree_flatten(total)
    out = []
    for leaf, target, kind in zip(leaves, targets, table_kinds(total, tables), strict=True):
        if not kind:
            out.append(target + leaf.sum(axis=0))
            continue
        rows = leaf.reshape((-1,) + target.shape[1:])
        out.append(target.at[ids[kind].reshape(-1)].add(rows, mode="drop"))
    return jax.tree_util.tree_unflatten(treedef, out)


def private_leaves(state: Any, tables: dict[str, str], user_rows: str) -> list[bool]:
    """For each leaf of a run's parameters, whether DP-SGD clips and noises it: every leaf, or
    (`user_rows = "local"`) every leaf but the user row tables."""
    return [not (user_rows == "local" and kind == "users")
            for kind in table_kinds(state, tables)]


def _rows_times(tree: Any, state: Any, tables: dict[str, str], kind: str,
                weights: jax.Array) -> Any:
    """`tree` (shaped like `state`, or its gathered rows) with the rows of each `kind` table
    multiplied by `weights [rows]`; a table padded past `weights` (a sharded run's zero rows,
    `parallel.pad_rows`) has its padding rows multiplied by 0."""

    def weighted(leaf):
        padding = leaf.shape[0] - weights.shape[0]
        rows = jnp.pad(weights, (0, padding)) if padding > 0 else weights
        return leaf * rows.reshape((-1,) + (1,) * (leaf.ndim - 1))

    leaves, treedef = jax.tree_util.tree_flatten(tree)
    # (a scalar leaf is a zero standing for a whole table: nothing to weight)
    out = [weighted(leaf) if table == kind and jnp.ndim(leaf) else leaf
           for leaf, table in zip(leaves, table_kinds(state, tables), strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out)


def check_row_tables(graphdef: Any) -> dict[str, str]:
    """The model's row tables (`models.base.row_tables`).

    Raises:
        ConfigError: a model that declares none, whose per-user gradient is not a function of
            the user's own rows.
    """
    tables = row_tables(graphdef)
    if tables is None:
        raise ConfigError(
            f"key model.name: {graphdef.nodes[0].type.__name__} scores a user from other "
            "users' rows (or from no row table), so a user's gradient is not bounded by "
            "clipping that user's own; private training covers mf, mlp, neumf and the "
            "sequence models (sasrec, hstu, bert4rec)")
    return tables


# A unit's ids are de-duplicated by marking them in a vector of the table's length when the
# table has at most this many rows per id (`unique_ids`), else by sorting them (`jnp.unique`).
MARKED_ROWS_PER_ID = 32


def unique_ids(touched: dict[str, jax.Array], sizes: dict[str, int],
               one_user: bool = False) -> dict[str, jax.Array]:
    """Sorted unique ids of each kind, padded past the table's end (still sorted; a padding
    id is never looked up: `searchsorted` finds every real id first). Ids lie in
    `[0, sizes[kind])`, as a unit's users, items and sampled negatives do, or equal
    `sizes[kind]` (a silo's padding rows, `silo_arrays`), which is the padding value itself.

    A table of at most `MARKED_ROWS_PER_ID` rows per id (a user-level unit's 320 ids into
    ml-100k's 1,682 items) marks the ids in a boolean vector of its length and reads the marked
    positions back in order (`jnp.nonzero`), which equals `jnp.unique` exactly and is cheaper:
    XLA's CPU sort calls a comparator per comparison, and sorting each unit's ids took 28% of a
    user-level BPR-MF step at ml-100k's size (`bench/privacy.py`). Units of at most
    `COMPARED_IDS` ids (one row and its negatives, at example level) compare every pair
    (`_compared_unique`, no sort); larger units into large tables sort.

    `one_user`: every user id of the unit is the same (a unit is one user's rows, or one
    row: not a silo), so `users` is that one id (`[1]`): the unit gathers, differentiates and
    scatters one user row instead of one per scored pair (a user-level unit of 64 BPR rows
    with 4 negatives had 320 user slots, 319 of them padding).
    """
    out = {}
    for kind, values in touched.items():
        if one_user and kind == "users":
            out[kind] = values[:1]
            continue
        size, slots = sizes[kind], values.shape[0]
        if slots <= COMPARED_IDS:
            out[kind] = _compared_unique(values, size)
        elif size <= MARKED_ROWS_PER_ID * slots:
            marked = jnp.zeros(size, bool).at[values].set(True, mode="drop")
            (out[kind],) = jnp.nonzero(marked, size=slots, fill_value=size)
            out[kind] = out[kind].astype(values.dtype)
        else:
            out[kind] = jnp.unique(values, size=slots, fill_value=size)
    return out


def _compared_unique(values: jax.Array, fill: int) -> jax.Array:
    """`jnp.unique(values, size=len(values), fill_value=fill)` of a few values, by comparing
    every pair: each first occurrence goes to the position of its rank among them."""
    slots = values.shape[0]
    earlier = jnp.tril(jnp.ones((slots, slots), bool), -1)
    equal = values[:, None] == values[None, :]
    first = ~jnp.any(equal & earlier, axis=1)
    rank = jnp.sum(first[None, :] & (values[None, :] < values[:, None]), axis=1)
    return jnp.full(slots, fill, values.dtype).at[jnp.where(first, rank, slots)].set(
        values, mode="drop")


def local_objective(graphdef: Any, tables: dict[str, str], loss_name: str, params: Any,
                    constants: Any, ids: dict[str, jax.Array], *, n_items: int,
                    n_negatives: int, objective: Callable[..., Any] | None = None
                    ) -> tuple[Any, Callable[..., Any]]:
    """`(local_params, objective)`: the run's parameters (`params`, `{"prediction": model
    state, ...}`) with each row table cut to the rows `ids`, and the run's objective over
    them, its global ids mapped to the gathered rows, so a gradient or a local step touches
    `ids`' rows alone. `objective(score_pairs, score_all) -> loss_fn(params, batch, key, *,
    hparams)` builds the run's objective over the scorers it is given (the ordinary step's
    own builder, `tasks.ordinary._objective_of`, so a private PDA run trains PDA's causal
    objective and a private MACR run MACR's, whose user and item modules are whole vectors
    beside the model: dense parameters here); None: the loss alone
    (`train.objectives.make_objective`) of the model state."""
    local_params = gather_rows(params, tables, ids)
    local_scorers = make_scorers(graphdef, gather_rows(constants, tables, ids))

    def score_pairs(p, users, items, key=None, dropout_rate=None):
        return local_scorers.score_pairs(
            p, jnp.searchsorted(ids["users"], users), jnp.searchsorted(ids["items"], items),
            key=key, dropout_rate=dropout_rate)

    if objective is None:
        loss = make_objective(loss_name, score_pairs, None, n_items=n_items,
                              n_negatives=n_negatives)

        def plain(p, batch, key, hparams=None):
            return loss(p["prediction"], batch, key)

        return local_params, plain
    return local_params, objective(score_pairs, None)


def make_unit_gradient(graphdef: Any, loss_name: str, *, n_users: int, n_items: int,
                       n_negatives: int, user_rows: str = "noised",
                       objective: Callable[..., Any] | None = None,
                       one_user: bool = False, samples_negatives: bool = False
                       ) -> Callable[..., Any]:
    """Builds `unit_gradient(params, constants, batch, key, hparams) -> (grads, ids, loss,
    norm, None)`: one unit's gradient of the sum of its rows' losses (`train.objectives.
    make_objective`, the loss of the ordinary step, on `batch [k]`), unclipped, over its
    gathered rows (`grads` row tables `[m, ...]` at `ids[kind] [m]`) and the dense
    parameters; `loss` that sum and `norm` the norm of its private part (`private_leaves`:
    without the user rows when `user_rows = "local"`). The `unit_fn` of
    `make_private_step`. `one_user`: each unit's rows are one user's (`unique_ids`).
    `samples_negatives`: the objective draws negatives whatever the loss (PDA, MACR), so the
    unit gathers their rows too.

    Raises:
        ConfigError: a model that declares no row tables (`check_row_tables`).
    """
    tables = check_row_tables(graphdef)
    sizes = {"users": n_users, "items": n_items}

    def unit_gradient(params, constants, batch, key, hparams=None):
        # the negatives drawn once: the gathered rows' and the objective's (the same key)
        users, items, batch = with_drawn_negatives(loss_name, batch, key, n_items, n_negatives,
                                                   samples_negatives)
        ids = unique_ids({"users": users, "items": items}, sizes, one_user)
        local_params, local = local_objective(graphdef, tables, loss_name, params, constants,
                                              ids, n_items=n_items, n_negatives=n_negatives,
                                              objective=objective)
        n_rows = jnp.sum(batch["mask"])

        def summed(p):
            loss, _ = local(p, batch, key, hparams=hparams)
            return loss * n_rows  # the objective is the mean over the unit's rows

        loss, grads = jax.value_and_grad(summed)(local_params)
        grads = only_trained_items(grads, params, tables, batch, ids, n_items)
        return grads, ids, loss, private_norm(grads, params, tables, user_rows), None

    def draws(batch, key):
        """The unit's negatives of `key` (`drawn_negatives`), which `unit_gradient` reads
        from its batch instead of drawing them: `make_private_step` draws every slot's at
        once, before its chunks."""
        return drawn_negatives(loss_name, batch, key, n_items, n_negatives, samples_negatives)

    unit_gradient.draws = draws
    return unit_gradient


def trained_positions(batch: dict[str, jax.Array]) -> jax.Array | None:
    """A sequence unit's count of the positions its loss sums: the non-padding `targets` of
    its unmasked windows (next-item losses) or their real tokens (`sequences`, BERT4Rec's
    masked items); None for a unit of rows (no windows)."""
    tokens = batch.get("targets", batch.get("sequences"))
    if tokens is None:
        return None
    return jnp.sum((tokens != 0) & batch["mask"][:, None])


def make_sequence_unit_gradient(loss_fn: Callable[..., Any], n_tokens: int
                                ) -> Callable[..., Any]:
    """Builds the `unit_fn` of `make_private_step` for a sequence model: one unit's gradient
    of the sum of its trained positions' losses, over the whole parameter state.

    `loss_fn(params, batch, key) -> []` is the run's loss (`train.sequence.make_sequence_loss`:
    the mean over the batch's trained positions; `mask [k]` drops the unit's padding
    windows); the unit's batch holds its `k` windows (`inputs`, `targets` for next-item
    losses, `sequences` for `masked_item`). The sum is that mean times the unit's trained
    positions (non-padding targets; for `masked_item`, its real tokens, of which the loss
    masks a drawn share). The token table's gradient is returned whole, at ids `0 ..
    n_tokens - 1` (`ids["tokens"]`), for `scatter_rows`.
    """

    def unit_gradient(params, constants, batch, key, hparams=None):
        del constants, hparams  # a sequence model's state is all parameters
        trained = trained_positions(batch)

        def summed(p):
            return loss_fn(p["prediction"], batch, key) * trained

        loss, grads = jax.value_and_grad(summed)(params)
        ids = {"tokens": jnp.arange(n_tokens, dtype=jnp.int32)}
        return grads, ids, loss, optax.tree.norm(grads), None

    return unit_gradient


def only_trained_items(tree: Any, params: Any, tables: dict[str, str], batch: dict[str, Any],
                       ids: dict[str, jax.Array], n_items: int) -> Any:
    """`tree` (gathered rows) with the item rows outside the selection (`TRAINED_ITEMS`, when
    the batch carries it) set to 0."""
    if TRAINED_ITEMS not in batch:
        return tree
    chosen = batch[TRAINED_ITEMS][jnp.minimum(ids["items"], n_items - 1)]
    return _rows_times(tree, params, tables, "items", chosen)


def private_norm(tree: Any, params: Any, tables: dict[str, str], user_rows: str) -> jax.Array:
    """The norm of the leaves DP clips (`private_leaves`)."""
    private = private_leaves(params, tables, user_rows)
    return optax.tree.norm([leaf for leaf, keep in zip(jax.tree.leaves(tree), private,
                                                        strict=True) if keep])


def make_dp_train_step(graphdef: Any, loss_name: str, optimizer: optax.GradientTransformation,
                       spec: DPSpec, *, n_users: int, n_items: int, n_negatives: int,
                       objective: Callable[..., Any] | None = None,
                       samples_negatives: bool = False
                       ) -> Callable[[TrainState, dict[str, Any], jax.Array],
                                     tuple[TrainState, dict[str, jax.Array]]]:
    """Builds `dp_step(state, data, key) -> (state, metrics)`, the private counterpart of
    `train.step.make_train_step`'s step, for a state whose params are the run's
    (`{"prediction": model state}`, and MACR's modules beside it): `make_private_step` over
    each unit's gradient (`make_unit_gradient`) of the run's `objective` (`local_objective`;
    a private PDA run's reads `shared_log_popularity`, counted under DP:
    `noisy_log_popularity`; `samples_negatives`: the objective draws negatives whatever the
    loss)."""
    unit_gradient = make_unit_gradient(graphdef, loss_name, n_users=n_users, n_items=n_items,
                                       n_negatives=n_negatives, user_rows=spec.user_rows,
                                       objective=objective, one_user=not spec.silos,
                                       samples_negatives=samples_negatives)
    return make_private_step(unit_gradient, optimizer, spec, check_row_tables(graphdef),
                             n_items=n_items)


def make_private_step(unit_fn: Callable[..., Any], optimizer: optax.GradientTransformation,
                      spec: DPSpec, tables: dict[str, str], *, n_items: int | None = None
                      ) -> Callable[[TrainState, dict[str, Any], jax.Array],
                                    tuple[TrainState, dict[str, jax.Array]]]:
    """Builds `step(state, data, key, apply=True) -> (state, metrics)`: one private step
    (DP-SGD) or round (DP-FedAvg) over Poisson-sampled units.

    `unit_fn(params, constants, batch, key, hparams) -> (update, ids, loss, norm, kept)`,
    `params` the run's parameters (`state.params`: `{"prediction": model state}` and, for
    MACR, its modules beside it), gives one unit's contribution over its gathered rows
    (`update`, shaped like `params` with each row table cut to `ids`: a gradient or a client's
    pseudo-gradient, at `ids`), its loss, the norm of its private part and, for a client that
    keeps its own rows (`kept`, gathered rows: federated training), their new values, set
    into the state as they are (never summed, clipped or noised); None otherwise.

    `data` holds the units (`unit_arrays`, on the device) and the `shared_` arrays of the
    ordinary epoch (`shared_constants`, `shared_seen_mask`, ...). The step folds `state.step`
    into `key` as the ordinary step does, samples its units, and applies
    `optimizer.update` to the noisy mean of the clipped updates (the module doc).
    `apply` False (the epoch's after a bad step) keeps the state, as a step whose loss, noisy
    gradient or clients' rows are not finite does (`train.step.guarded_update`; checked
    before the update, as the ordinary step checks its gradient: an update that overflows a
    finite gradient is caught by the next step's loss).
    With `spec.adaptive_threshold` > 0 (DP-AdaFEST; `n_items`, the item table's real row
    count, must be given) the step sums each valid unit's clipped contribution map over the
    ids `unit_fn` returns, adds the selection noise and keeps only the selected item rows'
    gradient and noise (`DPSpec.adaptive_threshold`).
    `metrics`: `loss` (the sampled units' mean row loss: NOT private), `finite`, `sampled`
    (units Poisson drew), `dropped` (beyond `capacity`), `clipped` (units whose norm
    exceeded C), `mean_norm` and, with AdaFEST, `selected` (item rows selected).
    """
    row_names = ("users", "items", "ratings", "weights", "propensities", "inputs", "targets",
                 "sequences")
    # Units of one row (example level: about 8 chunks a step) whose function says how it
    # draws its random inputs (`make_unit_gradient`'s negatives) have them drawn for every
    # slot of the step at once: the same values (each from its unit's key) in one vmapped
    # draw instead of one per chunk (on CPUs each draw pays a dispatch of jax's Threefry
    # loop, `xla_cpu`). Units of many rows run 2-3 chunks a step, where drawing every slot's
    # (the capacity's) costs more than it saves.
    draws = getattr(unit_fn, "draws", None) if spec.examples_per_unit == 1 else None
    adaptive = spec.adaptive_threshold > 0
    if adaptive and n_items is None:
        raise ValueError("DP-AdaFEST's selection needs the item table's row count (n_items)")

    def step(state: TrainState, data: dict[str, Any], key: jax.Array, apply: Any = True):
        step_key = streams.index(key, state.step)
        units, valid, n_sampled = sample_units(streams.derive(step_key, streams.Step.UNITS),
                                               spec)
        shared = {name: value for name, value in data.items() if name.startswith("shared_")}
        params = state.params  # {"prediction": model state, ...}
        private = private_leaves(params, tables, spec.user_rows)
        constants = data.get("shared_constants")  # none for a sequence model
        extra = {} if state.hparams is None else {"hparams": state.hparams}

        def unit_batch(unit, is_valid):
            batch = {name: data[name][unit] for name in row_names if name in data}
            batch["mask"] = data["unit_mask"][unit] & is_valid
            return batch

        def one_unit(unit, is_valid, unit_key, drawn):
            batch = {**unit_batch(unit, is_valid), **drawn}
            update, ids, loss, norm, kept = unit_fn(params, constants, {**batch, **shared},
                                                    unit_key, **extra)
            factor = jnp.minimum(1.0, spec.clip / jnp.maximum(norm, 1e-12))
            leaves, treedef = jax.tree_util.tree_flatten(update)
            leaves = [jnp.where(is_valid, leaf * factor if keep else leaf, 0.0)
                      for leaf, keep in zip(leaves, private, strict=True)]
            update = jax.tree_util.tree_unflatten(treedef, leaves)
            if kept is not None:  # a padding unit sets no row (an id past every table)
                ids = dict(ids, users=jnp.where(is_valid, ids["users"],
                                                jnp.iinfo(ids["users"].dtype).max))
            contribution = contribution_map(update, ids, is_valid) if adaptive else None
            # the rows a unit's loss is summed over: its rows, or a sequence unit's positions
            count = trained_positions(batch)
            count = jnp.sum(batch["mask"]) if count is None else count
            return update, ids, loss, norm, count, kept, contribution

        def contribution_map(update, ids, is_valid):
            """AdaFEST: 1 on each of the unit's gathered item rows whose gradient is not zero
            (a masked row's item and negatives read nothing), scaled to L2 norm at most
            C_1; 0 for a padding unit. `[m]`, at `ids["items"]`."""
            kinds = table_kinds(params, tables)
            rows = [jnp.any(leaf.reshape(leaf.shape[0], -1) != 0, axis=1)
                    for leaf, kind in zip(jax.tree.leaves(update), kinds, strict=True)
                    if kind == "items" and jnp.ndim(leaf)]
            touched = functools.reduce(jnp.logical_or, rows) & (ids["items"] < n_items)
            n_touched = jnp.sum(touched)
            scale = jnp.minimum(1.0, spec.contribution_clip
                                / jnp.sqrt(jnp.maximum(n_touched, 1)))
            return jnp.where(touched & is_valid, scale, 0.0)

        # each unit's loss draws from its own key (its negatives and dropout)
        unit_stream = streams.derive(step_key, streams.Step.UNIT)
        unit_keys = jax.vmap(lambda u: streams.index(unit_stream, u))(units)
        n_valid = jnp.sum(valid)
        drawn = ({} if draws is None else jax.vmap(
            lambda unit, is_valid, unit_key: draws({**unit_batch(unit, is_valid), **shared},
                                                   unit_key))(units, valid, unit_keys))

        def chunk(index, carry):
            """Units `index * chunk .. + chunk`, vmapped, added to the running sums."""
            summed, kept_rows, losses, norms, counts, touched = carry
            at = index * spec.chunk + jnp.arange(spec.chunk)
            update, ids, loss, norm, count, kept, contribution = jax.vmap(one_unit)(
                units[at], valid[at], unit_keys[at], jax.tree.map(lambda a: a[at], drawn))
            summed = scatter_rows(summed, tables, update, ids)
            if adaptive:  # the units' clipped contribution maps, summed per item row
                touched = touched.at[ids["items"]].add(contribution, mode="drop")
            if kept is not None:
                kept_rows = set_rows(kept_rows, tables, "users", kept, ids["users"])
            return (summed, kept_rows, losses.at[at].set(loss), norms.at[at].set(norm),
                    counts.at[at].set(count), touched)

        # The sampled units come first (`sample_units`): only the chunks holding some run,
        # so the padding up to `capacity` costs at most one chunk's work.
        empty = (jax.tree.map(jnp.zeros_like, params), params, jnp.zeros(spec.capacity),
                 jnp.zeros(spec.capacity), jnp.zeros(spec.capacity, jnp.int32),
                 jnp.zeros(n_items if adaptive else 0))
        summed, kept_rows, losses, norms, counts, touched = jax.lax.fori_loop(
            0, (n_valid + spec.chunk - 1) // spec.chunk, chunk, empty)
        selected = None
        if adaptive:  # DP-AdaFEST: this step's item rows, chosen from noisy counts
            selection_noise = jax.random.normal(
                streams.derive(step_key, streams.Step.SELECTION), touched.shape)
            noisy = touched + spec.adaptive_noise * spec.contribution_clip * selection_noise
            selected = (noisy >= spec.adaptive_threshold).astype(touched.dtype)
            summed = _rows_times(summed, params, tables, "items", selected)
        noise_key = streams.derive(step_key, streams.Step.NOISE)
        leaves, treedef = jax.tree_util.tree_flatten(summed)
        noise_keys = jax.random.split(noise_key, len(leaves))
        std = spec.noise_multiplier * spec.clip if spec.noise_multiplier > 0 else 0.0
        noise = [std * jax.random.normal(k, leaf.shape, leaf.dtype) if keep and std else 0.0
                 for leaf, k, keep in zip(leaves, noise_keys, private, strict=True)]
        noise = jax.tree_util.tree_unflatten(treedef, noise)
        if TRAINED_ITEMS in data:  # rows outside the selection get no noise either
            noise = _rows_times(noise, params, tables, "items", data[TRAINED_ITEMS])
        if selected is not None:
            noise = _rows_times(noise, params, tables, "items", selected)
        gradient = jax.tree.map(lambda total, added: (total + added) / spec.expected_batch,
                                summed, noise)
        loss = jnp.sum(losses) / jnp.maximum(jnp.sum(counts), 1)
        # The clients' own rows, as they left them (federated), are checked with the gradient.
        own_rows = ([leaf for leaf, kind in zip(jax.tree.leaves(kept_rows),
                                                table_kinds(params, tables), strict=True)
                     if kind == "users"] if spec.local_steps else [])
        finite = jnp.isfinite(loss) & all_finite([gradient, own_rows])
        ok = finite & apply
        new_params, opt_state = guarded_update(optimizer, gradient, state.params,
                                               state.opt_state, ok)
        if spec.local_steps:
            new_params = _with_kind(
                new_params,
                jax.tree.map(lambda new, old: jnp.where(ok, new, old), kept_rows, params),
                tables, "users")
        state = TrainState(params=new_params, opt_state=opt_state,
                           step=state.step + ok.astype(state.step.dtype), hparams=state.hparams)
        metrics = {
            "loss": loss, "finite": finite, "sampled": n_sampled,
            "dropped": n_sampled - n_valid,
            "clipped": jnp.sum(valid & (norms > spec.clip)),
            "mean_norm": jnp.sum(jnp.where(valid, norms, 0.0)) / jnp.maximum(n_valid, 1),
        }
        if selected is not None:
            metrics["selected"] = jnp.sum(selected)
        return state, metrics

    return step


def set_rows(state: Any, tables: dict[str, str], kind: str, rows: Any,
             ids: jax.Array) -> Any:
    """`state` with the rows `ids [units, m]` of each `kind` table set to `rows` (gathered
    `[units, m, ...]`; ids past the table's end dropped)."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    new = jax.tree_util.tree_leaves(rows)
    out = []
    for leaf, values, table in zip(leaves, new, table_kinds(state, tables), strict=True):
        if table == kind:
            leaf = leaf.at[ids.reshape(-1)].set(
                values.reshape((-1,) + leaf.shape[1:]), mode="drop")
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def _with_kind(state: Any, source: Any, tables: dict[str, str], kind: str) -> Any:
    """`state` with its `kind` tables taken from `source` (same structure)."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    out = [new if table == kind else leaf
           for leaf, new, table in zip(leaves, jax.tree_util.tree_leaves(source),
                                       table_kinds(state, tables), strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out)


def make_dp_epoch(dp_step: Callable[..., Any], spec: DPSpec) -> Callable[..., Any]:
    """`dp_epoch(state, data, key, epoch) -> (state, metrics)`: `spec.steps_per_epoch` steps
    under one `lax.scan`, the interface of `train.step.make_train_epoch` (the run key's
    `streams.Epoch.STEPS` stream, with the step count folded in by each step, so a resumed
    run replays the same samples). After a non-finite step the epoch stops updating and
    reports it in `first_bad_batch`. `metrics` adds `dropped` (sampled units beyond the
    capacity, summed over the epoch), `clipped_fraction` and, with DP-AdaFEST,
    `selected_rows` (item rows selected per step, the mean over the epoch's steps)."""

    def dp_epoch(state, data, key, epoch):
        del epoch  # each step's sample comes from the step count
        step_key = streams.derive(key, streams.Epoch.STEPS)

        def body(carry, index):
            state, first_bad = carry
            healthy = first_bad < 0
            state, metrics = dp_step(state, data, step_key, apply=healthy)
            first_bad = jnp.where(healthy & ~metrics["finite"], index, first_bad)
            good = healthy & metrics["finite"]
            return (state, first_bad), (jnp.where(good, metrics["loss"], 0.0),
                                        metrics["dropped"], metrics["clipped"],
                                        metrics["sampled"] - metrics["dropped"],
                                        metrics.get("selected", 0.0))

        (state, first_bad), (losses, dropped, clipped, kept, selected) = jax.lax.scan(
            body, (state, jnp.asarray(-1, jnp.int32)),
            jnp.arange(spec.steps_per_epoch, dtype=jnp.int32))
        out = {"loss": epoch_loss(losses, first_bad), "first_bad_batch": first_bad,
               "dropped": jnp.sum(dropped),
               "clipped_fraction": jnp.sum(clipped) / jnp.maximum(jnp.sum(kept), 1)}
        if spec.adaptive_threshold:
            out["selected_rows"] = jnp.mean(selected)
        return state, out

    return dp_epoch
