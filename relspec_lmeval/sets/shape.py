"""``ModelShape``: the widths a set must fit, and where each neuron sits in the flat order.

A neuron is one output channel of a linear layer of one decoder layer, at one *site*: the
MLP's ``gate_proj`` (before the activation), ``up_proj`` or ``down_proj`` (the paper's units,
the default), or the attention's ``q_proj``, ``k_proj``, ``v_proj`` or ``o_proj`` (the
paper's App. G; ``q/k/v`` before RoPE and any q/k norm). One site is an *input*: ``o_proj_in``,
``o_proj``'s input channels, the heads' outputs side by side (head h's are channels
h × head_dim to (h + 1) × head_dim; ``sets.heads``). Every neuron has a *flat index*:
layers in order, and inside a layer the shape's ``sites`` in forward order (``SITES``: the
attention projections (q, k, v, o_proj_in, o), then gate, up, down), each ``width(site)`` channels. Sorting by flat
index is sorting by (layer, site, index): the documented tie-break of every ranking, so one
stable sort does a whole selection. With the default sites the order is the one every
earlier file used (gate, up, down per layer).

A mixture-of-experts model (``MOE_SITES``) has no ``gate_proj``/``up_proj``/``down_proj`` of its
own: its FFN sites are ``experts.gate_proj``, ``experts.up_proj`` and ``experts.down_proj`` (the
routed experts' grouped tensors, ``num_experts`` × the per-expert width, expert by expert: neuron
``e * width + c`` is channel ``c`` of expert ``e``) and, where the model has one (Qwen2-MoE),
``shared_expert.gate_proj``/``up_proj``/``down_proj``; these are its default sites.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from relspec_lmeval.errors import NeuronSetError, UnsupportedModelError, UsageError
from relspec_lmeval.util.suggest import did_you_mean

if TYPE_CHECKING:  # torch loads where tensors are handled: parsing flags (relspec --help) needs none
    import torch

__all__ = [
    "ATTENTION_KEYS", "ATTENTION_SITES", "DEFAULT_SITES", "EXPERT_SITES", "FFN_SITES", "MOE_KEYS", "MOE_SITES", "SHAPE_KEYS",
    "SHARED_SITES", "SITES", "ModelShape", "SELECT_MODES", "SiteKey", "config_fingerprint", "counted_sites", "model_metadata",
    "parse_sites",
]

FFN_SITES = ("gate_proj", "up_proj", "down_proj")
# o_proj_in: o_proj's input channels (the heads' outputs), between v_proj and o_proj as in the forward pass
ATTENTION_SITES = ("q_proj", "k_proj", "v_proj", "o_proj_in", "o_proj")
SHARED_SITES = ("shared_expert.gate_proj", "shared_expert.up_proj", "shared_expert.down_proj")  # Qwen2-MoE's shared expert
EXPERT_SITES = ("experts.gate_proj", "experts.up_proj", "experts.down_proj")  # the routed experts, grouped (modelio.moe)
MOE_SITES = SHARED_SITES + EXPERT_SITES  # a mixture-of-experts MLP's sites (Qwen2-MoE runs its shared expert first)
SITES = ATTENTION_SITES + FFN_SITES + MOE_SITES  # every site a set may name, in the order they run in a decoder layer
DEFAULT_SITES = FFN_SITES  # what identification scores unless told otherwise (the paper's)
SiteKey = tuple[int, str]  # (layer, site name): a site of one decoder layer, the key of per-site neurons, scores, means
SHAPE_KEYS = ("num_layers", "hidden_size", "intermediate_size")  # the recorded shape in a file's ``model`` block
# recorded too when a file has attention sites: the widths of q_proj (heads × head_dim) and k/v_proj (kv heads × head_dim)
ATTENTION_KEYS = ("num_attention_heads", "num_key_value_heads", "head_dim")
# recorded too when a file has mixture-of-experts sites: the routed experts and their width, the shared expert's width
MOE_KEYS = ("num_experts", "expert_intermediate_size", "shared_expert_intermediate_size")
SELECT_MODES = ("top", "both")  # a cut of the flat order: the top k, or top k/2 + bottom k/2 (sets.scores; here: torch-free)


def counted_sites(present: Iterable[str]) -> tuple[str, ...]:
    """The sites a set's counts are reported for, given the sites it has neurons at: the FFN's
    always (a mixture-of-experts set's: the experts'), and any other it has, in forward order."""
    present = set(present)
    always = EXPERT_SITES if present & set(MOE_SITES) else FFN_SITES
    return tuple(s for s in SITES if s in always or s in present)


def parse_sites(value: str | Iterable[str] | None, flag: str = "--sites") -> tuple[str, ...]:
    """``"q_proj,down_proj"`` (or a list) → the sites in forward order; ``UsageError`` naming an unknown or repeated site."""
    if value is None:
        return DEFAULT_SITES
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s).strip() for s in value]
    names = [s for s in names if s]
    if not names:
        raise UsageError(f"{flag} names no site; choose from {', '.join(SITES)}")
    for name in names:
        if name not in SITES:
            raise UsageError(f"{flag}: unknown site {name!r}; sites are {', '.join(SITES)}.{did_you_mean(name, SITES)}")
    if len(set(names)) != len(names):
        raise UsageError(f"{flag} names a site twice: {','.join(names)}")
    return tuple(s for s in SITES if s in names)


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


@dataclass(frozen=True, eq=False)
class ModelShape:
    """Layers and widths of a model's sites, and which ``sites`` the flat order runs over.

    Args:
        num_layers, hidden_size, intermediate_size: the model's (``ModelShape.from_config(config)``
            reads them from a transformers config).
        model_type: informative.
        num_attention_heads, num_key_value_heads, head_dim: the attention's widths (needed for
            attention sites).
        num_experts, expert_intermediate_size, shared_expert_intermediate_size: a
            mixture-of-experts MLP's (needed for ``MOE_SITES``).
        sites: the sites of the flat order, in forward order (default: the FFN's three).

    ``model_type`` is informative. Two shapes are equal when they give the same flat order:
    the same sites over the same widths (the attention widths count only when an attention
    site is among the sites, so a file without them equals the model it was made for).

    Example:
        >>> from relspec_lmeval import ModelShape
        >>> shape = ModelShape(num_layers=2, hidden_size=4, intermediate_size=8)
        >>> shape.total  # 2 layers x (8 gate_proj + 8 up_proj + 4 down_proj)
        40
        >>> shape.offset(1, "up_proj"), shape.width("down_proj")
        (28, 4)
    """

    num_layers: int
    hidden_size: int
    intermediate_size: int
    model_type: str = "llama"
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    sites: tuple[str, ...] = field(default=DEFAULT_SITES)
    num_experts: int | None = None
    expert_intermediate_size: int | None = None
    shared_expert_intermediate_size: int | None = None

    def __post_init__(self) -> None:
        for key in SHAPE_KEYS:
            if not _positive(getattr(self, key)):
                raise NeuronSetError(f"model shape: {key} must be a positive integer, got {getattr(self, key)!r}")
        for key in (*ATTENTION_KEYS, *MOE_KEYS):
            value = getattr(self, key)
            if value is not None and not _positive(value):
                raise NeuronSetError(f"model shape: {key} must be a positive integer, got {value!r}")
        sites = tuple(self.sites)
        unknown = [s for s in sites if s not in SITES]
        if not sites or unknown or len(set(sites)) != len(sites):
            raise NeuronSetError(f"model shape: sites must be distinct names out of {', '.join(SITES)}, got {list(sites)}")
        object.__setattr__(self, "sites", tuple(s for s in SITES if s in sites))  # always in forward order
        if self.has_attention_sites and not self.has_attention_widths:
            raise NeuronSetError(f"model shape: attention sites need {', '.join(ATTENTION_KEYS)}")
        for site in self.sites:
            if site in MOE_SITES:
                self.width(site)  # the widths it needs are there

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Any, sites: Iterable[str] = DEFAULT_SITES) -> ModelShape:
        config = getattr(config, "get_text_config", lambda: config)()
        kind = str(getattr(config, "model_type", "unknown"))
        missing = [key for key in ("num_hidden_layers", "hidden_size", "intermediate_size") if getattr(config, key, None) is None]
        if missing:  # e.g. GPT-2 (n_layer, n_inner): not the gate/up/down MLP this package ablates
            raise UnsupportedModelError(
                f"model type {kind!r} has no {', '.join(missing)} in its config; relspec supports Llama-style "
                "models (an MLP with gate_proj, up_proj and down_proj: Llama, Mistral, Qwen2, Gemma …)"
            )
        heads = getattr(config, "num_attention_heads", None)
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or (int(config.hidden_size) // int(heads) if heads else None)
        moe = _moe_widths(config, kind)
        sites = _ffn_sites(tuple(sites), moe, kind)
        if any(s in ATTENTION_SITES for s in sites) and not heads:
            raise UnsupportedModelError(f"model type {kind!r} has no num_attention_heads in its config: no attention sites to score")
        return cls(
            num_layers=int(config.num_hidden_layers),
            hidden_size=int(config.hidden_size),
            intermediate_size=int(config.intermediate_size),
            model_type=kind,
            num_attention_heads=int(heads) if heads else None,
            num_key_value_heads=int(kv_heads) if kv_heads else None,
            head_dim=int(head_dim) if head_dim else None,
            sites=sites,
            **moe,
        )

    @classmethod
    def from_metadata(cls, block: Any, where: str) -> ModelShape:
        """The shape recorded in a file's ``model`` metadata block; ``where`` names the file in errors."""
        if not isinstance(block, Mapping):
            raise NeuronSetError(f"{where}: metadata 'model' must be an object with {', '.join(SHAPE_KEYS)}, got {type(block).__name__}")
        values: dict[str, Any] = {}
        for key in SHAPE_KEYS:
            value = block.get(key)
            if not _positive(value):
                raise NeuronSetError(f"{where}: metadata model.{key} must be a positive integer, got {value!r}")
            values[key] = value
        sites = block.get("sites", list(DEFAULT_SITES))
        if not isinstance(sites, list) or not sites or any(s not in SITES for s in sites) or len(set(sites)) != len(sites):
            raise NeuronSetError(f"{where}: metadata model.sites must be a list of distinct names out of {', '.join(SITES)}, got {sites!r}")
        for key in (*ATTENTION_KEYS, *MOE_KEYS):
            value = block.get(key)
            if value is None and key in ATTENTION_KEYS and any(s in ATTENTION_SITES for s in sites):
                raise NeuronSetError(f"{where}: metadata model.{key} is needed for the attention sites {sites}")
            if value is not None and not _positive(value):
                raise NeuronSetError(f"{where}: metadata model.{key} must be a positive integer, got {value!r}")
            values[key] = value
        try:
            return cls(**values, model_type=str(block.get("model_type") or "unknown"), sites=tuple(sites))
        except NeuronSetError as exc:  # a mixture-of-experts site without its widths
            raise NeuronSetError(f"{where}: metadata {exc}") from None

    def with_sites(self, sites: Iterable[str]) -> ModelShape:
        """The same model with the flat order over other sites."""
        return replace(self, sites=tuple(sites))

    # ---- equality ----------------------------------------------------------------------
    def _key(self) -> tuple:
        attention = tuple(getattr(self, k) for k in ATTENTION_KEYS) if self.has_attention_sites else ()
        experts = tuple(getattr(self, k) for k in MOE_KEYS) if self.has_moe_sites else ()
        return (self.num_layers, self.hidden_size, self.intermediate_size, self.sites, attention, experts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelShape) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    # ---- widths and the flat order ------------------------------------------------------
    @property
    def has_attention_sites(self) -> bool:
        return any(s in ATTENTION_SITES for s in self.sites)

    @property
    def has_attention_widths(self) -> bool:
        return all(getattr(self, k) is not None for k in ATTENTION_KEYS)

    @property
    def has_moe_sites(self) -> bool:
        return any(s in MOE_SITES for s in self.sites)

    @property
    def is_moe(self) -> bool:
        """A mixture-of-experts model (its FFN sites are ``MOE_SITES``)."""
        return self.num_experts is not None

    def expert_width(self, site: str) -> int:
        """One routed expert's channels at an ``experts.*`` site (its neuron ``e * expert_width + c``)."""
        if site not in EXPERT_SITES:
            raise NeuronSetError(f"{site} is not a routed experts' site ({', '.join(EXPERT_SITES)})")
        return self.width(site) // int(self.num_experts)  # type: ignore[arg-type]

    def width(self, site: str) -> int:
        """Number of neurons at one site of one layer (any site, whether or not in ``sites``)."""
        if site in ("down_proj", "o_proj"):
            return self.hidden_size
        if site in ("gate_proj", "up_proj"):
            return self.intermediate_size
        if site in MOE_SITES:
            return self._moe_width(site)
        if site not in ATTENTION_SITES:
            raise NeuronSetError(f"unknown site {site!r}; sites are {', '.join(SITES)}")
        if not self.has_attention_widths:
            raise NeuronSetError(f"{site}: this model shape records no attention widths ({', '.join(ATTENTION_KEYS)})")
        heads = self.num_attention_heads if site in ("q_proj", "o_proj_in") else self.num_key_value_heads
        return int(heads) * int(self.head_dim)  # type: ignore[arg-type]

    def _moe_width(self, site: str) -> int:
        part = site.split(".")[1]
        if site in SHARED_SITES:
            inner = self.shared_expert_intermediate_size
            if inner is None:
                raise NeuronSetError(f"{site}: this model shape records no shared expert (shared_expert_intermediate_size)")
            return self.hidden_size if part == "down_proj" else int(inner)
        if self.num_experts is None or self.expert_intermediate_size is None:
            raise NeuronSetError(f"{site}: this model shape records no experts (num_experts, expert_intermediate_size)")
        return self.num_experts * (self.hidden_size if part == "down_proj" else self.expert_intermediate_size)

    @property
    def per_layer(self) -> int:
        return sum(self.width(s) for s in self.sites)

    @property
    def total(self) -> int:
        return self.num_layers * self.per_layer

    def offset(self, layer: int, site: str) -> int:
        if site not in self.sites:
            raise NeuronSetError(f"site {site!r} is not in this flat order (sites {', '.join(self.sites)})")
        before = self.sites[: self.sites.index(site)]
        return layer * self.per_layer + sum(self.width(s) for s in before)

    def blocks(self) -> list[tuple[int, str, int, int]]:
        """(layer, site, flat offset, width) of every (layer, site) block of the flat order, in order."""
        return [(layer, site, self.offset(layer, site), self.width(site)) for layer in range(self.num_layers) for site in self.sites]

    def split(self, flat: torch.Tensor) -> dict[SiteKey, torch.Tensor]:
        """A flat per-neuron vector → one tensor per (layer, site)."""
        if flat.shape[-1] != self.total:
            raise NeuronSetError(f"expected {self.total} neurons, got {flat.shape[-1]}")
        return {(layer, site): flat[..., off : off + width] for layer, site, off, width in self.blocks()}

    def join(self, parts: Mapping[SiteKey, torch.Tensor]) -> torch.Tensor:
        """Inverse of ``split``."""
        missing = [(layer, site) for layer, site, _, _ in self.blocks() if (layer, site) not in parts]
        if missing:
            raise NeuronSetError(f"missing per-site tensors for {missing[:3]}{' …' if len(missing) > 3 else ''}")
        extra = sorted(set(parts) - {(layer, site) for layer, site, _, _ in self.blocks()})
        if extra:
            raise NeuronSetError(f"per-site tensors outside the model shape: {extra[:3]}")
        for layer, site, _, width in self.blocks():
            if parts[(layer, site)].shape[-1] != width:
                raise NeuronSetError(f"layer {layer} {site}: {parts[(layer, site)].shape[-1]} values for width {width}")
        import torch

        return torch.cat([parts[(layer, site)] for layer, site, _, _ in self.blocks()], dim=-1)

    def group(self, flat_index: torch.Tensor) -> dict[SiteKey, torch.Tensor]:
        """Flat indices → channel indices per (layer, site) (positions into ``flat_index`` kept in order)."""
        import torch

        flat_index = flat_index.to(torch.int64).cpu()
        out: dict[SiteKey, torch.Tensor] = {}
        for layer, site, off, width in self.blocks():
            hit = (flat_index >= off) & (flat_index < off + width)
            if bool(hit.any()):
                out[(layer, site)] = flat_index[hit] - off
        return out

    def metadata(self) -> dict[str, Any]:
        """The recorded shape: ``SHAPE_KEYS``, plus ``sites`` when not the default and the attention widths when needed."""
        block: dict[str, Any] = {key: getattr(self, key) for key in SHAPE_KEYS}
        if self.sites != DEFAULT_SITES:
            block["sites"] = list(self.sites)
        if self.has_attention_sites:
            block.update({key: getattr(self, key) for key in ATTENTION_KEYS})
        if self.has_moe_sites:
            block.update({key: getattr(self, key) for key in MOE_KEYS if getattr(self, key) is not None})
        return block


def _moe_widths(config: Any, kind: str) -> dict[str, int | None]:
    """A mixture-of-experts config's ``MOE_KEYS`` (all None for a dense one). Mixtral and OLMoE give
    an expert's width as ``intermediate_size``, Qwen2-MoE/Qwen3-MoE as ``moe_intermediate_size``
    (their ``intermediate_size`` is a dense layer's, which relspec refuses to mix with sparse ones)."""
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    if not _positive(experts):
        return dict.fromkeys(MOE_KEYS)
    dense = list(getattr(config, "mlp_only_layers", None) or [])
    step = getattr(config, "decoder_sparse_step", 1)
    if dense or step not in (None, 1):
        raise UnsupportedModelError(
            f"model type {kind!r} mixes dense and mixture-of-experts layers (mlp_only_layers={dense}, "
            f"decoder_sparse_step={step}); relspec needs every layer's MLP of one kind"
        )
    shared = getattr(config, "shared_expert_intermediate_size", None)
    return {
        "num_experts": int(experts),
        "expert_intermediate_size": int(getattr(config, "moe_intermediate_size", None) or config.intermediate_size),
        "shared_expert_intermediate_size": int(shared) if _positive(shared) else None,
    }


def _ffn_sites(sites: tuple[str, ...], moe: Mapping[str, int | None], kind: str) -> tuple[str, ...]:
    """``sites`` for this model: the default (``FFN_SITES``) is a mixture-of-experts model's own FFN
    sites; a dense site asked of one, or an experts' site of a dense model, is refused in one line."""
    if moe["num_experts"] is None:
        wrong = [s for s in sites if s in MOE_SITES]
        if wrong:
            raise UnsupportedModelError(f"model type {kind!r} is not a mixture-of-experts model: it has no {', '.join(wrong)}")
        return sites
    own = (SHARED_SITES if moe["shared_expert_intermediate_size"] else ()) + EXPERT_SITES
    if sites == FFN_SITES:
        return own
    wrong = [s for s in sites if (s in FFN_SITES or s in MOE_SITES) and s not in own]
    if wrong:
        raise UnsupportedModelError(
            f"model type {kind!r} is a mixture-of-experts model without {', '.join(wrong)}; its FFN sites are {', '.join(own)}"
        )
    return sites


def config_fingerprint(config: Any) -> str:
    """Short hash of a model config: identifies an architecture when no revision is known."""
    text = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else json.dumps(config)
    data = json.loads(text)
    # Keys that name the file rather than the network would make equal models look different.
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def model_metadata(
    config: Any, name: str, revision: str | None = None, gguf_file: str | None = None, sites: Iterable[str] = DEFAULT_SITES
) -> dict[str, Any]:
    """The ``model`` block of a set's metadata for a transformers config (``sites``: those of the flat order)."""
    shape = ModelShape.from_config(config, sites)
    return {
        "name": name,
        "revision": revision,
        **({"gguf_file": gguf_file} if gguf_file else {}),
        "config_hash": config_fingerprint(config),
        "architecture": (getattr(config, "architectures", None) or [None])[0],
        "model_type": shape.model_type,
        **shape.metadata(),
    }
