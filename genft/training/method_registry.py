"""The training methods, each defined once (modelled on PEFT's ``register_peft_method``).

A :class:`Method` says everything the rest of genft needs to know about a method:

* ``stages(cfg, tasks)``: what the one training loop runs — per stage, which
  parameters train (the model: all of it, LoRA adapters, or nothing; the soft
  prompts: train, frozen, absent), how many demos precede each input, and for how
  long at what rate;
* ``default_lr``: the rate used when the config gives none;
* ``soft_prompts``: whether the run keeps one soft prompt per task;
* ``demos``: whether demos precede the training inputs (the plan's token estimate);
* ``group``: how an experiment groups its train tasks into jobs by default —
  ``each`` (one job per task) or ``all`` (one job on all of them); any method entry
  may override it with ``group:``;
* ``min_tasks``: the fewest tasks a run of it needs; ``color``: its colour in the report.

TrainConfig validation, the experiment config, the plan (jobs, step counts), the
loop and the report all read this registry, so a method that reuses existing pieces
is one :func:`register_method` call::

    from genft.training.method_registry import (Method, Stage, fticl_shots, main_schedule,
                                                register_method)

    register_method(Method(
        "lora-icl", default_lr=1e-3, demos=True,
        stages=lambda cfg, tasks: [Stage("train", "lora", "none", fticl_shots(cfg, tasks),
                                         **main_schedule(cfg))]))

This module imports neither torch nor the task code: config validation and
``genft run --dry-run`` stay fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

from genft.errors import GenftError, unknown_name


@dataclass(frozen=True)
class Stage:
    name: str
    model: str  # "full" | "lora" | "frozen"
    prompts: str  # "none" | "train" | "frozen"
    shots: list[int]  # demos per input, per task
    steps: int | None
    epochs: float | None
    lr: float
    keep_best_on_dev: bool = False


@dataclass(frozen=True)
class Method:
    name: str
    stages: Callable[..., list[Stage]]  # (TrainConfig, tasks) -> stages
    default_lr: float
    soft_prompts: bool = False
    demos: bool = False
    group: Literal["each", "all"] = "each"
    min_tasks: int = 1
    color: str | None = None
    description: str = ""


_METHODS: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Make ``method`` known to training, experiment configs, plans and the report."""
    if method.name in _METHODS and not replace:
        raise GenftError(f"method {method.name!r} is already registered (pass replace=True)")
    if method.group not in ("each", "all"):
        raise GenftError(f"method {method.name!r}: group must be 'each' or 'all', not {method.group!r}")
    _METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    _METHODS.pop(name, None)


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise GenftError(unknown_name("method", name, _METHODS))
    return _METHODS[name]


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


def stages(cfg, tasks) -> list[Stage]:
    """The stages of cfg.method for these tasks."""
    return get_method(cfg.method).stages(cfg, tasks)


def uses_prompts(cfg) -> bool:
    return get_method(cfg.method).soft_prompts


def optimizer_steps(stage: Stage, n_examples: int, batch_size: int, grad_accum: int,
                    world_size: int = 1) -> int:
    """A stage's optimizer steps: its ``steps``, or its epochs over ``n_examples``.

    One step is ``grad_accum`` micro-batches on each of ``world_size`` processes; an
    epoch is ``ceil(n_examples / batch_size)`` micro-batches (what
    ``genft.training.data.micro_batches`` cuts). The trainer and the plan both count
    with this function, so a planned checkpoint step is one the trainer writes.
    """
    if stage.steps:
        return stage.steps
    epoch_len = math.ceil(n_examples / batch_size)
    return max(1, math.ceil(stage.epochs * epoch_len / (grad_accum * world_size)))


# ---------------------------------------------------------------- pieces the built-ins share


def no_shots(cfg, tasks) -> list[int]:
    return [0] * len(tasks)


def fticl_shots(cfg, tasks) -> list[int]:
    """FTICL's demos per input: ``cfg.shots``, or each task's ``fticl_shots``."""
    return [cfg.shots if cfg.shots is not None else t.spec.fticl_shots for t in tasks]


def main_schedule(cfg) -> dict:
    """The run's own steps/epochs and learning rate (the last stage's schedule)."""
    return dict(steps=cfg.steps, epochs=cfg.epochs, lr=cfg.learning_rate)


def one_stage(model: str, prompts: str = "none", shots=no_shots) -> Callable[..., list[Stage]]:
    """A single stage named ``train`` on the run's schedule."""
    return lambda cfg, tasks: [Stage("train", model, prompts, shots(cfg, tasks), **main_schedule(cfg))]


def _promot_stages(cfg, tasks) -> list[Stage]:
    return [Stage("stage1", "frozen", "train", no_shots(cfg, tasks), cfg.stage1_steps, None,
                  cfg.stage1_lr, keep_best_on_dev=True),
            Stage("stage2", cfg.stage2, "frozen", [cfg.promot_shots] * len(tasks),
                  **main_schedule(cfg))]


# Learning rates that made the loss fall within ~40 steps on SmolLM2-135M (AdamW).
# Prompt tuning needs a much larger rate: only a few thousand parameters move.
for _method in [
    Method("ft", one_stage("full"), 2e-4, color="#d62728", description="full fine-tuning"),
    Method("fticl", one_stage("full", shots=fticl_shots), 2e-4, demos=True, color="#ff7f0e",
           description="full fine-tuning with K demos before every input"),
    Method("lora", one_stage("lora"), 1e-3, color="#9467bd", description="LoRA adapters"),
    Method("prompt-tuning", one_stage("frozen", "train"), 3e-2, soft_prompts=True, color="#1f77b4",
           description="one soft prompt per task, model frozen"),
    Method("promot", _promot_stages, 2e-4, soft_prompts=True, color="#2ca02c",
           description="stage 1 soft prompt (model frozen), stage 2 model (prompt frozen)"),
    Method("multitask", one_stage("full"), 2e-4, group="all", min_tasks=2, color="#8c564b",
           description="full fine-tuning on a mixture of the train tasks"),
    Method("joint", one_stage("full", "train"), 2e-4, soft_prompts=True, color="#e377c2",
           description="soft prompt and model in one stage"),
]:
    register_method(_method)
