"""Write tiny transformers models, with their tokenizer, to GGUF files -- so GGUF tests need no downloads.

``write_gguf(model, tokenizer, path)`` writes a ``LlamaForCausalLM`` or a ``Gemma3ForCausalLM``
(``model_type == "gemma3_text"``) the way llama.cpp's ``convert_hf_to_gguf.py`` would, so that
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=torch.float32)`` and
``AutoTokenizer.from_pretrained(dir, gguf_file=name)`` load them back. The writer undoes, one for one,
what transformers' GGUF loader does to the tensors:

* llama: ``attn_q`` / ``attn_k`` rows are permuted from transformers' half-split rotary layout into
  llama.cpp's interleaved one (``LlamaTensorProcessor`` reverses it on load);
* gemma3: every ``*norm.weight`` is stored as ``1 + w`` (``Gemma2TensorProcessor`` subtracts 1 on load).

``tiny_llama(seed)`` / ``tiny_gemma3(seed)`` build a 2-layer random model and a matching
SentencePiece-style BPE tokenizer (byte fallback, printable-ASCII characters, a few merged pieces).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
)
from transformers.tokenization_utils_base import generate_merges

PROMPT = "Tokyo is in the country of? Answer:"

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-F]{2}>$")
_BYTES = [f"<0x{b:02X}>" for b in range(256)]
_CHARS = [chr(c) for c in range(33, 127)]  # printable ASCII; the space is spelled "\u2581"
# A few merged pieces, so the BPE merges (rebuilt by the loader from scores / token order) get exercised.
_PIECES = ["\u2581t", "he", "\u2581the", "\u2581i", "\u2581is", "\u2581in", "\u2581o", "\u2581of", "er", "an", "\u2581A", "ns", "wer"]

_ARCH = {"llama": "llama", "gemma3_text": "gemma3", "gemma3": "gemma3"}
_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
_QUANTS = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}


# --------------------------------------------------------------------------------------------- writing


def write_gguf(model, tokenizer, path, *, dtype: str = "f32", merges: bool | None = None, name: str | None = None) -> Path:
    """Write ``model`` (Llama or Gemma3 text) and its ``tokenizer`` to the GGUF file ``path``.

    ``dtype``: ``"f32"`` (default; loads back bit-exact), ``"f16"``, ``"q8_0"`` or ``"q4_0"`` (block formats,
    quantized by ``gguf.quants``); 1-D tensors stay F32, as llama.cpp does.
    ``merges``: write ``tokenizer.ggml.merges``. ``None`` writes them only when the loader could not rebuild
    the tokenizer's merges from the scores (``-id``) / token order alone -- real llama.cpp SentencePiece
    files carry no merges, so by default the loader's rebuilding path is the one tested.
    """
    config = model.config
    model_type = config.model_type
    if model_type not in _ARCH:
        raise ValueError(f"write_gguf handles model_type llama / gemma3_text, not {model_type!r}")
    if dtype not in _FILE_TYPES:
        raise ValueError(f"dtype must be one of {', '.join(_FILE_TYPES)}, not {dtype!r}")
    arch = _ARCH[model_type]
    path = Path(path)
    _warn_lossy(config, arch)

    writer = gguf.GGUFWriter(path, arch)
    # NB: the loader treats a llama file whose name contains "mistral" as a Mistral.
    writer.add_name(name or f"tiny-{arch}")
    writer.add_file_type(_FILE_TYPES[dtype])
    _add_hparams(writer, config, arch)
    _add_tokenizer(writer, tokenizer, config, arch, merges)
    _add_tensors(writer, model, arch, dtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _rope(config, layer_type: str | None = None) -> dict:
    params = getattr(config, "rope_parameters", None) or {}
    if layer_type is not None and layer_type in params:
        params = params[layer_type]
    return params


def _add_hparams(writer: gguf.GGUFWriter, config, arch: str) -> None:
    head_dim = _head_dim(config)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)  # the loader reads head_dim from here for llama
        writer.add_rope_freq_base(float(_rope(config).get("rope_theta", 10000.0)))
    else:
        writer.add_rope_freq_base(float(_rope(config, "full_attention").get("rope_theta", 1_000_000.0)))
        writer.add_rope_freq_base_swa(float(_rope(config, "sliding_attention").get("rope_theta", 10_000.0)))
        writer.add_sliding_window(config.sliding_window)
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in config.layer_types])
        if config.final_logit_softcapping is not None:
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
        if config.attn_logit_softcapping is not None:
            writer.add_attn_logit_softcapping(config.attn_logit_softcapping)


def _warn_lossy(config, arch: str) -> None:
    """Warn about config values this transformers' GGUF loader cannot read back (it uses class defaults)."""
    lost = []
    if arch == "llama":
        defaults = LlamaConfig()
        for key in ("hidden_act", "attention_bias", "mlp_bias"):
            if getattr(config, key) != getattr(defaults, key):
                lost.append(key)
        if _rope(config).get("rope_type", "default") != "default":
            lost.append("rope_parameters.rope_type")
    else:
        defaults = Gemma3TextConfig(num_hidden_layers=config.num_hidden_layers)
        for key in ("hidden_activation", "query_pre_attn_scalar", "final_logit_softcapping", "attn_logit_softcapping", "layer_types"):
            if getattr(config, key) != getattr(defaults, key):
                lost.append(key)
        for layer_type in ("full_attention", "sliding_attention"):
            if _rope(config, layer_type).get("rope_type", "default") != "default":
                lost.append(f"rope_parameters.{layer_type}.rope_type")
        if _rope(config, "sliding_attention").get("rope_theta", 10_000.0) != 10_000.0:
            lost.append("rope_parameters.sliding_attention.rope_theta")
    if lost:
        warnings.warn(
            f"transformers' GGUF loader does not read {', '.join(lost)} for {arch}; a model loaded from this file "
            f"will use the config class defaults for them and may not match the original",
            stacklevel=3,
        )


def _token_types(tokenizer, tokens: list[str]) -> list[int]:
    special = set(tokenizer.all_special_ids)
    added = {i for i, tok in tokenizer.added_tokens_decoder.items() if not tok.special}
    types = []
    for i, token in enumerate(tokens):
        if i == tokenizer.unk_token_id:
            types.append(gguf.TokenType.UNKNOWN)
        elif i in special:
            types.append(gguf.TokenType.CONTROL)
        elif _BYTE_TOKEN.match(token):
            types.append(gguf.TokenType.BYTE)
        elif i in added:
            types.append(gguf.TokenType.USER_DEFINED)
        elif token.startswith("[PAD") and i >= len(tokenizer):
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return types


def _bpe_merges(tokenizer) -> list[tuple[str, str]]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"write_gguf writes SentencePiece-style BPE tokenizers, not {model.get('type')!r}")
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer, config, arch: str, merges: bool | None) -> None:
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= config.vocab_size:
        raise ValueError(f"tokenizer has ids up to {max(vocab.values())}, the model's vocab_size is {config.vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(config.vocab_size)]  # llama.cpp pads a short vocabulary like this
    for token, i in vocab.items():
        tokens[i] = token
    # Scores only order the merges the loader rebuilds: earlier (lower id) ranks first, for llama (by score)
    # and gemma (by position in the file) alike.
    scores = [-float(i) for i in range(len(tokens))]

    writer.add_tokenizer_model("llama")  # SentencePiece; gemma3 files say "llama" too
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(_token_types(tokenizer, tokens))
    actual = _bpe_merges(tokenizer)
    if merges is None:
        rebuilt = generate_merges({t: i for i, t in enumerate(tokens)}, dict(zip(tokens, scores)))
        merges = [tuple(m) for m in rebuilt] != actual
    if merges:
        writer.add_token_merges([f"{a} {b}" for a, b in actual])
    for key, token_id in (
        ("bos", tokenizer.bos_token_id),
        ("eos", tokenizer.eos_token_id),
        ("unk", tokenizer.unk_token_id),
        ("pad", tokenizer.pad_token_id),
    ):
        if token_id is not None:
            getattr(writer, f"add_{key}_token_id")(token_id)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", True)))
    writer.add_add_eos_token(bool(getattr(tokenizer, "add_eos_token", False)))
    writer.add_add_space_prefix(arch == "llama")
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: half-split rotary rows -> interleaved pairs, per head."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _add_tensors(writer: gguf.GGUFWriter, model, arch: str, dtype: str) -> None:
    config = model.config
    model_arch = {"llama": gguf.MODEL_ARCH.LLAMA, "gemma3": gguf.MODEL_ARCH.GEMMA3}[arch]
    name_map = gguf.get_tensor_name_map(model_arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # no output.weight is how the loader knows the embeddings are tied
        base, suffix = hf_name.rsplit(".", 1)
        gguf_base = name_map.get_name(base)
        if gguf_base is None:
            raise ValueError(f"no GGUF tensor name for {hf_name}")
        gguf_name = f"{gguf_base}.{suffix}"
        weights = tensor.detach().to(torch.float32).cpu().numpy()
        # The inverse of each tensor processor in transformers' modeling_gguf_pytorch_utils.py:
        if arch == "llama" and ".attn_q." in gguf_name:
            weights = _permute(weights, config.num_attention_heads)
        elif arch == "llama" and ".attn_k." in gguf_name:
            weights = _permute(weights, config.num_key_value_heads)
        elif arch == "gemma3" and "norm.weight" in gguf_name:
            weights = weights + np.float32(1.0)
        if dtype in _QUANTS and weights.ndim > 1:
            qtype = _QUANTS[dtype]
            writer.add_tensor(gguf_name, gguf.quants.quantize(np.ascontiguousarray(weights), qtype), raw_dtype=qtype)
            continue
        if dtype == "f16" and weights.ndim > 1:
            weights = weights.astype(np.float16)
        writer.add_tensor(gguf_name, np.ascontiguousarray(weights))


# ------------------------------------------------------------------------------------------ tiny models


def _tiny_vocab(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    tokens = specials + _BYTES + ["\u2581"] + _CHARS + _PIECES
    vocab = {token: i for i, token in enumerate(tokens)}
    # The same rebuilding the GGUF loader does: merges ranked by score, score = -id.
    merges = generate_merges(vocab, {token: -float(i) for token, i in vocab.items()})
    return vocab, merges


def tiny_llama_tokenizer() -> LlamaTokenizer:
    vocab, merges = _tiny_vocab(["<unk>", "<s>", "</s>", "<pad>"])
    return LlamaTokenizer(
        vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>", add_bos_token=True
    )


def tiny_gemma3_tokenizer() -> GemmaTokenizer:
    # Gemma's own layout: <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4.
    vocab, merges = _tiny_vocab(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


def _randomize_norms(model, grid: float | None = None) -> None:
    """Non-trivial norm weights, so a mis-mapped norm shows. ``grid``: round so ``1 + w`` is exact in float32."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                values = 0.2 * torch.randn_like(param)
                if grid is not None:
                    values = torch.round(values / grid) * grid
                param.copy_(values + (1.0 if grid is None else 0.0))


def _tiny_shape(tokenizer) -> dict:
    """The config fields both tiny models share: 2 layers, hidden 64, FFN 128, 4 heads / 2 KV heads."""
    return {
        "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256,
        "initializer_range": 0.1, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def tiny_llama(seed: int = 0):
    """(LlamaForCausalLM, LlamaTokenizer): 2 layers, hidden 64, FFN 128, 4 heads / 2 KV heads, untied head."""
    tokenizer = tiny_llama_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        **_tiny_shape(tokenizer),
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    _randomize_norms(model)
    return model, tokenizer


def tiny_gemma3(seed: int = 0):
    """(Gemma3ForCausalLM, GemmaTokenizer): 2 sliding-window layers (window 8), hidden 64, FFN 128, tied head."""
    tokenizer = tiny_gemma3_tokenizer()
    torch.manual_seed(seed)
    config = Gemma3TextConfig(**_tiny_shape(tokenizer), rms_norm_eps=1e-6, sliding_window=8, tie_word_embeddings=True)
    # Everything the loader cannot read stays at the class defaults: both layers sliding (pattern 6),
    # local rope base 10000, query_pre_attn_scalar 256, no softcapping.
    model = Gemma3ForCausalLM(config).eval()
    _randomize_norms(model, grid=2.0**-12)
    return model, tokenizer
