"""``relspec reproduce``: run the paper's experiments through lm-eval and write a report.

    relspec reproduce --model M --neuron-sets DIR --suite lre|synthetic --out OUT [--quick]

1. Check everything (suite, relations, sets and their shapes, the data) before anything is
   written: a failure is one ``relspec: error:`` line and an untouched ``OUT``.
2. Make the sets ``DIR`` lacks from what it has: random controls like each relation's set
   (``identify.random_sets``), top-k and rank-range cuts from ``DIR/scores/``
   (``identify.select_sets``). They go to ``OUT/sets/``; ``DIR`` is never written.
3. The plan: lm-eval runs, each (neuron sets or none, tasks, limit), each stored as
   ``OUT/runs/<run-id>.json``; a run whose file exists is skipped, so a rerun resumes. One
   ``relspec-hf`` model is loaded once and its ablation swapped between runs.
4. ``analysis.write_report``: ``OUT/tables``, ``OUT/figures``, ``OUT/report.md``.

See docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relspec_lmeval.analysis import Condition, Measurement, SetStats, Study, Suite, write_report
from relspec_lmeval.neuron_set import ModelShape, NeuronSet, NeuronSetError, file_sha256

KS = (10, 50, 200, 500, 1000, 3000, 10000, 20000, 50000)  # the paper's k sweep
SEEDS = 10  # random controls per relation, as in the paper
QUICK = {"seeds": 3, "ks": (50, 500, 3000), "limit": 20, "det_limit": 100}

SUITES = {
    "lre": Suite("lre", "relation_recall", "relation_recall_det", "relation_recall_t2", "relation_ppl", ("de", "es", "fr", "zh", "ja")),
    "synthetic": Suite(
        "synthetic", "relation_recall_synthetic", "relation_recall_synthetic_det", "relation_recall_synthetic_t2", "relation_ppl_synthetic"
    ),
}


@dataclass
class ReproduceConfig:
    model: str
    neuron_sets: str
    suite: str
    out: str
    relations: str | Sequence[str] | None = "all"
    seeds: int | None = None  # None: SEEDS (quick: 3)
    ks: Sequence[int] | None = None  # None: KS (quick: 50, 500, 3000); capped by the model's neuron count
    limit: int | None = None  # docs per task (None: all; quick: 20)
    det_limit: int | None = None  # docs per P^det task (None: all; quick: 100)
    quick: bool = False
    batch_size: int | str = 16
    device: str | None = None
    dtype: str = "auto"
    lre_dir: str | None = None
    command: str | None = None
    progress: bool = True
    verbose: bool = False  # let lm-eval's own logs and progress bars through


@dataclass(frozen=True)
class Run:
    """One ``simple_evaluate`` call: the union of ``sets`` off (none: the original model)."""

    id: str
    sets: tuple[str, ...]
    tasks: tuple[str, ...]
    limit: int | None
    docs: int
    conditions: tuple[Condition, ...]  # what its numbers measure

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "sets": list(self.sets), "tasks": list(self.tasks), "limit": self.limit, "docs": self.docs,
                "conditions": [c.label() for c in self.conditions]}


@dataclass
class Inputs:
    """Everything ``prepare`` checked; nothing is written yet."""

    cfg: ReproduceConfig
    suite: Suite
    relations: list[str]
    seeds: list[int]
    ks: list[int]
    limit: int | None
    det_limit: int | None
    shape: ModelShape
    config_hash: str
    sets_dir: Path
    out: Path
    main: dict[str, Path]
    derived: dict[Condition, Path]  # random controls and top-k / rank-range cuts
    to_make: list[Condition]  # the derived sets that do not exist yet
    docs: dict[str, int]  # task → its number of documents


# ============================================================================ checks


def _settings(cfg: ReproduceConfig) -> tuple[int, list[int], int | None, int | None]:
    def pick(value: Any, key: str, full: Any) -> Any:
        return value if value is not None else QUICK[key] if cfg.quick else full

    seeds, ks = pick(cfg.seeds, "seeds", SEEDS), pick(cfg.ks, "ks", KS)
    limit, det_limit = pick(cfg.limit, "limit", None), pick(cfg.det_limit, "det_limit", None)
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"--ks must be positive integers, got {list(ks)}")
    for name, v in (("--limit", limit), ("--det-limit", det_limit)):
        if v is not None and v < 1:
            raise ValueError(f"{name} must be at least 1, got {v}")
    return seeds, sorted({int(k) for k in ks}), limit, det_limit


def _sets_dir(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    from relspec_lmeval._resources import resource_dir

    try:  # a shipped folder: --neuron-sets relspec-tiny
        shipped = resource_dir("neuron_sets") / name
    except FileNotFoundError:
        shipped = None
    if shipped is not None and shipped.is_dir():
        return shipped
    raise ValueError(f"neuron-set folder not found: {name} (the --out folder of relspec identify)")


def _suite_relations(suite: Suite, cfg: ReproduceConfig) -> tuple[list[str], dict[str, dict]]:
    from relspec_lmeval.identify import _task_index, parse_relations

    groups, tasks = _task_index()
    names = suite.groups()
    for group in names:
        if group not in groups:
            raise ValueError(f"task group {group!r} of suite {suite.name!r} not found; is relspec-lmeval installed with its tasks?")
    known = [t[len(suite.eva) + 1:] for t in groups[suite.eva]]
    requested = parse_relations(cfg.relations) or known
    unknown = [r for r in requested if r not in known]
    if unknown:
        raise ValueError(f"unknown relation(s) for suite {suite.name!r}: {', '.join(unknown)}. Known: {', '.join(known)}")
    for group in names:
        missing = [r for r in requested if f"{group}_{r}" not in tasks]
        if missing:
            raise ValueError(f"task group {group!r} has no task for {', '.join(missing)}")
    return requested, tasks


def _count_docs(task_kwargs: dict[str, dict], tasks: list[str], lre_dir: str | None) -> dict[str, int]:
    """Documents per task, built exactly as lm-eval builds them (also: the data is there)."""
    from relspec_lmeval import relations as rel

    counts = {}
    for task in tasks:
        kwargs = {**task_kwargs[task], "lre_dir": lre_dir}
        build = rel.custom_dataset if "split" in kwargs else rel.custom_ppl_dataset
        try:
            counts[task] = len(build(**kwargs)["test"])
        except rel.LREDataError as exc:
            raise ValueError(f"task {task}: {exc}") from None
    return counts


def _is_topk(s: NeuronSet) -> bool:
    """True when the set is exactly the top len(s) of its scores file (what ``select_sets`` would cut)."""
    meta = s.metadata
    return meta.get("method") == "ap" and meta.get("select", "top") == "top" and not meta.get("skip") and meta.get("k") == len(s)


def _load_checked(path: Path, shape: ModelShape) -> NeuronSet:
    s = NeuronSet.load(path)
    s.validate(shape)
    return s


def _derived_sets(
    relations: list[str], seeds: list[int], ks: list[int], main: dict[str, Path], loaded: dict[str, NeuronSet],
    sets_dir: Path, made: Path, shape: ModelShape,
) -> tuple[dict[Condition, Path], list[Condition]]:
    """Where each random control, top-k and rank-range set is: in the input folder (checked),
    else under ``made`` (``OUT/sets``); the second list names those still to make."""
    derived: dict[Condition, Path] = {}
    to_make: list[Condition] = []
    sources: dict[Path, str | None] = {}

    def source_sha(path: Path) -> str | None:
        if path not in sources:
            sources[path] = file_sha256(path) if path.is_file() else None
        return sources[path]

    def made_from_inputs(path: Path, cond: Condition) -> bool:
        """A set an earlier run made from the same set or scores file (else it is made again)."""
        if not path.is_file():
            return False
        meta = NeuronSet.load(path).metadata
        if cond.kind == "random":
            return (meta.get("like") or {}).get("sha256") == source_sha(main[cond.relation])
        scores = source_sha(sets_dir / "scores" / f"{cond.relation}.safetensors")
        return scores is None or (meta.get("scores_file") or {}).get("sha256") == scores

    def locate(cond: Condition, sub: str, name: str, like: NeuronSet | None = None) -> None:
        given, ours = sets_dir / sub / f"{name}.safetensors", made / sub / f"{name}.safetensors"
        if given.is_file():
            s = _load_checked(given, shape)
            if like is not None and len(s) != len(like):
                raise ValueError(f"random control {given} has {len(s)} neurons, its relation's set {len(like)}")
            derived[cond] = given
        else:
            derived[cond] = ours
            if not made_from_inputs(ours, cond):
                to_make.append(cond)

    for r in relations:
        for s in seeds:
            locate(Condition("random", r, seed=s), "random", f"{r}-seed{s}", like=loaded[r])
        for k in ks:
            cond = Condition("topk", r, k=k)
            if _is_topk(loaded[r]) and len(loaded[r]) == k:
                derived[cond] = main[r]  # the same neurons: one run serves both
            else:
                locate(cond, f"k{k}", r)
        for a, b in zip(ks, ks[1:]):
            locate(Condition("ranks", r, k=b - a, skip=a), f"k{b - a}-skip{a}", r)
    return derived, to_make


def _check_scores(relations: list[str], sets_dir: Path, shape: ModelShape, model: str) -> None:
    """The scores files that sets must be cut from exist and fit the model."""
    from relspec_lmeval.scoring import load_scores

    paths = [sets_dir / "scores" / f"{r}.safetensors" for r in relations]
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise ValueError(f"the k sweep needs scores files to cut sets from, and these are missing: {', '.join(absent)}")
    for path in paths:
        layout = load_scores(path).layout
        if (layout.num_layers, layout.hidden_size, layout.intermediate_size) != (shape.num_layers, shape.hidden_size, shape.intermediate_size):
            raise NeuronSetError(f"{path} was made for another model shape than {model!r}")


def prepare(cfg: ReproduceConfig) -> Inputs:
    """Check the whole request; raise ValueError (or NeuronSetError, OSError) naming what is wrong."""
    from transformers import AutoConfig

    from relspec_lmeval.model import resolve_pretrained
    from relspec_lmeval.neuron_set import config_fingerprint

    if cfg.suite not in SUITES:
        raise ValueError(f"unknown suite {cfg.suite!r}; choose one of {', '.join(SUITES)}")
    suite = SUITES[cfg.suite]
    seed_count, ks, limit, det_limit = _settings(cfg)
    sets_dir = _sets_dir(cfg.neuron_sets)
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError("relspec reproduce draws its figures with matplotlib: pip install 'relspec-lmeval[plot]'")
    relations, task_kwargs = _suite_relations(suite, cfg)
    missing = [r for r in relations if not (sets_dir / f"{r}.safetensors").is_file()]
    if missing:
        raise ValueError(
            f"{sets_dir} has no neuron set for {', '.join(missing)} (expected <relation>.safetensors from relspec identify; "
            "or pass --relations)"
        )
    config = AutoConfig.from_pretrained(resolve_pretrained(cfg.model))
    shape = ModelShape.from_config(config)
    main = {r: sets_dir / f"{r}.safetensors" for r in relations}
    loaded = {r: _load_checked(p, shape) for r, p in main.items()}
    ks = [k for k in ks if k < shape.total]  # the sweep is capped by the model's size
    out = Path(cfg.out).expanduser()
    derived, to_make = _derived_sets(relations, list(range(seed_count)), ks, main, loaded, sets_dir, out / "sets", shape)
    _check_scores(sorted({c.relation for c in to_make if c.kind != "random"}), sets_dir, shape, cfg.model)

    docs = _count_docs(task_kwargs, [f"{g}_{r}" for g in suite.groups() for r in relations], cfg.lre_dir)
    return Inputs(cfg, suite, relations, list(range(seed_count)), ks, limit, det_limit, shape, config_fingerprint(config), sets_dir, out,
                  main, derived, to_make, docs)


# ============================================================================ sets and plan


def make_sets(inp: Inputs) -> None:
    """Write the derived sets that are missing, under ``OUT/sets``, from the input folder's sets and scores."""
    from relspec_lmeval.identify import random_sets, select_sets

    command = "relspec reproduce"
    made = inp.out / "sets"
    for r in inp.relations:
        seeds = [c.seed for c in inp.to_make if c.kind == "random" and c.relation == r]
        if seeds:
            random_sets([str(inp.main[r])], seeds, out=made, command=command)
    for c in inp.to_make:
        scores = [inp.sets_dir / "scores" / f"{c.relation}.safetensors"]
        if c.kind == "topk":
            select_sets(scores, c.k, out=made / f"k{c.k}", command=command)
        elif c.kind == "ranks":
            select_sets(scores, c.k, skip=c.skip, out=made / f"k{c.k}-skip{c.skip}", command=command)


def _tasks(inp: Inputs) -> list[tuple[Condition, tuple[str, ...], list[tuple[int | None, list[str]]]]]:
    """Each condition with its sets and its (limit, tasks) parts: P^det has its own limit."""
    s, rel = inp.suite, inp.relations
    langs = [s.language_group(lang) for lang in s.languages]

    def parts(evaluated: Sequence[str], own: Sequence[str], extra: bool) -> list[tuple[int | None, list[str]]]:
        """P^eva of ``evaluated``; with ``extra`` also P^eva-2 of ``evaluated``, perplexity and languages of ``own``; P^det of ``own``."""
        groups = [(s.eva, evaluated)] + ([(s.t2, evaluated), (s.ppl, own), *((g, own) for g in langs)] if extra else [])
        return [(inp.limit, [f"{g}_{r}" for g, rs in groups for r in rs]), (inp.det_limit, [f"{s.det}_{r}" for r in own])]

    out = [(Condition("baseline"), (), parts(rel, rel, extra=True))]
    out += [(Condition("own", r), (str(inp.main[r]),), parts(rel, [r], extra=True)) for r in rel]
    for cond, path in inp.derived.items():
        r = [cond.relation]
        if cond.kind == "random":
            out.append((cond, (str(path),), parts(r, r, extra=False)))
        else:  # top-k: own and other relations (Fig. 5); rank ranges: own relation only (Table 3)
            out.append((cond, (str(path),), [(inp.limit, [f"{s.eva}_{x}" for x in (rel if cond.kind == "topk" else r)])]))
    return out


def build_plan(inp: Inputs) -> list[Run]:
    """Conditions with the same sets share runs; one run per (sets, limit)."""
    merged: dict[tuple[str, ...], tuple[list[Condition], dict[int | None, dict[str, None]]]] = {}
    for cond, sets, parts in _tasks(inp):
        conds, tasks = merged.setdefault(sets, ([], {}))
        conds.append(cond)
        for limit, names in parts:
            tasks.setdefault(limit, {}).update(dict.fromkeys(names))
    from relspec_lmeval import __version__

    shas: dict[str, str] = {}
    plan = []
    for sets, (conds, tasks) in merged.items():
        digests = [shas.setdefault(p, file_sha256(p)) for p in sets]
        for limit, names in tasks.items():
            key = {"model": inp.cfg.model, "config": inp.config_hash, "dtype": inp.cfg.dtype, "mode": "zero", "sets": digests,
                   "tasks": sorted(names), "limit": limit, "package_version": __version__}
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
            docs = sum(min(inp.docs[t], limit) if limit else inp.docs[t] for t in names)
            plan.append(Run(f"{conds[0].label()}-{digest}", sets, tuple(names), limit, docs, tuple(conds)))
    return plan


# ============================================================================ running


@contextlib.contextmanager
def _lm_eval_session() -> Iterator[None]:
    """lm-eval adds ``torch.utils.collect_env`` output to every result, which runs ``pip list``
    (~2 s a call); the environment is the same for every run of a plan, so collect it once."""
    import lm_eval.evaluator as evaluator

    original = evaluator.add_env_info
    env: dict[str, Any] = {}

    def add_env_info(storage: dict[str, Any]) -> None:
        if not env:
            original(env)
        storage.update(env)

    evaluator.add_env_info = add_env_info
    try:
        yield
    finally:
        evaluator.add_env_info = original


def load_lm(cfg: ReproduceConfig):
    from relspec_lmeval.model import RelspecHFLM

    kwargs: dict[str, Any] = {"dtype": cfg.dtype, "batch_size": cfg.batch_size}
    if cfg.device:
        kwargs["device"] = cfg.device
    return RelspecHFLM(pretrained=cfg.model, **kwargs)


def lm_eval_command(cfg: ReproduceConfig, run: Run) -> str:
    """The ``lm_eval`` command line that gives the same numbers."""
    model_args = f"pretrained={cfg.model}" + (f",neuron_set={'+'.join(run.sets)}" if run.sets else "") + f",dtype={cfg.dtype}"
    argv = ["lm_eval", "--model", "relspec-hf", "--model_args", model_args, "--tasks", ",".join(run.tasks),
            "--batch_size", str(cfg.batch_size)]
    argv += ["--limit", str(run.limit)] if run.limit else []
    argv += ["--device", cfg.device] if cfg.device else []
    return shlex.join(argv)


def evaluate_run(lm: Any, task_manager: Any, run: Run, cfg: ReproduceConfig) -> dict[str, Any]:
    """lm-eval's results for one run (per-document samples reduced to 0/1 lists), with our block."""
    from lm_eval import simple_evaluate

    lm.set_neuron_sets([NeuronSet.load(p) for p in run.sets])
    start = time.perf_counter()
    results = simple_evaluate(model=lm, tasks=list(run.tasks), task_manager=task_manager, limit=run.limit, log_samples=True)
    seconds = time.perf_counter() - start
    applied = [s["sha256"] for s in results["config"]["relspec"]["sets"]]
    if applied != [file_sha256(p) for p in run.sets]:  # the record must name what was switched off
        raise RuntimeError(f"run {run.id}: the results record sets {applied}, not the run's {list(run.sets)}")
    samples = results.pop("samples")
    per_sample = {task: [int(s["acc"]) for s in sorted(rows, key=lambda s: s["doc_id"])]
                  for task, rows in samples.items() if rows and "acc" in rows[0]}
    results["relspec_reproduce"] = {
        "run_id": run.id, "conditions": [c.label() for c in run.conditions], "model": cfg.model, "dtype": cfg.dtype,
        "sets": [{"path": p, "sha256": d} for p, d in zip(run.sets, applied)], "tasks": list(run.tasks), "limit": run.limit,
        "docs": run.docs, "seconds": seconds, "device": str(lm.device), "lm_eval_command": lm_eval_command(cfg, run),
        "per_sample": per_sample,
    }
    return results


def run_plan(plan: list[Run], inp: Inputs) -> int:
    """Run every run without a stored result; returns how many ran."""
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable
    from tqdm import tqdm

    from relspec_lmeval.identify import _atomic_write_text

    runs_dir = inp.out / "runs"
    todo = [run for run in plan if not (runs_dir / f"{run.id}.json").is_file()]
    if not todo:
        return 0
    cfg = inp.cfg
    lm = load_lm(cfg)
    task_manager = TaskManager(include_defaults=False, metadata={"lre_dir": cfg.lre_dir} if cfg.lre_dir else None)
    done = sum(run.docs for run in plan) - sum(run.docs for run in todo)
    bar = tqdm(total=sum(run.docs for run in plan), initial=done, unit="doc", desc="relspec reproduce", disable=not cfg.progress,
               file=sys.stderr, dynamic_ncols=True)
    with bar, _lm_eval_session():
        for run in todo:
            bar.set_postfix_str(f"{run.conditions[0].label()} ({len(run.tasks)} tasks)")
            captured = io.StringIO()
            try:
                # lm-eval prints a bar per task and request type; keep the one plan bar readable
                with contextlib.nullcontext() if cfg.verbose else contextlib.redirect_stderr(captured):
                    record = evaluate_run(lm, task_manager, run, cfg)
            except BaseException:
                sys.stderr.write(captured.getvalue())
                raise
            _atomic_write_text(runs_dir / f"{run.id}.json", json.dumps(record, indent=1, default=handle_non_serializable) + "\n")
            bar.update(run.docs)
    return len(todo)


# ============================================================================ study


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
        for cond in run.conditions:
            m = results.setdefault(cond, Measurement({}, {}))
            m.metrics.update(metrics)
            m.per_sample.update(ours["per_sample"])
    sets = {r: NeuronSet.load(p) for r, p in inp.main.items()}
    rel = inp.relations
    return Study(
        model=inp.cfg.model, suite=inp.suite, relations=rel, seeds=inp.seeds, ks=inp.ks, num_layers=inp.shape.num_layers,
        sets={r: SetStats(len(s), s.count_per_layer()) for r, s in sets.items()},
        overlaps={a: {b: sets[a].overlap(sets[b]) for b in rel} for a in rel},
        jaccard={a: {b: sets[a].jaccard(sets[b]) for b in rel} for a in rel},
        results=results,
        settings={**settings, "runs": len(plan), "docs": sum(r.docs for r in plan), "run_seconds": seconds, "device": ", ".join(sorted(devices))},
    )


def reproduce(cfg: ReproduceConfig) -> Path:
    """The whole command; returns the path of report.md."""
    from relspec_lmeval.identify import _atomic_write_text

    start = time.perf_counter()
    inp = prepare(cfg)
    make_sets(inp)
    plan = build_plan(inp)
    _atomic_write_text(inp.out / "plan.json", json.dumps([r.to_json() for r in plan], indent=1) + "\n")
    new = run_plan(plan, inp)
    settings = {"neuron_sets": str(inp.sets_dir), "limit": inp.limit, "det_limit": inp.det_limit, "quick": cfg.quick,
                "command": cfg.command, "new_runs": new, "elapsed": time.perf_counter() - start}
    return write_report(collect(plan, inp, settings), inp.out)


# ============================================================================ CLI


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from None


def _cmd_reproduce(args: argparse.Namespace) -> None:
    from relspec_lmeval.identify import command_line

    cfg = ReproduceConfig(
        model=args.model, neuron_sets=args.neuron_sets, suite=args.suite, out=args.out, relations=args.relations,
        seeds=args.seeds, ks=args.ks, limit=args.limit, det_limit=args.det_limit, quick=args.quick,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype, lre_dir=args.lre_dir,
        command=command_line(args), progress=not args.quiet, verbose=args.verbose,
    )
    print(f"wrote {reproduce(cfg)}")


def add_cli(sub: Any) -> None:
    from relspec_lmeval.identify import _batch_size

    p = sub.add_parser(
        "reproduce",
        help="run the paper's experiments with lm-eval and write a report",
        description="Evaluate a model with each relation's neurons, random controls and k-sweep cuts switched off "
        "(lm-eval runs, resumable) and write tables, figures and report.md. See docs/reproduce.md.",
    )
    p.add_argument("--model", required=True, help="hub id, local folder or shipped model name")
    p.add_argument("--neuron-sets", required=True, help="folder written by relspec identify (<relation>.safetensors, scores/, random/)")
    p.add_argument("--suite", required=True, help="lre (the 12 LRE relations) or synthetic (relspec-tiny's world)")
    p.add_argument("--out", required=True, help="output folder (runs/, sets/, tables/, figures/, report.md)")
    p.add_argument("--relations", default="all", help="'all' or comma-separated relation names (default: all)")
    p.add_argument("--seeds", type=int, default=None, help=f"random controls per relation (default {SEEDS}; --quick {QUICK['seeds']})")
    p.add_argument("--ks", type=_int_list, default=None, help=f"k sweep (default {','.join(map(str, KS))}; capped by the model's neurons)")
    p.add_argument("--limit", type=int, default=None, help="documents per task (default: all; --quick 20)")
    p.add_argument("--det-limit", type=int, default=None, help="documents per P^det task (default: all; --quick 100)")
    p.add_argument("--quick", action="store_true", help="smaller plan: 3 seeds, k 50,500,3000, limit 20, P^det limit 100")
    p.add_argument("--batch-size", type=_batch_size, default=16, help="lm-eval batch size, or 'auto' (default 16)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu … (default: lm-eval's, cuda when available)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--lre-dir", default=None, help="folder of the LRE files (else RELSPEC_LRE_DIR or the download cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="show lm-eval's own logs and progress bars")
    p.set_defaults(func=_cmd_reproduce)
