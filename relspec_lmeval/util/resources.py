"""The files shipped with the package: task configs, neuron sets, models; and their protection.

In a wheel they sit inside the package (``relspec_lmeval/tasks`` …, see pyproject's
force-include); in a source checkout they are the top-level folders beside the package.
Shipped files are read-only to every command (``refuse_shipped``); maintainers rebuilding
them set ``RELSPEC_WRITE_SHIPPED=1``.

A short name (``relspec-tiny/person_father``) resolves inside its shipped folder or not at
all: ``..`` or an absolute part never leads out of it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from relspec_lmeval.errors import DataError, OutputError
from relspec_lmeval.util.env import env_flag

__all__ = [
    "KINDS",
    "in_hub_cache",
    "list_shipped_neuron_sets",
    "is_read_only",
    "refuse_shipped",
    "resource_dir",
    "shipped_model",
    "shipped_neuron_set",
    "task_dir",
]

_PACKAGE = Path(__file__).resolve().parents[1]
KINDS = ("tasks", "neuron_sets", "models")
WRITE_SHIPPED_ENV = "RELSPEC_WRITE_SHIPPED"
_HUB_REPO = re.compile(r"(models|datasets|spaces)--.+--.+")  # a repository's folder in a Hugging Face cache


def resource_dir(name: str) -> Path:
    """Folder ``name`` (``tasks``, ``neuron_sets``, ``models``) of the installed package or checkout."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise DataError(
        f"relspec-lmeval resource folder {name!r} not found next to {_PACKAGE}; "
        "reinstall the package with `pip install .`"
    )


def task_dir() -> str:
    """The lm-eval task folder (the import hook adds it to every ``TaskManager``'s ``include_path``)."""
    return str(resource_dir("tasks"))


def _is_short_name(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(name) and not name.startswith(("/", "~", "\\")) and ".." not in parts and "." not in parts[:1]


def _shipped(kind: str, name: str, suffix: str = "") -> Path | None:
    if not _is_short_name(name):
        return None
    try:
        root = resource_dir(kind).resolve()
    except DataError:
        return None
    path = (root / (name + suffix)).resolve()
    # a link inside the folder must not lead out of it either
    return path if path.exists() and path.is_relative_to(root) else None


def shipped_neuron_set(name: str) -> Path | None:
    """``relspec-tiny/person_father`` → the shipped file, or None when no such set ships."""
    if name.endswith(".safetensors"):
        return None
    found = _shipped("neuron_sets", name, ".safetensors")
    return found if found is not None and found.is_file() else None


def shipped_model(name: str) -> Path | None:
    """``relspec-tiny`` → the installed model folder, or None when no such model ships."""
    if "/" in name:
        return None
    found = _shipped("models", name)
    return found if found is not None and found.is_dir() else None


def list_shipped_neuron_sets() -> list[str]:
    try:
        root = resource_dir("neuron_sets")
    except DataError:
        return []
    names = (p.relative_to(root) for p in root.rglob("*.safetensors"))
    # scores/ and random/ hold identification scores and controls, not sets to name
    return sorted(str(n.with_suffix("")) for n in names if not {"scores", "random"} & set(n.parts))


def _protected() -> list[Path]:
    roots = [_PACKAGE]
    for kind in KINDS:
        try:
            roots.append(resource_dir(kind).resolve())
        except DataError:
            pass
    return roots


def refuse_shipped(path: str | os.PathLike, what: str = "output") -> None:
    """Raise ``OutputError`` when ``path`` lies inside the installed package or its shipped folders."""
    if env_flag(WRITE_SHIPPED_ENV):
        return
    resolved = Path(path).expanduser().resolve()
    for root in _protected():
        if resolved == root or resolved.is_relative_to(root):
            raise OutputError(
                f"{what} {path} is inside relspec-lmeval's shipped files ({root}), which no command writes; "
                f"choose another folder (maintainers rebuilding them: {WRITE_SHIPPED_ENV}=1)"
            )


def is_read_only(path: str | os.PathLike) -> bool:
    """True when ``refuse_shipped`` would refuse ``path``, or it lies in a Hugging Face cache (a
    set given as ``hf://…``): a default output beside it then goes to the working directory."""
    try:
        refuse_shipped(path)
    except OutputError:
        return True
    return in_hub_cache(path)


def in_hub_cache(path: str | os.PathLike) -> bool:
    """True inside a repository of a Hugging Face cache (``<cache>/datasets--O--R/snapshots/…`` or
    ``blobs/``): huggingface_hub's to manage, never a place for our outputs. Told by the layout,
    not the cache's location, which the environment may have changed since the file was fetched.

    Example:
        >>> from relspec_lmeval.util.resources import in_hub_cache
        >>> in_hub_cache("/c/hub/datasets--me--sets/snapshots/0123abcd/a.safetensors"), in_hub_cache("sets/a.safetensors")
        (True, False)
    """
    parts = Path(path).expanduser().absolute().parts  # not resolved: a snapshot's files link into blobs/
    return any(part in ("snapshots", "blobs") and _HUB_REPO.fullmatch(parts[i - 1]) is not None
               for i, part in enumerate(parts) if i > 0)
