"""The one parser of ``--dtype`` / ``dtype=`` names."""

from __future__ import annotations

from typing import Any

from relspec_lmeval.errors import UsageError
from relspec_lmeval.util.suggest import did_you_mean

__all__ = ["DTYPES", "parse_dtype"]

DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32", "fp64": "float64"}


def parse_dtype(name: str | None, flag: str = "--dtype") -> Any:
    """``auto`` (or None) → "auto"; a floating dtype name or alias (bf16, fp16, fp32) → the torch dtype."""
    if name is None or name == "auto":
        return "auto"
    import torch

    key = _ALIASES.get(str(name).lower(), str(name).lower().removeprefix("torch."))
    value = getattr(torch, key, None) if key in DTYPES else None
    if not isinstance(value, torch.dtype):
        raise UsageError(f"unknown {flag} {name!r}; use {', '.join(DTYPES)} (or bf16, fp16, fp32).{did_you_mean(str(name), DTYPES)}")
    return value
