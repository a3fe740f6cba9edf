"""``ReproduceConfig``: the flags of ``relspec reproduce``, each stated once (``util.options``).

Torch-free (the study's sizes come from ``experiments.study``), so ``relspec reproduce --help``
and its flag errors come before torch or lm-eval loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relspec_lmeval.experiments.study import KS, QUICK, SEEDS
from relspec_lmeval.util.options import option

__all__ = ["ReproduceConfig"]

# --quick's help, from QUICK itself, so the text cannot drift from what --quick does
_QUICK_HELP = (f"smaller plan: {QUICK['seeds']} seeds, k {','.join(map(str, QUICK['ks']))}, limit {QUICK['limit']}, "
               f"P^det limit {QUICK['det_limit']}")


@dataclass
class ReproduceConfig:
    """Everything ``relspec reproduce`` takes: each field with a help text is its flag (docs/reproduce.md).

    Args:
        model: a hub id, local folder or shipped model name.
        neuron_sets: the folder ``relspec identify`` wrote.
        suite: ``lre`` (the 12 LRE relations) or ``synthetic`` (relspec-tiny's world).
        out: the output folder (runs/, sets/, tables/, figures/, report.md).
        seeds, site_seeds, ks, limit, det_limit, quick, …: as the flags of the same names
            (``relspec reproduce --help``); ``None`` is the default the help states, the
            ``--quick`` one with ``quick``. ``progress`` is ``--quiet`` inverted.
        command: the command line recorded in the report (the CLI sets it).

    Example:
        >>> from relspec_lmeval import ReproduceConfig
        >>> cfg = ReproduceConfig(model="relspec-tiny", neuron_sets="relspec-tiny", suite="synthetic", out="report", quick=True)
        >>> cfg.suite, cfg.quick
        ('synthetic', True)
    """

    model: str = option(help="hub id, local folder or shipped model name")
    neuron_sets: str = option(help="folder written by relspec identify (<relation>.safetensors, scores/, random/)")
    # no argparse choices: an unknown suite is experiments.plan.prepare's UsageError, listing the suites
    suite: str = option(help="lre (the 12 LRE relations) or synthetic (relspec-tiny's world)")
    out: str = option(help="output folder (runs/, sets/, tables/, figures/, report.md)")
    relations: str | Sequence[str] | None = option("all", help="'all' or comma-separated relation names (default: %(default)s)")
    seeds: int | None = option(None, help=f"uniform random controls per relation (default {SEEDS}; --quick {QUICK['seeds']})")
    site_seeds: int | None = option(
        None, metavar="N",
        help="site-matched random controls per relation (as many neurons per site as its set; default: as many as --seeds; 0: none)")
    ks: Sequence[int] | None = option(  # the CLI parses it (cli.common.int_list); capped by the model's neuron count
        None, help=f"k sweep (default {','.join(map(str, KS))}; capped by the model's neurons)")
    limit: int | None = option(None, help=f"documents per task (default: all; --quick {QUICK['limit']})")
    det_limit: int | None = option(None, help=f"documents per P^det task (default: all; --quick {QUICK['det_limit']})")
    quick: bool = option(False, help=_QUICK_HELP)
    batch_size: int | str = option(16, help="lm-eval batch size, or 'auto' (default %(default)s)")
    device: str | None = option(None, help="cuda, cuda:1, cpu … (default: cuda when available, else cpu; said on stderr)")
    dtype: str = option("auto", help="auto, float32, bfloat16, float16")
    gguf_file: str | None = option(None, metavar="NAME", help="with --model a folder: the GGUF file in it to load")
    lre_dir: str | None = option(None, help="folder of the LRE files (else RELSPEC_LRE_DIR or the download cache)")
    progress: bool = option(True, flag="--quiet", invert=True, help="no progress bar")
    verbose: bool = option(False, help="show lm-eval's own logs and progress bars")
    command: str | None = None
