"""Runs of the sequential models (SASRec, BERT4Rec, HSTU): `causalrec train` with `model.name`
one of `SEQUENCE_MODELS`.

Protocol: `data.split = "leave_one_out"` (per user by time: last item -> test, second last ->
validation). Training windows of `model.max_len` items from each user's training sequence, with
every position trained at once under the causal mask (`data.sequences.training_windows`);
BERT4Rec trains on masked items of raw windows. Evaluation ranks the whole catalogue from the
user's history (training items for validation, training and validation items for the test), with
the history masked (`test`) and, for comparison with RecBole's sequential protocol, unmasked
(`test_unmasked`); with `eval.sampled_negatives` set, also among that many sampled negatives
(`test_sampled`, names prefixed `sampled_`: a different, far more lenient protocol). With one
target per user and no `itemcoverage`, the numbers come from the target's rank alone (items in
chunks of `target_rank_item_chunk()`, `eval.catalogue`), never forming `[users, n_items]`
scores or sorting a row, each user encoded once for the masked and unmasked numbers, by length
bucket. Early stopping on `train.early_stopping_metric` over validation.

Training goes through the one core of every run: the pure step `train.step.make_train_step`
(step folded into the key, NaN/Inf guard) and the host loop `train.loop.fit` (early stopping,
orbax checkpoints every `train.checkpoint_every` epochs, `--resume`, progress bar). The
optimiser is `train.step.make_optimizer`, so `train.optimizer`, `weight_decay`, `lr_schedule`
and `warmup_steps` mean what they mean for every model; the sampled losses honour
`train.n_negatives` and `train.exclude_seen_negatives` (`sampled_softmax` also
`train.negative_sampler` and `train.logq_correction`, `gbce` `train.gbce_t`; each refused
where the loss would ignore it). Windows are grouped by length into
`model.length_buckets`; an epoch runs the batches of all buckets in one shuffled order, each
batch a compiled step of its bucket's width (`make_bucketed_epoch`: one compilation per
width). Seeds train one after another, each through its own `fit` (checkpoints under
`checkpoints/seed<N>/`): on CPU a step of 128 windows of 50 already keeps the cores busy, so
vmapping seeds gains no throughput, and a vmapped population would train a seed that has
stopped until the last one stops. With `parallel.mesh = [data, model]` each step runs over
that mesh: the token table split by rows over `model`, batches over `data` (`ShardedTokens`).

The run folder is an ordinary run's: `config.toml`, `metrics.json` (`seeds` = `run.seed + i`,
every `per_seed` entry `{seed, best_epoch, valid, test, test_unmasked, test_sampled,
seconds_to_best}`), `log.jsonl` (one line per epoch and seed with every run kind's keys,
`runs.folder.LOG_KEYS` and `valid`, which also holds the unmasked validation, `unmasked_*`),
`checkpoints/`, `plots/`,
`model/` (every seed's best parameters stacked `[n_seeds, ...]`; the model is rebuilt from
`config.toml`) and `data.npz`, the id maps and splits (`runs.folder.save_data`) plus the test
pairs and `next_history` `[n_users, max_len]`: the tokens of each user's last `max_len` items
of train, validation and test in time order, the input from which `recommend` scores the item
after everything the user has seen. `model/` and `data.npz` are written as before this core,
so older run folders still load.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from causalrec_jax import streams
from causalrec_jax.config import (
    Config,
    ModelConfig,
    TrainConfig,
    data_keys_used,
    privacy_keys_used,
    refuse_unused,
)
from causalrec_jax.data.dataset import Dataset, Split, concatenate
from causalrec_jax.data.fingerprint import check_unchanged
from causalrec_jax.data.loader import load_dataset
from causalrec_jax.data.sequences import (
    PAD,
    history_matrix,
    item_windows,
    training_windows,
    user_sequences,
    window_buckets,
)
from causalrec_jax.data.split import make_split
from causalrec_jax.errors import ConfigError, RunError
from causalrec_jax.eval.catalogue import chunked_target_rank, metrics_from_ranks
from causalrec_jax.eval.metrics import RANKING_METRICS, ranking_metrics
from causalrec_jax.eval.ranking import LIST_NAMES, evaluate_full_ranking, is_positive
from causalrec_jax.eval.summary import aggregate
from causalrec_jax.models.base import ModelParts, row_tables
from causalrec_jax.models.bert4rec import BERT4Rec, append_mask_token
from causalrec_jax.models.hstu import HSTU
from causalrec_jax.models.sasrec import SASRec
from causalrec_jax.parallel import (
    batch_sharding,
    check_run_mesh,
    checkpoint_view,
    from_first,
    is_multiprocess,
    local_copy,
    make_mesh,
    pad_rows,
    replicated,
    state_shardings,
    to_global,
    whole_tables,
)
from causalrec_jax.privacy import dpsgd, federated
from causalrec_jax.tasks.ordinary import (
    LoadedRun,
    privacy_report,
    private_spec,
    seed_keys,
    seed_list,
)
from causalrec_jax.train import checkpoint as checkpoints
from causalrec_jax.train.loop import TrainingDivergedError, fit, over_seeds, seed_slice
from causalrec_jax.train.objectives import seen_items_data
from causalrec_jax.train.sequence import LOSSES, make_sequence_loss, make_sequence_objective
from causalrec_jax.train.step import (
    TrainState,
    epoch_loss,
    epoch_order,
    gather_batches,
    host_sorts,
    init_state,
    make_optimizer,
    make_scan_batches,
    make_train_step,
    with_average,
)

SEQUENCE_MODELS = ("sasrec", "bert4rec", "hstu")

# A private run's units are taken in chunks of about this many windows (`dpsgd.with_chunk`):
# each unit in a chunk holds its windows' activations and a dense gradient of the token table.
PRIVATE_CHUNK_WINDOWS = 256

# `[model]` keys only HSTU reads: refused for the other sequential models.
HSTU_KEYS = ("attention_dim", "linear_dim", "temperature")
# `[model]` keys only the Transformer models (SASRec, BERT4Rec) read: refused for HSTU.
TRANSFORMER_KEYS = ("block", "ffn_multiplier", "positions")

# Sequential losses that sample negatives (train.n_negatives, train.exclude_seen_negatives).
SAMPLED_LOSSES = ("bce_one_negative", "sampled_softmax", "gbce")

# Catalogues with more items than this are ranked in chunks of this many items
# (`eval.catalogue.chunked_target_rank`) instead of scoring `[eval.chunk_size, n_items]` at once.
CATALOGUE_CHUNK_ITEMS = 1 << 16
# Items per chunk when only the target's rank is counted (`evaluate_chunked` by default) on a
# CPU: `[eval.chunk_size, 4096]` scores stay in cache. A Sports-sized validation (35,598 users,
# 18,357 items) took 2.1 s so and 5.3 s with the catalogue in one chunk on the 2-core CPU
# (`bench/results/seq_eval_sports.json`); at Toys' 11,924 items the two are level. Other
# backends take `CATALOGUE_CHUNK_ITEMS` (`target_rank_item_chunk`).
TARGET_RANK_ITEM_CHUNK = 1 << 12


def target_rank_item_chunk() -> int:
    """The default item chunk of `evaluate_chunked` on this backend (the numbers do not
    depend on it)."""
    return TARGET_RANK_ITEM_CHUNK if jax.default_backend() == "cpu" else CATALOGUE_CHUNK_ITEMS


def check_sequential_config(config: Config) -> str:
    # A `mar_slice` key under this run's split would do nothing: refused, as ordinary runs do.
    refuse_unused(dataclasses.replace(Config(), data=config.data),
                  {"data": data_keys_used(config.data)}, "a sequential run")
    if config.data.split != "leave_one_out":
        raise ConfigError(
            f"key data.split: got {config.data.split!r}, expected 'leave_one_out' for the "
            f"sequential model {config.model.name!r}")
    loss = config.train.loss
    if config.model.name == "bert4rec":
        loss = "masked_item" if loss in ("mse", "masked_item") else loss
        if loss != "masked_item":
            raise ConfigError(f"key train.loss: got {config.train.loss!r}, expected "
                              "'masked_item' for bert4rec")
    elif loss not in LOSSES or loss == "masked_item":
        raise ConfigError(f"key train.loss: got {loss!r}, expected one of full_softmax, "
                          f"bce_one_negative, sampled_softmax, gbce for {config.model.name}")
    _check_sampler_keys(config, loss)
    _check_model_keys(config)
    check_exposure_config(config)
    if config.train.cv_folds:
        raise ConfigError(f"key train.cv_folds: {config.train.cv_folds} folds, but sequential "
                          "models train on the leave-one-out split only; set it to 0")
    # the token table split over `model`, batches over `data`; a job of several processes
    # (`--distributed`) needs a mesh over all their devices
    check_run_mesh(config.parallel.mesh)
    name = config.model.name
    check_private_sequence_config(config, loss)
    if config.train.halving_rung:
        raise ConfigError(f"key train.halving_rung: {config.train.halving_rung}, but a run of "
                          f"{name} trains its seeds one after another, each to its own early "
                          "stop (successive halving ranks a population); remove it")
    if config.train.data_placement == "host":
        raise ConfigError("key train.data_placement: 'host' is not available for sequential "
                          "models (their windows live on the device); use 'auto' or 'device'")
    return loss


def check_private_sequence_config(config: Config, loss: str) -> None:
    """The `[privacy]` checks of a sequential run: DP-SGD or FedAvg at user level (a unit is
    a user's windows; one window is not one interaction, so the example level is refused); a
    key it does not read, or a setting it cannot honour, is refused in one line naming the
    key."""
    privacy = config.privacy
    if not privacy.level:
        refuse_unused(dataclasses.replace(Config(), privacy=privacy), {"privacy": ("level",)},
                      "a sequential run without privacy.level")
        return
    name = config.model.name
    if privacy.level != "user":
        # windows overlap and shift with every interaction before them, so one window is
        # not one interaction: a window-level guarantee would read as MF's row-level one
        raise ConfigError(f"key privacy.level: {privacy.level!r} for {name}; a sequence "
                          "model's windows overlap, so one window is not one interaction: "
                          "use 'user' (a user's whole history)")
    default = Config()
    for section, key in (("train", "position_weighting"), ("model", "length_buckets")):
        value = getattr(getattr(config, section), key)
        if value != getattr(getattr(default, section), key):
            raise ConfigError(f"key {section}.{key}: set to {value!r}, but a private run of "
                              f"{name} sums each user's positions over whole windows (every "
                              "position weighs alike, no length buckets); remove it")
    if config.data.format == "simlog":
        raise ConfigError(f"key privacy.level: {privacy.level!r} on a slate log (data.format "
                          "= 'simlog'); private training of a sequential model reads click "
                          "sequences (remove privacy.level or use the sequences' format)")
    if config.parallel.mesh:
        raise ConfigError(f"key parallel.mesh: {list(config.parallel.mesh)} with privacy.level "
                          f"= {privacy.level!r}; a private sequential run trains on one device")
    if config.train.negative_sampler != "uniform":
        raise ConfigError(f"key train.negative_sampler: {config.train.negative_sampler!r} with "
                          f"privacy.level = {privacy.level!r}; the training popularity it "
                          "draws by is counted without noise; use 'uniform'")
    # no user rows (every parameter is noised), no item-row selection: DP-FEST and AdaFEST
    # select rows of an item table a unit reads sparsely, a sequence unit's gradient is dense
    unread = {"user_rows", "item_rows", "selection_noise", "adaptive_threshold",
              "adaptive_noise", "contribution_clip", "silos"}
    used = tuple(key for key in privacy_keys_used(privacy) if key not in unread)
    refuse_unused(dataclasses.replace(Config(), privacy=privacy), {"privacy": used},
                  f"a private run of {name}")


def _check_sampler_keys(config: Config, loss: str) -> None:
    """Refuses a sampler key the loss would ignore, and popularity negatives redrawn per user."""
    train = config.train
    if train.negative_sampler != "uniform":
        if loss != "sampled_softmax":
            raise ConfigError(f"key train.negative_sampler: {train.negative_sampler!r} draws "
                              f"sampled_softmax's negatives, but train.loss is {loss!r}; "
                              "remove it")
        if train.exclude_seen_negatives:
            raise ConfigError("key train.exclude_seen_negatives: true redraws negatives per "
                              "user uniformly, so train.negative_sampler = 'popularity' "
                              "would not be the proposal; set it to false")
    if train.logq_correction and train.negative_sampler == "uniform":
        raise ConfigError("key train.logq_correction: true, but the uniform proposal shifts "
                          "every logit alike (nothing to correct); set train.negative_sampler "
                          "= 'popularity' or remove it")
    if train.negatives_per_row and loss not in ("sampled_softmax", "gbce"):
        raise ConfigError(f"key train.negatives_per_row: true, but only train.loss = "
                          f"'sampled_softmax' or 'gbce' draws shared negatives (train.loss is "
                          f"{loss!r}); remove it")
    if train.negatives_per_row and train.exclude_seen_negatives:
        raise ConfigError("key train.negatives_per_row: true, but train.exclude_seen_negatives "
                          "= true already draws negatives per row; set exclude_seen_negatives "
                          "to false or remove negatives_per_row")
    if train.position_weighting != "per_batch" and loss == "masked_item":
        raise ConfigError(f"key train.position_weighting: {train.position_weighting!r} weighs "
                          "next-item targets, but train.loss is 'masked_item' (its masked "
                          "positions are drawn per step); remove it")
    if train.gbce_t != TrainConfig().gbce_t and loss != "gbce":
        raise ConfigError(f"key train.gbce_t: set to {train.gbce_t}, but only train.loss = "
                          f"'gbce' reads it (train.loss is {loss!r}); remove it")


def _check_model_keys(config: Config) -> None:
    """Refuses HSTU's keys for another model and the Transformer blocks' keys for HSTU, and
    sizes that leave a head no width."""
    model = config.model
    default = ModelConfig()
    foreign = HSTU_KEYS if model.name != "hstu" else TRANSFORMER_KEYS
    for name in foreign:
        if getattr(model, name) != getattr(default, name):
            readers = "'hstu'" if model.name != "hstu" else "'sasrec' or 'bert4rec'"
            raise ConfigError(f"key model.{name}: set to {getattr(model, name)!r}, but only "
                              f"model.name = {readers} reads it; remove it")
    if model.name != "hstu":
        if model.embedding_dim % model.n_heads:
            raise ConfigError(f"key model.n_heads: model.embedding_dim {model.embedding_dim} "
                              f"is not divisible by model.n_heads {model.n_heads} (each head "
                              "takes embedding_dim // n_heads)")
        return
    for name in ("attention_dim", "linear_dim"):
        if not getattr(model, name) and model.embedding_dim % model.n_heads:
            raise ConfigError(
                f"key model.{name}: 0 (= embedding_dim // n_heads), but embedding_dim "
                f"{model.embedding_dim} is not divisible by n_heads {model.n_heads}; set "
                f"model.{name} to the width per head")


def _model(config: Config, n_items: int, key: jax.Array):
    if config.model.name == "hstu":
        model = config.model
        return HSTU(
            n_items, model.max_len, key=key, hidden_dim=model.embedding_dim,
            n_layers=model.n_layers, n_heads=model.n_heads,
            attention_dim=model.attention_dim or None, linear_dim=model.linear_dim or None,
            dropout_rate=model.dropout, temperature=model.temperature,
        )
    model_class = SASRec if config.model.name == "sasrec" else BERT4Rec
    return model_class(
        n_items, config.model.max_len, key=key, hidden_dim=config.model.embedding_dim,
        n_layers=config.model.n_layers, n_heads=config.model.n_heads,
        ffn_dim=config.model.ffn_multiplier * config.model.embedding_dim,
        dropout_rate=config.model.dropout, block=config.model.block,
        positions=config.model.positions,
    )


@functools.lru_cache(maxsize=16)
def make_score_next(graphdef: nnx.GraphDef):
    """`score_next(params, sequences [b, max_len]) -> scores [b, n_items]`, jitted: the one
    scorer of training, evaluation and recommendation (so they give identical numbers).
    Cached by model structure: every seed and every run of one structure share it."""

    @jax.jit
    def score_next(params, sequences):
        return nnx.merge(graphdef, params).score_next(sequences)

    return score_next


@functools.lru_cache(maxsize=16)
def make_query_next(graphdef: nnx.GraphDef):
    """`query_next(params, sequences [b, max_len]) -> (queries [b, d], item_table
    [n_items, d])`, jitted: `score_next` is `queries @ item_table.T`, split so that a huge
    catalogue can be ranked in item chunks (`eval.catalogue`)."""

    @jax.jit
    def query_next(params, sequences):
        model = nnx.merge(graphdef, params)
        if isinstance(model, BERT4Rec):
            sequences = append_mask_token(sequences, model.mask_token)
        return model(sequences)[:, -1], model.item_embeddings()

    return query_next


@dataclasses.dataclass(frozen=True)
class Scorer:
    """The next-item scoring of one set of parameters (one seed).

    Attributes:
        score: `sequences [b, max_len] -> [b, n_items]`.
        query: `sequences [b, max_len] -> (queries [b, d], item_table [n_items, d])`.
    """

    score: Any
    query: Any


def make_scorer(graphdef: nnx.GraphDef, params: Any) -> Scorer:
    """The `Scorer` of `params` (cached jitted programs of the model structure)."""
    score_next, query_next = make_score_next(graphdef), make_query_next(graphdef)
    return Scorer(score=lambda sequences: score_next(params, sequences),
                  query=lambda sequences: query_next(params, sequences))


def _padded_items(dataset: Dataset, users: np.ndarray) -> np.ndarray:
    """`[len(users), m]` int32: each user's items in `dataset`, padded with -1."""
    row_of = np.full(dataset.n_users, -1)
    row_of[users] = np.arange(len(users))
    rows = row_of[dataset.user]
    keep = rows >= 0
    rows, items = rows[keep], dataset.item[keep]
    counts = np.bincount(rows, minlength=len(users))
    out = np.full((len(users), max(int(counts.max(initial=0)), 1)), -1, np.int32)
    order = np.argsort(rows, kind="stable")
    rows, items = rows[order], items[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out[rows, np.arange(len(rows)) - starts[rows]] = items
    return out


def user_queries(query, history: np.ndarray, users: np.ndarray, *, chunk_size: int,
                 buckets: tuple[int, ...] = ()) -> tuple[np.ndarray, jax.Array]:
    """Each user's query vector (`[len(users), d]`, on the host) and the item table: users
    grouped by history length into the `window_buckets` widths, each row cut to its last
    `width` columns with at least one column of padding to spare (rows are left-padded, the
    models' outputs do not depend on padding, and BERT4Rec's query shifts the row left to
    append its mask token),
    `chunk_size` rows a call (a short last chunk padded with repeats): one compilation per
    width, and short histories never pay for `max_len` positions.

    Args:
        query: `sequences [b, width] -> (queries [b, d], item_table [n_items, d])`.
        history: `[n_users, max_len]` left-padded input tokens.
        users: the rows of `history` to encode.
        chunk_size: rows per call.
        buckets: widths (`model.length_buckets`); () encodes every row at `max_len`.
    """
    rows = history[users]
    max_len = rows.shape[1]
    widths = window_buckets(max_len, buckets)
    # one spare column: BERT4Rec's query appends its mask token, dropping the first column
    needed = np.minimum((rows != PAD).sum(axis=1) + 1, max_len)
    bucket_of = np.searchsorted(np.asarray(widths), needed)
    queries, table = None, None
    for index, width in enumerate(widths):
        members = np.flatnonzero(bucket_of == index)
        for start in range(0, len(members), chunk_size):
            part = members[start:start + chunk_size]
            tokens = rows[np.resize(part, chunk_size)][:, max_len - width:]
            chunk, table = query(jnp.asarray(tokens))
            chunk = np.asarray(chunk)
            if queries is None:
                queries = np.zeros((len(users), chunk.shape[1]), chunk.dtype)
            queries[part] = chunk[:len(part)]
    if queries is None:  # no user: the table alone
        _, table = query(jnp.asarray(history[:1]))
        queries = np.zeros((0, table.shape[1]), np.float32)
    return queries, table


def evaluate_chunked(
    query, history: np.ndarray, seen: Dataset, target: Dataset, *, ks, metrics, chunk_size: int,
    item_chunk: int, masks: tuple[bool, ...] = (True,), buckets: tuple[int, ...] = (),
) -> list[dict[str, float]]:
    """Full-ranking metrics of one target item per user, the catalogue scored `item_chunk`
    items at a time (`eval.catalogue.chunked_target_rank`, pessimistic ties): the same numbers
    as `evaluate_full_ranking` on the dense scores, in `O(chunk_size * item_chunk)` memory,
    without sorting a row. The users are encoded once (`user_queries`, by length bucket) for
    every entry of `masks`.

    Args:
        query: `sequences [b, width] -> (queries [b, d], item_table [n_items, d])`.
        history: `[n_users, max_len]` input tokens of every user.
        seen: the interactions masked out of the ranking when a mask is True.
        target: one row per evaluated user (leave-one-out), its item the positive.
        ks: cut-offs.
        metrics: names among `hit, ndcg, mrr, recall, precision, map` (others ignored, as
            pointwise ones are by `evaluate_full_ranking`; the list metrics, `itemcoverage`
            and the like, are refused).
        chunk_size: users per chunk (`eval.chunk_size`).
        item_chunk: items per chunk.
        masks: for each result, whether each user's `seen` items are excluded from the ranking.
        buckets: history widths of the encoding (`model.length_buckets`).

    Returns:
        `[{"ndcg@10": mean, ...}]`, one per entry of `masks`, over the users whose target is
        rankable (with the mask: not among their `seen` items).

    Raises:
        ConfigError: a list metric (`itemcoverage`, ...) asked for, or a user with more than
            one target row.
    """
    lists = [name for name in metrics if name in LIST_NAMES]
    if lists:
        raise ConfigError(f"key eval.metrics: {lists[0]} is not computed on catalogues ranked "
                          f"in item chunks (more than {CATALOGUE_CHUNK_ITEMS} items)")
    names = [name for name in metrics if name in RANKING_METRICS]
    if target.rating is not None:  # the dense path's positives (threshold None: rating > 0)
        target = target.subset(np.flatnonzero(is_positive(target.rating, None)))
    users, targets = target.user.astype(np.int64), target.item.astype(np.int32)
    if len(np.unique(users)) != len(users):
        raise ConfigError("key data.split: chunked ranking expects one target item per user "
                          "(leave_one_out)")
    queries, table = user_queries(query, history, users, chunk_size=chunk_size,
                                  buckets=buckets)
    exclude_all = _padded_items(seen, users) if any(masks) else None
    results = []
    for mask in masks:
        rankable = np.arange(len(users))
        exclude = None
        if mask:
            # a target the user already has is not a rankable positive (as in the dense path)
            rankable = np.flatnonzero(~(exclude_all == targets[:, None]).any(axis=1))
            exclude = exclude_all[rankable]
        size = min(chunk_size, max(len(rankable), 1))
        values: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(rankable), size):
            rows = np.resize(np.arange(start, min(start + size, len(rankable))), size)
            n_real = min(size, len(rankable) - start)
            # the catalogue's scores at full float32 precision, as the target's own (no TF32
            # matmul on a GPU: ranks equal the dense ranking's)
            ranks = chunked_target_rank(
                jnp.asarray(queries[rankable[rows]]), table,
                jnp.asarray(targets[rankable[rows]]), chunk_size=item_chunk,
                exclude=None if exclude is None else jnp.asarray(exclude[rows]),
                precision=jax.lax.Precision.HIGHEST)
            for name, value in metrics_from_ranks(ranks, ks, names).items():
                values.setdefault(name, []).append(np.asarray(value)[:n_real])
        # no rankable user: NaN, as the dense path reports
        results.append({name: (float(np.mean(np.concatenate(values[name]), dtype=np.float64))
                               if name in values else float("nan"))
                        for name in (f"{m}@{k}" for m in names for k in ks)})
    return results


def _evaluate(scorer: Scorer, history: np.ndarray, seen, target, config: Config,
              masks: tuple[bool, ...], item_chunk: int | None = None) -> list[dict[str, float]]:
    """Validation or test numbers, one dict per entry of `masks` (exclude the `seen` items or
    not). One target per user (leave-one-out) and no `itemcoverage`: the target's rank alone,
    the catalogue scored `item_chunk` items at a time (default `target_rank_item_chunk()`), the
    users encoded once by length bucket (`evaluate_chunked`: the numbers of the dense
    ranking). Otherwise the dense ranking of `evaluate_full_ranking`."""
    one_target = len(np.unique(target.user)) == len(target.user)
    # a catalogue too large for dense scores goes the chunked way whatever is asked (which
    # refuses itemcoverage and several targets a user)
    lists = any(name in LIST_NAMES for name in config.eval.metrics)
    if ((not lists and one_target) or item_chunk is not None
            or seen.n_items > CATALOGUE_CHUNK_ITEMS):
        return evaluate_chunked(
            scorer.query, history, seen, target, ks=config.eval.ks, metrics=config.eval.metrics,
            chunk_size=config.eval.chunk_size,
            item_chunk=min(item_chunk or target_rank_item_chunk(), seen.n_items), masks=masks,
            buckets=config.model.length_buckets)
    history = jnp.asarray(history)
    return [_numbers(evaluate_full_ranking(
        lambda users: scorer.score(history[users]), seen, target, ks=config.eval.ks,
        metrics=config.eval.metrics, chunk_size=config.eval.chunk_size, mask_train=mask,
        positive_threshold=None,
    )) for mask in masks]


def sampled_candidates(
    seen: np.ndarray, n_negatives: int, weights: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """`[n_users, n_items]` bool: `n_negatives` items per row drawn without replacement with
    probability proportional to `weights` among the items a row has not `seen` (Gumbel top-k).

    Raises:
        ConfigError: a row has fewer than `n_negatives` unseen items.
    """
    available = ~seen
    if (available.sum(axis=1) < n_negatives).any():
        raise ConfigError(f"key eval.sampled_negatives: {n_negatives} negatives, but a user has "
                          f"only {int(available.sum(axis=1).min())} unseen items")
    keys = np.log(weights)[None, :] + rng.gumbel(size=seen.shape)
    keys = np.where(available, keys, -np.inf)
    chosen = np.argpartition(-keys, n_negatives - 1, axis=1)[:, :n_negatives]
    mask = np.zeros(seen.shape, bool)
    np.put_along_axis(mask, chosen, True, axis=1)
    return mask


def _score_in_chunks(score, sequences: np.ndarray, chunk_size: int) -> np.ndarray:
    """`score(sequences)` for `chunk_size` rows at a time (the last chunk padded with repeats,
    so one compiled shape): scoring every user at once would hold the encoder's activations
    for all of them."""
    n = len(sequences)
    chunk_size = min(chunk_size, n)
    out = []
    for start in range(0, n, chunk_size):
        rows = np.resize(np.arange(start, min(start + chunk_size, n)), chunk_size)
        out.append(np.asarray(score(jnp.asarray(sequences[rows])))[:min(chunk_size, n - start)])
    return np.concatenate(out)


def _sampled(score, history, seen, test, config: Config, seed: int) -> dict[str, float]:
    """Metrics of each test item ranked among `eval.sampled_negatives` sampled negatives,
    drawn from `numpy.random.default_rng(seed)` (`seed`: the seed's value, run.seed + i)."""
    n_items = seen.n_items
    users, targets = test.user, test.item
    had = np.zeros((len(users), n_items), bool)
    row_of = {int(user): row for row, user in enumerate(users)}
    rows = np.array([row_of.get(int(user), -1) for user in seen.user])
    keep = rows >= 0
    had[rows[keep], seen.item[keep]] = True
    had[np.arange(len(users)), targets] = True
    weights = (np.bincount(seen.item, minlength=n_items) + 1.0
               if config.eval.sampled_by == "popularity" else np.ones(n_items))
    rng = np.random.default_rng(seed)
    candidates = sampled_candidates(had, config.eval.sampled_negatives, weights, rng)
    candidates[np.arange(len(users)), targets] = True
    labels = np.zeros_like(candidates, np.float32)
    labels[np.arange(len(users)), targets] = 1.0
    scores = _score_in_chunks(score, history[users], config.eval.chunk_size)
    names = [name for name in config.eval.metrics if name in RANKING_METRICS]
    result = ranking_metrics(jnp.asarray(scores), jnp.asarray(labels), ks=config.eval.ks,
                             names=names, where=jnp.asarray(candidates))
    return {f"sampled_{name}": float(np.mean(np.asarray(value)))
            for name, value in result.items()}


def _numbers(result: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in result.items()
            if "@" in name and isinstance(value, int | float)}


def valid_metrics(scorer: Scorer, config: Config, split: Split, *, mask: bool = True,
                  item_chunk: int | None = None) -> dict[str, float]:
    """Validation numbers of `scorer`: the validation item ranked from the training history,
    training items masked (or not, `mask=False`: RecBole's protocol)."""
    return _valid(scorer, config, split, (mask,), item_chunk)[0]


def _valid(scorer: Scorer, config: Config, split: Split, masks: tuple[bool, ...],
           item_chunk: int | None = None) -> list[dict[str, float]]:
    history = history_matrix(user_sequences(split.train), config.model.max_len)
    return _evaluate(scorer, history, split.train, split.valid, config, masks, item_chunk)


def test_metrics(scorer: Scorer, config: Config, split: Split, seed: int, *,
                 item_chunk: int | None = None) -> dict[str, dict]:
    """`{"test", "test_unmasked", "test_sampled"}` numbers of `scorer` (as in `valid_metrics`)
    from the training and validation history; `seed` (run.seed + i) draws sampled negatives."""
    seen = concatenate([split.train, split.valid])
    history = history_matrix(user_sequences(seen), config.model.max_len)
    masked, unmasked = _evaluate(scorer, history, seen, split.test, config, (True, False),
                                 item_chunk)
    return {
        "test": masked,
        "test_unmasked": unmasked,
        "test_sampled": (_sampled(scorer.score, history, seen, split.test, config, seed)
                         if config.eval.sampled_negatives else {}),
    }


# ----------------------------------------------------------------------------- training


def training_rows(config: Config, train: Dataset, loss_name: str, *,
                  with_users: bool = False) -> dict[str, np.ndarray]:
    """The rows an epoch shuffles: `[n_windows, max_len]` token arrays (`inputs`, `targets`
    for next-item losses, `sequences` for `masked_item`; the first one's non-padding tokens
    give a row's length) and, for the sampled losses with `train.exclude_seen_negatives` (or
    `with_users`: a private run's units), `users [n_windows]` (the window's user)."""
    sequences = user_sequences(train)
    stride = config.model.window_stride or None
    if loss_name == "masked_item":
        windows, users = item_windows(sequences, config.model.max_len, stride=stride)
        rows = {"sequences": windows}
    else:
        windows = training_windows(sequences, config.model.max_len, stride=stride,
                                   targets=config.model.window_targets)
        rows, users = {"inputs": windows.inputs, "targets": windows.targets}, windows.users
    if with_users or (loss_name in SAMPLED_LOSSES and config.train.exclude_seen_negatives):
        rows["users"] = users.astype(np.int32)
    return rows


def bucket_rows(rows: dict[str, np.ndarray], buckets) -> tuple[dict[str, np.ndarray], ...]:
    """`rows` grouped by the shortest of `data.sequences.window_buckets` their length fits,
    each group's token arrays cut to its last `width` columns (rows are left-padded, so only
    padding is dropped); empty groups are left out. 1-D arrays (`users`) are kept whole."""
    first = next(iter(rows.values()))
    n_rows, max_len = first.shape
    widths = window_buckets(max_len, buckets)
    lengths = (first != PAD).sum(axis=1)
    bucket_of = np.searchsorted(np.asarray(widths), lengths)
    out = []
    for index, width in enumerate(widths):
        members = np.flatnonzero(bucket_of == index)
        if len(members):
            out.append({name: values[members][:, max_len - width:] if values.ndim == 2
                        else values[members] for name, values in rows.items()})
    return tuple(out)


def positions_per_batch(buckets: tuple[dict[str, np.ndarray], ...], batch_size: int) -> float:
    """The mean number of trained positions (non-padding `targets`) in a batch of an epoch
    over `buckets` (each bucket's last batch padded): `train.position_weighting = "uniform"`
    divides each batch's summed loss by it."""
    n_batches = sum(-(-len(bucket["targets"]) // batch_size) for bucket in buckets)
    return sum(np.count_nonzero(bucket["targets"]) for bucket in buckets) / n_batches


def make_bucketed_epoch(
    train_step, *, bucket_sizes: tuple[int, ...], batch_size: int, mesh: Any = None,
    tables: tuple[tuple[str, str], ...] = (),
):
    """`run_epoch(states, data, keys, epoch) -> (states, metrics)` for `train.loop.fit` over
    length buckets, one seed (`states` and `keys` stacked over a seed axis of length 1).

    `data` is `{"buckets": (bucket rows on the device, ...), "shared": {shared_ arrays}}`.
    Each bucket's rows are shuffled by `index(derive(key, Epoch.BUCKET_ORDER), bucket)` and the
    epoch (`step.epoch_order`, padding masked), and the batches of all buckets run in one order
    drawn from `index(derive(key, Epoch.BATCH_ORDER), epoch)` (`causalrec_jax.streams`): a
    resumed run replays the same batches. A batch is a compiled `lax.scan` of one step
    (`step.make_scan_batches`, the NaN/Inf guard: after a bad batch the state no longer changes
    and `first_bad_batch` names it), gathered on the device; it compiles once per bucket width.

    With `mesh` (a `('data', 'model')` mesh), the step is compiled over it: the states'
    row tables (`tables`, `(attribute, kind)` pairs) split by rows over `model` (the seed axis
    first, `parallel.state_shardings`) in and out, donated; each gathered batch split over
    `data`; the rows, order, key and losses replicated.

    Args:
        train_step: `step.make_train_step(...)`.
        bucket_sizes: rows per bucket (static).
        batch_size: rows per batch.
        mesh: None (one device) or the mesh to train over.
        tables: the model's row tables (with `mesh`).
    """
    scan_batches = make_scan_batches(train_step)

    def step(state, rows, order, shared, key, first_bad, index):
        n_rows = next(iter(rows.values())).shape[0]
        batches = gather_batches(rows, order[None], n_rows)
        if mesh is not None:
            batches = jax.lax.with_sharding_constraint(batches, batch_sharding(mesh))
        return scan_batches(state, batches, shared, key, first_bad, index)

    if mesh is None:
        bucket_step = jax.jit(step, donate_argnums=(0,))
    else:
        bucket_step = _make_sharded_bucket_step(step, mesh, dict(tables))

    def plan(key, epoch):
        """`[(bucket, order [batch_size]), ...]` in the epoch's order."""
        bucket_key = streams.derive(key, streams.Epoch.BUCKET_ORDER)
        batches = []
        for bucket, n_rows in enumerate(bucket_sizes):
            order = np.asarray(epoch_order(streams.index(bucket_key, bucket), epoch,
                                           n_rows, batch_size, host_sort=host_sorts()))
            batches.extend((bucket, row) for row in order)
        order_key = streams.index(streams.derive(key, streams.Epoch.BATCH_ORDER), epoch)
        permutation = np.asarray(jax.random.permutation(order_key, len(batches)))
        return [batches[i] for i in permutation]

    def put(value):
        """A step's small input: over the processes of a job, a global array (`to_global`:
        each process built the same value)."""
        return value if mesh is None else to_global(value, mesh)

    def run_epoch(states, data, keys, epoch):
        key = keys[0]
        # one device: the step takes one seed's state; over a mesh, the stacked states as
        # they are placed (row tables split on axis 1), so no state leaves its devices
        state = states if mesh is not None else seed_slice(states, 0)
        first_bad = put(jnp.asarray(-1, jnp.int32))
        losses = []
        # the plan is drawn on the host of every process alike, from its own copy of the key
        for index, (bucket, order) in enumerate(plan(local_copy(key), epoch)):
            state, first_bad, loss = bucket_step(
                state, data["buckets"][bucket], put(jnp.asarray(order, jnp.int32)),
                data["shared"], key, first_bad, put(jnp.asarray(index, jnp.int32)))
            losses.append(loss)
        metrics = {"loss": epoch_loss(jnp.concatenate(losses), first_bad),
                   "first_bad_batch": first_bad}
        metrics = jax.tree.map(lambda leaf: leaf[None], metrics)
        return (state if mesh is not None else jax.tree.map(lambda leaf: leaf[None], state),
                metrics)

    run_epoch.bucket_step = bucket_step  # for tests: count its compilations
    return run_epoch


def _make_sharded_bucket_step(step, mesh: Any, tables: dict[str, str]):
    """`step(state, rows, order, shared, key, first_bad, index)` over `mesh` on states stacked
    over one seed: compiled once per structure of states and rows (their shardings are read
    from the shapes), the states row-sharded in and out and donated, everything else
    replicated. `.program(states, rows)` gives the jitted function (to read its HLO)."""
    programs: dict[Any, Any] = {}
    everywhere = replicated(mesh)

    def stacked(states, *args):
        state, first_bad, loss = step(seed_slice(states, 0), *args)
        return jax.tree.map(lambda leaf: leaf[None], state), first_bad, loss

    def program(states, rows):
        signature = (jax.tree.structure(states), jax.tree.structure(rows),
                     tuple(leaf.shape for leaf in jax.tree.leaves(rows)))
        if signature not in programs:
            shardings = state_shardings(states, mesh, tables, row_axis=1)
            programs[signature] = jax.jit(
                stacked, in_shardings=(shardings,) + (everywhere,) * 6,
                out_shardings=(shardings, everywhere, everywhere), donate_argnums=(0,))
        return programs[signature]

    def bucket_step(states, rows, *args):
        return program(states, rows)(states, rows, *args)

    bucket_step.program = program
    return bucket_step


@functools.lru_cache(maxsize=8)
def _programs(graphdef: nnx.GraphDef, loss_name: str, train: Any, n_items: int,
              bucket_sizes: tuple[int, ...], total_steps: int, mesh_shape: tuple[int, ...] = ()):
    """The optimiser and the epoch of a model structure and data shape, built once: every
    seed of a run (same graph, new values), and a second identical run in the process, reuse
    them, so they compile nothing again."""
    optimizer = make_optimizer(train, total_steps=total_steps)
    objective = make_sequence_objective(graphdef, loss_name, n_negatives=train.n_negatives,
                                        logq=train.logq_correction, gbce_t=train.gbce_t,
                                        negatives_per_row=train.negatives_per_row)
    run_epoch = make_bucketed_epoch(with_average(make_train_step(objective, optimizer),
                                                 train.ema_decay),
                                    bucket_sizes=bucket_sizes, batch_size=train.batch_size,
                                    **_mesh_arguments(graphdef, mesh_shape))
    return optimizer, run_epoch


def _mesh_arguments(graphdef: nnx.GraphDef, mesh_shape: tuple[int, ...]) -> dict[str, Any]:
    """`make_bucketed_epoch`'s `mesh` and `tables` for `parallel.mesh = mesh_shape` (none for
    one device)."""
    if not mesh_shape:
        return {}
    return {"mesh": make_mesh(mesh_shape), "tables": tuple(row_tables(graphdef).items())}


def _stacked_initial_state(optimizer: Any, params: Any, hparams: Any,
                           average: bool = False) -> TrainState:
    """One seed's initial `TrainState`, stacked over a seed axis of length 1 (`average`:
    keeping the moving average of `train.ema_decay`)."""
    return jax.tree.map(lambda leaf: leaf[None],
                        init_state(params, optimizer, hparams, average=average))


@functools.lru_cache(maxsize=8)
def _sharded_initial_states(optimizer: Any, mesh_shape: tuple[int, ...],
                            tables: tuple[tuple[str, str], ...], average: bool = False):
    """`(params, hparams) -> states` over the mesh of `mesh_shape`, compiled with the
    states' shardings (row tables split over `model`, `parallel.state_shardings`) as its
    outputs, so the optimiser's state is created where it lives; compiled once per structure
    and shape of `params` (every seed of a run, and a second identical run, reuse it)."""
    mesh, programs = make_mesh(mesh_shape), {}
    initial = functools.partial(_stacked_initial_state, optimizer, average=average)

    def run(params, hparams):
        signature = (jax.tree.structure((params, hparams)),
                     tuple(leaf.shape for leaf in jax.tree.leaves(params)))
        if signature not in programs:
            shardings = state_shardings(jax.eval_shape(initial, params, hparams), mesh,
                                        dict(tables), row_axis=1)
            programs[signature] = jax.jit(initial, out_shardings=shardings)
        return programs[signature](params, hparams)

    return run


@dataclasses.dataclass(frozen=True)
class ShardedTokens:
    """A sequential model trained over a mesh (`parallel.mesh`): its token table (the row table
    the model declares) split by rows over `model`, padded with zero rows to a multiple of it
    (no token reads them: the items are rows 1..n_items, negatives are drawn among them, the
    padding and [mask] tokens come before them); batches split over `data`. Validation, the
    test and the run folder read the table whole at its real size (`whole`), and checkpoints
    store it so (`checkpoint_view`): a run resumes on another mesh or on one device."""

    mesh: Any
    shape: tuple[int, ...]
    tables: dict[str, str]
    counts: dict[str, int]

    @classmethod
    def of(cls, graphdef: nnx.GraphDef, params: Any, shape: tuple[int, ...]) -> ShardedTokens:
        tables = row_tables(graphdef)
        counts = {"tokens": int(params["token_embedding"].shape[0])}
        return cls(mesh=make_mesh(shape), shape=shape, tables=tables, counts=counts)

    def initial_states(self, optimizer: Any, params: Any, hparams: Any,
                       average: bool = False) -> TrainState:
        """The training states (stacked over the one seed) of the padded `params`, born
        sharded (`_sharded_initial_states`; `average`: `train.ema_decay`'s)."""
        padded = self.place(pad_rows(params, self.tables, self.counts, self.shape[1]))
        program = _sharded_initial_states(optimizer, self.shape, tuple(self.tables.items()),
                                          average)
        return program(padded, self.place(hparams))

    def place(self, tree: Any) -> Any:
        """`tree` (the same values in every process) replicated over the mesh: on every
        device once, not at every step; over several processes as global arrays."""
        if is_multiprocess():
            return to_global(tree, self.mesh)
        return jax.device_put(tree, replicated(self.mesh))

    def whole(self, params: Any) -> Any:
        """One seed's parameters whole, at their real size, on one device."""
        return whole_tables(params, self.tables, self.counts)

    def checkpoint_view(self):
        return checkpoint_view(self.tables, self.counts, self.shape)


@dataclasses.dataclass
class SeedResult:
    """One trained seed: its best parameters and `per_seed` entry, its log, its timing."""

    best_params: Any
    entry: dict[str, Any]
    history: list[dict[str, Any]]
    timing: dict[str, float]
    # The divergence that ended this seed's training early (`keep_good_epochs`): the rest is
    # the result of its good epochs.
    diverged: TrainingDivergedError | None = None
    # A private run's `"privacy"` object (`tasks.ordinary.privacy_report`) for this seed's
    # steps; None otherwise.
    privacy: dict[str, Any] | None = None


@dataclasses.dataclass
class SeedSetup:
    """What one seed's training starts from (`seed_setup`): the compiled epoch, the initial
    states (stacked over the one seed), the device data, the model structure and the rows."""

    graphdef: nnx.GraphDef
    run_epoch: Any
    states: TrainState
    data: dict[str, Any]
    key: jax.Array
    rows: dict[str, np.ndarray]
    batches_per_epoch: int
    hparams: dict[str, jax.Array] | None
    # a run over a mesh (`parallel.mesh`), None on one device
    sharded: ShardedTokens | None
    # a private run (`privacy.level`): its DP-SGD step and the config it was built from
    # (`private_sequence_setup`); None otherwise
    privacy: dpsgd.DPSpec | None = None
    private_config: Config | None = None


def seed_setup(config: Config, split: Split, seed: int, *, slate_log: SlateLog | None = None
               ) -> SeedSetup:
    """The windows, model, programs, initial states and device data of seed `seed` on
    `split.train` (a slate log's rounds with `slate_log`): everything `train_sequence_seed`
    builds before its first epoch."""
    loss_name = check_sequential_config(config)
    if config.privacy.level:  # slate logs refused (`check_private_sequence_config`)
        return private_sequence_setup(config, split, seed, loss_name)
    train = split.train
    hparams = None
    if slate_log is not None:
        # a slate log: every logged round a target, weighted by causal.method
        rows = exposure_rows(slate_log.log, train, config.model.max_len,
                             held_out_rounds(split, train.n_users))
        hparams = exposure_hparams(config, rows, train.n_items)
        buckets = ({name: values for name, values in rows.items() if name != "round"},)
        buckets = buckets if len(rows["inputs"]) else ()
    else:
        rows = training_rows(config, train, loss_name)
        buckets = bucket_rows(rows, config.model.length_buckets)
    if not buckets:
        raise ConfigError(f"key data.path: no training window for {config.model.name} (every "
                          "user has fewer than two training items); check the data and split")
    bucket_sizes = tuple(len(next(iter(b.values()))) for b in buckets)
    batches_per_epoch = sum(-(-n // config.train.batch_size) for n in bucket_sizes)
    key = seed_keys([seed])
    model = _model(config, train.n_items, streams.derive(key[0], streams.Run.INIT))
    graphdef, params = nnx.split(model, nnx.Param)
    mesh_shape = tuple(config.parallel.mesh)
    if slate_log is not None:
        optimizer, run_epoch = _exposure_programs(graphdef, config.causal.method, config.train,
                                                  bucket_sizes[0],
                                                  batches_per_epoch * config.train.epochs,
                                                  mesh_shape)
        hparams = {name: jnp.asarray(value, jnp.float32) for name, value in hparams.items()}
    else:
        optimizer, run_epoch = _programs(graphdef, loss_name, config.train, train.n_items,
                                         bucket_sizes, batches_per_epoch * config.train.epochs,
                                         mesh_shape)
    sharded = ShardedTokens.of(graphdef, params, mesh_shape) if mesh_shape else None
    if sharded is None:
        states: TrainState = _stacked_initial_state(optimizer, params, hparams,
                                                    bool(config.train.ema_decay))
    else:  # zero rows up to a multiple of the model axis, the state born sharded
        states = sharded.initial_states(optimizer, params, hparams,
                                        bool(config.train.ema_decay))
    shared = {}
    if "users" in rows:
        shared = {name: jnp.asarray(values) for name, values in
                  seen_items_data(train.user, train.item, train.n_users, train.n_items).items()}
    if config.train.position_weighting == "uniform" and slate_log is None:
        shared["shared_positions_per_batch"] = jnp.asarray(
            positions_per_batch(buckets, config.train.batch_size), jnp.float32)
    if config.train.negative_sampler == "popularity" and slate_log is None:
        shared["shared_item_probs"] = jnp.asarray(
            np.bincount(train.item, minlength=train.n_items), jnp.float32)
    data = {"buckets": tuple({name: jnp.asarray(values) for name, values in bucket.items()}
                             for bucket in buckets), "shared": shared}
    if sharded is not None:
        data = sharded.place(data)
    return SeedSetup(graphdef=graphdef, run_epoch=run_epoch, states=states, data=data, key=key,
                     rows=rows, batches_per_epoch=batches_per_epoch, hparams=hparams,
                     sharded=sharded)


@functools.lru_cache(maxsize=8)
def _private_programs(graphdef: nnx.GraphDef, loss_name: str, train: TrainConfig,
                      spec: dpsgd.DPSpec, n_tokens: int, client_learning_rate: float):
    """The optimiser and the DP-SGD epoch (`privacy.dpsgd.make_dp_epoch`, one seed stacked;
    with `spec.local_steps`, FedAvg rounds, `privacy.federated`) of a private sequential run,
    built once per model structure and spec (every seed)."""
    optimizer = make_optimizer(train, total_steps=spec.steps_per_epoch * train.epochs)
    loss_fn = make_sequence_loss(graphdef, loss_name, n_negatives=train.n_negatives,
                                 logq=train.logq_correction, gbce_t=train.gbce_t,
                                 negatives_per_row=train.negatives_per_row)
    if spec.local_steps:  # federated rounds: each sampled user a client
        unit_fn = federated.make_sequence_client_update(
            loss_fn, n_tokens, local_steps=spec.local_steps,
            client_learning_rate=client_learning_rate)
    else:
        unit_fn = dpsgd.make_sequence_unit_gradient(loss_fn, n_tokens)
    step = with_average(dpsgd.make_private_step(unit_fn, optimizer, spec, row_tables(graphdef)),
                        train.ema_decay)
    dp_epoch = dpsgd.make_dp_epoch(step, spec)

    def wrapped(tree):
        return None if tree is None else {"prediction": tree}

    def epoch(state, data, key, index):
        """The DP epoch on a state whose params (and moving average) are the model's (the
        private step reads `{"prediction": params}`, as the optimiser's state was made:
        `_private_state`)."""
        state, metrics = dp_epoch(dataclasses.replace(state, params=wrapped(state.params),
                                                      average=wrapped(state.average)),
                                  data, key, index)
        average = None if state.average is None else state.average["prediction"]
        return dataclasses.replace(state, params=state.params["prediction"],
                                   average=average), metrics

    return optimizer, jax.jit(over_seeds(epoch, 1), donate_argnums=(0,))


def _private_state(optimizer: Any, params: Any, average: bool = False) -> TrainState:
    """A private run's initial state, stacked over one seed: the model's params, the
    optimiser's state made for `{"prediction": params}` (what the private step updates);
    `average`: keeping `train.ema_decay`'s moving average."""
    state = TrainState(params=params, opt_state=optimizer.init({"prediction": params}),
                       step=jnp.zeros((), jnp.int32), hparams=None,
                       average=jax.tree.map(jnp.copy, params) if average else None)
    return jax.tree.map(lambda leaf: leaf[None], state)


def private_sequence_setup(config: Config, split: Split, seed: int, loss_name: str
                           ) -> SeedSetup:
    """`seed_setup` of a private run (`privacy.level`): the training windows grouped into
    privacy units (a user's windows, at most `privacy.max_examples_per_user` of them drawn
    by `streams.Run.PRIVATE_ROWS`: `privacy.dpsgd.unit_arrays`), every epoch
    `spec.steps_per_epoch` DP-SGD steps over Poisson-sampled units
    (`privacy.dpsgd.make_private_step` with `make_sequence_unit_gradient`), or with
    `privacy.mechanism = "fedavg"` as many FedAvg rounds, each sampled user a client
    (`privacy.federated.make_sequence_client_update`). A sequence model has no user rows, so
    every parameter is noised."""
    train = split.train
    rows = training_rows(config, train, loss_name, with_users=True)
    n_windows = len(rows["users"])
    if not n_windows:
        raise ConfigError(f"key data.path: no training window for {config.model.name} (every "
                          "user has fewer than two training items); check the data and split")
    key = seed_keys([seed])
    model = _model(config, train.n_items, streams.derive(key[0], streams.Run.INIT))
    graphdef, params = nnx.split(model, nnx.Param)
    # no user rows: every parameter is noised (`privacy_report(user_rows=False)`); FedAvg's
    # spec asks for clients that keep their rows ("local"), here none
    rows_kept = "local" if config.privacy.mechanism == "fedavg" else "noised"
    private = dataclasses.replace(config, privacy=dataclasses.replace(config.privacy,
                                                                      user_rows=rows_kept))
    spec = private_spec(private, graphdef, n_users=train.n_users, n_rows=n_windows)
    # a unit's table is as wide as the most windows a user keeps (not the cap itself)
    widest = min(config.privacy.max_examples_per_user,
                 int(np.bincount(rows["users"], minlength=train.n_users).max()))
    # a chunk of units holds about PRIVATE_CHUNK_WINDOWS windows (each unit's forward pass
    # and dense table gradient side by side), whatever the batch of users
    spec = dpsgd.with_chunk(spec, min(spec.chunk, PRIVATE_CHUNK_WINDOWS // widest))
    units = dpsgd.unit_arrays(rows, train.n_users, spec.level, widest,
                              streams.derive(key[0], streams.Run.PRIVATE_ROWS))
    n_tokens = int(params["token_embedding"][...].shape[0])
    optimizer, run_epoch = _private_programs(graphdef, loss_name, config.train, spec, n_tokens,
                                             config.privacy.client_learning_rate)
    data = {name: jnp.asarray(values) for name, values in units.items()}
    if loss_name in SAMPLED_LOSSES and config.train.exclude_seen_negatives:
        data.update({name: jnp.asarray(values) for name, values in
                     seen_items_data(train.user, train.item, train.n_users,
                                     train.n_items).items()})
    return SeedSetup(graphdef=graphdef, run_epoch=run_epoch,
                     states=_private_state(optimizer, params,
                                           bool(config.train.ema_decay)), data=data,
                     key=key, rows=rows, batches_per_epoch=spec.steps_per_epoch, hparams=None,
                     sharded=None, privacy=spec, private_config=private)


def train_sequence_seed(
    config: Config, split: Split, seed: int, *, checkpoint_dir: Path | None = None,
    resume: bool = False, progress: bool = False, log_fn=None, item_chunk: int | None = None,
    keep_good_epochs: bool = False, slate_log: SlateLog | None = None,
    attraction: np.ndarray | None = None,
) -> SeedResult:
    """Trains seed `seed` (a value, run.seed + i) through `train.loop.fit` with early stopping
    on validation, then evaluates its best parameters on the test split.

    Raises:
        TrainingDivergedError: a NaN/Inf loss or gradient (names the seed, epoch and batch);
            with `keep_good_epochs`, only before the first validated epoch: after it, the best
            parameters of the good epochs are evaluated and returned with `diverged` set.
    """
    setup = seed_setup(config, split, seed, slate_log=slate_log)
    graphdef, sharded, rows = setup.graphdef, setup.sharded, setup.rows
    hparams, batches_per_epoch = setup.hparams, setup.batches_per_epoch
    metric = config.train.early_stopping_metric

    def evaluate_fn(params):
        if sharded is not None:
            params = sharded.whole(params)
        scorer = make_scorer(graphdef, params)
        # RecBole validates sequential models without masking the history: logged too, so
        # time-to-quality can be compared under its protocol (experiments/compare_recbole.py)
        valid, unmasked = _valid(scorer, config, split, (True, False), item_chunk)
        if metric not in valid:
            raise ConfigError(f"key train.early_stopping_metric: {metric!r} is not computed "
                              f"(computed: {', '.join(valid)})")
        # over several processes, every one stops as the first does
        return from_first({**valid, **{f"unmasked_{name}": value
                                       for name, value in unmasked.items()}})

    keys = jax.vmap(lambda k: streams.derive(k, streams.Run.TRAIN))(setup.key)
    if sharded is not None:  # global arrays over the processes of a job
        keys = to_global(keys, sharded.mesh)

    from causalrec_jax.causal.clip import DIVERGED_HINT
    from causalrec_jax.causal.sequential import PROPENSITY_METHODS

    try:
        result = fit(
            train_epoch=None, run_epoch=setup.run_epoch, states=setup.states, data=setup.data,
            keys=keys,
            epochs=config.train.epochs, evaluate_fn=evaluate_fn, metric=metric,
            patience=config.train.patience, checkpoint_dir=checkpoint_dir,
            checkpoint_every=config.train.checkpoint_every, resume=resume, progress=progress,
            log_fn=None if log_fn is None else (lambda record: log_fn({**record, "seed": seed})),
            description=f"seed {seed}, {batches_per_epoch} batches/epoch",
            diverged_hint=(DIVERGED_HINT if config.causal.method in PROPENSITY_METHODS
                           else ""),
            checkpoint_view=None if sharded is None else sharded.checkpoint_view(),
        )
        diverged = None
    except TrainingDivergedError as error:
        diverged = TrainingDivergedError(f"{config.model.name} seed {seed}: {error}",
                                         partial=error.partial, epoch=error.epoch)
        if not keep_good_epochs or error.partial is None:
            raise diverged from None
        result = error.partial
    best_params = seed_slice(result.best_params, 0)
    if sharded is not None:
        best_params = sharded.whole(best_params)
    best_epoch = result.best_epochs[0]
    best_record = next(r for r in result.history if r["epoch"] == best_epoch)
    valid = {name: value for name, value in best_record["valid"].items()
             if not name.startswith("unmasked_")}
    seconds_to_best = sum(r["seconds"] for r in result.history if r["epoch"] <= best_epoch)
    tic = time.perf_counter()
    tests = test_metrics(make_scorer(graphdef, best_params), config, split, seed,
                         item_chunk=item_chunk)
    if slate_log is not None:
        tests.update(exposure_evaluation(graphdef, best_params, slate_log, split, config,
                                         attraction=attraction))
    timing = {**result.timing, "test_eval_seconds": round(time.perf_counter() - tic, 4)}
    entry = {"seed": seed, "best_epoch": best_epoch, "valid": valid, **tests,
             "seconds_to_best": round(seconds_to_best, 4)}
    if hparams is not None:
        entry["hparams"] = {name: float(value) for name, value in hparams.items()}
    privacy = None
    if setup.privacy is not None:
        privacy = privacy_report(setup.private_config, setup.privacy, len(result.history),
                                 split.train.n_users, user_rows=False)
    return SeedResult(best_params=best_params, entry=entry,
                      history=[{**record, "seed": seed} for record in result.history],
                      timing={**timing, "n_windows": len(next(iter(rows.values())))},
                      diverged=diverged, privacy=privacy)


def sequence_privacy(results: list[SeedResult]) -> dict[str, Any]:
    """The `"privacy"` object of a private sequential run's `metrics.json`: the seeds train
    one after another, each to its own early stop, so each has its own steps and epsilon;
    the object is the report of the seed that trained longest (the largest epsilon), with
    every seed's `epsilon_per_seed` and `steps_per_seed`."""
    reports = [result.privacy for result in results]
    longest = max(reports, key=lambda report: report["steps"])
    return {**longest, "epsilon_per_seed": [report["epsilon"] for report in reports],
            "steps_per_seed": [report["steps"] for report in reports]}


# ----------------------------------------------------------------------------- using a run


def load_sequence_run(run: Path, config: Config, data: dict[str, np.ndarray]) -> LoadedRun:
    """A sequential run's model rebuilt from its config, with the best parameters of `model/`.

    `score_all_fn(seed_index)` of the result maps internal user ids `[b]` to the scores
    `[b, n_items]` of the item after each user's `next_history` (all they have seen).
    """
    if "next_history" not in data:
        raise RunError(f"{run}: data.npz holds no next_history (written by an older version); "
                       "train the run again")
    _, meta = checkpoints.restore_checkpoint(run / "model", None, meta_only=True)
    seeds = [int(seed) for seed in meta.get("seeds", seed_list(config))]
    n_seeds = len(seeds)
    model = _model(config, len(data["item_ids"]), jax.random.key(config.run.seed))
    graphdef, params = nnx.split(model, nnx.Param)
    like = jax.tree.map(lambda leaf: jnp.zeros((n_seeds, *leaf.shape), leaf.dtype), params)
    arrays, _ = checkpoints.restore_checkpoint(run / "model", {"params": like})
    score_next = make_score_next(graphdef)
    history = jnp.asarray(data["next_history"])

    def scorer(seed_index: int):
        seed_params = seed_slice(arrays["params"], seed_index)
        return lambda users: score_next(seed_params, history[jnp.asarray(users)])

    return LoadedRun(config=config, parts=ModelParts(graphdef, arrays["params"], nnx.State({})),
                     data=data, scorer=scorer, seeds=seeds)


def evaluate_sequence_run(run: LoadedRun, split_name: str = "test") -> dict[str, Any]:
    """Re-evaluates a loaded sequential run's best parameters on `split_name` (`test`: also
    `test_unmasked` and `test_sampled`, computed as training did; `valid`), re-reading the data.

    Returns:
        `{split_name: means over seeds, split_name + "_std": ..., ..., "per_seed": [...]}`,
        each `per_seed` entry naming its seed (run.seed + i).
    """
    if split_name not in ("test", "valid"):
        raise RunError(f"split {split_name!r}: a sequential run evaluates 'test' or 'valid'")
    config = run.config
    if config.data.format == "simlog":  # the clicks of a slate log are the sequences
        dataset = load_slate_log(config).clicks
    else:
        dataset, _ = load_dataset(config.data, config.sim, planted=config.planted)
    check_unchanged(run.data, dataset, config.data.path or config.data.format)
    split = make_split(dataset, config.data, seed=config.run.seed)
    per_seed = []
    for index, seed in enumerate(run.seeds or seed_list(config)):
        scorer = make_scorer(run.parts.graphdef, seed_slice(run.parts.params, index))
        entry = (test_metrics(scorer, config, split, seed) if split_name == "test"
                 else {"valid": valid_metrics(scorer, config, split)})
        per_seed.append({"seed": seed, **entry})
    out: dict[str, Any] = {}
    for part in (split_name, "test_unmasked", "test_sampled"):
        if part in per_seed[0]:
            out.update(aggregate(per_seed, part))
    return {**out, "per_seed": per_seed}


# ----------------------------------------------------------------------------- slate logs
#
# With `data.format = "simlog"` a sequential model learns from a slate log whose exposure the
# logging policy confounded (`causal.sequential`): the click sequences are the input, every
# logged round (slate, clicks, the logging policy's slot propensities) a training target, and
# `causal.method` (naive, ips, snips, dr) the estimator of the full-exposure loss. The held-out
# clicks give the usual leave-one-out `test`; the simulator's truth gives `test_truth` and
# `test_ope` (`exposure_evaluation`).

# `[causal]` keys a sequential run on a slate log reads.
EXPOSURE_CAUSAL_KEYS = ("method", "propensity", "propensity_clip", "imputation_value")


@dataclasses.dataclass(frozen=True)
class SlateLog:
    """A simlog as a sequential run uses it: the log, its ground truth, the clicks as a
    `Dataset`, and (for evaluation only) the true attraction of every item at every step."""

    log: Any
    truth: dict[str, np.ndarray]
    manifest: dict[str, Any]
    clicks: Dataset


def check_exposure_config(config: Config) -> None:
    """The `[causal]` checks of a sequential run (one-line errors naming the key)."""
    from causalrec_jax.causal.sequential import PROPENSITY_METHODS, SEQUENTIAL_METHODS

    causal, default = config.causal, type(config.causal)()
    on_log = config.data.format == "simlog"
    if not on_log:
        for name in ("method", "propensity"):
            if getattr(causal, name) != getattr(default, name):
                raise ConfigError(
                    f"key causal.{name}: set to {getattr(causal, name)!r}, but a sequential "
                    f"model learns from exposure only on a slate log: data.format = 'simlog' "
                    f"(got {config.data.format!r})")
    read = ", ".join(f"causal.{name}" for name in EXPOSURE_CAUSAL_KEYS)
    for name in dataclasses.asdict(causal):
        if name not in EXPOSURE_CAUSAL_KEYS and getattr(causal, name) != getattr(default, name):
            raise ConfigError(f"key causal.{name}: set to {getattr(causal, name)!r}, but a "
                              f"sequential run reads only {read}; remove it")
    if not on_log:
        return
    if causal.method not in SEQUENTIAL_METHODS:
        raise ConfigError(f"key causal.method: {causal.method!r} cannot weight a sequential "
                          f"model; expected one of {', '.join(SEQUENTIAL_METHODS)}")
    if config.model.name != "sasrec":
        raise ConfigError(f"key model.name: {config.model.name!r} on a slate log; only "
                          "'sasrec' is trained from exposure (causal.method) so far")
    if config.train.loss != "full_softmax":
        raise ConfigError(f"key train.loss: {config.train.loss!r} on a slate log; "
                          f"causal.method = {causal.method!r} weights the next-click "
                          "'full_softmax' only")
    if causal.method in PROPENSITY_METHODS and causal.propensity != "true":
        raise ConfigError(f"key causal.propensity: {causal.propensity!r}, but causal.method = "
                          f"{causal.method!r} divides by the logged propensities; set "
                          "causal.propensity = 'true' (the log's slot_propensity)")
    if causal.propensity not in ("none", "true"):
        raise ConfigError(f"key causal.propensity: {causal.propensity!r}; a slate log carries "
                          "its own propensities: 'true' (or 'none' for naive)")
    if causal.imputation_value is not None and causal.method != "dr":
        raise ConfigError("key causal.imputation_value: only causal.method = 'dr' reads it")
    if config.train.position_weighting != "per_batch":
        raise ConfigError(f"key train.position_weighting: {config.train.position_weighting!r} "
                          "on a slate log, whose rounds are weighted by causal.method; remove it")
    if config.model.positions != "from_start":
        raise ConfigError(f"key model.positions: {config.model.positions!r} on a slate log, "
                          "whose rows hold later rounds' clicks too (a position counted from "
                          "the newest would tell a round how many follow); set 'from_start'")


def load_slate_log(config: Config) -> SlateLog:
    """The simlog of `data.path`, with its clicks as the run's `Dataset` (one row per click,
    time = round index, ties in slot order; ids are the world's)."""
    from causalrec_jax.sim.simlog import read_manifest, read_simlog

    dataset, _ = load_dataset(config.data, config.sim, planted=config.planted)
    clicks = dataset.subset(dataset.rating > 0)
    log, truth = read_simlog(config.data.path)
    if config.causal.propensity == "true" and not log.propensity_exact:
        raise ConfigError(f"key causal.propensity: the log {config.data.path} holds estimated "
                          "(Monte-Carlo) slot propensities, not exact ones; log with a uniform, "
                          "top-K or epsilon-greedy policy")
    return SlateLog(log=log, truth=truth, manifest=read_manifest(config.data.path),
                    clicks=clicks)


def exposure_rows(log: Any, clicks: Dataset, max_len: int,
                  cut_round: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The rows a sequential model learns from a slate log with (`causal.sequential`).

    Each user's `clicks` (time = round index) are cut into chunks of `max_len` from the first;
    a row is one chunk's tokens with every logged round of the user whose history (the clicks
    of the rounds before it) ends in the chunk: `query` is the column of that last click, so
    the model reads the history before the round and never the round's own clicks. Rounds
    before the user's first click, and rounds at or after `cut_round[user]` (the first held-out
    round), are left out.

    Returns:
        `inputs [W, max_len]` tokens (left-padded), `query [W, R]`, `round [W, R]` (the log's
        round index), `slate [W, R, K]`, `clicks [W, R, K]` float32, `propensity [W, R, K]`,
        `round_mask [W, R]` bool; `R` is the most rounds of a row.
    """
    order = np.lexsort((np.arange(len(clicks)), clicks.timestamp, clicks.user))
    click_users = clicks.user[order]
    click_rounds = clicks.timestamp[order].astype(np.int64)
    click_items = clicks.item[order].astype(np.int32)
    click_start = np.searchsorted(click_users, np.arange(clicks.n_users + 1))
    round_order = np.argsort(log.user, kind="stable")
    round_start = np.searchsorted(log.user[round_order], np.arange(clicks.n_users + 1))
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for user in range(clicks.n_users):
        rounds = round_order[round_start[user]:round_start[user + 1]]
        if cut_round is not None:
            rounds = rounds[rounds < cut_round[user]]
        items = click_items[click_start[user]:click_start[user + 1]]
        before = np.searchsorted(click_rounds[click_start[user]:click_start[user + 1]],
                                 rounds, side="left")
        rounds, last = rounds[before > 0], before[before > 0] - 1
        chunk_of = last // max_len
        for chunk in np.unique(chunk_of):
            tokens = items[chunk * max_len:(chunk + 1) * max_len] + 1
            selected = chunk_of == chunk
            query = max_len - len(tokens) + last[selected] - chunk * max_len
            chunks.append((tokens, query, rounds[selected]))
    width = max((len(rounds) for _, _, rounds in chunks), default=1)
    n_rows, k = len(chunks), log.slate.shape[1]
    inputs = np.zeros((n_rows, max_len), np.int32)
    query = np.full((n_rows, width), max_len - 1, np.int32)
    round_index = np.zeros((n_rows, width), np.int64)
    round_mask = np.zeros((n_rows, width), bool)
    for row, (tokens, columns, rounds) in enumerate(chunks):
        inputs[row, max_len - len(tokens):] = tokens
        query[row, :len(columns)] = columns
        round_index[row, :len(rounds)] = rounds
        round_mask[row, :len(rounds)] = True
    return {
        "inputs": inputs, "query": query, "round": round_index,
        "slate": log.slate[round_index].reshape(n_rows, width, k).astype(np.int32),
        "clicks": log.clicks[round_index].reshape(n_rows, width, k).astype(np.float32),
        "propensity": log.slot_propensity[round_index].reshape(n_rows, width, k)
        .astype(np.float32),
        "round_mask": round_mask,
    }


def held_out_rounds(split: Split, n_users: int) -> np.ndarray:
    """`[n_users]` the first round of each user's validation or test click (training rounds
    are the earlier ones); the largest int64 for users with none held out."""
    cut = np.full(n_users, np.iinfo(np.int64).max)
    for part in (split.valid, split.test):
        np.minimum.at(cut, part.user, part.timestamp.astype(np.int64))
    return cut


def exposure_hparams(config: Config, rows: dict[str, np.ndarray], n_items: int
                     ) -> dict[str, float]:
    """The traced knobs of the exposure objective: `propensity_clip`, `imputation_value`
    (`causal.imputation_value`, or `causal.sequential.default_imputation` of the rows)."""
    from causalrec_jax.causal.sequential import default_imputation

    imputation = config.causal.imputation_value
    if imputation is None:
        where = np.broadcast_to(rows["round_mask"][..., None], rows["slate"].shape)
        imputation = default_imputation(rows["clicks"], rows["propensity"], where, n_items)
    return {"propensity_clip": float(config.causal.propensity_clip),
            "imputation_value": float(imputation)}


def exposure_clip_report(config: Config, rows: dict[str, np.ndarray]) -> dict[str, Any]:
    """THE clip's report on the training rows' propensities at `causal.propensity_clip`."""
    from causalrec_jax.causal.clip import clip_propensities

    where = np.broadcast_to(rows["round_mask"][..., None], rows["slate"].shape)
    _, report = clip_propensities(jnp.asarray(rows["propensity"]),
                                  config.causal.propensity_clip or None,
                                  where=jnp.asarray(where))
    return {"method": config.causal.propensity, "clip": config.causal.propensity_clip,
            **report.to_dict()}


@functools.lru_cache(maxsize=8)
def _exposure_programs(graphdef: nnx.GraphDef, method: str, train: Any, n_rows: int,
                       total_steps: int, mesh_shape: tuple[int, ...] = ()):
    """The optimiser and the epoch of the exposure objective (`_programs` for slate logs)."""
    from causalrec_jax.causal.sequential import make_exposure_objective

    optimizer = make_optimizer(train, total_steps=total_steps)
    objective = make_exposure_objective(graphdef, method,
                                        {"propensity_clip": 0.0, "imputation_value": 0.0})
    run_epoch = make_bucketed_epoch(with_average(make_train_step(objective, optimizer),
                                                 train.ema_decay),
                                    bucket_sizes=(n_rows,), batch_size=train.batch_size,
                                    **_mesh_arguments(graphdef, mesh_shape))
    return optimizer, run_epoch


@functools.lru_cache(maxsize=8)
def _round_log_probs(graphdef: nnx.GraphDef):
    from causalrec_jax.causal.sequential import round_log_probs

    @jax.jit
    def log_probs(params, inputs, query):
        return round_log_probs(nnx.merge(graphdef, params), inputs, query)

    return log_probs


def exposure_evaluation(
    graphdef: nnx.GraphDef, params: Any, slate_log: SlateLog, split: Split, config: Config, *,
    attraction: np.ndarray, k: int = 10,
) -> dict[str, dict[str, float]]:
    """`test_truth` and `test_ope` of a model trained on a slate log.

    `test_truth` (the next step's true relevance): each user's whole click history (the
    `next_history` of `recommend`) is scored, the clicked items masked, and the ranking compared
    with the simulator's true attraction `sigmoid(v_i + c)` of every item in the user's state
    after the log's last step: the relevant items are the `k` unclicked items of highest true
    attraction (the slate a click-maximising recommender would show next), so `truth_ndcg@k`
    (binary gains, ideal DCG over `k` items) and `truth_recall@k` (= precision) measure how much
    of that slate the model finds; `truth_attraction@k` is the mean true attraction of the
    model's top `k` (its expected clicks per examined slot).

    `test_ope` (the model as a policy): at every held-out logged round with a history (from the
    user's validation click on: rounds the model never trained on; on training rounds its slates
    would be fitted to the very clicks `iips` re-weights), the model's top-K slate of its scores
    from the clicks before the round (nothing masked); `iips`
    (`causal.ope.iips`, weights clipped by THE clip at `1 / causal.propensity_clip` when set)
    estimates its clicks per round from the logged clicks and slot propensities, and
    `on_policy_value` is the exact expectation `sum_k e_k attraction(slate_k)` in the round's
    true state (the simulator's click model), averaged over the same rounds;
    `logging_value` the same for the logged slates.

    Args:
        attraction: `[n_users, T + 1, n_items]` from `sim.logs.log_attraction`.
    """
    from causalrec_jax.causal import ope as estimators

    log, max_len = slate_log.log, config.model.max_len
    everything = concatenate([split.train, split.valid, split.test])
    n_users, n_items = everything.n_users, everything.n_items
    history = jnp.asarray(history_matrix(user_sequences(everything), max_len))
    score_next = make_score_next(graphdef)
    clicked = np.zeros((n_users, n_items), bool)
    clicked[everything.user, everything.item] = True
    horizon = attraction.shape[1] - 1
    values: dict[str, list[np.ndarray]] = {}
    chunk = config.eval.chunk_size
    for start in range(0, n_users, chunk):
        users = np.arange(start, min(start + chunk, n_users))
        scores = score_next(params, history[users])
        truth = attraction[users, horizon]
        rankable = ~clicked[users]
        masked_truth = np.where(rankable, truth, -np.inf)
        top_truth = np.argsort(-masked_truth, axis=1, kind="stable")[:, :k]
        labels = np.zeros_like(rankable)
        np.put_along_axis(labels, top_truth, True, axis=1)
        labels &= rankable
        per_user = ranking_metrics(scores, jnp.asarray(labels, jnp.float32), ks=(k,),
                                   names=("ndcg", "recall"), where=jnp.asarray(rankable))
        masked_scores = jnp.where(jnp.asarray(rankable), scores, -jnp.inf)
        top_model = np.asarray(jax.lax.top_k(masked_scores, k)[1])
        picked = np.take_along_axis(truth, top_model, axis=1).mean(axis=1)
        for name, value in per_user.items():
            values.setdefault(f"truth_{name}", []).append(np.asarray(value))
        values.setdefault(f"truth_attraction@{k}", []).append(picked)
    test_truth = {name: float(np.mean(np.concatenate(parts), dtype=np.float64))
                  for name, parts in values.items()}

    rows = exposure_rows(log, everything, max_len)
    # only the held-out rounds (from each user's validation click on): the model never trained
    # on them, so its slates there are not fitted to the logged clicks being re-weighted
    cut = held_out_rounds(split, n_users)
    rows["round_mask"] = rows["round_mask"] & (rows["round"] >= cut[log.user[rows["round"]]])
    log_probs_fn = _round_log_probs(graphdef)
    slate_size = log.slate.shape[1]
    examination = np.asarray(slate_log.truth["examination"], np.float32)
    target_match, logged_clicks, logged_propensity, on_policy, logging_value = [], [], [], [], []
    steps = log.step
    for start in range(0, len(rows["inputs"]), chunk):
        part = slice(start, start + chunk)
        mask = rows["round_mask"][part]
        log_probs = log_probs_fn(params, jnp.asarray(rows["inputs"][part]),
                                 jnp.asarray(rows["query"][part]))
        target = np.asarray(jax.lax.top_k(log_probs, slate_size)[1])[mask]  # [m, K]
        rounds = rows["round"][part][mask]
        state_attraction = attraction[log.user[rounds], steps[rounds]]  # [m, n_items]
        slate = rows["slate"][part][mask]
        target_match.append((target == slate).astype(np.float32))
        logged_clicks.append(rows["clicks"][part][mask])
        logged_propensity.append(rows["propensity"][part][mask])
        on_policy.append((np.take_along_axis(state_attraction, target, axis=1)
                          * examination).sum(axis=1))
        logging_value.append((np.take_along_axis(state_attraction, slate, axis=1)
                              * examination).sum(axis=1))
    if not any(len(values) for values in on_policy):
        return {"test_truth": test_truth, "test_ope": {
            "n_rounds": 0, "skipped": "no held-out round follows a click (each user's rounds "
            "from the validation click on, with a history): nothing to re-weight"}}
    clip = 1.0 / config.causal.propensity_clip if config.causal.propensity_clip else None
    estimate = estimators.iips(jnp.asarray(np.concatenate(logged_clicks)),
                               jnp.asarray(np.concatenate(target_match)),
                               jnp.asarray(np.concatenate(logged_propensity)), clip=clip)
    truth_value = float(np.mean(np.concatenate(on_policy), dtype=np.float64))
    test_ope = {
        "iips_estimate": float(estimate.value), "iips_stderr": float(estimate.stderr),
        "iips_n_eff": float(estimate.n_eff), "on_policy_value": truth_value,
        "iips_relative_error": (abs(float(estimate.value) - truth_value) / abs(truth_value)
                                if truth_value else float("nan")),
        "logging_value": float(np.mean(np.concatenate(logging_value), dtype=np.float64)),
        "n_rounds": int(sum(len(x) for x in on_policy)),
    }
    return {"test_truth": test_truth, "test_ope": test_ope}


def slate_log_attraction(slate_log: SlateLog) -> np.ndarray:
    """`[n_users, T + 1, n_items]` true attraction along the logged episodes, replayed from the
    manifest's `[env]`, `[policy]` and seed (`sim.logs.log_attraction`); the replayed slates
    must equal the logged ones.

    Raises:
        RunError: the replay does not reproduce the log (another version drew it).
    """
    from causalrec_jax.config import config_from_dict
    from causalrec_jax.sim.logs import log_attraction

    manifest, log = slate_log.manifest, slate_log.log
    sections = config_from_dict({"env": manifest["env"], "policy": manifest["policy"]},
                                "simlog.json")
    users = np.asarray(slate_log.truth["users"])
    horizon = int(manifest["horizon"])
    slates, attraction = log_attraction(sections.env, sections.policy,
                                        jax.random.key(int(manifest["seed"])), users, horizon)
    logged = log.slate.reshape(len(users), horizon, -1)
    if not np.array_equal(slates, logged):
        raise RunError("the simlog's episodes could not be replayed from its manifest (env, "
                       "policy, seed): its truth cannot be evaluated")
    full = np.zeros((slate_log.clicks.n_users, horizon + 1, attraction.shape[2]), np.float32)
    full[users] = attraction
    return full
