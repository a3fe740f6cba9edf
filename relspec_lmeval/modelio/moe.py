"""Mixture-of-experts MLPs: the grouped expert tensors as sites, their rows, and hooks that see each expert.

transformers 5 keeps a block's routed experts in one module (``MixtralExperts``, ``Qwen2MoeExperts``,
``Qwen3MoeExperts``, ``OlmoeExperts``: ``GROUPED_EXPERTS``) with two 3-D parameters, ``gate_up_proj``
[E, 2I, H] (each expert's gate rows, then its up rows) and ``down_proj`` [E, H, I]; the block's router
(``gate``) picks each token's top-k experts. No Linear computes one expert's output, so:

* ``GroupedProj`` is one of the two parameters seen as a 2-D weight, [E·2I, H] or [E·H, I]: row
  ``e·2I + c`` is gate channel c of expert e (up channel c is row ``e·2I + I + c``), row ``e·H + c``
  down_proj channel c. Zeroing or scaling a row is exact, as for a Linear's row (the experts have no
  bias). A forward hook on it is given a ``Routed``: for each expert hit in the pass, its tokens and
  its [tokens, rows] output (in place edits reach the computation). While a hook is on, the
  module's forward is ``modelio.routing.tapped_forward``, transformers' eager per-expert loop (what its
  ``_experts_implementation="eager"`` runs; the default ``grouped_mm`` sums in another order, so a
  hooked pass can differ from an unhooked one by rounding).
* ``ExpertSite`` is a site (``experts.gate_proj``, …): a ``GroupedProj`` and where the site's
  channels start in each expert's rows; its hooks see those channels of every expert.
* ``FlatSite`` is a shared expert's Linear (Qwen2-MoE): the block runs it on the [B·T, H] flattened
  tokens, so its hooks are given the output as a [B, T, W] view, as for any other site.

A forward pre-hook on any of them goes on the MoE block, whose input is [B, T, H].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from relspec_lmeval.errors import ModelError, UnsupportedModelError
from relspec_lmeval.modelio.routing import Routed, add_tap
from relspec_lmeval.sets.shape import EXPERT_SITES, MOE_SITES, SHARED_SITES, ModelShape

__all__ = [
    "GROUPED_EXPERTS", "MOE_BLOCKS", "ExpertSite", "FlatSite", "GroupedProj", "eager_experts_for_float64", "is_moe", "moe_site",
    "register_channel_hook",
]

# Read in transformers' code: each one's forward is the eager loop modelio.routing.tapped_forward reproduces.
GROUPED_EXPERTS = ("MixtralExperts", "Qwen2MoeExperts", "Qwen3MoeExperts", "OlmoeExperts")
MOE_BLOCKS = ("MixtralSparseMoeBlock", "Qwen2MoeSparseMoeBlock", "Qwen3MoeSparseMoeBlock", "OlmoeSparseMoeBlock")


def is_moe(mlp: nn.Module) -> bool:
    """Whether ``mlp`` is a mixture-of-experts block of ``MOE_BLOCKS`` with grouped experts of ``GROUPED_EXPERTS``.

    Args:
        mlp: a decoder layer's ``mlp``.

    Returns:
        True for Mixtral's, Qwen2-MoE's, Qwen3-MoE's and OLMoE's sparse blocks.

    Example:
        >>> from transformers import OlmoeConfig, OlmoeForCausalLM
        >>> from relspec_lmeval.modelio.moe import is_moe
        >>> model = OlmoeForCausalLM(OlmoeConfig(vocab_size=32, hidden_size=8, intermediate_size=4, num_hidden_layers=1,
        ...                                      num_attention_heads=2, num_key_value_heads=2, num_experts=4))
        >>> is_moe(model.model.layers[0].mlp), is_moe(model.model.layers[0].self_attn)
        (True, False)
    """
    experts = getattr(mlp, "experts", None)
    return type(mlp).__name__ in MOE_BLOCKS and type(experts).__name__ in GROUPED_EXPERTS


def eager_experts_for_float64(model: nn.Module) -> bool:
    """Run a float64 model's experts with transformers' eager loop: its default ``grouped_mm`` takes
    float32, bfloat16 and float16 only (a float64 pass would stop with a RuntimeError in every expert).

    Args:
        model: a loaded transformers model.

    Returns:
        Whether it was switched (a float64 model whose experts implementation was another).

    Example:
        >>> import torch
        >>> from transformers import MixtralConfig, MixtralForCausalLM
        >>> from relspec_lmeval.modelio.moe import eager_experts_for_float64
        >>> model = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=4, num_hidden_layers=1,
        ...                                          num_attention_heads=2, num_key_value_heads=2, num_local_experts=2)).double()
        >>> eager_experts_for_float64(model), model.config._experts_implementation
        (True, 'eager')
    """
    config = getattr(model, "config", None)
    current = getattr(config, "_experts_implementation", None)
    if current in (None, "eager") or getattr(model, "dtype", None) != torch.float64 or not hasattr(model, "set_experts_implementation"):
        return False
    model.set_experts_implementation("eager")
    return True


class _Handles:
    def __init__(self, *handles: Any) -> None:
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass(frozen=True, eq=False)
class GroupedProj:
    """One grouped parameter of an experts module (``gate_up_proj`` or ``down_proj``) as a 2-D weight of rows.

    Args:
        block: the MoE block (its input is [B, T, H]: where pre-hooks go).
        experts: its experts module.
        name: ``"gate_up_proj"`` or ``"down_proj"``.

    Example:
        >>> import torch
        >>> from transformers import MixtralConfig, MixtralForCausalLM
        >>> from relspec_lmeval.modelio.moe import GroupedProj
        >>> model = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=6, num_hidden_layers=1,
        ...                                          num_attention_heads=2, num_key_value_heads=2, num_local_experts=4))
        >>> block = model.model.layers[0].mlp
        >>> down = GroupedProj(block, block.experts, "down_proj")
        >>> down.weight.shape, down.rows_per_expert  # 4 experts x 8 rows of width 6
        (torch.Size([32, 6]), 8)
    """

    block: nn.Module
    experts: nn.Module
    name: str
    bias: None = field(default=None, init=False)

    @property
    def parameter(self) -> torch.Tensor:
        return getattr(self.experts, self.name)

    @property
    def rows_per_expert(self) -> int:
        return int(self.parameter.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.parameter.shape[0]) * self.rows_per_expert

    @property
    def weight(self) -> torch.Tensor:
        """The parameter's storage as [E·rows, in] (a view: edits in place change the experts)."""
        param = self.parameter.detach()
        return param.view(-1, param.shape[-1])

    @property
    def weight_editable(self) -> bool:
        """Whether a row edit reaches the experts (a float parameter in memory, not offloaded)."""
        param = self.parameter
        hook = getattr(self.experts, "_hf_hook", None)
        return param.dtype.is_floating_point and param.device.type != "meta" and not getattr(hook, "offload", False)

    def register_forward_hook(self, hook: Callable) -> Any:
        """``hook(experts, args, routed)`` once per pass, ``routed`` a ``Routed`` of this parameter's outputs."""
        return add_tap(self.experts, self.name, hook)

    def register_forward_pre_hook(self, hook: Callable) -> torch.utils.hooks.RemovableHandle:
        return self.block.register_forward_pre_hook(hook)


@dataclass(frozen=True, eq=False)
class ExpertSite:
    """A routed experts' site: channels ``start`` to ``start + width`` of each expert's rows of ``proj``.

    Args:
        proj: the ``GroupedProj`` (gate_up_proj for ``experts.gate_proj`` (start 0) and
            ``experts.up_proj`` (start I), down_proj for ``experts.down_proj``).
        start: where the site's channels start in an expert's rows.
        width: an expert's channels at the site (its neuron ``e * width + c``).
    """

    proj: GroupedProj
    start: int
    width: int
    bias: None = field(default=None, init=False)

    @property
    def num_experts(self) -> int:
        return int(self.proj.parameter.shape[0])

    @property
    def out_features(self) -> int:
        return self.num_experts * self.width

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The site's neurons ``index`` as rows of ``proj.weight``."""
        expert, channel = index // self.width, index % self.width
        return expert * self.proj.rows_per_expert + self.start + channel

    def register_forward_hook(self, hook: Callable) -> Any:
        """``hook(experts, args, routed)`` with each expert's [tokens, width] outputs of this site (views)."""
        start, stop = self.start, self.start + self.width

        def sliced(module: nn.Module, args: Any, routed: Routed) -> None:
            hook(module, args, Routed(routed.experts, routed.tokens, [out[:, start:stop] for out in routed.outputs], routed.num_tokens))

        return self.proj.register_forward_hook(sliced)

    def register_forward_pre_hook(self, hook: Callable) -> torch.utils.hooks.RemovableHandle:
        return self.proj.register_forward_pre_hook(hook)


@dataclass(frozen=True, eq=False)
class FlatSite:
    """A shared expert's Linear, whose hooks see its [B·T, W] output as [B, T, W].

    Args:
        block: the MoE block (its input's [B, T] gives the view's shape).
        linear: the shared expert's gate_proj, up_proj or down_proj.
    """

    block: nn.Module
    linear: nn.Module

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.linear, "bias", None)

    @property
    def out_features(self) -> int:
        return int(self.linear.out_features)

    def register_forward_hook(self, hook: Callable) -> _Handles:
        shape: list[tuple[int, int]] = []

        def remember(module: nn.Module, args: Any) -> None:
            shape[:] = [tuple(args[0].shape[:2])]

        def viewed(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            out = output.view(*shape[0], output.shape[-1]) if shape and output.dim() == 2 else output
            result = hook(module, args, out)
            if isinstance(result, torch.Tensor) and result is not out and result.data_ptr() != out.data_ptr():
                output.copy_(result.reshape(output.shape))

        return _Handles(self.block.register_forward_pre_hook(remember), self.linear.register_forward_hook(viewed))

    def register_forward_pre_hook(self, hook: Callable) -> torch.utils.hooks.RemovableHandle:
        return self.block.register_forward_pre_hook(hook)


def moe_site(mlp: nn.Module, index: int, site: str, shape: ModelShape, kind: str) -> ExpertSite | FlatSite:
    """The site of a mixture-of-experts block (``is_moe``), its grouped tensors' shapes checked against the config.

    Args:
        mlp: layer ``index``'s block.
        site: a site of ``sets.shape.MOE_SITES``.
        shape: the model's (its expert widths).
        kind: the model type, for the errors.

    Returns:
        An ``ExpertSite`` (``experts.*``) or a ``FlatSite`` (``shared_expert.*``). Raises
        ``UnsupportedModelError`` for a site the block lacks or experts of another layout,
        ``ModelError`` for tensors of other shapes than the config's.

    Example:
        >>> import torch
        >>> from transformers import MixtralConfig, MixtralForCausalLM
        >>> from relspec_lmeval.modelio.moe import moe_site
        >>> from relspec_lmeval.modelio.sites import model_shape
        >>> model = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=4, num_hidden_layers=1,
        ...                                          num_attention_heads=2, num_key_value_heads=2, num_local_experts=4))
        >>> up = moe_site(model.model.layers[0].mlp, 0, "experts.up_proj", model_shape(model), "mixtral")
        >>> up.start, up.width, up.out_features, up.rows(torch.tensor([5])).tolist()  # expert 1's channel 1: its row 4 + 1
        (4, 4, 16, [13])
    """
    if site not in MOE_SITES or (site in SHARED_SITES and not isinstance(getattr(mlp, "shared_expert", None), nn.Module)):
        own = [s for s in MOE_SITES if s in EXPERT_SITES or hasattr(mlp, "shared_expert")]
        raise UnsupportedModelError(
            f"model type {kind!r} has a mixture-of-experts MLP (layer {index}, {type(mlp).__name__}) without {site}; "
            f"its FFN sites are {', '.join(own)}"
        )
    part = site.split(".")[1]
    if site in SHARED_SITES:
        return FlatSite(mlp, getattr(mlp.shared_expert, part))
    experts = mlp.experts
    inner, hidden, count = shape.expert_intermediate_size, shape.hidden_size, shape.num_experts
    for name, want in (("gate_up_proj", (count, 2 * inner, hidden)), ("down_proj", (count, hidden, inner))):
        got = tuple(getattr(experts, name).shape)
        if got != want:
            raise ModelError(f"layer {index} experts.{name} has shape {list(got)}, but the config gives {list(want)}; "
                             "relspec cannot place its neurons in this model")
    for flag, want in (("has_gate", True), ("has_bias", False), ("is_transposed", False), ("is_concatenated", True),
                       ("has_post_expert_norm", False)):
        if getattr(experts, flag, want) != want:
            raise UnsupportedModelError(f"model type {kind!r}: layer {index}'s experts have {flag}={not want}, "
                                        "which relspec has not read")
    proj = GroupedProj(mlp, experts, "down_proj" if part == "down_proj" else "gate_up_proj")
    return ExpertSite(proj, inner if part == "up_proj" else 0, hidden if part == "down_proj" else inner)


class _Tokens:
    """A position mask (``lm.positions.PositionMask``'s ``on``) at one expert's tokens."""

    def __init__(self, positions: Any) -> None:
        self.positions = positions
        self.tokens: torch.Tensor | None = None

    def on(self, device: torch.device) -> torch.Tensor | bool | None:
        where = self.positions.on(device)
        if not isinstance(where, torch.Tensor):
            return where
        return where.reshape(-1)[self.tokens.to(device)]


def register_channel_hook(module: Any, index: torch.Tensor, values: torch.Tensor | None, positions: Any,
                          make_hook: Callable[[torch.Tensor, torch.Tensor | None, Any], Callable]) -> Any:
    """A hook that edits output channels ``index`` of ``module`` (an entry of ``modelio.sites.channels``).

    Args:
        module: a Linear, a ``FlatSite`` or a ``GroupedProj``.
        index: its output channels (a ``GroupedProj``'s rows).
        values: one per channel (means or factors), or None.
        positions: a position mask with ``on(device)``, or None.
        make_hook: ``(channels, values, positions) -> hook(module, args, output)`` editing ``output [..., channels]``.

    Returns:
        The handle. A ``GroupedProj``'s channels are split by expert; each expert's hook edits its
        [tokens, rows] output, the position mask read at its tokens.

    Example:
        >>> import torch
        >>> from transformers import MixtralConfig, MixtralForCausalLM
        >>> from relspec_lmeval.modelio.moe import GroupedProj, register_channel_hook
        >>> model = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=4, num_hidden_layers=1,
        ...                                          num_attention_heads=2, num_key_value_heads=2, num_local_experts=2)).eval()
        >>> block = model.model.layers[0].mlp
        >>> down = GroupedProj(block, block.experts, "down_proj")
        >>> def zero(index, values, positions):  # every expert's down_proj output channels
        ...     return lambda module, args, out: out.index_fill_(-1, index, 0.0)
        >>> handle = register_channel_hook(down, torch.arange(down.out_features), None, None, zero)
        >>> with torch.no_grad():
        ...     silent = block(torch.randn(1, 3, 8))
        >>> handle.remove()
        >>> bool(silent.eq(0).all()), "forward" in block.experts.__dict__
        (True, False)
    """
    if not isinstance(module, GroupedProj):
        return module.register_forward_hook(make_hook(index, values, positions))
    per_expert: dict[int, tuple[Callable, _Tokens | None]] = {}
    rows = module.rows_per_expert
    for e in torch.unique(index // rows).tolist():
        mine = index // rows == e
        where = _Tokens(positions) if positions is not None else None
        per_expert[e] = (make_hook(index[mine] - e * rows, None if values is None else values[mine], where), where)

    def hook(experts: nn.Module, args: Any, routed: Routed) -> None:
        for j, (e, tokens) in enumerate(zip(routed.experts, routed.tokens)):
            if e in per_expert:
                edit, where = per_expert[e]
                if where is not None:
                    where.tokens = tokens
                result = edit(experts, args, routed.outputs[j])
                if isinstance(result, torch.Tensor):
                    routed.outputs[j] = result

    return module.register_forward_hook(hook)
