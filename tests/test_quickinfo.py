"""Issue 23: ``relspec info`` reads a set without torch (sets/quickinfo.py), and says the same as
the full reader, ``NeuronSet.load(...).summary()``, on every file it answers for; on any other
file it steps aside and the full reader's error is what the user sees."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from relspec_lmeval.cli import main
from relspec_lmeval.sets.fileformat import FORMAT_NAME, HEADER_KEY
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.quickinfo import quick_summary
from relspec_lmeval.util.resources import resource_dir

SHIPPED = sorted(p for p in resource_dir("neuron_sets").rglob("*.safetensors") if "scores" not in p.parts)
MODEL = {"name": "t", "num_layers": 4, "hidden_size": 8, "intermediate_size": 16, "model_type": "llama"}


def _raw(path, tensors, metadata=None, version="1", fmt=FORMAT_NAME):
    """A set file written tensor by tensor, as another tool might (unsorted, other dtypes, ...)."""
    block = {"format": fmt, "format_version": version, "metadata": {"model": MODEL} if metadata is None else metadata}
    save_file(tensors, str(path), metadata={HEADER_KEY: json.dumps(block)})
    return path


def test_every_shipped_set_is_read_without_torch_and_summarised_alike():
    assert len(SHIPPED) > 100  # relspec-tiny, gemma-3-270m, qwen: sets, controls, cuts
    for path in SHIPPED:
        assert quick_summary(path) == NeuronSet.load(path).summary(), path


def test_factors_means_scores_and_attention_sites_summarise_alike(tmp_path):
    keys = [(0, "q_proj", 5), (0, "o_proj_in", 2), (1, "up_proj", 9), (1, "down_proj", 3), (3, "gate_proj", 0)]
    s = NeuronSet.from_keys(keys, metadata={"model": {**MODEL, "num_attention_heads": 2, "num_key_value_heads": 1}})
    s.factors = {k: torch.full((len(v),), 0.25) for k, v in s.neurons.items()}
    s.means = {k: torch.ones(len(v)) for k, v in s.neurons.items()}
    s.scores = {k: torch.arange(len(v), dtype=torch.float32) for k, v in s.neurons.items()}
    path = s.save(tmp_path / "a.safetensors")
    assert quick_summary(path) == NeuronSet.load(path).summary()
    assert quick_summary(path)["has_factors"] and quick_summary(path)["has_means"]


def test_unsorted_indices_hash_as_the_sorted_set_does(tmp_path):
    path = _raw(tmp_path / "u.safetensors", {
        "layers.2.up_proj.indices": torch.tensor([7, 1, 4]),
        "layers.2.up_proj.factors": torch.tensor([0.7, 0.1, 0.4]),
        "layers.0.down_proj.indices": torch.tensor([3]),
    })
    quick = quick_summary(path)
    assert quick == NeuronSet.load(path).summary()
    assert quick["count_per_layer"] == {"0": {"gate_proj": 0, "up_proj": 0, "down_proj": 1},
                                        "2": {"gate_proj": 0, "up_proj": 3, "down_proj": 0}}


@pytest.mark.parametrize(("tensors", "metadata", "error"), [
    ({"layers.0.up_proj.indices": torch.tensor([1, 1])}, None, "duplicate neuron indices"),
    ({"layers.0.up_proj.indices": torch.tensor([-1])}, None, "negative neuron index"),
    ({"layers.0.up_proj.indices": torch.tensor([1.0])}, None, "must be integers"),
    ({"layers.0.up_proj.indices": torch.tensor([1]), "layers.1.up_proj.means": torch.tensor([0.5])}, None,
     "means given for sites without neurons"),
    ({"layers.0.up_proj.indices": torch.tensor([1, 2]), "layers.0.up_proj.factors": torch.tensor([0.5])}, None,
     "1 factors for 2 neurons"),
    ({"layers.00.up_proj.indices": torch.tensor([1])}, None, "unexpected tensor 'layers.00.up_proj.indices'"),
    ({"layers.0.up_proj.indices": torch.tensor([1])}, {"model": {**MODEL, "num_layers": 0}}, "model.num_layers must be"),
    ({"layers.0.up_proj.indices": torch.tensor([1])}, "a string", "metadata must be a JSON object"),
])
def test_a_file_the_full_reader_refuses_is_left_to_it(tmp_path, capsys, tensors, metadata, error):
    path = _raw(tmp_path / "bad.safetensors", tensors, metadata)
    assert quick_summary(path) is None
    assert main(["info", str(path)]) == 2
    assert error in capsys.readouterr().err


def test_an_odd_but_valid_file_is_read_by_the_full_reader(tmp_path, capsys):
    """int32 indices, an empty site, a mixture-of-experts set: valid, but not the quick path's."""
    int32 = _raw(tmp_path / "i32.safetensors", {"layers.0.up_proj.indices": torch.tensor([3, 1], dtype=torch.int32)})
    empty = _raw(tmp_path / "e.safetensors", {"layers.0.up_proj.indices": torch.tensor([3]),
                                             "layers.1.up_proj.indices": torch.zeros(0, dtype=torch.int64)})
    for path in (int32, empty):
        assert quick_summary(path) is None
        assert main(["info", "--json", str(path)]) == 0
        assert json.loads(capsys.readouterr().out) == NeuronSet.load(path).summary()
    moe = {**MODEL, "num_experts": 2, "expert_intermediate_size": 8}
    path = _raw(tmp_path / "moe.safetensors", {"layers.0.experts.up_proj.indices": torch.tensor([9])}, {"model": moe})
    assert quick_summary(path) is None
    assert main(["info", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["count_per_expert"][0] == [0, 1]


_ODD_HEADERS = [  # JSON a hand-made file might hold: each must leave quick_summary with None, not a traceback
    {"__metadata__": {"relspec": 5}},
    {"__metadata__": ["relspec"]},
    {"layers.0.up_proj.indices": {"dtype": "I64", "shape": [1], "data_offsets": ["0", "8"]}},
    {"layers.0.up_proj.indices": {"dtype": "I64", "shape": [1], "data_offsets": [8, 0]}},
    {"layers.0.up_proj.indices": [1, 2]},
]


@pytest.mark.parametrize("header", _ODD_HEADERS)
def test_an_odd_header_is_left_to_the_full_reader(tmp_path, header):
    text = json.dumps(header).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + bytes(8))
    assert quick_summary(path) is None
    assert main(["info", str(path)]) == 2


@pytest.mark.parametrize("content", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{}", b"not a safetensors file at all"])
def test_a_broken_file_is_left_to_the_full_reader(tmp_path, capsys, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    assert quick_summary(path) is None
    assert main(["info", str(path)]) == 2
    assert "not a readable safetensors neuron-set file" in capsys.readouterr().err


def test_a_scores_file_or_another_version_is_left_to_the_full_reader(tmp_path, capsys):
    scores = _raw(tmp_path / "s.safetensors", {"layers.0.up_proj.indices": torch.tensor([1])}, fmt="relspec-neuron-scores")
    newer = _raw(tmp_path / "v.safetensors", {"layers.0.up_proj.indices": torch.tensor([1])}, version="2")
    for path, error in ((scores, "not a relspec neuron-set file"), (newer, "format version '2'")):
        assert quick_summary(path) is None
        assert main(["info", str(path)]) == 2
        assert error in capsys.readouterr().err
