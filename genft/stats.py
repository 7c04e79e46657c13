"""Uncertainty of the numbers genft reports: standard errors and paired comparisons.

With 100 test items a cell's 95% interval is about ±0.09, so a table without errors
invites reading noise as findings. Two estimators:

* :func:`binomial_se` for a proportion (accuracy, exact match, a rate): sqrt(p(1−p)/n);
* :func:`bootstrap_se` for everything else (ROUGE-L, token F1, macro-F1, corpus BLEU):
  the standard deviation of the statistic over ``n_boot`` resamples of the items.

:func:`paired_bootstrap` compares two models *on the same items* (method vs base): the
per-item differences are resampled together, which removes the variance the two share
(item difficulty) and is far tighter than comparing two independent intervals.

Everything is seeded (numpy's PCG64 from ``seed``), so the same inputs give the same
errors on every run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def binomial_se(p: float, n: int) -> float:
    """Standard error of a proportion ``p`` measured on ``n`` items (NaN for n = 0)."""
    if n <= 0 or p is None or math.isnan(p):
        return math.nan
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def bootstrap_se(values: Sequence, *, seed: int = 0, n_boot: int = 1000,
                 statistic: Callable[[np.ndarray], float] | None = None) -> float:
    """Bootstrap standard error of ``statistic`` (default: the mean) over the items.

    ``values`` holds one entry per item (a number, or a row of sufficient statistics when
    ``statistic`` aggregates rows, as corpus BLEU does). NaN for fewer than two items.
    """
    data = np.asarray(values, dtype=float)
    n = len(data)
    if n < 2:
        return math.nan
    stat = statistic or (lambda x: float(x.mean()))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    boots = np.array([stat(data[idx]) for idx in draws])
    return float(boots.std(ddof=1))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, seed: int = 0,
                     n_boot: int = 1000) -> tuple[float, float, float]:
    """Mean of ``a − b`` over paired items, its bootstrap standard error, and a two-sided
    p-value for "no difference" (the share of resampled mean differences on the other side
    of zero, doubled; at least 1/n_boot so it is never reported as exactly 0)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items: {a.shape} vs {b.shape}")
    d = a - b
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    se = float(boots.std(ddof=1))
    if np.all(d == 0):
        return mean, se, 1.0
    centred = boots - mean  # the null distribution: the same spread around zero
    p = float(np.mean(np.abs(centred) >= abs(mean)))
    return mean, se, max(p, 1 / n_boot)
