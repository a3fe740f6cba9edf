"""``relspec reproduce`` on a tiny random Llama: plan, resumability, numbers, report, errors.

A random model recalls nothing, so the LRE-format folder is crafted: person_father's P^eva
objects are what the model itself generates (so its original accuracy is above 0), while
person_mother keeps objects the model can never generate (accuracy 0: its drops are n/a).
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from pathlib import Path

import pytest
from test_identify import write_lre_folder

from relspec_lmeval.cli import main as cli_main
from relspec_lmeval.data.tasks import SUITES
from relspec_lmeval.experiments import runner as rp
from relspec_lmeval.experiments.study import BASELINE, Condition, Measurement, SetStats, Study
from relspec_lmeval.experiments.tables import cumulativity_rows, intra_rows, matrix_rows
from relspec_lmeval.identify.config import IdentifyConfig
from relspec_lmeval.identify.pipeline import identify
from relspec_lmeval.sets.neuron_set import NeuronSet

RELATIONS = "person_father,person_mother"
SUITE = SUITES["lre"]


def _data_env(mp: pytest.MonkeyPatch, folder: Path, cache: Path) -> None:
    mp.setenv("RELSPEC_LRE_DIR", str(folder))
    mp.setenv("RELSPEC_OFFLINE", "1")
    mp.setenv("RELSPEC_CACHE_DIR", str(cache))
    mp.delenv("RELSPEC_LRE_URL", raising=False)


def _crafted_lre(model: Path, root: Path) -> Path:
    """person_father's P^eva objects := the model's own greedy answers, as lm-eval generates them."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    plain = write_lre_folder(root / "plain")
    with pytest.MonkeyPatch.context() as mp:
        _data_env(mp, plain, root / "cache")
        out = simple_evaluate(model="relspec-hf", model_args=f"pretrained={model}", tasks=["relation_recall_person_father"],
                              task_manager=TaskManager(include_defaults=False), device="cpu", log_samples=True)
    answers = {("person_father", s["doc"]["subject"]): s["filtered_resps"][0].strip() for s in out["samples"]["relation_recall_person_father"]}
    assert any(answers.values()), "the tiny model generated nothing printable"
    return write_lre_folder(root / "lre", {key: text for key, text in answers.items() if text})


def _cli(args: list[str]) -> list[str]:
    return ["reproduce", *args, "--quiet"]


@pytest.fixture(scope="module")
def study(tiny_llama_dir, tmp_path_factory):
    """One reproduce run and one rerun, with every evaluation and model load counted."""
    root = tmp_path_factory.mktemp("reproduce")
    data = _crafted_lre(tiny_llama_dir, root)
    identify(IdentifyConfig(model=str(tiny_llama_dir), out=str(root / "sets"), data=str(data), relations=RELATIONS, k=25,
                            filter=False, batch_size=8, command="test", progress=False, print_table=False))
    args = ["--model", str(tiny_llama_dir), "--neuron-sets", str(root / "sets"), "--suite", "lre", "--out", str(root / "out"),
            "--relations", RELATIONS, "--seeds", "2", "--ks", "10,50", "--limit", "3", "--det-limit", "2", "--device", "cpu",
            "--batch-size", "8"]
    import lm_eval

    from relspec_lmeval.sets import neuron_set as ns_module

    calls = {"evaluate": [], "load": []}
    reads = {"set_load": [], "set_hash": []}  # paths of the set files read and hashed while the runs ran
    evaluate, load, set_load, set_hash = lm_eval.simple_evaluate, rp.load_lm, rp.NeuronSet.load, ns_module.file_sha256
    with pytest.MonkeyPatch.context() as mp:
        _data_env(mp, data, root / "cache")
        mp.setattr(lm_eval, "simple_evaluate", lambda **kw: calls["evaluate"].append(kw["tasks"]) or evaluate(**kw))
        mp.setattr(rp, "load_lm", lambda cfg: calls["load"].append(cfg) or load(cfg))
        mp.setattr(rp.NeuronSet, "load", classmethod(lambda cls, p: reads["set_load"].append(str(p)) or set_load(p)))
        mp.setattr(ns_module, "file_sha256", lambda p: reads["set_hash"].append(str(p)) or set_hash(p))
        run_plan, during_runs = rp.run_plan, {}

        def counted_run_plan(plan, inp):
            for v in reads.values():
                v.clear()
            ran = run_plan(plan, inp)
            if not during_runs:  # the first invocation's (the rerun runs nothing)
                during_runs.update({k: list(v) for k, v in reads.items()})
            return ran

        mp.setattr(rp, "run_plan", counted_run_plan)
        assert cli_main(_cli(args)) == 0
        first = {k: len(v) for k, v in calls.items()}
        assert cli_main(_cli(args)) == 0
        second = {k: len(v) - first[k] for k, v in calls.items()}
    return {"root": root, "out": root / "out", "data": data, "args": args, "first": first, "second": second,
            "during_runs": during_runs}


def _plan(study) -> list[dict]:
    return json.loads((study["out"] / "plan.json").read_text())


def _record(study, run_id: str) -> dict:
    return json.loads((study["out"] / "runs" / f"{run_id}.json").read_text())


def _run(study, condition: str, limit: int = 3) -> dict:
    (run,) = [r for r in _plan(study) if condition in r["conditions"] and r["limit"] == limit]
    return _record(study, run["id"])


def _csv(study, name: str) -> list[dict]:
    with (study["out"] / "tables" / f"{name}.csv").open() as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- plan and resume


def test_plan(study):
    plan = _plan(study)
    kinds = [r["conditions"][0].split("-")[0] for r in plan]
    # P^det has its own limit, so every condition evaluated on it has two runs; both sets have
    # k = 25, so their uniform random controls are one file per seed and share its runs; the
    # site-matched controls are each relation's own (2 relations × 2 seeds × 2 limits)
    assert kinds.count("baseline") == 2 and kinds.count("own") == 4 and kinds.count("random") == 4
    assert kinds.count("random_site") == 8 and kinds.count("topk") == 4 and kinds.count("ranks") == 2 and len(plan) == 24
    shared = [r for r in plan if r["conditions"][0].startswith("random-")]
    assert all(r["conditions"] == [f"random-{rel}-seed{r['conditions'][0][-1]}" for rel in RELATIONS.split(",")] for r in shared)
    assert sorted({Path(r["sets"][0]).name for r in shared}) == ["k25-seed0.safetensors", "k25-seed1.safetensors"]
    eva = next(r for r in shared if r["limit"] == 3)
    assert sorted(eva["tasks"]) == sorted(f"relation_{g}_{rel}" for g in ("recall", "choice", "logprob") for rel in RELATIONS.split(","))
    site = [r for r in plan if r["conditions"] == ["random_site-person_father-seed1"]]
    assert sorted(r["limit"] for r in site) == [2, 3] and Path(site[0]["sets"][0]).name == "person_father-site-seed1.safetensors"
    assert sorted(next(r for r in site if r["limit"] == 2)["tasks"]) == ["relation_logprob_det_person_father", "relation_recall_det_person_father"]
    own = [r for r in plan if r["conditions"] == ["own-person_father"]]
    eva_part = next(r for r in own if r["limit"] == 3)
    langs = [f"relation_{kind}_{lang}_person_father" for kind in ("recall", "logprob") for lang in SUITE.languages]
    assert set(eva_part["tasks"]) == {
        "relation_recall_person_father", "relation_recall_person_mother", "relation_recall_t2_person_father",
        "relation_recall_t2_person_mother", "relation_ppl_person_father", *langs,
        "relation_choice_person_father",  # the multiple-choice version, of the own relation
        "relation_logprob_person_father", "relation_logprob_person_mother",  # the gold's log-probability: Fig. 4 in nats
        "relation_logprob_t2_person_father"}
    assert next(r for r in own if r["limit"] == 2)["tasks"] == ["relation_recall_det_person_father", "relation_logprob_det_person_father"]
    ranks = next(r for r in plan if r["conditions"] == ["ranks-person_mother-k40-skip10"])
    assert ranks["tasks"] == ["relation_recall_person_mother"]
    assert NeuronSet.load(ranks["sets"][0]).metadata["skip"] == 10  # made from the scores, under OUT/sets
    assert Path(ranks["sets"][0]).is_relative_to(study["out"] / "sets")
    assert len({r["id"] for r in plan}) == len(plan)


def test_rerun_does_no_evaluations(study):
    assert study["first"] == {"evaluate": 24, "load": 1}
    assert study["second"] == {"evaluate": 0, "load": 0}
    report = (study["out"] / "report.md").read_text()
    assert "this invocation found every run stored and ran none" in report


def test_each_set_is_read_and_hashed_once_per_plan(study):
    used = {p for run in _plan(study) for p in run["sets"]}
    loads, hashes = study["during_runs"]["set_load"], study["during_runs"]["set_hash"]
    assert sorted(loads) == sorted(used) and sorted(hashes) == sorted(used)  # each once, though runs share sets


def test_topk_equal_to_the_set_shares_its_run(study):
    """k = the set's own size: the sweep reuses the own run; limit == det-limit: one run per set."""
    cfg = rp.ReproduceConfig(model=str(study["args"][1]), neuron_sets=str(study["root"] / "sets"), suite="lre",
                             out=str(study["out"]), relations=RELATIONS, seeds=1, ks=[25], limit=3, det_limit=3)
    with pytest.MonkeyPatch.context() as mp:
        _data_env(mp, study["data"], study["root"] / "cache")
        inp = rp.prepare(cfg)
    assert inp.derived[Condition("topk", "person_father", k=25)] == inp.main["person_father"]
    assert inp.ks == [25] and not any(c.kind == "ranks" for c in inp.derived)
    plan = rp.build_plan(inp)
    assert len(plan) == 1 + 2 + 1 + 2  # baseline, own (also top-25), one uniform seed shared by both relations, one site-matched each
    own = next(r for r in plan if r.conditions[0] == Condition("own", "person_father"))
    assert own.conditions == (Condition("own", "person_father"), Condition("topk", "person_father", k=25))
    assert "relation_recall_det_person_father" in own.tasks and own.limit == 3


# ---------------------------------------------------------------------------- stored results


def test_each_record_names_the_sets_of_its_run(study):
    for run in _plan(study):
        record = _record(study, run["id"])
        ours = record["relspec_reproduce"]
        assert [s["sha256"] for s in record["config"]["relspec"]["sets"]] == [s["sha256"] for s in ours["sets"]]
        assert [s["path"] for s in record["config"]["relspec"]["sets"]] == run["sets"] == [s["path"] for s in ours["sets"]]
        assert sorted(record["results"]) == sorted(run["tasks"]) and record["config"]["limit"] == run["limit"]
        assert ours["lm_eval_command"].startswith("lm_eval --model relspec-hf --model_args pretrained=")
        assert "samples" not in record


def test_reused_model_equals_a_fresh_one(study, tiny_llama_dir):
    """Swapping sets on one loaded model gives what a fresh ``--model relspec-hf`` run gives."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    stored = _run(study, "own-person_father")
    ours = stored["relspec_reproduce"]
    tasks = ["relation_recall_person_father", "relation_ppl_person_father"]
    with pytest.MonkeyPatch.context() as mp:
        _data_env(mp, study["data"], study["root"] / "cache")
        fresh = simple_evaluate(model="relspec-hf", model_args=f"pretrained={tiny_llama_dir},neuron_set={ours['sets'][0]['path']}",
                                tasks=tasks, task_manager=TaskManager(include_defaults=False), device="cpu", limit=3, batch_size=8)
    for task in tasks:
        assert {k: v for k, v in fresh["results"][task].items() if "," in k} == {k: v for k, v in stored["results"][task].items() if "," in k}


def test_set_neuron_sets_restores_the_model(tiny_llama_dir, study):
    import torch

    from relspec_lmeval.lm.hflm import RelspecHFLM

    lm = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    father = str(study["root"] / "sets" / "person_father.safetensors")
    lm.set_neuron_sets(father)
    assert lm.relspec_info()["sets"][0]["path"] == father and lm.relspec_info()["applied_with"] == ["weights"]
    fresh = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=father)
    assert all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in lm.model.state_dict().items())
    lm.set_neuron_sets(None)
    assert lm.relspec_info()["sets"] == [] and lm.relspec_cache_salt is None
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())


# ---------------------------------------------------------------------------- tables and report


def test_tables_equal_the_stored_results(study):
    base, base_det = _run(study, "baseline")["results"], _run(study, "baseline", limit=2)["results"]
    father = _run(study, "own-person_father")["results"]
    intra = {(r["split"], r["relation"]): r for r in _csv(study, "fig3_intra")}
    assert float(intra[("P^eva", "person_father")]["original"]) == base["relation_recall_person_father"]["acc,none"] > 0
    assert float(intra[("P^det", "person_father")]["original"]) == base_det["relation_recall_det_person_father"]["acc,none"]
    assert float(intra[("P^eva", "person_father")]["own"]) == father["relation_recall_person_father"]["acc,none"]
    seeds = [_run(study, f"random-person_father-seed{s}")["results"]["relation_recall_person_father"]["acc,none"] for s in (0, 1)]
    assert float(intra[("P^eva", "person_father")]["random_mean"]) == pytest.approx(sum(seeds) / 2)
    ppl = {r["relation"]: r for r in _csv(study, "table2_perplexity")}
    assert float(ppl["person_father"]["original"]) == base["relation_ppl_person_father"]["word_perplexity,none"]
    assert float(ppl["person_father"]["ablated"]) == father["relation_ppl_person_father"]["word_perplexity,none"]
    accs = {r["deactivated"]: r for r in _csv(study, "fig4_accuracy_matrix")}
    assert float(accs["person_father"]["person_mother"]) == father["relation_recall_person_mother"]["acc,none"]
    drops = {r["deactivated"]: r for r in _csv(study, "fig4_drop_matrix")}
    original, ablated = base["relation_recall_person_father"]["acc,none"], father["relation_recall_person_father"]["acc,none"]
    assert float(drops["person_father"]["person_father"]) == pytest.approx((original - ablated) / original)
    sweep = {(r["k"], r["relation"]): r for r in _csv(study, "fig5_k_sweep")}
    top10 = _run(study, "topk-person_father-k10")["results"]
    assert float(sweep[("10", "person_father")]["own_acc"]) == top10["relation_recall_person_father"]["acc,none"]
    assert float(sweep[("10", "person_father")]["others_acc"]) == top10["relation_recall_person_mother"]["acc,none"]


def test_zero_original_accuracy_is_na(study):
    base = _run(study, "baseline")["results"]
    assert base["relation_recall_person_mother"]["acc,none"] == 0
    drops = {r["deactivated"]: r for r in _csv(study, "fig4_drop_matrix")}
    assert drops["person_father"]["person_mother"] == drops["person_mother"]["person_mother"] == "n/a"
    assert json.loads((study["out"] / "tables" / "fig4_drop_matrix.json").read_text())[1]["person_mother"] is None
    report = (study["out"] / "report.md").read_text()
    assert "original accuracy 0 for person_mother" in report
    # a model that answers (almost) nothing: the report says its drops are noise
    assert "**Caution:** the original model answers fewer than 10 P^eva documents correctly" in report


def test_report_and_figures(study):
    report = (study["out"] / "report.md").read_text()
    links = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(links) == 10 and all((study["out"] / link).is_file() for link in links)  # 7, and Fig. 3, 4, 5 in log-prob
    assert {p.name for p in (study["out"] / "figures").glob("*.png")} == {Path(link).name for link in links}
    assert "Run time of the whole plan" in report and "24 lm-eval runs" in report
    for heading in ("Verdicts", "Fig. 1", "Fig. 2", "Fig. 3", "Fig. 4", "Fig. 5", "Table 3", "Table 2", "Fig. 7", "Fig. 8"):
        assert f"## {heading}" in report
    assert report.index("## Verdicts") < report.index("## Fig. 1")  # the verdict table first


def test_verdicts_on_a_model_without_power(study):
    """3 documents per task: no metric has power, so every relation-level finding cannot tell, and says why."""
    rows = {r["finding"]: r for r in _csv(study, "verdicts")}
    assert len(rows) == 11
    own = next(r for f, r in rows.items() if f.startswith("2. own set's drop"))
    assert own["verdict"] == "cannot tell" and "needs ≥ 10 correct P^eva documents in ≥ 3 relations" in own["needed"]
    assert "logprob: needs ≥ 10 scored P^eva documents in ≥ 3 relations; this model has 0" in own["needed"]
    intra = [r for r in _csv(study, "fig3_intra_ci") if r["metric"] == "logprob" and r["split"] == "P^eva"]
    assert {r["relation"] for r in intra} == set(RELATIONS.split(",")) and all(r["documents"] == "3" for r in intra)
    assert all(r["random_seeds"] == "2" and r["site_seeds"] == "2" for r in intra)


def test_per_sample_keeps_every_metric(study):
    ours = _run(study, "own-person_father")["relspec_reproduce"]["per_sample"]
    assert set(ours["relation_recall_person_father"]) == {"acc", "acc_lenient"}
    assert set(ours["relation_logprob_person_father"]) == {"logprob", "logprob_first", "greedy"}
    assert set(ours["relation_choice_person_father"]) == {"acc", "acc_norm"}
    assert all(len(pair) == 2 for pair in ours["relation_ppl_person_father"]["word_perplexity"])  # [loglik, words]
    assert all(len(v) == 3 for task in ours.values() for v in task.values())


def test_reads_run_files_of_the_previous_version(study, tmp_path):
    """Run files whose per_sample is a plain 0/1 list of acc (the previous version) still make a report."""
    out = tmp_path / "old"
    shutil.copytree(study["out"], out, ignore=shutil.ignore_patterns("tables", "figures", "report.md"))
    for path in (out / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        per = record["relspec_reproduce"]["per_sample"]
        record["relspec_reproduce"]["per_sample"] = {t: [int(v) for v in m["acc"]] for t, m in per.items() if "acc" in m}
        path.write_text(json.dumps(record))
    args = list(study["args"])
    args[args.index("--out") + 1] = str(out)
    with pytest.MonkeyPatch.context() as mp:
        _data_env(mp, study["data"], study["root"] / "cache")
        mp.setattr(rp, "load_lm", lambda cfg: pytest.fail("every run is stored: no model"))
        assert cli_main(_cli(args)) == 0
    assert _csv(study, "table3_cumulativity") == list(csv.DictReader((out / "tables" / "table3_cumulativity.csv").open()))
    assert _csv(study, "fig3_intra") == list(csv.DictReader((out / "tables" / "fig3_intra.csv").open()))
    old = {r["finding"]: r for r in csv.DictReader((out / "tables" / "verdicts.csv").open())}
    assert "not measured on P^eva" in next(r for f, r in old.items() if f.startswith("2. own set's drop"))["needed"]


# ---------------------------------------------------------------------------- analysis alone


def test_drops_interference_and_cumulativity_from_numbers():
    suite = SUITES["synthetic"]
    eva = suite.eva

    def m(acc: dict[str, float], per_sample: list[int] | None = None) -> Measurement:
        return Measurement({f"{eva}_{r}": {"acc": v} for r, v in acc.items()}, {f"{eva}_a": per_sample or []})

    results = {
        BASELINE: m({"a": 0.5, "b": 0.4, "c": 0.0}),
        Condition("own", "a"): m({"a": 0.1, "b": 0.5, "c": 0.2}),  # b improves: a negative drop
        Condition("random", "a", seed=0): m({"a": 0.5}),
        Condition("random", "a", seed=1): m({"a": 0.3}),
        Condition("topk", "a", k=10): m({"a": 0.5}, [1, 1, 1, 1, 0]),
        Condition("topk", "a", k=50): m({"a": 0.1}, [0, 0, 1, 0, 0]),
        Condition("ranks", "a", k=40, skip=10): m({"a": 0.3}, [0, 1, 1, 1, 0]),
    }
    study = Study(model="m", suite=suite, relations=["a", "b", "c"], seeds=[0, 1], ks=[10, 50], num_layers=2,
                  sets={r: SetStats(1, {0: {"gate_proj": 1}}) for r in "abc"}, overlaps={}, jaccard={}, results=results, settings={})
    row = matrix_rows(study, eva)[0]
    assert row["a"] == pytest.approx(0.8) and row["b"] == pytest.approx(-0.25) and row["c"] is None
    intra = intra_rows(study)[0]
    assert intra["random_mean"] == pytest.approx(0.4) and intra["random_drop"] == pytest.approx(0.2) and intra["seeds"] == 2
    # prompts 0, 1, 3 flip from right (top-10 off) to wrong (top-50 off); with ranks 11..50 alone, only 0 is wrong
    cum = cumulativity_rows(study)
    assert cum[0] == {"a": 10, "b": 50, "relation": "a", "flipped": 3, "still_wrong": 1, "share": pytest.approx(1 / 3)}
    assert cum[-1]["relation"] == "all" and cum[-1]["flipped"] == 3


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--suite": "lre2"}, "unknown suite 'lre2'"),
        ({"--neuron-sets": "{root}/nope"}, "neuron-set folder not found"),
        ({"--relations": "person_father,company_ceo"}, "no neuron set for company_ceo"),
        ({"--relations": "person_fathr"}, "unknown relation(s) for suite 'lre': person_fathr"),
        ({"--model": "{narrow}"}, "intermediate_size=64"),
        ({"--neuron-sets": "{no_scores}"}, "needs scores files"),
        ({"--ks": "10,x"}, None),  # argparse's own message, exit 2 as well
    ],
)
def test_errors_exit_2_and_write_nothing(study, change, message, tmp_path, capsys):
    from conftest import build_tiny_llama

    no_scores = tmp_path / "no_scores"
    shutil.copytree(study["root"] / "sets", no_scores, ignore=shutil.ignore_patterns("scores"))
    if "--model" in change:
        build_tiny_llama(tmp_path / "narrow", ffn=48)
        capsys.readouterr()  # its save progress bar
    args = list(study["args"])
    args[args.index("--out") + 1] = str(tmp_path / "out")
    for flag, v in change.items():
        args[args.index(flag) + 1] = v.format(root=study["root"], narrow=tmp_path / "narrow", no_scores=no_scores)
    with pytest.MonkeyPatch.context() as mp:
        _data_env(mp, study["data"], study["root"] / "cache")
        if message is None:
            with pytest.raises(SystemExit) as exc:
                cli_main(_cli(args))
            assert exc.value.code == 2
        else:
            assert cli_main(_cli(args)) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("relspec: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["dangling link", "another writer"])
def test_an_out_that_cannot_be_written_or_is_busy_is_refused_before_any_run(study, case, tmp_path, capsys):
    """As identify --out: a link to nothing is not followed, and a second reproduce into the same
    --out refuses at once instead of mixing two plans' runs and reports."""
    from relspec_lmeval.sets.folder import LOCK_FILE
    from relspec_lmeval.util.locks import folder_lock

    out = tmp_path / "out"
    args = list(study["args"])
    args[args.index("--out") + 1] = str(out)
    held = folder_lock(out, LOCK_FILE) if case == "another writer" else None
    if held is None:
        out.symlink_to(tmp_path / "gone")
    with pytest.MonkeyPatch.context() as mp, held or contextlib.nullcontext():
        _data_env(mp, study["data"], study["root"] / "cache")
        assert cli_main(_cli(args)) == 2
    err = capsys.readouterr().err.strip()
    expected = "is a symbolic link to" if held is None else "another relspec command (pid"
    assert err.startswith("relspec: error:") and expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "gone").exists()
    assert not (out / "sets").exists() if held is not None else True
