"""The neuron-set file: round trip, algebra, and every bad input failing loudly."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.sets.fileformat import HEADER_KEY
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.resolve import load_sets, resolve_set_path
from relspec_lmeval.sets.shape import ModelShape

SHAPE = ModelShape(num_layers=2, hidden_size=32, intermediate_size=64)


def make_set(**meta) -> NeuronSet:
    neurons = {(0, "gate_proj"): [5, 1, 3], (1, "down_proj"): [31], (1, "up_proj"): [0, 63]}
    means = {k: torch.arange(len(v), dtype=torch.float32) + 0.5 for k, v in neurons.items()}
    metadata = {"model": {"num_layers": 2, "hidden_size": 32, "intermediate_size": 64}, "relation": "r", **meta}
    return NeuronSet(neurons, metadata, means=means)


def test_round_trip_is_canonical_and_hashable(tmp_path):
    s = make_set()
    assert s.neurons[(0, "gate_proj")].tolist() == [1, 3, 5]  # sorted
    assert s.means[(0, "gate_proj")].tolist() == [1.5, 2.5, 0.5]  # permuted with the indices
    path = s.save(tmp_path / "a.safetensors")
    loaded = NeuronSet.load(path)
    assert loaded.keys() == s.keys() and loaded.metadata == s.metadata and loaded.has_means
    assert len(loaded) == 6
    assert loaded.count_per_layer() == {0: {"gate_proj": 3, "up_proj": 0, "down_proj": 0}, 1: {"gate_proj": 0, "up_proj": 2, "down_proj": 1}}
    # Same content, same bytes: the hash identifies the set.
    again = make_set().save(tmp_path / "b.safetensors")
    assert NeuronSet.load(again).sha256() == loaded.sha256()
    loaded.validate(SHAPE)


def test_algebra():
    a = NeuronSet.from_keys([(0, "gate_proj", 1), (0, "gate_proj", 2), (1, "down_proj", 0)])
    b = NeuronSet.from_keys([(0, "gate_proj", 2), (1, "up_proj", 7)])
    assert a.overlap(b) == 1
    assert a.union(b).keys() == a.keys() | b.keys()
    assert a.intersection(b).keys() == {(0, "gate_proj", 2)}
    assert a.jaccard(b) == pytest.approx(1 / 4)
    assert not a.union(b).has_means  # b has none, so the union cannot carry them


def test_union_keeps_means_when_all_parts_have_them():
    u = make_set().union(NeuronSet({(0, "gate_proj"): [9]}, means={(0, "gate_proj"): [7.0]}))
    assert u.has_means and dict(zip(u.neurons[(0, "gate_proj")].tolist(), u.means[(0, "gate_proj")].tolist()))[9] == 7.0


@pytest.mark.parametrize(
    ("neurons", "message"),
    [
        ({(0, "gate_proj"): [1, 1]}, "duplicate"),
        ({(0, "mlp"): [1]}, "unknown site"),
        ({(0, "gate_proj"): [-1]}, "negative"),
        ({(0, "gate_proj"): [0.5]}, "integers"),
    ],
)
def test_bad_contents(neurons, message):
    with pytest.raises(NeuronSetError, match=message):
        NeuronSet(neurons)


@pytest.mark.parametrize(
    ("neurons", "model_meta", "message"),
    [
        ({(0, "gate_proj"): [64]}, {}, "index 64 out of range"),
        ({(0, "down_proj"): [32]}, {}, "index 32 out of range"),
        ({(2, "up_proj"): [0]}, {}, "layer 2 out of range"),
        ({(0, "up_proj"): [0]}, {"intermediate_size": 11008, "name": "llama-7b"}, "intermediate_size=11008"),
        ({(0, "up_proj"): [0]}, {"num_layers": 32}, "num_layers=32"),
    ],
)
def test_validate_rejects_other_models(neurons, model_meta, message):
    with pytest.raises(NeuronSetError, match=message):
        NeuronSet(neurons, {"model": model_meta}).validate(SHAPE)


def test_bad_files(tmp_path):
    with pytest.raises(NeuronSetError, match="not found"):
        NeuronSet.load(tmp_path / "missing.safetensors")
    pickled = tmp_path / "set.pt"
    torch.save({"x": torch.zeros(2)}, pickled)  # a pickle must be refused, never unpickled
    with pytest.raises(NeuronSetError, match="not a readable safetensors"):
        NeuronSet.load(pickled)
    good = make_set().save(tmp_path / "good.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) - 7])
    with pytest.raises(NeuronSetError, match="not a readable safetensors"):
        NeuronSet.load(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(NeuronSetError, match="not a readable safetensors"):
        NeuronSet.load(garbage)


def _rewrite_header(data: bytes, edit) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    return struct.pack("<Q", len(new)) + new + data[8 + n :]


def test_wrong_format_version_and_foreign_files(tmp_path):
    data = make_set().save(tmp_path / "good.safetensors").read_bytes()
    future = tmp_path / "future.safetensors"
    def bump(h):
        block = json.loads(h["__metadata__"][HEADER_KEY])
        h["__metadata__"][HEADER_KEY] = json.dumps({**block, "format_version": "99"})

    future.write_bytes(_rewrite_header(data, bump))
    with pytest.raises(NeuronSetError, match="format version '99'"):
        NeuronSet.load(future)
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(_rewrite_header(data, lambda h: h.pop("__metadata__")))
    with pytest.raises(NeuronSetError, match="not a relspec neuron-set file"):
        NeuronSet.load(foreign)
    from safetensors.torch import save_file

    odd = tmp_path / "odd.safetensors"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "good.safetensors"), framework="pt") as handle:
        header = handle.metadata()
    save_file({"weights": torch.zeros(3)}, odd, metadata=header)
    with pytest.raises(NeuronSetError, match="unexpected tensor 'weights'"):
        NeuronSet.load(odd)


def test_save_is_atomic(tmp_path, monkeypatch):
    import safetensors.torch

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        make_set().save(tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_names_and_unions(tmp_path):
    a = make_set().save(tmp_path / "a.safetensors")
    b = NeuronSet({(0, "gate_proj"): [9]}).save(tmp_path / "b.safetensors")
    sets = load_sets(f"{a}+{b}")
    assert [len(s) for s in sets] == [6, 1]
    with pytest.raises(NeuronSetError, match="not found"):
        resolve_set_path("relspec-tiny/no_such_relation")
    with pytest.raises(NeuronSetError, match="empty neuron-set name"):
        load_sets(f"{a}+")
    plus = make_set().save(tmp_path / "ap@q_proj+k_proj" / "r.safetensors")  # a "+" in a real file's path
    assert [len(s) for s in load_sets(str(plus))] == [6]


def test_short_names_resolve_to_shipped_files(tmp_path, monkeypatch):
    from relspec_lmeval.modelio.load import resolve_pretrained
    from relspec_lmeval.util import resources as _resources

    (tmp_path / "models" / "relspec-tiny").mkdir(parents=True)
    make_set().save(tmp_path / "neuron_sets" / "relspec-tiny" / "person_father.safetensors")
    make_set().save(tmp_path / "neuron_sets" / "relspec-tiny" / "random" / "k2-seed0.safetensors")
    monkeypatch.setattr(_resources, "resource_dir", lambda name: tmp_path / name)
    assert resolve_pretrained("relspec-tiny") == str(tmp_path / "models" / "relspec-tiny")
    assert resolve_pretrained("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    assert resolve_set_path("relspec-tiny/person_father") == tmp_path / "neuron_sets" / "relspec-tiny" / "person_father.safetensors"
    assert _resources.list_shipped_neuron_sets() == ["relspec-tiny/person_father"]  # controls are not listed
    with pytest.raises(NeuronSetError, match="Did you mean: relspec-tiny/person_father"):
        resolve_set_path("relspec-tiny/person_fathr")


def test_a_config_without_the_llama_mlp_fields_is_one_clear_error():
    """GPT-2's config has n_layer / n_inner: not a model whose gate/up/down MLP this package ablates."""
    from transformers import GPT2Config

    from relspec_lmeval.errors import UnsupportedModelError
    from relspec_lmeval.sets.shape import ModelShape

    with pytest.raises(UnsupportedModelError, match="'gpt2' has no .*intermediate_size.*gate_proj, up_proj and down_proj"):
        ModelShape.from_config(GPT2Config(n_layer=2, n_embd=8, n_head=2))
