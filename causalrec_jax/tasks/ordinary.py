"""Ordinary and causal runs: a population of seeds (or tuning members) trained on one split
through the one training core, and evaluated.

`train_split(config, split)` builds the static signature of the run (`ProgramSpec`), takes its
compiled epoch from a cache (`_programs`: a second identical run compiles nothing), stacks the
members' traced hyperparameters (optimiser, causal knobs, dropout) into their training states
and hands the loop to `train.loop.fit` (early stopping, checkpoints, resume). The run folder is
written above, by `runs.train`; serving a trained run (`LoadedRun`) is built here and read
back by `runs.load`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import causalrec_jax.sim  # noqa: F401  registers the data formats "simulator" and "simlog"
from causalrec_jax import streams
from causalrec_jax.causal import training as causal_training
from causalrec_jax.causal.checks import causal_keys_used, check_causal_setup
from causalrec_jax.causal.clip import DIVERGED_HINT
from causalrec_jax.causal.propensity import (
    clip_propensities,
    estimate_propensities,
    propensity_histogram,
)
from causalrec_jax.causal.training import causal_hparams, inference_scorers, saved_arrays
from causalrec_jax.config import (
    RANKING_METRIC_NAMES,
    SEQUENCE_TRAIN_KEYS,
    CausalConfig,
    Config,
    TrainConfig,
    data_keys_used,
    privacy_keys_used,
    refuse_unused,
)
from causalrec_jax.data.dataset import Dataset, Split
from causalrec_jax.data.fingerprint import check_unchanged
from causalrec_jax.data.loader import load_dataset
from causalrec_jax.data.split import make_split
from causalrec_jax.errors import ConfigError, RunError
from causalrec_jax.eval.protocol import (
    check_validation_selection,
    evaluate_split,
    positive_threshold_for,
)
from causalrec_jax.eval.ranking import is_positive, labels_are_binary
from causalrec_jax.eval.summary import aggregate
from causalrec_jax.eval.truth import evaluate_against_truth
from causalrec_jax.models.base import make_scorers, row_tables, split_model
from causalrec_jax.models.factory import declared_row_tables, init_params, model_keys_used
from causalrec_jax.parallel import (
    batch_sharding,
    check_run_mesh,
    checkpoint_view,
    from_first,
    is_multiprocess,
    make_mesh,
    make_sharded_run_epoch,
    pad_rows,
    padded_count,
    replicated,
    state_shardings,
    to_global,
    whole_tables,
)
from causalrec_jax.privacy import dpsgd, federated
from causalrec_jax.privacy.accounting import (
    calibrate_noise,
    check_delta,
    epsilon,
    gradient_noise_for,
)
from causalrec_jax.privacy.dpsgd import overflow_probability
from causalrec_jax.sim.world import SparseGroundTruth, truth_rows
from causalrec_jax.train import checkpoint as checkpoints
from causalrec_jax.train.loop import (
    CheckpointView,
    TrainingDivergedError,
    fit,
    over_seeds,
    seed_slice,
)
from causalrec_jax.train.objectives import POINTWISE_LOSSES, make_objective, seen_items_data
from causalrec_jax.train.step import (
    OPTIMIZER_HPARAMS,
    SHARED,
    init_state,
    make_optimizer,
    make_streaming_epoch,
    make_train_epoch,
    make_train_step,
    set_hyperparams,
    with_average,
)

# Training arrays up to this size live on the device (train.data_placement = "auto").
DEVICE_DATA_LIMIT = 2 << 30

def training_arrays(train: Dataset, loss_name: str, positive_threshold: float) -> dict:
    """The `[n_rows]` arrays a loss trains on, as numpy.

    Pointwise losses (`mse`, `bce`) train on every observed row (`bce` on 0/1 labels: the
    rating threshold, or the labels of binarised data); ranking losses train on the positive
    rows only (`rating >= threshold`; every row of implicit or binarised data with label 1).
    """
    threshold = positive_threshold_for(train, positive_threshold)
    if loss_name in POINTWISE_LOSSES:
        ratings = train.rating.astype(np.float32)
        if loss_name == "bce":
            ratings = is_positive(train.rating, threshold, labels_are_binary(train)).astype(
                np.float32
            )
        return {"users": train.user.astype(np.int32), "items": train.item.astype(np.int32),
                "ratings": ratings}
    keep = is_positive(train.rating, threshold, labels_are_binary(train))
    return {"users": train.user[keep].astype(np.int32), "items": train.item[keep].astype(np.int32)}


def seed_list(config: Config) -> list[int]:
    """The seeds of a run: `run.seed, run.seed + 1, ...` (`train.seeds` of them)."""
    return [config.run.seed + index for index in range(config.train.seeds)]


def seed_keys(seeds: list[int]) -> jax.Array:
    """`[n_seeds]` typed keys, one per seed."""
    return jnp.stack([jax.random.key(seed) for seed in seeds])


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a trained population: its seed and dynamic hyperparameter values."""

    seed: int
    hparams: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Trained:
    """A trained population of seeds on one split."""

    parts: Any  # ModelParts with best params stacked over seeds
    per_seed: list[dict[str, Any]]
    history: list[dict[str, Any]]
    timing: dict[str, float]
    propensity_report: dict[str, Any] | None = None
    # A causal method's own trained arrays besides the model (MACR's user and item modules),
    # stacked over seeds; empty for the others.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The divergence that ended training early (`train_split(keep_good_epochs=True)`): the
    # rest is then the result of the good epochs before it.
    diverged: TrainingDivergedError | None = None
    # The `"privacy"` object of metrics.json (`privacy_report`) of a DP-SGD run; else None.
    privacy: dict[str, Any] | None = None


def _row_propensities(config: Config, split: Split, truth: Any, users, items) -> tuple:
    """`[n]` unclipped (validated) propensities of the cells `(users, items)`, the report
    of clipping them at `causal.propensity_clip` (a dict, with their `histogram`), and the
    whole `[n_users, n_items]` matrix (validated at every cell for the targeted methods, which
    read the propensities of drawn cells).

    Propensities come from `causal.propensity` (`causal.propensity.estimate_propensities`);
    the clip itself is applied inside the training step (`causal.clip.clip_propensities`), at
    each member's traced `propensity_clip`, so the rows keep their raw values here.
    """
    train = split.train
    matrix = estimate_propensities(
        config.causal.propensity, train, mar=split.extra.get("mar_train"), config=config.causal,
        key=streams.derive(jax.random.key(config.run.seed), streams.Run.PROPENSITY_MODEL),
        truth=truth,
    )
    raw = np.asarray(matrix[users, items], np.float32)
    # Validation (NaN, <= 0, > 1, with the first bad cell) and the report of the config's clip.
    _, report = clip_propensities(
        raw, config.causal.propensity_clip or None,
        name=f"propensities (causal.propensity = {config.causal.propensity!r})",
    )
    # The distribution the clip acts on, for reports (the `[n]` values are not kept).
    out = {**report.to_dict(), "histogram": propensity_histogram(raw)}
    if config.causal.method in causal_training.TARGETED_METHODS:
        # TDR reads every cell's propensity (its drawn cells'): validated, and what the clip
        # does to them reported beside the rows'
        _, cells = clip_propensities(
            matrix, config.causal.propensity_clip or None,
            name=f"propensities of every cell (causal.propensity = "
                 f"{config.causal.propensity!r})")
        out["every_cell"] = cells.to_dict()
    return raw, out, matrix


def test_results(config: Config, seen: Dataset, test: Dataset, score_users_fn, propensity,
                  truth) -> dict[str, Any]:
    """`{"test": ...}`, plus, under the candidates protocol, `"test_literature"` (the
    literature's convention that a user without a positive test item scores NDCG = 1, under the
    same names) and `"test_full"` (the same positives ranked among all items, seen ones
    masked), and `"test_truth"` (the simulator: metrics on the true relevance of all cells)."""
    literature = config.eval.protocol == "candidates"
    values = evaluate_split(config.eval, train=seen, test=test, score_users_fn=score_users_fn,
                            propensity=propensity, literature=literature)
    out: dict[str, Any] = {"test": {k: v for k, v in values.items()
                                    if not k.startswith("literature_")}}
    if literature:
        out["test_literature"] = {k.removeprefix("literature_"): v for k, v in values.items()
                                  if k.startswith("literature_")}
        if not out["test_literature"]:
            del out["test_literature"]
        ranking = [name for name in config.eval.metrics if name in RANKING_METRIC_NAMES]
        if ranking:
            # The same positives ranked against the whole catalogue (seen items masked).
            full = dataclasses.replace(config.eval, protocol="full", metrics=tuple(ranking))
            out["test_full"] = evaluate_split(full, train=seen, test=test,
                                              score_users_fn=score_users_fn)
    if truth is not None and (hasattr(truth, "relevance") or _is_sparse_truth(truth)):
        out["test_truth"] = evaluate_against_truth(
            score_users_fn, truth_rows(truth), ks=config.eval.ks, train=seen,
            chunk_size=config.eval.chunk_size, rating_scale=config.train.loss == "mse",
        )
    return out


def _is_sparse_truth(truth: Any) -> bool:
    return isinstance(truth, SparseGroundTruth)


def model_inputs(dataset: Dataset, train: Dataset) -> dict[str, Any]:
    item_counts = np.bincount(train.item, minlength=train.n_items).astype(np.float32)
    global_bias = float(train.rating.mean()) if len(train) and not labels_are_binary(train) else 0.0
    return {
        "n_users": dataset.n_users, "n_items": dataset.n_items,
        "user_features": dataset.user_features, "item_features": dataset.item_features,
        "item_counts": item_counts, "global_bias": global_bias,
        # The training pairs only: lightgcn's propagation graph (never valid / test pairs).
        "train_edges": (train.user, train.item),
    }


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    """Everything a training program closes over: its static signature.

    Two runs with equal specs (and data of equal shapes) share one compiled program; the data,
    the model's constants (feature tables, graphs), the propensities, the popularity and every
    traced hyperparameter are arguments, never baked in.
    """

    graphdef: Any
    imputation_graphdef: Any
    loss: str
    method: str
    cells_per_row: int
    n_users: int
    n_items: int
    n_rows: int
    batch_size: int
    n_negatives: int
    optimizer: str
    lr_schedule: str
    warmup_steps: int
    total_steps: int
    n_seeds: int
    adam_beta2: float = 0.999
    dynamic_function: str = "log"
    # DP-SGD (`privacy.dpsgd`): the step's static description, or None for ordinary training.
    privacy: Any = None
    # Federated rounds (`privacy.federated`): the clients' SGD learning rate.
    client_learning_rate: float = 0.0
    # A sharded run (`parallel`): the mesh's (data, model) shape, () for one device, and the
    # model's row tables as sorted (name, kind) pairs.
    mesh: tuple[int, ...] = ()
    row_tables: tuple[tuple[str, str], ...] = ()
    # `train.ema_decay`: the moving average of the parameters kept by every step (0: none).
    ema_decay: float = 0.0


def _objective_of(spec: ProgramSpec, score_pairs: Callable, score_all: Callable | None,
                  imputation_pairs: Callable | None = None) -> Callable:
    """`loss_fn(params, batch, key, *, hparams)` of the spec's method and loss over the
    scorers given (`params`: `{"prediction": ..., <the method's own>}`): the ordinary step's
    objective (`_objective`) and, over each unit's gathered rows, the private step's
    (`privacy.dpsgd.make_dp_train_step`'s `objective`)."""
    if spec.method not in causal_training.CAUSAL_METHODS:
        objective = make_objective(spec.loss, score_pairs, score_all, n_items=spec.n_items,
                                   n_negatives=spec.n_negatives)

        def loss_fn(params, batch, key, *, hparams=None):
            return objective(params["prediction"], batch, key, hparams=hparams)

        return loss_fn
    return causal_training.make_causal_objective(
        spec.method, CausalConfig(cells_per_row=spec.cells_per_row,
                                  dynamic_function=spec.dynamic_function), spec.loss,
        score_pairs, n_users=spec.n_users, n_items=spec.n_items, n_rows=spec.n_rows,
        imputation_score_pairs=imputation_pairs, n_negatives=spec.n_negatives,
    )


def _objective(spec: ProgramSpec) -> Callable:
    """`loss_fn(params, batch, key, *, hparams)` of the spec; the model's constants are read
    from the batch (`shared_constants`, `shared_imputation_constants`), so nothing
    data-dependent is closed over."""
    def loss_fn(params, batch, key, *, hparams=None):
        scorers = make_scorers(spec.graphdef, batch["shared_constants"])
        imputation_pairs = None
        if spec.imputation_graphdef is not None:
            imputation_pairs = make_scorers(spec.imputation_graphdef,
                                            batch["shared_imputation_constants"]).score_pairs
        objective = _objective_of(spec, scorers.score_pairs, scorers.score_all,
                                  imputation_pairs)
        return objective(params, batch, key, hparams=hparams)

    return loss_fn


def _optimizer(spec: ProgramSpec, train_config: Any):
    settings = dataclasses.replace(train_config, optimizer=spec.optimizer,
                                   lr_schedule=spec.lr_schedule, warmup_steps=spec.warmup_steps,
                                   adam_beta2=spec.adam_beta2)
    return make_optimizer(settings, total_steps=spec.total_steps)


@functools.lru_cache(maxsize=64)
def _programs(spec: ProgramSpec, streaming_segment: int = 0) -> tuple[Callable, Any]:
    """`(run_epoch, optimizer)` of a spec, compiled once per process (cached by the spec).

    `run_epoch(states, data, keys, epoch) -> (states, metrics)` runs one epoch of every seed
    (vmapped over the leading axis, states donated); with `streaming_segment` > 0 the rows stay
    on the host and are sent `streaming_segment` batches at a time (`make_streaming_epoch`).
    """
    optimizer = _optimizer(spec, TrainConfig())
    if spec.privacy is not None and spec.privacy.local_steps:
        dp_step = federated.make_federated_round(
            spec.graphdef, spec.loss, optimizer, spec.privacy, n_users=spec.n_users,
            n_items=spec.n_items, n_negatives=spec.n_negatives,
            client_learning_rate=spec.client_learning_rate)
    elif spec.privacy is not None:
        dp_step = dpsgd.make_dp_train_step(
            spec.graphdef, spec.loss, optimizer, spec.privacy, n_users=spec.n_users,
            n_items=spec.n_items, n_negatives=spec.n_negatives,
            objective=functools.partial(_objective_of, spec),
            samples_negatives=spec.method in causal_training.SAMPLED_NEGATIVE_METHODS)
    if spec.privacy is not None:
        dp_step = with_average(dp_step, spec.ema_decay)
        dp_epoch = over_seeds(dpsgd.make_dp_epoch(dp_step, spec.privacy), spec.n_seeds)
        if spec.mesh:
            return make_sharded_run_epoch(dp_epoch, make_mesh(spec.mesh),
                                          dict(spec.row_tables)), optimizer
        return jax.jit(dp_epoch, donate_argnums=(0,)), optimizer
    train_step = with_average(make_train_step(_objective(spec), optimizer), spec.ema_decay)
    if streaming_segment:
        run_epoch = make_streaming_epoch(
            train_step, n_rows=spec.n_rows, batch_size=spec.batch_size,
            segment_batches=streaming_segment, vmap_seeds=spec.n_seeds > 1,
        )
    elif spec.mesh:
        mesh = make_mesh(spec.mesh)
        train_epoch = make_train_epoch(train_step, n_rows=spec.n_rows,
                                       batch_size=spec.batch_size,
                                       batch_sharding=batch_sharding(mesh))
        run_epoch = make_sharded_run_epoch(over_seeds(train_epoch, spec.n_seeds), mesh,
                                           dict(spec.row_tables))
    else:
        train_epoch = make_train_epoch(train_step, n_rows=spec.n_rows,
                                       batch_size=spec.batch_size)
        run_epoch = jax.jit(over_seeds(train_epoch, spec.n_seeds), donate_argnums=(0,))
    return run_epoch, optimizer


def _served_scores(graphdef: Any, method: str) -> Callable:
    """`(params, constants, users [b]) -> [b, n_items]` of the ranking a trained model of
    `method` serves; `params` is `{"prediction": ..., <method's arrays>, "hparams": ...}`."""
    def score(params, constants, users):
        scorers = make_scorers(graphdef, constants)
        _, score_all = inference_scorers(method, CausalConfig(), scorers.score_pairs,
                                         scorers.score_all)
        return score_all(params, users)

    return score


@functools.lru_cache(maxsize=64)
def _score_program(graphdef: Any, method: str) -> Callable:
    """`_served_scores` jitted, compiled once per model structure and method (cached)."""
    return jax.jit(_served_scores(graphdef, method))


def _member_hparams(config: Config, members: list[Member], imputation_value: float):
    """`(optimizer values, loss values)`, each `{name: [n_members] float32}`: the config's
    values, overridden by each member's own (`Member.hparams`). The loss values are the causal
    knobs (`CAUSAL_HPARAMS`) and, for a model with dropout, its rate (`dropout`)."""
    defaults = {"learning_rate": config.train.learning_rate,
                "weight_decay": config.train.weight_decay,
                **causal_hparams(config.causal, imputation_value)}
    if "dropout" in model_keys_used(config.model) and any("dropout" in m.hparams
                                                          for m in members):
        # Traced only when members vary it: a run at one rate keeps the model's own (static)
        # rate, whose program XLA may simplify differently (same numbers as before the core).
        defaults["dropout"] = config.model.dropout
    unknown = sorted({name for m in members for name in m.hparams} - set(defaults))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a traced hyperparameter (known: "
                          f"{', '.join(sorted(defaults))})")

    def column(name):
        return np.asarray([m.hparams.get(name, defaults[name]) for m in members], np.float32)

    optimizer_values = {name: column(name) for name in OPTIMIZER_HPARAMS}
    loss_values = {name: column(name) for name in defaults if name not in OPTIMIZER_HPARAMS}
    return optimizer_values, loss_values


def training_rows(config: Config, split: Split, truth: Any) -> tuple[dict, dict | None]:
    """The `[n_rows]` arrays the method trains on (numpy) and its propensity report."""
    method, train = config.causal.method, split.train
    if method != "naive":
        check_causal_setup(config.causal, config.data, split, loss=config.train.loss)
    if method in causal_training.IMPLICIT_METHODS:
        threshold = positive_threshold_for(train, config.eval.positive_threshold)
        positive = is_positive(train.rating, threshold, labels_are_binary(train))
        users, items = train.user[positive], train.item[positive]
        arrays = {"users": users.astype(np.int32), "items": items.astype(np.int32)}
    else:
        arrays = training_arrays(train, config.train.loss, config.eval.positive_threshold)
        users, items = arrays["users"], arrays["items"]
    if len(users) == 0:
        raise ConfigError(
            f"no training examples for causal.method = {method!r} and train.loss = "
            f"{config.train.loss!r}: no training row is a positive at "
            f"eval.positive_threshold = {config.eval.positive_threshold}"
        )
    report = None
    if method in causal_training.METHODS_WITH_PROPENSITIES:
        arrays["propensities"], report, matrix = _row_propensities(config, split, truth, users,
                                                                   items)
        if method in causal_training.TARGETED_METHODS:  # read by the step, not batched
            arrays["shared_propensity_matrix"] = np.asarray(matrix, np.float32)
    return arrays, report


# The methods a private step trains: their objective reads the model's rows and the batch
# alone, and every pair it scores is in `train.objectives.scored_pairs` of the loss (PDA
# trains BPR: its negatives are BPR's), so each unit's gathered rows hold all it reads.
# PDA's popularity is counted under DP (`dpsgd.noisy_log_popularity`).
# MACR's user and item modules (`causal.training.extra_params`) train beside the model as
# dense parameters of the private step: clipped with each unit's gradient and noised whole.
PRIVATE_METHODS = ("naive", "pda", "macr")


def private_spec(config: Config, graphdef: Any, *, n_users: int, n_rows: int,
                 silo_rows: int = 0) -> dpsgd.DPSpec:
    """The DP-SGD step of `[privacy]` for this run: its units (users, rows or, with
    `privacy.silos`, silos of `silo_rows` rows at most), the expected batch
    (`train.batch_size` units), and the noise multiplier (`privacy.noise`, or calibrated to
    `privacy.target_epsilon` over `train.epochs` epochs). A one-line ConfigError names the
    key of a setting DP-SGD cannot honour."""
    privacy = config.privacy
    if config.causal.method not in PRIVATE_METHODS:
        raise ConfigError(f"key causal.method: {config.causal.method!r} with privacy.level "
                          f"= {privacy.level!r}; private training covers causal.method = "
                          f"{' or '.join(repr(m) for m in PRIVATE_METHODS)} so far")
    if privacy.silos and privacy.item_rows:
        # a silo adds up to ceil(n_users / S) * max_examples_per_user rows, a bound far above
        # the widest silo built, on counts that are at most S: the selection would be noise
        raise ConfigError(f"key privacy.item_rows: {privacy.item_rows} with privacy.silos = "
                          f"{privacy.silos}; DP-FEST's selection counts users, not silos "
                          "(set privacy.item_rows = 0)")
    if privacy.mechanism == "fedavg" and config.causal.method != "naive":
        raise ConfigError(f"key causal.method: {config.causal.method!r} with privacy.mechanism "
                          "= 'fedavg'; federated clients train causal.method = 'naive' so far")
    if privacy.mechanism == "fedavg" and privacy.level != "user":
        raise ConfigError(f"key privacy.level: {privacy.level!r} with privacy.mechanism = "
                          "'fedavg'; federated clients are users (level 'user')")
    if privacy.mechanism == "fedavg" and privacy.user_rows != "local":
        raise ConfigError(f"key privacy.user_rows: {privacy.user_rows!r} with "
                          "privacy.mechanism = 'fedavg'; a federated client keeps its own rows "
                          "('local')")
    if privacy.level == "example" and privacy.noised:
        # one row's influence is bounded by its clipped gradient only if no other row's
        # gradient depends on it (`privacy.dpsgd`, "Example level")
        if privacy.user_rows != "noised":
            raise ConfigError("key privacy.user_rows: 'local' at privacy.level = 'example'; a "
                              "user row trained on all of a user's rows carries one row into "
                              "the others' gradients; set privacy.user_rows = 'noised'")
        if config.train.exclude_seen_negatives and (
                config.train.loss in ("bpr", "sampled_softmax")
                or config.causal.method in causal_training.SAMPLED_NEGATIVE_METHODS):
            raise ConfigError("key train.exclude_seen_negatives: true at privacy.level = "
                              "'example'; each row's negatives would depend on the user's other "
                              "rows; set it to false")
    if config.train.loss == "softmax":
        raise ConfigError("key train.loss: 'softmax' scores every item for every row, so a "
                          "user's gradient reads the whole item table; use bpr or "
                          "sampled_softmax with privacy.level set")
    if config.train.data_placement == "host":
        raise ConfigError("key train.data_placement: DP-SGD samples its units on the device; "
                          "use 'auto' or 'device' with privacy.level set")
    if config.train.cv_folds:
        raise ConfigError("key train.cv_folds: every fold trains on most of the same users, "
                          "so the folds' budgets would compose; unset it with privacy.level set")
    if config.train.halving_rung:
        raise ConfigError("key train.halving_rung: successive halving selects members on "
                          "validation without noise; unset it with privacy.level set")
    dpsgd.make_unit_gradient(graphdef, config.train.loss, n_users=n_users, n_items=1,
                             n_negatives=1)  # refuses a model without row tables
    n_units = n_users if privacy.level == "user" else n_rows
    examples = privacy.max_examples_per_user if privacy.level == "user" else 1
    if privacy.silos:
        n_units, examples = privacy.silos, silo_rows
    delta = privacy.delta or 1.0 / n_users
    if privacy.noised:
        check_delta(delta, n_users)
    expected = float(min(config.train.batch_size, n_units))
    steps = dpsgd.steps_per_epoch(n_units, expected) * config.train.epochs
    noise = privacy.noise
    # the noisy item counts: DP-FEST's selection and a private PDA's popularity read them
    counted = privacy.item_rows or (config.causal.method == "pda" and privacy.noised)
    selection = privacy.selection_noise if counted else 0.0
    adaptive = privacy.adaptive_threshold if privacy.noised else 0.0
    if privacy.target_epsilon:
        noise = calibrate_noise(privacy.target_epsilon, expected / n_units, steps, delta,
                                privacy.accountant, selection_noise=selection)
        if adaptive:  # the calibrated multiplier is both mechanisms' together
            noise = gradient_noise_for(noise, privacy.adaptive_noise)
    return dpsgd.make_spec(
        privacy.level, clip=privacy.clip if privacy.noised else math.inf,
        noise_multiplier=noise, n_units=n_units,
        expected_batch=expected,
        examples_per_unit=examples,
        user_rows=privacy.user_rows, item_rows=privacy.item_rows, selection_noise=selection,
        local_steps=privacy.local_steps if privacy.mechanism == "fedavg" else 0,
        silos=privacy.silos, adaptive_threshold=adaptive,
        adaptive_noise=privacy.adaptive_noise, contribution_clip=privacy.contribution_clip)


def _guarantee(spec: dpsgd.DPSpec, user_rows: bool = True) -> str:
    """What a noised run's epsilon covers, in words (`metrics.json` `privacy.guarantee`); a
    model without user rows (`user_rows` False: the sequence models) has every parameter
    noised whatever `spec.user_rows` says."""
    if not user_rows:
        return "DP of every parameter"
    if spec.silos:
        return ("joint DP per silo (a silo's whole data, so each of its users'): every output "
                "but the silo's user rows, which are trained on all of the silo's rows "
                "without noise and seen only inside the silo")
    if spec.user_rows == "local":
        return "joint DP: every output but each user's own rows, which only that user sees"
    return "DP of every parameter"


def privacy_report(config: Config, spec: dpsgd.DPSpec, epochs_trained: int,
                   n_users: int, *, user_rows: bool = True) -> dict[str, Any]:
    """The `"privacy"` object of `metrics.json`: the guarantee of the steps actually run.
    `user_rows` False: the model has none (a sequence model), so `user_rows` is null."""
    delta = config.privacy.delta or 1.0 / n_users
    steps = epochs_trained * spec.steps_per_epoch
    truncation = steps * overflow_probability(spec.n_units, spec.sampling_rate, spec.capacity)
    noised = config.privacy.noised
    return {
        "mechanism": config.privacy.mechanism,
        "epsilon": (epsilon(spec.accounted_noise_multiplier, spec.sampling_rate, steps, delta,
                            config.privacy.accountant, spec.selection_noise)
                    if noised else math.inf),
        "delta": delta if noised else None, "noise_multiplier": spec.noise_multiplier,
        "clip_norm": spec.clip if noised else None,
        "level": spec.level, "accountant": config.privacy.accountant if noised else None,
        "steps": steps,
        "local_steps": spec.local_steps or None,
        "user_rows": spec.user_rows if user_rows else None,
        "guarantee": (_guarantee(spec, user_rows) if noised else "none: no noise is added"),
        "sampling_rate": spec.sampling_rate, "expected_batch": spec.expected_batch,
        "capacity": spec.capacity, "truncation_delta": truncation,
        "max_examples_per_user": (config.privacy.max_examples_per_user
                                  if spec.level == "user" else None),
        "silos": spec.silos or None,
        "unit": "silo" if spec.silos else spec.level,
        "target_epsilon": config.privacy.target_epsilon or None,
        "item_rows": spec.item_rows or None,
        "selection_noise": spec.selection_noise or None,
        "adaptive_threshold": spec.adaptive_threshold or None,
        "adaptive_noise": spec.adaptive_noise or None,
        "contribution_clip": spec.contribution_clip if spec.adaptive_threshold else None,
        "accounted_noise_multiplier": (spec.accounted_noise_multiplier
                                       if spec.adaptive_threshold else None),
        "not_private": ("the logged training loss, the best epoch chosen on validation, "
                        "and the choice among seeds or tuning trials: epsilon is one trained "
                        "model's (one seed's); S seeds, or S trials, compose"),
    }


@dataclasses.dataclass
class ProgramSetup:
    """A population's training before its first epoch, as `train_split` starts it
    (`program_setup`); `runs.retrain` repeats it on edited data.

    Attributes:
        spec: the program's static signature.
        parts: the model (`init_params`: graphdef, params stacked over members, constants).
        states: `TrainState`s stacked over members.
        keys: `[n_members]` training keys (`streams.Run.TRAIN` of each seed's key).
        seeds: each member's seed.
        arrays: the `[n_rows]` training rows, numpy (`training_rows`).
        data: what an epoch reads: the rows (on the device when `on_device`), the model's
            constants and the method's `shared_` arrays (seen-item mask, popularity).
        constants: arrays the served scores read besides the parameters (PDA's popularity).
        causal_values: the members' traced loss knobs, `{name: [n_members]}`.
        propensity_report: the method's propensity report, or None.
        on_device: whether the rows live on the device (else streamed in segments).
        steps_per_epoch: batches per epoch.
    """

    spec: ProgramSpec
    parts: Any
    states: Any
    keys: jax.Array
    seeds: list[int]
    arrays: dict[str, np.ndarray]
    data: dict[str, Any]
    constants: dict[str, Any]
    causal_values: dict[str, np.ndarray]
    propensity_report: Any
    on_device: bool
    steps_per_epoch: int


def row_counts(spec: ProgramSpec) -> dict[str, int]:
    """The real row counts of the model's row tables, by id kind."""
    return {"users": spec.n_users, "items": spec.n_items}


def unpadded(spec: ProgramSpec, params: Any, row_axis: int = 0) -> Any:
    """`params` of a sharded run whole, without padding, on one local device
    (`parallel.whole_tables`; rows on `row_axis`: 0 for one seed's, 1 for parameters stacked
    over seeds); unchanged for a run on one device."""
    if not spec.mesh:
        return params
    return whole_tables(params, dict(spec.row_tables), row_counts(spec), row_axis)


def sharded_checkpoints(spec: ProgramSpec) -> CheckpointView | None:
    """A sharded run's `parallel.checkpoint_view` (tables stored at their real size, so a run
    resumes on another mesh); None for a run on one device (stored as it trains)."""
    if not spec.mesh:
        return None
    return checkpoint_view(dict(spec.row_tables), row_counts(spec), spec.mesh)


def program_setup(config: Config, split: Split, truth: Any = None,
                  members: list[Member] | None = None) -> ProgramSetup:
    """The rows, initial states, keys and static signature of a population (`members`, None:
    the config's seeds) on `split.train`: everything `train_split` builds before its first
    epoch."""
    if members is None:
        members = [Member(seed=seed) for seed in seed_list(config)]
    seeds = [member.seed for member in members]
    keys = seed_keys(seeds)
    train = split.train
    method = config.causal.method
    arrays, propensity_report = training_rows(config, split, truth)
    # arrays every step reads whole (`shared_...`), kept apart from the batched rows
    shared_rows = {name: jnp.asarray(arrays.pop(name)) for name in list(arrays)
                   if name.startswith(SHARED)}
    inputs = model_inputs(train, train)
    if config.privacy.level:  # no initial value read from the data without noise
        inputs["global_bias"] = 0.0
    parts = init_params(
        config.model, keys=jax.vmap(lambda k: streams.derive(k, streams.Run.INIT))(keys),
        **inputs,
    )
    initial: dict[str, Any] = {"prediction": parts.params}
    shared: dict[str, Any] = {"shared_constants": parts.constants, **shared_rows}
    imputation_graphdef = None
    if method in causal_training.JOINT_METHODS:
        imputation = init_params(
            config.model,
            keys=jax.vmap(lambda k: streams.derive(k, streams.Run.IMPUTATION))(keys), **inputs,
        )
        initial["imputation"] = imputation.params
        shared["shared_imputation_constants"] = imputation.constants
        imputation_graphdef = imputation.graphdef
    for name, value in causal_training.extra_params(method, train.n_users, train.n_items).items():
        initial[name] = jnp.tile(jnp.asarray(value)[None], (len(keys),) + (1,) * value.ndim)
    constants: dict[str, Any] = {}
    if method == "pda":
        constants["log_popularity"] = jnp.asarray(
            causal_training.log_popularity(arrays["items"], train.n_items))
        shared["shared_log_popularity"] = constants["log_popularity"]
    imputation_value = float(np.mean(arrays["ratings"])) if "ratings" in arrays else 0.0
    optimizer_values, causal_values = _member_hparams(config, members, imputation_value)

    n_rows = len(arrays["users"])
    batch_size = min(config.train.batch_size, max(n_rows, 1))
    steps_per_epoch = -(-n_rows // batch_size)
    # a sharded run keeps its rows on the devices (`check_parallel_config` refuses "host")
    on_device = bool(config.parallel.mesh) or config.train.data_placement == "device" or (
        config.train.data_placement == "auto"
        and sum(values.nbytes for values in arrays.values()) <= DEVICE_DATA_LIMIT
    )
    dp_spec = None
    if config.privacy.level:
        run_key = jax.random.key(config.run.seed)
        silos = config.privacy.silos
        if silos:  # each user's capped rows, then the users' rows side by side per silo
            arrays = dpsgd.silo_arrays(
                dpsgd.unit_arrays(arrays, train.n_users, "user",
                                  config.privacy.max_examples_per_user,
                                  streams.derive(run_key, streams.Run.PRIVATE_ROWS)),
                dpsgd.silo_of_users(train.n_users, silos,
                                    streams.derive(run_key, streams.Run.SILOS)), silos)
        dp_spec = private_spec(config, parts.graphdef, n_users=train.n_users, n_rows=n_rows,
                               silo_rows=arrays["unit_mask"].shape[1] if silos else 0)
        steps_per_epoch = dp_spec.steps_per_epoch
        if not silos:
            arrays = dpsgd.unit_arrays(
                arrays, train.n_users, dp_spec.level, dp_spec.examples_per_unit,
                streams.derive(run_key, streams.Run.PRIVATE_ROWS))
        if dp_spec.selection_noise:  # one noisy count per item, whatever reads it
            noisy = dpsgd.noisy_counts(streams.derive(run_key, streams.Run.PRIVATE_ITEMS),
                                       dpsgd.item_counts(arrays, train.n_items), dp_spec)
            if dp_spec.item_rows:
                shared[dpsgd.TRAINED_ITEMS] = jnp.asarray(
                    dpsgd.top_items(noisy, dp_spec.item_rows))
            if method == "pda" and config.privacy.noised:  # the exact count is never read
                constants["log_popularity"] = jnp.asarray(dpsgd.noisy_log_popularity(noisy))
                shared["shared_log_popularity"] = constants["log_popularity"]
        on_device = True
    data = {name: jnp.asarray(values) if on_device else values for name, values in arrays.items()}
    data.update(shared)
    samples_negatives = (config.train.loss in ("bpr", "sampled_softmax")
                         or method in causal_training.SAMPLED_NEGATIVE_METHODS)
    if samples_negatives and config.train.exclude_seen_negatives:
        seen = seen_items_data(train.user, train.item, train.n_users, train.n_items)
        data.update({name: jnp.asarray(values) for name, values in seen.items()})
    spec = ProgramSpec(
        graphdef=parts.graphdef, imputation_graphdef=imputation_graphdef,
        loss=config.train.loss, method=method, cells_per_row=config.causal.cells_per_row,
        n_users=train.n_users, n_items=train.n_items, n_rows=n_rows, batch_size=batch_size,
        n_negatives=config.train.n_negatives, optimizer=config.train.optimizer,
        lr_schedule=config.train.lr_schedule, warmup_steps=config.train.warmup_steps,
        total_steps=steps_per_epoch * config.train.epochs, n_seeds=len(members),
        adam_beta2=config.train.adam_beta2, dynamic_function=config.causal.dynamic_function,
        privacy=dp_spec,
        client_learning_rate=(config.privacy.client_learning_rate
                              if dp_spec is not None and dp_spec.local_steps else 0.0),
        mesh=tuple(config.parallel.mesh),
        ema_decay=config.train.ema_decay,
        row_tables=tuple(sorted((row_tables(parts.graphdef) or {}).items()))
        if config.parallel.mesh else (),
    )
    if spec.mesh:  # zero rows up to a multiple of the model axis (`parallel.sharding`)
        initial = pad_rows(initial, dict(spec.row_tables), row_counts(spec),
                           spec.mesh[1], row_axis=1)
    optimizer = _optimizer(spec, TrainConfig())
    hparams = causal_training.as_hparams(causal_values)

    def initial_states(initial, hparams):
        states = jax.vmap(lambda params, values: init_state(
            params, optimizer, values, average=bool(spec.ema_decay)))(initial, hparams)
        return set_hyperparams(states, optimizer_values)

    train_keys = jax.vmap(lambda k: streams.derive(k, streams.Run.TRAIN))(keys)
    if spec.mesh:
        mesh = make_mesh(spec.mesh)
        # several processes: every input a global array (each process built the same values)
        initial, hparams, data, train_keys = to_global((initial, hparams, data, train_keys),
                                                       mesh)
        # the optimiser's state is born sharded: its shardings come from shapes alone
        shardings = state_shardings(jax.eval_shape(initial_states, initial, hparams),
                                    mesh, dict(spec.row_tables), row_axis=1)
        states = jax.jit(initial_states, out_shardings=shardings)(initial, hparams)
    else:
        states = initial_states(initial, hparams)
    return ProgramSetup(
        spec=spec, parts=parts, states=states, keys=train_keys, seeds=seeds, arrays=arrays,
        data=data, constants=constants, causal_values=causal_values,
        propensity_report=propensity_report, on_device=on_device,
        steps_per_epoch=steps_per_epoch)


def train_split(
    config: Config,
    split: Split,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: bool = False,
    log_fn=None,
    propensity: np.ndarray | None = None,
    members: list[Member] | None = None,
    evaluate_test: bool = True,
    truth: Any = None,
    keep_good_epochs: bool = False,
) -> Trained:
    """Trains a population on `split.train` as one vmapped program; evaluates each member.

    By default the population is `train.seeds` seeds of the config. `members` gives each
    member its own seed and traced hyperparameters (`step.OPTIMIZER_HPARAMS` and the causal
    knobs `causal.training.CAUSAL_HPARAMS`), as `causalrec tune` does: members with the same
    seed start from the same parameters and draw the same negatives, so each equals a separate
    run of that seed and those values. The compiled epoch is cached by its static signature
    (`ProgramSpec`): a second identical call in one process compiles nothing.
    With `evaluate_test=False` the test split is never read.

    Validation is evaluated with `evaluate_split(..., validation=True)`: under the candidates
    protocol a ranking metric@K there averages only the users whose list is informative at K,
    and is NaN below `eval.min_ranked_users`; early stopping on such a metric is refused here,
    before anything trains (`eval.protocol.check_validation_selection`).

    Raises:
        TrainingDivergedError: a NaN/Inf loss or gradient; with `keep_good_epochs`, only when
            some seed had no validated epoch before it: otherwise the population's best
            parameters of the good epochs are evaluated and returned, with `Trained.diverged`.
    """
    # Successive halving ranks tuning populations only: in a plain run every seed trains on,
    # so the reported mean over seeds is not selected on validation.
    tuning = members is not None
    if members is None:
        members = [Member(seed=seed) for seed in seed_list(config)]
    seeds = [member.seed for member in members]
    train = split.train
    if len(train) == 0:
        raise ConfigError("the training split is empty; check data.split and the data path")
    if split.valid is not None and len(split.valid):
        # A per-user ranking metric too few validation users can be ranked on is NaN
        # (`eval.protocol`): refused as the criterion before anything trains.
        check_validation_selection(config.eval, split.valid, config.train.early_stopping_metric,
                                   "train.early_stopping_metric")
    method = config.causal.method
    setup = program_setup(config, split, truth, members)
    parts, constants, causal_values = setup.parts, setup.constants, setup.causal_values
    propensity_report, states, data = setup.propensity_report, setup.states, setup.data
    train_keys, steps_per_epoch = setup.keys, setup.steps_per_epoch
    run_epoch, _ = _programs(
        setup.spec, 0 if setup.on_device else config.train.segment_batches)
    score_program = _score_program(parts.graphdef, method)

    def scorer(params, row):
        served = {**params, **constants,
                  # From the host copy: the states' own hparams are donated to each epoch.
                  "hparams": {name: jnp.float32(values[row])
                              for name, values in causal_values.items()}}
        return lambda users: score_program(served, parts.constants, users)

    evaluate_fn = None
    if split.valid is not None and len(split.valid):
        def evaluate_fn(params, member=0):
            return from_first(evaluate_split(  # every process stops as the first does
                config.eval, train=train, test=split.valid,
                score_users_fn=scorer(unpadded(setup.spec, params), member),
                propensity=propensity, validation=True,
            ))

    diverged = None
    try:
        result = fit(
            train_epoch=None, states=states, data=data, keys=train_keys,
            epochs=config.train.epochs, evaluate_fn=evaluate_fn,
            metric=config.train.early_stopping_metric, patience=config.train.patience,
            checkpoint_dir=checkpoint_dir, checkpoint_every=config.train.checkpoint_every,
            resume=resume, progress=progress, log_fn=log_fn, run_epoch=run_epoch,
            evaluate_with_member=True, checkpoint_view=sharded_checkpoints(setup.spec),
            diverged_hint=(DIVERGED_HINT if method in causal_training.METHODS_WITH_PROPENSITIES
                           else ""),
            recorded=(("selected_rows",) if setup.spec.privacy is not None
                      and setup.spec.privacy.adaptive_threshold else ()),
            description=f"{len(seeds)} seed(s), {steps_per_epoch} batches/epoch",
            halving=(
                (config.train.halving_rung, config.train.halving_keep)
                if config.train.halving_rung and evaluate_fn is not None and len(members) > 1
                and tuning
                else None
            ),
        )
    except TrainingDivergedError as error:
        if not keep_good_epochs or error.partial is None:
            raise
        result, diverged = error.partial, error
    tic = time.perf_counter()
    seen = split.seen_before_test()
    per_seed = []
    best_params = unpadded(setup.spec, result.best_params, row_axis=1)
    for index, member in enumerate(members):
        params = seed_slice(best_params, index)
        entry: dict[str, Any] = {"seed": member.seed, "best_epoch": result.best_epochs[index]}
        if member.hparams:
            entry["hparams"] = dict(member.hparams)
        if evaluate_fn is not None:
            entry["valid"] = evaluate_fn(seed_slice(result.best_params, index), index)
        if evaluate_test:
            entry.update(test_results(config, seen, split.test, scorer(params, index),
                                       propensity, truth))
        per_seed.append(entry)
    timing = {**result.timing, "test_eval_seconds": round(time.perf_counter() - tic, 4)}
    extra = {name: value for name, value in best_params.items()
             if name not in ("prediction", "imputation")}
    extra.update({name: jnp.tile(value[None], (len(members),) + (1,) * value.ndim)
                  for name, value in constants.items()})
    privacy = None
    if setup.spec.privacy is not None:
        privacy = privacy_report(config, setup.spec.privacy, len(result.history),
                                 train.n_users)
        selected = [record["selected_rows"] for record in result.history
                    if "selected_rows" in record]
        if selected:  # DP-AdaFEST: item rows a step trained, mean over epochs, per seed
            privacy["selected_rows_per_step"] = [
                round(float(np.mean([epoch[row] for epoch in selected if row < len(epoch)])),
                      2) for row in range(len(selected[0]))]
    return Trained(parts=parts._replace(params=best_params["prediction"]), per_seed=per_seed,
                   history=result.history, timing=timing, propensity_report=propensity_report,
                   extra=extra, diverged=diverged, privacy=privacy)


def data_summary(split: Split, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {
        "n_users": split.train.n_users,
        "n_items": split.train.n_items,
        "n_train": len(split.train),
        "n_valid": 0 if split.valid is None else len(split.valid),
        "n_test": len(split.test),
    }
    for part in ("valid", "test"):
        # How many users each block's means are over (the same for every seed): with a
        # positive, ranked at each K, informative at each K, with both classes for auc_per_user.
        values = per_seed[0].get(part, {})
        for key, value in values.items():
            if key.startswith("n_users_"):
                summary[f"{part}_{key}"] = value
    return summary


def evaluation_propensity(config: Config, dataset: Dataset) -> np.ndarray | None:
    """The propensity matrix `ips_*` / `snips_*` metrics read, or None when none is asked for."""
    if not any(name.startswith(("ips_", "snips_")) for name in config.eval.metrics):
        return None
    if dataset.propensity_matrix is None:
        raise ConfigError(
            "key eval.metrics: ips_* / snips_* metrics need a propensity matrix, which "
            f"this dataset ({config.data.format}) does not provide"
        )
    return dataset.propensity_matrix


def check_ordinary_keys(config: Config) -> None:
    """Refuses a key an ordinary (or causal) run would ignore: a section it does not read
    (`[ope]`, `[uplift]`, `[env]`, ...; `[sim]` unless `data.format = "simulator"`,
    `[planted]` unless `data.format = "planted"`), a
    `[causal]` key of another method, a `[model]` key of another model."""
    used: dict[str, Any] = {"data": data_keys_used(config.data),
                            "model": model_keys_used(config.model),
                            "causal": causal_keys_used(config.causal),
                            "train": [f.name for f in dataclasses.fields(config.train)
                                      if f.name not in SEQUENCE_TRAIN_KEYS],
                            "eval": None, "run": None,
                            "privacy": privacy_keys_used(config.privacy, config.causal.method),
                            "parallel": None}
    if config.data.format == "simulator":
        used["sim"] = None
    if config.data.format == "planted":
        used["planted"] = None
    refuse_unused(config, used, f"a run of model.name = {config.model.name!r} with "
                                f"causal.method = {config.causal.method!r}")
    check_parallel_config(config)


def check_parallel_config(config: Config) -> None:
    """Refuses, in one line naming the key, a mesh this machine cannot build and a setting a
    sharded run does not support yet."""
    if is_multiprocess() and config.train.cv_folds:
        raise ConfigError("key train.cv_folds: folds with --distributed are not run yet; "
                          "remove it")
    if not config.parallel.mesh:
        check_run_mesh(())  # a job of several processes needs a mesh
        return
    if config.parallel.mesh[1] > 1 and not declared_row_tables(config.model.name):
        raise ConfigError(f"key parallel.mesh: {list(config.parallel.mesh)} splits tables over "
                          f"{config.parallel.mesh[1]} model shards, but model.name = "
                          f"{config.model.name!r} has no row tables to split; use "
                          f"[{config.parallel.mesh[0] * config.parallel.mesh[1]}, 1]")
    check_run_mesh(config.parallel.mesh)
    if config.train.data_placement == "host":
        raise ConfigError("key train.data_placement: 'host' with parallel.mesh set; a sharded "
                          "run keeps its training rows on the devices ('device' or 'auto')")
    if config.train.loss == "softmax":
        raise ConfigError("key train.loss: 'softmax' with parallel.mesh set; the full softmax "
                          "would normalise over the padding rows of the sharded item table; "
                          "use sampled_softmax, bpr or a pointwise loss")


@dataclasses.dataclass
class LoadedRun:
    """A trained run read back from its folder."""

    config: Config
    parts: Any
    data: dict[str, np.ndarray]
    # A causal method's own arrays (MACR's modules), stacked over seeds; empty otherwise.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    # A sequential run's scoring (`tasks.sequential.load_sequence_run`): seed index -> the
    # function `score_all_fn` returns; None for the other runs.
    scorer: Callable[[int], Callable] | None = None
    # The seeds `model/` holds, in order (fewer than the config's when a sequential run
    # diverged part-way and wrote the seeds it had); None: the config's.
    seeds: list[int] | None = None

    def score_all_fn(self, seed_index: int = 0):
        """`users [b] -> scores [b, n_items]` of the ranking the run serves (one seed)."""
        if self.scorer is not None:
            return self.scorer(seed_index)
        # The program training evaluated with (compiled once per model structure and method),
        # with the run's own inference knobs.
        causal = self.config.causal
        program = _score_program(self.parts.graphdef, causal.method)
        served = {"prediction": seed_slice(self.parts.params, seed_index),
                  **(seed_slice(self.extra, seed_index) if self.extra else {}),
                  "hparams": {name: jnp.float32(getattr(causal, name))
                              for name in ("macr_c", "pda_inference_gamma")}}
        return lambda users: program(served, self.parts.constants, users)

    def sharded_score_fn(self, seed_index: int, mesh: Mesh) -> tuple[Callable, int]:
        """`(users [b] -> scores [b, n_padded], n_padded)`: `score_all_fn` over the model's
        row tables split by rows over `mesh`'s `model` axis (padded to a multiple of it), the
        scores' item axis split the same way, so no device holds the catalogue whole.

        Raises:
            RunError: a model that declares no row tables, a sequential run, a causal
                method with arrays of its own, or a model with feature tables.
        """
        tables = row_tables(self.parts.graphdef)
        name = self.config.model.name
        if self.scorer is not None:
            raise RunError(f"--mesh: a run of {name} serves from one device (its scores come "
                           "from the history encoder, not from user rows)")
        if not tables or self.extra:
            what = (f"model.name = {name!r}" if not tables
                    else f"causal.method = {self.config.causal.method!r}")
            raise RunError(f"--mesh: {what} serves from one device (a sharded catalogue needs a "
                           "model with row tables and no arrays of a causal method's own)")
        counts = {"users": len(self.user_ids), "items": len(self.item_ids)}
        # Feature tables the model reads (MLP, NeuMF with features) are constants with a row
        # per user or item, which the padded tables would no longer match.
        if any(getattr(leaf, "ndim", 0) and leaf.shape[0] in counts.values()
               for leaf in jax.tree.leaves(self.parts.constants)):
            raise RunError("--mesh: a model with feature tables serves from one device")
        params = pad_rows(seed_slice(self.parts.params, seed_index), tables, counts,
                          mesh.shape["model"])
        n_padded = padded_count(counts["items"], mesh.shape["model"])
        # A model that scores `arange(n_items)` (MLP, NeuMF) scores the padded catalogue, so
        # every part of its score has the padded width (the padding is masked when served).
        model = nnx.merge(self.parts.graphdef, params, self.parts.constants)
        for _, module in nnx.iter_modules(model):  # NeuMF's inner MLP tower too
            if isinstance(getattr(module, "n_items", None), int):
                module.n_items = n_padded
        graphdef = split_model(model).graphdef
        shardings = state_shardings(params, mesh, tables)
        params = jax.device_put(params, shardings)
        causal = self.config.causal
        hparams = {name: jnp.float32(getattr(causal, name))
                   for name in ("macr_c", "pda_inference_gamma")}
        method = causal.method
        everywhere = replicated(mesh)
        served = _served_scores(graphdef, method)

        def score(params, constants, users):
            return served({"prediction": params, "hparams": hparams}, constants, users)

        program = jax.jit(score, in_shardings=(shardings, everywhere, everywhere),
                          out_shardings=NamedSharding(mesh, P(None, "model")))
        constants = jax.device_put(self.parts.constants, everywhere)
        return (lambda users: program(params, constants, jax.device_put(users, everywhere)),
                n_padded)

    @property
    def user_ids(self) -> np.ndarray:
        return self.data["user_ids"]

    @property
    def item_ids(self) -> np.ndarray:
        return self.data["item_ids"]


def load_ordinary_run(run: Path, config: Config, data: dict[str, np.ndarray]) -> LoadedRun:
    """An ordinary run's models rebuilt from its config and `data.npz`, with each seed's best
    parameters (and a causal method's own arrays) read from `model/`."""
    seeds = seed_list(config)
    inputs = {
        "n_users": len(data["user_ids"]), "n_items": len(data["item_ids"]),
        "user_features": data.get("user_features"), "item_features": data.get("item_features"),
        "item_counts": data["item_counts"].astype(np.float32),
        "global_bias": float(data["global_bias"]),
        "train_edges": (data["train_user"], data["train_item"]),
    }
    parts = init_params(config.model, keys=seed_keys(seeds), **inputs)
    like: dict[str, Any] = {"params": parts.params}
    extra = saved_arrays(config.causal.method, inputs["n_users"], inputs["n_items"])
    if extra:
        like["causal"] = {name: jnp.zeros((len(seeds), *value.shape), value.dtype)
                          for name, value in extra.items()}
    arrays, _ = checkpoints.restore_checkpoint(run / "model", like)
    return LoadedRun(config=config, parts=parts._replace(params=arrays["params"]), data=data,
                     extra=arrays.get("causal", {}))


def evaluate_loaded_run(run: LoadedRun, split_name: str = "test") -> dict[str, Any]:
    """Re-evaluates an ordinary run's best parameters on `split_name`, re-reading the data its
    config names (see `runs.load.evaluate_run`)."""
    config = run.config
    if config.train.cv_folds:
        raise RunError(
            f"this is a cross-validation run ({config.train.cv_folds} folds): its "
            "per-fold results are in metrics.json under 'cv'; evaluate re-scores single splits"
        )
    dataset, truth = load_dataset(config.data, config.sim, planted=config.planted)
    check_unchanged(run.data, dataset, config.data.path or config.data.format)
    split = make_split(dataset, config.data, seed=config.run.seed)
    parts = split.parts()
    if split_name not in parts:
        raise RunError(f"split {split_name!r} not in this run's data (have {', '.join(parts)})")
    seen = split.seen_before_test() if split_name == "test" else split.train
    propensity = evaluation_propensity(config, dataset)
    per_seed = []
    for index, seed in enumerate(seed_list(config)):
        score_users_fn = run.score_all_fn(index)  # a compiled program, cached
        if split_name == "test":
            entry = test_results(config, seen, parts["test"], score_users_fn, propensity, truth)
        else:
            entry = {split_name: evaluate_split(config.eval, train=seen, test=parts[split_name],
                                                score_users_fn=score_users_fn,
                                                propensity=propensity,
                                                validation=split_name == "valid")}
        per_seed.append({"seed": seed, **entry})
    out: dict[str, Any] = {}
    for part in (split_name, "test_literature", "test_full", "test_truth"):
        if part in per_seed[0]:
            out.update(aggregate(per_seed, part))
    return {**out, "per_seed": per_seed}
