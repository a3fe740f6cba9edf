"""relspec convert: LAPE, knowledge-neurons and selfcond files become our neuron sets (docs/convert.md)."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import torch
from conftest import build_tiny_llama
from transformers import AutoModelForCausalLM, GPT2Config

from relspec_lmeval import __version__
from relspec_lmeval.cli import main
from relspec_lmeval.lm.ablation import AblationSpec, apply_ablation
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.util.resources import resource_dir

IDS = torch.tensor([[1, 4, 8, 15, 16, 23, 42]])
COLUMNS = ["ap", "off_mean", "on_p50", "on_p90", "layer", "unit", "uuid", "concept", "group"]  # selfcond's export_as_pandas
RAN: list[str] = []


def _record(what: str) -> None:
    RAN.append(what)


class _Payload:
    """Unpickling this calls _record: a weights_only load must refuse it before anything runs."""

    def __reduce__(self):
        return (_record, ("unpickled",))


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lape(path, mask) -> str:
    torch.save(mask, path)
    return str(path)


def _kn(path, data) -> str:
    path.write_text(json.dumps(data, indent=4), encoding="utf-8")
    return str(path)


def _selfcond(path, rows, columns=COLUMNS) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for n, (module, unit, ap) in enumerate(rows):
            values = {"ap": ap, "off_mean": 0.1, "on_p50": 0.5, "on_p90": 0.9, "layer": module, "unit": unit, "uuid": n,
                      "concept": "person_father", "group": "relations", "score": ap}
            writer.writerow([values[c] for c in columns])
    return str(path)


SELFCOND_ROWS = [
    ("model.layers.0.mlp.gate_proj:0", 0, 0.9),
    ("model.layers.0.mlp.up_proj:0", 4, 0.95),
    ("model.layers.1.mlp.down_proj:0", 31, 0.9),  # ties with layer 0's gate_proj 0: the lower layer wins
    ("model.layers.1.mlp.up_proj:0", 2, 0.6),
    ("model.layers.0.input_layernorm:0", 1, 0.99),  # not one of our sites: skipped
    ("model.layers.1.mlp.gate_proj:0", 3, 0.1),
]


@pytest.fixture()
def model(tiny_llama_dir) -> str:  # 2 layers, hidden 32, intermediate 64
    return str(tiny_llama_dir)


def _convert(*argv) -> int:
    return main(["convert", *map(str, argv)])


# ---------------------------------------------------------------------------------- LAPE


def test_lape_one_set_per_language_at_up_proj(model, tmp_path, capsys):
    mask = [[torch.tensor([3, 1]), torch.tensor([], dtype=torch.long)], [torch.tensor([0]), torch.tensor([63, 5])]]
    source = _lape(tmp_path / "tiny.neuron.pth", mask)
    assert _convert("lape", source, "--model", model, "--names", "en,zh", "--out", tmp_path / "sets") == 0
    assert capsys.readouterr().out.count("wrote ") == 2
    en, zh = (NeuronSet.load(tmp_path / "sets" / f"{lang}.safetensors") for lang in ("en", "zh"))
    assert en.keys() == {(0, "up_proj", 1), (0, "up_proj", 3)}
    assert zh.keys() == {(0, "up_proj", 0), (1, "up_proj", 5), (1, "up_proj", 63)}
    meta = en.metadata
    assert meta["method"] == "convert" and meta["relation"] == "en" and meta["k"] == 2
    assert meta["source"] == {
        "tool": "lape", "tool_name": meta["source"]["tool_name"], "file": "tiny.neuron.pth", "path": source,
        "sha256": _sha(tmp_path / "tiny.neuron.pth"), "entry": "language 0 (en)",
    }
    assert "up_proj" in meta["site_mapping"] and "act_fn(gate_proj" in meta["site_mapping"]
    assert meta["model"]["name"] == model and meta["model"]["intermediate_size"] == 64 and meta["model"]["config_hash"]
    assert meta["parameters"] == {"names": ["en", "zh"], "language_index": 0}
    assert meta["package_version"] == __version__ and meta["command"].startswith("relspec convert lape ")


def test_lape_default_names_and_named_dict(model, tmp_path):
    mask = [[torch.tensor([1]), torch.tensor([2])]] * 2
    assert _convert("lape", _lape(tmp_path / "m.pth", mask), "--model", model, "--out", tmp_path / "a") == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["lang0.safetensors", "lang1.safetensors"]
    named = {"fr": [[4], torch.tensor([5, 6], dtype=torch.int32)]}  # a dict names its languages
    assert _convert("lape", _lape(tmp_path / "d.pth", named), "--model", model, "--out", tmp_path / "fr.safetensors") == 0
    assert NeuronSet.load(tmp_path / "fr.safetensors").keys() == {(0, "up_proj", 4), (1, "up_proj", 5), (1, "up_proj", 6)}


def test_lape_is_read_with_weights_only(model, tmp_path, capsys):
    source = _lape(tmp_path / "evil.pth", [[_Payload(), torch.tensor([1])]])
    assert _convert("lape", source, "--model", model, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "weights_only" in err and "_record" in err and err.count("\n") == 1
    assert RAN == [] and not (tmp_path / "o").exists()


# --------------------------------------------------------------------- knowledge-neurons

KN = {"48a2b323-a09c": [[0, 5], [1, 7]], "aeda2aa7-f9e6": [[1, 7], [0, 2], [1, 7]]}


def test_kn_one_set_per_uuid_or_merged(model, tmp_path):
    source = _kn(tmp_path / "tiny_pararel_neurons_0.json", KN)
    assert _convert("kn", source, "--model", model, "--out", tmp_path / "per") == 0
    first = NeuronSet.load(tmp_path / "per" / "48a2b323-a09c.safetensors")
    second = NeuronSet.load(tmp_path / "per" / "aeda2aa7-f9e6.safetensors")
    assert first.keys() == {(0, "up_proj", 5), (1, "up_proj", 7)}
    assert second.keys() == {(1, "up_proj", 7), (0, "up_proj", 2)}
    assert second.metadata["parameters"]["repeats_dropped"] == 1 and second.metadata["relation"] == "aeda2aa7-f9e6"
    assert second.metadata["source"]["tool"] == "kn" and second.metadata["source"]["sha256"] == _sha(tmp_path / "tiny_pararel_neurons_0.json")
    assert _convert("kn", source, "--model", model, "--merge", "--name", "facts", "--out", tmp_path / "m") == 0
    merged = NeuronSet.load(tmp_path / "m" / "facts.safetensors")
    assert merged.keys() == first.keys() | second.keys()
    assert merged.metadata["parameters"]["merged_uuids"] == {"48a2b323-a09c": 2, "aeda2aa7-f9e6": 2}
    assert _convert("kn", source, "--model", model, "--uuids", "aeda2aa7-f9e6", "--out", tmp_path / "one.safetensors") == 0
    assert NeuronSet.load(tmp_path / "one.safetensors").keys() == second.keys()


# ----------------------------------------------------------------------------- selfcond


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--k", "2"], {(0, "up_proj", 4): 0.95, (0, "gate_proj", 0): 0.9}),
        (["--threshold", "0.5"], {(0, "up_proj", 4): 0.95, (0, "gate_proj", 0): 0.9, (1, "down_proj", 31): 0.9, (1, "up_proj", 2): 0.6}),
        (["--threshold", "0.5", "--k", "3"], {(0, "up_proj", 4): 0.95, (0, "gate_proj", 0): 0.9, (1, "down_proj", 31): 0.9}),
        (["--k", "2", "--select", "both"], {(0, "up_proj", 4): 0.95, (1, "gate_proj", 3): 0.1}),
        (["--all"], {(0, "up_proj", 4): 0.95, (0, "gate_proj", 0): 0.9, (1, "down_proj", 31): 0.9, (1, "up_proj", 2): 0.6, (1, "gate_proj", 3): 0.1}),
    ],
)
def test_selfcond_selection_and_scores(flags, expected, model, tmp_path):
    source = _selfcond(tmp_path / "expertise.csv", SELFCOND_ROWS)
    assert _convert("selfcond", source, "--model", model, *flags, "--out", tmp_path / "sets") == 0
    found = NeuronSet.load(tmp_path / "sets" / "person_father.safetensors")  # named by the concept column
    assert found.keys() == set(expected)
    scores = {(layer, site, i): s for (layer, site), idx in found.neurons.items() for i, s in zip(idx.tolist(), found.scores[(layer, site)].tolist())}
    assert scores == pytest.approx(expected)
    assert found.metadata["parameters"]["rows_skipped"] == {"input_layernorm:0": 1} and found.metadata["parameters"]["rows_read"] == 5
    assert found.metadata["source"]["tool"] == "selfcond" and found.metadata["source"]["sha256"] == _sha(tmp_path / "expertise.csv")


# -------------------------------------------------------------------------- the outputs


def test_existing_files_need_force(model, tmp_path, capsys):
    source = _kn(tmp_path / "kn.json", {"u": [[0, 1]]})
    out = tmp_path / "u.safetensors"
    assert _convert("kn", source, "--model", model, "--out", out) == 0
    before = out.read_bytes()
    _kn(tmp_path / "kn.json", {"u": [[0, 2]]})
    assert _convert("kn", source, "--model", model, "--out", out) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_bytes() == before
    assert _convert("kn", source, "--model", model, "--out", out, "--force") == 0
    assert NeuronSet.load(out).keys() == {(0, "up_proj", 2)}


def _bad_inputs(tmp_path) -> dict[str, str]:
    text = tmp_path / "notes.txt"
    text.write_text("not a neuron file", encoding="utf-8")
    GPT2Config(n_layer=2, n_embd=32, n_head=4).save_pretrained(tmp_path / "gpt2")
    return {
        "gpt2": str(tmp_path / "gpt2"),
        "lape_wide": _lape(tmp_path / "wide.pth", [[torch.tensor([1]), torch.tensor([2])], [torch.tensor([0]), torch.tensor([64])]]),
        "lape_deep": _lape(tmp_path / "deep.pth", [[torch.tensor([1])] * 3]),
        "lape_float": _lape(tmp_path / "float.pth", [[torch.tensor([1.0]), torch.tensor([2])]]),
        "lape_dict": _lape(tmp_path / "weights.pth", {"w": torch.zeros(2, 2)}),
        "text": str(text),
        "lape_ok": _lape(tmp_path / "ok.pth", [[torch.tensor([1]), torch.tensor([2])]] * 2),
        "kn_ok": _kn(tmp_path / "kn_ok.json", {"u1": [[0, 1]], "u2": [[1, 3]]}),
        "sc_ok": _selfcond(tmp_path / "ok.csv", SELFCOND_ROWS),
        "kn_wide": _kn(tmp_path / "kn_wide.json", {"u1": [[0, 1]], "u2": [[1, 3], [2, 0]]}),
        "kn_pairs": _kn(tmp_path / "kn_pairs.json", {"u1": [[0, 1, 2]]}),
        "kn_results": _kn(tmp_path / "kn_results.json", {"u1": {"suppression": {}, "enhancement": {}}}),
        "sc_columns": _selfcond(tmp_path / "cols.csv", SELFCOND_ROWS, columns=["layer", "unit", "score"]),
        "sc_wide": _selfcond(tmp_path / "wide.csv", [*SELFCOND_ROWS, ("model.layers.1.mlp.up_proj:0", 64, 0.5)]),
        "sc_gpt2": _selfcond(tmp_path / "gpt2.csv", [("transformer.h.0.mlp.c_fc:0", 1, 0.9)]),
        "sc_dup": _selfcond(tmp_path / "dup.csv", [*SELFCOND_ROWS, ("model.layers.0.mlp.up_proj:0", 4, 0.2)]),
        "shipped": str(resource_dir("neuron_sets") / "convert-test"),
        "a_file": str(text),
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lape", "{lape_wide}", "--names", "en,zh"], "wide.pth: language 1 (zh): layer 1 index 64 out of range (up_proj has 64 channels"),
        (["lape", "{lape_deep}"], "language 0 (lang0) lists 3 layers, but the model has 2"),
        (["lape", "{lape_float}"], "language 0 (lang0) layer 0: expected a 1-D LongTensor"),
        (["lape", "{lape_dict}"], "language 0 (w): expected a list over layers"),
        (["lape", "{lape_wide}", "--names", "en,zh,fr"], "--names gives 3 names, but"),
        (["lape", "{text}"], "is not a file torch.load(weights_only=True) can read"),
        (["lape", "{tmp}/missing.pth"], "LAPE file not found"),
        (["kn", "{kn_wide}"], "kn_wide.json: uuid u2, item 1: layer 2 out of range (the model has 2 layers)"),
        (["kn", "{kn_pairs}"], "uuid u1, item 0: expected [layer, index] (two integers), got [0, 1, 2]"),
        (["kn", "{kn_results}"], "looks like a *_pararel_results_*.json"),
        (["kn", "{kn_wide}", "--uuids", "u3"], "--uuids: 'u3' is not in"),
        (["kn", "{kn_wide}", "--name", "x"], "--name labels one set"),
        (["kn", "{text}"], "is not valid JSON"),
        (["selfcond", "{sc_columns}", "--k", "2"], "needs the columns layer, unit, ap; missing ap (found: layer, unit, score)"),
        (["selfcond", "{sc_wide}", "--k", "2"], "line 8 (model.layers.1.mlp.up_proj:0, unit 64): layer 1 index 64 out of range"),
        (["selfcond", "{sc_gpt2}", "--all"], "no row names one of our sites (…layers.L.mlp.gate_proj/up_proj/down_proj or …layers.L.self_attn.q_proj/k_proj/v_proj/o_proj); its layer column names transformer.h.0.mlp.c_fc:0"),
        (["selfcond", "{sc_dup}", "--all"], "line 8 repeats model.layers.0.mlp.up_proj:0 unit 4 of line 3"),
        (["selfcond", "{sc_ok}"], "choose the neurons: --k N"),
        (["selfcond", "{sc_ok}", "--k", "9"], "--k 9 is more than the 5 rows naming one of our sites"),
        (["selfcond", "{sc_ok}", "--threshold", "0.99"], "ok.csv: rows with AP > 0.99 holds no neurons (pass --allow-empty"),
        (["selfcond", "{sc_ok}", "--all", "--k", "2"], "--all takes every row"),
        (["lape", "{lape_ok}", "--out", "{tmp}/one.safetensors"], "is one file, but the input holds 2 sets; give a folder"),
        (["kn", "{kn_ok}", "--out", "{shipped}"], "inside relspec-lmeval's shipped files"),
        (["kn", "{kn_ok}", "--out", "{a_file}"], "is a file; give a folder"),
        (["kn", "{kn_ok}", "--model", "{tmp}/no-model"], "model folder not found"),
        (["lape", "{lape_ok}", "--model", "{gpt2}"], "model type 'gpt2' has an MLP without gate_proj, up_proj, down_proj"),
    ],
)
def test_errors_are_one_line_exit_2_nothing_written(argv, message, model, tmp_path, capsys):
    files = _bad_inputs(tmp_path)
    argv = [a.format(tmp=tmp_path, **files) for a in argv]
    out = ["--out", str(tmp_path / "out")] if "--out" not in argv else []
    given_model = [] if "--model" in argv else ["--model", model]
    assert main(["convert", *argv, *given_model, *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("relspec: error:") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "one.safetensors").exists()
    assert not (resource_dir("neuron_sets") / "convert-test").exists()


# -------------------------------------------------- the mapping: up_proj i == act_fn(gate_proj) i


class _ActScaled(torch.nn.Module):
    """act_fn with channels ``index`` of its output multiplied by ``factor`` (LAPE zeroes them: index_fill_)."""

    def __init__(self, act: torch.nn.Module, index: torch.Tensor, factor: float) -> None:
        super().__init__()
        self.act, self.index, self.factor = act, index, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(x)
        if self.factor == 0.0:
            return out.index_fill(-1, self.index, 0.0)
        return out.index_copy(-1, self.index, out.index_select(-1, self.index) * self.factor)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize(("factor", "mlp_bias"), [(0.0, False), (0.5, False), (0.0, True)])
def test_up_proj_ablation_equals_switching_off_the_activation(factor, mlp_bias, model, tmp_path):
    """What LAPE and knowledge-neurons switch off (act_fn(gate_proj) i, the down_proj input i) is our up_proj i."""
    if mlp_bias:  # up_proj with a bias: relspec-hf hooks the output instead of editing weights
        model = str(tmp_path / "biased")
        build_tiny_llama(tmp_path / "biased", mlp_bias=True)
    mask = [[torch.tensor([1, 7, 40]), torch.tensor([0, 63])]]
    assert _convert("lape", _lape(tmp_path / "m.pth", mask), "--model", model, "--out", tmp_path / "s.safetensors") == 0
    neuron_set = NeuronSet.load(tmp_path / "s.safetensors")
    llama = AutoModelForCausalLM.from_pretrained(model).eval()
    original = _logits(llama)
    spec = AblationSpec("zero") if factor == 0.0 else AblationSpec("scale", factor)
    ablation = apply_ablation(llama, neuron_set, spec)
    assert ablation.methods == (["hooks"] if mlp_bias else ["weights"])
    ours = _logits(llama)
    ablation.remove()
    assert torch.equal(_logits(llama), original)
    for layer, index in enumerate(mask[0]):
        mlp = llama.model.layers[layer].mlp
        mlp.act_fn = _ActScaled(mlp.act_fn, index, factor)
    theirs = _logits(llama)
    assert not torch.allclose(ours, original)
    if factor == 0.0:
        assert torch.equal(ours, theirs)  # exactly: the same zeros reach down_proj
    else:
        torch.testing.assert_close(ours, theirs)  # (f*W)x vs f*(Wx): equal up to rounding


def test_gate_proj_zeroing_is_the_same_set_under_zero(model, tmp_path):
    """Ports that hook gate_proj's pre-activation output (EasyEdit's llama KN) zero the same product: SiLU(0) = 0."""
    llama = AutoModelForCausalLM.from_pretrained(model).eval()
    up = NeuronSet({(0, "up_proj"): [3, 9], (1, "up_proj"): [20]})
    gate = NeuronSet({(0, "gate_proj"): [3, 9], (1, "gate_proj"): [20]})
    with_up = apply_ablation(llama, up)
    ours = _logits(llama)
    with_up.remove()
    apply_ablation(llama, gate)
    assert torch.equal(ours, _logits(llama))
