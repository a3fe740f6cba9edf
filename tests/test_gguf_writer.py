"""tests/gguf_writer.py: tiny Llama / Gemma3 models written to GGUF load back through transformers unchanged."""

from __future__ import annotations

import warnings

import gguf
import numpy as np
import pytest
import torch
from gguf_writer import PROMPT, tiny_gemma3, tiny_llama, write_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

BUILDERS = {"llama": tiny_llama, "gemma3": tiny_gemma3}
NAME = "tiny.gguf"


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def roundtrip(request, tmp_path_factory):
    """(arch, original model, original tokenizer, folder, loaded model, loaded tokenizer)."""
    arch = request.param
    model, tokenizer = BUILDERS[arch](seed=0)
    folder = tmp_path_factory.mktemp(f"gguf-{arch}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tiny models use nothing the loader would drop
        write_gguf(model, tokenizer, folder / NAME)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=NAME, dtype=torch.float32).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=NAME)
    return arch, model, tokenizer, folder, loaded, loaded_tokenizer


def _input_ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer(PROMPT).input_ids])


def test_logits_match(roundtrip):
    arch, model, tokenizer, _, loaded, _ = roundtrip
    ids = _input_ids(tokenizer)
    if arch == "gemma3":
        assert ids.shape[1] > model.config.sliding_window  # the window really cuts in
    fixed = torch.tensor([[1, 5, 77, 300, 12, 260, 261, 42, 9, 100, 3, 250]])
    with torch.no_grad():
        for x in (ids, fixed):
            expected, got = model(x).logits, loaded(x).logits
            assert torch.allclose(expected, got, atol=1e-5, rtol=0)
            assert torch.equal(expected, got)  # float32 all the way: bit-exact


def test_weights_match(roundtrip):
    _, model, _, _, loaded, _ = roundtrip
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    assert [name for name in expected if not torch.equal(expected[name], got[name])] == []


def test_config_and_modules(roundtrip):
    arch, model, _, _, loaded, _ = roundtrip
    want, got = model.config, loaded.config
    assert got.model_type == want.model_type == {"llama": "llama", "gemma3": "gemma3_text"}[arch]
    for key in (
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ):
        assert getattr(got, key) == getattr(want, key), key
    assert got.rms_norm_eps == pytest.approx(want.rms_norm_eps)  # stored as float32
    assert got.rope_parameters == want.rope_parameters
    if arch == "gemma3":
        assert (got.sliding_window, got.layer_types) == (want.sliding_window, want.layer_types)
    assert len(loaded.model.layers) == want.num_hidden_layers
    for layer in loaded.model.layers:
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert type(getattr(layer.mlp, proj)) is torch.nn.Linear
        assert layer.mlp.gate_proj.weight.shape == (want.intermediate_size, want.hidden_size)
        assert layer.mlp.down_proj.weight.shape == (want.hidden_size, want.intermediate_size)


def test_tokenizer_roundtrip(roundtrip):
    _, model, tokenizer, _, _, loaded_tokenizer = roundtrip
    ids = loaded_tokenizer(PROMPT).input_ids
    assert ids == tokenizer(PROMPT).input_ids
    assert ids[0] == loaded_tokenizer.bos_token_id == model.config.bos_token_id
    assert ids.count(loaded_tokenizer.unk_token_id) == 0
    assert max(ids) < model.config.vocab_size and len(ids) < len(PROMPT)  # some merged pieces were used
    text = loaded_tokenizer.decode(ids, skip_special_tokens=True)
    assert text.split() == PROMPT.split()
    # Outside printable ASCII: byte fallback, not <unk>.
    odd = loaded_tokenizer("Zürich \u2192 ok").input_ids
    assert loaded_tokenizer.unk_token_id not in odd
    assert loaded_tokenizer.decode(odd, skip_special_tokens=True).split() == ["Zürich", "\u2192", "ok"]
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert getattr(loaded_tokenizer, name) == getattr(tokenizer, name)


def test_file_layout(roundtrip):
    """What is in the file: llama.cpp's keys, q/k permuted for llama, gemma norms offset by one."""
    arch, model, _, folder, _, _ = roundtrip
    reader = gguf.GGUFReader(folder / NAME)
    keys = set(reader.fields)
    for key in ("block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
                "attention.head_count_kv", "attention.layer_norm_rms_epsilon", "rope.freq_base", "attention.key_length"):
        assert f"{arch}.{key}" in keys
    if arch == "gemma3":
        assert {"gemma3.attention.sliding_window", "gemma3.rope.freq_base_swa", "gemma3.attention.value_length"} <= keys
    assert {"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id"} <= keys
    assert "tokenizer.ggml.merges" not in keys  # the loader rebuilds them, as for a real llama.cpp file

    tensors = {t.name: t for t in reader.tensors}
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in tensors.values())
    assert ("output.weight" in tensors) == (not model.config.tie_word_embeddings)
    state = model.state_dict()
    q_hf = state["model.layers.0.self_attn.q_proj.weight"].numpy()
    q_file = np.asarray(tensors["blk.0.attn_q.weight"].data)
    norm_hf = state["model.layers.0.input_layernorm.weight"].numpy()
    norm_file = np.asarray(tensors["blk.0.attn_norm.weight"].data)
    if arch == "llama":
        assert not np.array_equal(q_file, q_hf) and np.array_equal(np.sort(q_file, axis=0), np.sort(q_hf, axis=0))
        assert np.array_equal(norm_file, norm_hf)
    else:
        assert np.array_equal(q_file, q_hf)
        assert np.array_equal(norm_file, norm_hf + 1)


def test_f16_and_explicit_merges(tmp_path):
    model, tokenizer = tiny_llama(seed=1)
    write_gguf(model, tokenizer, tmp_path / "half.gguf", dtype="f16", merges=True)
    reader = gguf.GGUFReader(tmp_path / "half.gguf")
    assert "tokenizer.ggml.merges" in reader.fields
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="half.gguf", dtype=torch.float32)
    assert loaded.dtype == torch.float32
    ids = _input_ids(tokenizer)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=5e-2)
    assert AutoTokenizer.from_pretrained(tmp_path, gguf_file="half.gguf")(PROMPT).input_ids == ids[0].tolist()


def test_warns_on_what_the_loader_drops(tmp_path):
    model, tokenizer = tiny_gemma3()
    model.config.layer_types = ["sliding_attention", "full_attention"]
    with pytest.warns(UserWarning, match="layer_types"):
        write_gguf(model, tokenizer, tmp_path / "lossy.gguf")


def test_rejects_other_models():
    model, tokenizer = tiny_llama()
    model.config.model_type = "mistral"
    with pytest.raises(ValueError, match="model_type"):
        write_gguf(model, tokenizer, "unused.gguf")
