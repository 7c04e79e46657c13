"""Classification scoring rules, each defined once (modelled on PEFT's ``register_peft_method``).

A classification item is scored by asking a backend (:mod:`genft.evaluation.backends`) for
the log-likelihood of each label's continuation, exactly as lm-evaluation-harness asks its
``LM.loglikelihood``; a :class:`Scoring` says the two things that vary between rules:

* **which continuation tokens are scored** (``max_tokens``: the first N, or all of them).
  The backends only ever see the tokens a rule scores, and the label-word check
  (:func:`genft.tasks.labels.check_label_tokens`) refuses words whose scored tokens are
  equal, so a rule that reads only the first token refuses " not_entailment"/" not_sure";
* **how the summed log-probability becomes one score per label** (``reduce(logprob,
  tokens, text)``: the sum over the scored tokens, those tokens, and the continuation's
  text ``separator + label word``). The prediction is the label with the highest score.

The built-in rules:

* ``loglik`` (default): the sum, the whole label word;
* ``first-token``: the first token's log-probability (study A's rule);
* ``loglik-per-token``: the sum divided by the number of continuation tokens;
* ``loglik-per-byte``: the sum divided by the UTF-8 bytes of the continuation text, as
  lm-eval's ``acc_bytes`` (its ``acc_norm`` divides by characters): with SmolLM2,
  " not_entailment" is 5 tokens against 2 for " entailment", so the plain sum favours the
  short word whatever the evidence.

The rule's name is part of every cell key (existing names keep their keys). A new rule is
one :func:`register_scoring` call, in any module imported before the run::

    from genft.evaluation.scoring import Scoring, register_scoring

    register_scoring(Scoring("loglik-per-char", lambda lp, tokens, text: lp / len(text),
                             description="lm-eval's acc_norm: the sum per character"))

This module imports neither torch nor the task code (config validation stays fast).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from genft.errors import GenftError, unknown_name

DEFAULT_SCORING = "loglik"


@dataclass(frozen=True)
class Scoring:
    name: str
    # (summed log-prob of the scored tokens, those token ids, the continuation text) -> score
    reduce: Callable[[float, list[int], str], float]
    max_tokens: int | None = None  # score only the first N continuation tokens; None: all
    description: str = ""

    def scored(self, continuation: list[int]) -> list[int]:
        """The continuation tokens this rule scores (what tells two labels apart)."""
        return list(continuation) if self.max_tokens is None else list(continuation[: self.max_tokens])

    def select(self, inputs):
        """``inputs`` (CellInputs) with every continuation cut to the tokens this rule scores:
        what a backend is asked to score."""
        if self.max_tokens is None:
            return inputs
        items = [dataclasses.replace(it, continuations=[self.scored(c) for c in it.continuations])
                 for it in inputs.items]
        return dataclasses.replace(inputs, items=items)


_SCORINGS: dict[str, Scoring] = {}


def register_scoring(scoring: Scoring, *, replace: bool = False) -> Scoring:
    """Make ``scoring`` known to `genft eval --scoring`, experiment configs and the API."""
    if scoring.name in _SCORINGS and not replace:
        raise GenftError(f"scoring {scoring.name!r} is already registered (pass replace=True)")
    if scoring.name == "greedy":
        raise GenftError("'greedy' names how generation cells are scored; choose another name")
    if scoring.max_tokens is not None and scoring.max_tokens < 1:
        raise GenftError(f"scoring {scoring.name!r}: max_tokens must be at least 1 (or None: all)")
    _SCORINGS[scoring.name] = scoring
    return scoring


def unregister_scoring(name: str) -> None:
    _SCORINGS.pop(name, None)


def get_scoring(name: str | Scoring) -> Scoring:
    if isinstance(name, Scoring):
        return name
    if name not in _SCORINGS:
        raise GenftError(unknown_name("scoring", name, _SCORINGS))
    return _SCORINGS[name]


def scoring_names() -> tuple[str, ...]:
    return tuple(_SCORINGS)


def _utf8_bytes(text: str) -> int:
    return max(1, len(text.encode("utf-8")))


for _scoring in [
    Scoring("loglik", lambda lp, tokens, text: lp,
            description="sum of the label continuation's token log-probabilities"),
    Scoring("first-token", lambda lp, tokens, text: lp, max_tokens=1,
            description="log-probability of the label continuation's first token (study A)"),
    Scoring("loglik-per-token", lambda lp, tokens, text: lp / len(tokens),
            description="the sum divided by the continuation's number of tokens"),
    Scoring("loglik-per-byte", lambda lp, tokens, text: lp / _utf8_bytes(text),
            description="the sum divided by the continuation text's UTF-8 bytes (lm-eval acc_bytes)"),
]:
    register_scoring(_scoring)
