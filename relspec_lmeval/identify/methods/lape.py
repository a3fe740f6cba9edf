"""``--method lape`` (Tang et al., ACL 2024): language-activation-probability entropy, for relations.

Tang et al.'s neuron is one channel of ``act_fn(gate_proj(x))`` (the gate activation before
it multiplies ``up_proj``'s output; intermediate width), and its statistic per class is the
*activation probability*: the share of the class's tokens where that activation is > 0
(for SiLU and GELU the same as gate_proj(x) > 0). Here a class is a relation and its tokens
are those of its prompts (BOS included, padding excluded). From the probabilities
p[r, n] (relations × L·I neurons, flat order layer-major as in Tang's ``[layer, inter]``):

* LAPE(n) = −Σ_r p'[r, n] log p'[r, n] with p' = p / Σ_r p (a neuron never active has
  p' = 0 and LAPE 0, as in their code); low entropy = specific to few relations.
* filter: a neuron is kept only if some p[r, n] exceeds the ``filter_rate`` quantile of
  all probabilities (all relations, all neurons; 0.95); others are dismissed.
* selection: the round(``top_rate`` · L·I) kept neurons of lowest LAPE (0.01), each
  assigned to *every* relation whose p exceeds the ``activation_bar_ratio`` quantile (0.95).
* score for relation r (``lape_scores``): −LAPE where the neuron is kept and p[r, n] is above
  the bar, −inf elsewhere; the top-|set| of it is the faithful set (``Lape.selected``).

Code: RUCAIBox/Language-Specific-Neurons ``identify.py`` (this follows it; what differs is
in docs/identification.md, "Other scores"). ``active_counts`` is the statistics pass: one
forward hook per gate_proj counts active tokens per relation, exact integers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from relspec_lmeval.errors import ModelError, UnsupportedModelError, UsageError
from relspec_lmeval.identify.activations import HookedRecorder, Processes, forward_kwargs, input_device
from relspec_lmeval.identify.methods.registry import LAPE_BAR_RATIO, LAPE_FILTER_RATE, LAPE_SITE, LAPE_TOP_RATE
from relspec_lmeval.identify.tokens import length_batches, pad_batch
from relspec_lmeval.modelio.sites import find_mlps, site_modules
from relspec_lmeval.sets.shape import ModelShape
from relspec_lmeval.util.progress import progress as progress_bar

__all__ = [
    "ActiveCountRecorder",
    "Lape",
    "activation_probability",
    "active_counts",
    "lape",
    "lape_entropy",
    "lape_scores",
    "lape_site_scores",
    "LapeRun",
]

def activation_probability(counts_active: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
    """p[r, n] = counts_active[r, n] / token_counts[r]: float64 [relations, neurons].

    ``counts_active``: tokens of relation r where neuron n was active (any collector);
    ``token_counts``: relation r's tokens. Counts must be whole, 0 ≤ active ≤ tokens, tokens > 0.
    """
    counts = torch.as_tensor(counts_active)
    tokens = torch.as_tensor(token_counts).flatten()
    if counts.dim() != 2 or counts.shape[0] != tokens.numel():
        raise UsageError(f"counts must be [relations, neurons] with one token count per relation, got {tuple(counts.shape)} and {tokens.numel()}")
    counts, tokens = counts.to(torch.float64), tokens.to(torch.float64)
    if bool((tokens <= 0).any()) or bool((counts < 0).any()) or bool((counts > tokens[:, None]).any()):
        raise UsageError("activation counts must satisfy 0 ≤ active ≤ tokens, with tokens > 0 for every relation")
    if not (torch.equal(counts, counts.round()) and torch.equal(tokens, tokens.round())):
        raise UsageError("activation counts must be whole numbers")
    return counts / tokens[:, None]


def _check_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    p = torch.as_tensor(probabilities).to(torch.float64)
    if p.dim() != 2 or p.shape[0] < 1 or p.shape[1] < 1:
        raise UsageError(f"probabilities must be [relations, neurons], got shape {tuple(p.shape)}")
    if bool(torch.isnan(p).any()) or bool(((p < 0) | (p > 1)).any()):
        raise UsageError("activation probabilities must lie in [0, 1] (no NaN)")
    return p


def lape_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """LAPE of every neuron: the entropy of its probabilities normalised over relations (float64 [neurons]).

    Each neuron's values are sorted before the sums (running sums, in order), so two neurons
    whose probabilities are the same multiset get bitwise the same entropy: their tie is real.
    """
    p = torch.sort(_check_probabilities(probabilities), dim=0).values
    total = torch.cumsum(p, dim=0)[-1]
    q = torch.where(total > 0, p / torch.where(total > 0, total, 1.0), 0.0)
    terms = torch.where(q > 0, q * torch.log(torch.where(q > 0, q, 1.0)), 0.0)
    return -torch.cumsum(terms, dim=0)[-1]


def _quantile_value(sorted_flat: torch.Tensor, rate: float) -> float:
    # torch.kthvalue(round(numel · rate)) as Tang's code takes it: the k-th smallest, 1-based
    k = min(max(round(sorted_flat.numel() * rate), 1), sorted_flat.numel())
    return float(sorted_flat[k - 1])


@dataclass(frozen=True)
class Lape:
    """LAPE of every neuron and Tang et al.'s selection, for R relations and N = L·I neurons."""

    entropy: torch.Tensor  # float64 [N]: LAPE
    kept: torch.Tensor  # bool [N]: some relation's p above the filter quantile
    assigned: torch.Tensor  # bool [R, N]: kept and p[r] above the activation bar
    selected: torch.Tensor  # bool [R, N]: Tang's sets: assigned and among the lowest-LAPE top_rate of neurons
    filter_value: float  # the filter quantile of all probabilities
    activation_bar: float  # the assignment quantile of all probabilities

    @property
    def scores(self) -> torch.Tensor:
        """float64 [R, N]: −LAPE where assigned to the relation, −inf elsewhere (higher = more specific)."""
        return torch.where(self.assigned, -self.entropy.unsqueeze(0), -math.inf)


def lape(probabilities: torch.Tensor, *, top_rate: float = LAPE_TOP_RATE, filter_rate: float = LAPE_FILTER_RATE,
         activation_bar_ratio: float = LAPE_BAR_RATIO) -> Lape:
    """LAPE and Tang et al.'s neuron selection from ``probabilities`` [relations, neurons].

    Quantiles are Tang's ``kthvalue(round(R·N·rate))`` of all R·N probabilities; "above" is
    strict. The ``top_rate`` share is round(N·top_rate) neurons, taken among the kept ones
    only (Tang's ``topk`` could reach dismissed ones when fewer are kept; they are then
    assigned to no relation when ``filter_rate`` ≤ ``activation_bar_ratio``); ties in LAPE go
    to the lower flat index (layer, channel), where Tang's ``topk`` leaves them unspecified.
    """
    for name, rate in (("top_rate", top_rate), ("filter_rate", filter_rate), ("activation_bar_ratio", activation_bar_ratio)):
        if not 0.0 <= float(rate) <= 1.0:
            raise UsageError(f"LAPE {name} must be in [0, 1], got {rate}")
    p = _check_probabilities(probabilities)
    entropy = lape_entropy(p)
    sorted_flat = torch.sort(p.flatten()).values
    filter_value = _quantile_value(sorted_flat, filter_rate)
    bar = _quantile_value(sorted_flat, activation_bar_ratio)
    kept = (p > filter_value).any(dim=0)
    assigned = kept.unsqueeze(0) & (p > bar)
    n_select = min(round(p.shape[1] * top_rate), int(kept.sum()))
    order = torch.argsort(torch.where(kept, entropy, math.inf), stable=True)  # lowest LAPE first, ties by index
    chosen = torch.zeros(p.shape[1], dtype=torch.bool)
    chosen[order[:n_select]] = True
    return Lape(entropy, kept, assigned, assigned & chosen.unsqueeze(0), filter_value, bar)


def lape_scores(probabilities: torch.Tensor, **params: Any) -> torch.Tensor:
    """``lape(probabilities, **params).scores``: float64 [relations, neurons]."""
    return lape(probabilities, **params).scores


def lape_site_scores(layout: ModelShape, scores: torch.Tensor, site: str = LAPE_SITE, fill: float = -math.inf) -> torch.Tensor:
    """Per-gate-neuron values ([..., L·I], layer-major) → our flat neuron order ([..., layout.total]).

    LAPE's neuron n = layer·I + j is channel j of ``site`` (gate_proj: the channel whose
    act_fn output is thresholded; up_proj's channel j multiplies it, so zeroing either
    silences the neuron); every other site gets ``fill``.
    """
    if site not in ("gate_proj", "up_proj"):
        raise UsageError(f"LAPE neurons have the intermediate width: report them on gate_proj or up_proj, not {site!r}")
    width = layout.intermediate_size
    if scores.shape[-1] != layout.num_layers * width:
        raise UsageError(f"expected {layout.num_layers * width} LAPE neurons (layers × intermediate size), got {scores.shape[-1]}")
    out = torch.full((*scores.shape[:-1], layout.total), fill, dtype=scores.dtype)
    for layer in range(layout.num_layers):
        offset = layout.offset(layer, site)
        out[..., offset : offset + width] = scores[..., layer * width : (layer + 1) * width]
    return out


# ---------------------------------------------------------------------------- the counting pass


class ActiveCountRecorder(HookedRecorder):
    """Forward hooks on every gate_proj that count, per group (relation) and gate neuron,
    the non-padding tokens where ``mlp.act_fn(gate_proj(x)) > 0``.

    Usage: ``with ActiveCountRecorder(model, layout, groups) as rec: rec.arm(mask, group);
    model(...); rec.check()``; ``rec.counts`` int64 [groups, L·I], ``rec.tokens`` int64
    [groups]. Exact integer counts; only the first call of each hook after ``arm`` counts.
    """

    def __init__(self, model: nn.Module, layout: ModelShape, groups: int, device: torch.device | None = None) -> None:
        self.layout = layout
        self.device = device or input_device(model)
        self.mlps = find_mlps(model)
        if len(self.mlps) != layout.num_layers:
            raise ModelError(f"model has {len(self.mlps)} MLP layers, layout expects {layout.num_layers}")
        # a fused MLP's gate_proj is the first half of its gate_up_proj (Phi-3 names its activation activation_fn)
        self.gates = site_modules(model, [(layer, "gate_proj") for layer in range(layout.num_layers)])
        self.acts = [getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn", None) for mlp in self.mlps]
        for i, (mlp, act) in enumerate(zip(self.mlps, self.acts)):
            if not callable(act):
                raise UnsupportedModelError(f"layer {i}'s MLP ({type(mlp).__name__}) has no act_fn: LAPE needs act_fn(gate_proj(x))")
        width = layout.intermediate_size
        self.counts = torch.zeros((groups, layout.num_layers * width), dtype=torch.int64, device=self.device)
        self.tokens = torch.zeros(groups, dtype=torch.int64, device=self.device)
        self.handles: list[Any] = []
        self._pending: set[int] = set()
        self._mask: torch.Tensor | None = None
        self._group: torch.Tensor | None = None

    def install(self) -> None:
        for layer, act in enumerate(self.acts):
            self.handles.append(self.gates[(layer, "gate_proj")].register_forward_hook(self._hook(layer, act)))

    def arm(self, attention_mask: torch.Tensor, group: torch.Tensor) -> None:
        """Prepare for one batch: its mask [batch, tokens] and each prompt's group index [batch]."""
        group = torch.as_tensor(group, dtype=torch.int64).flatten()
        if group.numel() != attention_mask.shape[0]:
            raise UsageError(f"{group.numel()} group indices for a batch of {attention_mask.shape[0]}")
        if group.numel() and (int(group.min()) < 0 or int(group.max()) >= self.tokens.numel()):
            raise UsageError(f"group indices must be in [0, {self.tokens.numel()})")
        self._mask, self._group = attention_mask, group.to(self.device)
        self._pending = set(range(self.layout.num_layers))

    def check(self) -> None:
        """After the forward pass: every layer counted; adds the batch's tokens to ``tokens``."""
        if self._pending:
            raise RuntimeError(f"{len(self._pending)} gate_proj layers produced no output in the forward pass")
        assert self._mask is not None and self._group is not None
        self.tokens.index_add_(0, self._group, self._mask.to(self.device).sum(dim=1).to(torch.int64))

    def _hook(self, layer: int, act_fn: Callable) -> Callable:
        width = self.layout.intermediate_size

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if layer not in self._pending:
                return None
            out = output[0] if isinstance(output, tuple) else output
            assert self._mask is not None and self._group is not None
            if out.dim() != 3 or tuple(out.shape[:2]) != tuple(self._mask.shape):
                return None  # not the prompts' forward
            self._pending.discard(layer)
            keep = self._mask.to(device=out.device, dtype=torch.bool).unsqueeze(-1)
            per_prompt = ((act_fn(out) > 0) & keep).sum(dim=1)  # int64 [batch, width]
            self.counts[:, layer * width : (layer + 1) * width].index_add_(0, self._group, per_prompt.to(self.device))
            return None

        return hook


@torch.inference_mode()
def active_counts(
    model: nn.Module,
    encoded: Sequence[Sequence[int]],
    groups: Sequence[int],
    num_groups: int,
    layout: ModelShape,
    *,
    batch_size: int,
    pad_id: int,
    processes: Processes | None = None,
    desc: str = "active counts",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts int64 [num_groups, L·I], tokens int64 [num_groups]) on the CPU: per group of
    prompts (``groups[i]`` = prompt i's relation index), the tokens where each gate neuron
    was active and the number of tokens; right padding, BOS included, padding excluded."""
    if len(groups) != len(encoded):
        raise UsageError(f"{len(groups)} group indices for {len(encoded)} prompts")
    processes = processes or Processes()
    device = input_device(model)
    kwargs = forward_kwargs(model)
    mine = processes.mine(length_batches(encoded, batch_size))
    with ActiveCountRecorder(model, layout, num_groups, device) as recorder, progress_bar(
        sum(len(b) for b in mine), desc, progress and processes.is_main, leave=False
    ) as bar:
        for rows in mine:
            ids, mask = pad_batch([encoded[i] for i in rows], pad_id, "right", device)
            recorder.arm(mask, torch.tensor([groups[i] for i in rows], dtype=torch.int64))
            model(input_ids=ids, attention_mask=mask, **kwargs)
            recorder.check()
            bar.update(len(rows))
    counts, tokens = recorder.counts, recorder.tokens
    if processes.world > 1:
        counts, tokens = processes.sum(counts), processes.sum(tokens)
    return counts.cpu(), tokens.cpu()


@dataclass
class LapeRun:
    """``identify --method lape``: one counting pass over every relation's prompts, then LAPE."""

    result: Lape
    relations: list[str]
    tokens: torch.Tensor  # int64 [relations]: the tokens each relation's probabilities are over

    @classmethod
    def count(cls, model: nn.Module, encoded: dict[str, list[list[int]]], layout: ModelShape, **kwargs: Any) -> LapeRun:
        """``encoded``: each relation's prompts (all of its P^det: LAPE has no correctness check)."""
        relations = list(encoded)
        prompts = [ids for r in relations for ids in encoded[r]]
        groups = [n for n, r in enumerate(relations) for _ in encoded[r]]
        counts, tokens = active_counts(model, prompts, groups, len(relations), layout, **kwargs)
        return cls(lape(activation_probability(counts, tokens)), relations, tokens)

    def relation_scores(self, layout: ModelShape, relation: str) -> tuple[torch.Tensor, int]:
        """Every neuron's score for ``relation`` in our flat order, and the size of Tang's set for it."""
        r = self.relations.index(relation)
        return lape_site_scores(layout, self.result.scores[r]), int(self.result.selected[r].sum())
