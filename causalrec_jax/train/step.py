"""The pure training step and the scanned epoch (DESIGN §1, "Train step").

`train_step(state, batch, key) -> (state, metrics)` folds `state.step` into the run key, so a
Python loop over steps, one `lax.scan` over an epoch and a resumed run draw the same negatives
and dropout masks and end with identical parameters. A step whose loss or gradients are not
finite leaves the state unchanged and says so in its metrics; the epoch then stops updating
and reports the first bad batch, so the caller can stop with a clear message and keep the last
good checkpoint.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from causalrec_jax import streams
from causalrec_jax.config import TrainConfig
from causalrec_jax.errors import ConfigError
from causalrec_jax.train.objectives import Batch, LossFn

# Names of data arrays every step sees whole instead of batched.
SHARED = "shared_"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a training run carries from step to step (a pytree).

    Attributes:
        params: the model's trainable parameters (a pytree of arrays).
        opt_state: the optimiser's state.
        step: `[]` int32 number of updates applied.
        hparams: traced hyperparameters passed to the loss as `hparams=` (or None).
    """

    params: Any
    opt_state: Any
    step: jax.Array
    # Traced hyperparameters the loss reads (`{name: [] float32}`, e.g. the causal knobs
    # `propensity_clip`, `dr_mse_lambda`); None for a loss that reads none. Part of the state
    # so that each member of a vmapped population carries its own values.
    hparams: Any = None
    # The exponential moving average of `params` over the applied steps (`with_average`,
    # `train.ema_decay`), debiased, so it is the model at every step; None when not kept.
    average: Any = None

    def replace(self, **changes: Any) -> TrainState:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def make_schedule(config: TrainConfig, total_steps: int, learning_rate: Any = None) -> Any:
    """The learning rate of `[train]` as an optax schedule over `total_steps` (or a number)."""
    rate = config.learning_rate if learning_rate is None else learning_rate
    if config.lr_schedule == "constant":
        return rate
    total_steps = max(total_steps, 1)
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(rate, decay_steps=total_steps)
    warmup = min(config.warmup_steps, total_steps - 1)
    return optax.warmup_cosine_decay_schedule(
        0.0, rate, warmup_steps=warmup, decay_steps=total_steps
    )


class GuardedAdamState(NamedTuple):
    """`optax.ScaleByAdamState`'s fields (same names, so checkpoints read either way), for the
    Adam of `scale_by_guarded_adam`, which applies the step's guard itself."""

    count: jax.Array
    mu: Any
    nu: Any


def scale_by_guarded_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> optax.GradientTransformationExtraArgs:
    """`optax.scale_by_adam` whose update takes `apply=` (a boolean, traced or not): when it
    is False the moments and the count come back unchanged.

    The same formulas as optax's (its `tree` helpers): with `apply` True the updates and the
    state are those of `optax.scale_by_adam`, bitwise in `tests/train/test_step.py` (inside a
    whole training program XLA may fuse the arithmetic differently, a last-bit matter). Why
    it exists: a step that keeps its old state when a gradient is not finite
    (`guarded_update`) used to select between the new and the old state after the update;
    the parameters' update then read moments that were never stored, and XLA recomputed them
    from the old ones, which it had to copy first because the new ones overwrite them in
    place. Here the kept moments are the ones the update reads, so no table is copied
    (`bench/debias.py`, case `yahoo_proxy_dr_jl_core`). With `apply` False the returned
    updates are those of a step from the kept moments, which the caller discards
    (`guarded_update` keeps its parameters).
    """
    plain = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root)

    def init(params):
        state = plain.init(params)
        return GuardedAdamState(count=state.count, mu=state.mu, nu=state.nu)

    def update(updates, state, params=None, *, apply=True, **extra_args):
        del params, extra_args

        def keep(new, old):
            return jnp.where(apply, new, old)

        mu = jax.tree.map(keep, optax.tree.update_moment(updates, state.mu, b1, 1), state.mu)
        nu = jax.tree.map(
            keep, optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2), state.nu)
        stepped = optax.safe_increment(state.count)
        count = keep(stepped, state.count)
        # corrected by the step's count either way: finite (and discarded) when not applied
        mu_hat = optax.tree.bias_correction(mu, b1, stepped)
        nu_hat = optax.tree.bias_correction(nu, b2, stepped)
        scaled = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu_hat, nu_hat)
        return scaled, GuardedAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(init, update)


def guarded_update(
    optimizer: optax.GradientTransformation, grads: Any, params: Any, opt_state: Any,
    apply: Any,
) -> tuple[Any, Any]:
    """`(params, opt_state)` after one step of `optimizer` where `apply` (a traced boolean)
    holds, else the inputs unchanged, bitwise.

    The optimiser is told `apply` (`optax` passes extra arguments down its chains): an Adam
    of `scale_by_guarded_adam` keeps its own moments; every other part of the state, and the
    parameters, are selected here (any optax optimiser works, at the cost of reading the old
    state once more).
    """
    updates, new_state = optax.with_extra_args_support(optimizer).update(
        grads, opt_state, params, apply=apply)
    new_params = jax.tree.map(lambda new, old: jnp.where(apply, new, old),
                              optax.apply_updates(params, updates), params)

    def keep(new, old):
        if isinstance(new, GuardedAdamState):
            return new  # guarded inside (a second select would recompute its moments)
        return jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)

    def guarded(node):
        return isinstance(node, GuardedAdamState)

    return new_params, jax.tree.map(keep, new_state, opt_state, is_leaf=guarded)


# Hyperparameters that live in the optimiser state (optax.inject_hyperparams), so each member
# of a vmapped population can carry its own values through one compiled program.
OPTIMIZER_HPARAMS = ("learning_rate", "weight_decay")


def make_optimizer(
    config: TrainConfig,
    learning_rate: Any = None,
    total_steps: int = 1,
    weight_decay: Any = None,
) -> optax.GradientTransformation:
    """The optax optimiser of `[train]`, with its hyperparameters in the optimiser state.

    Adam's second-moment decay is `train.adam_beta2`. `adam` and `sgd` add `weight_decay *
    params` to the gradient (L2 regularisation, as RecBole's `weight_decay`); `adamw` decays the
    weights apart from the gradient (Loshchilov & Hutter, ICLR 2019). The learning rate follows
    `train.lr_schedule` over `total_steps`.
    `learning_rate` and `weight_decay` (defaults from the config) are injected hyperparameters
    (`optax.inject_hyperparams`): they are arrays in `opt_state.hyperparams`, so a population
    can give each member its own values (`set_hyperparams`) and `jax.vmap` over them.
    """
    if config.optimizer not in ("adam", "adamw", "sgd"):
        raise ConfigError(f"key train.optimizer: unknown optimiser {config.optimizer!r}")
    factor = make_schedule(config, total_steps, 1.0)

    def build(learning_rate, weight_decay):
        rate = (lambda count: learning_rate * factor(count)) if callable(factor) else learning_rate
        step = optax.scale_by_learning_rate(rate)
        if config.optimizer == "adamw":
            return optax.chain(scale_by_guarded_adam(b2=config.adam_beta2),
                               optax.add_decayed_weights(weight_decay), step)
        decay = optax.add_decayed_weights(weight_decay)
        if config.optimizer == "adam":
            return optax.chain(decay, scale_by_guarded_adam(b2=config.adam_beta2), step)
        return optax.chain(decay, step)

    return optax.inject_hyperparams(build)(
        learning_rate=config.learning_rate if learning_rate is None else learning_rate,
        weight_decay=config.weight_decay if weight_decay is None else weight_decay,
    )


def set_hyperparams(state: TrainState, values: dict[str, Any]) -> TrainState:
    """A state whose injected optimiser hyperparameters (`OPTIMIZER_HPARAMS`) are `values`.

    Works on one state or on states stacked over a population (values `[n_members]`).
    """
    hyperparams = dict(state.opt_state.hyperparams)
    for name, value in values.items():
        if name not in hyperparams:
            raise ConfigError(f"{name} is not an optimiser hyperparameter ({OPTIMIZER_HPARAMS})")
        old = hyperparams[name]
        hyperparams[name] = jnp.broadcast_to(jnp.asarray(value, old.dtype), old.shape)
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


def init_state(
    params: Any, optimizer: optax.GradientTransformation, hparams: Any = None, *,
    average: bool = False,
) -> TrainState:
    """A fresh state at step 0 (with the loss's traced `hparams`, if it reads any);
    `average`: keeping a moving average of the parameters (`with_average`), started at them
    (the first applied step replaces it whole)."""
    step = jnp.zeros((), jnp.int32)
    return TrainState(params=params, opt_state=optimizer.init(params), step=step,
                      hparams=hparams,
                      average=jax.tree.map(jnp.copy, params) if average else None)


def model_params(state: TrainState) -> Any:
    """The parameters a run evaluates and saves: the moving average when the state keeps one
    (`with_average`), else the trained parameters."""
    return state.params if state.average is None else state.average


def with_average(
    train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]], decay: float
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """`train_step` that also keeps the exponential moving average of the parameters
    (`TrainState.average`; Polyak averaging with exponential weights, as Adam debiases its
    moments): after the t-th applied step the average is `Σ_s d^(t-s) θ_s / Σ_s d^(t-s)`
    over the parameters θ_1..θ_t after each applied step, computed recursively as `a_t =
    a_(t-1) + w_t (θ_t - a_(t-1))` with `w_t = (1 - d) / (1 - d^t)` (so `a_1 = θ_1`, to
    float32 rounding). A step that is not applied (`apply` False, or not finite) leaves it
    unchanged; a wrapped step that takes no `apply` is kept whole where `apply` is False. Averaging
    reads only the trained parameters, so it is post-processing: free under DP.

    The state passed in must carry an average (`init_state(..., average=True)`); `step`
    counts applied steps. `decay` 0 (`train.ema_decay`'s default) returns `train_step` itself.
    """
    if decay == 0:
        return train_step
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"key train.ema_decay: expected a number in (0, 1), got {decay}")
    takes_apply = "apply" in inspect.signature(train_step).parameters

    def averaged_step(state: TrainState, batch: Any, key: jax.Array, apply: Any = True):
        if takes_apply:
            new, metrics = train_step(state, batch, key, apply=apply)
        else:  # the caller's `apply` is this wrapper's to honour (`make_scan_batches`)
            new, metrics = train_step(state, batch, key)
            new = jax.tree.map(lambda a, b: jnp.where(apply, a, b),
                               new.replace(average=state.average), state)
        moved = new.step != state.step
        count = new.step.astype(jnp.float32)
        d = jnp.float32(decay)
        weight = jnp.where(moved, (1 - d) / -jnp.expm1(count * jnp.log(d)), 0.0)

        def blend(average, params):
            return average + (weight * (params - average)).astype(average.dtype)

        average = jax.tree.map(blend, state.average, new.params)
        return new.replace(average=average), metrics

    return averaged_step


def all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def make_train_step(
    loss_fn: LossFn, optimizer: optax.GradientTransformation
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds `train_step(state, batch, key, apply=True) -> (state, metrics)`, pure and
    jit-able.

    `metrics` has `loss` and `finite` (False when the loss or a gradient was NaN/Inf, in which
    case the returned state is the input state). A state carrying `hparams` passes them to
    `loss_fn(params, batch, key, hparams=...)`; the gradient is taken in `params` only.
    `apply` (default True; a traced boolean in `make_scan_batches`) set False also keeps the
    state: the scanned epoch's way to skip padding batches and every step after a bad one,
    in the same single pass over the state (`guarded_update`).
    """

    def train_step(state: TrainState, batch: Batch, key: jax.Array, apply: Any = True):
        step_key = streams.index(key, state.step)
        extra = {} if state.hparams is None else {"hparams": state.hparams}
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, step_key, **extra
        )
        finite = jnp.isfinite(loss) & all_finite(grads)
        ok = finite & apply
        params, opt_state = guarded_update(optimizer, grads, state.params, state.opt_state, ok)
        state = TrainState(params=params, opt_state=opt_state,
                           step=state.step + ok.astype(state.step.dtype), hparams=state.hparams)
        return state, {**aux, "loss": loss, "finite": finite}

    return train_step


def _stable_sorts(sort_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`values [..., n]` sorted stably by each round's `sort_keys [..., rounds, n]` in turn
    (NumPy: the host half of `permutation`)."""
    sort_keys = np.asarray(sort_keys)
    values = np.array(np.broadcast_to(values, sort_keys.shape[:-2] + values.shape[-1:]))
    positions = np.arange(values.shape[-1], dtype=np.uint64)
    for round_keys in np.moveaxis(sort_keys, -2, 0):
        # a stable argsort: each key above its position in one uint64, sorted (5x NumPy's
        # stable argsort of 311,286 keys)
        packed = (round_keys.astype(np.uint64) << np.uint64(32)) | positions
        packed.sort(axis=-1)
        order = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
        values = np.take_along_axis(values, order, axis=-1)
    return values


def permutation(key: jax.Array, n: int, *, host_sort: bool = False) -> jax.Array:
    """`jax.random.permutation(key, n)`, element for element; with `host_sort` its sorts run
    in NumPy (`jax.pure_callback`, once per call) instead of XLA.

    jax shuffles by sorting on random 32-bit keys, in `ceil(3 log n / log(2^32 - 1))` rounds
    (a stable sort each, fresh keys from splitting `key`). XLA's CPU sort calls a comparator
    per comparison: 5 seeds' orders of 311,286 rows took 0.69 s an epoch on the 2-core CPU,
    17% of a DR-JL epoch at Yahoo! R3 size. Here the same keys are drawn on the device and
    the same stable sorts done by NumPy, so the order, and every run's numbers, are those of
    `jax.random.permutation` (tested). Works under `jax.vmap` (the callback sorts every
    member's keys at once)."""
    if not host_sort:
        return jax.random.permutation(key, n)
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
    keys = []
    for _ in range(rounds):
        key, subkey = jax.random.split(key)
        keys.append(jax.random.bits(subkey, (n,), jnp.uint32))
    values = jnp.arange(n)
    if not keys:
        return values
    return jax.pure_callback(_stable_sorts, jax.ShapeDtypeStruct(values.shape, values.dtype),
                             jnp.stack(keys), values, vmap_method="expand_dims")


def host_sorts() -> bool:
    """Whether `epoch_order` sorts on the host: when JAX computes on CPUs, whose XLA sort is
    slow (`permutation`), unless JAX's persistent compilation cache is on (it stores no
    program with a host callback: there the cached program, with XLA's sort, is faster to
    come by than a compiled one)."""
    return jax.default_backend() == "cpu" and not jax.config.jax_compilation_cache_dir


def epoch_order(key: jax.Array, epoch: jax.Array, n_rows: int, batch_size: int, *,
                host_sort: bool = False) -> jax.Array:
    """`[n_batches, batch_size]` row indices of one epoch; padding slots hold `n_rows`.

    The order is drawn from `index(derive(key, streams.Epoch.ORDER), epoch)`, so the device
    path and the streaming path (and a resumed run) visit the same rows in the same batches.
    `host_sort`: the permutation's sorts run in NumPy, with the same result (`permutation`).
    """
    n_batches = max(1, -(-n_rows // batch_size))
    order_key = streams.index(streams.derive(key, streams.Epoch.ORDER), epoch)
    order = permutation(order_key, n_rows, host_sort=host_sort).astype(jnp.int32)
    padding = jnp.full(n_batches * batch_size - n_rows, n_rows, jnp.int32)
    return jnp.concatenate([order, padding]).reshape(n_batches, batch_size)


def gather_batches(rows: Batch, order: jax.Array, n_rows: int) -> Batch:
    """Rows picked by `order [n_batches, batch_size]`, with `mask` False on padding slots."""
    valid = order < n_rows
    safe = jnp.where(valid, order, 0)
    batches = {name: values[safe] for name, values in rows.items()}
    batches["mask"] = valid & batches.get("mask", True)
    return batches


def epoch_batches(
    key: jax.Array, data: Batch, n_rows: int, batch_size: int, epoch: int = 0
) -> tuple[Batch, int]:
    """Shuffles the rows and cuts them into `[n_batches, batch_size]` with a padding mask."""
    order = epoch_order(key, epoch, n_rows, batch_size)
    return gather_batches(data, order, n_rows), order.shape[0]


def make_scan_batches(
    train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]],
) -> Callable[..., tuple[TrainState, jax.Array, jax.Array]]:
    """Builds `scan_batches(state, batches, shared, key, first_bad, start) -> (state,
    first_bad, batch_losses)`: the steps of consecutive batches as one `lax.scan`.

    After a non-finite step the remaining steps are skipped, so the state stays at the last
    good one; `first_bad` is the epoch-level index (`start` + position) of that batch, or -1.
    """

    # A step of `make_train_step` skips a step itself (`apply=`), in one pass over the state.
    takes_apply = "apply" in inspect.signature(train_step).parameters

    def scan_batches(state, batches, shared, key, first_bad, start):
        step_key = streams.derive(key, streams.Epoch.STEPS)
        n_batches = jax.tree.leaves(batches)[0].shape[0]

        def body(carry, inputs):
            state, first_bad = carry
            index, batch = inputs
            healthy = first_bad < 0
            # An all-padding batch (streaming tail) must not count as a step.
            apply = healthy & jnp.any(batch["mask"])
            if takes_apply:
                state, metrics = train_step(state, {**batch, **shared}, step_key, apply=apply)
            else:
                new_state, metrics = train_step(state, {**batch, **shared}, step_key)
                state = jax.tree.map(lambda new, old: jnp.where(apply, new, old), new_state,
                                     state)
            first_bad = jnp.where(healthy & ~metrics["finite"], index, first_bad)
            return (state, first_bad), jnp.where(healthy & metrics["finite"], metrics["loss"], 0.0)

        indices = start + jnp.arange(n_batches, dtype=jnp.int32)
        (state, first_bad), losses = jax.lax.scan(body, (state, first_bad), (indices, batches))
        return state, first_bad, losses

    return scan_batches


def split_data(data: Batch) -> tuple[Batch, Batch]:
    """(per-row arrays, `shared_` arrays)."""
    rows = {name: values for name, values in data.items() if not name.startswith(SHARED)}
    shared = {name: values for name, values in data.items() if name.startswith(SHARED)}
    return rows, shared


def epoch_loss(batch_losses: jax.Array, first_bad: jax.Array) -> jax.Array:
    """Mean loss over the epoch's batches before the first non-finite one."""
    n_batches = batch_losses.shape[-1]
    n_good = jnp.where(first_bad < 0, n_batches, first_bad)
    return batch_losses.sum(axis=-1) / jnp.maximum(n_good, 1)


def make_train_epoch(
    train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]],
    *,
    n_rows: int,
    batch_size: int,
    batch_sharding: Any = None,
) -> Callable[[TrainState, Batch, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds `train_epoch(state, data, key, epoch) -> (state, metrics)`: one `lax.scan`.

    `data` holds `[n_rows]` arrays on the device, shuffled and batched, and arrays whose names
    start with `shared_` (e.g. `shared_seen_mask`), passed whole to every step. The epoch's
    order comes from the key and `epoch` (`epoch_order`), so resuming at an epoch boundary
    replays the same order. `metrics`: `loss` (mean over the epoch's good batches) and
    `first_bad_batch` (-1 when every batch was finite). For data that does not fit on the
    device, see `make_streaming_epoch`, which gives the same numbers. `batch_sharding`: where
    the epoch's `[n_batches, batch_size]` rows live (a sharded run's `parallel.batch_sharding`:
    each batch split over the mesh's data axis); None: wherever the compiler puts them.
    """
    scan_batches = make_scan_batches(train_step)
    # On CPUs the epoch's order is sorted by NumPy (`permutation`, the same order); a sharded
    # program keeps XLA's sort (a host callback would have to run on one device of the mesh).
    host_sort = batch_sharding is None and host_sorts()

    def train_epoch(state: TrainState, data: Batch, key: jax.Array, epoch: jax.Array):
        rows, shared = split_data(data)
        order = epoch_order(key, epoch, n_rows, batch_size, host_sort=host_sort)
        batches = gather_batches(rows, order, n_rows)
        if batch_sharding is not None:
            batches = jax.lax.with_sharding_constraint(batches, batch_sharding)
        state, first_bad, losses = scan_batches(
            state, batches, shared, key, jnp.asarray(-1, jnp.int32), jnp.asarray(0, jnp.int32)
        )
        return state, {"loss": epoch_loss(losses, first_bad), "first_bad_batch": first_bad}

    return train_epoch


def make_streaming_epoch(
    train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]],
    *,
    n_rows: int,
    batch_size: int,
    segment_batches: int,
    vmap_seeds: bool,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """An epoch over host (numpy) data, `segment_batches` batches per device transfer.

    For training data too large for the device: each epoch's order is drawn on the device (as
    in `make_train_epoch`), brought to the host, and each segment's rows are gathered there,
    sent over and run as one jitted `lax.scan`. States stay on the device. Same batches, same
    keys: the parameters equal those of the all-on-device epoch.

    Returns:
        `run_epoch(states, data, keys, epoch) -> (states, metrics)` over stacked seeds (a host
        function, not jit-able; its pieces are jitted), `data` numpy arrays.
    """
    scan_batches = make_scan_batches(train_step)
    axes = (0, 0, None, 0, 0, None) if vmap_seeds else None
    segment_fn = jax.jit(jax.vmap(scan_batches, in_axes=axes) if vmap_seeds else scan_batches,
                         donate_argnums=(0,))
    order_fn = jax.jit(
        jax.vmap(lambda key, epoch: epoch_order(key, epoch, n_rows, batch_size,
                                                host_sort=host_sorts()), (0, None))
    )

    def run_epoch(states, data, keys, epoch):
        rows, shared = split_data(data)
        rows = {name: np.asarray(values) for name, values in rows.items()}
        shared = jax.tree.map(jnp.asarray, shared)
        orders = np.asarray(order_fn(keys, jnp.asarray(epoch, jnp.int32)))  # [seeds, n_b, b]
        n_seeds, n_batches = orders.shape[:2]
        first_bad = jnp.full((n_seeds,), -1, jnp.int32)
        losses = []
        for start in range(0, n_batches, segment_batches):
            order = orders[:, start : start + segment_batches]
            if order.shape[1] < segment_batches:  # pad with empty batches: one compiled shape
                pad = np.full((n_seeds, segment_batches - order.shape[1], batch_size), n_rows)
                order = np.concatenate([order, pad.astype(order.dtype)], axis=1)
            valid = order < n_rows
            safe = np.where(valid, order, 0)
            batches = {name: jnp.asarray(values[safe]) for name, values in rows.items()}
            batches["mask"] = jnp.asarray(valid)
            if vmap_seeds:
                states, first_bad, segment = segment_fn(
                    states, batches, shared, keys, first_bad, jnp.int32(start))
            else:
                state, bad, segment = segment_fn(
                    jax.tree.map(lambda leaf: leaf[0], states),
                    {name: values[0] for name, values in batches.items()},
                    shared, keys[0], first_bad[0], jnp.int32(start))
                states = jax.tree.map(lambda leaf: leaf[None], state)
                first_bad, segment = bad[None], segment[None]
            losses.append(segment)
        batch_losses = jnp.concatenate(losses, axis=1)[:, :n_batches]
        return states, {"loss": epoch_loss(batch_losses, first_bad), "first_bad_batch": first_bad}

    return run_epoch
