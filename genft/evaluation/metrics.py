"""Metrics. Every value is a fraction in [0, 1] (BLEU too: sacrebleu's score / 100).

- accuracy; f1 = macro-F1 over the task's label words (sklearn; a label never
  predicted counts as F1 0).
- rouge_l: mean over items of ROUGE-L F-measure (rouge-score, ``rougeL``, no stemming,
  like Hugging Face ``evaluate``'s default).
- bleu: corpus BLEU (sacrebleu defaults: 13a tokenizer, one reference).
- exact_match, token_f1: SQuAD-style, after lower-casing and removing punctuation,
  articles and extra whitespace.
"""

from __future__ import annotations

import re
import string
from collections import Counter

DEFAULTS = {"classification": ["accuracy", "f1"], "generation": ["rouge_l", "bleu"]}


def compute(names: list[str], predictions: list[str], golds: list[str], labels: list[str] = ()
            ) -> dict[str, float]:
    fns = {"accuracy": lambda: accuracy(predictions, golds),
           "f1": lambda: macro_f1(predictions, golds, labels),
           "rouge_l": lambda: rouge_l(predictions, golds),
           "bleu": lambda: bleu(predictions, golds),
           "exact_match": lambda: exact_match(predictions, golds),
           "token_f1": lambda: token_f1(predictions, golds)}
    if not predictions:
        return {}
    return {name: float(fns[name]()) for name in names}


def accuracy(predictions, golds) -> float:
    return sum(p == g for p, g in zip(predictions, golds)) / len(golds)


def macro_f1(predictions, golds, labels) -> float:
    from sklearn.metrics import f1_score

    return f1_score(golds, predictions, labels=list(labels) or None, average="macro", zero_division=0)


def rouge_l(predictions, golds) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return sum(scorer.score(g, p)["rougeL"].fmeasure for p, g in zip(predictions, golds)) / len(golds)


def bleu(predictions, golds) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(list(predictions), [list(golds)]).score / 100


def _normalize(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def exact_match(predictions, golds) -> float:
    return sum(_normalize(p) == _normalize(g) for p, g in zip(predictions, golds)) / len(golds)


def token_f1(predictions, golds) -> float:
    total = 0.0
    for p, g in zip(predictions, golds):
        p_toks, g_toks = _normalize(p), _normalize(g)
        common = sum((Counter(p_toks) & Counter(g_toks)).values())
        if not p_toks or not g_toks:
            total += float(p_toks == g_toks)
        elif common:
            precision, recall = common / len(p_toks), common / len(g_toks)
            total += 2 * precision * recall / (precision + recall)
    return total / len(golds)
