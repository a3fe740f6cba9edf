"""Mixture-of-experts MLPs (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE): the grouped expert tensors as sites.

``experts.gate_proj`` neuron ``e * I + c`` is gate channel c of expert e (row c of
``gate_up_proj[e]``), ``experts.up_proj``'s the row I + c, ``experts.down_proj`` neuron ``e * H + c``
row c of ``down_proj[e]``; Qwen2-MoE's shared expert has the plain sites ``shared_expert.*``.
Everything is checked against a slow reference that does not use the package's site code: each
MoE block replaced by a loop over tokens that runs the router (softmax, top-k, the model's
normalisation) and the chosen experts by hand from the weights, with the chosen channels edited.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers as tf
from conftest import build_tokenizer
from test_identify import config as identify_config
from test_identify import write_lre_folder
from test_positions import LOGLIKELIHOOD, intended, requests
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from relspec_lmeval.cli import main as cli_main
from relspec_lmeval.errors import DataError, ModelError, NeuronSetError, UnsupportedModelError
from relspec_lmeval.identify.pipeline import identify
from relspec_lmeval.identify.pool import load_pool
from relspec_lmeval.lm.ablation import AblationSpec, ablated
from relspec_lmeval.lm.export import ExportConfig, export_checkpoint
from relspec_lmeval.lm.hflm import RelspecHFLM
from relspec_lmeval.modelio.moe import ExpertSite, FlatSite
from relspec_lmeval.modelio.sites import model_shape, site_modules
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.shape import ModelShape

LAYERS, HIDDEN = 2, 16
COMMON = dict(vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, num_key_value_heads=2,
              max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=3, num_experts_per_tok=2, initializer_range=0.1)
# other widths per family, so that a set of one is refused on another
KINDS = {
    "mixtral": (tf.MixtralForCausalLM, lambda vocab: tf.MixtralConfig(**{**COMMON, "vocab_size": vocab}, intermediate_size=12,
                                                                 num_local_experts=4)),
    "qwen2_moe": (tf.Qwen2MoeForCausalLM, lambda vocab: tf.Qwen2MoeConfig(**{**COMMON, "vocab_size": vocab}, intermediate_size=20,
                                                                     moe_intermediate_size=8, shared_expert_intermediate_size=20,
                                                                     num_experts=6, norm_topk_prob=False)),
    "qwen3_moe": (tf.Qwen3MoeForCausalLM, lambda vocab: tf.Qwen3MoeConfig(**{**COMMON, "vocab_size": vocab}, intermediate_size=20,
                                                                     moe_intermediate_size=12, num_experts=6, head_dim=8,
                                                                     norm_topk_prob=True)),
    "olmoe": (tf.OlmoeForCausalLM, lambda vocab: tf.OlmoeConfig(**{**COMMON, "vocab_size": vocab}, intermediate_size=12, num_experts=8,
                                                           norm_topk_prob=False)),
}
IDS = torch.randint(4, 40, (2, 6), generator=torch.Generator().manual_seed(2))


def build(kind: str, vocab: int = 64, seed: int = 0):
    cls, make = KINDS[kind]
    torch.manual_seed(seed)
    model = cls(make(vocab)).eval()
    with torch.no_grad():  # routers that really choose (Qwen's and OLMoE's start at zero)
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0.0, 0.5)
    return model


def widths(model) -> tuple[int, int]:
    """(experts, an expert's intermediate width)."""
    experts = model.model.layers[0].mlp.experts
    return experts.num_experts, experts.intermediate_dim


def neurons_of(model) -> dict:
    """Neurons in every expert site of both layers, in several experts (the last channel of the last expert too)."""
    e, i = widths(model)
    last_gate, last_down = e * i - 1, e * HIDDEN - 1
    found = {(0, "experts.gate_proj"): [0, i + 3, last_gate], (0, "experts.up_proj"): [i + 3, 2 * i + 1],
             (1, "experts.up_proj"): [5, last_gate], (1, "experts.gate_proj"): [i + 1], (1, "experts.down_proj"): [3, HIDDEN + 7, last_down]}
    if hasattr(model.model.layers[0].mlp, "shared_expert"):
        found.update({(0, "shared_expert.up_proj"): [2, 19], (1, "shared_expert.gate_proj"): [0], (1, "shared_expert.down_proj"): [7]})
    return found


def neuron_set(model) -> NeuronSet:
    neurons = neurons_of(model)
    return NeuronSet(neurons, {"model": model_shape(model).metadata()}, means={k: torch.linspace(-0.7, 0.6, len(v)) for k, v in neurons.items()},
                     factors={k: torch.linspace(0.2, 1.7, len(v)) for k, v in neurons.items()})


# ---------------------------------------------------------------------------- the reference


class Reference:
    """A copy of the model whose MoE blocks are a per-token loop over the router and experts, edited at ``where``."""

    def __init__(self, model, chosen: NeuronSet | None = None, mode: str = "zero", factor: float | None = None) -> None:
        self.model = copy.deepcopy(model)
        self.where: set[int] | None = None  # None: every position
        self.chosen = chosen or NeuronSet({})
        self.mode, self.factor = mode, factor
        for layer, decoder in enumerate(self.model.model.layers):
            decoder.mlp.forward = lambda x, block=decoder.mlp, layer=layer: self._block(block, x, layer)

    def _edit(self, values: torch.Tensor, layer: int, site: str, offset: int, hit: bool) -> torch.Tensor:
        """Channels of ``values`` that are neurons ``offset + channel`` of ``site``, edited."""
        key = (layer, site)
        if not hit or key not in self.chosen.neurons:
            return values
        values = values.clone()
        for n, index in enumerate(self.chosen.neurons[key].tolist()):
            c = index - offset
            if 0 <= c < values.shape[0]:
                if self.mode == "zero":
                    values[c] = 0.0
                elif self.mode == "scale":
                    values[c] = values[c] * self.factor
                elif self.mode == "dampen":
                    values[c] = values[c] * self.chosen.factors[key][n]
                else:
                    values[c] = self.chosen.means[key][n]
        return values

    def _block(self, block, x: torch.Tensor, layer: int) -> torch.Tensor:
        experts, config = block.experts, self.model.config
        inner = experts.intermediate_dim
        normalise = getattr(config, "norm_topk_prob", True)  # Mixtral always renormalises the top k
        out = torch.empty_like(x)
        for b in range(x.shape[0]):
            for t in range(x.shape[1]):
                h, hit = x[b, t], self.where is None or t in self.where
                probs = torch.softmax((block.gate.weight @ h).float(), dim=-1)
                top = torch.topk(probs, config.num_experts_per_tok)
                weights = top.values / top.values.sum() if normalise else top.values
                y = torch.zeros_like(h)
                for weight, e in zip(weights.to(h.dtype), top.indices.tolist()):
                    rows = experts.gate_up_proj[e] @ h
                    gate = self._edit(rows[:inner], layer, "experts.gate_proj", e * inner, hit)
                    up = self._edit(rows[inner:], layer, "experts.up_proj", e * inner, hit)
                    down = self._edit(experts.down_proj[e] @ (experts.act_fn(gate) * up), layer, "experts.down_proj", e * HIDDEN, hit)
                    y = y + weight * down
                if hasattr(block, "shared_expert"):
                    shared = block.shared_expert
                    gate = self._edit(shared.gate_proj.weight @ h, layer, "shared_expert.gate_proj", 0, hit)
                    up = self._edit(shared.up_proj.weight @ h, layer, "shared_expert.up_proj", 0, hit)
                    down = self._edit(shared.down_proj.weight @ (shared.act_fn(gate) * up), layer, "shared_expert.down_proj", 0, hit)
                    y = y + torch.sigmoid(block.shared_expert_gate.weight @ h) * down
                out[b, t] = y
        return out

    def logits(self, ids: torch.Tensor, where=None) -> torch.Tensor:
        self.where = None if where is None else set(where)
        with torch.no_grad():
            return self.model(ids).logits


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


# ---------------------------------------------------------------------------- sites and shape


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_reference_is_the_model(kind):
    model = build(kind)
    assert torch.allclose(Reference(model).logits(IDS), logits(model), atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_sites_are_the_grouped_tensors_and_the_shared_expert(kind):
    model = build(kind)
    experts, inner = widths(model)
    shape = model_shape(model)
    shared = ("shared_expert.gate_proj", "shared_expert.up_proj", "shared_expert.down_proj") if kind == "qwen2_moe" else ()
    assert shape.sites == (*shared, "experts.gate_proj", "experts.up_proj", "experts.down_proj")
    assert (shape.num_experts, shape.expert_intermediate_size) == (experts, inner)
    assert shape.width("experts.up_proj") == experts * inner and shape.width("experts.down_proj") == experts * HIDDEN
    assert shape.total == LAYERS * (2 * experts * inner + experts * HIDDEN + (2 * 20 + HIDDEN if shared else 0))
    found = site_modules(model, [(1, s) for s in shape.sites])
    block = model.model.layers[1].mlp
    up = found[(1, "experts.up_proj")]
    assert isinstance(up, ExpertSite) and up.proj.experts is block.experts and (up.start, up.width) == (inner, inner)
    assert found[(1, "experts.down_proj")].proj.name == "down_proj"
    if shared:
        assert isinstance(found[(1, "shared_expert.up_proj")], FlatSite) and found[(1, "shared_expert.up_proj")].linear is block.shared_expert.up_proj
    # the set file records the expert widths, and reads them back
    assert ModelShape.from_metadata(shape.metadata(), "test") == shape


def test_dense_sites_on_a_moe_model_and_moe_sites_on_a_dense_one_are_refused_in_one_line():
    model = build("mixtral")
    with pytest.raises(UnsupportedModelError, match=r"'mixtral' has a mixture-of-experts MLP \(layer 0, MixtralSparseMoeBlock\) "
                                                      r"without up_proj; its FFN sites are experts.gate_proj, experts.up_proj, "
                                                      r"experts.down_proj") as error:
        site_modules(model, [(0, "up_proj")])
    assert "\n" not in str(error.value)
    with pytest.raises(UnsupportedModelError, match=r"without shared_expert.up_proj"):
        site_modules(model, [(0, "shared_expert.up_proj")])
    with pytest.raises(UnsupportedModelError, match=r"'mixtral' is a mixture-of-experts model without gate_proj"):
        ModelShape.from_config(model.config, ("gate_proj", "down_proj"))
    llama = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=12, num_hidden_layers=2, num_attention_heads=2)
    with pytest.raises(UnsupportedModelError, match=r"'llama' is not a mixture-of-experts model: it has no experts.up_proj"):
        ModelShape.from_config(llama, ("experts.up_proj",))
    with pytest.raises(UnsupportedModelError, match=r"mixes dense and mixture-of-experts layers \(mlp_only_layers=\[1\]"):
        ModelShape.from_config(tf.Qwen2MoeConfig(**COMMON, num_experts=4, mlp_only_layers=[1]))
    broken = build("olmoe")
    broken.model.layers[1].mlp.experts.down_proj = torch.nn.Parameter(torch.zeros(8, HIDDEN, 13))
    with pytest.raises(ModelError, match=r"layer 1 experts.down_proj has shape \[8, 16, 13\], but the config gives \[8, 16, 12\]"):
        site_modules(broken, [(1, "experts.gate_proj")])


# ---------------------------------------------------------------------------- ablation


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("mode", "factor", "method"), [
    ("zero", None, "weights"), ("zero", None, "hooks"), ("scale", 0.3, "weights"), ("scale", -2.0, "hooks"),
    ("mean", None, "hooks"), ("dampen", None, "weights"), ("dampen", None, "hooks"),
])
def test_ablation_matches_the_slow_reference(kind, mode, factor, method):
    model = build(kind)
    original = logits(model)
    chosen = neuron_set(model)
    want = Reference(model, chosen, mode, factor).logits(IDS)
    experts, inner = widths(model)
    grouped = model.model.layers[0].mlp.experts.gate_up_proj
    before = grouped.detach().clone()
    with ablated(model, chosen, AblationSpec(mode=mode, factor=factor, method=method)) as handle:
        assert handle.methods == [method]
        got = logits(model)
        if method == "weights":  # expert e's gate row c and up row inner + c, nothing else
            changed = sorted((int(e), int(r)) for e, r in (grouped.detach() != before).any(dim=-1).nonzero())
            gate, up = chosen.neurons[(0, "experts.gate_proj")].tolist(), chosen.neurons[(0, "experts.up_proj")].tolist()
            assert changed == sorted({(i // inner, i % inner) for i in gate} | {(i // inner, inner + i % inner) for i in up})
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, original, atol=1e-3)
    assert torch.equal(logits(model), original) and torch.equal(grouped.detach(), before)
    assert "forward" not in model.model.layers[0].mlp.experts.__dict__  # the hooks' tapped forward is gone


# ---------------------------------------------------------------------------- relspec-hf, export, refusals


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    dirs = {}
    for kind in KINDS:
        path = tmp_path_factory.mktemp(f"tiny-{kind}")
        tokenizer = build_tokenizer(path)
        build(kind, len(tokenizer)).save_pretrained(path)
        dirs[kind] = path
    return dirs


def test_relspec_hf_edits_the_grouped_rows_and_positions_hook_each_expert(model_dirs, tmp_path):
    path = model_dirs["qwen2_moe"]
    plain = AutoModelForCausalLM.from_pretrained(path).eval()
    chosen = neuron_set(plain)
    set_file = chosen.save(tmp_path / "moe.safetensors")
    lm = RelspecHFLM(pretrained=str(path), device="cpu", neuron_set=str(set_file))
    assert lm.relspec_info()["applied_with"] == ["weights"]
    assert torch.allclose(logits(lm.model), Reference(plain, chosen).logits(IDS), atol=1e-5)

    lm = RelspecHFLM(pretrained=str(path), device="cpu", batch_size=3, neuron_set=str(set_file), positions="last", mode="scale",
                     factor=-4.0)
    assert lm.relspec_info()["applied_with"] == ["hooks"]
    got = [score for score, _ in lm.loglikelihood(requests("loglikelihood", LOGLIKELIHOOD[:5]))]
    want, untouched = [], []
    for ref, scores in ((Reference(plain, chosen, "scale", -4.0), want), (Reference(plain), untouched)):
        for context, continuation in LOGLIKELIHOOD[:5]:
            ctx, cont = lm._encode_pair(context, continuation)
            ids = (ctx + cont)[:-1]
            rows = torch.log_softmax(ref.logits(torch.tensor([ids]), intended("last", len(ctx), len(ids)))[0], dim=-1)[len(ctx) - 1 :]
            scores.append(float(rows[torch.arange(len(cont)), torch.tensor(cont)].sum()))
    assert got == pytest.approx(want, abs=1e-4) and max(abs(w - u) for w, u in zip(want, untouched)) > 1e-3


def test_export_round_trip(model_dirs, tmp_path):
    path = model_dirs["mixtral"]
    plain = AutoModelForCausalLM.from_pretrained(path).eval()
    chosen = neuron_set(plain)
    set_file = chosen.save(tmp_path / "moe.safetensors")
    target, count = export_checkpoint(ExportConfig(model=str(path), neuron_set=str(set_file), out=str(tmp_path / "x"), mode="scale",
                                                   factor=0.5))
    assert count == len(chosen)
    exported = AutoModelForCausalLM.from_pretrained(target).eval()
    assert torch.allclose(logits(exported), Reference(plain, chosen, "scale", 0.5).logits(IDS), atol=1e-5)


@pytest.mark.parametrize(("made_for", "used_on"), [("mixtral", "olmoe"), ("qwen3_moe", "qwen2_moe"), ("olmoe", "mixtral")])
def test_a_set_of_one_model_is_refused_on_another_in_one_line(model_dirs, tmp_path, capsys, made_for, used_on):
    other = AutoModelForCausalLM.from_pretrained(model_dirs[made_for])
    set_file = NeuronSet(neurons_of(other), {"model": {**model_shape(other).metadata(), "name": made_for}}).save(tmp_path / "s.safetensors")
    with pytest.raises(NeuronSetError, match=rf"was made for a model with \w+=\d+ \({made_for}\), but this model has") as error:
        RelspecHFLM(pretrained=str(model_dirs[used_on]), device="cpu", neuron_set=str(set_file))
    assert "\n" not in str(error.value)
    capsys.readouterr()  # the loads above
    assert cli_main(["export", "--model", str(model_dirs[used_on]), "--neuron-set", str(set_file), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("relspec: error: ") and "was made for a model with" in err and err.count("\n") == 1, err


def test_a_dense_set_is_refused_on_a_moe_model_and_a_moe_set_on_a_dense_one(model_dirs, tiny_llama_dir, tmp_path):
    shape = {"num_layers": LAYERS, "hidden_size": HIDDEN, "intermediate_size": 12}
    dense = NeuronSet({(0, "up_proj"): [1]}, {"model": shape}).save(tmp_path / "dense.safetensors")
    with pytest.raises(UnsupportedModelError, match=r"mixture-of-experts MLP \(layer 0, MixtralSparseMoeBlock\) without up_proj") as error:
        RelspecHFLM(pretrained=str(model_dirs["mixtral"]), device="cpu", neuron_set=str(dense))
    assert "\n" not in str(error.value)
    llama = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    sparse = NeuronSet({(0, "experts.up_proj"): [1]})
    with pytest.raises(NeuronSetError, match=r"layer 0 experts.up_proj: this model shape records no experts"):
        with ablated(llama, sparse):
            pass


# ---------------------------------------------------------------------------- identification


def routed_reference_means(model, tokenizer, prompts: list[str]) -> dict[tuple[int, str], torch.Tensor]:
    """Each expert site's neuron means over the prompts: per prompt, over its tokens routed to the neuron's expert
    (0 for a prompt none of whose tokens is), all by hand from each block's input."""
    inputs: dict[int, torch.Tensor] = {}
    for layer, decoder in enumerate(model.model.layers):
        decoder.mlp.register_forward_pre_hook(lambda m, args, layer=layer: inputs.__setitem__(layer, args[0][0]))
    experts_n, inner = widths(model)
    config = model.config
    totals: dict[tuple[int, str], torch.Tensor] = {}
    for prompt in prompts:
        with torch.no_grad():
            model(tokenizer(prompt, return_tensors="pt")["input_ids"])
        for layer, x in inputs.items():
            block = model.model.layers[layer].mlp
            sums = {s: torch.zeros(experts_n, w, dtype=torch.float64) for s, w in
                    (("experts.gate_proj", inner), ("experts.up_proj", inner), ("experts.down_proj", HIDDEN))}
            counts = torch.zeros(experts_n, dtype=torch.float64)
            for h in x:
                top = torch.topk(torch.softmax((block.gate.weight @ h).float(), dim=-1), config.num_experts_per_tok).indices
                for e in top.tolist():
                    rows = block.experts.gate_up_proj[e] @ h
                    gate, up = rows[:inner], rows[inner:]
                    down = block.experts.down_proj[e] @ (block.experts.act_fn(gate) * up)
                    for site, values in (("experts.gate_proj", gate), ("experts.up_proj", up), ("experts.down_proj", down)):
                        sums[site][e] += values.double()
                    counts[e] += 1
            for site, total in sums.items():
                value = (total / counts.clamp_min(1)[:, None]).reshape(-1)
                totals[(layer, site)] = totals.get((layer, site), 0) + value
    return {key: value / len(prompts) for key, value in totals.items()}


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"])
def test_identification_means_are_over_routed_tokens(kind, model_dirs, tmp_path):
    data = write_lre_folder(tmp_path / "lre")
    model = AutoModelForCausalLM.from_pretrained(model_dirs[kind]).eval()
    total = model_shape(model).total
    identify(identify_config(model_dirs[kind], tmp_path / "out", data, relations="person_mother", k=total))
    got = NeuronSet.load(tmp_path / "out" / "person_mother.safetensors")
    assert len(got) == total and got.has_means
    prompts = [d["prompt"] for docs in load_pool(str(data), None).docs.values() for d in docs]  # the means are over the whole pool
    for key, want in routed_reference_means(model, AutoTokenizer.from_pretrained(model_dirs[kind]), prompts).items():
        index = got.neurons[key]
        assert torch.allclose(got.means[key].double(), want[index], rtol=1e-4, atol=1e-5), key
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    entry = summary["relations"]["person_mother"]
    experts_n, _ = widths(model)
    per_expert = entry["count_per_expert"]
    assert [len(row) for row in per_expert] == [experts_n] * LAYERS
    assert sum(map(sum, per_expert)) == sum(v for s, v in entry["count_per_site"].items() if s.startswith("experts."))


def test_the_filter_generates_through_the_experts_sites_pick_expert_sites_and_lape_is_refused(model_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RELSPEC_CACHE_DIR", str(tmp_path / "cache"))  # the answers' cache
    data = write_lre_folder(tmp_path / "lre")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"person_mother: 0 of 10 P\^det prompts answered correctly"):  # generated through the experts
        identify(identify_config(model_dirs["qwen2_moe"], out, data, relations="person_mother", filter=True, k=10))
    # float64: the unhooked experts run transformers' eager loop (its grouped_mm takes no float64)
    identify(identify_config(model_dirs["qwen2_moe"], out, data, relations="person_mother", k=10, dtype="float64",
                             sites="shared_expert.down_proj,experts.up_proj"))
    got = NeuronSet.load(out / "person_mother.safetensors")
    assert len(got) == 10 and {site for _, site in got.neurons} <= {"shared_expert.down_proj", "experts.up_proj"}
    assert got.recorded_shape().sites == ("shared_expert.down_proj", "experts.up_proj")
    lm = RelspecHFLM(pretrained=str(model_dirs["qwen2_moe"]), device="cpu", dtype="float64", neuron_set=str(out / "person_mother.safetensors"))
    plain = AutoModelForCausalLM.from_pretrained(model_dirs["qwen2_moe"], dtype=torch.float64).eval()
    assert torch.allclose(logits(lm.model), Reference(plain, got).logits(IDS), atol=1e-10)
    capsys.readouterr()
    assert cli_main(["identify", "--model", str(model_dirs["olmoe"]), "--data", str(data), "--out", str(tmp_path / "lape"),
                     "--method", "lape", "--no-filter", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == ("relspec: error: --method lape counts a dense MLP's gate_proj activations; 'olmoe' is a mixture-of-experts "
                   "model: use --method ap, auroc or mean-diff\n"), err


def test_relspec_info_shows_which_experts_hold_the_neurons(tmp_path, capsys):
    shape = ModelShape(2, 16, 12, num_experts=4, expert_intermediate_size=12, model_type="mixtral",
                       sites=("experts.gate_proj", "experts.up_proj", "experts.down_proj"))
    # expert = index // 12 for gate/up (width 12), index // 16 for down (hidden 16)
    chosen = NeuronSet.from_keys([(0, "experts.up_proj", 1), (0, "experts.up_proj", 13), (0, "experts.down_proj", 20),
                                  (1, "experts.gate_proj", 47)], {"model": shape.metadata()})
    path = chosen.save(tmp_path / "moe.safetensors")
    assert cli_main(["info", str(path)]) == 0
    assert "  experts    L0: e0:1 e1:2; L1: e3:1\n" in capsys.readouterr().out
    assert cli_main(["info", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["count_per_expert"] == [[1, 2, 0, 0], [0, 0, 0, 1]]
