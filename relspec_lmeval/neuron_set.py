"""The neuron-set file: which FFN neurons to switch off, and where they came from.

A neuron is one output channel of ``gate_proj`` (before the activation), ``up_proj`` or
``down_proj`` in one layer's MLP; sites are named explicitly because tools disagree on what
a neuron is. One set per safetensors file (never pickle):

* ``layers.{L}.{site}.indices``: int64, sorted, unique channel indices;
* ``layers.{L}.{site}.scores`` / ``.means`` (optional, float32, aligned with the indices):
  the identification score and the neuron's mean output (``mode=mean`` needs the means);
* one safetensors metadata entry ``relspec``: JSON ``{"format": "relspec-neuron-set",
  "format_version": "1", "metadata": {...}}``, the metadata being an open bag (model, method,
  parameters, relation, data hash, k, package version, command). One entry, because
  safetensors writes several in no fixed order and files must be byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SITES = ("gate_proj", "up_proj", "down_proj")
FORMAT_NAME = "relspec-neuron-set"
FORMAT_VERSION = "1"
HEADER_KEY = "relspec"
SUFFIX = ".safetensors"
_TENSOR_NAME = re.compile(r"^layers\.(\d+)\.(gate_proj|up_proj|down_proj)\.(indices|scores|means)$")

Site = tuple[int, str]  # (layer, site name)


class NeuronSetError(ValueError):
    """A neuron-set file or argument that cannot be used; the message names the problem."""


@dataclass(frozen=True)
class ModelShape:
    """The widths a set must fit: what ``validate`` checks against."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    model_type: str = "llama"

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        config = getattr(config, "get_text_config", lambda: config)()
        return cls(
            num_layers=int(config.num_hidden_layers),
            hidden_size=int(config.hidden_size),
            intermediate_size=int(config.intermediate_size),
            model_type=str(getattr(config, "model_type", "unknown")),
        )

    def width(self, site: str) -> int:
        """Number of neurons at one site of one layer."""
        return self.hidden_size if site == "down_proj" else self.intermediate_size

    @property
    def total(self) -> int:
        return self.num_layers * (2 * self.intermediate_size + self.hidden_size)


def config_fingerprint(config: Any) -> str:
    """Short hash of a model config: identifies an architecture when no revision is known."""
    text = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else json.dumps(config)
    data = json.loads(text)
    # Keys that name the file rather than the network would make equal models look different.
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def model_metadata(config: Any, name: str, revision: str | None = None) -> dict[str, Any]:
    """The ``model`` block of a set's metadata for a transformers config."""
    shape = ModelShape.from_config(config)
    return {
        "name": name,
        "revision": revision,
        "config_hash": config_fingerprint(config),
        "architecture": (getattr(config, "architectures", None) or [None])[0],
        "model_type": shape.model_type,
        "num_layers": shape.num_layers,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
    }


def _as_index_tensor(values: Any) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise NeuronSetError(f"neuron indices must be integers, got {tensor.dtype}")
    return tensor.to(torch.int64).flatten()


@dataclass
class NeuronSet:
    """Indices per (layer, site), optional aligned scores/means, and a metadata bag."""

    neurons: dict[Site, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    scores: dict[Site, torch.Tensor] = field(default_factory=dict)
    means: dict[Site, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        cleaned: dict[Site, torch.Tensor] = {}
        for (layer, site), values in self.neurons.items():
            if site not in SITES:
                raise NeuronSetError(f"unknown site {site!r}; sites are {', '.join(SITES)}")
            if int(layer) < 0:
                raise NeuronSetError(f"negative layer {layer}")
            idx = _as_index_tensor(values)
            if idx.numel() and idx.min() < 0:
                raise NeuronSetError(f"layer {layer} {site}: negative neuron index {int(idx.min())}")
            if idx.unique().numel() != idx.numel():
                raise NeuronSetError(f"layer {layer} {site}: duplicate neuron indices")
            if idx.numel():
                cleaned[(int(layer), site)] = idx
        # Keep every per-site tensor sorted by index so files are canonical.
        for key, idx in cleaned.items():
            order = torch.argsort(idx)
            cleaned[key] = idx[order]
            for extra_name in ("scores", "means"):
                extra = getattr(self, extra_name)
                if key in extra:
                    values = torch.as_tensor(extra[key], dtype=torch.float32).flatten()
                    if values.numel() != idx.numel():
                        raise NeuronSetError(
                            f"layer {key[0]} {key[1]}: {values.numel()} {extra_name} for {idx.numel()} neurons"
                        )
                    extra[key] = values[order]
        self.neurons = dict(sorted(cleaned.items(), key=lambda kv: (kv[0][0], SITES.index(kv[0][1]))))
        for extra_name in ("scores", "means"):
            extra = getattr(self, extra_name)
            stray = set(extra) - set(self.neurons)
            if stray:
                raise NeuronSetError(f"{extra_name} given for sites without neurons: {sorted(stray)}")

    # ---- inspection -------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(int(idx.numel()) for idx in self.neurons.values())

    @property
    def has_means(self) -> bool:
        return bool(self.neurons) and set(self.means) == set(self.neurons)

    def keys(self) -> set[tuple[int, str, int]]:
        """Every neuron as a (layer, site, index) triple."""
        return {(layer, site, int(i)) for (layer, site), idx in self.neurons.items() for i in idx.tolist()}

    def count_per_layer(self) -> dict[int, dict[str, int]]:
        counts: dict[int, dict[str, int]] = {}
        for (layer, site), idx in self.neurons.items():
            counts.setdefault(layer, dict.fromkeys(SITES, 0))[site] = int(idx.numel())
        return dict(sorted(counts.items()))

    def count_per_site(self) -> dict[str, int]:
        totals = dict.fromkeys(SITES, 0)
        for (_, site), idx in self.neurons.items():
            totals[site] += int(idx.numel())
        return totals

    def validate(self, shape: ModelShape) -> None:
        """Fail loudly when the set was made for another architecture or width."""
        recorded = self.metadata.get("model") or {}
        for key in ("num_layers", "hidden_size", "intermediate_size"):
            want = getattr(shape, key)
            have = recorded.get(key)
            if have is not None and int(have) != want:
                raise NeuronSetError(
                    f"{self._label()} was made for a model with {key}={have} "
                    f"({recorded.get('name', 'unknown model')}), but this model has {key}={want}"
                )
        for (layer, site), idx in self.neurons.items():
            if layer >= shape.num_layers:
                raise NeuronSetError(f"{self._label()}: layer {layer} out of range (model has {shape.num_layers} layers)")
            width = shape.width(site)
            if int(idx.max()) >= width:
                raise NeuronSetError(
                    f"{self._label()}: layer {layer} {site} index {int(idx.max())} out of range (width {width})"
                )

    def _label(self) -> str:
        return f"neuron set {self.path}" if self.path else "neuron set"

    # ---- algebra ----------------------------------------------------------------------
    @classmethod
    def from_keys(
        cls,
        keys: Iterable[tuple[int, str, int]],
        metadata: Mapping[str, Any] | None = None,
        means: Mapping[tuple[int, str, int], float] | None = None,
    ) -> NeuronSet:
        grouped: dict[Site, list[int]] = {}
        for layer, site, index in keys:
            grouped.setdefault((int(layer), site), []).append(int(index))
        per_site_means = (
            {k: torch.tensor([means[(k[0], k[1], i)] for i in v]) for k, v in grouped.items()} if means is not None else {}
        )
        return cls({k: torch.tensor(v, dtype=torch.int64) for k, v in grouped.items()}, dict(metadata or {}), means=per_site_means)

    def union(self, *others: NeuronSet) -> NeuronSet:
        """All neurons of all sets; means are kept when every part has them."""
        parts = (self, *others)
        means = _merged_means(parts)
        keys = self.keys().union(*(o.keys() for o in others))
        return NeuronSet.from_keys(keys, {"operation": "union", "parts": [s._summary() for s in parts]}, means)

    def intersection(self, other: NeuronSet) -> NeuronSet:
        return NeuronSet.from_keys(
            self.keys() & other.keys(), {"operation": "intersection", "parts": [self._summary(), other._summary()]}
        )

    def overlap(self, other: NeuronSet) -> int:
        return len(self.keys() & other.keys())

    def jaccard(self, other: NeuronSet) -> float:
        union = len(self.keys() | other.keys())
        return self.overlap(other) / union if union else 0.0

    def _summary(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "relation": self.metadata.get("relation"), "count": len(self)}

    # ---- files ------------------------------------------------------------------------
    def to_tensors(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for (layer, site), idx in self.neurons.items():
            tensors[f"layers.{layer}.{site}.indices"] = idx.contiguous()
            for extra_name in ("scores", "means"):
                extra = getattr(self, extra_name)
                if (layer, site) in extra:
                    tensors[f"layers.{layer}.{site}.{extra_name}"] = extra[(layer, site)].contiguous()
        return tensors

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: an interrupted save leaves no partial file behind."""
        self.path = write_relspec_file(self.to_tensors(), path, FORMAT_NAME, FORMAT_VERSION, self.metadata)
        return self.path

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronSet:
        path = Path(path)
        tensors, metadata = read_relspec_file(path, FORMAT_NAME, FORMAT_VERSION, "neuron-set")
        parts: dict[str, dict[Site, torch.Tensor]] = {"indices": {}, "scores": {}, "means": {}}
        for name, tensor in tensors.items():
            match = _TENSOR_NAME.match(name)
            if not match:
                raise NeuronSetError(f"{path}: unexpected tensor {name!r} (expected layers.<L>.<site>.indices|scores|means)")
            parts[match.group(3)][(int(match.group(1)), match.group(2))] = tensor
        try:
            result = cls(parts["indices"], metadata, parts["scores"], parts["means"], path=path)
        except NeuronSetError as exc:
            raise NeuronSetError(f"{path}: {exc}") from None
        return result

    def sha256(self) -> str:
        """Hash of the file this set was loaded from or saved to (else of its canonical tensors)."""
        if self.path is not None and self.path.is_file():
            return file_sha256(self.path)
        digest = hashlib.sha256()
        for name, tensor in sorted(self.to_tensors().items()):
            digest.update(name.encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        """What ``relspec info`` prints and the results JSON records."""
        return {
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256(),
            "count": len(self),
            "count_per_site": self.count_per_site(),
            "count_per_layer": {str(k): v for k, v in self.count_per_layer().items()},
            "has_scores": bool(self.scores),
            "has_means": self.has_means,
            "metadata": self.metadata,
        }


def _merged_means(sets: Iterable[NeuronSet]) -> dict[tuple[int, str, int], float] | None:
    merged: dict[tuple[int, str, int], float] = {}
    for s in sets:
        if not s.has_means:
            return None
        for key, idx in s.neurons.items():
            for i, m in zip(idx.tolist(), s.means[key].tolist()):
                merged[(key[0], key[1], i)] = m
    return merged


def write_relspec_file(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, fmt: str, version: str, metadata: Mapping[str, Any]
) -> Path:
    """Save tensors plus the one ``relspec`` metadata entry, atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != SUFFIX:
        raise NeuronSetError(f"relspec files end in {SUFFIX}: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {HEADER_KEY: json.dumps({"format": fmt, "format_version": version, "metadata": metadata}, sort_keys=True)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(dict(tensors), tmp, metadata=header)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_relspec_file(path: Path, fmt: str, version: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a relspec safetensors file of format ``fmt``; never unpickles."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise NeuronSetError(f"{what} file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise NeuronSetError(f"{path} is not a readable safetensors {what} file ({exc})") from None
    try:
        block = json.loads(header[HEADER_KEY])
    except KeyError:
        raise NeuronSetError(f"{path} is a safetensors file but not a relspec {what} file (no {HEADER_KEY!r} metadata)") from None
    except json.JSONDecodeError as exc:
        raise NeuronSetError(f"{path}: metadata is not valid JSON ({exc})") from None
    found = block.get("format") if isinstance(block, dict) else None
    if found != fmt:
        hint = " (it is a neuron set; pass a file from <out>/scores/)" if found == FORMAT_NAME else ""
        raise NeuronSetError(f"{path} is a {found!r} file, not a relspec {what} file ({fmt!r}){hint}")
    if block.get("format_version") != version:
        raise NeuronSetError(
            f"{path} has {what} format version {block.get('format_version')!r}; this relspec-lmeval reads {version!r}"
        )
    return tensors, block.get("metadata") or {}


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_set_path(name: str) -> Path:
    """A path, or a short name of a shipped set such as ``relspec-tiny/person_father``."""
    from relspec_lmeval._resources import list_shipped_neuron_sets, shipped_neuron_set

    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = shipped_neuron_set(name)
    if shipped is not None:
        return shipped
    import difflib

    known = list_shipped_neuron_sets()
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else (f" Shipped sets: {', '.join(known[:12])}{' …' if len(known) > 12 else ''}." if known else "")
    raise NeuronSetError(f"neuron-set file not found: {name!r} (neither a file nor a shipped set name).{hint}")


def union_all(sets: list[NeuronSet]) -> NeuronSet:
    """One set to apply: the set itself when there is one (keeping its path and means)."""
    return sets[0] if len(sets) == 1 else sets[0].union(*sets[1:])


def load_sets(spec: str) -> list[NeuronSet]:
    """``a.safetensors+b.safetensors`` (paths or shipped names) → the loaded sets."""
    names = [part.strip() for part in str(spec).split("+")]
    if not all(names):
        raise NeuronSetError(f"empty neuron-set name in {spec!r}")
    return [NeuronSet.load(resolve_set_path(n)) for n in names]
