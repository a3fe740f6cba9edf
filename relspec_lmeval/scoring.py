"""Scoring neurons: batched average precision, top-k selection, and the scores file.

Every neuron of a model has a *flat index*: layers in order, and inside a layer
``gate_proj`` (intermediate_size channels), then ``up_proj`` (intermediate_size), then
``down_proj`` (hidden_size). Sorting by flat index is sorting by (layer, site, index), the
documented tie-break of the ranking, so one stable sort does the whole selection.

The scores file (``<out>/scores/<relation>.safetensors``, see docs/identification.md) holds
every neuron's AP and mean, per (layer, site): ``layers.{L}.{site}.ap`` and
``layers.{L}.{site}.means`` (float32, one value per channel), and a single safetensors
metadata entry ``relspec`` = JSON ``{"format": "relspec-neuron-scores", "format_version":
"1", "metadata": {...}}``. Plain safetensors, never pickle.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from relspec_lmeval.neuron_set import (
    SITES,
    ModelShape,
    NeuronSet,
    NeuronSetError,
    read_relspec_file,
    write_relspec_file,
)

SCORES_FORMAT = "relspec-neuron-scores"
SCORES_FORMAT_VERSION = "1"
SELECT_MODES = ("top", "both")
_SCORE_TENSOR = re.compile(r"^layers\.(\d+)\.(gate_proj|up_proj|down_proj)\.(ap|means)$")

# Bytes of working memory per (prompt, neuron) element in ``average_precision``: the sorted
# values, sort order, labels, counts, precision and cumulative maxima together.
AP_BYTES_PER_ELEMENT = 64
CPU_CHUNK_BYTES = 16 << 20


# ---------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class NeuronLayout:
    """Where each (layer, site) lives in the flat neuron vector."""

    num_layers: int
    hidden_size: int
    intermediate_size: int

    @classmethod
    def from_shape(cls, shape: ModelShape) -> NeuronLayout:
        return cls(shape.num_layers, shape.hidden_size, shape.intermediate_size)

    def width(self, site: str) -> int:
        return self.hidden_size if site == "down_proj" else self.intermediate_size

    @property
    def per_layer(self) -> int:
        return 2 * self.intermediate_size + self.hidden_size

    @property
    def total(self) -> int:
        return self.num_layers * self.per_layer

    def offset(self, layer: int, site: str) -> int:
        return layer * self.per_layer + SITES.index(site) * self.intermediate_size

    def sites(self) -> list[tuple[int, str, int, int]]:
        """(layer, site, flat offset, width) for every site, in flat order."""
        return [(layer, site, self.offset(layer, site), self.width(site)) for layer in range(self.num_layers) for site in SITES]

    def split(self, flat: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
        """A flat per-neuron vector → one tensor per (layer, site)."""
        if flat.shape[-1] != self.total:
            raise NeuronSetError(f"expected {self.total} neurons, got {flat.shape[-1]}")
        return {(layer, site): flat[..., off : off + width] for layer, site, off, width in self.sites()}

    def join(self, parts: Mapping[tuple[int, str], torch.Tensor]) -> torch.Tensor:
        """Inverse of ``split``."""
        missing = [(layer, site) for layer, site, _, _ in self.sites() if (layer, site) not in parts]
        if missing:
            raise NeuronSetError(f"missing per-site tensors for {missing[:3]}{' …' if len(missing) > 3 else ''}")
        for layer, site, _, width in self.sites():
            if parts[(layer, site)].shape[-1] != width:
                raise NeuronSetError(f"layer {layer} {site}: {parts[(layer, site)].shape[-1]} values for width {width}")
        return torch.cat([parts[(layer, site)] for layer, site, _, _ in self.sites()], dim=-1)

    def group(self, flat_index: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
        """Flat indices → channel indices per (layer, site) (positions into ``flat_index`` kept in order)."""
        flat_index = flat_index.to(torch.int64).cpu()
        out: dict[tuple[int, str], torch.Tensor] = {}
        for layer, site, off, width in self.sites():
            hit = (flat_index >= off) & (flat_index < off + width)
            if bool(hit.any()):
                out[(layer, site)] = flat_index[hit] - off
        return out

    def metadata(self) -> dict[str, int]:
        return {"num_layers": self.num_layers, "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size}


# ---------------------------------------------------------------------------- AP


def average_precision(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AP of every column of ``values`` [prompts, neurons] as a score for ``labels`` [prompts].

    Same definition as ``sklearn.metrics.average_precision_score``, ties included: one
    threshold per distinct value, AP = Σ over thresholds of (recall step) × (precision at
    that threshold), which is the mean over positive prompts p of
    #{positives ≥ v_p} / #{prompts ≥ v_p}. Computed for all columns at once on ``values``'
    device, with exact integer counts and float64 precision. Returns float64 [neurons].
    """
    if values.dim() != 2:
        raise ValueError(f"values must be [prompts, neurons], got shape {tuple(values.shape)}")
    n, cols = values.shape
    labels = labels.to(device=values.device, dtype=torch.bool).flatten()
    if labels.numel() != n:
        raise ValueError(f"{labels.numel()} labels for {n} prompts")
    positives = int(labels.sum())
    if positives == 0:
        raise ValueError("average precision needs at least one positive prompt")
    if cols == 0:
        return torch.zeros(0, dtype=torch.float64, device=values.device)
    if values.dtype == torch.float64:
        return _average_precision_float64(values, labels, positives)
    return _average_precision_packed(values, labels, positives)


def _sort_rows(keys: torch.Tensor) -> torch.Tensor:
    """Ascending sort of each row's int64 keys (values only): numpy's SIMD sort on the CPU."""
    if keys.device.type == "cpu":
        import numpy as np

        return torch.from_numpy(np.sort(keys.numpy(), axis=1))
    return torch.sort(keys, dim=1).values


def _average_precision_packed(values: torch.Tensor, labels: torch.Tensor, positives: int) -> torch.Tensor:
    # One sort per neuron of int64 keys 2 * (order-preserving int of the float32 value) + label:
    # the labels travel with the values, no index gather. (+0.0 turns -0.0 into 0.0: they tie.)
    n = values.shape[0]
    x = (values.to(torch.float32) + 0.0).t().contiguous()  # [neurons, prompts]
    bits = x.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # int32 order == float order
    del x, bits
    keys = _sort_rows(ordered.to(torch.int64).mul_(2).add_(labels.to(torch.int64)))
    del ordered
    is_positive = (keys & 1).to(torch.int32)
    value = keys >> 1
    del keys
    ranks = torch.arange(n, device=value.device)
    # positives strictly before each position (ascending order) = positives with a smaller value, without ties
    before = torch.cumsum(is_positive, dim=1, dtype=torch.int32).sub_(is_positive)
    tied = value[:, 1:] == value[:, :-1]
    if bool(tied.any()):
        starts = torch.ones_like(value, dtype=torch.bool)
        starts[:, 1:] = ~tied
        first = torch.cummax(torch.where(starts, ranks, 0), dim=1).values  # start of each tie group
        before = torch.gather(before, 1, first)
        at_or_above = (n - first).to(torch.float64)
    else:
        at_or_above = (n - ranks).to(torch.float64)  # broadcast over neurons
    del value, tied
    contribution = ((positives - before) * is_positive).to(torch.float64).div_(at_or_above)
    # a running sum along the prompts: the same additions whatever the number of neurons, so
    # chunking (memory budget) never changes a bit of the result
    return torch.cumsum(contribution, dim=1)[:, -1] / positives


def _average_precision_float64(values: torch.Tensor, labels: torch.Tensor, positives: int) -> torch.Tensor:
    # float64 values cannot carry a label bit: sort with indices and gather the labels.
    n = values.shape[0]
    sorted_values, order = torch.sort(values, dim=0, descending=True)
    hits = labels.to(torch.int32)[order]  # [n, cols]: 1 where the prompt at that rank is positive
    del order
    true_pos = torch.cumsum(hits, dim=0, dtype=torch.int32)
    # A threshold ends where the next value differs (or at the last rank): tied prompts enter together.
    is_end = torch.ones_like(sorted_values, dtype=torch.bool)
    is_end[:-1] = sorted_values[:-1] != sorted_values[1:]
    del sorted_values
    ranks = torch.arange(n, device=values.device).unsqueeze(1)
    # rank of the end of each position's tie group: reverse running minimum of end ranks
    end = torch.where(is_end, ranks, n).flip(0).cummin(dim=0).values.flip(0)
    precision_at_end = torch.gather(true_pos, 0, end).to(torch.float64) / (end + 1).to(torch.float64)
    return torch.cumsum(precision_at_end * hits, dim=0)[-1] / positives


def ap_chunk_size(num_prompts: int, budget_bytes: int) -> int:
    """Neurons per AP chunk so the working memory stays under ``budget_bytes``."""
    return max(1, int(budget_bytes) // max(1, num_prompts * AP_BYTES_PER_ELEMENT))


def average_precision_chunked(
    values: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    budget_bytes: int = 1 << 30,
    progress: Any = None,
) -> torch.Tensor:
    """``average_precision`` over column chunks (moved to ``device`` one at a time); float64 on CPU."""
    device = torch.device(device) if device is not None else values.device
    n, cols = values.shape
    if device.type == "cpu":  # cache-sized chunks are about twice as fast on a CPU
        budget_bytes = min(budget_bytes, CPU_CHUNK_BYTES)
    chunk = ap_chunk_size(n, budget_bytes)
    labels = labels.to(device)
    out = torch.empty(cols, dtype=torch.float64)
    for start in range(0, cols, chunk):
        stop = min(cols, start + chunk)
        block = values[:, start:stop].to(device, non_blocking=True)
        out[start:stop] = average_precision(block, labels).cpu()
        if progress is not None:
            progress.update(stop - start)
    return out


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
    layout: NeuronLayout,
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
    """AP and mean of every neuron of one model for one relation."""

    layout: NeuronLayout
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


def save_scores(scores: Scores, path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename): an interrupted save leaves no partial file."""
    metadata = {**scores.metadata, "model": {**(scores.metadata.get("model") or {}), **scores.layout.metadata()}}
    path = write_relspec_file(scores.to_tensors(), path, SCORES_FORMAT, SCORES_FORMAT_VERSION, metadata)
    scores.metadata = metadata
    scores.path = path
    return path


def load_scores(path: str | os.PathLike) -> Scores:
    path = Path(path)
    tensors, metadata = read_relspec_file(path, SCORES_FORMAT, SCORES_FORMAT_VERSION, "scores")
    model = metadata.get("model") or {}
    try:
        layout = NeuronLayout(int(model["num_layers"]), int(model["hidden_size"]), int(model["intermediate_size"]))
    except (KeyError, TypeError, ValueError):
        raise NeuronSetError(f"{path}: metadata lacks the model shape (num_layers, hidden_size, intermediate_size)") from None
    parts: dict[str, dict[tuple[int, str], torch.Tensor]] = {"ap": {}, "means": {}}
    for name, tensor in tensors.items():
        match = _SCORE_TENSOR.match(name)
        if not match:
            raise NeuronSetError(f"{path}: unexpected tensor {name!r} (expected layers.<L>.<site>.ap|means)")
        parts[match.group(3)][(int(match.group(1)), match.group(2))] = tensor
    try:
        return Scores(layout, layout.join(parts["ap"]), layout.join(parts["means"]), metadata, path=path)
    except NeuronSetError as exc:
        raise NeuronSetError(f"{path}: {exc}") from None
