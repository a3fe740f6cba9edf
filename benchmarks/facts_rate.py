#!/usr/bin/env python
"""Facts known per CPU-minute: which real model to identify on a small machine.

    python benchmarks/facts_rate.py --models qwen2.5-coder-0.5b-instruct,qwen2.5-coder-1.5b-instruct \
        --out benchmarks/results/facts_rate

For each model (a short name or folder relspec resolves), in one process and one after the
other on the same prompts: ``--per-relation`` P^det prompts of each of the 12 relations (a
seeded sample), greedy 2-token generation as identification's correctness check does it
(``identify.activations.generate_with_means``: length-sorted batches, left padding), the
paper's ``acc`` and ``acc_lenient``, and the wall time of the generation alone (the load is
reported apart). "Facts per CPU-minute" = lenient-correct prompts / generation minutes: what
the correctness check of identification finds per minute of this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from relspec_lmeval.data.metrics import METRICS  # noqa: E402
from relspec_lmeval.data.relations import RELATIONS, build_docs  # noqa: E402
from relspec_lmeval.identify.activations import generate_with_means  # noqa: E402
from relspec_lmeval.identify.correctness import first_line  # noqa: E402
from relspec_lmeval.identify.tokens import encode_prompts  # noqa: E402
from relspec_lmeval.modelio.load import load_model  # noqa: E402


def measure(model_name: str, per_relation: int, batch_size: int, dtype: str) -> dict:
    start = time.perf_counter()
    model, tokenizer = load_model(model_name, dtype=dtype, device="cpu", progress=False)
    loaded = time.perf_counter() - start
    docs = []
    for relation in RELATIONS:
        found = build_docs(relation, "det")
        random.Random(0).shuffle(found)
        docs += found[:per_relation]
    encoded = encode_prompts(tokenizer, [d["prompt"] for d in docs])
    start = time.perf_counter()
    texts, _ = generate_with_means(model, tokenizer, encoded, None, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    scores = {name: [check(first_line(t), d["golds"]) for t, d in zip(texts, docs)] for name, check in METRICS.items()}
    per_relation_lenient = {r: sum(ok for ok, d in zip(scores["acc_lenient"], docs) if d["relation"] == r) for r in RELATIONS}
    lenient = sum(scores["acc_lenient"])
    return {
        "model": model_name, "prompts": len(docs), "load_seconds": round(loaded, 1), "generate_seconds": round(seconds, 1),
        "prompts_per_second": round(len(docs) / seconds, 2), "acc": round(sum(scores["acc"]) / len(docs), 3),
        "acc_lenient": round(lenient / len(docs), 3), "facts_per_cpu_minute": round(lenient / seconds * 60, 1),
        "lenient_correct_per_relation": per_relation_lenient, "load_average": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="comma-separated short names or folders")
    parser.add_argument("--per-relation", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    command = "python benchmarks/facts_rate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = [measure(m, args.per_relation, args.batch_size, args.dtype) for m in args.models.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n", encoding="utf-8")
    lines = ["# Facts known per CPU-minute", "", f"Made by `{command}` ({os.cpu_count()} CPU threads, {args.dtype}).", "",
             "| model | prompts | load s | generate s | prompts/s | acc | acc_lenient | lenient facts / CPU-min | load avg |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['prompts']} | {r['load_seconds']} | {r['generate_seconds']} | {r['prompts_per_second']} | {r['acc']} | "
              f"{r['acc_lenient']} | {r['facts_per_cpu_minute']} | {r['load_average']:.1f} |" for r in rows]
    lines += ["", "Lenient-correct prompts per relation (of " + str(args.per_relation) + "):", ""]
    lines += [f"- {r['model']}: " + ", ".join(f"{k} {v}" for k, v in r["lenient_correct_per_relation"].items()) for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
