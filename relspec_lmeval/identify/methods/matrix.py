"""What the two-class scores share: the checks of a [prompts, neurons] matrix and its labels,
and the sort that carries each prompt's label along with its value."""

from __future__ import annotations

import torch

from relspec_lmeval.errors import UsageError

__all__ = ["check_matrix", "sorted_label_keys"]


def check_matrix(values: torch.Tensor, labels: torch.Tensor, what: str, *, negatives: bool = True) -> tuple[torch.Tensor, int, int]:
    """``labels`` as a flat bool tensor on ``values``' device, and the counts of positives and negatives.

    ``UsageError`` (naming the score ``what``) for a matrix that is not [prompts, neurons], a label
    count that is not the prompt count, no positive, or (with ``negatives``) no negative.

    Example:
        >>> import torch
        >>> from relspec_lmeval.identify.methods.matrix import check_matrix
        >>> check_matrix(torch.zeros(3, 2), torch.tensor([1, 0, 0]), "AUROC")[1:]
        (1, 2)
    """
    if values.dim() != 2:
        raise UsageError(f"values must be [prompts, neurons], got shape {tuple(values.shape)}")
    labels = labels.to(device=values.device, dtype=torch.bool).flatten()
    if labels.numel() != values.shape[0]:
        raise UsageError(f"{labels.numel()} labels for {values.shape[0]} prompts")
    positives = int(labels.sum())
    count_negatives = labels.numel() - positives
    if negatives and (positives == 0 or count_negatives == 0):
        raise UsageError(f"{what} needs at least one positive and one negative prompt, got {positives} and {count_negatives}")
    if positives == 0:
        raise UsageError(f"{what} needs at least one positive prompt")
    return labels, positives, count_negatives


def sorted_label_keys(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each neuron's prompts sorted ascending by value, as int64 keys ``2·v + label`` ([neurons, prompts]).

    ``v`` is the order-preserving int of the float32 value (``-0.0 + 0.0`` is ``0.0``: they tie),
    so one integer sort orders the values and carries the labels with them, no index gather;
    inside a group of tied values the negatives come first. ``keys >> 1`` gives the values'
    order, ``keys & 1`` the labels. On the CPU, numpy's SIMD sort.

    Example:
        >>> import torch
        >>> from relspec_lmeval.identify.methods.matrix import sorted_label_keys
        >>> keys = sorted_label_keys(torch.tensor([[2.0], [1.0], [1.0]]), torch.tensor([False, True, False]))
        >>> (keys & 1).tolist()
        [[0, 1, 0]]
    """
    x = (values.to(torch.float32) + 0.0).t().contiguous()  # [neurons, prompts]
    bits = x.view(torch.int32)
    keys = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64).mul_(2).add_(labels.to(torch.int64))  # int32 order == float order
    del x, bits
    if keys.device.type == "cpu":
        import numpy as np

        return torch.from_numpy(np.sort(keys.numpy(), axis=1))
    return torch.sort(keys, dim=1).values
