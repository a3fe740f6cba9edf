"""relspec-hf inside lm-eval: identical to hf without a set, recorded and cache-safe with one."""

from __future__ import annotations

import json

import pytest
import torch
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from lm_eval_helpers import write_smoke_tasks

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.lm.hflm import RelspecHFLM
from relspec_lmeval.sets.neuron_set import NeuronSet

TASKS = ["relspec_smoke_gen", "relspec_smoke_ppl"]


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    return TaskManager(include_path=str(write_smoke_tasks(tmp_path_factory.mktemp("tasks"))), include_defaults=False)


@pytest.fixture(scope="module")
def big_set(tmp_path_factory):
    """Half of every site: large enough that a random tiny model's outputs change."""
    neurons = {(layer, site): list(range(0, width, 2)) for layer in range(2) for site, width in (("gate_proj", 64), ("up_proj", 64), ("down_proj", 32))}
    meta = {"relation": "test", "model": {"num_layers": 2, "hidden_size": 32, "intermediate_size": 64}}
    return NeuronSet(neurons, meta).save(tmp_path_factory.mktemp("sets") / "half.safetensors")


def run(model, task_manager, **kwargs):
    return simple_evaluate(model=model, tasks=TASKS, task_manager=task_manager, device="cpu", batch_size=2, **kwargs)


def metrics(results):
    return {task: {k: v for k, v in res.items() if "," in k} for task, res in results["results"].items()}


def test_without_set_identical_to_hf(tiny_llama_dir, task_manager):
    ids = torch.tensor([[1, 5, 9, 12, 40, 7]])
    hf = HFLM(pretrained=str(tiny_llama_dir), device="cpu")
    ours = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu")
    with torch.no_grad():
        assert torch.equal(hf.model(ids).logits, ours.model(ids).logits)
    plain = run("hf", task_manager, model_args=f"pretrained={tiny_llama_dir}")
    relspec = run("relspec-hf", task_manager, model_args=f"pretrained={tiny_llama_dir}")
    assert metrics(plain) == metrics(relspec)
    assert relspec["config"]["relspec"]["sets"] == []


def test_set_is_applied_and_recorded(tiny_llama_dir, task_manager, big_set):
    plain = run("relspec-hf", task_manager, model_args=f"pretrained={tiny_llama_dir}")
    ablated = run("relspec-hf", task_manager, model_args=f"pretrained={tiny_llama_dir},neuron_set={big_set}")
    assert metrics(plain)["relspec_smoke_ppl"] != metrics(ablated)["relspec_smoke_ppl"]
    info = ablated["config"]["relspec"]
    assert info["mode"] == "zero" and info["applied_with"] == ["weights"]
    (entry,) = info["sets"]
    assert entry["sha256"] == NeuronSet.load(big_set).sha256() and entry["count"] == 160
    assert entry["metadata"]["relation"] == "test"
    json.dumps(ablated["config"], default=str)  # lands in the results JSON


def test_union_of_sets_and_scale_mode(tiny_llama_dir, tmp_path, big_set):
    extra = NeuronSet({(1, "up_proj"): [1, 3]}).save(tmp_path / "extra.safetensors")
    lm = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=f"{big_set}+{extra}", mode="scale", factor=0.0)
    assert [s["count"] for s in lm.relspec_info()["sets"]] == [160, 2]
    mlp = lm.model.model.layers[1].mlp
    assert torch.all(mlp.up_proj.weight[[0, 1, 2, 3]] == 0) and torch.any(mlp.up_proj.weight[5] != 0)


def test_use_cache_never_mixes_sets(tiny_llama_dir, task_manager, big_set, tmp_path):
    cache = str(tmp_path / "cache" / "lm")
    args = f"pretrained={tiny_llama_dir}"
    original = run("relspec-hf", task_manager, model_args=args, use_cache=cache)
    ablated_cached = run("relspec-hf", task_manager, model_args=f"{args},neuron_set={big_set}", use_cache=cache)
    ablated_fresh = run("relspec-hf", task_manager, model_args=f"{args},neuron_set={big_set}")
    assert metrics(ablated_cached) == metrics(ablated_fresh)
    assert metrics(ablated_cached) != metrics(original)
    # And the cache still serves each its own answers on a second pass.
    assert metrics(run("hf", task_manager, model_args=args, use_cache=cache)) == metrics(original)
    assert metrics(run("relspec-hf", task_manager, model_args=f"{args},neuron_set={big_set}", use_cache=cache)) == metrics(ablated_fresh)


def test_bad_arguments_fail_before_loading(tiny_llama_dir, tmp_path):
    with pytest.raises(NeuronSetError, match="not found"):
        RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=str(tmp_path / "nope.safetensors"))
    with pytest.raises(NeuronSetError, match="unknown mode"):
        RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", mode="off")
    wide = NeuronSet({(0, "up_proj"): [0]}, {"model": {"intermediate_size": 11008, "name": "meta-llama/Llama-2-7b-hf"}})
    path = wide.save(tmp_path / "wide.safetensors")
    with pytest.raises(NeuronSetError, match="intermediate_size=11008"):
        RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=str(path))
