"""The method registry: a method is defined once and every layer reads it. A toy method
registered here (genft itself unedited) runs through `genft run`; grouping is a property of
any method entry; the plan counts steps as the trainer does; optimizer groups and the
ProMoT dev check do what they say."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from genft.cli import main
from genft.errors import GenftError
from genft.experiments.config import ExperimentConfig
from genft.experiments.plan import build_plan, total_steps
from genft.experiments.store import Store
from genft.training import TrainConfig, train
from genft.training.method_registry import (Method, Stage, fticl_shots, get_method, main_schedule,
                                            optimizer_steps, register_method, unregister_method)

TOY_COLOR = "#123456"


@pytest.fixture
def toy_method():
    """LoRA adapters trained with FTICL's demos: existing pieces, one registration call."""
    method = register_method(Method(
        "lora-icl", default_lr=1e-3, demos=True, color=TOY_COLOR,
        stages=lambda cfg, tasks: [Stage("train", "lora", "none", fticl_shots(cfg, tasks),
                                         **main_schedule(cfg))]))
    yield method
    unregister_method(method.name)


def test_a_registered_method_runs_through_genft_run(tmp_path, tiny_model, toy_method):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "toy", "model": tiny_model, "train_tasks": ["tweet_sentiment"],
        "methods": {"lora-icl": {"shots": 1}},
        "training": {"steps": 2, "batch_size": 2, "max_length": 128}, "train_sizes": [8],
        "test": ["tweet_sentiment"], "shots": [0], "limit": 2}))
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    store = Store(out / "results.db")
    [ck] = store.checkpoints()
    assert ck["method"] == "lora-icl"
    final = tmp_path / "out" / "checkpoints" / ck["job_key"] / "final"
    meta = json.loads((final / "genft_checkpoint.json").read_text())
    assert meta["method"] == "lora-icl" and meta["weights"] == "lora"
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    assert meta["train_config"]["lr"] is None and TrainConfig(**meta["train_config"], out="x"
                                                             ).learning_rate == 1e-3
    assert {c["model_label"] for c in store.cells()} == {"base", "lora-icl"}
    from genft.report.figures import color

    assert color("lora-icl") == TOY_COLOR


def test_an_unknown_method_names_the_registered_ones():
    with pytest.raises(GenftError, match="unknown method 'fticll'.*did you mean.*fticl"):
        TrainConfig(tasks=["t"], method="fticll", steps=1, out="x")
    with pytest.raises(Exception, match="unknown method 'fticll'"):
        ExperimentConfig.model_validate({"train_tasks": ["tweet_sentiment"],
                                         "methods": {"a": {"method": "fticll"}}})


BASE = {"train_tasks": ["tweet_sentiment", "bbc_topic"], "test": ["tweet_sentiment"], "shots": [0]}


def test_group_all_makes_any_method_multi_task():
    p = build_plan(ExperimentConfig.model_validate({**BASE, "methods": {
        "promot": {}, "promot-mt": {"method": "promot", "group": "all"}, "multitask": {},
        "ft-mt": {"method": "ft", "group": "all"}}}))
    groups = {(j.label, j.tasks) for j in p.jobs}
    assert groups == {("promot", ("tweet_sentiment",)), ("promot", ("bbc_topic",)),
                      ("promot-mt", ("tweet_sentiment", "bbc_topic")),
                      ("multitask", ("tweet_sentiment", "bbc_topic")),
                      ("ft-mt", ("tweet_sentiment", "bbc_topic"))}
    with pytest.raises(GenftError, match="methods.multitask.*at least 2 tasks"):
        build_plan(ExperimentConfig.model_validate({**BASE, "methods": {"multitask": {"group": "each"}}}))


@pytest.mark.parametrize("key, message", [
    ("tasks", "use `group: all`"), ("seed", "`seeds`"), ("train_size", "`train_sizes`"),
    ("model", "top-level `model`")])
def test_a_key_the_grid_would_overwrite_is_an_error(tmp_path, key, message):
    from genft.experiments.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, "methods": {"promot": {key: ["bbc_topic"]}}}))
    with pytest.raises(GenftError, match=f"cannot be set in a method entry.*{message}") as e:
        load_config(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_the_plan_counts_steps_as_the_trainer_and_with_the_process_count(tmp_path, tiny_model, tasks):
    group = [tasks.get("tweet_sentiment")]
    tc = TrainConfig(model=tiny_model, tasks=["tweet_sentiment"], method="ft", epochs=1.0,
                     train_size=7, batch_size=2, max_length=96, out=str(tmp_path / "ft"))
    planned = total_steps(tc, group)
    assert planned == 4  # ceil(7 / 2) micro-batches
    assert total_steps(tc, group, world_size=2) == 2
    train(tc, progress=False)
    log = [json.loads(line) for line in (tmp_path / "ft" / "train_log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in log if r["stage"] == "train") == planned
    # ProMoT: the last stage's steps, whatever stage 1's
    promot = TrainConfig(tasks=["tweet_sentiment"], method="promot", steps=9, stage1_steps=5, out="x")
    assert total_steps(promot, group) == 9
    stage = Stage("s", "full", "none", [0], None, 2.0, 1e-3)
    assert optimizer_steps(stage, 10, 3, 2, 1) == math.ceil(2 * 4 / 2)
    assert get_method("multitask").group == "all"


def test_weight_decay_only_on_matrices_not_norms_biases_embeddings_or_prompts(tiny_model):
    from genft.models import load_model
    from genft.training.methods import PromptedLM, param_groups

    lm = load_model(tiny_model).model
    prompts = torch.nn.ModuleList([torch.nn.Embedding(4, lm.config.hidden_size)])
    module = PromptedLM(lm, prompts)
    module.lm.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    decay, no_decay = param_groups(module, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decayed and all(n.endswith("proj.weight") for n in decayed)
    assert "lm.model.layers.0.mlp.up_proj.weight" not in decayed | kept  # frozen: left out
    assert {"prompts.0.weight", "lm.model.embed_tokens.weight", "lm.model.norm.weight"} <= kept
    assert any("layernorm" in n for n in kept)
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)


def test_the_promot_dev_check_runs_in_eval_mode_and_training_in_train_mode(tmp_path, tiny_model,
                                                                        monkeypatch):
    from genft.training import methods

    modes = []
    forward = methods.PromptedLM.forward

    def spy(self, *args, **kwargs):
        modes.append((torch.is_grad_enabled(), self.training, self.lm.training))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(methods.PromptedLM, "forward", spy)
    train(TrainConfig(model=tiny_model, tasks=["tweet_sentiment"], method="promot", steps=1,
                      stage1_steps=2, stage1_eval_every=1, prompt_length=4, dev_size=2,
                      train_size=8, batch_size=2, max_length=96, out=str(tmp_path / "p")),
          progress=False)
    dev = [m for m in modes if not m[0]]
    steps = [m for m in modes if m[0]]
    assert len(dev) == 3 and all(m[1:] == (False, False) for m in dev)  # before, after 1, after 2
    assert steps and all(m[1:] == (True, True) for m in steps)
