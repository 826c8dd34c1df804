r"""A world with planted causes: histories in which some consumptions happen because earlier
ones did, so that every counterfactual explanation can be checked against the truth.

An explanation of a recommendation is *counterfactual* when removing it from the user's history
changes the recommendation; a *minimal* one has no smaller subset that does (PRINCE:
Ghazimatin et al., WSDM 2020, "PRINCE: Provider-side Interpretability with Counterfactual
Explanations in Recommender Systems"; ACCENT: Tran et al., SIGIR 2021, "Counterfactual
Explanations for Neural Recommenders"). On real data nobody knows the minimal sets; here they
are planted. Each rule `r` has two antecedents `A_r`, `B_r`, a consequent `C_r` and a
confounder `D_r` (four items no other rule uses):

- AND rule `A ∧ B -> C`: C follows when both were consumed; the minimal counterfactual sets of
  a consumption of C that the rule caused are `{A}` and `{B}` (either removal breaks it);
- OR rule `A ∨ B -> C`: C follows when either was; with both in the history the unique minimal
  set is `{A, B}` (removing one leaves the other to cause C), with one of them it is that one;
- the confounder `D` copies `A` with probability `rho` and has no effect on C: it is as
  correlated with C as `A` is at `rho = 1`, where no learner can tell them apart from the log
  (not identifiable: report it so, not as an explainer's failure);
- distractors: popular items (log popularity `popularity_sigma * z`) and the topic-mates of C
  (users favour one topic, and the antecedents of a rule are commoner among the users of its
  topic, so C's topic-mates are correlated with C without causing it).

Structural equations of user `u` (`sigmoid`, `logit`; `s = topic_strength`, `w = cause_window`,
`l = consequent_lag`; every draw from its own stream, `streams.PlantedUser`, under the user's
key)::

    tau_u   ~ U{0..n_topics-1}                                   favoured topic        (TOPIC)
    base_u  = the history_length base items drawn without replacement with logits
              popularity_sigma * z_i + s * 1[topic_i = tau_u]    (Gumbel top-k)        (BASE)
    p_ur    = sigmoid(logit(antecedent_rate) + s * 1[topic_r = tau_u])
    A_ur    = 1[U^A_ur < p_ur],  B_ur = 1[U^B_ur < p_ur]                        (ANTECEDENTS)
    D_ur    = A_ur if V_ur < rho else 1[V'_ur < p_ur]                           (CONFOUNDERS)
    cond_ur = A_ur ∧ B_ur (AND rule) or A_ur ∨ B_ur (OR rule)
    C_ur    = 1[U^C_ur < (rule_strength if cond_ur else consequent_rate)]        (CONSEQUENTS)
    times   : base items t ~ U(0, 1);  t_A, t_B ~ U(0, w);  T_r = max(t_A, t_B)         (TIMES)
              t_C = T_r + l * U;  t_D = T_r * U'

so `P(C | cond) = rule_strength`, `P(C | not cond) = consequent_rate`, C comes soon after the
antecedent that completed the condition (a sequential model sees the rule within a few
positions) and after its rule's antecedents and confounder, whether consumed or not (its time
says nothing about which were), and `D` has the marginal rate of `A` (with `topic_strength =
0` their correlation is exactly `rho`; the shared topic adds to it otherwise).

A consumption of C is *caused* by the rule when `cond_ur` holds and `consequent_rate <=
U^C_ur < rule_strength`: with the same noise `U^C_ur`, C would not have happened without the
antecedents (when `U^C_ur < consequent_rate` it happens anyway and has no counterfactual
explanation in the world). The counterfactual keeps everything else of the history as it is:
removing items changes only the consequents of rules whose condition they break.

Items: the `4 * n_rules` rule items are a random subset of the catalogue (rule `r` in topic
`r % n_topics`, its four items too); the other items are the base items, spread evenly over the
topics at random. Rule items are consumed only through their rules, never by the base process,
and no item repeats in a history, so a set of items names a set of history positions.

Shapes are static: every user has `history_length + 4 * n_rules` slots in time order, the
consumed ones first and `-1` after them (`PlantedHistories`); `sample_users` vmaps one user's
draw (`sample_user`) over users, jitted once per `PlantedSizes`. Dynamic numbers (rates,
`rho`, strengths) are a `PlantedParams` pytree, so a sweep over `rho` can reuse the program.
The learner's view (`planted_to_dataset`) is an implicit-feedback log whose timestamps are the
positions in each user's history (a `leave_one_out` split holds out the last two items); the
truth (`PlantedTruth`) lists every consumption of a consequent with its history, its minimal
counterfactual sets, its confounder and whether the rule caused it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax import streams
from causalrec_jax.config import PlantedConfig
from causalrec_jax.data.dataset import Dataset

PAD = -1
RULE_KINDS = ("and", "or")


@dataclasses.dataclass(frozen=True)
class PlantedSizes:
    """Static sizes of the planted world (hashable; a static argument under `jax.jit`).

    Attributes:
        n_users: number of users.
        n_items: number of items (rule items included).
        history_length: base items each user draws.
        n_and_rules: AND rules (rules `0..n_and_rules-1`).
        n_or_rules: OR rules (the rules after them).
        n_topics: number of topics.
    """

    n_users: int = 5000
    n_items: int = 300
    history_length: int = 20
    n_and_rules: int = 4
    n_or_rules: int = 4
    n_topics: int = 8

    @property
    def n_rules(self) -> int:
        """All rules, AND then OR."""
        return self.n_and_rules + self.n_or_rules

    @property
    def capacity(self) -> int:
        """Slots of a history: the base items and every rule item."""
        return self.history_length + 4 * self.n_rules

    @classmethod
    def from_config(cls, config: PlantedConfig) -> PlantedSizes:
        """The static part of a `[planted]` section (already checked by the config)."""
        return cls(n_users=config.n_users, n_items=config.n_items,
                   history_length=config.history_length, n_and_rules=config.n_and_rules,
                   n_or_rules=config.n_or_rules, n_topics=config.n_topics)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PlantedParams:
    """Dynamic numbers of the planted world (a pytree: `jax.vmap` over it to sweep one).

    Attributes:
        topic_strength: log-odds boost of the user's favoured topic, `s`.
        popularity_sigma: spread of the base items' log popularity.
        rule_strength: `P(C | condition)`.
        consequent_rate: `P(C | not condition)`.
        antecedent_rate: `P(A)` (and `P(B)`) for a user outside the rule's topic.
        rho: probability that the confounder copies the first antecedent.
        cause_window: the antecedents' times are uniform on `[0, cause_window)`.
        consequent_lag: a consequent comes within this after the later antecedent time.
    """

    topic_strength: jax.typing.ArrayLike = 2.0
    popularity_sigma: jax.typing.ArrayLike = 1.0
    rule_strength: jax.typing.ArrayLike = 0.9
    consequent_rate: jax.typing.ArrayLike = 0.02
    antecedent_rate: jax.typing.ArrayLike = 0.15
    rho: jax.typing.ArrayLike = 0.5
    cause_window: jax.typing.ArrayLike = 0.5
    consequent_lag: jax.typing.ArrayLike = 0.1

    @classmethod
    def from_config(cls, config: PlantedConfig) -> PlantedParams:
        """The dynamic part of a `[planted]` section."""
        return cls(**{field.name: getattr(config, field.name)
                      for field in dataclasses.fields(cls)})


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PlantedWorld:
    """The items and rules of a planted world (what every user shares).

    Attributes:
        item_topic: `[n_items]` int32 topic of each item (a rule's items: the rule's topic).
        standardized_log_popularity: `[n_items]` `z_i ~ N(0, 1)`; a base item's log popularity
            is `popularity_sigma * z_i` (rule items never come from the base process).
        is_rule_item: `[n_items]` bool.
        antecedents: `[n_rules, 2]` int32 items `(A_r, B_r)`.
        consequent: `[n_rules]` int32 items `C_r`.
        confounder: `[n_rules]` int32 items `D_r`.
        rule_topic: `[n_rules]` int32 topic of each rule.
        rule_is_and: `[n_rules]` bool, True for AND rules, False for OR rules.
    """

    item_topic: jax.Array
    standardized_log_popularity: jax.Array
    is_rule_item: jax.Array
    antecedents: jax.Array
    consequent: jax.Array
    confounder: jax.Array
    rule_topic: jax.Array
    rule_is_and: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PlantedHistories:
    """Every user's history and the draws of the rules (leading axis `[n_users]`; one user's
    draw from `sample_user` has no leading axis).

    Attributes:
        items: `[n_users, capacity]` int32 items in time order, `PAD` (-1) after the last.
        length: `[n_users]` int32 number of consumed items.
        user_topic: `[n_users]` int32 favoured topic `tau_u`.
        antecedent_consumed: `[n_users, n_rules, 2]` bool `(A_ur, B_ur)`.
        confounder_consumed: `[n_users, n_rules]` bool `D_ur`.
        condition: `[n_users, n_rules]` bool: the rule's condition held.
        consequent_consumed: `[n_users, n_rules]` bool `C_ur`.
        caused: `[n_users, n_rules]` bool: C consumed because of the rule (without its
            antecedents, with the same noise, it would not have been).
        antecedent_position: `[n_users, n_rules, 2]` int32 positions in `items`, -1 if absent.
        confounder_position: `[n_users, n_rules]` int32, -1 if absent.
        consequent_position: `[n_users, n_rules]` int32, -1 if absent.
    """

    items: jax.Array
    length: jax.Array
    user_topic: jax.Array
    antecedent_consumed: jax.Array
    confounder_consumed: jax.Array
    condition: jax.Array
    consequent_consumed: jax.Array
    caused: jax.Array
    antecedent_position: jax.Array
    confounder_position: jax.Array
    consequent_position: jax.Array


def make_planted_world(key: jax.Array, sizes: PlantedSizes) -> PlantedWorld:
    """The items and rules of the world of `key` (the root `key(planted.seed)`).

    Rule `r` uses items `(A_r, B_r, C_r, D_r)` of a random permutation of the catalogue (its
    first `4 * n_rules` entries) and sits in topic `r % n_topics`; base items get the topics
    `0..n_topics-1` in equal shares (up to one), in random order.
    """
    items_key = streams.derive(key, streams.Planted.ITEMS)
    n_rules, n_items = sizes.n_rules, sizes.n_items
    rule_items = jax.random.permutation(
        streams.derive(items_key, streams.PlantedItems.RULES), n_items)[: 4 * n_rules]
    antecedents = rule_items[: 2 * n_rules].reshape(2, n_rules).T
    consequent = rule_items[2 * n_rules: 3 * n_rules]
    confounder = rule_items[3 * n_rules:]
    rule_topic = jnp.arange(n_rules, dtype=jnp.int32) % sizes.n_topics
    base_topic = jax.random.permutation(
        streams.derive(items_key, streams.PlantedItems.TOPICS), n_items) % sizes.n_topics
    item_topic = base_topic.at[rule_items].set(jnp.tile(rule_topic, 4))
    z = jax.random.normal(streams.derive(items_key, streams.PlantedItems.POPULARITY), (n_items,))
    return PlantedWorld(
        item_topic=item_topic.astype(jnp.int32),
        standardized_log_popularity=z,
        is_rule_item=jnp.zeros(n_items, bool).at[rule_items].set(True),
        antecedents=antecedents.astype(jnp.int32),
        consequent=consequent.astype(jnp.int32),
        confounder=confounder.astype(jnp.int32),
        rule_topic=rule_topic,
        rule_is_and=jnp.arange(n_rules) < sizes.n_and_rules,
    )


def sample_user(
    key: jax.Array, world: PlantedWorld, sizes: PlantedSizes, params: PlantedParams
) -> PlantedHistories:
    """One user's history (the structural equations of the module docstring), unbatched.

    Args:
        key: the user's key, `index(derive(key(planted.seed), Planted.USERS), user)`.
        world: the items and rules.
        sizes: static sizes.
        params: the world's numbers.

    Returns:
        `PlantedHistories` without the leading user axis (`items [capacity]`, ...).
    """
    n_rules, length = sizes.n_rules, sizes.history_length
    topic = jax.random.randint(streams.derive(key, streams.PlantedUser.TOPIC), (), 0,
                               sizes.n_topics)
    # Base items: Gumbel top-k = a draw without replacement with the softmax weights.
    logits = (params.popularity_sigma * world.standardized_log_popularity
              + params.topic_strength * (world.item_topic == topic))
    logits = jnp.where(world.is_rule_item, -jnp.inf, logits)
    gumbel = jax.random.gumbel(streams.derive(key, streams.PlantedUser.BASE), logits.shape)
    _, base_items = jax.lax.top_k(logits + gumbel, length)

    rate = jax.nn.sigmoid(jax.scipy.special.logit(params.antecedent_rate)
                          + params.topic_strength * (world.rule_topic == topic))  # [R]
    antecedent = jax.random.uniform(
        streams.derive(key, streams.PlantedUser.ANTECEDENTS), (n_rules, 2)) < rate[:, None]
    copy_or_own = jax.random.uniform(
        streams.derive(key, streams.PlantedUser.CONFOUNDERS), (n_rules, 2))
    confounder = jnp.where(copy_or_own[:, 0] < params.rho, antecedent[:, 0],
                           copy_or_own[:, 1] < rate)
    condition = jnp.where(world.rule_is_and, antecedent.all(axis=1), antecedent.any(axis=1))
    noise = jax.random.uniform(streams.derive(key, streams.PlantedUser.CONSEQUENTS), (n_rules,))
    consequent = noise < jnp.where(condition, params.rule_strength, params.consequent_rate)
    caused = condition & consequent & (noise >= params.consequent_rate)

    # Events: base items, A, B, D, C; the unconsumed ones sort after every consumed one.
    uniform = jax.random.uniform(streams.derive(key, streams.PlantedUser.TIMES),
                                 (sizes.capacity,))
    cause_times = params.cause_window * uniform[length: length + 2 * n_rules].reshape(2, n_rules)
    latest = cause_times.max(axis=0)  # [R] when the later antecedent is (or would be) consumed
    times = jnp.concatenate([
        uniform[:length],
        cause_times.reshape(-1),
        latest * uniform[length + 2 * n_rules: length + 3 * n_rules],
        latest + params.consequent_lag * uniform[length + 3 * n_rules:],
    ])
    items = jnp.concatenate([base_items.astype(jnp.int32), world.antecedents[:, 0],
                             world.antecedents[:, 1], world.confounder, world.consequent])
    consumed = jnp.concatenate([jnp.ones(length, bool), antecedent[:, 0], antecedent[:, 1],
                                confounder, consequent])
    order = jnp.argsort(jnp.where(consumed, times, 2.0), stable=True)
    position = jnp.zeros(sizes.capacity, jnp.int32).at[order].set(
        jnp.arange(sizes.capacity, dtype=jnp.int32))
    position = jnp.where(consumed, position, -1)[length:].reshape(4, n_rules)
    return PlantedHistories(
        items=jnp.where(consumed[order], items[order], PAD),
        length=jnp.sum(consumed, dtype=jnp.int32),
        user_topic=topic.astype(jnp.int32),
        antecedent_consumed=antecedent,
        confounder_consumed=confounder,
        condition=condition,
        consequent_consumed=consequent,
        caused=caused,
        antecedent_position=position[:2].T,
        confounder_position=position[2],
        consequent_position=position[3],
    )


def user_keys(key: jax.Array, users: jax.Array) -> jax.Array:
    """`[len(users)]` keys of the users (`index(derive(key, Planted.USERS), user)`)."""
    users_key = streams.derive(key, streams.Planted.USERS)
    return jax.vmap(lambda user: streams.index(users_key, user))(users)


@functools.partial(jax.jit, static_argnums=1)
def sample_users(key: jax.Array, sizes: PlantedSizes, params: PlantedParams
                 ) -> tuple[PlantedWorld, PlantedHistories]:
    """The world of `key` and all its users' histories (vmapped over users, one program per
    `sizes`); deterministic in `key`."""
    world = make_planted_world(key, sizes)
    keys = user_keys(key, jnp.arange(sizes.n_users))
    histories = jax.vmap(sample_user, in_axes=(0, None, None, None))(keys, world, sizes, params)
    return world, histories


@dataclasses.dataclass(frozen=True, eq=False)
class PlantedTruth:
    """What the planted world knows: its rules, and every consumption of a consequent.

    Instance rows (`[n]`, one per user and rule whose consequent the user consumed; `select`
    keeps some of them) hold the item to explain, its position and the history before it;
    the explanation of instance `i` is a set of items of `history[i]`. Item and user ids are
    the world's, which are the dataset's internal ids (external ids are their decimal
    strings).

    Attributes:
        rule_kind: `[n_rules]` "and" / "or".
        rule_antecedents: `[n_rules, 2]` items `(A_r, B_r)`.
        rule_consequent: `[n_rules]` items `C_r`.
        rule_confounder: `[n_rules]` items `D_r`.
        rule_topic: `[n_rules]` topic of each rule.
        item_topic: `[n_items]` topic of each item.
        log_popularity: `[n_items]` log popularity of the base items (0 for rule items, which
            the base process never draws).
        user_topic: `[n_users]` each user's favoured topic.
        rho: the confounder strength the world was drawn with.
        user: `[n]` the user of each instance.
        rule: `[n]` its rule.
        item: `[n]` the consequent consumed (the item to explain).
        position: `[n]` its position in the user's history.
        history: `[n, max_position]` the items before it in time order, `PAD` (-1) after them.
        antecedent_present: `[n, 2]` bool: `A_r`, `B_r` are in the history.
        confounder_present: `[n]` bool: `D_r` is in the history.
        condition: `[n]` bool: the rule's condition held.
        caused: `[n]` bool: the rule caused this consumption (it has minimal counterfactual
            sets in the world; False when the consumption happened at the base rate).
    """

    rule_kind: np.ndarray
    rule_antecedents: np.ndarray
    rule_consequent: np.ndarray
    rule_confounder: np.ndarray
    rule_topic: np.ndarray
    item_topic: np.ndarray
    log_popularity: np.ndarray
    user_topic: np.ndarray
    rho: float
    user: np.ndarray
    rule: np.ndarray
    item: np.ndarray
    position: np.ndarray
    history: np.ndarray
    antecedent_present: np.ndarray
    confounder_present: np.ndarray
    condition: np.ndarray
    caused: np.ndarray

    INSTANCE_FIELDS = ("user", "rule", "item", "position", "history", "antecedent_present",
                       "confounder_present", "condition", "caused")

    def __len__(self) -> int:
        return len(self.user)

    @property
    def identifiable(self) -> bool:
        """False at `rho = 1`: the confounder always comes with the first antecedent, so no
        log tells them apart (scores there measure nothing about an explainer)."""
        return self.rho < 1

    @property
    def kind(self) -> np.ndarray:
        """`[n]` "and" / "or": the kind of each instance's rule."""
        return self.rule_kind[self.rule]

    def select(self, where: np.ndarray) -> PlantedTruth:
        """The instances where `where` (`[n]` bool, or indices) holds; rules kept."""
        return dataclasses.replace(self, **{name: getattr(self, name)[where]
                                            for name in self.INSTANCE_FIELDS})

    def minimal_sets(self, index: int) -> tuple[frozenset[int], ...]:
        """The minimal counterfactual sets of instance `index` in the world: `({A}, {B})` for
        an AND rule, `({A, B},)` for an OR rule with both in the history (`({A},)` with only
        `A`); `()` when the rule did not cause it."""
        if not self.caused[index]:
            return ()
        a, b = (int(item) for item in self.rule_antecedents[self.rule[index]])
        if self.rule_kind[self.rule[index]] == "and":
            return frozenset({a}), frozenset({b})
        present = self.antecedent_present[index]
        return (frozenset(item for item, there in ((a, present[0]), (b, present[1])) if there),)

    def all_minimal_sets(self) -> list[tuple[frozenset[int], ...]]:
        """`minimal_sets` of every instance, in order."""
        return [self.minimal_sets(index) for index in range(len(self))]

    def antecedents(self, index: int) -> frozenset[int]:
        """The rule's antecedents in the history of instance `index`."""
        pair = self.rule_antecedents[self.rule[index]]
        present = self.antecedent_present[index]
        return frozenset(int(item) for item, there in zip(pair, present, strict=True) if there)

    def all_antecedents(self) -> list[frozenset[int]]:
        """`antecedents` of every instance, in order."""
        return [self.antecedents(index) for index in range(len(self))]

    def confounders(self, index: int) -> frozenset[int]:
        """The rule's confounder if it is in the history of instance `index` (else empty)."""
        if not self.confounder_present[index]:
            return frozenset()
        return frozenset({int(self.rule_confounder[self.rule[index]])})

    def all_confounders(self) -> list[frozenset[int]]:
        """`confounders` of every instance, in order."""
        return [self.confounders(index) for index in range(len(self))]

    def distractors(self, index: int) -> frozenset[int]:
        """The topic-mates of the consequent in the history of instance `index`: items of its
        topic other than its own rule's antecedents and confounder (none of them causes it)."""
        rule = self.rule[index]
        own = {*self.rule_antecedents[rule].tolist(), int(self.rule_confounder[rule])}
        history = self.history[index][self.history[index] != PAD]
        mates = history[self.item_topic[history] == self.rule_topic[rule]]
        return frozenset(int(item) for item in mates if item not in own)


def planted_truth(world: PlantedWorld, histories: PlantedHistories,
                  params: PlantedParams) -> PlantedTruth:
    """The `PlantedTruth` of a drawn world (numpy, on the host)."""
    world, histories = jax.device_get((world, histories))
    consumed = np.asarray(histories.consequent_consumed)
    user, rule = np.nonzero(consumed)
    position = np.asarray(histories.consequent_position)[user, rule]
    width = max(int(position.max(initial=0)), 1)
    items = np.asarray(histories.items)
    history = np.where(np.arange(width) < position[:, None], items[user, :width], PAD)
    rule_is_and = np.asarray(world.rule_is_and)
    is_rule_item = np.asarray(world.is_rule_item)
    log_popularity = np.where(is_rule_item, 0.0, float(params.popularity_sigma)
                              * np.asarray(world.standardized_log_popularity))
    return PlantedTruth(
        rule_kind=np.where(rule_is_and, RULE_KINDS[0], RULE_KINDS[1]).astype(object),
        rule_antecedents=np.asarray(world.antecedents),
        rule_consequent=np.asarray(world.consequent),
        rule_confounder=np.asarray(world.confounder),
        rule_topic=np.asarray(world.rule_topic),
        item_topic=np.asarray(world.item_topic),
        log_popularity=log_popularity.astype(np.float32),
        user_topic=np.asarray(histories.user_topic),
        rho=float(params.rho),
        user=user.astype(np.int32),
        rule=rule.astype(np.int32),
        item=np.asarray(world.consequent)[rule],
        position=position.astype(np.int32),
        history=history.astype(np.int32),
        antecedent_present=np.asarray(histories.antecedent_consumed)[user, rule],
        confounder_present=np.asarray(histories.confounder_consumed)[user, rule],
        condition=np.asarray(histories.condition)[user, rule],
        caused=np.asarray(histories.caused)[user, rule],
    )


def planted_to_dataset(histories: PlantedHistories, n_items: int,
                       meta: dict[str, Any] | None = None) -> Dataset:
    """The learner's view: one implicit-feedback row per consumption, user by user in time
    order, timestamp = position in the user's history; external ids are the world's ids as
    decimal strings ("0", "1", ...), so internal ids equal the world's."""
    items = np.asarray(jax.device_get(histories.items))
    consumed = items != PAD
    user, position = np.nonzero(consumed)
    n_users = items.shape[0]
    return Dataset(
        user=user.astype(np.int32),
        item=items[user, position].astype(np.int32),
        rating=np.ones(len(user), np.float32),
        timestamp=position.astype(np.float64),
        user_ids=np.arange(n_users).astype(str).astype(object),
        item_ids=np.arange(n_items).astype(str).astype(object),
        meta={"name": "planted", "format": "planted", "implicit": True, "rating_scale": None,
              "raw_rows": int(len(user)), **(meta or {})},
    )


def simulate_planted(config: PlantedConfig) -> tuple[Dataset, PlantedTruth]:
    """The `planted` data format: the world of `config` as a Dataset and its truth.

    Args:
        config: the `[planted]` section; `config.seed` makes the key `key(seed)`.

    Returns:
        The interactions (implicit, timestamps = positions) and the `PlantedTruth` of every
        consumption of a consequent.
    """
    sizes = PlantedSizes.from_config(config)
    params = PlantedParams.from_config(config)
    world, histories = sample_users(jax.random.key(config.seed), sizes, params)
    truth = planted_truth(world, histories, params)
    dataset = planted_to_dataset(histories, sizes.n_items, meta={
        "seed": config.seed, "rho": config.rho, "n_rules": sizes.n_rules,
        "n_instances": len(truth), "n_caused": int(truth.caused.sum())})
    return dataset, truth
