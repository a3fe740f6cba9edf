#!/usr/bin/env python
"""What relspec's task YAMLs add to lm-eval's start-up (issue 23): the task index with and without them.

    python benchmarks/task_index.py            # → benchmarks/results/task_index.{json,md}

Every ``lm_eval`` run builds a ``TaskManager``, which walks every task folder and loads each
YAML (its includes too) to index the names. With this package installed, its import hook adds
``tasks/`` to every ``TaskManager``'s ``include_path``. Each measurement is a fresh interpreter
timing ``TaskManager()`` alone (lm-eval already imported), alternating between:

* ``lm-eval alone``: ``RELSPEC_DISABLE_HOOK=1``, lm-eval's own tasks;
* ``with relspec``: the hook on, lm-eval's tasks plus ours;
* ``relspec's folder alone``: ``TaskManager(include_path=tasks/, include_defaults=False)``.

The median of ``--repeat`` runs each; the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

_PROBE = """
import json, sys, time
from lm_eval.tasks import TaskManager
start = time.perf_counter()
manager = TaskManager() if sys.argv[1] == "default" else TaskManager(include_path=sys.argv[1], include_defaults=False)
print(json.dumps({"seconds": time.perf_counter() - start, "tasks": len(manager.all_tasks)}))
"""

CASES = {  # name → (TaskManager argument, environment changes)
    "lm-eval alone": ("default", {"RELSPEC_DISABLE_HOOK": "1"}),
    "with relspec": ("default", {}),
    "relspec's folder alone": (str(ROOT / "tasks"), {}),
}


def once(case: str) -> dict:
    arg, extra = CASES[case]
    env = {k: v for k, v in os.environ.items() if k != "RELSPEC_DISABLE_HOOK"} | extra
    done = subprocess.run([sys.executable, "-c", _PROBE, arg], env=env, cwd="/tmp", capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {case: [] for case in CASES}
    for _ in range(args.repeat):
        for case in CASES:
            runs[case].append(once(case))
            print(f"{case}: {runs[case][-1]}", flush=True)
    rows = {case: {"median_s": round(statistics.median(r["seconds"] for r in got), 2), "tasks": got[0]["tasks"],
                   "runs_s": [round(r["seconds"], 2) for r in got]} for case, got in runs.items()}
    yamls = len(list((ROOT / "tasks").rglob("*.yaml")))
    record = {"repeat": args.repeat, "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
              "relspec_yaml_files": yamls, "rows": rows}
    alone, both, ours = (rows[case]["median_s"] for case in CASES)
    lines = ["# What relspec's tasks add to lm-eval's task index (issue 23)", "",
             f"`python benchmarks/task_index.py --repeat {args.repeat}`: `TaskManager()` in a fresh interpreter, median of "
             f"{args.repeat} alternating runs; load average {record['load_before']} before, {record['load_after']} after.", "",
             "| index | tasks | seconds (median) | runs |", "|---|---:|---:|---|"]
    lines += [f"| {case} | {r['tasks']} | {r['median_s']:.2f} | {', '.join(map(str, r['runs_s']))} |" for case, r in rows.items()]
    lines += ["", f"relspec's {yamls} YAML files add {both - alone:+.2f} s ({100 * (both - alone) / alone:+.1f}%) to every "
              f"`lm_eval` start; indexing the folder alone takes {ours:.2f} s."]
    (RESULTS / "task_index.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / "task_index.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
