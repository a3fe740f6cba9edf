"""What ``identify`` writes: the parameters every file records, and each relation's files.

A relation's scores file, its set (the top-k cut of the scores) and the ``summary.json`` that
lists it are staged and committed together (``util.files.StagedFiles``), so an interrupted run
leaves a folder whose summary describes every set in it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from relspec_lmeval.data.choice import CHOICE_SEED, DISTRACTORS
from relspec_lmeval.data.relations import docs_hash
from relspec_lmeval.identify.config import MAX_NEW_TOKENS, IdentifyConfig
from relspec_lmeval.identify.methods.registry import METHODS
from relspec_lmeval.identify.pool import Pool, selection_hash
from relspec_lmeval.identify.summary import RelationResult, build_summary
from relspec_lmeval.sets.folder import SetsFolder
from relspec_lmeval.sets.scores import Scores, save_scores
from relspec_lmeval.sets.shape import DEFAULT_SITES, ModelShape
from relspec_lmeval.util.files import StagedFiles

__all__ = ["Scored", "SetsWriter", "means_over", "run_parameters"]


def run_parameters(cfg: IdentifyConfig, shape: ModelShape, batch_size: int, dtype: str | None = None, device: str | None = None,
                   chat: Any = None) -> dict[str, Any]:
    """``parameters`` of the metadata: what the files depend on beyond model and data.

    ``dtype``, ``device`` and ``chat`` (the chat template's record) are known once the model is
    loaded (None before). The entries that only some runs have are left out of the others, so
    that a run's files read as they did before the option existed.

    Example:
        >>> from relspec_lmeval import IdentifyConfig, ModelShape
        >>> from relspec_lmeval.identify.outputs import run_parameters
        >>> shape = ModelShape(num_layers=2, hidden_size=4, intermediate_size=8)
        >>> p = run_parameters(IdentifyConfig(model="m", out="o", k=10, method="lape", filter=False), shape, 32)
        >>> p["filter"], p["min_positives"], p["lape"]["top_rate"], "sites" in p
        ('none', 1, 0.01, False)
    """
    generate = cfg.filter and cfg.correct_by == "generate"
    parameters: dict[str, Any] = {
        "k": cfg.k,
        "select": cfg.select,
        "cap": cfg.cap,
        "negative_ratio": cfg.negative_ratio,
        "seed": cfg.seed,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": device,
        "filter": (f"greedy-{MAX_NEW_TOKENS}" if generate else "choice") if cfg.filter else "none",
        "min_positives": cfg.min_positives_needed,
        "template_set": cfg.template_set,
        "language": cfg.language,
    }
    if shape.sites != DEFAULT_SITES:
        parameters["sites"] = list(shape.sites)
    if cfg.filter and not generate:
        parameters["choice"] = {"seed": CHOICE_SEED, "distractors": DISTRACTORS}
    if cfg.filter and cfg.correct_metric != "acc":
        parameters["correct_metric"] = cfg.correct_metric
    if cfg.apply_chat_template:
        parameters["chat_template"] = chat
    method = METHODS[cfg.method]
    if method.parameters:  # LAPE's rates
        parameters[method.name] = dict(method.parameters)
    return parameters


def means_over(pool: Pool) -> str:
    """What the stored means are over (recorded with every set)."""
    return f"all {len(pool.flat())} P^det prompts of the pool"


@dataclass
class Scored:
    """One relation after identification's steps 2-4: its prompts' counts, its score of every
    neuron (float64 [neurons]; None off the main process), the set size and the positives and
    negatives the scores came from."""

    result: RelationResult
    scores: torch.Tensor | None
    k: int
    positives: Sequence[tuple[str, int]] = ()
    negatives: Sequence[tuple[str, int]] = ()


@dataclass
class SetsWriter:
    """Each relation's scores, set and the summary that lists them, written together (main process).

    ``results`` starts with the relations an earlier run with the same parameters wrote and this
    run keeps (``kept``); ``stale`` (``--force``) are the folder's files, removed when the first
    set is written; ``skipped`` fills while the run goes on.
    """

    cfg: IdentifyConfig
    pool: Pool
    shape: ModelShape
    folder: SetsFolder
    meta: dict[str, Any]  # model, method, parameters, data_hash, package_version, command
    means: torch.Tensor
    environment: dict[str, Any]
    skipped: dict[str, str]
    results: list[RelationResult]
    kept: dict[str, Any] = field(default_factory=dict)
    stale: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.summary = self.summarize()

    def summarize(self) -> dict[str, Any]:
        """``summary.json`` as it stands: the results so far, the environment, the relations skipped."""
        built = build_summary(self.results, self.pool, self.meta["model"], self.meta["parameters"], self.cfg.command, self.shape)
        return {**built, "environment": self.environment, "skipped": self.skipped}

    def write(self, scored: Scored) -> None:
        """The relation's top-k set (step 4's cut), its scores file and the summary, staged and committed together."""
        cfg, pool, result = self.cfg, self.pool, scored.result
        relation = result.relation
        self.results.append(result)
        data_block = {
            "source": pool.source,
            "relations": pool.relations,
            "pool_hash": self.meta["data_hash"],
            "relation_hash": docs_hash(pool.docs[relation]),
            "selection_hash": selection_hash(scored.positives, scored.negatives, pool),
            "det_prompts": result.det_prompts,
            "correct": result.correct,
            "positives": result.positives,
            "negatives": result.negatives,
            "means_over": means_over(pool),
        }
        meta = {**self.meta, "relation": relation, "data": data_block}
        assert scored.scores is not None, "only the main process writes"
        scores = Scores(self.shape, scored.scores.to(torch.float32), self.means, {**meta, "kind": "scores"})
        neuron_set = scores.to_neuron_set(scored.k, cfg.select, {**meta, "k": scored.k, "select": cfg.select})
        result.neuron_set = neuron_set
        result.scores_path, result.set_path = self.folder.scores_path(relation), self.folder.set_path(relation)
        self.summary = self.summarize()
        with StagedFiles() as staged:  # the relation's scores, set and summary appear together
            save_scores(scores, result.scores_path, staged)
            neuron_set.save(result.set_path, staged)
            staged.write_text(self.folder.summary_path, json.dumps(self.summary, indent=2, sort_keys=True) + "\n")
            self.folder.remove(set(self.stale) - {result.scores_path, result.set_path, self.folder.summary_path})  # --force
            self.stale = []
