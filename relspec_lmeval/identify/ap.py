"""Average precision of every neuron at once: the paper's score, batched on the device.

A neuron's per-prompt values (its output averaged over each prompt's tokens) score the
prompts; AP measures how well they rank the relation's prompts (positives) above the
others. Same definition as ``sklearn.metrics.average_precision_score``, ties included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from relspec_lmeval.errors import UsageError

__all__ = ["AP_BYTES_PER_ELEMENT", "CPU_CHUNK_BYTES", "average_precision", "average_precision_chunked", "chunked_scores"]

# Bytes of working memory per (prompt, neuron) element in ``average_precision``: the sorted
# values, sort order, labels, counts, precision and cumulative maxima together.
AP_BYTES_PER_ELEMENT = 64
CPU_CHUNK_BYTES = 16 << 20



def average_precision(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AP of every column of ``values`` [prompts, neurons] as a score for ``labels`` [prompts].

    Same definition as ``sklearn.metrics.average_precision_score``, ties included: one
    threshold per distinct value, AP = Σ over thresholds of (recall step) × (precision at
    that threshold), which is the mean over positive prompts p of
    #{positives ≥ v_p} / #{prompts ≥ v_p}. Computed for all columns at once on ``values``'
    device, with exact integer counts and float64 precision. Returns float64 [neurons].
    """
    if values.dim() != 2:
        raise UsageError(f"values must be [prompts, neurons], got shape {tuple(values.shape)}")
    n, cols = values.shape
    labels = labels.to(device=values.device, dtype=torch.bool).flatten()
    if labels.numel() != n:
        raise UsageError(f"{labels.numel()} labels for {n} prompts")
    positives = int(labels.sum())
    if positives == 0:
        raise UsageError("average precision needs at least one positive prompt")
    if cols == 0:
        return torch.zeros(0, dtype=torch.float64, device=values.device)
    if values.dtype == torch.float64:
        return _average_precision_float64(values, labels, positives)
    return _average_precision_packed(values, labels, positives)


def _sort_rows(keys: torch.Tensor) -> torch.Tensor:
    """Ascending sort of each row's int64 keys (values only): numpy's SIMD sort on the CPU."""
    if keys.device.type == "cpu":
        import numpy as np

        return torch.from_numpy(np.sort(keys.numpy(), axis=1))
    return torch.sort(keys, dim=1).values


def _average_precision_packed(values: torch.Tensor, labels: torch.Tensor, positives: int) -> torch.Tensor:
    # One sort per neuron of int64 keys 2 * (order-preserving int of the float32 value) + label:
    # the labels travel with the values, no index gather. (+0.0 turns -0.0 into 0.0: they tie.)
    n = values.shape[0]
    x = (values.to(torch.float32) + 0.0).t().contiguous()  # [neurons, prompts]
    bits = x.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # int32 order == float order
    del x, bits
    keys = _sort_rows(ordered.to(torch.int64).mul_(2).add_(labels.to(torch.int64)))
    del ordered
    is_positive = (keys & 1).to(torch.int32)
    value = keys >> 1
    del keys
    ranks = torch.arange(n, device=value.device)
    # positives strictly before each position (ascending order) = positives with a smaller value, without ties
    before = torch.cumsum(is_positive, dim=1, dtype=torch.int32).sub_(is_positive)
    tied = value[:, 1:] == value[:, :-1]
    if bool(tied.any()):
        starts = torch.ones_like(value, dtype=torch.bool)
        starts[:, 1:] = ~tied
        first = torch.cummax(torch.where(starts, ranks, 0), dim=1).values  # start of each tie group
        before = torch.gather(before, 1, first)
        at_or_above = (n - first).to(torch.float64)
    else:
        at_or_above = (n - ranks).to(torch.float64)  # broadcast over neurons
    del value, tied
    contribution = ((positives - before) * is_positive).to(torch.float64).div_(at_or_above)
    # a running sum along the prompts: the same additions whatever the number of neurons, so
    # chunking (memory budget) never changes a bit of the result
    return torch.cumsum(contribution, dim=1)[:, -1] / positives


def _average_precision_float64(values: torch.Tensor, labels: torch.Tensor, positives: int) -> torch.Tensor:
    # float64 values cannot carry a label bit: sort with indices and gather the labels.
    n = values.shape[0]
    sorted_values, order = torch.sort(values, dim=0, descending=True)
    hits = labels.to(torch.int32)[order]  # [n, cols]: 1 where the prompt at that rank is positive
    del order
    true_pos = torch.cumsum(hits, dim=0, dtype=torch.int32)
    # A threshold ends where the next value differs (or at the last rank): tied prompts enter together.
    is_end = torch.ones_like(sorted_values, dtype=torch.bool)
    is_end[:-1] = sorted_values[:-1] != sorted_values[1:]
    del sorted_values
    ranks = torch.arange(n, device=values.device).unsqueeze(1)
    # rank of the end of each position's tie group: reverse running minimum of end ranks
    end = torch.where(is_end, ranks, n).flip(0).cummin(dim=0).values.flip(0)
    precision_at_end = torch.gather(true_pos, 0, end).to(torch.float64) / (end + 1).to(torch.float64)
    return torch.cumsum(precision_at_end * hits, dim=0)[-1] / positives


def chunked_scores(
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    bytes_per_element: int,
    values: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    budget_bytes: int = 1 << 30,
    progress: Any = None,
) -> torch.Tensor:
    """``score(block, labels)`` over column chunks moved to ``device`` one at a time, each chunk's
    working memory (``bytes_per_element`` per value) under ``budget_bytes``; float64 on the CPU."""
    device = torch.device(device) if device is not None else values.device
    n, cols = values.shape
    if device.type == "cpu":  # cache-sized chunks are about twice as fast on a CPU
        budget_bytes = min(budget_bytes, CPU_CHUNK_BYTES)
    chunk = max(1, int(budget_bytes) // max(1, n * bytes_per_element))
    labels = labels.to(device)
    out = torch.empty(cols, dtype=torch.float64)
    for start in range(0, cols, chunk):
        stop = min(cols, start + chunk)
        out[start:stop] = score(values[:, start:stop].to(device, non_blocking=True), labels).cpu()
        if progress is not None:
            progress.update(stop - start)
    return out


def average_precision_chunked(
    values: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    budget_bytes: int = 1 << 30,
    progress: Any = None,
) -> torch.Tensor:
    """``average_precision`` over column chunks (moved to ``device`` one at a time); float64 on CPU."""
    return chunked_scores(average_precision, AP_BYTES_PER_ELEMENT, values, labels, device=device, budget_bytes=budget_bytes,
                          progress=progress)
