"""The relspec safetensors container shared by set files and scores files.

Tensors plus ONE safetensors metadata entry ``relspec`` = JSON ``{"format": NAME,
"format_version": "1", "metadata": {...}}``. One entry, because safetensors writes several
in no fixed order and files must be byte-identical. Plain safetensors, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.sets.shape import SHAPE_KEYS, SITES
from relspec_lmeval.util.files import StagedFiles

if TYPE_CHECKING:  # only in annotations: SUFFIX and the names are read without torch (relspec --help)
    import torch

__all__ = [
    "CONTENT_FORMAT",
    "EXTRAS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HEADER_KEY",
    "SCORES_FORMAT",
    "SCORES_FORMAT_VERSION",
    "SUFFIX",
    "check_relspec_block",
    "content_digest",
    "read_relspec_file",
    "read_relspec_header",
    "site_tensor_name",
    "site_tensors",
    "stage_relspec_file",
    "write_relspec_file",
]

FORMAT_NAME = "relspec-neuron-set"
FORMAT_VERSION = "1"
SCORES_FORMAT = "relspec-neuron-scores"
SCORES_FORMAT_VERSION = "1"
HEADER_KEY = "relspec"
SUFFIX = ".safetensors"
EXTRAS = ("scores", "means", "factors")  # a set's optional per-neuron tensors, aligned with the indices
CONTENT_FORMAT = "relspec-neuron-set-content/1"  # what a set's content_sha256 hashes (docs/file-format.md)


def content_digest(model: Mapping[str, Any] | None) -> Any:
    """The sha256 a set's ``content_sha256`` starts from: ``CONTENT_FORMAT`` and the recorded shape
    (``model``'s ``SHAPE_KEYS``); each site's indices and factors are added to it in forward order."""
    head = {"content": CONTENT_FORMAT, "model": {key: (model or {}).get(key) for key in SHAPE_KEYS}}
    return hashlib.sha256(json.dumps(head, sort_keys=True, separators=(",", ":"), default=str).encode())


def site_tensor_name(kinds: tuple[str, ...]) -> re.Pattern[str]:
    """``layers.<L>.<site>.<kind>``: groups (L, site, kind); L in ASCII digits without leading zeros."""
    return re.compile(rf"layers\.(0|[1-9][0-9]*)\.({'|'.join(map(re.escape, SITES))})\.({'|'.join(kinds)})", re.ASCII)


def stage_relspec_file(
    staged: StagedFiles, tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, fmt: str, version: str,
    metadata: Mapping[str, Any],
) -> Path:
    """Write tensors plus the ``relspec`` entry under a temporary name, moved into place by ``staged``."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != SUFFIX:
        raise NeuronSetError(f"relspec files end in {SUFFIX}: {path}")
    header = {HEADER_KEY: json.dumps({"format": fmt, "format_version": version, "metadata": metadata}, sort_keys=True)}
    return staged.write(path, lambda tmp: save_file(dict(tensors), str(tmp), metadata=header))


def write_relspec_file(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, fmt: str, version: str, metadata: Mapping[str, Any],
    staged: StagedFiles | None = None,
) -> Path:
    """Atomic (temp file + rename) on its own, or as part of ``staged`` (moved in with the rest of the group)."""
    if staged is not None:
        return stage_relspec_file(staged, tensors, path, fmt, version, metadata)
    with StagedFiles() as group:
        return stage_relspec_file(group, tensors, path, fmt, version, metadata)


def read_relspec_header(path: Path, what: str) -> tuple[dict[str, Any], Any]:
    """(the ``relspec`` block, the tensors) of a file; checks that the block is a JSON object."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise NeuronSetError(f"{what} file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise NeuronSetError(f"{path} is not a readable safetensors {what} file ({exc})") from None
    try:
        block = json.loads(header[HEADER_KEY])
    except KeyError:
        raise NeuronSetError(f"{path} is a safetensors file but not a relspec {what} file (no {HEADER_KEY!r} metadata)") from None
    except json.JSONDecodeError as exc:
        raise NeuronSetError(f"{path}: metadata is not valid JSON ({exc})") from None
    if not isinstance(block, dict):
        raise NeuronSetError(f"{path}: the {HEADER_KEY!r} metadata must be a JSON object, got {type(block).__name__}")
    return block, tensors


def read_relspec_file(path: Path, fmt: str, version: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a relspec safetensors file of format ``fmt``; never unpickles."""
    block, tensors = read_relspec_header(path, what)
    found = block.get("format")
    if found != fmt:
        hint = " (it is a neuron set; pass a file from <out>/scores/)" if found == FORMAT_NAME else ""
        raise NeuronSetError(f"{path} is a {found!r} file, not a relspec {what} file ({fmt!r}){hint}")
    return tensors, check_relspec_block(path, block, version, what)


def check_relspec_block(path: Path, block: Mapping[str, Any], version: str, what: str) -> dict[str, Any]:
    """The metadata of a ``relspec`` block of the right format, once its version and recorded shape
    are checked (also the torch-free ``relspec info``'s check: sets/quickinfo.py)."""
    if block.get("format_version") != version:
        raise NeuronSetError(
            f"{path} has {what} format version {block.get('format_version')!r}; this relspec-lmeval reads {version!r}"
        )
    metadata = block.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise NeuronSetError(f"{path}: metadata must be a JSON object, got {type(metadata).__name__}")
    model = metadata.get("model")
    if model is not None and not isinstance(model, dict):
        raise NeuronSetError(f"{path}: metadata 'model' must be a JSON object, got {type(model).__name__}")
    for key in SHAPE_KEYS:  # a recorded shape is what validation compares: it must be numbers
        value = (model or {}).get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise NeuronSetError(f"{path}: metadata model.{key} must be a positive integer, got {value!r}")
    return metadata


def site_tensors(path: Path, tensors: Mapping[str, torch.Tensor], kinds: tuple[str, ...]) -> dict[str, dict[tuple[int, str], torch.Tensor]]:
    """``layers.<L>.<site>.<kind>`` tensors grouped by kind and (layer, site); any other name is refused.

    Only the canonical spelling is read: L in ASCII digits without leading zeros (``layers.0``,
    ``layers.12``), a known site and kind, nothing before or after. ``layers.00`` and ``layers.0``
    would otherwise name the same site and one of the two would be dropped without a word."""
    pattern = site_tensor_name(kinds)
    parts: dict[str, dict[tuple[int, str], torch.Tensor]] = {kind: {} for kind in kinds}
    for name, tensor in tensors.items():
        match = pattern.fullmatch(name)
        if not match:
            raise NeuronSetError(
                f"{path}: unexpected tensor {name!r} (expected layers.<L>.<site>.{'|'.join(kinds)}, "
                "L a layer number without leading zeros)"
            )
        parts[match.group(3)][(int(match.group(1)), match.group(2))] = tensor  # canonical: one name per key
    return parts
