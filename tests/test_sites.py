"""Sites beyond the FFN (the paper's App. G): the attention's q_proj, k_proj, v_proj, o_proj.

The flat order, the recorded shape, validation, ablation (weight edits against hooks, undo,
biases), export and the command line's errors, on tiny random Llamas with grouped-query
attention (4 query heads, 2 key/value heads, so k/v_proj are half as wide as q_proj).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_llama
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from relspec_lmeval.cli import main as cli_main
from relspec_lmeval.errors import ModelError, NeuronSetError, UnsupportedModelError, UsageError
from relspec_lmeval.lm.ablation import AblationSpec, ablated
from relspec_lmeval.lm.export import ExportConfig, export_checkpoint
from relspec_lmeval.modelio.sites import site_modules
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.shape import DEFAULT_SITES, FFN_SITES, MOE_SITES, SITES, ModelShape, parse_sites

GQA = dict(num_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
NEURONS = {(0, "q_proj"): [0, 31], (0, "k_proj"): [15], (0, "v_proj"): [1, 2, 3], (1, "o_proj"): [7, 8], (1, "down_proj"): [4]}
IDS = torch.randint(3, 50, (2, 7), generator=torch.Generator().manual_seed(1))
DENSE = tuple(s for s in SITES if s not in MOE_SITES)  # every site of a dense model (test_moe.py: the experts')


def gqa_model(attention_bias: bool = False, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, attention_bias=attention_bias)
    return LlamaForCausalLM(config).eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


# ------------------------------------------------------------------------------ the shape


def test_default_flat_order_is_unchanged_and_attention_widths_follow_the_heads():
    ffn = ModelShape(2, 32, 64)
    assert ffn.sites == DEFAULT_SITES == FFN_SITES and ffn.per_layer == 2 * 64 + 32
    assert [ffn.offset(1, s) for s in FFN_SITES] == [160, 224, 288]  # what every earlier file used
    assert ffn.metadata() == {"num_layers": 2, "hidden_size": 32, "intermediate_size": 64}  # no new keys: same bytes
    every = ModelShape(**GQA, sites=tuple(reversed(DENSE)))  # given in any order, kept in forward order
    assert every.sites == DENSE
    assert [every.width(s) for s in DENSE] == [32, 16, 16, 32, 32, 64, 64, 32]  # o_proj_in: o_proj's input, heads × head_dim
    assert every.per_layer == 288 and every.total == 576 and every.offset(1, "gate_proj") == 288 + 128
    keys = [(layer, SITES.index(site), i) for layer, site, _, width in every.blocks() for i in range(width)]
    assert keys == sorted(keys) and len(keys) == every.total  # sorting by flat index is sorting by (layer, site, index)
    flat = torch.arange(every.total)
    assert torch.equal(every.join(every.split(flat)), flat)
    grouped = every.group(torch.tensor([33, 288 + 132]))
    assert {k: v.tolist() for k, v in grouped.items()} == {(0, "k_proj"): [1], (1, "gate_proj"): [4]}


def test_recorded_shape_round_trips_and_equality_is_the_flat_order():
    attention = ModelShape(**GQA, sites=("k_proj", "down_proj"))
    block = attention.metadata()
    assert block["sites"] == ["k_proj", "down_proj"] and block["num_key_value_heads"] == 2
    assert ModelShape.from_metadata(block, "f") == attention
    plain = ModelShape(2, 32, 64)  # a file without attention widths equals the model it was made for
    assert plain == ModelShape(**GQA) and plain != attention and attention.with_sites(FFN_SITES) == plain
    assert attention != ModelShape(**{**GQA, "num_key_value_heads": 4}, sites=("k_proj", "down_proj"))
    with pytest.raises(NeuronSetError, match="num_attention_heads is needed"):
        ModelShape.from_metadata({"num_layers": 2, "hidden_size": 32, "intermediate_size": 64, "sites": ["q_proj"]}, "f")
    with pytest.raises(NeuronSetError, match="model.sites must be"):
        ModelShape.from_metadata({"num_layers": 2, "hidden_size": 32, "intermediate_size": 64, "sites": ["attn"]}, "f")
    with pytest.raises(NeuronSetError, match="attention sites need"):
        ModelShape(2, 32, 64, sites=("o_proj",))


def test_from_config_reads_heads_and_head_dim(tiny_llama_dir):
    shape = ModelShape.from_config(AutoConfig.from_pretrained(tiny_llama_dir), ("q_proj",))
    assert (shape.num_attention_heads, shape.num_key_value_heads, shape.head_dim, shape.total) == (4, 4, 8, 64)


def test_parse_sites_names_what_exists():
    assert parse_sites("down_proj, q_proj") == ("q_proj", "down_proj") and parse_sites(None) == DEFAULT_SITES
    with pytest.raises(UsageError, match=r"unknown site 'qproj'.*Did you mean 'q_proj'"):
        parse_sites("qproj")
    with pytest.raises(UsageError, match="names a site twice"):
        parse_sites("k_proj,k_proj")
    with pytest.raises(UsageError, match="names no site"):
        parse_sites(" , ")


# ------------------------------------------------------------------------------ the set file


def test_set_file_stores_attention_sites_and_validates_them(tmp_path):
    s = NeuronSet(NEURONS, {"model": ModelShape(**GQA, sites=DENSE).metadata()})
    loaded = NeuronSet.load(s.save(tmp_path / "a.safetensors"))
    assert loaded.keys() == s.keys() and list(loaded.neurons) == sorted(NEURONS, key=lambda k: (k[0], SITES.index(k[1])))
    assert loaded.count_per_site() == {"q_proj": 2, "k_proj": 1, "v_proj": 3, "o_proj": 2, "gate_proj": 0, "up_proj": 0, "down_proj": 1}
    assert NeuronSet({(0, "up_proj"): [1]}).count_per_site() == {"gate_proj": 0, "up_proj": 1, "down_proj": 0}  # as before
    loaded.validate(ModelShape(**GQA))
    with pytest.raises(NeuronSetError, match=r"layer 0 k_proj index 16 out of range \(width 16\)"):
        NeuronSet({(0, "k_proj"): [16]}).validate(ModelShape(**GQA))  # 2 kv heads × 8: q_proj's 32 would have fit
    with pytest.raises(NeuronSetError, match="num_key_value_heads=2.*this model has num_key_value_heads=4"):
        loaded.validate(ModelShape(**{**GQA, "num_key_value_heads": 4}))
    with pytest.raises(NeuronSetError, match="layer 0 q_proj: this model shape records no attention widths"):
        NeuronSet({(0, "q_proj"): [0]}).validate(ModelShape(2, 32, 64))
    with pytest.raises(NeuronSetError, match="unknown site 'qkv_proj'"):
        NeuronSet({(0, "qkv_proj"): [0]})


# ------------------------------------------------------------------------------ ablation


@pytest.mark.parametrize(("mode", "factor"), [("zero", None), ("scale", 0.25)])
def test_attention_weight_edits_equal_hooks_and_undo_exactly(mode, factor):
    model = gqa_model()
    neuron_set = NeuronSet(NEURONS)
    original = logits(model)
    with ablated(model, neuron_set, AblationSpec(mode, factor, "weights")) as ablation:
        assert ablation.methods == ["weights"]
        by_weights = logits(model)
    assert torch.equal(logits(model), original)
    with ablated(model, neuron_set, AblationSpec(mode, factor, "hooks")) as ablation:
        by_hooks = logits(model)
    assert torch.equal(logits(model), original)
    assert not torch.allclose(by_weights, original, atol=1e-4)
    torch.testing.assert_close(by_weights, by_hooks, rtol=1e-5, atol=1e-5)


def test_zeroed_attention_channels_are_zero_and_others_untouched():
    model = gqa_model()
    modules = site_modules(model, NEURONS)
    seen: dict = {}

    def capture():
        handles = [m.register_forward_hook(lambda mod, a, out, key=key: seen.__setitem__(key, out.detach().clone()))
                   for key, m in modules.items()]
        logits(model)
        for h in handles:
            h.remove()
        return dict(seen)

    before = capture()
    with ablated(model, NeuronSet(NEURONS)):
        after = capture()
    for key, index in NEURONS.items():
        assert torch.all(after[key][..., index] == 0), key
        if key == (0, "q_proj"):  # layer 0's q_proj input does not depend on any ablation: the rest is exact
            keep = [i for i in range(32) if i not in index]
            assert torch.equal(after[key][..., keep], before[key][..., keep])


def test_attention_bias_uses_hooks_and_still_zeroes():
    model = gqa_model(attention_bias=True)
    with ablated(model, NeuronSet({(0, "q_proj"): [3]})) as ablation:
        assert ablation.methods == ["hooks"]  # a zeroed weight row would leave the bias
        out = []
        handle = site_modules(model, [(0, "q_proj")])[(0, "q_proj")].register_forward_hook(lambda m, a, o: out.append(o))
        logits(model)
        handle.remove()
    assert torch.all(out[0][..., 3] == 0)
    with pytest.raises(NeuronSetError, match="cannot be ablated by a weight edit"):
        with ablated(model, NeuronSet({(0, "q_proj"): [3]}), AblationSpec(method="weights")):
            pass


def test_fused_attention_is_refused_naming_it():
    model = gqa_model()

    class Fused(torch.nn.Module):
        qkv_proj = torch.nn.Linear(32, 64, bias=False)

    model.model.layers[1].self_attn = Fused()
    with pytest.raises(UnsupportedModelError, match=r"'llama' has a fused qkv_proj attention \(layer 1\)"):
        with ablated(model, NeuronSet({(1, "v_proj"): [0]})):
            pass
    with ablated(model, NeuronSet({(1, "up_proj"): [0]})):  # the FFN sites still work
        pass


def test_site_width_is_checked_against_the_config():
    model = gqa_model()
    model.model.layers[0].self_attn.k_proj = torch.nn.Linear(32, 24, bias=False)
    with pytest.raises(ModelError, match="layer 0 k_proj has 24 output channels, but the config gives 16"):
        site_modules(model, [(0, "k_proj")])


# ------------------------------------------------------------------------------ export and the command line


def test_export_writes_the_edited_attention_rows(tmp_path):
    build_tiny_llama(tmp_path / "m", kv_heads=2)
    config = AutoConfig.from_pretrained(tmp_path / "m")
    neuron_set = NeuronSet(NEURONS, {"model": ModelShape.from_config(config, DENSE).metadata()})
    path = neuron_set.save(tmp_path / "a.safetensors")
    target, count = export_checkpoint(ExportConfig(model=str(tmp_path / "m"), neuron_set=str(path), out=str(tmp_path / "x")))
    assert count == len(neuron_set) == 9
    original = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    exported = AutoModelForCausalLM.from_pretrained(target)
    for (layer, site), index in NEURONS.items():
        mine = site_modules(exported, [(layer, site)])[(layer, site)].weight
        theirs = site_modules(original, [(layer, site)])[(layer, site)].weight
        rest = [i for i in range(mine.shape[0]) if i not in index]
        assert torch.all(mine[index] == 0) and torch.equal(mine[rest], theirs[rest]), (layer, site)
    assert json.loads((target / "relspec_export.json").read_text())["sets"][0]["count"] == 9


def test_export_refuses_a_biased_site_before_the_weights_load(tmp_path, monkeypatch):
    build_tiny_llama(tmp_path / "m", attention_bias=True)
    path = NeuronSet({(0, "v_proj"): [1]}).save(tmp_path / "v.safetensors")

    def no_load(*args, **kwargs):
        raise AssertionError("the weights were loaded before the check")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_load)
    with pytest.raises(NeuronSetError, match="layer 0 v_proj has a bias"):
        export_checkpoint(ExportConfig(model=str(tmp_path / "m"), neuron_set=str(path), out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


def test_cli_sites_errors_are_one_line_before_the_model_loads(tiny_llama_dir, lre_env, tmp_path, capsys):
    base = ["identify", "--model", str(tiny_llama_dir), "--out", str(tmp_path / "o"), "--no-filter", "--quiet"]
    for extra, message in [
        (["--sites", "q_prj"], "--sites: unknown site 'q_prj'; sites are q_proj, k_proj, v_proj, o_proj_in, o_proj, gate_proj, up_proj, down_proj"),
        (["--sites", "k_proj", "--method", "lape"], "--method lape scores the activation act_fn(gate_proj)"),
        (["--sites", "k_proj", "--k", "99999"], "--k 99999 is larger than the 64 neurons of"),
    ]:
        assert cli_main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("relspec: error: ") and message in err, err
    assert not (tmp_path / "o").exists()


def test_selfcond_attention_rows_become_attention_sites(tmp_path):
    from test_convert import _selfcond

    build_tiny_llama(tmp_path / "m", kv_heads=2)
    rows = [("model.layers.0.self_attn.k_proj:0", 15, 0.9), ("model.layers.1.self_attn.o_proj:0", 31, 0.8),
            ("model.layers.1.mlp.up_proj:0", 2, 0.7), ("model.layers.0.self_attn.v_proj:0", 16, 0.1)]
    source = _selfcond(tmp_path / "e.csv", rows[:3])
    assert cli_main(["convert", "selfcond", source, "--model", str(tmp_path / "m"), "--all", "--out", str(tmp_path / "s")]) == 0
    found = NeuronSet.load(tmp_path / "s" / "person_father.safetensors")
    assert found.keys() == {(0, "k_proj", 15), (1, "o_proj", 31), (1, "up_proj", 2)}
    bad = _selfcond(tmp_path / "bad.csv", rows)  # v_proj 16 does not fit 2 kv heads × 8
    assert cli_main(["convert", "selfcond", bad, "--model", str(tmp_path / "m"), "--all", "--out", str(tmp_path / "t")]) == 2
    assert not (tmp_path / "t").exists()
