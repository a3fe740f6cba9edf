"""``--method auroc``: area under the ROC curve of every neuron at once, AurA's score.

P(v_pos > v_neg) + ½·P(v_pos = v_neg) over all (positive, negative) pairs (Mann-Whitney U /
(P·N); equal to ``sklearn.metrics.roc_auc_score``, ties included). AurA (Suau et al., ICML
2024) scores max-pooled token values; here it scores the per-prompt means. ``relspec dampen``
turns it into AurA's factors (``identify.dampen``).
"""

from __future__ import annotations

import torch

from relspec_lmeval.identify.methods.matrix import check_matrix, sorted_label_keys

__all__ = ["auroc"]


def _sorted_with_labels(values: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each neuron's values sorted ascending ([neurons, prompts]) and the label at each
    position (int32), negatives before positives inside every group of tied values."""
    if values.dtype == torch.float64:
        # negatives first, then a stable sort: ties keep negatives before positives
        order = torch.argsort(labels.to(torch.int8), stable=True)
        ordered = values[order].t()
        sorted_values, index = torch.sort(ordered, dim=1, stable=True)
        return sorted_values, labels[order].to(torch.int32)[index]
    keys = sorted_label_keys(values, labels)  # float32 and narrower: the labels travel with the values
    return keys >> 1, (keys & 1).to(torch.int32)


def auroc(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AUROC of every column of ``values`` [prompts, neurons] as a score for ``labels``.

    AUROC = (1/(P·N)) Σ over positives p of (#negatives < v_p + ½ #negatives = v_p), the
    Mann-Whitney statistic with ties counted half. Twice the sum is an exact integer; one
    float64 division gives the result.

    Args:
        values: [prompts, neurons], any float dtype.
        labels: [prompts], true for the positives (at least one positive and one negative).

    Returns:
        float64 [neurons], on ``values``' device.

    Example:
        >>> import torch
        >>> from relspec_lmeval.identify.methods.auroc import auroc
        >>> values = torch.tensor([[3.0, 0.0], [2.0, 2.0], [1.0, 2.0]])
        >>> auroc(values, torch.tensor([True, True, False])).tolist()
        [1.0, 0.25]
    """
    labels, positives, negatives = check_matrix(values, labels, "AUROC")
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
