"""Tests for SASRec, BERT4Rec and their losses: masks, padding, and a planted rule learned."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from causalrec_jax.data.sequences import history_matrix, item_windows, training_windows
from causalrec_jax.models.bert4rec import BERT4Rec, append_mask_token
from causalrec_jax.models.sasrec import SASRec
from causalrec_jax.train.sequence import (
    bce_one_negative_loss,
    full_softmax_loss,
    make_sequence_loss,
    make_sequence_train_step,
    mask_items,
    sampled_softmax_loss,
)

N_ITEMS = 30


def _model(cls, max_len=12, seed=0, **options):
    options = {"hidden_dim": 16, "n_layers": 2, "n_heads": 2, "dropout_rate": 0.0, **options}
    return cls(N_ITEMS, max_len, key=jax.random.key(seed), **options)


def _encode(model):
    """The model's forward pass as one jitted function of the tokens (eager NNX is slow)."""
    graphdef, params = nnx.split(model, nnx.Param)
    forward = jax.jit(lambda params, sequences: nnx.merge(graphdef, params)(sequences))
    return lambda sequences: forward(params, sequences)


def _tokens(seed, shape):
    return jax.random.randint(jax.random.key(seed), shape, 1, N_ITEMS + 1)


def test_sasrec_is_causal():
    encode = _encode(_model(SASRec))
    before = _tokens(1, (3, 8))
    for t in (0, 3, 6):
        after = before.at[:, t + 1:].set(_tokens(2 + t, (3, 7 - t)))
        assert not jnp.array_equal(before, after)
        hidden_before, hidden_after = encode(before), encode(after)
        np.testing.assert_allclose(
            hidden_before[:, :t + 1], hidden_after[:, :t + 1], atol=1e-6
        )
        assert float(jnp.abs(hidden_before[:, t + 1:] - hidden_after[:, t + 1:]).max()) > 1e-4


def test_bert4rec_is_bidirectional():
    encode = _encode(_model(BERT4Rec))
    before = _tokens(1, (3, 8))
    after = before.at[:, 5].set(before[:, 5] % N_ITEMS + 1)
    difference = jnp.abs(encode(before)[:, :5] - encode(after)[:, :5])
    assert float(difference.max()) > 1e-4


@pytest.mark.parametrize("cls", [SASRec, BERT4Rec])
def test_padding_never_changes_real_outputs(cls):
    model = _model(cls)
    encode = _encode(model)
    items = _tokens(3, (2, 5))
    short = jnp.concatenate([jnp.zeros((2, 3), jnp.int32), items], axis=1)
    long = jnp.concatenate([jnp.zeros((2, 7), jnp.int32), items], axis=1)
    # The amount of left padding (bucket length) does not matter ...
    np.testing.assert_allclose(encode(short)[:, -5:], encode(long)[:, -5:], atol=1e-5)
    # ... nor does the padding row's embedding.
    model.token_embedding[...] = model.token_embedding[...].at[0].set(5.0)
    np.testing.assert_allclose(encode(short)[:, -5:], _encode(model)(short)[:, -5:], atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(encode(long))))


@pytest.mark.parametrize("cls", [SASRec, BERT4Rec])
def test_logits_exclude_padding_and_mask_token(cls):
    model = _model(cls)
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def forward(params, sequences):
        model = nnx.merge(graphdef, params)
        hidden = model(sequences)
        return hidden, model.logits(hidden), model.score_next(sequences)

    hidden, logits, next_scores = forward(params, _tokens(4, (2, 6)))
    assert logits.shape == (2, 6, N_ITEMS)
    assert next_scores.shape == (2, N_ITEMS)
    # Column i is item i, i.e. token i + 1: the padding row 0 (and [mask]) are not scored.
    table = model.token_embedding[...]
    np.testing.assert_allclose(logits, hidden @ table[1:N_ITEMS + 1].T, rtol=1e-5, atol=1e-6)
    assert table.shape[0] == N_ITEMS + 1 + (cls is BERT4Rec)


def test_append_mask_token():
    sequences = jnp.array([[0, 0, 3, 4], [1, 2, 3, 4]])
    np.testing.assert_array_equal(
        append_mask_token(sequences, 9), [[0, 3, 4, 9], [2, 3, 4, 9]]
    )


def test_dropout_needs_a_key():
    model = _model(SASRec, dropout_rate=0.5, n_layers=1)
    graphdef, params = nnx.split(model, nnx.Param)
    forward = jax.jit(lambda params, sequences, key: nnx.merge(graphdef, params)(
        sequences, key=key))
    plain = jax.jit(lambda params, sequences: nnx.merge(graphdef, params)(sequences))
    sequences = _tokens(5, (2, 6))
    np.testing.assert_array_equal(plain(params, sequences), plain(params, sequences))
    assert not jnp.allclose(forward(params, sequences, jax.random.key(0)), plain(params, sequences))


def test_full_softmax_loss_by_hand():
    logits = jnp.array([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    targets = jnp.array([[0, 2]])
    expected = -jax.nn.log_softmax(logits[0, 0])[0]
    loss = full_softmax_loss(logits, targets, jnp.array([[True, False]]))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert float(full_softmax_loss(logits, targets, jnp.zeros((1, 2), bool))) == 0.0


def test_sampled_losses_ignore_untrained_positions():
    key = jax.random.key(0)
    hidden = jax.random.normal(key, (2, 3, 4))
    table = jax.random.normal(jax.random.key(1), (N_ITEMS, 4))
    targets = jnp.array([[1, 2, 3], [4, 5, 6]])
    mask = jnp.array([[True, False, True], [False, False, True]])
    for loss in (jax.jit(bce_one_negative_loss), jax.jit(sampled_softmax_loss)):
        base = loss(hidden, table, targets, mask, key)
        noisy = loss(hidden.at[0, 1].set(100.0), table, targets.at[1, 0].set(29), mask, key)
        np.testing.assert_allclose(base, noisy, rtol=1e-6)
        assert np.isfinite(float(base))


def test_mask_items_hides_only_real_items():
    sequences = jnp.array([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]] * 50)
    inputs, targets, masked = mask_items(
        jax.random.key(0), sequences, mask_token=N_ITEMS + 1, mask_prob=0.5
    )
    assert not bool(jnp.any(masked & (sequences == 0)))
    np.testing.assert_array_equal(jnp.where(masked, N_ITEMS + 1, sequences), inputs)
    np.testing.assert_array_equal(jnp.where(masked, sequences - 1, 0), targets)
    assert 0.3 < float(masked[1::2].mean()) < 0.7
    _, _, last_only = mask_items(
        jax.random.key(0), sequences, mask_token=N_ITEMS + 1, mask_prob=0.0, last_item_prob=1.0
    )
    assert bool(jnp.all(last_only[:, -1])) and not bool(jnp.any(last_only[:, :-1]))


def _planted_sequences(seed, n_sequences, length):
    """Sequences where the next item is a fixed permutation of the current one."""
    rng = np.random.default_rng(0)
    successor = rng.permutation(N_ITEMS)
    rng = np.random.default_rng(seed)
    sequences = []
    for start in rng.integers(0, N_ITEMS, n_sequences):
        sequence = [start]
        for _ in range(length - 1):
            sequence.append(successor[sequence[-1]])
        sequences.append(np.asarray(sequence, np.int32))
    return sequences


def _train(model, loss_name, batches, steps, learning_rate=1e-2, **options):
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)
    step = jax.jit(make_sequence_train_step(graphdef, loss_name, optimizer, **options))
    key = jax.random.key(42)
    losses = []
    for index in range(steps):
        batch = batches[index % len(batches)]
        params, opt_state, loss = step(params, opt_state, batch, jax.random.fold_in(key, index))
        losses.append(float(loss))
    return nnx.merge(graphdef, params), losses


def _hit_at_1(model, sequences, max_len):
    history = history_matrix([sequence[:-1] for sequence in sequences], max_len)
    graphdef, params = nnx.split(model, nnx.Param)
    score = jax.jit(lambda params, history: nnx.merge(graphdef, params).score_next(history))
    predicted = np.asarray(jnp.argmax(score(params, jnp.asarray(history)), axis=-1))
    return float(np.mean(predicted == np.array([sequence[-1] for sequence in sequences])))


def _next_item_batches(max_len, n_batches=4):
    windows = training_windows(_planted_sequences(1, 64 * n_batches, 9), max_len)
    return [
        {"inputs": jnp.asarray(windows.inputs[i::n_batches]),
         "targets": jnp.asarray(windows.targets[i::n_batches])}
        for i in range(n_batches)
    ]


def test_sasrec_learns_planted_rule():
    max_len = 8
    model, losses = _train(
        _model(SASRec, max_len=max_len, dropout_rate=0.0), "full_softmax",
        _next_item_batches(max_len), 150,
    )
    assert losses[-1] < 0.5 * losses[0]
    hit = _hit_at_1(model, _planted_sequences(2, 200, 7), max_len)
    assert hit > 0.9, hit


def test_bert4rec_learns_planted_rule():
    max_len = 8
    windows, _ = item_windows(_planted_sequences(1, 256, 8), max_len)
    batches = [{"sequences": jnp.asarray(windows[i::4])} for i in range(4)]
    model, losses = _train(
        _model(BERT4Rec, max_len=max_len, dropout_rate=0.0), "masked_item", batches,
        250, mask_prob=0.3, last_item_prob=0.3,
    )
    # The mask token goes after the history: histories of max_len - 1 items.
    hit = _hit_at_1(model, _planted_sequences(2, 200, 8), max_len)
    assert hit > 0.8, hit


@pytest.mark.parametrize("loss_name", ["bce_one_negative", "sampled_softmax"])
def test_sampled_losses_train(loss_name):
    max_len = 8
    _, losses = _train(
        _model(SASRec, max_len=max_len, n_layers=1), loss_name, _next_item_batches(max_len),
        50, n_negatives=10,
    )
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_row_mask_drops_padded_rows():
    model = _model(SASRec, max_len=6, n_layers=1)
    graphdef, params = nnx.split(model, nnx.Param)
    loss_fn = jax.jit(make_sequence_loss(graphdef, "full_softmax"))
    windows = training_windows(_planted_sequences(3, 5, 7), 6)
    batch = {"inputs": jnp.asarray(windows.inputs), "targets": jnp.asarray(windows.targets),
             "mask": jnp.array([True] * 4 + [False])}
    # Whatever the padded (masked) last row holds, the loss is the same.
    other = {**batch, "inputs": batch["inputs"].at[4].set(3),
             "targets": batch["targets"].at[4].set(7)}
    key = jax.random.key(0)
    loss = loss_fn(params, batch, key)
    np.testing.assert_allclose(loss, loss_fn(params, other, key), rtol=1e-6)
    unmasked = {**other, "mask": jnp.ones(5, bool)}
    assert abs(float(loss_fn(params, unmasked, key)) - float(loss)) > 1e-4
    with pytest.raises(ValueError, match="unknown"):
        make_sequence_loss(graphdef, "nope")


def test_chunked_softmax_loss_equals_the_full_one_with_its_gradients():
    from causalrec_jax.train.sequence import chunked_softmax_loss

    keys = jax.random.split(jax.random.key(5), 3)
    hidden = jax.random.normal(keys[0], (3, 7, 8))
    table = jax.random.normal(keys[1], (11, 8))
    targets = jax.random.randint(keys[2], (3, 7), 0, 11)
    mask = jnp.arange(21).reshape(3, 7) % 4 != 0

    def full(hidden, table):
        return full_softmax_loss(hidden @ table.T, targets, mask)

    # 21 positions in chunks of 5: the last chunk is padded with untrained rows
    def chunked(hidden, table):
        return chunked_softmax_loss(hidden, table, targets, mask, chunk_rows=5)

    np.testing.assert_allclose(chunked(hidden, table), full(hidden, table), rtol=1e-6)
    for expected, got in zip(jax.grad(full, (0, 1))(hidden, table),
                             jax.grad(chunked, (0, 1))(hidden, table), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert float(chunked_softmax_loss(hidden, table, targets, jnp.zeros_like(mask))) == 0.0
