"""``relspec info | export | random | select | heads | dampen``: commands on neuron-set files."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from relspec_lmeval.cli.common import command_line, positive_int
from relspec_lmeval.errors import NeuronSetError, UsageError
from relspec_lmeval.modelio.dtype import DTYPES
from relspec_lmeval.util.resources import is_read_only

# Each command imports its work (torch) when it runs: the parser, --help and flag errors need none.

__all__ = ["add_parsers"]


def _cmd_info(args: argparse.Namespace) -> int:
    if args.compare:
        return _cmd_compare(args)
    from relspec_lmeval.sets.quickinfo import quick_summary
    from relspec_lmeval.sets.resolve import resolve_set_path

    for name in args.files:
        path = resolve_set_path(name)
        summary, experts = quick_summary(path), None  # torch-free for the files relspec writes
        if summary is None:  # anything else: the full reader, whose error names what is wrong
            from relspec_lmeval.sets.neuron_set import NeuronSet

            neuron_set = NeuronSet.load(path)
            summary = neuron_set.summary()
            experts = _experts(neuron_set)
        if experts is not None:
            summary["count_per_expert"] = experts
        if args.json:
            print(json.dumps(summary, indent=2, sort_keys=True))
            continue
        meta = summary["metadata"]
        model = meta.get("model") or {}
        print(f"{summary['path']}")
        print(f"  sha256     {summary['sha256']}  (the file's bytes)")
        print(f"  content    {summary['content_sha256']}  (model shape, neurons, factors)")
        print(f"  neurons    {summary['count']}  ({', '.join(f'{k} {v}' for k, v in summary['count_per_site'].items())})")
        print(f"  relation   {meta.get('relation', '-')}   method {meta.get('method', '-')}   k {meta.get('k', '-')}")
        heads = meta.get("heads")
        if isinstance(heads, dict) and isinstance(heads.get("names"), list):  # a set that names attention heads
            how = "each head's o_proj input channels" if heads.get("via") == "o_proj" else "q rows, and k/v rows of their key/value heads"
            print(f"  heads      {', '.join(map(str, heads['names']))}  (via {heads.get('via')}: {how})")
        if isinstance(meta.get("like"), list):  # a shared random control: the sets it was written for
            print(f"  control of {', '.join(str(e.get('relation')) for e in meta['like'] if isinstance(e, dict))}")
        print(
            f"  model      {model.get('name', '-')} ({model.get('model_type', '?')}, {model.get('num_layers', '?')} layers, "
            f"hidden {model.get('hidden_size', '?')}, ffn {model.get('intermediate_size', '?')}, config {model.get('config_hash', '?')})"
        )
        data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
        if "positives" in data:
            print(f"  prompts    {data['positives']} positives, {data.get('negatives', '?')} negatives "
                  f"({data.get('correct', '?')} of {data.get('det_prompts', '?')} P^det prompts answered correctly)")
        print(f"  made by    relspec-lmeval {meta.get('package_version', '?')}: {meta.get('command', '-')}")
        print(f"  means      {'yes' if summary['has_means'] else 'no'}   scores {'yes' if summary['has_scores'] else 'no'}"
              f"   factors {'yes' if summary['has_factors'] else 'no'}")
        print("  per layer  " + "  ".join(f"L{layer}:{sum(c.values())}" for layer, c in summary["count_per_layer"].items()))
        if experts is not None:  # which routed experts hold the neurons (those holding none left out)
            rows = [f"L{layer}: " + " ".join(f"e{e}:{n}" for e, n in enumerate(counts) if n) for layer, counts in enumerate(experts) if any(counts)]
            print("  experts    " + ("; ".join(rows) or "none (shared expert only)"))
    return 0


def _experts(neuron_set: Any) -> list[list[int]] | None:
    """The set's neurons per routed expert (``counts[layer][expert]``), or None for a dense model's set."""
    from relspec_lmeval.identify.summary import count_per_expert

    try:
        shape = neuron_set.recorded_shape()
    except NeuronSetError:  # a set that records no shape: nothing to split by
        return None
    return count_per_expert(neuron_set, shape) if shape.is_moe else None


def _cmd_compare(args: argparse.Namespace) -> int:
    """``relspec info --compare A B``: same neurons (and factors)? Exit 0 if so, 1 if not, like ``cmp``."""
    if len(args.files) != 2:
        raise UsageError(f"--compare takes two neuron-set files, got {len(args.files)}")
    from relspec_lmeval.sets.neuron_set import NeuronSet, compare_sets
    from relspec_lmeval.sets.resolve import resolve_set_path

    a, b = (NeuronSet.load(resolve_set_path(name)) for name in args.files)
    diff = compare_sets(a, b)
    if args.json:
        print(json.dumps(diff, indent=2, sort_keys=True))
        return 0 if diff["same_content"] else 1
    n = diff["neurons"]
    print(f"A  {diff['paths'][0]}\nB  {diff['paths'][1]}")
    print(f"  content    {'same' if diff['same_content'] else 'differs'}"
          + (f" ({diff['content_sha256'][0]})" if diff["same_content"] else f" ({diff['content_sha256'][0][:12]}… vs {diff['content_sha256'][1][:12]}…)"))
    print(f"  neurons    {n['a']} and {n['b']}: {n['both']} in both, {n['only_a']} only in A, {n['only_b']} only in B")
    print("  per site   " + ", ".join(f"{site} {x}" + ("" if x == y else f"/{y}") for site, (x, y) in diff["count_per_site"].items()))
    shape = {key: pair for key, pair in diff["model_shape"].items() if pair[0] != pair[1]}
    print("  model      " + ("same shape" if not shape else "shape differs: " + ", ".join(f"{k} {x} vs {y}" for k, (x, y) in shape.items())))
    for name in ("factors", "scores", "means"):
        print(f"  {name:<10} {_extra_line(diff[name])}")
    print(f"  file       {'same bytes' if diff['same_file'] else 'differs'} (sha256 {diff['sha256'][0][:12]}…"
          + ("" if diff["same_file"] else f" vs {diff['sha256'][1][:12]}…") + ")")
    keys = diff["metadata_differs"]
    print("  metadata   " + ("same" if not keys else f"differs in {', '.join(keys[:8])}{f' and {len(keys) - 8} more' if len(keys) > 8 else ''}"))
    print("same neurons" + (" and factors" if any(diff["factors"]["has"]) else "") if diff["same_content"] else "different neurons, factors or model shape")
    return 0 if diff["same_content"] else 1


def _extra_line(extra: dict) -> str:
    """One of scores/means/factors in ``--compare``: who has them, their largest difference on the shared neurons."""
    has_a, has_b = extra["has"]
    if not (has_a or has_b):
        return "-"
    if has_a != has_b:
        return f"only {'A' if has_a else 'B'} has them"
    peak = extra["max_abs_diff"]
    return "no shared neurons" if peak is None else "same" if peak == 0 else f"largest difference {peak:.3g} (on the shared neurons)"


def _cmd_export(args: argparse.Namespace) -> None:
    from relspec_lmeval.lm.export import ExportConfig, export_checkpoint  # loads transformers

    if args.format == "hf" and args.out.endswith(".gguf"):  # before torch: a flag error answers at once
        raise UsageError(f"--out {args.out} names a GGUF file; add --format gguf to write one (--format hf writes a folder)")
    cfg = ExportConfig(
        model=args.model, neuron_set=args.neuron_set, out=args.out, mode=args.mode, factor=args.factor,
        revision=args.revision, gguf_file=args.gguf_file, dtype=args.dtype, force=args.force, allow_empty=args.allow_empty,
        command=command_line(args),
    )
    if args.format == "gguf":
        from relspec_lmeval.lm.export_gguf import export_gguf_file

        path, count, retyped = export_gguf_file(cfg)
        for name, was in retyped:
            print(f"relspec: {name} was {was}; written as F32 (mode={cfg.mode} is not exact in {was})", file=sys.stderr)
        print(f"wrote ablated GGUF {path} ({count} neurons, mode={cfg.mode}; every other tensor as it was)")
        return
    folder, count = export_checkpoint(cfg)
    print(f"wrote ablated checkpoint to {folder} ({count} neurons, mode={cfg.mode})")


def _cmd_random(args: argparse.Namespace) -> None:
    if args.layer_matched and args.site_matched:  # before torch loads: a flag error answers at once
        raise UsageError("--layer-matched and --site-matched exclude each other: give one (or neither, for plain controls)")
    from relspec_lmeval.identify.controls import random_controls

    written = random_controls(
        args.like, args.seeds, layer_matched=args.layer_matched, site_matched=args.site_matched, out=args.out, model=args.model,
        command=command_line(args), force=args.force,
    )
    folders = sorted({str(p.parent) for p in written})
    kept = sum(1 for now in written.values() if not now)
    there = f"; {kept} already there with the same neurons, kept as they were" if kept else ""
    print(f"wrote {len(written) - kept} random control set(s) to {', '.join(folders)}{there}{_why_here(args.out, args.like)}")


def _cmd_select(args: argparse.Namespace) -> None:
    if (args.k is None) == (args.heads is None):
        raise UsageError("give --k N (the top N neurons) or --heads N (the top N attention heads), one of them")
    if args.heads is not None and (args.select != "top" or args.skip):
        raise UsageError("--select and --skip cut neurons (--k); --heads takes the top N heads")
    if args.heads is None and args.via is not None:
        raise UsageError("--via says how --heads resolves a head; it has no use with --k")
    if args.heads is not None:
        from relspec_lmeval.identify.heads import select_heads

        paths = select_heads(args.scores, args.heads, via=args.via or "o_proj", out=args.out, command=command_line(args))
    else:
        from relspec_lmeval.identify.controls import select_sets

        paths = select_sets(args.scores, args.k, select=args.select, skip=args.skip, out=args.out, command=command_line(args))
    note = _why_here(args.out, args.scores)
    for path in paths:
        print(f"wrote {path}{note}")


def _cmd_heads(args: argparse.Namespace) -> None:
    from relspec_lmeval.identify.heads import head_set

    made = head_set(args.model, args.heads, args.out, via=args.via, revision=args.revision, command=command_line(args), force=args.force)
    counts = ", ".join(f"{site} {n}" for site, n in made.count_per_site().items() if n)
    print(f"wrote {made.path} ({len(made.metadata['heads']['names'])} heads, {len(made)} neurons: {counts})")


def _cmd_dampen(args: argparse.Namespace) -> None:
    from relspec_lmeval.identify.dampen import dampen_sets

    written = dampen_sets(args.inputs, alpha=args.alpha, threshold=args.threshold, out=args.out, command=command_line(args))
    note = _why_here(args.out, args.inputs)
    for path, made in written:
        factors = [f for values in made.factors.values() for f in values.tolist()]
        print(f"wrote {path} ({len(made)} neurons, factors {min(factors):.3g} to {max(factors):.3g}){note}")


def _why_here(out: str | None, inputs: list[str]) -> str:
    """Say so when a default output went to the working directory because an input is shipped."""
    from relspec_lmeval.sets.resolve import resolve_set_path

    if out is None and any(is_read_only(resolve_set_path(name)) for name in inputs):  # paths and short names alike
        return " (in the working directory: shipped and downloaded (hf://) files are read-only; use --out to choose)"
    return ""


def add_parsers(sub: Any) -> None:
    """Add ``info``, ``export``, ``random``, ``select``, ``heads`` and ``dampen`` to the ``relspec`` command."""
    info = sub.add_parser("info", help="print a neuron-set file's summary, or compare two sets by content (--compare)")
    info.add_argument("files", nargs="+", metavar="FILE", help="neuron-set file or shipped set name")
    info.add_argument("--json", action="store_true", help="print the summary (or the comparison) as JSON")
    info.add_argument("--compare", action="store_true",
                      help="compare two sets: same neurons and factors (exit 0) or not (exit 1), the overlap, what else differs")
    info.set_defaults(func=_cmd_info)

    export = sub.add_parser("export", help="write an ablated checkpoint (for --model hf or vllm) or GGUF file (llama.cpp, ollama)")
    export.add_argument("--model", required=True, help="hub id, local folder or shipped model name")
    export.add_argument("--neuron-set", required=True, help="file(s) or shipped name(s), joined with +")
    export.add_argument("--out", required=True, help="output folder (a new one, or one an earlier export wrote); a .gguf file with --format gguf")
    export.add_argument("--format", default="hf", choices=["hf", "gguf"],
                        help="hf: a transformers checkpoint folder (default); gguf: the model's GGUF file with the set applied")
    export.add_argument("--mode", default="zero", choices=["zero", "scale", "dampen"],
                        help="zero (default), scale (by --factor) or dampen (by the set's own factors, `relspec dampen`)")
    export.add_argument("--factor", type=float, default=None, help="with --mode scale")
    export.add_argument("--revision", default=None)
    export.add_argument("--gguf-file", default=None, metavar="NAME", help="with --model a folder: the GGUF file in it")
    export.add_argument("--dtype", default="auto", help=f"{', '.join(DTYPES)} (or bf16, fp16, fp32)")
    export.add_argument("--force", action="store_true", help="replace a folder (or GGUF file) an earlier relspec export wrote")
    export.add_argument("--allow-empty", action="store_true", help="accept a set with no neurons")
    export.set_defaults(func=_cmd_export)

    r = sub.add_parser("random", help="write random control sets like a given set")
    r.add_argument("--like", required=True, nargs="+", metavar="SET", help="neuron-set file(s) or shipped name(s)")
    r.add_argument("--seeds", type=int, default=10, help="number of seeds, 0..N-1 (default 10)")
    r.add_argument("--layer-matched", action="store_true", help="same count per layer and site as the set (random/<relation>-layer-seed<N>)")
    r.add_argument("--site-matched", action="store_true",
                   help="same count per site as the set, any layer (random/<relation>-site-seed<N>; not with --layer-matched)")
    r.add_argument("--out", default=None, help="folder (files go to <out>/random/; default: the set's folder, or the working directory for a shipped set)")
    r.add_argument("--force", action="store_true", help="replace a shared random/k<K>-seed<N> file that holds something else")
    r.add_argument("--model", default=None, help="model, when the set records no shape (also checks the shape)")
    r.set_defaults(func=_cmd_random)

    s = sub.add_parser("select", help="re-cut k neurons, or the top attention heads, from stored scores (no model run)")
    s.add_argument("scores", nargs="+", metavar="SCORES", help="<out>/scores/<relation>.safetensors file(s)")
    s.add_argument("--k", type=positive_int, default=None, help="neurons per set")
    s.add_argument("--heads", type=positive_int, default=None, metavar="N",
                   help="instead of --k: the N attention heads whose channels score highest on average (scores of --sites o_proj_in; "
                        "heads<N>/ beside the scores folder)")
    s.add_argument("--via", choices=["o_proj", "qkv"], default=None,
                   help="with --heads: a head is its o_proj input channels (default) or its q/k/v rows (needs q_proj,k_proj,v_proj scores)")
    s.add_argument("--select", choices=["top", "both"], default="top")
    s.add_argument("--skip", type=int, default=0, help="skip the first N ranks (ranks N+1..N+k; top only)")
    s.add_argument("--out", default=None, help="output folder (default: k<N> beside the scores folder, or in the working directory for shipped scores)")
    s.set_defaults(func=_cmd_select)

    h = sub.add_parser("heads", help="write a set naming whole attention heads of a model (no model run)")
    h.add_argument("--model", required=True, help="hub id, local folder or shipped model name (its config gives the heads)")
    h.add_argument("--heads", required=True, metavar="L:H,...", help="the heads, LAYER:HEAD counting from 0, e.g. 3:5,7:0")
    h.add_argument("--via", choices=["o_proj", "qkv"], default="o_proj",
                   help="o_proj (default): each head's o_proj input channels (its output, exact with grouped-query attention); "
                        "qkv: its q_proj rows and its key/value head's k_proj/v_proj rows (a grouped key/value head: name all its query heads)")
    h.add_argument("--out", required=True, metavar="FILE", help="the set file to write (.safetensors)")
    h.add_argument("--revision", default=None)
    h.add_argument("--force", action="store_true", help="replace an existing --out file")
    h.set_defaults(func=_cmd_heads)

    d = sub.add_parser("dampen", help="store AurA's per-neuron factors 1 - alpha*(2*AUROC - 1) for mode=dampen (no model run)")
    d.add_argument("inputs", nargs="+", metavar="FILE",
                   help="a set made with --method auroc (its neurons get factors), or a scores file (every neuron with AUROC > threshold)")
    d.add_argument("--alpha", type=float, default=1.0, help="dampening strength in [0, 1] (default 1: AurA's)")
    d.add_argument("--threshold", type=float, default=0.5, help="neurons with AUROC above it are dampened (default 0.5: AurA's)")
    d.add_argument("--out", default=None, help="output folder (default: dampen[-a<A>][-t<T>]/ beside a set, dampen-all…/ beside scores/; the working directory for shipped files)")
    d.set_defaults(func=_cmd_dampen)
