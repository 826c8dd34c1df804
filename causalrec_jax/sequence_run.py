"""Runs of the sequential models (SASRec, BERT4Rec): `causalrec train` with `model.name` one
of `SEQUENCE_MODELS`.

Protocol: `data.split = "leave_one_out"` (per user by time: last item -> test, second last ->
validation). Training windows of `model.max_len` items from each user's training sequence, with
every position trained at once under the causal mask (`data.sequences.training_windows`);
BERT4Rec trains on masked items of raw windows. Evaluation ranks the whole catalogue from the
user's history (training items for validation, training and validation items for the test), with
the history masked (`test`) and, for comparison with RecBole's sequential protocol, unmasked
(`test_unmasked`); with `eval.sampled_negatives` set, also among that many sampled negatives
(`test_sampled`, names prefixed `sampled_`: a different, far more lenient protocol). Early
stopping on `train.early_stopping_metric` over validation.

`metrics.json` follows the train contract (`test`, `test_std`, `valid`, `per_seed`, `seeds`,
`data`, `timing`, `versions`) plus `test_unmasked` and, per seed, `seconds_to_best`.

The run folder also holds what `causalrec recommend` and `causalrec evaluate` need, as for the
other runs (`runner`): `model/`, an orbax checkpoint of every seed's best parameters stacked
`[n_seeds, ...]` (the model is rebuilt from `config.toml`), and `data.npz`, the id maps and
splits (`runner._save_data`) plus the test pairs and `next_history` `[n_users, max_len]`: the
tokens of each user's last `max_len` items of train, validation and test in time order, the
input from which `recommend` scores the item after everything the user has seen.
"""

from __future__ import annotations

import functools
import resource
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from causalrec_jax.config import Config
from causalrec_jax.data.dataset import Split, concatenate
from causalrec_jax.data.loader import load_split
from causalrec_jax.data.sequences import (
    bucketed_batches,
    history_matrix,
    item_windows,
    training_windows,
    user_sequences,
)
from causalrec_jax.errors import ConfigError
from causalrec_jax.eval.metrics import RANKING_METRICS, ranking_metrics
from causalrec_jax.eval.ranking import evaluate_full_ranking
from causalrec_jax.models.base import ModelParts
from causalrec_jax.models.bert4rec import BERT4Rec
from causalrec_jax.models.sasrec import SASRec
from causalrec_jax.runner import (
    LoadedRun,
    RunError,
    _absolute_data_path,
    _save_data,
    aggregate,
    write_run_folder,
)
from causalrec_jax.train import checkpoint as checkpoints
from causalrec_jax.train.loop import TrainingDivergedError, seed_slice
from causalrec_jax.train.sequence import LOSSES, make_sequence_train_step

SEQUENCE_MODELS = ("sasrec", "bert4rec")


def _check(config: Config) -> str:
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
                          "bce_one_negative, sampled_softmax for sasrec")
    return loss


def _model(config: Config, n_items: int, key: jax.Array):
    model_class = SASRec if config.model.name == "sasrec" else BERT4Rec
    return model_class(
        n_items, config.model.max_len, key=key, hidden_dim=config.model.embedding_dim,
        n_layers=config.model.n_layers, n_heads=config.model.n_heads,
        dropout_rate=config.model.dropout,
    )


def make_score_next(graphdef: nnx.GraphDef):
    """`score_next(params, sequences [b, max_len]) -> scores [b, n_items]`, jitted: the one
    scorer of training, evaluation and recommendation (so they give identical numbers)."""

    @jax.jit
    def score_next(params, sequences):
        return nnx.merge(graphdef, params).score_next(sequences)

    return score_next


@functools.lru_cache(maxsize=8)
def _programs(graphdef: nnx.GraphDef, loss_name: str, learning_rate: float,
              weight_decay: float):
    """The optimiser and the jitted train step and scorer of a model structure, built once:
    every seed of a run (same graph, new values) reuses them, so it compiles nothing again."""
    optimizer = (optax.adamw(learning_rate, weight_decay=weight_decay)
                 if weight_decay else optax.adam(learning_rate))
    step = jax.jit(make_sequence_train_step(graphdef, loss_name, optimizer),
                   donate_argnums=(0, 1))
    return optimizer, step, make_score_next(graphdef)


def _evaluate(score_next, history: np.ndarray, seen, target, config: Config, mask: bool):
    history = jnp.asarray(history)
    return evaluate_full_ranking(
        lambda users: score_next(history[users]), seen, target, ks=config.eval.ks,
        metrics=config.eval.metrics, chunk_size=config.eval.chunk_size, mask_train=mask,
        positive_threshold=None,
    )


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
    """Metrics of each test item ranked among `eval.sampled_negatives` sampled negatives."""
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
    rng = np.random.default_rng(config.run.seed + seed)
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


def valid_metrics(score, config: Config, split: Split) -> dict[str, float]:
    """Validation numbers of `score` (`sequences [b, max_len] -> [b, n_items]`): the validation
    item ranked from the training history, training items masked."""
    history = history_matrix(user_sequences(split.train), config.model.max_len)
    return _numbers(_evaluate(score, history, split.train, split.valid, config, True))


def test_metrics(score, config: Config, split: Split, seed: int) -> dict[str, dict]:
    """`{"test", "test_unmasked", "test_sampled"}` numbers of `score` (as in `valid_metrics`)
    from the training and validation history; `seed` is the seed's index (sampled negatives)."""
    seen = concatenate([split.train, split.valid])
    history = history_matrix(user_sequences(seen), config.model.max_len)
    return {
        "test": _numbers(_evaluate(score, history, seen, split.test, config, True)),
        "test_unmasked": _numbers(_evaluate(score, history, seen, split.test, config, False)),
        "test_sampled": (_sampled(score, history, seen, split.test, config, seed)
                         if config.eval.sampled_negatives else {}),
    }


def train_sequence_seed(config: Config, split, seed: int, *, quiet: bool = True) -> dict:
    """Trains one seed with early stopping; returns validation, test and timing numbers and
    the best parameters (`best_params`, an `nnx.State`)."""
    loss_name = _check(config)
    n_items = split.train.n_items
    max_len = config.model.max_len
    train_sequences = user_sequences(split.train)
    stride = config.model.window_stride or None
    if loss_name == "masked_item":
        windows, _ = item_windows(train_sequences, max_len, stride=stride)
        arrays = {"sequences": windows}
    else:
        windows = training_windows(train_sequences, max_len, stride=stride,
                                   targets=config.model.window_targets)
        arrays = {"inputs": windows.inputs, "targets": windows.targets}
    key = jax.random.key(config.run.seed + seed)
    model = _model(config, n_items, jax.random.fold_in(key, 0))
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer, step, score_next = _programs(graphdef, loss_name, config.train.learning_rate,
                                            config.train.weight_decay)
    opt_state = optimizer.init(params)

    valid_history = history_matrix(train_sequences, max_len)
    metric = config.train.early_stopping_metric
    rng = np.random.default_rng(config.run.seed + seed)
    best, best_epoch, best_params, history, waited = -np.inf, -1, params, [], 0
    started = time.perf_counter()
    seconds_to_best = 0.0
    step_index = 0
    for epoch in range(config.train.epochs):
        epoch_started = time.perf_counter()
        losses = []
        for batch in bucketed_batches(arrays, config.train.batch_size, rng,
                                      config.model.length_buckets):
            batch = {name: jnp.asarray(value) for name, value in batch.items()}
            params, opt_state, loss = step(params, opt_state, batch,
                                           jax.random.fold_in(key, 1_000 + step_index))
            step_index += 1
            losses.append(loss)
        mean_loss = float(jnp.mean(jnp.stack(losses)))
        if not np.isfinite(mean_loss):
            raise TrainingDivergedError(
                f"{config.model.name}: the loss became NaN/Inf at epoch {epoch} (seed {seed}); "
                "lower train.learning_rate")
        valid = _numbers(_evaluate(lambda s, p=params: score_next(p, s), valid_history,
                                   split.train, split.valid, config, True))
        if metric not in valid:
            raise ConfigError(f"key train.early_stopping_metric: {metric!r} is not computed "
                              f"(computed: {', '.join(valid)})")
        # RecBole validates sequential models without masking the history: logged too, so
        # time-to-quality can be compared under its protocol (experiments/compare_recbole.py)
        unmasked = _numbers(_evaluate(lambda s, p=params: score_next(p, s), valid_history,
                                      split.train, split.valid, config, False))
        history.append({"epoch": epoch, "seed": seed, "loss": mean_loss, **valid,
                        **{f"unmasked_{name}": value for name, value in unmasked.items()},
                        "seconds": time.perf_counter() - epoch_started})
        if not quiet:
            print(f"seed {seed} epoch {epoch}: loss {mean_loss:.4f} valid {metric} "
                  f"{valid[metric]:.4f}")
        if valid[metric] > best:
            best, best_epoch, waited = valid[metric], epoch, 0
            best_params = jax.tree.map(jnp.copy, params)
            best_valid = valid
            seconds_to_best = time.perf_counter() - started
        else:
            waited += 1
            if waited > config.train.patience:
                break
    train_seconds = time.perf_counter() - started
    eval_started = time.perf_counter()
    tests = test_metrics(lambda s: score_next(best_params, s), config, split, seed)
    return {
        "valid": best_valid, **tests, "best_epoch": best_epoch, "best_params": best_params,
        "history": history, "train_seconds": train_seconds,
        "epoch_seconds": float(np.median([h["seconds"] for h in history])),
        "seconds_to_best": seconds_to_best, "eval_seconds": time.perf_counter() - eval_started,
        "n_windows": int(len(next(iter(arrays.values())))),
    }


def _save_model(folder: Path, config: Config, split: Split, params: nnx.State) -> None:
    """Writes `model/` (best parameters stacked over seeds) and `data.npz` into `folder`."""
    checkpoints.save_checkpoint(folder / "model", 0, {"params": params},
                                {"seeds": list(range(config.train.seeds)),
                                 "model": config.model.name})
    everything = concatenate([split.train, split.valid, split.test])
    _save_data(folder / "data.npz", split, extra={
        "test_user": split.test.user, "test_item": split.test.item,
        "next_history": history_matrix(user_sequences(everything), config.model.max_len),
    })


def sequence_run(config: Config, out: str | Path, *, quiet: bool = True) -> dict[str, Any]:
    """All seeds of a sequential model; writes `config.toml`, `metrics.json`, `log.jsonl`,
    `model/` and `data.npz` (see the module docstring)."""
    _check(config)
    config = _absolute_data_path(config)
    out = Path(out)
    split, _ = load_split(config)
    seeds = list(range(config.train.seeds))
    per_seed = [train_sequence_seed(config, split, seed, quiet=quiet) for seed in seeds]
    metrics: dict[str, Any] = {}
    for part in ("test", "valid", "test_unmasked", "test_sampled"):
        metrics.update(aggregate([{part: s[part]} for s in per_seed], part))
    metrics.update({
        "per_seed": [{key: s[key] for key in ("test", "valid", "test_unmasked", "test_sampled",
                                               "best_epoch", "seconds_to_best")}
                     for s in per_seed],
        "seeds": seeds,
        "data": {"n_users": split.train.n_users, "n_items": split.train.n_items,
                 "n_train": len(split.train), "n_valid": len(split.valid),
                 "n_test": len(split.test), "n_windows": per_seed[0]["n_windows"],
                 "sampled_negatives": config.eval.sampled_negatives,
                 "sampled_by": config.eval.sampled_by},
        "timing": {"train_seconds": float(sum(s["train_seconds"] for s in per_seed)),
                   "epoch_seconds": float(np.median([s["epoch_seconds"] for s in per_seed])),
                   "eval_seconds": float(sum(s["eval_seconds"] for s in per_seed)),
                   "seconds_to_best": [s["seconds_to_best"] for s in per_seed],
                   # the whole process's peak resident memory (Linux: ru_maxrss is in KiB)
                   "peak_rss_mb": round(
                       resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
    })
    params = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                          *(s["best_params"] for s in per_seed))
    write_run_folder(out, config, metrics,
                     [line for seed in per_seed for line in seed["history"]],
                     write_more=lambda folder: _save_model(folder, config, split, params))
    return metrics


# ----------------------------------------------------------------------------- using a run


def load_sequence_run(run: Path, config: Config, data: dict[str, np.ndarray]) -> LoadedRun:
    """A sequential run's model rebuilt from its config, with the best parameters of `model/`.

    `score_all_fn(seed_index)` of the result maps internal user ids `[b]` to the scores
    `[b, n_items]` of the item after each user's `next_history` (all they have seen).
    """
    if "next_history" not in data:
        raise RunError(f"{run}: data.npz holds no next_history (written by an older version); "
                       "train the run again")
    n_seeds = config.train.seeds
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
                     data=data, scorer=scorer)


def evaluate_sequence_run(run: LoadedRun, split_name: str = "test") -> dict[str, Any]:
    """Re-evaluates a loaded sequential run's best parameters on `split_name` (`test`: also
    `test_unmasked` and `test_sampled`, computed as training did; `valid`), re-reading the data.

    Returns:
        `{split_name: means over seeds, split_name + "_std": ..., ..., "per_seed": [...]}`.
    """
    if split_name not in ("test", "valid"):
        raise RunError(f"split {split_name!r}: a sequential run evaluates 'test' or 'valid'")
    config = run.config
    split, _ = load_split(config)
    score_next = make_score_next(run.parts.graphdef)
    per_seed = []
    for seed in range(config.train.seeds):
        params = seed_slice(run.parts.params, seed)
        score = lambda s, p=params: score_next(p, s)  # noqa: E731
        entry = (test_metrics(score, config, split, seed) if split_name == "test"
                 else {"valid": valid_metrics(score, config, split)})
        per_seed.append({"seed": seed, **entry})
    out: dict[str, Any] = {}
    for part in (split_name, "test_unmasked", "test_sampled"):
        if part in per_seed[0]:
            out.update(aggregate(per_seed, part))
    return {**out, "per_seed": per_seed}
