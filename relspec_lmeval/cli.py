"""The ``relspec`` command: inspect, export and (via relspec_lmeval.identify) make neuron sets.

Every failure the user can cause ends as one ``relspec: error: …`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from relspec_lmeval import __version__


def _cmd_info(args: argparse.Namespace) -> None:
    from relspec_lmeval.neuron_set import NeuronSet, resolve_set_path

    for name in args.files:
        summary = NeuronSet.load(resolve_set_path(name)).summary()
        if args.json:
            print(json.dumps(summary, indent=2, sort_keys=True))
            continue
        meta = summary["metadata"]
        model = meta.get("model") or {}
        print(f"{summary['path']}")
        print(f"  sha256     {summary['sha256']}")
        print(f"  neurons    {summary['count']}  ({', '.join(f'{k} {v}' for k, v in summary['count_per_site'].items())})")
        print(f"  relation   {meta.get('relation', '-')}   method {meta.get('method', '-')}   k {meta.get('k', '-')}")
        print(
            f"  model      {model.get('name', '-')} ({model.get('model_type', '?')}, {model.get('num_layers', '?')} layers, "
            f"hidden {model.get('hidden_size', '?')}, ffn {model.get('intermediate_size', '?')}, config {model.get('config_hash', '?')})"
        )
        print(f"  made by    relspec-lmeval {meta.get('package_version', '?')}: {meta.get('command', '-')}")
        print(f"  means      {'yes' if summary['has_means'] else 'no'}   scores {'yes' if summary['has_scores'] else 'no'}")
        print("  per layer  " + "  ".join(f"L{layer}:{sum(c.values())}" for layer, c in summary["count_per_layer"].items()))


def _cmd_export(args: argparse.Namespace) -> None:
    """Write a checkpoint with the set's weight rows edited, loadable by any engine."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from relspec_lmeval.ablation import AblationSpec, apply_ablation
    from relspec_lmeval.model import resolve_pretrained
    from relspec_lmeval.neuron_set import ModelShape, NeuronSetError, load_sets, union_all

    spec = AblationSpec(mode=args.mode, factor=args.factor, method="weights")
    sets = load_sets(args.neuron_set)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise NeuronSetError(f"output folder {out} is not empty (use --force to replace it)")
    source = resolve_pretrained(args.model)
    shape = ModelShape.from_config(AutoConfig.from_pretrained(source, revision=args.revision))
    for s in sets:  # before the (slow) weight load
        s.validate(shape)
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else "auto"
    model = AutoModelForCausalLM.from_pretrained(source, revision=args.revision, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=args.revision)
    merged = union_all(sets)
    apply_ablation(model, merged, spec)
    model.config.relspec = {
        "package_version": __version__,
        "source_model": str(args.model),
        "sets": [{"path": str(s.path), "sha256": s.sha256(), "count": len(s)} for s in sets],
        "mode": spec.mode,
        "factor": spec.factor,
    }
    # Build beside the target and move into place, so an interrupted export leaves nothing half-written.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"wrote ablated checkpoint to {out} ({len(merged)} neurons, mode={spec.mode})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relspec", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"relspec-lmeval {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="print a neuron-set file's summary")
    info.add_argument("files", nargs="+", metavar="FILE", help="neuron-set file or shipped set name")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=_cmd_info)

    export = sub.add_parser("export", help="write an ablated checkpoint (for --model hf or vllm)")
    export.add_argument("--model", required=True, help="hub id, local folder or shipped model name")
    export.add_argument("--neuron-set", required=True, help="file(s) or shipped name(s), joined with +")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--mode", default="zero", choices=["zero", "scale"])
    export.add_argument("--factor", type=float, default=None, help="with --mode scale")
    export.add_argument("--revision", default=None)
    export.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    export.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    export.set_defaults(func=_cmd_export)

    try:
        from relspec_lmeval.identify import add_cli
    except ImportError:  # identification not built yet
        pass
    else:
        add_cli(sub)
    from relspec_lmeval import compare

    compare.add_cli(sub)
    from relspec_lmeval import reproduce

    reproduce.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # provenance: the command as given
    from relspec_lmeval.ablation import UnsupportedModelError
    from relspec_lmeval.neuron_set import NeuronSetError

    try:
        args.func(args)
    except (NeuronSetError, UnsupportedModelError, FileNotFoundError, OSError, ValueError) as exc:
        print(f"relspec: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
