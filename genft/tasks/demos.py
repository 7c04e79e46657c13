"""Choosing the in-context demonstrations for a query.

Samplers share one interface, ``sampler.demos(query, index) -> list[record]``.
(The evaluator finds the prompt prefix its queries share from their tokens,
whatever the sampler: genft/evaluation/encoding.py.)
"""

from __future__ import annotations

import random
from collections import defaultdict

from genft.errors import GenftError, did_you_mean

SAMPLERS = ("first", "random", "balanced", "bm25")


class DemoSampler:
    def __init__(self, pool: list[dict], k: int, labels: list[str] = (), seed: int = 0):
        if k < 0:
            raise GenftError(f"shots must be >= 0 (got {k})")
        if k > len(pool):
            raise GenftError(f"{k} shots asked for, but the few-shot pool has only {len(pool)} items")
        self.pool, self.k, self.labels, self.seed = pool, k, list(labels), seed

    def demos(self, query: dict, index: int) -> list[dict]:
        raise NotImplementedError


class FirstK(DemoSampler):
    """The first k of the fixed pool: the studies' default; same prefix for every query."""

    def demos(self, query, index):
        return self.pool[: self.k]


class SeededRandom(DemoSampler):
    """k random pool items per query, reproducible from (seed, query index)."""

    def demos(self, query, index):
        return random.Random(f"{self.seed}:{index}").sample(self.pool, self.k)


class Balanced(DemoSampler):
    """Every label appears (when k allows): labels taken round-robin in pool order."""

    def __init__(self, pool, k, labels=(), seed=0):
        super().__init__(pool, k, labels, seed)
        by_label = defaultdict(list)
        for r in pool:
            by_label[r["output"]].append(r)
        order = self.labels or list(by_label)
        rounds = [[by_label[lab][i] for lab in order if i < len(by_label[lab])]
                  for i in range(len(pool))]
        self._chosen = [r for rnd in rounds for r in rnd][:k]

    def demos(self, query, index):
        return self._chosen


class BM25Nearest(DemoSampler):
    """The k pool items most similar to the query's input text (BM25), most similar last."""

    def __init__(self, pool, k, labels=(), seed=0):
        super().__init__(pool, k, labels, seed)
        import bm25s

        self._bm25 = bm25s.BM25()
        self._bm25.index(bm25s.tokenize([_text(r) for r in pool], show_progress=False),
                         show_progress=False)

    def demos(self, query, index):
        if self.k == 0:
            return []
        import bm25s

        docs, _ = self._bm25.retrieve(bm25s.tokenize([_text(query)], show_progress=False),
                                      k=self.k, show_progress=False)
        return [self.pool[i] for i in reversed(docs[0].tolist())]


def _text(record: dict) -> str:
    return " ".join(v for k, v in record.items() if k not in ("output", "id", "references"))


def make_sampler(name: str, pool: list[dict], k: int, labels: list[str] = (), seed: int = 0
                 ) -> DemoSampler:
    classes = {"first": FirstK, "random": SeededRandom, "balanced": Balanced, "bm25": BM25Nearest}
    if name not in classes:
        raise GenftError(f"unknown sampler {name!r}{did_you_mean(name, classes)}; "
                         f"choose from {', '.join(SAMPLERS)}")
    return classes[name](pool, k, labels, seed)
