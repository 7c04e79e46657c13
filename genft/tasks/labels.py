"""Do a task's label words survive the model's tokenizer?

Classification scores each label word as the tokens that follow the prompt. Two
words that tokenize identically (an uncased tokenizer: "Yes"/"yes"), a word that
tokenizes to nothing (a normalizer that strips it), or — under a scoring rule that reads
only some of a word's tokens, as first-token scoring does — two words whose scored tokens
are equal ("not_entailment"/"not_sure" both start " not") make some predictions
impossible, and the accuracy quietly wrong. The scoring rule (genft.evaluation.scoring)
says which tokens it scores; the evaluator and the trainer call :func:`check_label_words`
once per (task, tokenizer) before any work; the check is cheap (a tokenizer call per
label word).
"""

from __future__ import annotations

from genft.errors import GenftError
from genft.evaluation.scoring import Scoring, get_scoring
from genft.tasks.prompts import model_prompt, separator


def label_token_ids(tokenizer, words: list[str], prompt: str = ":") -> list[list[int]]:
    """Each word as the model reads it after ``prompt``: separator + word, no special tokens."""
    sep = separator(prompt)
    return [list(tokenizer(sep + w, add_special_tokens=False)["input_ids"]) for w in words]


def check_label_tokens(words: list[str], token_ids: list[list[int]],
                       scoring: str | Scoring = "loglik", where: str = "label words") -> None:
    """Raise a GenftError if the scorer cannot tell every label word apart.

    ``token_ids`` are the exact continuations a scorer uses (one list per word), so an
    evaluator that tokenizes continuations its own way can check those. ``scoring``: a
    registered rule's name or a Scoring; its ``scored(ids)`` are the tokens that must differ.
    """
    rule = get_scoring(scoring)
    for word, ids in zip(words, token_ids):
        if not ids:
            raise GenftError(f"{where}: label word {word!r} tokenizes to nothing with this model's "
                             f"tokenizer; choose another word")
    seen: dict[tuple[int, ...], tuple[str, list[int]]] = {}
    for word, ids in zip(words, token_ids):
        key = tuple(rule.scored(ids))
        if key in seen:
            other, other_ids = seen[key]
            if list(ids) == list(other_ids):
                raise GenftError(f"{where}: label words {other!r} and {word!r} tokenize to the "
                                 f"same tokens {list(ids)}; the model cannot tell them apart — "
                                 f"choose distinct words")
            same = f"token (id {key[0]})" if len(key) == 1 else f"{len(key)} tokens {list(key)}"
            first = "first tokens" if len(key) == 1 else f"first {len(key)} tokens"
            raise GenftError(f"{where}: label words {other!r} and {word!r} start with the same "
                             f"{same}, so {rule.name} scoring cannot tell them apart; use loglik "
                             f"scoring, or words whose {first} differ")
        seen[key] = (word, ids)


def check_label_words(task, tokenizer, scoring: str | Scoring = "loglik",
                      chat_template: bool = False) -> None:
    """Check a classification task's label words with ``tokenizer`` (no-op for generation),
    as they follow a prompt (``chat_template``: the assistant header, often with no space:
    "good"/"goodness" then share their first token, " good"/" goodness" do not)."""
    if task.type != "classification":
        return
    words = list(task.labels)
    after = model_prompt(tokenizer, ":", chat_template)
    check_label_tokens(words, label_token_ids(tokenizer, words, after), scoring,
                       f"task {task.name!r} ({task.path})")
