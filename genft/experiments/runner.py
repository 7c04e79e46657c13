"""`genft run`: execute a plan — train what is missing, evaluate what is missing, report.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from genft import __version__
from genft.errors import GenftError, check_writable_dir, disk_full_is_one_line
from genft.experiments.config import ExperimentConfig, parse_config
from genft.experiments.plan import (Cell, ModelRef, Plan, TrainJob, build_plan, describe,
                                    stable_hash, validate_plan)
from genft.experiments.store import DB_FILE, OutputLock, Store

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
                   progress: bool = True, report: bool = True, backends: Backends | None = None,
                   threads: int | None = None, echo: Callable[[str], None] = print,
                   model_options: dict | None = None) -> RunOutcome:
    """Run (or resume) a grid; ``threads`` sets torch's CPU threads (on a CPU shared with
    other jobs, 1 thread can be several times faster than oversubscribed cores);
    ``model_options`` (dtype, device, revision, ...) override the config's ``model:``."""
    cfg, cfg_dir = parse_config(config)
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
    check_writable_dir(out)  # an unwritable --out: one line, before anything is trained
    with OutputLock(out), disk_full_is_one_line(out, "training and evaluating"):
        runner = _Runner(plan, out, backends or Backends(), progress, echo)
        runner.execute()
        outcome = RunOutcome(out, plan, runner.computed, runner.trained)
    if report:
        from genft.report import build_report

        with disk_full_is_one_line(out, "writing the report"):
            outcome.report = build_report(out)
        echo(f"report: {outcome.report}")
    return outcome


class _Runner:
    def __init__(self, plan: Plan, out: Path, backends: Backends, progress: bool, echo):
        self.plan, self.out, self.b, self.progress, self.echo = plan, out, backends, progress, echo
        self.store = Store(out / DB_FILE)
        self.log = _file_logger(out / LOG_FILE)
        self.stages: dict[str, float] = defaultdict(float)
        self.config_hash = stable_hash(plan.config.model_dump())
        spec = plan.config.model.model_dump()  # the name alone while every option is a default
        self.load_options = {k: v for k, v in spec.items() if k != "name"} if isinstance(spec, dict) else {}
        self.computed = self.trained = 0

    def execute(self) -> None:
        cfg = self.plan.config
        self.store.mark_killed_runs()  # we hold the lock: no other run is alive
        meta = {**run_metadata(), "tasks": task_info(self.plan)}
        run_id = self.store.start_run(cfg.model_dump(), meta, [c.key for c in self.plan.cells])
        self.run_id = run_id
        done = self.store.cell_keys()
        planned = {c.key for c in self.plan.cells}
        self.log.info("run %d: %d cells planned, %d already stored, %d training jobs", run_id,
                      len(planned), len(planned & done), len(self.plan.jobs))
        self.bar = tqdm(total=len(planned), initial=len(planned & done), desc="cells", unit="cell",
                        position=0, disable=not self.progress, dynamic_ncols=True)
        status = "failed"
        try:
            self._evaluate(self.plan.base, cfg.model.name, done)
            for job in self.plan.jobs:
                final = self._ensure_trained(job)
                self._evaluate(ModelRef(job.key, job.label, job), str(final), done)
                for model in self._intermediate_models(job):
                    path = self._intermediate_path(job, model.step)
                    if path is None:
                        self.log.warning("%s: no checkpoint for step %d; its cells are skipped",
                                         job.label, model.step)
                        continue
                    self._register_intermediate(job, model, path)
                    self._evaluate(model, str(path), done)
            status = "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            self.bar.close()
            try:
                self.store.finish_run(run_id, status, dict(self.stages))
            except GenftError:
                if status == "finished":
                    raise
                # the error already on its way out says more; the run stays 'running' and
                # the next run marks it 'killed'
            finally:
                self.log.info("run %d %s: %d cells computed, %d jobs trained", run_id, status,
                              self.computed, self.trained)
                self.store.close()

    # ------------------------------------------------------------ training

    def _ensure_trained(self, job: TrainJob) -> Path:
        row = self.store.checkpoint(job.key)
        if row is not None and Path(row["path"]).is_dir():
            return Path(row["path"])
        out_dir = job.out_dir(self.out)
        resume = out_dir.exists()
        self.log.info("training %s on %s (size %s, seed %d)%s -> %s", job.label, "+".join(job.tasks),
                      job.train_size, job.seed, " [resuming]" if resume else "", out_dir)
        self.bar.set_postfix_str(f"training {job.label}")
        start = time.time()
        cfg = self.b.train_config(**job.settings, out=str(out_dir))
        final = Path(self.b.train(cfg, progress=self.progress, resume=resume))
        seconds = time.time() - start
        self.stages[f"training: {_job_name(job)}"] += seconds
        self.trained += 1
        self._add_checkpoint(job, job.key, None, final, seconds)
        self.log.info("trained %s in %.1f s -> %s", job.label, seconds, final)
        return final

    def _add_checkpoint(self, job: TrainJob, key: str, step: int | None, path: Path,
                        seconds: float | None) -> None:
        start = time.time()
        try:
            change = self.b.param_change(self.plan.config.model, str(path))
        except Exception as e:  # statistics are a report extra; never lose a trained model over them
            self.log.warning("parameter-change statistics failed for %s: %s", path, e)
            change = None
        self.stages["parameter statistics"] += time.time() - start
        self.store.add_checkpoint(key=key, job=job, step=step, path=path,
                                  answer_words=self._answer_words(job), param_change=change,
                                  seconds=seconds, run_id=self.run_id)

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

    def _intermediate_path(self, job: TrainJob, step: int) -> Path | None:
        path = job.out_dir(self.out) / "checkpoints" / f"step-{step:06d}"
        return path if path.is_dir() else None

    def _register_intermediate(self, job: TrainJob, model: ModelRef, path: Path) -> None:
        if self.store.checkpoint(model.key) is None:
            self._add_checkpoint(job, model.key, model.step, path, None)

    # ------------------------------------------------------------ evaluation

    def _evaluate(self, model: ModelRef, ref: str, done: set[str]) -> None:
        pending = [c for c in self.plan.cells_of(model.key) if c.key not in done]
        if not pending:
            return
        name = model.label + (f"@{model.step}" if model.step is not None else "")
        if model.job is not None:
            name += f" ({'+'.join(model.job.tasks)})"
        self.log.info("evaluating %s: %d cells", name, len(pending))
        self.bar.set_postfix_str(f"evaluating {name}")
        start = time.time()
        loaded = self.b.load_model(ref, **self.load_options)
        for cell in pending:
            self._evaluate_cell(loaded, cell)
            done.add(cell.key)
        del loaded
        self.stages[f"evaluation: {name}"] += time.time() - start

    def _evaluate_cell(self, loaded, cell: Cell) -> None:
        cfg = self.plan.config
        task = self.plan.registry.get(cell.task)
        result = self.b.evaluate_cell(loaded, task, cell.shots, cell.format,
                                      progress=self.progress, **cell.eval_kwargs(cfg.eval_batch_size))
        record = result.to_record()
        provenance = {"data_hash": cell.data_hash, "config_hash": self.config_hash,
                      "info": getattr(result, "info", None) or {}}
        self.store.add_cell(cell, record, result.items, self.run_id, provenance)
        self.computed += 1
        self.bar.update(1)
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in record["metrics"].items()
                            if isinstance(v, (int, float)))
        self.log.info("cell %s: %s %s %d-shot %s n=%d %.1fs %s", cell.key, cell.model.label, cell.task,
                      cell.shots, cell.format, record["n"], record["seconds"], metrics)


def _job_name(job: TrainJob) -> str:
    size = "all" if job.train_size is None else job.train_size
    return f"{job.label} {'+'.join(job.tasks)} size={size} seed={job.seed}"


def _file_logger(path: Path) -> logging.Logger:
    log = logging.getLogger(f"genft.run.{path.resolve()}")
    log.setLevel(logging.INFO)
    log.propagate = False
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
                      "labels": t.labels, "metrics": list(t.spec.metrics)}
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
