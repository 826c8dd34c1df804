"""Experiment configuration: frozen dataclasses per section, TOML loading and `--set` overrides.

A config is `Config(data=..., sim=..., model=..., causal=..., train=..., eval=..., run=...)`
(and the sections of the other run kinds and worlds: `env`, `policy`, `target`, `ope`,
`uplift`, `planted`).
`load_config(path, overrides)` merges defaults, the file and `section.key=value` overrides
(values parsed as TOML, falling back to a plain string) and checks every key and type:
an unknown section or key raises `ConfigError` with a "did you mean" hint, a wrong type names
the key and the type expected. `dump_config` writes the effective config back as TOML.
Fields whose value is None are left out of the written file (TOML has no null), so a
written config loads back to the same `Config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from causalrec_jax.errors import ConfigError

# Metric names `[eval] metrics` accepts (DESIGN §2); the eval package checks it agrees.
RANKING_METRIC_NAMES = ("recall", "precision", "ndcg", "hit", "mrr", "map", "itemcoverage",
                        "averagepopularity", "giniindex")
POINTWISE_METRIC_NAMES = ("auc", "mse", "rmse", "mae")
UNBIASED_METRIC_NAMES = ("ips_recall", "snips_recall", "ips_ndcg", "snips_ndcg", "ips_dcg")
METRIC_NAMES = RANKING_METRIC_NAMES + POINTWISE_METRIC_NAMES + UNBIASED_METRIC_NAMES
# Estimators whose denominator is the true number of relevant items (known in simulation
# only): library functions, refused in a run's eval.metrics.
NEEDS_N_RELEVANT = ("ips_recall", "ips_ndcg")


class FrozenDict(dict):
    """A read-only, hashable dict (a config table such as `data.columns`): sections stay
    hashable, so a section can key a cache of compiled programs."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a config table is read-only; use dataclasses.replace on its section")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __ior__(self, other: Any) -> FrozenDict:  # type: ignore[override]
        self._refuse()
        return self


def _require(condition: bool, key: str, expected: str, value: Any) -> None:
    """Raises ConfigError naming `key` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"key {key}: got {value!r}, expected {expected}")


@dataclass(frozen=True)
class DataConfig:
    """Where the interactions come from and how they are cleaned and split."""

    # A name registered in `data.formats.registry`: the built-in "simulator", "recbole",
    # "movielens", "coat", "yahoo_r3", "seq_lines", "csv", "parquet", "dataframe", "simlog",
    # "planted" (from [planted]), or one a user's package registered (`register_format`).
    # Checked when the data is read.
    format: str = "simulator"
    path: str = ""
    # csv/parquet: which columns hold what, e.g. {user = "uid", item = "sku", rating = "stars"}.
    columns: FrozenDict = field(default_factory=lambda: FrozenDict())
    sep: str = ","
    # Duplicate (user, item) rows: keep the "last" (latest in time, else in file order),
    # the "first", average them ("mean"), or keep them all ("keep"). Unset: the format's
    # default, "keep" for seq_lines (a repeated item is a real event) and "last" otherwise.
    dedupe: Literal["last", "first", "mean", "keep"] | None = None
    # Rows with NaN or out-of-range values: "drop" them (counted) or raise ("error").
    invalid: Literal["drop", "error"] = "drop"
    rating_min: float | None = None
    rating_max: float | None = None
    k_core_users: int = 0
    k_core_items: int = 0
    # Ratings >= threshold become label 1, the rest 0; None keeps ratings as they are.
    binarize_threshold: float | None = None
    split: Literal[
        "random", "user_random", "temporal", "leave_one_out", "given", "mar_slice"
    ] = "given"
    split_ratios: tuple[float, ...] = (0.8, 0.1, 0.1)
    # mar_slice: fractions of the MAR test carved into unbiased train and validation slices.
    mar_train_fraction: float = 0.05
    mar_valid_fraction: float = 0.05
    # mar_slice: the test is the MAR rows left after the slices ("rest", protocol (a) of the
    # AutoDebias line) or every MAR row, slices included ("all", protocol (b) of the StableDR
    # line, whose test is not reduced; the slices then overlap the test).
    mar_test: Literal["rest", "all"] = "rest"
    max_history: int = 50

    def __post_init__(self) -> None:
        _require(isinstance(self.format, str) and self.format != "", "data.format",
                 "the name of a registered format, e.g. \"csv\"", self.format)
        for key in ("k_core_users", "k_core_items"):
            _require(getattr(self, key) >= 0, f"data.{key}", "an integer >= 0", getattr(self, key))
        _require(self.max_history >= 1, "data.max_history", "an integer >= 1", self.max_history)
        ratios = self.split_ratios
        _require(
            len(ratios) in (2, 3) and all(r >= 0 for r in ratios) and abs(sum(ratios) - 1) < 1e-6,
            "data.split_ratios",
            "2 or 3 non-negative fractions (train, [valid,] test) summing to 1",
            ratios,
        )
        fractions = (self.mar_train_fraction, self.mar_valid_fraction)
        _require(
            all(0 <= f < 1 for f in fractions) and sum(fractions) < 1,
            "data.mar_train_fraction / data.mar_valid_fraction",
            "fractions in [0, 1) whose sum is below 1",
            fractions,
        )
        if self.binarize_threshold is not None:
            _require(math.isfinite(self.binarize_threshold), "data.binarize_threshold",
                     "a finite number", self.binarize_threshold)
        if self.rating_min is not None and self.rating_max is not None:
            _require(self.rating_min <= self.rating_max, "data.rating_min",
                     f"at most data.rating_max = {self.rating_max}", self.rating_min)
        _require(len(self.sep) >= 1, "data.sep", "a non-empty separator", self.sep)
        unknown_roles = set(self.columns) - {"user", "item", "rating", "timestamp"}
        _require(not unknown_roles, "data.columns",
                 "roles among user, item, rating, timestamp", sorted(unknown_roles))


@dataclass(frozen=True)
class SimConfig:
    """A static simulated world with known ground truth (see `causalrec_jax.sim`)."""

    n_users: int = 1000
    n_items: int = 500
    latent_dim: int = 8
    # Strength of the popularity confounder: log popularity = popularity_sigma * z, z ~ N(0, 1)
    # per item (log-normal popularity; 0 makes all items equally popular, no confounding).
    popularity_sigma: float = 1.0
    # How strongly log popularity raises relevance logits.
    quality_effect: float = 0.5
    # Exposure logit = base + popularity_exposure * log popularity
    #                  + selection_strength * (rating - 3) / 2,
    # with base calibrated so that the mean propensity is mean_exposure; at small propensities
    # propensity ~ popularity ** popularity_exposure (a power law).
    mean_exposure: float = 0.05
    popularity_exposure: float = 1.0
    selection_strength: float = 1.0
    # Relevance = sigmoid(factors dot / temperature + quality_effect * log popularity
    #                     + relevance_offset);
    # ratings 1..5 = round(1 + 4 * relevance + rating_noise * normal noise), clipped.
    relevance_temperature: float = 1.0
    relevance_offset: float = 0.0
    rating_noise: float = 0.5
    mar_items_per_user: int = 10
    # Users with a MAR test sample: users 1..mar_users (exchangeable, so a uniform subset);
    # 0 = every user.
    mar_users: int = 0
    # Log-odds added to the exposure logit of a cell rated 1..5 (rating-dependent
    # missingness of any shape, beside the linear selection_strength); zeros by default.
    selection_by_rating: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
    seed: int = 0
    # Worlds with more than max_dense_cells (user, item) cells are generated in blocks of users
    # and keep only compact ground truth (a SparseGroundTruth; no propensity matrix); the
    # exposure base of such worlds is calibrated on calibration_users seeded users.
    max_dense_cells: int = 50_000_000
    calibration_users: int = 2000

    def __post_init__(self) -> None:
        _require(self.max_dense_cells >= 0, "sim.max_dense_cells", "an integer >= 0",
                 self.max_dense_cells)
        _require(self.calibration_users >= 1, "sim.calibration_users", "an integer >= 1",
                 self.calibration_users)
        for key in ("n_users", "n_items", "latent_dim"):
            _require(getattr(self, key) >= 1, f"sim.{key}", "an integer >= 1", getattr(self, key))
        _require(0 <= self.mar_users <= self.n_users, "sim.mar_users",
                 f"an integer in 0..sim.n_users ({self.n_users}); 0 = every user",
                 self.mar_users)
        _require(len(self.selection_by_rating) == 5
                 and all(math.isfinite(v) for v in self.selection_by_rating),
                 "sim.selection_by_rating", "5 finite log-odds, one per rating 1..5",
                 self.selection_by_rating)
        _require(1 <= self.mar_items_per_user <= self.n_items, "sim.mar_items_per_user",
                 f"1..sim.n_items ({self.n_items}): the world's MAR test sample",
                 self.mar_items_per_user)
        _require(0.0 < self.mean_exposure < 1.0, "sim.mean_exposure", "a number in (0, 1)",
                 self.mean_exposure)
        for key in ("popularity_sigma", "rating_noise"):
            _require(getattr(self, key) >= 0, f"sim.{key}", "a number >= 0", getattr(self, key))
        _require(self.relevance_temperature > 0, "sim.relevance_temperature", "a number > 0",
                 self.relevance_temperature)


@dataclass(frozen=True)
class PlantedConfig:
    """A world with planted causal rules (`causalrec_jax.sim.planted`, `data.format =
    "planted"`): time-ordered histories in which some consumptions happen because specific
    earlier ones did, with the minimal counterfactual explanations known.

    Each user draws `history_length` items from a base process (popularity and the user's one
    favoured topic: the distractors), then the rule items: both antecedents of every rule at
    `antecedent_rate` (raised by `topic_strength` on the log-odds scale for the users of the
    rule's topic), each rule's confounder as a copy of its first antecedent with probability
    `rho` and otherwise drawn independently at that same rate, and each consequent with
    probability `rule_strength` where its rule's condition holds (AND: both antecedents; OR:
    either) and `consequent_rate` where it does not. Antecedents fall in the first
    `cause_window` of the user's time line (from 0 to 1), each consequent within
    `consequent_lag` after the later of its rule's two antecedent times, each confounder
    before that time (so before the consequent).
    """

    n_users: int = 5000
    n_items: int = 300
    # Items each user draws from the base process (the rule items come on top of these).
    history_length: int = 20
    n_and_rules: int = 4
    n_or_rules: int = 4
    n_topics: int = 8
    # Log-odds boost of a user's favoured topic (base items and the rule items of that topic).
    topic_strength: float = 2.0
    # Spread of the base items' log popularity (N(0, popularity_sigma^2)): popular items.
    popularity_sigma: float = 1.0
    # P(consequent | condition) and P(consequent | not condition).
    rule_strength: float = 0.9
    consequent_rate: float = 0.02
    # P(antecedent) outside the rule's topic (each antecedent, independently).
    antecedent_rate: float = 0.15
    # Strength of the confounder: P(it copies the first antecedent); 1 makes it identical.
    rho: float = 0.5
    # Where antecedents fall (the first cause_window of the time line), and how soon after the
    # later antecedent time the consequent comes (a fraction of the time line).
    cause_window: float = 0.5
    consequent_lag: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("n_users", "n_items", "history_length", "n_topics"):
            _require(getattr(self, key) >= 1, f"planted.{key}", "an integer >= 1",
                     getattr(self, key))
        for key in ("n_and_rules", "n_or_rules"):
            _require(getattr(self, key) >= 0, f"planted.{key}", "an integer >= 0",
                     getattr(self, key))
        n_rules = self.n_and_rules + self.n_or_rules
        _require(n_rules >= 1, "planted.n_and_rules + planted.n_or_rules",
                 "at least one rule (a world without rules plants nothing)", n_rules)
        _require(self.n_items >= 4 * n_rules + self.history_length, "planted.n_items",
                 f"at least 4 items per rule plus planted.history_length base items "
                 f"({4 * n_rules} + {self.history_length})", self.n_items)
        for key in ("topic_strength", "popularity_sigma"):
            _require(math.isfinite(getattr(self, key)) and getattr(self, key) >= 0,
                     f"planted.{key}", "a finite number >= 0", getattr(self, key))
        for key in ("antecedent_rate", "consequent_rate", "rule_strength"):
            _require(0 < getattr(self, key) < 1, f"planted.{key}", "a probability in (0, 1)",
                     getattr(self, key))
        _require(self.rule_strength > self.consequent_rate, "planted.rule_strength",
                 f"above planted.consequent_rate ({self.consequent_rate}): a rule raises the "
                 "chance of its consequent", self.rule_strength)
        _require(0 <= self.rho <= 1, "planted.rho", "a probability in [0, 1]", self.rho)
        _require(0 < self.cause_window < 1, "planted.cause_window", "a fraction in (0, 1)",
                 self.cause_window)
        _require(0 < self.consequent_lag <= 1 - self.cause_window, "planted.consequent_lag",
                 f"a fraction in (0, 1 - planted.cause_window = {1 - self.cause_window:g}]: "
                 "consequents stay on the time line", self.consequent_lag)


@dataclass(frozen=True)
class ModelConfig:
    """Which model scores (user, item) pairs and its sizes."""

    name: Literal[
        "mf", "mlp", "neumf", "lightgcn", "sasrec", "bert4rec", "hstu", "popularity"
    ] = "mf"
    embedding_dim: int = 64
    hidden_dims: tuple[int, ...] = (64, 32)
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.0
    # Sequential models (sasrec, bert4rec): the longest history a window holds, and the step
    # between training windows of a long sequence (0: max_len, no overlap; smaller: each
    # target is trained once, in the window that gives it the longest context, unless
    # window_targets = "all": every position of every window trains, so overlapping windows
    # repeat targets with shorter contexts, a sliding-window augmentation).
    max_len: int = 50
    window_stride: int = 0
    window_targets: Literal["once", "all"] = "once"
    # Training batches are cut to the shortest of these lengths (and max_len) their windows
    # fit, so short sequences train on short arrays; one compilation per length. [] = off.
    length_buckets: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    # HSTU only (Zhai et al. 2024; embedding_dim, n_layers, n_heads, dropout, max_len as for
    # sasrec): the per-head width of queries and keys (attention_dim) and of values and gates
    # (linear_dim), 0 = embedding_dim // n_heads; the output similarity: temperature 0 = a
    # final layer norm and dot product, > 0 = cosine of L2-normalised outputs and items
    # divided by it (the paper's public-dataset setting used 0.05).
    attention_dim: int = 0
    linear_dim: int = 0
    temperature: float = 0.0
    # SASRec and BERT4Rec only: the layer ("transformer": pre-LN blocks with a GELU FFN;
    # "sasrec": Kang & McAuley's original block, a normalised query as the attention's
    # residual and a ReLU FFN around its normalised input; "ligr": LiGR gated residual blocks
    # with a SwiGLU FFN, as eSASRec), the FFN's width as a multiple of embedding_dim, and
    # which end of the history the position embeddings count from ("from_start": the oldest
    # item is position 0; "from_end": the newest is, so the item a ranking follows always has
    # the same position, as RecTools' SASRec).
    block: Literal["transformer", "sasrec", "ligr"] = "transformer"
    ffn_multiplier: int = 4
    positions: Literal["from_start", "from_end"] = "from_start"

    def __post_init__(self) -> None:
        for key in ("attention_dim", "linear_dim"):
            _require(getattr(self, key) >= 0, f"model.{key}",
                     "an integer >= 0 (0 = embedding_dim // n_heads)", getattr(self, key))
        _require(math.isfinite(self.temperature) and self.temperature >= 0,
                 "model.temperature", "a number >= 0 (0 = dot product)", self.temperature)
        for key in ("embedding_dim", "n_heads", "ffn_multiplier"):
            _require(getattr(self, key) >= 1, f"model.{key}", "an integer >= 1", getattr(self, key))
        _require(self.n_layers >= 0, "model.n_layers", "an integer >= 0", self.n_layers)
        _require(all(d >= 1 for d in self.hidden_dims), "model.hidden_dims",
                 "positive integers", self.hidden_dims)
        _require(0 <= self.dropout < 1, "model.dropout", "a rate in [0, 1)", self.dropout)
        _require(self.max_len >= 1, "model.max_len", "an integer >= 1", self.max_len)
        _require(all(b >= 1 for b in self.length_buckets), "model.length_buckets",
                 "positive integers", self.length_buckets)
        _require(0 <= self.window_stride <= self.max_len, "model.window_stride",
                 f"0 (= max_len) or 1..max_len={self.max_len}", self.window_stride)


@dataclass(frozen=True)
class CausalConfig:
    """How observation bias is modelled and corrected (see `causalrec_jax.causal.training`)."""

    # naive: unweighted; ips / snips: inverse-propensity weights on the observed rows
    # (Schnabel et al. 2016); dr: doubly robust with a fixed imputation; dr_jl / mrdr /
    # dr_mse: doubly robust with a jointly learned imputation model (Wang et al. 2019; Guo et
    # al. 2021; Dai et al. 2022); rel_mf: unbiased pointwise loss for implicit feedback (Saito
    # et al. 2020); pda / macr: popularity deconfounding (Zhang et al. 2021; Wei et al. 2021);
    # d_ips / d_dr / d_dr_jl: the dynamic estimators, 1 / f(p)^alpha(p) for 1 / p (Ha et al.
    # NeurIPS 2024); tdr / tdr_jl: targeted DR, the imputed errors moved along 1 / p - 1 (Li
    # et al. ICLR 2023).
    method: Literal[
        "naive", "ips", "snips", "dr", "dr_jl", "mrdr", "dr_mse", "d_ips", "d_dr", "d_dr_jl",
        "tdr", "tdr_jl", "rel_mf", "pda", "macr"
    ] = "naive"
    propensity: Literal[
        "none", "given", "popularity", "naive_bayes", "logistic", "learned", "true"
    ] = "none"
    propensity_clip: float = 0.0
    popularity_power: float = 0.5
    # dr / d_dr / tdr: the fixed imputed rating (label for bce) of every cell; unset = the mean
    # training one.
    imputation_value: float | None = None
    # dr family and rel_mf: (user, item) cells drawn uniformly from the whole matrix per
    # observed row of a batch (their losses sum over all cells, observed or not).
    cells_per_row: int = 1
    # dr_mse: weight of the bias term in the imputation objective (1 = DR-BIAS, 0 = MRDR).
    dr_mse_lambda: float = 0.5
    # d_ips / d_dr / d_dr_jl: w2 / w1, the weight of the variance against the bias in each
    # cell's exponent alpha(p) (Ha et al. 2024, Eq. (5); theirs: 0.1), and the function f.
    dynamic_ratio: float = 0.1
    dynamic_function: Literal["log", "sin", "tanh", "identity"] = "log"
    # pda: popularity exponent gamma of the training score ELU'(f) * m_i^gamma.
    pda_gamma: float = 0.1
    # pda at inference: 0 ranks by the deconfounded ELU'(f) (PD); > 0 re-adds the training
    # popularity as ELU'(f) * m_i^gamma (PDA's popularity-adjusted inference).
    pda_inference_gamma: float = 0.0
    # macr: weights of the item- and user-module losses and the counterfactual reference c.
    macr_alpha: float = 1e-3
    macr_beta: float = 1e-3
    macr_c: float = 0.0

    def __post_init__(self) -> None:
        _require(0 <= self.propensity_clip < 1, "causal.propensity_clip",
                 "a lower bound in [0, 1) (0 = no clipping)", self.propensity_clip)
        _require(self.cells_per_row >= 1, "causal.cells_per_row", "an integer >= 1",
                 self.cells_per_row)
        _require(0 <= self.dr_mse_lambda <= 1, "causal.dr_mse_lambda", "a number in [0, 1]",
                 self.dr_mse_lambda)
        _require(self.dynamic_ratio > 0 and math.isfinite(self.dynamic_ratio),
                 "causal.dynamic_ratio", "a number > 0 (w2 / w1)", self.dynamic_ratio)
        for key in ("pda_gamma", "pda_inference_gamma"):
            _require(getattr(self, key) >= 0, f"causal.{key}", "a number >= 0",
                     getattr(self, key))
        for key in ("macr_alpha", "macr_beta"):
            _require(getattr(self, key) >= 0, f"causal.{key}", "a number >= 0",
                     getattr(self, key))
        if self.imputation_value is not None:
            _require(math.isfinite(self.imputation_value), "causal.imputation_value",
                     "a finite number", self.imputation_value)


# `[train]` keys only the sequential models read (refused by the other runs).
SEQUENCE_TRAIN_KEYS = ("negative_sampler", "logq_correction", "gbce_t", "negatives_per_row",
                       "position_weighting")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, seeds and stopping."""

    loss: str = "mse"
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    # Adam's (and AdamW's) decay of its second-moment estimate (optax's b2; RecTools'
    # Transformers use 0.98).
    adam_beta2: float = 0.999
    # Learning-rate schedule over the run's steps (optax): constant, cosine decay to 0, or a
    # linear warm-up over `warmup_steps` followed by cosine decay.
    lr_schedule: Literal["constant", "cosine", "warmup_cosine"] = "constant"
    warmup_steps: int = 0
    # The model a run evaluates and saves: with a decay d in (0, 1), the exponential moving
    # average of the parameters over the steps (weights d^age, debiased); 0: the parameters.
    ema_decay: float = 0.0
    batch_size: int = 1024
    epochs: int = 20
    seeds: int = 1
    cv_folds: int = 0
    n_negatives: int = 1
    # Redraw sampled negatives the user has in training (as RecBole does); off = plain uniform.
    exclude_seen_negatives: bool = True
    # Sequential models only (SEQUENCE_TRAIN_KEYS): the proposal of sampled_softmax's shared
    # negatives ("popularity": in proportion to training counts, which needs
    # exclude_seen_negatives = false), the logQ correction of that proposal, and gbce's
    # calibration t (gSASRec: 0 = plain BCE, 1 = calibrated like the full softmax).
    negative_sampler: Literal["uniform", "popularity"] = "uniform"
    logq_correction: bool = False
    gbce_t: float = 0.75
    # sampled_softmax and gbce: draw n_negatives for each sequence (shared by its positions)
    # rather than one set shared by the batch. Negatives redrawn away from the user's items
    # (exclude_seen_negatives) are per sequence anyway.
    negatives_per_row: bool = False
    # Next-item losses: "per_batch" averages a step's loss over its batch's trained positions
    # (with length buckets, a position of a batch of short sequences then weighs more than one
    # of long ones); "uniform" sums it and divides by the epoch's mean positions per batch, so
    # every position weighs the same, as with unbucketed batches.
    position_weighting: Literal["per_batch", "uniform"] = "per_batch"
    early_stopping_metric: str = "ndcg@10"
    patience: int = 5
    checkpoint_every: int = 5
    # Training rows on the device ("device": one lax.scan per epoch), kept on the host and
    # sent `segment_batches` batches at a time ("host"), or "auto": the device up to 2 GiB.
    data_placement: Literal["auto", "device", "host"] = "auto"
    segment_batches: int = 64
    # Successive halving of a population (seeds or tuning trials): every `halving_rung`
    # epochs keep the best `halving_keep` fraction by validation; 0 turns it off.
    halving_rung: int = 0
    halving_keep: float = 0.5

    def __post_init__(self) -> None:
        for key in ("batch_size", "seeds", "n_negatives", "checkpoint_every", "segment_batches",
                    "epochs"):
            _require(getattr(self, key) >= 1, f"train.{key}", "an integer >= 1", getattr(self, key))
        for key in ("patience", "warmup_steps", "halving_rung"):
            _require(getattr(self, key) >= 0, f"train.{key}", "an integer >= 0", getattr(self, key))
        _require(self.learning_rate > 0, "train.learning_rate", "a number > 0", self.learning_rate)
        _require(self.weight_decay >= 0, "train.weight_decay", "a number >= 0", self.weight_decay)
        _require(0 < self.adam_beta2 < 1, "train.adam_beta2", "a number in (0, 1)",
                 self.adam_beta2)
        _require(self.optimizer != "sgd" or self.adam_beta2 == 0.999, "train.adam_beta2",
                 "unset with train.optimizer = 'sgd' (only adam and adamw read it)",
                 self.adam_beta2)
        _require(0 <= self.ema_decay < 1, "train.ema_decay",
                 "a number in [0, 1) (0: no moving average)", self.ema_decay)
        _require(0 <= self.gbce_t <= 1, "train.gbce_t", "a number in [0, 1]", self.gbce_t)
        _require(0 < self.halving_keep < 1, "train.halving_keep", "a fraction in (0, 1)",
                 self.halving_keep)
        _require(self.cv_folds == 0 or self.cv_folds >= 2, "train.cv_folds",
                 "0 (no cross-validation) or at least 2 folds", self.cv_folds)


@dataclass(frozen=True)
class EvalConfig:
    """Which metrics, at which cut-offs, under which ranking protocol."""

    metrics: tuple[str, ...] = ("recall", "precision", "ndcg", "hit", "mrr", "map",
                                "itemcoverage", "auc", "mse", "rmse", "mae")
    ks: tuple[int, ...] = (5, 10, 20)
    # "full": rank all items with the user's training items masked; "candidates": rank only
    # each user's test items (the protocol of the debiasing literature on Coat / Yahoo! R3).
    protocol: Literal["full", "candidates"] = "full"
    # Labels >= this are positives for ranking metrics and AUC on explicit ratings.
    positive_threshold: float = 4.0
    chunk_size: int = 256
    mask_train: bool = True
    # Sequential runs: also rank each test item among this many sampled negatives (0: off),
    # drawn uniformly or by training popularity from items the user never had; reported
    # apart, as `test_sampled` with `sampled_`-prefixed names (it inflates every metric).
    sampled_negatives: int = 0
    sampled_by: Literal["uniform", "popularity"] = "uniform"
    # Validation only: a per-user ranking metric (metric@K under the candidates protocol, over
    # the users whose list is informative at K; auc_per_user, over users with a positive and a
    # negative) averaged over fewer users than this is reported as NaN (null), and selecting on
    # it is refused. Per-user values lie in [0, 1], so a mean over n users moves by up to 1/n
    # with one user and has a standard error up to 0.5 / sqrt(n): 0.09 at 30, already above
    # the gaps between the methods the debiasing tables compare; fewer users measure the slice.
    min_ranked_users: int = 30

    def __post_init__(self) -> None:
        _require(len(self.ks) > 0 and all(k >= 1 for k in self.ks), "eval.ks",
                 "a non-empty list of cut-offs >= 1", self.ks)
        unknown = [name for name in self.metrics if name.lower() not in METRIC_NAMES]
        if unknown:
            hint = _hint(unknown[0].lower(), METRIC_NAMES)
            raise ConfigError(
                f"key eval.metrics: unknown metric {unknown[0]!r}{hint} (known: "
                f"{', '.join(METRIC_NAMES)}; cut-offs go in eval.ks, not in the name)"
            )
        needs_truth = [name for name in self.metrics if name.lower() in NEEDS_N_RELEVANT]
        if needs_truth:
            raise ConfigError(
                f"key eval.metrics: {needs_truth[0]!r} needs each user's true number of "
                "relevant items, which a run does not know; use snips_recall / snips_ndcg or "
                "ips_dcg (eval.unbiased_ranking_metrics computes it given n_relevant)"
            )
        _require(self.protocol != "candidates" or "averagepopularity" not in [
            name.lower() for name in self.metrics], "eval.metrics",
            "no averagepopularity under eval.protocol = 'candidates' (it reads training counts "
            "the candidates protocol does not take)", list(self.metrics))
        _require(self.chunk_size >= 1, "eval.chunk_size", "an integer >= 1", self.chunk_size)
        _require(self.sampled_negatives >= 0, "eval.sampled_negatives", "an integer >= 0",
                 self.sampled_negatives)
        _require(self.min_ranked_users >= 1, "eval.min_ranked_users", "an integer >= 1",
                 self.min_ranked_users)


@dataclass(frozen=True)
class EnvConfig:
    """The dynamic environment (`causalrec_jax.sim.env`): sizes and world parameters."""

    n_users: int = 1000
    n_items: int = 1000
    latent_dim: int = 32
    slate_size: int = 10
    horizon: int = 100
    # Log popularity (item quality) ~ N(0, popularity_sigma^2); utility adds
    # quality_effect * log popularity; organic consumption adds organic_quality_effect more.
    popularity_sigma: float = 1.0
    quality_effect: float = 0.5
    organic_quality_effect: float = 0.0
    # Weight of the user's utility in organic choice (0: taste does not drive it).
    organic_taste_effect: float = 1.0
    # Examination of slot k (from 0) is 1 / (k + 1) ** examination_power.
    examination_power: float = 1.0
    temperature: float = 1.0
    click_offset: float = -1.0
    organic_offset: float = -8.0
    drift: float = 0.05
    satiation_decay: float = 0.8
    satiation_strength: float = 0.5
    # The world's own seed (tastes, items); the log's noise comes from run.seed.
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("n_users", "n_items", "latent_dim", "slate_size", "horizon"):
            _require(getattr(self, key) >= 1, f"env.{key}", "an integer >= 1", getattr(self, key))
        _require(self.slate_size <= self.n_items, "env.slate_size",
                 f"at most env.n_items ({self.n_items})", self.slate_size)
        _require(self.temperature > 0, "env.temperature", "a number > 0", self.temperature)
        _require(0 <= self.drift <= 1, "env.drift", "a number in [0, 1]", self.drift)
        _require(0 <= self.satiation_decay < 1, "env.satiation_decay", "a number in [0, 1)",
                 self.satiation_decay)
        _require(self.popularity_sigma >= 0, "env.popularity_sigma", "a number >= 0",
                 self.popularity_sigma)


@dataclass(frozen=True)
class PolicyConfig:
    """A slate policy (`causalrec_jax.sim.policies`) over the scores of some scorer.

    `scores`: "oracle" (the true utilities at the start of each user's episode), "noisy_oracle"
    (oracle plus N(0, score_noise^2) noise per (user, item), a stand-in for a fitted model),
    "popularity" (log popularity, one row for all users), "random" (N(0, 1) per cell) or
    "run" (the model of the run folder `run`, trained on a log of this world).
    """

    kind: Literal["softmax", "epsilon_greedy", "uniform", "top_k"] = "softmax"
    scores: Literal["oracle", "noisy_oracle", "popularity", "random", "run"] = "noisy_oracle"
    score_noise: float = 1.0
    temperature: float = 1.0
    epsilon: float = 0.1
    shuffle: bool = False
    run: str = ""
    # Seed of the scorer's noise ("noisy_oracle", "random").
    seed: int = 1

    def __post_init__(self) -> None:
        _require(self.temperature > 0, "policy.temperature", "a number > 0", self.temperature)
        _require(0 <= self.epsilon <= 1, "policy.epsilon", "a number in [0, 1]", self.epsilon)
        _require(self.score_noise >= 0, "policy.score_noise", "a number >= 0", self.score_noise)
        _require(self.scores != "run" or bool(self.run), "policy.run",
                 "a run folder when scores = \"run\"", self.run)


OPE_ESTIMATOR_NAMES = ("ips", "snips", "dm", "dr", "sndr", "switch_dr", "dros", "pbm_ips", "iips")


@dataclass(frozen=True)
class OpeConfig:
    """Off-policy evaluation (`causalrec ope`): log size, estimators, clipping, reward model.

    A round is one arriving user shown one slate by the logging policy `[policy]`; the value
    of a policy is its expected clicks per round. The truth is the mean expected reward of
    `truth_rounds` on-policy rounds of the target policy `[target]`.
    """

    n_rounds: int = 10_000
    truth_rounds: int = 1_000_000
    estimators: tuple[str, ...] = tuple(OPE_ESTIMATOR_NAMES)
    # Largest importance weight (0: no clipping).
    clip: float = 0.0
    switch_threshold: float = 10.0
    dros_shrinkage: float = 10.0
    # Reward model of dm / dr: "mf" fitted on the log (binary cross-entropy, the library's MF)
    # or "oracle" (the true click probabilities, for checking the estimators alone).
    reward_model: Literal["mf", "oracle"] = "mf"
    reward_model_dim: int = 32
    reward_model_epochs: int = 200
    reward_model_learning_rate: float = 0.05
    # L2 prior on the user and item parameters (sum of squares / impressions).
    reward_model_weight_decay: float = 1.0
    # Cross-fitting folds: the reward model of a round never saw it (>= 2).
    reward_model_folds: int = 2
    # Monte-Carlo slates per user for the slot marginals of Plackett–Luce slates (K > 1).
    marginal_samples: int = 2000
    # The seeds of an OPE run are `train.seeds`, as for every run kind (`ope.seeds` is refused).

    def __post_init__(self) -> None:
        for key in ("n_rounds", "truth_rounds", "reward_model_dim", "reward_model_epochs"):
            _require(getattr(self, key) >= 1, f"ope.{key}", "an integer >= 1", getattr(self, key))
        unknown = [name for name in self.estimators if name not in OPE_ESTIMATOR_NAMES]
        if unknown:
            raise ConfigError(
                f"key ope.estimators: unknown estimator {unknown[0]!r}"
                f"{_hint(unknown[0], OPE_ESTIMATOR_NAMES)} "
                f"(known: {', '.join(OPE_ESTIMATOR_NAMES)})"
            )
        _require(self.clip >= 0, "ope.clip", "a number >= 0 (0: no clipping)", self.clip)
        _require(self.reward_model_folds >= 2, "ope.reward_model_folds", "an integer >= 2",
                 self.reward_model_folds)


@dataclass(frozen=True)
class UpliftConfig:
    """Learning the causal effect of recommending from a log of the dynamic environment.

    `method`: "" (not an uplift run), "ips" (regression on the IPS-transformed outcome),
    "dr" (on the doubly robust label with fitted outcome models), "dlce" (Sato et al. 2020's
    pairwise objective) or "consumption" (the baseline: predict consumption and recommend
    what would be consumed).

    `learning_rate` and `weight_decay` mean what `train.learning_rate` and
    `train.weight_decay` mean (the one optimiser builder, `train.step.make_optimizer`, with
    `train.optimizer`, `lr_schedule` and `warmup_steps`): `weight_decay * params` is added to
    the gradient (decoupled with `train.optimizer = "adamw"`).
    """

    method: Literal["", "ips", "dr", "dlce", "consumption"] = ""
    embedding_dim: int = 32
    epochs: int = 300
    learning_rate: float = 0.05
    weight_decay: float = 1e-7
    # Propensities are clipped into [clip, 1 - clip].
    clip: float = 0.0
    ks: tuple[int, ...] = (10,)

    def __post_init__(self) -> None:
        _require(self.embedding_dim >= 1, "uplift.embedding_dim", "an integer >= 1",
                 self.embedding_dim)
        _require(self.epochs >= 1, "uplift.epochs", "an integer >= 1", self.epochs)
        _require(0 <= self.clip < 0.5, "uplift.clip", "a number in [0, 0.5)", self.clip)


@dataclass(frozen=True)
class PrivacyConfig:
    """Differentially private training (`privacy/`): DP-SGD with an accounted budget.

    `level`: "" (not private), "user" (a user's whole history, capped at
    `max_examples_per_user` rows, is the unit one neighbouring dataset adds or removes) or
    "example" (one training row); for a sequence model (SASRec, HSTU, BERT4Rec), user level
    only: a user's training windows, capped at `max_examples_per_user` windows. Each step
    samples units with probability
    `train.batch_size / n_units` (so `train.batch_size` counts users at user level), clips
    each unit's gradient to norm `clip` and adds Gaussian noise of std `noise * clip`; or,
    with `target_epsilon` > 0, the noise multiplier is calibrated so that `train.epochs`
    epochs spend `target_epsilon` at `delta`. `delta` 0 means 1/n_users, the largest
    accepted. `accountant`: "pld" (privacy loss distributions, tight) or "rdp" (Renyi DP).
    """

    level: Literal["", "user", "example"] = ""
    clip: float = 1.0
    noise: float = 0.0
    target_epsilon: float = 0.0
    delta: float = 0.0
    max_examples_per_user: int = 64
    accountant: Literal["pld", "rdp"] = "pld"
    # "local": the users' own rows are trained without noise and never published (joint DP,
    # as private matrix completion and federated training have it); "noised": every
    # parameter is private (see `privacy.dpsgd.DPSpec.user_rows`).
    user_rows: Literal["local", "noised"] = "local"
    # 0: every item row trains; N > 0: only the N items with the largest counts of users after
    # Gaussian noise of multiplier `selection_noise` (DP-FEST's filtering, accounted; see
    # `privacy.dpsgd.DPSpec.item_rows`).
    item_rows: int = 0
    selection_noise: float = 10.0
    # 0: off; tau > 0: DP-AdaFEST (Ghazi et al. 2023), each step's own selection of item rows:
    # those whose count of the step's sampled units touching them (each unit's contribution
    # map clipped to L2 norm `contribution_clip`), plus Gaussian noise of multiplier
    # `adaptive_noise`, is at least tau; only they get gradient and noise that step. Accounted
    # with the gradients' noise as one Gaussian (see `privacy.dpsgd.DPSpec`).
    adaptive_threshold: float = 0.0
    adaptive_noise: float = 10.0
    contribution_clip: float = 1.0
    # "dp_sgd" (the step above) or "fedavg": each user a client that takes `local_steps`
    # steps of SGD at `client_learning_rate` on its own rows per round and sends the change of
    # the shared parameters (DP-FedAvg with noise; `privacy.federated`).
    mechanism: Literal["dp_sgd", "fedavg"] = "dp_sgd"
    local_steps: int = 1
    client_learning_rate: float = 0.1
    # fedavg: 0, each user a client; S > 0, the users split into S silos (a random partition
    # drawn from the run's seed, sizes differing by at most one), each silo a client that
    # trains its users' rows together and keeps their user rows; `train.batch_size` then
    # counts silos a round, and DP-FedAvg's unit is the silo (see `privacy.dpsgd.DPSpec`).
    silos: int = 0

    def __post_init__(self) -> None:
        _require(self.clip > 0, "privacy.clip", "a number > 0", self.clip)
        _require(self.noise >= 0, "privacy.noise", "a number >= 0", self.noise)
        _require(self.target_epsilon >= 0, "privacy.target_epsilon",
                 "a number > 0 (or 0: use privacy.noise)", self.target_epsilon)
        _require(self.target_epsilon == 0 or self.noise == 0, "privacy.noise",
                 "unset with privacy.target_epsilon (which sets the noise)", self.noise)
        _require(0 <= self.delta < 1, "privacy.delta", "a number in (0, 1/n_users] (or 0: "
                 "1/n_users)", self.delta)
        _require(self.max_examples_per_user >= 1, "privacy.max_examples_per_user",
                 "an integer >= 1", self.max_examples_per_user)
        _require(self.item_rows >= 0, "privacy.item_rows", "an integer >= 0 (0: every item)",
                 self.item_rows)
        _require(self.selection_noise > 0, "privacy.selection_noise", "a number > 0",
                 self.selection_noise)
        _require(self.adaptive_threshold >= 0, "privacy.adaptive_threshold",
                 "a number >= 0 (0: no per-step selection)", self.adaptive_threshold)
        _require(self.adaptive_noise > 0, "privacy.adaptive_noise", "a number > 0",
                 self.adaptive_noise)
        _require(self.contribution_clip > 0, "privacy.contribution_clip", "a number > 0",
                 self.contribution_clip)
        _require(self.adaptive_threshold == 0 or self.item_rows == 0,
                 "privacy.adaptive_threshold", "0 with privacy.item_rows > 0 (DP-FEST's "
                 "selection once and AdaFEST's per step are two choices; set one)",
                 self.adaptive_threshold)
        _require(self.adaptive_threshold == 0 or self.mechanism == "dp_sgd",
                 "privacy.adaptive_threshold", "0 with privacy.mechanism = \"fedavg\" (the "
                 "per-step selection is DP-SGD's)", self.adaptive_threshold)
        _require(self.local_steps >= 1, "privacy.local_steps", "an integer >= 1",
                 self.local_steps)
        _require(self.client_learning_rate > 0, "privacy.client_learning_rate",
                 "a number > 0", self.client_learning_rate)
        _require(self.silos >= 0, "privacy.silos", "an integer >= 0 (0: each user a client)",
                 self.silos)
        _require(self.silos == 0 or self.mechanism == "fedavg", "privacy.silos",
                 "0 unless privacy.mechanism = \"fedavg\" (silos are federated clients)",
                 self.silos)

    @property
    def noised(self) -> bool:
        """Whether the run adds noise (and so clips): `noise` or `target_epsilon` set."""
        return self.noise > 0 or self.target_epsilon > 0


def privacy_keys_used(privacy: PrivacyConfig, method: str = "naive") -> tuple[str, ...]:
    """The `[privacy]` keys a run reads: `level` alone when it is "" (not private), the
    item counts' noise only with `item_rows` > 0 or a noised PDA run (`causal.method`), the
    per-user cap only at user level."""
    if not privacy.level:
        return ("level",)
    unused = set()
    if not (privacy.item_rows or (method == "pda" and privacy.noised)):
        unused.add("selection_noise")
    if not privacy.adaptive_threshold:
        unused.update({"adaptive_noise", "contribution_clip"})
    if privacy.level != "user":
        unused.add("max_examples_per_user")
    if not privacy.noised:  # nothing clipped, nothing accounted, nothing selected per step
        unused.update({"clip", "delta", "accountant", "user_rows", "adaptive_threshold",
                       "adaptive_noise", "contribution_clip"})
    if privacy.mechanism != "fedavg":
        unused.update({"local_steps", "client_learning_rate"})
    return tuple(f.name for f in dataclasses.fields(privacy) if f.name not in unused)


@dataclass(frozen=True)
class ParallelConfig:
    """Training over several devices (`parallel/`). `mesh = [data, model]`: a mesh of
    `data * model` devices (it must divide the device count); each batch is split over
    `data`, every embedding table's rows over `model` (padded to a multiple of it). Empty
    (the default): one device, as before. Ordinary and causal runs of the models with row
    tables (MF, MLP, NeuMF) and of every other pairwise model (replicated over `model`)."""

    mesh: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _require(self.mesh == () or (len(self.mesh) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in self.mesh)),
            "parallel.mesh", "[data, model], two integers >= 1 (or [] for one device)",
            list(self.mesh))


@dataclass(frozen=True)
class RunConfig:
    """Seed, output folder, verbosity and experiment tracking of a run.

    Tracking (`runs/track.py`; every run kind, exported from the run folder once it is
    written, a diverged run's too): `tensorboard = true` writes event files under
    `RUN/tensorboard/` (the `tensorboard` extra); `mlflow = true` logs the run to MLflow's
    store `MLFLOW_TRACKING_URI`, else the file store `mlruns/` of the current directory, and a
    string names the store (a tracking URI such as `"sqlite:///mlflow.db"`, or the folder of
    a file store, stored absolute); `mlflow_experiment` is the MLflow experiment (the `mlflow`
    extra). None of them changes what the run computes.
    """

    seed: int = 0
    name: str = ""
    out_dir: str = "runs"
    quiet: bool = False
    tensorboard: bool = False
    mlflow: bool | str = False
    mlflow_experiment: str = "causalrec"

    def __post_init__(self) -> None:
        _require(not isinstance(self.mlflow, str) or self.mlflow.strip() != "", "run.mlflow",
                 "true, false, a tracking URI or a folder (not an empty string)", self.mlflow)
        _require(self.mlflow_experiment.strip() != "", "run.mlflow_experiment",
                 "the name of an MLflow experiment", self.mlflow_experiment)


@dataclass(frozen=True)
class Config:
    """The whole experiment configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    causal: CausalConfig = field(default_factory=CausalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    target: PolicyConfig = field(default_factory=PolicyConfig)
    ope: OpeConfig = field(default_factory=OpeConfig)
    uplift: UpliftConfig = field(default_factory=UpliftConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    planted: PlantedConfig = field(default_factory=PlantedConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


# `[data]` keys only the `mar_slice` split reads.
MAR_SLICE_KEYS = ("mar_train_fraction", "mar_valid_fraction", "mar_test")


def data_keys_used(data: DataConfig) -> tuple[str, ...]:
    """The `[data]` keys a run reads: all of them, but the `mar_slice` keys only under
    `data.split = "mar_slice"` (elsewhere setting them would do nothing)."""
    names = [f.name for f in dataclasses.fields(data)]
    if data.split == "mar_slice":
        return tuple(names)
    return tuple(name for name in names if name not in MAR_SLICE_KEYS)


def check_selection_metric(eval_config: EvalConfig, name: str, key: str) -> str:
    """`name` if the evaluation computes it (`ndcg@10` needs ndcg in eval.metrics and 10 in
    eval.ks; pointwise metrics take no @K), else a ConfigError naming `key`."""
    base, _, k = name.partition("@")
    computed = [metric.lower() for metric in eval_config.metrics]
    pointwise = base in POINTWISE_METRIC_NAMES or base == "auc_per_user"
    ok = (
        (pointwise and not k and (base in computed or (base == "auc_per_user" and "auc" in
                                                         computed)))
        or (not pointwise and base in computed and k.isdigit() and int(k) in eval_config.ks)
    )
    if not ok:
        options = [f"{m}@{kk}" for m in computed if m not in POINTWISE_METRIC_NAMES
                   for kk in eval_config.ks]
        options += [m for m in computed if m in POINTWISE_METRIC_NAMES]
        raise ConfigError(
            f"key {key}: the run does not compute {name!r} (eval.metrics x eval.ks give: "
            f"{', '.join(options)})"
        )
    return name


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config))


def set_keys(config: Config) -> dict[str, tuple[str, ...]]:
    """`{section: keys}` of every key whose value differs from its section's default (what a
    file or `--set` changed), in field order."""
    out: dict[str, tuple[str, ...]] = {}
    for section in SECTIONS:
        values, default = getattr(config, section), _SECTION_TYPES[section]()
        changed = tuple(f.name for f in dataclasses.fields(values)
                        if getattr(values, f.name) != getattr(default, f.name))
        if changed:
            out[section] = changed
    return out


def refuse_unused(
    config: Config, used: typing.Mapping[str, typing.Collection[str] | None], run: str
) -> None:
    """Refuses a key set in `config` that the run never reads: never silently ignored.

    Args:
        config: the effective config.
        used: `{section: keys}` the run reads; `None` for every key of the section.
        run: what the run is, for the message (e.g. "an ordinary run (model.name = 'mf')").

    Raises:
        ConfigError: naming the first such key, its value and the sections the run reads.
    """
    for section, keys in set_keys(config).items():
        for key in keys:
            if section in used and (used[section] is None or key in used[section]):
                continue
            value = getattr(getattr(config, section), key)
            if section in used:
                why = (f"{run} does not read it here (its [{section}] keys read: "
                       f"{', '.join(sorted(used[section]))})")
            else:
                why = (f"{run} does not read [{section}] (it reads "
                       f"{', '.join(f'[{name}]' for name in used)})")
            raise ConfigError(f"key {section}.{key}: set to {value!r}, but {why}; remove it")
_SECTION_TYPES = typing.get_type_hints(Config)


def _hint(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        element = _type_name(typing.get_args(tp)[0])
        plural = {"an integer": "integers", "a number": "numbers", "a string": "strings",
                  "true or false": "true or false values"}.get(element, element)
        return f"a list of {plural}"
    if tp is FrozenDict:
        return "a table of strings"
    if origin is dict:
        key, value = typing.get_args(tp)
        return f"a table of {_type_name(key)} -> {_type_name(value)}"
    if tp is type(None):
        return "nothing (omit the key)"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks `value` against the type hint `tp`; returns it converted (int -> float)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if isinstance(value, bool) and str(value).lower() in typing.get_args(tp):
            # `--set causal.propensity=true` parses as the TOML boolean; the string was meant.
            return str(value).lower()
        if not isinstance(value, bool) and value in typing.get_args(tp):
            return value
        options = [str(v) for v in typing.get_args(tp)]
        raise ConfigError(
            f"{where}: got {value!r}, expected {_type_name(tp)}{_hint(str(value), options)}"
        )
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: got {value!r}, expected {_type_name(tp)}")
    if origin in (list, tuple):
        # Lists are stored as tuples: sections are frozen and hashable.
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: got {value!r}, expected {_type_name(tp)}")
        item_type = typing.get_args(tp)[0]
        return tuple(_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is FrozenDict:
        tp, origin = dict[str, str], dict
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: got {value!r}, expected {_type_name(tp)}")
        key_type, value_type = typing.get_args(tp)
        return FrozenDict({
            _coerce(k, key_type, where): _coerce(v, value_type, f"{where}.{k}")
            for k, v in value.items()
        })
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: got {value!r}, expected {_type_name(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{where}: unsupported field type {tp!r}")
    raise ConfigError(f"{where}: got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")


# Keys that no longer exist, and what replaces them: refused with the pointer, never ignored.
REMOVED_KEYS = {
    ("ope", "seeds"): "the seeds of every run kind, OPE included, are train.seeds: use "
                      "train.seeds instead",
}


def _build_section(name: str, values: dict[str, Any], source: str,
                   origins: dict[tuple[str, str], str] | None = None) -> Any:
    cls = _SECTION_TYPES[name]
    hints = typing.get_type_hints(cls)
    fields_by_name = {f.name for f in dataclasses.fields(cls)}
    origins = origins or {}
    checked = {}
    for key, value in values.items():
        where = origins.get((name, key), source)  # a value given by --set is named as such
        if (name, key) in REMOVED_KEYS:
            raise ConfigError(f"{where}: key {name}.{key}: no longer read; "
                              f"{REMOVED_KEYS[name, key]}")
        if key not in fields_by_name:
            raise ConfigError(
                f"{where}: unknown key '{name}.{key}'{_hint(key, fields_by_name)} "
                f"(valid keys of [{name}]: {', '.join(sorted(fields_by_name))})"
            )
        checked[key] = _coerce(value, hints[key], f"{where}: key {name}.{key}")
    try:
        return cls(**checked)
    except ConfigError as error:
        named = [label for (section, key), label in origins.items()
                 if section == name and f"key {name}.{key}:" in str(error)]
        raise ConfigError(f"{named[0] if named else source}: {error}") from None


def config_from_dict(raw: dict[str, Any], source: str = "config",
                     origins: dict[tuple[str, str], str] | None = None) -> Config:
    """Builds a checked `Config` from nested dicts (sections -> keys -> values). An error
    names `source`, or for a key in `origins` (`(section, key) -> label`, e.g. the `--set`
    that gave it) that label."""
    sections = {}
    for name, values in raw.items():
        if name not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{name}]{_hint(name, SECTIONS)} "
                f"(valid sections: {', '.join(SECTIONS)})"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table of keys, got {values!r}")
        sections[name] = _build_section(name, values, source, origins)
    return Config(**sections)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parses `section.key=value`; the value is TOML, or a plain string when not valid TOML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    dotted, raw_value = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {text!r}: expected section.key=value, got key {dotted!r}")
    try:
        value = tomllib.loads(f"v = {raw_value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw_value.strip()
    return parts[0], parts[1], value


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (), *,
                text: str | None = None) -> Config:
    """Defaults, then the TOML file at `path` (if any), then `section.key=value` overrides.

    `text`: the file's contents, read elsewhere (the first process of a job hands a resumed
    run's `config.toml` to the others, `cli`); `path` then only names it in messages."""
    raw: dict[str, dict[str, Any]] = {}
    source = "config"
    if path is not None or text is not None:
        source = str(path) if path is not None else "config"
        try:
            if text is not None:
                raw = tomllib.loads(text)
            else:
                with open(path, "rb") as handle:
                    raw = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{source}: not valid TOML: {error}") from None
    origins = {}
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(
                f"--set {text!r}: unknown section [{section}]{_hint(section, SECTIONS)}"
            )
        raw.setdefault(section, {})[key] = value
        origins[section, key] = f"--set {text!r}"
    return config_from_dict(raw, source, origins)


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """Nested dicts of every field; None values left out (TOML has no null)."""
    out = {}
    for section in dataclasses.fields(config):
        values = dataclasses.asdict(getattr(config, section.name))
        out[section.name] = {k: v for k, v in values.items() if v is not None}
    return out


def _plain(value: Any) -> Any:
    """Tuples as lists and tables as plain dicts, for the TOML writer."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def dumps_config(config: Config) -> str:
    """The config as TOML text (written by `tomli_w`, which escapes every string, control
    characters included, so the text always loads back to the same `Config`)."""
    return tomli_w.dumps(_plain(config_to_dict(config)))


def dumps_changes(config: Config) -> str:
    """Only the keys that differ from the defaults (`set_keys`), as TOML: what a command prints
    at start (DESIGN §2); `config.toml` holds the whole config."""
    changed = {section: {key: getattr(getattr(config, section), key) for key in keys}
               for section, keys in set_keys(config).items()}
    return tomli_w.dumps(_plain(changed))


def dump_config(config: Config, path: str | Path) -> None:
    """Writes the effective config to `path` as TOML (written whole, via a temporary file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dumps_config(config))
    tmp.replace(path)
