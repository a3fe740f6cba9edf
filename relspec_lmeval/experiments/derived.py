"""The sets ``relspec reproduce`` derives from the input folder: where each one is, and making those missing.

Random controls of two kinds: *uniform* (``random``: k neurons uniform over all of the model's,
the paper's; one ``random/k<K>-seed<N>`` file per k and seed, shared by every relation whose set
has k neurons) and *site-matched* (``random_site``: as many neurons per site as the relation's
set has there, uniform over that site's neurons in all layers; ``random/<r>-site-seed<N>``, the
relation's own). Top-k and rank-range cuts come from ``DIR/scores/`` (``select_sets``). A set
in the input folder is used as it is (checked against the model); one reproduce made earlier
under ``OUT/sets`` is reused only if it was made from the same inputs, else made again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.experiments.study import Condition
from relspec_lmeval.identify.controls import random_sets, select_sets
from relspec_lmeval.identify.draws import holds_plain_draw, site_matched_draw
from relspec_lmeval.sets.folder import SetsFolder
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.shape import ModelShape
from relspec_lmeval.util.hashing import file_sha256

__all__ = ["RANDOM_KINDS", "derived_sets", "is_topk", "load_checked", "make_derived"]

RANDOM_KINDS = ("random", "random_site")
COMMAND = "relspec reproduce"


def is_topk(s: NeuronSet) -> bool:
    """True when the set is exactly the top len(s) of its scores file (what ``select_sets`` would cut)."""
    meta = s.metadata
    return meta.get("method") == "ap" and meta.get("select", "top") == "top" and not meta.get("skip") and meta.get("k") == len(s)


def load_checked(path: Path, shape: ModelShape) -> NeuronSet:
    s = NeuronSet.load(path)
    s.validate(shape)
    return s


def holds_site_draw(made: NeuronSet, base: NeuronSet, shape: ModelShape, seed: int) -> bool:
    """True when ``made`` records ``shape`` and holds exactly ``base``'s site-matched draw of ``seed``."""
    try:
        if made.recorded_shape() != shape:
            return False
    except NeuronSetError:  # no shape recorded: not a control relspec wrote
        return False
    drawn, have = site_matched_draw(base, shape, seed), made.neurons
    return have.keys() == drawn.keys() and all(torch.equal(have[key], drawn[key]) for key in drawn)


class _Locator:
    """Finds each derived set, in the input folder (``given``) or under ``OUT/sets`` (``ours``)."""

    def __init__(self, loaded: dict[str, NeuronSet], sets_dir: Path, made: Path, shape: ModelShape) -> None:
        self.loaded, self.sets_dir, self.shape = loaded, sets_dir, shape
        self.given, self.ours = SetsFolder(sets_dir), SetsFolder(made)
        self.derived: dict[Condition, Path] = {}
        self.to_make: list[Condition] = []
        self._sources: dict[Path, str | None] = {}

    def _source_sha(self, path: Path) -> str | None:
        if path not in self._sources:
            self._sources[path] = file_sha256(path) if path.is_file() else None
        return self._sources[path]

    def made_from_inputs(self, path: Path, cond: Condition) -> bool:
        """A set an earlier run made from the same inputs (else it is made again): a random
        control holds its draw (uniform: of (model shape, k, seed); site-matched: of the
        relation's set and the seed), which is all it depends on (runs use mode=zero, so its
        means do not matter); a cut names the same scores file."""
        if not path.is_file():
            return False
        try:
            made = NeuronSet.load(path)
        except NeuronSetError:
            return False  # unreadable: made again
        base, seed = self.loaded[cond.relation], int(cond.seed or 0)
        if cond.kind == "random":
            return holds_plain_draw(made, self.shape, len(base), seed)
        if cond.kind == "random_site":
            return holds_site_draw(made, base, self.shape, seed)
        scores = self._source_sha(self.given.scores_path(cond.relation))
        return scores is None or (made.metadata.get("scores_file") or {}).get("sha256") == scores

    def locate(self, cond: Condition, given: Path, ours: Path, like: NeuronSet | None = None) -> None:
        if given.is_file():
            s = load_checked(given, self.shape)
            if like is not None and len(s) != len(like):
                raise NeuronSetError(f"random control {given} has {len(s)} neurons, its relation's set {len(like)}")
            self.derived[cond] = given
        else:
            self.derived[cond] = ours
            if not self.made_from_inputs(ours, cond):
                self.to_make.append(cond)

    def randoms(self, r: str, seeds: Sequence[int], site_seeds: Sequence[int]) -> None:
        base = self.loaded[r]
        k_own = len(base)  # every relation whose set has k_own neurons shares the uniform controls (and their runs)
        for s in seeds:
            cond = Condition("random", r, seed=s)
            found = self.given.find_random(r, k_own, s)  # also a folder's legacy per-relation file
            earlier = self.ours.find_random(r, k_own, s)  # an OUT/sets of an earlier version: its runs stay valid
            mine = earlier if earlier is not None and self.made_from_inputs(earlier, cond) else self.ours.random_path(k_own, s)
            self.locate(cond, found or self.given.random_path(k_own, s), mine, like=base)
        for s in site_seeds:
            cond = Condition("random_site", r, seed=s)
            self.locate(cond, self.given.find_site_random(r, s) or self.given.site_random_path(r, s), self.ours.site_random_path(r, s), like=base)


def derived_sets(
    relations: list[str], seeds: list[int], site_seeds: list[int], ks: list[int], main: dict[str, Path],
    loaded: dict[str, NeuronSet], sets_dir: Path, made: Path, shape: ModelShape,
) -> tuple[dict[Condition, Path], list[Condition]]:
    """Where each random control, top-k and rank-range set is: in the input folder (checked),
    else under ``made`` (``OUT/sets``); the second list names those still to make."""
    at = _Locator(loaded, sets_dir, made, shape)
    for r in relations:
        at.randoms(r, seeds, site_seeds)
        for k in ks:
            cond = Condition("topk", r, k=k)
            if is_topk(loaded[r]) and len(loaded[r]) == k:
                at.derived[cond] = main[r]  # the same neurons: one run serves both
            else:
                at.locate(cond, at.given.cut(k).set_path(r), at.ours.cut(k).set_path(r))
        for a, b in zip(ks, ks[1:]):
            at.locate(Condition("ranks", r, k=b - a, skip=a), at.given.cut(b - a, skip=a).set_path(r), at.ours.cut(b - a, skip=a).set_path(r))
    return at.derived, at.to_make


def make_derived(to_make: Sequence[Condition], main: dict[str, Path], sets_dir: Path, out: Path) -> None:
    """Write the derived sets in ``to_make`` under ``out`` (``OUT/sets``), from the input folder's sets and scores."""
    made = SetsFolder(out)
    for kind in RANDOM_KINDS:
        by_seeds: dict[tuple[int, ...], list[str]] = {}  # one call per seed list: each shared (k, seed) file is written once
        for r in main:
            seeds = tuple(c.seed for c in to_make if c.kind == kind and c.relation == r)
            if seeds:
                by_seeds.setdefault(seeds, []).append(str(main[r]))
        for seeds, like in by_seeds.items():
            # OUT/sets is reproduce's own: a control there that does not hold its draw is made again
            extra = {"site_matched": True} if kind == "random_site" else {}
            random_sets(like, list(seeds), out=made.root, command=COMMAND, force=True, **extra)
    for c in to_make:
        scores = [SetsFolder(sets_dir).scores_path(c.relation)]
        if c.kind == "topk":
            select_sets(scores, c.k, out=made.cut(c.k).root, command=COMMAND)
        elif c.kind == "ranks":
            select_sets(scores, c.k, skip=c.skip, out=made.cut(c.k, skip=c.skip).root, command=COMMAND)
