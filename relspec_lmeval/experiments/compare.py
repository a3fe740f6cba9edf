"""``relspec compare``: lm-eval results side by side, with a significance test per metric.

Reads lm-eval ``--output_path`` folders (or results files), matches tasks, metrics and
filters, and tests each difference: exact McNemar on paired 0/1 samples, a paired bootstrap
of the mean difference on other per-sample metrics, a paired bootstrap of the corpus-level
difference on weighted perplexities and bits per byte (all need ``--log_samples``), a z-test
on lm-eval's standard errors otherwise. See docs/compare.md.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from relspec_lmeval.errors import DataError, UsageError
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


def weighted_aggregate(aggregation: str, loglik: np.ndarray, length: np.ndarray) -> np.ndarray:
    """lm-eval's ``weighted_perplexity`` (exp of −Σ loglik / Σ length) or ``bits_per_byte``
    (−Σ loglik / (Σ bytes · ln 2)) of the documents along the last axis."""
    mean = loglik.sum(axis=-1) / length.sum(axis=-1)
    return np.exp(-mean) if aggregation == "weighted_perplexity" else -mean / math.log(2)


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


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "" if value is None else format(value, spec)


def _yes_no(significant: bool | None) -> str:
    return "n/a" if significant is None else ("yes" if significant else "no")


def to_markdown(comparisons: list[Comparison], alpha: float, resamples: int, seed: int) -> str:
    runs = [comparisons[0].baseline] + [c.run for c in comparisons]
    lines = ["## Runs", ""]
    for i, r in enumerate(runs):
        newest = f" (the newest of {r.found} results files)" if r.found > 1 else ""
        lines.append(f"- **{r.name}**{' (baseline)' if i == 0 else ''}: `{r.file}`{newest}; model {r.model}; neuron sets: {r.describe_sets()}")
    for c in comparisons:
        a, b = c.baseline.name, c.run.name
        lines += ["", f"## {b} vs {a}", "", f"| task | metric | filter | n | {a} | {b} | diff | test | p | significant |"]
        lines.append("|---|---|---|---:|---:|---:|---:|---|---:|---|")
        for r in c.rows:
            lines.append(
                f"| {r.task} | {r.metric} | {r.filter} | {_fmt(r.n, 'd')} | {_fmt(r.baseline)} | {_fmt(r.value)} | "
                f"{_fmt(r.diff, '+.4f')} | {r.test} | {_fmt(r.p, '.3g')} | {_yes_no(r.significant)} |"
            )
        for note, tasks in ((f"Only in {a}", c.only_in_baseline), (f"Only in {b}", c.only_in_run), ("Sample counts differ (another --limit?)", c.unequal_n)):
            if tasks:
                lines += ["", f"{note}: {', '.join(tasks)}."]
        if c.samples_cut_short:
            lines += ["", "Samples cut short (fewer samples than documents, or lines that do not parse), so no paired test for these tasks:"]
            lines += [f"- {cut.task}: {cut.describe()}" for cut in c.samples_cut_short]
    lines += ["", f"p is two-sided; significant: p < {alpha}. Tests:"]
    used = {r.test for c in comparisons for r in c.rows}
    for test, what in TESTS.items():
        if test in used:
            extra = f" ({resamples} resamples, seed {seed})" if test.startswith("bootstrap") else ""
            lines.append(f"- {test}: {what}{extra}")
    return "\n".join(lines) + "\n"


def _sha(run: Run) -> str:
    return "+".join(s["sha256"] for s in run.sets) or "none"


def to_csv(comparisons: list[Comparison]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["baseline_run", "run", *(f.name for f in fields(Row)), "baseline_sha256", "run_sha256"])
    for c in comparisons:
        for r in c.rows:
            writer.writerow([c.baseline.label, c.run.label, *("" if v is None else v for v in asdict(r).values()), _sha(c.baseline), _sha(c.run)])
    return out.getvalue()


def _run_json(run: Run) -> dict[str, Any]:
    sets = [{k: s.get(k) for k in ("path", "sha256", "count")} for s in run.sets]
    return {"label": run.label, "results_file": str(run.file), "results_files_found": run.found, "model": run.model,
            "neuron_sets": sets, "mode": run.relspec.get("mode"), "factor": run.relspec.get("factor")}  # fmt: skip


def to_json(comparisons: list[Comparison], alpha: float, resamples: int, seed: int) -> str:
    return json.dumps(
        {
            "alpha": alpha,
            "bootstrap": {"resamples": resamples, "seed": seed},
            "baseline": _run_json(comparisons[0].baseline),
            "comparisons": [
                {"run": _run_json(c.run), "rows": [asdict(r) for r in c.rows], "only_in_baseline": c.only_in_baseline,
                 "only_in_run": c.only_in_run, "unequal_n": c.unequal_n,
                 "samples_cut_short": [asdict(cut) for cut in c.samples_cut_short]}
                for c in comparisons
            ],
        },
        indent=2,
    ) + "\n"


def plot(comparisons: list[Comparison], path: Path) -> None:
    """A panel per metric, a bar per task and run, lm-eval's standard error as error bar, * = significant."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise UsageError(f"--plot {path} needs matplotlib: pip install matplotlib") from exc
    runs = [comparisons[0].baseline] + [c.run for c in comparisons]
    # (metric, filter) → task → per run (value, stderr, significant); NaN where a run lacks the task
    panels: dict[tuple[str, str], dict[str, list[tuple[float, float, bool]]]] = {}
    for i, c in enumerate(comparisons, start=1):
        for r in c.rows:
            bars = panels.setdefault((r.metric, r.filter), {}).setdefault(r.task, [(math.nan, math.nan, False)] * len(runs))
            bars[0] = (r.baseline, math.nan if r.baseline_stderr is None else r.baseline_stderr, False)
            bars[i] = (r.value, math.nan if r.stderr is None else r.stderr, bool(r.significant))
    sizes = [max(2, len(tasks)) for _, tasks in sorted(panels.items())]  # room for a title and a label
    fig = Figure(figsize=(1 + sum(sizes) * (0.5 + 0.3 * len(runs)), 4.5), layout="constrained")
    FigureCanvasAgg(fig)  # renders to files only: no display, no global pyplot state
    width = 0.8 / len(runs)
    # Widths proportional to the tasks per panel, so a bar is equally wide in every panel.
    axes = fig.subplots(1, len(panels), squeeze=False, gridspec_kw={"width_ratios": sizes})[0]
    for ax, size, ((metric, filt), tasks) in zip(axes, sizes, sorted(panels.items())):
        names = sorted(tasks)
        ax.set_xlim((len(names) - 1 - size) / 2, (len(names) - 1 + size) / 2)
        for j, run in enumerate(runs):
            xs = [k + (j - (len(runs) - 1) / 2) * width for k in range(len(names))]
            values = [tasks[t][j] for t in names]
            ax.bar(xs, [v for v, _, _ in values], width, yerr=[e for _, e, _ in values], capsize=2, label=run.name)
            for x, (v, e, significant) in zip(xs, values):
                if significant:
                    ax.annotate("*", (x, v + (0 if math.isnan(e) else e)), ha="center", va="bottom")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric if filt == "none" else f"{metric} ({filt})", fontsize=10)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=120)
