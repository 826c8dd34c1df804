"""DP-SGD for the sequence models (SASRec, HSTU, BERT4Rec): each user's windows are one unit, whose
clipped gradient over the whole parameter state (the token table included) equals a brute-force
`jax.grad` loop over the users; one user moves the pre-noise sum by at most C; the unit's
negatives and dropout come from its own key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from causalrec_jax import streams
from causalrec_jax.config import TrainConfig
from causalrec_jax.models.bert4rec import BERT4Rec
from causalrec_jax.models.hstu import HSTU
from causalrec_jax.models.sasrec import SASRec
from causalrec_jax.privacy import dpsgd, federated
from causalrec_jax.train.objectives import seen_items_data
from causalrec_jax.train.sequence import make_sequence_loss
from causalrec_jax.train.step import TrainState, make_optimizer

N_ITEMS, MAX_LEN = 9, 5
# (user, inputs, targets) windows; tokens are item + 1, 0 pads. User 0 reads item 3 twice.
WINDOWS = [
    (0, [0, 0, 4, 4, 2], [0, 0, 4, 2, 7]),
    (0, [0, 0, 0, 7, 1], [0, 0, 0, 1, 9]),
    (1, [0, 3, 5, 6, 8], [0, 5, 6, 8, 2]),
    (2, [0, 0, 0, 0, 2], [0, 0, 0, 0, 3]),
    (3, [9, 8, 7, 6, 5], [8, 7, 6, 5, 4]),
    (3, [0, 0, 1, 2, 3], [0, 0, 2, 3, 4]),
    (3, [0, 0, 0, 5, 5], [0, 0, 0, 5, 1]),
]
N_USERS = 4


def _rows(masked=False):
    users, inputs, targets = zip(*WINDOWS, strict=True)
    if masked:  # BERT4Rec's windows: the items themselves, some masked per step
        return {"users": np.array(users, np.int32), "sequences": np.array(targets, np.int32)}
    return {"users": np.array(users, np.int32), "inputs": np.array(inputs, np.int32),
            "targets": np.array(targets, np.int32)}


def _model(name, dropout):
    cls = {"sasrec": SASRec, "hstu": HSTU, "bert4rec": BERT4Rec}[name]
    model = cls(N_ITEMS, MAX_LEN, key=jax.random.key(2), hidden_dim=8, n_layers=1,
                n_heads=1, dropout_rate=dropout)
    return nnx.split(model, nnx.Param)


def _setup(loss_name, *, name="sasrec", clip=0.05, level="user", dropout=0.0, seen=False):
    graphdef, params = _model(name, dropout)
    rows = _rows(masked=loss_name == "masked_item")
    n_units = N_USERS if level == "user" else len(rows["users"])
    spec = dpsgd.make_spec(level, clip=clip, noise_multiplier=0.0, n_units=n_units,
                           expected_batch=n_units, examples_per_unit=3 if level == "user"
                           else 1, user_rows="noised")
    units = dpsgd.unit_arrays(rows, N_USERS, level, spec.examples_per_unit, jax.random.key(0))
    data = {k: jnp.asarray(v) for k, v in units.items()}
    if seen:  # negatives redrawn away from each user's items (train.exclude_seen_negatives)
        items = np.concatenate([rows["targets"][rows["targets"] > 0] - 1])
        users = np.repeat(rows["users"], (rows["targets"] > 0).sum(axis=1))
        data.update({k: jnp.asarray(v) for k, v in
                     seen_items_data(users, items, N_USERS, N_ITEMS).items()})
    loss_fn = make_sequence_loss(graphdef, loss_name, n_negatives=4)
    n_tokens = params["token_embedding"][...].shape[0]
    optimizer = make_optimizer(TrainConfig(optimizer="sgd", learning_rate=1.0))
    step = dpsgd.make_private_step(dpsgd.make_sequence_unit_gradient(loss_fn, n_tokens),
                                   optimizer, spec, {"token_embedding": "tokens"})
    state = TrainState(params={"prediction": params},
                       opt_state=optimizer.init({"prediction": params}),
                       step=jnp.zeros((), jnp.int32), hparams=None)
    return params, spec, data, step, state, loss_fn


def _summed(step, state, data, key, spec):
    """The pre-noise clipped sum, read from one SGD step at learning rate 1 (sigma = 0)."""
    new, metrics = jax.jit(step)(state, data, key)
    delta = jax.tree.map(lambda old, new: (old - new) * spec.expected_batch,
                         state.params["prediction"], new.params["prediction"])
    return delta, metrics


def _brute_force(params, spec, data, key, loss_fn):
    """Sum over units of each unit's clipped `jax.grad` of the sum of its positions' losses,
    one unit at a time, with the unit's own key."""
    unit_stream = streams.derive(streams.index(key, 0), streams.Step.UNIT)
    total = jax.tree.map(jnp.zeros_like, params)
    shared = {k: v for k, v in data.items() if k.startswith("shared_")}
    for unit in range(spec.n_units):
        mask = data["unit_mask"][unit]
        names = ("sequences",) if "sequences" in data else ("inputs", "targets")
        batch = {name: data[name][unit] for name in names}
        batch["mask"] = mask
        if shared:  # the unit's own user, the only row of the seen data its loss reads
            batch.update(shared, users=jnp.full(mask.shape, unit, jnp.int32))
        tokens = batch.get("targets", batch.get("sequences"))
        positions = jnp.sum((tokens != 0) & mask[:, None])

        def summed(p, batch=batch, positions=positions, unit=unit):
            return loss_fn(p, batch, streams.index(unit_stream, unit)) * positions

        grads = jax.grad(summed)(params)
        norm = jnp.sqrt(sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(grads)))
        factor = jnp.minimum(1.0, spec.clip / norm)
        total = jax.tree.map(lambda t, g, factor=factor: t + g * factor, total, grads)
    return total


def _distance(a, b):
    return np.sqrt(sum(float(jnp.sum((x - y) ** 2))
                       for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)))


@pytest.mark.parametrize("loss_name,name,dropout,seen", [
    pytest.param("full_softmax", "sasrec", 0.0, False, marks=pytest.mark.slow),
    pytest.param("sampled_softmax", "sasrec", 0.3, False, marks=pytest.mark.slow),
    ("sampled_softmax", "sasrec", 0.0, True),
    pytest.param("gbce", "hstu", 0.0, False, marks=pytest.mark.slow),
    ("bce_one_negative", "hstu", 0.3, True), ("masked_item", "bert4rec", 0.3, False),
])
def test_clipped_sums_equal_a_brute_force_loop_over_users(loss_name, name, dropout, seen):
    params, spec, data, step, state, loss_fn = _setup(loss_name, name=name, dropout=dropout,
                                                      seen=seen)
    key = jax.random.key(11)
    got, metrics = _summed(step, state, data, key, spec)
    want = _brute_force(params, spec, data, key, loss_fn)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-3, atol=2e-6)
    assert int(metrics["clipped"]) >= 1 and int(metrics["sampled"]) == N_USERS
    # the sum reads the token rows the users read: item 3 (token 4, user 0's repeat)
    assert float(jnp.abs(want["token_embedding"][...][4]).max()) > 0


def test_one_user_moves_the_clipped_sum_by_at_most_the_clip():
    _, spec, data, step, state, _ = _setup("sampled_softmax", clip=0.05)
    key = jax.random.key(3)
    full, _ = _summed(step, state, data, key, spec)
    without = dict(data, unit_mask=data["unit_mask"].at[3].set(False))  # user 3's 3 windows
    less, _ = _summed(step, state, without, key, spec)
    assert 0.99 * spec.clip <= _distance(full, less) <= spec.clip * (1 + 1e-4)


def test_a_window_unit_moves_the_sum_by_at_most_the_clip():
    """The step over units of one window (the library's example level; a sequential run
    refuses it, windows overlapping)."""
    _, spec, data, step, state, _ = _setup("full_softmax", level="example", clip=0.02)
    key = jax.random.key(4)
    full, _ = _summed(step, state, data, key, spec)
    without = dict(data, unit_mask=data["unit_mask"].at[2].set(False))
    less, _ = _summed(step, state, without, key, spec)
    assert 0.99 * spec.clip <= _distance(full, less) <= spec.clip * (1 + 1e-4)


def test_the_logged_loss_is_the_mean_over_trained_positions():
    """Without clipping, the step's loss equals the loss of all windows at once (the mean
    over every trained position), as an ordinary step logs it."""
    params, spec, data, step, state, loss_fn = _setup("full_softmax", clip=1e9)
    _, metrics = jax.jit(step)(state, data, jax.random.key(5))
    rows = _rows()
    whole = loss_fn(params, {"inputs": jnp.asarray(rows["inputs"]),
                             "targets": jnp.asarray(rows["targets"])}, jax.random.key(0))
    np.testing.assert_allclose(float(metrics["loss"]), float(whole), rtol=1e-5)


def _client_round(*, clip, local_steps, client_lr, n_units=N_USERS, expected=N_USERS):
    graphdef, params = _model("sasrec", 0.0)
    rows = _rows()
    spec = dpsgd.make_spec("user", clip=clip, noise_multiplier=0.0, n_units=n_units,
                           expected_batch=expected, examples_per_unit=3,
                           local_steps=local_steps)
    units = dpsgd.unit_arrays(rows, N_USERS, "user", 3, jax.random.key(0))
    data = {k: jnp.asarray(v)[:n_units] for k, v in units.items()}
    loss_fn = make_sequence_loss(graphdef, "full_softmax")
    optimizer = make_optimizer(TrainConfig(optimizer="sgd", learning_rate=1.0))
    client = federated.make_sequence_client_update(
        loss_fn, params["token_embedding"][...].shape[0], local_steps=local_steps,
        client_learning_rate=client_lr)
    step = dpsgd.make_private_step(client, optimizer, spec, {"token_embedding": "tokens"})
    state = TrainState(params={"prediction": params},
                       opt_state=optimizer.init({"prediction": params}),
                       step=jnp.zeros((), jnp.int32), hparams=None)
    return params, spec, data, step, state, loss_fn


def test_a_fedavg_round_of_one_client_and_one_local_step_is_a_centralised_step():
    """FedAvg's server (SGD at learning rate 1) over one client that takes one SGD step at
    rate eta: the model after the round is the client's, an SGD step on its windows."""
    params, _, data, step, state, loss_fn = _client_round(
        clip=1e9, local_steps=1, client_lr=0.3, n_units=1, expected=1)
    new, metrics = jax.jit(step)(state, data, jax.random.key(6))
    assert int(metrics["sampled"]) == 1
    batch = {"inputs": data["inputs"][0], "targets": data["targets"][0],
             "mask": data["unit_mask"][0]}
    grads = jax.grad(loss_fn)(params, batch, jax.random.key(0))  # no dropout, no sampling
    want = jax.tree.map(lambda p, g: p - 0.3 * g, params, grads)
    for a, b in zip(jax.tree.leaves(new.params["prediction"]), jax.tree.leaves(want),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_a_client_moves_the_dp_fedavg_sum_by_at_most_the_clip():
    _, spec, data, step, state, _ = _client_round(clip=0.01, local_steps=2, client_lr=0.5)
    key = jax.random.key(8)
    full, metrics = _summed(step, state, data, key, spec)
    assert int(metrics["clipped"]) == N_USERS
    without = dict(data, unit_mask=data["unit_mask"].at[1].set(False))
    less, _ = _summed(step, state, without, key, spec)
    assert 0.99 * spec.clip <= _distance(full, less) <= spec.clip * (1 + 1e-4)


def test_with_chunk_rounds_the_capacity_up_to_whole_chunks():
    spec = dpsgd.make_spec("user", clip=1.0, noise_multiplier=1.0, n_units=943,
                           expected_batch=512, examples_per_unit=4)
    smaller = dpsgd.with_chunk(spec, 64)
    assert smaller.chunk == 64 and smaller.capacity % 64 == 0
    assert dpsgd.capacity_for(943, spec.sampling_rate) <= smaller.capacity < (
        dpsgd.capacity_for(943, spec.sampling_rate) + 64)
    assert dpsgd.with_chunk(spec, 0).chunk == 1  # at least one unit a chunk
    assert smaller.sampling_rate == spec.sampling_rate
