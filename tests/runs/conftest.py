"""Every test of a run's commands works in its own temporary directory: a command that writes
beside the user (`causalrec explain` without --png writes explain_USER_ITEM.png into the
current directory) must not write into the checkout."""

import pytest


@pytest.fixture(autouse=True)
def _in_a_temporary_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
