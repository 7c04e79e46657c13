"""Every method trains on a tiny real task (tweets): the loss falls, the right parameters move,
and the checkpoint loads with genft.models.load_model.

The default suite trains a tiny random Llama (2 layers, width 64) with SmolLM2's tokenizer,
so each method takes seconds on a loaded 2-core machine; the slow suite repeats the
loss check on the real SmolLM2-135M.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from genft.models import load_model
from genft.training import TrainConfig, param_change, train
from genft.training.loop import LOG_FILE, _Run

TINY = dict(tasks=["tweet_sentiment"], train_size=8, batch_size=4, max_length=96, steps=6, seed=0,
            lr=1e-2, stage1_lr=0.1)


@pytest.fixture(scope="session")
def tiny_base(tiny_model):
    return load_model(tiny_model)


def run(tmp_path, model, name="run", **overrides):
    cfg = TrainConfig(**{**TINY, **overrides}, model=model, out=str(tmp_path / name))
    final = train(cfg, progress=False)
    log = pd.read_json(tmp_path / name / LOG_FILE, lines=True)
    return final, log


def assert_loss_falls(log, stage="train", factor=0.5):
    """The last two steps' loss is at most ``factor`` times the first two steps'."""
    loss = log[log["stage"] == stage]["loss"].tolist()
    assert sum(loss[-2:]) < factor * sum(loss[:2]), loss


def weights(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def same(a, b):
    return all(torch.equal(a[n], b[n]) for n in a)


@pytest.fixture(scope="module")
def ft_run(tiny_model, tmp_path_factory):
    return run(tmp_path_factory.mktemp("ft"), tiny_model, method="ft")


def test_ft_loss_falls_and_checkpoint_loads(ft_run, tiny_base):
    final, log = ft_run
    assert_loss_falls(log)
    meta = json.loads((final / "genft_checkpoint.json").read_text())
    assert meta["weights"] == "full" and meta["method"] == "ft" and meta["tasks"] == ["tweet_sentiment"]
    loaded = load_model(str(final))
    assert loaded.method == "ft" and loaded.soft_prompts == {}
    assert not same(weights(tiny_base.model), weights(loaded.model))


def test_param_change_reports_per_module_and_overall(ft_run, tiny_base):
    final, _ = ft_run
    stats = param_change(tiny_base.model, final)
    assert stats["overall"]["mean_abs_change"] > 0
    assert {"q_proj", "down_proj", "embed_tokens", "input_layernorm"} <= set(stats["by_module"])
    total = sum(s["params"] for s in stats["by_module"].values())
    assert total == stats["overall"]["params"] == sum(p.numel() for p in tiny_base.model.parameters())
    same_model = param_change(tiny_base.model, tiny_base.name)
    assert same_model["overall"]["mean_abs_change"] == 0


def test_fticl_loss_falls(tmp_path, tiny_model):
    final, log = run(tmp_path, tiny_model, method="fticl", shots=2, max_length=256,
                     train_size=24, batch_size=8)
    assert_loss_falls(log)
    assert json.loads((final / "genft_checkpoint.json").read_text())["method"] == "fticl"


def test_lora_trains_only_adapters(tmp_path, tiny_model, tiny_base):
    final, log = run(tmp_path, tiny_model, method="lora", lr=5e-2, steps=8)
    assert_loss_falls(log)
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    stats = param_change(tiny_base.model, final)  # merged: only the targeted projections moved
    moved = {k for k, s in stats["by_module"].items() if s["mean_abs_change"] > 0}
    assert moved == {"q_proj", "v_proj"}


def test_lora_run_is_reproducible_from_its_seed(tmp_path, tiny_model):
    """The adapters start from random matrices: the same seed must give the same trained weights."""
    from genft.training.checkpoint import read_weights

    a, _ = run(tmp_path, tiny_model, name="a", method="lora", steps=2)
    b, _ = run(tmp_path, tiny_model, name="b", method="lora", steps=2)
    c, _ = run(tmp_path, tiny_model, name="c", method="lora", steps=2, seed=1)
    wa, wb, wc = read_weights(a), read_weights(b), read_weights(c)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_a_run_is_a_function_of_its_seed_not_of_what_ran_before(tmp_path):
    """Dropout draws from torch's global generator: the trainer seeds it from ``seed``, so a
    job trained after other work in the same process (as `genft run` trains its jobs, or a
    resumed grid in another order) ends with the same weights as one trained first."""
    from transformers import AutoConfig

    from conftest import make_tiny_model
    from genft.training.checkpoint import read_weights

    path = make_tiny_model(tmp_path / "tiny-dropout")
    config = AutoConfig.from_pretrained(path)
    config.attention_dropout = 0.3
    config.save_pretrained(path)
    finals = []
    for name, before in (("a", 1), ("b", 2)):
        torch.manual_seed(before)  # whatever ran earlier in the process left this state
        finals.append(run(tmp_path, path, name=name, method="ft", steps=2)[0])
    wa, wb = (read_weights(f) for f in finals)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    torch.manual_seed(1)
    wc = read_weights(run(tmp_path, path, name="c", method="ft", steps=2, seed=1)[0])
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)  # the dropout noise is drawn


def test_prompt_tuning_keeps_model_bitwise(tmp_path, tiny_model, tiny_base):
    # 20 steps: on 10 the loss halved on the old splits but not on the text-disjoint ones
    final, log = run(tmp_path, tiny_model, method="prompt-tuning", prompt_length=8, lr=0.1,
                     steps=20)
    assert_loss_falls(log)
    assert same(weights(tiny_base.model), weights(load_model(str(final)).model))
    loaded = load_model(str(final))
    assert loaded.soft_prompt_for("tweet_sentiment").shape == (8, 64)
    assert loaded.soft_prompt_for("bbc_topic") is None


def test_soft_prompt_gradients_are_bitwise_reproducible_on_two_threads(tiny_model):
    """The quickstart's ProMoT numbers changed between two runs of one seed: at two threads the
    backward of ``table[task_index]`` added a task's rows with atomic float adds in thread order."""
    from genft.training.methods import PromptedLM

    lm = load_model(tiny_model).model
    lm.requires_grad_(False)  # stage 1: the model frozen, only the prompts train
    prompts = torch.nn.ModuleList()
    for _ in range(2):  # shaped like PEFT's PromptEmbedding: the table is its .embedding
        prompts.append(torch.nn.Module())
        prompts[-1].embedding = torch.nn.Embedding(80, lm.config.hidden_size)
    module = PromptedLM(lm, prompts)
    generator = torch.Generator().manual_seed(0)
    batch = dict(input_ids=torch.randint(0, 1000, (8, 12), generator=generator),
                 loss_rows=torch.arange(8), loss_cols=torch.full((8,), 11),
                 loss_targets=torch.randint(0, 1000, (8,), generator=generator),
                 task_index=torch.tensor([0, 0, 0, 0, 0, 0, 1, 1]))
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # one thread is always in order; the race needs two
    try:
        grads = []
        for _ in range(12):
            prompts.zero_grad(set_to_none=True)
            module(**batch).backward()
            grads.append([p.embedding.weight.grad.clone() for p in prompts])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(g[0], grads[0][0]) and torch.equal(g[1], grads[0][1]) for g in grads)
    assert grads[0][0].abs().sum() > 0 and grads[0][1].abs().sum() > 0


def test_promot_stage1_freezes_model_stage2_freezes_prompt(tmp_path, tiny_model, tiny_base, monkeypatch):
    seen = {}
    original_save = _Run.save

    def spy(self, path, stage, step):
        if stage.name == "stage1":
            seen["model_after_stage1"] = weights(self.lm)
        return original_save(self, path, stage, step)

    monkeypatch.setattr(_Run, "save", spy)
    final, log = run(tmp_path, tiny_model, method="promot", stage1_steps=4, prompt_length=8,
                     stage1_eval_every=2, dev_size=8)
    assert same(weights(tiny_base.model), seen["model_after_stage1"])  # stage 1: model bitwise unchanged
    stage1 = load_model(str(tmp_path / "run" / "stage1"))
    after = load_model(str(final))
    prompt1, prompt2 = stage1.soft_prompt_for("tweet_sentiment"), after.soft_prompt_for("tweet_sentiment")
    assert torch.equal(prompt1, prompt2)  # stage 2: soft prompt bitwise unchanged
    assert not same(weights(tiny_base.model), weights(after.model))  # ...while the model trained
    assert after.method == "promot" and after.tasks == ["tweet_sentiment"]
    assert set(log["stage"]) >= {"stage1", "stage1-dev", "stage2"}
    assert_loss_falls(log, "stage2")
    dev = log[log["stage"] == "stage1-dev"]
    assert len(dev) == 3  # before training, at step 2 and at step 4


def test_multitask_trains_on_a_mixture(tmp_path, tiny_model):
    final, log = run(tmp_path, tiny_model, method="multitask", tasks=["tweet_sentiment", "bbc_topic"],
                     train_size=4, max_length=160)
    assert_loss_falls(log)
    assert json.loads((final / "genft_checkpoint.json").read_text())["tasks"] == [
        "tweet_sentiment", "bbc_topic"]


def test_joint_trains_prompt_and_model_together(tmp_path, tiny_model, tiny_base):
    final, log = run(tmp_path, tiny_model, method="joint", prompt_length=8)
    assert_loss_falls(log)
    loaded = load_model(str(final))
    assert not same(weights(tiny_base.model), weights(loaded.model))
    assert loaded.soft_prompt_for("tweet_sentiment") is not None


def test_multitask_promot_has_one_prompt_per_task(tmp_path, tiny_model):
    final, log = run(tmp_path, tiny_model, method="promot", tasks=["tweet_sentiment", "bbc_topic"],
                     train_size=4, max_length=160, stage1_steps=2, prompt_length=4, dev_size=4,
                     promot_shots=1, stage2="lora", lr=5e-2, steps=8)
    loaded = load_model(str(final))
    assert set(loaded.soft_prompts) == {"tweet_sentiment", "bbc_topic"}
    assert not torch.equal(loaded.soft_prompts["tweet_sentiment"], loaded.soft_prompts["bbc_topic"])
    assert_loss_falls(log, "stage2", factor=0.7)  # longer 1-shot inputs, two tasks: slower


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [
    ("ft", {}), ("fticl", {"shots": 2, "train_size": 24, "max_length": 384}), ("lora", {"lr": 3e-3}),
    ("prompt-tuning", {"lr": 3e-2}), ("joint", {}),
    ("promot", {"stage1_steps": 4, "dev_size": 8}),
    ("multitask", {"tasks": ["tweet_sentiment", "bbc_topic"], "train_size": 4, "max_length": 200})])
def test_loss_falls_on_smollm2(tmp_path, method, extra):
    """The real default model: every method lowers the answer loss within 6 steps."""
    overrides = {"lr": 2e-4, "stage1_lr": 3e-2, "prompt_length": 8, **extra}
    _, log = run(tmp_path, "smollm2-135m", method=method, **overrides)
    assert_loss_falls(log, "stage2" if method == "promot" else "train")
