"""Evaluating one cell — (task, shots, format) — on a loaded model.

:func:`evaluate_cell` is the public entry point; ``fast=False`` runs the reference
scorer instead (tests and the benchmark compare the two). Under a multi-process
launch (torchrun, srun, accelerate launch; see genft.distributed) the planned batches are dealt round-robin to the processes and the
results gathered, so every process returns the same, complete CellResult.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from genft import distributed
from genft.errors import GenftError
from genft.evaluation import fast, metrics, reference
from genft.evaluation.batching import auto_batch_size
from genft.evaluation.encoding import CellInputs, build_inputs, context_window
from genft.tasks.labels import SCORINGS, check_label_words
from genft.tasks.prompts import cut_generation
from genft.tasks.schema import FORMATS



@dataclass
class CellResult:
    task: str
    family: str
    type: str
    shots: int
    format: str
    sampler: str
    scoring: str  # "loglik" | "first-token" (classification); "greedy" (generation)
    metrics: dict[str, float]
    n: int
    seconds: float
    items: list[dict] = field(default_factory=list, repr=False)
    model: str = ""
    info: dict = field(default_factory=dict)  # seed, batch size, soft prompt, data hash, versions

    def to_record(self) -> dict:
        record = asdict(self)
        del record["items"]
        return record


def evaluate_cell(loaded, task, shots: int, fmt: str, *, sampler: str = "first",
                  limit: int | None = None, batch_size: int | str = 8, seed: int = 0,
                  scoring: str = "loglik", progress: bool = True, fast_path: bool = True
                  ) -> CellResult:
    """Score every test item of ``task`` with ``shots`` demos in format ``fmt``.

    Classification: the prediction is the label word with the highest log-likelihood
    (``scoring="loglik"``: sum over the label's tokens) or the highest first-token
    logit (``"first-token"``, the study's variant). Generation: greedy, at most the
    task's ``max_new_tokens``, cut at the first blank line.

    Label words the tokenizer cannot tell apart are refused before any scoring.
    Contexts longer than the model's window are cut from the left (the answer's
    room kept); ``info["truncated"]`` counts the items that were.
    """
    if fmt not in FORMATS:
        raise GenftError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if scoring not in SCORINGS:
        raise GenftError(f"unknown scoring {scoring!r}; choose from {', '.join(SCORINGS)}")
    if shots < 0:
        raise GenftError(f"shots must be >= 0 (got {shots})")
    start = time.perf_counter()
    model, tokenizer = loaded.model, loaded.tokenizer
    check_label_words(task, tokenizer, scoring, loaded.chat_template)
    soft = loaded.soft_prompt_for(task.name)
    inputs = build_inputs(task, tokenizer, shots, fmt, sampler, limit, seed,
                          window=context_window(model, soft), chat_template=loaded.chat_template)
    classify = task.type == "classification"
    first_token = classify and scoring == "first-token"
    size = _batch_size(batch_size, model, inputs, task, soft)

    if fast_path:
        def run_fast(size: int):
            batches = fast.plan_batches(inputs, size, task.type, first_token)
            rank, world = distributed.rank(), distributed.world_size()
            mine = batches[rank::world]
            distributed.note("eval", task=task.name, batches=len(mine), of=len(batches))
            bar = _bar(progress and rank == 0, len(inputs.items), f"{task.name} {shots}-shot {fmt}")
            on_items = (lambda n: bar.update(n * world)) if bar else (lambda n: None)
            try:
                prefix = fast.PrefixCache(model, inputs.items[0].context[: inputs.prefix_len]
                                          if inputs.items else [], soft)
                if classify:
                    raw = fast.score_batches(model, tokenizer, inputs, mine, prefix, on_items)
                else:
                    raw = fast.generate_batches(model, tokenizer, mine, prefix,
                                                task.spec.max_new_tokens, on_items)
            finally:
                if bar:
                    bar.close()
            return size, {i: r for part in distributed.gather_objects(raw) for i, r in part.items()}

        size, raw = (_backing_off(run_fast, size) if batch_size == "auto" else run_fast(size))
    else:
        raw = _reference(model, tokenizer, inputs, task, soft, first_token, progress)

    items = [_item_record(inputs, i, raw[i], tokenizer, classify) for i in range(len(inputs.items))]
    names = list(dict.fromkeys(metrics.DEFAULTS[task.type] + list(task.spec.metrics)))
    predictions, golds = [it["prediction"] for it in items], [it["gold"] for it in items]
    refs = [it.references for it in inputs.items]
    values = metrics.compute(names, predictions, golds, inputs.labels, refs)
    errors = metrics.standard_errors(names, predictions, golds, inputs.labels, refs, seed)
    if not classify:  # per-item scores (best match over references) for paired comparisons
        for name, scores in metrics.item_scores(names, predictions, golds, refs).items():
            for it, score in zip(items, scores):
                it.setdefault("scores", {})[name] = score
    return CellResult(
        task=task.name, family=task.family, type=task.type, shots=shots, format=fmt,
        sampler=sampler, scoring=scoring if classify else "greedy", metrics=values, n=len(items),
        seconds=round(time.perf_counter() - start, 3), items=items, model=loaded.name,
        info={"seed": seed, "limit": limit, "batch_size": size, "fast_path": fast_path,
              "soft_prompt": soft is not None, "prefix_tokens": inputs.prefix_len,
              **({"chat_template": True} if loaded.chat_template else {}),
              "truncated": inputs.n_truncated, "se": errors,
              "data_hash": task.data_hash, "method": loaded.method,
              "base_model": loaded.base_model, "dtype": str(model.dtype).removeprefix("torch."),
              "device": str(model.device), **_versions()},
    )


def _item_record(inputs: CellInputs, i: int, raw, tokenizer, classify: bool) -> dict:
    item = inputs.items[i]
    record = {"id": item.id, "prompt_hash": item.prompt_hash}
    if classify:
        best = max(range(len(raw)), key=lambda j: raw[j])  # ties: the first label
        record.update(prediction=inputs.labels[best], gold=item.gold,
                      scores=dict(zip(inputs.labels, raw)))
    else:
        record.update(prediction=cut_generation(tokenizer.decode(raw, skip_special_tokens=True)),
                      gold=item.gold)
    return record


def _reference(model, tokenizer, inputs, task, soft, first_token, progress) -> dict[int, object]:
    bar = _bar(progress, len(inputs.items), f"{task.name} (reference)")
    out = {}
    for i, item in enumerate(inputs.items):
        if task.type == "classification":
            out[i] = reference.score_item(model, item, soft, first_token)
        else:
            out[i] = reference.generate_item(model, tokenizer, item, soft, task.spec.max_new_tokens)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return out


def _batch_size(batch_size, model, inputs: CellInputs, task, soft) -> int:
    if batch_size == "auto":
        if not inputs.items:
            return 1
        longest = max(len(it.context) for it in inputs.items) - inputs.prefix_len
        extra = task.spec.max_new_tokens if task.type == "generation" else \
            max((len(c) for it in inputs.items for c in it.continuations), default=1)
        context = inputs.prefix_len + (0 if soft is None else soft.shape[0])
        return auto_batch_size(model, context, longest + extra, extra)
    try:
        size = int(batch_size)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise GenftError(f"batch size must be a positive integer or 'auto' (got {batch_size!r})")
    return size


def _backing_off(run, start: int):
    """``--batch-size auto``: the memory estimate is a starting point; on out-of-memory the
    cell is rerun with a smaller batch (accelerate's find_executable_batch_size: x0.9 each
    time). Batches of a cell are independent, so the smaller batch gives the same scores."""
    from accelerate.utils import find_executable_batch_size

    try:
        return find_executable_batch_size(run, starting_batch_size=start)()
    except RuntimeError as e:
        if "No executable batch size found" not in str(e):
            raise
        raise GenftError("out of memory even with batch size 1: the model and this cell's "
                         "context do not fit on the device (try fewer --shots, --dtype bfloat16 "
                         "or a device with more memory)") from None


def _bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", leave=False, dynamic_ncols=True)


def _versions() -> dict:
    import transformers

    from genft._version import __version__

    return {"genft": __version__, "transformers": transformers.__version__,
            "torch": torch.__version__}
