"""The one rule for true/false environment variables."""

from __future__ import annotations

import os

__all__ = ["env_flag"]

_FALSE = ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """True unless the variable is unset or one of '', 0, false, no, off (any case)."""
    return os.environ.get(name, "").strip().lower() not in _FALSE
