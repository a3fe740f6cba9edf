"""Attention heads by name: ``relspec heads``, ``relspec select --heads`` and the ``o_proj_in`` site.

A head resolves to its ``o_proj`` input channels (``via o_proj``) or to its q rows and its
key/value head's k/v rows (``via qkv``). On tiny random Llamas with grouped-query attention
(4 query heads, 2 key/value heads, head_dim 8): the ablation against references written here
(a hand pre-hook on ``o_proj``; the attention output minus the head's term, by hand), weights
against hooks, undo, the GQA refusals, one-line errors, the recorded heads and the ranking.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_llama
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from relspec_lmeval.cli import main as cli_main
from relspec_lmeval.errors import NeuronSetError, UsageError
from relspec_lmeval.identify.activations import ActivationRecorder
from relspec_lmeval.identify.heads import head_set, select_heads
from relspec_lmeval.lm.ablation import AblationSpec, ablated
from relspec_lmeval.lm.export import ExportConfig, export_checkpoint
from relspec_lmeval.sets.heads import check_heads, head_neurons, parse_heads, rank_heads
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.scores import Scores, load_scores, save_scores
from relspec_lmeval.sets.shape import ModelShape

GQA = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8)
IDS = torch.randint(3, 50, (2, 7), generator=torch.Generator().manual_seed(1))


def model_of(kv_heads: int = 2, layers: int = 2, seed: int = 0, bias: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=kv_heads, attention_bias=bias, attn_implementation="eager")
    return LlamaForCausalLM(config).eval()


def shape_of(model) -> ModelShape:
    return ModelShape.from_config(model.config, ("o_proj_in", "q_proj", "k_proj", "v_proj"))


def heads_set(model, names: str, via: str = "o_proj") -> NeuronSet:
    shape = shape_of(model)
    return NeuronSet(head_neurons(shape, parse_heads(names), via), {"model": shape.metadata()})


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def by_hand(model, zeroed: dict[int, list[int]], factor: float = 0.0) -> torch.Tensor:
    """The reference: o_proj's input channels of those heads multiplied by ``factor``, by a pre-hook written here."""
    handles = []
    for layer, heads in zeroed.items():
        def pre(module, args, heads=heads):
            x = args[0].clone()
            for h in heads:
                x[..., h * 8:(h + 1) * 8] *= factor
            return (x,)
        handles.append(model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(pre))
    try:
        return logits(model)
    finally:
        for handle in handles:
            handle.remove()


# ------------------------------------------------------------------------------ names → neurons


def test_heads_resolve_to_o_proj_input_channels_or_qkv_rows():
    shape = ModelShape(2, 32, 64, **GQA)
    assert parse_heads("1:3, 0:2") == ((0, 2), (1, 3))
    assert head_neurons(shape, [(0, 2), (1, 3)]) == {(0, "o_proj_in"): list(range(16, 24)), (1, "o_proj_in"): list(range(24, 32))}
    # query heads 2 and 3 read key/value head 1 (transformers' repeat_kv: query head h reads kv head h // 2)
    assert head_neurons(shape, [(0, 2), (0, 3)], "qkv") == {
        (0, "q_proj"): list(range(16, 32)), (0, "k_proj"): list(range(8, 16)), (0, "v_proj"): list(range(8, 16))}
    assert shape.with_sites(("o_proj_in",)).width("o_proj_in") == 32 and shape.width("o_proj") == 32


def test_bad_heads_are_one_clear_error():
    shape = ModelShape(2, 32, 64, **GQA)
    cases = [
        ([(0, 4)], "o_proj", "--heads: head 0:4 does not exist: the model has 4 attention heads per layer (0-3)"),
        ([(2, 0)], "o_proj", "--heads: head 2:0 is in layer 2, but the model has 2 decoder layers (0-1)"),
        ([(1, 3)], "qkv", "--heads with --via qkv: head 1:3 shares key/value head 1 with 1:2 (grouped-query attention: "
                          "4 query heads, 2 key/value heads), so its k/v rows cannot be switched off for it alone; "
                          "name 1:2,1:3, or use --via o_proj (its output alone)"),
    ]
    for heads, via, message in cases:
        with pytest.raises(UsageError) as caught:
            check_heads(shape, heads, via)
        assert str(caught.value) == message
    check_heads(shape, [(1, 2), (1, 3)], "qkv")  # the whole group: allowed
    check_heads(ModelShape(2, 32, 64, num_attention_heads=4, num_key_value_heads=4, head_dim=8), [(1, 3)], "qkv")  # no GQA
    for bad, message in [("1-3", "'1-3' is not LAYER:HEAD"), ("1:3,1:3", "names head 1:3 twice"), (" , ", "names no head")]:
        with pytest.raises(UsageError, match=message):
            parse_heads(bad)


# ------------------------------------------------------------------------------ ablation, exactly


@pytest.mark.parametrize(("mode", "factor"), [("zero", None), ("scale", 0.5)])
def test_a_head_switched_off_equals_the_hand_reference_by_weights_and_hooks(mode, factor):
    model = model_of()
    neuron_set = heads_set(model, "0:1,1:2,1:3")
    original = logits(model)
    want = by_hand(model, {0: [1], 1: [2, 3]}, 0.0 if factor is None else factor)
    weight = model.model.layers[1].self_attn.o_proj.weight.clone()
    for method in ("weights", "hooks"):
        with ablated(model, neuron_set, AblationSpec(mode, factor, method)) as ablation:
            assert ablation.methods == [method]
            if method == "weights":  # o_proj's columns of the heads, not its rows
                o_proj = model.model.layers[1].self_attn.o_proj.weight
                assert bool(o_proj[:, 16:32].eq(weight[:, 16:32] * (factor or 0)).all()) and torch.equal(o_proj[:, :16], weight[:, :16])
            got = logits(model)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert torch.equal(logits(model), original) and torch.equal(model.model.layers[1].self_attn.o_proj.weight, weight)
    assert not torch.allclose(want, original, atol=1e-4)


def test_the_attention_output_loses_exactly_the_heads_term():
    """One layer: o_proj's output with the head off is its plain output minus W[:, head] @ x[head], computed by hand."""
    model = model_of(layers=1)
    o_proj = model.model.layers[0].self_attn.o_proj
    seen = {}
    handle = o_proj.register_forward_hook(lambda m, args, out: seen.update(x=args[0].detach().clone(), y=out.detach().clone()))
    logits(model)
    plain_x, plain_y = seen["x"], seen["y"]
    for method in ("weights", "hooks"):
        with ablated(model, heads_set(model, "0:2"), AblationSpec(method=method)):
            logits(model)
        head = slice(16, 24)
        torch.testing.assert_close(seen["y"], plain_y - plain_x[..., head] @ o_proj.weight[:, head].T, rtol=1e-5, atol=1e-6)
        cut = plain_x.clone()
        cut[..., head] = 0
        assert torch.equal(seen["x"], plain_x if method == "weights" else cut)  # a hook: o_proj is given the input without the head
    handle.remove()


def test_o_proj_bias_stays_and_column_edits_stay_exact():
    model = model_of(bias=True)  # attention_bias: o_proj has a bias, which a column edit leaves where it belongs
    want = by_hand(model, {1: [0]})
    for method in ("weights", "hooks"):
        with ablated(model, heads_set(model, "1:0"), AblationSpec(method=method)) as ablation:
            assert ablation.methods == [method]
            torch.testing.assert_close(logits(model), want, rtol=1e-5, atol=1e-6)


def test_qkv_equals_o_proj_for_a_whole_group_and_without_gqa():
    """Zeroing v rows zeroes the head's output (attention weights sum to 1): with q and k it is the same head removed."""
    for kv_heads, names in ((2, "0:2,0:3,1:0,1:1"), (4, "1:3")):
        model = model_of(kv_heads)
        with ablated(model, heads_set(model, names, "o_proj")):
            out = logits(model)
        with ablated(model, heads_set(model, names, "qkv"), AblationSpec(method="weights")):
            qkv = logits(model)
        torch.testing.assert_close(qkv, out, rtol=1e-5, atol=1e-5)


def test_identification_records_the_heads_outputs():
    """--sites o_proj_in: each channel's mean over the prompt's tokens is o_proj's input, as a hand hook sees it."""
    model = model_of()
    layout = ModelShape.from_config(model.config, ("o_proj_in",))
    seen = {}
    handles = [layer.self_attn.o_proj.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0].detach().clone()))
               for i, layer in enumerate(model.model.layers)]
    mask = torch.ones_like(IDS)
    mask[1, 5:] = 0
    with ActivationRecorder(model, layout) as recorder, torch.no_grad():
        recorder.arm(mask)
        model(IDS, attention_mask=mask)
        values = recorder.check()
    for handle in handles:
        handle.remove()
    want = torch.cat([(seen[i] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True) for i in range(2)], dim=-1)
    torch.testing.assert_close(values.float(), want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ files and commands


def test_relspec_heads_writes_a_set_that_records_its_heads(tmp_path, capsys):
    build_tiny_llama(tmp_path / "m", kv_heads=2)
    assert cli_main(["heads", "--model", str(tmp_path / "m"), "--heads", "1:3,0:1", "--out", str(tmp_path / "h.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    made = NeuronSet.load(tmp_path / "h.safetensors")
    assert made.keys() == {(0, "o_proj_in", i) for i in range(8, 16)} | {(1, "o_proj_in", i) for i in range(24, 32)}
    assert made.metadata["heads"] == {"via": "o_proj", "names": ["0:1", "1:3"]} and made.metadata["method"] == "heads"
    assert made.metadata["model"]["sites"] == ["o_proj_in"] and made.metadata["model"]["num_key_value_heads"] == 2
    assert cli_main(["info", str(tmp_path / "h.safetensors")]) == 0
    assert "  heads      0:1, 1:3  (via o_proj: each head's o_proj input channels)" in capsys.readouterr().out.splitlines()
    summary = made.summary()
    assert summary["count_per_site"]["o_proj_in"] == 16
    # an existing file is kept unless --force; a split KV group is refused before anything is written
    assert cli_main(["heads", "--model", str(tmp_path / "m"), "--heads", "0:0", "--out", str(tmp_path / "h.safetensors")]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert cli_main(["heads", "--model", str(tmp_path / "m"), "--heads", "0:1", "--via", "qkv", "--out", str(tmp_path / "q.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "head 0:1 shares key/value head 0 with 0:0" in err and not (tmp_path / "q.safetensors").exists()
    whole = head_set(str(tmp_path / "m"), ["0:0", "0:1"], tmp_path / "q.safetensors", via="qkv")
    assert whole.count_per_site() == {"q_proj": 16, "k_proj": 8, "v_proj": 8, "gate_proj": 0, "up_proj": 0, "down_proj": 0}


def test_relspec_heads_bad_head_is_one_line(tmp_path, capsys):
    for heads, message in [("5:9", "relspec: error: --heads: head 5:9 does not exist: the model has 4 attention heads per layer (0-3)"),
                           ("7:0", "relspec: error: --heads: head 7:0 is in layer 7, but the model has 6 decoder layers (0-5)")]:
        assert cli_main(["heads", "--model", "relspec-tiny", "--heads", heads, "--out", str(tmp_path / "x.safetensors")]) == 2
        assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "x.safetensors").exists()


def test_export_of_a_heads_set_matches_relspec_hf(tmp_path):
    model = build_tiny_llama(tmp_path / "m", kv_heads=2)
    made = head_set(str(tmp_path / "m"), "1:2", tmp_path / "h.safetensors")
    with ablated(model, made):
        want = logits(model)
    export_checkpoint(ExportConfig(model=str(tmp_path / "m"), neuron_set=str(made.path), out=str(tmp_path / "x")))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "x").eval()
    torch.testing.assert_close(logits(exported), want, rtol=1e-5, atol=1e-6)


def test_select_heads_ranks_by_the_mean_of_a_heads_channels(tmp_path, capsys):
    shape = ModelShape(2, 32, 64, **GQA, sites=("o_proj_in",))
    ap = torch.full((shape.total,), 0.1)
    ap[8] = 0.99  # head 0:1 has the single best channel, but a low mean
    ap[32 + 16:32 + 24] = 0.6  # head 1:2: the best mean
    ap[24:32] = 0.5  # head 0:3: the second
    path = save_scores(Scores(shape, ap, torch.arange(float(shape.total)), {"relation": "demo", "method": "ap"}),
                       tmp_path / "sets" / "scores" / "demo.safetensors")
    assert [head for head, _ in rank_heads(load_scores(path), 3)] == [(1, 2), (0, 3), (0, 1)]
    [made] = select_heads([path], 2, command="test")
    assert made == tmp_path / "sets" / "heads2" / "demo.safetensors"
    chosen = NeuronSet.load(made)
    assert chosen.keys() == {(0, "o_proj_in", i) for i in range(24, 32)} | {(1, "o_proj_in", i) for i in range(16, 24)}
    heads = chosen.metadata["heads"]
    assert heads["names"] == ["0:3", "1:2"] and heads["scores"] == {"1:2": 0.6, "0:3": 0.5} and "mean ap" in heads["ranked_by"]
    assert chosen.metadata["relation"] == "demo" and chosen.metadata["k"] == 16
    assert chosen.means[(1, "o_proj_in")].tolist() == [float(32 + i) for i in range(16, 24)]  # mode=mean works
    assert cli_main(["select", str(path), "--heads", "1", "--out", str(tmp_path / "one")]) == 0
    assert NeuronSet.load(tmp_path / "one" / "demo.safetensors").metadata["heads"]["names"] == ["1:2"]
    capsys.readouterr()
    ffn = save_scores(Scores(ModelShape(2, 32, 64), torch.rand(2 * 160), torch.zeros(2 * 160), {"relation": "ffn"}),
                      tmp_path / "f" / "scores" / "ffn.safetensors")
    for args, message in [
        ([str(path), "--heads", "2", "--k", "4"], "give --k N (the top N neurons) or --heads N"),
        ([str(path), "--heads", "2", "--via", "qkv"], "--via qkv cannot rank single heads of a model with grouped-query attention"),
        ([str(path), "--heads", "9"], "--heads 9: choose 1 to 8"),
        ([str(ffn), "--heads", "2"], "has no o_proj_in scores (its sites: gate_proj, up_proj, down_proj)"),
        ([str(path), "--k", "4", "--via", "qkv"], "--via says how --heads resolves a head"),
    ]:
        assert cli_main(["select", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    mha = ModelShape(2, 32, 64, num_attention_heads=4, num_key_value_heads=4, head_dim=8, sites=("o_proj_in",))
    with pytest.raises(NeuronSetError, match="has no q_proj, k_proj, v_proj scores"):
        rank_heads(Scores(mha, torch.zeros(mha.total), torch.zeros(mha.total)), 1, "qkv")


def test_identify_select_and_relspec_hf_end_to_end(tmp_path, capsys):
    """relspec identify --sites o_proj_in on relspec-tiny, the top heads cut from its scores, applied by relspec-hf's code."""
    from relspec_lmeval.modelio.load import load_model

    out = tmp_path / "sets"
    assert cli_main(["identify", "--model", "relspec-tiny", "--data", "relation_recall_synthetic_det", "--relations", "person_father",
                     "--sites", "o_proj_in", "--k", "32", "--no-filter", "--quiet", "--out", str(out)]) == 0
    assert cli_main(["select", str(out / "scores" / "person_father.safetensors"), "--heads", "2"]) == 0
    capsys.readouterr()
    chosen = NeuronSet.load(out / "heads2" / "person_father.safetensors")
    assert len(chosen) == 64 and len(chosen.metadata["heads"]["names"]) == 2 and chosen.has_means
    assert chosen.metadata["parameters"]["sites"] == ["o_proj_in"] and chosen.metadata["parameters"]["heads"] == 2
    json.dumps(chosen.summary())  # relspec info --json
    model, _ = load_model("relspec-tiny", device="cpu", progress=False)
    ids = torch.tensor([[1, 5, 9, 14, 20]])
    handles = []  # the reference: each chosen channel of o_proj's input replaced by its mean, by a pre-hook written here
    for (layer, _), index in chosen.neurons.items():
        def pre(module, args, index=index, means=chosen.means[(layer, "o_proj_in")]):
            x = args[0].clone()
            x[..., index] = means
            return (x,)
        handles.append(model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(pre))
    with torch.no_grad():
        want = model(ids).logits
    for handle in handles:
        handle.remove()
    with torch.no_grad(), ablated(model, chosen, AblationSpec(mode="mean")) as ablation:
        assert ablation.methods == ["hooks"]
        torch.testing.assert_close(model(ids).logits, want, rtol=1e-5, atol=1e-6)


def test_phi3_fused_qkv_has_its_heads_via_o_proj_only():
    from transformers import Phi3Config, Phi3ForCausalLM

    from relspec_lmeval.errors import UnsupportedModelError
    from relspec_lmeval.modelio.sites import site_modules

    torch.manual_seed(0)
    model = Phi3ForCausalLM(Phi3Config(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                       attn_implementation="eager")).eval()
    want = by_hand(model, {1: [3]})
    for method in ("weights", "hooks"):
        with ablated(model, heads_set(model, "1:3"), AblationSpec(method=method)):
            torch.testing.assert_close(logits(model), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(UnsupportedModelError, match="a fused qkv_proj attention"):
        site_modules(model, head_neurons(shape_of(model), [(1, 2), (1, 3)], "qkv"))
