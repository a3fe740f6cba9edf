"""The ``relspec`` command (also ``python -m relspec_lmeval``).

The top layer: each subcommand module turns flags into a config and calls the layer
below. Every failure the user can cause is a ``RelspecError``, which ``main`` prints as one
``relspec: error: …`` line with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from relspec_lmeval import __version__
from relspec_lmeval.errors import RelspecError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from relspec_lmeval.cli import compare, convert, identify, reproduce, sets

    parser = argparse.ArgumentParser(prog="relspec", description="Inspect, make, apply and evaluate relation-specific neuron sets.")
    parser.add_argument("--version", action="version", version=f"relspec-lmeval {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sets.add_parsers(sub)
    identify.add_parser(sub)
    convert.add_parser(sub)
    compare.add_parser(sub)
    reproduce.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # provenance: the command as given
    try:
        code = args.func(args)
    except RelspecError as exc:
        print(f"relspec: error: {exc}", file=sys.stderr)
        return 2
    return code or 0  # a command may say "done, but not all of it" (identify: 3)
