"""The user cache folder: downloaded LRE files, converted GGUF models."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$RELSPEC_CACHE_DIR``, else ``$XDG_CACHE_HOME/relspec-lmeval``, else ``~/.cache/relspec-lmeval``."""
    root = os.environ.get("RELSPEC_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "relspec-lmeval"
