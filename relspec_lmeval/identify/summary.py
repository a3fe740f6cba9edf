"""What one identification run did: per-relation results, ``summary.json`` and the printed table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relspec_lmeval.identify.pool import Pool
from relspec_lmeval.sets.folder import SetsFolder
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.shape import EXPERT_SITES, ModelShape

__all__ = ["RelationResult", "build_summary", "count_per_expert", "environment", "format_table", "kept_results"]


def environment(device: Any) -> dict[str, Any]:
    """What the float32 results depend on beyond the parameters (docs/identification.md,
    Reproducibility): the library versions and the kernels' instruction set or GPU."""
    import torch
    import transformers

    env: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__}
    if device.type == "cpu":
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # AVX2, AVX512, …: ATEN_CPU_CAPABILITY
    elif device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


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


def kept_results(folder: SetsFolder, entries: Mapping[str, Mapping[str, Any]]) -> list[RelationResult]:
    """The relations that an earlier run with the same parameters wrote to ``folder`` and this run
    keeps, as results again: their summary entries and the overlaps come from their files as for
    the relations of this run, so ``summary.json`` describes every set of the folder."""
    return [
        RelationResult(r, e["det_prompts"], e["correct"], e["positives"], e["negatives"], folder.set_path(r), folder.scores_path(r),
                       NeuronSet.load(folder.set_path(r)))
        for r, e in entries.items()
    ]


def count_per_expert(neuron_set: NeuronSet, shape: ModelShape) -> list[list[int]]:
    """A mixture-of-experts set's neurons in each routed expert: one row per layer, one count per expert
    (``experts.gate_proj``, ``up_proj`` and ``down_proj`` together; a shared expert's are not routed).

    Args:
        neuron_set: the set.
        shape: its model's (``shape.is_moe``).

    Returns:
        ``counts[layer][expert]``.

    Example:
        >>> from relspec_lmeval import ModelShape, NeuronSet
        >>> from relspec_lmeval.identify.summary import count_per_expert
        >>> shape = ModelShape(1, 4, 3, num_experts=2, expert_intermediate_size=3, sites=("experts.up_proj", "experts.down_proj"))
        >>> count_per_expert(NeuronSet.from_keys([(0, "experts.up_proj", 4), (0, "experts.down_proj", 1)]), shape)
        [[1, 1]]
    """
    counts = [[0] * int(shape.num_experts or 0) for _ in range(shape.num_layers)]
    for (layer, site), index in neuron_set.neurons.items():
        if site in EXPERT_SITES:
            width = shape.expert_width(site)
            for i in index.tolist():
                counts[layer][i // width] += 1
    return counts


def build_summary(
    results: Sequence[RelationResult], pool: Pool, model_block: Mapping[str, Any], parameters: Mapping[str, Any],
    command: str | None, shape: ModelShape,
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
                count_per_layer=[sum(per_layer.get(layer, {}).values()) for layer in range(shape.num_layers)],
                set_file=r.set_path.name if r.set_path else None,
                scores_file=f"scores/{r.scores_path.name}" if r.scores_path else None,
            )
            if shape.is_moe:  # which experts hold the relation's neurons (docs/identification.md)
                entry["count_per_expert"] = count_per_expert(r.neuron_set, shape)
        relations[r.relation] = entry
    sets = {r.relation: r.neuron_set for r in results if r.neuron_set is not None}
    overlaps = {a: {b: sets[a].overlap(sets[b]) for b in sets} for a in sets}
    return {
        "model": dict(model_block),
        "data": {**pool.source, "relations": pool.relations, "pool_hash": pool.hash()},
        "parameters": dict(parameters),
        "command": command,
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
            f"{e['negatives']:>6} {e.get('neurons', 0):>7}  {peak_text:<11} {t.get('statistics', 0) + t.get('scores', 0):6.1f}s"
        )
    for name, why in (summary.get("skipped") or {}).items():
        lines.append(f"{name:<{width}}  skipped: {why}")
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
