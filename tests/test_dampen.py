"""mode=dampen: AurA's per-neuron factors, stored in the set file, applied as a per-channel scaling."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from relspec_lmeval.cli import main
from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.identify.dampen import dampen_factors, dampen_sets, dampened_set
from relspec_lmeval.lm.ablation import AblationSpec, ablated, apply_ablation
from relspec_lmeval.lm.hflm import RelspecHFLM
from relspec_lmeval.modelio.sites import find_mlps
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.scores import Scores, save_scores
from relspec_lmeval.sets.shape import ModelShape

SHAPE = ModelShape(num_layers=2, hidden_size=32, intermediate_size=64)
MODEL = {"name": "tiny", **SHAPE.metadata()}
NEURONS = {(0, "gate_proj"): [1, 5, 9], (0, "up_proj"): [2, 40], (1, "down_proj"): [0, 31], (1, "up_proj"): list(range(0, 64, 3))}
FACTORS = {key: torch.linspace(0.05, 1.7, len(v)) for key, v in NEURONS.items()}  # any finite multipliers, also > 1
IDS = torch.tensor([[1, 4, 8, 15, 16, 23, 42, 7], [1, 9, 9, 30, 12, 5, 6, 11]])


def auroc_set(**extra) -> NeuronSet:
    scores = {key: torch.linspace(0.3, 1.0, len(v)) for key, v in NEURONS.items()}
    meta = {"model": MODEL, "method": "auroc", "relation": "person_father", "k": sum(map(len, NEURONS.values())), **extra}
    return NeuronSet(NEURONS, meta, scores=scores, means={k: torch.zeros(len(v)) for k, v in NEURONS.items()})


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def by_hand(model, factors: dict) -> list:
    """Reference: a hook multiplying each site's whole output by a vector (1 except at the set's channels)."""
    handles = []
    for (layer, site), values in factors.items():
        module = getattr(find_mlps(model)[layer], site)
        multiplier = torch.ones(module.out_features)
        multiplier[torch.tensor(NEURONS[(layer, site)])] = values
        handles.append(module.register_forward_hook(lambda m, a, out, mult=multiplier: out * mult))
    return handles


@pytest.fixture()
def model(tmp_path):
    from conftest import build_tiny_llama

    return build_tiny_llama(tmp_path / "m")


def test_factors_survive_save_and_load_and_old_files_still_load(tmp_path):
    s = NeuronSet({(0, "gate_proj"): [9, 1, 5]}, {"model": MODEL}, factors={(0, "gate_proj"): [0.9, 0.1, 0.5]})
    assert s.factors[(0, "gate_proj")].tolist() == pytest.approx([0.1, 0.5, 0.9])  # permuted with the indices
    loaded = NeuronSet.load(s.save(tmp_path / "f.safetensors"))
    assert loaded.has_factors and torch.equal(loaded.factors[(0, "gate_proj")], s.factors[(0, "gate_proj")])
    assert loaded.factors[(0, "gate_proj")].dtype == torch.float32 and loaded.summary()["has_factors"]
    # A file written before factors existed (indices and scores only) loads, without factors.
    meta = {"format": "relspec-neuron-set", "format_version": "1", "metadata": {"model": MODEL}}
    save_file({"layers.0.up_proj.indices": torch.tensor([3, 4]), "layers.0.up_proj.scores": torch.tensor([0.2, 0.1])},
              str(tmp_path / "old.safetensors"), metadata={"relspec": json.dumps(meta)})
    old = NeuronSet.load(tmp_path / "old.safetensors")
    assert len(old) == 2 and not old.has_factors and old.factors == {}
    with pytest.raises(NeuronSetError, match="2 factors for 3 neurons"):
        NeuronSet({(0, "gate_proj"): [1, 2, 3]}, factors={(0, "gate_proj"): [1.0, 0.5]})
    bad = NeuronSet({(0, "gate_proj"): [1]}, factors={(0, "gate_proj"): [float("inf")]})
    with pytest.raises(NeuronSetError, match="non-finite factors"):
        bad.validate(SHAPE)


def test_union_keeps_the_smallest_factor():
    a = NeuronSet({(0, "gate_proj"): [1, 2]}, factors={(0, "gate_proj"): [0.5, 0.8]})
    b = NeuronSet({(0, "gate_proj"): [2, 3]}, factors={(0, "gate_proj"): [0.3, 0.9]})
    u = a.union(b)
    assert u.neurons[(0, "gate_proj")].tolist() == [1, 2, 3]
    assert u.factors[(0, "gate_proj")].tolist() == pytest.approx([0.5, 0.3, 0.9])
    assert a.union(a).factors[(0, "gate_proj")].tolist() == pytest.approx([0.5, 0.8])  # idempotent
    assert not a.union(NeuronSet({(1, "up_proj"): [0]})).has_factors  # a part without factors


@pytest.mark.parametrize("method", ["weights", "hooks"])
def test_dampen_equals_per_channel_scaling_and_undoes_exactly(model, method):
    neuron_set = NeuronSet(NEURONS, factors=FACTORS)
    original = logits(model)
    handles = by_hand(model, FACTORS)
    reference = logits(model)
    for h in handles:
        h.remove()
    assert torch.equal(logits(model), original)
    weights_before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with ablated(model, neuron_set, AblationSpec("dampen", method=method)) as ablation:
        assert ablation.methods == [method]
        ours = logits(model)
    assert not torch.allclose(reference, original, atol=1e-4)  # the factors do something
    if method == "hooks":
        assert torch.equal(ours, reference)  # the same float32 products
    else:
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert torch.equal(logits(model), original)
    assert all(torch.equal(p, weights_before[name]) for name, p in model.named_parameters())  # bit for bit


def test_dampen_with_factor_one_and_zero_is_identity_and_zeroing(model):
    ones = NeuronSet(NEURONS, factors={k: torch.ones(len(v)) for k, v in NEURONS.items()})
    zeros = NeuronSet(NEURONS, factors={k: torch.zeros(len(v)) for k, v in NEURONS.items()})
    original = logits(model)
    with ablated(model, ones, AblationSpec("dampen")):
        assert torch.equal(logits(model), original)
    with ablated(model, NeuronSet(NEURONS), AblationSpec("zero")):
        zeroed = logits(model)
    with ablated(model, zeros, AblationSpec("dampen")):
        assert torch.equal(logits(model), zeroed)


def test_dampen_with_mlp_bias_uses_hooks(tmp_path):
    from conftest import build_tiny_llama

    model = build_tiny_llama(tmp_path / "b", mlp_bias=True)
    handles = by_hand(model, FACTORS)
    reference = logits(model)
    for h in handles:
        h.remove()
    with ablated(model, NeuronSet(NEURONS, factors=FACTORS), AblationSpec("dampen")) as ablation:
        assert ablation.methods == ["hooks"] and torch.equal(logits(model), reference)


def test_dampen_errors(model, tmp_path):
    plain = NeuronSet(NEURONS, {"model": MODEL}).save(tmp_path / "plain.safetensors")
    with pytest.raises(NeuronSetError, match=rf"mode=dampen needs per-neuron factors .*{plain}.* has none") as info:
        apply_ablation(model, NeuronSet.load(plain), AblationSpec("dampen"))
    assert "\n" not in str(info.value) and "relspec dampen" in str(info.value)
    with pytest.raises(NeuronSetError, match="factor is only used with mode=scale"):
        AblationSpec("dampen", 0.5)


def test_relspec_hf_dampen_records_mode_and_refuses_a_set_without_factors(tiny_llama_dir, tmp_path):
    plain = NeuronSet(NEURONS, {"model": MODEL}).save(tmp_path / "plain.safetensors")
    with pytest.raises(NeuronSetError, match=f"mode=dampen needs per-neuron factors in the neuron-set file, and {plain} has none"):
        RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=str(plain), mode="dampen")
    damp = NeuronSet(NEURONS, {"model": MODEL}, factors=FACTORS).save(tmp_path / "damp.safetensors")
    lm = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=str(damp), mode="dampen")
    info = lm.relspec_info()
    assert info["mode"] == "dampen" and info["factor"] is None and info["applied_with"] == ["weights"]
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    handles = by_hand(reference, FACTORS)
    torch.testing.assert_close(logits(lm.model), logits(reference), rtol=1e-5, atol=1e-5)
    for h in handles:
        h.remove()
    # the cache salt tells dampen from zero for the same neurons
    zero = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=str(damp))
    assert zero.relspec_cache_salt != lm.relspec_cache_salt


def test_export_dampen_equals_relspec_hf(tiny_llama_dir, tmp_path, capsys):
    damp = NeuronSet(NEURONS, {"model": MODEL}, factors=FACTORS).save(tmp_path / "damp.safetensors")
    out = tmp_path / "exported"
    assert main(["export", "--model", str(tiny_llama_dir), "--neuron-set", str(damp), "--out", str(out), "--mode", "dampen"]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    ours = RelspecHFLM(pretrained=str(tiny_llama_dir), neuron_set=str(damp), device="cpu", mode="dampen")
    assert torch.equal(logits(exported), logits(ours.model))
    plain = NeuronSet(NEURONS, {"model": MODEL}).save(tmp_path / "plain.safetensors")
    capsys.readouterr()
    assert main(["export", "--model", str(tiny_llama_dir), "--neuron-set", str(plain), "--out", str(tmp_path / "o"), "--mode", "dampen"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("relspec: error: mode=dampen needs per-neuron factors") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_relspec_dampen_from_a_set(tmp_path, capsys):
    base = auroc_set().save(tmp_path / "sets" / "person_father.safetensors")
    assert main(["dampen", str(base), "--alpha", "0.5"]) == 0
    target = tmp_path / "sets" / "dampen-a0.5" / "person_father.safetensors"
    assert f"wrote {target}" in capsys.readouterr().out
    made = NeuronSet.load(target)
    loaded = NeuronSet.load(base)
    assert made.keys() == loaded.keys() and made.has_factors and made.has_means
    for key, scores in loaded.scores.items():
        want = torch.where(scores.double() > 0.5, 1 - 0.5 * (2 * scores.double() - 1), torch.ones_like(scores.double()))
        assert torch.equal(made.factors[key], want.float())
        assert torch.equal(made.factors[key], dampen_factors(scores, 0.5).float())
    assert made.metadata["method"] == "auroc" and made.metadata["dampen"]["alpha"] == 0.5
    assert made.metadata["dampen"]["from"]["sha256"] == loaded.sha256() and "Suau" in made.metadata["dampen"]["citation"]
    # the library call gives the same factors; the default out folder is dampen/
    assert dampen_sets([base])[0][0] == tmp_path / "sets" / "dampen" / "person_father.safetensors"
    assert torch.equal(dampened_set(loaded).factors[(1, "up_proj")], NeuronSet.load(tmp_path / "sets" / "dampen" / "person_father.safetensors").factors[(1, "up_proj")])


def test_relspec_dampen_from_scores_takes_every_neuron_above_the_threshold(tmp_path, capsys):
    auroc = torch.rand(SHAPE.total, generator=torch.Generator().manual_seed(0))
    auroc[:10] = 0.5  # at chance: not dampened
    scores = Scores(SHAPE, auroc, torch.zeros(SHAPE.total), {"model": MODEL, "method": "auroc", "relation": "person_father", "kind": "scores"})
    path = save_scores(scores, tmp_path / "sets" / "scores" / "person_father.safetensors")
    assert main(["dampen", str(path), "--out", str(tmp_path / "aura")]) == 0
    made = NeuronSet.load(tmp_path / "aura" / "person_father.safetensors")
    stored = scores.ap.double()
    above = torch.nonzero(stored > 0.5).flatten()
    assert len(made) == above.numel() == made.metadata["k"] and made.metadata["select"] == "auroc>0.5"
    flat = torch.cat([idx + SHAPE.offset(*key) for key, idx in made.neurons.items()])
    assert torch.equal(flat, above)
    factors = torch.cat([made.factors[key] for key in made.neurons])
    assert torch.equal(factors, (1 - (2 * stored[above] - 1)).float())
    assert "kind" not in made.metadata
    assert main(["dampen", str(path), "--threshold", "0.9"]) == 0  # default folder: dampen-all-t0.9 beside scores/
    assert len(NeuronSet.load(tmp_path / "sets" / "dampen-all-t0.9" / "person_father.safetensors")) == int((stored > 0.9).sum())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{ap}"], "was scored by method 'ap', but AurA's factors 1 - alpha*(2*AUROC - 1) need AUROC scores"),
        (["relspec-tiny/person_father"], "was scored by method 'ap'"),
        (["{noscores}"], "stores no AUROC scores for its neurons"),
        (["{auroc}", "--alpha", "2"], "--alpha must be in [0, 1], got 2"),
        (["{auroc}", "--threshold", "0.2"], "--threshold must be in [0.5, 1), got 0.2"),
        (["{auroc}", "{auroc}"], "two inputs would both be written to"),
    ],
)
def test_relspec_dampen_errors(args, message, tmp_path, capsys):
    files = {
        "ap": auroc_set(method="ap").save(tmp_path / "ap.safetensors"),
        "noscores": NeuronSet(NEURONS, {"model": MODEL, "method": "auroc"}).save(tmp_path / "noscores.safetensors"),
        "auroc": auroc_set().save(tmp_path / "auroc.safetensors"),
    }
    assert main(["dampen", *(a.format(**files) for a in args)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("relspec: error:") and message in err and "\n" not in err
    assert not (tmp_path / "dampen").exists()  # nothing written


def test_identify_auroc_then_dampen_then_evaluate(tiny_llama_dir, tmp_path):
    """The whole path: `relspec identify --method auroc`, `relspec dampen` (set and scores), lm-eval with mode=dampen."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval_helpers import write_smoke_tasks
    from test_identify import config, write_lre_folder

    from relspec_lmeval.identify.pipeline import identify

    identify(config(tiny_llama_dir, tmp_path / "sets", write_lre_folder(tmp_path / "lre"), relations="person_mother", method="auroc"))
    assert main(["dampen", str(tmp_path / "sets" / "person_mother.safetensors"), str(tmp_path / "sets" / "scores" / "person_mother.safetensors")]) == 0
    top = NeuronSet.load(tmp_path / "sets" / "dampen" / "person_mother.safetensors")
    every = NeuronSet.load(tmp_path / "sets" / "dampen-all" / "person_mother.safetensors")
    assert len(top) == 25 and top.has_factors and top.keys() <= every.keys() and len(every) > 25
    tasks = TaskManager(include_path=str(write_smoke_tasks(tmp_path / "tasks")), include_defaults=False)
    runs = {}
    for name, args in (("original", {}), ("dampen", {"neuron_set": str(tmp_path / "sets" / "dampen-all" / "person_mother.safetensors"), "mode": "dampen"})):
        lm = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=2, **args)
        runs[name] = simple_evaluate(model=lm, tasks=["relspec_smoke_ppl"], task_manager=tasks, device="cpu")
    info = runs["dampen"]["config"]["relspec"]
    assert info["mode"] == "dampen" and info["sets"][0]["count"] == len(every) and info["sets"][0]["metadata"]["dampen"]["alpha"] == 1.0
    ppl = {name: r["results"]["relspec_smoke_ppl"]["word_perplexity,none"] for name, r in runs.items()}
    assert ppl["original"] != ppl["dampen"]
