"""Turning one evaluation cell into token ids: the exact prompts, their continuations, the shared prefix.

Both scorers (the reference and the fast path) read the same :class:`CellInputs`,
so any difference between them is a difference in *computation*, never in input.

Continuations. A classification item is scored on ``separator(prompt) + label``
(see :mod:`genft.tasks.prompts`), i.e. exactly what training teaches after the
prompt, **without** the ``"\\n\\n"`` terminator: the terminator is the same for
every label, so scoring it would only add noise that depends on the label's last
token. Tokens are split the way lm-evaluation-harness splits them: the context is
``tokens(prompt)``; the continuation is ``tokens(prompt + continuation)`` with the
context's length cut off (for SmolLM2 this always equals ``tokens(" label")``).

The shared prefix. With first-k (or balanced) demos every prompt starts with the
same k demos, but the prefix must never be tokenized on its own: the demos end in
``"\\n\\n"``, which merges differently with what follows (measured: 7 of 250
predictions changed). Every full prompt is tokenized, and the prefix is the
longest run of *token ids* that all prompts share — correct by construction for
any sampler (with random demos it is just a few tokens).

Too-long contexts. A context that would not fit the model's window (its
``max_position_embeddings``, less the soft prompt, less room for the answer: the
longest label continuation, or ``max_new_tokens`` for generation) keeps its
**last** tokens, after any leading special tokens (BOS): the oldest demos go
first and the question stays next to the answer; the continuation is never cut.
Truncation works on the full prompt's token ids (no re-tokenizing of a cut text)
and comes before the shared prefix is found, so both scorers read the same,
truncated contexts. ``Item.truncated`` says how many tokens an item lost.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from genft.errors import GenftError
from genft.tasks.demos import make_sampler
from genft.tasks.prompts import model_prompt, separator


@dataclass
class Item:
    id: str
    prompt: str
    gold: str
    context: list[int]  # tokens(prompt)
    continuations: list[list[int]]  # one per label word (classification); empty for generation
    truncated: int = 0  # context tokens cut from the left to fit the model's window
    references: list[str] | None = None  # other accepted answers (aliases); metrics take the best


    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()[:16]


@dataclass
class CellInputs:
    items: list[Item]
    labels: list[str]
    prefix_len: int  # tokens every context shares (always < each context's length)


    @property
    def n_truncated(self) -> int:
        """Items whose context was cut to fit the model's window."""
        return sum(1 for it in self.items if it.truncated)


def build_inputs(task, tokenizer, shots: int, fmt: str, sampler: str = "first",
                 limit: int | None = None, seed: int = 0, window: int | None = None,
                 chat_template: bool = False) -> CellInputs:
    """Render, tokenize and find the shared token prefix of one (task, shots, format) cell.

    ``window``: the positions a context plus its answer may take (see
    :func:`context_window`); longer contexts are cut from the left. None: no limit.
    ``chat_template``: each prompt is wrapped as the model reads it (:func:`model_prompt`).
    """
    tests = task.records("test")
    if limit is not None:
        tests = tests[:limit]
    chooser = make_sampler(sampler, task.records("fewshot"), shots, task.labels, seed)
    prompts = [model_prompt(tokenizer, task.prompt(q, chooser.demos(q, i), fmt), chat_template)
               for i, q in enumerate(tests)]
    contexts = _tokenize(tokenizer, prompts)
    items = []
    for q, prompt, ctx in zip(tests, prompts, contexts):
        conts = [_continuation(tokenizer, prompt, ctx, continuation_text(prompt, w))
                 for w in task.labels]
        items.append(Item(q["id"], prompt, q["output"], ctx, conts,
                          references=q.get("references")))
    if window is not None:
        _truncate(items, window, task, tokenizer)
    return CellInputs(items, list(task.labels), shared_prefix_len([it.context for it in items]))


def continuation_text(prompt: str, label: str) -> str:
    """The text a label is scored as after ``prompt``: separator + label word (per-byte
    scoring divides by its UTF-8 length)."""
    return separator(prompt) + label


def shared_prefix_len(contexts: list[list[int]]) -> int:
    """Longest common token prefix, leaving at least one token of every context outside it
    (the last context token's logits predict the first answer token)."""
    if not contexts:
        return 0
    first, n = contexts[0], min(len(c) for c in contexts) - 1
    for ctx in contexts[1:]:
        i = 0
        while i < n and ctx[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def context_window(model, soft_prompt=None) -> int | None:
    """Positions available to context + answer: the model's ``max_position_embeddings``
    less the soft prompt's virtual tokens (None if the config names no limit)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    return limit - (0 if soft_prompt is None else int(soft_prompt.shape[0]))


def _truncate(items: list[Item], window: int, task, tokenizer) -> None:
    """Cut every context to ``window`` less the answer's room, keeping its last tokens."""
    if task.type == "classification":
        room = max((len(c) for it in items for c in it.continuations), default=0)
        answer = f"the longest label continuation ({room} tokens)"
    else:
        room = task.spec.max_new_tokens
        answer = f"max_new_tokens ({room})"
    budget = window - room
    special = set(tokenizer.all_special_ids)
    for it in items:
        if len(it.context) <= budget:
            continue
        head = 0  # leading special tokens (BOS) stay at the start
        while head < len(it.context) and it.context[head] in special:
            head += 1
        if budget - head < 1:
            raise GenftError(f"task {task.name!r}: the model's window ({window} positions) leaves "
                             f"no room for a prompt after {answer}; use a model with a longer "
                             f"context{' or a smaller max_new_tokens' if room else ''}")
        keep = budget - head
        it.truncated = len(it.context) - head - keep
        it.context = it.context[:head] + it.context[-keep:]


def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []


def _continuation(tokenizer, context: str, context_ids: list[int], continuation: str) -> list[int]:
    whole = tokenizer(context + continuation, add_special_tokens=True)["input_ids"]
    if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
        return whole[len(context_ids):]
    # the boundary merged: fall back to the continuation tokenized alone
    return tokenizer(continuation, add_special_tokens=False)["input_ids"]
