#!/usr/bin/env python
"""bfloat16 against float32 on this CPU (issue 23): the forward's cost, the sets, their effect, lm_eval's time.

    python benchmarks/bf16.py --model gemma-3-270m --relation product_company \
        --out benchmarks/results/bf16_gemma-3-270m

What the dtype changes in identification, on one fixed selection of prompts so that nothing
else differs:

1. Probes: a 1280×640 by 640×2048 ``linear`` on one thread and one forward of the model over
   ``--batch-size`` × 16 tokens, each dtype; the CPU's bf16 flags (``/proc/cpuinfo``).
2. The prompts: ``--relation``'s P^det, answered by the float32 model (greedy 2 tokens, the
   lenient check, as ``relspec identify --correct-metric acc_lenient``); the first ``--cap``
   correct ones are the positives, 4 × as many other relations' P^det prompts (seeded) the
   negatives. The bfloat16 model answers the first ``--check`` of the same P^det prompts, to
   count how often the two dtypes disagree on "correct".
3. The statistics pass (``identify.activations.activation_matrix``, as identify runs it) over
   those prompts in each dtype, timed; AP (``identify.methods.ap``) of each; the top k at each
   ``--ks`` (0.36%, 1%, 3% of the FFN neurons): the share of the float32 set the bfloat16
   set keeps.
4. Both sets at the first two ks switched off (exact weight edits) in the float32 model on the
   relation's P^eva: nats of gold log-probability lost per document (paired bootstrap, 95%)
   and the relative drop of ``acc_lenient``.
5. The README's original lm_eval run (``--tasks relation_recall_<relation>,relation_choice_<relation>
   --batch_size 16``) with ``dtype=float32`` and ``dtype=bfloat16``: wall seconds and metrics.

A whole ``relspec identify --relations all`` in bfloat16 is not run here: identification's
statistics cover every relation's P^det (7,347 prompts on gemma-3-270m), and on a CPU without
native bf16 that pass alone would take over an hour. The load average is recorded at each step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DTYPES = ("float32", "bfloat16")


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_flags() -> list[str]:
    """The CPU's vector and bfloat16 flags (``/proc/cpuinfo``): without avx512_bf16/amx_bf16 torch has no native bf16 matmul."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(set(flags) & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2"})


def probes(models: dict, batch_size: int, repeat: int = 3) -> dict:
    import torch

    out: dict = {"linear_ms": {}, "forward_s": {}, "load": _load()}
    x, w = torch.randn(1280, 640), torch.randn(2048, 640)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for d in DTYPES:
        a, b = x.to(getattr(torch, d)), w.to(getattr(torch, d))
        torch.nn.functional.linear(a, b)
        start = time.perf_counter()
        for _ in range(10):
            torch.nn.functional.linear(a, b)
        out["linear_ms"][d] = round((time.perf_counter() - start) * 100, 1)
    torch.set_num_threads(threads)
    vocab = models["float32"].config.get_text_config().vocab_size
    ids = torch.randint(3, min(vocab, 1000), (batch_size, 16), generator=torch.Generator().manual_seed(0))
    for d in DTYPES:
        with torch.inference_mode():
            models[d](input_ids=ids)
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                models[d](input_ids=ids)
                times.append(time.perf_counter() - start)
        out["forward_s"][d] = round(statistics.median(times), 3)
    return out


def answers(model, tokenizer, encoded: list, golds: list, batch_size: int) -> list[bool]:
    from relspec_lmeval.data.metrics import METRICS
    from relspec_lmeval.identify.activations import generate_with_means
    from relspec_lmeval.identify.correctness import first_line

    texts, _ = generate_with_means(model, tokenizer, encoded, None, batch_size=batch_size, progress=False)
    return [METRICS["acc_lenient"](first_line(t), g) for t, g in zip(texts, golds)]


def select_prompts(relation: str, model, tokenizer, cap: int, check: int, bf16_model, batch_size: int, data_dir: str | None) -> dict:
    """Positives (the float32 model's first ``cap`` correct P^det prompts), negatives, and the dtypes' agreement."""
    from relspec_lmeval.data.relations import available_relations, build_docs
    from relspec_lmeval.identify.tokens import encode_prompts

    det = build_docs(relation, split="det", data_dir=data_dir)
    encoded = encode_prompts(tokenizer, [d["prompt"] for d in det])
    golds = [d["golds"] for d in det]
    start = time.perf_counter()
    correct = answers(model, tokenizer, encoded, golds, batch_size)
    f32_seconds = time.perf_counter() - start
    start = time.perf_counter()
    bf16 = answers(bf16_model, tokenizer, encoded[:check], golds[:check], batch_size)
    bf16_seconds = time.perf_counter() - start
    positives = [e for e, ok in zip(encoded, correct) if ok][:cap]
    if not positives:
        raise SystemExit(f"bf16.py: the float32 model answers none of {relation}'s {len(det)} P^det prompts")
    others = [p for r in available_relations(data_dir) if r != relation
              for p in (d["prompt"] for d in build_docs(r, split="det", data_dir=data_dir))]
    negatives = encode_prompts(tokenizer, random.Random(0).sample(others, 4 * len(positives)))
    return {"encoded": positives + negatives, "labels": [True] * len(positives) + [False] * len(negatives),
            "record": {"det_prompts": len(det), "correct_float32": sum(correct), "positives": len(positives),
                       "negatives": len(negatives), "checked_bfloat16": check,
                       "agree_on_checked": sum(a == b for a, b in zip(correct[:check], bf16)),
                       "correct_on_checked": {"float32": sum(correct[:check]), "bfloat16": sum(bf16)},
                       "generation_seconds": {"float32 (all)": round(f32_seconds, 1), f"bfloat16 (first {check})": round(bf16_seconds, 1)}}}


def statistics_and_sets(models: dict, tokenizer, prompts: dict, ks: list[int], batch_size: int) -> tuple[dict, dict]:
    import torch

    from relspec_lmeval.identify.activations import activation_matrix
    from relspec_lmeval.identify.methods.ap import average_precision
    from relspec_lmeval.identify.tokens import pad_token_id
    from relspec_lmeval.modelio.sites import model_shape
    from relspec_lmeval.sets.neuron_set import NeuronSet
    from relspec_lmeval.sets.scores import select_flat

    shape = model_shape(models["float32"])
    labels = torch.tensor(prompts["labels"])
    timing, sets = {}, {}
    for d in DTYPES:
        load = _load()
        start = time.perf_counter()
        matrix = activation_matrix(models[d], prompts["encoded"], shape, batch_size=batch_size, pad_id=pad_token_id(tokenizer),
                                   progress=False)
        timing[d] = {"seconds": round(time.perf_counter() - start, 1), "load_before": load, "matrix_dtype": str(matrix.dtype)}
        ap = average_precision(matrix, labels)
        sets[d] = {k: NeuronSet(shape.group(select_flat(ap, k)), {}) for k in ks}
    kept = {str(k): round(sets["float32"][k].overlap(sets["bfloat16"][k]) / k, 4) for k in ks}
    return {"timing": timing, "kept": kept, "neurons": shape.total}, sets


def effects(model, tokenizer, relation: str, sets: dict, ks: list[int], batch_size: int, data_dir: str | None) -> dict:
    import numpy as np
    import real_model_lib as lib

    from relspec_lmeval.experiments.stats import bootstrap_mean
    from relspec_lmeval.lm.ablation import ablated

    evaluator = lib.Evaluator(model, tokenizer, [relation], batch_size, 0, data_dir)
    original = evaluator.measure()[relation]
    lenient = float(np.mean(original["acc_lenient"]))
    out: dict = {"original": {"acc_lenient": round(lenient, 4), "logprob": round(float(np.mean(original["logprob"])), 4),
                              "docs": len(original["logprob"])}}
    for k in ks:
        for d in DTYPES:
            with ablated(model, sets[d][k]):
                values = evaluator.measure()[relation]
            boot = bootstrap_mean(np.array(values["logprob"]), np.array(original["logprob"]), seed=0)
            out.setdefault(str(k), {})[d] = {
                "nats": round(boot.observed, 4), "low": round(boot.low, 4), "high": round(boot.high, 4),
                "lenient_drop": None if lenient == 0 else round((lenient - float(np.mean(values["acc_lenient"]))) / lenient, 4)}
    return out


def lm_eval_runs(work: Path, model: str, relation: str) -> dict:
    runs = {}
    for d in DTYPES:
        out = work / f"lm_eval-{d}"
        argv = ["/usr/bin/time", "-o", str(work / f"lm_eval-{d}.time"), "-f", "%e %M", sys.executable, "-m", "lm_eval",
                "--model", "relspec-hf", "--model_args", f"pretrained={model},dtype={d}",
                "--tasks", f"relation_recall_{relation},relation_choice_{relation}", "--device", "cpu", "--batch_size", "16",
                "--output_path", str(out)]
        load = _load()
        with (work / f"lm_eval-{d}.log").open("w") as log:
            code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT).returncode
        wall, rss = (work / f"lm_eval-{d}.time").read_text().split()[-2:]
        found = sorted(out.rglob("results_*.json"))
        metrics = json.loads(found[-1].read_text())["results"] if found else {}
        runs[d] = {"exit": code, "seconds": float(wall), "peak_mib": round(int(rss) / 1024), "load_before": load,
                   "metrics": {t: {m: round(v, 4) for m, v in vals.items() if m in ("acc,none", "acc_lenient,none")}
                               for t, vals in metrics.items()}}
    return runs


def report(rec: dict) -> str:
    p, s, e = rec["probes"], rec["sets"], rec["effects"]
    native = bool({"avx512_bf16", "amx_bf16"} & set(rec["cpu_flags"]))
    lines = [f"# bfloat16 against float32 on this CPU: {rec['model']}, {rec['relation']} (issue 23)", "",
             f"`{rec['command']}` on {rec['machine']}; torch {rec['torch']}; {rec['seconds']} s in all. Nothing else ran on "
             f"the machine; the load average (1 min, this job's own threads included) is given per step.", "",
             f"CPU flags: {', '.join(rec['cpu_flags']) or 'none found'}"
             + ("." if native else " — no `avx512_bf16` or `amx_bf16`: torch has no native bfloat16 matmul on this CPU."), "",
             "| probe | float32 | bfloat16 | bf16 / f32 |", "|---|---:|---:|---:|",
             f"| 1280×640 by 640×2048 `linear`, 1 thread (ms) | {p['linear_ms']['float32']} | {p['linear_ms']['bfloat16']} | "
             f"{p['linear_ms']['bfloat16'] / p['linear_ms']['float32']:.1f}× |",
             f"| one forward, {rec['batch_size']} × 16 tokens (s) | {p['forward_s']['float32']} | {p['forward_s']['bfloat16']} | "
             f"{p['forward_s']['bfloat16'] / p['forward_s']['float32']:.1f}× |"]
    t = s["timing"]
    lines.append(f"| identify's statistics pass, {rec['prompts']['positives'] + rec['prompts']['negatives']} prompts (s) | "
                 f"{t['float32']['seconds']} | {t['bfloat16']['seconds']} | {t['bfloat16']['seconds'] / t['float32']['seconds']:.1f}× |")
    pr = rec["prompts"]
    lines += ["", "## The sets", "",
              f"P^det of {rec['relation']}: {pr['det_prompts']} prompts, {pr['correct_float32']} correct in float32 (lenient); "
              f"positives: the first {pr['positives']}, negatives: {pr['negatives']} other relations' P^det prompts. On the first "
              f"{pr['checked_bfloat16']} prompts the bfloat16 model's answers count correct {pr['correct_on_checked']['bfloat16']} "
              f"times against float32's {pr['correct_on_checked']['float32']}; the two agree on {pr['agree_on_checked']} of them. "
              f"Statistics are accumulated in {t['bfloat16']['matrix_dtype']} in both runs.", "",
              "| k | share of the FFN neurons | float32 set kept by the bfloat16 set |", "|---:|---:|---:|"]
    lines += [f"| {k} | {100 * int(k) / s['neurons']:.2f}% | {100 * v:.1f}% |" for k, v in s["kept"].items()]
    o = e["original"]
    lines += ["", f"## Their effect (float32 model, {rec['relation']}'s P^eva, {o['docs']} documents)", "",
              f"Original: acc_lenient {o['acc_lenient']}, mean gold log-prob {o['logprob']} nats.", "",
              "| k | set from | nats lost (95% CI) | acc_lenient drop |", "|---:|---|---|---:|"]
    for k in rec["effect_ks"]:
        for d in DTYPES:
            x = e[str(k)][d]
            drop = "n/a" if x["lenient_drop"] is None else f"{100 * x['lenient_drop']:.0f}%"
            lines.append(f"| {k} | {d} | {x['nats']:.3f} [{x['low']:.3f}, {x['high']:.3f}] | {drop} |")
    if rec["lm_eval"]:
        lines += ["", f"## The README's original lm_eval run (`relation_recall_{rec['relation']},relation_choice_{rec['relation']}`, "
                  "`--batch_size 16`)", "", "| dtype | exit | seconds | peak RSS (MiB) | recall acc | recall acc_lenient | choice acc |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for d, run in rec["lm_eval"].items():
            rc, ch = (run["metrics"].get(f"relation_{t}_{rec['relation']}", {}) for t in ("recall", "choice"))
            lines.append(f"| {d} | {run['exit']} | {run['seconds']:.0f} | {run['peak_mib']} | {rc.get('acc,none', '-')} | "
                         f"{rc.get('acc_lenient,none', '-')} | {ch.get('acc,none', '-')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--relation", default="product_company")
    p.add_argument("--out", required=True, help="output prefix: PREFIX.json and PREFIX.md")
    p.add_argument("--work", default="/tmp/relspec-bf16", help="the lm_eval runs' folder")
    p.add_argument("--ks", default="307,852,2557")
    p.add_argument("--cap", type=int, default=100, help="positives (default 100)")
    p.add_argument("--check", type=int, default=96, help="P^det prompts the bfloat16 model also answers (default 96)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data-dir", default=None, help="relation files (default: LRE; relspec-tiny: models/relspec-tiny/world)")
    p.add_argument("--skip-lm-eval", action="store_true")
    args = p.parse_args()
    import torch

    from relspec_lmeval.modelio.load import load_model

    start = time.perf_counter()
    ks = [int(k) for k in args.ks.split(",")]
    models, tokenizer = {}, None
    for d in DTYPES:
        models[d], tokenizer = load_model(args.model, dtype=d, device="cpu", progress=False)
    rec = {"model": args.model, "relation": args.relation, "ks": ks, "effect_ks": ks[:2], "batch_size": args.batch_size,
           "torch": torch.__version__, "command": "python benchmarks/bf16.py " + " ".join(sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads", "cpu_flags": cpu_flags()}
    log = lambda what: print(f"bf16.py: {what} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)  # noqa: E731
    rec["probes"] = probes(models, args.batch_size)
    log(rec["probes"])
    chosen = select_prompts(args.relation, models["float32"], tokenizer, args.cap, args.check, models["bfloat16"], args.batch_size,
                            args.data_dir)
    rec["prompts"] = chosen["record"]
    log(rec["prompts"])
    rec["sets"], sets = statistics_and_sets(models, tokenizer, chosen, ks, args.batch_size)
    log(rec["sets"])
    del models["bfloat16"]
    rec["effects"] = effects(models["float32"], tokenizer, args.relation, sets, ks[:2], args.batch_size, args.data_dir)
    log("effects")
    del models["float32"]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rec["lm_eval"] = {} if args.skip_lm_eval else lm_eval_runs(work, args.model, args.relation)
    rec["seconds"] = round(time.perf_counter() - start)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / (out.name + ".json")).write_text(json.dumps(rec, indent=1) + "\n")
    (out.parent / (out.name + ".md")).write_text(report(rec))
    print(report(rec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
