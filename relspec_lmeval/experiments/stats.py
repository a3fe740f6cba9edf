"""The significance tests of ``relspec compare``: pure numpy on paired per-document values."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["bootstrap_p", "mcnemar_p", "stderr_p", "weighted_aggregate", "weighted_bootstrap_p"]


def weighted_aggregate(aggregation: str, loglik: np.ndarray, length: np.ndarray) -> np.ndarray:
    """lm-eval's ``weighted_perplexity`` (exp of −Σ loglik / Σ length) or ``bits_per_byte``
    (−Σ loglik / (Σ bytes · ln 2)) of the documents along the last axis."""
    mean = loglik.sum(axis=-1) / length.sum(axis=-1)
    return np.exp(-mean) if aggregation == "weighted_perplexity" else -mean / math.log(2)


def mcnemar_p(x: np.ndarray, y: np.ndarray) -> float:
    """Exact two-sided McNemar: the discordant pairs are Binomial(b + c, 1/2) under no difference."""
    b, c = int(np.sum((x == 1) & (y == 0))), int(np.sum((x == 0) & (y == 1)))
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def _bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n: int, observed: float, resamples: int, seed: int) -> float:
    """Two-sided paired bootstrap: how often the statistic of a resample of the n documents (one row
    of indices, the same for both runs), centred on the observed one (the null), lands at least as
    far from it as the observed one is from 0."""
    rng = np.random.default_rng(seed)
    block = max(1, 2**22 // n)  # resamples per draw: bounds the index matrix at ~32 MiB
    extreme = 0
    for start in range(0, resamples, block):
        values = statistic(rng.integers(0, n, size=(min(block, resamples - start), n)))
        extreme += int(np.count_nonzero(np.abs(values - observed) >= abs(observed)))
    return (extreme + 1) / (resamples + 1)  # counts the observed sample itself: never exactly 0


def bootstrap_p(x: np.ndarray, y: np.ndarray, *, resamples: int = 10_000, seed: int = 0) -> float:
    """Paired bootstrap of the mean difference."""
    d = np.asarray(y, dtype=np.float64) - np.asarray(x, dtype=np.float64)
    return _bootstrap(lambda idx: d[idx].mean(axis=1), len(d), d.mean(), resamples, seed)


def weighted_bootstrap_p(x: np.ndarray, y: np.ndarray, aggregation: str, *, resamples: int = 10_000, seed: int = 0) -> float:
    """Paired bootstrap of the difference of a weighted aggregate; x, y: (documents, 2) arrays of
    [loglik, length], row i the same document in both runs. Perplexity is a ratio of sums, not a
    mean of per-document values, so each resample recomputes it from the resampled documents."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def diff(idx: np.ndarray | slice) -> np.ndarray:
        return weighted_aggregate(aggregation, y[idx, 0], y[idx, 1]) - weighted_aggregate(aggregation, x[idx, 0], x[idx, 1])

    return _bootstrap(diff, len(x), float(diff(slice(None))), resamples, seed)


def stderr_p(diff: float, se_a: float | None, se_b: float | None) -> float | None:
    if se_a is None or se_b is None or se_a**2 + se_b**2 == 0:
        return None
    return math.erfc(abs(diff) / math.sqrt(se_a**2 + se_b**2) / math.sqrt(2))
