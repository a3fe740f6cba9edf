"""The scores ``relspec identify --method`` can rank neurons by, and AurA's dampening factors.

Two-class scores work on the statistics pass's matrix ``[prompts, neurons]`` (each neuron's
output averaged over each prompt's tokens) and boolean labels (the relation's positives vs
the negatives); higher always means "more specific to the positives", as for AP:

* ``ap``: average precision, the paper's score (``identify.ap``).
* ``auroc``: area under the ROC curve, P(v_pos > v_neg) + ½·P(v_pos = v_neg) over all
  (positive, negative) pairs (Mann-Whitney U / (P·N); equal to
  ``sklearn.metrics.roc_auc_score``, ties included). AurA's score (Suau et al., ICML 2024),
  here of the per-prompt means (AurA max-pools over tokens).
* ``mean-diff``: mean over positives − mean over negatives, unnormalised (Antverg &
  Belinkov, ICLR 2022, "probeless": their binary case is the absolute value of this).

``lape`` (Tang et al., ACL 2024) is multi-class: it needs, per relation, how often each gate
neuron is active over the relation's tokens, not this matrix (``identify.lape``).

All are computed for a chunk of neurons at once (no Python loop over neurons) under a
memory budget; on a CPU the result does not depend on the chunk size, bit for bit (AUROC is
an exact integer count divided once; mean-diff sums along the prompts in order).
docs/identification.md, "Other scores", has the formulas, citations and what differs from
the originals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from relspec_lmeval.errors import UsageError
from relspec_lmeval.identify.ap import average_precision_chunked, chunked_scores
from relspec_lmeval.identify.lape import lape_scores

__all__ = [
    "AUROC_BYTES_PER_ELEMENT",
    "DEFAULT_METHOD",
    "MEAN_DIFF_BYTES_PER_ELEMENT",
    "METHODS",
    "Method",
    "auroc",
    "auroc_chunked",
    "dampen_factors",
    "mean_difference",
    "mean_difference_chunked",
    "two_class_scores",
]

# Working memory per (prompt, neuron) element: keys, sorted keys, labels, counts, tie-group
# starts (cummax values and indices) and the per-position contributions.
AUROC_BYTES_PER_ELEMENT = 96
MEAN_DIFF_BYTES_PER_ELEMENT = 24  # a float64 copy and its running sum


def _check(values: torch.Tensor, labels: torch.Tensor, what: str) -> tuple[torch.Tensor, int, int]:
    if values.dim() != 2:
        raise UsageError(f"values must be [prompts, neurons], got shape {tuple(values.shape)}")
    labels = labels.to(device=values.device, dtype=torch.bool).flatten()
    if labels.numel() != values.shape[0]:
        raise UsageError(f"{labels.numel()} labels for {values.shape[0]} prompts")
    positives = int(labels.sum())
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        raise UsageError(f"{what} needs at least one positive and one negative prompt, got {positives} and {negatives}")
    return labels, positives, negatives


# ---------------------------------------------------------------------------- AUROC


def _sorted_with_labels(values: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each neuron's values sorted ascending ([neurons, prompts]) and the label at each
    position (int32), negatives before positives inside every group of tied values."""
    if values.dtype == torch.float64:
        # negatives first, then a stable sort: ties keep negatives before positives
        order = torch.argsort(labels.to(torch.int8), stable=True)
        ordered = values[order].t()
        sorted_values, index = torch.sort(ordered, dim=1, stable=True)
        return sorted_values, labels[order].to(torch.int32)[index]
    # float32 and narrower: one int64 key 2·(order-preserving int of the value) + label per
    # element, sorted as plain integers (labels travel with the values; -0.0 + 0.0 = 0.0 ties)
    x = (values.to(torch.float32) + 0.0).t().contiguous()
    bits = x.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64).mul_(2).add_(labels.to(torch.int64))
    del x, bits
    if ordered.device.type == "cpu":
        import numpy as np

        keys = torch.from_numpy(np.sort(ordered.numpy(), axis=1))
    else:
        keys = torch.sort(ordered, dim=1).values
    return keys >> 1, (keys & 1).to(torch.int32)


def auroc(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AUROC of every column of ``values`` [prompts, neurons] as a score for ``labels``.

    AUROC = (1/(P·N)) Σ over positives p of (#negatives < v_p + ½ #negatives = v_p), the
    Mann-Whitney statistic with ties counted half: the same number as
    ``sklearn.metrics.roc_auc_score``. Twice the sum is an exact integer; one float64
    division gives the result. Needs a positive and a negative. Returns float64 [neurons].
    """
    labels, positives, negatives = _check(values, labels, "AUROC")
    n, cols = values.shape
    if cols == 0:
        return torch.zeros(0, dtype=torch.float64, device=values.device)
    sorted_values, is_positive = _sorted_with_labels(values, labels)
    is_negative = 1 - is_positive
    negatives_through = torch.cumsum(is_negative, dim=1, dtype=torch.int32)  # negatives at or before each position
    # A positive's count: the negatives below its tie group, plus half of those inside it.
    # Inside a group the negatives come first, so at a positive's position the running count
    # is (below) + (all of the group's negatives): 2·count = below + running count.
    below = negatives_through - is_negative
    tied = sorted_values[:, 1:] == sorted_values[:, :-1]
    if bool(tied.any()):
        ranks = torch.arange(n, device=sorted_values.device)
        starts = torch.ones_like(sorted_values, dtype=torch.bool)
        starts[:, 1:] = ~tied
        first = torch.cummax(torch.where(starts, ranks, 0), dim=1).values  # start of each tie group
        below = torch.gather(below, 1, first)
    del sorted_values, tied
    twice_u = ((below + negatives_through) * is_positive).sum(dim=1, dtype=torch.int64)
    return twice_u.to(torch.float64) / float(2 * positives * negatives)


# ---------------------------------------------------------------------------- mean difference


def mean_difference(values: torch.Tensor, labels: torch.Tensor, *, absolute: bool = False) -> torch.Tensor:
    """mean(v over positives) − mean(v over negatives) of every column, float64 [neurons].

    Antverg & Belinkov (2022)'s probeless ranking is |that| (for two classes their sum of
    pairwise absolute differences of class means has one term), with no normalisation;
    ``absolute=True`` gives it. The default keeps the sign, so that, as with AP, the top of
    the ranking is the neurons more active on the relation and ``select=both``'s bottom the
    ones less active. The sums run along the prompts in order (float64), so the result
    does not depend on how many neurons are computed together.
    """
    labels, positives, negatives = _check(values, labels, "mean-diff")
    x = values.to(torch.float64)
    mean_pos = torch.cumsum(x[labels], dim=0)[-1] / positives
    mean_neg = torch.cumsum(x[~labels], dim=0)[-1] / negatives
    diff = mean_pos - mean_neg
    return diff.abs() if absolute else diff


# ---------------------------------------------------------------------------- chunked


def auroc_chunked(
    values: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    budget_bytes: int = 1 << 30,
    progress: Any = None,
) -> torch.Tensor:
    """``auroc`` over column chunks moved to ``device`` one at a time; float64 on the CPU."""
    _check(values, labels, "AUROC")
    return chunked_scores(auroc, AUROC_BYTES_PER_ELEMENT, values, labels, device=device, budget_bytes=budget_bytes, progress=progress)


def mean_difference_chunked(
    values: torch.Tensor,
    labels: torch.Tensor,
    *,
    absolute: bool = False,
    device: torch.device | str | None = None,
    budget_bytes: int = 1 << 30,
    progress: Any = None,
) -> torch.Tensor:
    """``mean_difference`` over column chunks moved to ``device`` one at a time; float64 on the CPU."""
    _check(values, labels, "mean-diff")

    def score(block: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        return mean_difference(block, lab, absolute=absolute)

    return chunked_scores(score, MEAN_DIFF_BYTES_PER_ELEMENT, values, labels, device=device, budget_bytes=budget_bytes,
                          progress=progress)


# ---------------------------------------------------------------------------- AurA's intervention


def dampen_factors(auroc: torch.Tensor, alpha: float = 1.0, threshold: float = 0.5) -> torch.Tensor:
    """AurA's per-neuron output multipliers from AUROC scores (float64, same shape).

    factor = 1 − α·Gini = 1 − α·(2·AUROC − 1) where AUROC > ``threshold``, else 1. With
    α = 1 and threshold 0.5 this is AurA exactly (Suau et al., "Whispering Experts", ICML
    2024; apple/ml-aura ``scripts/learn_aura.py``: ``alpha = 1 - 2 * (auroc - 0.5)`` for
    ``auroc > 0.5``): a neuron that separates perfectly (AUROC 1) is silenced, one at
    chance is left alone. AurA has no free α; α ∈ [0, 1] scales the dampening down (ours).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise UsageError(f"dampening alpha must be in [0, 1], got {alpha}")
    scores = torch.as_tensor(auroc).to(torch.float64)
    if bool(torch.isnan(scores).any()) or bool(((scores < 0) | (scores > 1)).any()):
        raise UsageError("AUROC scores must lie in [0, 1] (no NaN)")
    gini = 2.0 * scores - 1.0
    return torch.where(scores > threshold, 1.0 - float(alpha) * gini, torch.ones_like(scores))


# ---------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Method:
    """One ``--method``: what it needs, how it is computed, where it comes from."""

    name: str
    kind: str  # "two-class": f(matrix [prompts, neurons], labels) → [neurons]; "multi-class": see identify.lape
    needs: str  # "prompt-means" (the statistics pass's matrix) or "active-counts" (identify.lape.active_counts)
    score: Callable[..., torch.Tensor]
    selects: tuple[str, ...]  # the --select modes that mean something for it
    citation: str


DEFAULT_METHOD = "ap"
METHODS: dict[str, Method] = {
    "ap": Method("ap", "two-class", "prompt-means", average_precision_chunked, ("top", "both"),
                 "Liu et al. 2025, arXiv 2502.17355 (average precision)"),
    "auroc": Method("auroc", "two-class", "prompt-means", auroc_chunked, ("top", "both"),
                    "Suau et al., Whispering Experts, ICML 2024 (AurA)"),
    "mean-diff": Method("mean-diff", "two-class", "prompt-means", mean_difference_chunked, ("top", "both"),
                        "Antverg & Belinkov, On the Pitfalls of Analyzing Individual Neurons in Language Models, ICLR 2022"),
    "lape": Method("lape", "multi-class", "active-counts", lape_scores, ("top",),
                   "Tang et al., Language-Specific Neurons, ACL 2024 (LAPE)"),
}


def two_class_scores(
    method: str,
    values: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    budget_bytes: int = 1 << 30,
    progress: Any = None,
) -> torch.Tensor:
    """The named two-class score of every column of ``values``: float64 [neurons], higher = more specific."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    if spec.kind != "two-class":
        raise UsageError(f"method {method!r} is not computed from the per-prompt matrix; it needs {spec.needs}")
    return spec.score(values, labels, device=device, budget_bytes=budget_bytes, progress=progress)
