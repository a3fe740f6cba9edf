"""The one table of task groups and task names; everything else reads it.

``scripts/make_tasks.py`` writes the lm-eval YAMLs under ``tasks/`` from ``GROUPS``
(a test checks they match); identification (``--data relation_recall_det``) and
``relspec reproduce`` (``SUITES``) look groups and tasks up here instead of parsing YAML.
A task is ``<group>_<relation>``; its ``dataset_kwargs`` are ``GroupSpec.dataset_kwargs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relspec_lmeval.data.templates import PAPER_RELATIONS
from relspec_lmeval.errors import UsageError
from relspec_lmeval.util.suggest import did_you_mean

__all__ = ["GROUPS", "SUITES", "SYNTHETIC_DATA", "GroupSpec", "Suite", "find_group", "task_name"]

RELATIONS: tuple[str, ...] = tuple(PAPER_RELATIONS)
SYNTHETIC_DATA = "models/relspec-tiny/world"  # relspec-tiny's world, relative to the package resources
LANGUAGES = ("de", "es", "fr", "zh", "ja")


def task_name(group: str, relation: str) -> str:
    return f"{group}_{relation}"


@dataclass(frozen=True)
class GroupSpec:
    """One lm-eval group: a task per relation, all with the same docs settings."""

    name: str
    # "recall" (generate_until, acc), "choice" (multiple_choice), "logprob" (the gold's log-probability,
    # multiple_choice requests: data.logprob) or "ppl" (loglikelihood_rolling)
    kind: str = "recall"
    split: str = "eva"
    template_set: str = "main"
    language: str = "en"
    data_dir: str | None = None  # relative paths start at a package resource folder
    relations: tuple[str, ...] = RELATIONS

    def tasks(self) -> list[str]:
        return [task_name(self.name, r) for r in self.relations]

    def dataset_kwargs(self, relation: str) -> dict[str, Any]:
        """What the task YAML passes to ``relations.custom_dataset`` / ``custom_ppl_dataset``."""
        kwargs: dict[str, Any] = {"relation": relation}
        if self.kind in ("recall", "choice", "logprob"):
            kwargs |= {"split": self.split, "template_set": self.template_set, "language": self.language}
        if self.data_dir:
            kwargs["data_dir"] = self.data_dir
        return kwargs


GROUPS: tuple[GroupSpec, ...] = (
    GroupSpec("relation_recall"),
    GroupSpec("relation_recall_det", split="det"),
    GroupSpec("relation_recall_t2", template_set="t2"),
    GroupSpec("relation_ppl", kind="ppl"),
    GroupSpec("relation_choice", kind="choice"),
    *(GroupSpec(f"relation_recall_{lang}", language=lang) for lang in LANGUAGES),
    GroupSpec("relation_logprob", kind="logprob"),
    GroupSpec("relation_logprob_det", kind="logprob", split="det"),
    GroupSpec("relation_logprob_t2", kind="logprob", template_set="t2"),
    *(GroupSpec(f"relation_logprob_{lang}", kind="logprob", language=lang) for lang in LANGUAGES),
    # relspec-tiny's synthetic world (scripts/make_world.py), shipped with the model
    GroupSpec("relation_recall_synthetic", data_dir=SYNTHETIC_DATA),
    GroupSpec("relation_recall_synthetic_det", split="det", data_dir=SYNTHETIC_DATA),
    GroupSpec("relation_recall_synthetic_t2", template_set="t2", data_dir=SYNTHETIC_DATA),
    GroupSpec("relation_ppl_synthetic", kind="ppl", data_dir=SYNTHETIC_DATA),
    GroupSpec("relation_choice_synthetic", kind="choice", data_dir=SYNTHETIC_DATA),
    GroupSpec("relation_logprob_synthetic", kind="logprob", data_dir=SYNTHETIC_DATA),
    GroupSpec("relation_logprob_synthetic_det", kind="logprob", split="det", data_dir=SYNTHETIC_DATA),
    GroupSpec("relation_logprob_synthetic_t2", kind="logprob", template_set="t2", data_dir=SYNTHETIC_DATA),
)
_BY_NAME = {g.name: g for g in GROUPS}


def find_group(name: str, what: str = "task group") -> GroupSpec:
    """The group called ``name``; ``UsageError`` listing the groups otherwise (a task name says so)."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    if any(name in g.tasks() for g in GROUPS):
        raise UsageError(f"{name!r} is a single task; give a task group (e.g. relation_recall_det) or a folder")
    raise UsageError(f"unknown {what} {name!r}.{did_you_mean(name, _BY_NAME)} Groups: {', '.join(_BY_NAME)}")


@dataclass(frozen=True)
class Suite:
    """The groups of one ``relspec reproduce`` suite (P^eva, P^det, P^eva-2, perplexity, languages)."""

    name: str
    eva: str
    det: str
    t2: str
    ppl: str
    languages: tuple[str, ...] = ()  # groups ``<eva>_<language>``
    choice: str | None = None  # the multiple-choice version of P^eva, reported beside acc
    # the gold's log-probability on P^eva; its P^det, P^eva-2 and language groups are ``<logprob>_det``,
    # ``_t2``, ``_<language>`` (the same documents as the recall group of that split)
    logprob: str | None = None

    def language_group(self, language: str) -> str:
        return self.eva if language == "en" else f"{self.eva}_{language}"

    def recall_group(self, split: str) -> str:
        """The recall group of ``split``: ``eva``, ``det``, ``t2`` or a language (``en`` is P^eva)."""
        return {"eva": self.eva, "det": self.det, "t2": self.t2}.get(split) or self.language_group(split)

    def logprob_group(self, split: str) -> str | None:
        """The log-probability group of ``split`` (as ``recall_group``); None when the suite has none."""
        if self.logprob is None:
            return None
        return self.logprob if split in ("eva", "en") else f"{self.logprob}_{split}"

    def logprob_groups(self) -> list[str]:
        return [g for split in ("eva", "det", "t2", *self.languages) if (g := self.logprob_group(split))]

    def groups(self) -> list[str]:
        return [self.eva, self.det, self.t2, self.ppl, *(self.language_group(lang) for lang in self.languages),
                *([self.choice] if self.choice else []), *self.logprob_groups()]


SUITES = {
    "lre": Suite("lre", "relation_recall", "relation_recall_det", "relation_recall_t2", "relation_ppl", LANGUAGES, "relation_choice",
                 "relation_logprob"),
    "synthetic": Suite(
        "synthetic", "relation_recall_synthetic", "relation_recall_synthetic_det", "relation_recall_synthetic_t2",
        "relation_ppl_synthetic", choice="relation_choice_synthetic", logprob="relation_logprob_synthetic",
    ),
}


class _OurMetadataNotes:
    """Drops lm-eval's two-line "Custom kwargs can be passed to `--metadata`" warning for our tasks.

    lm-eval 0.4.13 logs it from ``ConfigurableTask.download`` for every task with a
    ``custom_dataset``: 12 times for one of our groups, for tasks that need no metadata
    (``lre_dir`` is documented in docs/tasks.md). Other tasks' warnings pass.
    """

    def __init__(self) -> None:
        self.names = {f"{name}:" for group in GROUPS for name in group.tasks()}

    def filter(self, record: Any) -> bool:
        message = str(record.msg)
        return not ("`--metadata`" in message and message.split(" ", 1)[0] in self.names)


def quiet_metadata_notes() -> None:
    """Install ``_OurMetadataNotes`` on lm-eval's task logger (once; called by tasks/utils.py)."""
    import logging

    logger = logging.getLogger("lm_eval.api.task")
    if not any(isinstance(f, _OurMetadataNotes) for f in logger.filters):
        logger.addFilter(_OurMetadataNotes())
