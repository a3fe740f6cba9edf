"""The worker side of benchmarks/peers.py: one identification, AP or ablation run per process.

Each worker loads what its spec names, warms up, and times one run; ``Peak`` measures the
resident memory above the loaded state while it runs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

IDENTIFY = {  # name: (collection, AP)
    "relspec-lmeval": ("ours", "ours"),
    "hooks + sklearn": ("hooks", "sklearn"),
    "hooks + torchmetrics": ("hooks", "torchmetrics"),
    "nnsight + torchmetrics": ("nnsight", "torchmetrics"),
    "TransformerLens + torchmetrics": ("transformer_lens", "torchmetrics"),
    "selfcond recipe": ("selfcond", "sklearn_pool"),
}
AP_TOOLS = ["ours", "torchmetrics", "sklearn", "sklearn_pool"]
NEEDS = {"nnsight": "nnsight", "transformer_lens": "transformer_lens", "torchmetrics": "torchmetrics", "sklearn": "sklearn", "sklearn_pool": "sklearn", "selfcond": "sklearn"}

def available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


class Peak:
    """Resident memory above the state at start, sampled every 5 ms (context manager)."""

    def __enter__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._rss())
        self.extra_mb = (self.peak - self.base) / 2**20


def identify_worker(spec: dict, tool: str) -> dict:
    import numpy as np
    import peers_lib as lib
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(spec["threads"])
    collect, ap = IDENTIFY[tool]
    model = AutoModelForCausalLM.from_pretrained(spec["folder"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(spec["folder"])
    encoded = spec["encoded"]
    labels = torch.tensor(spec["labels"], dtype=torch.bool)
    t = time.perf_counter()
    bridge = lib.tl_bridge(model, tokenizer) if collect == "transformer_lens" else None
    setup = time.perf_counter() - t
    pickles = Path(spec["work"]) / f"selfcond-{os.getpid()}"

    def collection(prompts):
        if collect == "ours":
            return lib.collect_ours(model, prompts, spec["batch_size"], spec["pad_id"])
        batches = lib.batches(prompts, spec["batch_size"], spec["pad_id"])
        if collect == "hooks":
            return lib.collect_hooks(model, batches, len(prompts))
        if collect == "nnsight":
            return lib.collect_nnsight(model, tokenizer, batches, len(prompts))
        if collect == "transformer_lens":
            return lib.collect_transformer_lens(bridge, batches, len(prompts))
        return lib.collect_selfcond(model, batches, len(prompts), pickles / str(len(prompts)))

    def average_precision(values):
        if ap == "ours":
            return lib.ap_ours(values, labels)
        if ap == "sklearn":
            return lib.ap_sklearn_loop(values, labels)
        if ap == "torchmetrics":
            return lib.ap_torchmetrics(values, labels)
        return lib.ap_sklearn_pool(values, labels)

    collection(encoded[: spec["batch_size"]])  # warm-up: one batch
    with Peak() as peak:
        t0 = time.perf_counter()
        values = collection(encoded)
        t1 = time.perf_counter()
        scores = average_precision(values)
        t2 = time.perf_counter()
        chosen = lib.top_k(scores, spec["k"])
        t3 = time.perf_counter()
    out = Path(spec["work"]) / f"ap-{tool.replace(' ', '_')}-{os.getpid()}.npy"
    np.save(out, np.asarray(scores, dtype=np.float64))
    return {"collection": t1 - t0, "ap": t2 - t1, "top_k": t3 - t2, "seconds": t3 - t0, "setup": setup, "extra_mb": peak.extra_mb, "ap_file": str(out), "chosen": chosen}


def ap_worker(spec: dict, tool: str) -> dict:
    import numpy as np
    import peers_lib as lib
    import torch

    torch.set_num_threads(spec["threads"])
    n, cols = spec["ap_shape"]
    g = torch.Generator().manual_seed(spec.get("seed", 0))
    labels = torch.zeros(n, dtype=torch.bool)
    labels[: n // 5] = True
    values = torch.randn((n, cols), generator=g) + 0.5 * torch.rand(cols, generator=g) * labels.unsqueeze(1)
    values = torch.round(values * 64) / 64  # ties, as in quantized activations
    fn = {"ours": lib.ap_ours, "torchmetrics": lib.ap_torchmetrics, "sklearn": lib.ap_sklearn_loop}.get(tool)
    if tool == "sklearn_pool":
        columns = values.numpy()
        fn = lambda v, y: lib.ap_sklearn_pool({str(j): columns[:, j] for j in range(cols)}, y)  # noqa: E731
    fn(values[:, :64].contiguous(), labels)  # warm-up
    with Peak() as peak:
        t = time.perf_counter()
        scores = fn(values, labels)
        seconds = time.perf_counter() - t
    out = Path(spec["work"]) / f"apalone-{tool}-{os.getpid()}.npy"
    np.save(out, np.asarray(scores, dtype=np.float64))
    return {"seconds": seconds, "extra_mb": peak.extra_mb, "ap_file": str(out)}


def ablation_worker(spec: dict, tool: str) -> dict:
    import hashlib
    import logging
    import warnings

    import peers_lib as lib
    import torch
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager, get_task_dict

    import _relspec_lmeval_hook  # noqa: F401  (a source checkout: the hook the wheel's .pth would load)
    from relspec_lmeval.sets.neuron_set import NeuronSet

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    torch.set_num_threads(spec["threads"])
    neuron_set = NeuronSet.load(spec["set_path"])
    lms = {name: make() for name, make in lib.ablation_lms(spec["folder"], spec["set_path"], neuron_set.neurons, spec["batch_size"], available("nnsight")).items()}
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    tasks = get_task_dict(spec["tasks"], TaskManager())
    times: dict[str, list[float]] = {name: [] for name in lms}
    metrics: dict[str, dict] = {}
    responses: dict[str, str] = {}
    names = list(lms)
    for r in range(spec["repeats"] + 1):  # round 0 is the warm-up
        for name in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            out = evaluate(lm=lms[name], task_dict=tasks, limit=spec["limit"], bootstrap_iters=0, verbosity="ERROR")
            if r:
                times[name].append(time.perf_counter() - t)
            metrics[name] = {task: {k: v for k, v in m.items() if isinstance(v, float)} for task, m in sorted(out["results"].items())}
            answers = json.dumps({task: [s["filtered_resps"] for s in samples] for task, samples in sorted(out["samples"].items())}, default=str)
            responses[name] = hashlib.sha256(answers.encode()).hexdigest()[:16]  # every generation and log-likelihood
    return {"times": times, "metrics": metrics, "responses": responses}


WORKERS = {"identify": identify_worker, "ap": ap_worker, "ablation": ablation_worker}


