"""Shared fixtures. Progress bars are off in tests (tqdm reads TQDM_DISABLE, kernels inherit it)."""

import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm():
    from lightweight.minilm import load_minilm

    return load_minilm()
