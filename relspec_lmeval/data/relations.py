"""Relation recall data for lm-eval: splits, prompts, the paper's metric, task hooks.

Any folder of LRE-format JSON files works (``{"prompt_templates": [...],
"prompt_templates_zs": [...], "samples": [{"subject", "object"}]}``): the 12 paper
relations get the paper's templates (relation_templates.py); any other file is a
relation named after the file and uses the file's own templates.

Split rule (same on every machine, Python and lm-eval version, so no ``random``):
drop exact duplicate (subject, object) pairs, group the objects of each subject as
its golds, order subjects by sha256("<SPLIT_SEED>/<file stem>/<subject>"); the first
min(50, n_subjects // 2) are P^eva, the rest P^det. P^eva: one prompt per subject,
the i-th subject in that order gets template i mod (number of templates). P^det: every
subject with every template.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from relspec_lmeval.data.lre import resolve_lre_dir
from relspec_lmeval.data.metrics import is_correct, process_results  # noqa: F401  (re-exported: the task hooks)
from relspec_lmeval.data.templates import (
    ANSWER_AFFIXES,
    MULTILINGUAL_TEMPLATES,
    PAPER_RELATIONS,
    RelationSpec,
)
from relspec_lmeval.errors import DataError, UsageError
from relspec_lmeval.util import resources
from relspec_lmeval.util.hashing import json_sha256
from relspec_lmeval.util.suggest import did_you_mean

__all__ = [
    "EVA_SIZE",
    "LANGUAGES",
    "PPL_SIZE",
    "RELATIONS",
    "SPLIT_SEED",
    "available_relations",
    "build_docs",
    "build_ppl_docs",
    "custom_dataset",
    "custom_ppl_dataset",
    "docs_hash",
    "fill_prompt",
    "is_correct",
    "process_results",
    "relation_objects",
    "resolve_lre_dir",
]

RELATIONS: tuple[str, ...] = tuple(PAPER_RELATIONS)
LANGUAGES: tuple[str, ...] = tuple(ANSWER_AFFIXES)
SPLIT_SEED = 250217355  # the paper's arXiv id (2502.17355); the authors' seed is unknown
EVA_SIZE = 50
PPL_SIZE = 50
_PAPER_FILES = {spec.file: name for name, spec in PAPER_RELATIONS.items()}


# ---------------------------------------------------------------- finding a relation


def _relation_files(folder: Path) -> dict[str, Path]:
    """Relation name → file: paper names for the paper's files, the file stem otherwise."""
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.json")):
        found.setdefault(_PAPER_FILES.get(path.name, path.stem), path)
    return found


def available_relations(data_dir: str | Path | None = None) -> list[str]:
    """The relations with a file in ``data_dir`` (default: the LRE folder ``resolve_lre_dir`` finds), sorted."""
    return sorted(_relation_files(resolve_lre_dir(data_dir)))


def _needed(relation: str) -> tuple[str, ...]:
    """The LRE file a paper relation reads: downloaded first, so that a failed download names it."""
    spec = PAPER_RELATIONS.get(relation)
    return (spec.file,) if spec else ()


def _load_relation(relation: str, data_dir) -> tuple[str, Path, dict, RelationSpec | None]:
    files = _relation_files(resolve_lre_dir(data_dir, needed=_needed(relation)))
    # the LRE file stem of a paper relation ("landmark_on_continent") is an alias
    name = _PAPER_FILES.get(relation + ".json", relation) if relation not in files else relation
    if name not in files:
        raise DataError(
            f"No relation {relation!r} in {resolve_lre_dir(data_dir)}.{did_you_mean(relation, files)} "
            f"Available: {', '.join(sorted(files))}"
        )
    path = files[name]
    return name, path, read_relation_file(path), PAPER_RELATIONS.get(name)


def read_relation_file(path: Path) -> dict:
    """An LRE-format relation file, checked: ``DataError`` naming the file and what is wrong.

    It must be a JSON object whose ``samples`` is a non-empty list of ``{"subject": str,
    "object": str}``; templates are checked where they are used.
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read relation file {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"relation file {path} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"relation file {path} must hold a JSON object, not a {type(raw).__name__}")
    samples = raw.get("samples")
    if samples is None:
        raise DataError(f"relation file {path} has no \"samples\" list")
    if not isinstance(samples, list) or not samples:
        raise DataError(f"relation file {path}: \"samples\" must be a non-empty list of {{\"subject\", \"object\"}}")
    for i, sample in enumerate(samples):
        if not (isinstance(sample, dict) and isinstance(sample.get("subject"), str) and isinstance(sample.get("object"), str)):
            raise DataError(f"relation file {path}: sample {i} must be {{\"subject\": text, \"object\": text}}, got {sample!r:.80}")
    return raw


def _templates(name: str, raw: dict, spec, template_set: str, language: str) -> tuple[str, ...]:
    if language not in ANSWER_AFFIXES:
        raise UsageError(f"language must be one of {LANGUAGES}, not {language!r}")
    if template_set not in ("main", "t2", "file"):
        raise UsageError(f"template_set must be 'main', 't2' or 'file', not {template_set!r}")
    found: Iterable[str] | None = None
    if spec is not None and template_set != "file":
        if language == "en":
            found = spec.templates if template_set == "main" else spec.t2_templates
        elif template_set == "main":
            found = MULTILINGUAL_TEMPLATES[language].get(name)
    else:
        # a user's relation: the file's own templates; t2 falls back to LRE's zero-shot ones
        key = "prompt_templates" if template_set in ("main", "file") else "prompt_templates_zs"
        found = raw.get(key if language == "en" else f"{key}_{language}")
    if not found:
        raise DataError(f"No {template_set!r} templates in language {language!r} for {name!r}")
    return tuple(found)


# ---------------------------------------------------------------- splits and prompts


def _split_key(stem: str, subject: str) -> str:
    return hashlib.sha256(f"{SPLIT_SEED}/{stem}/{subject}".encode()).hexdigest()


def _split(stem: str, samples: list[dict]) -> tuple[list[str], list[str], dict[str, list[str]]]:
    golds: dict[str, list[str]] = {}
    for sample in samples:
        objects = golds.setdefault(sample["subject"], [])
        if sample["object"] not in objects:  # exact duplicate triple
            objects.append(sample["object"])
    order = sorted(golds, key=lambda subject: _split_key(stem, subject))
    n_eva = min(EVA_SIZE, len(order) // 2)
    return order[:n_eva], order[n_eva:], golds


def fill_prompt(template: str, subject: str, language: str = "en") -> str:
    """A template with the subject in it, wrapped in the language's "? Answer:": a prompt as the tasks build it (no BOS).

    Args:
        template: a template with ``{}`` for the subject (``PAPER_RELATIONS[r].templates``).
        subject: the subject.
        language: ``en`` or one of ``LANGUAGES`` (``ANSWER_AFFIXES``); French elides "de" before a vowel.

    Returns:
        The prompt text.

    Example:
        >>> from relspec_lmeval.data.relations import fill_prompt
        >>> fill_prompt("{} is in the country of", "Kyoto")
        'Kyoto is in the country of? Answer:'
        >>> fill_prompt("Le PDG de {} est", "Apple", "fr")
        "Le PDG d'Apple est ? Réponse :"
    """
    if language == "fr" and re.match(r"[AEIOUYÀÂÉÈÊËÎÏÔÛÜaeiouyàâéèêëîïôûü]", subject):
        template = re.sub(r"\bde \{\}", "d'{}", template)  # "Le PDG d'Apple", not "de Apple"
    prefix, suffix = ANSWER_AFFIXES[language]
    return prefix + template.replace("{}", subject) + suffix


def build_docs(
    relation: str,
    split: str = "eva",
    template_set: str = "main",
    language: str = "en",
    data_dir: str | Path | None = None,
) -> list[dict]:
    """Prompts of one relation: ``split`` "eva" (P^eva) or "det" (P^det).

    Each doc: relation, subject, golds (all objects of the subject), template,
    template_index, language, split, prompt.
    """
    if split not in ("eva", "det"):
        raise UsageError(f"split must be 'eva' or 'det', not {split!r}")
    name, path, raw, spec = _load_relation(relation, data_dir)
    templates = _templates(name, raw, spec, template_set, language)
    eva, det, golds = _split(path.stem, raw["samples"])

    def doc(subject: str, index: int) -> dict:
        return {
            "relation": name,
            "subject": subject,
            "golds": list(golds[subject]),
            "template": templates[index],
            "template_index": index,
            "language": language,
            "split": split,
            "prompt": fill_prompt(templates[index], subject, language),
        }

    if split == "eva":
        return [doc(subject, i % len(templates)) for i, subject in enumerate(eva)]
    return [doc(subject, t) for subject in det for t in range(len(templates))]


def relation_objects(relation: str, data_dir: str | Path | None = None) -> list[str]:
    """Every distinct object of the relation (all subjects, both splits), in file order."""
    _, path, raw, _ = _load_relation(relation, data_dir)
    _, _, golds = _split(path.stem, raw["samples"])
    return list(dict.fromkeys(obj for objects in golds.values() for obj in objects))


def build_ppl_docs(relation: str, data_dir: str | Path | None = None) -> list[dict]:
    """The relation-neutral sentence filled with up to 50 distinct objects of P^det."""
    name, path, raw, spec = _load_relation(relation, data_dir)
    sentence = spec.ppl_sentence if spec else raw.get("ppl_sentence")
    if not sentence:
        raise DataError(f"{name!r} has no perplexity sentence; add \"ppl_sentence\" to {path}")
    _, det, golds = _split(path.stem, raw["samples"])
    objects = list(dict.fromkeys(obj for subject in det for obj in golds[subject]))[:PPL_SIZE]
    return [
        {"relation": name, "object": obj, "sentence": sentence, "text": sentence.replace("{}", obj)}
        for obj in objects
    ]


# ---------------------------------------------------------------- provenance


def docs_hash(docs: Iterable[Mapping[str, Any]]) -> str:
    """sha256 of the docs as canonical JSON (sorted keys, no spaces, UTF-8)."""
    return json_sha256([dict(doc) for doc in docs])


# ---------------------------------------------------------------- lm-eval hooks


def task_data_dir(data_dir: str | None, lre_dir: str | None, relation: str | None = None) -> Path:
    """A task's ``data_dir`` (relative: to the package's resource folders), else LRE (``relation``'s file first)."""
    if not data_dir:
        return resolve_lre_dir(lre_dir, needed=_needed(relation) if relation else ())
    path = Path(data_dir).expanduser()
    if not path.is_absolute():

        head, *rest = path.parts
        path = resources.resource_dir(head).joinpath(*rest)  # e.g. "models/<name>/facts"
    return resolve_lre_dir(path)


def as_dataset(docs: list[dict]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def custom_dataset(
    relation: str,
    split: str = "eva",
    template_set: str = "main",
    language: str = "en",
    data_dir: str | None = None,
    lre_dir: str | None = None,
    **_metadata: Any,  # lm-eval passes model args and the task's metadata too
):
    """lm-eval ``custom_dataset`` for recall tasks; ``dataset_kwargs`` pick the docs."""
    folder = task_data_dir(data_dir, lre_dir, relation)
    return as_dataset(build_docs(relation, split, template_set, language, folder))


def custom_ppl_dataset(
    relation: str, data_dir: str | None = None, lre_dir: str | None = None, **_metadata: Any
):
    """lm-eval ``custom_dataset`` for the relation-neutral perplexity tasks."""
    return as_dataset(build_ppl_docs(relation, task_data_dir(data_dir, lre_dir, relation)))
