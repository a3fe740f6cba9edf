"""``relation_choice``: each recall prompt with its gold object among other objects of the relation.

Greedy 2-token accuracy is coarse for a model that knows few facts; a multiple-choice
version of the same prompts measures how much probability the gold gets relative to other
answers of the same type. Each doc: the P^eva (or P^det) prompt, its first gold, and up to
``DISTRACTORS`` other objects of the same relation that are not golds of that subject,
chosen and ordered by sha256 (seeded, deterministic on every machine and version, like the
split), scored by lm-eval ``multiple_choice`` (``acc``, ``acc_norm``). Chance level of a
doc is 1 / its number of choices (docs/tasks.md lists it per relation).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from relspec_lmeval.data.relations import as_dataset, build_docs, relation_objects, task_data_dir

__all__ = ["CHOICE_SEED", "DISTRACTORS", "build_choice_docs", "chance_level", "custom_choice_dataset", "with_choices"]

CHOICE_SEED = "relspec-choice-1"
DISTRACTORS = 9


def _key(*parts: str) -> str:
    return hashlib.sha256("/".join((CHOICE_SEED, *parts)).encode()).hexdigest()


def build_choice_docs(
    relation: str, split: str = "eva", template_set: str = "main", language: str = "en", data_dir: str | Path | None = None,
) -> list[dict]:
    """The recall docs of ``relation`` with ``choices`` (gold included) and ``target`` (its index)."""
    return with_choices(build_docs(relation, split, template_set, language, data_dir), relation_objects(relation, data_dir))


def with_choices(docs: list[dict], objects: list[str]) -> list[dict]:
    """Each recall doc with ``choices`` (its first gold and up to ``DISTRACTORS`` of ``objects``)
    and ``target``; what ``relation_choice`` asks and what ``identify --correct-by choice`` checks."""
    out = []
    for doc in docs:
        gold = doc["golds"][0]
        others = [o for o in objects if o not in doc["golds"]]  # never another gold of the subject
        distractors = sorted(others, key=lambda o, s=doc["subject"]: _key(doc["relation"], s, o))[:DISTRACTORS]
        choices = sorted([gold, *distractors], key=lambda o, s=doc["subject"]: _key("order", doc["relation"], s, o))
        out.append({**doc, "choices": choices, "target": choices.index(gold)})
    return out


def chance_level(docs: list[dict]) -> float:
    """Mean over docs of 1 / number of choices: what guessing scores."""
    return sum(1 / len(d["choices"]) for d in docs) / len(docs) if docs else 0.0


def custom_choice_dataset(
    relation: str, split: str = "eva", template_set: str = "main", language: str = "en", data_dir: str | None = None,
    lre_dir: str | None = None, **_metadata: Any,
):
    """lm-eval ``custom_dataset`` for the choice tasks (same data location rules as recall)."""
    return as_dataset(build_choice_docs(relation, split, template_set, language, task_data_dir(data_dir, lre_dir, relation)))
