"""`make demo`: original vs ablated recall and perplexity, side by side, offline.

Until the shipped trained model relspec-tiny exists (issue 6), the demo builds a small
*random-weight* Llama: its recall is ~0 and the numbers only show the machinery (the set is
applied, recorded and changes the model), not the paper's effect. Nothing here is faked:
every number is an lm-eval result.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".demo"
TASKS = ["relation_recall", "relation_ppl"]
LIMIT = 10  # documents per relation: keeps the demo at about a minute on 2 CPU cores


def shipped_or_built_model() -> tuple[str, str]:
    from relspec_lmeval._resources import shipped_model

    if shipped_model("relspec-tiny") is not None:
        return "relspec-tiny", "relspec-tiny (shipped, trained)"
    path = WORK / "random-llama"
    if not (path / "config.json").is_file():
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import build_tiny_llama  # the tests' offline tokenizer + LlamaConfig

        build_tiny_llama(path, layers=4, hidden=64, ffn=256)
    return str(path), "random-weight 4-layer Llama built by the demo (relspec-tiny not shipped yet)"


def random_control_set(model: str) -> Path:
    """1% of the FFN neurons drawn at random: the paper's control, made with the set API."""
    from transformers import AutoConfig

    from relspec_lmeval.neuron_set import SITES, ModelShape, NeuronSet, model_metadata

    config = AutoConfig.from_pretrained(model)
    shape = ModelShape.from_config(config)
    all_keys = [(layer, site, i) for layer in range(shape.num_layers) for site in SITES for i in range(shape.width(site))]
    k = max(1, shape.total // 100)
    pick = torch.randperm(len(all_keys), generator=torch.Generator().manual_seed(0))[:k].tolist()
    meta = {"model": model_metadata(config, model), "method": "random", "k": k, "seed": 0, "relation": None}
    return NeuronSet.from_keys([all_keys[i] for i in pick], meta).save(WORK / "random-1pct.safetensors")


def main() -> None:
    import logging

    from lm_eval import simple_evaluate

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-task notices drown the table

    local_lre = REPO.parent / "shared" / "data" / "lre"  # the project's offline copy; else the pinned download
    if local_lre.is_dir():
        os.environ.setdefault("RELSPEC_LRE_DIR", str(local_lre))
    WORK.mkdir(exist_ok=True)
    model, label = shipped_or_built_model()
    neuron_set = random_control_set(model)
    print(f"model: {label}\nneuron set: {neuron_set} (random 1% control)\n")
    runs = {}
    for name, extra in (("original", ""), ("ablated", f",neuron_set={neuron_set}")):
        start = time.perf_counter()
        runs[name] = simple_evaluate(model="relspec-hf", model_args=f"pretrained={model}{extra}", tasks=TASKS, limit=LIMIT, device="cpu", batch_size=16)
        print(f"{name}: {time.perf_counter() - start:.0f} s")
    rows = []
    for task in sorted(runs["original"]["results"]):
        for metric in ("acc,none", "word_perplexity,none"):
            if metric in runs["original"]["results"][task]:
                a, b = runs["original"]["results"][task][metric], runs["ablated"]["results"][task][metric]
                rows.append((task, metric.split(",")[0], a, b))
    print(f"\n{'task':42} {'metric':16} {'original':>10} {'ablated':>10} {'diff':>10}")
    for task, metric, a, b in rows:
        print(f"{task:42} {metric:16} {a:10.4f} {b:10.4f} {b - a:+10.4f}")
    applied = runs["ablated"]["config"]["relspec"]["sets"][0]
    print(f"\napplied set sha256 {applied['sha256']} ({applied['count']} neurons), recorded under config.relspec")
    print(f"CLI equivalent: lm_eval --model relspec-hf --model_args pretrained={model},neuron_set={neuron_set} --tasks {','.join(TASKS)} --limit {LIMIT}")


if __name__ == "__main__":
    main()
