"""``ModelShape``: the widths a set must fit, and where each neuron sits in the flat order.

A neuron is one output channel of ``gate_proj`` (before the activation), ``up_proj`` or
``down_proj`` in one layer's MLP. Every neuron has a *flat index*: layers in order, and
inside a layer ``gate_proj`` (intermediate_size channels), then ``up_proj``, then
``down_proj`` (hidden_size). Sorting by flat index is sorting by (layer, site, index): the
documented tie-break of every ranking, so one stable sort does a whole selection.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from relspec_lmeval.errors import NeuronSetError, UnsupportedModelError

__all__ = ["SHAPE_KEYS", "SITES", "ModelShape", "Site", "config_fingerprint", "model_metadata"]

SITES = ("gate_proj", "up_proj", "down_proj")
Site = tuple[int, str]  # (layer, site name)
SHAPE_KEYS = ("num_layers", "hidden_size", "intermediate_size")  # the recorded shape in a file's ``model`` block


@dataclass(frozen=True)
class ModelShape:
    """Layers and widths of a model's MLPs (``model_type`` is informative, not compared)."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    model_type: str = field(default="llama", compare=False)

    def __post_init__(self) -> None:
        for key in SHAPE_KEYS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NeuronSetError(f"model shape: {key} must be a positive integer, got {value!r}")

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        config = getattr(config, "get_text_config", lambda: config)()
        kind = str(getattr(config, "model_type", "unknown"))
        missing = [key for key in ("num_hidden_layers", "hidden_size", "intermediate_size") if getattr(config, key, None) is None]
        if missing:  # e.g. GPT-2 (n_layer, n_inner): not the gate/up/down MLP this package ablates
            raise UnsupportedModelError(
                f"model type {kind!r} has no {', '.join(missing)} in its config; relspec supports Llama-style "
                "models (an MLP with gate_proj, up_proj and down_proj: Llama, Mistral, Qwen2, Gemma …)"
            )
        return cls(
            num_layers=int(config.num_hidden_layers),
            hidden_size=int(config.hidden_size),
            intermediate_size=int(config.intermediate_size),
            model_type=kind,
        )

    @classmethod
    def from_metadata(cls, block: Any, where: str) -> ModelShape:
        """The shape recorded in a file's ``model`` metadata block; ``where`` names the file in errors."""
        if not isinstance(block, Mapping):
            raise NeuronSetError(f"{where}: metadata 'model' must be an object with {', '.join(SHAPE_KEYS)}, got {type(block).__name__}")
        values = {}
        for key in SHAPE_KEYS:
            value = block.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NeuronSetError(f"{where}: metadata model.{key} must be a positive integer, got {value!r}")
            values[key] = value
        return cls(**values, model_type=str(block.get("model_type") or "unknown"))

    # ---- widths and the flat order ------------------------------------------------------
    def width(self, site: str) -> int:
        """Number of neurons at one site of one layer."""
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

    def split(self, flat: torch.Tensor) -> dict[Site, torch.Tensor]:
        """A flat per-neuron vector → one tensor per (layer, site)."""
        if flat.shape[-1] != self.total:
            raise NeuronSetError(f"expected {self.total} neurons, got {flat.shape[-1]}")
        return {(layer, site): flat[..., off : off + width] for layer, site, off, width in self.sites()}

    def join(self, parts: Mapping[Site, torch.Tensor]) -> torch.Tensor:
        """Inverse of ``split``."""
        missing = [(layer, site) for layer, site, _, _ in self.sites() if (layer, site) not in parts]
        if missing:
            raise NeuronSetError(f"missing per-site tensors for {missing[:3]}{' …' if len(missing) > 3 else ''}")
        extra = sorted(set(parts) - {(layer, site) for layer, site, _, _ in self.sites()})
        if extra:
            raise NeuronSetError(f"per-site tensors outside the model shape: {extra[:3]}")
        for layer, site, _, width in self.sites():
            if parts[(layer, site)].shape[-1] != width:
                raise NeuronSetError(f"layer {layer} {site}: {parts[(layer, site)].shape[-1]} values for width {width}")
        return torch.cat([parts[(layer, site)] for layer, site, _, _ in self.sites()], dim=-1)

    def group(self, flat_index: torch.Tensor) -> dict[Site, torch.Tensor]:
        """Flat indices → channel indices per (layer, site) (positions into ``flat_index`` kept in order)."""
        flat_index = flat_index.to(torch.int64).cpu()
        out: dict[Site, torch.Tensor] = {}
        for layer, site, off, width in self.sites():
            hit = (flat_index >= off) & (flat_index < off + width)
            if bool(hit.any()):
                out[(layer, site)] = flat_index[hit] - off
        return out

    def metadata(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in SHAPE_KEYS}


def config_fingerprint(config: Any) -> str:
    """Short hash of a model config: identifies an architecture when no revision is known."""
    text = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else json.dumps(config)
    data = json.loads(text)
    # Keys that name the file rather than the network would make equal models look different.
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def model_metadata(config: Any, name: str, revision: str | None = None, gguf_file: str | None = None) -> dict[str, Any]:
    """The ``model`` block of a set's metadata for a transformers config."""
    shape = ModelShape.from_config(config)
    return {
        "name": name,
        "revision": revision,
        **({"gguf_file": gguf_file} if gguf_file else {}),
        "config_hash": config_fingerprint(config),
        "architecture": (getattr(config, "architectures", None) or [None])[0],
        "model_type": shape.model_type,
        **shape.metadata(),
    }
