"""``relspec compare``: the command line of ``experiments.compare``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from relspec_lmeval.errors import UsageError
from relspec_lmeval.util.files import atomic_write_text

__all__ = ["add_parser"]


def _names(args: list[str]) -> list[str]:
    """Short column names (the folder's or file's name), unless two inputs would share one."""
    short = [(Path(a).stem if Path(a).is_file() else Path(a).name) or a for a in args]
    return short if len(set(short)) == len(short) else list(args)


def _cmd_compare(args: argparse.Namespace) -> None:
    if len(args.results) < 2:
        raise UsageError("compare needs at least two results: the baseline first, then the run(s) to compare with it")
    if not 0 < args.alpha < 1 or args.resamples < 1:
        raise UsageError(f"--alpha must be in (0, 1) and --resamples at least 1 (got {args.alpha}, {args.resamples})")
    from relspec_lmeval.experiments.compare import compare, load_run  # after the flag checks: numpy
    from relspec_lmeval.experiments.compare_output import plot, to_csv, to_json, to_markdown

    runs = [load_run(arg, name) for arg, name in zip(args.results, _names(args.results))]
    for run in runs:
        if run.found > 1:  # the table says so too; csv and json readers see it here
            print(f"relspec compare: {run.label}: read {run.file}, the newest of {run.found} results files", file=sys.stderr)
    comparisons = [compare(runs[0], run, alpha=args.alpha, resamples=args.resamples, seed=args.seed) for run in runs[1:]]
    cuts = {cut.file: cut for c in comparisons for cut in c.samples_cut_short}  # the baseline's once, not per comparison
    for cut in cuts.values():  # the outputs say so too; this reaches whoever reads only the exit status and stderr
        print(f"relspec compare: samples file cut short: {cut.describe()}; no paired test for {cut.task}", file=sys.stderr)
    for c in comparisons:  # documents left out of the pairing: said on stderr too
        for differs in c.content_differs:
            print(f"relspec compare: {c.run.label} vs {c.baseline.label}: doc_ids with another doc/target, not paired: {differs}", file=sys.stderr)
    if args.plot:
        plot(comparisons, Path(args.plot))
    if args.format == "csv":
        text = to_csv(comparisons)
    elif args.format == "json":
        text = to_json(comparisons, args.alpha, args.resamples, args.seed)
    else:
        text = to_markdown(comparisons, args.alpha, args.resamples, args.seed)
    if args.out:
        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)


def add_parser(sub: Any) -> None:
    """Add ``compare`` to the ``relspec`` command."""
    p = sub.add_parser(
        "compare",
        help="compare lm-eval results (original vs ablated) with significance tests",
        description="Match the tasks and metrics of lm-eval results and test each difference on the documents both "
        "runs have: exact McNemar (0/1 metrics) or a paired bootstrap with a Wilcoxon signed-rank p (other per-sample "
        "metrics; of the corpus-level difference for perplexities) on the samples of --log_samples runs, an unpaired "
        "z-test on the reported standard errors otherwise; each with the effect and its 95% CI, and Holm's correction "
        "within the subtasks of a group. See docs/compare.md.",
    )
    p.add_argument(
        "results",
        nargs="+",
        metavar="RESULTS",
        help="lm_eval --output_path folder (its newest results_*.json) or a results file; the first is the baseline",
    )
    p.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown", help="default: markdown")
    p.add_argument("--out", default=None, metavar="FILE", help="write the table here instead of to stdout")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="also draw a bar chart (needs matplotlib)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=_cmd_compare)
