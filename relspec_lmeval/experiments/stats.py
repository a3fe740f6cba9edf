"""The significance tests of ``relspec compare``: pure numpy on paired per-document values.

scipy is not a dependency of the package, so the Wilcoxon signed-rank test and Holm's
correction are written out here (tests/test_compare_pairing.py checks them against
brute-force enumeration and hand-computed examples).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CI_LEVEL",
    "WILCOXON_EXACT_MAX",
    "Bootstrap",
    "bootstrap_mean",
    "bootstrap_p",
    "from_resamples",
    "holm",
    "mcnemar_p",
    "stderr_ci",
    "stderr_p",
    "weighted_aggregate",
    "weighted_bootstrap",
    "weighted_bootstrap_p",
    "wilcoxon_p",
]

CI_LEVEL = 0.95  # every confidence interval of compare
_Z_975 = 1.959963984540054  # the standard normal's 97.5th percentile: the z of a 95% interval
WILCOXON_EXACT_MAX = 50  # nonzero differences up to which the signed-rank p is exact


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


@dataclass(frozen=True)
class Bootstrap:
    """A paired bootstrap's result: the observed difference, its two-sided p and percentile CI."""

    observed: float
    p: float
    low: float
    high: float


def _bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n: int, observed: float, resamples: int, seed: int) -> Bootstrap:
    """Two-sided paired bootstrap: how often the statistic of a resample of the n documents (one row
    of indices, the same for both runs), centred on the observed one (the null), lands at least as
    far from it as the observed one is from 0; the CI is the resampled statistics' central
    ``CI_LEVEL`` percentiles (the same draws)."""
    rng = np.random.default_rng(seed)
    block = max(1, 2**22 // n)  # resamples per draw: bounds the index matrix at ~32 MiB
    kept = [statistic(rng.integers(0, n, size=(min(block, resamples - start), n))) for start in range(0, resamples, block)]
    return from_resamples(np.concatenate(kept), observed)


def from_resamples(values: np.ndarray, observed: float) -> Bootstrap:
    """A bootstrap's p and CI from its resampled statistics: p = how often a resample, centred on
    the observed statistic (the null), lands at least as far from it as the observed one is from
    0, counting the observed sample (never 0); CI = the central ``CI_LEVEL`` percentiles. NaN
    resamples (an undefined ratio) are left out."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if not len(values):
        return Bootstrap(observed, 1.0, float("nan"), float("nan"))
    extreme = int(np.count_nonzero(np.abs(values - observed) >= abs(observed)))
    tail = (1 - CI_LEVEL) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return Bootstrap(observed, (extreme + 1) / (len(values) + 1), float(low), float(high))


def bootstrap_mean(x: np.ndarray, y: np.ndarray, *, resamples: int = 10_000, seed: int = 0) -> Bootstrap:
    """Paired bootstrap of the mean difference y − x (row i the same document in both runs)."""
    d = np.asarray(y, dtype=np.float64) - np.asarray(x, dtype=np.float64)
    return _bootstrap(lambda idx: d[idx].mean(axis=1), len(d), float(d.mean()), resamples, seed)


def bootstrap_p(x: np.ndarray, y: np.ndarray, *, resamples: int = 10_000, seed: int = 0) -> float:
    """The p of ``bootstrap_mean``."""
    return bootstrap_mean(x, y, resamples=resamples, seed=seed).p


def weighted_bootstrap(x: np.ndarray, y: np.ndarray, aggregation: str, *, resamples: int = 10_000, seed: int = 0) -> Bootstrap:
    """Paired bootstrap of the difference of a weighted aggregate; x, y: (documents, 2) arrays of
    [loglik, length], row i the same document in both runs. Perplexity is a ratio of sums, not a
    mean of per-document values, so each resample recomputes it from the resampled documents."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def diff(idx: np.ndarray | slice) -> np.ndarray:
        return weighted_aggregate(aggregation, y[idx, 0], y[idx, 1]) - weighted_aggregate(aggregation, x[idx, 0], x[idx, 1])

    return _bootstrap(diff, len(x), float(diff(slice(None))), resamples, seed)


def weighted_bootstrap_p(x: np.ndarray, y: np.ndarray, aggregation: str, *, resamples: int = 10_000, seed: int = 0) -> float:
    """The p of ``weighted_bootstrap``."""
    return weighted_bootstrap(x, y, aggregation, resamples=resamples, seed=seed).p


def _doubled_midranks(values: np.ndarray) -> np.ndarray:
    """2 × the mid-ranks (1-based) of ``values``: integers, so the exact null distribution is a
    distribution over integer sums even with ties."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.int64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + 1) + (end + 1)  # twice the mean of ranks start+1 … end+1
        start = end + 1
    return ranks


def _exact_signed_rank_p(doubled: np.ndarray, observed: int) -> float:
    """Two-sided p of the doubled positive-rank sum under random signs: the distribution of the
    sum of a random subset of ``doubled`` (each in with probability ½), by dynamic programming."""
    dist = np.zeros(int(doubled.sum()) + 1)
    dist[0] = 1.0
    for r in doubled:
        shifted = np.zeros_like(dist)
        shifted[r:] = dist[: len(dist) - r]
        dist = (dist + shifted) / 2
    lower, upper = dist[: observed + 1].sum(), dist[observed:].sum()
    return float(min(1.0, 2 * min(lower, upper)))


def wilcoxon_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of the paired differences y − x.

    Zeros are ranked with the others and then dropped (Pratt), ties get mid-ranks. With at
    most ``WILCOXON_EXACT_MAX`` nonzero differences the p is exact (every sign assignment of
    the nonzero ranks, ties included); above, the normal approximation without continuity
    correction, whose variance Σ r²/4 over the nonzero ranks is the tie- and zero-corrected
    n(n+1)(2n+1)/24 − n₀(n₀+1)(2n₀+1)/24 − Σ(t³ − t)/48.
    """
    d = np.asarray(y, dtype=np.float64) - np.asarray(x, dtype=np.float64)
    doubled = _doubled_midranks(np.abs(d))[d != 0]
    positive = int(doubled[d[d != 0] > 0].sum())
    if len(doubled) == 0:
        return 1.0  # no difference at all
    if len(doubled) <= WILCOXON_EXACT_MAX:
        return _exact_signed_rank_p(doubled, positive)
    ranks = doubled / 2
    z = (positive / 2 - ranks.sum() / 2) / math.sqrt(float((ranks**2).sum()) / 4)
    return math.erfc(abs(z) / math.sqrt(2))


def holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: the i-th smallest of m becomes
    max over j ≤ i of min(1, (m − j + 1) · p₍ⱼ₎)."""
    m = len(p)
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda k: p[k])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def _z_scale(se_a: float | None, se_b: float | None) -> float | None:
    """√(se₁² + se₂²): the standard error of the difference of independent runs, None when unknown."""
    if se_a is None or se_b is None or se_a**2 + se_b**2 == 0:
        return None
    return math.sqrt(se_a**2 + se_b**2)


def stderr_p(diff: float, se_a: float | None, se_b: float | None) -> float | None:
    """Two-sided z-test of the difference as if the runs were independent (not paired)."""
    scale = _z_scale(se_a, se_b)
    return None if scale is None else math.erfc(abs(diff) / scale / math.sqrt(2))


def stderr_ci(diff: float, se_a: float | None, se_b: float | None) -> tuple[float, float] | None:
    """The Wald interval of that z-test: diff ± z₀.₉₇₅ · √(se₁² + se₂²)."""
    scale = _z_scale(se_a, se_b)
    if scale is None:
        return None
    half = _Z_975 * scale
    return diff - half, diff + half

