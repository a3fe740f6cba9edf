#!/usr/bin/env python
"""Forward-pass cost of an ablation, without lm-eval: plain, weight edits, forward hooks.

``ablation_overhead.py`` times whole lm-eval evaluations; a lent GPU has no lm-eval (and its
dependencies do not fit what a device run can carry), so this times what ``relspec-hf`` adds
inside them: the model's forward pass with a set switched off (``lm.ablation.ablated``) by
weight edits (which cost nothing at run time by construction) and by forward hooks, against
the plain pass. Random Llama with Llama-2-7B's proportions (``--shape small``, CPU) or exact
shape (``--shape 7b``, GPU); a random set of ``--fraction`` of the FFN neurons (the paper's
k = 3000 is 0.36% of Llama-2-7B's); repeats interleaved, the order alternating, medians.
Also checks that weights and hooks give the same logits.

    python benchmarks/ablation_forward.py                                  # CPU, small
    python benchmarks/ablation_forward.py --shape 7b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from identify_throughput import SHAPES, build_model, sync  # noqa: E402

from relspec_lmeval.lm.ablation import AblationSpec, ablated  # noqa: E402
from relspec_lmeval.modelio.sites import model_shape  # noqa: E402
from relspec_lmeval.sets.neuron_set import NeuronSet  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--fraction", type=float, default=0.0036)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the result JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = build_model(args.shape, dtype, args.device, seed=0)
    shape = model_shape(model)
    generator = torch.Generator().manual_seed(0)
    k = max(1, round(args.fraction * shape.total))
    chosen = torch.sort(torch.randperm(shape.total, generator=generator)[:k]).values
    neuron_set = NeuronSet(shape.group(chosen))
    ids = torch.randint(3, model.config.vocab_size, (args.batch_size, args.tokens), generator=generator).to(args.device)

    @torch.inference_mode()
    def forward() -> torch.Tensor:
        out = model(input_ids=ids, use_cache=False).logits[:, -1]
        sync(args.device)
        return out

    variants = {"plain": None, "weights": AblationSpec(method="weights"), "hooks": AblationSpec(method="hooks")}
    last: dict[str, torch.Tensor] = {}

    def timed(name: str) -> float:
        spec = variants[name]
        if spec is None:
            start = time.perf_counter()
            last[name] = forward()
            return time.perf_counter() - start
        with ablated(model, neuron_set, spec):  # the edit/undo is outside the timing, as relspec-hf applies it once
            start = time.perf_counter()
            last[name] = forward()
            return time.perf_counter() - start

    for name in variants:  # warm-up
        timed(name)
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for repeat in range(args.repeats):
        for name in order if repeat % 2 == 0 else reversed(order):
            times[name].append(timed(name))
    median = {name: statistics.median(values) for name, values in times.items()}
    same = torch.allclose(last["weights"].float(), last["hooks"].float(), rtol=1e-2 if dtype != torch.float32 else 1e-4, atol=1e-2)
    result = {
        "shape": args.shape, "layers": shape.num_layers, "hidden": shape.hidden_size, "intermediate": shape.intermediate_size,
        "neurons": shape.total, "k": k, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine(),
        "dtype": args.dtype, "batch": [args.batch_size, args.tokens], "repeats": args.repeats, "torch": torch.__version__,
        "seconds_median": median, "ratio_to_plain": {n: median[n] / median["plain"] for n in variants},
        "weights_equal_hooks": bool(same), "ablation_changes_logits": not torch.allclose(last["plain"].float(), last["weights"].float()),
    }
    lines = [f"ablation_forward: {args.shape} ({shape.num_layers} layers, {shape.total:,} FFN neurons, k={k}) on {result['device_name']}, "
             f"{args.dtype}, batch {args.batch_size}×{args.tokens}, {args.repeats} interleaved repeats"]
    lines += [f"  {n:8} {median[n] * 1000:9.2f} ms   ratio to plain {result['ratio_to_plain'][n]:.3f}" for n in variants]
    lines.append(f"  weights and hooks give the same logits: {'yes' if same else 'NO'}; the ablation changes them: "
                 f"{'yes' if result['ablation_changes_logits'] else 'no'}")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
