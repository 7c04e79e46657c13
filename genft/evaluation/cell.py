"""Evaluating one cell — (task, shots, format) — on a loaded model.

:func:`evaluate_cell` is the public entry point. It prepares the cell's inputs once
(genft.evaluation.encoding), asks a backend (genft.evaluation.backends: ``fast`` by
default, ``reference`` for checking, or any registered one) for log-likelihoods or greedy
answers, and reduces log-likelihoods to one score per label with the cell's scoring rule
(genft.evaluation.scoring). Under a multi-process launch (torchrun, srun, accelerate
launch; see genft.distributed) the backend deals its work to the processes and gathers
it, so every process returns the same, complete CellResult.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from genft import distributed
from genft.errors import GenftError
from genft.evaluation import metrics
from genft.evaluation.backends import DEFAULT_BACKEND, get_backend
from genft.evaluation.batching import auto_batch_size
from genft.evaluation.encoding import CellInputs, build_inputs, context_window, continuation_text
from genft.evaluation.scoring import DEFAULT_SCORING, Scoring, get_scoring
from genft.tasks.labels import check_label_words
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
    scoring: str  # a registered Scoring's name (classification); "greedy" (generation)
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
                  scoring: str | Scoring = DEFAULT_SCORING, progress: bool = True,
                  backend: str = DEFAULT_BACKEND, fast_path: bool | None = None) -> CellResult:
    """Score every test item of ``task`` with ``shots`` demos in format ``fmt``.

    Classification: the prediction is the label word with the highest score under
    ``scoring`` (a registered name, see genft.evaluation.scoring: ``loglik``, the sum of
    the label's token log-probs; ``first-token``, the study's variant;
    ``loglik-per-token``; ``loglik-per-byte``). Generation: greedy, at most the task's
    ``max_new_tokens``, cut at the first blank line.

    ``backend``: a registered backend's name (``fast``, ``reference``, ...); it computes,
    it does not change what is computed, so it is recorded in ``info["backend"]`` only.
    ``fast_path=False`` is the older spelling of ``backend="reference"``.

    Label words the scoring rule cannot tell apart are refused before any scoring.
    Contexts longer than the model's window are cut from the left (the answer's
    room kept); ``info["truncated"]`` counts the items that were.
    """
    if fmt not in FORMATS:
        raise GenftError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    rule = get_scoring(scoring)
    if fast_path is not None:
        backend = DEFAULT_BACKEND if fast_path else "reference"
    engine = get_backend(backend)(loaded)
    if shots < 0:
        raise GenftError(f"shots must be >= 0 (got {shots})")
    start = time.perf_counter()
    model, tokenizer = loaded.model, loaded.tokenizer
    check_label_words(task, tokenizer, rule, loaded.chat_template)
    soft = loaded.soft_prompt_for(task.name)
    inputs = build_inputs(task, tokenizer, shots, fmt, sampler, limit, seed,
                          window=context_window(model, soft), chat_template=loaded.chat_template)
    classify = task.type == "classification"
    size = _batch_size(batch_size, model, inputs, task, soft)
    scored = rule.select(inputs) if classify else inputs

    def run(size: int):
        bar = _bar(progress and distributed.is_main(), len(inputs.items),
                   f"{task.name} {shots}-shot {fmt}")
        try:
            if classify:
                raw = engine.loglikelihood(scored, soft_prompt=soft, batch_size=size,
                                           progress=bar.update if bar else None)
            else:
                raw = engine.generate_until(inputs, task.spec.max_new_tokens, soft_prompt=soft,
                                            batch_size=size, progress=bar.update if bar else None)
        finally:
            if bar:
                bar.close()
        return size, raw

    size, raw = _backing_off(run, size) if batch_size == "auto" else run(size)

    items = [_item_record(scored, i, raw[i], rule, classify) for i in range(len(inputs.items))]
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
        sampler=sampler, scoring=rule.name if classify else "greedy", metrics=values,
        n=len(items), seconds=round(time.perf_counter() - start, 3), items=items,
        model=loaded.name,
        info={"seed": seed, "limit": limit, "batch_size": size, "backend": engine.name,
              "soft_prompt": soft is not None, "prefix_tokens": inputs.prefix_len,
              **({"chat_template": True} if loaded.chat_template else {}),
              "truncated": inputs.n_truncated, "se": errors,
              "data_hash": task.data_hash, "method": loaded.method,
              "base_model": loaded.base_model, "dtype": str(model.dtype).removeprefix("torch."),
              "device": str(model.device), **_versions()},
    )


def _item_record(inputs: CellInputs, i: int, raw, rule: Scoring, classify: bool) -> dict:
    """``raw``: the label continuations' summed log-probs (classification; ``inputs`` holds the
    scored tokens) or the generated text."""
    item = inputs.items[i]
    record = {"id": item.id, "prompt_hash": item.prompt_hash}
    if classify:
        scores = [rule.reduce(logprob, tokens, continuation_text(item.prompt, label))
                  for logprob, tokens, label in zip(raw, item.continuations, inputs.labels)]
        best = max(range(len(scores)), key=lambda j: scores[j])  # ties: the first label
        record.update(prediction=inputs.labels[best], gold=item.gold,
                      scores=dict(zip(inputs.labels, scores)))
    else:
        record.update(prediction=cut_generation(raw), gold=item.gold)
    return record


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
