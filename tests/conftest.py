"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# The real datasets live next to the repository (../shared/data from its root); they are
# optional, so tests that need them skip when the folder is absent.
SHARED_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder of real datasets (`coat/`, `ml-100k/`); skips the test when it is absent."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA_DIR} (optional, read-only)")
    return SHARED_DATA_DIR
