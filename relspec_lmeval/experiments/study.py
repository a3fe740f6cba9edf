"""What ``relspec reproduce`` measured, as the report sees it: conditions, measurements, the study.

Pure data and arithmetic (no model code). Drops are relative, (original − ablated) /
original; where the original accuracy is 0 there is no drop (``None`` here, ``n/a`` in
files and figures), never a division by zero.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from relspec_lmeval.data.tasks import Suite, task_name

__all__ = ["BASELINE", "KS", "NA", "QUICK", "SEEDS", "Condition", "as_metrics", "Measurement", "Row", "SetStats", "Study", "mean_present", "relative_drop", "value"]

NA = "n/a"
Row = dict[str, Any]
# the study's size (experiments.plan uses them; here so that relspec's flags are parsed without torch)
KS = (10, 50, 200, 500, 1000, 3000, 10000, 20000, 50000)  # the paper's k sweep
SEEDS = 10  # random controls per relation, as in the paper
QUICK = {"seeds": 3, "ks": (50, 500, 3000), "limit": 20, "det_limit": 100}  # site seeds: as many as seeds


@dataclass(frozen=True)
class Condition:
    """What was switched off: nothing (``baseline``), a relation's set (``own``), a random
    control (``random``: uniform over all neurons, ``seed``; ``random_site``: as many per site as
    the relation's set has, ``seed``), its top-k by score (``topk``) or ranks skip+1..skip+k (``ranks``)."""

    kind: str
    relation: str | None = None
    seed: int | None = None
    k: int | None = None
    skip: int | None = None

    def label(self) -> str:
        parts = [self.kind, self.relation, *(f"{n}{v}" for n, v in (("seed", self.seed), ("k", self.k), ("skip", self.skip)) if v is not None)]
        return "-".join(p for p in parts if p)


@dataclass
class Measurement:
    """A condition's lm-eval numbers: task → metric → value, and task → metric → per-document
    values in doc_id order (0/1 for ``acc``; nats for ``logprob``; ``[loglik, words]`` pairs for
    perplexities). A task's plain list (run files of earlier versions kept only recall ``acc``)
    is read as its ``acc``."""

    metrics: dict[str, dict[str, float]]
    per_sample: dict[str, dict[str, list[Any]]]

    def __post_init__(self) -> None:
        self.per_sample = {task: as_metrics(v) for task, v in self.per_sample.items()}


def as_metrics(per_task: dict[str, list[Any]] | list[Any]) -> dict[str, list[Any]]:
    """A run file's per-sample entry of one task as metric → values (a plain list is ``acc``)."""
    return {"acc": list(per_task)} if isinstance(per_task, list) else dict(per_task)


@dataclass(frozen=True)
class SetStats:
    count: int
    per_layer: dict[int, dict[str, int]]  # layer → site → neurons


@dataclass
class Study:
    model: str
    suite: Suite
    relations: list[str]
    seeds: list[int]
    ks: list[int]
    num_layers: int
    sets: dict[str, SetStats]
    overlaps: dict[str, dict[str, int]]
    jaccard: dict[str, dict[str, float]]
    results: dict[Condition, Measurement]
    settings: dict[str, Any]  # what report.md states about the plan (limits, folders, command, timings)
    site_seeds: list[int] = field(default_factory=list)  # the site-matched random controls' seeds
    # computed effects (deterministic bootstraps), kept so tables and verdicts compute each once
    cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)


BASELINE = Condition("baseline")


# ---------------------------------------------------------------------------- numbers


def relative_drop(original: float | None, ablated: float | None) -> float | None:
    """(original − ablated) / original; None where either is missing or the original is 0 (no drop, never a division by zero).

    Args:
        original: the unablated model's score.
        ablated: the score with neurons off.

    Returns:
        The relative drop (negative: the ablated model did better), or None.

    Example:
        >>> from relspec_lmeval.experiments.study import relative_drop
        >>> relative_drop(0.5, 0.125), relative_drop(0.0, 0.0)
        (0.75, None)
    """
    if original is None or ablated is None or original == 0:
        return None
    return (original - ablated) / original


def value(study: Study, cond: Condition, group: str, relation: str, metric: str = "acc") -> float | None:
    measured = study.results.get(cond)
    return None if measured is None else measured.metrics.get(task_name(group, relation), {}).get(metric)


def mean_present(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


