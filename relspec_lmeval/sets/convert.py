"""Neuron sets from other tools' files: LAPE, knowledge-neurons, selfcond / lang_neuron.

Pure readers (selfcond's expertise.csv is read by ``sets.expertise``): each takes the
foreign file and the model's ``ModelShape`` and returns a ``Converted`` (the sets found, the
file's sha256, how its neurons map to our sites); ``to_neuron_sets`` makes our sets of it.
An entry that does not fit the model is one ``NeuronSetError`` naming the file and the entry.
Nothing here loads a model or writes a file (``cli.convert`` does); a ``.pth`` file is read
with ``torch.load(weights_only=True)`` only, which unpickles tensors and plain containers and
refuses any other object.

Site mapping (docs/convert.md): LAPE's neuron is ``act_fn(gate_proj(x))[i]`` and
knowledge-neurons' is intermediate activation i, the input of the second FFN linear; in a
gated MLP that input is ``act_fn(gate)[i] * up[i]``, so both map to ``up_proj`` channel i:
zeroing (or scaling) up_proj's output i zeroes (or scales) exactly what they zero (scale).
selfcond rows name the module whose output they read (``model.layers.3.mlp.up_proj:0``),
which is one of our sites as it stands.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relspec_lmeval import __version__
from relspec_lmeval.errors import NeuronSetError, UsageError
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.shape import ModelShape
from relspec_lmeval.util.hashing import file_sha256
from relspec_lmeval.util.suggest import did_you_mean, known_list

__all__ = ["MAPPINGS", "TOOLS", "Converted", "ForeignSet", "Key", "check_neuron", "file_stem", "read_kn", "read_lape", "source_file", "to_neuron_sets"]

Key = tuple[int, str, int]  # (layer, site, index)

TOOLS = {
    "lape": "LAPE (Tang et al., ACL 2024; RUCAIBox/Language-Specific-Neurons identify.py activation_mask)",
    "kn": "knowledge-neurons (Dai et al. 2022; EleutherAI/knowledge-neurons pararel_evaluate.py *_neurons_*.json)",
    "selfcond": "selfcond expertise.csv (Suau et al. 2022, apple/ml-selfcond; Kojima et al. 2024, lang_neuron)",
}
MAPPINGS = {
    "lape": "LAPE neuron (layer l, i) = act_fn(gate_proj(x))[i], zeroed before the product with up_proj(x) "
    "-> up_proj output channel i of layer l (down_proj input i = act_fn(gate)[i] * up[i]: zeroing or scaling "
    "up[i] zeroes or scales exactly that input)",
    "kn": "knowledge-neurons [layer, i] = FFN intermediate activation i (the input of the second FFN linear, "
    "act_fn(gate)[i] * up[i] in a gated MLP) -> up_proj output channel i of that layer",
    "selfcond": "a row's module output channel: model.layers.L.mlp.gate_proj (before the activation) / up_proj / "
    "down_proj or model.layers.L.self_attn.q_proj / k_proj / v_proj / o_proj, unit i -> that site, index i",
}
_STEM = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass
class ForeignSet:
    """One set found in a foreign file: its label, how errors name it, its neurons (and scores)."""

    name: str
    entry: str
    keys: list[Key]
    scores: dict[Key, float] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Converted:
    """What a reader found: the tool, the file and its sha256, the mapping, the sets."""

    tool: str
    path: Path
    sha256: str
    sets: list[ForeignSet]
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def mapping(self) -> str:
        return MAPPINGS[self.tool]


def file_stem(label: str) -> str:
    """A set's label as a file name: characters other than letters, digits and ``._+-`` become ``_``."""
    stem = _STEM.sub("_", str(label)).lstrip(".") or "_"
    return stem


def source_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise NeuronSetError(f"{what} file not found: {path}")
    return path


def check_neuron(path: Path, shape: ModelShape, entry: str, layer: int, site: str, index: int) -> None:
    """``NeuronSetError`` naming the file and the entry when (layer, site, index) is outside the model."""
    if not 0 <= layer < shape.num_layers:
        raise NeuronSetError(
            f"{path}: {entry}: layer {layer} out of range (the model has {shape.num_layers} layers); is the file for another model?"
        )
    width = shape.width(site)
    if not 0 <= index < width:
        size = {"down_proj": "hidden_size", "o_proj": "hidden_size", "q_proj": "heads × head_dim", "k_proj": "kv heads × head_dim",
                "v_proj": "kv heads × head_dim"}.get(site, "intermediate_size")
        raise NeuronSetError(
            f"{path}: {entry}: layer {layer} index {index} out of range ({site} has {width} channels, the model's {size}); "
            "is the file for another model?"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------ LAPE


def _lape_indices(value: Any, path: Path, entry: str) -> list[int]:
    import torch

    if isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
        return [int(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 0:
        return []  # torch.tensor([]) is float unless .long() was called
    if isinstance(value, torch.Tensor) and value.dim() == 1 and not value.dtype.is_floating_point and value.dtype != torch.bool:
        return [int(v) for v in value.tolist()]
    kind = f"a {value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
    raise NeuronSetError(f"{path}: {entry}: expected a 1-D LongTensor of neuron indices, got {kind}")


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; torch's warnings (a plain pickle's protocol, …) are kept
    quiet, so a file it cannot read is our one error line and nothing before it."""
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused what the pickle asked for
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise NeuronSetError(
                f"{path} holds a Python object ({found.group(1)}), which a safe torch.load(weights_only=True) refuses; "
                "a LAPE file is a list (languages) of lists (layers) of LongTensors, and relspec never unpickles other objects"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
        plain = "; it looks like a plain pickle.dump file, not a torch.save one: save the mask with torch.save" if (
            detail and "Unsupported operand" in detail.group(1)) else ""
        raise NeuronSetError(
            f"{path} is not a file torch.load(weights_only=True) can read ({detail.group(1).strip() if detail else 'not a pickle'}){plain}"
        ) from None
    except Exception as exc:  # not a torch file at all (a zip or pickle error, truncation)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise NeuronSetError(f"{path} is not a file torch.load(weights_only=True) can read ({first})") from None


def read_lape(path: str | os.PathLike, shape: ModelShape, names: Sequence[str] | None = None) -> Converted:
    """LAPE's ``activation_mask``: ``mask[language][layer]`` = LongTensor of intermediate indices.

    One set per language, named by ``names`` (in file order) or ``lang0``, ``lang1``, … (a
    file holding a dict ``{language: [...]}`` names them itself). Every neuron goes to
    ``up_proj`` (module doc). Raises ``NeuronSetError`` for an unreadable or malformed file,
    a language whose layer count is not the model's, or an index beyond intermediate_size;
    ``UsageError`` when ``names`` does not match the file's languages.
    """
    path = source_file(path, "LAPE")
    data = _torch_load(path)
    if isinstance(data, dict):
        if names:
            raise UsageError(f"--names: {path} names its languages itself ({known_list(map(str, data))})")
        items = [(str(key), value) for key, value in data.items()]
    elif isinstance(data, (list, tuple)):
        labels = list(names) if names else [f"lang{i}" for i in range(len(data))]
        if len(labels) != len(data):
            raise UsageError(f"--names gives {len(labels)} names, but {path} holds {len(data)} languages (in file order)")
        items = list(zip(labels, data))
    else:
        raise NeuronSetError(
            f"{path}: expected LAPE's activation_mask, a list over languages of lists over layers of LongTensors, "
            f"got {type(data).__name__}"
        )
    if not items:
        raise NeuronSetError(f"{path} holds no languages")
    sets = []
    for number, (name, layers) in enumerate(items):
        entry = f"language {number} ({name})"
        if not isinstance(layers, (list, tuple)):
            raise NeuronSetError(f"{path}: {entry}: expected a list over layers of LongTensors, got {type(layers).__name__}")
        if len(layers) != shape.num_layers:
            raise NeuronSetError(
                f"{path}: {entry} lists {len(layers)} layers, but the model has {shape.num_layers}; "
                "LAPE lists every layer, so the file is for another model"
            )
        keys: list[Key] = []
        for layer, value in enumerate(layers):
            where = f"{entry} layer {layer}"
            indices = _lape_indices(value, path, where)
            if len(set(indices)) != len(indices):
                raise NeuronSetError(f"{path}: {where}: duplicate neuron indices")
            for index in indices:
                check_neuron(path, shape, entry, layer, "up_proj", index)
            keys += [(layer, "up_proj", index) for index in indices]
        sets.append(ForeignSet(name, entry, keys, parameters={"language_index": number}))
    return Converted("lape", path, file_sha256(path), sets, {"names": [name for name, _ in items]})


# ------------------------------------------------------------------------ knowledge-neurons


def _kn_keys(value: Any, path: Path, shape: ModelShape, entry: str) -> tuple[list[Key], int]:
    """(the uuid's neurons in file order, without repeats; how many repeats were dropped)."""
    if isinstance(value, dict):
        hint = " (this looks like a *_pararel_results_*.json; pass the *_pararel_neurons_*.json)" if "suppression" in value else ""
        raise NeuronSetError(f"{path}: {entry}: expected a list of [layer, index] pairs, got an object{hint}")
    if not isinstance(value, list):
        raise NeuronSetError(f"{path}: {entry}: expected a list of [layer, index] pairs, got {type(value).__name__}")
    keys: dict[Key, None] = {}
    for position, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(_is_int(x) for x in pair)):
            raise NeuronSetError(f"{path}: {entry}, item {position}: expected [layer, index] (two integers), got {_shown(pair)}")
        layer, index = pair
        check_neuron(path, shape, f"{entry}, item {position}", layer, "up_proj", index)
        keys[(layer, "up_proj", index)] = None
    return list(keys), len(value) - len(keys)


KN_MAX_BYTES = 1 << 30  # a pararel neurons file is megabytes; a bigger one is not one (and json would need many times its size)


def _read_json(path: Path) -> Any:
    """The parsed file; ``NeuronSetError`` for invalid, too deeply nested or absurdly big JSON (one line, no traceback)."""
    size = path.stat().st_size
    if size > KN_MAX_BYTES:
        raise NeuronSetError(f"{path} is {size / (1 << 30):.1f} GiB; a knowledge-neurons neurons file is far smaller (the limit is 1 GiB)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NeuronSetError(f"{path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise NeuronSetError(f"{path} is nested too deeply to be a knowledge-neurons file ({{uuid: [[layer, index], ...]}})") from None
    except MemoryError:
        raise NeuronSetError(f"{path} is too big to read as JSON in this machine's memory") from None


def _shown(value: Any) -> str:
    """A JSON value in an error line: its first 60 characters (an absurdly nested one is named as such)."""
    try:
        return json.dumps(value)[:60]
    except RecursionError:
        return "a deeply nested value"


def read_kn(
    path: str | os.PathLike, shape: ModelShape, *, merge: bool = False, name: str | None = None, uuids: Sequence[str] | None = None
) -> Converted:
    """knowledge-neurons' JSON ``{uuid: [[layer, index], …]}``: one set per uuid, or one with ``merge``.

    ``uuids`` keeps only those entries; ``name`` labels the merged set (default: the file's
    stem) or the one uuid. Raises ``NeuronSetError`` for malformed JSON, an entry that is
    not a list of integer pairs, or a neuron beyond the model; ``UsageError`` for an unknown uuid.
    """
    path = source_file(path, "knowledge-neurons JSON")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise NeuronSetError(f"{path}: expected a JSON object {{uuid: [[layer, index], ...]}} (knowledge-neurons' neurons file), got {type(data).__name__}")
    if not data:
        raise NeuronSetError(f"{path} holds no uuids")
    chosen = list(uuids) if uuids else list(data)
    for uuid in chosen:
        if uuid not in data:
            raise UsageError(f"--uuids: {uuid!r} is not in {path}.{did_you_mean(uuid, data)}")
    if name is not None and not merge and len(chosen) != 1:
        raise UsageError(f"--name labels one set: add --merge, or pick one uuid with --uuids ({len(chosen)} uuids chosen)")
    per_uuid = {}
    for uuid in chosen:
        keys, repeats = _kn_keys(data[uuid], path, shape, f"uuid {uuid}")
        per_uuid[uuid] = ForeignSet(name or uuid, f"uuid {uuid}", keys, parameters={"uuid": uuid, **({"repeats_dropped": repeats} if repeats else {})})
    parameters = {"uuids": len(chosen), "merge": merge}
    if not merge:
        return Converted("kn", path, file_sha256(path), list(per_uuid.values()), parameters)
    union = list(dict.fromkeys(key for part in per_uuid.values() for key in part.keys))
    merged = ForeignSet(
        name or path.stem, f"{len(chosen)} uuids merged", union,
        parameters={"merged_uuids": {uuid: len(part.keys) for uuid, part in per_uuid.items()}},
    )
    return Converted("kn", path, file_sha256(path), [merged], parameters)


# -------------------------------------------------------------------------------- our sets


def to_neuron_sets(
    converted: Converted, shape: ModelShape, model_block: dict[str, Any], command: str | None = None, allow_empty: bool = False
) -> list[NeuronSet]:
    """Our sets, with provenance: method ``convert``, the source tool, file, sha256 and entry, the mapping.

    Raises ``NeuronSetError`` for a set with no neurons unless ``allow_empty``.
    """
    result = []
    for found in converted.sets:
        if not found.keys and not allow_empty:
            raise NeuronSetError(f"{converted.path}: {found.entry} holds no neurons (pass --allow-empty to write an empty set anyway)")
        grouped: dict[tuple[int, str], list[int]] = {}
        for layer, site, index in found.keys:
            grouped.setdefault((layer, site), []).append(index)
        scores = {}
        if found.scores is not None:
            scores = {key: [found.scores[(key[0], key[1], i)] for i in index] for key, index in grouped.items()}
        metadata = {
            "model": model_block,
            "relation": found.name,
            "method": "convert",
            "k": len(found.keys),
            "source": {
                "tool": converted.tool,
                "tool_name": TOOLS[converted.tool],
                "file": converted.path.name,
                "path": str(converted.path),
                "sha256": converted.sha256,
                "entry": found.entry,
            },
            "site_mapping": converted.mapping,
            "parameters": {**converted.parameters, **found.parameters},
            "package_version": __version__,
            "command": command,
        }
        neuron_set = NeuronSet(grouped, metadata, scores=scores)
        neuron_set.validate(shape, allow_empty=allow_empty)
        result.append(neuron_set)
    return result
