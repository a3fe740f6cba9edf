"""Effects with 95% intervals: over documents, and over documents and random seeds (pure numpy).

A *drop* is baseline − ablated on the same documents (paired), so positive means the ablation
hurt: in accuracy points for ``acc`` (and, relative, ``drop / baseline``, the paper's), in nats
for log-probabilities. Every interval is a percentile bootstrap (``stats.from_resamples``: the
central 95% of the resampled statistic; its p is the centred bootstrap p), seeded from what it
measures (``key_seed``), so a report is the same every time it is written.

- ``paired``: one ablation against the baseline. Documents resampled (``stats.bootstrap_mean``'s
  draws); the p is the exact McNemar test for 0/1 metrics, the Wilcoxon signed-rank test otherwise.
- ``seeded`` and ``contrast``: random controls, one per seed. The drops form a seeds × documents
  table; each resample draws seeds and documents independently, with replacement (a two-way
  "pigeonhole" bootstrap, Owen 2007: slightly conservative), the same document indices for
  every seed, the baseline and the own set, so the comparison stays paired. With one seed the
  interval covers documents only.
- ``pooled``: a mean of drops over relations (different documents), minus another such mean:
  each relation's documents resampled on their own.
- ``perplexity``: the relative change of lm-eval's word perplexity, documents resampled.
- ``shares``: the pooled shares of parts (e.g. thirds of the layers) over units (relations),
  units resampled.
"""

from __future__ import annotations

import statistics
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from relspec_lmeval.experiments.stats import Bootstrap, bootstrap_mean, from_resamples, mcnemar_p, weighted_aggregate, wilcoxon_p

__all__ = ["RESAMPLES", "Effect", "Interval", "contrast", "key_seed", "paired", "perplexity", "pooled", "seeded", "shares"]

RESAMPLES = 2000  # per interval: a p resolves down to 1/2001, below Holm's 0.05/12 (12 relations); seconds for a whole report
Interval = Bootstrap  # observed (the estimate), p (two-sided), low, high


def key_seed(*parts: object) -> int:
    """A bootstrap's seed from what it measures: the same numbers give the same interval."""
    return zlib.crc32("|".join(map(str, parts)).encode())


@dataclass(frozen=True)
class Effect:
    """An ablation's effect on one relation's documents."""

    n: int  # documents
    base: float  # the baseline's mean
    ablated: float  # the ablation's mean (over seeds for random controls)
    drop: Interval  # base − ablated
    relative: Interval | None  # drop / base (accuracies with base > 0; else None)
    seeds: tuple[float, ...] = ()  # random controls: each seed's mean drop (relative when ``relative`` is given)

    @property
    def seed_std(self) -> float | None:
        return statistics.stdev(self.seeds) if len(self.seeds) > 1 else None


def _draws(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Index blocks of documents, drawn exactly as ``stats.bootstrap_mean`` draws them."""
    rng = np.random.default_rng(seed)
    block = max(1, 2**22 // n)
    for start in range(0, resamples, block):
        yield rng.integers(0, n, size=(min(block, resamples - start), n))


def _resampled(base: np.ndarray, own: np.ndarray | None, randoms: np.ndarray | None, seed: int,
               resamples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per resample: the baseline's mean, the own set's mean and the mean over resampled seeds of
    the random controls' (NaN where absent), on the same resampled documents."""
    seed_rng = np.random.default_rng([seed, 1])  # the seeds' draws apart, so the documents' match bootstrap_mean's
    b, o, r = [], [], []
    for idx in _draws(len(base), resamples, seed):
        b.append(base[idx].mean(axis=1))
        o.append(own[idx].mean(axis=1) if own is not None else np.full(len(idx), np.nan))
        if randoms is None:
            r.append(np.full(len(idx), np.nan))
            continue
        per_seed = np.stack([x[idx].mean(axis=1) for x in randoms], axis=1)  # resamples × seeds
        pick = seed_rng.integers(0, len(randoms), size=per_seed.shape)
        r.append(np.take_along_axis(per_seed, pick, axis=1).mean(axis=1))
    return np.concatenate(b), np.concatenate(o), np.concatenate(r)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)  # a resample without a correct baseline document: left out


def _relative(num: np.ndarray, den: np.ndarray, observed: float, base_mean: float) -> Interval | None:
    return from_resamples(_ratio(num, den), observed / base_mean) if base_mean > 0 else None


def _arrays(*xs: Sequence[float] | np.ndarray | None) -> list[np.ndarray | None]:
    return [None if x is None else np.asarray(x, dtype=np.float64) for x in xs]


def paired(base: Sequence[float], ablated: Sequence[float], *, binary: bool, relative: bool, seed: int,
           resamples: int = RESAMPLES) -> Effect:
    """One ablation against the baseline on the same documents."""
    x, y = _arrays(base, ablated)
    drop = bootstrap_mean(y, x, resamples=resamples, seed=seed)  # x − y: the drop
    drop = replace(drop, p=mcnemar_p(x, y) if binary else wilcoxon_p(x, y))
    rel = None
    if relative:
        b, o, _ = _resampled(x, y, None, seed, resamples)
        rel = _relative(b - o, b, drop.observed, float(x.mean()))
    return Effect(len(x), float(x.mean()), float(y.mean()), drop, rel)


def seeded(base: Sequence[float], by_seed: Sequence[Sequence[float]], *, relative: bool, seed: int,
           resamples: int = RESAMPLES) -> Effect:
    """Random controls (one row of per-document values per seed) against the baseline."""
    x, table = _arrays(base, by_seed)
    b, _, r = _resampled(x, None, table, seed, resamples)
    observed = float(x.mean() - table.mean())
    drop = from_resamples(b - r, observed)
    rel = _relative(b - r, b, observed, float(x.mean())) if relative else None
    scale = float(x.mean()) if rel is not None else 1.0  # each seed's drop in the unit reported: relative, or as measured
    return Effect(len(x), float(x.mean()), float(table.mean()), drop, rel, tuple(float(x.mean() - row.mean()) / scale for row in table))


def contrast(base: Sequence[float], own: Sequence[float], by_seed: Sequence[Sequence[float]], *, relative: bool, seed: int,
             resamples: int = RESAMPLES) -> Interval | None:
    """The own set's drop minus the random controls' mean drop (= random − own), paired on documents;
    relative: divided by the baseline's mean (None when that is 0: no relative drop is defined)."""
    x, y, table = _arrays(base, own, by_seed)
    b, o, r = _resampled(x, y, table, seed, resamples)
    observed = float(table.mean() - y.mean())
    if relative:
        return _relative(r - o, b, observed, float(x.mean()))
    return from_resamples(r - o, observed)


def _drops(pair: tuple[Sequence[float], Sequence[float]], relative: bool, seed: int, resamples: int) -> tuple[float, np.ndarray]:
    """One relation's observed drop and its resampled drops (its documents only)."""
    x, y = _arrays(*pair)
    b, o, _ = _resampled(x, y, None, seed, resamples)
    if relative:
        return float((x.mean() - y.mean()) / x.mean()) if x.mean() > 0 else float("nan"), _ratio(b - o, b)
    return float(x.mean() - y.mean()), b - o


def pooled(plus: Sequence[tuple[Sequence[float], Sequence[float]]], minus: Sequence[tuple[Sequence[float], Sequence[float]]] = (), *,
           relative: bool, seed: int, resamples: int = RESAMPLES) -> Interval:
    """Mean drop over the (baseline, ablated) pairs of ``plus`` minus that over ``minus`` (either may
    be empty), each pair's documents resampled on their own: for drops on different relations."""

    def side(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], offset: int) -> tuple[float, np.ndarray]:
        if not pairs:
            return 0.0, np.zeros(resamples)
        got = [_drops(p, relative, seed + offset + i, resamples) for i, p in enumerate(pairs)]
        return float(np.mean([g[0] for g in got])), np.mean([g[1] for g in got], axis=0)

    (obs_plus, res_plus), (obs_minus, res_minus) = side(plus, 0), side(minus, 10_000)
    return from_resamples(res_plus - res_minus, obs_plus - obs_minus)


def perplexity(base: Sequence[Sequence[float]], ablated: Sequence[Sequence[float]], *, seed: int, resamples: int = RESAMPLES) -> Interval:
    """Relative change of word perplexity (ablated / base − 1) from per-document [loglik, words], paired."""
    x, y = _arrays(base, ablated)

    def change(idx: np.ndarray | slice) -> np.ndarray:
        after = weighted_aggregate("weighted_perplexity", y[idx, 0], y[idx, 1])
        return after / weighted_aggregate("weighted_perplexity", x[idx, 0], x[idx, 1]) - 1

    observed = float(change(slice(None)))
    return from_resamples(np.concatenate([change(idx) for idx in _draws(len(x), resamples, seed)]), observed)


def shares(counts: Sequence[Sequence[float]], *, seed: int, resamples: int = RESAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Pooled share of each part (column) over units (rows), observed and per resample of the units."""
    table = np.asarray(counts, dtype=np.float64)
    observed = table.sum(axis=0) / table.sum()
    rng = np.random.default_rng(seed)
    picked = table[rng.integers(0, len(table), size=(resamples, len(table)))].sum(axis=1)  # resamples × parts
    with np.errstate(divide="ignore", invalid="ignore"):
        return observed, picked / picked.sum(axis=1, keepdims=True)
