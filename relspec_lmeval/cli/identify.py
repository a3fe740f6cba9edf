"""``relspec identify``: the command line of ``identify.pipeline.identify``.

The flags are ``IdentifyConfig``'s fields (``identify.config``, through ``util.options``):
a new option is one field there, with its help text.
"""

from __future__ import annotations

import argparse
from typing import Any

from relspec_lmeval.cli.common import batch_size, command_line
from relspec_lmeval.identify.config import EXIT_SKIPPED, IdentifyConfig
from relspec_lmeval.util.options import add_options, options_of

__all__ = ["add_parser"]


def _cmd_identify(args: argparse.Namespace) -> int:
    cfg = IdentifyConfig(**options_of(IdentifyConfig, args), command=command_line(args))
    cfg.check()  # flag errors before torch loads (the pipeline checks again)
    from relspec_lmeval.identify.pipeline import identify  # torch and transformers: only when run
    from relspec_lmeval.identify.pool import parse_relations

    summary = identify(cfg)
    asked = parse_relations(cfg.relations)  # the others in summary.json were kept from an earlier run
    written = [r for r in summary["relations"] if not asked or r in asked]
    print(f"wrote {len(written)} neuron set(s), scores and summary.json to {cfg.out}")
    if summary.get("skipped"):
        print(f"skipped {len(summary['skipped'])} relation(s) with too few positives (listed in summary.json); exit status {EXIT_SKIPPED}")
        return EXIT_SKIPPED
    return 0


def add_parser(sub: Any) -> None:
    """Add ``identify`` to the ``relspec`` command."""
    p = sub.add_parser(
        "identify",
        help="find relation-specific neurons and write neuron-set files",
        description="Find each relation's specific neurons (AP of per-prompt mean outputs, positives = correctly "
        "answered P^det prompts) and write <out>/<relation>.safetensors, <out>/scores/<relation>.safetensors "
        "and <out>/summary.json. See docs/identification.md.",
    )
    add_options(p, IdentifyConfig, types={"batch_size": batch_size})
    p.set_defaults(func=_cmd_identify)
