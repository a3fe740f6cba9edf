"""The prompts identification works on: P^det of every relation, and the choice of
positives and negatives for one relation."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relspec_lmeval.data import relations as rel
from relspec_lmeval.data.lre import resolve_lre_dir
from relspec_lmeval.data.tasks import GROUPS, GroupSpec, find_group
from relspec_lmeval.errors import DataError, UsageError
from relspec_lmeval.util.suggest import did_you_mean

__all__ = ["SELECTION_SEED_PREFIX", "Pool", "choose_prompts", "load_pool", "parse_relations", "selection_hash"]

SELECTION_SEED_PREFIX = "relspec-identify"


@dataclass
class Pool:
    """P^det of every relation the negatives may come from, in a fixed order."""

    docs: dict[str, list[dict]]
    source: dict[str, Any]
    objects: dict[str, list[str]] = field(default_factory=dict)  # every object of each relation (choice distractors)

    @property
    def relations(self) -> list[str]:
        return list(self.docs)

    def flat(self) -> list[tuple[str, int]]:
        return [(relation, i) for relation, docs in self.docs.items() for i in range(len(docs))]

    def hash(self) -> str:
        return rel.docs_hash(doc for docs in self.docs.values() for doc in docs)


def _unknown(name: str, known: Sequence[str], what: str = "relation") -> UsageError:
    return UsageError(f"unknown {what} {name!r}.{did_you_mean(name, known)} Known: {', '.join(known)}")


def _check_docs(docs: Mapping[str, list[dict]], where: str) -> None:
    """Every relation needs P^det prompts; found now, before any model is loaded."""
    for name, items in docs.items():
        if not items:
            raise DataError(f"relation {name!r} in {where} has no P^det prompts (too few distinct subjects to split)")


def _data_group(name: str) -> GroupSpec:
    """``--data NAME`` that is not a folder: a P^det task group, or a ``UsageError`` saying what exists."""
    if name not in {g.name for g in GROUPS} and not any(name in g.tasks() for g in GROUPS):
        det_groups = [g.name for g in GROUPS if g.kind == "recall" and g.split == "det"]
        raise UsageError(
            f"--data {name!r} is neither a folder nor a known task group.{did_you_mean(name, [g.name for g in GROUPS])} "
            f"Identification groups: {', '.join(det_groups)}"
        )
    return find_group(name)


def load_pool(
    data: str | os.PathLike | None,
    requested: Sequence[str] | None,
    *,
    template_set: str = "main",
    language: str = "en",
    lre_dir: str | os.PathLike | None = None,
) -> Pool:
    """The P^det docs of the pool.

    ``data`` is a folder of LRE-format JSON files (None: the LRE folder that
    ``data.lre.resolve_lre_dir`` finds) or a task-group name such as
    ``relation_recall_det``. Folder: the pool is the paper's relations present in it plus
    any other relation named in ``requested`` (a folder without paper relations: all of its
    relations). Task group: its tasks' ``dataset_kwargs`` (they must use split ``det``),
    loaded exactly as lm-eval loads them (``relations.custom_dataset``).

    Raises ``DataError`` (files missing or malformed, named) and ``UsageError`` (an unknown
    relation or group); every relation file is read and checked here.
    """
    if data is None or Path(data).expanduser().is_dir():
        folder = resolve_lre_dir(Path(data).expanduser() if data is not None else lre_dir)
        available = rel.available_relations(folder)
        paper = [r for r in rel.RELATIONS if r in available]
        names = paper + [r for r in (requested or []) if r in available and r not in paper] if paper else list(available)
        for name in requested or []:
            if name not in available:
                raise _unknown(name, available)
        docs = {name: rel.build_docs(name, "det", template_set, language, folder) for name in names}
        _check_docs(docs, str(folder))
        source = {"kind": "folder", "name": str(data) if data is not None else "LRE", "template_set": template_set, "language": language}
        return Pool(docs, source, {name: rel.relation_objects(name, folder) for name in names})

    group = _data_group(str(data))
    if group.kind != "recall" or group.split != "det":
        raise UsageError(
            f"task group {group.name!r} uses split {group.split if group.kind == 'recall' else group.kind!r}; "
            "identification uses P^det (e.g. --data relation_recall_det)"
        )
    docs, objects = {}, {}
    for relation in group.relations:
        kwargs = group.dataset_kwargs(relation)
        dataset = rel.custom_dataset(**{**kwargs, "lre_dir": lre_dir})
        docs[relation] = [dict(d) for d in dataset["test"].to_list()]
        objects[relation] = rel.relation_objects(relation, rel.task_data_dir(kwargs.get("data_dir"), lre_dir))
    _check_docs(docs, f"task group {group.name}")
    for r in requested or []:
        if r not in docs:
            raise _unknown(r, list(docs))
    return Pool(docs, {"kind": "task_group", "name": group.name}, objects)


def parse_relations(spec: str | Sequence[str] | None) -> list[str] | None:
    """``all`` (or None) → None; ``a,b`` → ["a", "b"]."""
    if spec is None:
        return None
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    if names == ["all"]:
        return None
    if not names or not all(names):
        raise UsageError(f"empty relation name in {spec!r}")
    if len(set(names)) != len(names):
        raise UsageError(f"relation named twice in {spec!r}")
    return names


def choose_prompts(
    pool: Pool, correct: Mapping[str, Sequence[bool]], relation: str, *, cap: int, negative_ratio: int, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(positives, negatives) as (relation, position in its P^det) pairs, each sorted.

    Seeded by (seed, relation), so a relation's choice does not depend on which other
    relations are identified in the same run.
    """
    rng = random.Random(f"{SELECTION_SEED_PREFIX}/{seed}/{relation}")
    right = [i for i, ok in enumerate(correct[relation]) if ok]
    chosen = sorted(rng.sample(right, cap)) if len(right) > cap else right
    positives = [(relation, i) for i in chosen]
    others = [(r, i) for r, i in pool.flat() if r != relation]
    if not others:
        raise DataError(f"no negatives for {relation!r}: the data has no other relation")
    wanted = negative_ratio * len(positives)
    if wanted >= len(others):
        negatives = others
    else:
        negatives = [others[j] for j in sorted(rng.sample(range(len(others)), wanted))]
    return positives, negatives


def selection_hash(positives: Sequence[tuple[str, int]], negatives: Sequence[tuple[str, int]], pool: Pool) -> str:
    digest = hashlib.sha256()
    for label, items in (("+", positives), ("-", negatives)):
        for r, i in items:
            digest.update(f"{label}\t{r}\t{pool.docs[r][i]['prompt']}\n".encode())
    return digest.hexdigest()
