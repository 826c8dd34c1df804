"""The sequential models' sampled objectives and LiGR blocks: sampled softmax over every item is
the full softmax (value and gradient), the logQ correction cancels a popularity proposal's bias,
gBCE matches its formula, LiGR keeps the causal mask, and the config refuses keys a run would
ignore."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from causalrec_jax.config import load_config
from causalrec_jax.errors import ConfigError
from causalrec_jax.models.bert4rec import BERT4Rec
from causalrec_jax.models.sasrec import SASRec
from causalrec_jax.train.sequence import (
    full_softmax_loss,
    gbce_beta,
    gbce_loss,
    make_sequence_loss,
    sampled_softmax_loss,
)

N_ITEMS = 23


def _case(seed=0, batch=3, length=4, dim=5):
    keys = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(keys[0], (batch, length, dim))
    table = jax.random.normal(keys[1], (N_ITEMS, dim))
    targets = jax.random.randint(keys[2], (batch, length), 0, N_ITEMS)
    mask = jnp.ones((batch, length), bool).at[0, 0].set(False)
    return hidden, table, targets, mask


def test_sampled_softmax_over_every_item_is_the_full_softmax_value_and_gradient():
    hidden, table, targets, mask = _case()
    every_item = jnp.arange(N_ITEMS)

    def full(hidden, table):
        return full_softmax_loss(hidden @ table.T, targets, mask)

    def sampled(hidden, table):  # the target's own copy among the negatives is dropped
        return sampled_softmax_loss(hidden, table, targets, mask, jax.random.key(0),
                                    negatives=every_item)

    np.testing.assert_allclose(sampled(hidden, table), full(hidden, table), rtol=1e-5)
    for left, right in zip(jax.grad(sampled, (0, 1))(hidden, table),
                           jax.grad(full, (0, 1))(hidden, table), strict=True):
        np.testing.assert_allclose(left, right, rtol=1e-4, atol=1e-6)
    # the same per row ([b, n] negatives), and under a uniform proposal's logQ correction
    per_row = jnp.broadcast_to(every_item, (hidden.shape[0], N_ITEMS))
    np.testing.assert_allclose(
        sampled_softmax_loss(hidden, table, targets, mask, jax.random.key(0), negatives=per_row),
        full(hidden, table), rtol=1e-5)
    np.testing.assert_allclose(
        sampled_softmax_loss(hidden, table, targets, mask, jax.random.key(0),
                             negatives=every_item, item_probs=jnp.ones(N_ITEMS), logq=True),
        full(hidden, table), rtol=1e-5)


def test_popularity_negatives_follow_the_counts():
    hidden, table, targets, mask = _case()
    counts = jnp.zeros(N_ITEMS).at[3].set(1.0).at[7].set(3.0)
    drawn = []

    def spy(key, n_items, n_negatives, item_probs):
        from causalrec_jax.train import losses

        items, _ = losses.sample_negatives(key, n_items, (n_negatives,), item_probs=item_probs)
        drawn.append(np.asarray(items))
        return items, _

    import causalrec_jax.train.sequence as sequence

    original = sequence._shared_negatives
    sequence._shared_negatives = spy
    try:
        sampled_softmax_loss(hidden, table, targets, mask, jax.random.key(1), n_negatives=4000,
                             item_probs=counts)
    finally:
        sequence._shared_negatives = original
    items = drawn[0]
    assert set(np.unique(items)) == {3, 7}
    assert abs((items == 7).mean() - 0.75) < 0.03


@functools.partial(jax.jit, static_argnames=("logq",))
def _fit_free_logits(key, p, q, *, logq):
    """Free logits theta (item embeddings of width 1 against a hidden state of 1) fitted by
    sampled softmax to targets drawn from `p`, negatives (16 per batch, shared) from `q`."""
    optimizer = optax.adam(optax.cosine_decay_schedule(0.05, 3000))
    theta = jnp.zeros((p.shape[0], 1))
    hidden = jnp.ones((256, 1, 1))
    n_items = p.shape[0]

    def loss(theta, key):
        target_key, negative_key = jax.random.split(key)
        targets = jax.random.choice(target_key, n_items, (256, 1), p=p)
        return sampled_softmax_loss(hidden, theta, targets, jnp.ones((256, 1), bool),
                                    negative_key, n_negatives=16, item_probs=q, logq=logq)

    def step(carry, key):
        theta, state = carry
        grads = jax.grad(loss)(theta, key)
        updates, state = optimizer.update(grads, state)
        return (optax.apply_updates(theta, updates), state), None

    (theta, _), _ = jax.lax.scan(step, (theta, optimizer.init(theta)),
                                 jax.random.split(key, 3000))
    return jax.nn.softmax(theta[:, 0])


def test_logq_correction_cancels_the_bias_of_a_popularity_proposal():
    """Negatives drawn by a skewed q, uncorrected, push the frequent negatives down and the
    rare ones up: the fitted distribution is far from the targets'. With logQ it is near."""
    p = jnp.asarray([0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05])
    q = jnp.asarray([0.02, 0.03, 0.05, 0.10, 0.15, 0.25, 0.40])

    def kl(fitted):
        return float(jnp.sum(p * (jnp.log(p) - jnp.log(fitted))))

    corrected = kl(_fit_free_logits(jax.random.key(0), p, q, logq=True))
    uncorrected = kl(_fit_free_logits(jax.random.key(0), p, q, logq=False))
    assert corrected < 0.005, corrected
    assert uncorrected > 10 * corrected and uncorrected > 0.05, (corrected, uncorrected)


def test_gbce_matches_its_formula():
    hidden, table, targets, mask = _case(seed=2)
    negatives = jnp.asarray([0, 5, 9, 17])
    k = len(negatives)
    for t in (0.0, 0.5, 1.0):
        beta = gbce_beta(k, N_ITEMS, t)
        alpha = k / (N_ITEMS - 1)
        assert math.isclose(beta, alpha * (t * (1 - 1 / alpha) + 1 / alpha))
        got = gbce_loss(hidden, table, targets, mask, jax.random.key(0), n_negatives=k, t=t,
                        negatives=negatives)
        logits = np.asarray(hidden @ table.T, np.float64)
        total, count = 0.0, 0
        for b, row in enumerate(np.asarray(targets)):
            for position, target in enumerate(row):
                if not mask[b, position]:
                    continue
                sigmoid = 1 / (1 + np.exp(-logits[b, position]))
                value = -beta * np.log(sigmoid[target])
                value -= sum(np.log(1 - sigmoid[n]) for n in np.asarray(negatives)
                             if n != target)
                total += value / (1 + k)
                count += 1
        np.testing.assert_allclose(float(got), total / count, rtol=1e-5)
    assert gbce_beta(k, N_ITEMS, 0.0) == 1.0  # t = 0: plain BCE
    assert math.isclose(gbce_beta(k, N_ITEMS, 1.0), k / (N_ITEMS - 1))
    assert gbce_beta(5 * N_ITEMS, N_ITEMS, 0.75) == 1.0  # more negatives than items: alpha 1


def test_logq_is_finite_when_an_untrained_position_reads_a_never_drawn_item():
    """Untrained positions read item 0; with item 0 absent from training its log q is -inf,
    which must not reach the loss or its gradient."""
    hidden, table, targets, mask = _case()
    targets = jnp.where(targets == 0, 1, targets)
    mask = mask.at[1, :2].set(False)
    counts = jnp.ones(N_ITEMS).at[0].set(0.0)

    def loss(hidden):
        return sampled_softmax_loss(hidden, table, targets, mask, jax.random.key(0),
                                    n_negatives=8, item_probs=counts, logq=True)

    assert np.isfinite(float(loss(hidden)))
    assert np.isfinite(np.asarray(jax.grad(loss)(hidden))).all()


@pytest.mark.parametrize("model_class", [SASRec, BERT4Rec])
def test_ligr_blocks_build_and_keep_the_mask(model_class):
    model = model_class(N_ITEMS, 8, key=jax.random.key(0), hidden_dim=8, n_layers=2,
                        n_heads=2, ffn_dim=16, dropout_rate=0.0, block="ligr")
    graphdef, params = nnx.split(model, nnx.Param)
    forward = jax.jit(lambda params, tokens: nnx.merge(graphdef, params)(tokens))
    tokens = jnp.asarray([[0, 0, 3, 4, 5, 6, 7, 8]])
    base = forward(params, tokens)
    np.testing.assert_allclose(base, model(tokens), rtol=1e-5, atol=1e-6)  # jit == eager
    changed = forward(params, tokens.at[0, -1].set(9))
    if model_class is SASRec:  # causal: a later item changes no earlier output
        np.testing.assert_allclose(changed[0, :-1], base[0, :-1], rtol=1e-6, atol=1e-6)
    assert not np.allclose(changed[0, -1], base[0, -1])
    names = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(params)}
    assert any("attention_gate" in name for name in names)
    assert any("ffn_value" in name for name in names)
    assert not any("final_norm" in name for name in names)
    with pytest.raises(ValueError, match="unknown block 'gated'"):
        SASRec(N_ITEMS, 8, key=jax.random.key(0), block="gated")


@pytest.mark.slow  # make test-all: the options are tested on their own
def test_a_ligr_sasrec_learns_with_gbce_and_with_popularity_logq():
    """A planted successor rule (item i -> i + 1) is learned through the training loss of a
    run, with each new objective."""
    model = SASRec(N_ITEMS, 6, key=jax.random.key(0), hidden_dim=16, n_layers=1, n_heads=1,
                   ffn_dim=16, dropout_rate=0.0, block="ligr")
    graphdef, params = nnx.split(model, nnx.Param)
    starts = np.arange(64) % N_ITEMS
    sequences = (starts[:, None] + np.arange(7)[None]) % N_ITEMS + 1
    batch = {"inputs": jnp.asarray(sequences[:, :-1]), "targets": jnp.asarray(sequences[:, 1:]),
             "shared_item_probs": jnp.asarray(np.bincount(sequences.ravel() - 1,
                                                          minlength=N_ITEMS), jnp.float32)}
    for loss_name, options in (("gbce", {"gbce_t": 0.75}), ("sampled_softmax", {"logq": True}),
                               ("sampled_softmax", {"negatives_per_row": True})):
        loss_fn = make_sequence_loss(graphdef, loss_name, n_negatives=8, **options)
        optimizer = optax.adam(0.02)

        @jax.jit
        def step(params, state, key, loss_fn=loss_fn, optimizer=optimizer):
            value, grads = jax.value_and_grad(loss_fn)(params, batch, key)
            updates, state = optimizer.update(grads, state, params)
            return optax.apply_updates(params, updates), state, value

        trained, state = params, optimizer.init(params)
        for i in range(150):
            trained, state, _ = step(trained, state, jax.random.key(i))
        scores = nnx.merge(graphdef, trained).score_next(jnp.asarray(sequences[:, :-1]))
        hit = np.mean(np.argmax(np.asarray(scores), -1) == sequences[:, -1] - 1)
        assert hit > 0.9, (loss_name, hit)


@pytest.mark.parametrize(("overrides", "message"), [
    (['train.loss="full_softmax"', 'train.negative_sampler="popularity"'],
     "key train.negative_sampler: 'popularity' draws sampled_softmax's negatives, but "
     "train.loss is 'full_softmax'; remove it"),
    (['train.loss="sampled_softmax"', 'train.negative_sampler="popularity"'],
     "key train.exclude_seen_negatives: true redraws negatives per user uniformly, so "
     "train.negative_sampler = 'popularity' would not be the proposal; set it to false"),
    (['train.loss="sampled_softmax"', "train.logq_correction=true"],
     "key train.logq_correction: true, but the uniform proposal shifts every logit alike "
     "(nothing to correct); set train.negative_sampler = 'popularity' or remove it"),
    (['train.loss="sampled_softmax"', "train.gbce_t=0.5"],
     "key train.gbce_t: set to 0.5, but only train.loss = 'gbce' reads it (train.loss is "
     "'sampled_softmax'); remove it"),
    (['train.loss="full_softmax"', "train.negatives_per_row=true"],
     "key train.negatives_per_row: true, but only train.loss = 'sampled_softmax' or 'gbce' "
     "draws shared negatives (train.loss is 'full_softmax'); remove it"),
    (['train.loss="sampled_softmax"', "train.negatives_per_row=true"],
     "key train.negatives_per_row: true, but train.exclude_seen_negatives = true already "
     "draws negatives per row; set exclude_seen_negatives to false or remove "
     "negatives_per_row"),
    (['model.name="bert4rec"', 'train.position_weighting="uniform"'],
     "key train.position_weighting: 'uniform' weighs next-item targets, but train.loss is "
     "'masked_item' (its masked positions are drawn per step); remove it"),
    (['model.name="hstu"', 'train.loss="sampled_softmax"', 'model.block="ligr"'],
     "key model.block: set to 'ligr', but only model.name = 'sasrec' or 'bert4rec' reads it; "
     "remove it"),
])
def test_sampler_and_block_keys_a_run_would_ignore_are_refused(overrides, message):
    from causalrec_jax.tasks.sequential import check_sequential_config

    config = load_config(overrides=['data.split="leave_one_out"', 'model.name="sasrec"',
                                    *overrides])
    with pytest.raises(ConfigError) as error:
        check_sequential_config(config)
    assert str(error.value) == message


def test_an_ordinary_run_refuses_the_sequential_keys():
    from causalrec_jax.tasks.ordinary import check_ordinary_keys

    config = load_config(overrides=['model.name="mf"', 'train.negative_sampler="popularity"'])
    with pytest.raises(ConfigError, match="key train.negative_sampler: set to 'popularity'"):
        check_ordinary_keys(config)
    for bad in ("train.gbce_t=1.5", "model.ffn_multiplier=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(overrides=[bad])


@pytest.mark.parametrize("loss_name", ["sampled_softmax", "gbce"])
def test_negatives_per_row_draw_one_set_for_each_sequence(loss_name):
    """`negatives_per_row`: the loss of a run equals the loss over `[b, n]` negatives drawn
    for each row with the sampling key (a different set per row), not the batch's one set."""
    from causalrec_jax.train import losses

    model = SASRec(N_ITEMS, 5, key=jax.random.key(0), hidden_dim=8, n_layers=1, n_heads=1,
                   ffn_dim=8, dropout_rate=0.0)
    graphdef, params = nnx.split(model, nnx.Param)
    sequences = jnp.asarray(np.arange(24).reshape(4, 6) % N_ITEMS + 1)
    batch = {"inputs": sequences[:, :-1], "targets": sequences[:, 1:]}
    key = jax.random.key(3)
    got = make_sequence_loss(graphdef, loss_name, n_negatives=6, negatives_per_row=True)(
        params, batch, key)
    negatives, _ = losses.sample_negatives(jax.random.split(key)[1], N_ITEMS, (4, 6))
    assert len({tuple(row) for row in np.asarray(negatives)}) == 4
    hidden, table = model(batch["inputs"]), model.item_embeddings()
    loss = sampled_softmax_loss if loss_name == "sampled_softmax" else gbce_loss
    want = loss(hidden, table, batch["targets"] - 1, batch["targets"] != 0, key,
                n_negatives=6, negatives=negatives)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    shared = make_sequence_loss(graphdef, loss_name, n_negatives=6)(params, batch, key)
    assert not np.isclose(float(got), float(shared))


def test_uniform_position_weighting_sums_over_the_epochs_mean_positions_per_batch():
    """With `shared_positions_per_batch`, a step's loss is the sum over its trained positions
    divided by it: a batch of long sequences then weighs each position as one of short ones."""
    model = SASRec(N_ITEMS, 6, key=jax.random.key(0), hidden_dim=8, n_layers=1, n_heads=1,
                   ffn_dim=8, dropout_rate=0.0)
    graphdef, params = nnx.split(model, nnx.Param)
    sequences = np.arange(28).reshape(4, 7) % N_ITEMS + 1
    sequences[0, :4] = 0  # a short row (items 5, 6, 7): 2 trained positions
    inputs, targets = sequences[:, :-1], sequences[:, 1:].copy()
    targets[inputs == 0] = 0
    batch = {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets),
             "mask": jnp.asarray([True, True, True, False])}  # padded row 3 trains none
    loss_fn = make_sequence_loss(graphdef, "full_softmax")
    mean = float(loss_fn(params, batch, jax.random.key(1)))
    trained = 2 + 6 + 6
    uniform = float(loss_fn(params, {**batch, "shared_positions_per_batch": jnp.float32(7.0)},
                            jax.random.key(1)))
    np.testing.assert_allclose(uniform, mean * trained / 7.0, rtol=1e-6)
    hidden = np.asarray(model(batch["inputs"]))
    logits = hidden @ np.asarray(model.item_embeddings()).T
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    total = sum(-log_probs[b, t, targets[b, t] - 1] for b in range(3) for t in range(6)
                if targets[b, t] != 0)
    np.testing.assert_allclose(uniform, total / 7.0, rtol=1e-5)


def test_positions_per_batch_counts_trained_targets_over_the_bucketed_batches():
    from causalrec_jax.tasks.sequential import bucket_rows, positions_per_batch

    lengths = [2, 3, 3, 7, 8, 8, 8]  # trained positions of each window
    targets = np.zeros((len(lengths), 8), np.int32)
    for row, length in enumerate(lengths):
        targets[row, 8 - length:] = 1 + np.arange(length)
    buckets = bucket_rows({"inputs": targets, "targets": targets}, (4, 8))
    assert [len(bucket["targets"]) for bucket in buckets] == [3, 4]
    # batches of 2: the bucket of 3 rows makes 2 batches, the bucket of 4 makes 2
    assert positions_per_batch(buckets, 2) == sum(lengths) / 4
