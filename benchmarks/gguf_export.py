#!/usr/bin/env python
"""The ablated GGUF round trip on a real model: ``relspec export --format gguf``, loaded back, against relspec-hf.

    python benchmarks/gguf_export.py --model gemma-3-270m --neuron-set gemma-3-270m/product_company \
        --out benchmarks/results/gguf_export_gemma-3-270m

1. Runs the command a user runs, ``relspec export --format gguf --model M --neuron-set S --out TMP/ablated.gguf``
   (timed, in a subprocess), and compares the two files: sizes, tensor types, which tensors differ
   (every other one must be byte-identical), the metadata keys.
2. Loads the written file with transformers (``from_pretrained(gguf_file=...)``, float32) and the
   original model as relspec-hf does (its float32 conversion, the set switched off by
   ``relspec_lmeval.ablated``), and scores every relation's P^eva on both with the
   ``real_model_lib.Evaluator`` (greedy ``acc``/``acc_lenient``, the gold's log-probability): the
   per-document values must agree; the original model is scored too, for the set's own effect.

llama.cpp itself is not run here (the tiny-model check with llama-cpp-python is
``tests/test_export_gguf.py::test_llama_cpp_runs_the_ablated_file_like_relspec_hf``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import real_model_lib as lib  # noqa: E402


def compare_files(source: Path, written: Path) -> dict:
    """Sizes, and per tensor whether it is byte-identical, and its types before and after."""
    import gguf

    a, b = gguf.GGUFReader(source), gguf.GGUFReader(written)
    after = {t.name: t for t in b.tensors}
    changed = [t.name for t in a.tensors if not np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(after[t.name].data).view(np.uint8))]
    retyped = [t.name for t in a.tensors if t.tensor_type != after[t.name].tensor_type]
    types = sorted({t.tensor_type.name for t in a.tensors if t.name in changed})
    return {
        "source_bytes": source.stat().st_size, "written_bytes": written.stat().st_size, "tensors": len(a.tensors),
        "same_tensor_names": [t.name for t in a.tensors] == list(after), "changed_tensors": len(changed), "changed_types": types,
        "retyped_tensors": retyped, "metadata_kept": all(b.get_field(f.name) is not None for f in a.fields.values()),
        "relspec_keys": sorted(name for name in b.fields if name.startswith("relspec.")),
    }


def agreement(ours: dict, theirs: dict) -> dict:
    """Per metric over every relation's docs: docs compared, docs equal, largest absolute difference."""
    out = {}
    for metric in ("acc", "acc_lenient", "logprob", "logprob_first"):
        x = np.array([v for r in ours for v in ours[r][metric]])
        y = np.array([v for r in ours for v in theirs[r][metric]])
        out[metric] = {"docs": int(x.size), "equal": int((x == y).sum()), "max_abs_diff": float(np.abs(x - y).max())}
    return out


def run(args: argparse.Namespace) -> dict:
    from transformers import AutoModelForCausalLM

    from relspec_lmeval import ablated
    from relspec_lmeval.data.relations import RELATIONS
    from relspec_lmeval.lm.export_gguf import gguf_source
    from relspec_lmeval.modelio.load import load_model
    from relspec_lmeval.sets.resolve import load_sets

    source = gguf_source(args.model, args.gguf_file)
    with tempfile.TemporaryDirectory() as tmp:
        written = Path(tmp) / "ablated.gguf"
        relspec = Path(sys.executable).with_name("relspec")  # the installed command, beside this Python
        command = [str(relspec) if relspec.is_file() else "relspec", "export", "--format", "gguf", "--model", args.model, "--neuron-set", args.neuron_set, "--out", str(written)]
        command += ["--gguf-file", args.gguf_file] if args.gguf_file else []
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"gguf_export.py: {' '.join(command)} failed:\n{done.stderr}")
        files = compare_files(source, written)
        model, tokenizer = load_model(args.model, gguf_file=args.gguf_file, device="cpu", progress=False)
        relations = list(RELATIONS) if args.relations == "all" else args.relations.split(",")
        evaluator = lib.Evaluator(model, tokenizer, relations, args.batch_size, 0, args.data_dir)
        original = evaluator.measure()
        with ablated(model, load_sets(args.neuron_set)):
            relspec_hf = evaluator.measure()
        evaluator.model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=written.name, dtype="float32").eval()
        from_gguf = evaluator.measure()
    own = args.neuron_set.split("/")[-1].removesuffix(".safetensors")
    summary = {
        name: {r: {m: float(np.mean(v[m])) for m in ("acc", "acc_lenient", "logprob")} for r, v in values.items()}
        for name, values in (("original", original), ("relspec_hf", relspec_hf), ("from_gguf", from_gguf))
    }
    return {
        "command": "python benchmarks/gguf_export.py " + " ".join(sys.argv[1:]), "export_command": " ".join(["relspec", *command[1:]]).replace(str(written), "OUT/ablated.gguf"),
        "export_seconds": round(seconds, 1), "export_stdout": done.stdout.strip(), "export_stderr_lines": done.stderr.strip().splitlines()[-3:],
        "files": files, "agreement_gguf_vs_relspec_hf": agreement(from_gguf, relspec_hf), "own_relation": own, "means": summary,
    }


def report(record: dict) -> str:
    f, agree, means, own = record["files"], record["agreement_gguf_vs_relspec_hf"], record["means"], record["own_relation"]
    lines = [
        "# Ablated GGUF round trip", "", f"`{record['command']}`", "",
        f"Export: `{record['export_command']}` took {record['export_seconds']} s (one process, start-up included).", "",
        "| | bytes |", "|---|---|", f"| input GGUF | {f['source_bytes']:,} |", f"| ablated GGUF | {f['written_bytes']:,} |", "",
        f"Tensors: {f['tensors']}; changed {f['changed_tensors']} (types {', '.join(f['changed_types']) or '-'}), "
        f"written in another type {len(f['retyped_tensors'])}; every other tensor byte-identical. "
        f"Metadata keys all kept: {f['metadata_kept']}; added: {', '.join(f['relspec_keys'])}.", "",
        "## The written file loaded back (transformers) against relspec-hf on the original", "",
        "| metric | docs | equal | largest difference |", "|---|---|---|---|",
        *[f"| {m} | {a['docs']} | {a['equal']} | {a['max_abs_diff']:.3g} |" for m, a in agree.items()], "",
        f"## {own}: its own relation", "", "| model | acc | acc_lenient | gold log-prob (nats) |", "|---|---|---|---|",
        *[f"| {name} | {means[name][own]['acc']:.3f} | {means[name][own]['acc_lenient']:.3f} | {means[name][own]['logprob']:.3f} |"
          for name in ("original", "relspec_hf", "from_gguf")], "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--model", required=True)
    parser.add_argument("--gguf-file", default=None)
    parser.add_argument("--neuron-set", required=True)
    parser.add_argument("--relations", default="all")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", required=True, help="OUT.json and OUT.md are written")
    args = parser.parse_args()
    record = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(report(record), encoding="utf-8")
    print(report(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
