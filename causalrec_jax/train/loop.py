"""The epoch loop: N seeds trained as one vmapped program, early stopping, checkpoints, resume.

`fit` is generic over the model, loss and optimiser: it receives a per-seed `train_epoch`
(see `step.make_train_epoch`), states stacked over a leading seed axis and an evaluation
function, and returns each seed's best parameters by the validation metric. Every epoch is one
compiled call (`jax.jit(jax.vmap(train_epoch))`, states donated); the host only reads the
epoch's loss and health flags and runs the validation evaluation.

Early stopping is per seed: a seed's best parameters are those of its best validation epoch,
and the loop ends when every seed has gone `patience` epochs without improving (or at
`epochs`). A seed that has stopped keeps its best while the others train on: a later, higher
validation value would be one a run of that seed alone never reaches. Since seeds never
interact, each seed's result equals a run of that seed alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from causalrec_jax.errors import CausalRecError, RunError
from causalrec_jax.train.checkpoint import (
    host_like,
    latest_epoch,
    restore_checkpoint,
    save_checkpoint,
    set_aside,
    set_aside_unreadable,
    steps,
)
from causalrec_jax.train.processes import broadcast_text, broadcast_values, together
from causalrec_jax.train.step import (
    OPTIMIZER_HPARAMS,
    TrainState,
    model_params,
    set_hyperparams,
)
from causalrec_jax.xla_cpu import ENVIRONMENT, check_environment, threefry_cpu

# Metrics where lower is better; every other validation metric is maximised.
LOWER_IS_BETTER = ("mse", "rmse", "mae", "loss")


class TrainingDivergedError(CausalRecError, FloatingPointError):
    """The loss or a gradient became NaN or Inf; names the epoch, seed and batch.

    Attributes:
        partial: what `fit` had from the epochs before the divergence (a `FitResult`: each
            seed's best parameters by validation — without validation, those of the last good
            epoch —, the history, the timing); None when the first epoch trained diverged
            (or a seed had no validated epoch yet). The run folder writes its model and
            metrics.
        epoch: the epoch that diverged (None where the raiser did not say).
    """

    def __init__(self, message: str, *, partial: FitResult | None = None,
                 epoch: int | None = None) -> None:
        super().__init__(message)
        self.partial = partial
        self.epoch = epoch


@dataclasses.dataclass
class FitResult:
    """What `fit` returns.

    Attributes:
        states: final `TrainState`s stacked over seeds.
        best_params: each seed's parameters at its best validation epoch (the final ones when
            there is no validation), stacked over seeds.
        best_epochs: `[n_seeds]` epoch of each seed's best parameters.
        best_values: `[n_seeds]` validation metric at those epochs (NaN without validation).
        history: one record per epoch: `epoch`, `loss` (mean over the members training),
            `loss_per_seed`, `seconds` (the epoch, all members together); with validation
            `valid` (means) and `valid_per_seed` (each member's numeric metrics); `alive` (the
            members training) once successive halving dropped some, `halving_dropped` at a
            rung. The per-seed lists follow `alive` (all members when absent); the run folder
            splits each record into one `log.jsonl` line per seed (`runs.folder`).
        timing: `first_epoch_seconds` (includes compilation), `epoch_seconds` (median of the
            later epochs), `train_seconds`, `eval_seconds`.
    """

    states: TrainState
    best_params: Any
    best_epochs: list[int]
    best_values: list[float]
    history: list[dict[str, Any]]
    timing: dict[str, float]


def lower_is_better(metric: str) -> bool:
    """True for error metrics (`mse`, `rmse`, `mae`, `loss`)."""
    return metric.split("@")[0] in LOWER_IS_BETTER


def seed_slice(tree: Any, seed: int) -> Any:
    """The pytree of one seed from a pytree stacked over seeds."""
    return jax.tree.map(lambda leaf: leaf[seed], tree)


def _improved(value: float, best: float, lower: bool) -> bool:
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value < best if lower else value > best


def _over_seeds(train_epoch: Callable[..., Any], n_seeds: int) -> Callable[..., Any]:
    """`train_epoch` over the leading seed axis: vmapped, or squeezed for a single seed.

    A vmapped gather/scatter over a batch of one compiles to slower code on CPU (measured
    0.25 s vs 0.13 s per ml-100k BPR epoch), so one seed runs the plain epoch.
    """
    if n_seeds > 1:
        return jax.vmap(train_epoch, in_axes=(0, None, 0, None))

    def single(states, data, keys, epoch):
        state, metrics = train_epoch(seed_slice(states, 0), data, keys[0], epoch)
        return jax.tree.map(lambda leaf: leaf[None], (state, metrics))

    return single


# The public name (programs built outside `fit` vmap their epoch over seeds the same way).
over_seeds = _over_seeds


def _rows(tree: Any, rows: Any) -> Any:
    """The given rows (leading axis) of every leaf."""
    rows = jnp.asarray(np.asarray(rows))
    return jax.tree.map(lambda leaf: leaf[rows], tree)


def _store_rows(best: Any, new: Any, rows: list[int], members: np.ndarray) -> Any:
    """`best` (all members) with `members` set to rows `rows` of `new` (members training)."""
    rows_array = jnp.asarray(np.asarray(rows))
    members_array = jnp.asarray(np.asarray(members))
    return jax.tree.map(
        lambda best_leaf, new_leaf: best_leaf.at[members_array].set(new_leaf[rows_array]),
        best, new,
    )


def _survivors(values: list[float], keep_fraction: float, lower: bool) -> np.ndarray:
    """Rows to keep at a halving rung: the best `keep_fraction` (at least 1), in row order."""
    keep = max(1, math.ceil(len(values) * keep_fraction))
    worst = math.inf if lower else -math.inf
    scores = [worst if math.isnan(v) else v for v in values]
    order = sorted(range(len(values)), key=lambda r: (scores[r] if lower else -scores[r], r))
    return np.asarray(sorted(order[:keep]))


def _like(states: TrainState, best_params: Any, all_keys: jax.Array, alive: np.ndarray,
          view: CheckpointView | None) -> tuple[dict[str, Any], Any]:
    """`(like, stored)`: the arrays a checkpoint of the members `alive` restores into, and
    how they are stored (`view.stored(like)`, or `like` itself)."""
    like = {"states": _rows(states, alive), "best_params": best_params,
            "keys": jax.random.key_data(all_keys)}
    return like, (like if view is None else view.stored(like))


def _restore(checkpoint_dir: str | Path | None, states: TrainState, best_params: Any,
             all_keys: jax.Array, view: CheckpointView | None = None, *, host: bool = False
             ) -> tuple[dict[str, Any], dict[str, Any], np.ndarray] | None:
    """`(arrays, meta, alive)` of the newest checkpoint of `checkpoint_dir` that reads back
    whole, JSON and arrays (shaped by the members it says are alive, as `view` stores them,
    and brought back by it; with `host`, NumPy arrays as stored); unreadable newer ones are
    set aside (`checkpoint.set_aside`). None when there is none."""
    if checkpoint_dir is None:
        return None
    while (epoch := set_aside_unreadable(checkpoint_dir)) is not None:
        older = [step for step in steps(checkpoint_dir) if step < epoch]
        _, meta = restore_checkpoint(checkpoint_dir, None, epoch, meta_only=True)
        alive = np.asarray(meta.get("alive", list(range(len(all_keys)))), np.int64)
        if host:  # shapes only: no computation on arrays that span other processes
            like = None
            stored = jax.eval_shape(lambda s, b, k, alive=alive: _like(s, b, k, alive, view)[1],
                                    states, best_params, all_keys)
        else:
            like, stored = _like(states, best_params, all_keys, alive, view)
        try:
            if host:
                arrays, meta = restore_checkpoint(checkpoint_dir, host_like(stored), epoch)
                arrays = jax.tree.map(np.asarray, arrays)
            else:
                arrays, meta = restore_checkpoint(checkpoint_dir, stored, epoch)
                arrays = arrays if view is None else view.load(arrays, like)
        except Exception as error:  # orbax and tensorstore failures alike
            set_aside(checkpoint_dir, epoch, error, older)
            continue
        return arrays, meta, alive
    return None


def place(values: Any, like: Any) -> Any:
    """Host `values` (NumPy, the whole values) as arrays sharded as `like`'s leaves: each
    process places its own devices' parts (`jax.make_array_from_callback`)."""
    return jax.tree.map(
        lambda value, target: jax.make_array_from_callback(
            np.shape(value), target.sharding, lambda index: np.asarray(value)[index]),
        values, like)


def _restore_everywhere(checkpoint_dir: str | Path | None, states: TrainState,
                        best_params: Any, all_keys: jax.Array,
                        view: CheckpointView | None = None
                        ) -> tuple[dict[str, Any], dict[str, Any], np.ndarray] | None:
    """`_restore` in one process; over several processes (`jax.distributed`), the first
    reads the checkpoint (the run folder is its own) and hands it to every process, each of
    which places its parts: the other processes need no copy of the checkpoints. When the
    first cannot read, every process stops with a line naming it."""
    if jax.process_count() == 1:
        return _restore(checkpoint_dir, states, best_params, all_keys, view)
    found = error = None
    if jax.process_index() == 0:
        try:
            found = _restore(checkpoint_dir, states, best_params, all_keys, view, host=True)
        except Exception as failure:  # every process must hear of it, or the others wait
            error = failure
    together(error, "read the checkpoints", then="the run stops")
    text = broadcast_text(None if found is None else json.dumps(
        {"meta": found[1], "alive": [int(member) for member in found[2]]}))
    if text is None:
        return None
    told = json.loads(text)
    alive = np.asarray(told["alive"], np.int64)
    like, stored = _like(states, best_params, all_keys, alive, view)
    values = (found[0] if found is not None
              else jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), stored))
    values = broadcast_values(values)
    arrays = view.load(values, like) if view is not None else place(values, like)
    return arrays, told["meta"], alive


@dataclasses.dataclass(frozen=True)
class CheckpointView:
    """How a run's arrays are stored in its checkpoints when that differs from how they
    train (a sharded run's padded, mesh-dependent tables are stored at their real size, so a
    checkpoint restores on any mesh).

    Attributes:
        save: `arrays -> arrays` as written (`{"states", "best_params", "keys"}`).
        stored: `like -> like` as stored: the arrays (or `jax.ShapeDtypeStruct`s) a
            checkpoint is read into.
        load: `(read, like) -> arrays` shaped and placed as `like` again.
    """

    save: Callable[[Any], Any]
    stored: Callable[[Any], Any]
    load: Callable[[Any, Any], Any]


def _optimizer_hparams(states: TrainState) -> dict[str, Any]:
    """The injected optimiser hyperparameters of `states` (none for an optimiser without)."""
    injected = getattr(states.opt_state, "hyperparams", None) or {}
    return {name: injected[name] for name in OPTIMIZER_HPARAMS if name in injected}


def fit(
    *,
    train_epoch: Callable[..., tuple[TrainState, dict[str, jax.Array]]],
    states: TrainState,
    data: dict[str, jax.Array],
    keys: jax.Array,
    epochs: int,
    evaluate_fn: Callable[[Any], dict[str, float]] | None = None,
    metric: str = "ndcg@10",
    patience: int = 5,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 5,
    resume: bool = False,
    progress: bool = False,
    log_fn: Callable[[dict[str, Any]], None] | None = None,
    run_epoch: Callable[..., tuple[TrainState, dict[str, jax.Array]]] | None = None,
    description: str = "",
    halving: tuple[int, float] | None = None,
    evaluate_with_member: bool = False,
    checkpoint_view: CheckpointView | None = None,
    diverged_hint: str = "",
    recorded: tuple[str, ...] = (),
) -> FitResult:
    """Trains stacked seeds epoch by epoch with early stopping on a validation metric.

    Args:
        train_epoch: `(state, data, key, epoch) -> (state, {"loss", "first_bad_batch"})` for
            one seed (vmapped here).
        states: initial `TrainState`s stacked over seeds (`[n_seeds, ...]` leaves); their
            buffers are donated to the first epoch (copy them to keep them).
        data: training arrays on the device, shared by all seeds.
        keys: `[n_seeds]` typed run keys.
        epochs: maximum number of epochs.
        evaluate_fn: `params of one seed -> {metric: value}` on the validation split, or
            None (no early stopping; the final parameters are the best).
        metric: the validation metric to select on (e.g. `ndcg@10`, `mse`). An epoch whose
            value is NaN never improves; the callers refuse at start a metric that is NaN by
            construction (a per-user ranking metric too few validation users can be ranked
            on: `eval.protocol.check_validation_selection`).
        patience: epochs without improvement before a seed stops counting.
        checkpoint_dir: where to write checkpoints (None: no checkpoints).
        checkpoint_every: write one every this many epochs, and always at the end.
        resume: continue from the newest checkpoint in `checkpoint_dir` if there is one.
        progress: show a progress bar.
        log_fn: called with each epoch's record (see `FitResult.history`).
        run_epoch: `(states, data, keys, epoch) -> (states, metrics)` over all seeds, used
            instead of compiling `train_epoch` (e.g. `step.make_streaming_epoch` for data kept
            on the host).
        description: shown at the left of the progress bar (e.g. batches per epoch).
        diverged_hint: appended to the advice of a divergence error (e.g. a causal run's
            "clip propensities (causal.propensity_clip)").
        recorded: names of further per-member values of the epoch's metrics to keep in each
            epoch's record (a list over the members training, e.g. a private run's rows).
        halving: `(rung_epochs, keep_fraction)` for successive halving: every `rung_epochs`
            epochs the members still training are ranked by their best validation value and
            only the best `keep_fraction` (at least one) go on; the rest keep their best
            parameters so far. The survivors are re-packed into a smaller vmapped program, so
            dropped members cost nothing more. Needs `evaluate_fn`.
        evaluate_with_member: call `evaluate_fn(params, member=index)` with the member's
            index in the population (for members whose evaluation reads their own traced
            hyperparameters).
        checkpoint_view: how the arrays are stored in checkpoints, when not as they train
            (`CheckpointView`; None: as they are).

    Raises:
        TrainingDivergedError: a non-finite loss or gradient; the last checkpoint is kept, and
            the error's `partial` holds the result of the good epochs (none when the first
            epoch diverged).
    """
    check_environment()  # CAUSALREC_UNROLLED_THREEFRY neither on nor off: before any epoch
    n_seeds = int(keys.shape[0])
    lower = lower_is_better(metric)
    if halving is not None and evaluate_fn is None:
        raise CausalRecError("successive halving ranks members on validation: give evaluate_fn")
    epoch_fn = run_epoch or jax.jit(_over_seeds(train_epoch, n_seeds), donate_argnums=(0,))
    best_params = jax.tree.map(jnp.copy, model_params(states))
    best_values = [math.nan] * n_seeds
    best_epochs = [-1] * n_seeds
    since_best = [0] * n_seeds
    # Rows of `states` / `keys` are the members still training: alive[row] = member index.
    alive = np.arange(n_seeds)
    all_keys = keys
    history: list[dict[str, Any]] = []
    start = 0
    restored = (_restore_everywhere(checkpoint_dir, states, best_params, all_keys,
                                    checkpoint_view) if resume else None)
    if restored is not None:
        arrays, meta, alive = restored
        states, keys = _rows(states, alive), all_keys[alive]
        # The optimiser's hyperparameters of this config, not the checkpoint's: a run resumed
        # with another train.learning_rate / weight_decay (after a divergence) uses them.
        current = _optimizer_hparams(states)
        states, best_params = arrays["states"], arrays["best_params"]
        if current:
            states = set_hyperparams(states, current)
        if not np.array_equal(np.asarray(arrays["keys"]),
                              np.asarray(jax.random.key_data(all_keys))):
            raise CausalRecError(
                f"{checkpoint_dir}: the checkpoint was written with other seeds than this "
                "config's; resume with the config the run started with"
            )
        lowering, here = meta.get("threefry_cpu"), threefry_cpu()
        if lowering is not None and here is not None and lowering != here:  # both on CPUs
            raise RunError(
                f"{checkpoint_dir}: the run was trained with {ENVIRONMENT}="
                f"{int(lowering == 'unrolled')} (the {lowering} Threefry lowering on CPUs, "
                "whose floats differ in the last bit); resume it with the same setting")
        best_values = [float(v) for v in meta["best_values"]]
        best_epochs, since_best = list(meta["best_epochs"]), list(meta["since_best"])
        history, start = list(meta["history"]), int(meta["epoch"]) + 1
        if meta.get("finished"):
            start = epochs

    def checkpoint(epoch: int, finished: bool) -> None:
        if checkpoint_dir is None:
            return
        arrays = {"states": states, "best_params": best_params,
                  "keys": jax.random.key_data(all_keys)}
        meta = {"epoch": epoch, "best_values": best_values, "best_epochs": best_epochs,
                "since_best": since_best, "history": history, "finished": finished,
                "alive": [int(m) for m in alive], "threefry_cpu": threefry_cpu()}
        if checkpoint_view is not None:
            arrays = checkpoint_view.save(arrays)
        if jax.process_count() > 1:
            # Over several processes every one takes part in gathering the whole values (as
            # `parallel.host_values` does; `parallel` sits above this layer); the first
            # writes them into its run folder (`_restore_everywhere` reads them back), and
            # all stop together when it cannot.
            from jax.experimental import multihost_utils

            arrays = multihost_utils.process_allgather(arrays, tiled=True)
            error = None
            if jax.process_index() == 0:
                try:
                    save_checkpoint(checkpoint_dir, epoch, arrays, meta)
                except Exception as failure:  # a full disk: the others must not wait
                    error = failure
            together(error, f"write the checkpoint of epoch {epoch}", then="the run stops")
            return
        save_checkpoint(checkpoint_dir, epoch, arrays, meta)

    epoch_times: list[float] = []
    eval_seconds = 0.0
    bar = tqdm(total=epochs, initial=start, disable=not progress, unit="epoch", leave=False,
               desc=description)
    epoch = start - 1
    try:
        for epoch in range(start, epochs):
            tic = time.perf_counter()
            states, out = epoch_fn(states, data, keys, jnp.asarray(epoch, jnp.int32))
            losses = np.asarray(out["loss"])  # waits for the epoch to finish
            epoch_times.append(time.perf_counter() - tic)
            first_bad = np.asarray(out["first_bad_batch"])
            if (first_bad >= 0).any():
                row = int(np.flatnonzero(first_bad >= 0)[0])
                kept = None if checkpoint_dir is None else latest_epoch(checkpoint_dir)
                if kept is not None:
                    then = (f"the checkpoint of epoch {kept} is kept: continue from it with "
                            "--resume --set train.learning_rate=<lower>")
                elif checkpoint_dir is not None:
                    then = ("no checkpoint was written before it: --resume --set "
                            "train.learning_rate=<lower> trains again from the start")
                else:
                    then = "lower train.learning_rate"
                # The best parameters of the good epochs (never donated: copies) are what a
                # run of these epochs alone would have returned.
                good = all(e >= 0 for e in best_epochs)
                partial = FitResult(
                    states=states, best_params=best_params, best_epochs=list(best_epochs),
                    best_values=list(best_values), history=list(history),
                    timing=_timing(epoch_times, eval_seconds)) if good else None
                raise TrainingDivergedError(
                    f"non-finite loss or gradient at epoch {epoch}, batch {int(first_bad[row])} "
                    f"(seed index {int(alive[row])}); training stopped; {then}"
                    f"{', or ' + diverged_hint if diverged_hint else ''}.", partial=partial,
                    epoch=epoch)
            record: dict[str, Any] = {
                "epoch": epoch,
                "loss": float(losses.mean()),
                "loss_per_seed": [float(v) for v in losses],
                "seconds": round(epoch_times[-1], 4),
            }
            if len(alive) < n_seeds:
                record["alive"] = [int(m) for m in alive]
            for name in recorded:
                record[name] = [float(v) for v in np.atleast_1d(np.asarray(out[name]))]
            if evaluate_fn is not None:
                tic = time.perf_counter()
                values = [
                    evaluate_fn(seed_slice(model_params(states), row), member=int(alive[row]))
                    if evaluate_with_member else evaluate_fn(seed_slice(model_params(states), row))
                    for row in range(len(alive))
                ]
                eval_seconds += time.perf_counter() - tic
                current = [float(v[metric]) for v in values]
                improved_rows = []
                for row, member in enumerate(alive):
                    if since_best[member] >= patience:
                        # This member has stopped: alone it would have ended here, so its
                        # best is frozen while the rest of the population trains on.
                        continue
                    if _improved(current[row], best_values[member], lower):
                        best_values[member], best_epochs[member] = current[row], epoch
                        since_best[member] = 0
                        improved_rows.append(row)
                    else:
                        since_best[member] += 1
                if improved_rows:
                    best_params = _store_rows(best_params, model_params(states), improved_rows,
                                              alive[improved_rows])
                numeric = [name for name in values[0]
                           if isinstance(values[0][name], int | float)]
                record["valid"] = {name: float(np.mean([v[name] for v in values]))
                                   for name in numeric}
                record["valid_per_seed"] = [{name: float(v[name]) for name in numeric}
                                            for v in values]
            else:
                # Without validation the latest parameters are the result: copied (the states
                # are donated to the next epoch), so a later divergence still has them.
                best_epochs = [epoch] * n_seeds
                best_params = jax.tree.map(jnp.copy, model_params(states))
            stop = evaluate_fn is not None and all(since_best[m] >= patience for m in alive)
            last = stop or epoch == epochs - 1
            if (halving is not None and not last and len(alive) > 1
                    and (epoch + 1) % halving[0] == 0):
                keep_rows = _survivors([best_values[m] for m in alive], halving[1], lower)
                record["halving_dropped"] = [int(alive[r]) for r in range(len(alive))
                                             if r not in set(keep_rows)]
                states, keys, alive = _rows(states, keep_rows), keys[keep_rows], alive[keep_rows]
            history.append(record)
            if log_fn is not None:
                log_fn(record)
            postfix = {"loss": f"{record['loss']:.4f}"}
            if "valid" in record:
                postfix[metric] = f"{record['valid'].get(metric, math.nan):.4f}"
            bar.set_postfix(postfix)
            bar.update(1)
            if last or (epoch + 1) % checkpoint_every == 0:
                checkpoint(epoch, finished=last)
            if stop:
                break
    finally:
        bar.close()
    if evaluate_fn is None:
        # Without validation the final parameters are the result (copied: the states' buffers
        # are donated to the next epoch if the caller trains on).
        best_params = jax.tree.map(jnp.copy, model_params(states))
        best_epochs = best_epochs if history else [-1] * n_seeds
    return FitResult(
        states=states,
        best_params=best_params,
        best_epochs=best_epochs,
        best_values=best_values,
        history=history,
        timing=_timing(epoch_times, eval_seconds),
    )


def _timing(epoch_times: list[float], eval_seconds: float) -> dict[str, float]:
    """`FitResult.timing` of the epochs timed (the first one includes compilation)."""
    steady = epoch_times[1:] or epoch_times
    return {
        "first_epoch_seconds": round(epoch_times[0], 4) if epoch_times else 0.0,
        "epoch_seconds": round(float(np.median(steady)), 4) if steady else 0.0,
        "train_seconds": round(float(sum(epoch_times)), 4),
        "eval_seconds": round(eval_seconds, 4),
        "epochs_run": len(epoch_times),
    }
