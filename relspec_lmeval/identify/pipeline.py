"""``identify``: find each relation's specific neurons and write a sets folder.

The paper's method (docs/identification.md has the details and every choice we made):

1. P^det of every relation of the data (the pool); one pass over the pool's P^det runs
   greedy 2-token generation (left padding, BOS prepended) in the batches that hold a prompt
   of the relations asked for without a cached answer, and keeps the prompts of those
   relations the model answers correctly; the same pass (its prefill step, alone in the other
   batches) sums every neuron's prompt mean, so the means over the pool come for free. With
   ``correct_by="choice"`` that pass only sums the means, and a prompt is correct when its
   gold wins ``relation_choice``'s comparison (``choice_check``). Relations with fewer than
   ``min_positives`` correct prompts are skipped.
2. Per relation: positives = its correct prompts (at most ``cap``, seeded subsample);
   negatives = ``negative_ratio`` × as many prompts drawn from the other relations' P^det.
3. One forward pass over positives + negatives records every neuron's mean over each
   prompt's tokens (BOS included, padding excluded), on the model's device.
4. AP of every neuron as a score of positive vs negative, batched on the device; the
   top-k (ties by (layer, site, index)), or with ``select=both`` top ⌈k/2⌉ + bottom ⌊k/2⌋.

Output: a ``SetsFolder`` (``<out>/<relation>.safetensors``, ``scores/``, ``summary.json``), locked
while the run writes it; a folder holds one run: a run with the same parameters adds its relations
to it, one with others is refused (``SetsFolder.earlier_run``) unless ``force`` replaces it.
Everything that can be checked without the model is checked before it is loaded.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relspec_lmeval import __version__
from relspec_lmeval.data.choice import CHOICE_SEED, DISTRACTORS
from relspec_lmeval.data.relations import docs_hash
from relspec_lmeval.errors import DataError, ModelError, NeuronSetError, OutputError
from relspec_lmeval.identify.activations import Processes, activation_matrix, encode_prompts, pad_token_id
from relspec_lmeval.identify.answer_cache import AnswerCache, model_fingerprint
from relspec_lmeval.identify.chat import chat_prompts, chat_record
from relspec_lmeval.identify.config import MAX_NEW_TOKENS, BatchSize, IdentifyConfig, memory_budget
from relspec_lmeval.identify.correctness import check_answers, check_name
from relspec_lmeval.identify.lape import LAPE_BAR_RATIO, LAPE_FILTER_RATE, LAPE_SITE, LAPE_TOP_RATE, LapeRun
from relspec_lmeval.identify.methods import two_class_scores
from relspec_lmeval.identify.pool import Pool, choose_prompts, load_pool, parse_relations, selection_hash
from relspec_lmeval.identify.summary import RelationResult, build_summary, environment, format_table, kept_results
from relspec_lmeval.modelio.load import load_config, load_model, meta_skeleton
from relspec_lmeval.modelio.sites import site_modules
from relspec_lmeval.sets.folder import EarlierRun, SetsFolder
from relspec_lmeval.sets.scores import Scores, save_scores
from relspec_lmeval.sets.shape import DEFAULT_SITES, ModelShape, model_metadata
from relspec_lmeval.util.files import StagedFiles
from relspec_lmeval.util.resources import refuse_shipped

__all__ = ["check_fit", "check_out_dir", "identify"]


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
        raise ModelError(
            f"tokenizer and model of {model_name!r} do not match: a {where} prompt has token id {top_id}, "
            f"the model's embedding has {rows} rows"
        )
    limit = getattr(getattr(config, "get_text_config", lambda: config)(), "max_position_embeddings", None)
    if limit is not None and longest + MAX_NEW_TOKENS > int(limit):
        raise ModelError(
            f"the longest prompt has {longest} tokens; with {MAX_NEW_TOKENS} generated tokens that exceeds "
            f"{model_name!r}'s context of {limit} positions"
        )


def check_out_dir(out: Path) -> None:
    """The output folder can be written: not a file, not among the shipped files (before its lock creates it)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a folder for the sets")
    refuse_shipped(out, "--out")


_AFTER_LOAD = ("dtype", "device", "chat_template")  # parameters known once the model is loaded


def _parameters(cfg: IdentifyConfig, shape: ModelShape, batch_size: int, dtype: str | None = None, device: str | None = None,
                chat: Any = None) -> dict[str, Any]:
    """``parameters`` of the metadata: what the files depend on beyond model and data (before the load: ``_AFTER_LOAD`` unset)."""
    generate = cfg.filter and cfg.correct_by == "generate"
    return {
        "k": cfg.k,
        "select": cfg.select,
        **({"sites": list(shape.sites)} if shape.sites != DEFAULT_SITES else {}),
        "cap": cfg.cap,
        "negative_ratio": cfg.negative_ratio,
        "seed": cfg.seed,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": device,
        "filter": (f"greedy-{MAX_NEW_TOKENS}" if generate else "choice") if cfg.filter else "none",
        **({"choice": {"seed": CHOICE_SEED, "distractors": DISTRACTORS}} if cfg.filter and not generate else {}),
        **({"correct_metric": cfg.correct_metric} if cfg.filter and cfg.correct_metric != "acc" else {}),
        "min_positives": cfg.min_positives_needed,
        **({"chat_template": chat} if cfg.apply_chat_template else {}),
        "template_set": cfg.template_set,
        "language": cfg.language,
        **({"lape": {"top_rate": LAPE_TOP_RATE, "filter_rate": LAPE_FILTER_RATE, "activation_bar_ratio": LAPE_BAR_RATIO,
                     "site": LAPE_SITE, "prompts": "every P^det prompt of each relation of the pool"}} if cfg.method == "lape" else {}),
    }


def _means_over(pool: Pool) -> str:
    return f"all {len(pool.flat())} P^det prompts of the pool"


@dataclass
class _Run:
    """What the checks before the model load established."""

    cfg: IdentifyConfig
    pool: Pool
    selected: list[str]
    config: Any
    shape: ModelShape
    model_block: dict[str, Any]
    folder: SetsFolder
    ours: dict[str, Any]  # the fields a folder's earlier run must share (SetsFolder.earlier_run)
    earlier: EarlierRun | None = None


def _prepare(cfg: IdentifyConfig) -> _Run:
    cfg.check()
    requested = parse_relations(cfg.relations)
    pool = load_pool(cfg.data, requested, template_set=cfg.template_set, language=cfg.language, lre_dir=cfg.lre_dir)
    selected = requested or pool.relations
    if not selected:
        raise DataError(f"no relations found in --data {cfg.data!r}")
    config = load_config(cfg.model, cfg.revision, cfg.gguf_file, cfg.progress)
    shape = ModelShape.from_config(config, cfg.site_names)
    if cfg.k > shape.total:
        raise NeuronSetError(f"--k {cfg.k} is larger than the {shape.total} neurons of {cfg.model!r} at {', '.join(shape.sites)}")
    model_block = model_metadata(config, cfg.model, cfg.revision, gguf_file=cfg.gguf_file, sites=shape.sites)
    if shape.has_attention_sites and (skeleton := meta_skeleton(config)) is not None:  # a fused attention: before the load
        site_modules(skeleton, [(layer, site) for layer, site, _, _ in shape.blocks()])
    out = Path(cfg.out)
    check_out_dir(out)
    ours = {"model": model_block, "method": cfg.method, "data_hash": pool.hash(), "package_version": __version__,
            "means_over": _means_over(pool), "parameters": _parameters(cfg, shape, int(cfg.max_batch_size if cfg.batch_size == "auto" else cfg.batch_size))}
    return _Run(cfg, pool, selected, config, shape, model_block, SetsFolder(out), ours)


def _two_class(cfg: IdentifyConfig, model: Any, shape: ModelShape, encoded: Mapping[str, list[list[int]]], positives: list,
               negatives: list, relation: str, result: RelationResult, batch: BatchSize, pad: int, processes: Processes,
               device: Any, budget: int) -> Any:
    """The statistics pass over positives + negatives, then the method's score of every neuron (None off the main process)."""
    import torch

    items = positives + negatives
    labels = torch.zeros(len(items), dtype=torch.bool)
    labels[: len(positives)] = True
    matrix_bytes = len(items) * shape.total * 4
    on_device = device.type != "cpu" and matrix_bytes <= budget // 2
    start = time.perf_counter()
    matrix = batch.run(
        lambda bs: activation_matrix(
            model, [encoded[r][i] for r, i in items], shape, batch_size=bs, pad_id=pad,
            matrix_device=device if on_device else "cpu", processes=processes, desc=f"statistics {relation}", progress=cfg.progress,
        )
    )
    result.seconds["statistics"] = time.perf_counter() - start
    if not processes.is_main:
        return None
    start = time.perf_counter()
    scores = two_class_scores(cfg.method, matrix, labels, device=device, budget_bytes=max(1, budget - (matrix_bytes if on_device else 0)))
    result.seconds["ap"] = time.perf_counter() - start
    return scores


def identify(cfg: IdentifyConfig) -> dict[str, Any]:
    """Run the whole identification; returns the summary (also written to ``<out>/summary.json``).

    Raises ``UsageError``, ``DataError``, ``ModelError`` or ``NeuronSetError`` for anything
    wrong with the request (before the model loads where it can be known then), and
    ``OutputError`` when the outputs cannot be written; a relation's set, its scores and the
    summary that lists them appear together or not at all.
    """
    run = _prepare(cfg)
    processes = Processes()
    with run.folder.lock() if processes.is_main else nullcontext():  # one writer per folder, taken before the model loads
        later = (*_AFTER_LOAD, *(("batch_size",) if cfg.batch_size == "auto" else ()))
        run.earlier = None if cfg.force else run.folder.earlier_run(run.ours, later)
        return _identify(cfg, run, processes)


def _identify(cfg: IdentifyConfig, run: _Run, processes: Processes) -> dict[str, Any]:
    import torch

    pool, shape = run.pool, run.shape
    device_name = cfg.device or (str(processes.device) if processes.device else None)
    model, tokenizer = load_model(cfg.model, revision=cfg.revision, dtype=cfg.dtype, device=device_name, device_map=cfg.device_map,
                                  gguf_file=cfg.gguf_file, progress=cfg.progress)
    site_modules(model, [(layer, site) for layer, site, _, _ in shape.blocks()])  # its MLPs, and every scored site, before any pass
    device = model.get_input_embeddings().weight.device
    if cfg.apply_chat_template:  # the strings lm-eval sends under --apply_chat_template
        texts_of = {r: chat_prompts(docs, tokenizer, cfg.system_instruction) for r, docs in pool.docs.items()}
    else:
        texts_of = {r: [d["prompt"] for d in docs] for r, docs in pool.docs.items()}
    encoded = {r: encode_prompts(tokenizer, texts) for r, texts in texts_of.items()}
    check_fit(model, run.config, encoded, cfg.model)
    batch = BatchSize(cfg.batch_size, cfg.max_batch_size)
    pad = pad_token_id(tokenizer)

    # 1. correctness filter of the P^det of the relations asked for (negatives are not
    # validated, as in the paper); the pass goes over the whole pool, whose prefill sums every
    # neuron's prompt means, in the same batches whatever is asked or cached
    cache = None
    if cfg.filter and cfg.cache:
        # the folder or hub id transformers loaded (for a GGUF model: its converted folder)
        fingerprint = model_fingerprint(str(model.name_or_path), cfg.revision, str(next(model.parameters()).dtype), device.type)
        cache = AnswerCache(fingerprint, check_name(cfg))
    answers = check_answers(cfg, pool, run.selected, model, tokenizer, shape, encoded, texts_of, batch.run, processes, pad, cache)
    correct, means, timings = answers.correct, answers.means, answers.timings
    minimum = cfg.min_positives_needed
    skipped = {
        r: f"{sum(correct[r])} of {len(pool.docs[r])} P^det prompts answered correctly, fewer than --min-positives {minimum}"
        for r in run.selected if sum(correct[r]) < minimum
    }
    todo = [r for r in run.selected if r not in skipped]
    if not todo:
        detail = "; ".join(f"{r}: {why}" for r, why in skipped.items())
        raise DataError(
            f"no relation has enough positives to identify: {detail}. Lower --min-positives, leave these relations out "
            "(--relations), or use --no-filter to keep every prompt"
        )

    chat = chat_record(tokenizer, cfg.system_instruction) if cfg.apply_chat_template else None
    parameters = _parameters(cfg, shape, batch.value, str(next(model.parameters()).dtype).replace("torch.", ""), device.type, chat)
    pool_hash = pool.hash()
    base_meta = {
        "model": run.model_block,
        "method": cfg.method,
        "parameters": parameters,
        "data_hash": pool_hash,
        "package_version": __version__,
        "command": cfg.command,
    }
    budget = memory_budget(cfg, device)
    env = environment(device)
    kept = {}
    if run.earlier is not None:  # a run with the same parameters wrote this folder: its other relations stay
        run.earlier.check({**run.ours, "parameters": parameters})
        kept = run.earlier.kept(todo)
        run.earlier.check_means(kept, means, env)
    results: list[RelationResult] = kept_results(run.folder, kept)
    stale = run.folder.run_files() if cfg.force and processes.is_main else []  # replaced when the first set is written

    def summarize() -> dict[str, Any]:
        return {**build_summary(results, pool, run.model_block, parameters, cfg.command, shape), "environment": env, "skipped": skipped}

    summary = summarize()

    lape_run = None
    if cfg.method == "lape":  # one counting pass over every relation of the pool (all enter the entropy)
        start = time.perf_counter()
        lape_run = batch.run(lambda bs: LapeRun.count(model, encoded, shape, batch_size=bs, pad_id=pad, processes=processes,
                                                      desc="active counts", progress=cfg.progress))
        timings["lape_counts"] = time.perf_counter() - start

    # 2.-4. per relation: positives/negatives, statistics pass, AP, top-k
    for relation in todo:
        k = cfg.k
        if lape_run is not None:  # no positives and no statistics pass; Tang's set size caps k
            ap, tang = lape_run.relation_scores(shape, relation)
            if tang == 0:
                skipped[relation] = "LAPE assigns it no neuron"
                continue
            k, positives, negatives = min(k, tang), [], []
            result = RelationResult(relation, len(pool.docs[relation]), sum(correct[relation]), 0, 0)
            results.append(result)
        else:
            positives, negatives = choose_prompts(pool, correct, relation, cap=cfg.cap, negative_ratio=cfg.negative_ratio, seed=cfg.seed)
            result = RelationResult(relation, len(pool.docs[relation]), sum(correct[relation]), len(positives), len(negatives))
            results.append(result)
            ap = _two_class(cfg, model, shape, encoded, positives, negatives, relation, result, batch, pad, processes, device, budget)
        if not processes.is_main:  # the other processes only helped with the passes
            continue
        data_block = {
            "source": pool.source,
            "relations": pool.relations,
            "pool_hash": pool_hash,
            "relation_hash": docs_hash(pool.docs[relation]),
            "selection_hash": selection_hash(positives, negatives, pool),
            "det_prompts": result.det_prompts,
            "correct": result.correct,
            "positives": result.positives,
            "negatives": result.negatives,
            "means_over": run.ours["means_over"],
        }
        meta = {**base_meta, "relation": relation, "data": data_block}
        scores = Scores(shape, ap.to(torch.float32), means, {**meta, "kind": "scores"})
        neuron_set = scores.to_neuron_set(k, cfg.select, {**meta, "k": k, "select": cfg.select})
        result.neuron_set = neuron_set
        result.scores_path, result.set_path = run.folder.scores_path(relation), run.folder.set_path(relation)
        summary = summarize()
        with StagedFiles() as staged:  # the relation's scores, set and summary appear together
            save_scores(scores, result.scores_path, staged)
            neuron_set.save(result.set_path, staged)
            staged.write_text(run.folder.summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
            run.folder.remove(set(stale) - {result.scores_path, result.set_path, run.folder.summary_path})  # --force
            stale = []

    if processes.is_main and cfg.print_table:
        print(format_table(summary, timings, results))
    if processes.is_main and answers.cached and cache is not None:
        print(f"relspec identify: {answers.cached} answers of the correctness check reused from {cache.path} (--no-cache recomputes)",
              file=sys.stderr)
    if processes.is_main and kept:
        print(f"relspec identify: kept {len(kept)} relation(s) that an earlier run with the same parameters wrote to {cfg.out}: "
              f"{', '.join(kept)} (--force replaces them)", file=sys.stderr)
    if processes.is_main and skipped:
        for relation, why in skipped.items():  # where users look: the end of the output, on stderr
            print(f"relspec identify: skipped {relation}: {why}", file=sys.stderr)
    processes.barrier()
    return summary
