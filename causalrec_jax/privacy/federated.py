"""Federated training with simulated clients: FedAvg and DP-FedAvg through the one core.

Each user is a client (McMahan et al., AISTATS 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data"). A round

1. samples clients by Poisson sampling (`dpsgd.sample_units`: each user with probability
   `train.batch_size / n_users`, padded to a fixed capacity with a mask), a vmap axis;
2. on each sampled client, starting from the server's shared parameters (item rows, dense
   layers) and the client's own user rows, takes `local_steps` steps of SGD at
   `client_learning_rate` on the client's own rows (the ordinary objective of the run, its
   own sampled negatives at each step), over the rows the client reads alone
   (`dpsgd.local_objective`);
3. the client sends its message (`client_message`): the ids of the item rows it read and the
   change of those rows and of the dense parameters, as the pseudo-gradient `-(change)`. Its
   user rows never leave it: they are its state, kept for its next round (held here in the
   server's arrays only because the simulation runs on one machine);
4. the server sums the messages (clipped to norm C and noised with std `noise * C` for
   DP-FedAvg, McMahan et al., ICLR 2018; neither for FedAvg), divides by the expected number
   of clients, and applies the run's optimiser to that pseudo-gradient (FedOpt, Reddi et al.,
   ICLR 2021: SGD at learning rate 1 is FedAvg's averaging; Adam is FedAdam).

DP-FedAvg is accounted as DP-SGD at user level (`accounting`): one Poisson-sampled Gaussian
mechanism per round.

On a real deployment the same round function splits at the message: steps 2-3 run on each
device (its data, its user rows and a copy of the item rows it needs; the device downloads the
shared parameters, or only the rows it reads), `client_message` is what crosses the wire,
and step 4 runs on the server (with secure aggregation, the server sees only the sum).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from causalrec_jax import streams
from causalrec_jax.privacy.dpsgd import (
    DPSpec,
    check_row_tables,
    local_objective,
    make_private_step,
    only_trained_items,
    private_norm,
    table_kinds,
    trained_positions,
    unique_ids,
)
from causalrec_jax.train.objectives import with_drawn_negatives
from causalrec_jax.train.step import TrainState


def make_client_update(graphdef: Any, loss_name: str, *, n_users: int, n_items: int,
                       n_negatives: int, local_steps: int, client_learning_rate: float,
                       one_user: bool = False) -> Callable[..., Any]:
    """Builds `client_update(params, constants, batch, key, hparams) -> (pseudo_gradient,
    ids, loss, norm, user_rows)`: one client's round (`batch [k]`: its rows). `local_steps`
    steps of SGD at `client_learning_rate` on the mean of its rows' losses, over its gathered
    rows (`ids`: the users and the items, negatives of every step included, it reads).
    `pseudo_gradient` (gathered rows): the change of its shared rows with the sign flipped,
    zero on its user rows; `loss` its rows' summed loss before the round; `norm` the norm of
    the shared part; `user_rows` its user rows after the round (which it keeps). The
    `unit_fn` of `dpsgd.make_private_step`. `one_user`: a client is one user, not a silo
    (`dpsgd.unique_ids`).
    """
    tables = check_row_tables(graphdef)
    sizes = {"users": n_users, "items": n_items}

    def client_update(params, constants, batch, key, hparams=None):
        stream = streams.derive(key, streams.Step.LOCAL_STEPS)
        keys = [streams.index(stream, step) for step in range(local_steps)]
        # each step's negatives drawn once: for the gathered rows and for its objective
        drawn = [with_drawn_negatives(loss_name, batch, k, n_items, n_negatives) for k in keys]
        ids = unique_ids({"users": jnp.concatenate([users for users, _, _ in drawn]),
                          "items": jnp.concatenate([items for _, items, _ in drawn])}, sizes,
                         one_user)
        start, objective = local_objective(graphdef, tables, loss_name, params, constants, ids,
                                           n_items=n_items, n_negatives=n_negatives)

        def mean_loss(p, step_batch, k):
            return objective(p, step_batch, k, hparams=hparams)[0]

        local = start
        for k, (_, _, step_batch) in zip(keys, drawn, strict=True):  # a few steps: unrolled
            grads = only_trained_items(jax.grad(mean_loss)(local, step_batch, k), params,
                                       tables, batch, ids, n_items)
            local = jax.tree.map(lambda p, g: p - client_learning_rate * g, local, grads)
        change = jax.tree.map(jnp.subtract, start, local)  # -(after - before)
        pseudo_gradient = _zero_kind(change, params, tables, "users")
        loss = mean_loss(start, drawn[0][2], keys[0]) * jnp.sum(batch["mask"])
        norm = private_norm(pseudo_gradient, params, tables, "local")
        return pseudo_gradient, ids, loss, norm, local

    return client_update


def make_sequence_client_update(loss_fn: Callable[..., Any], n_tokens: int, *,
                                local_steps: int, client_learning_rate: float
                                ) -> Callable[..., Any]:
    """`make_client_update` for a sequence model (SASRec, HSTU, BERT4Rec): the client's batch
    is its windows (`[k, L]`, `mask [k]`), its `local_steps` steps of SGD are on `loss_fn`
    (`train.sequence.make_sequence_loss`, the mean over its trained positions, a fresh key
    for dropout and negatives each step) over the whole model state, and its message is the
    change of that state with the sign flipped (the token table whole, at ids `0 ..
    n_tokens - 1`; `dpsgd.make_sequence_unit_gradient`'s form). A sequence model has no user
    rows: the client keeps nothing between rounds and sends all it changed."""

    def client_update(params, constants, batch, key, hparams=None):
        del constants, hparams
        stream = streams.derive(key, streams.Step.LOCAL_STEPS)
        keys = [streams.index(stream, step) for step in range(local_steps)]
        local = params  # {"prediction": model state}

        def step_loss(p, k):
            return loss_fn(p["prediction"], batch, k)

        for k in keys:  # a few steps: unrolled, each with its own negatives and dropout
            grads = jax.grad(step_loss)(local, k)
            local = jax.tree.map(lambda p, g: p - client_learning_rate * g, local, grads)
        pseudo_gradient = jax.tree.map(jnp.subtract, params, local)  # -(after - before)
        loss = step_loss(params, keys[0]) * trained_positions(batch)
        ids = {"tokens": jnp.arange(n_tokens, dtype=jnp.int32)}
        return pseudo_gradient, ids, loss, optax.tree.norm(pseudo_gradient), None

    return client_update


def client_message(pseudo_gradient: Any, ids: dict[str, jax.Array], params: Any,
                   tables: dict[str, str]) -> dict[str, Any]:
    """What a client sends: `{"item_ids": [m], "shared": [leaf or None]}`, the ids of the item
    rows it read and, leaf by leaf of the run's parameters (`params`, the structure of
    `pseudo_gradient`), the pseudo-gradient of the shared
    leaves (item rows at `item_ids`, dense parameters), None for the user tables, which
    never leave the client."""
    kinds = table_kinds(params, tables)
    leaves = jax.tree_util.tree_leaves(pseudo_gradient)
    return {"item_ids": ids["items"],
            "shared": [None if kind == "users" else leaf
                       for leaf, kind in zip(leaves, kinds, strict=True)]}


def make_federated_round(graphdef: Any, loss_name: str, optimizer: optax.GradientTransformation,
                         spec: DPSpec, *, n_users: int, n_items: int, n_negatives: int,
                         client_learning_rate: float
                         ) -> Callable[[TrainState, dict[str, Any], jax.Array],
                                       tuple[TrainState, dict[str, jax.Array]]]:
    """Builds `round(state, data, key) -> (state, metrics)`, one FedAvg (or DP-FedAvg, with
    `spec.noise_multiplier` > 0) round: `dpsgd.make_private_step` over the sampled clients'
    updates (`make_client_update`, `spec.local_steps` steps each). The interface of the
    DP-SGD step, so `dpsgd.make_dp_epoch` scans rounds as it scans steps."""
    client = make_client_update(graphdef, loss_name, n_users=n_users, n_items=n_items,
                                n_negatives=n_negatives, local_steps=spec.local_steps,
                                client_learning_rate=client_learning_rate,
                                one_user=not spec.silos)
    return make_private_step(client, optimizer, spec, check_row_tables(graphdef))


def _zero_kind(tree: Any, state: Any, tables: dict[str, str], kind: str) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = [jnp.zeros_like(leaf) if table == kind else leaf
           for leaf, table in zip(leaves, table_kinds(state, tables), strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out)
