"""``--method mean-diff``: mean over positives − mean over negatives, the probeless ranking.

Antverg & Belinkov (ICLR 2022), "probeless": for two classes their sum of pairwise absolute
differences of class means has one term, |this|, with no normalisation.
"""

from __future__ import annotations

import torch

from relspec_lmeval.identify.methods.matrix import check_matrix

__all__ = ["mean_difference"]


def mean_difference(values: torch.Tensor, labels: torch.Tensor, *, absolute: bool = False) -> torch.Tensor:
    """mean(v over positives) − mean(v over negatives) of every column.

    The default keeps the sign, so that, as with AP, the top of the ranking is the neurons
    more active on the relation and ``select=both``'s bottom the ones less active. The sums
    run along the prompts in order (float64), so the result does not depend on how many
    neurons are computed together.

    Args:
        values: [prompts, neurons], any float dtype.
        labels: [prompts], true for the positives (at least one positive and one negative).
        absolute: Antverg & Belinkov's |difference| instead of the signed one.

    Returns:
        float64 [neurons], on ``values``' device.

    Example:
        >>> import torch
        >>> from relspec_lmeval.identify.methods.mean_diff import mean_difference
        >>> values = torch.tensor([[3.0, 0.0], [1.0, 1.0], [1.0, 3.0]])
        >>> mean_difference(values, torch.tensor([True, True, False])).tolist()
        [1.0, -2.5]
        >>> mean_difference(values, torch.tensor([True, True, False]), absolute=True).tolist()
        [1.0, 2.5]
    """
    labels, positives, negatives = check_matrix(values, labels, "mean-diff")
    x = values.to(torch.float64)
    mean_pos = torch.cumsum(x[labels], dim=0)[-1] / positives
    mean_neg = torch.cumsum(x[~labels], dim=0)[-1] / negatives
    diff = mean_pos - mean_neg
    return diff.abs() if absolute else diff
