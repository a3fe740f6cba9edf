"""The plan of ``relspec reproduce``: check the request, derive the missing sets, list the runs.

    relspec reproduce --model M --neuron-sets DIR --suite lre|synthetic --out OUT [--quick]

1. Check everything (suite, relations, sets and their shapes, the data) before anything is
   written: a failure is one ``relspec: error:`` line and an untouched ``OUT``.
2. Make the sets ``DIR`` lacks from what it has (``experiments.derived``): random controls like
   each relation's set, uniform (one ``random/k<K>-seed<N>`` file for every relation with k
   neurons, so their random runs are shared too) and site-matched (``random/<r>-site-seed<N>``),
   top-k and rank-range cuts from ``DIR/scores/``. They go to ``OUT/sets/``; ``DIR`` is never written.
3. The plan: lm-eval runs, each (neuron sets or none, tasks, limit), each stored as
   ``OUT/runs/<run-id>.json``; a run whose file exists is skipped, so a rerun resumes. One
   ``relspec-hf`` model is loaded once and its ablation swapped between runs.
   (``experiments.runner``)
4. ``experiments.report.write_report``: ``OUT/tables``, ``OUT/figures``, ``OUT/report.md``.

See docs/reproduce.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relspec_lmeval import __version__
from relspec_lmeval.data import relations as rel
from relspec_lmeval.data.choice import custom_choice_dataset
from relspec_lmeval.data.tasks import SUITES, Suite, find_group, task_name
from relspec_lmeval.errors import DataError, NeuronSetError, UsageError
from relspec_lmeval.experiments.config import ReproduceConfig  # re-exported: the plan's input
from relspec_lmeval.experiments.derived import RANDOM_KINDS, derived_sets, load_checked, make_derived
from relspec_lmeval.experiments.study import KS, QUICK, SEEDS, Condition
from relspec_lmeval.identify.pool import parse_relations
from relspec_lmeval.modelio.load import default_device, load_config
from relspec_lmeval.sets.folder import SetsFolder
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.scores import load_scores
from relspec_lmeval.sets.shape import ModelShape, config_fingerprint
from relspec_lmeval.util.hashing import file_sha256
from relspec_lmeval.util.resources import refuse_shipped, resource_dir

__all__ = ["KS", "QUICK", "SEEDS", "Inputs", "ReproduceConfig", "Run", "build_plan", "make_sets", "prepare"]


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
    site_seeds: list[int]
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
    chat: dict[str, Any] | None = None  # the sets' chat form (identify --apply-chat-template), passed to every run


# ============================================================================ checks


def _settings(cfg: ReproduceConfig) -> tuple[int, int, list[int], int | None, int | None]:
    def pick(value: Any, key: str, full: Any) -> Any:
        return value if value is not None else QUICK[key] if cfg.quick else full

    seeds, ks = pick(cfg.seeds, "seeds", SEEDS), pick(cfg.ks, "ks", KS)
    limit, det_limit = pick(cfg.limit, "limit", None), pick(cfg.det_limit, "det_limit", None)
    site_seeds = seeds if cfg.site_seeds is None else cfg.site_seeds
    if seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {seeds}")
    if site_seeds < 0:
        raise UsageError(f"--site-seeds must be 0 (no site-matched controls) or more, got {site_seeds}")
    if not ks or any(int(k) < 1 for k in ks):
        raise UsageError(f"--ks must be positive integers, got {list(ks)}")
    for name, v in (("--limit", limit), ("--det-limit", det_limit)):
        if v is not None and v < 1:
            raise UsageError(f"{name} must be at least 1, got {v}")
    return seeds, site_seeds, sorted({int(k) for k in ks}), limit, det_limit


def _sets_dir(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    try:  # a shipped folder: --neuron-sets relspec-tiny
        shipped = resource_dir("neuron_sets") / name
    except DataError:
        shipped = None
    if shipped is not None and shipped.is_dir():
        return shipped
    raise UsageError(f"neuron-set folder not found: {name} (the --out folder of relspec identify)")


def _suite_relations(suite: Suite, cfg: ReproduceConfig) -> list[str]:
    known = list(find_group(suite.eva).relations)
    requested = parse_relations(cfg.relations) or known
    unknown = [r for r in requested if r not in known]
    if unknown:
        raise UsageError(f"unknown relation(s) for suite {suite.name!r}: {', '.join(unknown)}. Known: {', '.join(known)}")
    for group in suite.groups():
        missing = [r for r in requested if r not in find_group(group).relations]
        if missing:
            raise UsageError(f"task group {group!r} has no task for {', '.join(missing)}")
    return requested


def _count_docs(suite: Suite, relations: list[str], lre_dir: str | None) -> dict[str, int]:
    """Documents per task, built exactly as lm-eval builds them (also: the data is there and reads)."""
    counts = {}
    for name in suite.groups():
        group = find_group(name)
        # a logprob task's documents are its split's recall documents (its choices need the tokenizer)
        build = {"ppl": rel.custom_ppl_dataset, "choice": custom_choice_dataset}.get(group.kind, rel.custom_dataset)
        for r in relations:
            counts[task_name(name, r)] = len(build(**group.dataset_kwargs(r), lre_dir=lre_dir)["test"])
    return counts


def _check_scores(relations: list[str], sets_dir: Path, shape: ModelShape, model: str) -> None:
    """The scores files that sets must be cut from exist and fit the model."""
    paths = [SetsFolder(sets_dir).scores_path(r) for r in relations]
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise NeuronSetError(f"the k sweep needs scores files to cut sets from, and these are missing: {', '.join(absent)}")
    for path in paths:
        layout = load_scores(path).layout
        if layout != shape.with_sites(layout.sites):  # the same model, whichever sites identify scored
            raise NeuronSetError(f"{path} was made for another model shape than {model!r}")


def prepare(cfg: ReproduceConfig) -> Inputs:
    """Check the whole request before anything is written or loaded.

    Raises ``UsageError`` (flags, suite, relations), ``NeuronSetError`` (sets or scores
    missing or not fitting the model), ``DataError`` (task data), ``ModelError`` (the
    model's config) or ``OutputError`` (an ``--out`` among the shipped files).
    """
    if cfg.suite not in SUITES:
        raise UsageError(f"unknown suite {cfg.suite!r}; choose one of {', '.join(SUITES)}")
    suite = SUITES[cfg.suite]
    seed_count, site_count, ks, limit, det_limit = _settings(cfg)
    default_device(cfg.device)  # a --device torch cannot use: said now, not after the sets are made
    sets_dir = _sets_dir(cfg.neuron_sets)
    out = Path(cfg.out).expanduser()
    refuse_shipped(out, "--out")
    relations = _suite_relations(suite, cfg)
    folder = SetsFolder(sets_dir)
    missing = [r for r in relations if not folder.set_path(r).is_file()]
    if missing:
        raise NeuronSetError(
            f"{sets_dir} has no neuron set for {', '.join(missing)} (expected <relation>.safetensors from relspec identify; "
            "or pass --relations)"
        )
    config = load_config(cfg.model, gguf_file=cfg.gguf_file)
    shape = ModelShape.from_config(config)
    main = {r: folder.set_path(r) for r in relations}
    loaded = {r: load_checked(p, shape) for r, p in main.items()}
    ks = [k for k in ks if k < shape.total]  # the sweep is capped by the model's size
    seeds, site_seeds = list(range(seed_count)), list(range(site_count))
    derived, to_make = derived_sets(relations, seeds, site_seeds, ks, main, loaded, sets_dir, out / "sets", shape)
    _check_scores(sorted({c.relation for c in to_make if c.kind not in RANDOM_KINDS}), sets_dir, shape, cfg.model)

    docs = _count_docs(suite, relations, cfg.lre_dir)
    return Inputs(cfg, suite, relations, seeds, site_seeds, ks, limit, det_limit, shape, config_fingerprint(config), sets_dir, out,
                  main, derived, to_make, docs, _chat_form(loaded))


def _chat_form(loaded: dict[str, NeuronSet]) -> dict[str, Any] | None:
    """The prompts' chat form the sets were identified with; every run must use the same (``UsageError`` if they differ)."""
    forms = {r: (s.metadata.get("parameters") or {}).get("chat_template") for r, s in loaded.items()}
    distinct = {json.dumps(f, sort_keys=True) for f in forms.values()}
    if len(distinct) > 1:
        raise UsageError(f"the sets were identified with different prompt forms (chat template or not): {forms}")
    return next(iter(forms.values()), None)


# ============================================================================ sets and plan


def make_sets(inp: Inputs) -> None:
    """Write the derived sets that are missing, under ``OUT/sets``, from the input folder's sets and scores."""
    make_derived(inp.to_make, inp.main, inp.sets_dir, inp.out / "sets")


def _tasks(inp: Inputs) -> list[tuple[Condition, tuple[str, ...], list[tuple[int | None, list[str]]]]]:
    """Each condition with its sets and its (limit, tasks) parts: P^det has its own limit.

    Every recall split evaluated is evaluated in log-probability too (``suite.logprob_group``),
    so a model that answers few prompts is still measured: P^eva of the evaluated relations,
    P^eva-2, the languages and P^det of the relations compared.
    """
    s, relations = inp.suite, inp.relations
    lp = s.logprob_group

    def named(groups: list[tuple[str | None, Sequence[str]]]) -> list[str]:
        return [task_name(g, r) for g, rs in groups if g for r in rs]

    def parts(evaluated: Sequence[str], own: Sequence[str], extra: bool) -> list[tuple[int | None, list[str]]]:
        """P^eva (recall and lp) of ``evaluated``; with ``extra`` also P^eva-2 of ``evaluated`` (lp: of ``own``), perplexity
        and languages (recall and lp) of ``own``; multiple choice; P^det (recall and lp) of ``own``."""
        groups: list[tuple[str | None, Sequence[str]]] = [(s.eva, evaluated), (lp("eva"), evaluated)]
        if extra:
            groups += [(s.t2, evaluated), (lp("t2"), own), (s.ppl, own)]
            groups += [(g, own) for lang in s.languages for g in (s.language_group(lang), lp(lang))]
        # multiple choice (~10 requests a doc): the baseline's for every relation, else the own relation's
        groups += [(s.choice, evaluated if evaluated == own else own)]
        return [(inp.limit, named(groups)), (inp.det_limit, named([(s.det, own), (lp("det"), own)]))]

    out = [(Condition("baseline"), (), parts(relations, relations, extra=True))]
    out += [(Condition("own", r), (str(inp.main[r]),), parts(relations, [r], extra=True)) for r in relations]
    for cond, path in inp.derived.items():
        r = [cond.relation]
        if cond.kind in RANDOM_KINDS:
            out.append((cond, (str(path),), parts(r, r, extra=False)))
        elif cond.kind == "topk":  # own and other relations (Fig. 5), in log-probability too
            out.append((cond, (str(path),), [(inp.limit, named([(s.eva, relations), (lp("eva"), relations)]))]))
        else:  # rank ranges: own relation only (Table 3)
            out.append((cond, (str(path),), [(inp.limit, named([(s.eva, r)]))]))
    return out


def build_plan(inp: Inputs) -> list[Run]:
    """Conditions with the same sets share runs; one run per (sets, limit)."""
    merged: dict[tuple[str, ...], tuple[list[Condition], dict[int | None, dict[str, None]]]] = {}
    for cond, sets, parts in _tasks(inp):
        conds, tasks = merged.setdefault(sets, ([], {}))
        conds.append(cond)
        for limit, names in parts:
            tasks.setdefault(limit, {}).update(dict.fromkeys(names))

    shas: dict[str, str] = {}
    plan = []
    for sets, (conds, tasks) in merged.items():
        digests = [shas.setdefault(p, file_sha256(p)) for p in sets]
        for limit, names in tasks.items():
            key = {"model": inp.cfg.model, **({"gguf_file": inp.cfg.gguf_file} if inp.cfg.gguf_file else {}),
                   **({"chat": inp.chat} if inp.chat else {}), "config": inp.config_hash, "dtype": inp.cfg.dtype, "mode": "zero", "sets": digests,
                   "tasks": sorted(names), "limit": limit, "package_version": __version__}
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
            docs = sum(min(inp.docs[t], limit) if limit else inp.docs[t] for t in names)
            plan.append(Run(f"{conds[0].label()}-{digest}", sets, tuple(names), limit, docs, tuple(conds)))
    return plan
