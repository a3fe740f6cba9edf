"""``relspec identify``: the command line of ``identify.pipeline.identify``."""

from __future__ import annotations

import argparse
from typing import Any

from relspec_lmeval.cli.common import batch_size, command_line
from relspec_lmeval.data.metrics import METRICS
from relspec_lmeval.identify.config import (
    CORRECT_BY,
    DEFAULT_CAP,
    DEFAULT_K,
    DEFAULT_MIN_POSITIVES,
    DEFAULT_NEGATIVE_RATIO,
    IDENTIFY_METHODS,
    IdentifyConfig,
)

__all__ = ["add_parser"]


EXIT_SKIPPED = 3  # some relations were written, others skipped (too few positives)


def _cmd_identify(args: argparse.Namespace) -> int:
    cfg = IdentifyConfig(
        model=args.model,
        out=args.out,
        relations=args.relations,
        data=args.data,
        k=args.k,
        select=args.select,
        cap=args.cap,
        negative_ratio=args.negative_ratio,
        min_positives=args.min_positives,
        seed=args.seed,
        batch_size=args.batch_size,
        max_batch_size=args.max_batch_size,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        revision=args.revision,
        gguf_file=args.gguf_file,
        filter=not args.no_filter,
        cache=not args.no_cache,
        correct_metric=args.correct_metric,
        correct_by=args.correct_by,
        method=args.method,
        sites=args.sites,
        apply_chat_template=args.apply_chat_template,
        system_instruction=args.system_instruction,
        template_set=args.template_set,
        language=args.language,
        lre_dir=args.lre_dir,
        memory_budget_gb=args.memory_budget,
        force=args.force,
        command=command_line(args),
        progress=not args.quiet,
    )
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
    p.add_argument("--model", required=True, help="hub id, local folder or shipped model name (relspec-tiny)")
    p.add_argument("--relations", default="all", help="'all' or comma-separated relation names (default: all)")
    p.add_argument(
        "--data",
        default=None,
        help="folder of LRE JSON files, or a task group such as relation_recall_det (default: the LRE folder: "
        "RELSPEC_LRE_DIR or the download cache)",
    )
    p.add_argument("--out", required=True, help="output folder, e.g. neuron_sets/<model>/")
    p.add_argument("--k", type=int, default=DEFAULT_K, help=f"neurons per set (default {DEFAULT_K})")
    p.add_argument("--select", choices=["top", "both"], default="top", help="top k, or top k/2 + bottom k/2")
    p.add_argument("--cap", type=int, default=DEFAULT_CAP, help=f"at most this many positives (default {DEFAULT_CAP})")
    p.add_argument(
        "--min-positives", type=int, default=None,
        help=f"skip relations with fewer correctly answered prompts (default {DEFAULT_MIN_POSITIVES}; 1 with --no-filter); "
        f"exit status {EXIT_SKIPPED} when any was skipped",
    )
    p.add_argument("--negative-ratio", type=int, default=DEFAULT_NEGATIVE_RATIO, help="negatives per positive (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the positive subsample and the negatives (default 0)")
    p.add_argument("--batch-size", type=batch_size, default=32, help="prompts per batch, or 'auto' (default 32)")
    p.add_argument("--max-batch-size", type=int, default=64, help="where --batch-size auto starts (default 64)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16, float64")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu … (default: cuda if available)")
    p.add_argument("--device-map", default=None, help="e.g. auto: shard a big model over the visible GPUs")
    p.add_argument("--revision", default=None, help="model revision on the hub")
    p.add_argument("--gguf-file", default=None, metavar="NAME", help="with --model a folder: the GGUF file in it to load")
    p.add_argument(
        "--no-filter",
        action="store_true",
        help="keep every P^det prompt as a positive (no correctness filter); recorded as filter=none",
    )
    p.add_argument(
        "--no-cache", action="store_true",
        help="neither reuse nor keep the correctness check's answers (kept per model, check and prompt in the user cache)",
    )
    p.add_argument(
        "--correct-metric", default="acc", choices=sorted(METRICS),
        help="which answers count as correct for the positives: acc (the paper's prefix check, default) or acc_lenient "
        "(also without trailing punctuation, or a gold then a word boundary; docs/tasks.md)",
    )
    p.add_argument(
        "--method", default="ap", choices=list(IDENTIFY_METHODS),
        help="the neuron score: ap (average precision, the paper's; default), auroc (AurA's area under the ROC curve) or "
        "mean-diff (mean over positives minus mean over negatives, the probeless ranking) or lape (Tang et al.'s activation-"
        "probability entropy over all relations; with --no-filter); docs/identification.md",
    )
    p.add_argument(
        "--sites", default=None, metavar="SITE,…",
        help="the sites whose output channels are scored: any of gate_proj, up_proj, down_proj (the default, the paper's) "
        "and the attention's q_proj, k_proj, v_proj, o_proj (the paper's App. G), comma-separated",
    )
    p.add_argument(
        "--correct-by", default="generate", choices=list(CORRECT_BY),
        help="how positives are chosen: generate (greedy 2-token answer checked by --correct-metric, the paper's; default) "
        "or choice (the gold wins relation_choice's log-likelihood comparison against up to 9 other objects)",
    )
    p.add_argument("--apply-chat-template", action="store_true",
                   help="build every prompt as `lm_eval --apply_chat_template` does (instruct and chat models); recorded in the sets")
    p.add_argument("--system-instruction", default=None, help="as lm_eval's --system_instruction (with --apply-chat-template)")
    p.add_argument("--template-set", default="main", help="with a data folder: main or t2 (default main)")
    p.add_argument("--language", default="en", help="with a data folder: prompt language (default en)")
    p.add_argument("--lre-dir", default=None, help="where the LRE files are, for task groups")
    p.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        metavar="GIB",
        help="device memory for the activation matrix and AP (default: half the free GPU memory, 4 on CPU); "
        "a larger matrix stays in host memory and AP runs over neuron chunks",
    )
    p.add_argument(
        "--force", action="store_true",
        help="replace what --out holds (sets of another model or with other parameters; their scores, random controls, re-cuts, "
        "dampened sets and summary.json are removed when this run writes its first set); without it a run with the same "
        "parameters adds its relations to the folder and any other is refused",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_identify)
