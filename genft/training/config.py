"""TrainConfig: everything one training run needs, validated up front.

One flat config for every method (PEFT-style): the method-specific fields are
simply ignored by methods that do not use them. Validation problems become one
GenftError line, so `genft train` never shows a pydantic traceback.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from genft.errors import GenftError, did_you_mean
from genft.models import DEFAULT_MODEL, ModelSpec
from genft.training.method_registry import get_method

TRACKERS = ("tensorboard", "wandb", "mlflow", "aim")


def _tracker_list(value):
    """A name, a comma-separated string or a list; "none" (or nothing) is no tracker. Part of
    the type, so the experiment config's copy of the field (`training: {report_to: ...}`)
    reads it the same way."""
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, (list, tuple)):
        value = [v.strip() if isinstance(v, str) else v for v in value]
        value = list(dict.fromkeys(v for v in value if v not in ("", "none")))
    return value


Trackers = Annotated[list[Literal[TRACKERS]], BeforeValidator(_tracker_list)]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: ModelSpec = Field(ModelSpec(name=DEFAULT_MODEL),
                             description="a name, or a mapping {name, dtype, device, revision, ...}")
    tasks: list[str] = Field(min_length=1)
    method: str = Field("ft", description="a registered method (genft.training.method_registry)")
    include: list[str] = Field([], description="extra task YAML folders")
    out: str

    # data
    train_size: int | None = Field(None, gt=0, description="training items per task (default: all)")
    max_length: int = Field(512, gt=8)
    shots: int | None = Field(None, ge=0, description="FTICL demos per input (default: task's fticl_shots)")
    max_truncated_share: float = Field(
        0.1, ge=0, le=1, description="refuse to train when more than this share of the examples "
                                     "would lose demos / prompt tokens or be skipped (max_length)")

    # schedule
    epochs: float | None = Field(None, gt=0)
    steps: int | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0, description="default: the method's default_lr")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="transformers.get_scheduler's schedule, per stage (ProMoT: each "
                                "stage its own over its own steps)")
    warmup_steps: int = Field(0, ge=0, description="linear warmup from lr 0 over the first N steps")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="warmup over this share of a stage's "
                                                             "steps (instead of warmup_steps)")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    batch_size: int = Field(8, gt=0, description="per device")
    grad_accum: int = Field(1, gt=0)
    seed: int = 0
    report_to: Trackers = Field(
        [], description="experiment trackers (Accelerate's): tensorboard, wandb, mlflow, aim; "
                        "default none (OUT/train_log.jsonl is always written)")
    save_every: int | None = Field(None, gt=0, description="intermediate checkpoint every N steps")

    # memory and speed on a GPU
    mixed_precision: Literal["no", "bf16"] = Field(
        "no", description="bf16: compute in bfloat16 (autocast), keep float32 weights")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, ~30% slower")

    # soft prompts (prompt-tuning, promot, joint)
    prompt_length: int = Field(20, gt=0, description="virtual tokens per soft prompt")
    prompt_init: Literal["text", "vocab", "random"] = "text"
    prompt_init_text: str | None = Field(None, description="default: the task's description")

    # ProMoT
    stage1_steps: int = Field(40, gt=0)
    stage1_lr: float = Field(3e-2, gt=0)
    stage1_eval_every: int | None = Field(None, gt=0, description="default: stage1_steps // 4")
    dev_size: int = Field(32, gt=0, description="dev items per task for keeping the best prompt")
    stage2: Literal["full", "lora"] = "full"
    promot_shots: int = Field(0, ge=0, description="demos in every stage-2 input (1 = ProMoT + 1-shot)")

    # LoRA (method lora, or promot with stage2=lora)
    lora_r: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] = ["q_proj", "v_proj"]

    def __init__(self, **data):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise GenftError(_one_line(e)) from None

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value):
        return ModelSpec.of(value)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        try:
            method = get_method(self.method)
        except GenftError as e:
            raise ValueError(str(e)) from None
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of epochs or steps")
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError("give warmup_steps or warmup_ratio, not both")
        if len(self.tasks) < method.min_tasks:
            raise ValueError(f"method {self.method} needs at least {method.min_tasks} tasks")
        return self

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else get_method(self.method).default_lr

    def identity(self) -> dict:
        """What makes two runs the same run (for --resume, the output-directory guard and the
        grid's job keys). Placement (device, attention kernel, gradient checkpointing) does not
        change what is computed, nor do the trackers a run reports to; mixed precision and
        warmup_ratio do, and count once switched on. Without these options a run's identity is
        what it was before they existed."""
        data = self.model_dump(exclude={"out", "gradient_checkpointing", "model", "report_to"})
        data["model"] = self.model.identity()
        for key, default in (("mixed_precision", "no"), ("warmup_ratio", 0.0)):
            if data[key] == default:
                del data[key]
        return data

    def warmup(self, steps: int) -> int:
        """Warmup steps of a stage of ``steps`` optimizer steps (warmup_ratio rounds up, as
        transformers' TrainingArguments does)."""
        return self.warmup_steps or math.ceil(self.warmup_ratio * steps)


def _one_line(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbid" or err["type"] == "extra_forbidden":
        return f"TrainConfig: unknown field {where!r}{did_you_mean(where, TrainConfig.model_fields)}"
    return f"TrainConfig: {where + ': ' if where else ''}{msg}"
