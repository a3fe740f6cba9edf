"""Running the plan of ``relspec reproduce`` through lm-eval, and collecting what it measured.

One ``relspec-hf`` model is loaded once; ``set_neuron_sets`` swaps the ablation between
runs. Each run's lm-eval results (with every per-document metric of every task, and the
equivalent ``lm_eval`` command) go to ``OUT/runs/<run-id>.json``, written atomically, so a
rerun skips what is done.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from relspec_lmeval.experiments.config import ReproduceConfig
from relspec_lmeval.experiments.plan import Inputs, Run, build_plan, make_sets, prepare
from relspec_lmeval.experiments.report import write_report
from relspec_lmeval.experiments.study import Condition, Measurement, SetStats, Study
from relspec_lmeval.modelio.load import default_device, say_device
from relspec_lmeval.sets.folder import LOCK_FILE
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.util.files import atomic_write_text
from relspec_lmeval.util.locks import folder_lock
from relspec_lmeval.util.progress import progress

__all__ = ["collect", "evaluate_run", "lm_eval_command", "lm_kwargs", "load_lm", "reproduce", "run_plan", "sample_metrics", "task_metadata"]


def _git_hash() -> str | None:
    """lm-eval's ``get_git_commit_hash`` without its noise: it runs ``git describe --always``
    with stderr not captured, so every run outside a git repository printed ``fatal: not a git
    repository``. Same value: git's answer, else lm-eval's own reading of ``./.git``."""
    import os
    import subprocess

    from lm_eval.loggers.utils import get_commit_from_path

    try:
        done = subprocess.run(["git", "describe", "--always"], capture_output=True, check=True)  # noqa: S607 - as lm-eval
        return done.stdout.decode().strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return get_commit_from_path(os.getcwd())


@contextlib.contextmanager
def _lm_eval_session() -> Iterator[None]:
    """What lm-eval adds to every result is the same for every run of a plan, so it is
    collected once: the environment (``torch.utils.collect_env`` runs ``pip list``, ~2 s a call)
    and the git hash (``_git_hash``, asked quietly)."""
    import lm_eval.evaluator as evaluator

    originals = evaluator.add_env_info, evaluator.get_git_commit_hash
    env: dict[str, Any] = {}
    git: list[str | None] = []

    def add_env_info(storage: dict[str, Any]) -> None:
        if not env:
            originals[0](env)
        storage.update(env)

    def get_git_commit_hash() -> str | None:
        if not git:
            git.append(_git_hash())
        return git[0]

    evaluator.add_env_info, evaluator.get_git_commit_hash = add_env_info, get_git_commit_hash
    try:
        yield
    finally:
        evaluator.add_env_info, evaluator.get_git_commit_hash = originals


def lm_kwargs(cfg: ReproduceConfig) -> dict[str, Any]:
    """``RelspecHFLM``'s arguments besides ``pretrained``. The device is always given (lm-eval's
    default is ``"cuda"`` even on a CPU-only torch), chosen and said once by ``default_device``."""
    device, why = default_device(cfg.device)
    say_device("relspec reproduce", device, why, cfg.progress)
    kwargs: dict[str, Any] = {"dtype": cfg.dtype, "batch_size": cfg.batch_size, "device": device}
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    return kwargs


def load_lm(cfg: ReproduceConfig):
    from relspec_lmeval.lm.hflm import RelspecHFLM  # imports lm-eval: only when runs are due

    return RelspecHFLM(pretrained=cfg.model, **lm_kwargs(cfg))


def lm_eval_command(cfg: ReproduceConfig, run: Run, chat: dict | None = None) -> str:
    """The ``lm_eval`` command line that gives the same numbers."""
    model_args = f"pretrained={cfg.model}" + (f",gguf_file={cfg.gguf_file}" if cfg.gguf_file else "") + (f",neuron_set={'+'.join(run.sets)}" if run.sets else "") + f",dtype={cfg.dtype}"
    argv = ["lm_eval", "--model", "relspec-hf", "--model_args", model_args, "--tasks", ",".join(run.tasks),
            "--batch_size", str(cfg.batch_size)]
    argv += ["--limit", str(run.limit)] if run.limit else []
    argv += ["--device", cfg.device] if cfg.device else []
    if chat:
        argv += ["--apply_chat_template"]
        argv += ["--system_instruction", chat["system_instruction"]] if chat.get("system_instruction") else []
    return shlex.join(argv)


class SetCache(dict):
    """Each set file of a plan loaded (and later hashed) once, however many runs apply it."""

    def __missing__(self, path: str) -> NeuronSet:
        self[path] = NeuronSet.load(path)
        return self[path]


def _plain(v: Any) -> Any:
    """A per-document metric as JSON: a number as a float (0/1 for acc), a perplexity's (loglik, length) as a list."""
    return [float(x) for x in v] if isinstance(v, (list, tuple)) else float(v)


def sample_metrics(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Each metric a task reports per document (lm-eval's ``metrics`` of a sample), as a list in doc_id order."""
    rows = sorted(rows, key=lambda s: s["doc_id"])
    return {m: [_plain(row[m]) for row in rows] for m in rows[0].get("metrics", ()) if all(m in row for row in rows)}


def task_metadata(cfg: ReproduceConfig) -> dict[str, Any]:
    """What the TaskManager passes every task's dataset: the LRE folder, and the model (the
    log-probability tasks load its tokenizer to find each gold's first token, data.logprob)."""
    meta: dict[str, Any] = {"pretrained": cfg.model}
    meta |= {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
    meta |= {"lre_dir": cfg.lre_dir} if cfg.lre_dir else {}
    return meta


def evaluate_run(lm: Any, task_manager: Any, run: Run, cfg: ReproduceConfig, chat: dict | None = None,
                 sets: SetCache | None = None) -> dict[str, Any]:
    """lm-eval's results for one run (per-document samples reduced to their metrics' values), with our block."""
    from lm_eval import simple_evaluate

    sets = SetCache() if sets is None else sets
    lm.set_neuron_sets([sets[p] for p in run.sets])
    start = time.perf_counter()
    form = {"apply_chat_template": True, "system_instruction": chat.get("system_instruction")} if chat else {}
    results = simple_evaluate(model=lm, tasks=list(run.tasks), task_manager=task_manager, limit=run.limit, log_samples=True, **form)
    seconds = time.perf_counter() - start
    applied = [s["sha256"] for s in results["config"]["relspec"]["sets"]]
    if applied != [sets[p].sha256() for p in run.sets]:  # the record must name what was switched off
        raise RuntimeError(f"run {run.id}: the results record sets {applied}, not the run's {list(run.sets)}")
    per_sample = {task: sample_metrics(rows) for task, rows in results.pop("samples").items() if rows}
    results["relspec_reproduce"] = {
        "run_id": run.id, "conditions": [c.label() for c in run.conditions], "model": cfg.model, "dtype": cfg.dtype,
        "sets": [{"path": p, "sha256": d} for p, d in zip(run.sets, applied)], "tasks": list(run.tasks), "limit": run.limit,
        "docs": run.docs, "seconds": seconds, "device": str(lm.device), "lm_eval_command": lm_eval_command(cfg, run, chat),
        "per_sample": per_sample,
    }
    return results


def run_plan(plan: list[Run], inp: Inputs) -> int:
    """Run every run without a stored result; returns how many ran."""
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    runs_dir = inp.out / "runs"
    todo = [run for run in plan if not (runs_dir / f"{run.id}.json").is_file()]
    if not todo:
        return 0
    cfg = inp.cfg
    lm = load_lm(cfg)
    task_manager = TaskManager(include_defaults=False, metadata=task_metadata(cfg))
    done = sum(run.docs for run in plan) - sum(run.docs for run in todo)
    bar = progress(sum(run.docs for run in plan), "relspec reproduce", cfg.progress, unit="doc", initial=done)
    sets = SetCache()
    with bar, _lm_eval_session():
        for run in todo:
            bar.set_postfix_str(f"{run.conditions[0].label()} ({len(run.tasks)} tasks)")
            captured = io.StringIO()
            try:
                # lm-eval prints a bar per task and request type; keep the one plan bar readable
                with contextlib.nullcontext() if cfg.verbose else contextlib.redirect_stderr(captured):
                    record = evaluate_run(lm, task_manager, run, cfg, inp.chat, sets)
            except KeyboardInterrupt:  # Ctrl-C: cli.main's one line, not lm-eval's captured bars
                raise
            except BaseException:
                sys.stderr.write(captured.getvalue())
                raise
            atomic_write_text(runs_dir / f"{run.id}.json", json.dumps(record, indent=1, default=handle_non_serializable) + "\n")
            bar.update(run.docs)
    return len(todo)




def collect(plan: list[Run], inp: Inputs, settings: dict[str, Any]) -> Study:
    """The stored results as analysis sees them: each condition's metrics, merged over its runs."""
    results: dict[Condition, Measurement] = {}
    seconds = 0.0
    devices: set[str] = set()
    for run in plan:
        record = json.loads((inp.out / "runs" / f"{run.id}.json").read_text(encoding="utf-8"))
        ours = record["relspec_reproduce"]
        seconds += ours["seconds"]
        devices.add(ours["device"])
        metrics = {
            task: {key.split(",")[0]: float(v) for key, v in entry.items()
                   if key.endswith(",none") and "_stderr" not in key and isinstance(v, (int, float))}
            for task, entry in record["results"].items()
        }
        samples = Measurement({}, ours["per_sample"]).per_sample  # a version's plain 0/1 lists read as acc
        for cond in run.conditions:
            m = results.setdefault(cond, Measurement({}, {}))
            m.metrics.update(metrics)
            m.per_sample.update(samples)
    sets = {r: NeuronSet.load(p) for r, p in inp.main.items()}  # once per report
    rel = inp.relations
    return Study(
        model=inp.cfg.model, suite=inp.suite, relations=rel, seeds=inp.seeds, ks=inp.ks, num_layers=inp.shape.num_layers,
        sets={r: SetStats(len(s), s.count_per_layer()) for r, s in sets.items()},
        overlaps={a: {b: sets[a].overlap(sets[b]) for b in rel} for a in rel},
        jaccard={a: {b: sets[a].jaccard(sets[b]) for b in rel} for a in rel},
        results=results, site_seeds=inp.site_seeds,
        settings={**settings, "runs": len(plan), "docs": sum(r.docs for r in plan), "run_seconds": seconds, "device": ", ".join(sorted(devices))},
    )


def reproduce(cfg: ReproduceConfig) -> Path:
    """The whole command; returns the path of report.md.

    Args:
        cfg: the run (``ReproduceConfig``).

    Returns:
        ``<cfg.out>/report.md`` (tables/, figures/ and runs/ beside it).

    Example (skipped in the doctests: many lm-eval runs, minutes even on relspec-tiny):
        >>> from relspec_lmeval import ReproduceConfig, reproduce
        >>> report = reproduce(ReproduceConfig(model="relspec-tiny", neuron_sets="relspec-tiny", suite="synthetic",
        ...                                    out="report", quick=True, device="cpu"))  # doctest: +SKIP
        >>> report.name  # doctest: +SKIP
        'report.md'
    """
    start = time.perf_counter()
    inp = prepare(cfg)  # writes nothing (and refuses an --out among the shipped files)
    # one writer per --out, and an --out that cannot be written (a link to nothing, a read-only
    # file system) said now, before sets are made and runs start, not after hours of runs
    with folder_lock(inp.out, LOCK_FILE):
        make_sets(inp)
        plan = build_plan(inp)
        atomic_write_text(inp.out / "plan.json", json.dumps([r.to_json() for r in plan], indent=1) + "\n")
        new = run_plan(plan, inp)
        settings = {"neuron_sets": inp.cfg.neuron_sets, "limit": inp.limit, "det_limit": inp.det_limit, "quick": cfg.quick,
                    "command": cfg.command, "new_runs": new, "elapsed": time.perf_counter() - start}
        return write_report(collect(plan, inp, settings), inp.out)
