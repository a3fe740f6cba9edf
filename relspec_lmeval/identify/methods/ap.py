"""``--method ap``: average precision of every neuron at once, the paper's score.

A neuron's per-prompt values (its output averaged over each prompt's tokens) score the
prompts; AP measures how well they rank the relation's prompts (positives) above the
others. Same definition as ``sklearn.metrics.average_precision_score``, ties included.
"""

from __future__ import annotations

import torch

from relspec_lmeval.identify.methods.matrix import check_matrix, sorted_label_keys

__all__ = ["average_precision"]


def average_precision(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AP of every column of ``values`` [prompts, neurons] as a score for ``labels`` [prompts].

    One threshold per distinct value, AP = Σ over thresholds of (recall step) × (precision at
    that threshold), which is the mean over positive prompts p of #{positives ≥ v_p} /
    #{prompts ≥ v_p}. Computed for all columns at once on ``values``' device, with exact
    integer counts and float64 precision.

    Args:
        values: [prompts, neurons], any float dtype.
        labels: [prompts], true for the positives (at least one).

    Returns:
        float64 [neurons], on ``values``' device.

    Example:
        >>> import torch
        >>> from relspec_lmeval.identify.methods.ap import average_precision
        >>> values = torch.tensor([[3.0, 0.0], [2.0, 1.0], [1.0, 2.0]])
        >>> average_precision(values, torch.tensor([True, True, False])).tolist()
        [1.0, 0.5833333333333333]
    """
    labels, positives, _ = check_matrix(values, labels, "average precision", negatives=False)
    if values.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64, device=values.device)
    if values.dtype == torch.float64:
        return _average_precision_float64(values, labels, positives)
    return _average_precision_packed(values, labels, positives)


def _average_precision_packed(values: torch.Tensor, labels: torch.Tensor, positives: int) -> torch.Tensor:
    # One sort per neuron of int64 keys that carry the labels (matrix.sorted_label_keys).
    n = values.shape[0]
    keys = sorted_label_keys(values, labels)
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
