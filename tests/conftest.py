"""Shared fixtures. The default model is loaded once per test session (it is small, but
conversion from GGUF on a fresh machine takes ~30 s)."""

from __future__ import annotations

import copy

import pytest


@pytest.fixture(scope="session")
def smol():
    """The default model (SmolLM2-135M-Instruct, fp32) as a LoadedModel. Do not mutate it;
    use `smol_copy` for anything that trains."""
    from genft.models import DEFAULT_MODEL, load_model

    return load_model(DEFAULT_MODEL)


@pytest.fixture
def smol_copy(smol):
    """A private deep copy of the default model, safe to train."""
    return copy.deepcopy(smol)


@pytest.fixture(scope="session")
def tasks():
    """The registry of built-in tasks."""
    from genft.tasks import registry

    return registry()
