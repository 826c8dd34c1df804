"""`objectives.with_drawn_negatives`: a batch carrying its key's negatives, drawn once, gives
the objective the same pairs, loss and gradient as drawing them inside it (what a private
unit relies on to gather its rows and score them without drawing twice)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.config import ModelConfig
from causalrec_jax.models.base import make_scorers
from causalrec_jax.models.factory import init_params
from causalrec_jax.train.objectives import (
    DRAWN_NEGATIVES,
    make_objective,
    scored_pairs,
    seen_items_data,
    with_drawn_negatives,
)

N_USERS, N_ITEMS = 5, 12


@pytest.mark.parametrize("loss", ["bpr", "sampled_softmax", "mse"])
def test_drawn_negatives_give_the_objective_its_own_draw(loss):
    rng = np.random.default_rng(0)
    users = rng.integers(0, N_USERS, 16).astype(np.int32)
    items = rng.integers(0, N_ITEMS, 16).astype(np.int32)
    batch = {"users": jnp.asarray(users), "items": jnp.asarray(items),
             "ratings": jnp.asarray(rng.integers(1, 6, 16), jnp.float32),
             "mask": jnp.ones(16, bool),
             **{k: jnp.asarray(v) for k, v in
                seen_items_data(users, items, N_USERS, N_ITEMS).items()}}
    parts = init_params(ModelConfig(name="mf", embedding_dim=4), n_users=N_USERS,
                        n_items=N_ITEMS, keys=jax.random.key(0)[None])
    params = jax.tree.map(lambda leaf: leaf[0], parts.params)
    scorers = make_scorers(parts.graphdef, parts.constants)
    objective = make_objective(loss, scorers.score_pairs, scorers.score_all, n_items=N_ITEMS,
                               n_negatives=3)
    key = jax.random.key(4)
    pair_users, pair_items, drawn = with_drawn_negatives(loss, batch, key, N_ITEMS, 3)
    want_users, want_items = scored_pairs(loss, batch, key, N_ITEMS, 3)
    np.testing.assert_array_equal(pair_users, want_users)
    np.testing.assert_array_equal(pair_items, want_items)
    assert (DRAWN_NEGATIVES in drawn) == (loss != "mse")
    (value, _), grads = jax.value_and_grad(objective, has_aux=True)(params, batch, key)
    (drawn_value, _), drawn_grads = jax.value_and_grad(objective, has_aux=True)(
        params, drawn, key)
    assert float(drawn_value) == pytest.approx(float(value), rel=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(drawn_grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
    if loss != "mse":  # and it is read: other negatives change the loss
        other = {**drawn, DRAWN_NEGATIVES: (drawn[DRAWN_NEGATIVES] + 1) % N_ITEMS}
        assert float(objective(params, other, key)[0]) != pytest.approx(float(value))
