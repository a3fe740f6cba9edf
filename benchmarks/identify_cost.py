"""What identification costs as the request grows: time per number of relations, memory per number of prompts.

Three measurements, each ``relspec identify`` run in its own process (``--no-cache``, so every
run computes everything; peak resident memory from ``os.wait4``'s ``ru_maxrss`` of that
process alone):

1. **Time against relations** (``--relations`` with 1, 3 and 12 relations, the same model
   and data): the correctness check generates only from the requested relations' P^det, and
   the statistics pass runs once per relation, so the time should grow with r. Default model:
   relspec-tiny on its synthetic P^det (``relation_recall_synthetic_det``, 7,040 prompts);
   ``--model gemma-3-270m --data LRE`` for the real model (the LRE folder from
   ``RELSPEC_LRE_DIR``; minutes per relation on a CPU).
2. **Memory against prompts** (a pool of about 1k, 4k and 16k P^det prompts over the 12
   relations, a random Llama with Llama-2-7B's proportions at the small CPU size of
   ``identify_throughput.py``, relspec-tiny's tokenizer): the generation pass and the means
   stream (nothing per prompt is kept beyond the token ids and the answer), and the
   statistics matrix is bounded by ``--cap`` × (1 + ``--negative-ratio``) prompts, so peak
   memory should stay flat. Two runs per size: the whole pipeline with ``--no-filter`` (every
   prompt a positive, ``--cap 50``), and the generation filter pass (a random model answers
   nothing, so that run stops with exit status 2 after the pass, which is what it measures).

3. **Processes**: identify and lm_eval on relspec-tiny, one process against two
   (``accelerate launch --cpu --num_processes 2``, one thread each).

    python benchmarks/identify_cost.py                    # all three, CPU
    python benchmarks/identify_cost.py --only relations --model gemma-3-270m --data /path/to/lre
Output: ``benchmarks/results/identify_cost.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from relspec_lmeval.data.relations import RELATIONS  # noqa: E402
from relspec_lmeval.data.templates import PAPER_RELATIONS  # noqa: E402

SUBSETS = (["product_company"], ["product_company", "company_ceo", "person_father"], RELATIONS)
POOL_SIZES = (1000, 4000, 16000)


def run_identify(argv: list[str], cwd: Path, launch: list[str] | None = None, module: str = "relspec_lmeval") -> dict:
    """Seconds, peak RSS (MiB) and exit status of one ``relspec identify`` process (or of ``launch``'s)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RELSPEC_CACHE_DIR": str(cwd / "cache")}
    start = time.perf_counter()
    command = [*(launch or [sys.executable]), "-m", module, *(["identify", *argv, "--no-cache", "--quiet"] if module == "relspec_lmeval" else argv)]
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    return {"seconds": round(seconds, 2), "peak_mib": round(usage.ru_maxrss / 1024, 1), "exit": code, "stderr_tail": stderr[-300:]}


def relations_cost(model: str, data: str, batch: int, work: Path) -> list[dict]:
    rows = []
    for subset in SUBSETS:
        out = work / f"r{len(subset)}"
        result = run_identify(["--model", model, "--data", data, "--relations", ",".join(subset), "--k", "100", "--out", str(out),
                               "--batch-size", str(batch), "--device", "cpu", "--min-positives", "1"], work)
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
        result |= {"relations": len(subset), "det_prompts_checked": sum(e["det_prompts"] for e in summary.get("relations", {}).values()),
                   "written": len(summary.get("relations", {}))}
        rows.append(result)
        print(f"relations={len(subset):>2}: {result['seconds']:7.1f} s, {result['peak_mib']:7.1f} MiB, exit {result['exit']}", flush=True)
    return rows


def write_pool(folder: Path, prompts: int) -> int:
    """An LRE-format folder whose 12 relations hold about ``prompts`` P^det prompts in all."""
    from relspec_lmeval.identify.pool import load_pool

    vocab = json.loads((REPO / "models/relspec-tiny/tokenizer.json").read_text())["model"]["vocab"]
    words = [token[1:] for token, _ in vocab if token.startswith("▁") and token[1:].isalpha()][:60]
    def write(per_relation: int) -> int:
        folder.mkdir(parents=True, exist_ok=True)
        for r, (name, spec) in enumerate(PAPER_RELATIONS.items()):
            samples = [{"subject": f"{words[j % 60]} {words[(j // 60 + r) % 60]} {words[(j // 3600) % 60]}",
                        "object": words[(7 * j + r) % 60]} for j in range(per_relation)]
            raw = {"name": name, "prompt_templates": list(spec.templates), "prompt_templates_zs": [], "properties": {}, "samples": samples}
            (folder / spec.file).write_text(json.dumps(raw), encoding="utf-8")
        return len(load_pool(str(folder), None).flat())

    guess = 2 * prompts // len(PAPER_RELATIONS)  # about half of the subjects go to P^det
    return write(max(2, round(guess * prompts / write(guess))))  # once more, scaled to the share measured


def random_model(folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch
    from identify_throughput import build_model

    model = build_model("small", torch.float32, "cpu", seed=0)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(REPO / "models/relspec-tiny" / name, folder / name)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.resize_token_embeddings(len(tokenizer))
    model.config.update({"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id})
    model.save_pretrained(folder)
    return folder


def memory_cost(batch: int, work: Path, sizes: list[int]) -> list[dict]:
    model = random_model(work / "model")
    rows = []
    for size in sizes:
        data = work / f"pool{size}"
        actual = write_pool(data, size)
        for kind, extra in (("pipeline --no-filter", ["--no-filter"]), ("generation filter pass", ["--min-positives", "1"])):
            # --cap 50: the statistics pass is bounded by cap × (1 + negative ratio) whatever the pool; a
            # small cap keeps the runs short on a CPU without changing what grows with the pool
            result = run_identify(["--model", str(model), "--data", str(data), "--relations", "all", "--k", "100", "--cap", "50",
                                   "--out", str(work / f"out{size}-{kind.split()[0]}"), "--batch-size", str(batch), "--device", "cpu", *extra], work)
            result |= {"pool_prompts": actual, "run": kind}
            rows.append(result)
            print(f"{actual:>6} prompts, {kind:<22}: {result['seconds']:7.1f} s, {result['peak_mib']:7.1f} MiB, exit {result['exit']}", flush=True)
    return rows


def processes_cost(work: Path) -> list[dict]:
    """One against two ``accelerate launch --cpu`` processes (1 thread each), identify and lm_eval on relspec-tiny.

    Peak MiB is of the launching process tree's largest member (``ru_maxrss`` of the waited child)."""
    rows = []
    launch2 = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    identify = ["--model", "relspec-tiny", "--data", "relation_recall_synthetic_det", "--relations", "all", "--k", "100",
                "--batch-size", "32", "--device", "cpu"]
    tasks = "relation_recall_synthetic,relation_choice_synthetic"
    evaluate = ["--model", "relspec-hf", "--model_args", "pretrained=relspec-tiny,neuron_set=relspec-tiny/k384/person_plays_instrument",
                "--tasks", tasks, "--batch_size", "32", "--limit", "100"]
    for what, argv, module in (("identify, 12 relations", identify, "relspec_lmeval"), (f"lm_eval {tasks}, 100 docs each", evaluate, "lm_eval")):
        for n, launch in ((1, None), (2, launch2)):
            os.environ["OMP_NUM_THREADS"] = "1"
            out = ["--out", str(work / f"proc-{module}-{n}")] if module == "relspec_lmeval" else ["--output_path", str(work / f"proc-{module}-{n}")]
            result = run_identify([*argv, *out], work, launch, module) | {"what": what, "processes": n}
            os.environ.pop("OMP_NUM_THREADS")
            rows.append(result)
            print(f"{what}, {n} process(es): {result['seconds']:7.1f} s, exit {result['exit']}", flush=True)
    return rows


def markdown(report: dict) -> str:
    lines = ["# Identification cost", "", f"Made by `{report['command']}` on {report['machine']}.", ""]
    if report.get("relations"):
        lines += [f"## Time against relations ({report['relations_model']}, data {report['relations_data']})", "",
                  "| relations | P^det prompts checked | sets written | seconds | peak MiB |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['relations']} | {r['det_prompts_checked']} | {r['written']} | {r['seconds']:.1f} | {r['peak_mib']:.0f} |"
                  for r in report["relations"]]
        lines.append("")
    if report.get("memory"):
        lines += ["## Memory against prompts (random Llama, small shape, 13,056 neurons)", "",
                  "| pool P^det prompts | run | exit | seconds | peak MiB |", "|---:|---|---:|---:|---:|"]
        lines += [f"| {r['pool_prompts']} | {r['run']} | {r['exit']} | {r['seconds']:.1f} | {r['peak_mib']:.0f} |" for r in report["memory"]]
        lines += ["", "Exit 2 in the filter runs: the random model answers no prompt, so the run stops after the pass it measures."]
    if report.get("processes"):
        lines += ["", "## One against two processes (relspec-tiny, `accelerate launch --cpu`, 1 thread each)", "",
                  "| run | processes | exit | seconds |", "|---|---:|---:|---:|"]
        lines += [f"| {r['what']} | {r['processes']} | {r['exit']} | {r['seconds']:.1f} |" for r in report["processes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["relations", "memory", "processes"], default=None)
    p.add_argument("--model", default="relspec-tiny")
    p.add_argument("--data", default="relation_recall_synthetic_det")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=list(POOL_SIZES), help="pool sizes (default 1000,4000,16000)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "identify_cost"))
    args = p.parse_args(argv)
    report = {"command": "python benchmarks/identify_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "model").mkdir()
        if args.only in (None, "relations"):
            report |= {"relations_model": args.model, "relations_data": args.data,
                       "relations": relations_cost(args.model, args.data, args.batch_size, work)}
        if args.only in (None, "memory"):
            report["memory"] = memory_cost(args.batch_size, work, args.sizes)
        if args.only in (None, "processes"):
            report["processes"] = processes_cost(work)
    Path(args.out).with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    Path(args.out).with_suffix(".md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
