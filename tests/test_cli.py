"""The relspec command: info and export, and one-line errors with exit status 2."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from relspec_lmeval.cli import main
from relspec_lmeval.lm.hflm import RelspecHFLM
from relspec_lmeval.sets.neuron_set import NeuronSet


@pytest.fixture()
def set_file(tmp_path):
    meta = {"relation": "company_ceo", "method": "ap", "k": 4, "model": {"name": "tiny", "num_layers": 2, "hidden_size": 32, "intermediate_size": 64}}
    return NeuronSet({(0, "gate_proj"): [1, 2], (1, "down_proj"): [3, 30]}, meta).save(tmp_path / "ceo.safetensors")


def test_info_text_and_json(set_file, capsys):
    assert main(["info", str(set_file)]) == 0
    out = capsys.readouterr().out
    assert "neurons    4" in out and "company_ceo" in out and "L0:2  L1:2" in out
    assert main(["info", "--json", str(set_file)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count_per_site"] == {"gate_proj": 2, "up_proj": 0, "down_proj": 2}
    assert summary["sha256"] == NeuronSet.load(set_file).sha256()


def test_export_equals_relspec_hf(tiny_llama_dir, set_file, tmp_path, capsys):
    out = tmp_path / "ablated"
    assert main(["export", "--model", str(tiny_llama_dir), "--neuron-set", str(set_file), "--out", str(out)]) == 0
    assert AutoConfig.from_pretrained(out).relspec["sets"][0]["sha256"] == NeuronSet.load(set_file).sha256()
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    ours = RelspecHFLM(pretrained=str(tiny_llama_dir), neuron_set=str(set_file), device="cpu")
    ids = torch.tensor([[1, 4, 8, 15, 16, 23, 42]])
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, ours.model(ids).logits)
    # A second export into the same, now non-empty, folder is refused without --force.
    assert main(["export", "--model", str(tiny_llama_dir), "--neuron-set", str(set_file), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "missing.safetensors"], "not found"),
        (["export", "--model", "{model}", "--neuron-set", "{garbage}", "--out", "{tmp}/o"], "not a readable safetensors"),
        (["export", "--model", "{model}", "--neuron-set", "{wide}", "--out", "{tmp}/o"], "index 100 out of range"),
    ],
)
def test_errors_are_one_line_exit_2(argv, message, tiny_llama_dir, tmp_path, capsys):
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    wide = NeuronSet({(0, "up_proj"): [100]}).save(tmp_path / "wide.safetensors")
    argv = [a.format(model=tiny_llama_dir, garbage=garbage, wide=wide, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("relspec: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # nothing half-written
