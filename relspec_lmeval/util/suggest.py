""""Did you mean …?" hints, and the error that lists what exists (lm-eval's registry style)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["closest", "did_you_mean", "known_list"]


def closest(name: str, known: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The known name most like ``name``, or None."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, known: Iterable[str], n: int = 1, cutoff: float = 0.5) -> str:
    """`` Did you mean 'x'?`` (with a leading space), or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), list(known), n=n, cutoff=cutoff)
    if not close:
        return ""
    return f" Did you mean {close[0]!r}?" if n == 1 else f" Did you mean: {', '.join(close)}?"


def known_list(known: Iterable[str], limit: int = 12) -> str:
    """``a, b, c …``: the first ``limit`` names, for an error that lists what exists."""
    names = list(known)
    return ", ".join(names[:limit]) + (" …" if len(names) > limit else "")
