"""Do a task's label words survive the model's tokenizer?

Classification scores each label word as the tokens that follow the prompt. Two
words that tokenize identically (an uncased tokenizer: "Yes"/"yes"), a word that
tokenizes to nothing (a normalizer that strips it), or — under first-token scoring —
two words that start with the same token ("not_entailment"/"not_sure" both start
" not") make some predictions impossible, and the accuracy quietly wrong. The
evaluator and the trainer call :func:`check_label_words` once per (task, tokenizer)
before any work; the check is cheap (a tokenizer call per label word).
"""

from __future__ import annotations

from genft.errors import GenftError
from genft.tasks.prompts import model_prompt, separator

SCORINGS = ("loglik", "first-token")


def label_token_ids(tokenizer, words: list[str], prompt: str = ":") -> list[list[int]]:
    """Each word as the model reads it after ``prompt``: separator + word, no special tokens."""
    sep = separator(prompt)
    return [list(tokenizer(sep + w, add_special_tokens=False)["input_ids"]) for w in words]


def check_label_tokens(words: list[str], token_ids: list[list[int]], scoring: str = "loglik",
                       where: str = "label words") -> None:
    """Raise a GenftError if the scorer cannot tell every label word apart.

    ``token_ids`` are the exact continuations a scorer uses (one list per word), so an
    evaluator that tokenizes continuations its own way can check those.
    """
    if scoring not in SCORINGS:
        raise GenftError(f"unknown scoring {scoring!r}; choose from {', '.join(SCORINGS)}")
    for word, ids in zip(words, token_ids):
        if not ids:
            raise GenftError(f"{where}: label word {word!r} tokenizes to nothing with this model's "
                             f"tokenizer; choose another word")
    seen: dict[tuple[int, ...], tuple[str, list[int]]] = {}
    for word, ids in zip(words, token_ids):
        key = tuple(ids[:1]) if scoring == "first-token" else tuple(ids)
        if key in seen:
            other, other_ids = seen[key]
            if list(ids) == list(other_ids):
                raise GenftError(f"{where}: label words {other!r} and {word!r} tokenize to the "
                                 f"same tokens {list(ids)}; the model cannot tell them apart — "
                                 f"choose distinct words")
            raise GenftError(f"{where}: label words {other!r} and {word!r} start with the same "
                             f"token (id {ids[0]}), so first-token scoring cannot tell them apart; "
                             f"use loglik scoring, or words whose first tokens differ")
        seen[key] = (word, ids)


def check_label_words(task, tokenizer, scoring: str = "loglik", chat_template: bool = False) -> None:
    """Check a classification task's label words with ``tokenizer`` (no-op for generation),
    as they follow a prompt (``chat_template``: the assistant header, often with no space:
    "good"/"goodness" then share their first token, " good"/" goodness" do not)."""
    if task.type != "classification":
        return
    words = list(task.labels)
    after = model_prompt(tokenizer, ":", chat_template)
    check_label_tokens(words, label_token_ids(tokenizer, words, after), scoring,
                       f"task {task.name!r} ({task.path})")
