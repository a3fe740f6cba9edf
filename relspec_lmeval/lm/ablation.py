"""Switching neurons off inside a transformers model, and always being able to undo it.

A set's neurons are output channels of MLP or attention projections (``modelio.sites``; a fused
``gate_up_proj``'s gate_proj and up_proj neurons are its two halves' channels, ``modelio.sites.channels``).
For a plain ``nn.Linear`` without bias, setting output channel j to 0 (or scaling it by f,
one factor for all with ``mode=scale``, the set's per-neuron factors with ``mode=dampen``)
is exactly setting row j of the weight to 0 (or scaling it): the edit costs nothing at run
time and works on ``device_map``-sharded models. Where that is not exact or not possible
(a bias, e.g. Qwen2's q/k/v_proj, PEFT/LoRA wrappers, quantized or offloaded weights, ``mode=mean``) a forward
hook rewrites the channel's output instead. Both paths undo themselves in ``remove()``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.lm.overflow import (
    PROBE_TOKENS,
    amplifies,
    check_overflow,
    largest_factor,
    output_dtype,
    probe_finite,
)
from relspec_lmeval.lm.positions import PositionMask, check_positions
from relspec_lmeval.modelio.moe import FlatSite, GroupedProj, register_channel_hook
from relspec_lmeval.modelio.sites import channels, find_mlps, model_shape, site_modules, weight_axis
from relspec_lmeval.sets.neuron_set import NeuronSet, union_all
from relspec_lmeval.util.suggest import did_you_mean

__all__ = [
    "METHODS", "MODES", "Ablation", "AblationSpec", "ablated", "apply_ablation", "check_mode_fits",
]

MODES = ("zero", "scale", "mean", "dampen")
METHODS = ("auto", "weights", "hooks")


@dataclass
class AblationSpec:
    """How to switch neurons off: ``mode`` zero|scale|mean|dampen, ``factor`` (scale), ``method`` auto|weights|hooks.

    (the existing paragraphs stay)

    Example:
        >>> from relspec_lmeval import AblationSpec
        >>> AblationSpec(mode="scale", factor=0.5).factor
        0.5
        >>> AblationSpec(mode="zero", factor=0.5)
        Traceback (most recent call last):
        ...
        relspec_lmeval.errors.NeuronSetError: factor is only used with mode=scale, not mode=zero
    """

    mode: str = "zero"
    factor: float | None = None
    method: str = "auto"
    positions: str = "all"

    def __post_init__(self) -> None:
        check_positions(self.positions)
        if self.positions != "all" and self.method == "weights":
            raise NeuronSetError(
                f"positions={self.positions} needs hooks (a weight edit changes every position); use ablate_with=auto or hooks"
            )
        if self.mode not in MODES:
            raise NeuronSetError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}.{did_you_mean(str(self.mode), MODES)}")
        if self.method not in METHODS:
            raise NeuronSetError(f"unknown ablation method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.mode == "scale":
            if self.factor is None:
                raise NeuronSetError("mode=scale needs factor=F (e.g. factor=0.5)")
            self.factor = _parse_factor(self.factor)
        elif self.factor is not None and self.mode != "scale":
            raise NeuronSetError(f"factor is only used with mode=scale, not mode={self.mode}")


def _parse_factor(value: object) -> float:
    """``factor=`` as a finite float. A bool is refused: lm-eval's parser turns ``factor=true``
    into True, and ``float(True)`` would silently be 1.0 (no change at all)."""
    if isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in ("true", "false")):
        raise NeuronSetError(f"factor must be a number (e.g. factor=0.5), got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise NeuronSetError(f"factor must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise NeuronSetError(f"factor must be a finite number, got {value!r} (it would make the weights {number})")
    return number


def _weight_editable(module: nn.Module, axis: int = 0) -> bool:
    """True where zeroing/scaling a weight row (``axis`` 1: column) equals zeroing/scaling the output (input) channel."""
    if isinstance(module, FlatSite):  # a shared expert's Linear (modelio.moe)
        module = module.linear
    if isinstance(module, GroupedProj):  # grouped experts: rows of a bias-free 3-D parameter
        return module.weight_editable
    if type(module) is not nn.Linear or (axis == 0 and module.bias is not None):
        return False  # subclasses: LoRA, bitsandbytes, … ; a bias would survive a row's edit (a column's leaves it be)
    weight = module.weight
    if not weight.dtype.is_floating_point or weight.device.type == "meta":
        return False  # quantized, or offloaded by accelerate (its copy is reloaded each call)
    return getattr(module, "_hf_hook", None) is None or not getattr(module._hf_hook, "offload", False)


@dataclass
class Ablation:
    """The edits and hooks applied to one model; ``remove()`` restores it."""

    # (module, rows or columns, their saved values, the axis: 0 rows, 1 columns)
    weight_edits: list[tuple[nn.Linear, torch.Tensor, torch.Tensor, int]] = field(default_factory=list)
    hooks: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        return [name for name, used in (("weights", self.weight_edits), ("hooks", self.hooks)) if used]

    def remove(self) -> None:
        with torch.no_grad():
            for module, rows, saved, axis in reversed(self.weight_edits):
                module.weight.index_copy_(axis, rows, saved)
        for handle in self.hooks:
            handle.remove()
        self.weight_edits.clear()
        self.hooks.clear()


def _edited(selected: torch.Tensor, spec: AblationSpec, value: torch.Tensor | None) -> torch.Tensor:
    """The ablated values of the selected channels ``[..., k]`` (for a position mask)."""
    if spec.mode == "zero":
        return torch.zeros_like(selected)
    if spec.mode == "scale":
        return selected * spec.factor
    if spec.mode == "dampen":
        return (selected.to(torch.float32) * value).to(selected.dtype)
    return value.to(selected.dtype).expand_as(selected)


def _output_hook(index: torch.Tensor, spec: AblationSpec, values: torch.Tensor | None, positions: PositionMask | None):
    """The hook rewriting ``index``'s channels; ``values``: the means (mean) or factors (dampen);
    ``positions``: where (None: every position)."""
    # Index tensors follow the output to its device once (sharded and offloaded models).
    per_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def hook(module: nn.Module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        device = out.device
        if device not in per_device:
            per_device[device] = (index.to(device), None if values is None else values.to(device))
        idx, value = per_device[device]
        where = None if positions is None else positions.on(device)
        if where is False:  # no position of this pass
            return output
        if where is not None:
            if tuple(where.shape) != tuple(out.shape[:-1]):
                raise RuntimeError(f"relspec-hf: position mask {tuple(where.shape)} for an output of shape {tuple(out.shape)}")
            selected = out[..., idx]
            out[..., idx] = torch.where(where.unsqueeze(-1), _edited(selected, spec, value), selected)
            return output
        if spec.mode == "zero":
            out.index_fill_(-1, idx, 0.0)
        elif spec.mode == "scale":
            out[..., idx] *= spec.factor
        elif spec.mode == "dampen":  # in float32, rounded once to the output's dtype
            out[..., idx] = (out[..., idx].to(torch.float32) * value).to(out.dtype)
        else:
            out[..., idx] = value.to(out.dtype)
        return output

    return hook


def check_mode_fits(neuron_set: NeuronSet, spec: AblationSpec) -> None:
    """``mode=mean`` needs the per-neuron means that ``relspec identify`` stores, ``mode=dampen``
    the factors that ``relspec dampen`` stores."""
    if spec.mode == "mean" and len(neuron_set) and not neuron_set.has_means:
        raise NeuronSetError(
            f"mode=mean needs per-neuron means in the neuron-set file, and {neuron_set.path or 'this set'} has none; "
            "use mode=zero, or a set written by `relspec identify` (it stores the means)"
        )
    if spec.mode == "dampen" and len(neuron_set) and not neuron_set.has_factors:
        where = neuron_set.path or "this set"
        raise NeuronSetError(
            f"mode=dampen needs per-neuron factors in the neuron-set file, and {where} has none; "
            f"write them with `relspec dampen {where}` (from the AUROC scores of `relspec identify --method auroc`), or use mode=zero"
        )


def _edit_rows(module: nn.Linear, rows: torch.Tensor, spec: AblationSpec, factors: torch.Tensor | None, axis: int = 0) -> torch.Tensor:
    """Zero or scale ``rows`` of the weight in place (``axis`` 1: columns); returns the saved ones (the undo)."""
    with torch.no_grad():
        saved = module.weight.index_select(axis, rows).clone()
        if spec.mode == "zero":
            module.weight.index_fill_(axis, rows, 0.0)
        elif spec.mode == "scale":
            module.weight.index_copy_(axis, rows, saved * spec.factor)
        else:  # dampen: each row (column) by its factor, in float32, rounded once to the weight's dtype
            scale = factors.to(device=saved.device, dtype=torch.float32).unsqueeze(1 - axis)
            module.weight.index_copy_(axis, rows, (saved.to(torch.float32) * scale).to(saved.dtype))
    return saved


def apply_ablation(
    model: nn.Module, neuron_set: NeuronSet, spec: AblationSpec | None = None, positions: PositionMask | None = None
) -> Ablation:
    """Switch ``neuron_set``'s neurons off in ``model`` (in place) and return the undo handle.

    Args:
        model: a transformers causal LM with gate/up/down projections (Llama, Qwen2, Gemma, …; Phi-3's fused gate_up_proj).
        neuron_set: the neurons (its shape must be the model's).
        spec: how (default ``AblationSpec()``: zero, weight edits where exact).
        positions: with ``spec.positions`` other than ``all``, the caller's ``PositionMask``.

    Returns:
        An ``Ablation``: ``methods`` (how each site was edited), ``remove()`` undoes it.

    (the existing Raises paragraph stays)

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from relspec_lmeval import NeuronSet, apply_ablation
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        ...                                      num_attention_heads=2, num_key_value_heads=2)).eval()
        >>> before = model.model.layers[0].mlp.up_proj.weight.clone()
        >>> handle = apply_ablation(model, NeuronSet.from_keys([(0, "up_proj", 5)]))
        >>> handle.methods, bool(model.model.layers[0].mlp.up_proj.weight[5].eq(0).all())
        (['weights'], True)
        >>> handle.remove()
        >>> torch.equal(model.model.layers[0].mlp.up_proj.weight, before)
        True
    """
    spec = spec or AblationSpec()
    find_mlps(model)
    neuron_set.validate(model_shape(model), allow_empty=True)  # callers decide whether empty is allowed
    modules = site_modules(model, neuron_set.neurons)
    check_mode_fits(neuron_set, spec)
    if spec.positions != "all" and (positions is None or positions.positions != spec.positions):
        raise NeuronSetError(f"positions={spec.positions} needs a PositionMask of the same positions (relspec-hf makes one)")
    masked = positions if spec.positions != "all" else None
    # (layer, site, the module's output channels, the module, the weight's axis): a fused site's rows are
    # those of its half; o_proj_in's neurons are o_proj's input channels, the columns of its weight
    plan = [(layer, site, rows, module, weight_axis(modules[(layer, site)])) for (layer, site), index in neuron_set.neurons.items()
            for module, rows in [channels(modules[(layer, site)], index)]]
    weighted = [_uses_weights(module, spec, masked is not None, layer, site, axis) for layer, site, _, module, axis in plan]
    if spec.mode in ("scale", "dampen"):  # every site, before the first edit: the model stays untouched
        for layer, site, index, module, axis in plan:
            check_overflow(module, index, layer, site, spec, neuron_set.factors.get((layer, site)), output_dtype(model, module), axis)
    probed = amplifies(spec, neuron_set) and probe_finite(model, None)  # the model's own outputs are finite
    ablation = Ablation()
    try:
        if masked is not None and plan:  # before the first hooked site (sets are in forward order)
            ablation.hooks.append(plan[0][3].register_forward_pre_hook(masked.start_forward))
        for (layer, site, index, module, axis), by_weights in zip(plan, weighted):
            if by_weights:
                rows = index.to(module.weight.device)
                saved = _edit_rows(module, rows, spec, neuron_set.factors.get((layer, site)), axis)
                ablation.weight_edits.append((module, rows, saved, axis))
            else:
                values = {"mean": neuron_set.means, "dampen": neuron_set.factors}.get(spec.mode, {}).get((layer, site))
                hooked = modules[(layer, site)] if axis else module  # an input site's hook rewrites the module's input
                # grouped experts: one edit per expert, of its tokens' outputs (modelio.moe)
                ablation.hooks.append(register_channel_hook(hooked, index, values, masked, lambda i, v, p: _output_hook(i, spec, v, p)))
        if probed and probe_finite(model, masked) is False:
            factor = f" factor={spec.factor:g}" if spec.mode == "scale" else f" with factors up to {largest_factor(neuron_set):g}"
            raise NeuronSetError(
                f"mode={spec.mode}{factor} makes the model's outputs inf or NaN (non-finite logits on a probe of "
                f"{PROBE_TOKENS} tokens, finite without the set), so every answer would be empty; use a smaller factor"
            )
    except BaseException:
        ablation.remove()
        raise
    return ablation


def _uses_weights(module: nn.Module, spec: AblationSpec, masked: bool, layer: int, site: str, axis: int = 0) -> bool:
    """Whether ``module`` is ablated by a weight edit (else a hook); ``NeuronSetError`` where
    ``ablate_with=weights`` asks for an edit that would not be exact."""
    if spec.method == "weights":
        if spec.mode == "mean" or not _weight_editable(module, axis):
            raise NeuronSetError(
                f"layer {layer} {site} ({type(module).__name__}) cannot be ablated by a weight edit "
                f"with mode={spec.mode}; use ablate_with=hooks or auto"
            )
        return True
    return spec.method == "auto" and spec.mode != "mean" and not masked and _weight_editable(module, axis)


@contextmanager
def ablated(model: nn.Module, neuron_sets: NeuronSet | Sequence[NeuronSet], spec: AblationSpec | None = None) -> Iterator[Ablation]:
    """``with ablated(model, set): ...`` — the model is restored on exit, also after an error.

    Args:
        model, spec: as for ``apply_ablation``.
        neuron_sets: one set or several (their union is switched off).

    Yields:
        The ``Ablation`` in force.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from relspec_lmeval import NeuronSet, ablated
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        ...                                      num_attention_heads=2, num_key_value_heads=2)).eval()
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> with torch.no_grad():
        ...     plain = model(ids).logits
        ...     with ablated(model, NeuronSet.from_keys([(0, "down_proj", i) for i in range(8)])):
        ...         changed = not torch.equal(model(ids).logits, plain)
        ...     restored = torch.equal(model(ids).logits, plain)
        >>> changed, restored
        (True, True)
    """
    sets = [neuron_sets] if isinstance(neuron_sets, NeuronSet) else list(neuron_sets)
    merged = union_all(sets)
    ablation = apply_ablation(model, merged, spec)
    try:
        yield ablation
    finally:
        ablation.remove()
