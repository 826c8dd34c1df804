"""Shared deletion models: one MF user with 30 past items out of 120 (programs compiled once
for the tests of a file)."""

import jax
import numpy as np
import pytest

from causalrec_jax.explain import make_refit_model
from causalrec_jax.models.mf import MF

N_ITEMS = 120


@pytest.fixture(scope="session")
def mf_user():
    """`(mf, items [30], ratings [30])`."""
    mf = MF(3, N_ITEMS, embedding_dim=6, key=jax.random.key(0), init_scale=1.0)
    rng = np.random.default_rng(0)
    items = rng.choice(N_ITEMS, 30, replace=False)
    return mf, items, rng.normal(size=30).astype(np.float32)


@pytest.fixture(scope="session")
def mf_case(mf_user):
    """`(BPR deletion model, target, exclude)`: the user's top item, the history excluded."""
    mf, items, _ = mf_user
    model = make_refit_model(mf, user=0, items=items, loss="bpr", l2=2.0,
                             item_counts=np.arange(N_ITEMS) % 17)
    exclude = np.zeros(N_ITEMS, bool)
    exclude[items] = True
    target = int(np.argmax(np.where(exclude, -np.inf, model.scores())))
    return model, target, exclude
