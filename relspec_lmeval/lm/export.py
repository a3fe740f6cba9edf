"""``relspec export``: a checkpoint with a set's weight rows edited, loadable by any engine.

The folder is built beside its target and swapped in at the end (``util.files.staged_dir``),
and carries a marker file listing what it holds. ``--force`` replaces only a folder with
that marker and nothing else in it (no file, no folder it does not list), checked before the
weights load and again right before the swap: never the working directory, a parent of it, the
home directory, the shipped files, or a folder with files of the user's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relspec_lmeval import __version__
from relspec_lmeval.errors import NeuronSetError, OutputError
from relspec_lmeval.lm.ablation import AblationSpec, apply_ablation, check_mode_fits
from relspec_lmeval.lm.overflow import check_factor_fits, planned_dtype
from relspec_lmeval.modelio.dtype import parse_dtype
from relspec_lmeval.modelio.load import load_config, meta_skeleton, resolve_pretrained
from relspec_lmeval.modelio.sites import site_modules
from relspec_lmeval.sets.neuron_set import union_all
from relspec_lmeval.sets.resolve import load_sets
from relspec_lmeval.sets.shape import ModelShape
from relspec_lmeval.util.files import staged_dir
from relspec_lmeval.util.locks import probe_writable
from relspec_lmeval.util.resources import refuse_shipped

__all__ = [
    "EXPORT_MARKER", "ExportConfig", "check_export_target", "check_replaceable", "check_sets", "export_checkpoint", "provenance",
]

EXPORT_MARKER = "relspec_export.json"


@dataclass
class ExportConfig:
    model: str
    neuron_set: str
    out: str
    mode: str = "zero"
    factor: float | None = None
    revision: str | None = None
    gguf_file: str | None = None
    dtype: str = "auto"
    force: bool = False
    allow_empty: bool = False
    command: str | None = None


def _files_below(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _entries_below(folder: Path) -> set[str]:
    """Every file, link and folder below ``folder`` (folders as ``name/``): an empty folder is the user's too."""
    found = set()
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        found.update(f"{base / name}/" for name in dirs if not os.path.islink(os.path.join(root, name)))
        found.update(str(base / name) for name in (*files, *(d for d in dirs if os.path.islink(os.path.join(root, d)))))
    return found


def _listed_entries(listed: set[str]) -> set[str]:
    """What a marker's file list accounts for: the files, the marker, the folders they are in."""
    folders = {f"{parent}/" for name in listed for parent in Path(name).parents if str(parent) != "."}
    return listed | folders | {EXPORT_MARKER}


def check_export_target(out: str | os.PathLike, force: bool) -> Path:
    """The resolved output folder, or ``OutputError`` when writing there could lose anything."""
    given = Path(out).expanduser()
    target = given.resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if target == cwd or cwd.is_relative_to(target) or target == home or target.parent == target:
        where = "the working directory" if target == cwd else "the home directory" if target == home else "a parent of the working directory"
        raise OutputError(f"--out {out} is {where}; give the name of a new folder for the checkpoint, e.g. --out ./ablated-model")
    refuse_shipped(target, "--out")
    probe_writable(given, "--out")  # a link to nothing, a read-only file system: now, not after the load
    probe_writable(target.parent, "--out")  # the checkpoint is built beside its target
    check_replaceable(target, out, force)
    return target


def check_replaceable(target: Path, out: str | os.PathLike, force: bool, late: bool = False) -> None:
    """``OutputError`` unless ``target`` is missing or empty, or (``force``) holds only what the
    marker of an earlier export lists. Checked before the weights load and again (``late``) right
    before the swap: a file written into the folder meanwhile must not be deleted with it."""
    tail = f" (it changed while the export ran; the new checkpoint was discarded, {out} is untouched)" if late else ""
    if target.exists() and not target.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder{tail}")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not force:
        raise OutputError(f"output folder {out} is not empty{tail or ' (use --force to replace an earlier relspec export there)'}")
    marker = target / EXPORT_MARKER
    try:
        listed = set(json.loads(marker.read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise OutputError(
            f"--force replaces only a folder written by relspec export, and {out} has no readable {EXPORT_MARKER}; "
            f"not touching it{tail}"
        ) from None
    foreign = sorted(_entries_below(target) - _listed_entries(listed))
    if foreign:
        raise OutputError(
            f"{out} holds files relspec export did not write ({', '.join(foreign[:5])}{' …' if len(foreign) > 5 else ''}); "
            f"not replacing it{tail}"
        )


def _check_editable(config: Any, neuron_set: Any) -> None:
    """On the weightless copy: each site the set names exists and has no bias (the edited weight
    row would leave it, so the channel would not be switched off)."""
    skeleton = meta_skeleton(config)
    if skeleton is None:
        return
    for (layer, site), module in site_modules(skeleton, neuron_set.neurons).items():
        if getattr(module, "bias", None) is not None:
            raise NeuronSetError(
                f"layer {layer} {site} has a bias, so a checkpoint with its weight rows edited would not switch its "
                "channels off; ablate it in relspec-hf (a forward hook) instead of exporting"
            )


def check_sets(sets: list, cfg: ExportConfig, spec: AblationSpec, config: Any, dtype: Any) -> None:
    """Each set against the model's config, before any weight loads: its shape, the mode's
    per-neuron data, no bias on an edited site, the factor finite in ``dtype``."""
    shape = ModelShape.from_config(config)
    for s in sets:
        s.validate(shape, allow_empty=cfg.allow_empty)
        check_mode_fits(s, spec)
    _check_editable(config, union_all(sets))
    check_factor_fits(spec, sets, dtype)


def provenance(cfg: ExportConfig, spec: AblationSpec, sets: list) -> dict[str, Any]:
    """What an exported model records about how it was made."""
    return {
        "package_version": __version__,
        "source_model": str(cfg.model),
        "gguf_file": cfg.gguf_file,
        "sets": [{"path": str(s.path), "sha256": s.sha256(), "count": len(s)} for s in sets],
        "mode": spec.mode,
        "factor": spec.factor,
        "command": cfg.command,
    }


def export_checkpoint(cfg: ExportConfig) -> tuple[Path, int]:
    """Write the ablated checkpoint; returns (folder, neurons). Everything is checked before the weights load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # here: the CLI starts without it

    spec = AblationSpec(mode=cfg.mode, factor=cfg.factor, method="weights")
    dtype = parse_dtype(cfg.dtype)
    sets = load_sets(cfg.neuron_set)
    target = check_export_target(cfg.out, cfg.force)
    config = load_config(cfg.model, cfg.revision, cfg.gguf_file)
    check_sets(sets, cfg, spec, config, planned_dtype(dtype, config))  # the factor in the dtype the weights will have
    source = resolve_pretrained(cfg.model, cfg.gguf_file)  # a GGUF model: its cached plain checkpoint
    model = AutoModelForCausalLM.from_pretrained(source, revision=cfg.revision, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=cfg.revision)
    merged = union_all(sets)
    apply_ablation(model, merged, spec)
    record = provenance(cfg, spec, sets)
    model.config.relspec = record
    with staged_dir(target, may_replace=lambda t: check_replaceable(t, cfg.out, cfg.force, late=True)) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        marker = {"format": "relspec-export", **record, "files": sorted(_files_below(staging))}
        (staging / EXPORT_MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return target, len(merged)
