"""lm-eval's own command line with relspec-lmeval plugged in, with or without the ``.pth`` file.

``python -m relspec_lmeval.cli.lmeval ARGS…`` (and ``relspec lm-eval ARGS…``) is
``lm_eval ARGS…`` with the import hook installed first, even where the ``.pth`` line did not run
(an environment that skips ``.pth`` files, ``RELSPEC_DISABLE_HOOK=1``): ``--model relspec-hf``,
our tasks, the cache salt and the one-line errors then work as under the stock ``lm_eval``.
Not named ``lm_eval``: a module of that name here would shadow lm-eval for a relative import.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Install the hook (``force``: the caller asked for it), then run lm-eval's ``cli_evaluate``
    on ``argv`` (lm-eval reads ``sys.argv`` itself, so ``argv`` goes there)."""
    import _relspec_lmeval_hook

    _relspec_lmeval_hook.install(force=True)
    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``relspec lm-eval ARGS…``: every argument goes to lm-eval untouched, ``--help`` included
    (no prefix characters of its own, so argparse reads nothing as an option of ours)."""
    parser = sub.add_parser("lm-eval", help="lm-eval's command line with relspec-hf and our tasks (no .pth needed)",
                            add_help=False, prefix_chars="\0")
    parser.add_argument("lm_eval_args", nargs="*", metavar="ARGS")
    parser.set_defaults(func=lambda args: main(args.lm_eval_args))


if __name__ == "__main__":
    sys.exit(main())
