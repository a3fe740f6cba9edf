"""From what a user types (``neuron_set=``, ``--neuron-set``, ``--like``) to loaded sets.

A value is a path, a short name of a shipped set (``relspec-tiny/person_father``), a file on
the Hugging Face Hub (``hf://OWNER/REPO/PATH``, ``sets.hub``: downloaded into its cache, then
read as a path), or several of them joined with ``+`` (their union). Empty values are errors, never "no set".
A shipped random control's name from before the controls were shared
(``relspec-tiny/k384/random/<relation>-seed<N>``) still names its ``k<K>-seed<N>`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.sets.fileformat import SUFFIX
from relspec_lmeval.sets.folder import SetsFolder
from relspec_lmeval.sets.hub import fetch, is_hub_name, parse_hub_name
from relspec_lmeval.sets.quickinfo import quick_summary
from relspec_lmeval.sets.shape import ModelShape
from relspec_lmeval.util.resources import list_shipped_neuron_sets, shipped_neuron_set
from relspec_lmeval.util.suggest import did_you_mean, known_list

if TYPE_CHECKING:  # resolve_set_path stays torch-free (relspec info): NeuronSet loads where a set is read
    from relspec_lmeval.sets.neuron_set import NeuronSet

__all__ = ["load_checked", "load_sets", "resolve_set_path"]

# lm-eval's CLI passes these as text; its Python parser turns some into None/False/0
_NO_SET_WORDS = ("none", "null", "false", "0", "no", "off")


def resolve_set_path(name: str) -> Path:
    """A path, a short name of a shipped set, or an ``hf://`` name (the file in the Hugging Face
    cache, downloaded first if need be); ``NeuronSetError`` listing what ships otherwise."""
    if is_hub_name(name):  # never a path: "hf://a/b" would read as the relative path hf:/a/b
        return fetch(parse_hub_name(name))
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = shipped_neuron_set(name) or _renamed_shipped_control(name)
    if shipped is not None:
        return shipped
    if ".." in Path(name).parts:
        raise NeuronSetError(f"neuron-set file not found: {name!r} (a shipped set name cannot contain '..'; give a path to a file)")
    known = list_shipped_neuron_sets()
    hint = did_you_mean(name, known, n=3, cutoff=0.6) or (f" Shipped sets: {known_list(known, 6)}." if known else "")
    raise NeuronSetError(f"neuron-set file not found: {name!r} (neither a file nor a shipped set name).{hint}")


def _renamed_shipped_control(name: str) -> Path | None:
    """``<folder>/random/<relation>-seed<N>``, a shipped plain control's old name → the shared
    ``<folder>/random/k<K>-seed<N>`` file (K: the size of the relation's shipped set), if it ships."""
    legacy = None if name.endswith(SUFFIX) or ".." in Path(name).parts else SetsFolder.legacy_random_name(name)
    if legacy is None:
        return None
    folder, relation, seed = legacy
    base = shipped_neuron_set(str(folder.root / relation))
    if base is None:
        return None
    summary = quick_summary(base)
    if summary is None:  # not one of relspec's plain files: the full reader (torch)
        from relspec_lmeval.sets.neuron_set import NeuronSet

        summary = {"count": len(NeuronSet.load(base))}
    shared = SetsFolder(base.parent).random_path(summary["count"], seed)
    return shared if shared.is_file() else None


def load_sets(spec: Any) -> list[NeuronSet]:
    """``a.safetensors+b.safetensors`` (paths or shipped names) → the loaded sets; an existing
    file whose own path holds a ``+`` is read as that one file (such a path cannot be part of a union).

    Args:
        spec: what ``relspec-hf``'s ``neuron_set=`` takes.

    Returns:
        The ``NeuronSet``s, in the order given.

    Raises ``NeuronSetError`` for an empty or non-text value (``neuron_set=``, ``none``,
    ``0``, ``False``): leaving the argument out is how to run the unmodified model.

    Example:
        >>> from relspec_lmeval import load_sets
        >>> father, mother = load_sets("relspec-tiny/person_father+relspec-tiny/person_mother")
        >>> father.metadata["relation"], mother.metadata["relation"]
        ('person_father', 'person_mother')
    """
    from relspec_lmeval.sets.neuron_set import NeuronSet

    if not isinstance(spec, str) or not spec.strip() or (spec.strip().lower() in _NO_SET_WORDS and not Path(spec).exists()):
        raise NeuronSetError(
            f"neuron_set={spec!r} names no neuron-set file; give a file or shipped set name, "
            "or leave neuron_set out for the unmodified model"
        )
    if "+" in spec and Path(spec.strip()).expanduser().is_file():
        return [NeuronSet.load(Path(spec.strip()).expanduser())]  # a file whose path has a "+" is that file, not a union
    names = [part.strip() for part in spec.split("+")]
    if not all(names):
        raise NeuronSetError(f"empty neuron-set name in {spec!r}")
    return [NeuronSet.load(resolve_set_path(n)) for n in names]


def load_checked(spec: Any, shape: ModelShape | None = None, *, allow_empty: bool = False) -> list[NeuronSet]:
    """``load_sets`` and ``NeuronSet.validate`` of each (against ``shape``, else the shape it records)."""
    sets = load_sets(spec)
    for s in sets:
        s.validate(shape if shape is not None else s.recorded_shape(), allow_empty=allow_empty)
    return sets
