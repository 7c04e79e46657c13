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



HUB_FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "hub"


@pytest.fixture
def mirror_env(monkeypatch):
    """GENFT_HUB_MIRROR=tests/fixtures/hub: Hub tasks read the local fixtures. The cached
    registry is cleared before and after, so no other test sees fixture records."""
    from genft.tasks.registry import registry

    monkeypatch.setenv("GENFT_HUB_MIRROR", str(HUB_FIXTURES))
    registry.cache_clear()
    yield HUB_FIXTURES
    registry.cache_clear()


@pytest.fixture(scope="session")
def hub_mirror():
    """A private registry of every built-in task, all records loaded, Hub tasks from the
    fixtures (loaded once: reading 50 fixture splits through `datasets` takes seconds)."""
    from genft.tasks.registry import TaskRegistry

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENFT_HUB_MIRROR", str(HUB_FIXTURES))
        reg = TaskRegistry()
        for task in reg.all():
            task.sizes()
    return reg
