"""benchmarks/real_model.py on a tiny random Llama: the record's per-document values, the effects'
intervals, both random baselines, the first-token log-prob, and ``--report`` re-rendering.

The sets folder is made directly (random scores, top-k sets) and the data is three small
relations (8 P^eva docs each), so the whole run takes seconds. A random model answers no
prompt, so the accuracies' relative drops are checked on a made-up record
(``test_effects_of_a_known_record``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import CORPUS, REPO, build_tiny_llama

sys.path.insert(0, str(REPO / "benchmarks"))
import real_model  # noqa: E402
import real_model_lib as lib  # noqa: E402

from relspec_lmeval.identify.draws import plain_draw  # noqa: E402
from relspec_lmeval.modelio.sites import model_shape  # noqa: E402
from relspec_lmeval.sets.folder import SetsFolder  # noqa: E402
from relspec_lmeval.sets.scores import Scores, save_scores  # noqa: E402
from relspec_lmeval.sets.shape import SITES  # noqa: E402

SEEDS = 2
# three relations in the tiny tokenizer's words, so that documents differ
WORLD = {
    "place_of": ("the {} is in", CORPUS[0:16], ["paris", "france", "europe", "asia"]),
    "maker_of": ("{} was created by", CORPUS[16:32], ["apple", "google", "the company"]),
    "named": ("the name of {} is", CORPUS[32:48], ["zorbo quix", "vel mar", "paris"]),  # two unknown words: <unk> <unk>
}
RELATIONS = tuple(sorted(WORLD))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A tiny Llama, its sets folder (random scores) and three relations of 16 subjects (8 P^eva docs each)."""
    root = tmp_path_factory.mktemp("real-model")
    model = build_tiny_llama(root / "model")
    data = root / "world"
    data.mkdir()
    for name, (template, subjects, objects) in WORLD.items():
        samples = [{"subject": s, "object": objects[i % len(objects)]} for i, s in enumerate(subjects)]
        (data / f"{name}.json").write_text(json.dumps({"name": name, "prompt_templates": [template], "samples": samples}), encoding="utf-8")
    folder = SetsFolder(root / "sets")
    shape = model_shape(model)
    for i, relation in enumerate(RELATIONS):
        ap = torch.rand(shape.total, generator=torch.Generator().manual_seed(i))
        scores = Scores(shape, ap, torch.zeros(shape.total), {"relation": relation})
        save_scores(scores, folder.scores_path(relation))
        scores.to_neuron_set(10, metadata={"relation": relation}).save(folder.set_path(relation))
    prefix = root / "out" / "tiny"
    argv = ["--model", str(root / "model"), "--sets", str(folder.root), "--data-dir", str(data), "--ks", "3,10", "--seeds", str(SEEDS),
            "--site-groups", "all,down", "--choice-docs", "3", "--batch-size", "5", "--resamples", "300", "--out", str(prefix)]
    assert real_model.main(argv) == 0
    return {"root": root, "model": model, "shape": shape, "data": data, "prefix": prefix,
            "record": json.loads(prefix.with_suffix(".json").read_text(encoding="utf-8"))}


def test_the_record_keeps_every_document(world):
    record = world["record"]
    assert record["format"] == real_model.FORMAT and record["relations"] == list(RELATIONS) and record["seeds"] == SEEDS
    docs = record["docs"]
    assert docs == {r: 8 for r in RELATIONS}

    def complete(values: dict, relation: str) -> bool:
        return set(values) == set(lib.METRICS) and all(len(values[m]) == (3 if m == "choice" else docs[relation]) for m in lib.METRICS)

    assert all(complete(record["original"][r], r) for r in RELATIONS)
    assert [(row["sites"], row["k"]) for row in record["rows"]] == [("all", 3), ("all", 10), ("down", 10)]
    for row in record["rows"]:
        assert all(complete(row["own_sets"][r][x], x) for r in RELATIONS for x in RELATIONS)
        assert len(row["random_uniform"]) == SEEDS and all(complete(res[x], x) for res in row["random_uniform"] for x in RELATIONS)
        assert all(len(row["random_site"][r]) == SEEDS and all(complete(v, r) for v in row["random_site"][r]) for r in RELATIONS)


def test_every_interval_holds_its_estimate(world):
    checked = 0
    for row in world["record"]["rows"]:
        effects = row["effects"]
        blocks = [effects[name] for name in lib.COLUMNS] + [e[name] for e in effects["per_relation"].values() for name in lib.COLUMNS]
        for block in blocks:
            assert set(block) == set(lib.METRICS)
            for effect in block.values():
                if effect["value"] is not None:
                    assert effect["low"] <= effect["value"] + 1e-9 and effect["value"] <= effect["high"] + 1e-9, effect
                    checked += 1
        for name in ("random_uniform", "random_site"):  # the spread over seeds, beside the two-level interval
            assert all(len(effects[name][m]["seeds"]) == SEEDS for m in lib.METRICS)
        assert effects["own"]["logprob"]["value"] is not None and effects["random_site"]["logprob"]["value"] is not None
    assert checked > 100
    # the log-prob effect is the mean of the paired per-document differences
    row, r = world["record"]["rows"][0], RELATIONS[1]
    original, ablated = world["record"]["original"][r]["logprob"], row["own_sets"][r][r]["logprob"]
    own = sum(o - a for o, a in zip(original, ablated)) / len(original)
    assert row["effects"]["per_relation"][r]["own"]["logprob"]["value"] == pytest.approx(own)


def test_the_random_sets(world):
    shape = world["shape"]
    uniform = lib.random_cut(shape, 10, SITES, 3)
    assert {key: idx.tolist() for key, idx in uniform.neurons.items()} == {key: idx.tolist() for key, idx in plain_draw(shape, 10, 3).items()}
    scores_set = SetsFolder(world["root"] / "sets").set_path(RELATIONS[0])
    from relspec_lmeval.sets.neuron_set import NeuronSet

    own = NeuronSet.load(scores_set)
    site = lib.site_cut(own, shape, 0)
    assert site.count_per_site() == own.count_per_site() and site.keys() != own.keys()


def test_first_token_log_prob_is_the_first_tokens(world, monkeypatch):
    """The first-token log-prob read from the whole-gold pass is the one a direct forward gives; a gold
    whose first token ``first_token`` cannot split off (it returns the whole gold) gets its own pass."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world["root"] / "model")
    evaluator = lib.Evaluator(world["model"], tokenizer, list(RELATIONS), 5, 3, str(world["data"]))
    assert evaluator.measure() == world["record"]["original"] and not any(evaluator.first_passes.values())
    real = lib.first_token  # this tokenizer never merges a prompt's last token with the answer: pretend it does for one gold
    monkeypatch.setattr(lib, "first_token", lambda tok, prompt, gold: gold if gold == "vel mar" else real(tok, prompt, gold))
    evaluator = lib.Evaluator(world["model"], tokenizer, list(RELATIONS), 5, 3, str(world["data"]))
    measured = evaluator.measure()
    for r in RELATIONS:
        for i, doc in enumerate(evaluator.docs[r]):
            prompt = evaluator.encoded[r][i]
            first = tokenizer(" " + lib.first_token(tokenizer, doc["prompt"], doc["golds"][0]), add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                logits = world["model"](input_ids=torch.tensor([prompt + first])).logits[0].float().log_softmax(-1)
            direct = sum(float(logits[len(prompt) - 1 + j, t]) for j, t in enumerate(first))
            assert measured[r]["logprob_first"][i] == pytest.approx(direct, abs=1e-4), (r, i)
    vel = [i for i, d in enumerate(evaluator.docs["named"]) if d["golds"] == ["vel mar"]]
    assert evaluator.first_passes == {"maker_of": 0, "named": len(vel), "place_of": 0} and 0 < len(vel) < 8
    assert all(measured["named"]["logprob_first"][i] == measured["named"]["logprob"][i] for i in vel)  # the whole gold
    the = [i for i, d in enumerate(evaluator.docs["maker_of"]) if d["golds"] == ["the company"]]
    assert the and all(measured["maker_of"]["logprob_first"][i] > measured["maker_of"]["logprob"][i] for i in the)  # 1 of 2 tokens


def test_report_re_renders_from_the_record(world, tmp_path, capsys):
    prefix = world["prefix"]
    markdown = prefix.with_suffix(".md").read_text(encoding="utf-8")
    assert "| random (uniform) | random (site-matched) |" in markdown and " nats (seeds " in markdown
    assert "| all | 10 |" in markdown and "logprob_first" in markdown
    again = tmp_path / "again"
    assert real_model.main(["--report", str(prefix.with_suffix(".json")), "--out", str(again)]) == 0
    assert again.with_suffix(".md").read_text(encoding="utf-8") == markdown and not again.with_suffix(".json").exists()
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"model": "m", "rows": []}), encoding="utf-8")
    with pytest.raises(SystemExit) as stop:
        real_model.main(["--report", str(old)])
    assert stop.value.code == 2 and "holds no per-document values" in capsys.readouterr().err


def test_the_defaults():
    args = real_model._parser().parse_args(["--model", "m", "--sets", "s", "--out", "o"])
    assert args.seeds == 5 and args.ks is None  # None: 0.36% and 1% of the model's FFN neurons (run)
    assert Path(real_model.__file__).read_text(encoding="utf-8").count("(0.0036, 0.01)") == 1


def test_effects_of_a_known_record():
    """Hand-made per-document values: the effects are the means they should be, the random
    baselines' intervals span their seeds, and a relation the model never answered is left out."""
    docs = 4

    def values(acc: list[float], logprob: float) -> dict:
        return {"acc": acc, "acc_lenient": acc, "choice": acc[:2], "logprob": [logprob] * docs, "logprob_first": [logprob] * docs}

    original = {"a": values([1, 1, 0, 0], 0.0), "b": values([0, 0, 0, 0], 0.0)}
    row = {"sites": "all", "k": 5, "share": 0.01,
           "own_sets": {"a": {"a": values([1, 0, 0, 0], -1.0), "b": values([0] * 4, -0.5)},
                        "b": {"a": values([1, 1, 0, 0], -0.25), "b": values([0] * 4, -2.0)}},
           "random_uniform": [{"a": values([1, 1, 0, 0], -0.1), "b": values([0] * 4, -0.1)},
                              {"a": values([1, 1, 0, 0], -0.3), "b": values([0] * 4, -0.3)}],
           "random_site": {"a": [values([0, 0, 0, 0], -0.2), values([1, 1, 0, 0], -0.4)], "b": [values([0] * 4, -0.2), values([0] * 4, -0.4)]}}
    record = {"format": real_model.FORMAT, "model": "made-up", "sets": "-", "relations": ["a", "b"], "neurons": 500, "seeds": 2,
              "choice_docs": 2, "original": original, "rows": [row], "seconds": 1.0, "torch_threads": 1, "command": "-"}
    effects = real_model.with_effects(record, resamples=2000)["rows"][0]["effects"]
    assert effects["own"]["logprob"]["value"] == pytest.approx((1.0 + 2.0) / 2)
    assert effects["others"]["logprob"]["value"] == pytest.approx((0.5 + 0.25) / 2)
    assert effects["own"]["acc"]["value"] == pytest.approx(0.5)  # a: 0.5 -> 0.25; b answered nothing: left out
    assert effects["others"]["acc"]["value"] == pytest.approx(0.0)  # b's set on a
    uniform, site = effects["random_uniform"], effects["random_site"]
    assert uniform["logprob"]["value"] == pytest.approx(0.2) and uniform["logprob"]["seeds"] == pytest.approx([0.1, 0.3])
    assert (uniform["logprob"]["low"], uniform["logprob"]["high"]) == pytest.approx((0.1, 0.3))  # no doc variance: the seeds' spread
    assert site["logprob"]["value"] == pytest.approx(0.3) and site["acc"]["seeds"] == pytest.approx([1.0, 0.0])
    assert site["acc"]["low"] == pytest.approx(0.0) and site["acc"]["high"] == pytest.approx(1.0)
    assert effects["per_relation"]["b"]["own"]["acc"]["value"] is None and effects["per_relation"]["a"]["own"]["acc"]["low"] < 0.5
    text = real_model.report(record)
    assert "| all | 5 | 1.00% | logprob | +1.50 [+1.50, +1.50] nats | +0.38 [+0.38, +0.38] nats | " \
           "+0.20 [+0.10, +0.30] nats (seeds +0.10 to +0.30) | +0.30 [+0.20, +0.40] nats (seeds +0.20 to +0.40) |" in text
    assert "| all | 5 | 1.00% | acc | 50.0% [" in text


def test_benchmarks_methods_still_reads_means(world):
    """benchmarks/methods.py imports ``Evaluator``, ``drops``, ``mean`` and ``random_cut`` from real_model: means per relation."""
    import ast

    from transformers import AutoTokenizer

    tree = ast.parse((REPO / "benchmarks" / "methods.py").read_text(encoding="utf-8"))
    names = [a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "real_model" for a in node.names]
    assert names and all(hasattr(real_model, name) for name in names), names
    tokenizer = AutoTokenizer.from_pretrained(world["root"] / "model")
    base = real_model.Evaluator(world["model"], tokenizer, list(RELATIONS), 5, 3, str(world["data"])).measure("original")
    per_doc = world["record"]["original"]
    assert base == {r: {m: pytest.approx(sum(v) / len(v)) for m, v in per_doc[r].items()} for r in RELATIONS}
    assert real_model.drops(base, base, list(RELATIONS), "logprob") == [0.0] * 3 and real_model.mean([None, 1.0, 3.0]) == 2.0
