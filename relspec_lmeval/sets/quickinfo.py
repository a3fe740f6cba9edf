"""``relspec info`` without torch: a neuron-set file's summary read straight from its bytes.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's
dtype, shape and byte range; ``__metadata__``) and the raw tensor bytes. For the files relspec
writes (int64 indices, float32 scores/means/factors, at least one neuron per site) that is
enough to compute exactly what ``NeuronSet.summary`` gives, hashes included, in a few
milliseconds instead of the ~1.2 s torch takes to import (benchmarks/startup.py).

Anything else (another dtype, an empty site, a duplicate index, a mixture-of-experts set that
needs its per-expert split, a file this reader cannot parse) returns None, and the caller uses
the full reader, ``NeuronSet.load``, whose error names what is wrong: one loading path decides
what is valid; this one only answers early for the common case. ``tests/test_quickinfo.py``
checks both give the same summary.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from array import array
from pathlib import Path
from typing import Any

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.sets.fileformat import (
    EXTRAS,
    FORMAT_NAME,
    FORMAT_VERSION,
    HEADER_KEY,
    check_relspec_block,
    content_digest,
    site_tensor_name,
)
from relspec_lmeval.sets.shape import SITES, counted_sites

__all__ = ["quick_summary"]

_NAME = site_tensor_name(("indices", *EXTRAS))
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def _raw_tensors(path: Path) -> tuple[str, dict[str, str], dict[str, tuple[str, int, bytes]]] | None:
    """(the file's sha256, ``__metadata__``, ``{name: (dtype, element count, bytes)}``), or None where
    the file is not a plain safetensors file this reader understands."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < 8:
        return None
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(_MAX_HEADER, len(data) - 8):
        return None
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, dict) for v in header.values()):
        return None
    body = data[8 + size :]
    tensors: dict[str, tuple[str, int, tuple[int, int]]] = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            count = 1
            for dim in shape:
                count *= int(dim)
        except (KeyError, TypeError, ValueError):
            return None
        if not (isinstance(dtype, str) and type(begin) is int and type(end) is int and 0 <= begin <= end):
            return None
        tensors[name] = (dtype, count, (begin, end))
    spans = sorted(span for _, _, span in tensors.values())  # safetensors' own check: they tile the body
    if [b for b, _ in spans] != [0, *(e for _, e in spans[:-1])] or (spans[-1][1] if spans else 0) != len(body):
        return None
    tensor_bytes = {name: (dtype, count, body[b:e]) for name, (dtype, count, (b, e)) in tensors.items()}
    return hashlib.sha256(data).hexdigest(), metadata, tensor_bytes


_ARRAY = {"I64": ("q", 8), "F32": ("f", 4)}  # safetensors dtype → array typecode, bytes per element


def _values(dtype: str, count: int, raw: bytes, want: str) -> array | None:
    """The tensor as an ``array`` (``want``: ``I64`` or ``F32``), or None for another dtype or size."""
    code, width = _ARRAY[want]
    if dtype != want or len(raw) != width * count:
        return None
    return array(code, raw)


def quick_summary(path: Path) -> dict[str, Any] | None:
    """``NeuronSet.load(path).summary()`` without torch, or None where the full reader must decide.

    Args:
        path: a neuron-set file (``.safetensors``).

    Returns:
        The summary dict (path, sha256, content_sha256, counts, has_*, metadata), or None.

    Example:
        >>> from relspec_lmeval.sets.quickinfo import quick_summary
        >>> from relspec_lmeval.util.resources import shipped_neuron_set
        >>> quick_summary(shipped_neuron_set("relspec-tiny/landmark_country"))["count"]
        38
    """
    raw = None if sys.byteorder != "little" else _raw_tensors(path)  # safetensors is little-endian, as arrays are here
    if raw is None or HEADER_KEY not in raw[1]:
        return None
    sha256, entries, tensors = raw  # entries: the safetensors __metadata__
    try:
        block = json.loads(entries[HEADER_KEY])
    except (TypeError, json.JSONDecodeError):
        return None
    if not isinstance(block, dict) or block.get("format") != FORMAT_NAME:
        return None
    try:
        metadata = check_relspec_block(path, block, FORMAT_VERSION, "neuron-set")
    except NeuronSetError:  # the full reader raises it, after its own checks of the file
        return None
    model = metadata.get("model") or {}
    if model.get("num_experts") is not None:  # the per-expert split needs the model shape's code
        return None
    parts: dict[str, dict[tuple[int, str], array]] = {kind: {} for kind in ("indices", *EXTRAS)}
    for name, (dtype, count, data) in tensors.items():
        match = _NAME.fullmatch(name)
        values = match and _values(dtype, count, data, "I64" if match.group(3) == "indices" else "F32")
        if not values:  # an odd name, dtype or size, or an empty site (dropped, or refused with its extras)
            return None
        parts[match.group(3)][(int(match.group(1)), match.group(2))] = values
    neurons = parts["indices"]
    if any(min(idx) < 0 or len(set(idx)) != len(idx) for idx in neurons.values()):
        return None
    if any(set(extra) - set(neurons) or any(len(v) != len(neurons[k]) for k, v in extra.items()) for extra in
           (parts[e] for e in EXTRAS)):
        return None
    order = sorted(neurons, key=lambda key: (key[0], SITES.index(key[1])))
    counted = counted_sites(site for _, site in neurons)
    per_site = dict.fromkeys(counted, 0)
    per_layer: dict[int, dict[str, int]] = {}
    for layer, site in order:
        per_site[site] += len(neurons[(layer, site)])
        per_layer.setdefault(layer, dict.fromkeys(counted, 0))[site] = len(neurons[(layer, site)])
    full = lambda name: bool(neurons) and set(parts[name]) == set(neurons)  # noqa: E731
    return {
        "path": str(path),
        "sha256": sha256,
        "content_sha256": _content_sha256(model, neurons, parts["factors"], order),
        "count": sum(per_site.values()),
        "count_per_site": per_site,
        "count_per_layer": {str(layer): counts for layer, counts in sorted(per_layer.items())},
        "has_scores": bool(parts["scores"]),
        "has_means": full("means"),
        "has_factors": full("factors"),
        "metadata": metadata,
    }


def _content_sha256(model: dict, neurons: dict, factors: dict, order: list) -> str:
    """``NeuronSet.content_sha256``: the shape, then each site's sorted indices (and factors in their order)."""
    digest = content_digest(model)
    for key in order:
        idx = neurons[key]
        ranks = sorted(range(len(idx)), key=idx.__getitem__)
        digest.update(f"\nlayers.{key[0]}.{key[1]}.indices\n".encode() + array("q", (idx[i] for i in ranks)).tobytes())
        if key in factors:
            digest.update(f"\nlayers.{key[0]}.{key[1]}.factors\n".encode() + array("f", (factors[key][i] for i in ranks)).tobytes())
    return digest.hexdigest()
