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
4. The method's score of every neuron, positives against negatives (AP by default;
   ``identify.methods``), batched on the device; the top-k (ties by (layer, site, index)), or
   with ``select=both`` top ⌈k/2⌉ + bottom ⌊k/2⌋. (``--method lape`` replaces steps 2 and 3
   with one counting pass over every relation's P^det.)

``identify`` makes these four calls in turn: ``_check_correctness``, then per relation
``choose_prompts``, ``_statistics_pass`` and ``two_class_scores`` (``_score_relation``), and
``SetsWriter.write`` writes each relation's files with the run's provenance (``identify.outputs``).

Output: a ``SetsFolder`` (``<out>/<relation>.safetensors``, ``scores/``, ``summary.json``), locked
while the run writes it; a folder holds one run: a run with the same parameters adds its relations
to it, one with others is refused (``SetsFolder.earlier_run``) unless ``force`` replaces it.
Everything that can be checked without the model is checked before it is loaded.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from relspec_lmeval import __version__
from relspec_lmeval.errors import DataError, ModelError, NeuronSetError, OutputError, UnsupportedModelError
from relspec_lmeval.identify.activations import Processes, activation_matrix
from relspec_lmeval.identify.answer_cache import AnswerCache, model_fingerprint
from relspec_lmeval.identify.chat import chat_prompts, chat_record
from relspec_lmeval.identify.config import MAX_NEW_TOKENS, BatchSize, IdentifyConfig, memory_budget
from relspec_lmeval.identify.correctness import Answers, check_answers, check_name
from relspec_lmeval.identify.methods.chunking import two_class_scores
from relspec_lmeval.identify.methods.lape import LapeRun
from relspec_lmeval.identify.methods.registry import METHODS
from relspec_lmeval.identify.outputs import Scored, SetsWriter, means_over, run_parameters
from relspec_lmeval.identify.pool import Pool, choose_prompts, load_pool, parse_relations
from relspec_lmeval.identify.summary import RelationResult, environment, format_table, kept_results
from relspec_lmeval.identify.tokens import encode_prompts, pad_token_id
from relspec_lmeval.modelio.load import load_config, load_model, meta_skeleton
from relspec_lmeval.modelio.sites import site_modules
from relspec_lmeval.sets.folder import EarlierRun, SetsFolder
from relspec_lmeval.sets.shape import ModelShape, model_metadata
from relspec_lmeval.util.resources import refuse_shipped

__all__ = ["check_fit", "check_out_dir", "identify", "identify_sets"]


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
    if shape.is_moe and METHODS[cfg.method].needs == "active-counts":  # LAPE's neurons are a dense MLP's gate_proj channels
        raise UnsupportedModelError(f"--method {cfg.method} counts a dense MLP's gate_proj activations; {shape.model_type!r} is a "
                                    "mixture-of-experts model: use --method ap, auroc or mean-diff")
    if cfg.k > shape.total:
        raise NeuronSetError(f"--k {cfg.k} is larger than the {shape.total} neurons of {cfg.model!r} at {', '.join(shape.sites)}")
    model_block = model_metadata(config, cfg.model, cfg.revision, gguf_file=cfg.gguf_file, sites=shape.sites)
    if shape.has_attention_sites and (skeleton := meta_skeleton(config)) is not None:  # a fused attention: before the load
        site_modules(skeleton, [(layer, site) for layer, site, _, _ in shape.blocks()])
    out = Path(cfg.out)
    check_out_dir(out)
    ours = {"model": model_block, "method": cfg.method, "data_hash": pool.hash(), "package_version": __version__,
            "means_over": means_over(pool), "parameters": run_parameters(cfg, shape, int(cfg.max_batch_size if cfg.batch_size == "auto" else cfg.batch_size))}
    return _Run(cfg, pool, selected, config, shape, model_block, SetsFolder(out), ours)


@dataclass
class _Passes:
    """The loaded model and what every pass over it shares (one argument instead of a dozen)."""

    cfg: IdentifyConfig
    model: Any
    tokenizer: Any
    shape: ModelShape
    encoded: dict[str, list[list[int]]]  # every prompt of the pool as token ids, per relation
    texts_of: dict[str, list[str]]  # the same prompts as strings (chat template applied)
    batch: BatchSize
    pad: int
    processes: Processes
    device: Any
    budget: int = 0  # bytes for the statistics matrix and the scores: measured after step 1 (memory_budget)

    @property
    def dtype(self) -> str:
        return str(next(self.model.parameters()).dtype)


def identify(cfg: IdentifyConfig) -> dict[str, Any]:
    """Run the whole identification; returns the summary (also written to ``<out>/summary.json``).

    Args:
        cfg: the run (``IdentifyConfig``: the flags of ``relspec identify``).

    Returns:
        The summary: ``model``, ``data``, ``parameters``, ``command``, per relation its counts
        and set (``relations``), the sets' ``overlaps``, the ``environment`` and the relations
        ``skipped`` (too few positives) with why.

    Raises:
        UsageError, DataError, ModelError, NeuronSetError: anything wrong with the request
            (before the model loads where it can be known then).
        OutputError: the outputs cannot be written. A relation's set, its scores and the summary
            that lists them appear together or not at all.

    Example (``--no-filter``: every P^det prompt is a positive; skipped in the doctests, the
    passes over relspec-tiny take about 13 s on a CPU; public as ``relspec_lmeval.identify_sets``,
    since ``relspec_lmeval.identify`` is the package):
        >>> import tempfile
        >>> from relspec_lmeval import IdentifyConfig, identify_sets as identify
        >>> out = tempfile.mkdtemp()
        >>> summary = identify(IdentifyConfig(model="relspec-tiny", out=out, data="relation_recall_synthetic_det",  # doctest: +SKIP
        ...                                   relations="person_pro_sport", k=38, filter=False, progress=False))
        >>> summary["relations"]["person_pro_sport"]["neurons"]  # doctest: +SKIP
        38
        >>> len(NeuronSet.load(f"{out}/person_pro_sport.safetensors"))  # doctest: +SKIP
        38
    """
    run = _prepare(cfg)
    processes = Processes()
    with run.folder.lock() if processes.is_main else nullcontext():  # one writer per folder, taken before the model loads
        later = (*_AFTER_LOAD, *(("batch_size",) if cfg.batch_size == "auto" else ()))
        run.earlier = None if cfg.force else run.folder.earlier_run(run.ours, later)
        return _identify(cfg, run, processes)


def _identify(cfg: IdentifyConfig, run: _Run, processes: Processes) -> dict[str, Any]:
    passes = _load(cfg, run, processes)
    answers, cache = _check_correctness(passes, run)  # 1.
    todo, skipped = _enough_positives(cfg, run, answers.correct)
    passes.budget = memory_budget(cfg, passes.device)
    writer = _start_writing(run, passes, answers.means, todo, skipped)
    lape_run = _count_active(passes, answers.timings) if METHODS[cfg.method].needs == "active-counts" else None
    for relation in todo:
        scored = _score_relation(passes, run.pool, answers.correct, relation, lape_run)  # 2.-4.
        if isinstance(scored, str):
            skipped[relation] = scored
        elif processes.is_main:  # the other processes only helped with the passes
            writer.write(scored)
    if processes.is_main:
        _report(cfg, writer, answers, cache)
    processes.barrier()
    return writer.summary


def _load(cfg: IdentifyConfig, run: _Run, processes: Processes) -> _Passes:
    """The model on its device, every scored site found, the pool's prompts as the token ids lm-eval sends."""
    device_name = cfg.device or (str(processes.device) if processes.device else None)
    model, tokenizer = load_model(cfg.model, revision=cfg.revision, dtype=cfg.dtype, device=device_name, device_map=cfg.device_map,
                                  gguf_file=cfg.gguf_file, progress=cfg.progress)
    site_modules(model, [(layer, site) for layer, site, _, _ in run.shape.blocks()])  # its MLPs, and every scored site, before any pass
    if cfg.apply_chat_template:  # the strings lm-eval sends under --apply_chat_template
        texts_of = {r: chat_prompts(docs, tokenizer, cfg.system_instruction) for r, docs in run.pool.docs.items()}
    else:
        texts_of = {r: [d["prompt"] for d in docs] for r, docs in run.pool.docs.items()}
    encoded = {r: encode_prompts(tokenizer, texts) for r, texts in texts_of.items()}
    check_fit(model, run.config, encoded, cfg.model)
    return _Passes(cfg, model, tokenizer, run.shape, encoded, texts_of, BatchSize(cfg.batch_size, cfg.max_batch_size),
                   pad_token_id(tokenizer), processes, model.get_input_embeddings().weight.device)


def _check_correctness(passes: _Passes, run: _Run) -> tuple[Answers, AnswerCache | None]:
    """Step 1: the correctness check of the P^det of the relations asked for (negatives are not
    validated, as in the paper); its pass goes over the whole pool, whose prefill sums every
    neuron's prompt means, in the same batches whatever is asked or cached."""
    cfg, cache = passes.cfg, None
    if cfg.filter and cfg.cache:
        # the folder or hub id transformers loaded (for a GGUF model: its converted folder)
        fingerprint = model_fingerprint(str(passes.model.name_or_path), cfg.revision, passes.dtype, passes.device.type)
        cache = AnswerCache(fingerprint, check_name(cfg))
    answers = check_answers(cfg, run.pool, run.selected, passes.model, passes.tokenizer, passes.shape, passes.encoded, passes.texts_of,
                            passes.batch.run, passes.processes, passes.pad, cache)
    return answers, cache


def _enough_positives(cfg: IdentifyConfig, run: _Run, correct: Mapping[str, list[bool]]) -> tuple[list[str], dict[str, str]]:
    """The relations with at least ``min_positives`` correct prompts, and why each other one is skipped."""
    minimum = cfg.min_positives_needed
    skipped = {
        r: f"{sum(correct[r])} of {len(run.pool.docs[r])} P^det prompts answered correctly, fewer than --min-positives {minimum}"
        for r in run.selected if sum(correct[r]) < minimum
    }
    todo = [r for r in run.selected if r not in skipped]
    if not todo:
        detail = "; ".join(f"{r}: {why}" for r, why in skipped.items())
        raise DataError(
            f"no relation has enough positives to identify: {detail}. Lower --min-positives, leave these relations out "
            "(--relations), or use --no-filter to keep every prompt"
        )
    return todo, skipped


def _count_active(passes: _Passes, timings: dict[str, float]) -> LapeRun:
    """``--method lape``: one counting pass over every relation of the pool (all enter the entropy)."""
    start = time.perf_counter()
    lape_run = passes.batch.run(lambda bs: LapeRun.count(passes.model, passes.encoded, passes.shape, batch_size=bs, pad_id=passes.pad,
                                                         processes=passes.processes, desc="active counts", progress=passes.cfg.progress))
    timings["lape_counts"] = time.perf_counter() - start
    return lape_run


def _score_relation(passes: _Passes, pool: Pool, correct: Mapping[str, list[bool]], relation: str, lape_run: LapeRun | None) -> Scored | str:
    """Steps 2-4 for one relation (positives and negatives, the statistics pass, the scores), or why it is skipped."""
    cfg, counts = passes.cfg, (relation, len(pool.docs[relation]), sum(correct[relation]))
    if lape_run is not None:  # no positives and no statistics pass; Tang's set size caps k
        scores, tang = lape_run.relation_scores(passes.shape, relation)
        if tang == 0:
            return "LAPE assigns it no neuron"
        return Scored(RelationResult(*counts, 0, 0), scores, min(cfg.k, tang))
    positives, negatives = choose_prompts(pool, correct, relation, cap=cfg.cap, negative_ratio=cfg.negative_ratio, seed=cfg.seed)
    result = RelationResult(*counts, len(positives), len(negatives))
    return Scored(result, _two_class(passes, relation, positives, negatives, result), cfg.k, positives, negatives)


def _two_class(passes: _Passes, relation: str, positives: list, negatives: list, result: RelationResult) -> torch.Tensor | None:
    """Steps 3 and 4: the statistics pass over positives + negatives, then the method's score of every neuron (None off the main process)."""
    labels = torch.zeros(len(positives) + len(negatives), dtype=torch.bool)
    labels[: len(positives)] = True
    start = time.perf_counter()
    matrix, on_device_bytes = _statistics_pass(passes, relation, positives + negatives)
    result.seconds["statistics"] = time.perf_counter() - start
    if not passes.processes.is_main:
        return None
    start = time.perf_counter()
    scores = two_class_scores(passes.cfg.method, matrix, labels, device=passes.device, budget_bytes=max(1, passes.budget - on_device_bytes))
    result.seconds["scores"] = time.perf_counter() - start
    return scores


def _statistics_pass(passes: _Passes, relation: str, items: list) -> tuple[torch.Tensor, int]:
    """Every neuron's mean over each prompt's tokens, [prompts, neurons], and the bytes it takes on the device:
    it stays there when it fits half the budget, else it goes to host memory (and the scores take it in chunks)."""
    matrix_bytes = len(items) * passes.shape.total * 4
    on_device = passes.device.type != "cpu" and matrix_bytes <= passes.budget // 2
    matrix = passes.batch.run(
        lambda bs: activation_matrix(
            passes.model, [passes.encoded[r][i] for r, i in items], passes.shape, batch_size=bs, pad_id=passes.pad,
            matrix_device=passes.device if on_device else "cpu", processes=passes.processes, desc=f"statistics {relation}",
            progress=passes.cfg.progress,
        )
    )
    return matrix, matrix_bytes if on_device else 0


def _start_writing(run: _Run, passes: _Passes, means: torch.Tensor, todo: list[str], skipped: dict[str, str]) -> SetsWriter:
    """The run's provenance (with the batch size step 1 ended at), and the relations of an earlier run
    with the same parameters that this run keeps (refused if their parameters or means differ)."""
    cfg = run.cfg
    chat = chat_record(passes.tokenizer, cfg.system_instruction) if cfg.apply_chat_template else None
    parameters = run_parameters(cfg, passes.shape, passes.batch.value, passes.dtype.replace("torch.", ""), passes.device.type, chat)
    meta = {"model": run.model_block, "method": cfg.method, "parameters": parameters, "data_hash": run.pool.hash(),
            "package_version": __version__, "command": cfg.command}
    env, kept = environment(passes.device), {}
    if run.earlier is not None:  # a run with the same parameters wrote this folder: its other relations stay
        run.earlier.check({**run.ours, "parameters": parameters})
        kept = run.earlier.kept(todo)
        run.earlier.check_means(kept, means, env)
    stale = run.folder.run_files() if cfg.force and passes.processes.is_main else []  # replaced when the first set is written
    return SetsWriter(cfg, run.pool, run.shape, run.folder, meta, means, env, skipped, kept_results(run.folder, kept), kept, stale)


def _report(cfg: IdentifyConfig, writer: SetsWriter, answers: Answers, cache: AnswerCache | None) -> None:
    """The table on stdout; reused answers, kept relations and skipped ones on stderr (where users look: the end)."""
    if cfg.print_table:
        print(format_table(writer.summary, answers.timings, writer.results))
    if answers.cached and cache is not None:
        print(f"relspec identify: {answers.cached} answers of the correctness check reused from {cache.path} (--no-cache recomputes)",
              file=sys.stderr)
    if writer.kept:
        print(f"relspec identify: kept {len(writer.kept)} relation(s) that an earlier run with the same parameters wrote to {cfg.out}: "
              f"{', '.join(writer.kept)} (--force replaces them)", file=sys.stderr)
    for relation, why in writer.skipped.items():
        print(f"relspec identify: skipped {relation}: {why}", file=sys.stderr)


# The public name (``relspec_lmeval.identify_sets``): ``relspec_lmeval.identify`` is this package's
# folder, and importing any ``relspec_lmeval.identify.*`` module rebinds that name to it.
identify_sets = identify
