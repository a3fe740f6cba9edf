"""Values that would silently break the model or the record: overflowing and boolean factors,
non-canonical tensor names, the count of overlapping sets, and comparing sets by content."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from relspec_lmeval.cli import main
from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.lm.ablation import AblationSpec, apply_ablation
from relspec_lmeval.lm.hflm import RelspecHFLM
from relspec_lmeval.lm.overflow import check_factor_fits, planned_dtype
from relspec_lmeval.sets.fileformat import FORMAT_NAME, FORMAT_VERSION, write_relspec_file
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.resolve import resolve_set_path

SHAPE = {"num_layers": 2, "hidden_size": 32, "intermediate_size": 64}


def _model(dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=32, initializer_range=0.1)
    return LlamaForCausalLM(config).eval().to(dtype)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, state) -> bool:
    return all(torch.equal(state[k], v) for k, v in model.state_dict().items())


SET = NeuronSet({(0, "up_proj"): [1, 2], (1, "gate_proj"): [0, 5]}, {"model": SHAPE})


# ----------------------------------------------------------------------------- factor values


@pytest.mark.parametrize("factor", [True, False, "true", "False", "half", float("nan"), float("inf"), [1.0]])
def test_factor_must_be_a_real_number(factor):
    with pytest.raises(NeuronSetError, match="factor must be"):
        AblationSpec(mode="scale", factor=factor)


def test_factor_numbers_and_their_text_are_accepted():
    assert AblationSpec(mode="scale", factor="0.5").factor == 0.5 and AblationSpec(mode="scale", factor=2).factor == 2.0


def test_planned_dtype():
    bf16 = LlamaConfig(dtype="bfloat16")
    assert planned_dtype("auto", bf16) is torch.bfloat16 and planned_dtype(None, bf16) is torch.bfloat16
    assert planned_dtype("fp16", bf16) is torch.float16 and planned_dtype(torch.float32, bf16) is torch.float32
    assert planned_dtype("auto", LlamaConfig()) is torch.float32  # the config records none: transformers' float32
    assert planned_dtype("no-such-dtype") is None


@pytest.mark.parametrize(("factor", "dtype", "name"), [(1e39, torch.float32, "float32"), (7e4, torch.float16, "float16"),
                                                       (-1e39, torch.bfloat16, "bfloat16")])
def test_factor_beyond_the_dtype_is_refused_before_loading(factor, dtype, name):
    with pytest.raises(NeuronSetError, match=re.escape(f"factor={factor:g} is not a finite number in {name}")):
        check_factor_fits(AblationSpec(mode="scale", factor=factor), [SET], dtype)
    check_factor_fits(AblationSpec(mode="scale", factor=100.0), [SET], dtype)


def test_dampen_factors_beyond_the_dtype_are_refused():
    damp = NeuronSet({(0, "up_proj"): [1, 2]}, {"model": SHAPE}, factors={(0, "up_proj"): [0.5, 7e4]})
    with pytest.raises(NeuronSetError, match="layer 0 up_proj dampen factor=70000 is not a finite number in float16"):
        check_factor_fits(AblationSpec(mode="dampen"), [damp], torch.float16)
    check_factor_fits(AblationSpec(mode="dampen"), [damp], torch.float32)
    model = _model(torch.float16)
    state = _state(model)
    with pytest.raises(NeuronSetError, match="layer 0 up_proj dampen factor=70000 is not a finite number in float16"):
        apply_ablation(model, damp, AblationSpec(mode="dampen"))
    assert _same(model, state)


@pytest.mark.parametrize("method", ["auto", "hooks"])
@pytest.mark.parametrize(("factor", "message"), [
    (1e39, r"layer 0 up_proj factor=1e\+39 is not a finite number in float32"),
    (3e38, r"layer 0 up_proj: mode=scale would overflow float32: a scaled channel's output reaches"),
])
def test_overflowing_factor_is_refused_and_the_model_left_untouched(factor, message, method):
    model = _model()
    state = _state(model)
    with pytest.raises(NeuronSetError, match=message):
        apply_ablation(model, SET, AblationSpec(mode="scale", factor=factor, method=method))
    assert _same(model, state) and not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("method", ["auto", "hooks"])
def test_an_overflow_downstream_is_caught_by_the_probe(method):
    """relspec-tiny's weights scaled by 1e37 stay finite, but its residual stream does not."""
    from transformers import AutoModelForCausalLM

    from relspec_lmeval.modelio.load import resolve_pretrained

    model = AutoModelForCausalLM.from_pretrained(resolve_pretrained("relspec-tiny", None)).eval()
    state = _state(model)
    tiny = NeuronSet.load(resolve_set_path("relspec-tiny/person_father"))
    with pytest.raises(NeuronSetError, match=r"mode=scale factor=1e\+37 makes the model's outputs inf or NaN"):
        apply_ablation(model, tiny, AblationSpec(mode="scale", factor=1e37, method=method))
    assert _same(model, state) and not any(m._forward_hooks for m in model.modules())
    apply_ablation(model, tiny, AblationSpec(mode="scale", factor=1e6, method=method)).remove()


def test_a_later_site_that_overflows_stops_every_edit():
    model = _model()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1e-30)  # layer 0 scales fine, layer 1 overflows
    state = _state(model)
    with pytest.raises(NeuronSetError, match="layer 1 gate_proj: mode=scale would overflow float32"):
        apply_ablation(model, SET, AblationSpec(mode="scale", factor=3e38))
    assert _same(model, state)


def test_float16_factor_that_the_dtype_cannot_hold():
    model = _model(torch.float16)
    with pytest.raises(NeuronSetError, match="factor=70000 is not a finite number in float16"):
        apply_ablation(model, SET, AblationSpec(mode="scale", factor=7e4, method="hooks"))


def test_reasonable_factors_still_apply():
    model = _model()
    ids = torch.tensor([[1, 5, 9, 12]])
    for factor in (-3.0, 0.5, 2.0, 1e6):
        ablation = apply_ablation(model, SET, AblationSpec(mode="scale", factor=factor))
        with torch.no_grad():
            assert torch.isfinite(model(ids).logits).all()
        ablation.remove()


def test_relspec_hf_refuses_true_as_factor(tiny_llama_dir):
    with pytest.raises(NeuronSetError, match="factor must be a number"):
        RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", mode="scale", factor=True)


def test_relspec_hf_refuses_an_overflowing_factor(tiny_llama_dir, tmp_path):
    path = SET.save(tmp_path / "s.safetensors")
    with pytest.raises(NeuronSetError, match="is not a finite number in float32"):
        RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=str(path), mode="scale", factor=1e39)


def test_relspec_hf_refuses_a_factor_the_dtype_cannot_hold_before_loading(tiny_llama_dir, tmp_path, monkeypatch):
    import transformers

    def no_load(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    path = SET.save(tmp_path / "s.safetensors")
    with pytest.raises(NeuronSetError, match="not a finite number in float16"):
        RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=str(path), mode="scale", factor=7e4, dtype="float16")


def test_export_refuses_a_factor_the_dtype_cannot_hold_before_loading(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    import transformers

    def no_load(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    path = SET.save(tmp_path / "s.safetensors")
    for extra in (["--factor", "1e39"], ["--factor", "7e4", "--dtype", "float16"]):
        argv = ["export", "--model", str(tiny_llama_dir), "--neuron-set", str(path), "--out", str(tmp_path / "out"), "--mode", "scale"]
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is not a finite number in float" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("factor", "message"), [("3e38", "layer 0 gate_proj: mode=scale would overflow float32"),
                                                  ("1e37", "makes the model's outputs inf or NaN")])
def test_export_refuses_an_edit_that_overflows_before_writing(factor, message, tmp_path, capsys):
    argv = ["export", "--model", "relspec-tiny", "--neuron-set", "relspec-tiny/person_father", "--out", str(tmp_path / "out"),
            "--mode", "scale", "--factor", factor]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------- the record of overlapping sets


def test_overlapping_sets_record_what_is_applied(tiny_llama_dir, tmp_path):
    a = NeuronSet({(0, "up_proj"): [1, 2, 3]}, {"model": SHAPE}).save(tmp_path / "a.safetensors")
    b = NeuronSet({(0, "up_proj"): [2, 3, 4], (1, "gate_proj"): [0]}, {"model": SHAPE}).save(tmp_path / "b.safetensors")
    lm = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=f"{a}+{b}")
    info = lm.relspec_info()
    assert [s["count"] for s in info["sets"]] == [3, 4]
    assert info["count"] == 5 and info["overlap"] == 2
    assert info["count_per_site"] == {"gate_proj": 1, "up_proj": 4, "down_proj": 0}
    union = NeuronSet.load(a).union(NeuronSet.load(b))
    assert info["content_sha256"] == union.content_sha256()
    assert [s["content_sha256"] for s in info["sets"]] == [NeuronSet.load(p).content_sha256() for p in (a, b)]
    lm.set_neuron_sets(f"{a}+{a}")
    info = lm.relspec_info()
    assert info["count"] == 3 and info["overlap"] == 3 and info["content_sha256"] == NeuronSet.load(a).content_sha256()
    lm.set_neuron_sets(None)
    info = lm.relspec_info()
    assert info["count"] == 0 and info["count_per_site"] == {} and info["content_sha256"] is None and info["overlap"] == 0
    json.dumps(info)


# -------------------------------------------------------------------- canonical tensor names


def _raw_set(path, names: list[str]):
    tensors = {name: torch.tensor([i + 1], dtype=torch.int64) for i, name in enumerate(names)}
    return write_relspec_file(tensors, path, FORMAT_NAME, FORMAT_VERSION, {"model": SHAPE})


@pytest.mark.parametrize("name", [
    "layers.00.up_proj.indices", "layers.01.up_proj.indices", "layers.+0.up_proj.indices", "layers.-1.up_proj.indices",
    "layers. 1.up_proj.indices", "layers.1 .up_proj.indices", "layers.\u0661.up_proj.indices", "layers.\uff11.up_proj.indices",
    "layers.1.up_proj.indices\n", "layers.1.up_proj.weights", "layers.1.mlp.up_proj.indices", "layers.1.UP_PROJ.indices",
])
def test_non_canonical_tensor_names_are_refused(name, tmp_path):
    path = _raw_set(tmp_path / "s.safetensors", ["layers.0.gate_proj.indices", name])
    with pytest.raises(NeuronSetError, match="unexpected tensor") as caught:
        NeuronSet.load(path)
    assert repr(name) in str(caught.value)


def test_two_spellings_of_one_site_are_not_merged(tmp_path):
    path = _raw_set(tmp_path / "s.safetensors", ["layers.0.up_proj.indices", "layers.00.up_proj.indices"])
    with pytest.raises(NeuronSetError, match="'layers.00.up_proj.indices'"):
        NeuronSet.load(path)


def test_canonical_names_load(tmp_path):
    path = _raw_set(tmp_path / "s.safetensors", ["layers.0.up_proj.indices", "layers.1.down_proj.indices"])
    assert NeuronSet.load(path).keys() == {(0, "up_proj", 1), (1, "down_proj", 2)}


# ------------------------------------------------------------------ comparing sets by content


def _variant(tmp_path, name, **changes) -> str:
    """The same neurons with other metadata, scores and means (another run's file)."""
    neurons = changes.pop("neurons", {(0, "up_proj"): [1, 2], (1, "gate_proj"): [0]})
    meta = {"model": changes.pop("model", SHAPE), "command": changes.pop("command", f"relspec identify --out {name}"),
            "parameters": {"batch_size": changes.pop("batch_size", 8)}}
    scores = {key: torch.rand(len(v)) for key, v in neurons.items()}
    means = {key: torch.rand(len(v)) for key, v in neurons.items()}
    return str(NeuronSet(neurons, meta, scores=scores, means=means, **changes).save(tmp_path / f"{name}.safetensors"))


def test_content_hash_ignores_metadata_scores_and_means(tmp_path):
    a, b = NeuronSet.load(_variant(tmp_path, "a")), NeuronSet.load(_variant(tmp_path, "b", batch_size=32))
    assert a.sha256() != b.sha256() and a.content_sha256() == b.content_sha256()
    other_index = NeuronSet.load(_variant(tmp_path, "c", neurons={(0, "up_proj"): [1, 3], (1, "gate_proj"): [0]}))
    other_shape = NeuronSet.load(_variant(tmp_path, "d", model={**SHAPE, "intermediate_size": 128}))
    factored = NeuronSet.load(_variant(tmp_path, "e", factors={(0, "up_proj"): [0.5, 0.5], (1, "gate_proj"): [0.1]}))
    hashes = {s.content_sha256() for s in (a, other_index, other_shape, factored)}
    assert len(hashes) == 4
    assert a.summary()["content_sha256"] == a.content_sha256()


def test_info_compare_same_content(tmp_path, capsys):
    a, b = _variant(tmp_path, "a"), _variant(tmp_path, "b", batch_size=32)
    assert main(["info", "--compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "content    same" in out and "2 only" not in out and "3 in both, 0 only in A, 0 only in B" in out
    assert "file       differs" in out and "metadata   differs in command, parameters.batch_size" in out
    assert "scores     largest difference" in out and out.rstrip().endswith("same neurons")


def test_info_compare_different_content(tmp_path, capsys):
    a = _variant(tmp_path, "a")
    b = _variant(tmp_path, "b", neurons={(0, "up_proj"): [2, 7], (1, "gate_proj"): [0], (1, "down_proj"): [4]})
    assert main(["info", "--compare", a, b]) == 1
    out = capsys.readouterr().out
    assert "content    differs" in out and "3 and 4: 2 in both, 1 only in A, 2 only in B" in out
    assert "down_proj 0/1" in out
    assert main(["info", "--compare", "--json", a, b]) == 1
    diff = json.loads(capsys.readouterr().out)
    assert diff["same_content"] is False and diff["neurons"] == {"a": 3, "b": 4, "both": 2, "only_a": 1, "only_b": 2}
    damp = _variant(tmp_path, "f", factors={(0, "up_proj"): [0.5, 0.5], (1, "gate_proj"): [0.1]})
    assert main(["info", "--compare", a, damp]) == 1
    assert "factors    only B has them" in capsys.readouterr().out


def test_info_compare_errors_exit_2(tmp_path, capsys):
    a = _variant(tmp_path, "a")
    assert main(["info", "--compare", a]) == 2
    assert "--compare takes two neuron-set files, got 1" in capsys.readouterr().err
    assert main(["info", "--compare", a, str(tmp_path / "missing.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err


def test_info_shows_both_hashes(tmp_path, capsys):
    a = _variant(tmp_path, "a")
    assert main(["info", a]) == 0
    out = capsys.readouterr().out
    assert f"content    {NeuronSet.load(a).content_sha256()}" in out and "(the file's bytes)" in out
