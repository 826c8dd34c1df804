"""Tests of causalrec_jax.train.losses: hand-computed values, weighting/masking, edge cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from causalrec_jax.errors import ConfigError
from causalrec_jax.train import losses
from causalrec_jax.train.losses import LOSSES, get_loss

# Eager JAX compiles every primitive on first use for each shape, which made this file slow;
# the tests call jitted losses (one compilation each), and `test_jit_equals_eager` checks that
# the eager functions give the same numbers.
_STATIC = ("normalize", "reduce")
reduce_losses = jax.jit(losses.reduce_losses, static_argnames=_STATIC)
mse_loss = jax.jit(losses.mse_loss, static_argnames=_STATIC)
binary_cross_entropy_loss = jax.jit(losses.binary_cross_entropy_loss, static_argnames=_STATIC)
bpr_loss = jax.jit(losses.bpr_loss, static_argnames=_STATIC)
softmax_cross_entropy_loss = jax.jit(losses.softmax_cross_entropy_loss, static_argnames=_STATIC)
sampled_softmax_loss = jax.jit(losses.sampled_softmax_loss, static_argnames=_STATIC)
sample_negatives = jax.jit(losses.sample_negatives, static_argnums=(1, 2))

LN2, LN3 = math.log(2.0), math.log(3.0)


def close(actual, expected, tol=1e-6):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=tol, atol=tol)


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    # float64 reference, independent of jax
    scores = np.asarray(scores, np.float64)
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- reduction


def test_reduce_count_vs_weights_normalisation():
    per_example = np.array([1.0, 2.0, 3.0, 4.0])
    weights = np.array([2.0, 0.5, 1.0, 10.0])
    where = np.array([True, True, True, False])
    # count:   (2*1 + 0.5*2 + 1*3) / 3 valid = 6 / 3 = 2
    close(reduce_losses(per_example, weights=weights, where=where), 2.0)
    # weights: 6 / (2 + 0.5 + 1) = 6 / 3.5
    close(reduce_losses(per_example, weights=weights, where=where, normalize="weights"), 6 / 3.5)
    # no weights: plain mean over valid entries (1 + 2 + 3) / 3 = 2, either normaliser
    close(reduce_losses(per_example, where=where), 2.0)
    close(reduce_losses(per_example, where=where, normalize="weights"), 2.0)
    # per-example: weighted, masked entries exactly 0
    close(reduce_losses(per_example, weights=weights, where=where, reduce=False), [2, 1, 3, 0])


def test_reduce_ignores_inf_and_nan_in_masked_entries():
    per_example = np.array([1.0, np.nan, 3.0], np.float32)
    weights = np.array([1.0, np.inf, 1.0], np.float32)  # a padded propensity of 0 gives weight 1/0
    where = np.array([True, False, True])

    def loss(per_example, weights):
        return reduce_losses(per_example, weights=weights, where=where)

    close(loss(per_example, weights), 2.0)  # (1 + 3) / 2
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(per_example, weights)
    close(grads[0], [0.5, 0.0, 0.5])
    close(grads[1], [0.5, 0.0, 1.5])


def test_reduce_rejects_unknown_normalize():
    with pytest.raises(ValueError, match="normalize"):
        losses.reduce_losses(jnp.ones(3), normalize="sum")


# ----------------------------------------------------------------------------- mse


def test_mse_hand_computed():
    predictions = np.array([1.0, 2.0, 3.0])
    ratings = np.array([1.0, 0.0, 5.0])
    # squared errors: 0, 4, 4
    close(mse_loss(predictions, ratings), 8 / 3)
    weights = np.array([1.0, 2.0, 3.0])
    # sum w l = 0 + 8 + 12 = 20; count 3, weight sum 6
    close(mse_loss(predictions, ratings, weights=weights), 20 / 3)
    close(mse_loss(predictions, ratings, weights=weights, normalize="weights"), 20 / 6)
    where = np.array([True, True, False])
    # valid: w l = 0, 8; count 2, weight sum 3
    close(mse_loss(predictions, ratings, weights=weights, where=where), 4.0)
    close(mse_loss(predictions, ratings, weights=weights, where=where, normalize="weights"), 8 / 3)
    close(mse_loss(predictions, ratings, weights=weights, reduce=False), [0.0, 8.0, 12.0])


def test_mse_gradient_hand_computed():
    predictions = np.array([1.0, 2.0, 3.0], np.float32)
    ratings = np.array([1.0, 0.0, 5.0], np.float32)
    weights = np.array([1.0, 2.0, 3.0], np.float32)
    where = np.array([True, True, False])
    # d/dp_i of sum_i m_i w_i (p_i - r_i)^2 / 2 = m_i w_i (p_i - r_i): 0, 2*2 = 4, 0
    grads = jax.jit(jax.grad(lambda p: mse_loss(p, ratings, weights=weights, where=where)))(
        predictions
    )
    close(grads, [0.0, 4.0, 0.0])


def test_mse_integer_inputs_are_promoted():
    close(mse_loss(np.array([1, 3]), np.array([2, 3])), 0.5)  # (1 + 0) / 2


# ----------------------------------------------------------------------------- bce


def test_bce_hand_computed():
    # sigmoid(0) = 1/2 -> -log(1/2) = log 2 for either label
    close(binary_cross_entropy_loss(np.zeros(2), np.array([1.0, 0.0])), LN2)
    # sigmoid(ln 3) = 3/4: label 1 -> log(4/3); label 0 -> -log(1/4) = log 4
    logits = np.array([LN3, LN3])
    labels = np.array([1.0, 0.0])
    close(
        binary_cross_entropy_loss(logits, labels, reduce=False),
        [math.log(4 / 3), math.log(4)],
    )
    close(binary_cross_entropy_loss(logits, labels), (math.log(4 / 3) + math.log(4)) / 2)
    # soft label 1/2 at logit ln 3: (log(4/3) + log 4) / 2
    close(
        binary_cross_entropy_loss(np.array([LN3]), np.array([0.5])),
        (math.log(4 / 3) + math.log(4)) / 2,
    )


def test_bce_agrees_with_optax():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=64) * 3).astype(np.float32)
    labels = (rng.random(64) < 0.3).astype(np.float32)
    weights = rng.uniform(0.5, 5.0, size=64).astype(np.float32)
    expected = np.asarray(jax.jit(optax.sigmoid_binary_cross_entropy)(logits, labels))
    close(binary_cross_entropy_loss(logits, labels), expected.mean(), 1e-5)
    close(
        binary_cross_entropy_loss(logits, labels, weights=weights, normalize="weights"),
        np.sum(weights * expected) / np.sum(weights),
        1e-5,
    )


# ----------------------------------------------------------------------------- bpr


def test_bpr_hand_computed():
    positive = np.array([1.0])
    negatives = np.array([[1.0, 1.0 + LN3]])
    # differences 0 and -ln 3: -log sigmoid(0) = log 2; -log sigmoid(-ln 3) = -log(1/4) = log 4
    # mean over negatives: (log 2 + log 4) / 2 = 1.5 log 2
    close(bpr_loss(positive, negatives), 1.5 * LN2)
    # one negative as a [batch] vector: difference 0 -> log 2
    close(bpr_loss(np.array([2.0]), np.array([2.0])), LN2)
    # leaving out the second negative: log 2
    close(bpr_loss(positive, negatives, negative_where=np.array([[True, False]])), LN2)


def test_bpr_matches_manual_formula():
    rng = np.random.default_rng(3)
    positive = rng.normal(size=16).astype(np.float32)
    negatives = rng.normal(size=(16, 5)).astype(np.float32)
    weights = rng.random(16).astype(np.float32)
    where = np.arange(16) < 12
    # -log sigmoid(x) = log(1 + exp(-x)), averaged over the 5 negatives
    manual = np.mean(np.log1p(np.exp(-(positive[:, None] - negatives))), axis=1)
    w, m = weights, where
    close(bpr_loss(positive, negatives, reduce=False), manual, 1e-5)
    close(
        bpr_loss(positive, negatives, weights=weights, where=where),
        np.sum(w * manual * m) / m.sum(),
        1e-5,
    )


def test_bpr_example_without_valid_negatives_is_zero():
    loss = bpr_loss(
        np.array([0.0, 0.0]),
        np.zeros((2, 2)),
        negative_where=np.array([[False, False], [True, True]]),
        reduce=False,
    )
    close(loss, [0.0, LN2])


# ----------------------------------------------------------------------------- softmax


def test_softmax_hand_computed():
    scores = np.array([[0.0, LN2, LN3]])  # exp: 1, 2, 3; sum 6
    close(softmax_cross_entropy_loss(scores, np.array([2])), LN2)  # -log(3/6)
    close(softmax_cross_entropy_loss(scores, np.array([0])), math.log(6))  # -log(1/6)
    # excluding item 1: -log(3 / (1 + 3)) = log(4/3)
    where_items = np.array([[True, False, True]])
    close(softmax_cross_entropy_loss(scores, np.array([2]), where_items=where_items),
          math.log(4 / 3))
    # the positive is kept even when excluded: positive 1 -> -log(2 / (1 + 2 + 3)) = log 3
    close(softmax_cross_entropy_loss(scores, np.array([1]), where_items=where_items), LN3)


def test_softmax_equals_negative_log_softmax_and_optax():
    rng = np.random.default_rng(4)
    scores = (rng.normal(size=(8, 50)) * 2).astype(np.float32)
    positives = rng.integers(0, 50, size=8).astype(np.int32)
    expected = -_log_softmax(scores)[np.arange(8), positives]
    close(softmax_cross_entropy_loss(scores, positives, reduce=False), expected, 1e-5)
    close(
        softmax_cross_entropy_loss(scores, positives),
        jax.jit(optax.softmax_cross_entropy_with_integer_labels)(scores, positives).mean(),
        1e-5,
    )


def test_softmax_where_items_equals_softmax_over_kept_items():
    scores = np.random.default_rng(6).normal(size=(1, 10)).astype(np.float32)
    keep = np.array([True, False, True, True, False, True, True, True, False, True])
    positive = 3
    kept_index = int(np.flatnonzero(keep).tolist().index(positive))
    expected = -_log_softmax(scores[0, keep])[kept_index]
    loss = softmax_cross_entropy_loss(scores, np.array([positive]), where_items=keep[None])
    close(loss, expected, 1e-5)
    grads = jax.jit(jax.grad(
        lambda s: softmax_cross_entropy_loss(s, np.array([positive]), where_items=keep[None])
    ))(scores)
    assert np.all(np.asarray(grads)[0, ~keep] == 0.0)


def test_softmax_invalid_positive_in_masked_row_is_harmless():
    scores = np.zeros((2, 4))
    loss = softmax_cross_entropy_loss(scores, np.array([1, -1]), where=np.array([True, False]))
    close(loss, math.log(4))


# ----------------------------------------------------------------------------- sampled softmax


def test_sampled_softmax_hand_computed():
    positive = np.array([0.0])
    negatives = np.array([[LN2, LN3]])  # exp: 1 (positive), 2, 3
    close(sampled_softmax_loss(positive, negatives), math.log(6))  # -log(1/6)
    # logQ: log q = ln(1/2), ln(1/4) -> corrected ln 2 + ln 2 = ln 4, ln 3 + ln 4 = ln 12
    # -log(1 / (1 + 4 + 12)) = log 17
    log_q = np.log(np.array([[0.5, 0.25]]))
    close(sampled_softmax_loss(positive, negatives, negative_log_probs=log_q), math.log(17), 1e-5)
    # [n_negatives] log-probs broadcast over the batch
    close(sampled_softmax_loss(positive, negatives, negative_log_probs=log_q[0]), math.log(17),
          1e-5)
    # positive corrected too with q = 1/2: ln 2 -> -log(2 / (2 + 4 + 12)) = log 9
    close(
        sampled_softmax_loss(
            positive, negatives, negative_log_probs=log_q, positive_log_probs=np.log(0.5)[None]
        ),
        math.log(9),
        1e-5,
    )
    # removing the second negative as an accidental hit: -log(1/3)
    hits = np.array([[False, True]])
    close(sampled_softmax_loss(positive, negatives, remove_accidental_hits=hits), LN3)


def test_sampled_softmax_over_whole_catalogue_equals_full_softmax():
    batch, n_items = 6, 20
    rng = np.random.default_rng(7)
    scores = (rng.normal(size=(batch, n_items)) * 3).astype(np.float32)
    positives = rng.integers(0, n_items, size=batch).astype(np.int32)
    full = softmax_cross_entropy_loss(scores, positives, reduce=False)
    positive_scores = scores[np.arange(batch), positives]
    # every item as a negative, the positive's own copy removed as an accidental hit
    hits = np.eye(n_items, dtype=bool)[positives]
    sampled = sampled_softmax_loss(
        positive_scores, scores, remove_accidental_hits=hits, reduce=False
    )
    close(sampled, full, 1e-5)
    # uniform q shifts every logit by the same log(n_items): the correction changes nothing
    uniform = np.full((n_items,), -math.log(n_items), np.float32)
    corrected = sampled_softmax_loss(
        positive_scores,
        scores,
        negative_log_probs=uniform,
        positive_log_probs=np.full((batch,), -math.log(n_items), np.float32),
        remove_accidental_hits=hits,
        reduce=False,
    )
    close(corrected, full, 1e-5)
    # ... and a uniform q on negatives only equals a logit shift of log(n_items) on them:
    # loss = logsumexp([s_pos, s_neg + log n]) - s_pos
    only_negatives = sampled_softmax_loss(
        positive_scores, scores, negative_log_probs=uniform, remove_accidental_hits=hits
    )
    shifted = sampled_softmax_loss(
        positive_scores, scores + math.log(n_items), remove_accidental_hits=hits
    )
    close(only_negatives, shifted, 1e-5)


# ----------------------------------------------------------------------------- shared behaviour


def _all_losses_inputs(batch=4, n_negatives=3, n_items=5):
    rng = np.random.default_rng(9)
    scores = rng.normal(size=batch).astype(np.float32)
    negatives = rng.normal(size=(batch, n_negatives)).astype(np.float32)
    catalogue = rng.normal(size=(batch, n_items)).astype(np.float32)
    labels = (rng.random(batch) < 0.5).astype(np.float32)
    positives = (np.arange(batch) % n_items).astype(np.int32)
    return {
        "mse": (mse_loss, scores, labels),
        "bce": (binary_cross_entropy_loss, scores, labels),
        "bpr": (bpr_loss, scores, negatives),
        "softmax": (softmax_cross_entropy_loss, catalogue, positives),
        "sampled_softmax": (sampled_softmax_loss, scores, negatives),
    }


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_degenerate_normalisers_give_zero_loss_and_zero_finite_grads(name):
    loss_fn, first, second = _all_losses_inputs()[name]
    nothing = np.zeros((4,), bool)
    infinite = np.full((4,), np.inf, np.float32)  # padded propensities of 0 give weight 1/0
    zeros = np.zeros((4,), np.float32)

    @jax.jit
    def values_and_grads(first):
        cases = {
            "masked_count": lambda x: loss_fn(x, second, weights=infinite, where=nothing),
            "masked_weights": lambda x: loss_fn(
                x, second, weights=infinite, where=nothing, normalize="weights"
            ),
            "zero_weights": lambda x: loss_fn(x, second, weights=zeros, normalize="weights"),
        }
        return {case: jax.value_and_grad(fn)(first) for case, fn in cases.items()}

    for case, (value, grads) in values_and_grads(first).items():
        assert float(value) == 0.0, case
        assert np.all(np.asarray(grads) == 0.0), case


def test_extreme_logits_give_finite_losses_and_grads():
    big = np.array([1e4, -1e4, 1e4, -1e4])
    labels = np.array([0.0, 1.0, 1.0, 0.0])
    cases = {
        # wrong-way logits cost ~1e4 each; right-way ones ~0: (1e4 + 1e4) / 4
        "bce": (lambda s: binary_cross_entropy_loss(s, labels), big, 5e3),
        # pos - neg = +-2e4: losses 0, 2e4, 0, 2e4 -> mean 1e4
        "bpr": (lambda s: bpr_loss(s, -s), big, 1e4),
        "sampled_softmax": (lambda s: sampled_softmax_loss(s, -s[:, None]), big, 1e4),
        # both rows are [1e4, -1e4]: positive 1 costs 2e4, positive 0 costs ~0 -> mean 1e4
        "softmax": (
            lambda s: softmax_cross_entropy_loss(s.reshape(2, 2), np.array([1, 0])),
            big,
            1e4,
        ),
    }
    for name, (loss_fn, inputs, expected) in cases.items():
        value, grads = jax.jit(jax.value_and_grad(loss_fn))(inputs)
        assert np.isfinite(float(value)), name
        close(value, expected, 1e-4)
        assert np.all(np.isfinite(np.asarray(grads))), name


def test_masked_items_at_extreme_scores_keep_gradients_finite():
    scores = np.array([[1e30, 0.0, -1e30, 3e38]])
    keep = np.array([[False, True, True, False]])
    value, grads = jax.jit(jax.value_and_grad(
        lambda s: softmax_cross_entropy_loss(s, np.array([1]), where_items=keep)
    ))(scores)
    close(value, 0.0)  # only items 1 and 2 remain and exp(-1e30) = 0
    assert np.all(np.isfinite(np.asarray(grads)))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_jit_equals_eager(name):
    _, first, second = _all_losses_inputs()[name]
    loss_fn = LOSSES[name]  # the plain (eager) function
    weights = np.array([0.5, 1.0, 2.0, 4.0])
    where = np.array([True, True, False, True])

    def loss(first, second, weights, where):
        return loss_fn(first, second, weights=weights, where=where, normalize="weights")

    eager = loss(first, second, weights, where)
    jitted = jax.jit(loss)(first, second, weights, where)
    close(jitted, eager, 1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_vmap_over_weights_equals_loop(name):
    loss_fn, first, second = _all_losses_inputs()[name]
    many_weights = np.random.default_rng(10).uniform(0.1, 3.0, (5, 4)).astype(np.float32)

    def loss(weights):
        return loss_fn(first, second, weights=weights)

    batched = jax.vmap(loss)(many_weights)
    looped = np.stack([loss(weights) for weights in many_weights])
    close(batched, looped, 1e-6)


def test_registry_and_get_loss():
    assert set(LOSSES) == {"mse", "bce", "bpr", "softmax", "sampled_softmax"}
    assert get_loss("bpr") is losses.bpr_loss
    assert get_loss("softmax") is losses.softmax_cross_entropy_loss
    with pytest.raises(ConfigError, match=r"train\.loss.*'bprr'.*did you mean 'bpr'") as info:
        get_loss("bprr")
    for name in LOSSES:
        assert name in str(info.value)
    with pytest.raises(ConfigError, match=r"train\.loss") as info:
        get_loss("zzz")
    assert "did you mean" not in str(info.value)


# ----------------------------------------------------------------------------- sampling


def test_sample_negatives_uniform_range_log_probs_and_determinism():
    key = jax.random.key(11)
    items, log_probs = sample_negatives(key, 7, (50, 4))
    assert items.shape == (50, 4) and items.dtype == jnp.int32
    assert log_probs.shape == (50, 4)
    assert int(items.min()) >= 0 and int(items.max()) < 7
    close(log_probs, np.full((50, 4), -math.log(7)))
    again, _ = sample_negatives(key, 7, (50, 4))
    np.testing.assert_array_equal(np.asarray(items), np.asarray(again))
    other, _ = sample_negatives(jax.random.key(12), 7, (50, 4))
    assert not np.array_equal(np.asarray(items), np.asarray(other))


def test_sample_negatives_follow_item_probs():
    weights = np.array([1.0, 2.0, 3.0, 4.0, 0.0])  # unnormalised; item 4 never drawn
    probs = weights / weights.sum()
    n_draws = 200_000
    key = jax.random.key(13)
    items, log_probs = jax.jit(
        lambda key: sample_negatives(key, 5, (n_draws,), item_probs=weights)
    )(key)
    counts = np.bincount(np.asarray(items), minlength=5)
    frequencies = counts / n_draws
    standard_errors = np.sqrt(probs * (1 - probs) / n_draws)
    assert np.all(np.abs(frequencies - probs) <= 5 * standard_errors + 1e-12), frequencies
    assert counts[4] == 0
    close(log_probs, np.log(probs[np.asarray(items)]), 1e-5)
    again, _ = sample_negatives(key, 5, (n_draws,), item_probs=weights)
    np.testing.assert_array_equal(np.asarray(items), np.asarray(again))


def test_sample_negatives_never_draws_excluded_items():
    # global exclusion (e.g. padding id 0): uniform over the other 5 items
    exclude = np.array([True, False, False, True, False, False])
    items, log_probs = sample_negatives(jax.random.key(14), 6, (2000,), exclude=exclude)
    drawn = set(np.asarray(items).tolist())
    assert drawn == {1, 2, 4, 5}
    close(log_probs, np.full(2000, -math.log(4)))

    # per-user exclusion (a user's positives), with popularity weights
    per_user = np.zeros((3, 6), bool)
    per_user[0, :5] = True  # user 0 may only get item 5
    per_user[1, [1, 2]] = True
    per_user[2, 0] = True
    item_probs = np.array([1.0, 1.0, 2.0, 2.0, 4.0, 1.0], np.float32)
    items, log_probs = sample_negatives(
        jax.random.key(15), 6, (3, 500), item_probs=item_probs, exclude=per_user
    )
    items = np.asarray(items)
    assert np.all(items[0] == 5)
    close(np.asarray(log_probs)[0], np.zeros(500), 1e-6)  # the only choice: probability 1
    for user in range(3):
        assert not np.any(per_user[user, items[user]]), user
    # user 1: remaining weights 1, 2, 4, 1 over items 0, 3, 4, 5 (sum 8)
    expected_user1 = np.log(np.array([1, 1, 1, 2, 4, 1]) / 8)[items[1]]  # 1, 2 never drawn
    close(np.asarray(log_probs)[1], expected_user1, 1e-5)


def test_sample_negatives_rejects_mismatched_lead_shape():
    with pytest.raises(ValueError, match="prefix"):
        losses.sample_negatives(jax.random.key(0), 4, (2, 3), exclude=np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="n_items=4"):
        losses.sample_negatives(jax.random.key(0), 4, (2, 3), item_probs=np.ones(5))


def test_sampled_softmax_with_sampled_negatives_is_finite_and_jittable():
    batch, n_items, n_negatives = 8, 30, 5
    scores = np.random.default_rng(16).normal(size=(batch, n_items)).astype(np.float32)
    positives = np.arange(batch)
    popularity = np.arange(1, n_items + 1, dtype=np.float32)

    @jax.jit
    def loss(scores, key):
        negatives, log_probs = sample_negatives(
            key, n_items, (batch, n_negatives), item_probs=popularity
        )
        positive_scores = jnp.take_along_axis(scores, positives[:, None], 1)[:, 0]
        negative_scores = jnp.take_along_axis(scores, negatives, 1)
        hits = negatives == positives[:, None]
        return sampled_softmax_loss(
            positive_scores, negative_scores, negative_log_probs=log_probs,
            remove_accidental_hits=hits,
        )

    value, grads = jax.jit(jax.value_and_grad(loss))(scores, jax.random.key(17))
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grads)))

