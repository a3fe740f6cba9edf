"""Reading a transformers model's structure: its decoder layers, their sites, and their shape.

A site (``sets.shape.SITES``) is a linear layer of a decoder layer: ``mlp.gate_proj``,
``mlp.up_proj``, ``mlp.down_proj`` (every supported model has them) or
``self_attn.q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (looked up when a set or a run names
them). Both sides use this: ablation (writing into the sites) and identification (reading them).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from relspec_lmeval.errors import ModelError, UnsupportedModelError
from relspec_lmeval.sets.shape import ATTENTION_SITES, FFN_SITES, ModelShape, SiteKey

__all__ = ["base_model", "find_layers", "find_mlps", "model_shape", "model_type", "site_modules"]


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (its LoRA layers replace Linear modules in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_type(model: nn.Module) -> str:
    return str(getattr(getattr(base_model(model), "config", None), "model_type", type(model).__name__))


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers, in order (the first ``ModuleList`` whose every entry has an ``mlp``)."""
    for _, module in base_model(model).named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(hasattr(m, "mlp") for m in module):
            return module
    raise UnsupportedModelError(f"model type {model_type(model)!r}: found no decoder layers with an `mlp` module")


def find_mlps(model: nn.Module) -> list[nn.Module]:
    """Each decoder layer's MLP, in order.

    Raises ``UnsupportedModelError`` naming the model type for fused or mixture-of-experts
    MLPs, or when no decoder layers with an ``mlp`` are found.
    """
    mlps = [layer.mlp for layer in find_layers(model)]
    for i, mlp in enumerate(mlps):
        missing = [s for s in FFN_SITES if not isinstance(getattr(mlp, s, None), nn.Module)]
        if missing:
            kind = (
                "a mixture-of-experts MLP"
                if hasattr(mlp, "experts")
                else "a fused gate_up_proj MLP"
                if hasattr(mlp, "gate_up_proj")
                else f"an MLP without {', '.join(missing)}"
            )
            raise UnsupportedModelError(
                f"model type {model_type(model)!r} has {kind} (layer {i}, {type(mlp).__name__}); relspec-hf supports "
                "Llama-style MLPs with separate gate_proj/up_proj/down_proj (Llama, Mistral, Qwen2, Gemma, …)"
            )
    return mlps


def _attention(model: nn.Module, layer: nn.Module, index: int, site: str) -> nn.Module:
    attention = getattr(layer, "self_attn", None)
    module = getattr(attention, site, None) if attention is not None else None
    if isinstance(module, nn.Module):
        return module
    kind = (
        "no self_attn module" if attention is None
        else "a fused qkv_proj attention" if hasattr(attention, "qkv_proj") or hasattr(attention, "query_key_value")
        else f"an attention without {site}"
    )
    raise UnsupportedModelError(
        f"model type {model_type(model)!r} has {kind} (layer {index}); the attention sites need separate "
        f"{', '.join(ATTENTION_SITES)} in self_attn (Llama, Mistral, Qwen2, Gemma, …)"
    )


def site_modules(model: nn.Module, keys: Iterable[SiteKey]) -> dict[SiteKey, nn.Module]:
    """The module of each (layer, site), checked: ``UnsupportedModelError`` for MLPs ``find_mlps``
    refuses (whatever the keys) or a missing site, ``ModelError`` for a layer out of range or a
    Linear whose output width is not the config's."""
    layers = find_layers(model)
    mlps = find_mlps(model)
    shape = model_shape(model)
    out: dict[SiteKey, nn.Module] = {}
    for layer, site in keys:
        if not 0 <= layer < len(layers):
            raise ModelError(f"layer {layer} out of range: the model has {len(layers)} decoder layers")
        module = getattr(mlps[layer], site) if site in FFN_SITES else _attention(model, layers[layer], layer, site)
        width = getattr(module, "out_features", None)
        if isinstance(width, int) and width != shape.width(site):
            raise ModelError(
                f"layer {layer} {site} has {width} output channels, but the config gives {shape.width(site)}; "
                "relspec cannot place its neurons in this model"
            )
        out[(layer, site)] = module
    return out


def model_shape(model: nn.Module) -> ModelShape:
    """The ``ModelShape`` of a loaded model (its base model's config, so a PEFT-wrapped model works too).

    Args:
        model: a transformers causal LM.

    Returns:
        Its widths and the flat neuron order of the FFN sites (``gate_proj``, ``up_proj``, ``down_proj``).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from relspec_lmeval.modelio.sites import model_shape
        >>> config = LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=2, vocab_size=64)
        >>> shape = model_shape(LlamaForCausalLM(config))
        >>> shape.num_layers, shape.total  # 2 layers × (32 + 32 + 16) neurons
        (2, 160)
    """
    return ModelShape.from_config(base_model(model).config)
