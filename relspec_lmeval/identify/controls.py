"""``relspec random`` and ``relspec select``: sets made from other sets or scores, no model run.

Random controls draw as many neurons as a relation's set (``identify.draws``): plain ones
are one file per (k, seed) that every relation with k neurons shares, layer-matched ones
(per (layer, site)) and site-matched ones (per site) one per relation; re-cuts take another
k (or rank range) from a stored scores file. Both
validate their input the way every reader of a set does (``NeuronSet.validate``), check
everything before writing anything, and never write into the shipped files: by default
they write into the input's sets folder, or the working directory when that is shipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relspec_lmeval import __version__
from relspec_lmeval.errors import NeuronSetError, OutputError, RelspecError, UsageError
from relspec_lmeval.identify.draws import holds_plain_draw, layer_matched_draw, plain_draw, site_matched_draw
from relspec_lmeval.modelio.load import load_config
from relspec_lmeval.sets.folder import SetsFolder, locked
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.resolve import resolve_set_path
from relspec_lmeval.sets.scores import Scores, load_scores
from relspec_lmeval.sets.shape import DEFAULT_SITES, SITES, ModelShape, SiteKey, model_metadata, parse_sites
from relspec_lmeval.util.files import StagedFiles
from relspec_lmeval.util.hashing import file_sha256
from relspec_lmeval.util.resources import is_read_only, refuse_shipped

__all__ = ["default_folder", "random_controls", "random_sets", "select_sets"]


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
    if model is not None:  # over the sites the set was identified at (its recorded ones, else the FFN's and its own)
        recorded = (neuron_set.metadata.get("model") or {}).get("sites")
        present = {site for _, site in neuron_set.neurons}
        sites = parse_sites(recorded, "the set's model.sites") if recorded else tuple(
            s for s in SITES if s in DEFAULT_SITES or s in present)
        config = load_config(model, revision)
        shape, block = ModelShape.from_config(config, sites), model_metadata(config, model, revision, sites=sites)
    else:
        try:
            shape = neuron_set.recorded_shape()
        except NeuronSetError as exc:
            raise NeuronSetError(f"{exc}; pass --model to give the shape") from None
        block = dict(neuron_set.metadata["model"])
    neuron_set.validate(shape)
    return shape, block


@dataclass
class _Like:
    """One ``--like`` set, checked: what its controls are drawn from and where they go."""

    name: str  # as the user gave it (a path or a shipped name)
    base: NeuronSet
    shape: ModelShape
    block: dict[str, Any]
    relation: str
    scores: Scores | None
    folder: SetsFolder

    def entry(self) -> dict[str, str]:
        return {"path": str(self.name), "sha256": self.base.sha256(), "relation": self.relation}

    def gathered(self, grouped: dict[SiteKey, Any], field: str) -> dict[SiteKey, Any]:
        """The scores file's ``field`` (``ap`` or ``means``) at the drawn neurons; {} without a scores file."""
        if self.scores is None:
            return {}
        values = getattr(self.scores, field)
        return {key: values[index + self.shape.offset(*key)] for key, index in grouped.items()}


def _load_like(name: str, model: str | None, revision: str | None, out: str | os.PathLike | None) -> _Like:
    base = NeuronSet.load(resolve_set_path(name))
    shape, block = _shape_of(base, model, revision)
    source = SetsFolder(Path(str(base.path)).parent)
    relation = base.metadata.get("relation") or Path(str(base.path)).stem
    scores_path = source.scores_path(relation)
    scores = load_scores(scores_path) if scores_path.is_file() else None
    if scores is not None and scores.layout != shape:
        raise NeuronSetError(f"{scores_path} was made for another model shape than {base.path}")
    return _Like(name, base, shape, block, relation, scores, default_folder(source.root, out)[0])


def _same_values(a: dict[SiteKey, Any], b: dict[SiteKey, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@dataclass
class _Control:
    """One control file to have: its content, and (shared controls) the means each set's scores give."""

    path: Path
    neuron_set: NeuronSet
    shape: ModelShape | None = None  # shared controls: what the draw depends on, with k and the seed
    k: int = 0
    seed: int = 0
    means_by_scores: list[tuple[Path, dict[SiteKey, Any]]] = field(default_factory=list)


def _matched(like: _Like, seed: int, command: str | None, match: str) -> _Control:
    """The relation's own control, matched per (layer, site) (``match="layer"``) or per site (``"site"``)."""
    draw, path = (layer_matched_draw, like.folder.layer_random_path) if match == "layer" else (site_matched_draw, like.folder.site_random_path)
    grouped = draw(like.base, like.shape, seed)
    metadata = {"model": like.block, "method": f"random-{match}-matched", "relation": like.relation, "k": len(like.base), "seed": int(seed),
                f"{match}_matched": True, "like": {"path": str(like.name), "sha256": like.base.sha256()},
                "package_version": __version__, "command": command}
    made = NeuronSet(grouped, metadata, scores=like.gathered(grouped, "ap"), means=like.gathered(grouped, "means"))
    return _Control(path(like.relation, seed), made)


def _shared(likes: list[_Like], k: int, seed: int, command: str | None) -> _Control:
    """The one plain control of (k, seed) for every set in ``likes`` (one folder, one shape)."""
    # sorted and each set once, so the same sets give the same file whatever their order
    likes = sorted({(like.relation, str(like.name), like.base.sha256()): like for like in likes}.items())
    likes = [like for _, like in likes]
    shape = likes[0].shape
    grouped = plain_draw(shape, k, seed)
    given = [(like.scores.path, like.gathered(grouped, "means")) for like in likes if like.scores is not None]
    # mode=mean replaces a neuron's output by its mean over the identification prompts, so a
    # control compared with a set under mode=mean needs the means of the run that made the set.
    # identify writes one means vector to every relation's scores file, so the sets of one run
    # agree and the control keeps them; sets from runs that disagree have no single right
    # means, and the control keeps none (mode=mean then says so) rather than one run's.
    means = given[0][1] if given and all(_same_values(given[0][1], m) for _, m in given) else {}
    blocks = {json.dumps(like.block, sort_keys=True) for like in likes}
    metadata = {
        "model": likes[0].block if len(blocks) == 1 else shape.metadata(),  # the draw depends on the shape alone
        "method": "random", "k": k, "seed": int(seed), "layer_matched": False,
        "like": [like.entry() for like in likes],
        "package_version": __version__, "command": command,
    }
    if given and not means:
        metadata["means_left_out"] = "the scores files of these sets give different means (several identify runs)"
    # no per-neuron scores: they are one relation's AP, and the file is every relation's
    made = NeuronSet(grouped, metadata, means=means)
    return _Control(likes[0].folder.random_path(k, seed), made, shape, k, int(seed), given)


def _kept(control: _Control, force: bool) -> bool:
    """True when an existing shared file already holds this control (it is left as it is).

    Raises ``OutputError`` when one exists with other content, unless ``force`` (then it is
    replaced): other relations may be using it, and nothing of the user's is lost silently.
    """
    path = control.path
    if path.is_dir():
        raise OutputError(f"{path} is a folder, not a random control; move it away")
    if control.shape is None or not path.exists():
        return False  # a layer- or site-matched control is its relation's own, and follows its set
    try:
        existing = NeuronSet.load(path)
    except RelspecError as exc:
        problem = f"is not a neuron-set file relspec can read ({exc})"
    else:
        problem = _differs(existing, control)
        if problem is None:
            return True
    if force:
        return False
    raise OutputError(f"{path} exists and {problem}; pass --force to replace it, or --out another folder")


def _differs(existing: NeuronSet, control: _Control) -> str | None:
    if not holds_plain_draw(existing, control.shape, control.k, control.seed):
        return f"holds other neurons than the random draw of k={control.k}, seed {control.seed} for this model shape"
    if existing.means:
        other = next((p for p, means in control.means_by_scores if not _same_values(existing.means, means)), None)
        return None if other is None else f"holds that draw with means other than {other}'s"
    if control.neuron_set.means:
        return f"holds that draw without the means {control.means_by_scores[0][0]} gives"
    return None


def random_controls(
    like: Sequence[str],
    seeds: int | Sequence[int] = 10,
    *,
    layer_matched: bool = False,
    site_matched: bool = False,
    out: str | os.PathLike | None = None,
    model: str | None = None,
    revision: str | None = None,
    command: str | None = None,
    force: bool = False,
) -> dict[Path, bool]:
    """Random controls: for each seed, as many random neurons as each ``like`` set.

    Plain controls depend only on the model shape, k and the seed, so every set of k neurons
    in a folder shares one file: ``<out>/random/k<K>-seed<N>.safetensors``, written once,
    listing the sets it serves (``like``), with the means when their scores files agree on
    them and no per-neuron scores. One that already holds the draw is kept as it is;
    ``--layer-matched`` controls are per relation, ``<out>/random/<relation>-layer-seed<N>``,
    with the relation's scores and means; ``--site-matched`` ones likewise,
    ``<out>/random/<relation>-site-seed<N>`` (as many per site as the set has, any layer).
    Default ``out``: the set's folder (the working directory for a shipped set). Returns every control file of the call, once, with
    whether it was written now (False: it was there already).

    Raises ``NeuronSetError`` for a set that does not fit its shape, ``UsageError`` for no
    seeds or both ``layer_matched`` and ``site_matched``, ``OutputError`` for a shipped ``out``
    or a shared file that holds something else (unless ``force``), all before anything is written.
    """
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise UsageError("--seeds must be at least 1")
    if layer_matched and site_matched:
        raise UsageError("layer_matched and site_matched exclude each other: give one (or neither, for plain controls)")
    likes = [_load_like(name, model, revision, out) for name in like]  # every input is checked before anything is written
    controls: list[_Control] = []
    if layer_matched or site_matched:
        match = "layer" if layer_matched else "site"
        controls = [_matched(one, seed, command, match) for one in likes for seed in seed_list]
    else:
        groups: dict[tuple[Path, int], list[_Like]] = {}
        for one in likes:
            groups.setdefault((one.folder.root.resolve(), len(one.base)), []).append(one)
        for (_, k), members in groups.items():
            odd = next((m for m in members if m.shape != members[0].shape), None)
            if odd is not None:
                raise UsageError(f"{members[0].name} and {odd.name} are for different model shapes but would share "
                                 f"{members[0].folder.random_path(k, 0).parent}; give them separate --out folders")
            controls += [_shared(members, k, seed, command) for seed in seed_list]
    with locked(like.folder.root for like in likes):  # no other relspec command writes these folders meanwhile
        kept = {control.path: _kept(control, force) for control in controls}
        with StagedFiles() as staged:  # the call's controls appear together or not at all
            for control in controls:
                if not kept[control.path]:
                    control.neuron_set.save(control.path, staged)
    return {path: not was_there for path, was_there in kept.items()}


def random_sets(like: Sequence[str], seeds: int | Sequence[int] = 10, **options: Any) -> list[Path]:
    """``random_controls`` (the same arguments and errors), as the list of control files.

    Args:
        like: the sets to match (paths or shipped names): as many random neurons as each.
        seeds: how many seeds (0 … n−1), or the seeds themselves.
        **options: ``random_controls``' keywords (``layer_matched``, ``site_matched``, ``out``, …).

    Returns:
        Every control file of the call, once (``<out>/random/k<K>-seed<N>.safetensors``, …).

    Example:
        >>> from relspec_lmeval import NeuronSet, random_sets
        >>> paths = random_sets(["relspec-tiny/person_father"], seeds=2, out="controls")
        >>> [p.name for p in paths]
        ['k38-seed0.safetensors', 'k38-seed1.safetensors']
        >>> len(NeuronSet.load(paths[0]))
        38
    """
    return list(random_controls(like, seeds, **options))


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

    Args:
        scores_paths: scores files (``<sets>/scores/<relation>.safetensors``).
        k: neurons per set.
        select: ``top``, or ``both`` (top ⌈k/2⌉ + bottom ⌊k/2⌋).
        skip: leave out the ``skip`` highest first.
        out: the folder (default below); command: recorded in the files.

    Returns:
        The set files written.

    (the existing Default/Raises paragraph stays)

    Example:
        >>> from relspec_lmeval import NeuronSet, select_sets
        >>> from relspec_lmeval.util.resources import resource_dir
        >>> [path] = select_sets([resource_dir("neuron_sets") / "relspec-tiny" / "scores" / "person_father.safetensors"], 10, out="k10")
        >>> path.as_posix(), len(NeuronSet.load(path))
        ('k10/person_father.safetensors', 10)
    """
    cuts, roots = [], set()
    for path in scores_paths:  # every input is checked before anything is written
        scores = load_scores(path)
        if k > scores.layout.total:
            raise NeuronSetError(f"--k {k} is larger than the {scores.layout.total} neurons in {path}")
        relation = scores.relation or Path(path).stem
        meta = _cut_metadata(scores, Path(path), k, select, skip, command)
        neuron_set = scores.to_neuron_set(k, select, meta, skip)  # raises for a bad k, skip or select
        folder = default_folder(SetsFolder.of_scores_file(path).root, out)[0]
        roots.add(folder.root)  # the sets folder the cut goes into (or --out)
        folder = folder if out is not None else folder.cut(k, select, skip)
        cuts.append((neuron_set, folder.set_path(relation)))
    with locked(roots), StagedFiles() as staged:
        return [neuron_set.save(target, staged) for neuron_set, target in cuts]

