"""Each metric of a ``Study`` per relation and condition, its power, and its effects with intervals.

Four metrics: strict ``acc`` (the paper's), ``acc_lenient`` (both of the recall groups), the gold
object's log-probability ``logprob`` (nats, the ``relation_logprob`` groups) and ``choice``
(``relation_choice``'s ``acc``, P^eva only). A metric has *power* for a relation on a split when
the baseline gives it something to lose: at least ``MIN_CORRECT`` correct documents for an
accuracy, ``MIN_SCORED`` scored documents for a log-probability (docs/reproduce.md, "Verdicts").
Effects (``intervals``) are memoised in ``study.cache``: the bootstraps are seeded from their
key, so computing one twice would give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from relspec_lmeval.data.tasks import Suite, task_name
from relspec_lmeval.experiments import intervals as iv
from relspec_lmeval.experiments.study import BASELINE, Condition, Study

__all__ = [
    "ACC", "CHOICE", "LENIENT", "LOGPROB", "METRICS", "MIN_CORRECT", "MIN_RELATIONS", "MIN_SCORED", "VERDICT_METRICS", "Metric",
    "ablation", "has_power", "measured", "own", "perplexity", "pooled_drop", "random", "samples", "seeds_of", "support", "support_text", "versus",
]

# Exact McNemar p of b discordant documents, all one way, is 2·2^-b: below 9 even losing every
# correct document is not significant after Holm over 12 relations (needs p < 0.05/12); at 10 it is
# (p = 0.002), and a 50% drop (5 of 10 lost) is visible only as part of a finding across relations.
MIN_CORRECT = 10
MIN_SCORED = 10  # log-probability: documents scored (every document is; 10 gives the signed-rank test p down to 0.002)
MIN_RELATIONS = 3  # a finding about relations needs this many relations with power


@dataclass(frozen=True)
class Metric:
    name: str  # acc, acc_lenient, logprob, choice
    key: str  # the per-sample metric of its task
    family: str  # recall, logprob, choice
    binary: bool  # 0/1 per document: relative drops, McNemar; else nats, signed-rank test
    label: str

    def group(self, suite: Suite, split: str) -> str | None:
        """The task group of this metric on ``split`` (eva, det, t2 or a language); None when there is none."""
        if self.family == "recall":
            return suite.recall_group(split)
        if self.family == "logprob":
            return suite.logprob_group(split)
        return suite.choice if split == "eva" else None

    @property
    def unit(self) -> str:
        return "relative" if self.binary else "nats"


ACC = Metric("acc", "acc", "recall", True, "strict acc (the paper's)")
LENIENT = Metric("acc_lenient", "acc_lenient", "recall", True, "acc_lenient")
LOGPROB = Metric("logprob", "logprob", "logprob", False, "gold log-prob (nats)")
CHOICE = Metric("choice", "acc", "choice", True, "relation_choice acc")
METRICS = (ACC, LENIENT, LOGPROB, CHOICE)
VERDICT_METRICS = (ACC, LENIENT, LOGPROB)  # a verdict rests on the first of these with power; choice is an extra reading


def _memo(study: Study, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    if key not in study.cache:
        study.cache[key] = compute()
    return study.cache[key]


def samples(study: Study, cond: Condition, metric: Metric, split: str, relation: str) -> np.ndarray | None:
    """The per-document values of ``metric`` for ``relation`` under ``cond``; None when not measured."""
    group = metric.group(study.suite, split)
    measured_ = study.results.get(cond)
    if group is None or measured_ is None:
        return None
    values = measured_.per_sample.get(task_name(group, relation), {}).get(metric.key)
    return None if not values else np.asarray(values, dtype=np.float64)


def measured(study: Study, metric: Metric, split: str) -> bool:
    """Whether the baseline has per-document values of ``metric`` on ``split`` for any relation."""
    return any(samples(study, BASELINE, metric, split, r) is not None for r in study.relations)


def support(study: Study, metric: Metric, split: str, relation: str) -> tuple[int, int] | None:
    """(correct or scored baseline documents, documents); None when not measured."""
    x = samples(study, BASELINE, metric, split, relation)
    if x is None:
        return None
    return (int(x.sum()) if metric.binary else int(np.isfinite(x).sum())), len(x)


def has_power(study: Study, metric: Metric, split: str, relation: str) -> bool:
    got = support(study, metric, split, relation)
    return got is not None and got[0] >= (MIN_CORRECT if metric.binary else MIN_SCORED)


def support_text(study: Study, metric: Metric, split: str, relations: Sequence[str] | None = None) -> str:
    """``a 12/50, b 3/50`` (correct of documents; log-prob: scored of documents)."""
    parts = [f"{r} {got[0]}/{got[1]}" for r in relations or study.relations if (got := support(study, metric, split, r)) is not None]
    return ", ".join(parts) or "not measured"


def seeds_of(study: Study, kind: str) -> list[int]:
    return list(study.site_seeds if kind == "random_site" else study.seeds)


def _pair(study: Study, cond: Condition, metric: Metric, split: str, relation: str) -> tuple[np.ndarray, np.ndarray] | None:
    x, y = samples(study, BASELINE, metric, split, relation), samples(study, cond, metric, split, relation)
    return None if x is None or y is None or len(x) != len(y) else (x, y)


def ablation(study: Study, cond: Condition, metric: Metric, split: str, relation: str) -> iv.Effect | None:
    """The effect of ``cond`` on ``relation``'s documents of ``split`` against the baseline (paired)."""

    def compute() -> iv.Effect | None:
        pair = _pair(study, cond, metric, split, relation)
        if pair is None:
            return None
        return iv.paired(*pair, binary=metric.binary, relative=metric.binary, seed=iv.key_seed(cond.label(), metric.name, split, relation))

    return _memo(study, ("ablation", cond, metric.name, split, relation), compute)


def own(study: Study, metric: Metric, split: str, row: str, evaluated: str | None = None) -> iv.Effect | None:
    """Row's own set off, on ``evaluated``'s documents (default: its own)."""
    return ablation(study, Condition("own", row), metric, split, evaluated or row)


def _seed_table(study: Study, kind: str, metric: Metric, split: str, relation: str, n: int) -> np.ndarray | None:
    rows = [samples(study, Condition(kind, relation, seed=s), metric, split, relation) for s in seeds_of(study, kind)]
    rows = [x for x in rows if x is not None and len(x) == n]
    return np.stack(rows) if rows else None


def random(study: Study, metric: Metric, split: str, relation: str, kind: str = "random") -> iv.Effect | None:
    """The random controls of ``kind`` (``random``: uniform; ``random_site``: site-matched) on ``relation``, over documents and seeds."""

    def compute() -> iv.Effect | None:
        base = samples(study, BASELINE, metric, split, relation)
        table = None if base is None else _seed_table(study, kind, metric, split, relation, len(base))
        if table is None:
            return None
        return iv.seeded(base, table, relative=metric.binary, seed=iv.key_seed(kind, metric.name, split, relation))

    return _memo(study, ("random", kind, metric.name, split, relation), compute)


def versus(study: Study, metric: Metric, split: str, relation: str, kind: str = "random") -> iv.Interval | None:
    """Own drop − random controls' mean drop on ``relation`` (relative for accuracies, nats otherwise)."""

    def compute() -> iv.Interval | None:
        pair = _pair(study, Condition("own", relation), metric, split, relation)
        table = None if pair is None else _seed_table(study, kind, metric, split, relation, len(pair[0]))
        if table is None:
            return None
        return iv.contrast(pair[0], pair[1], table, relative=metric.binary, seed=iv.key_seed("versus", kind, metric.name, split, relation))

    return _memo(study, ("versus", kind, metric.name, split, relation), compute)


def pooled_drop(study: Study, cond: Callable[[str], Condition], metric: Metric, split: str, plus: Sequence[str],
                minus: Sequence[str] = ()) -> iv.Interval | None:
    """Mean drop over the relations ``plus`` (each under ``cond(relation)``), minus that over ``minus``."""

    def compute() -> iv.Interval | None:
        pairs = [[p for r in rs if (p := _pair(study, cond(r), metric, split, r)) is not None] for rs in (plus, minus)]
        if len(pairs[0]) < len(plus) or len(pairs[1]) < len(minus) or not plus:
            return None
        seed = iv.key_seed("pooled", cond(plus[0]).label(), metric.name, split, *plus, "-", *minus)
        return iv.pooled(pairs[0], pairs[1], relative=metric.binary, seed=seed)

    key = ("pooled", tuple((cond(r), r) for r in plus), tuple((cond(r), r) for r in minus), metric.name, split)
    return _memo(study, key, compute)


def perplexity(study: Study, relation: str) -> iv.Interval | None:
    """The relative change of word perplexity of ``relation``'s neutral sentences with its own set off
    (paired bootstrap over the sentences); None without per-document values (runs of older versions)."""

    def compute() -> iv.Interval | None:
        measured_ = [study.results.get(c) for c in (BASELINE, Condition("own", relation))]
        task = task_name(study.suite.ppl, relation)
        values = [None if m is None else m.per_sample.get(task, {}).get("word_perplexity") for m in measured_]
        if not all(values) or len(values[0]) != len(values[1]):
            return None
        return iv.perplexity(values[0], values[1], seed=iv.key_seed("ppl", relation))

    return _memo(study, ("perplexity", relation), compute)
