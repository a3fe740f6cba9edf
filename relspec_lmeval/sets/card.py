"""``relspec card FOLDER``: the Hugging Face dataset card (``FOLDER/README.md``) of a sets folder.

Everything on the card is read from the folder: ``summary.json`` (what ``relspec identify``
wrote: model, data, parameters, the relations and their positives, the command) and the set
files it lists (the method, the package version). The YAML header keeps to dataset-card keys
(``pretty_name``, ``tags``, ``language``, ``viewer``, ``license`` only when given): sets live in
dataset repositories (``sets.hub``; docs/sharing.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relspec_lmeval.errors import NeuronSetError, OutputError, UsageError
from relspec_lmeval.sets.fileformat import SUFFIX
from relspec_lmeval.sets.folder import SCORES_DIR, SUMMARY_FILE, SetsFolder
from relspec_lmeval.sets.hub import parse_hub_name
from relspec_lmeval.sets.shape import DEFAULT_SITES
from relspec_lmeval.util.files import atomic_write_text
from relspec_lmeval.util.resources import refuse_shipped

__all__ = ["CARD_FILE", "TAGS", "card_text", "write_card"]

CARD_FILE = "README.md"
TAGS = ("relspec-lmeval", "neuron-set", "interpretability")
_REPO = "OWNER/REPO"  # in the card's commands until the user names the repository (--repo)


def _summary(root: Path) -> dict[str, Any]:
    path = root / SUMMARY_FILE
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder (a card describes a folder `relspec identify --out` wrote)")
    if not path.is_file():
        raise UsageError(f"{root} has no {SUMMARY_FILE} (a card describes a folder `relspec identify --out` wrote)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NeuronSetError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("relations"), dict) or not isinstance(summary.get("model"), dict):
        raise NeuronSetError(f"{path} is not a summary.json of `relspec identify` (no 'model' and 'relations' objects)")
    return summary


def _set_records(root: Path, relations: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each listed set file's metadata, and its neuron count; a listed file that is missing or unreadable is refused."""
    from relspec_lmeval.sets.neuron_set import NeuronSet

    records = {}
    for relation, entry in relations.items():
        name = entry.get("set_file") if isinstance(entry, dict) else None
        if not name:
            continue
        path = root / name
        if not path.is_file():
            raise NeuronSetError(f"{root / SUMMARY_FILE} lists {name} for {relation}, which is not in the folder")
        loaded = NeuronSet.load(path)
        records[relation] = {**loaded.metadata, "count": len(loaded)}
    return records


def _check_repo(repo: str | None) -> None:
    """``--repo``: OWNER/REPO as the Hub spells names (``sets.hub``'s rule), or None."""
    try:
        if repo is not None and repo.count("/") == 1:
            parse_hub_name(f"hf://{repo}/x")
            return
    except NeuronSetError:
        pass
    if repo is not None:
        raise UsageError(f"--repo {repo!r} is not OWNER/REPO (the name of a Hub dataset repository)")


def _one(values: list[Any]) -> str:
    """The value the sets share, or each distinct one (``ap, auroc``)."""
    distinct = sorted({str(v) for v in values if v is not None})
    return ", ".join(distinct) if distinct else "-"


def _header(summary: Mapping[str, Any], license: str | None) -> str:
    import yaml

    model = summary["model"].get("name") or "a model"
    head: dict[str, Any] = {"pretty_name": f"Relation-specific neurons of {model}", "tags": list(TAGS)}
    language = (summary.get("data") or {}).get("language")
    if isinstance(language, str) and language:
        head["language"] = [language]
    if license:
        head["license"] = license
    head["viewer"] = False  # safetensors of indices: nothing the dataset viewer can show
    return "---\n" + yaml.safe_dump(head, sort_keys=False, allow_unicode=True) + "---\n"


def _task_group(data: Mapping[str, Any]) -> str:
    """The task group to evaluate the sets on: the identification group's P^eva side, else the LRE one."""
    name = data.get("name")
    if data.get("kind") == "task_group" and isinstance(name, str) and name.startswith("relation_recall"):
        return name.removesuffix("_det")
    language = data.get("language")
    return "relation_recall" + (f"_{language}" if isinstance(language, str) and language not in ("", "en") else "")


def _extra_folders(root: Path) -> list[str]:
    """The folder's other sets (re-cuts, random controls, dampened sets), one line each."""
    lines = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        count = sum(1 for _ in sub.rglob(f"*{SUFFIX}"))
        if not count:
            continue
        if sub.name == SCORES_DIR:
            what = "every neuron's score and mean per relation (for `relspec select` and `mode=mean`)"
        elif sub.name == "random":
            what = "random controls (`k<K>-seed<N>`: shared by the sets of size K; `<relation>-layer-seed<N>`, `-site-seed<N>`: matched)"
        elif sub.name.startswith("dampen"):
            what = "AurA's dampening factors (`mode=dampen`)"
        elif sub.name.startswith("k") and sub.name[1:].split("-")[0].isdigit():
            what = f"the relations re-cut to {sub.name[1:].split('-')[0]} neurons (`relspec select`)"
        else:
            what = "other sets"
        lines.append(f"- `{sub.name}/`: {count} file{'s' if count != 1 else ''}, {what}")
    return lines


def card_text(folder: str | os.PathLike, *, repo: str | None = None, license: str | None = None) -> str:
    """The card of a sets folder, from its ``summary.json`` and set files.

    Args:
        folder: a folder ``relspec identify --out`` wrote.
        repo: ``OWNER/REPO`` for the card's commands (default: the placeholder ``OWNER/REPO``).
        license: the card's ``license`` (left out when not given: only the publisher knows it).

    Returns:
        The README.md text: a YAML header, then the model, method, k, sites, the relations and
        their positives, the files, how to use them, and the command that made them.

    Raises ``UsageError`` for a folder without ``summary.json``, ``NeuronSetError`` for a
    summary that is not ``relspec identify``'s or a set file it lists that is missing or broken.

    Example:
        >>> from relspec_lmeval.sets.card import card_text
        >>> from relspec_lmeval.util.resources import resource_dir
        >>> text = card_text(resource_dir("neuron_sets") / "relspec-tiny", repo="me/relspec-tiny-sets")
        >>> text.splitlines()[:3]
        ['---', 'pretty_name: Relation-specific neurons of relspec-tiny', 'tags:']
        >>> "neuron_set=hf://me/relspec-tiny-sets/company_ceo" in text
        True
    """
    root = Path(folder)
    summary = _summary(root)
    _check_repo(repo)
    records = _set_records(root, summary["relations"])
    example = next(iter(records), next(iter(summary["relations"]), "RELATION"))
    lines = [
        _header(summary, license),
        *_about(summary, records),
        *_relations_table(summary, records),
        *_files(root),
        *_use(summary, repo or _REPO, example),
        *_how_made(summary),
    ]
    return "\n".join(lines) + "\n"


def _about(summary: Mapping[str, Any], records: Mapping[str, dict[str, Any]]) -> list[str]:
    """The title, what the sets are, and the model / method / k / sites / data / version table."""
    model, data, parameters = summary["model"], summary.get("data") or {}, summary.get("parameters") or {}
    name = model.get("name") or "?"
    shape = (f"{model.get('num_layers', '?')} layers, hidden {model.get('hidden_size', '?')}, "
             f"FFN {model.get('intermediate_size', '?')}")
    about = ", ".join(str(model[key]) for key in ("architecture", "model_type") if model.get(key))
    revision = f", revision {model['revision']}" if model.get("revision") else ""
    k = parameters.get("k", _one([r.get("k") for r in records.values()]))
    sites = parameters.get("sites") or list(DEFAULT_SITES)
    source = f"{data.get('name', '?')} ({str(data.get('kind', '?')).replace('_', ' ')})" + "".join(
        f", {label} {data[key]}" for key, label in (("language", "language"), ("template_set", "templates")) if data.get(key))
    return [
        f"# Relation-specific neurons of {name}",
        "",
        "Neuron sets found by `relspec identify` (relspec-lmeval): for each relation, the neurons that score "
        "highest (by the method below) on prompts the model answers correctly with that relation against prompts "
        "of the other relations. Switching them off inside lm-eval's `hf` model (`--model relspec-hf`) shows "
        "what the model still knows without them.",
        "",
        "| | |",
        "|---|---|",
        f"| model | `{name}` ({about + '; ' if about else ''}{shape}; config hash {model.get('config_hash', '?')}{revision}) |",
        f"| method | {_one([r.get('method') for r in records.values()])} |",
        f"| k | {k} per relation (select {parameters.get('select', 'top')}) |",
        f"| sites | {', '.join(sites)} |",
        f"| data | {source}; pool hash {str(data.get('pool_hash', '?'))[:16]}… |",
        f"| made by | relspec-lmeval {_one([r.get('package_version') for r in records.values()])} |",
        "",
    ]


def _relations_table(summary: Mapping[str, Any], records: Mapping[str, dict[str, Any]]) -> list[str]:
    """Each relation's prompts, positives, negatives, neuron count and file; then what was skipped."""
    lines = [
        "## Relations",
        "",
        "| relation | P^det prompts | answered correctly | positives | negatives | neurons | file |",
        "|---|---|---|---|---|---|---|",
    ]
    for relation, e in summary["relations"].items():
        e = e if isinstance(e, dict) else {}
        count = records.get(relation, {}).get("count", e.get("neurons", "-"))
        file = f"`{e['set_file']}`" if e.get("set_file") else "-"
        lines.append(f"| {relation} | {e.get('det_prompts', '-')} | {e.get('correct', '-')} | {e.get('positives', '-')} | "
                     f"{e.get('negatives', '-')} | {count} | {file} |")
    skipped = summary.get("skipped") or {}
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{r} ({why})" for r, why in skipped.items()) + "."]
    return lines


def _files(root: Path) -> list[str]:
    """The folder's files: the sets, the derived folders present, summary.json."""
    return ["", "## Files", "", "- `<relation>.safetensors`: the relation's set (format: relspec-lmeval's docs/file-format.md)",
            *_extra_folders(root), f"- `{SUMMARY_FILE}`: what the run did, per relation, and the sets' overlaps", ""]


def _use(summary: Mapping[str, Any], repo: str, example: str) -> list[str]:
    """How to read and apply a set of the published repository (``example`` is its first relation)."""
    name, data = summary["model"].get("name") or "?", summary.get("data") or {}
    return [
        "## Use",
        "",
        "With relspec-lmeval installed:",
        "",
        "```bash",
        f"relspec info hf://{repo}/{example}",
        f"lm_eval --model relspec-hf --model_args pretrained={name},neuron_set=hf://{repo}/{example} \\",
        f"    --tasks {_task_group(data)}_{example}",
        "```",
        "",
        f"`hf://{repo}/PATH` is the file PATH of this dataset repository (`@REVISION` after the name pins a "
        "revision); it is downloaded into the Hugging Face cache and checked against the model like a local file.",
        "",
    ]


def _how_made(summary: Mapping[str, Any]) -> list[str]:
    """The command that made the sets and the environment it ran in."""
    lines = ["## How they were made", "", "```bash", str(summary.get("command") or "(not recorded)"), "```"]
    env = summary.get("environment") or {}
    if env:
        lines += ["", "Environment: " + ", ".join(f"{key} {value}" for key, value in env.items()) + "."]
    return lines


def write_card(folder: str | os.PathLike, *, repo: str | None = None, license: str | None = None, force: bool = False) -> Path:
    """Write ``FOLDER/README.md`` (``card_text``), atomically, holding the folder's lock.

    Args:
        folder: a folder ``relspec identify --out`` wrote (not a shipped one).
        repo: ``OWNER/REPO`` for the card's commands.
        license: the card's ``license``.
        force: replace an existing README.md.

    Returns:
        The README.md path.

    Raises what ``card_text`` raises, and ``OutputError`` for a shipped folder or an existing
    README.md without ``force``.

    Example:
        >>> from relspec_lmeval.sets.card import write_card
        >>> write_card(".")  # a folder identify did not write
        Traceback (most recent call last):
        ...
        relspec_lmeval.errors.UsageError: . has no summary.json (a card describes a folder `relspec identify --out` wrote)
    """
    root = Path(folder)
    target = root / CARD_FILE
    _summary(root)  # no summary.json: refused before anything else is looked at
    _check_repo(repo)
    refuse_shipped(target, "the card")
    if target.exists() and not force:
        raise OutputError(f"{target} exists; --force to replace it")
    text = card_text(root, repo=repo, license=license)
    with SetsFolder(root).lock("relspec card FOLDER"):
        return atomic_write_text(target, text)
