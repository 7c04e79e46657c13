"""`train(cfg)`: the one training loop every method runs through (PyTorch + HF Accelerate).

Under ``accelerate launch`` the same code runs data-parallel: each process takes
every N-th micro-batch of the global, seed-determined order, and the loss of an
optimizer step is normalized by the number of answer tokens in the *whole* step
(all micro-batches on all processes), so gradient accumulation and process count
do not change what a step computes.

Output directory (the checkpoints' format and layout: genft/training/checkpoint.py)::

    OUT/genft_train.json        the run's config (guards against mixing two runs in one folder)
    OUT/train_log.jsonl         one line per step: stage, step, loss, lr, tokens/s (pandas.read_json)
    OUT/trackers/               what the trackers of ``report_to`` write (TensorBoard: trackers/genft/)
    OUT/stage1/                 ProMoT: the stage-1 checkpoint (best soft prompt on dev)
    OUT/checkpoints/step-000050/  intermediate checkpoints of the last stage (save_every)
    OUT/training_state.pt       optimizer + RNG + step of the newest intermediate checkpoint
    OUT/final/                  the final checkpoint (returned by train)
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from genft import distributed
from genft.errors import GenftError, check_writable_dir
from genft.models import LoadedModel, load_model, resolve
from genft.tasks import registry
from genft.tasks.labels import check_label_words
from genft.training import checkpoint as ckpt
from genft.training.config import TrainConfig
from genft.training.data import build_examples, collate, micro_batches, train_pool, truncation
from genft.training.method_registry import Stage, optimizer_steps, stages, uses_prompts
from genft.training.methods import PromptedLM, add_lora, make_prompts, param_groups, set_trainable

RUN_FILE = "genft_train.json"
LOG_FILE = "train_log.jsonl"
TRACKERS_DIR = "trackers"
log = logging.getLogger(__name__)


def train(cfg: TrainConfig, progress: bool = True, resume: bool = False,
          loaded: LoadedModel | None = None,
          on_progress: Callable[[float], None] | None = None) -> Path:
    """Train as ``cfg`` says and return the final checkpoint directory.

    ``loaded`` lets a caller hand over an already loaded base model (it is
    trained in place); otherwise ``cfg.model`` is loaded. ``on_progress`` is called
    (main process) after every optimizer step with the share of the run done, 0..1
    over all stages (`genft run`'s overall progress bar).
    """
    from accelerate import Accelerator

    out = Path(cfg.out)
    distributed.init()  # srun's variables become torchrun's before Accelerate reads them
    accelerator = Accelerator(**_placement(cfg), **_trackers(cfg, out))
    if resume and _sharded(accelerator):
        raise GenftError("--resume needs the whole optimizer state in one process (single "
                         "process or DDP); FSDP and DeepSpeed shard it")
    tasks = registry(tuple(cfg.include)).select(cfg.tasks)
    pools = [train_pool(t, cfg.train_size) for t in tasks]
    loaded = loaded or load_model(cfg.model, training=True)
    _check_inputs(cfg, tasks, loaded, out, accelerator)
    plan = stages(cfg, tasks)
    examples = _stage_examples(cfg, plan, tasks, pools, loaded)
    finished = _claim(out, cfg, resume, accelerator)
    if finished:
        return finished
    # Every random draw of the run (dropout, and anything a model or library draws from
    # torch's global generator) follows from cfg.seed, not from what ran earlier in this
    # process (`genft run` trains its jobs one after another in one process).
    torch.manual_seed(cfg.seed)
    run = _Run(cfg, accelerator, out, tasks, pools, loaded, progress)
    run.examples = examples
    _start_trackers(cfg, accelerator, out)
    try:
        for i, stage in enumerate(plan):
            stage_done = (lambda f, i=i: on_progress((i + f) / len(plan))) if on_progress else None
            run.run_stage(stage, last=i == len(plan) - 1, resume=resume, on_progress=stage_done)
        return run.save(ckpt.final_dir(out), plan[-1], step=None)
    finally:
        for tracker in accelerator.trackers:  # not end_training(): it ends the process group,
            tracker.finish()                  # which `genft run` keeps for its next job


def _check_inputs(cfg: TrainConfig, tasks, loaded: LoadedModel, out: Path, accelerator) -> None:
    """Refuse what would fail or mislead later, before the run claims its folder: label words
    the tokenizer cannot tell apart, a --max-length beyond the model's window, an --out that
    cannot be written."""
    for task in tasks:
        check_label_words(task, loaded.tokenizer, "loglik", loaded.chat_template)
    window = getattr(loaded.model.config, "max_position_embeddings", None)
    virtual = cfg.prompt_length if uses_prompts(cfg) else 0
    if isinstance(window, int) and cfg.max_length + virtual > window:
        soft = f" + {virtual} soft-prompt tokens" if virtual else ""
        raise GenftError(f"--max-length {cfg.max_length}{soft} is more than the model's window "
                         f"({window} positions); use --max-length {window - virtual} or less")
    if accelerator.is_main_process:
        check_writable_dir(out)
    accelerator.wait_for_everyone()  # no process looks into `out` while the probe file is there


def _stage_examples(cfg: TrainConfig, plan, tasks, pools, loaded: LoadedModel) -> dict:
    """Each stage's training examples with their truncation counts, built before the run
    claims its folder: more than ``max_truncated_share`` of the examples shortened or
    skipped is refused (the method would silently train on something else, e.g. FTICL
    with fewer demos than asked)."""
    built: dict[tuple, tuple] = {}
    out = {}
    for stage in plan:
        key = tuple(stage.shots)
        if key not in built:
            examples = build_examples(tasks, loaded.tokenizer, pools, stage.shots, cfg.max_length,
                                      cfg.seed, loaded.chat_template)
            built[key] = examples, truncation(examples, pools)
        examples, counts = built[key]
        affected = counts["shortened"] + counts["skipped"]
        if counts["total"] and affected / counts["total"] > cfg.max_truncated_share:
            raise GenftError(
                f"{stage.name}: {affected} of {counts['total']} training examples do not fit "
                f"--max-length {cfg.max_length} ({counts['shortened']} would lose demos or prompt "
                f"tokens, {counts['skipped']} would be skipped: their answer alone is too long), "
                f"more than max_truncated_share {cfg.max_truncated_share}; raise --max-length, "
                f"use fewer --shots, or allow a larger --max-truncated-share")
        if affected and distributed.is_main():
            log.warning("%s: %d of %d training examples shortened to fit --max-length %d, "
                        "%d skipped", stage.name, counts["shortened"], counts["total"],
                        cfg.max_length, counts["skipped"])
        out[stage.name] = examples, counts
    return out


def _claim(out: Path, cfg: TrainConfig, resume: bool, accelerator) -> Path | None:
    """Refuse a folder holding another run; returns the final checkpoint if already finished."""
    record = out / RUN_FILE
    final = ckpt.final_dir(out)
    if record.is_file():
        previous = json.loads(record.read_text())["config"]
        differs = sorted(k for k in set(previous) | set(cfg.identity())
                         if previous.get(k) != cfg.identity().get(k))
        if differs:
            raise GenftError(f"{out} holds another run (it differs in {', '.join(differs)}); "
                             f"choose another --out")
        if not resume:
            state = "finished" if ckpt.is_checkpoint(final) else "unfinished"
            raise GenftError(f"{out} already holds this {state} run; pass --resume to "
                             f"{'reuse' if state == 'finished' else 'continue'} it, or choose another --out")
        if ckpt.is_checkpoint(final):
            return final
    elif out.exists() and any(out.iterdir()):
        raise GenftError(f"{out} is not empty and holds no genft run; choose a new or empty --out")
    accelerator.wait_for_everyone()  # every process has checked before the record is written
    if accelerator.is_main_process and not record.is_file():
        out.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"config": cfg.identity()}, indent=2))
    return None


class _Run:
    """State shared by the stages of one run: model, soft prompts, tasks, logging."""

    def __init__(self, cfg, accelerator, out, tasks, pools, loaded, progress):
        self.cfg, self.acc, self.out, self.tasks, self.pools = cfg, accelerator, out, tasks, pools
        self.tokenizer, self.chat_template = loaded.tokenizer, loaded.chat_template
        self.lm = loaded.model
        self.lm.train()
        if cfg.gradient_checkpointing:
            _checkpoint_activations(self.lm)
        self.prompts = (make_prompts(cfg, tasks, self.lm, resolve(cfg.model.name))
                        if uses_prompts(cfg) else None)
        self.progress = progress and accelerator.is_main_process
        self.world = accelerator.num_processes
        self.wrapped = None
        self.examples: dict[str, tuple[list, dict]] = {}  # stage -> (examples, truncation counts)

    # ------------------------------------------------------------------ stages

    def run_stage(self, stage: Stage, last: bool, resume: bool,
                  on_progress: Callable[[float], None] | None = None) -> None:
        done = ckpt.stage_dir(self.out, stage.name)
        if not last and resume and ckpt.is_checkpoint(done):
            self._restore(done)  # an earlier stage finished before the interruption
            return
        if stage.model == "lora" and not hasattr(self.lm, "peft_config"):
            self.lm = add_lora(self.cfg, self.lm)
        set_trainable(self.lm, self.prompts, stage)
        examples = self.examples[stage.name][0]
        steps, schedule = self._schedule(stage, examples)
        module = PromptedLM(self.lm, self.prompts)
        trainable = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(param_groups(module, self.cfg.weight_decay), lr=stage.lr,
                                      fused=_fused_ok(trainable))
        scheduler = _scheduler(self.cfg, optimizer, steps)
        start = self._resume_point(stage, optimizer) if last and resume else 0
        _replay(scheduler, start)
        self._trim_log(stage, start)
        self.wrapped, optimizer = self.acc.prepare(module, optimizer)
        distributed.note("train", stage=stage.name, processes=self.acc.num_processes,
                         wrapper=type(self.wrapped).__name__)
        keeper = _BestOnDev(self, stage) if stage.keep_best_on_dev else None
        if keeper:
            keeper.check(0)
        bar = _bar(stage, steps, start, self.progress)
        for step in range(start, steps):
            t0 = time.perf_counter()
            lr = scheduler.get_last_lr()[0]  # what this step's optimizer.step() uses
            loss, tokens = self._step(examples, schedule(step), optimizer, trainable)
            scheduler.step()
            self._log(stage, step + 1, loss, lr, tokens, time.perf_counter() - t0, bar)
            if on_progress and self.acc.is_main_process:
                on_progress((step + 1) / steps)
            if keeper and ((step + 1) % keeper.every == 0 or step + 1 == steps):
                keeper.check(step + 1)
            if last and self.cfg.save_every and (step + 1) % self.cfg.save_every == 0:
                self._save_intermediate(stage, step + 1, optimizer)
        bar.close()
        if keeper:
            keeper.restore_best()
        if not last:
            self.save(ckpt.stage_dir(self.out, stage.name), stage, step=steps)

    def _step(self, examples, step_batches, optimizer, trainable) -> tuple[float, int]:
        """One optimizer step over this process's share of the step's micro-batches.

        The loss is summed over answer tokens and divided by the answer-token count
        of the whole step on all processes; DDP averages gradients over processes,
        hence the factor ``world``.
        """
        n_answer = sum(len(examples[i].input_ids) - examples[i].loss_start
                       for b in step_batches for i in b)
        mine = step_batches[self.acc.process_index::self.world]
        total_loss = torch.zeros((), device=self.acc.device)
        n_tokens = 0
        for j, batch in enumerate(mine):
            inputs = collate([examples[i] for i in batch], self.tokenizer.pad_token_id)
            n_tokens += sum(len(examples[i].input_ids) for i in batch)
            last_micro_batch = j == len(mine) - 1
            with nullcontext() if last_micro_batch else self.acc.no_sync(self.wrapped), \
                    self.autocast():
                loss_sum = self.wrapped(**{k: v.to(self.acc.device) for k, v in inputs.items()})
                self.acc.backward(loss_sum * (self.world / n_answer))
            total_loss += loss_sum.detach()
        if self.cfg.max_grad_norm:
            self.acc.clip_grad_norm_(trainable, self.cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = (self.acc.reduce(total_loss, "sum") / n_answer).item()
        tokens = self.acc.reduce(torch.tensor(n_tokens, device=self.acc.device), "sum").item()
        return loss, int(tokens)

    def autocast(self):
        """bf16 compute with float32 weights (``mixed_precision: bf16``). Done here rather than by
        ``Accelerator(mixed_precision=...)``: accelerate fixes that once per process, and one
        `genft run` trains jobs with and without it."""
        return torch.autocast(self.acc.device.type, dtype=torch.bfloat16,
                              enabled=self.cfg.mixed_precision == "bf16")

    def _schedule(self, stage: Stage, examples):
        """(number of optimizer steps, step -> list of global micro-batches)."""
        per_step = self.cfg.grad_accum * self.world
        steps = optimizer_steps(stage, len(examples), self.cfg.batch_size, self.cfg.grad_accum,
                                self.world)
        order: list[list[int]] = []
        epoch = 0
        while len(order) < steps * per_step:
            order += micro_batches(examples, self.cfg.batch_size, self.cfg.seed, epoch)
            epoch += 1
        return steps, lambda step: order[step * per_step:(step + 1) * per_step]

    # ------------------------------------------------------------------ saving and resuming

    def save(self, path: Path, stage: Stage, step: int | None) -> Path:
        """Write a checkpoint of the current weights (collective: every process calls it)."""
        state = self.acc.get_state_dict(self.wrapped)
        lm_state = {k.removeprefix("lm."): v for k, v in state.items() if k.startswith("lm.")}
        prompts = ([state[f"prompts.{i}.embedding.weight"] for i in range(len(self.tasks))]
                   if self.prompts is not None else None)
        if self.acc.is_main_process:
            weights = ckpt.weights_kind(stage.model)
            revision = {"base_revision": self.cfg.model.revision} if self.cfg.model.revision else {}
            meta = {"base_model": self.cfg.model.name, **revision, "method": self.cfg.method,
                    "tasks": [t.name for t in self.tasks], "stage": stage.name, "step": step,
                    "train_config": self.cfg.identity(),
                    "truncation": self.examples[stage.name][1],
                    # CPU results depend on it (the order of floating-point sums), not the key
                    "torch_threads": torch.get_num_threads()}
            ckpt.write_checkpoint(path, lm_state=lm_state, lm=self.acc.unwrap_model(self.wrapped).lm,
                                  tokenizer=self.tokenizer, prompt_tensors=prompts,
                                  weights=weights, meta=meta)
        self.acc.wait_for_everyone()
        return path

    def _save_intermediate(self, stage: Stage, step: int, optimizer) -> None:
        path = self.save(ckpt.step_dir(self.out, step), stage, step)
        if self.acc.is_main_process and not _sharded(self.acc):
            ckpt.save_state(self.out, {"stage": stage.name, "step": step,
                                       "checkpoint": str(path.relative_to(self.out)),
                                       "optimizer": optimizer.state_dict(),
                                       "rng": torch.get_rng_state()})
        self.acc.wait_for_everyone()

    def _resume_point(self, stage: Stage, optimizer) -> int:
        state = ckpt.load_state(self.out)
        if state is None or state["stage"] != stage.name:
            return 0
        self._restore(self.out / state["checkpoint"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        log.info("resuming %s from step %d", stage.name, state["step"])
        return state["step"]

    def _restore(self, checkpoint: Path) -> None:
        """Load a checkpoint's trained tensors into the live model and prompts."""
        tensors = ckpt.read_weights(checkpoint)
        if hasattr(self.lm, "peft_config"):
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.lm, tensors)
        elif tensors:
            missing, unexpected = self.lm.load_state_dict(tensors, strict=False)
            tied = set(getattr(self.lm, "_tied_weights_keys", None) or [])
            if unexpected or set(missing) - tied:
                raise GenftError(f"{checkpoint}: weights do not fit the model "
                                 f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        if self.prompts is not None:
            for prompt, tensor in zip(self.prompts, ckpt.read_prompts(checkpoint,
                                                                    [t.name for t in self.tasks])):
                with torch.no_grad():
                    prompt.embedding.weight.copy_(tensor)

    # ------------------------------------------------------------------ logging

    def _trim_log(self, stage: Stage, start: int) -> None:
        """Drop what a killed attempt logged for this stage after ``start`` (the step it
        restarts from: 0 without an intermediate checkpoint), so that every step of the
        run's log appears once, with the values of the steps that made the weights."""
        path = self.out / LOG_FILE
        if not self.acc.is_main_process or not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            mine = row.get("stage") in (stage.name, f"{stage.name}-dev")
            if not (mine and (row.get("step", 0) > start or start == 0)):
                kept.append(line if line.endswith("\n") else line + "\n")
        if kept != lines:
            path.write_text("".join(kept))

    def _log(self, stage, step, loss, lr, tokens, seconds, bar) -> None:
        if not self.acc.is_main_process:
            return
        row = {"stage": stage.name, "step": step, "loss": round(loss, 6), "lr": lr,
               "tokens": int(tokens), "tokens_per_s": round(tokens / seconds, 1),
               "seconds": round(seconds, 3)}
        with open(self.out / LOG_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.acc.log({f"{stage.name}/loss": loss, f"{stage.name}/lr": lr,
                      f"{stage.name}/tokens_per_s": row["tokens_per_s"]}, step=step)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
        bar.update(1)


class _BestOnDev:
    """ProMoT stage 1: evaluate the answer loss on the dev split, keep the best soft prompts."""

    def __init__(self, run: _Run, stage: Stage):
        self.run = run
        self.every = run.cfg.stage1_eval_every or max(1, stage.steps // 4)
        dev = [t.records("dev")[:run.cfg.dev_size] for t in run.tasks]
        self.examples = build_examples(run.tasks, run.tokenizer, dev, [0] * len(dev),
                                       run.cfg.max_length, run.cfg.seed, run.chat_template)
        self.best_loss, self.best = math.inf, None

    def check(self, step: int) -> None:
        module = self.run.acc.unwrap_model(self.run.wrapped)
        total, count = 0.0, 0
        module.eval()  # no dropout while measuring: the dev loss must not depend on the noise
        with torch.no_grad(), self.run.autocast():
            for b in range(0, len(self.examples), self.run.cfg.batch_size):
                batch = self.examples[b:b + self.run.cfg.batch_size]
                inputs = collate(batch, self.run.tokenizer.pad_token_id)
                total += module(**{k: v.to(self.run.acc.device) for k, v in inputs.items()}).item()
                count += len(inputs["loss_targets"])
        module.train()
        loss = total / count
        if loss < self.best_loss:
            self.best_loss, self.best = loss, [p.embedding.weight.detach().clone()
                                               for p in self.run.prompts]
        if self.run.acc.is_main_process:
            with open(self.run.out / LOG_FILE, "a") as f:
                f.write(json.dumps({"stage": "stage1-dev", "step": step, "dev_loss": round(loss, 6),
                                    "best": loss <= self.best_loss}) + "\n")
            self.run.acc.log({"stage1/dev_loss": loss}, step=step)

    def restore_best(self) -> None:
        with torch.no_grad():
            for prompt, best in zip(self.run.prompts, self.best):
                prompt.embedding.weight.copy_(best)


def _checkpoint_activations(lm) -> None:
    """Recompute each decoder layer's activations in the backward pass. Non-reentrant, so it
    is also right when the embeddings are frozen (LoRA, prompt tuning). transformers 5.2x
    renamed gradient_* to activation_checkpointing_enable; older 5.x has only the former."""
    import inspect

    kwargs = {"use_reentrant": False}
    new = getattr(lm, "activation_checkpointing_enable", None)
    if new is not None and "activation_checkpointing_kwargs" in inspect.signature(new).parameters:
        new(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _placement(cfg: TrainConfig) -> dict:
    """Accelerator options from the model's device: accelerate takes each process's GPU by
    itself. cpu=True whenever the device is the CPU: without it Accelerate 1.15 ignores a
    torchrun launch on a CPU-only machine (every process would train alone)."""
    from genft.models import resolve_device

    device = resolve_device(cfg.model.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # one process on a chosen GPU
    return {"cpu": device.type == "cpu"}


def _sharded(accelerator) -> bool:
    """FSDP / DeepSpeed split the optimizer state over processes: no resumable state file."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _scheduler(cfg: TrainConfig, optimizer, steps: int):
    """transformers' schedule ``lr_schedule`` over one stage's ``steps``, with its warmup.
    Not prepared by Accelerate: its wrapper steps a scheduler once per process, for loops
    whose step count shrinks with the process count; genft's steps are global already.
    transformers' "constant" ignores warmup; with warmup it is "constant_with_warmup"."""
    from transformers import get_scheduler

    warmup = cfg.warmup(steps)
    name = "constant_with_warmup" if cfg.lr_schedule == "constant" and warmup else cfg.lr_schedule
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def _replay(scheduler, steps: int) -> None:
    """Bring a fresh scheduler to step ``steps`` (--resume): the schedule is a function of the
    step alone. torch warns when a scheduler steps before its optimizer, which replaying is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        for _ in range(steps):
            scheduler.step()


def _fused_ok(params) -> bool:
    """Fused AdamW: one kernel for all parameters (~8x faster step on CPU than the default)."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                for p in params)


def _bar(stage: Stage, steps: int, start: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=start, desc=stage.name, unit="step", disable=not enabled,
                dynamic_ncols=True)


_TRACKER_PACKAGES = {"tensorboard": "tensorboard (pip install 'genft[track]')", "wandb": "wandb",
                     "mlflow": "mlflow", "aim": "aim"}


def _trackers(cfg: TrainConfig, out: Path) -> dict:
    """Accelerator options for ``report_to``; a tracker whose package is missing is one line
    (Accelerate would drop it silently)."""
    if not cfg.report_to:
        return {}
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    for name in cfg.report_to:
        if name not in available:
            raise GenftError(f"report_to: {name} is not installed; install "
                             f"{_TRACKER_PACKAGES[name]}, or drop it from report_to")
    return {"log_with": list(cfg.report_to), "project_dir": str(out / TRACKERS_DIR)}


def _start_trackers(cfg: TrainConfig, accelerator, out: Path) -> None:
    """Start the run's trackers with its hyperparameters (scalars: what every tracker takes)."""
    if not cfg.report_to:
        return
    name = f"{cfg.method} {'+'.join(cfg.tasks)} seed {cfg.seed}"
    hparams = {}
    for key, value in cfg.identity().items():
        if isinstance(value, dict):
            hparams.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            hparams[key] = ",".join(map(str, value)) if isinstance(value, list) else value
    hparams = {k: v for k, v in hparams.items() if isinstance(v, (bool, int, float, str))}
    accelerator.init_trackers("genft", config=hparams, init_kwargs={
        "wandb": {"name": name, "dir": str(out / TRACKERS_DIR)}, "mlflow": {"run_name": name}})
