"""The experiment config: one YAML file that names a whole generalization grid.

It is pure data, validated by pydantic (unknown keys are errors with the nearest
valid name, reported as ``file:line: field: problem``). docs/config.md documents
every key; examples/*.yaml are complete configs. `genft run CONFIG KEY=VALUE ...`
(Override) changes the loaded mapping before validation. The trainer keys of
``training:`` and of each method entry are derived from TrainConfig (training_keys).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Optional

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model,
                      field_validator, model_serializer, model_validator)

from genft.errors import GenftError, short, unknown_name
from genft.evaluation.backends import DEFAULT_BACKEND, backend_names
from genft.evaluation.scoring import DEFAULT_SCORING, scoring_names
from genft.models import DEFAULT_MODEL, ModelSpec
from genft.tasks.demos import SAMPLERS
from genft.tasks.schema import FORMATS
from genft.training.config import TrainConfig
from genft.training.method_registry import get_method, method_names
from genft.yaml_files import (first_error, load_yaml_model, parse_yaml, read_yaml_mapping,
                              validation_message)

Format = Literal["prompt1", "prompt2"]


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # no '/', no '.' or '..', no hidden file


def _known_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return name


def _known(kind: str, names):
    """A validator for a registered name (read from its registry when a config is validated, so
    a scoring rule or backend a test registers is accepted)."""
    def check(name: str) -> str:
        if name not in names():
            raise ValueError(unknown_name(kind, name, names()))
        return name
    return AfterValidator(check)


# Evaluation settings shared by `genft run` (ExperimentConfig) and `genft eval` (EvalConfig).
Sampler = Annotated[str, AfterValidator(_known_sampler)]
ScoringName = Annotated[str, _known("scoring", scoring_names)]
BackendName = Annotated[str, _known("backend", backend_names)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# TrainConfig fields that every job gets from the grid: set in `training:` or a method entry
# they would be overwritten, so they are refused with where the value comes from.
GRID_KEYS = {
    "tasks": "the jobs' tasks come from `train_tasks`; use `group: all` for one job on all of "
             "them (multi-task), `group: each` for one job per task",
    "model": "the model is the config's top-level `model`",
    "train_size": "training sizes come from the top-level `train_sizes`",
    "seed": "training seeds come from the top-level `seeds`",
    "include": "task folders come from the top-level `include`",
    "out": "checkpoints go under the run's output directory",
    "save_every": "intermediate checkpoints come from the top-level `checkpoints: {every: N}`",
    "method": "each entry of `methods` names its method (`method:` in the entry, else its name)",
}


def training_keys() -> list[str]:
    """The trainer settings a config may set, in `training:` and in each method entry: every
    TrainConfig field the grid does not set itself. Derived, so a TrainConfig field added
    later is a config key with no edit here."""
    return [k for k in TrainConfig.model_fields if k not in GRID_KEYS]


class _TrainKeys(_Strict):
    """Base of `training:` and a method entry. Subclasses are built by ``_with_train_keys``,
    which adds every training key the class does not declare as an optional field (None: not
    set here) with TrainConfig's type and bounds, so a value is checked when the config is
    loaded (file:line) rather than when the plan is built. Added keys are written out only
    when set (and, in `training:`, only when not the trainer's default), so a config without
    them dumps and hashes (the run's config_hash) as it did before they were accepted."""

    _DROP_DEFAULTS: ClassVar[bool] = False
    _WHERE: ClassVar[str]  # "`training:`" or "a method entry", for the grid keys' error line

    @model_validator(mode="before")
    @classmethod
    def _not_set_by_the_grid(cls, data):
        if isinstance(data, dict):
            for key in data:
                if key in GRID_KEYS and key not in cls.model_fields:
                    raise ValueError(f"`{key}` cannot be set in {cls._WHERE}: {GRID_KEYS[key]}")
        return data

    @model_serializer(mode="wrap")
    def _only_set_added_keys(self, handler):
        data = handler(self)
        added = type(self).model_fields.keys() - type(self).__base__.model_fields.keys()
        for key in added & data.keys():
            default = TrainConfig.model_fields[key].default
            if data[key] is None or self._DROP_DEFAULTS and data[key] == default:
                del data[key]
        return data


def _with_train_keys(base: type[_TrainKeys]) -> type[_TrainKeys]:
    fields = {}
    for key in training_keys():
        if key in base.model_fields:
            continue
        info = TrainConfig.model_fields[key]
        kind = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[key] = (Optional[kind], Field(None, description=info.description))
    return create_model(base.__name__.lstrip("_"), __base__=base, __module__=__name__,
                        __doc__=base.__doc__, **fields)


class _Training(_TrainKeys):
    """Settings shared by every training method (each method entry may override them): the
    keys below plus every other training key (``training_keys()``: warmup_steps,
    weight_decay, lora_r, …), which default to the trainer's value."""

    _DROP_DEFAULTS: ClassVar[bool] = True
    _WHERE: ClassVar[str] = "`training:`"

    steps: int | None = Field(None, gt=0, description="optimizer steps (default 40 unless `epochs`)")
    epochs: float | None = Field(None, gt=0, description="passes over the training set")
    lr: float | None = Field(None, gt=0, description="default: the trainer's per-method default")
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_length: int = Field(512, gt=0)
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


Training = _with_train_keys(_Training)


class _MethodSpec(_TrainKeys):
    """One training method of the grid. ``method`` defaults to the entry's name, so
    ``ft: {}`` is FT and ``ft-low-lr: {method: ft, lr: 1e-4}`` a second FT variant.
    ``group`` says how the train tasks become jobs (default: the method's own grouping).
    Every training key (``training_keys()``: ``lr``, ``prompt_steps``, ``lora_r``, …) may be
    set and overrides ``training:``; ``shots`` may also be a mapping per task or family."""

    _WHERE: ClassVar[str] = "a method entry"

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

    def shots_for(self, task) -> int | None:
        if not isinstance(self.shots, dict):
            return self.shots
        for key in (task.name, task.family):
            if key in self.shots:
                return self.shots[key]
        return None


MethodSpec = _with_train_keys(_MethodSpec)


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


# where and how the work runs, not what it computes: left out of the config hash
EXECUTION_KEYS = {"executor", "ray_address", "resources", "backend"}


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
    sampler: Sampler = "first"
    scoring: ScoringName = Field(DEFAULT_SCORING,
                                 description="classification rule: a registered scoring")
    backend: BackendName = Field(DEFAULT_BACKEND,
                                 description="what computes the scores (not in any key)")
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
    formats: list[Format] = Field(["prompt1"], min_length=1)
    limit: int | None = Field(None, ge=1)
    sampler: Sampler = "first"
    scoring: ScoringName = DEFAULT_SCORING
    backend: BackendName = DEFAULT_BACKEND
    eval_seed: int = 0
    eval_batch_size: int | Literal["auto"] = 8


def load_config(path: str | Path, overrides: Sequence[str | Override] = ()) -> ExperimentConfig:
    """Read and validate a config file, after applying ``overrides`` to its mapping; every
    problem is one GenftError line (naming the override when one caused it)."""
    path = Path(path)
    if not overrides:
        return load_yaml_model(path, ExperimentConfig, "experiment settings")
    text, data = read_yaml_mapping(path, "experiment settings")
    return _validate(data, overrides, lambda e: validation_message(path, text, e, ExperimentConfig))


def parse_config(config: str | Path | dict | ExperimentConfig, overrides: Sequence[str | Override] = ()
                 ) -> tuple[ExperimentConfig, Path]:
    """Accept a path, a dict or a config object; return it, after ``overrides`` (``KEY=VALUE``
    strings, see Override), with the folder relative paths use."""
    if isinstance(config, (dict, ExperimentConfig)):
        if isinstance(config, ExperimentConfig):
            if not overrides:
                return config, Path.cwd()
            config = config.model_dump(exclude_unset=True)  # what was set, not the defaults
        return _validate(copy.deepcopy(config), overrides, _dict_message), Path.cwd()
    return load_config(config, overrides), Path(config).resolve().parent


def _dict_message(e: ValidationError) -> str:
    return validation_message(Path("config"), "", e, ExperimentConfig)  # no file, no line


@dataclass(frozen=True)
class Override:
    """One ``KEY=VALUE`` of `genft run CONFIG KEY=VALUE...` (Hydra/axolotl style): a dotted
    path into the config's mapping (``training.lr``, ``methods.ft.steps``) and a value read
    as YAML (``1e-4``, ``[0, 4]``, ``{name: m, dtype: bf16}``; safe loader only). It replaces
    the value at that path before validation, so the result is validated like the file:
    ``model=NAME`` replaces the whole ``model:`` entry, ``model.name=NAME`` only its name."""

    path: tuple[str, ...]
    value: object
    text: str  # as given, for error lines

    @classmethod
    def parse(cls, text: str) -> Override:
        key, eq, raw = text.partition("=")
        path = tuple(part.strip() for part in key.split("."))
        if not eq or not all(path):
            raise GenftError(f"override {short(text)}: expected KEY=VALUE with a dotted KEY, "
                             f"e.g. training.lr=1e-4")
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or e
            raise GenftError(f"override {short(text)}: the value is not valid YAML "
                             f"({problem})") from None
        return cls(path, value, text)

    def apply(self, data: dict) -> None:
        node = data
        for i, part in enumerate(self.path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                here = ".".join(self.path[:i + 1])
                raise GenftError(f"override {short(self.text)}: `{here}` is {short(child)}, not "
                                 f"a mapping; set it whole ({here}=VALUE)")
            node = child
        node[self.path[-1]] = self.value

    def explains(self, loc: tuple) -> bool:
        """Whether an error at ``loc`` is about this override's value: its path, a part of
        it, or a level above it (a union's location also names the union's member types)."""
        loc = tuple(map(str, loc))
        if not loc or loc[0] != self.path[0]:
            return False
        rest = iter(loc)
        return all(part in rest for part in self.path) or self.path[:len(loc)] == loc


def _validate(data: dict, overrides: Sequence[str | Override], message) -> ExperimentConfig:
    """Validate ``data`` after ``overrides``; an error the overrides caused names the last
    override it is about, any other is ``message(error)`` (the file's own line)."""
    overrides = [o if isinstance(o, Override) else Override.parse(o) for o in overrides]
    original = copy.deepcopy(data)
    for o in overrides:
        o.apply(data)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        err = first_error(e)
        culprit = next((o for o in reversed(overrides) if o.explains(err["loc"])), None)
        if culprit is not None and not _fails_alike(original, err):
            raise GenftError(validation_message(Path(), "", e, ExperimentConfig,
                                                where=f"override {short(culprit.text)}")) from None
        raise GenftError(message(e)) from None


def _fails_alike(data: dict, err: dict) -> bool:
    """Whether ``data`` (the config without overrides) fails with ``err`` too."""
    try:
        ExperimentConfig.model_validate(data)
    except ValidationError as e:
        first = first_error(e)
        return (first["loc"], first["type"]) == (err["loc"], err["type"])
    return False


__all__ = ["ExperimentConfig", "EvalConfig", "Resources", "TaskResources", "EXECUTION_KEYS",
           "Training", "MethodSpec", "Checkpoints", "load_config", "parse_config", "Override",
           "training_keys", "FORMATS"]
