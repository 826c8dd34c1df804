"""Named, hierarchical random streams: every `jax.random.fold_in` of the library, by name.

A key is split into roles by folding a *stream id* into it; a role's key is split further the
same way, so the streams form a tree (run seed -> role -> sub-role). Each level is an
`enum.IntEnum` whose values are unique (`@enum.unique`), so no id serves two roles at one
level. A *data index* (a seed, an epoch, a step, a user, a round, a fold) is never folded at
the level of stream ids: it is folded into a key that was first derived for that index family
(`index`), so "user 2" can never equal "stream 2".

    key = jax.random.key(seed)                  # a run seed
    init_key = derive(key, Run.INIT)            # the model's initialisation
    train_key = derive(key, Run.TRAIN)          # the training loop's draws
    order_key = index(derive(train_key, Epoch.ORDER), epoch)   # one epoch's shuffle

Roots. Seeds are never folded: each seed is its own root `jax.random.key(seed)`. Several
roots can be the same key when their seeds are equal numbers (`run.seed`, `sim.seed`,
`env.seed`, `policy.seed`, `target.seed`, `planted.seed`), so the enums folded into roots
that can meet keep disjoint values: the static world (`World`, ids 0-6), the dynamic
environment (`Env`, 16-21), the policies' scores (`Policy`, 22), the truth of off-policy
evaluation (`Ope.TRUTH`, 31) and the world with planted causes (`Planted`, 40-41, apart from
every root level, `Run` included, since a run trains on that world with any `run.seed`).
`Run` (0, 1, 2, 7919) shares ids 0-2 with `World`: a run on the simulator with
`run.seed == sim.seed` (the defaults) initialises its model from the key of the world's user
factors (drawn differently from it, but the same key); changing that would change every
published number, so it stays as it is.

The numeric values are those the library used before the streams were named, so results are
unchanged by naming them.
"""

from __future__ import annotations

import enum

import jax


@enum.unique
class Run(enum.IntEnum):
    """Roles of a run seed's key `key(seed)` (`tasks.ordinary`, `tasks.sequential`,
    `train.program`); `PROPENSITY_MODEL` is folded into `key(run.seed)` once per run."""

    INIT = 0  # the prediction model's initial parameters
    TRAIN = 1  # everything the training loop draws (orders, negatives, dropout, cells)
    IMPUTATION = 2  # the imputation model of the joint doubly robust methods
    PROPENSITY_MODEL = 7919  # a learned / logistic propensity model fitted for the run
    PRIVATE_ITEMS = 7927  # DP-SGD's noisy item counts (the trained item rows, PDA's popularity)
    PRIVATE_ROWS = 7933  # which of a user's rows a private run keeps (`max_examples_per_user`)
    SILOS = 7937  # which silo each user belongs to (federated silos, `privacy.silos`)


@enum.unique
class Epoch(enum.IntEnum):
    """Roles of the training key `derive(key(seed), Run.TRAIN)` within the loop (`train.step`,
    `tasks.sequential`)."""

    STEPS = 0  # the per-step keys (the step index is folded in under this stream)
    ORDER = 1  # the epoch's shuffle (the epoch index is folded in under this stream)
    BUCKET_ORDER = 2  # sequential: each length bucket's shuffle (bucket index, then ORDER)
    BATCH_ORDER = 3  # sequential: the order of all buckets' batches (epoch index below)
    STREAM_UNITS = 4  # a streamed log: the order of a host's row groups (epoch, then host)
    STREAM_WINDOWS = 5  # a streamed log: each window's shuffle (epoch, host, then window)


@enum.unique
class Step(enum.IntEnum):
    """Roles of one step's key `index(derive(train_key, Epoch.STEPS), step)` inside a loss
    (`train.objectives`, `causal.training`); a full-batch fit's step key is
    `index(fit_key, epoch)` (`train.full_batch`)."""

    NEGATIVES = 0  # sampled negative items (redraw attempts are indexed below it)
    DROPOUT = 1  # the model's dropout masks (layers are indexed below it)
    CELLS = 2  # cells drawn uniformly from the whole matrix (the all-cells losses)
    UNITS = 3  # DP-SGD: which privacy units the step samples (`privacy.dpsgd`)
    UNIT = 4  # DP-SGD: each sampled unit's loss key (unit index below it; its Step roles below)
    NOISE = 5  # DP-SGD: the Gaussian noise added to the summed clipped gradients
    LOCAL_STEPS = 6  # federated: a client's local steps (step index below it; Step roles below)
    SELECTION = 7  # DP-AdaFEST: the Gaussian noise on the step's counts of touched item rows


@enum.unique
class World(enum.IntEnum):
    """Exogenous variables of the static SCM world (`sim.world`), from `key(sim.seed)`."""

    USERS = 0  # user tastes theta_u
    ITEMS = 1  # item attributes beta_i
    POPULARITY = 2  # standardised log popularity z_i
    CELLS = 3  # per-cell rating noise and exposure uniforms (user index below it)
    # 4 was a separate exposure stream before the per-cell hash; left unused.
    MAR = 5  # the missing-at-random test items (user index below it)
    CALIBRATION = 6  # the calibration subsample of large worlds


@enum.unique
class Env(enum.IntEnum):
    """Streams of the dynamic environment (`sim.env`, `sim.rollout`). `NOISE`, `POLICY` and
    `ARRIVAL` are folded into an episode's key; `USERS`, `ITEMS` and `POPULARITY` into the
    world's key `key(env.seed)` (one enum, so the two never meet when one key serves both)."""

    NOISE = 16  # per-step exogenous noise: examination, clicks, organic choice (step below)
    POLICY = 17  # the policy's own noise (step index below it)
    ARRIVAL = 18  # which user arrives at reset
    USERS = 19  # user tastes
    ITEMS = 20  # item attributes
    POPULARITY = 21  # log popularity (item quality)


@enum.unique
class Policy(enum.IntEnum):
    """Roles of a `[policy]` / `[target]` section's key `key(policy.seed)` (`sim.logs`)."""

    SCORES = 22  # the scorer's noise ("noisy_oracle", "random")


@enum.unique
class Log(enum.IntEnum):
    """Roles of a simulated log's key (`sim.logs.simulate_log`), which also carries the
    users' episodes (user index folded in directly, at this level: the one place where an index
    and a stream id share a level; user 1's episode key is the `SLOT_PROPENSITIES` key)."""

    SLOT_PROPENSITIES = 1  # Monte-Carlo Plackett–Luce slot marginals (user index below it)


@enum.unique
class Ope(enum.IntEnum):
    """Roles of an off-policy evaluation seed's key `key(run.seed + i)` (`tasks.ope`);
    `TRUTH` is folded into `key(run.seed)`, seed 0's root, at an id no seed stream uses."""

    LOG = 0  # the logged rounds (round index below it)
    MARGINALS = 1  # the policies' slot marginals (`Marginals` below it)
    FOLDS = 2  # the cross-fitting fold assignment
    REWARD_MODEL = 3  # the reward models (fold index below it)
    TRUTH = 31  # the on-policy truth rounds (round index below it)


@enum.unique
class Marginals(enum.IntEnum):
    """Roles of the slot-marginals key `derive(key(seed), Ope.MARGINALS)` (`tasks.ope`)."""

    TARGET = 1  # the target policy's Monte-Carlo slates (user index below it)
    LOGGING = 2  # the logging policy's (user index below it)


@enum.unique
class Uplift(enum.IntEnum):
    """Roles of an uplift seed's key `key(run.seed + i)` (`tasks.uplift`)."""

    LOG = 0  # the simulated log (`Log`, and the users' episodes, below it)
    MODEL = 1  # the uplift model (`UpliftModel` below it)
    TREATED_OUTCOME_MODEL = 2  # the outcome model of shown cells (`UpliftModel` below it)
    CONTROL_OUTCOME_MODEL = 3  # the outcome model of cells not shown (`UpliftModel` below it)


@enum.unique
class UpliftModel(enum.IntEnum):
    """Roles of one uplift model's key `derive(key(seed), Uplift.MODEL)` (or an outcome
    model's) (`tasks.uplift`)."""

    INIT = 0  # the MF's initial parameters
    FIT = 1  # the fit (the epoch index is folded in below it by the training core)


@enum.unique
class Pairs(enum.IntEnum):
    """Roles of a DLCE fit's epoch key `index(derive(model_key, UpliftModel.FIT), epoch)`
    (`tasks.uplift`): the pairs of items each user's loss compares. (The values equal
    `Step.NEGATIVES` / `Step.DROPOUT`, at the same depth; the DLCE loss draws nothing else.)"""

    FIRST = 0  # the first item of each pair
    SECOND = 1  # the second item of each pair


@enum.unique
class Planted(enum.IntEnum):
    """Roles of the planted world's key `key(planted.seed)` (`sim.planted`)."""

    ITEMS = 40  # the items: topics, popularity, which items the rules use (`PlantedItems`)
    USERS = 41  # the users' histories (user index below it, then `PlantedUser`)


@enum.unique
class PlantedItems(enum.IntEnum):
    """Roles of the items' key `derive(key(planted.seed), Planted.ITEMS)` (`sim.planted`)."""

    TOPICS = 0  # each base item's topic
    POPULARITY = 1  # each item's standardised log popularity
    RULES = 2  # the items of the rules: antecedents, consequent, confounder


@enum.unique
class PlantedUser(enum.IntEnum):
    """Roles of one user's key `index(derive(key(planted.seed), Planted.USERS), user)`
    (`sim.planted`)."""

    TOPIC = 0  # the user's favoured topic
    BASE = 1  # the base items (Gumbel noise of the draw without replacement)
    ANTECEDENTS = 2  # each rule's two antecedent draws
    CONFOUNDERS = 3  # each confounder's copy-or-own draws
    CONSEQUENTS = 4  # each consequent's draw (one uniform: the structural noise of C)
    TIMES = 5  # the times of every consumption


def derive(key: jax.Array, stream: enum.IntEnum) -> jax.Array:
    """The key of the named `stream` under `key` (one level down the tree).

    Raises:
        TypeError: `stream` is not a member of one of the enums above (a bare integer would be
            an unnamed stream id, or a data index folded at the level of stream ids).
    """
    if not isinstance(stream, enum.IntEnum):
        raise TypeError(f"streams.derive: {stream!r} is not a named stream (a member of an "
                        "IntEnum of causalrec_jax.streams); fold a data index with index()")
    return jax.random.fold_in(key, int(stream))


def index(key: jax.Array, position: int | jax.Array) -> jax.Array:
    """The key of item `position` of an index family (a seed, epoch, step or user) whose
    stream `key` is; `key` must come from `derive`, never be a level of stream ids itself."""
    return jax.random.fold_in(key, position)
