"""``relspec random`` and ``relspec select``: sets made from other sets or scores, no model run.

Random controls draw as many neurons as a relation's set (per (layer, site) with
``layer_matched``); re-cuts take another k (or rank range) from a stored scores file. Both
validate their input the way every reader of a set does (``NeuronSet.validate``), check
everything before writing anything, and never write into the shipped files: by default
they write into the input's sets folder, or the working directory when that is shipped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relspec_lmeval import __version__
from relspec_lmeval.errors import NeuronSetError, UsageError
from relspec_lmeval.modelio.load import load_config
from relspec_lmeval.sets.folder import SetsFolder
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.resolve import resolve_set_path
from relspec_lmeval.sets.scores import Scores, load_scores
from relspec_lmeval.sets.shape import ModelShape, model_metadata
from relspec_lmeval.util.files import StagedFiles
from relspec_lmeval.util.hashing import file_sha256
from relspec_lmeval.util.resources import is_read_only, refuse_shipped

__all__ = ["default_folder", "random_sets", "select_sets"]


def default_folder(beside: Path, out: str | os.PathLike | None) -> tuple[SetsFolder, bool]:
    """(where outputs go, whether that is the working directory because ``beside`` is shipped)."""
    if out is not None:
        refuse_shipped(out, "--out")
        return SetsFolder(Path(out)), False
    if is_read_only(beside):
        return SetsFolder(Path.cwd()), True  # shipped files are read-only: default to the working directory
    return SetsFolder(beside), False


def _shape_of(neuron_set: NeuronSet, model: str | None, revision: str | None) -> tuple[ModelShape, dict[str, Any]]:
    """The shape to draw from (the model's, else the recorded one) after validating the set against it."""
    if model is not None:
        config = load_config(model, revision)
        shape, block = ModelShape.from_config(config), model_metadata(config, model, revision)
    else:
        try:
            shape = neuron_set.recorded_shape()
        except NeuronSetError as exc:
            raise NeuronSetError(f"{exc}; pass --model to give the shape") from None
        block = dict(neuron_set.metadata["model"])
    neuron_set.validate(shape)
    return shape, block


def _draw(base: NeuronSet, shape: ModelShape, seed: int, layer_matched: bool):
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    if layer_matched:
        picked = []
        for (layer, site), index in base.neurons.items():
            draw = torch.randperm(shape.width(site), generator=generator)[: index.numel()]
            picked.append(draw + shape.offset(layer, site))
        flat = torch.sort(torch.cat(picked)).values
    else:
        flat = torch.sort(torch.randperm(shape.total, generator=generator)[: len(base)]).values
    return shape.group(flat)


def random_sets(
    like: Sequence[str],
    seeds: int | Sequence[int] = 10,
    *,
    layer_matched: bool = False,
    out: str | os.PathLike | None = None,
    model: str | None = None,
    revision: str | None = None,
    command: str | None = None,
) -> list[Path]:
    """Random controls: for each seed, as many random neurons as each ``like`` set.

    Files go to ``<out>/random/<relation>[-layer]-seed<N>.safetensors`` (default ``out``: the set's
    folder; the working directory for a shipped set). Means and scores come from the set's
    scores file when there is one. Raises ``NeuronSetError`` for a set that does not fit its
    shape, ``UsageError`` for no seeds, ``OutputError`` for a shipped ``out``.
    """
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise UsageError("--seeds must be at least 1")
    plans = []
    for name in like:  # every input is checked before anything is written
        base = NeuronSet.load(resolve_set_path(name))
        shape, block = _shape_of(base, model, revision)
        source = SetsFolder(Path(str(base.path)).parent)
        relation = base.metadata.get("relation") or Path(str(base.path)).stem
        scores_path = source.scores_path(relation)
        scores = load_scores(scores_path) if scores_path.is_file() else None
        if scores is not None and scores.layout != shape:
            raise NeuronSetError(f"{scores_path} was made for another model shape than {base.path}")
        plans.append((name, base, shape, block, relation, scores, default_folder(source.root, out)[0]))
    written: list[Path] = []
    for name, base, shape, block, relation, scores, folder in plans:
        with StagedFiles() as staged:  # a relation's controls appear together or not at all
            for seed in seed_list:
                grouped = _draw(base, shape, seed, layer_matched)
                extra: dict[str, dict] = {"scores": {}, "means": {}}
                if scores is not None:
                    for key, index in grouped.items():
                        extra["scores"][key] = scores.ap[index + shape.offset(*key)]
                        extra["means"][key] = scores.means[index + shape.offset(*key)]
                metadata = {
                    "model": block,
                    "method": "random-layer-matched" if layer_matched else "random",
                    "relation": relation,
                    "k": len(base),
                    "seed": int(seed),
                    "layer_matched": layer_matched,
                    "like": {"path": str(name), "sha256": base.sha256()},
                    "package_version": __version__,
                    "command": command,
                }
                result = NeuronSet(grouped, metadata, scores=extra["scores"], means=extra["means"])
                written.append(result.save(folder.random_path(relation, seed, layer_matched), staged))
    return written


def _cut_metadata(scores: Scores, path: Path, k: int, select: str, skip: int, command: str | None) -> dict[str, Any]:
    meta = {key: value for key, value in scores.metadata.items() if key != "kind"}
    meta["parameters"] = {**(meta.get("parameters") or {}), "k": k, "select": select, **({"skip": skip} if skip else {})}
    meta.update(
        k=k,
        select=select,
        package_version=__version__,
        command=command,
        scores_file={"path": str(path), "sha256": file_sha256(path)},
    )
    if skip:
        meta["skip"] = skip
    return meta


def select_sets(
    scores_paths: Sequence[str | os.PathLike],
    k: int,
    *,
    select: str = "top",
    skip: int = 0,
    out: str | os.PathLike | None = None,
    command: str | None = None,
) -> list[Path]:
    """Re-cut k neurons from stored scores, without the model: ``<out>/<relation>.safetensors``.

    Default ``out``: ``k<N>`` (``k<N>-both``, ``k<N>-skip<S>``) in the scores' sets folder
    (the working directory for shipped scores). Raises ``NeuronSetError`` for an unreadable
    scores file or a k the model cannot give, ``OutputError`` for a shipped ``out``.
    """
    cuts = []
    for path in scores_paths:  # every input is checked before anything is written
        scores = load_scores(path)
        if k > scores.layout.total:
            raise NeuronSetError(f"--k {k} is larger than the {scores.layout.total} neurons in {path}")
        relation = scores.relation or Path(path).stem
        meta = _cut_metadata(scores, Path(path), k, select, skip, command)
        neuron_set = scores.to_neuron_set(k, select, meta, skip)  # raises for a bad k, skip or select
        folder = default_folder(SetsFolder.of_scores_file(path).root, out)[0]
        folder = folder if out is not None else folder.cut(k, select, skip)
        cuts.append((neuron_set, folder.set_path(relation)))
    with StagedFiles() as staged:
        return [neuron_set.save(target, staged) for neuron_set, target in cuts]

