"""Switching neurons off inside a transformers model, and always being able to undo it.

A set's neurons are output channels of MLP or attention projections (``modelio.sites``).
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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.lm.positions import PositionMask, check_positions
from relspec_lmeval.modelio.sites import find_mlps, model_shape, site_modules
from relspec_lmeval.sets.neuron_set import NeuronSet, union_all
from relspec_lmeval.util.suggest import did_you_mean

__all__ = [
    "METHODS", "MODES", "Ablation", "AblationSpec", "ablated", "apply_ablation", "check_factor_fits", "check_mode_fits", "planned_dtype",
]

MODES = ("zero", "scale", "mean", "dampen")
METHODS = ("auto", "weights", "hooks")


@dataclass
class AblationSpec:
    """How to switch neurons off: ``mode`` zero|scale|mean|dampen, ``factor`` (scale), ``method`` auto|weights|hooks.

    ``dampen`` multiplies each neuron's output by its own factor, stored in the set file
    (``NeuronSet.factors``, written by ``relspec dampen``: AurA's 1 − α·(2·AUROC − 1)).
    ``positions`` other than ``all`` (``lm.positions``) ablate only some token positions, by hooks.

    Raises ``NeuronSetError`` for an unknown mode or method, a missing, non-numeric (``true``
    included) or non-finite factor, or a factor given without ``mode=scale``. Whether the
    factor fits the model's dtype is checked later, where the dtype is known
    (``check_factor_fits``, ``apply_ablation``).
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


def _check_overflow(module: nn.Module, rows: torch.Tensor, layer: int, site: str, spec: AblationSpec, factors: torch.Tensor | None,
                    dtype: torch.dtype) -> None:
    """``NeuronSetError`` (before any edit) when scaling ``rows`` by the factor(s) could leave ``dtype``:
    the factor itself, or |factor| × the row's absolute sum (its output for inputs of size at most 1)."""
    scale = torch.tensor([float(spec.factor)], dtype=torch.float64) if spec.mode == "scale" else factors.to(torch.float64)
    label = f"layer {layer} {site}"
    _check_in_dtype(f"{label} factor" if spec.mode == "scale" else f"{label} dampen factor", float(scale.abs().max()), dtype)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point or weight.device.type == "meta":
        return  # quantized or offloaded: its rows cannot be read here; the factor check above still holds
    with torch.no_grad():
        sums = weight.index_select(0, rows.to(weight.device)).to(torch.float64).abs().sum(dim=1)
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor) and bias.device.type != "meta":
            sums = sums + bias.index_select(0, rows.to(bias.device)).to(torch.float64).abs()
        peak = float((sums.cpu() * scale.abs()).max())
    limit = torch.finfo(dtype).max
    if not peak <= limit:
        raise NeuronSetError(
            f"{label}: mode={spec.mode} would overflow {str(dtype).removeprefix('torch.')}: a scaled channel's output reaches "
            f"{peak:.4g} for inputs of size 1 (|factor| × its weight row's absolute sum; the largest is {limit:.4g}); "
            "use a smaller factor"
        )


def _weight_editable(module: nn.Module) -> bool:
    """True where zeroing/scaling a weight row equals zeroing/scaling the output channel."""
    if type(module) is not nn.Linear or module.bias is not None:
        return False  # subclasses: LoRA, bitsandbytes, … ; a bias would survive the edit
    weight = module.weight
    if not weight.dtype.is_floating_point or weight.device.type == "meta":
        return False  # quantized, or offloaded by accelerate (its copy is reloaded each call)
    return getattr(module, "_hf_hook", None) is None or not getattr(module._hf_hook, "offload", False)


@dataclass
class Ablation:
    """The edits and hooks applied to one model; ``remove()`` restores it."""

    weight_edits: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    hooks: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        return [name for name, used in (("weights", self.weight_edits), ("hooks", self.hooks)) if used]

    def remove(self) -> None:
        with torch.no_grad():
            for module, rows, saved in reversed(self.weight_edits):
                module.weight.index_copy_(0, rows, saved)
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


def _edit_rows(module: nn.Linear, rows: torch.Tensor, spec: AblationSpec, factors: torch.Tensor | None) -> torch.Tensor:
    """Zero or scale ``rows`` of the weight in place; returns the saved rows (the undo)."""
    with torch.no_grad():
        saved = module.weight.index_select(0, rows).clone()
        if spec.mode == "zero":
            module.weight.index_fill_(0, rows, 0.0)
        elif spec.mode == "scale":
            module.weight[rows] *= spec.factor
        else:  # dampen: each row by its factor, in float32, rounded once to the weight's dtype
            scale = factors.to(device=saved.device, dtype=torch.float32).unsqueeze(1)
            module.weight.index_copy_(0, rows, (saved.to(torch.float32) * scale).to(saved.dtype))
    return saved


def apply_ablation(
    model: nn.Module, neuron_set: NeuronSet, spec: AblationSpec | None = None, positions: PositionMask | None = None
) -> Ablation:
    """Switch ``neuron_set``'s neurons off in ``model`` (in place) and return the undo handle.

    With ``spec.positions`` other than ``all``, ``positions`` (the caller's ``PositionMask``,
    told what each forward pass holds) decides where; it is required then.

    Raises ``UnsupportedModelError`` for MLPs without separate gate/up/down projections (or an
    attention without q/k/v/o projections when the set names them) and
    ``NeuronSetError`` when the set does not fit the model or the mode cannot be applied, or
    when a ``scale``/``dampen`` factor would overflow the model's dtype (checked on every site
    before the first edit, and by a probe pass where a factor amplifies: docs/ablation.md);
    on any error the model is left as it was.
    """
    spec = spec or AblationSpec()
    find_mlps(model)
    neuron_set.validate(model_shape(model), allow_empty=True)  # callers decide whether empty is allowed
    modules = site_modules(model, neuron_set.neurons)
    check_mode_fits(neuron_set, spec)
    if spec.positions != "all" and (positions is None or positions.positions != spec.positions):
        raise NeuronSetError(f"positions={spec.positions} needs a PositionMask of the same positions (relspec-hf makes one)")
    masked = positions if spec.positions != "all" else None
    plan = [(layer, site, index, modules[(layer, site)]) for (layer, site), index in neuron_set.neurons.items()]
    weighted = [_uses_weights(module, spec, masked is not None, layer, site) for layer, site, _, module in plan]
    if spec.mode in ("scale", "dampen"):  # every site, before the first edit: the model stays untouched
        for layer, site, index, module in plan:
            _check_overflow(module, index, layer, site, spec, neuron_set.factors.get((layer, site)), _output_dtype(model, module))
    probed = _amplifies(spec, neuron_set) and _probe_finite(model, None)  # the model's own outputs are finite
    ablation = Ablation()
    try:
        if masked is not None and plan:  # before the first hooked site (sets are in forward order)
            ablation.hooks.append(plan[0][3].register_forward_pre_hook(masked.start_forward))
        for (layer, site, index, module), by_weights in zip(plan, weighted):
            if by_weights:
                rows = index.to(module.weight.device)
                saved = _edit_rows(module, rows, spec, neuron_set.factors.get((layer, site)))
                ablation.weight_edits.append((module, rows, saved))
            else:
                values = {"mean": neuron_set.means, "dampen": neuron_set.factors}.get(spec.mode, {}).get((layer, site))
                ablation.hooks.append(module.register_forward_hook(_output_hook(index, spec, values, masked)))
        if probed and _probe_finite(model, masked) is False:
            factor = f" factor={spec.factor:g}" if spec.mode == "scale" else f" with factors up to {_largest_factor(neuron_set):g}"
            raise NeuronSetError(
                f"mode={spec.mode}{factor} makes the model's outputs inf or NaN (non-finite logits on a probe of "
                f"{_PROBE_TOKENS} tokens, finite without the set), so every answer would be empty; use a smaller factor"
            )
    except BaseException:
        ablation.remove()
        raise
    return ablation


def _uses_weights(module: nn.Module, spec: AblationSpec, masked: bool, layer: int, site: str) -> bool:
    """Whether ``module`` is ablated by a weight edit (else a hook); ``NeuronSetError`` where
    ``ablate_with=weights`` asks for an edit that would not be exact."""
    if spec.method == "weights":
        if spec.mode == "mean" or not _weight_editable(module):
            raise NeuronSetError(
                f"layer {layer} {site} ({type(module).__name__}) cannot be ablated by a weight edit "
                f"with mode={spec.mode}; use ablate_with=hooks or auto"
            )
        return True
    return spec.method == "auto" and spec.mode != "mean" and not masked and _weight_editable(module)


_PROBE_TOKENS = 8


def _largest_factor(neuron_set: NeuronSet) -> float:
    return max((float(f.abs().max()) for f in neuron_set.factors.values() if f.numel()), default=0.0)


def _amplifies(spec: AblationSpec, neuron_set: NeuronSet) -> bool:
    """Whether some output is multiplied by more than 1 (only then can the edit make a finite model overflow)."""
    if spec.mode == "scale":
        return abs(spec.factor) > 1
    return spec.mode == "dampen" and _largest_factor(neuron_set) > 1


def _probe_finite(model: nn.Module, masked: PositionMask | None) -> bool | None:
    """Whether one pass over a few token ids gives finite logits; None where the model cannot be
    probed that way (no input embeddings, other inputs needed). Static checks cannot see an
    overflow that builds up downstream (a residual stream of 1e30 squared by a norm is inf)."""
    try:
        embeddings = model.get_input_embeddings()
        device = embeddings.weight.device if embeddings.weight.device.type != "meta" else torch.device("cpu")
        ids = (torch.arange(1, _PROBE_TOKENS + 1) % embeddings.num_embeddings).unsqueeze(0).to(device)
        with torch.no_grad(), (masked.probe() if masked is not None else nullcontext()):
            logits = model(input_ids=ids, use_cache=False).logits
    except Exception:  # not a transformers causal LM as we know it: the static checks are what we have
        return None
    return bool(torch.isfinite(logits).all()) if isinstance(logits, torch.Tensor) else None


def _output_dtype(model: nn.Module, module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s output: its weight's, or (a quantized weight) the model's compute dtype."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dtype.is_floating_point:
        return weight.dtype
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


@contextmanager
def ablated(model: nn.Module, neuron_sets: NeuronSet | Sequence[NeuronSet], spec: AblationSpec | None = None) -> Iterator[Ablation]:
    """``with ablated(model, set): ...`` — the model is restored on exit, also after an error."""
    sets = [neuron_sets] if isinstance(neuron_sets, NeuronSet) else list(neuron_sets)
    merged = union_all(sets)
    ablation = apply_ablation(model, merged, spec)
    try:
        yield ablation
    finally:
        ablation.remove()
