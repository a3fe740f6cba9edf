"""``relspec card FOLDER``: a Hugging Face dataset card for a sets folder, before it is uploaded."""

from __future__ import annotations

import argparse
from typing import Any

# The work (sets.card, which reads the set files with torch) is imported when the command runs.

__all__ = ["add_parser"]


def _cmd_card(args: argparse.Namespace) -> None:
    from relspec_lmeval.sets.card import write_card

    path = write_card(args.folder, repo=args.repo, license=args.license, force=args.force)
    repo = args.repo or "OWNER/REPO"
    print(f"wrote {path}; publish with: hf upload {repo} {args.folder} --repo-type dataset")


def add_parser(sub: Any) -> None:
    """Add ``card`` to the ``relspec`` command."""
    p = sub.add_parser("card", help="write FOLDER/README.md, a Hugging Face dataset card of a sets folder (from its summary.json)")
    p.add_argument("folder", metavar="FOLDER", help="a folder `relspec identify --out` wrote")
    p.add_argument("--repo", default=None, metavar="OWNER/REPO",
                   help="the dataset repository it will be uploaded to, for the card's hf:// commands (default: OWNER/REPO)")
    p.add_argument("--license", default=None, help="the card's license (e.g. mit, cc-by-4.0; left out unless given)")
    p.add_argument("--force", action="store_true", help="replace an existing README.md")
    p.set_defaults(func=_cmd_card)
