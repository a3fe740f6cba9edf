"""``relspec compare``: lm-eval results side by side, with a significance test per metric.

Reads lm-eval ``--output_path`` folders (or results files), matches tasks, metrics and
filters, and tests each difference: exact McNemar on paired 0/1 samples, a paired bootstrap
of the mean difference on other per-sample metrics (both need ``--log_samples``), a z-test on
lm-eval's standard errors otherwise. See docs/compare.md.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import json
import math
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

TESTS = {
    "mcnemar": "exact McNemar test on the paired 0/1 samples",
    "bootstrap": "paired bootstrap of the mean difference over the paired samples",
    "stderr": "z-test on lm-eval's standard errors (unpaired, so conservative)",
    "n/a": "no per-sample means and no standard errors to test with",
}


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

    def samples_file(self, task: str) -> Path | None:
        """lm-eval writes ``samples_<task>_<timestamp>.jsonl`` beside ``results_<timestamp>.json``."""
        path = self.file.with_name(f"samples_{task}_{self.file.stem.removeprefix('results_')}.jsonl")
        return path if path.is_file() else None

    def sample_count(self, task: str) -> int | None:
        return self.results[task].get("sample_len") or (self.n_samples.get(task) or {}).get("effective")

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


@dataclass(frozen=True)
class Comparison:
    baseline: Run
    run: Run
    rows: list[Row]
    only_in_baseline: list[str]
    only_in_run: list[str]
    unequal_n: list[str]  # "task (n vs n)": runs with another --limit are not comparable


def load_run(arg: str, name: str) -> Run:
    """A results file, or the newest ``results_*.json`` under a folder (lm-eval puts it one level down)."""
    path = Path(arg)
    if not path.exists():
        raise ValueError(f"{arg}: no such file or folder")
    found = sorted(path.rglob("results_*.json"), key=lambda p: (p.name, p.stat().st_mtime)) if path.is_dir() else [path]
    if not found:
        raise ValueError(f"{arg}: no lm-eval results_*.json in this folder (written by lm_eval --output_path {arg})")
    file = found[-1]  # the names carry lm-eval's timestamp, so the last one is the newest run
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file}: not a readable results JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"{file}: not an lm-eval results file (no 'results' table)")
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


def _read_samples(path: Path | None) -> dict[tuple[Any, str], dict[str, float]]:
    """(doc_id, filter) → the line's scalar numbers: per-sample metric values (and doc_id itself)."""
    if path is None:
        return {}
    samples = {}
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    s = json.loads(line)
                    samples[(s["doc_id"], s.get("filter", "none"))] = {k: float(v) for k, v in s.items() if isinstance(v, (int, float))}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable lm-eval samples file ({exc!r})") from exc
    return samples


def _per_sample(samples: dict[tuple[Any, str], dict[str, float]], metric: str, filt: str, reported: float) -> dict[Any, float] | None:
    """doc_id → value, when every document has a scalar value and their mean is the reported number.

    Perplexities, bits per byte, corpus metrics (values are lists) and any aggregation other
    than the mean fail this, so only means of per-sample values get a paired test.
    """
    values = {doc: v.get(metric) for (doc, f), v in samples.items() if f == filt}
    if not values or any(v is None for v in values.values()):
        return None
    mean = math.fsum(values.values()) / len(values)
    return values if math.isclose(mean, reported, rel_tol=1e-9, abs_tol=1e-12) else None


def mcnemar_p(x: np.ndarray, y: np.ndarray) -> float:
    """Exact two-sided McNemar: the discordant pairs are Binomial(b + c, 1/2) under no difference."""
    b, c = int(np.sum((x == 1) & (y == 0))), int(np.sum((x == 0) & (y == 1)))
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def bootstrap_p(x: np.ndarray, y: np.ndarray, *, resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired bootstrap: how often a resampled mean difference, centred on the observed
    one (the null), lands at least as far from it as the observed one is from 0."""
    d = np.asarray(y, dtype=np.float64) - np.asarray(x, dtype=np.float64)
    observed = d.mean()
    rng = np.random.default_rng(seed)
    block = max(1, 2**22 // len(d))  # resamples per draw: bounds the index matrix at ~32 MiB
    extreme = 0
    for start in range(0, resamples, block):
        means = d[rng.integers(0, len(d), size=(min(block, resamples - start), len(d)))].mean(axis=1)
        extreme += int(np.count_nonzero(np.abs(means - observed) >= abs(observed)))
    return (extreme + 1) / (resamples + 1)  # counts the observed sample itself: never exactly 0


def stderr_p(diff: float, se_a: float | None, se_b: float | None) -> float | None:
    if se_a is None or se_b is None or se_a**2 + se_b**2 == 0:
        return None
    return math.erfc(abs(diff) / math.sqrt(se_a**2 + se_b**2) / math.sqrt(2))


def _few(names: list[str], k: int = 5) -> str:
    """A list that stays one readable line with mmlu's 57 subtasks too."""
    return (", ".join(names[:k]) + (f", … ({len(names) - k} more)" if len(names) > k else "")) or "none"


def compare(baseline: Run, run: Run, *, alpha: float = 0.05, resamples: int = 10_000, seed: int = 0) -> Comparison:
    common = [t for t in baseline.results if t in run.results]
    if not common:
        hints = [f"{t} ~ {m[0]}" for t in sorted(baseline.results) if (m := difflib.get_close_matches(t, list(run.results), n=1))]
        detail = f"close names: {_few(hints)}" if hints else f"tasks: {_few(sorted(run.results))} vs {_few(sorted(baseline.results))}"
        raise ValueError(f"{run.file}: no task in common with {baseline.file}; {detail}")
    rows, unequal_n = [], []
    for task in sorted(common):
        a, b = _metrics(baseline.results[task]), _metrics(run.results[task])
        samples_a, samples_b = _read_samples(baseline.samples_file(task)), _read_samples(run.samples_file(task))
        n_task, n_run = baseline.sample_count(task), run.sample_count(task)
        if n_task != n_run:
            unequal_n.append(f"{task} ({n_task} vs {n_run})")
        for metric, filt in sorted(a.keys() & b.keys()):
            base, value = a[(metric, filt)], b[(metric, filt)]
            se_a = _number(baseline.results[task].get(f"{metric}_stderr,{filt}"))
            se_b = _number(run.results[task].get(f"{metric}_stderr,{filt}"))
            per_a, per_b = _per_sample(samples_a, metric, filt, base), _per_sample(samples_b, metric, filt, value)
            if per_a is not None and per_b is not None and per_a.keys() == per_b.keys():
                x, y = np.array(list(per_a.values())), np.array([per_b[doc] for doc in per_a])
                n = len(x)
                if np.isin(x, (0, 1)).all() and np.isin(y, (0, 1)).all():
                    test, p = "mcnemar", mcnemar_p(x, y)
                else:
                    test, p = "bootstrap", bootstrap_p(x, y, resamples=resamples, seed=seed)
            else:
                n, p = n_task, stderr_p(value - base, se_a, se_b)
                test = "n/a" if p is None else "stderr"
            rows.append(Row(task, metric, filt, n, base, value, value - base, se_a, se_b, test, p, None if p is None else p < alpha))
    return Comparison(
        baseline,
        run,
        rows,
        only_in_baseline=sorted(set(baseline.results) - set(common)),
        only_in_run=sorted(set(run.results) - set(common)),
        unequal_n=unequal_n,
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
    lines += ["", f"p is two-sided; significant: p < {alpha}. Tests:"]
    used = {r.test for c in comparisons for r in c.rows}
    for test, what in TESTS.items():
        if test in used:
            extra = f" ({resamples} resamples, seed {seed})" if test == "bootstrap" else ""
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
                 "only_in_run": c.only_in_run, "unequal_n": c.unequal_n}
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
        raise ValueError(f"--plot {path} needs matplotlib: pip install 'relspec-lmeval[plot]'") from exc
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


def _names(args: list[str]) -> list[str]:
    """Short column names (the folder's or file's name), unless two inputs would share one."""
    short = [(Path(a).stem if Path(a).is_file() else Path(a).name) or a for a in args]
    return short if len(set(short)) == len(short) else list(args)


def _cmd_compare(args: argparse.Namespace) -> None:
    if len(args.results) < 2:
        raise ValueError("compare needs at least two results: the baseline first, then the run(s) to compare with it")
    if not 0 < args.alpha < 1 or args.resamples < 1:
        raise ValueError(f"--alpha must be in (0, 1) and --resamples at least 1 (got {args.alpha}, {args.resamples})")
    runs = [load_run(arg, name) for arg, name in zip(args.results, _names(args.results))]
    for run in runs:
        if run.found > 1:  # the table says so too; csv and json readers see it here
            print(f"relspec compare: {run.label}: read {run.file}, the newest of {run.found} results files", file=sys.stderr)
    comparisons = [compare(runs[0], run, alpha=args.alpha, resamples=args.resamples, seed=args.seed) for run in runs[1:]]
    if args.plot:
        plot(comparisons, Path(args.plot))
    if args.format == "csv":
        text = to_csv(comparisons)
    elif args.format == "json":
        text = to_json(comparisons, args.alpha, args.resamples, args.seed)
    else:
        text = to_markdown(comparisons, args.alpha, args.resamples, args.seed)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def add_cli(sub: Any) -> None:
    """Add ``compare`` to the ``relspec`` command."""
    p = sub.add_parser(
        "compare",
        help="compare lm-eval results (original vs ablated) with significance tests",
        description="Match the tasks and metrics of lm-eval results and test each difference: exact McNemar "
        "(0/1 metrics) or a paired bootstrap on the per-sample results of --log_samples runs, a z-test on the "
        "reported standard errors otherwise. See docs/compare.md.",
    )
    p.add_argument(
        "results",
        nargs="+",
        metavar="RESULTS",
        help="lm_eval --output_path folder (its newest results_*.json) or a results file; the first is the baseline",
    )
    p.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown", help="default: markdown")
    p.add_argument("--out", default=None, metavar="FILE", help="write the table here instead of to stdout")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="also draw a bar chart (needs matplotlib)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=_cmd_compare)
