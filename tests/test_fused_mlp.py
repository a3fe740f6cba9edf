"""A fused MLP (Phi-3's ``gate_up_proj``): its gate and up halves are the sites gate_proj and up_proj.

gate_proj neuron i is output channel i of ``gate_up_proj``, up_proj neuron i its channel
intermediate + i (transformers chunks the output gate first). Everything is checked against
a slow reference that does not use the package's site code: each MLP replaced by a loop over
tokens computing ``down_proj(up * act(gate))`` from the fused weight's two halves, with the
chosen channels edited by hand.
"""

from __future__ import annotations

import copy
import csv

import pytest
import torch
from conftest import build_tokenizer
from test_identify import config as identify_config
from test_identify import write_lre_folder
from test_positions import LOGLIKELIHOOD, intended, requests
from transformers import AutoModelForCausalLM, AutoTokenizer, GlmConfig, GlmForCausalLM, Phi3Config, Phi3ForCausalLM

from relspec_lmeval.cli import main as cli_main
from relspec_lmeval.errors import ModelError, NeuronSetError, UnsupportedModelError
from relspec_lmeval.identify.methods.lape import active_counts
from relspec_lmeval.identify.pipeline import identify
from relspec_lmeval.identify.pool import load_pool
from relspec_lmeval.lm.ablation import AblationSpec, ablated
from relspec_lmeval.lm.export import ExportConfig, export_checkpoint
from relspec_lmeval.lm.hflm import RelspecHFLM
from relspec_lmeval.modelio.sites import FusedHalf, find_mlps, model_shape, site_modules
from relspec_lmeval.sets.expertise import read_selfcond
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.shape import ModelShape

LAYERS, HIDDEN, INTER = 2, 16, 24
SMALL = dict(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=2, num_key_value_heads=2,
             max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=3)
# neurons in both halves of layer 0 (same channel 3 in each: distinct rows 3 and INTER + 3), and down_proj
NEURONS = {(0, "gate_proj"): [0, 3, 23], (0, "up_proj"): [3, 7], (1, "up_proj"): [0, 11, 23], (1, "gate_proj"): [5], (1, "down_proj"): [2]}
MEANS = {key: torch.linspace(-0.7, 0.6, len(v)) for key, v in NEURONS.items()}
FACTORS = {key: torch.linspace(0.2, 1.7, len(v)) for key, v in NEURONS.items()}
MODEL = {"num_layers": LAYERS, "hidden_size": HIDDEN, "intermediate_size": INTER}
IDS = torch.randint(4, 40, (2, 6), generator=torch.Generator().manual_seed(2))


def phi3(vocab: int = 64, seed: int = 0) -> Phi3ForCausalLM:
    torch.manual_seed(seed)
    return Phi3ForCausalLM(Phi3Config(vocab_size=vocab, **SMALL)).eval()


@pytest.fixture(scope="module")
def phi3_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-phi3")
    tokenizer = build_tokenizer(path)
    phi3(len(tokenizer)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def set_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sets") / "fused.safetensors"
    return NeuronSet(NEURONS, {"model": MODEL}, means=MEANS, factors=FACTORS).save(path)


# ---------------------------------------------------------------------------- the reference


def edited(value: torch.Tensor, key, n: int, mode: str, factor: float | None) -> torch.Tensor:
    """Neuron n of ``NEURONS[key]`` as ``mode`` sets it."""
    if mode == "zero":
        return torch.zeros_like(value)
    if mode == "scale":
        return value * factor
    if mode == "dampen":
        return value * FACTORS[key][n]
    return MEANS[key][n].to(value.dtype)


class Reference:
    """A copy of the model whose MLPs are a per-token loop over the fused weight's halves, edited at ``where``."""

    def __init__(self, model, mode: str = "zero", factor: float | None = None, neurons: dict | None = None) -> None:
        self.model = copy.deepcopy(model)
        self.where: set[int] | None = None  # None: every position
        neurons = NEURONS if neurons is None else neurons
        for layer, decoder in enumerate(self.model.model.layers):
            mlp = decoder.mlp
            mine = {site: idx for (li, site), idx in neurons.items() if li == layer}
            mlp.forward = lambda x, mlp=mlp, mine=mine, layer=layer: self._mlp(mlp, x, mine, layer, mode, factor)

    def _mlp(self, mlp, x, mine, layer, mode, factor):
        weight = mlp.gate_up_proj.weight
        gate_rows, up_rows = weight[:INTER], weight[INTER:]
        out = torch.empty((*x.shape[:-1], mlp.down_proj.out_features), dtype=x.dtype)
        for b in range(x.shape[0]):
            for t in range(x.shape[1]):
                gate, up = gate_rows @ x[b, t], up_rows @ x[b, t]
                hit = self.where is None or t in self.where
                for site, values in (("gate_proj", gate), ("up_proj", up)):
                    for n, i in enumerate(mine.get(site, []) if hit else []):
                        values[i] = edited(values[i], (layer, site), n, mode, factor)
                down = mlp.down_proj.weight @ (up * mlp.activation_fn(gate))
                for n, i in enumerate(mine.get("down_proj", []) if hit else []):
                    down[i] = edited(down[i], (layer, "down_proj"), n, mode, factor)
                out[b, t] = down
        return out

    def logits(self, ids: torch.Tensor, where=None) -> torch.Tensor:
        self.where = None if where is None else set(where)
        with torch.no_grad():
            return self.model(ids).logits


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


# ---------------------------------------------------------------------------- the sites


def test_the_halves_are_sites_of_their_own_width():
    model = phi3()
    shape = model_shape(model)
    assert shape == ModelShape(LAYERS, HIDDEN, INTER) and shape.width("gate_proj") == shape.width("up_proj") == INTER
    assert ModelShape.from_config(Phi3Config(vocab_size=64, **SMALL)).intermediate_size == INTER  # the half, not 2 × INTER
    found = site_modules(model, [(1, "gate_proj"), (1, "up_proj"), (1, "down_proj")])
    fused = model.model.layers[1].mlp.gate_up_proj
    assert found[(1, "gate_proj")] == FusedHalf(fused, 0, INTER) and found[(1, "up_proj")] == FusedHalf(fused, INTER, INTER)
    assert found[(1, "down_proj")] is model.model.layers[1].mlp.down_proj
    seen = {}
    for key, module in found.items():  # a hook on a half sees that half of the fused output
        module.register_forward_hook(lambda m, a, out, key=key: seen.__setitem__(key, out.detach().clone()))
    captured = {}
    fused.register_forward_hook(lambda m, a, out: captured.__setitem__("fused", out.detach().clone()))
    logits(model)
    assert torch.equal(seen[(1, "gate_proj")], captured["fused"][..., :INTER])
    assert torch.equal(seen[(1, "up_proj")], captured["fused"][..., INTER:])


def test_a_fused_weight_of_the_wrong_width_and_unread_fused_classes_are_refused():
    model = phi3()
    model.model.layers[1].mlp.gate_up_proj = torch.nn.Linear(HIDDEN, 2 * INTER + 2, bias=False)
    with pytest.raises(ModelError, match=rf"layer 1 gate_up_proj has {2 * INTER + 2} output channels, but the config gives {2 * INTER}"):
        site_modules(model, [(1, "up_proj")])
    other = phi3()
    mlp = other.model.layers[0].mlp
    mlp.__class__ = type("UpFirstMLP", (type(mlp),), {})  # e.g. Phi4MultimodalAudioMLP chunks up, then gate
    with pytest.raises(UnsupportedModelError, match=r"'phi3' has a fused gate_up_proj MLP whose gate and up halves relspec has not read "
                                                      r"\(layer 0, UpFirstMLP\)") as error:
        find_mlps(other)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------- ablation


@pytest.mark.parametrize(("mode", "factor", "method"), [
    ("zero", None, "weights"), ("zero", None, "hooks"), ("scale", 0.3, "weights"), ("scale", -2.0, "hooks"),
    ("mean", None, "hooks"), ("dampen", None, "weights"), ("dampen", None, "hooks"),
])
def test_ablation_matches_the_slow_reference(mode, factor, method):
    model = phi3()
    original = logits(model)
    neuron_set = NeuronSet(NEURONS, {"model": MODEL}, means=MEANS, factors=FACTORS)
    want = Reference(model, mode, factor).logits(IDS)
    fused = model.model.layers[0].mlp.gate_up_proj.weight
    before = fused.clone()
    with ablated(model, neuron_set, AblationSpec(mode=mode, factor=factor, method=method)) as handle:
        assert handle.methods == [method]
        got = logits(model)
        if method == "weights":  # rows i of the gate half and INTER + i of the up half, nothing else
            changed = sorted(int(r) for r in (fused != before).any(dim=1).nonzero())
            assert changed == sorted([*NEURONS[(0, "gate_proj")], *(INTER + i for i in NEURONS[(0, "up_proj")])])
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, original, atol=1e-3)
    assert torch.equal(logits(model), original) and torch.equal(fused, before)


def test_glm_shares_the_layout():
    torch.manual_seed(0)
    model = GlmForCausalLM(GlmConfig(vocab_size=64, head_dim=8, **SMALL)).eval()
    neurons = {(0, "gate_proj"): [1, 2], (1, "up_proj"): [4]}
    want = Reference(model, neurons=neurons).logits(IDS)
    for method in ("weights", "hooks"):
        with ablated(model, NeuronSet(neurons), AblationSpec(method=method)):
            assert torch.allclose(logits(model), want, atol=1e-5)


# ---------------------------------------------------------------------------- relspec-hf, export


def test_relspec_hf_edits_the_fused_rows_and_positions_hook_the_halves(phi3_dir, set_file):
    lm = RelspecHFLM(pretrained=str(phi3_dir), device="cpu", neuron_set=str(set_file))
    assert lm.relspec_info()["applied_with"] == ["weights"]
    plain = AutoModelForCausalLM.from_pretrained(phi3_dir).eval()
    assert torch.allclose(logits(lm.model), Reference(plain).logits(IDS), atol=1e-5)

    lm = RelspecHFLM(pretrained=str(phi3_dir), device="cpu", batch_size=3, neuron_set=str(set_file), positions="last", mode="scale",
                     factor=-4.0)
    assert lm.relspec_info()["applied_with"] == ["hooks"]
    got = [score for score, _ in lm.loglikelihood(requests("loglikelihood", LOGLIKELIHOOD[:5]))]
    want, untouched = [], []
    for ref, scores in ((Reference(plain, "scale", -4.0), want), (Reference(plain, neurons={}), untouched)):
        for context, continuation in LOGLIKELIHOOD[:5]:
            ctx, cont = lm._encode_pair(context, continuation)
            ids = (ctx + cont)[:-1]
            rows = torch.log_softmax(ref.logits(torch.tensor([ids]), intended("last", len(ctx), len(ids)))[0], dim=-1)[len(ctx) - 1 :]
            scores.append(float(rows[torch.arange(len(cont)), torch.tensor(cont)].sum()))
    assert got == pytest.approx(want, abs=1e-4) and max(abs(w - u) for w, u in zip(want, untouched)) > 1e-3


def test_export_round_trip(phi3_dir, set_file, tmp_path):
    target, count = export_checkpoint(ExportConfig(model=str(phi3_dir), neuron_set=str(set_file), out=str(tmp_path / "x"), mode="scale",
                                                   factor=0.5))
    assert count == sum(len(v) for v in NEURONS.values())
    exported = AutoModelForCausalLM.from_pretrained(target).eval()
    plain = AutoModelForCausalLM.from_pretrained(phi3_dir).eval()
    assert torch.allclose(logits(exported), Reference(plain, "scale", 0.5).logits(IDS), atol=1e-5)
    rows = torch.tensor([*NEURONS[(1, "gate_proj")], *(INTER + i for i in NEURONS[(1, "up_proj")])])
    new, old = exported.model.layers[1].mlp.gate_up_proj.weight, plain.model.layers[1].mlp.gate_up_proj.weight
    assert torch.equal(new[rows], old[rows] * 0.5)
    keep = torch.ones(2 * INTER, dtype=torch.bool)
    keep[rows] = False
    assert torch.equal(new[keep], old[keep])


def test_a_llama_set_is_refused_on_a_phi3_in_one_line(phi3_dir, tiny_llama_dir, tmp_path, capsys):
    llama_set = NeuronSet({(0, "up_proj"): [1]}, {"model": {"num_layers": 2, "hidden_size": 32, "intermediate_size": 64,
                                                          "name": str(tiny_llama_dir)}}).save(tmp_path / "llama.safetensors")
    with pytest.raises(NeuronSetError, match=r"was made for a model with hidden_size=32 .*this model has hidden_size=16") as error:
        RelspecHFLM(pretrained=str(phi3_dir), device="cpu", neuron_set=str(llama_set))
    assert "\n" not in str(error.value)
    assert cli_main(["export", "--model", str(phi3_dir), "--neuron-set", str(llama_set), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("relspec: error: ") and "hidden_size=32" in err and err.count("\n") == 1, err


# ---------------------------------------------------------------------------- identification


def test_identification_means_are_the_halves_own(phi3_dir, tmp_path):
    data = write_lre_folder(tmp_path / "lre")
    total = LAYERS * (2 * INTER + HIDDEN)
    identify(identify_config(phi3_dir, tmp_path / "out", data, relations="person_mother", dtype="float64", k=total))
    got = NeuronSet.load(tmp_path / "out" / "person_mother.safetensors")
    assert len(got) == total and got.has_means

    model = AutoModelForCausalLM.from_pretrained(phi3_dir, dtype=torch.float64).eval()
    tokenizer = AutoTokenizer.from_pretrained(phi3_dir)
    sums: dict[tuple[int, str], torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    for layer, decoder in enumerate(model.model.layers):  # the fused output itself, token means by hand
        decoder.mlp.gate_up_proj.register_forward_hook(lambda m, a, out, layer=layer: outputs.__setitem__(layer, out[0].mean(dim=0)))
    prompts = [d["prompt"] for docs in load_pool(str(data), None).docs.values() for d in docs]  # the means are over the whole pool
    for prompt in prompts:
        with torch.no_grad():
            model(tokenizer(prompt, return_tensors="pt")["input_ids"])
        for layer, fused in outputs.items():
            for site, half in (("gate_proj", fused[:INTER]), ("up_proj", fused[INTER:])):
                sums[(layer, site)] = sums.get((layer, site), 0) + half
    for key, total_values in sums.items():
        index = got.neurons[key]
        assert torch.allclose(got.means[key].double(), (total_values / len(prompts))[index], rtol=1e-4, atol=1e-6), key


def test_lape_counts_the_gate_half(phi3_dir):
    model = AutoModelForCausalLM.from_pretrained(phi3_dir).eval()
    encoded = [[1, 5, 9, 12], [1, 7, 20], [1, 30, 31, 32, 33]]
    counts, tokens = active_counts(model, encoded, [0, 1, 1], 2, model_shape(model), batch_size=2, pad_id=3, progress=False)
    assert tokens.tolist() == [4, 8]
    want = torch.zeros(2, LAYERS * INTER, dtype=torch.int64)
    outputs = {}
    for layer, decoder in enumerate(model.model.layers):
        decoder.mlp.gate_up_proj.register_forward_hook(lambda m, a, out, layer=layer: outputs.__setitem__(layer, out[0]))
    for ids, group in zip(encoded, [0, 1, 1]):
        with torch.no_grad():
            model(torch.tensor([ids]))
        for layer, fused in outputs.items():
            want[group, layer * INTER : (layer + 1) * INTER] += (torch.nn.functional.silu(fused[:, :INTER]) > 0).sum(dim=0)
    assert torch.equal(counts, want)


# ---------------------------------------------------------------------------- converters


def test_selfcond_rows_of_the_fused_module_split_into_the_halves(phi3_dir, tmp_path):
    path = tmp_path / "expertise.csv"
    rows = [("model.layers.0.mlp.gate_up_proj:0", 3, 0.9), ("model.layers.1.mlp.gate_up_proj:0", INTER + 5, 0.8),
            ("model.layers.1.mlp.down_proj:0", 2, 0.7), ("model.layers.0.input_layernorm:0", 1, 0.99)]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layer", "unit", "ap", "concept"])
        writer.writerows([(*row, "person_father") for row in rows])
    assert cli_main(["convert", "selfcond", str(path), "--model", str(phi3_dir), "--all", "--out", str(tmp_path / "sets")]) == 0
    found = NeuronSet.load(tmp_path / "sets" / "person_father.safetensors")
    assert found.keys() == {(0, "gate_proj", 3), (1, "up_proj", 5), (1, "down_proj", 2)}
    with open(path, "a", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerow(["model.layers.0.mlp.gate_up_proj:0", 2 * INTER, 0.5, "person_father"])
    with pytest.raises(NeuronSetError, match=rf"line 6: layer 0 gate_up_proj unit {2 * INTER} out of range \(gate_up_proj has {2 * INTER}"):
        read_selfcond(path, ModelShape(LAYERS, HIDDEN, INTER), take_all=True)
