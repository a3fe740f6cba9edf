"""Every two-class score over column chunks under a memory budget: the one place that chunks.

A score's working memory grows with prompts × neurons (``Method.bytes_per_element`` per
value); the matrix's columns go to the device one chunk at a time, each chunk under the
budget. The scores do not depend on the chunk size, bit for bit (each one's sums run along
the prompts, per neuron), so the budget only trades memory for speed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from relspec_lmeval.errors import UsageError
from relspec_lmeval.identify.methods.registry import method

__all__ = ["CPU_CHUNK_BYTES", "chunked_scores", "two_class_scores"]

CPU_CHUNK_BYTES = 16 << 20  # cache-sized chunks are about twice as fast on a CPU


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
    """``score(block, labels)`` over column chunks of ``values`` moved to ``device`` one at a time.

    Args:
        score: a two-class score, ``f(values [prompts, neurons], labels [prompts]) -> [neurons]``.
        bytes_per_element: its working memory per (prompt, neuron) value.
        values: [prompts, neurons], on any device (the CPU for a matrix larger than the device's budget).
        labels: [prompts], true for the positives.
        device: where each chunk is scored (default: ``values``' device).
        budget_bytes: the working memory one chunk may take (on a CPU at most ``CPU_CHUNK_BYTES``).
        progress: a bar with ``update(columns)``, or None.

    Returns:
        float64 [neurons] on the CPU.

    Example:
        >>> import torch
        >>> from relspec_lmeval.identify.methods.auroc import auroc
        >>> from relspec_lmeval.identify.methods.chunking import chunked_scores
        >>> values, labels = torch.randn(8, 5), torch.tensor([True] * 3 + [False] * 5)
        >>> torch.equal(chunked_scores(auroc, 96, values, labels, budget_bytes=1), auroc(values, labels))
        True
    """
    device = torch.device(device) if device is not None else values.device
    n, cols = values.shape
    if device.type == "cpu":
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


def two_class_scores(
    name: str,
    values: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device | str | None = None,
    budget_bytes: int = 1 << 30,
    progress: Any = None,
) -> torch.Tensor:
    """The registered two-class method ``name``'s score of every column of ``values``, chunked.

    Args:
        name: a ``--method`` of kind ``two-class`` (``identify.methods.registry.METHODS``).
        values, labels, device, budget_bytes, progress: as for ``chunked_scores``.

    Returns:
        float64 [neurons] on the CPU, higher = more specific to the positives.

    Example:
        >>> import torch
        >>> from relspec_lmeval.identify.methods.chunking import two_class_scores
        >>> values = torch.tensor([[3.0, 0.0], [2.0, 1.0], [1.0, 2.0]])
        >>> two_class_scores("ap", values, torch.tensor([True, True, False])).tolist()
        [1.0, 0.5833333333333333]
    """
    spec = method(name)
    if spec.kind != "two-class":
        raise UsageError(f"method {name!r} is not computed from the per-prompt matrix; it needs {spec.needs}")
    return chunked_scores(spec.score, spec.bytes_per_element, values, labels, device=device, budget_bytes=budget_bytes,
                          progress=progress)
