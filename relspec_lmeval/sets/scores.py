"""Every neuron's score for one relation: the scores file, and cutting a set from it.

Selection works on flat indices (``ModelShape``): ties go to the lower (layer, site, index).

The scores file (``<out>/scores/<relation>.safetensors``, see docs/identification.md) holds
every neuron's AP and mean, per (layer, site): ``layers.{L}.{site}.ap`` and
``layers.{L}.{site}.means`` (float32, one value per channel), and a single safetensors
metadata entry ``relspec`` = JSON ``{"format": "relspec-neuron-scores", "format_version":
"1", "metadata": {...}}``. Plain safetensors, never pickle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.sets.fileformat import SCORES_FORMAT, SCORES_FORMAT_VERSION, read_relspec_file, site_tensors, write_relspec_file
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.shape import SELECT_MODES, ModelShape
from relspec_lmeval.util.files import StagedFiles

__all__ = ["SELECT_MODES", "Scores", "load_scores", "neuron_set_from_scores", "save_scores", "select_flat"]


# ---------------------------------------------------------------------------- selection


def select_flat(scores: torch.Tensor, k: int, select: str = "top", skip: int = 0) -> torch.Tensor:
    """Flat indices (sorted ascending) of the chosen neurons.

    ``top``: the k highest scores (after skipping the ``skip`` highest); ``both``: the
    ⌈k/2⌉ highest and the ⌊k/2⌋ lowest of the rest. Ties go to the lower flat index, i.e.
    (layer, site, index) order.
    """
    scores = scores.detach().cpu().flatten()
    total = scores.numel()
    if select not in SELECT_MODES:
        raise NeuronSetError(f"unknown selection {select!r}; choose one of {', '.join(SELECT_MODES)}")
    if k < 1:
        raise NeuronSetError(f"k must be at least 1, got {k}")
    if skip < 0:
        raise NeuronSetError(f"skip must be ≥ 0, got {skip}")
    if skip and select != "top":
        raise NeuronSetError("skipping ranks works with select=top only")
    if k + skip > total:
        raise NeuronSetError(f"k={k}{f' + skip={skip}' if skip else ''} is larger than the model's {total} neurons")
    if bool(torch.isnan(scores).any()):
        raise NeuronSetError("scores contain NaN")
    descending = torch.argsort(scores, descending=True, stable=True)
    if select == "top":
        chosen = descending[skip : skip + k]
    else:
        n_top = k - k // 2
        # lowest scores of the remaining neurons; a stable sort of the index-ordered rest
        # gives ties to the lower flat index again
        rest = torch.sort(descending[n_top:]).values
        lowest = rest[torch.argsort(scores[rest], stable=True)]
        chosen = torch.cat([descending[:n_top], lowest[: k // 2]])
    return torch.sort(chosen).values


def neuron_set_from_scores(
    layout: ModelShape,
    ap: torch.Tensor,
    means: torch.Tensor,
    k: int,
    select: str = "top",
    metadata: Mapping[str, Any] | None = None,
    skip: int = 0,
) -> NeuronSet:
    """The top-k (or both) neuron set with its scores and means."""
    ap32 = ap.detach().cpu().to(torch.float32)
    chosen = select_flat(ap32, k, select, skip)
    grouped = layout.group(chosen)
    scores_by_site: dict[tuple[int, str], torch.Tensor] = {}
    means_by_site: dict[tuple[int, str], torch.Tensor] = {}
    means32 = means.detach().cpu().to(torch.float32)
    for key, index in grouped.items():
        flat = index + layout.offset(*key)
        scores_by_site[key] = ap32[flat]
        means_by_site[key] = means32[flat]
    return NeuronSet(grouped, dict(metadata or {}), scores=scores_by_site, means=means_by_site)


# ---------------------------------------------------------------------------- scores file


@dataclass
class Scores:
    """Every neuron's score (the method's: AP by default, read ``metadata["method"]``) and mean, for one model and one relation.

    Args:
        layout: the model's ``ModelShape`` (the flat order of ``ap`` and ``means``).
        ap: float32 [layout.total], higher = more specific to the relation.
        means: float32 [layout.total], each neuron's mean over the pool's prompts.
        metadata: the ``relspec`` provenance.

    Example:
        >>> import torch
        >>> from relspec_lmeval import ModelShape, Scores
        >>> shape = ModelShape(num_layers=1, hidden_size=2, intermediate_size=3)  # 8 neurons
        >>> scores = Scores(shape, torch.arange(8.0), torch.zeros(8))
        >>> top = scores.to_neuron_set(2)  # the two highest: the last two down_proj channels
        >>> sorted(top.keys())
        [(0, 'down_proj', 0), (0, 'down_proj', 1)]
    """

    layout: ModelShape
    ap: torch.Tensor  # float32 [total], flat order
    means: torch.Tensor  # float32 [total], flat order
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        for name in ("ap", "means"):
            value = torch.as_tensor(getattr(self, name)).detach().cpu().to(torch.float32).flatten()
            if value.numel() != self.layout.total:
                raise NeuronSetError(f"scores: {value.numel()} {name} values for {self.layout.total} neurons")
            setattr(self, name, value)

    @property
    def relation(self) -> str | None:
        return self.metadata.get("relation")

    def to_tensors(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for name, flat in (("ap", self.ap), ("means", self.means)):
            for (layer, site), part in self.layout.split(flat).items():
                tensors[f"layers.{layer}.{site}.{name}"] = part.contiguous().clone()
        return tensors

    def to_neuron_set(self, k: int, select: str = "top", metadata: Mapping[str, Any] | None = None, skip: int = 0) -> NeuronSet:
        return neuron_set_from_scores(self.layout, self.ap, self.means, k, select, metadata, skip)


def save_scores(scores: Scores, path: str | os.PathLike, staged: StagedFiles | None = None) -> Path:
    """Write atomically (temp file + rename), or as part of ``staged``; ``OutputError`` on failure."""
    metadata = {**scores.metadata, "model": {**(scores.metadata.get("model") or {}), **scores.layout.metadata()}}
    path = write_relspec_file(scores.to_tensors(), path, SCORES_FORMAT, SCORES_FORMAT_VERSION, metadata, staged)
    scores.metadata = metadata
    scores.path = path
    return path


def load_scores(path: str | os.PathLike) -> Scores:
    """A scores file (``<sets>/scores/<relation>.safetensors``) as ``Scores``.

    Args:
        path: the file.

    Returns:
        ``Scores`` with its ``path`` set.

    Raises ``NeuronSetError`` for a missing file or one that is not a relspec scores file.

    Example:
        >>> from relspec_lmeval import load_scores
        >>> from relspec_lmeval.util.resources import resource_dir
        >>> scores = load_scores(resource_dir("neuron_sets") / "relspec-tiny" / "scores" / "person_father.safetensors")
        >>> scores.relation, scores.ap.shape == scores.means.shape
        ('person_father', True)
        >>> len(scores.to_neuron_set(10))
        10
    """
    path = Path(path)
    tensors, metadata = read_relspec_file(path, SCORES_FORMAT, SCORES_FORMAT_VERSION, "scores")
    layout = ModelShape.from_metadata(metadata.get("model"), str(path))
    parts = site_tensors(path, tensors, ("ap", "means"))
    try:
        return Scores(layout, layout.join(parts["ap"]), layout.join(parts["means"]), metadata, path=path)
    except NeuronSetError as exc:
        raise NeuronSetError(f"{path}: {exc}") from None
