"""The greedy search's first step read from the single deletions `explain` has already scored
gives the search that scores them again: same set, order, standing, on the hand-built toy of
`test_search` and on an MF re-fit (BPR), with and without candidate restriction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalrec_jax.explain import explain
from causalrec_jax.explain.search import greedy_search, single_deletions

from .test_search import toy


def same(a, b):
    for left, right in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(left), np.asarray(right))


@pytest.mark.parametrize("competitor", [5.5, 2.5, 11.0, -0.5, 9.5])
@pytest.mark.parametrize("max_size", [1, 3])
def test_the_toy_searches_agree(competitor, max_size):
    args = toy(competitor)
    singles = single_deletions(*args, k=1)
    for candidates in (None, jnp.asarray([2, 0, 4], jnp.int32)):
        same(greedy_search(*args, k=1, max_size=max_size, candidates=candidates),
             greedy_search(*args, k=1, max_size=max_size, candidates=candidates,
                           singles=singles))


# Each K compiles its own search; K = 2 in make test, the others in make test-all.
@pytest.mark.parametrize("k", [2, pytest.param(5, marks=pytest.mark.slow),
                               pytest.param(12, marks=pytest.mark.slow)])
def test_explain_takes_the_same_greedy_set(mf_case, k):
    model, target, exclude = mf_case
    valid = jnp.asarray(model.valid)
    args = (model.score_fn, model.data, valid, jnp.asarray(target), jnp.asarray(exclude))
    rescored = greedy_search(*args, k=k, max_size=10, chunk_size=model.chunk_size)
    explanation = explain(model, target, k=k, exclude=exclude)
    order = np.asarray(rescored.order)[: int(rescored.size)]
    positions = np.flatnonzero(model.valid)
    np.testing.assert_array_equal(positions[explanation.minimal_set], order)
    assert explanation.found == bool(rescored.found)
    assert explanation.rank_after_set == int(rescored.after.rank)
    np.testing.assert_allclose(explanation.score_after_set, float(rescored.after.score),
                               rtol=1e-5, atol=1e-6)
