"""``relspec reproduce``: the command line of ``experiments.runner.reproduce``."""

from __future__ import annotations

import argparse
from typing import Any

from relspec_lmeval.cli.common import batch_size, command_line, int_list
from relspec_lmeval.experiments.study import KS, QUICK, SEEDS  # torch-free: the flags parse without it

__all__ = ["add_parser"]


def _cmd_reproduce(args: argparse.Namespace) -> None:
    from relspec_lmeval.experiments.plan import ReproduceConfig  # torch: only when run

    cfg = ReproduceConfig(
        model=args.model, neuron_sets=args.neuron_sets, suite=args.suite, out=args.out, relations=args.relations,
        seeds=args.seeds, site_seeds=args.site_seeds, ks=args.ks, limit=args.limit, det_limit=args.det_limit, quick=args.quick,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype, lre_dir=args.lre_dir, gguf_file=args.gguf_file,
        command=command_line(args), progress=not args.quiet, verbose=args.verbose,
    )
    from relspec_lmeval.experiments.runner import reproduce  # imports lm-eval: only when run

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
    p.add_argument("--model", required=True, help="hub id, local folder or shipped model name")
    p.add_argument("--neuron-sets", required=True, help="folder written by relspec identify (<relation>.safetensors, scores/, random/)")
    p.add_argument("--suite", required=True, help="lre (the 12 LRE relations) or synthetic (relspec-tiny's world)")
    p.add_argument("--out", required=True, help="output folder (runs/, sets/, tables/, figures/, report.md)")
    p.add_argument("--relations", default="all", help="'all' or comma-separated relation names (default: all)")
    p.add_argument("--seeds", type=int, default=None, help=f"uniform random controls per relation (default {SEEDS}; --quick {QUICK['seeds']})")
    p.add_argument("--site-seeds", type=int, default=None, metavar="N",
                   help="site-matched random controls per relation (as many neurons per site as its set; default: as many as --seeds; 0: none)")
    p.add_argument("--ks", type=int_list, default=None, help=f"k sweep (default {','.join(map(str, KS))}; capped by the model's neurons)")
    p.add_argument("--limit", type=int, default=None, help="documents per task (default: all; --quick 20)")
    p.add_argument("--det-limit", type=int, default=None, help="documents per P^det task (default: all; --quick 100)")
    p.add_argument("--quick", action="store_true", help="smaller plan: 3 seeds, k 50,500,3000, limit 20, P^det limit 100")
    p.add_argument("--batch-size", type=batch_size, default=16, help="lm-eval batch size, or 'auto' (default 16)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu … (default: cuda when available, else cpu; said on stderr)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--gguf-file", default=None, metavar="NAME", help="with --model a folder: the GGUF file in it to load")
    p.add_argument("--lre-dir", default=None, help="folder of the LRE files (else RELSPEC_LRE_DIR or the download cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="show lm-eval's own logs and progress bars")
    p.set_defaults(func=_cmd_reproduce)
