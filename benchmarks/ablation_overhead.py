"""Run-time cost of relspec-hf: time with a 0.36% neuron set / time of plain hf.

Same model, same tasks, one process; the three variants (plain ``hf``, ``relspec-hf`` with
weight edits, ``relspec-hf`` forced onto forward hooks) run interleaved, REPEATS times, and
the median ratio is reported. Model loading is excluded (each LM is built once); the timed
part is a whole lm-eval evaluation (requests, batching, metrics). Goal: weight edits ≤ 1.02.

    python benchmarks/ablation_overhead.py > benchmarks/results/ablation_overhead.txt
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

REPEATS = 7
LIMIT = 12  # documents per subtask
TASKS = ["relation_recall", "relation_ppl"]
FRACTION = 0.0036


def main() -> None:
    from conftest import build_tiny_llama
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from relspec_lmeval.lm.hflm import RelspecHFLM
    from relspec_lmeval.sets.neuron_set import NeuronSet
    from relspec_lmeval.sets.shape import SITES, ModelShape

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    os.environ.setdefault("RELSPEC_LRE_DIR", str(REPO.parent / "shared" / "data" / "lre"))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(tempfile.mkdtemp())
    # Llama-2-7B's proportions (FFN = 2.6875 × hidden), scaled down to run on a CPU.
    model = build_tiny_llama(work / "model", layers=4, hidden=256, ffn=688)
    shape = ModelShape.from_config(model.config)
    k = round(FRACTION * shape.total)
    keys = [(layer, site, i) for layer in range(shape.num_layers) for site in SITES for i in range(shape.width(site))]
    pick = torch.randperm(len(keys), generator=torch.Generator().manual_seed(0))[:k].tolist()
    set_path = NeuronSet.from_keys([keys[i] for i in pick], {"relation": "benchmark"}).save(work / "set.safetensors")

    common = dict(pretrained=str(work / "model"), device="cpu", batch_size=16)
    lms = {
        "hf": HFLM(**common),
        "relspec-hf (weights)": RelspecHFLM(**common, neuron_set=str(set_path)),
        "relspec-hf (hooks)": RelspecHFLM(**common, neuron_set=str(set_path), ablate_with="hooks"),
    }
    times: dict[str, list[float]] = {name: [] for name in lms}
    for _ in range(REPEATS):
        for name, lm in lms.items():
            start = time.perf_counter()
            simple_evaluate(model=lm, tasks=TASKS, limit=LIMIT, bootstrap_iters=0)
            times[name].append(time.perf_counter() - start)

    print(f"# ablation_overhead: {k} neurons ({FRACTION:.2%} of {shape.total}), model {shape.num_layers} layers, "
          f"hidden {shape.hidden_size}, ffn {shape.intermediate_size}; tasks {','.join(TASKS)} limit {LIMIT}; "
          f"{REPEATS} interleaved repeats")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    base = times["hf"]
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, base)]
        print(f"{name:24} median {statistics.median(values):7.3f} s   ratio to hf: median {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
