"""The ``relspec`` command (also ``python -m relspec_lmeval``).

The top layer: each subcommand module turns flags into a config and calls the layer
below. Every failure the user can cause is a ``RelspecError``, which ``main`` prints as one
``relspec: error: …`` line with exit status 2; Ctrl-C is ``relspec: interrupted``, exit 130.
"""

from __future__ import annotations

import argparse
import sys

from relspec_lmeval import __version__
from relspec_lmeval.errors import RelspecError

__all__ = ["EXIT_INTERRUPTED", "build_parser", "main"]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    """The whole command line. Each subcommand module imports only argparse-level things at
    its top (its work, and torch, transformers and lm-eval, load when the command runs), so
    ``relspec --help`` and flag errors come at once (benchmarks/startup.py)."""
    from relspec_lmeval.cli import card, compare, convert, identify, lmeval, reproduce, sets

    parser = argparse.ArgumentParser(prog="relspec", description="Inspect, make, apply and evaluate relation-specific neuron sets.")
    parser.add_argument("--version", action="version", version=f"relspec-lmeval {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sets.add_parsers(sub)
    identify.add_parser(sub)
    convert.add_parser(sub)
    card.add_parser(sub)
    compare.add_parser(sub)
    reproduce.add_parser(sub)
    lmeval.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a ``RelspecError`` is one line and exit 2, Ctrl-C one line and exit 130."""
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # provenance: the command as given
        code = args.func(args)
    except RelspecError as exc:
        print(f"relspec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the user knows where; a traceback would only hide this line
        print("relspec: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code or 0  # a command may say "done, but not all of it" (identify: 3)
