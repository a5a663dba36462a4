"""Shared fixtures (the environment is set by the root conftest.py)."""

import pytest


@pytest.fixture(scope="session")
def minilm():
    from lightweight.minilm import load_minilm

    return load_minilm()
