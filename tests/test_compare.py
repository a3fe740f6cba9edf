"""``relspec compare`` on real lm-eval output: a tiny random Llama evaluated with ``--log_samples``,
once as ``hf`` and once as ``relspec-hf`` with 30% of its neurons off."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_llama
from transformers import AutoConfig

from relspec_lmeval.cli import main
from relspec_lmeval.experiments.stats import bootstrap_p, weighted_bootstrap_p
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.shape import FFN_SITES, ModelShape, model_metadata

# Ours (relation_ppl: weighted perplexities; relation_recall: 0/1, always 0 on a random model)
# and a local multiple-choice group, whose accuracies do vary on a random model.
TASKS = "relation_ppl_company_ceo,relation_recall_company_ceo,cmp_group"
LIMIT = 40

MC_UTILS = '''import math


def process_results(doc, results):
    """acc and the softmax probability of the gold choice: a per-sample mean that is not 0/1."""
    lls = [ll for ll, _ in results]
    top = max(lls)
    probs = [math.exp(ll - top) for ll in lls]
    return {"acc": float(lls.index(top) == doc["gold"]), "p_gold": probs[doc["gold"]] / sum(probs)}
'''


def write_mc_tasks(folder: Path) -> Path:
    """``cmp_group`` = ``cmp_mc`` (lm-eval's own multiple-choice metrics, like arc_easy) + ``cmp_mc_prob``."""
    folder.mkdir(parents=True)
    words = sorted(set("the ceo of apple is father company paris city france europe star guitar piano tennis sport asia mother".split()))
    rng = random.Random(0)
    docs = [
        {"query": " ".join(rng.choices(words, k=5)), "choices": [" ".join(rng.choices(words, k=2)) for _ in range(4)], "gold": rng.randrange(4)}
        for _ in range(LIMIT)
    ]
    (folder / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "cmp_utils.py").write_text(MC_UTILS)
    mc = {
        "task": "cmp_mc",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(folder / "mc.jsonl")}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{query}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "gold",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
    }
    (folder / "cmp_mc.yaml").write_text(json.dumps(mc))  # JSON is valid YAML
    (folder / "cmp_mc_prob.yaml").write_text(
        "include: cmp_mc.yaml\ntask: cmp_mc_prob\nprocess_results: !function cmp_utils.process_results\nmetric_list:\n"
        + "".join(f"  - {{metric: {m}, aggregation: mean, higher_is_better: true}}\n" for m in ("acc", "p_gold"))
    )
    group = {"group": "cmp_group", "task": ["cmp_mc", "cmp_mc_prob"], "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}]}
    (folder / "cmp_group.yaml").write_text(json.dumps(group))
    return folder


def thirty_percent_set(model: Path, out: Path) -> Path:
    """Like scripts/demo.py's random control, but 30% of the neurons: enough to change answers."""
    config = AutoConfig.from_pretrained(model)
    shape = ModelShape.from_config(config)
    keys = [(layer, site, i) for layer in range(shape.num_layers) for site in FFN_SITES for i in range(shape.width(site))]
    pick = torch.randperm(len(keys), generator=torch.Generator().manual_seed(0))[: len(keys) * 3 // 10].tolist()
    meta = {"model": model_metadata(config, str(model)), "method": "random", "k": len(pick), "seed": 0, "relation": None}
    return NeuronSet.from_keys([keys[i] for i in pick], meta).save(out)


def lm_eval_run(model: str, model_args: str, output_path: Path, task_manager, limit: int = LIMIT) -> None:
    """What ``lm_eval --model M --model_args A --tasks TASKS --limit N --log_samples --output_path P``
    does (lm_eval/_cli/run.py): simple_evaluate, then the same EvaluationTracker writes."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(output_path))
    results = simple_evaluate(
        model=model, model_args=model_args, tasks=TASKS.split(","), limit=limit, device="cpu", log_samples=True,
        evaluation_tracker=tracker, task_manager=task_manager,
    )  # fmt: skip
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])


def mlp_heavy_llama(path: Path) -> Path:
    """conftest's tiny Llama with its MLP weights × 3: at the default init the MLPs barely touch the
    residual stream, so switching off neurons would change almost no answer."""
    model = build_tiny_llama(path)
    with torch.no_grad():
        for layer in model.model.layers:
            for linear in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                linear.weight.mul_(3)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def runs(lre_dir, tmp_path_factory) -> dict[str, Path]:
    """The original (``hf``) and the ablated (``relspec-hf``) run, in this process.

    Not the ``lm_eval`` command itself: each command spends ~20 s of CPU indexing lm-eval's ~10k task
    files, which its CLI cannot skip (two runs took 80 s on the shared 2 cores); one TaskManager without
    lm-eval's own tasks serves both runs here. tests/test_install.py runs the command.
    """
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("compare")
    model = mlp_heavy_llama(root / "model")
    neuron_set = thirty_percent_set(model, root / "random-30pct.safetensors")
    patch = pytest.MonkeyPatch()
    for name, value in {"RELSPEC_LRE_DIR": str(lre_dir), "RELSPEC_OFFLINE": "1", "RELSPEC_CACHE_DIR": str(root / "cache")}.items():
        patch.setenv(name, value)
    try:
        tasks = TaskManager(include_defaults=False, include_path=str(write_mc_tasks(root / "tasks")))  # + ours (the hook)
        lm_eval_run("hf", f"pretrained={model}", root / "original", tasks)
        lm_eval_run("relspec-hf", f"pretrained={model},neuron_set={neuron_set}", root / "ablated", tasks)
        lm_eval_run("hf", f"pretrained={model}", root / "limit20", tasks, limit=20)
    finally:
        patch.undo()
    return {"original": root / "original", "ablated": root / "ablated", "limit20": root / "limit20", "set": neuron_set}


def results_file(folder: Path) -> Path:
    (path,) = folder.rglob("results_*.json")
    return path


def compare_json(capsys, *argv: str) -> dict:
    assert main(["compare", *argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def rows_by_key(report: dict, index: int = 0) -> dict[tuple[str, str, str], dict]:
    return {(r["task"], r["metric"], r["filter"]): r for r in report["comparisons"][index]["rows"]}


def samples_file(folder: Path, task: str) -> Path:
    results = results_file(folder)
    return results.with_name(f"samples_{task}_{results.stem.removeprefix('results_')}.jsonl")


def paired(runs: dict[str, Path], task: str, metric: str) -> tuple[list, list]:
    """The per-sample values of both runs, straight from lm-eval's samples files."""
    values = []
    for name in ("original", "ablated"):
        path = samples_file(runs[name], task)
        values.append({s["doc_id"]: s[metric] for s in map(json.loads, path.read_text().splitlines())})
    assert values[0].keys() == values[1].keys() and len(values[0]) == LIMIT
    return [values[0][d] for d in values[0]], [values[1][d] for d in values[0]]


def test_values_tests_and_hashes(runs, capsys):
    report = compare_json(capsys, str(runs["original"]), str(runs["ablated"]))
    original = json.loads(results_file(runs["original"]).read_text())["results"]
    ablated = json.loads(results_file(runs["ablated"]).read_text())["results"]
    rows = rows_by_key(report)
    expected = {(t, *k.split(",")) for t in original for k, v in original[t].items() if "," in k and "_stderr," not in k and isinstance(v, float)}
    assert set(rows) == expected and len(rows) == 10  # acc_lenient beside acc in the recall task
    for (task, metric, filt), row in rows.items():
        assert row["baseline"] == original[task][f"{metric},{filt}"] and row["value"] == ablated[task][f"{metric},{filt}"]
        assert row["diff"] == row["value"] - row["baseline"]
    tests = {key: row["test"] for key, row in rows.items()}
    assert tests[("cmp_mc", "acc", "none")] == tests[("cmp_mc", "acc_norm", "none")] == "mcnemar"
    assert tests[("relation_recall_company_ceo", "acc", "none")] == tests[("relation_recall_company_ceo", "acc_lenient", "none")] == "mcnemar"
    assert tests[("cmp_mc_prob", "p_gold", "none")] == "bootstrap"
    assert tests[("cmp_group", "acc", "none")] == "stderr"  # a group: no samples, a pooled stderr
    assert tests[("relation_ppl_company_ceo", "word_perplexity", "none")] == "bootstrap-weighted"  # stderr N/A
    assert not any(row["diff"] == 0 for key, row in rows.items() if key[0] == "relation_ppl_company_ceo")  # the set acts
    group = rows[("cmp_group", "acc", "none")]
    z = group["diff"] / math.hypot(original["cmp_group"]["acc_stderr,none"], ablated["cmp_group"]["acc_stderr,none"])
    assert group["p"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-12)

    sha256 = NeuronSet.load(runs["set"]).sha256()
    assert report["baseline"]["neuron_sets"] == [] and report["comparisons"][0]["run"]["neuron_sets"][0]["sha256"] == sha256
    assert main(["compare", str(runs["original"]), str(runs["ablated"])]) == 0
    markdown = capsys.readouterr().out
    header = markdown.split("| task |")[0]
    assert "**original** (baseline)" in header and "neuron sets: none" in header and f"sha256 `{sha256}`" in header
    table = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| task")]
    assert len(table) == len(rows)
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        task, metric, filt, n, base, value, diff, test, p, significant = cells[:10]  # then effect [CI], p (Holm), p (Wilcoxon)
        row = rows[(task, metric, filt)]
        assert (base, value, diff, test) == (f"{row['baseline']:.4f}", f"{row['value']:.4f}", f"{row['diff']:+.4f}", row["test"])
        assert significant == {None: "n/a", True: "yes", False: "no"}[row["significant"]]


def test_mcnemar_p_is_the_exact_binomial_of_the_discordant_pairs(runs, capsys):
    rows = rows_by_key(compare_json(capsys, str(runs["original"]), str(runs["ablated"])))
    for task, metric in (("cmp_mc", "acc"), ("cmp_mc", "acc_norm"), ("cmp_mc_prob", "acc")):
        x, y = paired(runs, task, metric)
        b = sum(1 for u, v in zip(x, y) if u > v)
        c = sum(1 for u, v in zip(x, y) if u < v)
        n = b + c
        assert n > 0  # the set changes some answers: the test is not the trivial p = 1
        # Two-sided exact binomial as "outcomes no likelier than the observed one", not the module's doubled tail.
        direct = sum(math.comb(n, k) for k in range(n + 1) if math.comb(n, k) <= math.comb(n, b)) / 2**n
        assert rows[(task, metric, "none")]["p"] == pytest.approx(direct, rel=1e-12)
        assert rows[(task, metric, "none")]["n"] == LIMIT


def test_bootstrap_is_seeded(runs, capsys):
    argv = (str(runs["original"]), str(runs["ablated"]))
    key = ("cmp_mc_prob", "p_gold", "none")
    first, again = (rows_by_key(compare_json(capsys, *argv, "--seed", "7"))[key]["p"] for _ in range(2))
    assert first == again and 0 < first <= 1
    x, y = paired(runs, "cmp_mc_prob", "p_gold")
    assert first == bootstrap_p(np.array(x), np.array(y), seed=7)
    assert bootstrap_p(np.array(x), np.array(x)) == 1.0  # no difference at all


def test_weighted_perplexities_get_a_paired_bootstrap_over_documents(runs, capsys):
    """lm-eval reports no standard error for word/byte perplexity and bits per byte; the samples'
    ``[loglik, length]`` pairs give a paired bootstrap of the corpus-level difference."""
    resamples, seed = 300, 3  # one block of draws: the same matrix as below
    rows = rows_by_key(compare_json(capsys, str(runs["original"]), str(runs["ablated"]), "--resamples", str(resamples), "--seed", str(seed)))
    draws = np.random.default_rng(seed).integers(0, LIMIT, size=(resamples, LIMIT))
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        row = rows[("relation_ppl_company_ceo", metric, "none")]
        assert row["test"] == "bootstrap-weighted" and row["n"] == LIMIT and row["stderr"] is None
        x, y = paired(runs, "relation_ppl_company_ceo", metric)
        assert [n for _, n in x] == [n for _, n in y]  # the same documents, so the same lengths

        def aggregate(pairs: list, metric: str = metric) -> float:  # lm-eval's weighted_perplexity, bits_per_byte
            mean = sum(ll for ll, _ in pairs) / sum(n for _, n in pairs)
            return -mean / math.log(2) if metric == "bits_per_byte" else math.exp(-mean)

        def p_value(x: list, y: list) -> float:  # the bootstrap written out, one resample at a time
            d = aggregate(y) - aggregate(x)
            extreme = sum(abs(aggregate([y[i] for i in idx]) - aggregate([x[i] for i in idx]) - d) >= abs(d) for idx in draws)
            return (extreme + 1) / (resamples + 1)

        assert aggregate(x) == pytest.approx(row["baseline"], rel=1e-12) and aggregate(y) == pytest.approx(row["value"], rel=1e-12)
        assert row["p"] == p_value(x, y)
        # 30% of the neurons off raise every resample's perplexity (p = 1/301): a noisier pair tests the centring too.
        rng = random.Random(0)
        noisy = [[ll + rng.gauss(0, 1), n] for ll, n in x]
        p = weighted_bootstrap_p(np.array(x), np.array(noisy), "bits_per_byte" if metric == "bits_per_byte" else "weighted_perplexity", resamples=resamples, seed=seed)
        assert p == p_value(x, noisy) and 0.1 < p < 1
    again = rows_by_key(compare_json(capsys, str(runs["original"]), str(runs["ablated"]), "--resamples", str(resamples), "--seed", str(seed)))
    assert again == rows
    assert main(["compare", str(runs["original"]), str(runs["ablated"])]) == 0
    assert "- bootstrap-weighted: paired bootstrap" in capsys.readouterr().out


def test_samples_cut_short_are_said_and_not_paired(runs, tmp_path, capsys):
    """A samples file with fewer samples than documents, or with lines that do not parse (an
    interrupted write), gets the standard-error test, and every output says why."""
    cut = tmp_path / "cut"
    shutil.copytree(runs["original"], cut)
    short, garbled = samples_file(cut, "cmp_mc"), samples_file(cut, "cmp_mc_prob")
    lines = short.read_text().splitlines()
    short.write_text("\n".join(lines[:25]) + "\n")  # whole lines only: 25 of 40
    lines = garbled.read_text().splitlines()
    garbled.write_text("\n".join([*lines[:5], "{garbled", *lines[6:39], lines[39][:60]]))  # 38 of 40, 2 bad lines
    notes = {"cmp_mc": f"{short}: 25 of 40 samples read", "cmp_mc_prob": f"{garbled}: 38 of 40 samples read (2 unparsable lines)"}

    assert main(["compare", str(cut), str(runs["ablated"])]) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 2 and all(any(note in line for line in err) for note in notes.values())
    assert all(note in captured.out for note in notes.values())  # markdown, under the table

    report = compare_json(capsys, str(cut), str(runs["ablated"]))
    assert report["comparisons"][0]["samples_cut_short"] == [
        {"task": "cmp_mc", "file": str(short), "read": 25, "expected": 40, "unparsable": 0},
        {"task": "cmp_mc_prob", "file": str(garbled), "read": 38, "expected": 40, "unparsable": 2},
    ]
    rows = rows_by_key(report)
    for (task, _metric, _), row in rows.items():
        if task in notes:
            assert row["test"] == "stderr" and row["n"] == LIMIT and notes[task] in row["note"]
        else:
            assert row["note"] == "" and (row["test"] != "stderr" or task == "cmp_group")  # a group has no samples
    assert main(["compare", str(cut), str(runs["ablated"]), "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["task"] for r in table if r["note"]} == set(notes)


def test_csv_out_file_and_plot(runs, tmp_path, capsys):
    argv = ["compare", str(runs["original"]), str(runs["ablated"]), "--alpha", "0.9"]  # some rows significant: * in the plot
    assert main([*argv, "--format", "csv", "--out", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "t.png")]) == 0
    assert capsys.readouterr().out == ""
    table = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert len(table) == 10 and {r["run_sha256"] for r in table} == {NeuronSet.load(runs["set"]).sha256()}
    assert {r["baseline_sha256"] for r in table} == {"none"}
    assert all(r["significant"] == ("" if r["p"] == "" else str(float(r["p"]) < 0.9)) for r in table)
    assert any(r["significant"] == "True" for r in table)
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_newest_results_file_unless_one_is_named(runs, tmp_path, capsys):
    several = tmp_path / "several"
    shutil.copytree(runs["original"], several)
    newest = results_file(several)
    older = newest.with_name("results_2000-01-01T00-00-00.000000.json")
    shutil.copy(results_file(runs["ablated"]), older)  # an older run in the same folder
    report = compare_json(capsys, str(several), str(runs["ablated"]))
    assert report["baseline"]["results_file"] == str(newest) and report["baseline"]["results_files_found"] == 2
    assert main(["compare", str(several), str(runs["ablated"])]) == 0
    captured = capsys.readouterr()
    assert f"read {newest}, the newest of 2" in captured.err and "(the newest of 2 results files)" in captured.out
    # Named, the older file is read: the ablated run against itself, and without samples (none share its
    # timestamp) every row falls back to the standard errors.
    rows = rows_by_key(compare_json(capsys, str(older), str(runs["ablated"])))
    assert all(r["diff"] == 0 for r in rows.values())
    assert {r["test"] for r in rows.values()} == {"stderr", "n/a"}


def test_more_runs_are_each_compared_with_the_first(runs, capsys):
    report = compare_json(capsys, str(runs["original"]), str(runs["ablated"]), str(runs["original"]))
    assert [c["run"]["label"] for c in report["comparisons"]] == [str(runs["ablated"]), str(runs["original"])]
    assert all(r["diff"] == 0 and r["p"] in (1.0, None) for r in report["comparisons"][1]["rows"])


def test_another_limit_is_flagged_and_paired_on_the_shared_documents(runs, capsys):
    """--limit 40 vs 20: lm-eval's samples of the same first 20 documents (same doc and target) are
    paired; the group (no samples) keeps the unpaired z-test."""
    report = compare_json(capsys, str(runs["original"]), str(runs["limit20"]))
    assert report["comparisons"][0]["unequal_n"] == [
        "cmp_group (80 vs 40)", "cmp_mc (40 vs 20)", "cmp_mc_prob (40 vs 20)",
        "relation_ppl_company_ceo (40 vs 20)", "relation_recall_company_ceo (40 vs 20)",
    ]  # fmt: skip
    assert report["comparisons"][0]["content_differs"] == []  # real samples of the same documents agree
    rows = rows_by_key(report)
    for (task, _, _), row in rows.items():
        if task == "cmp_group":
            assert row["test"] == "stderr"
        else:  # the same model on the shared documents: no difference
            assert row["test"] != "stderr" and (row["n"], row["n_baseline"], row["n_run"]) == (20, LIMIT, 20) and row["effect"] == 0
    assert main(["compare", str(runs["original"]), str(runs["limit20"])]) == 0
    out = capsys.readouterr().out
    assert "Sample counts differ (another --limit?): cmp_group (80 vs 40)" in out and "| 20 (of 40 / 20) |" in out
    # The ablated model against --limit 20 of the original: McNemar on the 20 shared documents.
    rows = rows_by_key(compare_json(capsys, str(runs["ablated"]), str(runs["limit20"])))
    for task, metric in (("cmp_mc", "acc"), ("cmp_mc", "acc_norm"), ("cmp_mc_prob", "acc")):
        x, y = (
            {s["doc_id"]: s[metric] for s in map(json.loads, samples_file(runs[name], task).read_text().splitlines())}
            for name in ("ablated", "limit20")
        )
        b, c = sum(1 for d in y if x[d] > y[d]), sum(1 for d in y if x[d] < y[d])
        direct = sum(math.comb(b + c, k) for k in range(b + c + 1) if math.comb(b + c, k) <= math.comb(b + c, b)) / 2 ** (b + c)
        row = rows[(task, metric, "none")]
        assert row["test"] == "mcnemar" and row["n"] == 20 and row["p"] == pytest.approx(direct, rel=1e-12)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such file or folder"),
        ("empty", "no lm-eval results_*.json"),
        ("garbage", "not a readable results JSON"),
        ("renamed", "no task in common"),
        ("one", "at least two results"),
        ("alpha", "--alpha must be in (0, 1)"),
        ("no_matplotlib", "needs matplotlib"),
        ("edited_samples", "do not reproduce"),
    ],
)
def test_errors_are_one_line_exit_2(case, message, runs, tmp_path, capsys, monkeypatch):
    original = str(runs["original"])
    bad = tmp_path / case
    if case == "empty":
        bad.mkdir()
    elif case == "garbage":
        bad.mkdir()
        (bad / "results_2026-01-01T00-00-00.0.json").write_text('{"results": {')
    elif case == "renamed":  # a real results file whose tasks all have other names
        data = json.loads(results_file(runs["ablated"]).read_text())
        data["results"] = {f"{task}_v2": value for task, value in data["results"].items()}
        bad.write_text(json.dumps(data))
    elif case == "edited_samples":  # perplexity samples that are not the ones the results were computed from
        shutil.copytree(runs["original"], bad)
        path = samples_file(bad, "relation_ppl_company_ceo")
        samples = [json.loads(line) for line in path.read_text().splitlines()]
        samples[0]["word_perplexity"][0] -= 1.0
        path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    argv = {
        "one": [original],
        "alpha": [original, original, "--alpha", "5"],
        "no_matplotlib": [original, original, "--plot", str(tmp_path / "p.png")],
    }.get(case, [original, str(bad)])
    if case == "no_matplotlib":
        monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as when not installed
    assert main(["compare", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("relspec: error:") and message in err and "\n" not in err
    if case not in ("one", "alpha", "no_matplotlib"):
        assert str(bad) in err
    if case == "renamed":
        assert "close names:" in err and "cmp_group ~ cmp_group_v2" in err
