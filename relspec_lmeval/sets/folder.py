"""``SetsFolder``: the one owner of the layout of a sets folder.

A sets folder is what ``relspec identify --out`` writes and ``relspec reproduce
--neuron-sets`` reads (shipped example: ``neuron_sets/relspec-tiny/``)::

    <root>/<relation>.safetensors              the relation's set (top k)
    <root>/scores/<relation>.safetensors       every neuron's score and mean
    <root>/random/k<K>-seed<N>.safetensors     a random control of K neurons, shared by every
                                               relation whose set has K (the draw depends only
                                               on the model shape, K and the seed)
    <root>/random/<relation>-layer-seed<N>.safetensors   drawn per (layer, site) like the relation's set
    <root>/k<N>[-both][-skip<S>]/<relation>.safetensors   re-cuts by ``relspec select``
    <dir>/dampen[-a<A>][-t<T>]/<name>.safetensors   a set of <dir> with AurA's factors (``relspec dampen``)
    <root>/dampen-all[-a<A>][-t<T>]/<relation>.safetensors   every neuron above the threshold, from scores/
    <root>/summary.json                        what identify did, per relation

Folders written before the shared controls hold ``random/<relation>-seed<N>.safetensors``
(the same neurons as ``k<K>-seed<N>``, one copy per relation); ``find_random`` still finds them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from relspec_lmeval.sets.fileformat import SUFFIX

__all__ = ["SCORES_DIR", "SUMMARY_FILE", "SetsFolder", "cut_name", "dampen_name"]

SCORES_DIR = "scores"
RANDOM_DIR = "random"
SUMMARY_FILE = "summary.json"
_LEGACY_RANDOM = re.compile(r"(?P<relation>.+)-seed(?P<seed>\d+)")


def cut_name(k: int, select: str = "top", skip: int = 0) -> str:
    """``k384``, ``k384-both``, ``k300-skip200``: the folder of one re-cut."""
    return f"k{k}" + ("-both" if select == "both" else "") + (f"-skip{skip}" if skip else "")


def dampen_name(alpha: float = 1.0, threshold: float = 0.5, *, every_neuron: bool = False) -> str:
    """``dampen``, ``dampen-a0.5``, ``dampen-all-t0.6``: the folder of ``relspec dampen``'s sets."""
    return ("dampen-all" if every_neuron else "dampen") + (f"-a{alpha:g}" if alpha != 1.0 else "") + (
        f"-t{threshold:g}" if threshold != 0.5 else ""
    )


@dataclass(frozen=True)
class SetsFolder:
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

    def legacy_random_path(self, relation: str, seed: int) -> Path:
        """Where folders written before the shared controls keep ``relation``'s plain control."""
        return self.root / RANDOM_DIR / f"{relation}-seed{int(seed)}{SUFFIX}"

    def find_random(self, relation: str, k: int, seed: int) -> Path | None:
        """The plain control of ``relation``'s set (``k`` neurons) here: the shared file, else a
        legacy per-relation one, else None."""
        for path in (self.random_path(k, seed), self.legacy_random_path(relation, seed)):
            if path.is_file():
                return path
        return None

    @staticmethod
    def legacy_random_name(path: str | os.PathLike) -> tuple[SetsFolder, str, int] | None:
        """``<root>/random/<relation>-seed<N>[.safetensors]`` → (folder, relation, seed); None for any
        other name (layer-matched controls keep their per-relation names)."""
        path = Path(path)
        name = path.name.removesuffix(SUFFIX)
        found = _LEGACY_RANDOM.fullmatch(name)
        if path.parent.name != RANDOM_DIR or found is None or found["relation"].endswith("-layer"):
            return None
        return SetsFolder(path.parent.parent), found["relation"], int(found["seed"])

    def cut(self, k: int, select: str = "top", skip: int = 0) -> SetsFolder:
        """The sub-folder holding the sets re-cut at ``k`` (itself laid out like a sets folder)."""
        return SetsFolder(self.root / cut_name(k, select, skip))

    @property
    def summary_path(self) -> Path:
        return self.root / SUMMARY_FILE

    def relations(self) -> list[str]:
        """Relations with a set file here."""
        return sorted(p.name[: -len(SUFFIX)] for p in self.root.glob(f"*{SUFFIX}"))

    def own_files(self) -> list[Path]:
        """The sets and scores identify wrote here (what ``check_out_dir`` inspects)."""
        return sorted([*self.root.glob(f"*{SUFFIX}"), *(self.root / SCORES_DIR).glob(f"*{SUFFIX}")])
