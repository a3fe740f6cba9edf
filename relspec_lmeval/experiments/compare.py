"""``relspec compare``: lm-eval results side by side, with a significance test per metric.

Reads lm-eval ``--output_path`` folders (or results files), matches tasks, metrics and
filters, pairs the documents both runs have (``experiments.pairing``) and tests each
difference: exact McNemar on paired 0/1 samples, a paired bootstrap of the mean difference
(and a Wilcoxon signed-rank p) on other per-sample metrics, a paired bootstrap of the
corpus-level difference on weighted perplexities and bits per byte (all need
``--log_samples``), an unpaired z-test on lm-eval's standard errors otherwise. Every row gets
the effect with a 95% CI, and Holm's correction within the subtasks of a group. See docs/compare.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from relspec_lmeval.data.tasks import GROUPS
from relspec_lmeval.errors import DataError, UsageError
from relspec_lmeval.experiments.pairing import (
    CutShort,
    SamplesFile,
    Shared,
    cut_short,
    paired_docs,
    per_sample,
    read_samples,
    shared,
    weighted_pairs,
)
from relspec_lmeval.experiments.stats import bootstrap_mean, holm, mcnemar_p, stderr_ci, stderr_p, weighted_bootstrap, wilcoxon_p
from relspec_lmeval.util.suggest import closest

__all__ = ["TESTS", "WILCOXON", "Comparison", "CutShort", "Row", "Run", "compare", "load_run"]

# test key (the `test` column's values) → (its name, what it does)
TESTS = {
    "mcnemar": ("McNemar exact", "exact McNemar test on the 0/1 samples of the paired documents"),
    "bootstrap": ("paired bootstrap", "paired bootstrap of the mean difference over the paired documents"),
    "bootstrap-weighted": ("paired bootstrap, corpus-level", "paired bootstrap of the corpus-level difference: documents "
                           "resampled jointly, lm-eval's weighted aggregate recomputed on each resample"),
    "stderr": ("z (stderr, unpaired)", "z-test on lm-eval's standard errors as if the runs were independent: not paired; "
               "conservative only where the runs are positively correlated on the same documents, and with other "
               "documents it compares other populations"),
    "n/a": ("none", "no per-sample means and no standard errors to test with"),
}  # fmt: skip
WILCOXON = "Wilcoxon signed-rank"

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
    group_subtasks: dict[str, list[str]] = field(default_factory=dict)  # lm-eval's group → its subtasks

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
    n: int | None  # paired documents, else the baseline's sample count
    baseline: float
    value: float
    diff: float  # value - baseline
    baseline_stderr: float | None
    stderr: float | None
    test: str  # a key of TESTS
    p: float | None  # two-sided
    significant: bool | None
    note: str = ""  # why a paired test was not possible or left documents out (samples cut short, other content)
    n_baseline: int | None = None  # the baseline's documents (its samples of this metric, else its sample count)
    n_run: int | None = None  # the same for the other run
    effect: float | None = None  # the difference the test tests: on the paired documents, else diff
    ci_low: float | None = None  # its 95% CI: paired bootstrap percentiles, or the z-test's Wald interval
    ci_high: float | None = None
    p_wilcoxon: float | None = None  # Wilcoxon signed-rank p, for per-sample metrics that are not 0/1
    p_holm: float | None = None  # p after Holm's correction within holm_family
    significant_holm: bool | None = None
    holm_family: str = ""  # the group whose subtasks (same metric and filter) form the family; "" for a family of one
    holm_m: int | None = None  # tests in that family


@dataclass(frozen=True)
class Comparison:
    baseline: Run
    run: Run
    rows: list[Row]
    only_in_baseline: list[str]
    only_in_run: list[str]
    unequal_n: list[str]  # "task (n vs n)": another --limit; with samples, paired on the documents both have
    samples_cut_short: list[CutShort]
    content_differs: list[str] = field(default_factory=list)  # "task: N doc_id(s) (…)" not paired: another doc/target


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
        group_subtasks={g: list(t) for g, t in (data.get("group_subtasks") or {}).items() if isinstance(t, list)},
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


def _task_samples(run: Run, task: str) -> tuple[SamplesFile, CutShort | None]:
    """The task's samples, or none and why when the file holds fewer than the run evaluated.

    A paired test on part of a run's documents would not test its reported number, so a file
    cut short gets none; the caller says so instead of falling back to the standard errors silently.
    """
    path = run.samples_file(task)
    if path is None:
        return SamplesFile(), None
    samples = read_samples(path)
    filters = sorted({filt for _, filt in _metrics(run.results[task])})
    cut = cut_short(task, path, samples, filters, run.sample_count(task))
    return (samples, None) if cut is None else (SamplesFile(), cut)


def _few(names: list[str], k: int = 5) -> str:
    """A list that stays one readable line with mmlu's 57 subtasks too."""
    return (", ".join(names[:k]) + (f", … ({len(names) - k} more)" if len(names) > k else "")) or "none"


def _fields(test: str, docs: list[Any], per_a: dict[Any, Any], per_b: dict[Any, Any], p: float, boot: Any) -> dict[str, Any]:
    """A paired test's Row fields: the paired documents of each run's, p, the effect and its CI."""
    return {"test": test, "n": len(docs), "n_baseline": len(per_a), "n_run": len(per_b), "p": p,
            "effect": boot.observed, "ci_low": boot.low, "ci_high": boot.high}  # fmt: skip


def _paired_test(
    baseline: Run, run: Run, task: str, samples: tuple[SamplesFile, SamplesFile], keys: frozenset, metric: str, filt: str,
    reported: tuple[float, float], resamples: int, seed: int,
) -> dict[str, Any] | None:  # fmt: skip
    """The Row fields of the paired test on the documents both runs have (``keys``), else None."""
    (samples_a, samples_b), (base, value) = samples, reported
    aggregation = baseline.weighted_aggregation(task, metric)
    if aggregation is not None and aggregation == run.weighted_aggregation(task, metric):
        pairs_a = weighted_pairs(samples_a, metric, filt, aggregation, base, (baseline.samples_file(task), baseline.file))
        pairs_b = weighted_pairs(samples_b, metric, filt, aggregation, value, (run.samples_file(task), run.file))
        if pairs_a is None or pairs_b is None or not (docs := paired_docs(pairs_a, pairs_b, keys, filt)):
            return None
        x, y = np.array([pairs_a[d] for d in docs]), np.array([pairs_b[d] for d in docs])
        boot = weighted_bootstrap(x, y, aggregation, resamples=resamples, seed=seed)
        return _fields("bootstrap-weighted", docs, pairs_a, pairs_b, boot.p, boot)
    per_a, per_b = per_sample(samples_a, metric, filt, base), per_sample(samples_b, metric, filt, value)
    if per_a is None or per_b is None or not (docs := paired_docs(per_a, per_b, keys, filt)):
        return None
    x, y = np.array([per_a[d] for d in docs]), np.array([per_b[d] for d in docs])
    boot = bootstrap_mean(x, y, resamples=resamples, seed=seed)  # the effect's CI for 0/1 metrics too
    if np.isin(x, (0, 1)).all() and np.isin(y, (0, 1)).all():
        return _fields("mcnemar", docs, per_a, per_b, mcnemar_p(x, y), boot)
    return _fields("bootstrap", docs, per_a, per_b, boot.p, boot) | {"p_wilcoxon": wilcoxon_p(x, y)}


def _unpaired_test(baseline: Run, run: Run, task: str, diff: float, se_a: float | None, se_b: float | None) -> dict[str, Any]:
    """The Row fields of the z-test on the standard errors (``n/a`` without them)."""
    p, ci = stderr_p(diff, se_a, se_b), stderr_ci(diff, se_a, se_b)
    n_a, n_b = baseline.sample_count(task), run.sample_count(task)
    return {"test": "n/a" if p is None else "stderr", "n": n_a, "n_baseline": n_a, "n_run": n_b, "p": p, "effect": diff,
            "ci_low": None if ci is None else ci[0], "ci_high": None if ci is None else ci[1]}  # fmt: skip


def _note(cuts: list[CutShort], both: Shared, samples: tuple[SamplesFile, SamplesFile]) -> str:
    """Why a task's rows are not paired, or paired on fewer documents than both runs share by doc_id."""
    notes = [f"samples cut short: {c.describe()}" for c in cuts]
    if both.differing:
        notes.append(f"{len(both.differing)} doc_id(s) with another doc/target in the two runs not paired: {_few([str(d) for d in both.differing])}")
    elif all(s.values for s in samples) and not both.keys:
        notes.append("the samples files share no document: not paired")
    return "; ".join(notes)


def _families(baseline: Run, run: Run) -> dict[str, str]:
    """task → the group it is a subtask of: lm-eval's ``group_subtasks`` (the baseline's first),
    else the project's groups (``data.tasks``) for subtasks run without their group."""
    parent = {}
    for source in (run.group_subtasks, baseline.group_subtasks):  # the baseline's last, so it wins
        parent |= {task: group for group, tasks in sorted(source.items()) for task in tasks}
    for group in GROUPS:
        for task in group.tasks():
            parent.setdefault(task, group.name)
    return parent


def _with_holm(rows: list[Row], parent: dict[str, str], alpha: float) -> list[Row]:
    """Holm's correction within each family: the rows of one group's subtasks for one metric and
    filter; a row outside any group is a family of one (p_holm = p)."""
    families: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        if r.p is not None:
            group = parent.get(r.task)
            families.setdefault((group, r.metric, r.filter) if group else (None, r.task, r.metric, r.filter), []).append(i)
    out = list(rows)
    for family, members in families.items():
        for i, q in zip(members, holm([rows[i].p for i in members])):
            out[i] = replace(rows[i], p_holm=q, significant_holm=q < alpha, holm_family=family[0] or "", holm_m=len(members))
    return out


def compare(baseline: Run, run: Run, *, alpha: float = 0.05, resamples: int = 10_000, seed: int = 0) -> Comparison:
    common = [t for t in baseline.results if t in run.results]
    if not common:
        hints = [f"{t} ~ {m}" for t in sorted(baseline.results) if (m := closest(t, run.results))]
        detail = f"close names: {_few(hints)}" if hints else f"tasks: {_few(sorted(run.results))} vs {_few(sorted(baseline.results))}"
        raise DataError(f"{run.file}: no task in common with {baseline.file}; {detail}")
    rows, unequal_n, cuts_all, differs = [], [], [], []
    for task in sorted(common):
        a, b = _metrics(baseline.results[task]), _metrics(run.results[task])
        (samples_a, cut_a), (samples_b, cut_b) = _task_samples(baseline, task), _task_samples(run, task)
        cuts = [c for c in (cut_a, cut_b) if c is not None]
        cuts_all += cuts
        both = shared(samples_a, samples_b)
        if both.differing:
            differs.append(f"{task}: {len(both.differing)} doc_id(s) ({_few([str(d) for d in both.differing])})")
        note = _note(cuts, both, (samples_a, samples_b))
        n_task, n_run = baseline.sample_count(task), run.sample_count(task)
        if n_task != n_run:
            unequal_n.append(f"{task} ({n_task} vs {n_run})")
        for metric, filt in sorted(a.keys() & b.keys()):
            base, value = a[(metric, filt)], b[(metric, filt)]
            se_a = _number(baseline.results[task].get(f"{metric}_stderr,{filt}"))
            se_b = _number(run.results[task].get(f"{metric}_stderr,{filt}"))
            test = _paired_test(baseline, run, task, (samples_a, samples_b), both.keys, metric, filt, (base, value), resamples, seed)
            test = test or _unpaired_test(baseline, run, task, value - base, se_a, se_b)
            significant = None if test["p"] is None else test["p"] < alpha
            rows.append(Row(task, metric, filt, baseline=base, value=value, diff=value - base, baseline_stderr=se_a, stderr=se_b,
                            significant=significant, note=note, **test))  # fmt: skip
    return Comparison(
        baseline,
        run,
        _with_holm(rows, _families(baseline, run), alpha),
        only_in_baseline=sorted(set(baseline.results) - set(common)),
        only_in_run=sorted(set(run.results) - set(common)),
        unequal_n=unequal_n,
        samples_cut_short=cuts_all,
        content_differs=differs,
    )
