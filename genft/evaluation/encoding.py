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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from genft.tasks.demos import make_sampler
from genft.tasks.prompts import separator


@dataclass
class Item:
    id: str
    prompt: str
    gold: str
    context: list[int]  # tokens(prompt)
    continuations: list[list[int]]  # one per label word (classification); empty for generation

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()[:16]


@dataclass
class CellInputs:
    items: list[Item]
    labels: list[str]
    prefix_len: int  # tokens every context shares (always < each context's length)


def build_inputs(task, tokenizer, shots: int, fmt: str, sampler: str = "first",
                 limit: int | None = None, seed: int = 0) -> CellInputs:
    """Render, tokenize and find the shared token prefix of one (task, shots, format) cell."""
    tests = task.records("test")
    if limit is not None:
        tests = tests[:limit]
    chooser = make_sampler(sampler, task.records("fewshot"), shots, task.labels, seed)
    prompts = [task.prompt(q, chooser.demos(q, i), fmt) for i, q in enumerate(tests)]
    contexts = _tokenize(tokenizer, prompts)
    items = []
    for q, prompt, ctx in zip(tests, prompts, contexts):
        conts = [_continuation(tokenizer, prompt, ctx, separator(prompt) + w) for w in task.labels]
        items.append(Item(q["id"], prompt, q["output"], ctx, conts))
    return CellInputs(items, list(task.labels), shared_prefix_len([it.context for it in items]))


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


def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []


def _continuation(tokenizer, context: str, context_ids: list[int], continuation: str) -> list[int]:
    whole = tokenizer(context + continuation, add_special_tokens=True)["input_ids"]
    if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
        return whole[len(context_ids):]
    # the boundary merged: fall back to the continuation tokenized alone
    return tokenizer(continuation, add_special_tokens=False)["input_ids"]
