"""Reading a transformers model's structure: its decoder layers, their sites, and their shape.

A site (``sets.shape.SITES``) is a linear layer of a decoder layer: ``mlp.gate_proj``,
``mlp.up_proj``, ``mlp.down_proj`` (every supported model has them) or
``self_attn.q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (looked up when a set or a run names
them). Both sides use this: ablation (writing into the sites) and identification (reading them).

A fused MLP (Phi-3 and GLM: one ``gate_up_proj`` of width 2 × intermediate whose output is
chunked into gate, then up) keeps the names: ``gate_proj`` neuron i is its output channel i,
``up_proj`` neuron i its channel intermediate + i. ``site_modules`` gives such a half as a
``FusedHalf`` (the module and where the half starts), whose forward hooks see the half alone;
``channels`` turns a site and its neuron indices into the module and its own output channels.

``o_proj_in`` is not an output: it is ``o_proj``'s input channels (the heads' outputs).
``site_modules`` gives it as an ``InputChannels`` of ``o_proj``, whose forward hooks see (and
may rewrite) that input; ``weight_axis`` says its neurons are the weight's columns, not rows.

A mixture-of-experts MLP (``modelio.moe``: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) has the sites
``experts.gate_proj``/``up_proj``/``down_proj`` (``ExpertSite``: the grouped expert tensors, neuron
``e * width + c`` channel c of expert e) and, in Qwen2-MoE, ``shared_expert.*`` (``FlatSite``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from relspec_lmeval.errors import ModelError, UnsupportedModelError
from relspec_lmeval.modelio.moe import ExpertSite, is_moe, moe_site
from relspec_lmeval.sets.shape import ATTENTION_SITES, FFN_SITES, MOE_SITES, ModelShape, SiteKey

__all__ = [
    "FUSED_MLPS", "FusedHalf", "InputChannels", "base_model", "channels", "find_layers", "find_mlps", "is_fused", "model_shape",
    "model_type", "site_modules", "weight_axis",
]

# MLP classes whose gate_up_proj output is ``gate, up = out.chunk(2, dim=-1)`` (read in transformers'
# code). Only these: Phi4MultimodalAudioMLP chunks the same weight as ``up, gate``, so the
# attribute alone cannot tell which half is which.
FUSED_MLPS = ("Phi3MLP", "GlmMLP", "Glm4MLP")


@dataclass(frozen=True)
class FusedHalf:
    """One half of a fused ``gate_up_proj``: output channels ``start`` to ``start + width`` of ``module``.

    Args:
        module: the fused Linear (or its PEFT/quantized replacement).
        start: 0 for ``gate_proj``, the intermediate size for ``up_proj``.
        width: the intermediate size.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from relspec_lmeval.modelio.sites import FusedHalf
        >>> fused = nn.Linear(2, 6, bias=False)
        >>> up = FusedHalf(fused, 3, 3)
        >>> seen = []
        >>> handle = up.register_forward_hook(lambda m, a, out: seen.append(out.shape[-1]))
        >>> _ = fused(torch.ones(1, 2)); handle.remove()
        >>> up.out_features, seen
        (3, [3])
    """

    module: nn.Module
    start: int
    width: int

    @property
    def out_features(self) -> int:
        return self.width

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.module, "bias", None)

    def register_forward_hook(self, hook: Callable) -> torch.utils.hooks.RemovableHandle:
        """A hook on the fused module that is given this half of its output (a view: edits in place reach the
        output; a tensor the hook returns replaces the half)."""
        start, stop = self.start, self.start + self.width

        def sliced(module: nn.Module, args: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            half = out[..., start:stop]
            result = hook(module, args, half)
            if isinstance(result, torch.Tensor) and result is not half:
                out[..., start:stop] = result
            return None

        return self.module.register_forward_hook(sliced)

    def register_forward_pre_hook(self, hook: Callable) -> torch.utils.hooks.RemovableHandle:
        return self.module.register_forward_pre_hook(hook)


@dataclass(frozen=True)
class InputChannels:
    """A Linear's input channels as a site (``o_proj_in``: ``o_proj``'s input, the heads' outputs side by side).

    Args:
        module: the Linear (or its PEFT/quantized replacement) whose input the site is.

    A forward hook registered here runs as a forward pre-hook of ``module`` and is given a copy
    of its input as the "output": edits in place reach ``module`` (the tensor the model passed
    in is left alone), and a tensor the hook returns replaces the input.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from relspec_lmeval.modelio.sites import InputChannels
        >>> o_proj = nn.Linear(4, 2, bias=False)
        >>> site = InputChannels(o_proj)
        >>> handle = site.register_forward_hook(lambda m, a, x: x.index_fill_(-1, torch.tensor([0, 1]), 0.0))
        >>> x = torch.ones(1, 4)
        >>> torch.equal(o_proj(x), x[:, 2:] @ o_proj.weight[:, 2:].T), x.sum().item()
        (True, 4.0)
    """

    module: nn.Module

    @property
    def out_features(self) -> int | None:
        """The site's width: the module's input channels."""
        return getattr(self.module, "in_features", None)

    @property
    def bias(self) -> None:
        return None  # an input channel's edit (a weight column) is exact whatever the module's bias

    def register_forward_hook(self, hook: Callable) -> torch.utils.hooks.RemovableHandle:
        def on_input(module: nn.Module, args: tuple) -> tuple:
            # a copy: the model may still hold the tensor it passes in (an edit must reach o_proj alone)
            x = args[0].clone()
            result = hook(module, args, x)
            return (result if isinstance(result, torch.Tensor) else x, *args[1:])

        return self.module.register_forward_pre_hook(on_input)

    def register_forward_pre_hook(self, hook: Callable) -> torch.utils.hooks.RemovableHandle:
        return self.module.register_forward_pre_hook(hook)


def weight_axis(module: nn.Module | FusedHalf | InputChannels) -> int:
    """Where a site's neurons are in its module's weight: 0 (rows: output channels) or 1 (columns: ``InputChannels``).

    Example:
        >>> from torch import nn
        >>> from relspec_lmeval.modelio.sites import InputChannels, weight_axis
        >>> o_proj = nn.Linear(4, 2)
        >>> weight_axis(o_proj), weight_axis(InputChannels(o_proj))
        (0, 1)
    """
    return 1 if isinstance(module, InputChannels) else 0


def channels(module: nn.Module | FusedHalf | InputChannels, index: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """The module that computes a site, and its output channels for the site's neuron ``index``.

    Args:
        module: a site's entry of ``site_modules``.
        index: neuron indices at that site.

    Returns:
        ``(module, index)`` as given for a plain site; for a ``FusedHalf`` the fused module and
        ``index + start`` (its rows of the fused weight); for ``InputChannels`` its module and
        ``index`` (columns of its weight: ``weight_axis``); for an ``ExpertSite`` its ``GroupedProj``
        and the neurons' rows of the grouped weight (``ExpertSite.rows``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from relspec_lmeval.modelio.sites import FusedHalf, channels
        >>> fused = nn.Linear(2, 6, bias=False)
        >>> module, rows = channels(FusedHalf(fused, 3, 3), torch.tensor([0, 2]))
        >>> module is fused, rows.tolist()
        (True, [3, 5])
    """
    if isinstance(module, FusedHalf):
        return module.module, index + module.start
    if isinstance(module, InputChannels):
        return module.module, index
    if isinstance(module, ExpertSite):
        return module.proj, module.rows(index)
    return module, index


def is_fused(mlp: nn.Module) -> bool:
    """Whether ``mlp`` is a fused MLP of ``FUSED_MLPS`` (gate_up_proj chunked gate first, then up)."""
    return type(mlp).__name__ in FUSED_MLPS and isinstance(getattr(mlp, "gate_up_proj", None), nn.Module)


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

    Separate ``gate_proj``/``up_proj``/``down_proj`` (Llama, Mistral, Qwen2, Gemma, …), or a fused
    ``gate_up_proj`` and ``down_proj`` of a class in ``FUSED_MLPS`` (Phi-3, GLM), or every layer a
    mixture-of-experts block of ``modelio.moe.MOE_BLOCKS`` (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE).
    Raises ``UnsupportedModelError`` naming the model type for other mixture-of-experts MLPs, dense
    layers mixed with sparse ones, other fused ones, or when no decoder layers with an ``mlp`` are found.
    """
    mlps = [layer.mlp for layer in find_layers(model)]
    sparse = [is_moe(mlp) for mlp in mlps]
    if any(sparse) and not all(sparse):
        raise UnsupportedModelError(
            f"model type {model_type(model)!r} mixes dense MLPs (layer {sparse.index(False)}) with mixture-of-experts ones "
            f"(layer {sparse.index(True)}); relspec needs every layer's MLP of one kind"
        )
    for i, mlp in enumerate(mlps):
        sites = () if sparse[i] else ("down_proj",) if is_fused(mlp) else FFN_SITES
        missing = [s for s in sites if not isinstance(getattr(mlp, s, None), nn.Module)]
        if missing:
            kind = (
                "a mixture-of-experts MLP of a kind relspec has not read"
                if hasattr(mlp, "experts")
                else "a fused gate_up_proj MLP whose gate and up halves relspec has not read"
                if hasattr(mlp, "gate_up_proj") and not is_fused(mlp)
                else f"an MLP without {', '.join(missing)}"
            )
            raise UnsupportedModelError(
                f"model type {model_type(model)!r} has {kind} (layer {i}, {type(mlp).__name__}); relspec-hf supports "
                "MLPs with separate gate_proj/up_proj/down_proj (Llama, Mistral, Qwen2, Gemma, …), the fused "
                "gate_up_proj of Phi-3 and GLM, and the grouped experts of Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE"
            )
    return mlps


def _mlp_site(mlp: nn.Module, site: str, width: int) -> nn.Module | FusedHalf:
    """An MLP site's module; a fused MLP's gate_proj and up_proj as halves of its gate_up_proj."""
    if site == "down_proj" or not is_fused(mlp):
        return getattr(mlp, site)
    return FusedHalf(mlp.gate_up_proj, 0 if site == "gate_proj" else width, width)


def _attention(model: nn.Module, layer: nn.Module, index: int, site: str) -> nn.Module | InputChannels:
    attention = getattr(layer, "self_attn", None)
    name = "o_proj" if site == "o_proj_in" else site
    module = getattr(attention, name, None) if attention is not None else None
    if isinstance(module, nn.Module):
        return InputChannels(module) if site == "o_proj_in" else module
    kind = (
        "no self_attn module" if attention is None
        else "a fused qkv_proj attention" if hasattr(attention, "qkv_proj") or hasattr(attention, "query_key_value")
        else f"an attention without {name}"
    )
    raise UnsupportedModelError(
        f"model type {model_type(model)!r} has {kind} (layer {index}); the attention sites need separate "
        f"{', '.join(s for s in ATTENTION_SITES if s != 'o_proj_in')} in self_attn (Llama, Mistral, Qwen2, Gemma, …)"
    )


def site_modules(model: nn.Module, keys: Iterable[SiteKey]) -> dict[SiteKey, nn.Module | FusedHalf | InputChannels]:
    """The module of each (layer, site), checked.

    Args:
        model: a transformers causal LM (PEFT-wrapped or not).
        keys: the (layer, site) pairs wanted.

    Returns:
        Each key's module, in the order of ``keys``; a fused MLP's ``gate_proj`` and ``up_proj``
        as ``FusedHalf`` (hooks on it see its half; ``channels`` gives the fused rows);
        ``o_proj_in`` as ``InputChannels`` of ``o_proj`` (hooks on it see o_proj's input).

    Raises ``UnsupportedModelError`` for MLPs ``find_mlps`` refuses (whatever the keys) or a missing
    site, ``ModelError`` for a layer out of range or a Linear whose output width is not the config's.

    Example:
        >>> from transformers import Phi3Config, Phi3ForCausalLM
        >>> from relspec_lmeval.modelio.sites import site_modules
        >>> config = Phi3Config(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
        ...                     pad_token_id=0, bos_token_id=1, eos_token_id=2)
        >>> up = site_modules(Phi3ForCausalLM(config), [(0, "up_proj")])[(0, "up_proj")]
        >>> up.start, up.out_features, up.module.out_features
        (24, 24, 48)
    """
    layers = find_layers(model)
    mlps = find_mlps(model)
    shape = model_shape(model)
    out: dict[SiteKey, nn.Module | FusedHalf | InputChannels] = {}
    for layer, site in keys:
        if not 0 <= layer < len(layers):
            raise ModelError(f"layer {layer} out of range: the model has {len(layers)} decoder layers")
        if is_moe(mlps[layer]) and site not in ATTENTION_SITES:
            module = moe_site(mlps[layer], layer, site, shape, model_type(model))
        elif site in FFN_SITES:
            module = _mlp_site(mlps[layer], site, shape.width(site))
        elif site in MOE_SITES:
            raise UnsupportedModelError(f"model type {model_type(model)!r} is not a mixture-of-experts model: it has no {site}")
        else:
            module = _attention(model, layers[layer], layer, site)
        name, want, kind = site, shape.width(site), "output"
        if isinstance(module, FusedHalf):  # the fused weight holds both halves
            name, want = "gate_up_proj", 2 * want
        if isinstance(module, InputChannels):
            name, kind = "o_proj", "input"
        if isinstance(module, ExpertSite):  # its grouped tensors' shapes: checked by _moe_site
            want = module.out_features
        width = getattr(module.module if isinstance(module, FusedHalf) else module, "out_features", None)
        if isinstance(width, int) and width != want:
            raise ModelError(
                f"layer {layer} {name} has {width} {kind} channels, but the config gives {want}; "
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
