"""``relspec convert lape|kn|selfcond FILE --model M --out OUT``: other tools' neurons as our sets.

The model's config (never its weights) gives the shape every entry is checked against, and
a weightless copy built from it on the meta device shows that its MLPs have our sites;
the readers are ``sets.convert`` and ``sets.expertise``. Everything is read and checked
before anything is written; the files are then written together (``StagedFiles``) or not
at all. ``--out`` is a ``FILE.safetensors`` for one set or a folder (``<out>/<name>.safetensors``);
an existing file is replaced only with ``--force``; shipped files are never written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relspec_lmeval.cli.common import command_line
from relspec_lmeval.errors import OutputError, UnsupportedModelError, UsageError
from relspec_lmeval.sets.fileformat import SUFFIX
from relspec_lmeval.util.files import StagedFiles
from relspec_lmeval.util.resources import refuse_shipped

if TYPE_CHECKING:  # the readers import torch when the command runs: the parser needs none
    from relspec_lmeval.sets.convert import Converted

__all__ = ["add_parser", "output_paths"]

SHOWN = 10  # files listed one per line; more are summed up


def output_paths(out: str, names: list[str], force: bool) -> list[Path]:
    """Where each set goes; ``OutputError``/``UsageError`` before anything is written."""
    from relspec_lmeval.sets.convert import file_stem

    refuse_shipped(out, "--out")
    stems = [file_stem(name) for name in names]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        raise UsageError(f"several sets would be written to the same file name: {', '.join(clashes[:5])}; give distinct names")
    path = Path(out).expanduser()
    if path.suffix == SUFFIX:
        if len(names) != 1:
            raise UsageError(f"--out {out} is one file, but the input holds {len(names)} sets; give a folder")
        targets = [path]
    else:
        if path.exists() and not path.is_dir():
            raise OutputError(f"--out {out} is a file; give a folder for the sets (or FILE{SUFFIX} for one set)")
        targets = [path / f"{stem}{SUFFIX}" for stem in stems]
    for target in targets:
        if target.is_dir():
            raise OutputError(f"{target} is a folder; not replacing it")
    existing = [target for target in targets if target.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputError(f"{existing[0]} exists{more}; pass --force to replace it")
    return targets


def _names(text: str | None, flag: str) -> list[str] | None:
    """``--names`` / ``--uuids``: comma-separated, none empty, none twice; errors name ``flag``."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise UsageError(f"{flag} must be comma-separated non-empty names, not {text!r}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"{flag} repeats {', '.join(repeated)}: {text!r}")
    return names


def _read(args: argparse.Namespace, shape: Any) -> Converted:
    from relspec_lmeval.sets.convert import read_kn, read_lape
    from relspec_lmeval.sets.expertise import read_selfcond

    if args.format == "lape":
        return read_lape(args.file, shape, _names(args.names, "--names"))
    if args.format == "kn":
        return read_kn(args.file, shape, merge=args.merge, name=args.name, uuids=_names(args.uuids, "--uuids"))
    return read_selfcond(
        args.file, shape, k=args.k, threshold=args.threshold, take_all=args.all, select=args.select, name=args.name
    )


def _model_shape(config: Any, skeleton: Any) -> Any:
    """The config's ``ModelShape``, after checking on its weightless (meta-device) copy that its MLPs are ours.

    ``UnsupportedModelError`` for mixture-of-experts or non-gated MLPs (GPT-2, BLOOM, OPT, Phi-2:
    LAPE ships files for them too), whose neurons have no gate_proj/up_proj/down_proj; a fused
    gate_up_proj of Phi-3 or GLM passes (its halves are gate_proj and up_proj, ``modelio.sites``).
    """
    from relspec_lmeval.modelio.sites import find_mlps
    from relspec_lmeval.sets.shape import ModelShape

    if skeleton is not None:
        find_mlps(skeleton)
    try:
        return ModelShape.from_config(config)
    except AttributeError as exc:
        raise UnsupportedModelError(f"model type {getattr(config, 'model_type', '?')!r}: its config has no {exc.name or 'MLP width'}") from None


def _cmd_convert(args: argparse.Namespace) -> None:
    from relspec_lmeval.modelio.load import load_config, meta_skeleton
    from relspec_lmeval.modelio.sites import site_modules
    from relspec_lmeval.sets.convert import to_neuron_sets
    from relspec_lmeval.sets.shape import model_metadata

    refuse_shipped(args.out, "--out")  # before the model and the file are read
    config = load_config(args.model, args.revision, args.gguf_file)
    skeleton = meta_skeleton(config)
    shape = _model_shape(config, skeleton)
    converted = _read(args, shape)
    sets = to_neuron_sets(
        converted, shape, model_metadata(config, args.model, args.revision, args.gguf_file), command_line(args), args.allow_empty
    )
    if skeleton is not None:  # every site named exists as a separate module (selfcond rows may name attention projections)
        site_modules(skeleton, {key for s in sets for key in s.neurons})
    targets = output_paths(args.out, [found.name for found in converted.sets], args.force)
    with StagedFiles() as staged:
        for neuron_set, target in zip(sets, targets):
            neuron_set.save(target, staged)
    for neuron_set, target in list(zip(sets, targets))[:SHOWN]:
        counts = ", ".join(f"{site} {n}" for site, n in neuron_set.count_per_site().items() if n)
        print(f"wrote {target} ({len(neuron_set)} neurons{': ' + counts if counts else ''})")
    if len(targets) > SHOWN:
        print(f"… and {len(targets) - SHOWN} more set(s) in {targets[0].parent}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the model the neurons belong to (hub id, local folder, shipped name); only its config is read")
    p.add_argument("--out", required=True, help=f"FILE{SUFFIX} for one set, or a folder (<out>/<name>{SUFFIX} per set)")
    p.add_argument("--revision", default=None)
    p.add_argument("--gguf-file", default=None, metavar="NAME", help="with --model a folder: the GGUF file in it")
    p.add_argument("--force", action="store_true", help="replace existing set files")
    p.add_argument("--allow-empty", action="store_true", help="write a set that holds no neurons instead of refusing")
    p.set_defaults(func=_cmd_convert)


def add_parser(sub: Any) -> None:
    """Add ``convert`` (with ``lape``, ``kn``, ``selfcond``) to the ``relspec`` command."""
    p = sub.add_parser(
        "convert",
        help="turn LAPE, knowledge-neurons or selfcond neuron files into neuron-set files",
        description="Read another tool's neuron file, check every entry against the model's shape, and write our "
        "neuron-set files with provenance (tool, file sha256, site mapping). See docs/convert.md.",
    )
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")

    lape = formats.add_parser(
        "lape", help="LAPE activation_mask (.pth): one set per language, at up_proj",
        description="LAPE (Tang et al. 2024): mask[language][layer] = LongTensor of act_fn(gate_proj) indices, "
        "read with torch.load(weights_only=True). Each index i becomes up_proj channel i (exact for zero and scale).",
    )
    lape.add_argument("file", metavar="FILE", help="the torch.save'd activation_mask (e.g. LLaMA-2-7B.neuron.pth)")
    lape.add_argument("--names", default=None, help="language names in file order, e.g. en,zh,fr,es,vi,id,ja (default lang0, lang1, …)")
    _common(lape)

    kn = formats.add_parser(
        "kn", help="knowledge-neurons JSON {uuid: [[layer, index], ...]}: one set per uuid, at up_proj",
        description="knowledge-neurons (Dai et al.; EleutherAI/knowledge-neurons): intermediate-activation index i "
        "of a layer becomes up_proj channel i.",
    )
    kn.add_argument("file", metavar="FILE", help="a *_pararel_neurons_*.json file")
    kn.add_argument("--merge", action="store_true", help="one set: the union of all (chosen) uuids")
    kn.add_argument("--uuids", default=None, help="only these uuids (comma-separated)")
    kn.add_argument("--name", default=None, help="the set's name with --merge (default: the file's stem) or for one uuid")
    _common(kn)

    sc = formats.add_parser(
        "selfcond", help="selfcond / lang_neuron expertise.csv: one set, APs as scores",
        description="selfcond (Suau et al.) expertise.csv, as also written by lang_neuron (Kojima et al.): rows "
        "with layer (module name), unit, ap. MLP rows map to their site; other rows are skipped.",
    )
    sc.add_argument("file", metavar="FILE", help="expertise.csv (or a file with the same columns, such as expertise_limited_*.csv)")
    sc.add_argument("--k", type=int, default=None, help="the top k rows by AP (ties: lower layer, site, index first)")
    sc.add_argument("--threshold", type=float, default=None, help="rows with AP > T (then --k, if given)")
    sc.add_argument("--all", action="store_true", help="every MLP row of the file (for files that are already a selection)")
    sc.add_argument("--select", choices=["top", "both"], default="top", help="with --k: top k, or top k/2 + bottom k/2 (lang_neuron's 'both')")
    sc.add_argument("--name", default=None, help="the set's name (default: the file's concept column, else its stem)")
    _common(sc)
