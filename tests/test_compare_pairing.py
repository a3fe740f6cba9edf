"""``relspec compare`` on hand-built results and samples folders (no lm-eval run): pairing runs of
another ``--limit`` on their shared documents (issue 20), continuous per-sample metrics with a
paired bootstrap, its CI and a Wilcoxon p, and Holm's correction over a group's relations (issue 21)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import random
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from relspec_lmeval.cli import main
from relspec_lmeval.experiments.stats import WILCOXON_EXACT_MAX, bootstrap_mean, holm, wilcoxon_p

STAMP = "2026-01-01T00-00-00.000000"


def doc(i: int) -> dict:
    return {"subject": f"subject {i}", "prompt": f"The CEO of subject {i} is", "golds": [f"object {i}"]}


def write_run(folder: Path, values: dict[str, dict[str, list[float]]], *, docs=doc, groups: dict[str, list[str]] | None = None,
              samples: bool = True) -> Path:  # fmt: skip
    """An lm-eval output folder: task → metric → per-document values (doc_id = position), written as
    lm-eval 0.4.13 writes them (results with means and standard errors, samples with doc, target,
    arguments and the metrics as keys); a group row per group, the mean of its subtasks."""
    out = folder / "model"
    out.mkdir(parents=True)
    results, n_samples, configs = {}, {}, {}
    for task, metrics in values.items():
        n = len(next(iter(metrics.values())))
        results[task] = {"alias": task, "sample_len": n}
        for metric, xs in metrics.items():
            mean = math.fsum(xs) / n
            results[task][f"{metric},none"] = mean
            results[task][f"{metric}_stderr,none"] = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n)
        n_samples[task] = {"original": 100, "effective": n}
        configs[task] = {"task": task, "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics]}
        if samples:
            lines = []
            for i in range(n):
                d = docs(i)
                sample = {"doc_id": i, "doc": d, "target": 0, "arguments": {"gen_args_0": {"arg_0": d["prompt"], "arg_1": " x"}},
                          "resps": [], "filtered_resps": [], "filter": "none", "metrics": list(metrics)}  # fmt: skip
                lines.append(json.dumps(sample | {m: xs[i] for m, xs in metrics.items()}) + "\n")
            (out / f"samples_{task}_{STAMP}.jsonl").write_text("".join(lines))
    for group, tasks in (groups or {}).items():
        metrics = values[tasks[0]]
        results[group] = {"alias": group, **{f"{m},none": sum(results[t][f"{m},none"] for t in tasks) / len(tasks) for m in metrics}}
        results[group] |= {f"{m}_stderr,none": 0.01 for m in metrics}
    data = {"results": results, "group_subtasks": groups or {}, "configs": configs, "n-samples": n_samples,
            "config": {"model": "hf", "model_args": "pretrained=tiny"}}  # fmt: skip
    (out / f"results_{STAMP}.json").write_text(json.dumps(data))
    return folder


def compare_json(capsys, *argv: str) -> dict:
    assert main(["compare", *argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def rows_by_task(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["task"], r["metric"]): r for r in report["comparisons"][0]["rows"]}


def exact_mcnemar(x: list[float], y: list[float]) -> float:
    """Two-sided exact binomial of the discordant pairs, as "outcomes no likelier than the observed"."""
    b = sum(1 for u, v in zip(x, y) if u > v)
    n = b + sum(1 for u, v in zip(x, y) if u < v)
    return sum(math.comb(n, k) for k in range(n + 1) if math.comb(n, k) <= math.comb(n, b)) / 2**n


def binary(seed: int, n: int, p: float) -> list[float]:
    rng = random.Random(seed)
    return [float(rng.random() < p) for _ in range(n)]


# ---- issue 20: another --limit, paired on the shared documents ----------------------------------


@pytest.fixture
def limits(tmp_path) -> tuple[Path, Path, list[float], list[float]]:
    """Baseline: 40 documents, mostly right; the other run: --limit 20, the same first 20 documents, mostly wrong."""
    x, y = binary(1, 40, 0.9), binary(2, 20, 0.15)
    base = write_run(tmp_path / "limit40", {"recall_task": {"acc": x}})
    run = write_run(tmp_path / "limit20", {"recall_task": {"acc": y}})
    return base, run, x, y


def test_another_limit_is_paired_on_the_shared_documents(limits, capsys):
    base, run, x, y = limits
    row = rows_by_task(compare_json(capsys, str(base), str(run)))[("recall_task", "acc")]
    assert row["test"] == "mcnemar" and (row["n"], row["n_baseline"], row["n_run"]) == (20, 40, 20)
    assert row["p"] == pytest.approx(exact_mcnemar(x[:20], y), rel=1e-12)
    assert row["effect"] == pytest.approx(sum(y) / 20 - sum(x[:20]) / 20)  # on the 20 shared documents
    assert row["diff"] == pytest.approx(sum(y) / 20 - sum(x) / 40)  # of the reported numbers
    assert row["ci_low"] <= row["effect"] <= row["ci_high"]
    scipy_stats = pytest.importorskip("scipy.stats")  # a second, independent reference
    b = sum(1 for u, v in zip(x, y) if u > v)
    assert row["p"] == pytest.approx(scipy_stats.binomtest(b, b + sum(1 for u, v in zip(x, y) if u < v)).pvalue, rel=1e-9)


def test_another_limit_shows_n_paired_of_both_in_every_format(limits, capsys):
    base, run, _, _ = limits
    assert main(["compare", str(base), str(run)]) == 0
    markdown = capsys.readouterr().out
    assert "| recall_task | acc | none | 20 (of 40 / 20) |" in markdown
    assert "Sample counts differ (another --limit?): recall_task (40 vs 20)." in markdown and "paired on the documents both have" in markdown
    assert main(["compare", str(base), str(run), "--format", "csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert (row["n"], row["n_baseline"], row["n_run"], row["test"]) == ("20", "40", "20", "mcnemar")


def test_without_samples_the_z_test_is_named_unpaired(tmp_path, limits, capsys):
    _, _, x, y = limits
    base = write_run(tmp_path / "a", {"recall_task": {"acc": x}}, samples=False)
    run = write_run(tmp_path / "b", {"recall_task": {"acc": y}}, samples=False)
    report = compare_json(capsys, str(base), str(run))
    row = rows_by_task(report)[("recall_task", "acc")]
    assert row["test"] == "stderr" and (row["n_baseline"], row["n_run"]) == (40, 20)
    assert report["tests"]["stderr"] == "z (stderr, unpaired)"
    half = 1.959963984540054 * math.hypot(row["baseline_stderr"], row["stderr"])
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((row["diff"] - half, row["diff"] + half))
    assert main(["compare", str(base), str(run)]) == 0
    out = capsys.readouterr().out
    assert "| 40 / 20 |" in out and "- stderr: z-test on lm-eval's standard errors as if the runs were independent: not paired" in out and "(name: z (stderr, unpaired))" in out


def test_same_doc_id_with_other_content_is_not_paired(tmp_path, capsys):
    x, y = binary(3, 30, 0.8), binary(4, 30, 0.3)
    base = write_run(tmp_path / "a", {"recall_task": {"acc": x}})
    run = write_run(tmp_path / "b", {"recall_task": {"acc": y}}, docs=lambda i: doc(100 + i) if i in (4, 17) else doc(i))
    report = compare_json(capsys, str(base), str(run))
    row = rows_by_task(report)[("recall_task", "acc")]
    keep = [i for i in range(30) if i not in (4, 17)]
    assert row["test"] == "mcnemar" and (row["n"], row["n_baseline"], row["n_run"]) == (28, 30, 30)
    assert row["p"] == pytest.approx(exact_mcnemar([x[i] for i in keep], [y[i] for i in keep]), rel=1e-12)
    assert "2 doc_id(s) with another doc/target in the two runs not paired: 4, 17" in row["note"]
    assert report["comparisons"][0]["content_differs"] == ["recall_task: 2 doc_id(s) (4, 17)"]
    assert main(["compare", str(base), str(run)]) == 0
    captured = capsys.readouterr()
    assert "doc_ids whose doc or target differ between the runs, not paired: recall_task: 2 doc_id(s) (4, 17)." in captured.out
    assert captured.err.count("not paired: recall_task: 2 doc_id(s) (4, 17)") == 1


def test_no_shared_document_falls_back_and_says_so(tmp_path, capsys):
    base = write_run(tmp_path / "a", {"recall_task": {"acc": binary(5, 20, 0.5)}})
    run = write_run(tmp_path / "b", {"recall_task": {"acc": binary(6, 20, 0.5)}}, docs=lambda i: doc(1000 + i))
    row = rows_by_task(compare_json(capsys, str(base), str(run)))[("recall_task", "acc")]
    assert row["test"] == "stderr" and "20 doc_id(s) with another doc/target" in row["note"]


# ---- issue 21: continuous per-sample metrics, effects with CIs, Holm over a group's relations --------

RELATIONS = ("company_ceo", "country_capital", "person_father")


def logprob_runs(tmp_path: Path, n: int = 30) -> tuple[Path, Path, dict, dict]:
    """relation_logprob_<r> tasks: logprob, logprob_first (nats) and greedy (0/1) per document, the
    ablated run lower by a relation-dependent shift (0 for the last relation)."""
    rng = np.random.default_rng(0)
    base, run = {}, {}
    for shift, relation in zip((1.0, 0.3, 0.0), RELATIONS):
        logprob = rng.normal(-3, 1, n)
        first = logprob / 2
        greedy = (logprob > -2.5).astype(float)
        task = f"relation_logprob_{relation}"
        base[task] = {"logprob": logprob.tolist(), "logprob_first": first.tolist(), "greedy": greedy.tolist()}
        lowered = logprob - shift + rng.normal(0, 0.5, n) * (shift > 0)
        run[task] = {"logprob": lowered.tolist(), "logprob_first": (lowered / 2).tolist(), "greedy": (lowered > -2.5).astype(float).tolist()}
    groups = {"relation_logprob": [f"relation_logprob_{r}" for r in RELATIONS]}
    return write_run(tmp_path / "original", base, groups=groups), write_run(tmp_path / "ablated", run, groups=groups), base, run


def test_continuous_metrics_get_a_paired_bootstrap_ci_and_a_wilcoxon_p(tmp_path, capsys):
    resamples, seed, n = 400, 5, 30  # one block of draws: the same matrix as below
    a, b, base, run = logprob_runs(tmp_path, n)
    rows = rows_by_task(compare_json(capsys, str(a), str(b), "--resamples", str(resamples), "--seed", str(seed)))
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    for relation in RELATIONS:
        task = f"relation_logprob_{relation}"
        assert rows[(task, "greedy")]["test"] == "mcnemar" and rows[(task, "greedy")]["p_wilcoxon"] is None
        for metric in ("logprob", "logprob_first"):
            row = rows[(task, metric)]
            x, y = np.array(base[task][metric]), np.array(run[task][metric])
            d = y - x
            means = d[draws].mean(axis=1)  # the bootstrap written out
            assert row["test"] == "bootstrap" and row["n"] == n
            assert row["effect"] == pytest.approx(d.mean(), rel=1e-12)
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), rel=1e-12)
            assert row["p"] == (np.count_nonzero(np.abs(means - d.mean()) >= abs(d.mean())) + 1) / (resamples + 1)
            assert row["p_wilcoxon"] == pytest.approx(wilcoxon_p(x, y), rel=1e-12) and 0 < row["p_wilcoxon"] <= 1
        greedy = rows[(task, "greedy")]  # 0/1: the difference of proportions, its CI from the same bootstrap
        dg = np.array(run[task]["greedy"]) - np.array(base[task]["greedy"])
        assert greedy["effect"] == pytest.approx(dg.mean()) and greedy["ci_low"] == pytest.approx(np.quantile(dg[draws].mean(axis=1), 0.025))
    assert rows[("relation_logprob_company_ceo", "logprob")]["p_wilcoxon"] < 1e-5  # a 1-nat drop: found
    assert rows[("relation_logprob_person_father", "logprob")]["p_wilcoxon"] == 1.0  # no change at all


def test_holm_within_each_group_and_metric(tmp_path, capsys):
    a, b, _, _ = logprob_runs(tmp_path)
    report = compare_json(capsys, str(a), str(b))
    rows = rows_by_task(report)
    for metric in ("logprob", "logprob_first", "greedy"):
        family = [rows[(f"relation_logprob_{r}", metric)] for r in RELATIONS]
        assert [r["p_holm"] for r in family] == pytest.approx(holm([r["p"] for r in family]))
        assert all(r["holm_family"] == "relation_logprob" and r["holm_m"] == 3 for r in family)
        assert all(r["significant_holm"] == (r["p_holm"] < 0.05) for r in family)
        group = rows[("relation_logprob", metric)]  # the group's own row: a family of one
        assert group["test"] == "stderr" and group["holm_family"] == "" and group["holm_m"] == 1 and group["p_holm"] == group["p"]
    assert report["comparisons"][0]["holm_families"] == [
        {"group": "relation_logprob", "metric": m, "filter": "none", "tests": 3} for m in ("greedy", "logprob", "logprob_first")
    ]
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "Holm's correction (p (Holm)) within each family: the subtasks of one group, for one metric and filter: relation_logprob greedy,none (3 tests)" in out
    assert "- p (Wilcoxon signed-rank): two-sided" in out and "(name: paired bootstrap)" in out


def test_holm_family_from_the_project_groups_when_run_without_the_group(tmp_path, capsys):
    """Subtasks run one by one (no group_subtasks in the results) still form their group's family."""
    values = {f"relation_recall_{r}": {"acc": binary(i, 20, 0.5)} for i, r in enumerate(("company_ceo", "company_hq"))}
    a = write_run(tmp_path / "a", values)
    b = write_run(tmp_path / "b", {t: {"acc": binary(7 + i, 20, 0.5)} for i, t in enumerate(values)})
    rows = rows_by_task(compare_json(capsys, str(a), str(b)))
    assert {(r["holm_family"], r["holm_m"]) for r in rows.values()} == {("relation_recall", 2)}


def test_holm_by_hand():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([0.2]) == [0.2] and holm([]) == []


# ---- the Wilcoxon signed-rank test against brute force ----------------------------------------------


def midranks(values: list[float]) -> list[Fraction]:
    """Rank = the values below + (the values equal + 1) / 2: mid-ranks, counted, not sorted."""
    return [sum(u < v for u in values) + Fraction(sum(u == v for u in values) + 1, 2) for v in values]


def brute_force_p(d: list[float]) -> float:
    """Every sign assignment of the nonzero differences' ranks (Pratt: zeros ranked, then dropped)."""
    ranks = midranks([abs(v) for v in d])
    nonzero = [r for r, v in zip(ranks, d) if v != 0]
    observed = sum(r for r, v in zip(ranks, d) if v > 0)
    sums = [sum(r for r, s in zip(nonzero, signs) if s) for signs in itertools.product((0, 1), repeat=len(nonzero))]
    lower, upper = sum(s <= observed for s in sums), sum(s >= observed for s in sums)
    return min(1.0, 2 * min(lower, upper) / len(sums))


@pytest.mark.parametrize("seed", range(6))
def test_wilcoxon_exact_is_the_enumeration(seed):
    rng = random.Random(seed)
    n = rng.randrange(3, 13)
    d = [rng.choice((0, 0.5, -0.5, 1, -1, 1.5, 2, -2.5, rng.uniform(-3, 3))) for _ in range(n)]  # ties and zeros
    x = [rng.uniform(-5, 0) for _ in range(n)]
    y = [u + v for u, v in zip(x, d)]
    d = [v - u for u, v in zip(x, y)]  # the differences as floats make them
    assert wilcoxon_p(np.array(x), np.array(y)) == pytest.approx(brute_force_p(d), rel=1e-12)


def test_wilcoxon_normal_approximation_has_tie_and_zero_corrections():
    rng = random.Random(1)
    d = [rng.choice((0, 0, 1, -1, 2, 3, -3, 0.5)) + (rng.random() < 0.5) * 0.25 for _ in range(80)]
    n, n0 = len(d), sum(v == 0 for v in d)
    assert n - n0 > WILCOXON_EXACT_MAX
    ranks = midranks([abs(v) for v in d])
    t_plus = float(sum(r for r, v in zip(ranks, d) if v > 0))
    ties = [sum(abs(u) == abs(v) for u in d) for v in d if v != 0]  # each nonzero value's tie group size, once per member
    tie_term = sum((t**3 - t) / t for t in ties) / 48  # Σ over groups of (t³ − t), counted through its t members
    mean = (n * (n + 1) - n0 * (n0 + 1)) / 4
    var = (n * (n + 1) * (2 * n + 1) - n0 * (n0 + 1) * (2 * n0 + 1)) / 24 - tie_term
    expected = math.erfc(abs(t_plus - mean) / math.sqrt(var) / math.sqrt(2))
    x = np.zeros(n)
    assert wilcoxon_p(x, np.array(d)) == pytest.approx(expected, rel=1e-10)
    scipy_stats = pytest.importorskip("scipy.stats")
    reference = scipy_stats.wilcoxon(d, zero_method="pratt", correction=False, method="approx").pvalue
    assert wilcoxon_p(x, np.array(d)) == pytest.approx(reference, rel=1e-9)


def test_wilcoxon_exact_agrees_with_scipy_without_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    d = np.random.default_rng(2).normal(0.3, 1, 40)
    assert wilcoxon_p(np.zeros(40), d) == pytest.approx(scipy_stats.wilcoxon(d, method="exact").pvalue, rel=1e-9)
    assert wilcoxon_p(np.ones(5), np.ones(5)) == 1.0


def test_bootstrap_ci_brackets_the_effect():
    x, y = np.zeros(50), np.random.default_rng(3).normal(1, 1, 50)
    boot = bootstrap_mean(x, y, resamples=2000, seed=1)
    assert boot.low < boot.observed < boot.high and boot.low > 0 and boot.p == 1 / 2001
