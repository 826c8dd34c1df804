"""Counterfactual deletion per model: drop and shift for sequential models, the user re-fit of
ID models (closed form, Newton, chord), LightGCN's propagation, influence functions."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from causalrec_jax.explain import (
    compact_history,
    feature_effects,
    influence_effects,
    keep_without,
    make_history_model,
    make_refit_model,
    single_deletions,
)
from causalrec_jax.explain.deletion import pair_sigmoid
from causalrec_jax.models.bert4rec import BERT4Rec
from causalrec_jax.models.lightgcn import LightGCN
from causalrec_jax.models.mf import MF
from causalrec_jax.models.mlp import MLP
from causalrec_jax.models.sasrec import SASRec

N_ITEMS = 120
HISTORY = np.array([3, 7, 11, 19, 23, 29, 31, 2])


@pytest.fixture(scope="module")
def mf():
    return MF(4, N_ITEMS, embedding_dim=6, key=jax.random.key(0), init_scale=1.0)


@pytest.fixture(scope="module")
def sasrec_parts():
    model = SASRec(N_ITEMS, 10, key=jax.random.key(1), hidden_dim=8, n_layers=1,
                   dropout_rate=0.0, init_std=0.5)
    return nnx.split(model, nnx.Param)


def tokens_of(items, length=10):
    tokens = np.zeros(length, np.int32)
    tokens[length - len(items):] = np.asarray(items) + 1
    return tokens


def test_compact_history_drops_and_shifts():
    tokens = jnp.asarray([0, 0, 4, 5, 6, 7])
    keep = jnp.asarray([1, 1, 1, 0, 1, 0], jnp.float32)
    np.testing.assert_array_equal(compact_history(tokens, keep), [0, 0, 0, 0, 4, 6])


def test_sequential_deletion_reads_the_shorter_history(sasrec_parts):
    graphdef, params = sasrec_parts
    model = nnx.merge(graphdef, params)
    deletion = make_history_model(graphdef, params, tokens_of(HISTORY))
    for position in (4, 9):  # a middle item; the most recent one
        keep = deletion.valid.astype(np.float32)
        keep[position] = 0.0
        shorter = tokens_of(np.delete(HISTORY, position - 2))
        expected = np.asarray(model.score_next(jnp.asarray(shorter)[None])[0])
        np.testing.assert_allclose(deletion.scores(keep), expected, rtol=1e-5, atol=1e-5)
    # SASRec counts positions over real items and masks padding keys: a pad token left in the
    # middle gives the same scores as drop and shift (not so for the last item, read at -1)
    in_place = tokens_of(HISTORY)
    in_place[4] = 0
    keep = deletion.valid.astype(np.float32)
    keep[4] = 0.0
    np.testing.assert_allclose(
        deletion.scores(keep), np.asarray(model.score_next(jnp.asarray(in_place)[None])[0]),
        rtol=1e-5, atol=1e-5)


def test_a_longer_history_lets_an_older_item_into_the_window(sasrec_parts):
    graphdef, params = sasrec_parts
    model = nnx.merge(graphdef, params)
    items = np.arange(12)  # 12 items, window of 10
    deletion = make_history_model(graphdef, params, tokens_of(items, 12))
    keep = deletion.valid.astype(np.float32)
    keep[11] = 0.0
    expected = model.score_next(jnp.asarray(tokens_of(items[1:11], 10))[None])[0]
    np.testing.assert_allclose(deletion.scores(keep), expected, rtol=1e-5, atol=1e-5)
    # deleting an item older than the window changes nothing
    keep = deletion.valid.astype(np.float32)
    keep[0] = 0.0
    np.testing.assert_array_equal(deletion.scores(keep), deletion.scores())


def test_deleting_an_item_not_in_the_history_changes_nothing(mf_case, sasrec_parts):
    refit, target, exclude = mf_case
    sequential = make_history_model(*sasrec_parts, tokens_of(HISTORY))
    for model in (refit, sequential):
        absent = [i for i in range(N_ITEMS) if i not in set(model.history.tolist())][:2]
        keep = keep_without(model.history, absent)
        np.testing.assert_array_equal(keep, model.valid.astype(np.float32))
        np.testing.assert_array_equal(model.scores(keep), model.scores())
        keep = keep_without(model.history, model.history[model.valid][:1])
        assert keep.sum() == model.valid.sum() - 1
        assert not np.array_equal(model.scores(keep), model.scores())


def test_jit_equals_eager(mf_user, sasrec_parts):
    mf, items, ratings = mf_user
    refit = make_refit_model(mf, user=0, items=items, ratings=ratings, loss="mse", l2=1.0)
    sequential = make_history_model(*sasrec_parts, tokens_of(HISTORY))
    for model in (refit, sequential):
        keep = model.valid.astype(np.float32)
        keep[np.flatnonzero(model.valid)[:3]] = 0.0
        eager = model.score_fn(model.data, jnp.asarray(keep))
        jitted = jax.jit(model.score_fn)(model.data, jnp.asarray(keep))
        np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)


def test_mse_refit_is_ridge_regression_on_the_edited_history(mf):
    rng = np.random.default_rng(0)
    ratings = rng.normal(size=len(HISTORY)).astype(np.float32)
    model = make_refit_model(mf, user=1, items=HISTORY, ratings=ratings, loss="mse", l2=0.5)
    keep = model.valid.astype(np.float32)
    keep[[1, 4]] = 0.0
    kept = np.flatnonzero(keep[: len(HISTORY)])
    # theta = [bias, factors]; score = mu + b_i + bias + q_i . factors
    q = np.asarray(mf.item_factors[...])[HISTORY[kept]]
    x = np.concatenate([np.ones((len(kept), 1)), q], axis=1)
    offset = float(mf.global_bias[...]) + np.asarray(mf.item_bias[...])[HISTORY[kept]]
    theta = np.linalg.solve(2 * x.T @ x + 0.5 * np.eye(7), 2 * x.T @ (ratings[kept] - offset))
    refit = np.asarray(mf.item_factors[...]) @ theta[1:] + theta[0]
    # full-history re-fit, and the trained user's scores: the anchor of the deletion scores
    x_all = np.concatenate([np.ones((len(HISTORY), 1)),
                            np.asarray(mf.item_factors[...])[HISTORY]], axis=1)
    offset_all = float(mf.global_bias[...]) + np.asarray(mf.item_bias[...])[HISTORY]
    full = np.linalg.solve(2 * x_all.T @ x_all + 0.5 * np.eye(7),
                           2 * x_all.T @ (ratings - offset_all))
    refit_full = np.asarray(mf.item_factors[...]) @ full[1:] + full[0]
    served = np.asarray(mf.score_all(jnp.asarray([1]))[0])
    np.testing.assert_allclose(model.scores(), served, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.scores(keep), served + refit - refit_full, rtol=1e-4,
                               atol=1e-4)


def test_a_shared_residual_leaves_the_refit_on_nothing_when_everything_is_deleted(mf):
    rng = np.random.default_rng(1)
    ratings = rng.normal(size=len(HISTORY)).astype(np.float32)
    kept, shared = (make_refit_model(mf, user=1, items=HISTORY, ratings=ratings, loss="mse",
                                     l2=0.5, residual=residual)
                    for residual in ("kept", "shared"))
    served = np.asarray(mf.score_all(jnp.asarray([1]))[0])
    # what the served score adds to the full-history re-fit (an untrained MF: far from 0)
    residual = served - np.asarray(kept.data["refit_scores"])
    assert np.abs(residual).max() > 0.5
    np.testing.assert_allclose(shared.scores(), served, rtol=1e-5, atol=1e-5)
    keep = kept.valid.astype(np.float32)
    keep[[0, 5]] = 0.0
    # 6 of the 8 interactions kept: 6/8 of the residual
    np.testing.assert_allclose(shared.scores(keep), kept.scores(keep) - 0.25 * residual,
                               rtol=1e-4, atol=1e-4)
    # nothing left: the ridge re-fit on no rows is theta = 0, the score mu + b_i
    nothing = np.zeros_like(keep)
    bias_only = float(mf.global_bias[...]) + np.asarray(mf.item_bias[...])
    np.testing.assert_allclose(shared.scores(nothing), bias_only, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kept.scores(nothing), bias_only + residual, rtol=1e-4,
                               atol=1e-4)
    assert "shared" in shared.semantics and "served score plus" in kept.semantics
    with pytest.raises(ValueError, match="residual 'half': expected one of kept, shared"):
        make_refit_model(mf, user=1, items=HISTORY, loss="mse", l2=0.5, residual="half")


def test_bpr_refit_converges(mf_case):
    model, _, _ = mf_case
    scorer, data = model.score_fn, model.data
    full = data["valid"].astype(jnp.float32)
    assert float(scorer.gradient_norm(data, data["theta_start"], full)) < 1e-4
    keep = full.at[jnp.arange(2)].set(0.0)
    newton = scorer.refit(data, data["theta_start"], keep, 6, solver="newton")
    assert float(scorer.gradient_norm(data, newton, keep)) < 1e-4
    # chord steps (the full-history curvature, for long histories) land there too
    chord = scorer.refit(data, data["theta_start"], keep, 4, solver="chord")
    np.testing.assert_allclose(ravel_pytree(chord)[0], ravel_pytree(newton)[0], atol=1e-3)


def test_influence_agrees_with_exact_refitting_on_a_convex_case(mf_user, mf_case):
    mf, items, ratings = mf_user
    mse = make_refit_model(mf, user=0, items=items, ratings=ratings, loss="mse", l2=20.0)
    shared = make_refit_model(mf, user=0, items=items, loss="bpr", l2=2.0, residual="shared")
    # squared error and BPR: convex in the user vector; the shared residual adds a term
    # linear in the history weights (an untrained MF: a large one)
    for model in (mse, mf_case[0], shared):
        _, target, exclude = mf_case
        exact = single_deletions(model.score_fn, model.data, jnp.asarray(model.valid),
                                 jnp.asarray(target), jnp.asarray(exclude), k=5)
        exact = (np.asarray(exact.after.score) - float(exact.base.score))[model.valid]
        estimate = influence_effects(model, target)[model.valid]
        loss = model.score_fn.loss
        assert np.corrcoef(exact, estimate)[0, 1] > 0.99, loss
        # first order: the items of high leverage are off by more
        assert np.abs(exact - estimate).mean() < 0.05 * np.abs(exact).max(), loss
    # the shared residual's term, exactly: deleting one of n positions loses r_target / n
    model, target, _ = mf_case
    residual = float(model.data["served"][target] - model.data["refit_scores"][target])
    lost = residual / model.valid.sum()
    assert abs(lost) > 0.01
    np.testing.assert_allclose(
        (influence_effects(shared, target) - influence_effects(model, target))[model.valid],
        -lost, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="residual 'Shared': expected one of kept, shared"):
        dataclasses.replace(shared.score_fn, residual="Shared")


def test_lightgcn_propagation_of_the_full_history_is_the_model():
    users = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    items = np.array([0, 1, 2, 1, 3, 0, 2, 3, 4])
    model = LightGCN(3, 6, embedding_dim=4, n_layers=2, train_edges=(users, items),
                     key=jax.random.key(0), init_scale=1.0)
    deletion = make_refit_model(model, user=2, items=[0, 2, 3, 4], loss="bpr", l2=0.1,
                                base_steps=0)  # no re-fit: the trained layer-0 vector
    scorer, data = deletion.score_fn, deletion.data
    scores = scorer.user_scores(data, data["theta_start"], data["valid"].astype(jnp.float32))
    np.testing.assert_allclose(scores, model.score_all(jnp.asarray([2]))[0], rtol=1e-5,
                               atol=1e-6)
    # with the re-fit off, a deletion still acts through the user's propagated layers
    no_refit = make_refit_model(model, user=2, items=[0, 2, 3, 4], loss="bpr", l2=0.1,
                                base_steps=0, n_steps=0)
    keep = no_refit.valid.astype(np.float32)
    keep[1] = 0.0
    assert not np.allclose(no_refit.scores(keep), no_refit.scores())


def test_mf_without_a_refit_ignores_deletions(mf):
    model = make_refit_model(mf, user=0, items=HISTORY, loss="bce", l2=1.0, base_steps=0,
                             n_steps=0)
    keep = model.valid.astype(np.float32)
    keep[:4] = 0.0
    np.testing.assert_array_equal(model.scores(keep), model.scores())


def test_mlp_refit_with_user_features_descends():
    features = np.eye(3, dtype=np.float32)
    mlp = MLP(3, 30, embedding_dim=4, hidden_dims=(8,), key=jax.random.key(2),
              user_features=features)
    model = make_refit_model(mlp, user=1, items=[1, 5, 9, 12], loss="bce", l2=0.5,
                             base_steps=6)
    scorer, data = model.score_fn, model.data
    full = data["valid"].astype(jnp.float32)
    trained = {"embedding": mlp.user_embedding[...][1]}
    fitted = float(scorer.objective(data, data["theta_start"], full))
    assert fitted < float(scorer.objective(data, trained, full)) - 0.1
    # ReLU makes the objective piecewise smooth: the fit may stop at a kink, but further
    # steps (never uphill) gain almost nothing
    further = scorer.refit(data, data["theta_start"], full, 6)
    assert fitted - 0.01 < float(scorer.objective(data, further, full)) <= fitted


def test_bert4rec_deletion_matches_its_scorer():
    model = BERT4Rec(N_ITEMS, 10, key=jax.random.key(4), hidden_dim=8, n_layers=1,
                     dropout_rate=0.0, init_std=0.5)
    graphdef, params = nnx.split(model, nnx.Param)
    deletion = make_history_model(graphdef, params, tokens_of(HISTORY))
    np.testing.assert_allclose(
        deletion.scores(), model.score_next(jnp.asarray(tokens_of(HISTORY))[None])[0],
        rtol=1e-5, atol=1e-5)
    # the relaxation at weights 1 is the model
    relaxed = deletion.relaxed_fn(deletion.data, jnp.ones(10, jnp.float32))
    np.testing.assert_allclose(relaxed, deletion.scores(), rtol=1e-5, atol=1e-5)


def test_feature_effects_remove_one_feature_at_a_time():
    features = np.asarray([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]], np.float32)
    mlp = MLP(2, 30, embedding_dim=4, hidden_dims=(8,), key=jax.random.key(6),
              user_features=features)
    model = make_refit_model(mlp, user=0, items=[1, 5, 9], loss="bce", l2=0.5,
                             feature_names=("a", "b", "c"))
    effects = feature_effects(model)
    assert effects.shape == (3, 30) and model.feature_names == ("a", "b", "c")
    np.testing.assert_allclose(effects[1], 0.0, atol=1e-6)  # the user lacks feature b
    served = np.asarray(mlp.score_all(jnp.asarray([0]))[0])
    np.testing.assert_allclose(model.scores(), served, rtol=1e-5, atol=1e-5)
    without_c = MLP(2, 30, embedding_dim=4, hidden_dims=(8,), key=jax.random.key(6),
                    user_features=features * np.asarray([1.0, 1.0, 0.0], np.float32))
    np.testing.assert_allclose(served + effects[2],
                               without_c.score_all(jnp.asarray([0]))[0], rtol=1e-5, atol=1e-5)
    mf = MF(2, 30, embedding_dim=4, key=jax.random.key(0))
    assert feature_effects(make_refit_model(mf, user=0, items=[1, 2], loss="bce",
                                            l2=1.0)) is None


def test_a_bpr_user_without_l2_still_has_a_chord_factor(mf):
    """BPR does not see the user bias, so without L2 the user's curvature is singular along
    it: the damping of `deletion.damped` keeps its Cholesky factor (the chord steps') finite
    and the re-fits with it."""
    model = make_refit_model(mf, user=0, items=HISTORY, loss="bpr", l2=0.0, n_steps=2,
                             solver="chord")
    assert np.isfinite(np.asarray(model.data["curvature_start"])).all()
    assert np.isfinite(model.scores(keep_without(model.valid, [0]))).all()


def test_pair_sigmoid_equals_the_sigmoid_of_the_differences():
    rng = np.random.default_rng(3)
    items = jnp.asarray(rng.choice(50, 12, replace=False))
    for spread in (1.0, 20.0, 159.0):  # the last: exponents near +-80, sigmoids saturated
        scores = rng.uniform(-spread / 2, spread / 2, 50).astype(np.float32)
        scores[[0, 1]] = -spread / 2, spread / 2
        scores = jnp.asarray(scores + 40.0)  # off centre: the centre is the range's middle
        exact = jax.nn.sigmoid(scores[None, :] - scores[items][:, None])
        np.testing.assert_allclose(pair_sigmoid(scores, items), exact, rtol=1e-5, atol=1e-7)
    # wider than PAIR_SPAN (a diverged fit): NaN, never wrong numbers
    wide = jnp.asarray(np.r_[0.0, 5.0, 195.0, 200.0, np.zeros(46)].astype(np.float32))
    assert np.isnan(np.asarray(pair_sigmoid(wide, jnp.asarray([0, 3])))).all()
    outside = int(np.setdiff1d(np.arange(50), np.asarray(items))[0])
    nan = jnp.zeros(50).at[outside].set(jnp.nan)
    pairs = np.asarray(pair_sigmoid(nan, items))
    assert np.isnan(pairs[:, outside]).all()
    assert np.isfinite(np.delete(pairs, outside, axis=1)).all()


@pytest.mark.parametrize("kind", ["mf", "lightgcn"])
def test_the_written_out_bpr_derivatives_equal_automatic_ones(mf_case, kind):
    """The gradient and curvature `RefitDeletion` writes out for BPR on the affine kinds (the
    whole cost of a re-fit) equal the derivatives JAX takes of the objective, under a
    deletion (the deleted item joins the negatives) and at a point away from the fit."""
    if kind == "mf":
        model = mf_case[0]
    else:
        users = np.repeat(np.arange(4), 9)
        items = np.random.default_rng(1).integers(0, 40, users.size)
        graph = LightGCN(4, 40, embedding_dim=5, n_layers=2, train_edges=(users, items),
                         key=jax.random.key(2), init_scale=1.0)
        model = make_refit_model(graph, user=1, items=np.unique(items[users == 1]),
                                 loss="bpr", l2=0.3)
    scorer, data = model.score_fn, model.data
    flat, unravel = ravel_pytree(data["theta_start"])
    theta = unravel(flat + 0.3 * jnp.sin(jnp.arange(flat.size, dtype=jnp.float32)))
    keep = data["valid"].astype(jnp.float32).at[jnp.asarray([0, 2])].set(0.0)
    assert scorer.loss == "bpr" and scorer.kind == kind

    def objective(f):
        return scorer.objective(data, unravel(f), keep)

    point = ravel_pytree(theta)[0]
    np.testing.assert_allclose(scorer.gradient(data, theta, keep), jax.grad(objective)(point),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scorer.curvature(data, theta, keep),
                               jax.hessian(objective)(point), rtol=1e-4, atol=1e-5)
