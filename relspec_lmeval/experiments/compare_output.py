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
from relspec_lmeval.experiments.compare import TESTS, WILCOXON, Comparison, Row, Run
from relspec_lmeval.experiments.stats import CI_LEVEL, WILCOXON_EXACT_MAX

__all__ = ["plot", "to_csv", "to_json", "to_markdown"]


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "" if value is None else format(value, spec)


def _yes_no(significant: bool | None) -> str:
    return "n/a" if significant is None else ("yes" if significant else "no")


def _n(r: Row) -> str:
    """The paired documents, and of how many in each run where they are fewer ("20 (of 40 / 20)");
    the two sample counts where an unpaired test compares runs of other sizes ("40 / 20")."""
    if r.test in ("stderr", "n/a"):
        return f"{_fmt(r.n_baseline, 'd')} / {_fmt(r.n_run, 'd')}" if r.n_baseline != r.n_run else _fmt(r.n, "d")
    return _fmt(r.n, "d") if r.n == r.n_baseline == r.n_run else f"{r.n} (of {r.n_baseline} / {r.n_run})"


def _effect(r: Row) -> str:
    return "" if r.effect is None else _fmt(r.effect, "+.4g") + ("" if r.ci_low is None else f" [{r.ci_low:+.4g}, {r.ci_high:+.4g}]")


def _holm_families(c: Comparison) -> list[tuple[str, str, str, int]]:
    """(group, metric, filter, tests) of every Holm family of a group (one row or more)."""
    return sorted({(r.holm_family, r.metric, r.filter, r.holm_m) for r in c.rows if r.holm_family})


def _notes(c: Comparison) -> list[str]:
    """The lines under a comparison's table: unmatched tasks, other sizes, unpaired documents, Holm."""
    a, b = c.baseline.name, c.run.name
    lines = []
    for note, tasks in ((f"Only in {a}", c.only_in_baseline), (f"Only in {b}", c.only_in_run), ("Sample counts differ (another --limit?)", c.unequal_n)):
        if tasks:
            lines += ["", f"{note}: {', '.join(tasks)}."]
    if c.unequal_n:
        lines += ["Where both runs have samples, their rows are paired on the documents both have: n (of the baseline's / the other's)."]
    if c.content_differs:
        lines += ["", "doc_ids whose doc or target differ between the runs, not paired: " + "; ".join(c.content_differs) + "."]
    if c.samples_cut_short:
        lines += ["", "Samples cut short (fewer samples than documents, or lines that do not parse), so no paired test for these tasks:"]
        lines += [f"- {cut.task}: {cut.describe()}" for cut in c.samples_cut_short]
    families = _holm_families(c)
    lines += ["", "Holm's correction (p (Holm)) within each family: the subtasks of one group, for one metric and filter"
              + (": " + "; ".join(f"{g} {m},{f} ({k} test{'s' if k != 1 else ''})" for g, m, f, k in families) if families else " (none here)")
              + "; every other row is a family of one (p (Holm) = p)."]  # fmt: skip
    return lines


def to_markdown(comparisons: list[Comparison], alpha: float, resamples: int, seed: int) -> str:
    runs = [comparisons[0].baseline] + [c.run for c in comparisons]
    lines = ["## Runs", ""]
    for i, r in enumerate(runs):
        newest = f" (the newest of {r.found} results files)" if r.found > 1 else ""
        lines.append(f"- **{r.name}**{' (baseline)' if i == 0 else ''}: `{r.file}`{newest}; model {r.model}; neuron sets: {r.describe_sets()}")
    ci = f"{CI_LEVEL:.0%} CI"
    for c in comparisons:
        a, b = c.baseline.name, c.run.name
        lines += ["", f"## {b} vs {a}", "", f"| task | metric | filter | n | {a} | {b} | diff | test | p | significant | effect [{ci}] | p (Holm) | p ({WILCOXON}) |"]
        lines.append("|---|---|---|---:|---:|---:|---:|---|---:|---|---:|---:|---:|")
        for r in c.rows:
            lines.append(
                f"| {r.task} | {r.metric} | {r.filter} | {_n(r)} | {_fmt(r.baseline)} | {_fmt(r.value)} | "
                f"{_fmt(r.diff, '+.4f')} | {r.test} | {_fmt(r.p, '.3g')} | {_yes_no(r.significant)} | "
                f"{_effect(r)} | {_fmt(r.p_holm, '.3g')} | {_fmt(r.p_wilcoxon, '.3g')} |"
            )
        lines += _notes(c)
    lines += ["", f"p is two-sided; significant: p < {alpha} (uncorrected; compare p (Holm) with {alpha} for the families above). "
              "effect: the difference the test tests (other run − baseline, in the metric's unit), "
              f"on the paired documents; diff: of the reported numbers. Tests:"]  # fmt: skip
    used = {r.test for c in comparisons for r in c.rows}
    for test, (name, what) in TESTS.items():
        if test in used:
            extra = f"; {ci}: percentiles of the same resamples ({resamples} resamples, seed {seed})" if test.startswith("bootstrap") else ""
            extra += f"; {ci}: bootstrap percentiles over the documents ({resamples} resamples, seed {seed})" if test == "mcnemar" else ""
            extra += f"; {ci}: diff ± 1.96·√(se₁² + se₂²)" if test == "stderr" else ""
            lines.append(f"- {test}: {what}{extra} (name: {name})")
    if any(r.p_wilcoxon is not None for c in comparisons for r in c.rows):
        lines.append(f"- p ({WILCOXON}): {_WILCOXON_METHOD}")
    return "\n".join(lines) + "\n"


_WILCOXON_METHOD = (f"two-sided, on the paired differences; zeros ranked then dropped (Pratt), ties mid-ranked; exact up to "
                    f"{WILCOXON_EXACT_MAX} nonzero differences, else the normal approximation (tie- and zero-corrected variance, "
                    "no continuity correction)")  # fmt: skip


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
            "ci_level": CI_LEVEL,
            "tests": {test: name for test, (name, _) in TESTS.items()},
            "wilcoxon": _WILCOXON_METHOD,
            "baseline": _run_json(comparisons[0].baseline),
            "comparisons": [
                {"run": _run_json(c.run), "rows": [asdict(r) for r in c.rows], "only_in_baseline": c.only_in_baseline,
                 "only_in_run": c.only_in_run, "unequal_n": c.unequal_n,
                 "samples_cut_short": [asdict(cut) for cut in c.samples_cut_short], "content_differs": c.content_differs,
                 "holm_families": [{"group": g, "metric": m, "filter": f, "tests": k} for g, m, f, k in _holm_families(c)]}
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
