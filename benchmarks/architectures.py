#!/usr/bin/env python
"""One identify + ablate + export per newer architecture, as a user runs them, on tiny random configs.

    python benchmarks/architectures.py --out benchmarks/results/architectures

For each of Phi-3 (fused ``gate_up_proj``), Mixtral, Qwen2-MoE (with a shared expert), Qwen3-MoE and
OLMoE (grouped expert tensors): a 2-layer random model with relspec-tiny's tokenizer is saved to a
temporary folder, and the three commands run in subprocesses exactly as typed:

1. ``relspec identify --model DIR --data relation_recall_synthetic_det --relations person_father --no-filter --k 24 --out SETS``
   (a random model answers nothing, so ``--no-filter``: every P^det prompt is a positive);
2. ``lm_eval --model relspec-hf --model_args pretrained=DIR,neuron_set=SETS/person_father.safetensors
   --tasks relation_logprob_synthetic_person_father --limit 8`` (and the same without the set, to show the set
   moves the log-probability);
3. ``relspec export --model DIR --neuron-set SETS/person_father.safetensors --out EXPORTED``.

What it records: each command's exit status, wall time and last line; which sites (and, for the
experts, which experts) the set holds (``relspec info --json``); the two lm_eval scores. The
correctness of each path is the tests' job (``tests/test_moe.py``, ``tests/test_fused_mlp.py``: every
ablation against a slow per-token reference); this shows the commands work end to end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RELATION = "person_father"
COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              bos_token_id=1, eos_token_id=2, pad_token_id=3, initializer_range=0.1)


def configs(vocab: int) -> dict:
    import transformers as tf

    moe = dict(COMMON, vocab_size=vocab, num_experts_per_tok=2)
    return {
        "phi3": (tf.Phi3ForCausalLM, tf.Phi3Config(**COMMON, vocab_size=vocab, intermediate_size=48)),
        "mixtral": (tf.MixtralForCausalLM, tf.MixtralConfig(**moe, intermediate_size=24, num_local_experts=4)),
        "qwen2_moe": (tf.Qwen2MoeForCausalLM, tf.Qwen2MoeConfig(**moe, intermediate_size=40, moe_intermediate_size=16,
                                                                 shared_expert_intermediate_size=40, num_experts=6)),
        "qwen3_moe": (tf.Qwen3MoeForCausalLM, tf.Qwen3MoeConfig(**moe, intermediate_size=40, moe_intermediate_size=24, num_experts=6,
                                                                 head_dim=8)),
        "olmoe": (tf.OlmoeForCausalLM, tf.OlmoeConfig(**moe, intermediate_size=24, num_experts=8)),
    }


def build(kind: str, folder: Path) -> None:
    import torch

    tokenizer = ROOT / "models" / "relspec-tiny"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, folder / name)
    vocab = json.loads((tokenizer / "config.json").read_text())["vocab_size"]
    cls, config = configs(vocab)[kind]
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():  # routers that really choose (some start at zero)
        for layer in model.model.layers:
            gate = getattr(layer.mlp, "gate", None) or getattr(layer.mlp, "router", None)
            if gate is not None and hasattr(gate, "weight") and kind != "phi3":
                gate.weight.normal_(0.0, 0.5)
    model.save_pretrained(folder)


def run(command: list[str]) -> dict:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in (done.stdout or done.stderr).splitlines() if line.strip()]  # what the command says, else its log
    return {"command": " ".join(command), "rc": done.returncode, "seconds": round(time.perf_counter() - start, 1),
            "last_line": lines[-1] if lines else "", "stdout": done.stdout}


def score(result_dir: Path) -> float | None:
    files = sorted(result_dir.rglob("results_*.json"))
    if not files:
        return None
    results = json.loads(files[-1].read_text())["results"]
    task = f"relation_logprob_synthetic_{RELATION}"
    return next((v for k, v in results[task].items() if k.startswith("logprob,")), None)


def one(kind: str, tmp: Path, bindir: Path) -> dict:
    model, sets = tmp / kind, tmp / f"{kind}-sets"
    model.mkdir()
    build(kind, model)
    set_file = sets / f"{RELATION}.safetensors"
    steps = {"identify": run([str(bindir / "relspec"), "identify", "--model", str(model), "--data", "relation_recall_synthetic_det",
                              "--relations", RELATION, "--no-filter", "--k", "24", "--device", "cpu", "--out", str(sets)])}
    info = run([str(bindir / "relspec"), "info", "--json", str(set_file)])
    lm = [str(bindir / "lm_eval"), "--model", "relspec-hf", "--tasks", f"relation_logprob_synthetic_{RELATION}", "--limit", "8",
          "--device", "cpu"]
    steps["lm_eval_original"] = run([*lm, "--model_args", f"pretrained={model}", "--output_path", str(tmp / f"{kind}-orig")])
    steps["lm_eval_ablated"] = run([*lm, "--model_args", f"pretrained={model},neuron_set={set_file}", "--output_path", str(tmp / f"{kind}-abl")])
    steps["export"] = run([str(bindir / "relspec"), "export", "--model", str(model), "--neuron-set", str(set_file), "--out", str(tmp / f"{kind}-exp")])
    summary = json.loads(info["stdout"]) if info["rc"] == 0 else {}
    return {
        "kind": kind, "steps": {k: {x: v[x] for x in ("command", "rc", "seconds", "last_line")} for k, v in steps.items()},
        "sites": summary.get("count_per_site"), "experts": summary.get("count_per_expert"),
        "logprob_original": score(tmp / f"{kind}-orig"), "logprob_ablated": score(tmp / f"{kind}-abl"),
    }


def report(records: list[dict]) -> str:
    lines = ["# identify + ablate + export on the newer architectures (tiny random configs)", "",
             "`python benchmarks/architectures.py --out benchmarks/results/architectures`", "",
             "| architecture | identify | lm_eval (set) | export | sites | log-prob original → ablated (nats, 8 docs) |",
             "|---|---|---|---|---|---|"]
    def status(step: dict) -> str:
        return f"rc {step['rc']}, {step['seconds']} s"

    for r in records:
        s = r["steps"]
        sites = ", ".join(f"{k} {v}" for k, v in (r["sites"] or {}).items())
        lp = f"{r['logprob_original']:.3f} → {r['logprob_ablated']:.3f}" if None not in (r["logprob_original"], r["logprob_ablated"]) else "-"
        lines.append(f"| {r['kind']} | {status(s['identify'])} | {status(s['lm_eval_ablated'])} | {status(s['export'])} | {sites} | {lp} |")
    lines += ["", "Last line each command printed (stdout):", ""]
    for r in records:
        for name, step in r["steps"].items():
            lines.append(f"- {r['kind']} {name}: `{step['last_line'][:200]}`")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", required=True, help="OUT.json and OUT.md are written")
    parser.add_argument("--kinds", default="phi3,mixtral,qwen2_moe,qwen3_moe,olmoe")
    args = parser.parse_args()
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        records = [one(kind, Path(tmp), bindir) for kind in args.kinds.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(report(records), encoding="utf-8")
    print(report(records))
    return 0 if all(s["rc"] == 0 for r in records for s in r["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
