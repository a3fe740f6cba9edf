"""Ablation on tiny random Llamas: weight edits equal hooks, undo is exact, bad models fail."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from relspec_lmeval.errors import NeuronSetError, UnsupportedModelError
from relspec_lmeval.lm.ablation import AblationSpec, ablated, apply_ablation
from relspec_lmeval.modelio.sites import find_mlps
from relspec_lmeval.sets.neuron_set import NeuronSet


def tiny(mlp_bias: bool = False, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, mlp_bias=mlp_bias,
    )
    return LlamaForCausalLM(config).eval()


NEURONS = {(0, "gate_proj"): [1, 5, 9], (0, "up_proj"): [2], (1, "down_proj"): [0, 31], (1, "up_proj"): list(range(0, 64, 3))}
SET = NeuronSet(NEURONS, means={k: torch.linspace(-1, 1, len(v)) for k, v in NEURONS.items()})
IDS = torch.randint(3, 50, (2, 7), generator=torch.Generator().manual_seed(1))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def captured_outputs(model, layer: int, site: str) -> torch.Tensor:
    seen = []
    handle = getattr(find_mlps(model)[layer], site).register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    logits(model)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize(("mode", "factor"), [("zero", None), ("scale", 0.25), ("scale", 3.0)])
def test_weight_edits_equal_hooks_and_undo_exactly(mode, factor):
    model = tiny()
    original = logits(model)
    with ablated(model, SET, AblationSpec(mode, factor, "weights")) as ablation:
        assert ablation.methods == ["weights"]
        by_weights = logits(model)
    assert torch.equal(logits(model), original)  # restored bit for bit
    with ablated(model, SET, AblationSpec(mode, factor, "hooks")) as ablation:
        assert ablation.methods == ["hooks"]
        by_hooks = logits(model)
    assert torch.equal(logits(model), original)
    assert not torch.allclose(by_weights, original, atol=1e-4)  # the ablation does something
    torch.testing.assert_close(by_weights, by_hooks, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("mode", "factor"), [("zero", None), ("scale", 0.25), ("scale", 3.0)])
def test_weight_edits_stay_exact_in_bfloat16(mode, factor):
    """Issue 23: a bfloat16 model (``--dtype bfloat16`` on a CPU with native bf16) is edited and
    restored bit for bit; zeroing, and scaling by a power of two, equal the hooks exactly even in bf16."""
    model = tiny().to(torch.bfloat16)
    original = logits(model)
    with ablated(model, SET, AblationSpec(mode, factor, "weights")):
        by_weights = logits(model)
    assert torch.equal(logits(model), original)
    with ablated(model, SET, AblationSpec(mode, factor, "hooks")):
        by_hooks = logits(model)
    assert torch.equal(logits(model), original)
    assert not torch.equal(by_weights, original)
    if factor in (None, 0.25):
        assert torch.equal(by_weights, by_hooks)
    else:  # a row scaled by 3 is rounded to bf16 once, the output once: the same to bf16's precision
        torch.testing.assert_close(by_weights, by_hooks, rtol=2e-2, atol=2e-2)


def test_zeroed_channels_are_zero_and_others_untouched():
    model = tiny()
    before = captured_outputs(model, 0, "gate_proj")
    with ablated(model, SET):
        after = captured_outputs(model, 0, "gate_proj")
    idx = [1, 5, 9]
    assert torch.all(after[..., idx] == 0)
    keep = [i for i in range(64) if i not in idx]
    assert torch.equal(after[..., keep], before[..., keep])  # layer 0's input is unchanged


def test_mean_mode_sets_stored_means_via_hooks():
    model = tiny()
    with ablated(model, SET, AblationSpec("mean")) as ablation:
        assert ablation.methods == ["hooks"]  # a weight edit cannot add a constant
        out = captured_outputs(model, 1, "down_proj")
    assert torch.allclose(out[..., [0, 31]], SET.means[(1, "down_proj")].expand_as(out[..., [0, 31]]))
    no_means = NeuronSet({(0, "gate_proj"): [1]})
    with pytest.raises(NeuronSetError, match="mode=mean needs per-neuron means"):
        apply_ablation(model, no_means, AblationSpec("mean"))
    with pytest.raises(NeuronSetError, match="cannot be ablated by a weight edit"):
        apply_ablation(model, SET, AblationSpec("mean", method="weights"))


def test_mlp_bias_uses_hooks_and_refuses_weight_edits():
    model = tiny(mlp_bias=True)
    original = logits(model)
    with ablated(model, SET) as ablation:
        assert ablation.methods == ["hooks"]
        out = captured_outputs(model, 0, "gate_proj")
    assert torch.all(out[..., [1, 5, 9]] == 0)  # the bias did not survive
    assert torch.equal(logits(model), original)
    with pytest.raises(NeuronSetError, match="cannot be ablated by a weight edit"):
        apply_ablation(model, SET, AblationSpec(method="weights"))


def test_failed_apply_leaves_model_untouched():
    model = tiny()
    original = logits(model)
    bad = NeuronSet({(0, "gate_proj"): [1], (1, "up_proj"): [64]})  # second site out of range
    with pytest.raises(NeuronSetError, match="out of range"):
        apply_ablation(model, bad)
    assert torch.equal(logits(model), original)


@pytest.mark.parametrize(("mode", "factor", "message"), [("zeroo", None, "Did you mean 'zero'"), ("scale", None, "needs factor"), ("zero", 0.5, "only used with mode=scale")])
def test_bad_modes(mode, factor, message):
    with pytest.raises(NeuronSetError, match=message):
        AblationSpec(mode, factor)


def test_unsupported_architectures_name_the_model_type():
    from transformers import MixtralConfig, MixtralForCausalLM, Phi3Config, Phi3ForCausalLM, PhimoeConfig, PhimoeForCausalLM

    small = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4)
    assert len(find_mlps(Phi3ForCausalLM(Phi3Config(**small, pad_token_id=0)))) == 1  # fused, read in halves (test_fused_mlp.py)
    assert len(find_mlps(MixtralForCausalLM(MixtralConfig(**small, num_local_experts=2)))) == 1  # grouped experts (test_moe.py)
    with pytest.raises(UnsupportedModelError, match=r"'phimoe' has a mixture-of-experts MLP of a kind relspec has not read "
                                                      r"\(layer 0, PhimoeSparseMoeBlock\)"):  # its router is sparsemixer's
        find_mlps(PhimoeForCausalLM(PhimoeConfig(**small, num_local_experts=2)))
