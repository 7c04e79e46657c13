"""Expanding a config into training jobs and evaluation cells, each keyed by a hash.

A key is a hash of everything that determines the result and nothing else, so a
result computed once is never computed again: re-running after an interruption
finds most keys in the store, and editing the config adds only the new keys.

* training job key = hash of the trainer's full TrainConfig minus ``out``, plus the data
  hash of each training task (an edited training file trains a new model);
* model key = the job key (final checkpoint), the job key + step (intermediate),
  or hash of the base model name (the reference row);
* cell key = hash of (model key, task name + data hash, shots, format, sampler,
  scoring, limit, seed, scoring-code version).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from genft.errors import GenftError
from genft.evaluation import SCORING_VERSION
from genft.experiments.config import EvalConfig, ExperimentConfig
from genft.models import prompt_tokenizer
from genft.tasks.registry import TaskRegistry, registry
from genft.tasks.task import Task
from genft.training.config import TrainConfig
from genft.training.method_registry import get_method, optimizer_steps

NOMINAL_RECORD_TOKENS = 200  # token estimate for a record whose data is not on disk (Hub, offline)


def stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainJob:
    key: str
    label: str  # the config's method entry name, e.g. "ft" or "ft-low-lr"
    method: str
    tasks: tuple[str, ...]
    train_size: int | None
    seed: int
    settings: dict = field(hash=False, compare=False)  # TrainConfig keyword arguments minus `out`
    total_steps: int | None = None

    def out_dir(self, root: Path) -> Path:
        return Path(root) / "checkpoints" / self.key


@dataclass(frozen=True)
class ModelRef:
    key: str
    label: str  # "base" or the method entry name
    job: TrainJob | None = None
    step: int | None = None  # None: the final model

    @property
    def is_base(self) -> bool:
        return self.job is None


@dataclass(frozen=True)
class Cell:
    key: str
    model: ModelRef
    task: str
    family: str
    type: str
    shots: int
    format: str
    sampler: str
    scoring: str  # the classification rule's name; "greedy" for generation (as the key has it)
    limit: int | None
    seed: int
    data_hash: str = ""  # the test task's data hash (part of the key; kept as provenance)

    def eval_kwargs(self, batch_size: int) -> dict:
        kwargs = dict(sampler=self.sampler, limit=self.limit, batch_size=batch_size, seed=self.seed)
        if self.type == "classification":  # generation decodes greedily: no scoring rule
            kwargs["scoring"] = self.scoring
        return kwargs


@dataclass
class Plan:
    config: ExperimentConfig | EvalConfig  # EvalConfig: `genft eval`'s one-model plan
    registry: TaskRegistry
    base: ModelRef
    jobs: list[TrainJob]
    tests: list[Task]
    cells: list[Cell]
    include: tuple[str, ...] = ()  # the registry's task folders (a worker rebuilds it from them)

    def cells_of(self, model_key: str) -> list[Cell]:
        return [c for c in self.cells if c.model.key == model_key]

    def models(self) -> list[ModelRef]:
        return list({c.model.key: c.model for c in self.cells}.values())


def build_plan(cfg: ExperimentConfig, config_dir: Path = Path("."), world_size: int | None = None
               ) -> Plan:
    """``world_size``: the training processes (default: ``WORLD_SIZE``, which torchrun and
    ``accelerate launch`` set); with ``epochs``, the number of steps depends on it."""
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    include = tuple(str((config_dir / p).resolve()) for p in cfg.include)
    reg = registry(include)
    train_tasks = [reg.get(n) for n in cfg.train_tasks]
    for t in train_tasks:
        if not t.has_train:
            raise GenftError(f"train task {t.name!r} has no train split ({t.path})")
    tests = select_tests(cfg, reg, train_tasks)
    jobs = expand_jobs(cfg, train_tasks, include, world_size)
    base = base_model(cfg)
    precision = eval_precision(cfg)

    cells: dict[str, Cell] = {}
    ck_tests = _checkpoint_tests(cfg, reg, tests)
    for model in [base, *(ModelRef(j.key, j.label, j) for j in jobs)]:
        _add_model_cells(cells, cfg, model, tests, precision)
        for task, ks, fmts in ck_tests:  # base and final models are the curve's end points
            for k in ks:
                for fmt in fmts:
                    _add(cells, cfg, model, task, k, fmt, precision)
    for job in jobs:
        for step in intermediate_steps(cfg, job):
            model = ModelRef(stable_hash({"job": job.key, "step": step}), job.label, job, step)
            for task, ks, fmts in ck_tests:
                for k in ks:
                    for fmt in fmts:
                        _add(cells, cfg, model, task, k, fmt, precision)
    return Plan(cfg, reg, base, jobs, tests, list(cells.values()), include)


def build_eval_plan(cfg: EvalConfig, cwd: Path = Path(".")) -> Plan:
    """`genft eval`'s plan: one model (the base model, no training) over ``cfg.tasks`` × shots ×
    formats, its cells built as build_plan builds the base model's, so they carry the keys a
    `genft run` of the same model and settings gives them. A shot count beyond a task's
    few-shot pool is refused here, before any model is loaded."""
    include = tuple(str((cwd / p).resolve()) for p in cfg.include)
    reg = registry(include)
    tests = reg.select(cfg.tasks)
    for task in tests:
        pool = len(task.records("fewshot"))
        for k in shots_for(cfg, task):
            if k < 0:
                raise GenftError(f"--shots: {k} is negative")
            if k > pool:
                raise GenftError(f"--shots {k}: task {task.name!r} has only {pool} few-shot "
                                 f"examples to draw demos from")
    base = base_model(cfg)
    cells: dict[str, Cell] = {}
    _add_model_cells(cells, cfg, base, tests, eval_precision(cfg))
    return Plan(cfg, reg, base, [], tests, list(cells.values()), include)


def base_model(cfg: ExperimentConfig | EvalConfig) -> ModelRef:
    """The untrained model (the reference row), keyed by its identity (name and revision)."""
    return ModelRef(stable_hash({"base": cfg.model.identity()}), "base")


def _add_model_cells(cells: dict, cfg: ExperimentConfig | EvalConfig, model: ModelRef,
                     tests: list[Task], precision: dict) -> None:
    for task in tests:
        for k in shots_for(cfg, task):
            for fmt in cfg.formats:
                _add(cells, cfg, model, task, k, fmt, precision)


def eval_precision(cfg: ExperimentConfig | EvalConfig) -> dict:
    """The dtype models are evaluated in, as part of every cell key, once it is not float32
    (``dtype: auto`` is bfloat16 on a GPU: a CPU run's float32 cells are not reused there).
    Empty for float32, so keys from before dtypes existed still hold."""
    from genft.models import resolve_device, resolve_dtype

    dtype = resolve_dtype(cfg.model.dtype, resolve_device(cfg.model.device))
    name = str(dtype).removeprefix("torch.")
    return {} if name == "float32" else {"dtype": name}


def _add(cells: dict, cfg: ExperimentConfig | EvalConfig, model: ModelRef, task: Task, k: int,
         fmt: str, precision: dict) -> None:
    limit = limit_for(cfg, task)
    scoring = cfg.scoring if task.type == "classification" else "greedy"  # generation ignores it
    key = stable_hash({"model": model.key, "task": task.name, "data": task.data_hash, "shots": k,
                       "format": fmt, "sampler": cfg.sampler, "scoring": scoring, "limit": limit,
                       "seed": cfg.eval_seed, "scoring_version": SCORING_VERSION, **precision})
    cells.setdefault(key, Cell(key, model, task.name, task.family, task.type, k, fmt, cfg.sampler,
                               scoring, limit, cfg.eval_seed, task.data_hash))


def validate_plan(plan: Plan) -> None:
    """Refuse, before any work, what would otherwise fail midway through a run: a shot count
    beyond a test set's few-shot pool, a train size beyond a training pool, more FTICL or
    ProMoT demos per input than the training pool holds, ``chat_template`` on for a tokenizer
    without one. Reads every task's records (the run reads them anyway)."""
    if plan.config.model.chat_template:
        prompt_tokenizer(plan.config.model)  # the tokenizer alone: one GenftError line if none
    for task_name, k in sorted({(c.task, c.shots) for c in plan.cells}):
        task = plan.registry.get(task_name)
        pool = len(task.records("fewshot")) if k > 0 else 0
        if k > pool:
            raise GenftError(f"{task.path}: test set {task_name!r} is planned with {k} shots, but "
                             f"its few-shot pool has only {pool} items (lower `shots` for it)")
    for job in plan.jobs:
        demos = {"fticl": "shots", "promot": "promot_shots"}.get(job.method)
        for name in job.tasks:
            task = plan.registry.get(name)
            pool = len(task.records("train"))
            size = job.train_size if job.train_size is not None else pool
            if size > pool:
                raise GenftError(f"{task.path}: train_sizes: {size} is more than task {name!r}'s "
                                 f"training pool ({pool} items)")
            default = task.spec.fticl_shots if demos == "shots" else 0
            k = job.settings.get(demos, default) if demos else 0
            if k > 0 and k > size - 1:
                raise GenftError(f"methods.{job.label}: {k} demos per input asked for, but task "
                                 f"{name!r}'s training pool of size {size} has only "
                                 f"{max(size - 1, 0)} other items")


# ---------------------------------------------------------------- test sets


def select_tests(cfg: ExperimentConfig, reg: TaskRegistry, train_tasks: list[Task]) -> list[Task]:
    """Resolve ``test:``; ``auto`` = the train tasks' families (in- and out-of-domain) plus
    every other family. A grid trained only on offline data (package/local sources) keeps
    ``auto`` offline: Hub tasks join only when some train task is itself from the Hub."""
    chosen: dict[str, Task] = {}
    for item in cfg.test:
        if item == "auto":
            chosen.update((t.name, t) for t in auto_tests(reg, train_tasks))
        else:
            chosen.update((t.name, t) for t in reg.select(item))
    for name in cfg.exclude:
        for t in reg.select(name):
            chosen.pop(t.name, None)
    if not chosen:
        raise GenftError("no test sets left after `exclude`")
    return list(chosen.values())


def auto_tests(reg: TaskRegistry, train_tasks: list[Task]) -> list[Task]:
    families = {t.family for t in train_tasks}
    offline = all(t.spec.source.kind != "hub" for t in train_tasks)
    usable = [t for t in reg.all() if not (offline and t.spec.source.kind == "hub")]
    return ([t for t in usable if t.family in families]
            + [t for t in usable if t.family not in families])


def shots_for(cfg: ExperimentConfig, task: Task) -> list[int]:
    if isinstance(cfg.shots, list):
        return list(cfg.shots)
    table = cfg.shots or {}
    for key in (task.name, task.family, "default"):
        if key in table:
            return list(table[key])
    return list(task.spec.shots)


def limit_for(cfg: ExperimentConfig, task: Task) -> int | None:
    if cfg.limit is None or isinstance(cfg.limit, int):
        return cfg.limit
    for key in (task.name, task.family, task.type, "default"):
        if key in cfg.limit:
            return cfg.limit[key]
    return None


def _checkpoint_tests(cfg: ExperimentConfig, reg: TaskRegistry, tests: list[Task]):
    if cfg.checkpoints is None:
        return []
    ck = cfg.checkpoints
    chosen = ([t for item in ck.tests for t in reg.select(item)] if ck.tests
              else [t for t in tests if t.type == "generation"] or tests)
    fmts = ck.formats or cfg.formats[:1]
    return [(t, ck.shots if ck.shots is not None else [min(shots_for(cfg, t))], fmts) for t in chosen]


# ---------------------------------------------------------------- training jobs


def expand_jobs(cfg: ExperimentConfig, train_tasks: list[Task], include: tuple[str, ...] = (),
                world_size: int = 1) -> list[TrainJob]:
    """One job per method entry × task group × train size × seed. A method entry's
    ``group`` (default: its method's) puts all train tasks in one group (``all``: one
    model, e.g. multi-task FT, or multi-task ProMoT with one soft prompt per task) or
    each in its own (``each``)."""
    jobs = []
    for label, spec in cfg.methods.items():
        method = cfg.method_name(label)
        grouping = spec.group or get_method(method).group
        groups = [train_tasks] if grouping == "all" else [[t] for t in train_tasks]
        for group in groups:
            for size in cfg.train_sizes:
                for seed in cfg.seeds:
                    settings = _settings(cfg, label, method, group, size, seed,
                                         include)
                    tc = _train_config(settings, label)
                    key = job_key(tc, {t.name: t.data_hash for t in group})
                    jobs.append(TrainJob(key, label, method, tuple(t.name for t in group), size, seed,
                                         settings, total_steps(tc, group, world_size)))
    return jobs


def _settings(cfg: ExperimentConfig, label: str, method: str, task_objs: list[Task], size, seed,
              include: tuple[str, ...]) -> dict:
    tasks = [t.name for t in task_objs]
    spec = cfg.methods[label]
    common = cfg.training.model_dump()
    overrides = {k: v for k, v in spec.model_dump(exclude={"method", "group", "shots"}).items()
                 if v is not None}
    shots = spec.shots_for(task_objs[0]) if len(task_objs) == 1 else spec.shots
    if isinstance(shots, dict):
        raise GenftError(f"methods.{label}.shots: a per-task mapping needs one task per job")
    if shots is not None:  # else `training: {shots: k}`, if set, holds
        overrides["shots"] = shots
    if "epochs" in overrides:
        common["steps"] = None
    if "steps" in overrides:
        common["epochs"] = None
    settings = {**common, **overrides, "model": cfg.model.model_dump(), "tasks": tasks, "method": method,
                "train_size": size, "seed": seed, "include": list(include)}
    ck = cfg.checkpoints
    if ck is not None and (not ck.methods or label in ck.methods):
        settings["save_every"] = ck.every
    return {k: v for k, v in settings.items() if v is not None}  # None: the trainer's default


def _train_config(settings: dict, label: str) -> TrainConfig:
    try:
        return TrainConfig(**settings, out="")
    except GenftError as e:
        raise GenftError(f"methods.{label}: {e}") from None


def job_key(tc: TrainConfig, data: dict[str, str] | None = None) -> str:
    """Hash of the trainer's complete TrainConfig (defaults included) minus ``out``, and of
    ``data`` (each training task's data hash: the same settings on edited data are a new job)."""
    full = tc.identity()
    full.pop("include")  # where task files live is not what the job computes
    if data:
        full["data"] = data
    return stable_hash(full)


def total_steps(tc: TrainConfig, group: list[Task], world_size: int = 1) -> int | None:
    """The optimizer steps of the job's last stage (the one intermediate checkpoints follow),
    counted as the trainer counts them; None when the training set's size is unknown
    before loading it (a Hub task trained on all its rows)."""
    last = get_method(tc.method).stages(tc, group)[-1]
    if last.steps:
        return last.steps
    if tc.train_size is not None:
        n_examples = tc.train_size * len(group)
    elif any(t.spec.source.kind == "hub" for t in group):
        return None
    else:
        n_examples = sum(len(t.records("train")) for t in group)
    return optimizer_steps(last, n_examples, tc.batch_size, tc.grad_accum, world_size)


def intermediate_steps(cfg: ExperimentConfig, job: TrainJob) -> list[int]:
    if cfg.checkpoints is None or job.total_steps is None or "save_every" not in job.settings:
        return []
    return list(range(cfg.checkpoints.every, job.total_steps, cfg.checkpoints.every))


# ---------------------------------------------------------------- dry-run summary


def estimate_tokens(plan: Plan) -> dict[str, int]:
    """Rough token counts (≈ 4 characters a token) of training and evaluation."""
    cells, jobs = token_estimates(plan)
    return {"training": int(sum(jobs.values())), "evaluation": int(sum(cells.values()))}


def token_estimates(plan: Plan) -> tuple[dict[str, int], dict[str, int]]:
    """Rough tokens to process per cell and per training job, by key (the dry run's totals;
    `genft run`'s progress bar weighs its work by them)."""
    per_record = {t.name: _record_tokens(t) for t in plan.tests}
    cells = {}
    for c in plan.cells:
        task = plan.registry.get(c.task)
        n = c.limit or _test_size(task)
        if c.limit and _test_size(task):
            n = min(n, _test_size(task))
        answer = task.spec.max_new_tokens if task.type == "generation" else len(task.labels)
        cells[c.key] = n * (per_record[c.task] * (c.shots + 1) + answer)
    jobs = {}
    for job in plan.jobs:
        group = [plan.registry.get(n) for n in job.tasks]
        rec = sum(_record_tokens(t) for t in group) / len(group)
        s = job.settings
        method = get_method(job.method)
        demos = (s.get("shots") or group[0].spec.fticl_shots) if method.demos else 0
        length = min(rec * (1 + demos), s.get("max_length", 512))
        stages = len(method.stages(TrainConfig(**s, out=""), group))
        per_step = s.get("batch_size", 8) * s.get("grad_accum", 1)
        jobs[job.key] = int((job.total_steps or 0) * per_step * length * stages)
    return cells, jobs


def _test_size(task: Task) -> int | None:
    size = task.spec.splits.test.size
    if size is None and task.spec.source.kind != "hub":
        size = len(task.records("test"))
    return size


def _record_tokens(task: Task) -> int:
    if task.spec.source.kind == "hub":
        return NOMINAL_RECORD_TOKENS
    sample = task.records("test")[:50]
    chars = sum(len(task.render(r)) + len(r["output"]) for r in sample) / max(len(sample), 1)
    return max(1, round(chars / 4))


def describe(plan: Plan, done: set[str] = frozenset()) -> str:
    """The dry-run text: training runs, cells, tokens to process."""
    tokens = estimate_tokens(plan)
    lines = [f"experiment {plan.config.name}: model {plan.config.model}",
             f"training runs: {len(plan.jobs)}"]
    for j in plan.jobs:
        size = "all" if j.train_size is None else j.train_size
        steps = j.total_steps if j.total_steps is not None else "?"
        lines.append(f"  {j.key}  {j.label:14} {'+'.join(j.tasks):30} size={size} seed={j.seed} "
                     f"steps={steps}")
    models = plan.models()
    inter = sum(1 for m in models if m.step is not None)
    lines.append(f"models evaluated: {len(models)} (base + {len(plan.jobs)} trained"
                 + (f" + {inter} intermediate checkpoints)" if inter else ")"))
    lines.append(f"test sets: {', '.join(t.name for t in plan.tests)}")
    todo = sum(1 for c in plan.cells if c.key not in done)
    lines.append(f"evaluation cells: {len(plan.cells)} ({len(plan.cells) - todo} already in the store, "
                 f"{todo} to compute)")
    lines.append(f"tokens to process (≈): training {tokens['training']:,}, "
                 f"evaluation {tokens['evaluation']:,}")
    return "\n".join(lines)
