"""``relspec compare``'s outputs: the markdown table, CSV, JSON and the bar chart."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from relspec_lmeval.errors import UsageError
from relspec_lmeval.experiments.compare import TESTS, Comparison, Row, Run

__all__ = ["plot", "to_csv", "to_json", "to_markdown"]


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
