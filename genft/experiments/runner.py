"""`genft run` and `genft eval`: execute a plan — train what is missing, evaluate what is
missing (the report is written by the caller: genft.api.run composes run + report;
`genft eval`'s plan is one model and no training, genft.api.evaluate_tasks).

Order: the base model's cells first (the reference row), then for each training
job: train (or find its checkpoint in the store), evaluate its final model, then
its intermediate checkpoints. Every cell is committed to the store as soon as it
is computed, so an interrupted run loses at most the cell (or training job) in
progress; running the same command again skips every key already stored.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from genft import distributed
from genft._version import __version__
from genft.errors import GenftError, check_writable_dir, disk_full_is_one_line
from genft.experiments.config import EXECUTION_KEYS, ExperimentConfig, parse_config
from genft.experiments.executors import Unit, make_executor
from genft.experiments.progress import RunProgress
from genft.experiments.plan import (Cell, ModelRef, Plan, TrainJob, build_plan, describe,
                                    stable_hash, validate_plan)
from genft.experiments.store import DB_FILE, OutputLock, Store
from genft.training.checkpoint import step_dir

LOG_FILE = "genft.log"


def _real(module: str, name: str) -> Callable:
    def call(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module), name)(*args, **kwargs)
    return call


@dataclass
class Backends:
    """What the runner calls to load, train and evaluate (tests substitute fakes)."""

    load_model: Callable = field(default_factory=lambda: _real("genft.models", "load_model"))
    train: Callable = field(default_factory=lambda: _real("genft.training", "train"))
    train_config: Callable = field(default_factory=lambda: _real("genft.training", "TrainConfig"))
    param_change: Callable = field(default_factory=lambda: _real("genft.training", "param_change"))
    evaluate_cell: Callable = field(default_factory=lambda: _real("genft.evaluation", "evaluate_cell"))
    check_label_words: Callable = field(
        default_factory=lambda: _real("genft.tasks.labels", "check_label_words"))


@dataclass
class RunOutcome:
    out: Path
    plan: Plan
    computed: int = 0  # cells computed by this invocation
    trained: int = 0  # training jobs run by this invocation
    report: Path | None = None


def default_out(cfg: ExperimentConfig) -> Path:
    return Path("runs") / cfg.name


def run_experiment(config, out: str | Path | None = None, *, dry_run: bool = False,
                   progress: bool = True, backends: Backends | None = None,
                   threads: int | None = None, executor: str | None = None,
                   ray_address: str | None = None, echo: Callable[[str], None] = print,
                   model_options: dict | None = None, overrides: Sequence = ()) -> RunOutcome:
    """Run (or resume) a grid; ``threads`` sets torch's CPU threads (on a CPU shared with
    other jobs, 1 thread can be several times faster than oversubscribed cores).
    ``executor``/``ray_address`` override the config's (see genft.experiments.executors);
    ``model_options`` (dtype, device, revision, ...) override the config's ``model:``;
    ``overrides`` (``KEY=VALUE``, genft.experiments.config.Override) are applied to the config
    before it is validated: the run's stored config, its hash and its keys are the result.

    Under torchrun/srun every process calls this: rank 0 alone holds the lock, writes the
    store and the report; the others train and evaluate alongside it."""
    cfg, cfg_dir = parse_config(config, overrides)
    if model_options:
        cfg = cfg.model_copy(update={"model": cfg.model.replace(**model_options)})
    if threads is not None:
        if threads < 1:
            raise GenftError(f"--threads must be at least 1 (got {threads})")
        import torch

        torch.set_num_threads(threads)
    out = Path(out) if out is not None else default_out(cfg)
    plan = build_plan(cfg, cfg_dir)
    if dry_run:
        done = Store(out / DB_FILE).cell_keys() if (out / DB_FILE).is_file() else set()
        echo(describe(plan, done))
        return RunOutcome(out, plan)
    validate_plan(plan)  # every shot count and pool size, before the first cell
    where = make_executor(executor or ("ray" if ray_address else cfg.executor),
                          ray_address or cfg.ray_address, cfg.resources)
    return run_plan(plan, out, where, backends=backends, progress=progress, echo=echo)


def run_plan(plan: Plan, out: str | Path, executor=None, *, backends: Backends | None = None,
             progress: bool = True, echo: Callable[[str], None] = print,
             cell_lines: bool = False) -> RunOutcome:
    """Execute a validated plan into ``out`` (`genft run`'s grid, or `genft eval`'s one-model
    plan): take OUT/.lock, skip every stored cell key, store each new cell in one transaction.
    ``cell_lines``: echo a summary line per finished cell (`genft eval`'s console output)."""
    out = Path(out)
    echo = echo if distributed.is_main() else (lambda line: None)
    with _exclusive(out), disk_full_is_one_line(out, "training and evaluating"):
        runner = _Runner(plan, out, backends or Backends(), progress and distributed.is_main(),
                         echo, executor or make_executor("local", None, None), cell_lines)
        runner.execute()
        return RunOutcome(out, plan, runner.computed, runner.trained)


@contextmanager
def _exclusive(out: Path):
    """Rank 0 proves ``out`` writable and takes OUT/.lock for the whole run; its refusal
    (one line) reaches every rank, so all stop the same way."""
    lock = OutputLock(out)

    def take() -> None:
        check_writable_dir(out)  # an unwritable --out: one line, before anything is trained
        lock.__enter__()

    distributed.main_decides(take)
    try:
        yield
    finally:
        if distributed.is_main():
            lock.__exit__(None, None, None)


class _Runner:
    """Decides what runs (what the store lacks) and records each result; the executor decides
    where it runs. On ranks other than 0 (torchrun/srun) there is no store: rank 0 decides,
    and those ranks only join the collective training and evaluation."""

    def __init__(self, plan: Plan, out: Path, backends: Backends, progress: bool, echo, executor,
                 cell_lines: bool = False):
        self.plan, self.out, self.b, self.progress, self.echo = plan, out, backends, progress, echo
        self.executor, self.cell_lines = executor, cell_lines
        self.store = Store(out / DB_FILE) if distributed.is_main() else None
        self.log = _file_logger(out / LOG_FILE) if distributed.is_main() else logging.getLogger("genft.rank")
        self.stages: dict[str, float] = defaultdict(float)
        self.config_hash = stable_hash(plan.config.model_dump(exclude=EXECUTION_KEYS))
        spec = plan.config.model.model_dump()  # the name alone while every option is a default
        self.load_options = {k: v for k, v in spec.items() if k != "name"} if isinstance(spec, dict) else {}
        self.computed = self.trained = 0
        self.run_id = None

    def execute(self) -> None:
        cfg = self.plan.config
        if self.store:
            self.store.mark_killed_runs()  # we hold the lock: no other run is alive
            meta = {**run_metadata(), "tasks": task_info(self.plan)}
            self.run_id = self.store.start_run(cfg.model_dump(), meta,
                                               [c.key for c in self.plan.cells])
        planned = {c.key for c in self.plan.cells}
        done, trained = distributed.main_decides(self._stored)
        self.log.info("run %s: %d cells planned, %d already stored, %d training jobs", self.run_id,
                      len(planned), len(planned & done), len(self.plan.jobs))
        if self.cell_lines and planned & done:
            self.echo(f"{len(planned & done)} of {len(planned)} cells already in {self.out}, skipped")
        self.bar = RunProgress(self.plan, planned & done, set(trained), self.progress)
        status = "failed"
        try:
            units = self._eval_units(self.plan.base, cfg.model.name, done)
            for job in self.plan.jobs:
                units += self._job_units(job, trained.get(job.key), done)
            self.executor.run(units)
            status = "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            self.bar.close()
            self._finish(status)

    def _stored(self) -> tuple[set[str], dict[str, str]]:
        """(stored cell keys, job key -> its stored final checkpoint that is still on disk)."""
        trained = {}
        for job in self.plan.jobs:
            row = self.store.checkpoint(job.key)
            if row is not None and Path(row["path"]).is_dir():
                trained[job.key] = row["path"]
        return self.store.cell_keys(), trained

    def _finish(self, status: str) -> None:
        if not self.store:
            return
        try:
            self.store.finish_run(self.run_id, status, dict(self.stages))
        except GenftError:
            if status == "finished":
                raise
            # the error already on its way out says more; the run stays 'running' and
            # the next run marks it 'killed'
        finally:
            self.log.info("run %d %s: %d cells computed, %d jobs trained", self.run_id, status,
                          self.computed, self.trained)
            self.store.close()

    # ------------------------------------------------------------ training

    def _job_units(self, job: TrainJob, final: str | None, done: set[str]) -> list[Unit]:
        """A job already trained goes straight to its evaluations; otherwise one training unit,
        whose result unlocks them."""
        steps = [m for m in self._intermediate_models(job) if self._pending(m, done)]
        if final is not None and not steps:
            return self._eval_units(ModelRef(job.key, job.label, job), final, done)
        out_dir = job.out_dir(self.out)
        resume = out_dir.exists()

        def announce() -> None:  # when it starts, not when it is planned
            if final is None:
                self.bar.doing(f"training {job.label}")
                self.log.info("training %s on %s (size %s, seed %d)%s -> %s", job.label,
                              "+".join(job.tasks), job.train_size, job.seed,
                              " [resuming]" if resume else "", out_dir)

        registered = distributed.main_decides(
            lambda: {m.key for m in steps if self.store.checkpoint(m.key) is not None})
        in_process = self.progress and self.executor.in_process
        args = (self.b, job, final, str(out_dir), resume, self.plan.config.model,
                [(m.key, m.step, m.key not in registered) for m in steps], in_process,
                (lambda share: self.bar.training(job, share)) if in_process else None)
        return [Unit("train", train_job, args, lambda r: self._trained(job, r, done),
                     label=_job_name(job), on_start=announce)]

    def _trained(self, job: TrainJob, result: TrainedJob, done: set[str]) -> list[Unit]:
        """Record a job's checkpoints (final, then intermediate); return its evaluations."""
        self.bar.trained(job)
        if result.seconds is not None:
            self.stages[f"training: {_job_name(job)}"] += result.seconds
            self.trained += 1
            self.log.info("trained %s in %.1f s -> %s", job.label, result.seconds, result.final)
        self.stages["parameter statistics"] += result.stats_seconds
        if self.store:
            if result.seconds is not None:
                self._add_checkpoint(job, job.key, None, result.final, result.final_change,
                                     result.seconds)
            for key, step, path, change in result.intermediate:
                self._add_checkpoint(job, key, step, path, change, None)
        units = self._eval_units(ModelRef(job.key, job.label, job), result.final, done)
        paths = dict(result.paths)
        for model in self._intermediate_models(job):
            if not self._pending(model, done):
                continue
            if model.step not in paths:
                self.log.warning("%s: no checkpoint for step %d; its cells are skipped",
                                 job.label, model.step)
                continue
            units += self._eval_units(model, paths[model.step], done)
        return units

    def _add_checkpoint(self, job: TrainJob, key: str, step: int | None, path: str,
                        change: dict | None, seconds: float | None) -> None:
        self.store.add_checkpoint(key=key, job=job, step=step, path=Path(path),
                                  answer_words=self._answer_words(job), param_change=change,
                                  seconds=seconds, run_id=self.run_id,
                                  truncation=_checkpoint_meta(path).get("truncation"))

    def _answer_words(self, job: TrainJob) -> list[str]:
        """The label words of the job's classification tasks (format specialization targets)."""
        words = []
        for name in job.tasks:
            words += [w for w in self.plan.registry.get(name).labels if w not in words]
        return words

    def _intermediate_models(self, job: TrainJob) -> list[ModelRef]:
        models = {c.model.key: c.model for c in self.plan.cells
                  if c.model.job is not None and c.model.job.key == job.key and c.model.step is not None}
        return sorted(models.values(), key=lambda m: m.step)

    def _pending(self, model: ModelRef, done: set[str]) -> list[Cell]:
        return [c for c in self.plan.cells_of(model.key) if c.key not in done]

    # ------------------------------------------------------------ evaluation

    def _eval_units(self, model: ModelRef, ref: str, done: set[str]) -> list[Unit]:
        pending = self._pending(model, done)
        if not pending:
            return []
        name = model.label + (f"@{model.step}" if model.step is not None else "")
        if model.job is not None:
            name += f" ({'+'.join(model.job.tasks)})"
        args = (self.b, str(ref), pending, tuple(self.plan.include), self.plan.config.eval_batch_size,
                self.progress and self.executor.in_process, self.load_options,
                self.plan.config.backend)
        return [Unit("eval", evaluate_model, args, lambda r: self._evaluated(name, r, done),
                     label=name, on_start=lambda: (
                         self.bar.doing(f"evaluating {name}"),
                         self.log.info("evaluating %s: %d cells", name, len(pending))))]

    def _evaluated(self, name: str, evaluated: EvaluatedCell, done: set[str]) -> list[Unit]:
        cell, result = evaluated.cell, evaluated.result
        self.stages[f"evaluation: {name}"] += evaluated.seconds
        record = result.to_record()
        if self.store:
            provenance = {"data_hash": cell.data_hash, "config_hash": self.config_hash,
                          "info": getattr(result, "info", None) or {}}
            self.store.add_cell(cell, record, result.items, self.run_id, provenance)
        done.add(cell.key)
        self.computed += 1
        self.bar.evaluated(cell)
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in record["metrics"].items()
                            if isinstance(v, (int, float)))
        self.log.info("cell %s: %s %s %d-shot %s n=%d %.1fs %s", cell.key, cell.model.label, cell.task,
                      cell.shots, cell.format, record["n"], record["seconds"], metrics)
        if self.cell_lines:
            rate = record["n"] / record["seconds"] if record["seconds"] else 0.0
            line = (f"{cell.task} {cell.shots}-shot {cell.format}: "
                    + " ".join(f"{k}={v:.4f}" for k, v in record["metrics"].items()
                               if isinstance(v, (int, float)))
                    + f" ({record['n']} items, {record['seconds']:.1f} s, {rate:.1f} items/s)")
            (self.bar.write if self.progress else self.echo)(line)
        return []


# ---------------------------------------------------------------- the work itself
# Module-level generators, so an executor can run them in another process or on another
# machine (Ray pickles them with their arguments); they return results and never touch the store.


@dataclass
class TrainedJob:
    final: str
    seconds: float | None  # None: trained by an earlier run
    final_change: dict | None
    intermediate: list[tuple[str, int, str, dict | None]]  # (model key, step, path, param change)
    paths: list[tuple[int, str]]  # every intermediate checkpoint on disk: (step, path)
    stats_seconds: float = 0.0


@dataclass
class EvaluatedCell:
    cell: Cell
    result: object  # CellResult
    seconds: float  # including the model load, for the first cell of a model


def train_job(b: Backends, job: TrainJob, final: str | None, out_dir: str, resume: bool,
              base_model: str, steps: list[tuple[str, int, bool]], progress: bool,
              on_progress: Callable[[float], None] | None = None) -> Iterator[TrainedJob]:
    """Train ``job`` unless ``final`` already exists, then find its intermediate checkpoints
    ``steps`` (model key, step, needs registering) and compute the parameter-change statistics
    of what is new. Collective under torchrun: every rank calls it, rank 0 decides.
    ``on_progress``: the trainer's per-step share of the job done (in-process only)."""
    seconds = None
    if final is None:
        start = time.time()
        cfg = b.train_config(**_per_process(job.settings), out=out_dir)
        final = str(b.train(cfg, progress=progress, resume=resume, on_progress=on_progress))
        seconds = time.time() - start
    on_disk = distributed.main_decides(lambda: {
        step: str(path) for _, step, _ in steps
        if (path := step_dir(out_dir, step)).is_dir()})
    start = time.time()
    change = _param_change(b, base_model, final) if seconds is not None else None
    intermediate = [(key, step, on_disk[step], _param_change(b, base_model, on_disk[step]))
                    for key, step, new in steps if new and step in on_disk]
    yield TrainedJob(final, seconds, change, intermediate, sorted(on_disk.items()),
                     time.time() - start)


def _per_process(settings: dict) -> dict:
    """The config's global batch (batch_size x grad_accum) split over the processes, so a
    job trains the same model under torchrun as in one process (and shares its key)."""
    world, accum = distributed.world_size(), settings.get("grad_accum", 1)
    if world == 1:
        return settings
    if accum % world:
        raise GenftError(f"training.grad_accum is {accum}, which {world} processes cannot "
                         f"share; make it a multiple of {world} (each process accumulates "
                         f"grad_accum / {world} micro-batches, so the global batch stays "
                         f"batch_size x grad_accum)")
    return {**settings, "grad_accum": accum // world}


def _param_change(b: Backends, base_model: str, path: str) -> dict | None:
    if not distributed.is_main():
        return None  # only rank 0 stores them
    try:
        return b.param_change(base_model, path)
    except Exception as e:  # statistics are a report extra; never lose a trained model over them
        logging.getLogger("genft").warning("parameter-change statistics failed for %s: %s", path, e)
        return None


def evaluate_model(b: Backends, ref: str, cells: list[Cell], include: tuple[str, ...],
                   batch_size: int, progress: bool, load_options: dict | None = None,
                   backend: str = "fast") -> Iterator[EvaluatedCell]:
    """Load ``ref`` once (with the config's placement/precision ``load_options``) and evaluate
    each cell with evaluation backend ``backend``, yielding each result as soon as it exists.
    Every classification task's label words are checked against the model's tokenizer first,
    so a bad task stops the model's evaluation before its first cell, not after some of them."""
    from genft.tasks.registry import registry

    start = time.time()
    loaded = b.load_model(ref, **(load_options or {}))
    tasks = registry(include)
    for name, scoring in dict.fromkeys((c.task, c.scoring) for c in cells
                                       if c.type == "classification"):
        b.check_label_words(tasks.get(name), loaded.tokenizer, scoring, loaded.chat_template)
    for cell in cells:
        result = b.evaluate_cell(loaded, tasks.get(cell.task), cell.shots, cell.format,
                                 progress=progress, backend=backend, **cell.eval_kwargs(batch_size))
        now = time.time()
        yield EvaluatedCell(cell, result, now - start)
        start = now


def _checkpoint_meta(path: Path) -> dict:
    """The trainer's metadata of a checkpoint ({} when there is none to read)."""
    import json

    from genft.training.checkpoint import CHECKPOINT_FILE

    try:
        return json.loads((Path(path) / CHECKPOINT_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _job_name(job: TrainJob) -> str:
    size = "all" if job.train_size is None else job.train_size
    return f"{job.label} {'+'.join(job.tasks)} size={size} seed={job.seed}"


def _file_logger(path: Path) -> logging.Logger:
    log = logging.getLogger(f"genft.run.{path.resolve()}")
    log.setLevel(logging.INFO)  # its lines reach the terminal too at the console's level (-v)
    if not log.handlers:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    return log


def task_info(plan: Plan) -> dict:
    """What the report needs to know about each task, kept with the results."""
    names = {c.task for c in plan.cells} | {n for j in plan.jobs for n in j.tasks}
    info = {}
    for name in sorted(names):
        t = plan.registry.get(name)
        info[name] = {"family": t.family, "type": t.type, "domain": t.spec.domain,
                      "labels": t.labels, "metrics": list(t.spec.metrics), "chance": t.chance}
    return info


def run_metadata() -> dict:
    """Versions, hardware and invocation: the report's provenance section."""
    import importlib.metadata as md

    import torch

    versions = {"python": platform.python_version(), "genft": __version__}
    for dist in ("torch", "transformers", "peft", "accelerate", "datasets"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    hardware = {"platform": platform.platform(), "processor": platform.machine(),
                "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return {"versions": versions, "hardware": hardware, "argv": sys.argv, "cwd": os.getcwd()}
