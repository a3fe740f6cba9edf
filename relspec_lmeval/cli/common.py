"""Argument types and provenance shared by the ``relspec`` subcommands."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

__all__ = ["batch_size", "command_line", "int_list", "positive_int"]


def command_line(args: argparse.Namespace) -> str:
    """The command as given: ``args.argv`` when ``cli.main`` records it, else this process's argv."""
    argv = getattr(args, "argv", None)
    if argv is not None:
        return shlex.join(["relspec", *argv])
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def batch_size(text: str) -> int | str:
    """``--batch-size``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', not {text!r}")
    return value


def positive_int(text: str) -> int:
    """A count such as ``--k``: checked by argparse, so the error comes before any file or torch loads."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """``--ks 50,500,3000``."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from None
