"""Explaining many users of one model compiles each program once: the deletion models of two
users hold equal (value-compared) scorers and relaxations, so the jitted searches and
baselines find them in their caches."""

import jax
import numpy as np

from causalrec_jax.explain import baselines, integrated_gradients, make_refit_model
from causalrec_jax.models.mf import MF


def test_two_users_share_every_compiled_program():
    mf = MF(4, 40, embedding_dim=3, key=jax.random.key(0))
    first = make_refit_model(mf, user=0, items=[1, 2, 3, 4], loss="bce", l2=1.0)
    second = make_refit_model(mf, user=1, items=[5, 6, 7, 8], loss="bce", l2=1.0)
    assert first.score_fn == second.score_fn
    assert first.relaxed_fn == second.relaxed_fn
    assert hash(first.relaxed_fn) == hash(second.relaxed_fn)
    assert first.influence_fn == second.influence_fn
    integrated_gradients(first, 10, key=jax.random.key(1))
    size = baselines._integrated._cache_size()
    effects = integrated_gradients(second, 11, key=jax.random.key(1))
    assert baselines._integrated._cache_size() == size  # no second compilation
    assert effects.shape == second.valid.shape and np.isfinite(effects[second.valid]).all()
    other = make_refit_model(mf, user=1, items=[5, 6, 7, 8], loss="mse", l2=1.0)
    assert other.relaxed_fn != first.relaxed_fn  # a different objective is another program
