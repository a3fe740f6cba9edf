"""How a verdict is drawn: the rules shared by the findings (``experiments.verdicts``).

A finding is read on one metric at a time. Each relation (or cell, or pair) the finding looks at
is classified from its effect's 95% interval and its Holm-adjusted p: *significant* (adjusted
p < ``ALPHA``, in the direction the paper claims), *refuted* (not significant, and the interval
excludes a large effect: its upper end is below ``LARGE``) or *unclear*. A finding *agrees*
when more than half of what it looks at is significant, *disagrees* when more than half is
refuted, and otherwise *cannot tell*. A finding rests on the first metric of
``effects.VERDICT_METRICS`` with power for it (strict ``acc``, then ``acc_lenient``, then the
gold's log-probability); the others' readings, where they have power, and ``choice``'s are
listed beside it. With no metric with power the verdict is *cannot tell*, with what would be
needed. docs/reproduce.md ("Verdicts") states every rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relspec_lmeval.experiments.effects import (
    CHOICE,
    MIN_CORRECT,
    MIN_RELATIONS,
    MIN_SCORED,
    VERDICT_METRICS,
    Metric,
    measured,
    support_text,
)
from relspec_lmeval.experiments.stats import holm
from relspec_lmeval.experiments.study import Study
from relspec_lmeval.experiments.tables import fmt_ci

__all__ = [
    "AGREES", "ALPHA", "CANNOT", "DISAGREES", "LARGE", "SMALL", "Reading", "Verdict", "classify", "counts", "fmt", "judge", "lacks",
    "grouped", "majority", "split_name", "undecided",
]

AGREES, DISAGREES, CANNOT = "agrees", "disagrees", "cannot tell"
ALPHA = 0.05
# a large effect, which "refuted" excludes: half the baseline's accuracy (a relative drop of 50%,
# the paper's own drops are 50–100%), or 1 nat of the gold's log-probability (e ≈ 2.7 times less likely)
LARGE = {"relative": 0.5, "nats": 1.0}
# a small effect, within which "changes ~nothing" holds: 10% of the baseline's accuracy, or 0.25 nats
SMALL = {"relative": 0.1, "nats": 0.25}
SPLITS = {"eva": "P^eva", "det": "P^det", "t2": "P^eva-2"}


@dataclass(frozen=True)
class Verdict:
    """One row of the verdict table."""

    finding: str
    verdict: str  # agrees, disagrees, cannot tell
    metric: str  # the metric it rests on ("—": none with power)
    statistic: str  # the numbers it rests on
    also: str = ""  # the other metrics' readings
    needed: str = ""  # for "cannot tell": what would be needed

    def row(self) -> dict[str, str]:
        return {"finding": self.finding, "verdict": self.verdict, "metric": self.metric, "statistic": self.statistic,
                "also": self.also, "needed": self.needed}


@dataclass(frozen=True)
class Reading:
    """A finding read on one metric that has power for it."""

    verdict: str
    statistic: str
    needed: str = ""  # when the reading is "cannot tell"
    short: str = ""  # the gist, for the "also" column (default: the statistic)


def split_name(split: str) -> str:
    return SPLITS.get(split, split)


def fmt(interval: object, metric: Metric) -> str:
    """An effect with its interval, in the metric's unit (% of the baseline for accuracies, nats)."""
    return fmt_ci(interval, percent=metric.binary, unit="" if metric.binary else "nats")


def classify(intervals: Sequence[object], *, unit: str, p_values: Sequence[float] | None = None) -> list[str]:
    """``significant``, ``refuted`` or ``unclear`` for each interval (positive = the paper's
    direction), with Holm over them all (``p_values``: the tests' p, else the intervals' own)."""
    adjusted = holm([float(p) for p in (p_values if p_values is not None else [i.p for i in intervals])])
    out = []
    for interval, p in zip(intervals, adjusted):
        if p < ALPHA and interval.observed > 0:
            out.append("significant")
        elif interval.high < LARGE[unit]:
            out.append("refuted")
        else:
            out.append("unclear")
    return out


def majority(classes: Sequence[str], hit: str = "significant", miss: str = "refuted") -> str:
    """agrees when more than half are ``hit``, disagrees when more than half are ``miss``."""
    n = len(classes)
    if n and classes.count(hit) * 2 > n:
        return AGREES
    if n and classes.count(miss) * 2 > n:
        return DISAGREES
    return CANNOT


def counts(classes: Sequence[str]) -> str:
    n = len(classes)
    return f"{classes.count('significant')} of {n} significant (Holm), {classes.count('refuted')} refuted, {classes.count('unclear')} unclear"


def undecided(classes: Sequence[str], what: str = "relations") -> str:
    """What a mixed reading would need."""
    return (f"neither a majority significant nor a majority refuted ({counts(classes)}) among {len(classes)} {what}: "
            "more documents (--limit, --det-limit) or seeds would narrow the intervals")


def lacks(study: Study, metric: Metric, split: str, have: Sequence[str], need: int = MIN_RELATIONS, what: str = "relations") -> str:
    """Why ``metric`` has no power for a finding on ``split``, and what would give it."""
    name = split_name(split)
    if not measured(study, metric, split):
        return f"not measured on {name} (no such task group, or runs of an older version, which kept acc only)"
    floor, unit = (MIN_CORRECT, "correct") if metric.binary else (MIN_SCORED, "scored")
    text = f"needs ≥ {floor} {unit} {name} documents in ≥ {need} {what}; this model has {len(have)}"
    return text + (f" ({support_text(study, metric, split, have)})" if have else f" (best: {_best(study, metric, split)})")


def _best(study: Study, metric: Metric, split: str) -> str:
    parts = support_text(study, metric, split).split(", ")
    return ", ".join(sorted(parts, key=lambda p: -int(p.rsplit(" ", 1)[-1].split("/")[0]) if "/" in p else 0)[:3])


def grouped(reasons: dict[str, str]) -> str:
    """``acc, acc_lenient: <why>; logprob: <why>``: each reason once, with the names it holds for."""
    by_text: dict[str, list[str]] = {}
    for name, why in reasons.items():
        by_text.setdefault(why, []).append(name)
    return "; ".join(f"{', '.join(names)}: {why}" for why, names in by_text.items())


def judge(finding: str, read: Callable[[Metric], Reading | str], extras: Sequence[Metric] = (CHOICE,)) -> Verdict:
    """The verdict of ``finding``: ``read(metric)`` gives a Reading where the metric has power, else why not."""
    readings = {m: read(m) for m in (*VERDICT_METRICS, *extras)}
    primary = next((m for m in VERDICT_METRICS if isinstance(readings[m], Reading)), None)
    also = "; ".join(f"{m.name}: {r.verdict} ({r.short or r.statistic})" for m, r in readings.items()
                     if isinstance(r, Reading) and m is not primary)
    if primary is None:
        return Verdict(finding, CANNOT, "—", "no metric has power for this finding", also, grouped(
            {m.name: why for m in VERDICT_METRICS if isinstance(why := readings[m], str)}))
    got = readings[primary]
    return Verdict(finding, got.verdict, primary.label, got.statistic, also, got.needed if got.verdict == CANNOT else "")
