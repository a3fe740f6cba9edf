"""The experts' pass with taps: transformers' eager per-expert loop, calling hooks between its steps.

A grouped experts module (``modelio.moe``) computes every expert inside one forward, so no module
hook sees one expert's gate, up or down output. While a ``modelio.moe.GroupedProj`` has a hook
(``add_tap``), the module's forward is ``tapped_forward``: the loop of ``MixtralExperts.forward``
(the same for Qwen2-MoE, Qwen3-MoE and OLMoE) that hands each tap a ``Routed``, every hit expert's
tokens and outputs, where it may edit them. ``routed_means`` is what identification records from it.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Routed", "add_tap", "routed_means", "tapped_forward"]


@dataclass
class Routed:
    """One pass's output of a grouped projection, expert by expert.

    Args:
        experts: the experts that got tokens, in the order they ran.
        tokens: each one's token positions in the flattened [B·T] batch (int64).
        outputs: each one's [tokens, channels] output; edits in place, or a tensor put in its
            place, are what the pass goes on with.
        num_tokens: B·T.
    """

    experts: list[int]
    tokens: list[torch.Tensor]
    outputs: list[torch.Tensor]
    num_tokens: int


class _Handle:
    """Removes one tap; the module's own forward comes back with the last one."""

    def __init__(self, experts: nn.Module, name: str, hook: Callable) -> None:
        self.experts, self.name, self.hook = experts, name, hook

    def remove(self) -> None:
        taps = getattr(self.experts, "_relspec_taps", None)
        if taps is None or self.hook not in taps[self.name]:
            return
        taps[self.name].remove(self.hook)
        if not any(taps.values()):
            del self.experts._relspec_taps
            self.experts.__dict__.pop("forward", None)



def add_tap(experts: nn.Module, name: str, hook: Callable) -> _Handle:
    """Call ``hook(experts, args, routed)`` in each pass of ``experts`` once its ``name`` outputs are computed.

    Args:
        experts: a grouped experts module (``modelio.moe.GROUPED_EXPERTS``).
        name: ``"gate_up_proj"`` (the hook sees each hit expert's [tokens, 2I] gate and up outputs) or
            ``"down_proj"`` ([tokens, H], before the routing weights).
        hook: called with a ``Routed``.

    Returns:
        The handle; its ``remove()`` takes the tap off (the module's own forward is back with the last one).

    Example:
        >>> import torch
        >>> from transformers import MixtralConfig, MixtralForCausalLM
        >>> from relspec_lmeval.modelio.routing import add_tap
        >>> model = MixtralForCausalLM(MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=4, num_hidden_layers=1,
        ...                                          num_attention_heads=2, num_key_value_heads=2, num_local_experts=4,
        ...                                          num_experts_per_tok=2)).eval()
        >>> seen = []
        >>> handle = add_tap(model.model.layers[0].mlp.experts, "down_proj", lambda m, a, routed: seen.append(routed))
        >>> with torch.no_grad():
        ...     _ = model(torch.tensor([[1, 2, 3]]))
        >>> handle.remove()
        >>> sum(len(t) for t in seen[0].tokens), seen[0].outputs[0].shape[-1]  # 3 tokens x top 2; hidden size 8
        (6, 8)
    """
    if "_relspec_taps" not in experts.__dict__:
        experts._relspec_taps = {"gate_up_proj": [], "down_proj": []}
        experts.forward = types.MethodType(tapped_forward, experts)
    experts._relspec_taps[name].append(hook)
    return _Handle(experts, name, hook)


def tapped_forward(experts: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
    """transformers' eager experts loop (``MixtralExperts.forward``), calling the taps of ``add_tap``.

    Args:
        experts: the grouped experts module (bound as its ``forward`` by ``add_tap``).
        hidden_states, top_k_index, top_k_weights: what the MoE block passes its experts: [B·T, H]
            tokens, each one's top-k experts and routing weights.

    Returns:
        [B·T, H]: the routed experts' weighted sum, as the eager loop computes it (the same
        operations in the same order); ``gate_up_proj`` taps run once every hit expert's gate and up
        outputs are there, ``down_proj`` taps once every down output is (before the routing weights).

    Example:
        >>> import torch
        >>> from transformers import MixtralConfig, MixtralForCausalLM
        >>> from relspec_lmeval.modelio.routing import tapped_forward
        >>> config = MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=4, num_hidden_layers=1, num_attention_heads=2,
        ...                        num_key_value_heads=2, num_local_experts=4)
        >>> config._experts_implementation = "eager"
        >>> block = MixtralForCausalLM(config).model.layers[0].mlp
        >>> x = torch.randn(5, 8)
        >>> _, weights, index = block.gate(x)
        >>> torch.equal(tapped_forward(block.experts, x, index, weights), block.experts(x, index, weights))
        True
    """
    taps = getattr(experts, "_relspec_taps", {"gate_up_proj": [], "down_proj": []})
    final = torch.zeros_like(hidden_states)
    with torch.no_grad():
        mask = nn.functional.one_hot(top_k_index, num_classes=experts.num_experts + 1).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    ids, slots, tokens, outputs = [], [], [], []
    for e in hit[:, 0].tolist():
        if e == experts.num_experts:  # expert-parallel sentinel
            continue
        slot, token = torch.where(mask[e])
        ids.append(e)
        slots.append(slot)
        tokens.append(token)
        outputs.append(nn.functional.linear(hidden_states[token], experts.gate_up_proj[e]))
    for name in ("gate_up_proj", "down_proj"):
        routed = Routed(ids, tokens, outputs, int(hidden_states.shape[0]))
        for hook in list(taps[name]):
            hook(experts, (hidden_states,), routed)
        if name == "gate_up_proj":
            outputs = []
            for e, gate_up in zip(ids, routed.outputs):
                gate, up = gate_up.chunk(2, dim=-1)
                outputs.append(nn.functional.linear(experts.act_fn(gate) * up, experts.down_proj[e]))
    for token, slot, out in zip(tokens, slots, routed.outputs):
        final.index_add_(0, token, (out * top_k_weights[token, slot, None]).to(final.dtype))
    return final


def routed_means(routed: Routed, mask: torch.Tensor, width: int, num_experts: int) -> torch.Tensor:
    """Each prompt's mean of each expert's outputs over its tokens routed to that expert (identification's values).

    Args:
        routed: an ``ExpertSite``'s outputs in one pass.
        mask: [B, T] token weights (the attention mask, in the statistics' dtype).
        width, num_experts: the site's.

    Returns:
        [B, num_experts · width]: neuron ``e * width + c`` is the mean of channel c of expert e over
        the prompt's (unpadded) tokens routed to e, and 0 where none of them is.

    Example:
        >>> import torch
        >>> from relspec_lmeval.modelio.routing import Routed, routed_means
        >>> mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # two prompts; the second's token 1 is padding
        >>> routed = Routed([1], [torch.tensor([0, 1, 3])], [torch.tensor([[2.0], [4.0], [9.0]])], 4)  # expert 1 only
        >>> routed_means(routed, mask, 1, 2).tolist()  # prompt 0: (2 + 4) / 2 at expert 1; prompt 1: its token 3 is padding
        [[0.0, 3.0], [0.0, 0.0]]
    """
    batch, length = mask.shape
    flat = mask.reshape(-1)
    sums = torch.zeros((batch, num_experts, width), dtype=mask.dtype, device=mask.device)
    counts = torch.zeros((batch, num_experts), dtype=mask.dtype, device=mask.device)
    for e, tokens, out in zip(routed.experts, routed.tokens, routed.outputs):
        tokens = tokens.to(mask.device)
        weight, rows = flat[tokens], tokens // length
        sums[:, e].index_add_(0, rows, out.to(device=mask.device, dtype=mask.dtype) * weight[:, None])
        counts[:, e].index_add_(0, rows, weight)
    return (sums / counts.clamp_min(1.0)[..., None]).reshape(batch, num_experts * width)
