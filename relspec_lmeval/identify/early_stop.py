"""Ending a forward pass once the last hooked site has fired.

The statistics passes need the FFN outputs, not the logits. After the last layer's
``down_proj`` the model would still run the final norm and the unembedding: with a vocabulary
of 32k-262k tokens against a small hidden size that is 15-22% of a CPU forward pass
(``benchmarks/results/peers.md``), and on models whose ``lm_head`` shares the embedding weight
(gemma) it pulls that whole matrix into memory. An exception from one more hook, registered
after the recorder's own, ends the pass there; the recorded values are the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

__all__ = ["forward_until", "stop_after"]


class _Stop(Exception):
    """Raised by the stopping hook; never leaves ``forward_until``."""


def _raise(*_: Any) -> None:
    raise _Stop


@contextmanager
def stop_after(module: nn.Module) -> Iterator[None]:
    """While inside, a forward pass ends right after ``module`` runs (register after other hooks)."""
    handle = module.register_forward_hook(_raise)
    try:
        yield
    finally:
        handle.remove()


def forward_until(model: nn.Module, **inputs: Any) -> None:
    """``model(**inputs)`` up to the ``stop_after`` module (or to the end without one)."""
    try:
        model(**inputs)
    except _Stop:
        pass
