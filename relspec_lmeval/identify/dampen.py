"""``relspec dampen``: AurA's per-neuron factors, stored in a neuron-set file for ``mode=dampen``.

AurA (Suau et al., "Whispering Experts: Neural Interventions for Toxicity Mitigation in
Language Models", ICML 2024) multiplies each neuron's output by 1 − α·(2·AUROC − 1) where its
AUROC is above 0.5 (``dampen_factors``), so the factors need AUROC scores:
sets and scores files made by ``relspec identify --method auroc`` (or cut from such scores
by ``relspec select``). Two inputs:

* a neuron-set file: the same neurons, each with its factor (1 where AUROC ≤ threshold);
* a scores file: AurA's own intervention, every neuron with AUROC > threshold, no k.

No model run; every input is checked before anything is written, shipped files are never
written (outputs then go to the working directory).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from relspec_lmeval import __version__
from relspec_lmeval.errors import NeuronSetError, UsageError
from relspec_lmeval.identify.controls import default_folder
from relspec_lmeval.sets.fileformat import FORMAT_NAME, SCORES_FORMAT, read_relspec_header
from relspec_lmeval.sets.folder import SetsFolder, dampen_name, locked
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.resolve import resolve_set_path
from relspec_lmeval.sets.scores import Scores, load_scores
from relspec_lmeval.util.files import StagedFiles
from relspec_lmeval.util.hashing import file_sha256

__all__ = ["CITATION", "FORMULA", "dampen_factors", "dampen_sets", "dampened_set", "dampened_scores"]

FORMULA = "factor = 1 - alpha * (2 * AUROC - 1) where AUROC > threshold, else 1"
CITATION = "Suau et al., Whispering Experts: Neural Interventions for Toxicity Mitigation in Language Models, ICML 2024 (AurA)"


def dampen_factors(auroc: torch.Tensor, alpha: float = 1.0, threshold: float = 0.5) -> torch.Tensor:
    """AurA's per-neuron output multipliers from AUROC scores (float64, same shape).

    factor = 1 − α·Gini = 1 − α·(2·AUROC − 1) where AUROC > ``threshold``, else 1. With
    α = 1 and threshold 0.5 this is AurA exactly (apple/ml-aura ``scripts/learn_aura.py``:
    ``alpha = 1 - 2 * (auroc - 0.5)`` for ``auroc > 0.5``): a neuron that separates perfectly
    (AUROC 1) is silenced, one at chance is left alone. AurA has no free α; α ∈ [0, 1] scales
    the dampening down (ours).

    Example:
        >>> import torch
        >>> from relspec_lmeval.identify.dampen import dampen_factors
        >>> dampen_factors(torch.tensor([1.0, 0.75, 0.5, 0.2]), alpha=1.0).tolist()
        [0.0, 0.5, 1.0, 1.0]
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise UsageError(f"dampening alpha must be in [0, 1], got {alpha}")
    scores = torch.as_tensor(auroc).to(torch.float64)
    if bool(torch.isnan(scores).any()) or bool(((scores < 0) | (scores > 1)).any()):
        raise UsageError("AUROC scores must lie in [0, 1] (no NaN)")
    gini = 2.0 * scores - 1.0
    return torch.where(scores > threshold, 1.0 - float(alpha) * gini, torch.ones_like(scores))


def _needs_auroc(metadata: dict[str, Any], path: Path | str) -> None:
    method = metadata.get("method")
    if method != "auroc":
        raise NeuronSetError(
            f"{path} was scored by method {method!r}, but AurA's factors 1 - alpha*(2*AUROC - 1) need AUROC scores; "
            "make the set with `relspec identify --method auroc`"
        )


def _factors(auroc: torch.Tensor, alpha: float, threshold: float, path: Path | str) -> torch.Tensor:
    try:
        return dampen_factors(auroc, alpha, threshold).to(torch.float32)
    except UsageError as exc:
        raise NeuronSetError(f"{path}: {exc}") from None


def _record(metadata: dict[str, Any], path: Path | None, alpha: float, threshold: float, command: str | None) -> dict[str, Any]:
    meta = {key: value for key, value in metadata.items() if key != "kind"}
    source = {"path": str(path), "sha256": file_sha256(path)} if path is not None and path.is_file() else None
    meta["dampen"] = {"alpha": alpha, "threshold": threshold, "formula": FORMULA, "citation": CITATION, "from": source}
    meta.update(package_version=__version__, command=command)
    return meta


def dampened_set(base: NeuronSet, alpha: float = 1.0, threshold: float = 0.5, command: str | None = None) -> NeuronSet:
    """``base``'s neurons with AurA's factors from its stored AUROC scores (``NeuronSetError`` otherwise)."""
    label = base.path or "this set"
    _needs_auroc(base.metadata, label)
    if not len(base):
        raise NeuronSetError(f"{label} holds no neurons; there is nothing to dampen")
    if set(base.scores) != set(base.neurons):
        raise NeuronSetError(f"{label} stores no AUROC scores for its neurons (a set written by `relspec identify --method auroc` has them)")
    factors = {key: _factors(base.scores[key], alpha, threshold, label) for key in base.neurons}
    meta = _record(base.metadata, base.path, alpha, threshold, command)
    return NeuronSet(dict(base.neurons), meta, scores=dict(base.scores), means=dict(base.means), factors=factors)


def dampened_scores(scores: Scores, alpha: float = 1.0, threshold: float = 0.5, command: str | None = None) -> NeuronSet:
    """AurA's intervention from a scores file: every neuron with AUROC > ``threshold`` and its factor."""
    label = scores.path or "these scores"
    _needs_auroc(scores.metadata, label)
    auroc = scores.ap
    factors = _factors(auroc, alpha, threshold, label)
    chosen = torch.nonzero(auroc.to(torch.float64) > threshold).flatten()  # as dampen_factors compares
    if not chosen.numel():
        raise NeuronSetError(f"no neuron in {label} has AUROC > {threshold:g}; there is nothing to dampen")
    grouped = scores.layout.group(chosen)
    extra: dict[str, dict] = {"scores": {}, "means": {}, "factors": {}}
    for key, index in grouped.items():
        flat = index + scores.layout.offset(*key)
        extra["scores"][key], extra["means"][key], extra["factors"][key] = auroc[flat], scores.means[flat], factors[flat]
    meta = _record(scores.metadata, scores.path, alpha, threshold, command)
    meta.update(k=int(chosen.numel()), select=f"auroc>{threshold:g}")
    return NeuronSet(grouped, meta, **extra)


def _kind(path: Path) -> str:
    block, _ = read_relspec_header(path, "neuron-set or scores")
    found = block.get("format")
    if found not in (FORMAT_NAME, SCORES_FORMAT):
        raise NeuronSetError(f"{path} is a {found!r} file, neither a relspec neuron set nor a scores file")
    return "scores" if found == SCORES_FORMAT else "set"


def dampen_sets(
    inputs: Sequence[str | os.PathLike],
    *,
    alpha: float = 1.0,
    threshold: float = 0.5,
    out: str | os.PathLike | None = None,
    command: str | None = None,
) -> list[tuple[Path, NeuronSet]]:
    """Write a dampened set for each input (a set file, a shipped set name, or a scores file).

    A set ``<dir>/<name>.safetensors`` goes to ``<dir>/dampen[-a<A>][-t<T>]/<name>.safetensors``,
    a scores file ``<root>/scores/<relation>.safetensors`` to ``<root>/dampen-all[…]/<relation>.safetensors``;
    with ``out``, to ``<out>/<name>.safetensors``. Raises ``NeuronSetError`` for a set or scores
    not made by ``--method auroc`` (or without scores), ``UsageError`` for α outside [0, 1] or
    two inputs with one output, ``OutputError`` for a shipped ``out``.
    """
    alpha, threshold = float(alpha), float(threshold)
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], got {alpha:g}")
    if not 0.5 <= threshold < 1.0:  # below 0.5 the formula would amplify (factors above 1)
        raise UsageError(f"--threshold must be in [0.5, 1), got {threshold:g}")
    plans: list[tuple[Path, NeuronSet]] = []
    roots = set()
    for name in inputs:  # every input is checked before anything is written
        path = resolve_set_path(str(name))
        if _kind(path) == "scores":
            made = dampened_scores(load_scores(path), alpha, threshold, command)
            beside, sub = SetsFolder.of_scores_file(path).root, dampen_name(alpha, threshold, every_neuron=True)
        else:
            made = dampened_set(NeuronSet.load(path), alpha, threshold, command)
            beside, sub = path.resolve().parent, dampen_name(alpha, threshold)
        folder, _ = default_folder(beside, out)
        roots.add(folder.root)
        target = (folder.root if out is not None else folder.root / sub) / path.name
        if any(target == planned for planned, _ in plans):
            raise UsageError(f"two inputs would both be written to {target}; give them separate --out folders")
        plans.append((target, made))
    with locked(roots), StagedFiles() as staged:  # all outputs appear together or none, one writer per folder
        for target, made in plans:
            made.save(target, staged)
    return plans
