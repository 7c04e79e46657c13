"""Metrics. Every value is a fraction in [0, 1] (BLEU too: sacrebleu's score / 100).

- accuracy; f1 = macro-F1 over the task's label words (sklearn; a label never
  predicted counts as F1 0).
- rouge_l: mean over items of ROUGE-L F-measure (rouge-score, ``rougeL``, no stemming,
  like Hugging Face ``evaluate``'s default).
- bleu: corpus BLEU (sacrebleu defaults: 13a tokenizer).
- exact_match, token_f1: SQuAD-style, after lower-casing and removing punctuation,
  articles and extra whitespace.

Accepted answers. A generation item may carry several acceptable answers (TriviaQA /
WebQuestions aliases: the record's ``references`` plus its ``output``). ROUGE-L, exact
match and token F1 take the *best match* over them per item (as SQuAD and lm-eval do);
BLEU uses them as multiple references (sacrebleu: n-gram counts clipped by the most
generous reference, brevity penalty from the closest reference length), which is
BLEU's own form of best match.

Standard errors (:func:`standard_errors`, see :mod:`genft.stats`): binomial for the
proportions (accuracy, exact_match), bootstrap over items for the rest, seeded.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

from genft.stats import binomial_se, bootstrap_se

DEFAULTS = {"classification": ["accuracy", "f1"], "generation": ["rouge_l", "bleu"]}
PROPORTIONS = {"accuracy", "exact_match"}  # binomial standard error
PER_ITEM = ("accuracy", "exact_match", "rouge_l", "token_f1")  # mean of per-item scores


def _refs(golds, references) -> list[list[str]]:
    """Every item's accepted answers: its gold text first, then its other references."""
    if references is None:
        return [[g] for g in golds]
    return [list(dict.fromkeys([g, *(r or [])])) for g, r in zip(golds, references)]


def compute(names: list[str], predictions: list[str], golds: list[str], labels: list[str] = (),
            references: list[list[str]] | None = None) -> dict[str, float]:
    if not predictions:
        return {}
    refs = _refs(golds, references)
    fns = {"accuracy": lambda: accuracy(predictions, golds),
           "f1": lambda: macro_f1(predictions, golds, labels),
           "rouge_l": lambda: rouge_l(predictions, refs),
           "bleu": lambda: bleu(predictions, refs),
           "exact_match": lambda: exact_match(predictions, refs),
           "token_f1": lambda: token_f1(predictions, refs)}
    return {name: float(fns[name]()) for name in names}


def item_scores(names: list[str], predictions: list[str], golds: list[str],
                references: list[list[str]] | None = None) -> dict[str, list[float]]:
    """Per-item scores of the metrics that are a mean over items (paired comparisons use them)."""
    refs = _refs(golds, references)
    fns = {"accuracy": lambda: [float(p == g) for p, g in zip(predictions, golds)],
           "exact_match": lambda: [float(_em(p, r)) for p, r in zip(predictions, refs)],
           "rouge_l": lambda: _rouge_items(predictions, refs),
           "token_f1": lambda: [_f1(p, r) for p, r in zip(predictions, refs)]}
    return {name: fns[name]() for name in names if name in fns}


def standard_errors(names: list[str], predictions: list[str], golds: list[str],
                    labels: list[str] = (), references: list[list[str]] | None = None,
                    seed: int = 0) -> dict[str, float]:
    """The standard error of each metric in ``names`` (binomial or seeded bootstrap)."""
    if not predictions:
        return {}
    n = len(predictions)
    per_item = item_scores(names, predictions, golds, references)
    out = {}
    for name in names:
        if name in PROPORTIONS:
            out[name] = binomial_se(float(np.mean(per_item[name])), n)
        elif name in per_item:
            out[name] = bootstrap_se(per_item[name], seed=seed)
        elif name == "bleu":
            out[name] = _bleu_se(predictions, _refs(golds, references), seed)
        elif name == "f1":
            out[name] = _macro_f1_se(predictions, golds, labels, seed)
    return out


def accuracy(predictions, golds) -> float:
    return sum(p == g for p, g in zip(predictions, golds)) / len(golds)


def macro_f1(predictions, golds, labels) -> float:
    from sklearn.metrics import f1_score

    return f1_score(golds, predictions, labels=list(labels) or None, average="macro", zero_division=0)


def _macro_f1_se(predictions, golds, labels, seed: int, n_boot: int = 200) -> float:
    """Bootstrap over items from a per-item (gold, prediction) index pair; 200 resamples
    (each one an sklearn call) keep a cell's errors under a second."""
    words = list(labels) or sorted(set(golds) | set(predictions))
    index = {w: i for i, w in enumerate(words)}
    pairs = [(index.get(g, -1), index.get(p, -1)) for p, g in zip(predictions, golds)]
    k = len(words)

    def stat(rows: np.ndarray) -> float:
        g, p = rows[:, 0], rows[:, 1]
        f1s = []
        for c in range(k):
            tp = np.sum((g == c) & (p == c))
            fp, fn = np.sum((g != c) & (p == c)), np.sum((g == c) & (p != c))
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        return float(np.mean(f1s))

    return bootstrap_se(pairs, seed=seed, n_boot=n_boot, statistic=stat)


def _rouge_items(predictions, refs) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [max(scorer.score(g, p)["rougeL"].fmeasure for g in r) for p, r in zip(predictions, refs)]


def rouge_l(predictions, refs) -> float:
    """Mean ROUGE-L F; ``refs``: one list of accepted answers per item (or one text each)."""
    refs = [[r] if isinstance(r, str) else r for r in refs]
    return sum(_rouge_items(predictions, refs)) / len(refs)


def _bleu_streams(refs) -> list[list[str | None]]:
    width = max(len(r) for r in refs)
    return [[r[j] if j < len(r) else None for r in refs] for j in range(width)]


def bleu(predictions, refs) -> float:
    import sacrebleu

    refs = [[r] if isinstance(r, str) else r for r in refs]
    return sacrebleu.corpus_bleu(list(predictions), _bleu_streams(refs)).score / 100


def _bleu_se(predictions, refs, seed: int) -> float:
    """Corpus BLEU is not a mean over items: resample items' n-gram statistics, sum, rescore."""
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    stats = metric._extract_corpus_statistics(list(predictions), _bleu_streams(refs))
    return bootstrap_se(stats, seed=seed, statistic=lambda rows: metric._compute_score_from_stats(
        [int(x) for x in rows.sum(axis=0)]).score / 100)


def _normalize(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def _em(prediction: str, refs: list[str]) -> bool:
    return any(_normalize(prediction) == _normalize(g) for g in refs)


def exact_match(predictions, refs) -> float:
    refs = [[r] if isinstance(r, str) else r for r in refs]
    return sum(_em(p, r) for p, r in zip(predictions, refs)) / len(refs)


def _f1(prediction: str, refs: list[str]) -> float:
    best = 0.0
    p_toks = _normalize(prediction)
    for g in refs:
        g_toks = _normalize(g)
        common = sum((Counter(p_toks) & Counter(g_toks)).values())
        if not p_toks or not g_toks:
            score = float(p_toks == g_toks)
        elif common:
            precision, recall = common / len(p_toks), common / len(g_toks)
            score = 2 * precision * recall / (precision + recall)
        else:
            score = 0.0
        best = max(best, score)
    return best


def token_f1(predictions, refs) -> float:
    refs = [[r] if isinstance(r, str) else r for r in refs]
    return sum(_f1(p, r) for p, r in zip(predictions, refs)) / len(refs)
