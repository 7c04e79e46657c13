"""Training inputs: prompt text -> token ids with the loss on the answer only, and batches.

An example is ``prompt + target_text(prompt, answer)`` (separator, answer, blank
line: the same terminator evaluation cuts generations at, so the model learns to
stop), tokenized the way that blank line tokenizes inside a k-shot prompt
(``tokenize_as_demos``). The loss covers only the target tokens. With ``shots`` > 0 (FTICL,
ProMoT + 1-shot) the prompt is a k-shot prompt whose demos come from the
training pool; demo tokens are part of the prompt and so carry no loss. A model with
``chat_template`` on is trained on its prompts wrapped exactly as evaluation wraps them
(:func:`genft.tasks.prompts.model_prompt`); template tokens are prompt too.

Batches are built to waste little compute on padding: examples are shuffled,
sorted by length inside large chunks, cut into batches, and the batch order is
shuffled again. Padding goes on the right and no attention mask is needed: with
causal attention a real token never looks at the padding after it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from genft.errors import GenftError
from genft.tasks.prompts import model_prompt, target_text

SORT_CHUNK = 64  # batches per length-sorted chunk: little padding, still well mixed
CONTINUATION_CHARS = 16  # enough of the next block to settle every merge across the boundary


@dataclass
class Example:
    input_ids: list[int]
    loss_start: int  # index of the first target token; tokens before it carry no loss
    task: int  # index into the run's task list (selects the soft prompt)
    prompt: str  # the exact text before the target, kept for inspection and tests
    n_demos: int = 0  # demos in the prompt
    asked_demos: int = 0  # demos the method asked for (more than n_demos: some were dropped)
    cut: int = 0  # oldest prompt tokens cut because even the prompt without demos was too long

    @property
    def shortened(self) -> bool:
        return self.n_demos < self.asked_demos or self.cut > 0


def train_pool(task, size: int | None) -> list[dict]:
    """The task's training records, or ``size`` of them drawn at random (nested: the first
    2,000 of a 4,000-item draw are the 2,000-item draw).

    A random draw, not the first rows: balanced test/few-shot/dev splits are carved
    off the front of the shuffled source, which leaves the front of the training
    split short of the rarer labels.
    """
    if not task.has_train:
        raise GenftError(f"task {task.name!r} has no train split to train on")
    pool = task.records("train")
    if size is None:
        return pool
    if size > len(pool):
        raise GenftError(f"--train-size {size} is more than task {task.name!r}'s training pool "
                         f"({len(pool)} items)")
    order = list(range(len(pool)))
    random.Random(f"{task.name}:train-draw").shuffle(order)
    return [pool[i] for i in order[:size]]


def fticl_demos(pool: list[dict], index: int, k: int, labels: list[str], rng: random.Random,
                by_label: dict[str, list[int]]) -> list[dict]:
    """k demos for pool[index] from the rest of the pool, one per label first (if k allows).

    Rejection sampling keeps this O(k) per item even for a pool of many thousands.
    """
    if k > len(pool) - 1:
        raise GenftError(f"{k} demos per input asked for, but the training pool has only "
                         f"{len(pool)} items (use more --train-size or fewer --shots)")
    chosen: list[int] = []
    if labels and k >= len(labels):
        for label in labels:
            candidates = [i for i in by_label.get(label, [])[:2] if i != index]
            if not candidates:
                raise GenftError(f"FTICL needs every label among the demos, but the training pool "
                                 f"has no other item labelled {label!r}")
            chosen.append(_draw(rng, by_label[label], index, chosen))
    while len(chosen) < k:
        chosen.append(_draw(rng, range(len(pool)), index, chosen))
    rng.shuffle(chosen)
    return [pool[i] for i in chosen]


def _draw(rng: random.Random, candidates, index: int, taken: list[int]) -> int:
    while (i := rng.choice(candidates)) == index or i in taken:
        pass
    return i


def encode(tokenizer, prompts: list[str], answers: list[str], max_length: int, task: int,
           n_demos: int = 0, chat_template: bool = False) -> list[Example | None]:
    """Tokenize prompt+target so that the loss starts right after the prompt's tokens
    (``prompts`` as the task renders them; ``chat_template`` wraps them as the model reads them).

    Prompt tokens are normally a prefix of the full text's tokens (the separator
    rule in genft.tasks.prompts makes sure of it); if a merge crosses the boundary,
    the loss starts at the first token that differs. Too-long inputs lose their
    oldest prompt tokens (``Example.cut`` counts them; :func:`build_examples` first
    drops whole demos instead). The answer is never cut: an example whose target
    alone leaves no room for a prompt token is None (skipped, and counted).
    """
    texts = [model_prompt(tokenizer, p, chat_template) for p in prompts]
    prompt_ids = tokenizer(texts).input_ids
    # the blank line after the answer tokenizes as before a next demo (the task's own text)
    full_ids = tokenize_as_demos(tokenizer, [t + target_text(t, a) for t, a in zip(texts, answers)],
                                 [p[:CONTINUATION_CHARS] for p in prompts])
    examples: list[Example | None] = []
    for prompt, p_ids, ids in zip(texts, prompt_ids, full_ids):
        start = 0
        while start < min(len(p_ids), len(ids)) and p_ids[start] == ids[start]:
            start += 1
        start = max(start, 1)  # the first token has no preceding position to predict it from
        cut = 0
        if len(ids) > max_length:
            cut = len(ids) - max_length
            if cut > start - 1:  # the answer itself does not fit: never cut it
                examples.append(None)
                continue
            ids, start = ids[cut:], start - cut
        examples.append(Example(ids, start, task, prompt, n_demos, n_demos, cut))
    return examples


def tokenize_as_demos(tokenizer, texts: list[str], continuations: list[str]) -> list[list[int]]:
    """Token ids of each text as it tokenizes when the next block follows it, as in a k-shot prompt.

    Why: at the very end of a string BPE merges the terminator "\\n\\n" into one token
    (SmolLM2: 1116), but inside a k-shot prompt the next demo's text follows and the
    same blank line is two "\\n" tokens (198 198). Trained on the end-of-string form,
    an FTICL model learned 1116 as "the answer is over" and, on an unfamiliar task,
    emitted it first: an empty answer. So the text is tokenized with the start of
    the next block (the prompt's own opening) appended, and cut back at the text's
    end. Where a token would straddle that end, or the tokenizer has no character
    offsets (slow tokenizers, test doubles), the text's own tokenization is kept.
    """
    if not getattr(tokenizer, "is_fast", False):  # only fast tokenizers report offsets
        return tokenizer(texts).input_ids
    joined = tokenizer([t + c for t, c in zip(texts, continuations)], return_offsets_mapping=True)
    ids_out = []
    for text, ids, offsets in zip(texts, joined.input_ids, joined.offset_mapping):
        n = 0
        while n < len(ids) and offsets[n][1] <= len(text):
            n += 1
        ids_out.append(ids[:n] if n and offsets[n - 1][1] == len(text) else tokenizer(text).input_ids)
    return ids_out


def build_examples(tasks, tokenizer, records_per_task: list[list[dict]], shots: list[int],
                   max_length: int, seed: int, chat_template: bool = False) -> list[Example]:
    """Examples for every task; ``shots[i]`` demos (drawn from that task's pool) per input.

    An input longer than ``max_length`` loses whole demos, the oldest (first, farthest
    from the query) first, never part of one, so FTICL trains on exactly the demo format
    evaluation shows (a cut demo starts mid-sentence, without its header). Only with no
    demo left is the query cut from the left, as evaluation cuts a too-long context. An
    example whose answer alone does not fit is skipped. :func:`truncation` counts both.
    ``chat_template``: prompts are wrapped in the tokenizer's chat template (see :func:`encode`).
    """
    examples = []
    for t, (task, pool, k) in enumerate(zip(tasks, records_per_task, shots)):
        rng = random.Random(f"{seed}:{task.name}:demos")
        by_label: dict[str, list[int]] = {}
        for i, r in enumerate(pool):
            by_label.setdefault(r["output"], []).append(i)
        demos = [fticl_demos(pool, i, k, task.labels, rng, by_label) if k else []
                 for i in range(len(pool))]
        prompts = [task.prompt(r, d, "prompt1") for r, d in zip(pool, demos)]
        encoded = encode(tokenizer, prompts, [r["output"] for r in pool], max_length, t, k,
                         chat_template)
        for record, chosen, ex in zip(pool, demos, encoded):
            while ex is not None and ex.cut and chosen:  # too long: drop the oldest demo
                chosen = chosen[1:]
                (ex,) = encode(tokenizer, [task.prompt(record, chosen, "prompt1")],
                               [record["output"]], max_length, t, len(chosen), chat_template)
            if ex is not None:
                ex.asked_demos = k
                examples.append(ex)
    return examples


def truncation(examples: list[Example], pools: list[list[dict]]) -> dict[str, int]:
    """``{shortened, skipped, total}``: examples that lost demos (or prompt tokens) to
    ``max_length``, examples skipped because their answer did not fit, and all examples."""
    total = sum(len(p) for p in pools)
    return {"shortened": sum(e.shortened for e in examples), "skipped": total - len(examples),
            "total": total}


def micro_batches(examples: list[Example], batch_size: int, seed: int, epoch: int
                  ) -> list[list[int]]:
    """One epoch of batches (lists of example indices) in a reproducible, low-padding order."""
    rng = random.Random(f"{seed}:epoch:{epoch}")
    order = list(range(len(examples)))
    rng.shuffle(order)
    batches = []
    chunk = batch_size * SORT_CHUNK
    for c in range(0, len(order), chunk):
        part = sorted(order[c:c + chunk], key=lambda i: len(examples[i].input_ids))
        batches += [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids plus the (row, position, target) triples that carry loss.

    Position p predicts token p+1, so a target token at index j is scored from
    the hidden state at j-1: the LM head runs only at those positions.
    """
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    rows, cols, targets = [], [], []
    for r, e in enumerate(examples):
        ids[r, :len(e.input_ids)] = torch.tensor(e.input_ids)
        positions = range(e.loss_start - 1, len(e.input_ids) - 1)
        rows += [r] * len(positions)
        cols += positions
        targets += e.input_ids[e.loss_start:]
    return {"input_ids": ids, "loss_rows": torch.tensor(rows), "loss_cols": torch.tensor(cols),
            "loss_targets": torch.tensor(targets),
            "task_index": torch.tensor([e.task for e in examples])}
