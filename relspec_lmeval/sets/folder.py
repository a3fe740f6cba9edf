"""``SetsFolder``: the one owner of the layout of a sets folder.

A sets folder is what ``relspec identify --out`` writes and ``relspec reproduce
--neuron-sets`` reads (shipped example: ``neuron_sets/relspec-tiny/``)::

    <root>/<relation>.safetensors              the relation's set (top k)
    <root>/scores/<relation>.safetensors       every neuron's score and mean
    <root>/random/k<K>-seed<N>.safetensors     a random control of K neurons, shared by every
                                               relation whose set has K (the draw depends only
                                               on the model shape, K and the seed)
    <root>/random/<relation>-layer-seed<N>.safetensors   drawn per (layer, site) like the relation's set
    <root>/random/<relation>-site-seed<N>.safetensors    drawn per site (all layers) like the relation's set
    <root>/k<N>[-both][-skip<S>]/<relation>.safetensors   re-cuts by ``relspec select``
    <root>/heads<N>[-qkv]/<relation>.safetensors   the top N attention heads (``relspec select --heads``)
    <dir>/dampen[-a<A>][-t<T>]/<name>.safetensors   a set of <dir> with AurA's factors (``relspec dampen``)
    <root>/dampen-all[-a<A>][-t<T>]/<relation>.safetensors   every neuron above the threshold, from scores/
    <root>/summary.json                        what identify did, per relation

Folders written before the shared controls hold ``random/<relation>-seed<N>.safetensors``
(the same neurons as ``k<K>-seed<N>``, one copy per relation); ``find_random`` still finds them.

A folder is one identify run (docs/identification.md, "One run per folder"): a command that
writes into it holds ``<root>/.relspec.lock`` (``lock``), and ``earlier_run`` says whether a new
identify run may add its relations to what is there (the same model, data, method, parameters,
package version) or must refuse; ``run_files`` is what ``--force`` replaces.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterable, Mapping
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from relspec_lmeval.errors import NeuronSetError, OutputError
from relspec_lmeval.sets.fileformat import HEADER_KEY, SUFFIX
from relspec_lmeval.util.locks import folder_lock

__all__ = [
    "LOCK_FILE", "SCORES_DIR", "SUMMARY_FILE", "EarlierRun", "SetsFolder", "cut_name", "dampen_name", "heads_name", "locked", "run_record",
]

SCORES_DIR = "scores"
RANDOM_DIR = "random"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".relspec.lock"  # held by the command writing the folder (util.locks.folder_lock)
_LEGACY_RANDOM = re.compile(r"(?P<relation>.+)-seed(?P<seed>\d+)")
_MATCHED = ("-layer", "-site")  # <relation>-layer-seed<N>, <relation>-site-seed<N>: not legacy plain controls
_CUT = re.compile(r"k\d+(-both)?(-skip\d+)?|heads\d+(-qkv)?")  # cut_name's and heads_name's folders
_ENTRY_KEYS = {"det_prompts", "correct", "positives", "negatives", "set_file", "scores_file"}  # of a summary entry, as kept
# what --force removes, in the words of its refusals
REPLACED = "its sets, scores, random controls, re-cuts, dampened sets and summary.json go when this run writes its first set"


def cut_name(k: int, select: str = "top", skip: int = 0) -> str:
    """``k384``, ``k384-both``, ``k300-skip200``: the folder of one re-cut."""
    return f"k{k}" + ("-both" if select == "both" else "") + (f"-skip{skip}" if skip else "")


def heads_name(n: int, via: str = "o_proj") -> str:
    """``heads4``, ``heads4-qkv``: the folder of ``relspec select --heads N`` (``--via qkv``)."""
    return f"heads{int(n)}" + ("-qkv" if via == "qkv" else "")


def dampen_name(alpha: float = 1.0, threshold: float = 0.5, *, every_neuron: bool = False) -> str:
    """``dampen``, ``dampen-a0.5``, ``dampen-all-t0.6``: the folder of ``relspec dampen``'s sets."""
    return ("dampen-all" if every_neuron else "dampen") + (f"-a{alpha:g}" if alpha != 1.0 else "") + (
        f"-t{threshold:g}" if threshold != 0.5 else ""
    )


@dataclass(frozen=True)
class SetsFolder:
    """The layout of a sets folder (``relspec identify --out``): the one place that names its files.

    Args:
        root: the folder (it need not exist yet).

    Example:
        >>> from relspec_lmeval import SetsFolder
        >>> folder = SetsFolder("neuron_sets/demo")
        >>> folder.set_path("person_father").as_posix(), folder.scores_path("person_father").as_posix()
        ('neuron_sets/demo/person_father.safetensors', 'neuron_sets/demo/scores/person_father.safetensors')
        >>> folder.summary_path.name, folder.cut(500, "both").root.name
        ('summary.json', 'k500-both')
    """
    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def of_scores_file(cls, path: str | os.PathLike) -> SetsFolder:
        """The folder a ``scores/<relation>.safetensors`` file belongs to."""
        return cls(Path(path).resolve().parent.parent)

    def set_path(self, relation: str) -> Path:
        return self.root / f"{relation}{SUFFIX}"

    def scores_path(self, relation: str) -> Path:
        return self.root / SCORES_DIR / f"{relation}{SUFFIX}"

    def random_path(self, k: int, seed: int) -> Path:
        """The plain random control of ``k`` neurons, one file for every relation whose set has ``k``."""
        return self.root / RANDOM_DIR / f"k{int(k)}-seed{int(seed)}{SUFFIX}"

    def layer_random_path(self, relation: str, seed: int) -> Path:
        """The control drawn per (layer, site) like ``relation``'s set: its own file, as its counts are its own."""
        return self.root / RANDOM_DIR / f"{relation}-layer-seed{int(seed)}{SUFFIX}"

    def site_random_path(self, relation: str, seed: int) -> Path:
        """The control drawn per site (over all layers) like ``relation``'s set: its own file, like a layer-matched one."""
        return self.root / RANDOM_DIR / f"{relation}-site-seed{int(seed)}{SUFFIX}"

    def find_site_random(self, relation: str, seed: int) -> Path | None:
        """``relation``'s site-matched control of ``seed`` here, or None."""
        path = self.site_random_path(relation, seed)
        return path if path.is_file() else None

    def legacy_random_path(self, relation: str, seed: int) -> Path:
        """Where folders written before the shared controls keep ``relation``'s plain control."""
        return self.root / RANDOM_DIR / f"{relation}-seed{int(seed)}{SUFFIX}"

    def find_random(self, relation: str, k: int, seed: int) -> Path | None:
        """The plain control of ``relation``'s set (``k`` neurons) here: the shared file, else a
        legacy per-relation one, else None (never a layer- or site-matched control: ``<r>-site`` is no relation's legacy name)."""
        legacy = [] if relation.endswith(_MATCHED) else [self.legacy_random_path(relation, seed)]
        for path in (self.random_path(k, seed), *legacy):
            if path.is_file():
                return path
        return None

    @staticmethod
    def legacy_random_name(path: str | os.PathLike) -> tuple[SetsFolder, str, int] | None:
        """``<root>/random/<relation>-seed<N>[.safetensors]`` → (folder, relation, seed); None for any
        other name (layer- and site-matched controls keep their per-relation names)."""
        path = Path(path)
        name = path.name.removesuffix(SUFFIX)
        found = _LEGACY_RANDOM.fullmatch(name)
        if path.parent.name != RANDOM_DIR or found is None or found["relation"].endswith(_MATCHED):
            return None
        return SetsFolder(path.parent.parent), found["relation"], int(found["seed"])

    def cut(self, k: int, select: str = "top", skip: int = 0) -> SetsFolder:
        """The sub-folder holding the sets re-cut at ``k`` (itself laid out like a sets folder)."""
        return SetsFolder(self.root / cut_name(k, select, skip))

    def heads(self, n: int, via: str = "o_proj") -> SetsFolder:
        """The sub-folder holding the sets of the top ``n`` attention heads (``relspec select --heads``)."""
        return SetsFolder(self.root / heads_name(n, via))

    @property
    def summary_path(self) -> Path:
        return self.root / SUMMARY_FILE

    def relations(self) -> list[str]:
        """Relations with a set file here."""
        return sorted(p.name[: -len(SUFFIX)] for p in self.root.glob(f"*{SUFFIX}"))

    def own_files(self) -> list[Path]:
        """The sets and scores identify wrote here (what ``earlier_run`` inspects)."""
        return sorted([*self.root.glob(f"*{SUFFIX}"), *(self.root / SCORES_DIR).glob(f"*{SUFFIX}")])

    def lock(self, flag: str = "--out") -> AbstractContextManager[Path]:
        """Held while a command writes here: a second writer refuses at once (``util.locks.folder_lock``)."""
        return folder_lock(self.root, LOCK_FILE, flag)

    def derived_files(self) -> list[Path]:
        """Files made from this folder's sets and scores: random controls (plain, layer- and
        site-matched, legacy), re-cuts (``k<N>…``, ``heads<N>…``), dampened sets."""
        folders = [self.root / RANDOM_DIR]
        if self.root.is_dir():
            folders += [p for p in self.root.iterdir() if p.is_dir() and (_CUT.fullmatch(p.name) or p.name.split("-")[0] == "dampen")]
        return sorted(p for folder in folders for p in folder.glob(f"*{SUFFIX}"))

    def run_files(self) -> list[Path]:
        """Everything of an identify run here (``--force`` removes what the new run does not rewrite);
        a file without a relspec header is not one of them."""
        made = [p for p in [*self.own_files(), *self.derived_files()] if _relspec_metadata(p) is not None]
        return [*made, *([self.summary_path] if self.summary_path.is_file() else [])]

    def remove(self, paths: Iterable[Path]) -> None:
        """Delete ``paths`` and the derived folders they leave empty."""
        for path in paths:
            path.unlink(missing_ok=True)
            if path.parent != self.root and path.parent.name != SCORES_DIR and not any(path.parent.iterdir()):
                path.parent.rmdir()

    def earlier_run(self, ours: Mapping[str, Any], later: Collection[str] = ()) -> EarlierRun | None:
        """The identify run this folder holds, when one with ``ours`` (``run_record``) may add to it.

        None when the folder holds no sets. Raises ``NeuronSetError`` for sets of another model
        and ``OutputError`` when the folder is not one run with these fields (another k, method,
        data, ...; no summary; a summary that does not list exactly the sets present): one line with
        the way out. Fields in ``later`` (known once the model is loaded) are compared by ``check``.
        """
        metadata = {p: m for p, m in ((p, _relspec_metadata(p)) for p in self.own_files()) if m is not None}
        if not metadata:  # a file without a relspec header is not ours to judge
            return None
        for path, meta in metadata.items():
            _same_model(path, meta.get("model") or {}, ours.get("model") or {})
        summary = _read_json(self.summary_path)
        entries = summary.get("relations") if isinstance(summary, dict) else None
        if not isinstance(entries, dict) or not all(isinstance(e, dict) and _ENTRY_KEYS <= e.keys() for e in entries.values()):
            self._refuse(f"holds neuron sets but no readable {SUMMARY_FILE}")
        listed = {self.root / name for e in entries.values() for name in (e.get("set_file"), e.get("scores_file")) if name}
        if listed != set(metadata):
            odd = sorted(listed ^ set(metadata))[0]
            self._refuse(f"has a {SUMMARY_FILE} that does not list exactly its sets ({odd.relative_to(self.root)} is "
                         f"{'missing' if odd in listed else 'not listed'})")
        earlier = EarlierRun(self, summary, metadata)
        earlier.check(ours, later)
        return earlier

    def _refuse(self, why: str) -> NoReturn:
        raise OutputError(f"--out {self.root} {why}; use a new --out, or --force to replace it ({REPLACED})")


def locked(roots: Iterable[str | os.PathLike], flag: str = "the sets folder") -> ExitStack:
    """The locks of every folder in ``roots`` (each once), held until the returned stack closes."""
    stack = ExitStack()
    try:
        for root in sorted({Path(r).resolve() for r in roots}):
            stack.enter_context(SetsFolder(root).lock(flag))
    except BaseException:
        stack.close()
        raise
    return stack


def run_record(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two identify runs one (a set's or scores file's metadata → the fields compared)."""
    return {
        "model": metadata.get("model"), "method": metadata.get("method"), "data_hash": metadata.get("data_hash"),
        "package_version": metadata.get("package_version"), "means_over": (metadata.get("data") or {}).get("means_over"),
        "parameters": metadata.get("parameters") or {},
    }


@dataclass
class EarlierRun:
    """The identify run a sets folder holds, which a new run with the same fields adds its relations to."""

    folder: SetsFolder
    summary: dict[str, Any]
    metadata: dict[Path, dict[str, Any]]

    def check(self, ours: Mapping[str, Any], later: Collection[str] = ()) -> None:
        """``OutputError`` for the first field in which a file (or the summary) differs from ``ours``."""
        summary = {"model": self.summary.get("model"), "data_hash": (self.summary.get("data") or {}).get("pool_hash"),
                   "parameters": self.summary.get("parameters") or {}}
        for name, theirs in [*((p.relative_to(self.folder.root), run_record(m)) for p, m in self.metadata.items()), (SUMMARY_FILE, summary)]:
            why = _difference("", {k: theirs.get(k) for k in theirs if k != "parameters"}, {k: ours[k] for k in theirs if k in ours and k != "parameters"})
            why = why or _difference("", theirs["parameters"], ours["parameters"], skip=later)
            if why:
                self.folder._refuse(f"holds {name} made with {why}")

    def kept(self, rewritten: Collection[str]) -> dict[str, dict[str, Any]]:
        """The summary entries of the relations this run does not write again."""
        return {r: e for r, e in self.summary["relations"].items() if r not in rewritten}

    def check_means(self, relations: Iterable[str], means: Any, environment: Mapping[str, Any]) -> None:
        """``OutputError`` unless the kept relations' scores hold exactly ``means`` (float32): the
        same parameters on another torch, transformers or CPU give means a few ulps off."""
        import torch

        from relspec_lmeval.sets.scores import load_scores

        for relation in relations:
            if not torch.equal(load_scores(self.folder.scores_path(relation)).means, means):
                theirs = self.summary.get("environment")
                where = f" (made under {json.dumps(theirs, sort_keys=True)}, this run {json.dumps(dict(environment), sort_keys=True)})" if theirs != environment else ""
                self.folder._refuse(f"holds {SCORES_DIR}/{relation}{SUFFIX} whose means differ from this run's{where}")


def _show(value: Any) -> str:
    return "nothing" if value is None else json.dumps(value, sort_keys=True)


def _difference(name: str, theirs: Any, ours: Any, skip: Collection[str] = ()) -> str | None:
    """``k=38 (this run: 20)``, ``model.name="a" (this run: "b")``: the first differing field; None when equal."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for key in sorted(theirs.keys() | ours.keys()):
            if key in skip and key in theirs and key in ours:
                continue
            if theirs.get(key) != ours.get(key):
                return _difference(f"{name}.{key}" if name else key, theirs.get(key), ours.get(key))
        return None
    return None if theirs == ours else f"{name}={_show(theirs)} (this run: {_show(ours)})"


def _same_model(path: Path, theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> None:
    if theirs.get("config_hash") and ours.get("config_hash") and theirs["config_hash"] != ours["config_hash"]:
        raise NeuronSetError(
            f"{path} was made for model {theirs.get('name')!r} (config {theirs['config_hash']}), but this run uses "
            f"{ours.get('name')!r} (config {ours['config_hash']}); use another --out or --force"
        )


def _relspec_metadata(path: Path) -> dict[str, Any] | None:
    """The metadata bag of a relspec safetensors file (its header only); None for any other file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            block = json.loads((handle.metadata() or {})[HEADER_KEY])
        return block["metadata"] if isinstance(block, dict) and isinstance(block.get("metadata"), dict) else None
    except Exception:  # noqa: BLE001 - unreadable or foreign: not an identify output
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
