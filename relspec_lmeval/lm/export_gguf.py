"""``relspec export --format gguf``: the model's own GGUF file with a set switched off, for llama.cpp and ollama.

The input GGUF is copied tensor by tensor (``gguf.GGUFReader`` → ``gguf.GGUFWriter``): its metadata
(tokenizer, chat template, hyper-parameters) and every tensor the set does not touch, byte for byte,
plus our provenance under ``relspec.*`` keys. A neuron is an output channel, which is one row of the
GGUF tensor (``ne[0]`` values stored contiguously), and in a block format (Q4_0 … Q8_0, Q2_K … Q6_K,
IQ*, MXFP4) a row is whole blocks. So:

* ``mode=zero`` on rows keeps the tensor's type: the row's blocks are written as zero bytes, which
  decode to exactly 0 (the block's scale is 0). This is checked per type before anything is written
  (``gguf.quants.dequantize`` of a zero block); a type it cannot check (Q8_1, Q8_K: runtime-only) is refused.
* Everything else cannot be exact in a block or half-precision format (``mode=scale``/``dampen``, and
  ``o_proj_in``, whose neurons are columns): that tensor is dequantized, edited in float32 (as
  ``relspec-hf`` edits the float32 model) and written as F32. The command names each such tensor.

transformers un-permutes llama's ``attn_q``/``attn_k`` rows on load (``LlamaTensorProcessor``), so on a
``llama`` file a q/k neuron is mapped through llama.cpp's permutation to its row in the file. Fused
(``gate_up_proj``) and mixture-of-experts GGUF files are refused: their rows are not mapped yet.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relspec_lmeval.errors import ModelError, NeuronSetError, OutputError, UsageError
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.util.files import atomic_write
from relspec_lmeval.util.hashing import file_sha256
from relspec_lmeval.util.locks import probe_writable
from relspec_lmeval.util.resources import refuse_shipped

__all__ = [
    "GGUF_ARCHS", "GGUF_FORMAT", "GGUF_TENSORS", "GgufEdit", "check_gguf_target", "export_gguf_file", "gguf_source", "plan_gguf_edits",
    "write_ablated_gguf",
]

GGUF_FORMAT = "relspec-export-gguf"  # the value of the relspec.format key: what --force may replace
# Dense architectures whose GGUF keeps one tensor per site (transformers reads them all).
GGUF_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")
GGUF_TENSORS = {  # our site → the GGUF tensor of a layer (o_proj_in: attn_output's columns)
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output", "o_proj_in": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}


@dataclass
class GgufEdit:
    """What happens to one tensor: rows (``axis`` 0) and columns (``axis`` 1, ``o_proj_in``) multiplied by
    their factors (0: zeroed). A layer's ``o_proj`` and ``o_proj_in`` neurons are rows and columns of one tensor."""

    name: str
    index: dict[int, list[np.ndarray]] = field(default_factory=lambda: {0: [], 1: []})
    factors: dict[int, list[np.ndarray]] = field(default_factory=lambda: {0: [], 1: []})

    def add(self, axis: int, index: np.ndarray, factors: np.ndarray) -> None:
        self.index[axis].append(index)
        self.factors[axis].append(factors)

    def merged(self, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(indices, factors) along ``axis``, or None where the set has none there."""
        if not self.index[axis]:
            return None
        return np.concatenate(self.index[axis]), np.concatenate(self.factors[axis]).astype(np.float32)


def gguf_source(model: str, gguf_file: str | None) -> Path:
    """The GGUF file ``--model``/``--gguf-file`` name; ``UsageError`` for a model that is not one.

    Example:
        >>> from relspec_lmeval.lm.export_gguf import gguf_source
        >>> gguf_source("./my-hf-model", None)
        Traceback (most recent call last):
        ...
        relspec_lmeval.errors.UsageError: --format gguf edits a GGUF file: give --model a packaged name (gemma-3-270m, …) or a folder with --gguf-file NAME; for ./my-hf-model (not a GGUF) export --format hf and convert that folder with llama.cpp's convert_hf_to_gguf.py
    """
    from relspec_lmeval.modelio.gguf import PACKAGED, gguf_path, packaged_gguf

    if gguf_file:
        return gguf_path(model, gguf_file).resolve()
    if model in PACKAGED:
        return packaged_gguf(model).resolve()
    if str(model).endswith(".gguf"):
        where = Path(model).expanduser()
        raise UsageError(f"--model {model} is a file: give its folder and name, --model {where.parent} --gguf-file {where.name}")
    names = ", ".join(list(PACKAGED)[:1]) + ", …"
    raise UsageError(
        f"--format gguf edits a GGUF file: give --model a packaged name ({names}) or a folder with --gguf-file NAME; "
        f"for {model} (not a GGUF) export --format hf and convert that folder with llama.cpp's convert_hf_to_gguf.py"
    )


def check_gguf_target(out: str | os.PathLike, force: bool, source: Path) -> Path:
    """The output file, or ``OutputError`` when writing it could lose anything: a ``.gguf`` name, not
    the input, not shipped, and (``--force``) replacing only a file an earlier GGUF export wrote."""
    given = Path(out).expanduser()
    target = given.resolve()
    if given.suffix != ".gguf":
        raise OutputError(f"--out {out}: with --format gguf, give the name of the GGUF file to write, e.g. --out ablated.gguf")
    if target == source:
        raise OutputError(f"--out {out} is the input GGUF file; write the ablated model to a new file")
    refuse_shipped(target, "--out")
    if target.is_dir():
        raise OutputError(f"--out {out} is a folder, not a file name")
    probe_writable(target.parent, "--out")  # written beside its target, then renamed
    if target.exists():
        if not force:
            raise OutputError(f"output file {out} exists (use --force to replace a file an earlier relspec export --format gguf wrote)")
        if _written_by_us(target) is not True:
            raise OutputError(f"--force replaces only a GGUF written by relspec export, and {out} is not one; not touching it")
    return target


def _written_by_us(path: Path) -> bool:
    import gguf

    try:
        field_ = gguf.GGUFReader(path, "r").get_field("relspec.format")
        return field_ is not None and field_.contents() == GGUF_FORMAT
    except Exception:  # not a GGUF at all, cut off, unreadable: not ours
        return False


def _llama_row_of(n_rows: int, n_head: int) -> np.ndarray:
    """``row[j]``: the file row of transformers' q/k row ``j`` (transformers undoes llama.cpp's
    interleaving on load, ``LlamaTensorProcessor._reverse_permute_weights``; this is the same
    reshape applied to the row numbers)."""
    rows = np.arange(n_rows)
    return rows.reshape(n_head, n_rows // n_head // 2, 2).swapaxes(2, 1).reshape(n_rows)


def plan_gguf_edits(reader: Any, neuron_set: NeuronSet, mode: str, factor: float | None, config: Any) -> dict[str, GgufEdit]:
    """The edit of each tensor the set touches, by GGUF tensor name; ``ModelError``/``NeuronSetError`` before any write."""
    arch = reader.get_field("general.architecture").contents()
    if arch not in GGUF_ARCHS:
        raise ModelError(
            f"relspec export --format gguf edits {', '.join(GGUF_ARCHS)} files, not {arch!r} "
            "(a fused or mixture-of-experts GGUF is not mapped yet); export --format hf instead"
        )
    shapes = {t.name: t for t in reader.tensors}
    edits: dict[str, GgufEdit] = {}
    for (layer, site), index in neuron_set.neurons.items():
        if site not in GGUF_TENSORS:
            raise NeuronSetError(f"layer {layer} {site}: --format gguf writes {', '.join(GGUF_TENSORS)} neurons, not {site}")
        name = f"blk.{layer}.{GGUF_TENSORS[site]}.weight"
        if name not in shapes:
            raise ModelError(f"layer {layer} {site}: the GGUF file has no tensor {name}")
        channels = index.numpy().astype(np.int64)
        if arch == "llama" and site in ("q_proj", "k_proj"):
            heads = config.num_attention_heads if site == "q_proj" else config.num_key_value_heads
            channels = _llama_row_of(int(shapes[name].shape[-1]), heads)[channels]
        if mode == "zero":
            values = np.zeros(len(channels), np.float32)
        elif mode == "scale":
            values = np.full(len(channels), factor, np.float32)
        else:
            values = neuron_set.factors[(layer, site)].numpy().astype(np.float32)
        edits.setdefault(name, GgufEdit(name)).add(1 if site == "o_proj_in" else 0, channels, values)
    for edit in edits.values():
        _check_zero_exact(shapes[edit.name], edit, mode)
    return edits


def _keeps_type(edit: GgufEdit, mode: str) -> bool:
    """Zeroing rows is exact in the tensor's own type; anything else (scaling, columns) is written as F32."""
    return mode == "zero" and edit.merged(1) is None


def _check_zero_exact(tensor: Any, edit: GgufEdit, mode: str) -> None:
    """A zero block of the tensor's type must decode to 0, and the tensor must decode at all."""
    from gguf import GGML_QUANT_SIZES
    from gguf.quants import dequantize

    qtype = tensor.tensor_type
    _, type_size = GGML_QUANT_SIZES[qtype]
    try:
        if _keeps_type(edit, mode):
            zero = dequantize(np.zeros((1, type_size), np.uint8), qtype)
            if np.any(zero != 0):
                raise NotImplementedError
        else:
            dequantize(np.asarray(tensor.data[:1]), qtype)
    except NotImplementedError:
        raise ModelError(f"{edit.name} is {qtype.name}, whose blocks relspec cannot decode to check the edit; not writing it") from None


def _edited_tensor(tensor: Any, edit: GgufEdit, mode: str) -> tuple[np.ndarray, Any]:
    """(data, type) to write for an edited tensor."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    if _keeps_type(edit, mode):
        data = np.array(tensor.data)  # a copy of the memory-mapped bytes
        rows = data.view(np.uint8).reshape(data.shape[0], -1)
        rows[edit.merged(0)[0]] = 0
        return data, tensor.tensor_type
    weights = np.array(dequantize(np.asarray(tensor.data), tensor.tensor_type), dtype=np.float32)
    # columns first: relspec-hf edits o_proj_in before o_proj (sets.shape.SITES order), so the roundings agree
    if (columns := edit.merged(1)) is not None:
        weights[:, columns[0]] *= columns[1][None, :]
    if (rows := edit.merged(0)) is not None:
        weights[rows[0]] *= rows[1][:, None]
    return weights, GGMLQuantizationType.F32


def _copy_metadata(reader: Any, writer: Any, provenance: dict[str, Any]) -> None:
    """Every key of the input except the ones the writer adds itself, then ours (as in gguf's own
    ``gguf_new_metadata.py``)."""
    from gguf import GGUFValueType

    for item in reader.fields.values():
        if item.name == "general.architecture" or item.name.startswith(("GGUF.", "relspec.")):
            continue
        kind = item.types[0]
        sub = item.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(item.name, item.contents(), kind, sub_type=sub)
    for key, value in provenance.items():
        writer.add_key_value(f"relspec.{key}", value, GGUFValueType.STRING)


def write_ablated_gguf(
    source: Path, target: Path, neuron_set: NeuronSet, mode: str, factor: float | None, config: Any, provenance: dict[str, Any],
    force: bool = False,
) -> list[tuple[str, str]]:
    """Write ``target``: ``source`` with ``neuron_set`` switched off. Returns the tensors written as
    F32, as (name, original type). The file is built beside ``target`` and renamed into place.

    Args:
        source, target: the input GGUF and the file to write.
        neuron_set: the (merged) set, validated against ``config``.
        mode, factor: zero, scale (with factor) or dampen (the set's factors).
        config: the model's transformers config (llama q/k heads).
        provenance: written as ``relspec.<key>`` strings (non-strings as JSON).
        force: an existing ``target`` that an earlier GGUF export wrote may be replaced.
    """
    import gguf

    if mode not in ("zero", "scale", "dampen"):
        raise UsageError(f"mode={mode} has no weight edit (it rewrites outputs at run time); a GGUF export takes zero, scale or dampen")
    reader = gguf.GGUFReader(source, "r")
    edits = plan_gguf_edits(reader, neuron_set, mode, factor, config)
    retyped = [(name, t.tensor_type.name) for t in reader.tensors if (name := t.name) in edits and not _keeps_type(edits[name], mode)]
    record = {"format": GGUF_FORMAT, "source_sha256": file_sha256(source), "retyped_f32": [name for name, _ in retyped], **provenance}
    strings = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in record.items()}

    def write(tmp: Path) -> None:
        endian = reader.endianess
        writer = gguf.GGUFWriter(tmp, arch=reader.get_field("general.architecture").contents(), endianess=endian)
        alignment = reader.get_field("general.alignment")
        if alignment is not None:
            writer.data_alignment = alignment.contents()
        _copy_metadata(reader, writer, strings)
        blobs = []  # (data, its byte order): copied bytes keep the file's, edited ones are this machine's
        for tensor in reader.tensors:
            edited = tensor.name in edits
            data, qtype = _edited_tensor(tensor, edits[tensor.name], mode) if edited else (tensor.data, tensor.tensor_type)
            writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, qtype)
            blobs.append((data, None if edited and qtype != tensor.tensor_type else endian))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data, order in blobs:
            writer.write_tensor_data(data, tensor_endianess=order)
        writer.close()
        if target.exists() and (not force or not _written_by_us(target)):  # appeared while writing: the user's, kept
            raise OutputError(f"--out {target} appeared while the export ran; the new file was discarded, {target} is untouched")

    try:
        atomic_write(target, write)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    return retyped


def export_gguf_file(cfg: Any) -> tuple[Path, int, list[tuple[str, str]]]:
    """``relspec export --format gguf``: (file written, neurons, tensors written as F32).

    Everything is checked before a byte is written: the set against the model, the output file, and
    each edited tensor's type (``plan_gguf_edits``)."""
    import torch

    from relspec_lmeval.lm.ablation import AblationSpec
    from relspec_lmeval.lm.export import check_sets, provenance
    from relspec_lmeval.modelio.gguf import require_gguf
    from relspec_lmeval.modelio.load import load_config
    from relspec_lmeval.sets.neuron_set import union_all
    from relspec_lmeval.sets.resolve import load_sets

    if cfg.dtype not in (None, "auto"):
        raise UsageError(f"--dtype {cfg.dtype}: --format gguf keeps each tensor's own type (edited ones become F32); drop --dtype")
    if cfg.revision is not None:
        raise UsageError("--revision names a hub revision; --format gguf reads a local GGUF file")
    require_gguf()
    spec = AblationSpec(mode=cfg.mode, factor=cfg.factor, method="weights")
    sets = load_sets(cfg.neuron_set)
    source = gguf_source(cfg.model, cfg.gguf_file)
    target = check_gguf_target(cfg.out, cfg.force, source)
    config = load_config(cfg.model, None, cfg.gguf_file)  # the GGUF's shape (converted once, cached)
    check_sets(sets, cfg, spec, config, torch.float32)
    merged = union_all(sets)
    retyped = write_ablated_gguf(source, target, merged, spec.mode, spec.factor, config, provenance(cfg, spec, sets), cfg.force)
    return target, len(merged), retyped
