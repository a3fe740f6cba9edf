"""benchmarks/peers.py: every installed peer finds the same top k as ours, and ablates the same way."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import REPO, build_tiny_llama

sys.path.insert(0, str(REPO / "benchmarks"))
import peers  # noqa: E402
import peers_lib as lib  # noqa: E402

PROMPTS = [
    "the ceo of apple is", "who is the ceo of google", "the company apple has a ceo", "what is the name of the ceo",
    "paris is a city in", "the star is part of the constellation", "she plays the guitar", "tennis is a sport in asia",
    "his father is named", "her mother works as", "the product was created by which company", "where is the company headquartered",
]
K = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer

    from relspec_lmeval.identify.tokens import encode_prompts

    folder = tmp_path_factory.mktemp("peers-llama")
    model = build_tiny_llama(folder, layers=2, hidden=32, ffn=64)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = encode_prompts(tokenizer, PROMPTS * 2)
    labels = torch.tensor(([True] * 4 + [False] * 8) * 2)
    matrix = lib.collect_ours(model, encoded, batch_size=5, pad_id=tokenizer.pad_token_id)
    ap = lib.ap_ours(matrix, labels)
    return {"folder": folder, "model": model, "tokenizer": tokenizer, "encoded": encoded, "labels": labels,
            "matrix": matrix, "ap": ap, "top": lib.top_k(ap, K), "batches": lib.batches(encoded, 5, tokenizer.pad_token_id)}


def test_top_k_matches_ours_ranking(setup):
    from relspec_lmeval.sets.scores import select_flat

    assert setup["top"] == select_flat(torch.from_numpy(setup["ap"]).float(), K).tolist()


@pytest.mark.parametrize("collector", ["hooks", "selfcond"])
def test_plain_collections_equal_ours(setup, collector, tmp_path):
    n = len(setup["encoded"])
    if collector == "hooks":
        values = lib.collect_hooks(setup["model"], setup["batches"], n)
    else:
        responses = lib.collect_selfcond(setup["model"], setup["batches"], n, tmp_path)
        values = torch.from_numpy(__import__("numpy").stack(list(responses.values()), axis=1))
    torch.testing.assert_close(values, setup["matrix"], rtol=1e-5, atol=1e-6)


def test_sklearn_paths_give_our_top_k(setup, tmp_path):
    pytest.importorskip("sklearn")
    loop = lib.ap_sklearn_loop(setup["matrix"], setup["labels"])
    assert abs(loop - setup["ap"]).max() < 1e-12 and lib.top_k(loop, K) == setup["top"]
    responses = lib.collect_selfcond(setup["model"], setup["batches"], len(setup["encoded"]), tmp_path)
    pooled = lib.ap_sklearn_pool(responses, setup["labels"], cpus=2)
    assert lib.top_k(pooled, K) == setup["top"]


def test_torchmetrics_top_k(setup):
    pytest.importorskip("torchmetrics")
    assert lib.top_k(lib.ap_torchmetrics(setup["matrix"], setup["labels"]), K) == setup["top"]


def test_nnsight_collection(setup):
    pytest.importorskip("nnsight")
    for stop in (True, False):
        values = lib.collect_nnsight(setup["model"], setup["tokenizer"], setup["batches"], len(setup["encoded"]), stop=stop)
        torch.testing.assert_close(values, setup["matrix"], rtol=1e-5, atol=1e-6)


def test_transformer_lens_collection(setup):
    pytest.importorskip("transformer_lens")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(setup["folder"]).eval()  # the bridge switches its model to eager attention
    values = lib.collect_transformer_lens(lib.tl_bridge(model, setup["tokenizer"]), setup["batches"], len(setup["encoded"]))
    torch.testing.assert_close(values, setup["matrix"], rtol=1e-4, atol=1e-5)
    assert lib.top_k(lib.ap_ours(values, setup["labels"]), K) == setup["top"]


def test_ablation_peers_zero_the_same_neurons(setup, tmp_path):
    from relspec_lmeval.sets.neuron_set import NeuronSet
    from relspec_lmeval.sets.shape import ModelShape

    layout = ModelShape.from_config(setup["model"].config)
    grouped = layout.group(torch.tensor(setup["top"]))
    set_path = NeuronSet.from_keys([(layer, site, int(i)) for (layer, site), index in grouped.items() for i in index], {}).save(tmp_path / "s.safetensors")
    has_nnsight = peers.available("nnsight")
    lms = {name: make() for name, make in lib.ablation_lms(str(setup["folder"]), str(set_path), grouped, 2, nnsight=has_nnsight).items()}
    ids = torch.tensor([setup["encoded"][0][:5], setup["encoded"][1][:5]])
    logits = {name: lm._model_call(ids) for name, lm in lms.items()}
    ref = logits["relspec-hf (weights)"]
    assert not torch.equal(logits["hf"], ref)
    for name, value in logits.items():
        if name != "hf":
            torch.testing.assert_close(value, ref, rtol=0, atol=1e-6, msg=name)
    generated = {name: lm._model_generate(ids, max_length=9, stop=["\n"]) for name, lm in lms.items() if name != "hf"}
    for name, value in generated.items():
        assert torch.equal(value, generated["relspec-hf (weights)"]), name
