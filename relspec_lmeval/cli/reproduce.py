"""``relspec reproduce``: the command line of ``experiments.runner.reproduce``."""

from __future__ import annotations

import argparse
from typing import Any

from relspec_lmeval.cli.common import batch_size, command_line, int_list
from relspec_lmeval.experiments.config import ReproduceConfig  # torch-free: the flags parse without it
from relspec_lmeval.util.options import add_options, options_of

__all__ = ["add_parser"]


def _cmd_reproduce(args: argparse.Namespace) -> None:
    cfg = ReproduceConfig(**options_of(ReproduceConfig, args), command=command_line(args))
    from relspec_lmeval.experiments.runner import reproduce  # torch and lm-eval: only when run

    print(f"wrote {reproduce(cfg)}")


def add_parser(sub: Any) -> None:
    """Add ``reproduce`` to the ``relspec`` command."""
    p = sub.add_parser(
        "reproduce",
        help="run the paper's experiments with lm-eval and write a report",
        description="Evaluate a model with each relation's neurons, random controls and k-sweep cuts switched off "
        "(lm-eval runs, resumable) and write tables, figures and report.md, with a verdict on each of the paper's findings. "
        "See docs/reproduce.md.",
    )
    add_options(p, ReproduceConfig, types={"ks": int_list, "batch_size": batch_size})
    p.set_defaults(func=_cmd_reproduce)
