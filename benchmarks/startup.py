#!/usr/bin/env python
"""How long the ``relspec`` command takes to start (issue 20): wall time and import costs.

    python benchmarks/startup.py --label after      # → benchmarks/results/startup.{json,md}
    git archive COMMIT | tar -x -C /tmp/old && python benchmarks/startup.py --label before --tree /tmp/old

Each command runs as ``python -m relspec_lmeval …`` against a source tree (``PYTHONPATH``:
this checkout, or ``--tree``, so the source is measured, not an installed wheel): the wall time is
the median of ``--repeat`` runs; one more run under ``python -X importtime`` gives the
top-level imports that cost most and whether torch, transformers or lm-eval were imported.
Results are kept per ``--label`` in the JSON file, so a run before a change and one after it
sit side by side in the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEAVY = ("torch", "transformers", "lm_eval")

COMMANDS = {  # name -> relspec argv; each ends quickly: help, a summary, or an input error
    "python -c pass": None,  # the interpreter alone, for reference
    "relspec --help": ["--help"],
    "relspec info <shipped set>": ["info", "relspec-tiny/landmark_country"],
    "relspec identify --bad-flag": ["identify", "--bad-flag"],
    "relspec select --k 0 x": ["select", "--k", "0", "x"],
}


def _argv(args: list[str] | None, importtime: bool = False) -> list[str]:
    flags = ["-X", "importtime"] if importtime else []
    return [sys.executable, *flags, "-c", "pass"] if args is None else [sys.executable, *flags, "-m", "relspec_lmeval", *args]


TREE = [ROOT]  # the source tree measured (--tree)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(TREE[0]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def wall(args: list[str] | None, repeat: int) -> tuple[float, int]:
    """Median wall seconds of ``repeat`` runs, and the exit status (the same every run)."""
    times, code = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        code = subprocess.run(_argv(args), cwd="/tmp", env=_env(), capture_output=True).returncode
        times.append(time.perf_counter() - start)
    return statistics.median(times), code


def import_costs(args: list[str] | None, top: int) -> dict:
    """The costliest packages of one ``-X importtime`` run: each top-level package's own import
    line (``torch``, ``numpy``, …), cumulative ms; a package imported inside another counts in both."""
    err = subprocess.run(_argv(args, importtime=True), cwd="/tmp", env=_env(), capture_output=True, text=True).stderr
    costs: dict[str, float] = {}
    for line in err.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        name = name.strip()
        if "." not in name and not name.startswith("_"):
            costs[name] = max(costs.get(name, 0.0), int(cumulative) / 1000)
    rows = sorted(costs.items(), key=lambda kv: -kv[1])
    return {"top": [[name, round(ms, 1)] for name, ms in rows[:top]], "heavy": [h for h in HEAVY if h in costs]}


def render(results: dict) -> str:
    """The markdown page: a wall-time table with a column per label, then each label's imports."""
    labels = list(results)
    lines = [
        "# relspec start-up (issue 20)", "",
        f"`python benchmarks/startup.py --label NAME`; median of each label's runs, wall seconds, 2-core machine; "
        f"`heavy`: which of {', '.join(HEAVY)} the command imported. The machine is shared: each label's load average "
        "is in its note, and the labels of one table were measured one right after the other.", "",
        "| command | " + " | ".join(f"{label} (s) | {label} heavy" for label in labels) + " |",
        "|---|" + "---:|---|" * len(labels),
    ]
    for name in COMMANDS:
        cells = []
        for label in labels:
            row = results[label]["commands"].get(name, {})
            cells += [f"{row.get('wall_s', float('nan')):.2f}", ", ".join(row.get("heavy", [])) or "none"]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    for label in labels:
        lines += ["", f"## {label}: costliest packages (`-X importtime`, cumulative ms)", ""]
        lines += [f"- {results[label]['note']}"] if results[label].get("note") else []
        for name, row in results[label]["commands"].items():
            if row.get("top"):
                lines.append(f"- `{name}` (exit {row['exit']}): " + ", ".join(f"{m} {ms:.0f}" for m, ms in row["top"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="the column this run fills (e.g. before, after)")
    parser.add_argument("--note", default="", help="a line about the code measured (e.g. the commit)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--top", type=int, default=6)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the source tree to measure (default: this checkout)")
    args = parser.parse_args()
    TREE[0] = args.tree.resolve()
    load = os.getloadavg()[0]
    store = RESULTS / "startup.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    commands = {}
    for name, argv in COMMANDS.items():
        seconds, code = wall(argv, args.repeat)
        commands[name] = {"wall_s": round(seconds, 3), "exit": code, **import_costs(argv, args.top)}
        print(f"{name}: {seconds:.2f} s (exit {code}), heavy: {commands[name]['heavy']}", flush=True)
    note = f"{args.note}; load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end".lstrip("; ")
    results[args.label] = {"note": note, "commands": commands}
    store.write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "startup.md").write_text(render(results))
    print(f"wrote {RESULTS / 'startup.md'}")


if __name__ == "__main__":
    main()
