"""Retrain validity of counterfactual explanations (ACCENT: Tran, Ghazimatin & Saha Roy,
SIGIR 2021): remove an explanation's interactions from the training data, train the model
again, and see whether the explained item really leaves the user's top-K.

A removal is a per-row mask on the run's own training arrays (same shapes, same batches: a
removed row is a dead slot of its batch, left out of the loss's mean) and, for the samplers
that skip a user's seen items, the removed pairs unmarked in the seen mask (a removed item may
be drawn as a negative, as it would be had the user never had it). So one compiled program
trains every (seed, edit) pair at once: `jax.vmap` over edits inside `jax.vmap` over seeds, the
epochs under `lax.scan`, each epoch the training core's own `train.step.make_train_epoch` with
the run's own objective and optimiser (`tasks.ordinary`'s program of the run's static
signature). With nothing removed it is the ordinary run's training, step for step: the run's
initial parameters, keys, batches and negatives (`tests/runs/test_retrain.py`).

Ordinary runs stop early on validation. A retrain trains a fixed number of epochs (the
counterfactual models have no validation of their own): the caller passes the explained run's
selected epoch count (its `best_epoch + 1`), so that the unedited retrain of the explained
seed is the explained model. Only naive (non-causal) runs of the ID models retrain here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from causalrec_jax.config import Config, TrainConfig
from causalrec_jax.data.dataset import Split
from causalrec_jax.errors import ConfigError
from causalrec_jax.eval.catalogue import pessimistic_rank
from causalrec_jax.models.base import make_scorers
from causalrec_jax.tasks.ordinary import (
    ProgramSpec,
    _objective,
    _optimizer,
    program_setup,
)
from causalrec_jax.train.step import (
    make_train_epoch,
    make_train_step,
    model_params,
    with_average,
)


@dataclasses.dataclass
class RetrainSetup:
    """A run's training, ready to be repeated on edited data (built by `retrain_setup`).

    Attributes:
        spec: the static signature of the run's program (`tasks.ordinary.ProgramSpec`).
        graphdef: the model's structure.
        constants: the model's constants (feature tables, graphs).
        states: `TrainState`s stacked over seeds, as `train_split` starts them.
        keys: `[n_seeds]` training keys (`streams.Run.TRAIN` of each seed's key).
        seeds: the seeds.
        data: the training arrays (`[n_rows]` rows and `shared_` arrays), numpy.
        users: `[n_rows]` the user of each training row; `items` likewise.
    """

    spec: ProgramSpec
    graphdef: Any
    constants: Any
    states: Any
    keys: jax.Array
    seeds: list[int]
    data: dict[str, Any]
    users: np.ndarray
    items: np.ndarray


def retrain_setup(config: Config, split: Split) -> RetrainSetup:
    """The initial states, keys and data of `config`'s seeds on `split` exactly as
    `tasks.ordinary.train_split` builds them (naive runs), for `retrain`.

    Raises:
        ConfigError: a causal method other than naive (their extra arrays and propensities are
            not rebuilt here), or a seen-item table too large for the dense mask.
    """
    if config.causal.method != "naive":
        raise ConfigError(f"causal.method = {config.causal.method!r}: retraining repeats naive "
                          "runs only")
    # retraining repeats the run on one device (its vmapped edits are the parallelism here),
    # whatever mesh trained it: the same model up to the order of float sums
    config = dataclasses.replace(config, parallel=dataclasses.replace(config.parallel, mesh=()))
    setup = program_setup(config, split)
    data: dict[str, Any] = {name: value for name, value in setup.data.items()
                            if name not in setup.arrays}
    data.update(setup.arrays)  # numpy rows: an edit masks them
    if "shared_seen_mask" in data:
        data["shared_seen_mask"] = np.asarray(data["shared_seen_mask"])
    elif any(name.startswith("shared_seen") for name in data):
        train = split.train
        raise ConfigError(f"{train.n_users} users x {train.n_items} items: retraining edits "
                          "a dense seen-item mask, too large here")
    return RetrainSetup(spec=setup.spec, graphdef=setup.parts.graphdef,
                        constants=setup.parts.constants, states=setup.states, keys=setup.keys,
                        seeds=setup.seeds, data=data, users=np.asarray(setup.arrays["users"]),
                        items=np.asarray(setup.arrays["items"]))


def edit_arrays(setup: RetrainSetup, removals: list[dict[int, Any]]) -> dict[str, np.ndarray]:
    """The per-edit arrays of `removals` (one `{user: items}` dict per edit, every training
    row of each (user, item) pair removed): `mask [n_edits, n_rows]` bool and, when the run
    skips seen negatives, `shared_seen_mask [n_edits, n_users, n_items]` with the removed pairs
    unmarked."""
    n_items = setup.spec.n_items
    row_keys = setup.users.astype(np.int64) * n_items + setup.items
    masks, seen = [], []
    base_seen = setup.data.get("shared_seen_mask")
    for removal in removals:
        pairs = np.asarray([int(u) * n_items + int(i) for u, items in removal.items()
                            for i in np.atleast_1d(items)], np.int64)
        masks.append(~np.isin(row_keys, pairs))
        if base_seen is not None:
            edited = base_seen.copy()
            edited[pairs // n_items, pairs % n_items] = False
            seen.append(edited)
    out = {"mask": np.stack(masks)}
    if base_seen is not None:
        out["shared_seen_mask"] = np.stack(seen)
    return out


@functools.lru_cache(maxsize=8)
def _retrain_program(spec: ProgramSpec, epochs: int, edit_names: tuple[str, ...],
                     data_names: tuple[str, ...]):
    """Jitted `(states [S], keys [S], data, edits [M]) -> params [S, M]`: every seed trained
    on every edit, `epochs` epochs each (cached by the static signature)."""
    optimizer = _optimizer(spec, TrainConfig())
    train_epoch = make_train_epoch(
        with_average(make_train_step(_objective(spec), optimizer), spec.ema_decay),
        n_rows=spec.n_rows, batch_size=spec.batch_size)

    def one(state, key, data, edit):
        data = {**data, **edit}

        def body(state, epoch):
            state, metrics = train_epoch(state, data, key, epoch)
            return state, metrics["first_bad_batch"]

        state, bad = jax.lax.scan(body, state, jnp.arange(epochs, dtype=jnp.int32))
        return model_params(state)["prediction"], jnp.max(bad)

    over_edits = jax.vmap(one, in_axes=(None, None, None, 0))
    return jax.jit(jax.vmap(over_edits, in_axes=(0, 0, None, None)))


def retrain(setup: RetrainSetup, edits: dict[str, np.ndarray], *, epochs: int,
            chunk_size: int | None = None) -> tuple[Any, np.ndarray]:
    """Trains every seed of `setup` on every edit (`edit_arrays`) for `epochs` epochs.

    Args:
        setup: `retrain_setup`.
        edits: per-edit arrays with a leading `[n_edits]` axis.
        epochs: epochs per model (the explained run's `best_epoch + 1`).
        chunk_size: edits per compiled call (the last chunk padded); None: all at once.

    Returns:
        `(params, first_bad)`: the model parameters with leaves `[n_seeds, n_edits, ...]`, and
        `[n_seeds, n_edits]` the first non-finite batch of any epoch (-1: all finite).
    """
    n_edits = len(next(iter(edits.values())))
    chunk = n_edits if chunk_size is None else min(chunk_size, n_edits)
    program = _retrain_program(setup.spec, int(epochs), tuple(sorted(edits)),
                               tuple(sorted(setup.data)))
    data = {name: jnp.asarray(value) if isinstance(value, np.ndarray) else value
            for name, value in setup.data.items() if name not in edits}
    outputs = []
    for start in range(0, n_edits, chunk):
        part = {name: value[start: start + chunk] for name, value in edits.items()}
        size = len(part["mask"])
        if size < chunk:  # one compiled shape: pad with copies of the last edit
            part = {name: np.concatenate([value, np.repeat(value[-1:], chunk - size, 0)])
                    for name, value in part.items()}
        params, bad = program(setup.states, setup.keys, data,
                              {name: jnp.asarray(value) for name, value in part.items()})
        outputs.append(jax.tree.map(lambda leaf, size=size: leaf[:, :size], (params, bad)))
    params = jax.tree.map(lambda *leaves: jnp.concatenate(leaves, axis=1),
                          *(out[0] for out in outputs))
    bad = np.concatenate([np.asarray(out[1]) for out in outputs], axis=1)
    return params, bad


def target_ranks(setup: RetrainSetup, params: Any, users: Any, targets: Any,
                 known: np.ndarray) -> np.ndarray:
    """The 0-based rank (pessimistic ties) of `targets [M, Q]` for `users [M, Q]` in each
    retrained model (`params` leaves `[S, M, ...]`): edit m's queries read its own models.
    `known [n_users, n_items]` bool marks the items left out of each ranking (the user's
    training, validation and test items; removed ones stay left out). Returns `[S, M, Q]`."""
    return np.asarray(_ranks(setup.graphdef, params, setup.constants, jnp.asarray(users),
                             jnp.asarray(targets), jnp.asarray(known)))


@functools.partial(jax.jit, static_argnums=0)
def _ranks(graphdef, params, constants, users, targets, known):
    def one_model(model_params, users, targets):
        scores = make_scorers(graphdef, constants).score_all(model_params, users)  # [Q, n]

        def rank(row, target, user):
            return pessimistic_rank(row, target, known[user])

        return jax.vmap(rank)(scores, targets, users)

    over_edits = jax.vmap(one_model, in_axes=(0, 0, 0))
    return jax.vmap(over_edits, in_axes=(0, None, None))(params, users, targets)
