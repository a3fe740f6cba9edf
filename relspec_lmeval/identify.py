"""``relspec identify``: find each relation's specific neurons and write neuron-set files.

The paper's method (docs/identification.md has the details and every choice we made):

1. P^det of every relation of the data; one pass over all of it runs greedy 2-token
   generation (left padding, BOS prepended) and keeps the prompts the model answers
   correctly; the same pass (its prefill step) sums every neuron's prompt mean, so the
   means over all of P^det come for free.
2. Per relation: positives = its correct prompts (at most ``cap``, seeded subsample);
   negatives = ``negative_ratio`` × as many prompts drawn from the other relations' P^det.
3. One forward pass over positives + negatives records every neuron's mean over each
   prompt's tokens (BOS included, padding excluded), on the model's device.
4. AP of every neuron as a score of positive vs negative, batched on the device; the
   top-k (ties by (layer, site, index)), or with ``--select both`` top ⌈k/2⌉ + bottom ⌊k/2⌋.

Output: ``<out>/<relation>.safetensors`` (the set), ``<out>/scores/<relation>.safetensors``
(AP and mean of every neuron), ``<out>/summary.json``; ``relspec random`` writes
``<out>/random/<relation>-seed<N>.safetensors``; ``relspec select`` re-cuts k from scores.
"""

from __future__ import annotations

import argparse
import difflib
import gc
import hashlib
import json
import os
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relspec_lmeval.neuron_set import ModelShape, NeuronSet, NeuronSetError, model_metadata

DEFAULT_K = 3000
DEFAULT_CAP = 500
DEFAULT_NEGATIVE_RATIO = 4
MAX_NEW_TOKENS = 2
SELECTION_SEED_PREFIX = "relspec-identify"


# ============================================================================ data


@dataclass
class Pool:
    """P^det of every relation the negatives may come from, in a fixed order."""

    docs: dict[str, list[dict]]
    source: dict[str, Any]

    @property
    def relations(self) -> list[str]:
        return list(self.docs)

    def flat(self) -> list[tuple[str, int]]:
        return [(relation, i) for relation, docs in self.docs.items() for i in range(len(docs))]

    def hash(self) -> str:
        from relspec_lmeval.relations import docs_hash

        return docs_hash(doc for docs in self.docs.values() for doc in docs)


def _lre_error(exc: Exception) -> Exception:
    return FileNotFoundError(str(exc))


def _unknown(name: str, known: Sequence[str], what: str = "relation") -> ValueError:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown {what} {name!r}.{hint} Known: {', '.join(known)}")


def _task_index() -> tuple[dict[str, list[str]], dict[str, dict]]:
    """Group name → task names, task name → dataset_kwargs, from the shipped task YAMLs."""
    import yaml

    from relspec_lmeval._resources import task_dir

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # `!function` hooks
    groups: dict[str, list[str]] = {}
    tasks: dict[str, dict] = {}
    for path in sorted(Path(task_dir()).rglob("*.yaml")):
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
        except yaml.YAMLError:
            continue
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("group"), str) and isinstance(data.get("task"), list):
            groups[data["group"]] = [t for t in data["task"] if isinstance(t, str)]
        elif isinstance(data.get("task"), str) and isinstance(data.get("dataset_kwargs"), dict):
            tasks[data["task"]] = dict(data["dataset_kwargs"])
    return groups, tasks


def _group_tasks(name: str, groups: Mapping[str, list[str]], seen: frozenset = frozenset()) -> list[str]:
    out: list[str] = []
    for task in groups[name]:
        if task in groups and task not in seen:
            out += _group_tasks(task, groups, seen | {name})
        else:
            out.append(task)
    return out


def load_pool(
    data: str | os.PathLike | None,
    requested: Sequence[str] | None,
    *,
    template_set: str = "main",
    language: str = "en",
    lre_dir: str | os.PathLike | None = None,
) -> Pool:
    """The P^det docs of the pool.

    ``data`` is a folder of LRE-format JSON files (None: the LRE folder that
    ``relations.resolve_lre_dir`` finds) or a task-group name such as
    ``relation_recall_det``. Folder: the pool is the paper's relations present in it plus
    any other relation named in ``requested`` (a folder without paper relations: all of its
    relations). Task group: its tasks' ``dataset_kwargs`` (they must use split ``det``),
    loaded exactly as lm-eval loads them (``relations.custom_dataset``).
    """
    from relspec_lmeval import relations as rel

    if data is None or Path(data).expanduser().is_dir():
        try:
            folder = rel.resolve_lre_dir(Path(data).expanduser() if data is not None else lre_dir)
            available = rel.available_relations(folder)
        except rel.LREDataError as exc:
            raise _lre_error(exc) from None
        paper = [r for r in rel.RELATIONS if r in available]
        names = paper + [r for r in (requested or []) if r in available and r not in paper] if paper else list(available)
        for name in requested or []:
            if name not in available:
                raise _unknown(name, available)
        docs: dict[str, list[dict]] = {}
        for name in names:
            try:
                docs[name] = rel.build_docs(name, "det", template_set, language, folder)
            except rel.LREDataError as exc:
                raise _lre_error(exc) from None
        source = {"kind": "folder", "name": str(data) if data is not None else "LRE", "template_set": template_set, "language": language}
        return Pool(docs, source)

    groups, tasks = _task_index()
    name = str(data)
    if name not in groups:
        if name in tasks:
            raise ValueError(f"--data {name!r} is a single task; give a task group (e.g. relation_recall_det) or a folder")
        det_groups = sorted(g for g in groups if g.endswith("_det"))
        close = difflib.get_close_matches(name, list(groups), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"--data {name!r} is neither a folder nor a known task group.{hint} Identification groups: {', '.join(det_groups) or 'none'}"
        )
    docs = {}
    for task in _group_tasks(name, groups):
        kwargs = tasks.get(task)
        if kwargs is None or "relation" not in kwargs:
            raise ValueError(f"task {task!r} of group {name!r} has no dataset_kwargs with a relation")
        if kwargs.get("split", "eva") != "det":
            raise ValueError(
                f"task group {name!r} uses split {kwargs.get('split', 'eva')!r}; identification uses P^det "
                "(e.g. --data relation_recall_det)"
            )
        try:
            dataset = rel.custom_dataset(**{**kwargs, "lre_dir": kwargs.get("lre_dir", lre_dir)})
        except rel.LREDataError as exc:
            raise _lre_error(exc) from None
        docs[str(kwargs["relation"])] = [dict(d) for d in dataset["test"].to_list()]
    for r in requested or []:
        if r not in docs:
            raise _unknown(r, list(docs))
    return Pool(docs, {"kind": "task_group", "name": name})


def parse_relations(spec: str | Sequence[str] | None) -> list[str] | None:
    """``all`` (or None) → None; ``a,b`` → ["a", "b"]."""
    if spec is None:
        return None
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    if names == ["all"]:
        return None
    if not names or not all(names):
        raise ValueError(f"empty relation name in {spec!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"relation named twice in {spec!r}")
    return names


def first_line(text: str) -> str:
    """The generation up to the first newline (the recall tasks' ``until``)."""
    return text.split("\n", 1)[0]


def choose_prompts(
    pool: Pool, correct: Mapping[str, Sequence[bool]], relation: str, *, cap: int, negative_ratio: int, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(positives, negatives) as (relation, position in its P^det) pairs, each sorted.

    Seeded by (seed, relation), so a relation's choice does not depend on which other
    relations are identified in the same run.
    """
    rng = random.Random(f"{SELECTION_SEED_PREFIX}/{seed}/{relation}")
    right = [i for i, ok in enumerate(correct[relation]) if ok]
    chosen = sorted(rng.sample(right, cap)) if len(right) > cap else right
    positives = [(relation, i) for i in chosen]
    others = [(r, i) for r, i in pool.flat() if r != relation]
    if not others:
        raise ValueError(f"no negatives for {relation!r}: the data has no other relation")
    wanted = negative_ratio * len(positives)
    if wanted >= len(others):
        negatives = others
    else:
        negatives = [others[j] for j in sorted(rng.sample(range(len(others)), wanted))]
    return positives, negatives


def _selection_hash(positives: Sequence[tuple[str, int]], negatives: Sequence[tuple[str, int]], pool: Pool) -> str:
    digest = hashlib.sha256()
    for label, items in (("+", positives), ("-", negatives)):
        for r, i in items:
            digest.update(f"{label}\t{r}\t{pool.docs[r][i]['prompt']}\n".encode())
    return digest.hexdigest()


# ============================================================================ model


@dataclass
class IdentifyConfig:
    model: str
    out: str
    relations: str | Sequence[str] | None = "all"
    data: str | None = None
    k: int = DEFAULT_K
    select: str = "top"
    cap: int = DEFAULT_CAP
    negative_ratio: int = DEFAULT_NEGATIVE_RATIO
    seed: int = 0
    batch_size: int | str = 32
    max_batch_size: int = 64
    dtype: str = "auto"
    device: str | None = None
    device_map: str | None = None
    revision: str | None = None
    filter: bool = True
    template_set: str = "main"
    language: str = "en"
    lre_dir: str | None = None
    memory_budget_gb: float | None = None
    force: bool = False
    command: str | None = None
    progress: bool = True
    print_table: bool = True

    def check(self) -> None:
        from relspec_lmeval.scoring import SELECT_MODES

        if self.k < 1:
            raise ValueError(f"--k must be at least 1, got {self.k}")
        if self.select not in SELECT_MODES:
            raise ValueError(f"--select must be one of {', '.join(SELECT_MODES)}, got {self.select!r}")
        if self.cap < 1:
            raise ValueError(f"--cap must be at least 1, got {self.cap}")
        if self.negative_ratio < 1:
            raise ValueError(f"--negative-ratio must be at least 1, got {self.negative_ratio}")
        if self.batch_size != "auto" and (not str(self.batch_size).isdigit() or int(self.batch_size) < 1):
            raise ValueError(f"--batch-size must be a positive integer or 'auto', got {self.batch_size!r}")
        if self.memory_budget_gb is not None and self.memory_budget_gb <= 0:
            raise ValueError("--memory-budget must be positive (GiB)")


def _torch_dtype(name: str):
    import torch

    if name == "auto":
        return "auto"
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"unknown --dtype {name!r}; use auto, float32, bfloat16, float16 or float64")
    return value


def load_model(cfg: IdentifyConfig, device: str | None):
    """The model (eval mode, placed) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from relspec_lmeval.model import resolve_pretrained

    source = resolve_pretrained(cfg.model)
    kwargs: dict[str, Any] = {"revision": cfg.revision, "dtype": _torch_dtype(cfg.dtype)}
    if cfg.device_map:
        kwargs["device_map"] = cfg.device_map
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if not cfg.device_map:
        model.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(source, revision=cfg.revision)
    return model, tokenizer


def check_fit(model: Any, config: Any, encoded: Mapping[str, list[list[int]]], model_name: str) -> None:
    """Data/model mismatches: token ids the embedding lacks, prompts longer than the context."""
    rows = model.get_input_embeddings().weight.shape[0]
    longest, top_id, where = 0, -1, ""
    for relation, seqs in encoded.items():
        for seq in seqs:
            longest = max(longest, len(seq))
            if seq and max(seq) > top_id:
                top_id, where = max(seq), relation
    if top_id >= rows:
        raise ValueError(
            f"tokenizer and model of {model_name!r} do not match: a {where} prompt has token id {top_id}, "
            f"the model's embedding has {rows} rows"
        )
    limit = getattr(getattr(config, "get_text_config", lambda: config)(), "max_position_embeddings", None)
    if limit is not None and longest + MAX_NEW_TOKENS > int(limit):
        raise ValueError(
            f"the longest prompt has {longest} tokens; with {MAX_NEW_TOKENS} generated tokens that exceeds "
            f"{model_name!r}'s context of {limit} positions"
        )


def check_out_dir(out: Path, model_block: Mapping[str, Any], force: bool) -> None:
    """Refuse to mix sets of different models in one output folder (unless ``force``)."""
    if force or not out.is_dir():
        return
    from safetensors import safe_open

    for path in sorted([*out.glob("*.safetensors"), *out.glob("scores/*.safetensors")]):
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = json.loads((handle.metadata() or {}).get("relspec", "{}"))
        except Exception:  # noqa: BLE001 - an unreadable file is not ours to judge here
            continue
        other = (header.get("metadata") or {}).get("model") or {}
        theirs, ours = other.get("config_hash"), model_block.get("config_hash")
        if theirs and ours and theirs != ours:
            raise NeuronSetError(
                f"{path} was made for model {other.get('name')!r} (config {theirs}), but this run uses "
                f"{model_block.get('name')!r} (config {ours}); use another --out or --force"
            )


class BatchSize:
    """A fixed batch size, or ``auto``: start at ``max_batch_size`` and halve on out-of-memory."""

    def __init__(self, value: int | str, maximum: int) -> None:
        self.auto = value == "auto"
        self.value = int(maximum if self.auto else value)

    def run(self, fn: Callable[[int], Any]) -> Any:
        import torch

        while True:
            try:
                return fn(self.value)
            except torch.OutOfMemoryError:
                if not self.auto or self.value == 1:
                    raise
                self.value //= 2
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()


def _memory_budget(cfg: IdentifyConfig, device: Any) -> int:
    import torch

    if cfg.memory_budget_gb is not None:
        return int(cfg.memory_budget_gb * (1 << 30))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return 4 << 30


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ============================================================================ pipeline


@dataclass
class RelationResult:
    relation: str
    det_prompts: int
    correct: int
    positives: int
    negatives: int
    set_path: Path | None = None
    scores_path: Path | None = None
    neuron_set: NeuronSet | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def identify(cfg: IdentifyConfig) -> dict[str, Any]:
    """Run the whole identification; returns the summary (also written to <out>/summary.json)."""
    import torch
    from transformers import AutoConfig

    from relspec_lmeval import __version__
    from relspec_lmeval.activations import Processes, activation_matrix, encode_prompts, generate_with_means, pad_token_id
    from relspec_lmeval.ablation import find_mlps
    from relspec_lmeval.model import resolve_pretrained
    from relspec_lmeval.relations import docs_hash, is_correct
    from relspec_lmeval.scoring import NeuronLayout, Scores, average_precision_chunked, save_scores

    cfg.check()
    processes = Processes()
    out = Path(cfg.out)
    requested = parse_relations(cfg.relations)
    pool = load_pool(cfg.data, requested, template_set=cfg.template_set, language=cfg.language, lre_dir=cfg.lre_dir)
    selected = requested or pool.relations
    if not selected:
        raise ValueError(f"no relations found in --data {cfg.data!r}")

    # Everything checkable from the config is checked before the (slow) weight load.
    config = AutoConfig.from_pretrained(resolve_pretrained(cfg.model), revision=cfg.revision)
    shape = ModelShape.from_config(config)
    layout = NeuronLayout.from_shape(shape)
    if cfg.k > layout.total:
        raise NeuronSetError(f"--k {cfg.k} is larger than the {layout.total} neurons of {cfg.model!r}")
    model_block = model_metadata(config, cfg.model, cfg.revision)
    check_out_dir(out, model_block, cfg.force)

    model, tokenizer = load_model(cfg, cfg.device or (str(processes.device) if processes.device else None))
    find_mlps(model)
    device = model.get_input_embeddings().weight.device
    encoded = {r: encode_prompts(tokenizer, [d["prompt"] for d in docs]) for r, docs in pool.docs.items()}
    check_fit(model, config, encoded, cfg.model)
    batch = BatchSize(cfg.batch_size, cfg.max_batch_size)
    pad = pad_token_id(tokenizer)
    timings: dict[str, float] = {}

    # 1. correctness filter over all of P^det (its prefill also sums every neuron's prompt means)
    flat = pool.flat()
    all_encoded = [encoded[r][i] for r, i in flat]
    start = time.perf_counter()
    texts, total = batch.run(
        lambda bs: generate_with_means(
            model, tokenizer, all_encoded, layout, batch_size=bs, generate=cfg.filter, max_new_tokens=MAX_NEW_TOKENS,
            processes=processes, desc="filter + means" if cfg.filter else "means", progress=cfg.progress,
        )
    )
    timings["filter_and_means"] = time.perf_counter() - start
    means = (total / len(flat)).to(torch.float32)
    correct: dict[str, list[bool]] = {r: [True] * len(docs) for r, docs in pool.docs.items()}
    if texts is not None:
        for (r, i), text in zip(flat, texts):
            correct[r][i] = is_correct(first_line(text), pool.docs[r][i]["golds"])
    empty = [r for r in selected if not any(correct[r])]
    if empty:
        detail = "; ".join(f"{r}: 0 of {len(pool.docs[r])} P^det prompts answered correctly" for r in empty)
        raise ValueError(
            f"empty positive set: {detail}. Leave these relations out (--relations), or use --no-filter to keep every prompt"
        )

    dtype_name = str(next(model.parameters()).dtype).replace("torch.", "")
    parameters = {
        "k": cfg.k,
        "select": cfg.select,
        "cap": cfg.cap,
        "negative_ratio": cfg.negative_ratio,
        "seed": cfg.seed,
        "batch_size": batch.value,
        "dtype": dtype_name,
        "device": device.type,
        "filter": f"greedy-{MAX_NEW_TOKENS}" if cfg.filter else "none",
        "template_set": cfg.template_set,
        "language": cfg.language,
    }
    pool_hash = pool.hash()
    base_meta = {
        "model": model_block,
        "method": "ap",
        "parameters": parameters,
        "data_hash": pool_hash,
        "package_version": __version__,
        "command": cfg.command,
    }
    budget = _memory_budget(cfg, device)
    results: list[RelationResult] = []

    # 2.-4. per relation: positives/negatives, statistics pass, AP, top-k
    for relation in selected:
        positives, negatives = choose_prompts(
            pool, correct, relation, cap=cfg.cap, negative_ratio=cfg.negative_ratio, seed=cfg.seed
        )
        result = RelationResult(relation, len(pool.docs[relation]), sum(correct[relation]), len(positives), len(negatives))
        items = positives + negatives
        labels = torch.zeros(len(items), dtype=torch.bool)
        labels[: len(positives)] = True
        matrix_bytes = len(items) * layout.total * 4
        on_device = device.type != "cpu" and matrix_bytes <= budget // 2
        start = time.perf_counter()
        matrix = batch.run(
            lambda bs: activation_matrix(
                model, [encoded[r][i] for r, i in items], layout, batch_size=bs, pad_id=pad,
                matrix_device=device if on_device else "cpu", processes=processes,
                desc=f"statistics {relation}", progress=cfg.progress,
            )
        )
        result.seconds["statistics"] = time.perf_counter() - start
        if processes.is_main:  # the other processes only helped with the statistics
            start = time.perf_counter()
            ap = average_precision_chunked(
                matrix, labels, device=device, budget_bytes=max(1, budget - (matrix_bytes if on_device else 0))
            )
            result.seconds["ap"] = time.perf_counter() - start
            matrix = None  # free it before the next relation's pass
            data_block = {
                "source": pool.source,
                "relations": pool.relations,
                "pool_hash": pool_hash,
                "relation_hash": docs_hash(pool.docs[relation]),
                "selection_hash": _selection_hash(positives, negatives, pool),
                "det_prompts": result.det_prompts,
                "correct": result.correct,
                "positives": result.positives,
                "negatives": result.negatives,
                "means_over": f"all {len(flat)} P^det prompts of the pool",
            }
            meta = {**base_meta, "relation": relation, "data": data_block}
            scores = Scores(layout, ap.to(torch.float32), means, {**meta, "kind": "scores"})
            result.scores_path = save_scores(scores, out / "scores" / f"{relation}.safetensors")
            result.neuron_set = scores.to_neuron_set(cfg.k, cfg.select, {**meta, "k": cfg.k, "select": cfg.select})
            result.set_path = result.neuron_set.save(out / f"{relation}.safetensors")
        matrix = None
        results.append(result)

    summary = _summary(results, pool, model_block, parameters, cfg, layout)
    if processes.is_main:
        _atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
        if cfg.print_table:
            print(format_table(summary, timings, results))
    processes.barrier()
    return summary


def _summary(
    results: Sequence[RelationResult], pool: Pool, model_block: Mapping[str, Any], parameters: Mapping[str, Any],
    cfg: IdentifyConfig, layout: Any,
) -> dict[str, Any]:
    relations: dict[str, Any] = {}
    for r in results:
        entry: dict[str, Any] = {
            "det_prompts": r.det_prompts,
            "correct": r.correct,
            "accuracy": round(r.correct / r.det_prompts, 6) if r.det_prompts else 0.0,
            "positives": r.positives,
            "negatives": r.negatives,
        }
        if r.neuron_set is not None:
            per_layer = r.neuron_set.count_per_layer()
            entry.update(
                neurons=len(r.neuron_set),
                count_per_site=r.neuron_set.count_per_site(),
                count_per_layer=[sum(per_layer.get(layer, {}).values()) for layer in range(layout.num_layers)],
                set_file=r.set_path.name if r.set_path else None,
                scores_file=f"scores/{r.scores_path.name}" if r.scores_path else None,
            )
        relations[r.relation] = entry
    sets = {r.relation: r.neuron_set for r in results if r.neuron_set is not None}
    overlaps = {a: {b: sets[a].overlap(sets[b]) for b in sets} for a in sets}
    return {
        "model": dict(model_block),
        "data": {**pool.source, "relations": pool.relations, "pool_hash": pool.hash()},
        "parameters": dict(parameters),
        "command": cfg.command,
        "relations": relations,
        "overlaps": overlaps,
    }


def format_table(summary: Mapping[str, Any], timings: Mapping[str, float] | None = None, results: Sequence[RelationResult] = ()) -> str:
    """The table printed at the end of a run."""
    rows = summary["relations"]
    width = max([len("relation"), *(len(r) for r in rows)])
    seconds = {r.relation: r.seconds for r in results}
    lines = [f"{'relation':<{width}}  {'P^det':>6} {'correct':>7} {'acc':>6} {'pos':>5} {'neg':>6} {'k':>7}  peak layer   time"]
    for name, e in rows.items():
        per_layer = e.get("count_per_layer") or []
        peak = max(range(len(per_layer)), key=lambda i: (per_layer[i], -i)) if per_layer else None
        peak_text = f"L{peak} ({per_layer[peak]})" if peak is not None else "-"
        t = seconds.get(name, {})
        lines.append(
            f"{name:<{width}}  {e['det_prompts']:>6} {e['correct']:>7} {100 * e['accuracy']:>5.1f}% {e['positives']:>5} "
            f"{e['negatives']:>6} {e.get('neurons', 0):>7}  {peak_text:<11} {t.get('statistics', 0) + t.get('ap', 0):6.1f}s"
        )
    names = list(summary["overlaps"])
    if len(names) > 1:
        lines.append("")
        lines.append("overlap (shared neurons; columns in the same order as rows):")
        for i, a in enumerate(names):
            cells = " ".join(f"{summary['overlaps'][a][b]:>6}" for b in names)
            lines.append(f"{i + 1:>2} {a:<{width}} {cells}")
    if timings:
        lines.append("")
        lines.append("  ".join(f"{k}: {v:.1f}s" for k, v in timings.items()))
    return "\n".join(lines)


# ============================================================================ random / select


def _shape_of(neuron_set: NeuronSet, model: str | None, revision: str | None = None) -> tuple[ModelShape, dict[str, Any]]:
    recorded = neuron_set.metadata.get("model") or {}
    if model is not None:
        from transformers import AutoConfig

        from relspec_lmeval.model import resolve_pretrained

        config = AutoConfig.from_pretrained(resolve_pretrained(model), revision=revision)
        block = model_metadata(config, model, revision)
        neuron_set.validate(ModelShape.from_config(config))
        return ModelShape.from_config(config), block
    try:
        shape = ModelShape(int(recorded["num_layers"]), int(recorded["hidden_size"]), int(recorded["intermediate_size"]))
    except (KeyError, TypeError, ValueError):
        raise NeuronSetError(f"{neuron_set.path} records no model shape; pass --model") from None
    return shape, dict(recorded)


def random_sets(
    like: Sequence[str],
    seeds: int | Sequence[int] = 10,
    *,
    layer_matched: bool = False,
    out: str | os.PathLike | None = None,
    model: str | None = None,
    revision: str | None = None,
    command: str | None = None,
) -> list[Path]:
    """Random controls: for each seed, as many random neurons as ``like`` (per (layer, site) with
    ``layer_matched``). Means (and AP) come from the set's scores file when there is one."""
    import torch

    from relspec_lmeval import __version__
    from relspec_lmeval.neuron_set import resolve_set_path
    from relspec_lmeval.scoring import NeuronLayout, load_scores

    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("--seeds must be at least 1")
    written: list[Path] = []
    for name in like:
        base = NeuronSet.load(resolve_set_path(name))
        shape, block = _shape_of(base, model, revision)
        layout = NeuronLayout.from_shape(shape)
        relation = base.metadata.get("relation") or Path(str(base.path)).stem
        folder = Path(out) if out is not None else Path(str(base.path)).parent
        scores_path = Path(str(base.path)).parent / "scores" / f"{relation}.safetensors"
        scores = load_scores(scores_path) if scores_path.is_file() else None
        if scores is not None and scores.layout != layout:
            raise NeuronSetError(f"{scores_path} was made for another model shape than {base.path}")
        for seed in seed_list:
            generator = torch.Generator().manual_seed(int(seed))
            if layer_matched:
                picked = []
                for (layer, site), index in base.neurons.items():
                    draw = torch.randperm(layout.width(site), generator=generator)[: index.numel()]
                    picked.append(draw + layout.offset(layer, site))
                flat = torch.sort(torch.cat(picked)).values
            else:
                flat = torch.sort(torch.randperm(layout.total, generator=generator)[: len(base)]).values
            grouped = layout.group(flat)
            extra: dict[str, dict] = {"scores": {}, "means": {}}
            if scores is not None:
                for key, index in grouped.items():
                    extra["scores"][key] = scores.ap[index + layout.offset(*key)]
                    extra["means"][key] = scores.means[index + layout.offset(*key)]
            metadata = {
                "model": block,
                "method": "random-layer-matched" if layer_matched else "random",
                "relation": relation,
                "k": len(base),
                "seed": int(seed),
                "layer_matched": layer_matched,
                "like": {"path": str(name), "sha256": base.sha256()},
                "package_version": __version__,
                "command": command,
            }
            result = NeuronSet(grouped, metadata, scores=extra["scores"], means=extra["means"])
            written.append(result.save(folder / "random" / f"{relation}-seed{seed}.safetensors"))
    return written


def select_sets(
    scores_paths: Sequence[str | os.PathLike],
    k: int,
    *,
    select: str = "top",
    skip: int = 0,
    out: str | os.PathLike | None = None,
    command: str | None = None,
) -> list[Path]:
    """Re-cut k neurons from stored scores, without the model: ``<out>/<relation>.safetensors``.

    Default ``out``: ``k<N>`` (``k<N>-both``, ``k<N>-skip<S>``) beside the ``scores`` folder.
    """
    from relspec_lmeval import __version__
    from relspec_lmeval.neuron_set import file_sha256
    from relspec_lmeval.scoring import load_scores

    written = []
    for path in scores_paths:
        scores = load_scores(path)
        if k > scores.layout.total:
            raise NeuronSetError(f"--k {k} is larger than the {scores.layout.total} neurons in {path}")
        relation = scores.relation or Path(path).stem
        suffix = f"k{k}" + ("-both" if select == "both" else "") + (f"-skip{skip}" if skip else "")
        folder = Path(out) if out is not None else Path(path).resolve().parent.parent / suffix
        meta = {key: value for key, value in scores.metadata.items() if key != "kind"}
        meta["parameters"] = {**(meta.get("parameters") or {}), "k": k, "select": select, **({"skip": skip} if skip else {})}
        meta.update(
            k=k,
            select=select,
            package_version=__version__,
            command=command,
            scores_file={"path": str(path), "sha256": file_sha256(path)},
        )
        if skip:
            meta["skip"] = skip
        neuron_set = scores.to_neuron_set(k, select, meta, skip)
        written.append(neuron_set.save(folder / f"{relation}.safetensors"))
    return written


# ============================================================================ CLI


def command_line(args: argparse.Namespace) -> str:
    """The command as given: ``args.argv`` when cli.main records it, else this process's argv."""
    argv = getattr(args, "argv", None)
    if argv is not None:
        return shlex.join(["relspec", *argv])
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', not {text!r}")
    return value


def _cmd_identify(args: argparse.Namespace) -> None:
    cfg = IdentifyConfig(
        model=args.model,
        out=args.out,
        relations=args.relations,
        data=args.data,
        k=args.k,
        select=args.select,
        cap=args.cap,
        negative_ratio=args.negative_ratio,
        seed=args.seed,
        batch_size=args.batch_size,
        max_batch_size=args.max_batch_size,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        revision=args.revision,
        filter=not args.no_filter,
        template_set=args.template_set,
        language=args.language,
        lre_dir=args.lre_dir,
        memory_budget_gb=args.memory_budget,
        force=args.force,
        command=command_line(args),
        progress=not args.quiet,
    )
    summary = identify(cfg)
    print(f"wrote {len(summary['relations'])} neuron set(s), scores and summary.json to {cfg.out}")


def _cmd_random(args: argparse.Namespace) -> None:
    paths = random_sets(
        args.like, args.seeds, layer_matched=args.layer_matched, out=args.out, model=args.model, command=command_line(args)
    )
    print(f"wrote {len(paths)} random control set(s), e.g. {paths[0]}")


def _cmd_select(args: argparse.Namespace) -> None:
    paths = select_sets(args.scores, args.k, select=args.select, skip=args.skip, out=args.out, command=command_line(args))
    for path in paths:
        print(f"wrote {path}")


def add_cli(sub: Any) -> None:
    """Add ``identify``, ``random`` and ``select`` to the ``relspec`` command."""
    p = sub.add_parser(
        "identify",
        help="find relation-specific neurons and write neuron-set files",
        description="Find each relation's specific neurons (AP of per-prompt mean outputs, positives = correctly "
        "answered P^det prompts) and write <out>/<relation>.safetensors, <out>/scores/<relation>.safetensors "
        "and <out>/summary.json. See docs/identification.md.",
    )
    p.add_argument("--model", required=True, help="hub id, local folder or shipped model name (relspec-tiny)")
    p.add_argument("--relations", default="all", help="'all' or comma-separated relation names (default: all)")
    p.add_argument(
        "--data",
        default=None,
        help="folder of LRE JSON files, or a task group such as relation_recall_det (default: the LRE folder: "
        "RELSPEC_LRE_DIR or the download cache)",
    )
    p.add_argument("--out", required=True, help="output folder, e.g. neuron_sets/<model>/")
    p.add_argument("--k", type=int, default=DEFAULT_K, help=f"neurons per set (default {DEFAULT_K})")
    p.add_argument("--select", choices=["top", "both"], default="top", help="top k, or top k/2 + bottom k/2")
    p.add_argument("--cap", type=int, default=DEFAULT_CAP, help=f"at most this many positives (default {DEFAULT_CAP})")
    p.add_argument("--negative-ratio", type=int, default=DEFAULT_NEGATIVE_RATIO, help="negatives per positive (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the positive subsample and the negatives (default 0)")
    p.add_argument("--batch-size", type=_batch_size, default=32, help="prompts per batch, or 'auto' (default 32)")
    p.add_argument("--max-batch-size", type=int, default=64, help="where --batch-size auto starts (default 64)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16, float64")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu … (default: cuda if available)")
    p.add_argument("--device-map", default=None, help="e.g. auto: shard a big model over the visible GPUs")
    p.add_argument("--revision", default=None, help="model revision on the hub")
    p.add_argument(
        "--no-filter",
        action="store_true",
        help="keep every P^det prompt as a positive (no correctness filter); recorded as filter=none",
    )
    p.add_argument("--template-set", default="main", help="with a data folder: main or t2 (default main)")
    p.add_argument("--language", default="en", help="with a data folder: prompt language (default en)")
    p.add_argument("--lre-dir", default=None, help="where the LRE files are, for task groups")
    p.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        metavar="GIB",
        help="device memory for the activation matrix and AP (default: half the free GPU memory, 4 on CPU); "
        "a larger matrix stays in host memory and AP runs over neuron chunks",
    )
    p.add_argument("--force", action="store_true", help="write into a folder holding sets of another model")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_identify)

    r = sub.add_parser("random", help="write random control sets like a given set")
    r.add_argument("--like", required=True, nargs="+", metavar="SET", help="neuron-set file(s) or shipped name(s)")
    r.add_argument("--seeds", type=int, default=10, help="number of seeds, 0..N-1 (default 10)")
    r.add_argument("--layer-matched", action="store_true", help="same count per layer and site as the set")
    r.add_argument("--out", default=None, help="folder (files go to <out>/random/; default: the set's folder)")
    r.add_argument("--model", default=None, help="model, when the set records no shape (also checks the shape)")
    r.set_defaults(func=_cmd_random)

    s = sub.add_parser("select", help="re-cut k neurons from stored scores (no model run)")
    s.add_argument("scores", nargs="+", metavar="SCORES", help="<out>/scores/<relation>.safetensors file(s)")
    s.add_argument("--k", type=int, required=True, help="neurons per set")
    s.add_argument("--select", choices=["top", "both"], default="top")
    s.add_argument("--skip", type=int, default=0, help="skip the first N ranks (ranks N+1..N+k; top only)")
    s.add_argument("--out", default=None, help="output folder (default: k<N> beside the scores folder)")
    s.set_defaults(func=_cmd_select)


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/identify_neurons.py …`` = ``relspec identify …``."""
    from relspec_lmeval.cli import main as cli_main

    return cli_main(["identify", *(sys.argv[1:] if argv is None else argv)])
