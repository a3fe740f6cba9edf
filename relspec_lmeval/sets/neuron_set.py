"""The neuron-set file: which neurons to switch off, and where they came from.

A neuron is one output channel of ``gate_proj`` (before the activation), ``up_proj`` or
``down_proj`` in one layer's MLP, or of the attention's ``q_proj``, ``k_proj``, ``v_proj`` or
``o_proj`` (``sets.shape.SITES``); sites are named explicitly because tools disagree on what
a neuron is. One set per safetensors file (never pickle):

* ``layers.{L}.{site}.indices``: int64, sorted, unique channel indices;
* ``layers.{L}.{site}.scores`` / ``.means`` / ``.factors`` (optional, float32, aligned with
  the indices): the identification score, the neuron's mean output (``mode=mean`` needs the
  means) and its output multiplier (``mode=dampen`` needs the factors; ``relspec dampen``);
* one safetensors metadata entry ``relspec``: JSON ``{"format": "relspec-neuron-set",
  "format_version": "1", "metadata": {...}}``, the metadata being an open bag (model, method,
  parameters, relation, data hash, k, package version, command). One entry, because
  safetensors writes several in no fixed order and files must be byte-identical.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.sets.fileformat import (  # EXTRAS, CONTENT_FORMAT: re-exported, the names this module always had
    CONTENT_FORMAT,
    EXTRAS,
    FORMAT_NAME,
    FORMAT_VERSION,
    content_digest,
    read_relspec_file,
    site_tensors,
    write_relspec_file,
)
from relspec_lmeval.sets.shape import ATTENTION_KEYS, MOE_KEYS, SHAPE_KEYS, SITES, ModelShape, SiteKey, counted_sites
from relspec_lmeval.util.files import StagedFiles
from relspec_lmeval.util.hashing import file_sha256

__all__ = ["CONTENT_FORMAT", "EXTRAS", "NeuronSet", "compare_sets", "union_all"]



def _as_index_tensor(values: Any) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise NeuronSetError(f"neuron indices must be integers, got {tensor.dtype}")
    return tensor.to(torch.int64).flatten()


@dataclass
class NeuronSet:
    """Indices per (layer, site), optional aligned scores/means, and a metadata bag.

    Args:
        neurons: ``{(layer, site): int64 indices}``, the channels of each site's output.
        metadata: the ``relspec`` provenance (model, method, parameters, …).
        scores, means, factors: per (layer, site), aligned with ``neurons`` (optional).
        path: the file it was loaded from, if any.

    Example:
        >>> from relspec_lmeval import NeuronSet
        >>> a = NeuronSet.from_keys([(0, "up_proj", 3), (1, "down_proj", 7)], metadata={"relation": "demo"})
        >>> len(a), a.count_per_site()
        (2, {'gate_proj': 0, 'up_proj': 1, 'down_proj': 1})
        >>> b = NeuronSet.from_keys([(1, "down_proj", 7)])
        >>> a.overlap(b), len(a.union(b))
        (1, 2)
        >>> path = a.save("demo.safetensors")
        >>> NeuronSet.load(path).keys() == a.keys()
        True
    """

    neurons: dict[SiteKey, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    scores: dict[SiteKey, torch.Tensor] = field(default_factory=dict)
    means: dict[SiteKey, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None
    factors: dict[SiteKey, torch.Tensor] = field(default_factory=dict)
    # (path, size, mtime_ns) → sha256 of the file: a set is hashed once however often it is reported
    _digest: tuple[tuple[str, int, int], str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cleaned: dict[SiteKey, torch.Tensor] = {}
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
            for extra_name in EXTRAS:
                extra = getattr(self, extra_name)
                if key in extra:
                    values = torch.as_tensor(extra[key], dtype=torch.float32).flatten()
                    if values.numel() != idx.numel():
                        raise NeuronSetError(
                            f"layer {key[0]} {key[1]}: {values.numel()} {extra_name} for {idx.numel()} neurons"
                        )
                    extra[key] = values[order]
        self.neurons = dict(sorted(cleaned.items(), key=lambda kv: (kv[0][0], SITES.index(kv[0][1]))))
        for extra_name in EXTRAS:
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

    @property
    def has_factors(self) -> bool:
        """Every site carries per-neuron factors (what ``mode=dampen`` multiplies the outputs by)."""
        return bool(self.neurons) and set(self.factors) == set(self.neurons)

    def keys(self) -> set[tuple[int, str, int]]:
        """Every neuron as a (layer, site, index) triple."""
        return {(layer, site, int(i)) for (layer, site), idx in self.neurons.items() for i in idx.tolist()}

    def counted_sites(self) -> tuple[str, ...]:
        """The sites counts are reported for: the FFN's always (a mixture-of-experts set's: the experts'), any other the set has."""
        return counted_sites(site for _, site in self.neurons)

    def count_per_layer(self) -> dict[int, dict[str, int]]:
        counts: dict[int, dict[str, int]] = {}
        sites = self.counted_sites()
        for (layer, site), idx in self.neurons.items():
            counts.setdefault(layer, dict.fromkeys(sites, 0))[site] = int(idx.numel())
        return dict(sorted(counts.items()))

    def count_per_site(self) -> dict[str, int]:
        totals = dict.fromkeys(self.counted_sites(), 0)
        for (_, site), idx in self.neurons.items():
            totals[site] += int(idx.numel())
        return totals

    def validate(self, shape: ModelShape, *, allow_empty: bool = False) -> None:
        """Fail loudly when the set cannot be applied to a model of ``shape``.

        Raises ``NeuronSetError`` when the set records another shape, a layer or index is out
        of range, or the set is empty (unless ``allow_empty``: an empty set changes nothing,
        which is almost always a mistake). Every command that reads a set calls this.
        """
        recorded = self.metadata.get("model")
        if recorded is not None and not isinstance(recorded, Mapping):
            raise NeuronSetError(f"{self._label()}: metadata 'model' must be an object, got {type(recorded).__name__}")
        for key in (*SHAPE_KEYS, *ATTENTION_KEYS, *MOE_KEYS):  # attention and expert widths: where both file and shape know them
            want = getattr(shape, key)
            have = (recorded or {}).get(key)
            if have is None or want is None:
                continue
            if isinstance(have, bool) or not isinstance(have, int):
                raise NeuronSetError(f"{self._label()}: metadata model.{key} must be an integer, got {have!r}")
            if have != want:
                raise NeuronSetError(
                    f"{self._label()} was made for a model with {key}={have} "
                    f"({(recorded or {}).get('name', 'unknown model')}), but this model has {key}={want}"
                )
        if not self.neurons and not allow_empty:
            raise NeuronSetError(
                f"{self._label()} holds no neurons, so applying it would change nothing; "
                "pass allow_empty=true (--allow-empty) if that is what you want"
            )
        for (layer, site), idx in self.neurons.items():
            if layer >= shape.num_layers:
                raise NeuronSetError(f"{self._label()}: layer {layer} out of range (model has {shape.num_layers} layers)")
            try:
                width = shape.width(site)
            except NeuronSetError as exc:  # an attention site against a shape without attention widths
                raise NeuronSetError(f"{self._label()}: layer {layer} {exc}") from None
            if int(idx.max()) >= width:
                raise NeuronSetError(
                    f"{self._label()}: layer {layer} {site} index {int(idx.max())} out of range (width {width})"
                )
        for name in ("means", "factors"):
            for (layer, site), values in getattr(self, name).items():
                if not bool(torch.isfinite(values).all()):
                    raise NeuronSetError(f"{self._label()}: layer {layer} {site} has non-finite {name} (NaN or inf)")

    def recorded_shape(self) -> ModelShape:
        """The model shape in the set's metadata (``NeuronSetError`` when it records none or a malformed one)."""
        return ModelShape.from_metadata(self.metadata.get("model"), str(self.path or "neuron set"))

    def _label(self) -> str:
        return f"neuron set {self.path}" if self.path else "neuron set"

    # ---- algebra ----------------------------------------------------------------------
    @classmethod
    def from_keys(
        cls,
        keys: Iterable[tuple[int, str, int]],
        metadata: Mapping[str, Any] | None = None,
        means: Mapping[tuple[int, str, int], float] | None = None,
        factors: Mapping[tuple[int, str, int], float] | None = None,
    ) -> NeuronSet:
        grouped: dict[SiteKey, list[int]] = {}
        for layer, site, index in keys:
            grouped.setdefault((int(layer), site), []).append(int(index))

        def per_site(values: Mapping[tuple[int, str, int], float] | None) -> dict[SiteKey, torch.Tensor]:
            if values is None:
                return {}
            return {k: torch.tensor([values[(k[0], k[1], i)] for i in v], dtype=torch.float32) for k, v in grouped.items()}

        return cls({k: torch.tensor(v, dtype=torch.int64) for k, v in grouped.items()}, dict(metadata or {}),
                   means=per_site(means), factors=per_site(factors))

    def union(self, *others: NeuronSet) -> NeuronSet:
        """All neurons of all sets; means and factors are kept when every part has them.

        A neuron in several parts keeps the last part's mean and the smallest of its factors
        (the strongest dampening; so ``A.union(A)`` is ``A``, ``content_sha256`` included: the
        recorded model is kept where every part records the same shape).
        """
        parts = (self, *others)
        keys = self.keys().union(*(o.keys() for o in others))
        shapes = {tuple((s.metadata.get("model") or {}).get(k) for k in SHAPE_KEYS) if isinstance(s.metadata.get("model"), Mapping)
                  else None for s in parts}
        model = {"model": self.metadata["model"]} if len(shapes) == 1 and None not in shapes else {}
        return NeuronSet.from_keys(
            keys, {"operation": "union", **model, "parts": [s._summary() for s in parts]}, _merged(parts, "means", _last),
            _merged(parts, "factors", min),
        )

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
            for extra_name in EXTRAS:
                extra = getattr(self, extra_name)
                if (layer, site) in extra:
                    tensors[f"layers.{layer}.{site}.{extra_name}"] = extra[(layer, site)].contiguous()
        return tensors

    def save(self, path: str | os.PathLike, staged: StagedFiles | None = None) -> Path:
        """Write atomically: an interrupted save leaves no partial file behind.

        With ``staged``, the file is moved into place together with the other files of that
        group (``StagedFiles.commit``). Raises ``OutputError`` when it cannot be written.
        """
        self.path = write_relspec_file(self.to_tensors(), path, FORMAT_NAME, FORMAT_VERSION, self.metadata, staged)
        return self.path

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronSet:
        path = Path(path)
        tensors, metadata = read_relspec_file(path, FORMAT_NAME, FORMAT_VERSION, "neuron-set")
        parts = site_tensors(path, tensors, ("indices", *EXTRAS))
        try:
            result = cls(parts["indices"], metadata, parts["scores"], parts["means"], path=path, factors=parts["factors"])
        except NeuronSetError as exc:
            raise NeuronSetError(f"{path}: {exc}") from None
        return result

    def sha256(self) -> str:
        """Hash of the file this set was loaded from or saved to (else of its canonical tensors)."""
        if self.path is not None and self.path.is_file():
            stat = self.path.stat()
            key = (str(self.path), stat.st_size, stat.st_mtime_ns)
            if self._digest is None or self._digest[0] != key:
                self._digest = (key, file_sha256(self.path))
            return self._digest[1]
        digest = hashlib.sha256()
        for name, tensor in sorted(self.to_tensors().items()):
            digest.update(name.encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()

    def content_sha256(self) -> str:
        """Hash of what applying the set does, not of its file: the recorded model shape, each
        site's indices (int64) and, where present, factors (float32), by layer and in forward order. Metadata
        (command, versions, data), scores and means are left out, so two runs that find the same
        neurons of the same model shape hash the same even where their files differ."""
        model = self.metadata.get("model") if isinstance(self.metadata.get("model"), Mapping) else {}
        digest = content_digest(model)
        for (layer, site), idx in self.neurons.items():
            digest.update(f"\nlayers.{layer}.{site}.indices\n".encode() + idx.numpy().astype("<i8").tobytes())
            if (layer, site) in self.factors:
                digest.update(f"\nlayers.{layer}.{site}.factors\n".encode() + self.factors[(layer, site)].numpy().astype("<f4").tobytes())
        return digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        """What ``relspec info`` prints and the results JSON records."""
        return {
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256(),
            "content_sha256": self.content_sha256(),
            "count": len(self),
            "count_per_site": self.count_per_site(),
            "count_per_layer": {str(k): v for k, v in self.count_per_layer().items()},
            "has_scores": bool(self.scores),
            "has_means": self.has_means,
            "has_factors": self.has_factors,
            "metadata": self.metadata,
        }


def _last(old: float, new: float) -> float:
    return new


def _merged(sets: Iterable[NeuronSet], name: str, pick: Callable[[float, float], float]) -> dict[tuple[int, str, int], float] | None:
    """Every neuron's ``name`` value (``means`` or ``factors``) over ``sets``, or None unless every
    set with neurons carries them; ``pick(old, new)`` decides for a neuron in several sets."""
    sets = [s for s in sets if len(s)]
    if not sets or not all(set(getattr(s, name)) == set(s.neurons) for s in sets):
        return None
    merged: dict[tuple[int, str, int], float] = {}
    for s in sets:
        for key, idx in s.neurons.items():
            for i, value in zip(idx.tolist(), getattr(s, name)[key].tolist()):
                neuron = (key[0], key[1], i)
                merged[neuron] = pick(merged[neuron], value) if neuron in merged else value
    return merged


def union_all(sets: list[NeuronSet]) -> NeuronSet:
    """One set to apply: the set itself when there is one (keeping its path and means)."""
    return sets[0] if len(sets) == 1 else sets[0].union(*sets[1:])



def _values(s: NeuronSet, name: str) -> dict[tuple[int, str, int], float]:
    """Every neuron's ``name`` value (scores, means or factors) where the set has them."""
    return {(key[0], key[1], i): v for key, idx in s.neurons.items() if key in getattr(s, name)
            for i, v in zip(idx.tolist(), getattr(s, name)[key].tolist())}


def _flat(bag: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A metadata bag as dotted keys (``parameters.batch_size``); lists stay whole."""
    flat: dict[str, Any] = {}
    for key, value in bag.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def compare_sets(a: NeuronSet, b: NeuronSet) -> dict[str, Any]:
    """How two sets differ in content (``content_sha256``: shape, neurons, factors) and otherwise
    (file bytes, metadata keys, the largest difference of scores, means and factors on the shared neurons)."""
    keys_a, keys_b = a.keys(), b.keys()
    sites = [site for site in SITES if site in a.count_per_site() or site in b.count_per_site()]
    extras = {}
    for name in ("factors", "scores", "means"):
        va, vb = _values(a, name), _values(b, name)
        shared = va.keys() & vb.keys()
        extras[name] = {"has": [bool(va), bool(vb)], "max_abs_diff": max((abs(va[k] - vb[k]) for k in shared), default=None)}
    meta_a, meta_b = _flat(a.metadata), _flat(b.metadata)
    model_a, model_b = (s.metadata.get("model") if isinstance(s.metadata.get("model"), Mapping) else {} for s in (a, b))
    return {
        "paths": [str(a.path) if a.path else None, str(b.path) if b.path else None],
        "same_content": a.content_sha256() == b.content_sha256(),
        "content_sha256": [a.content_sha256(), b.content_sha256()],
        "same_file": a.sha256() == b.sha256(),
        "sha256": [a.sha256(), b.sha256()],
        "neurons": {"a": len(keys_a), "b": len(keys_b), "both": len(keys_a & keys_b),
                    "only_a": len(keys_a - keys_b), "only_b": len(keys_b - keys_a)},
        "count_per_site": {site: [a.count_per_site().get(site, 0), b.count_per_site().get(site, 0)] for site in sites},
        "model_shape": {key: [model_a.get(key), model_b.get(key)] for key in SHAPE_KEYS},
        **extras,
        "metadata_differs": sorted(k for k in meta_a.keys() | meta_b.keys() if k not in meta_a or k not in meta_b or meta_a[k] != meta_b[k]),
    }
