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


def make_tiny_model(path):
    """A random 2-layer Llama with SmolLM2's tokenizer. initializer_range 0.2 (not 0.02) gives
    it peaked enough logits that even a soft prompt alone can move the loss."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from genft.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True, initializer_range=0.2,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Path of a tiny random Llama saved once per session (fast stand-in for training tests)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: exactness, not speed, is what they check, and one
    thread is several times faster than two on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
