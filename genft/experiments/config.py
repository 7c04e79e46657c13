"""The experiment config: one YAML file that names a whole generalization grid.

It is pure data, validated by pydantic (unknown keys are errors with the nearest
valid name, reported as ``file:line: field: problem``). docs/config.md documents
every key; examples/*.yaml are complete configs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_serializer, model_validator)

from genft.errors import GenftError, short
from genft.models import DEFAULT_MODEL, ModelSpec
from genft.tasks.demos import SAMPLERS
from genft.tasks.schema import FORMATS
from genft.training.method_registry import get_method, method_names
from genft.yaml_files import load_yaml_model

Format = Literal["prompt1", "prompt2"]


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # no '/', no '.' or '..', no hidden file


def _known_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Training(_Strict):
    """Settings shared by every training method (each method may override them)."""

    steps: int | None = Field(None, gt=0, description="optimizer steps (default 40 unless `epochs`)")
    epochs: float | None = Field(None, gt=0, description="passes over the training set")
    lr: float | None = Field(None, gt=0, description="default: the trainer's per-method default")
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_length: int = Field(512, gt=0)
    mixed_precision: Literal["no", "bf16"] = Field(
        "no", description="bf16: compute in bfloat16 (autocast), keep float32 weights")
    gradient_checkpointing: bool = Field(False, description="less activation memory, slower steps")

    @model_serializer(mode="wrap")
    def _without_default_speed_keys(self, handler):
        """The GPU keys are written out only when set, so a config without them dumps (and
        hashes: the run's config_hash) as it did before they existed."""
        data = handler(self)
        for key in ("mixed_precision", "gradient_checkpointing"):
            if data.get(key) == type(self).model_fields[key].default:
                del data[key]
        return data
    max_truncated_share: float = Field(0.1, ge=0, le=1, description="see docs/training.md")

    @model_validator(mode="before")
    @classmethod
    def _one_length(cls, data):
        if isinstance(data, dict):
            if data.get("steps") is not None and data.get("epochs") is not None:
                raise ValueError("set `steps` or `epochs`, not both")
            if data.get("steps") is None and data.get("epochs") is None:
                data = {**data, "steps": 40}
        return data


# TrainConfig fields that every job gets from the grid: in a method entry they would be
# overwritten, so they are refused with where the value comes from.
GRID_KEYS = {
    "tasks": "the jobs' tasks come from `train_tasks`; use `group: all` for one job on all of "
             "them (multi-task), `group: each` for one job per task",
    "model": "the model is the config's top-level `model`",
    "train_size": "training sizes come from the top-level `train_sizes`",
    "seed": "training seeds come from the top-level `seeds`",
    "include": "task folders come from the top-level `include`",
    "out": "checkpoints go under the run's output directory",
}


class MethodSpec(BaseModel):
    """One training method of the grid. ``method`` defaults to the entry's name, so
    ``ft: {}`` is FT and ``ft-low-lr: {method: ft, lr: 1e-4}`` a second FT variant.
    ``group`` says how the train tasks become jobs (default: the method's own grouping).
    The shared training keys override ``training:``; any other key (``prompt_steps``,
    ``lora_r``, …) is passed to the trainer's TrainConfig, which validates it — except
    the keys the grid itself sets (GRID_KEYS), which would be silently overwritten."""

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str | None = None
    group: Literal["each", "all"] | None = Field(
        None, description="each: one job per train task; all: one job on all train tasks "
                          "(multi-task); default: the method's grouping (multitask: all)")
    steps: int | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, gt=0)
    grad_accum: int | None = Field(None, gt=0)
    max_length: int | None = Field(None, gt=0)
    shots: int | dict[str, int] | None = Field(
        None, description="FTICL: demos per training input; a mapping task-or-family -> k when "
                          "it differs per training task (the study's k depends on the family)")

    @field_validator("method")
    @classmethod
    def _known(cls, method):
        if method is not None:
            try:
                get_method(method)
            except GenftError as e:
                raise ValueError(str(e)) from None
        return method

    @field_validator("shots")
    @classmethod
    def _shots(cls, shots):
        values = shots.values() if isinstance(shots, dict) else [shots] if shots is not None else []
        if any(k < 0 for k in values):
            raise ValueError("shots must be >= 0")
        return shots

    @model_validator(mode="after")
    def _not_set_by_the_grid(self) -> MethodSpec:
        for key in self.model_extra or {}:
            if key in GRID_KEYS:
                raise ValueError(f"`{key}` cannot be set in a method entry: {GRID_KEYS[key]}")
        return self

    def shots_for(self, task) -> int | None:
        if not isinstance(self.shots, dict):
            return self.shots
        for key in (task.name, task.family):
            if key in self.shots:
                return self.shots[key]
        return None


class Checkpoints(_Strict):
    """Evaluate intermediate checkpoints: every ``every`` steps, on a small grid."""

    every: int = Field(gt=0)
    methods: list[str] | None = Field(None, description="method entries to follow (default: all)")
    tests: list[str] | None = Field(None, description="default: the generation test sets")
    shots: list[int] | None = Field(None, description="default: the smallest k of each test set")
    formats: list[Format] | None = Field(None, description="default: the first format")

    @field_validator("shots")
    @classmethod
    def _shots(cls, shots):
        if any(k < 0 for k in shots or []):
            raise ValueError("shots must be >= 0")
        return shots


class TaskResources(_Strict):
    """What one Ray task asks for (fractions share a device: ``gpus: 0.5``)."""

    cpus: float = Field(1, ge=0)
    gpus: float = Field(0, ge=0)


class Resources(_Strict):
    """``executor: ray``: per training job and per model's group of evaluation cells."""

    train: TaskResources = TaskResources()
    eval: TaskResources = TaskResources()
    max_retries: int = Field(3, ge=0, description="times Ray reruns a task whose worker died")


# where the work runs, not what it computes: left out of the config hash
EXECUTION_KEYS = {"executor", "ray_address", "resources"}


class ExperimentConfig(_Strict):
    name: str = Field("experiment", description="names the default output folder runs/<name>")
    description: str = ""
    model: ModelSpec = Field(ModelSpec(name=DEFAULT_MODEL),
                             description="a name, or {name, dtype, device, revision, "
                                         "attn_implementation, trust_remote_code}")
    include: list[str] = Field([], description="extra task folders, relative to the config file")
    train_tasks: list[str] = Field(min_length=1)
    methods: dict[str, MethodSpec] = Field(default_factory=dict)
    training: Training = Training()
    train_sizes: list[int | None] = Field([None], min_length=1)
    seeds: list[int] = Field([0], min_length=1)
    test: list[str] = Field(["auto"], min_length=1)
    exclude: list[str] = []
    shots: list[int] | dict[str, list[int]] | None = None
    formats: list[Format] = Field(["prompt1"], min_length=1)
    limit: int | dict[str, int] | None = None
    sampler: str = "first"
    scoring: Literal["loglik", "first-token"] = "loglik"
    eval_seed: int = 0
    eval_batch_size: int = Field(8, gt=0)
    checkpoints: Checkpoints | None = None
    normalize: Literal["chance", "raw"] = "chance"
    held_out: list[str] | None = Field(
        None, description="test sets of the normalized average (default: the cross-task ones)")
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = Field(None, description="executor ray: HOST:PORT, 'auto', or none "
                                                      "for a local Ray instance")
    resources: Resources = Resources()

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value):
        if isinstance(value, str):
            return ModelSpec(name=value)
        return value  # a mapping: pydantic validates it as a ModelSpec, naming the bad key

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: dict[str, MethodSpec]) -> dict[str, MethodSpec]:
        for name, spec in methods.items():
            if name == "base":
                raise ValueError("`base` is always included (the base model's in-context results "
                                 "are the reference row); remove it from methods")
            if spec.method is None and name not in method_names():
                raise ValueError(f"method entry {name!r} needs `method:` "
                                 f"(one of {', '.join(method_names())})")
        return methods

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not PLAIN_NAME.fullmatch(name):
            raise ValueError("must be a plain name: letters, digits, '_', '.', '-', starting with a "
                             "letter or digit (it names the output folder runs/<name>)")
        return name

    @field_validator("limit")
    @classmethod
    def _limit(cls, limit):
        values = limit.values() if isinstance(limit, dict) else [limit] if limit is not None else []
        if any(n < 1 for n in values):
            raise ValueError("limit must be at least 1 (null for every test item)")
        return limit

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, name: str) -> str:
        return _known_sampler(name)

    @field_validator("shots")
    @classmethod
    def _shots(cls, shots):
        values = shots if isinstance(shots, list) else [k for ks in (shots or {}).values() for k in ks]
        if any(k < 0 for k in values):
            raise ValueError("shots must be >= 0")
        return shots

    @field_validator("train_sizes")
    @classmethod
    def _sizes(cls, sizes):
        if any(s is not None and s <= 0 for s in sizes):
            raise ValueError("train sizes must be positive (or null for the whole train split)")
        return sizes

    @model_validator(mode="after")
    def _checkpoint_methods(self) -> ExperimentConfig:
        unknown = [m for m in (self.checkpoints.methods or [])] if self.checkpoints else []
        unknown = [m for m in unknown if m not in self.methods]
        if unknown:
            raise ValueError(f"checkpoints.methods names {unknown}, which are not entries of "
                             f"`methods` ({', '.join(self.methods)})")
        return self

    def method_name(self, name: str) -> str:
        return self.methods[name].method or name


class EvalConfig(_Strict):
    """`genft eval`: one model over tasks × shots × formats. Its keys are named as in
    ExperimentConfig, so the planner builds its cells (and their keys) as it builds the base
    model's cells of an experiment: the same model and settings share cells across both."""

    model: ModelSpec = ModelSpec(name=DEFAULT_MODEL)
    tasks: list[str] = Field(min_length=1, description="task names and/or family:NAME")
    include: list[str] = Field([], description="extra task folders, relative to the cwd")
    shots: list[int] | None = Field(None, description="default: each task's own list")
    formats: list[Format] = Field(list(FORMATS), min_length=1)
    limit: int | None = Field(None, ge=1)
    sampler: str = "first"
    scoring: Literal["loglik", "first-token"] = "loglik"
    eval_seed: int = 0
    eval_batch_size: int | Literal["auto"] = 8

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, name: str) -> str:
        return _known_sampler(name)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a config file; every problem is one GenftError line."""
    return load_yaml_model(Path(path), ExperimentConfig, "experiment settings")


def parse_config(config: str | Path | dict | ExperimentConfig) -> tuple[ExperimentConfig, Path]:
    """Accept a path, a dict or a config object; return it with the folder relative paths use."""
    if isinstance(config, ExperimentConfig):
        return config, Path.cwd()
    if isinstance(config, dict):
        try:
            return ExperimentConfig.model_validate(config), Path.cwd()
        except ValidationError as e:
            err = e.errors()[0]
            msg = short(err["msg"].removeprefix("Value error, "), 320, plain=True)
            raise GenftError(f"config: {'.'.join(map(str, err['loc']))}: {msg}") from None
    return load_config(config), Path(config).resolve().parent


__all__ = ["ExperimentConfig", "EvalConfig", "Resources", "TaskResources", "EXECUTION_KEYS", "Training",
           "MethodSpec", "Checkpoints", "load_config", "parse_config", "FORMATS"]
