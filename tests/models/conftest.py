"""Fixtures for the model tests."""

from __future__ import annotations

import pytest
from flax import nnx


@pytest.fixture(autouse=True)
def tree_mode():
    """Runs each test with NNX in tree mode (`nnx.set_graph_mode(False)`, DESIGN §4).

    Tree mode treats a module as a plain pytree (no shared references), which is how the
    library uses models: split once, merge inside pure functions. Used as a context manager
    so the global mode is restored after the test; flax versions without it run as they are.
    """
    if not hasattr(nnx, "set_graph_mode"):
        yield
        return
    with nnx.set_graph_mode(False):
        yield
