"""Where the shipped task configs, neuron sets and models live.

In a wheel they sit inside the package (``relspec_lmeval/tasks`` …, see pyproject's
force-include); in a source checkout they are the top-level folders beside the package.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """Folder ``name`` (``tasks``, ``neuron_sets``, ``models``) of the installed package or checkout."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"relspec-lmeval resource folder {name!r} not found next to {_PACKAGE}; "
        "reinstall the package with `pip install .`"
    )


def task_dir() -> str:
    """The lm-eval task folder (also the ``lm_eval.tasks`` entry point newer lm-eval reads)."""
    return str(resource_dir("tasks"))


def _shipped(kind: str, name: str, suffix: str = "") -> Path | None:
    try:
        root = resource_dir(kind)
    except FileNotFoundError:
        return None
    path = root / (name + suffix)
    return path if path.exists() else None


def shipped_neuron_set(name: str) -> Path | None:
    """``relspec-tiny/person_father`` → the shipped file, or None when no such set ships."""
    if not name or name.endswith(".safetensors") or name.startswith((".", "/", "~")):
        return None
    return _shipped("neuron_sets", name, ".safetensors")


def shipped_model(name: str) -> Path | None:
    """``relspec-tiny`` → the installed model folder, or None when no such model ships."""
    if not name or "/" in name or name.startswith((".", "~")):
        return None
    return _shipped("models", name)


def list_shipped_neuron_sets() -> list[str]:
    try:
        root = resource_dir("neuron_sets")
    except FileNotFoundError:
        return []
    names = (p.relative_to(root) for p in root.rglob("*.safetensors"))
    # scores/ and random/ hold identification scores and controls, not sets to name
    return sorted(str(n.with_suffix("")) for n in names if not {"scores", "random"} & set(n.parts))
