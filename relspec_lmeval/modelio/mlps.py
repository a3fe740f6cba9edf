"""Reading a transformers model's structure: its decoder MLPs and their shape.

Both sides use this: ablation (writing into the MLPs) and identification (reading them).
"""

from __future__ import annotations

from torch import nn

from relspec_lmeval.errors import UnsupportedModelError
from relspec_lmeval.sets.shape import SITES, ModelShape

__all__ = ["base_model", "find_mlps", "model_shape", "model_type"]


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (its LoRA layers replace Linear modules in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_type(model: nn.Module) -> str:
    return str(getattr(getattr(base_model(model), "config", None), "model_type", type(model).__name__))


def find_mlps(model: nn.Module) -> list[nn.Module]:
    """Each decoder layer's MLP, in order.

    Raises ``UnsupportedModelError`` naming the model type for fused or mixture-of-experts
    MLPs, or when no decoder layers with an ``mlp`` are found.
    """
    base = base_model(model)
    layers = None
    for _, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(hasattr(m, "mlp") for m in module):
            layers = module
            break
    kind_of_model = model_type(model)
    if layers is None:
        raise UnsupportedModelError(f"model type {kind_of_model!r}: found no decoder layers with an `mlp` module")
    mlps = [layer.mlp for layer in layers]
    for i, mlp in enumerate(mlps):
        missing = [s for s in SITES if not isinstance(getattr(mlp, s, None), nn.Module)]
        if missing:
            kind = (
                "a mixture-of-experts MLP"
                if hasattr(mlp, "experts")
                else "a fused gate_up_proj MLP"
                if hasattr(mlp, "gate_up_proj")
                else f"an MLP without {', '.join(missing)}"
            )
            raise UnsupportedModelError(
                f"model type {kind_of_model!r} has {kind} (layer {i}, {type(mlp).__name__}); relspec-hf supports "
                "Llama-style MLPs with separate gate_proj/up_proj/down_proj (Llama, Mistral, Qwen2, Gemma, …)"
            )
    return mlps


def model_shape(model: nn.Module) -> ModelShape:
    return ModelShape.from_config(base_model(model).config)
