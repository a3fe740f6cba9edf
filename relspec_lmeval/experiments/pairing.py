"""``relspec compare``'s samples: reading lm-eval ``--log_samples`` files and pairing documents.

Two runs are paired on the documents both have: the same ``doc_id`` and filter, and the same
document content (the sample's ``doc`` and ``target``). Runs with another ``--limit`` share
their first documents; a ``doc_id`` whose content differs (another dataset version, another
shuffle) is left out, and the caller says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relspec_lmeval.errors import DataError
from relspec_lmeval.experiments.stats import weighted_aggregate
from relspec_lmeval.util.hashing import json_sha256

__all__ = ["CutShort", "SamplesFile", "Shared", "cut_short", "paired_docs", "per_sample", "read_samples", "shared", "weighted_pairs"]

Key = tuple[Any, str]  # (doc_id, filter)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _value(v: Any) -> float | tuple[float, float] | None:
    """A per-sample metric value: a number, or a ``[loglik, length]`` pair of a weighted metric."""
    if _number(v) is not None:
        return float(v)
    if isinstance(v, list) and len(v) == 2 and all(_number(u) is not None for u in v):
        return float(v[0]), float(v[1])
    return None


def _content(sample: dict[str, Any]) -> str | None:
    """What makes two samples the same document: a hash of ``doc`` and ``target`` (lm-eval writes
    both), else of lm-eval's own ``doc_hash`` and ``target_hash``; None when the file has neither."""
    if "doc" in sample:
        return json_sha256([sample["doc"], sample.get("target")])
    if "doc_hash" in sample:
        return json_sha256([sample["doc_hash"], sample.get("target_hash")])
    return None


@dataclass(frozen=True)
class SamplesFile:
    """One task's samples: (doc_id, filter) → metric values (numbers, and [loglik, length] pairs
    of weighted metrics), and → the document's content hash."""

    values: dict[Key, dict[str, float | tuple[float, float]]] = field(default_factory=dict)
    content: dict[Key, str | None] = field(default_factory=dict)
    unparsable: int = 0


def read_samples(path: Path) -> SamplesFile:
    """Every line's numbers and pairs (its metric values, and doc_id itself), its content hash, and
    how many lines did not parse."""
    values, content, unparsable = {}, {}, 0
    try:
        with path.open(encoding="utf-8", errors="replace") as f:  # a write cut inside a character: that line only
            for line in f:
                if not line.strip():
                    continue
                try:
                    s = json.loads(line)
                    key = (s["doc_id"], s.get("filter", "none"))
                    values[key] = {k: v for k, v in ((k, _value(v)) for k, v in s.items()) if v is not None}
                    content[key] = _content(s)
                except (ValueError, KeyError, TypeError, AttributeError):
                    unparsable += 1  # an interrupted write leaves half a line: counted and said, not fatal
    except OSError as exc:
        raise DataError(f"{path}: not a readable lm-eval samples file ({exc!r})") from None
    return SamplesFile(values, content, unparsable)


@dataclass(frozen=True)
class CutShort:
    """A samples file with fewer samples than the run evaluated, or with lines that do not parse
    (an interrupted write): its task gets no paired test, and the outputs say so."""

    task: str
    file: str
    read: int
    expected: int
    unparsable: int

    def describe(self) -> str:
        bad = f" ({self.unparsable} unparsable line{'s' if self.unparsable != 1 else ''})" if self.unparsable else ""
        return f"{self.file}: {self.read} of {self.expected} samples read{bad}"


def cut_short(task: str, path: Path, samples: SamplesFile, filters: list[str], n: int | None) -> CutShort | None:
    """Why the file cannot stand for the run (fewer samples per filter than ``n``, lines that do
    not parse), or None. A paired test on part of a run's documents would not test its numbers."""
    counts = [sum(1 for _, f in samples.values if f == filt) for filt in filters]  # lm-eval writes a line per document and filter
    if not samples.unparsable and (n is None or all(count >= n for count in counts)):
        return None
    expected = sum(counts) + samples.unparsable if n is None else n * len(filters)
    return CutShort(task, str(path), sum(counts), expected, samples.unparsable)


@dataclass(frozen=True)
class Shared:
    """The (doc_id, filter) keys both runs have with the same content, and the doc_ids both have
    whose content differs (not paired)."""

    keys: frozenset[Key]
    differing: list[Any]


def shared(a: SamplesFile, b: SamplesFile) -> Shared:
    """Pair on doc_id and filter where the content agrees (unknown content, in files without
    ``doc``, is taken as agreeing: nothing to check)."""
    both = a.values.keys() & b.values.keys()
    same = {k for k in both if a.content[k] is None or b.content[k] is None or a.content[k] == b.content[k]}
    differing = sorted({doc for doc, _ in both - same}, key=lambda d: (str(type(d)), d))
    return Shared(frozenset(same), differing)


def per_sample(samples: SamplesFile, metric: str, filt: str, reported: float) -> dict[Any, float] | None:
    """doc_id → value, when every document has a scalar value and their mean is the reported number.

    Perplexities, bits per byte, corpus metrics (values are lists) and any aggregation other
    than the mean fail this, so only means of per-sample values get a paired test. The mean is
    over all the run's samples (its own number), before pairing picks the shared documents.
    """
    values = {doc: v.get(metric) for (doc, f), v in samples.values.items() if f == filt}
    if not values or not all(isinstance(v, float) for v in values.values()):
        return None
    mean = math.fsum(values.values()) / len(values)
    return values if math.isclose(mean, reported, rel_tol=1e-9, abs_tol=1e-12) else None


def weighted_pairs(
    samples: SamplesFile, metric: str, filt: str, aggregation: str, reported: float, files: tuple[Path | None, Path],
) -> dict[Any, tuple[float, float]] | None:  # fmt: skip
    """doc_id → (loglik, length) of a weighted metric, checked against the run's reported aggregate.

    A mismatch means the samples are not the ones the results were computed from (another run's
    file, an edited one): an error, as a test on them would test something else. ``files``:
    the samples and the results file, for that message.
    """
    pairs = {doc: v.get(metric) for (doc, f), v in samples.values.items() if f == filt}
    if not pairs or not all(isinstance(v, tuple) for v in pairs.values()):
        return None
    loglik, length = np.array(list(pairs.values())).T
    recomputed = float(weighted_aggregate(aggregation, loglik, length))
    if not math.isclose(recomputed, reported, rel_tol=1e-9, abs_tol=1e-12):  # lm-eval sums in another order
        raise DataError(
            f"{files[0]}: the samples do not reproduce {metric},{filt} of {files[1]} "
            f"({aggregation} of their [loglik, length] pairs is {recomputed:.10g}, the results say {reported:.10g})"
        )
    return pairs


def paired_docs(per_a: dict[Any, Any], per_b: dict[Any, Any], keys: frozenset[Key], filt: str) -> list[Any]:
    """The doc_ids to pair, in the baseline file's order (the bootstrap's draws index this list)."""
    return [doc for doc in per_a if (doc, filt) in keys and doc in per_b]
