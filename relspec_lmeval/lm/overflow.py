"""Factors that would overflow: found before the weights load, before any edit, and by a probe pass.

``mode=scale`` multiplies channels by one factor, ``mode=dampen`` by the set's own; a factor that
is not a finite number in the model's dtype, or that makes an edited row's output overflow, would
make every answer empty without an error. ``check_factor_fits`` runs before the load (the dtype
from ``planned_dtype``), ``check_overflow`` on each site before ``apply_ablation`` edits it, and
``probe_finite`` once after the edits where a factor is above 1 (an overflow can build up
downstream, in a norm, where no static check sees it). docs/ablation.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.lm.positions import PositionMask
from relspec_lmeval.sets.neuron_set import NeuronSet

if TYPE_CHECKING:
    from relspec_lmeval.lm.ablation import AblationSpec

__all__ = ["PROBE_TOKENS", "amplifies", "check_factor_fits", "check_overflow", "largest_factor", "output_dtype", "planned_dtype", "probe_finite"]


def planned_dtype(requested: object, config: object = None) -> torch.dtype | None:
    """The floating dtype a model will be loaded in, before it loads: ``requested`` (a torch dtype or a
    name ``modelio.dtype`` knows), else (``auto``, None) the config's ``dtype``, else float32,
    transformers' default. None when it cannot be told (an unknown name: the loader reports it)."""
    from relspec_lmeval.errors import UsageError
    from relspec_lmeval.modelio.dtype import parse_dtype

    if isinstance(requested, torch.dtype):
        return requested if requested.is_floating_point else None
    try:
        parsed = parse_dtype(None if requested is None else str(requested))
    except UsageError:
        return None
    if parsed != "auto":
        return parsed
    recorded = getattr(config, "dtype", None) if config is not None else None
    if isinstance(recorded, str):
        recorded = getattr(torch, recorded.removeprefix("torch."), None)
    if isinstance(recorded, torch.dtype):
        return recorded if recorded.is_floating_point else None
    return torch.float32


def _check_in_dtype(what: str, value: float, dtype: torch.dtype) -> None:
    """``NeuronSetError`` when ``value`` (a factor) is beyond the largest finite number of ``dtype``."""
    limit = torch.finfo(dtype).max
    if abs(value) > limit:
        name = str(dtype).removeprefix("torch.")
        raise NeuronSetError(
            f"{what}={value:g} is not a finite number in {name} (its largest is {limit:.4g}): the scaled weights or "
            f"outputs would be inf and every answer empty; use a factor within ±{limit:.4g}"
        )


def check_factor_fits(spec: AblationSpec, neuron_sets: Sequence[NeuronSet], dtype: torch.dtype | None) -> None:
    """Before the weights load: ``mode=scale``'s factor, or the sets' ``mode=dampen`` factors, are finite
    numbers in ``dtype`` (``planned_dtype``). ``apply_ablation`` also checks each edited site's weights."""
    if dtype is None or not dtype.is_floating_point:
        return
    if spec.mode == "scale":
        _check_in_dtype("factor", spec.factor, dtype)
    if spec.mode == "dampen":
        for s in neuron_sets:
            for (layer, site), values in s.factors.items():
                if values.numel():
                    _check_in_dtype(f"{s.path or 'neuron set'}: layer {layer} {site} dampen factor", float(values.abs().max()), dtype)


def check_overflow(module: nn.Module, rows: torch.Tensor, layer: int, site: str, spec: AblationSpec, factors: torch.Tensor | None,
                    dtype: torch.dtype, axis: int = 0) -> None:
    """``NeuronSetError`` (before any edit) when scaling ``rows`` by the factor(s) could leave ``dtype``:
    the factor itself, or |factor| × the row's absolute sum (its output for inputs of size at most 1).
    ``axis`` 1: ``rows`` are input channels (columns), and every output row's sum counts them scaled."""
    scale = torch.tensor([float(spec.factor)], dtype=torch.float64) if spec.mode == "scale" else factors.to(torch.float64)
    label = f"layer {layer} {site}"
    _check_in_dtype(f"{label} factor" if spec.mode == "scale" else f"{label} dampen factor", float(scale.abs().max()), dtype)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point or weight.device.type == "meta":
        return  # quantized or offloaded: its rows cannot be read here; the factor check above still holds
    with torch.no_grad():
        bias = getattr(module, "bias", None)
        bias = bias.to(torch.float64).abs().cpu() if isinstance(bias, torch.Tensor) and bias.device.type != "meta" else None
        if axis == 1:  # each output row: its other columns as they are, the scaled ones × |factor|
            weights = torch.ones(weight.shape[1], dtype=torch.float64)
            weights[rows.cpu()] = scale.abs()
            sums = weight.to(torch.float64).abs().cpu() @ weights
            peak = float((sums + (bias if bias is not None else 0)).max())
        else:
            sums = weight.index_select(0, rows.to(weight.device)).to(torch.float64).abs().sum(dim=1).cpu()
            if bias is not None:
                sums = sums + bias[rows.cpu()]
            peak = float((sums * scale.abs()).max())
    limit = torch.finfo(dtype).max
    if not peak <= limit:
        raise NeuronSetError(
            f"{label}: mode={spec.mode} would overflow {str(dtype).removeprefix('torch.')}: a scaled channel's output reaches "
            f"{peak:.4g} for inputs of size 1 (|factor| × its weight row's absolute sum; the largest is {limit:.4g}); "
            "use a smaller factor"
        )


PROBE_TOKENS = 8


def largest_factor(neuron_set: NeuronSet) -> float:
    return max((float(f.abs().max()) for f in neuron_set.factors.values() if f.numel()), default=0.0)


def amplifies(spec: AblationSpec, neuron_set: NeuronSet) -> bool:
    """Whether some output is multiplied by more than 1 (only then can the edit make a finite model overflow)."""
    if spec.mode == "scale":
        return abs(spec.factor) > 1
    return spec.mode == "dampen" and largest_factor(neuron_set) > 1


def probe_finite(model: nn.Module, masked: PositionMask | None) -> bool | None:
    """Whether one pass over a few token ids gives finite logits; None where the model cannot be
    probed that way (no input embeddings, other inputs needed). Static checks cannot see an
    overflow that builds up downstream (a residual stream of 1e30 squared by a norm is inf)."""
    try:
        embeddings = model.get_input_embeddings()
        device = embeddings.weight.device if embeddings.weight.device.type != "meta" else torch.device("cpu")
        ids = (torch.arange(1, PROBE_TOKENS + 1) % embeddings.num_embeddings).unsqueeze(0).to(device)
        with torch.no_grad(), (masked.probe() if masked is not None else nullcontext()):
            logits = model(input_ids=ids, use_cache=False).logits
    except Exception:  # not a transformers causal LM as we know it: the static checks are what we have
        return None
    return bool(torch.isfinite(logits).all()) if isinstance(logits, torch.Tensor) else None


def output_dtype(model: nn.Module, module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s output: its weight's, or (a quantized weight) the model's compute dtype."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dtype.is_floating_point:
        return weight.dtype
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32
