"""``SetsFolder``: the one owner of the layout of a sets folder.

A sets folder is what ``relspec identify --out`` writes and ``relspec reproduce
--neuron-sets`` reads (shipped example: ``neuron_sets/relspec-tiny/``)::

    <root>/<relation>.safetensors              the relation's set (top k)
    <root>/scores/<relation>.safetensors       every neuron's score and mean
    <root>/random/<relation>-seed<N>.safetensors   random controls like the set
    <root>/random/<relation>-layer-seed<N>.safetensors   the same, drawn per (layer, site)
    <root>/k<N>[-both][-skip<S>]/<relation>.safetensors   re-cuts by ``relspec select``
    <dir>/dampen[-a<A>][-t<T>]/<name>.safetensors   a set of <dir> with AurA's factors (``relspec dampen``)
    <root>/dampen-all[-a<A>][-t<T>]/<relation>.safetensors   every neuron above the threshold, from scores/
    <root>/summary.json                        what identify did, per relation
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from relspec_lmeval.sets.fileformat import SUFFIX

__all__ = ["SCORES_DIR", "SUMMARY_FILE", "SetsFolder", "cut_name", "dampen_name"]

SCORES_DIR = "scores"
RANDOM_DIR = "random"
SUMMARY_FILE = "summary.json"


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

    def random_path(self, relation: str, seed: int, layer_matched: bool = False) -> Path:
        kind = "-layer" if layer_matched else ""  # both kinds of control can live side by side
        return self.root / RANDOM_DIR / f"{relation}{kind}-seed{seed}{SUFFIX}"

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
