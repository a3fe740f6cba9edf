"""``relspec compare``: lm-eval results side by side, with a significance test per metric.

Reads lm-eval ``--output_path`` folders (or results files), matches tasks, metrics and
filters, and tests each difference: exact McNemar on paired 0/1 samples, a paired bootstrap
of the mean difference on other per-sample metrics, a paired bootstrap of the corpus-level
difference on weighted perplexities and bits per byte (all need ``--log_samples``), a z-test
on lm-eval's standard errors otherwise. See docs/compare.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from relspec_lmeval.errors import DataError, UsageError
from relspec_lmeval.experiments.stats import bootstrap_p, mcnemar_p, stderr_p, weighted_aggregate, weighted_bootstrap_p
from relspec_lmeval.util.suggest import closest

TESTS = {
    "mcnemar": "exact McNemar test on the paired 0/1 samples",
    "bootstrap": "paired bootstrap of the mean difference over the paired samples",
    "bootstrap-weighted": "paired bootstrap of the corpus-level difference: documents resampled jointly, "
    "lm-eval's weighted aggregate recomputed on each resample",
    "stderr": "z-test on lm-eval's standard errors (unpaired, so conservative)",
    "n/a": "no per-sample means and no standard errors to test with",
}

# lm-eval's aggregations of per-document [loglik, length] pairs; it reports no stderr for them.
WEIGHTED = ("weighted_perplexity", "bits_per_byte")
# lm-eval's defaults, for task configs that list these metrics without an aggregation.
DEFAULT_AGGREGATION = {"word_perplexity": "weighted_perplexity", "byte_perplexity": "weighted_perplexity", "bits_per_byte": "bits_per_byte"}


@dataclass(frozen=True)
class Run:
    label: str  # the argument as given
    name: str  # column name in tables and plots
    file: Path  # the results JSON read
    found: int  # results files under the folder given (1 when a file was named)
    results: dict[str, dict[str, Any]]
    n_samples: dict[str, Any]
    model: str
    relspec: dict[str, Any]  # config.relspec of relspec-hf runs; {} for other models
    configs: dict[str, Any]  # the results' task configs: how each metric was aggregated

    def samples_file(self, task: str) -> Path | None:
        """lm-eval writes ``samples_<task>_<timestamp>.jsonl`` beside ``results_<timestamp>.json``."""
        path = self.file.with_name(f"samples_{task}_{self.file.stem.removeprefix('results_')}.jsonl")
        return path if path.is_file() else None

    def sample_count(self, task: str) -> int | None:
        return self.results[task].get("sample_len") or (self.n_samples.get(task) or {}).get("effective")

    def weighted_aggregation(self, task: str, metric: str) -> str | None:
        """``weighted_perplexity`` or ``bits_per_byte`` when lm-eval aggregated the metric so, else None."""
        listed = [m for m in (self.configs.get(task) or {}).get("metric_list") or [] if isinstance(m, dict) and m.get("metric") == metric]
        name = listed[0].get("aggregation", DEFAULT_AGGREGATION.get(metric)) if listed else DEFAULT_AGGREGATION.get(metric)
        return name if name in WEIGHTED else None  # a custom aggregation (!function) is not ours to redo

    @property
    def sets(self) -> list[dict[str, Any]]:
        return self.relspec.get("sets") or []

    def describe_sets(self) -> str:
        if not self.sets:
            return "none"
        sets = "; ".join(f"sha256 `{s['sha256']}` ({s['count']} neurons, {s['path']})" for s in self.sets)
        mode = self.relspec.get("mode")
        return f"{sets}, mode {mode}" + (f" × {self.relspec.get('factor')}" if mode == "scale" else "")


@dataclass(frozen=True)
class Row:
    task: str
    metric: str
    filter: str
    n: int | None  # paired samples, else the task's sample count
    baseline: float
    value: float
    diff: float  # value - baseline
    baseline_stderr: float | None
    stderr: float | None
    test: str  # a key of TESTS
    p: float | None  # two-sided
    significant: bool | None
    note: str = ""  # why a paired test was not possible, where it was meant to be (samples cut short)


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


@dataclass(frozen=True)
class Comparison:
    baseline: Run
    run: Run
    rows: list[Row]
    only_in_baseline: list[str]
    only_in_run: list[str]
    unequal_n: list[str]  # "task (n vs n)": runs with another --limit are not comparable
    samples_cut_short: list[CutShort]


def load_run(arg: str, name: str) -> Run:
    """A results file, or the newest ``results_*.json`` under a folder (lm-eval puts it one level down)."""
    path = Path(arg)
    if not path.exists():
        raise UsageError(f"{arg}: no such file or folder")
    found = sorted(path.rglob("results_*.json"), key=lambda p: (p.name, p.stat().st_mtime)) if path.is_dir() else [path]
    if not found:
        raise UsageError(f"{arg}: no lm-eval results_*.json in this folder (written by lm_eval --output_path {arg})")
    file = found[-1]  # the names carry lm-eval's timestamp, so the last one is the newest run
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{file}: not a readable results JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise DataError(f"{file}: not an lm-eval results file (no 'results' table)")
    config = data.get("config") or {}
    model_args = config.get("model_args")
    pretrained = data.get("model_name") or (model_args.get("pretrained") if isinstance(model_args, dict) else model_args)
    return Run(
        label=arg,
        name=name,
        file=file,
        found=len(found),
        results={task: entry for task, entry in data["results"].items() if isinstance(entry, dict)},
        n_samples=data.get("n-samples") or {},
        model=f"{config.get('model', '?')} {pretrained or ''}".strip(),
        relspec=config.get("relspec") or {},
        configs=data.get("configs") or {},
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _metrics(entry: dict[str, Any]) -> dict[tuple[str, str], float]:
    """``{"acc,none": 0.5, "acc_stderr,none": …}`` → ``{("acc", "none"): 0.5}``."""
    out = {}
    for key, value in entry.items():
        metric, _, filt = key.partition(",")
        if filt and not metric.endswith("_stderr") and _number(value) is not None:
            out[(metric, filt)] = float(value)
    return out


# (doc_id, filter) → the sample's metric values: numbers, and [loglik, length] pairs of weighted metrics
Samples = dict[tuple[Any, str], dict[str, float | tuple[float, float]]]


def _value(v: Any) -> float | tuple[float, float] | None:
    """A per-sample metric value: a number, or a ``[loglik, length]`` pair of a weighted metric."""
    if _number(v) is not None:
        return float(v)
    if isinstance(v, list) and len(v) == 2 and all(_number(u) is not None for u in v):
        return float(v[0]), float(v[1])
    return None


def _read_samples(path: Path) -> tuple[Samples, int]:
    """Every line's numbers and pairs (its metric values, and doc_id itself), and how many lines did not parse."""
    samples, unparsable = {}, 0
    try:
        with path.open(encoding="utf-8", errors="replace") as f:  # a write cut inside a character: that line only
            for line in f:
                if not line.strip():
                    continue
                try:
                    s = json.loads(line)
                    samples[(s["doc_id"], s.get("filter", "none"))] = {k: v for k, v in ((k, _value(v)) for k, v in s.items()) if v is not None}
                except (ValueError, KeyError, TypeError, AttributeError):
                    unparsable += 1  # an interrupted write leaves half a line: counted and said, not fatal
    except OSError as exc:
        raise DataError(f"{path}: not a readable lm-eval samples file ({exc!r})") from None
    return samples, unparsable


def _task_samples(run: Run, task: str) -> tuple[Samples, CutShort | None]:
    """The task's samples, or none and why when the file holds fewer than the run evaluated.

    A paired test on part of the documents would not test the reported numbers, so a file cut
    short gets none; the caller says so instead of falling back to the standard errors silently.
    """
    path = run.samples_file(task)
    if path is None:
        return {}, None
    samples, unparsable = _read_samples(path)
    filters = sorted({filt for _, filt in _metrics(run.results[task])})
    n = run.sample_count(task)
    counts = [sum(1 for _, f in samples if f == filt) for filt in filters]  # lm-eval writes a line per document and filter
    if not unparsable and (n is None or all(count >= n for count in counts)):
        return samples, None
    expected = sum(counts) + unparsable if n is None else n * len(filters)
    return {}, CutShort(task, str(path), sum(counts), expected, unparsable)


def _per_sample(samples: Samples, metric: str, filt: str, reported: float) -> dict[Any, float] | None:
    """doc_id → value, when every document has a scalar value and their mean is the reported number.

    Perplexities, bits per byte, corpus metrics (values are lists) and any aggregation other
    than the mean fail this, so only means of per-sample values get this paired test.
    """
    values = {doc: v.get(metric) for (doc, f), v in samples.items() if f == filt}
    if not values or not all(isinstance(v, float) for v in values.values()):
        return None
    mean = math.fsum(values.values()) / len(values)
    return values if math.isclose(mean, reported, rel_tol=1e-9, abs_tol=1e-12) else None


def _weighted_pairs(run: Run, task: str, samples: Samples, metric: str, filt: str, reported: float) -> dict[Any, tuple[float, float]] | None:
    """doc_id → (loglik, length) of a weighted metric, checked against the run's reported aggregate.

    A mismatch means the samples are not the ones the results were computed from (another run's
    file, an edited one): an error, as a test on them would test something else.
    """
    aggregation = run.weighted_aggregation(task, metric)
    pairs = {doc: v.get(metric) for (doc, f), v in samples.items() if f == filt}
    if aggregation is None or not pairs or not all(isinstance(v, tuple) for v in pairs.values()):
        return None
    loglik, length = np.array(list(pairs.values())).T
    recomputed = float(weighted_aggregate(aggregation, loglik, length))
    if not math.isclose(recomputed, reported, rel_tol=1e-9, abs_tol=1e-12):  # lm-eval sums in another order
        raise DataError(
            f"{run.samples_file(task)}: the samples do not reproduce {metric},{filt} of {run.file} "
            f"({aggregation} of their [loglik, length] pairs is {recomputed:.10g}, the results say {reported:.10g})"
        )
    return pairs


def _few(names: list[str], k: int = 5) -> str:
    """A list that stays one readable line with mmlu's 57 subtasks too."""
    return (", ".join(names[:k]) + (f", … ({len(names) - k} more)" if len(names) > k else "")) or "none"


def _paired_test(
    baseline: Run, run: Run, task: str, samples_a: Samples, samples_b: Samples, metric: str, filt: str,
    base: float, value: float, resamples: int, seed: int,
) -> tuple[str, int, float] | None:  # fmt: skip
    """(test, paired documents, p) when both runs have samples of the same documents, else None."""
    aggregation = baseline.weighted_aggregation(task, metric)
    if aggregation is not None and aggregation == run.weighted_aggregation(task, metric):
        pairs_a, pairs_b = _weighted_pairs(baseline, task, samples_a, metric, filt, base), _weighted_pairs(run, task, samples_b, metric, filt, value)
        if pairs_a is None or pairs_b is None or pairs_a.keys() != pairs_b.keys():
            return None
        x, y = np.array(list(pairs_a.values())), np.array([pairs_b[doc] for doc in pairs_a])
        return "bootstrap-weighted", len(x), weighted_bootstrap_p(x, y, aggregation, resamples=resamples, seed=seed)
    per_a, per_b = _per_sample(samples_a, metric, filt, base), _per_sample(samples_b, metric, filt, value)
    if per_a is None or per_b is None or per_a.keys() != per_b.keys():
        return None
    x, y = np.array(list(per_a.values())), np.array([per_b[doc] for doc in per_a])
    if np.isin(x, (0, 1)).all() and np.isin(y, (0, 1)).all():
        return "mcnemar", len(x), mcnemar_p(x, y)
    return "bootstrap", len(x), bootstrap_p(x, y, resamples=resamples, seed=seed)


def compare(baseline: Run, run: Run, *, alpha: float = 0.05, resamples: int = 10_000, seed: int = 0) -> Comparison:
    common = [t for t in baseline.results if t in run.results]
    if not common:
        hints = [f"{t} ~ {m}" for t in sorted(baseline.results) if (m := closest(t, run.results))]
        detail = f"close names: {_few(hints)}" if hints else f"tasks: {_few(sorted(run.results))} vs {_few(sorted(baseline.results))}"
        raise DataError(f"{run.file}: no task in common with {baseline.file}; {detail}")
    rows, unequal_n, cut_short = [], [], []
    for task in sorted(common):
        a, b = _metrics(baseline.results[task]), _metrics(run.results[task])
        (samples_a, cut_a), (samples_b, cut_b) = _task_samples(baseline, task), _task_samples(run, task)
        cut = [c for c in (cut_a, cut_b) if c is not None]
        cut_short += cut
        note = "; ".join(f"samples cut short: {c.describe()}" for c in cut)
        n_task, n_run = baseline.sample_count(task), run.sample_count(task)
        if n_task != n_run:
            unequal_n.append(f"{task} ({n_task} vs {n_run})")
        for metric, filt in sorted(a.keys() & b.keys()):
            base, value = a[(metric, filt)], b[(metric, filt)]
            se_a = _number(baseline.results[task].get(f"{metric}_stderr,{filt}"))
            se_b = _number(run.results[task].get(f"{metric}_stderr,{filt}"))
            paired = _paired_test(baseline, run, task, samples_a, samples_b, metric, filt, base, value, resamples, seed)
            if paired is not None:
                test, n, p = paired
            else:
                n, p = n_task, stderr_p(value - base, se_a, se_b)
                test = "n/a" if p is None else "stderr"
            rows.append(Row(task, metric, filt, n, base, value, value - base, se_a, se_b, test, p, None if p is None else p < alpha, note))
    return Comparison(
        baseline,
        run,
        rows,
        only_in_baseline=sorted(set(baseline.results) - set(common)),
        only_in_run=sorted(set(run.results) - set(common)),
        unequal_n=unequal_n,
        samples_cut_short=cut_short,
    )
