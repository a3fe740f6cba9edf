"""``relspec identify``/``random``/``select`` on a tiny random Llama and a tiny LRE-format folder.

The pipeline is checked against a slow, obviously-correct reference (one prompt at a time,
no padding, a Python loop over neurons with sklearn's AP). A random model answers nothing,
so most runs use ``filter=False`` (every P^det prompt is a positive); the filter itself is
checked against unbatched ``generate`` and on data crafted so the model answers some prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_llama
from transformers import AutoConfig, AutoModelForCausalLM

from relspec_lmeval.cli import main as cli_main
from relspec_lmeval.data.relations import build_docs
from relspec_lmeval.data.templates import PAPER_RELATIONS
from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.identify.activations import generate_with_means
from relspec_lmeval.identify.config import IdentifyConfig
from relspec_lmeval.identify.controls import random_sets, select_sets
from relspec_lmeval.identify.pipeline import identify
from relspec_lmeval.identify.pool import choose_prompts, load_pool
from relspec_lmeval.identify.tokens import encode_prompts, pad_token_id
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.scores import load_scores
from relspec_lmeval.sets.shape import FFN_SITES, SITES, ModelShape

WORDS = "paris france europe asia tennis guitar piano apple google star".split()


def write_lre_folder(folder: Path, objects: dict[tuple[str, str], str] | None = None, subjects: int = 10) -> Path:
    """All 12 paper relations, ``subjects`` subjects each (half of them end up in P^det)."""
    folder.mkdir(parents=True, exist_ok=True)
    for r, (name, spec) in enumerate(PAPER_RELATIONS.items()):
        samples = []
        for j in range(subjects):
            subject = f"{WORDS[j % 10]} {WORDS[(j + r) % 10]}" + (f" {WORDS[j // 10]}" if j >= 10 else "")
            # capitalised objects: the lower-case tokenizer can never generate them
            obj = (objects or {}).get((name, subject), WORDS[(3 * j + r) % 10].capitalize())
            samples.append({"subject": subject, "object": obj})
        raw = {"name": name, "prompt_templates": list(spec.templates), "prompt_templates_zs": [], "properties": {}, "samples": samples}
        (folder / spec.file).write_text(json.dumps(raw), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_lre_folder(tmp_path_factory.mktemp("lre"))


def config(model: Path, out: Path, data: Path, **kw) -> IdentifyConfig:
    base = dict(model=str(model), out=str(out), data=str(data), k=25, filter=False, batch_size=4, command="test", progress=False, print_table=False)
    return IdentifyConfig(**{**base, **kw})


# ---------------------------------------------------------------------------- reference


def reference_identify(model_dir: Path, data: Path, relation: str, k: int, select: str = "top", method: str = "ap",
                       sites: tuple[str, ...] = FFN_SITES):
    """Slow and obviously correct: per prompt, per neuron, sklearn (AP, AUROC) or the formula (mean-diff)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    def score(labels: list[int], values: list[float]) -> float:
        if method == "ap":
            return average_precision_score(labels, values)
        if method == "auroc":
            return roc_auc_score(labels, values)
        pos = [v for v, y in zip(values, labels) if y]
        neg = [v for v, y in zip(values, labels) if not y]
        return sum(pos) / len(pos) - sum(neg) / len(neg)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pool = load_pool(str(data), None)
    correct = {r: [True] * len(d) for r, d in pool.docs.items()}
    positives, negatives = choose_prompts(pool, correct, relation, cap=500, negative_ratio=4, seed=0)

    sites = [s for s in SITES if s in sites]  # the flat order's: forward order in a layer
    cfg = model.config
    width = {"gate_proj": cfg.intermediate_size, "up_proj": cfg.intermediate_size, "down_proj": cfg.hidden_size,
             "o_proj": cfg.hidden_size, "q_proj": cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads),
             "k_proj": cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)}
    width["v_proj"] = width["k_proj"]
    keys = [(layer, site, i) for layer in range(cfg.num_hidden_layers) for site in sites for i in range(width[site])]

    def neuron_values(prompt: str) -> list[float]:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        assert ids[0, 0].item() == tokenizer.bos_token_id
        outputs = {}
        handles = [getattr(layer.mlp if site in FFN_SITES else layer.self_attn, site).register_forward_hook(
            lambda m, a, o, key=(li, site): outputs.__setitem__(key, o[0].mean(dim=0)))
            for li, layer in enumerate(model.model.layers) for site in sites]
        with torch.no_grad():
            model(ids)
        for h in handles:
            h.remove()
        return [float(outputs[(layer, site)][i]) for layer, site, i in keys]

    rows = [neuron_values(pool.docs[r][i]["prompt"]) for r, i in positives + negatives]
    labels = [1] * len(positives) + [0] * len(negatives)
    ap = []
    for j in range(len(keys)):  # one sklearn call per neuron, like the published scripts
        ap.append(float(torch.tensor(score(labels, [row[j] for row in rows]), dtype=torch.float32)))
    order = sorted(range(len(keys)), key=lambda j: (-ap[j], keys[j][0], SITES.index(keys[j][1]), keys[j][2]))
    if select == "top":
        chosen = order[:k]
    else:
        rest = order[k - k // 2 :]
        chosen = order[: k - k // 2] + sorted(rest, key=lambda j: (ap[j], keys[j][0], SITES.index(keys[j][1]), keys[j][2]))[: k // 2]
    # the means are over the P^det of the whole pool, whichever relations are identified (#20)
    all_rows = [neuron_values(d["prompt"]) for docs in pool.docs.values() for d in docs]
    means = [sum(row[j] for row in all_rows) / len(all_rows) for j in range(len(keys))]
    return {keys[j] for j in chosen}, dict(zip(keys, ap)), dict(zip(keys, means))


@pytest.mark.parametrize(("select", "method"), [("top", "ap"), ("both", "ap"), ("top", "auroc"), ("both", "mean-diff")])
def test_pipeline_matches_slow_reference(tiny_llama_dir, data_dir, tmp_path, select, method):
    identify(config(tiny_llama_dir, tmp_path, data_dir, relations="person_mother", dtype="float64", select=select, batch_size=3,
                    method=method))
    got = NeuronSet.load(tmp_path / "person_mother.safetensors")
    want, ap, means = reference_identify(tiny_llama_dir, data_dir, "person_mother", 25, select, method)
    assert got.keys() == want
    assert len(got) == 25 and got.has_means and got.metadata["select"] == select and got.metadata["method"] == method
    for (layer, site), index in got.neurons.items():
        for i, score, mean in zip(index.tolist(), got.scores[(layer, site)].tolist(), got.means[(layer, site)].tolist()):
            assert score == pytest.approx(ap[(layer, site, i)], abs=1e-6)
            assert mean == pytest.approx(means[(layer, site, i)], rel=1e-4, abs=1e-6)
    scores = load_scores(tmp_path / "scores" / "person_mother.safetensors")
    flat_ap = torch.tensor([ap[key] for key in sorted(ap, key=lambda t: (t[0], SITES.index(t[1]), t[2]))])
    assert torch.allclose(scores.ap, flat_ap, atol=1e-6)


ATTENTION_AND_DOWN = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")


@pytest.fixture(scope="module")
def gqa_llama_dir(tmp_path_factory) -> Path:  # 4 query heads, 2 key/value heads: q_proj 32 wide, k/v_proj 16
    path = tmp_path_factory.mktemp("gqa-llama")
    build_tiny_llama(path, kv_heads=2, seed=3)
    return path


@pytest.mark.parametrize("sites", [ATTENTION_AND_DOWN, ("k_proj",), ("up_proj",)])
def test_sites_pipeline_matches_slow_reference(gqa_llama_dir, data_dir, tmp_path, sites):
    """--sites: the attention projections' output channels (and any subset of sites) scored as the FFN's are."""
    identify(config(gqa_llama_dir, tmp_path, data_dir, relations="person_mother", dtype="float64", batch_size=3,
                    sites=",".join(reversed(sites))))  # any order on the command line: the flat order is forward order
    got = NeuronSet.load(tmp_path / "person_mother.safetensors")
    want, ap, means = reference_identify(gqa_llama_dir, data_dir, "person_mother", 25, sites=sites)
    assert got.keys() == want and {site for _, site in got.neurons} <= set(sites)
    for (layer, site), index in got.neurons.items():
        for i, mean in zip(index.tolist(), got.means[(layer, site)].tolist()):
            assert mean == pytest.approx(means[(layer, site, i)], rel=1e-4, abs=1e-6)
    scores = load_scores(tmp_path / "scores" / "person_mother.safetensors")
    assert scores.layout.sites == tuple(s for s in SITES if s in sites)
    assert torch.allclose(scores.ap, torch.tensor([ap[key] for key in ap]), atol=1e-6)  # reference keys: flat order
    block = got.metadata["model"]
    assert block.get("sites", list(FFN_SITES)) == list(scores.layout.sites)
    if "k_proj" in sites:
        assert (block["num_attention_heads"], block["num_key_value_heads"], block["head_dim"]) == (4, 2, 8)
        assert scores.layout.width("k_proj") == 16 and scores.layout.width("q_proj") == 32
    assert got.recorded_shape() == scores.layout
    got.validate(ModelShape.from_config(AutoConfig.from_pretrained(gqa_llama_dir)))
    recut = NeuronSet.load(select_sets([tmp_path / "scores" / "person_mother.safetensors"], 25, out=tmp_path / "cut")[0])
    assert recut.keys() == got.keys()  # the scores file alone gives the same cut
    # random controls are drawn from the run's sites, with or without the model at hand
    for model in (None, str(gqa_llama_dir)):
        path = random_sets([str(tmp_path / "person_mother.safetensors")], [0], out=tmp_path / f"r{model is None}", model=model)[0]
        control = NeuronSet.load(path)
        assert len(control) == 25 and {site for _, site in control.neurons} <= set(sites)
        assert control.recorded_shape() == scores.layout


def test_sites_on_a_fused_model_fail_before_any_weight_loads(data_dir, tmp_path, capsys, monkeypatch):
    from transformers import Phi3Config

    Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, pad_token_id=0,
               bos_token_id=1, eos_token_id=2).save_pretrained(tmp_path / "phi3")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded before the check"))
    argv = ["identify", "--model", str(tmp_path / "phi3"), "--data", str(data_dir), "--sites", "q_proj", "--k", "5", "--out", str(tmp_path / "o"),
            "--no-filter", "--quiet"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("relspec: error: model type 'phi3' has a fused qkv_proj attention") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_sites_with_auroc_feed_relspec_dampen(gqa_llama_dir, data_dir, tmp_path):
    """AurA's intervention on attention neurons: AUROC scores of v_proj/o_proj, factors, applied by relspec-hf's code."""
    from relspec_lmeval.identify.dampen import dampened_scores
    from relspec_lmeval.lm.ablation import AblationSpec, ablated

    identify(config(gqa_llama_dir, tmp_path, data_dir, relations="person_mother", method="auroc", sites="v_proj,o_proj"))
    scores = load_scores(tmp_path / "scores" / "person_mother.safetensors")
    dampened = dampened_scores(scores)
    assert dampened.has_factors and {site for _, site in dampened.neurons} <= {"v_proj", "o_proj"}
    assert len(dampened) == int((scores.ap > 0.5).sum())
    model = AutoModelForCausalLM.from_pretrained(gqa_llama_dir).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        before = model(ids).logits
        with ablated(model, dampened, AblationSpec(mode="dampen")) as ablation:
            assert ablation.methods == ["weights"]
            during = model(ids).logits
        assert torch.equal(model(ids).logits, before) and not torch.allclose(during, before)


# ---------------------------------------------------------------------------- files and metadata


def test_deterministic_files_metadata_and_select_reproduces(tiny_llama_dir, data_dir, tmp_path):
    for name in ("a", "b"):
        identify(config(tiny_llama_dir, tmp_path / name, data_dir, relations="person_father,company_hq"))
    for rel in ("person_father.safetensors", "scores/person_father.safetensors", "company_hq.safetensors", "summary.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    s = NeuronSet.load(tmp_path / "a" / "person_father.safetensors")
    meta = s.metadata
    assert meta["method"] == "ap" and meta["relation"] == "person_father" and meta["k"] == 25
    assert meta["command"] == "test" and meta["package_version"] and len(meta["data_hash"]) == 64
    assert meta["model"]["config_hash"] and meta["model"]["num_layers"] == 2
    params = meta["parameters"]
    assert params | {"k": 25, "select": "top", "cap": 500, "negative_ratio": 4, "seed": 0, "batch_size": 4, "dtype": "float32", "filter": "none"} == params
    assert meta["data"]["positives"] == 5 and meta["data"]["negatives"] == 20
    assert s.has_means and set(s.scores) == set(s.neurons)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["relations"]["person_father"]["positives"] == 5
    assert summary["overlaps"]["person_father"]["company_hq"] == s.overlap(NeuronSet.load(tmp_path / "a" / "company_hq.safetensors"))
    assert sum(summary["relations"]["company_hq"]["count_per_layer"]) == 25
    # re-cutting k from the scores gives the same set as identifying with that k
    [path] = select_sets([tmp_path / "a" / "scores" / "person_father.safetensors"], 25)
    assert path == tmp_path / "a" / "k25" / "person_father.safetensors"
    assert NeuronSet.load(path).keys() == s.keys()
    [smaller] = select_sets([tmp_path / "a" / "scores" / "person_father.safetensors"], 5, out=tmp_path / "k5")
    assert NeuronSet.load(smaller).keys() < s.keys()


def test_choose_prompts_cap_ratio_seed(data_dir):
    pool = load_pool(str(data_dir), None)
    correct = {r: [True] * len(d) for r, d in pool.docs.items()}
    pos, neg = choose_prompts(pool, correct, "person_mother", cap=3, negative_ratio=4, seed=0)
    assert len(pos) == 3 and len(neg) == 12 and pos == sorted(pos) and neg == sorted(neg)
    assert all(r == "person_mother" for r, _ in pos) and all(r != "person_mother" for r, _ in neg)
    assert (pos, neg) == choose_prompts(pool, correct, "person_mother", cap=3, negative_ratio=4, seed=0)
    assert (pos, neg) != choose_prompts(pool, correct, "person_mother", cap=3, negative_ratio=4, seed=1)
    correct["person_mother"] = [i % 2 == 0 for i in range(len(correct["person_mother"]))]
    pos, neg = choose_prompts(pool, correct, "person_mother", cap=500, negative_ratio=2, seed=0)
    assert [i for _, i in pos] == list(range(0, len(correct["person_mother"]), 2)) and len(neg) == 2 * len(pos)


def test_task_group_gives_the_same_pool_as_the_folder(data_dir):
    folder = load_pool(str(data_dir), None)
    group = load_pool("relation_recall_det", None, lre_dir=str(data_dir))
    assert group.relations == folder.relations and group.hash() == folder.hash()
    with pytest.raises(ValueError, match="uses split 'eva'.*relation_recall_det"):
        load_pool("relation_recall", None, lre_dir=str(data_dir))
    with pytest.raises(ValueError, match="Did you mean 'relation_recall_det'"):
        load_pool("relation_recall_dett", None, lre_dir=str(data_dir))


# ---------------------------------------------------------------------------- correctness filter


def test_filter_batched_left_padding_matches_unbatched_generate(tiny_llama_dir, data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompts = [d["prompt"] for d in build_docs("company_ceo", "det", data_dir=data_dir)][:7] + ["a"]
    encoded = encode_prompts(tokenizer, prompts)
    texts, _ = generate_with_means(model, tokenizer, encoded, None, batch_size=3, progress=False)
    for prompt, text in zip(prompts, texts):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=pad_token_id(tokenizer))
        assert text == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def crafted_golds(tiny_llama_dir, tmp_path) -> tuple[dict, Path]:
    """A data folder whose person_father golds are what the tiny model generates for 4 of its P^det prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    plain = write_lre_folder(tmp_path / "plain", subjects=14)
    crafted = {}
    for doc in build_docs("person_father", "det", data_dir=plain)[:4]:  # person_father has one template
        ids = tokenizer(doc["prompt"], return_tensors="pt")["input_ids"]
        text = tokenizer.decode(model.generate(ids, max_new_tokens=2, do_sample=False)[0, ids.shape[1]:], skip_special_tokens=True)
        if text.strip():
            crafted[("person_father", doc["subject"])] = text.strip()
    assert crafted, "the tiny model generated nothing printable"
    return crafted, write_lre_folder(tmp_path / "crafted", crafted, subjects=14)


def test_filter_keeps_exactly_the_prompts_the_model_answers(tiny_llama_dir, tmp_path):

    crafted, data = crafted_golds(tiny_llama_dir, tmp_path)
    summary = identify(config(tiny_llama_dir, tmp_path / "out", data, relations="person_father", filter=True, min_positives=1))
    entry = summary["relations"]["person_father"]
    assert entry["correct"] == entry["positives"] == len(crafted) and entry["negatives"] == 4 * len(crafted)
    assert NeuronSet.load(tmp_path / "out" / "person_father.safetensors").metadata["parameters"]["filter"] == "greedy-2"


# ---------------------------------------------------------------------------- errors


def run_cli(argv, capsys) -> tuple[int, str]:
    code = cli_main(argv)
    return code, capsys.readouterr().err


def test_cli_errors(tiny_llama_dir, data_dir, tmp_path, capsys):
    base = ["identify", "--model", str(tiny_llama_dir), "--data", str(data_dir), "--out", str(tmp_path / "o"), "--quiet", "--k", "20"]
    code, err = run_cli([*base, "--relations", "person_fathr", "--no-filter"], capsys)
    assert code == 2 and "unknown relation 'person_fathr'" in err and "Did you mean 'person_father'" in err
    code, err = run_cli([*base, "--relations", "person_father,star_constellation"], capsys)
    assert code == 2 and "no relation has enough positives" in err
    assert "person_father: 0 of 5" in err and "star_constellation: 0 of 5" in err and "--no-filter" in err
    code, err = run_cli([*base, "--k", "321", "--no-filter"], capsys)
    assert code == 2 and "--k 321 is larger than the 320 neurons" in err
    code, err = run_cli([*base, "--data", "relation_recall_zz"], capsys)
    assert code == 2 and "neither a folder nor a known task group" in err
    code, err = run_cli(["select", "--k", "5", str(tmp_path / "nope.safetensors")], capsys)
    assert code == 2 and "scores file not found" in err
    assert not (tmp_path / "o").exists()  # nothing written by failed runs


def test_data_model_mismatch(tiny_llama_dir, data_dir, tmp_path, capsys):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    # a tokenizer whose ids the model's embedding does not have
    small = tmp_path / "small-vocab"
    cfg = LlamaConfig(vocab_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    LlamaForCausalLM(cfg).save_pretrained(small)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(small)
    code, err = run_cli(["identify", "--model", str(small), "--data", str(data_dir), "--out", str(tmp_path / "x"),
                         "--relations", "person_father", "--k", "5", "--no-filter", "--quiet"], capsys)
    assert code == 2 and "tokenizer and model" in err and "do not match" in err

    # an output folder that holds sets of another model
    out = tmp_path / "mixed"
    identify(config(tiny_llama_dir, out, data_dir, relations="person_father", k=5))
    other = tmp_path / "other-model"
    build_tiny_llama(other, ffn=48)
    code, err = run_cli(["identify", "--model", str(other), "--data", str(data_dir), "--out", str(out),
                         "--relations", "person_father", "--k", "5", "--no-filter", "--quiet"], capsys)
    assert code == 2 and "was made for model" in err and "--force" in err
    identify(config(other, out, data_dir, relations="person_father", k=5, force=True))
    assert NeuronSet.load(out / "person_father.safetensors").metadata["model"]["intermediate_size"] == 48

    # random controls checked against a model of another shape
    with pytest.raises(NeuronSetError, match="intermediate_size"):
        random_sets([str(out / "person_father.safetensors")], 1, model=str(tiny_llama_dir))


def test_interrupted_run_leaves_no_partial_file(tiny_llama_dir, data_dir, tmp_path, monkeypatch):
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(KeyboardInterrupt):
        identify(config(tiny_llama_dir, tmp_path / "o", data_dir, relations="person_father", k=5))
    assert [p for p in (tmp_path / "o").rglob("*") if p.is_file()] == []


# ---------------------------------------------------------------------------- CLI: identify, random, select


def test_cli_identify_random_select(tiny_llama_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "sets"
    code = cli_main(["identify", "--model", str(tiny_llama_dir), "--data", str(data_dir), "--out", str(out),
                     "--relations", "landmark_country", "--k", "12", "--no-filter", "--batch-size", "auto",
                     "--max-batch-size", "8", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "landmark_country" in printed and "wrote 1 neuron set" in printed
    s = NeuronSet.load(out / "landmark_country.safetensors")
    assert len(s) == 12 and "identify" in s.metadata["command"] and s.metadata["parameters"]["batch_size"] == 8

    assert cli_main(["random", "--like", str(out / "landmark_country.safetensors"), "--seeds", "3", "--layer-matched"]) == 0
    controls = [NeuronSet.load(out / "random" / f"landmark_country-layer-seed{n}.safetensors") for n in range(3)]
    assert all(c.count_per_layer() == s.count_per_layer() and c.has_means for c in controls)
    assert controls[0].keys() != controls[1].keys() and controls[0].metadata["seed"] == 0
    assert cli_main(["random", "--like", str(out / "landmark_country.safetensors"), "--seeds", "1", "--out", str(tmp_path / "r")]) == 0
    plain = NeuronSet.load(tmp_path / "r" / "random" / "k12-seed0.safetensors")
    assert len(plain) == 12 and plain.metadata["method"] == "random"
    again = [random_sets([str(out / "landmark_country.safetensors")], [0], out=tmp_path / n, command="c")[0] for n in ("r2", "r3")]
    assert again[0].read_bytes() == again[1].read_bytes()  # deterministic files
    assert NeuronSet.load(again[0]).keys() == plain.keys()

    assert cli_main(["select", "--k", "6", "--select", "both", str(out / "scores" / "landmark_country.safetensors")]) == 0
    both = NeuronSet.load(out / "k6-both" / "landmark_country.safetensors")
    assert len(both) == 6 and both.metadata["select"] == "both" and both.has_means
    assert cli_main(["select", "--k", "4", "--skip", "4", str(out / "scores" / "landmark_country.safetensors"), "--out", str(tmp_path / "s")]) == 0
    ranks = NeuronSet.load(tmp_path / "s" / "landmark_country.safetensors")  # ranks 5..8
    top4, top8 = (NeuronSet.load(p).keys() for p in select_sets([out / "scores" / "landmark_country.safetensors"], 4) + select_sets([out / "scores" / "landmark_country.safetensors"], 8))
    assert len(ranks) == 4 and ranks.metadata["skip"] == 4 and not ranks.keys() & top4 and ranks.keys() | top4 == top8


def test_script_wrapper_help(capsys):
    import runpy
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "identify_neurons.py"
    argv = sys.argv
    sys.argv = [str(script), "--help"]
    try:
        with pytest.raises(SystemExit) as exc:
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    assert exc.value.code == 0 and "--negative-ratio" in capsys.readouterr().out


def test_relations_below_min_positives_are_skipped_not_fatal(tiny_llama_dir, tmp_path, capsys):
    """One relation the tiny model answers (crafted golds), one it never does: the first is
    written, the second skipped with one line, and the exit status (3) says so."""

    crafted, data = crafted_golds(tiny_llama_dir, tmp_path)
    out = tmp_path / "out"
    argv = ["identify", "--model", str(tiny_llama_dir), "--data", str(data), "--out", str(out), "--quiet", "--k", "20",
            "--relations", "person_father,star_constellation", "--min-positives", str(len(crafted))]
    capsys.readouterr()  # this test's own model load above
    assert cli_main(argv) == 3
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"relspec identify: skipped star_constellation: 0 of 7 P^det prompts answered correctly, fewer than --min-positives {len(crafted)}"
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["relations"]) == ["person_father"] and list(summary["skipped"]) == ["star_constellation"]
    assert (out / "person_father.safetensors").is_file() and not (out / "star_constellation.safetensors").exists()
    # the default (20) with the filter on skips both: nothing is written, one error line
    assert cli_main([*argv[:-2], "--out", str(tmp_path / "out2")]) == 2
    assert "no relation has enough positives" in capsys.readouterr().err and not (tmp_path / "out2").exists()


def test_answers_are_kept_and_not_generated_again(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    """The second run (another relation added, another k) generates only for the new relation's
    prompts; the first relation's positives are the same; --no-cache generates everything."""
    from relspec_lmeval.identify import correctness

    crafted, data = crafted_golds(tiny_llama_dir, tmp_path)
    generated = []
    real = correctness.generate_with_means
    monkeypatch.setattr(correctness, "generate_with_means",  # the prompts whose answers must be generated
                        lambda model, tok, enc, *a, **kw: (generated.append(sum(kw["needed"])) if kw["generate"] else None) or real(model, tok, enc, *a, **kw))
    base = ["identify", "--model", str(tiny_llama_dir), "--data", str(data), "--quiet", "--min-positives", "1"]
    assert cli_main([*base, "--out", str(tmp_path / "a"), "--relations", "person_father", "--k", "20"]) == 0
    first = json.loads((tmp_path / "a" / "summary.json").read_text())
    det = first["relations"]["person_father"]["det_prompts"]
    assert generated == [det] and "reused from" not in capsys.readouterr().err
    capsys.readouterr()
    assert cli_main([*base, "--out", str(tmp_path / "b"), "--relations", "person_father,person_mother", "--k", "30"]) == 3
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    mother = len(load_pool(str(data), None).docs["person_mother"])
    assert generated[0] == det and 0 < generated[1] <= mother  # the answers of the first run's batches are all kept
    assert second["relations"]["person_father"]["correct"] == first["relations"]["person_father"]["correct"] == len(crafted)
    assert f"{det + mother - generated[1]} answers of the correctness check reused from" in capsys.readouterr().err
    assert cli_main([*base, "--out", str(tmp_path / "c"), "--relations", "person_father", "--k", "20", "--no-cache"]) == 0
    assert generated[2:] == [det]


def test_method_lape_writes_tangs_sets_on_the_gate_site(tiny_llama_dir, data_dir, tmp_path):
    """--method lape: one counting pass over every relation's P^det, each set = Tang's selection
    for its relation (capped by --k), reported on gate_proj; it needs --no-filter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from relspec_lmeval.identify.methods.lape import LapeRun

    out = tmp_path / "lape"
    summary = identify(config(tiny_llama_dir, out, data_dir, method="lape", k=300, batch_size=3))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    pool = load_pool(str(data_dir), None)
    encoded = {r: encode_prompts(tokenizer, [d["prompt"] for d in docs]) for r, docs in pool.docs.items()}
    from relspec_lmeval.sets.shape import ModelShape

    shape = ModelShape.from_config(model.config)
    run = LapeRun.count(model, encoded, shape, batch_size=4, pad_id=pad_token_id(tokenizer), progress=False)
    written = list(summary["relations"])
    assert written and set(written) | set(summary["skipped"]) == set(pool.relations)
    for relation in written:
        got = NeuronSet.load(out / f"{relation}.safetensors")
        r = run.relations.index(relation)
        want = {(n // shape.intermediate_size, "gate_proj", n % shape.intermediate_size)
                for n in run.result.selected[r].nonzero().flatten().tolist()}
        assert got.keys() == want and got.metadata["method"] == "lape"
    with pytest.raises(Exception, match="--method lape .* --no-filter"):
        identify(config(tiny_llama_dir, tmp_path / "x", data_dir, method="lape", filter=True))


def test_statistics_pass_ends_at_the_last_site(tiny_llama_dir):
    """activation_matrix never runs the final norm or lm_head (identify.early_stop), and its
    values equal a full forward's; the hooks are gone afterwards."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from relspec_lmeval.identify.activations import activation_matrix
    from relspec_lmeval.modelio.sites import model_shape

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    encoded = encode_prompts(tokenizer, ["the ceo of apple is", "paris is a city in", "she plays the"])
    calls = []
    handle = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    fast = activation_matrix(model, encoded, model_shape(model), batch_size=2, pad_id=pad_token_id(tokenizer), progress=False)
    assert calls == []
    handle.remove()
    last = model.model.layers[-1].mlp.down_proj
    assert not last._forward_hooks  # the stopping hook was removed
    outputs = {}
    hook = last.register_forward_hook(lambda m, a, o: outputs.__setitem__("down", o))
    with torch.no_grad():
        model(torch.tensor([encoded[0]]))
    hook.remove()
    width = model.config.hidden_size
    assert torch.allclose(fast[0, -width:], outputs["down"][0].mean(dim=0), atol=1e-6)


def test_statistics_of_a_bfloat16_model_accumulate_in_float32(tiny_llama_dir):
    """Issue 23: ``--dtype bfloat16`` runs the model in bf16, but each prompt's token means are
    summed in float32 (identify.activations.stats_dtype), not rounded to bf16 at every step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from relspec_lmeval.identify.activations import activation_matrix
    from relspec_lmeval.modelio.sites import model_shape

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    encoded = encode_prompts(tokenizer, ["the ceo of apple is the one who", "paris is a city in"])
    matrix = activation_matrix(model, encoded, model_shape(model), batch_size=2, pad_id=pad_token_id(tokenizer), progress=False)
    assert matrix.dtype == torch.float32
    outputs = {}
    hook = model.model.layers[-1].mlp.down_proj.register_forward_hook(lambda m, a, o: outputs.__setitem__("down", o))
    with torch.no_grad():
        model(torch.tensor([encoded[0]]))
    hook.remove()
    width, bf16_values = model.config.hidden_size, outputs["down"][0]
    assert bf16_values.dtype == torch.bfloat16
    assert torch.allclose(matrix[0, -width:], bf16_values.float().mean(dim=0), atol=1e-6)


@pytest.mark.parametrize("adds_bos", [True, False])
def test_prompts_are_encoded_as_lm_eval_encodes_them(tiny_llama_dir, adds_bos):
    """Llama-style tokenizers add a BOS, Qwen2-style ones none: identification's prompts are the
    token ids lm-eval's HFLM scores (no BOS forced in where the tokenizer adds none)."""
    from lm_eval.models.huggingface import HFLM
    from tokenizers import processors

    lm = HFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=1)
    if not adds_bos:
        lm.tokenizer._tokenizer.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    prompts = ["the ceo of apple is? Answer:", "paris is a city in? Answer:"]
    ours = encode_prompts(lm.tokenizer, prompts)
    assert ours == [lm.tok_encode(p) for p in prompts]
    assert all((row[0] == lm.tokenizer.bos_token_id) == adds_bos for row in ours)
