"""Batched AP against sklearn, top-k selection and its tie-break, the scores file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.identify.methods.ap import average_precision
from relspec_lmeval.identify.methods.chunking import two_class_scores
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.scores import Scores, load_scores, neuron_set_from_scores, save_scores, select_flat
from relspec_lmeval.sets.shape import SITES
from relspec_lmeval.sets.shape import ModelShape as NeuronLayout

sklearn_metrics = pytest.importorskip("sklearn.metrics")
LAYOUT = NeuronLayout(num_layers=2, hidden_size=3, intermediate_size=4)  # 2 × (4 + 4 + 3) = 22 neurons


def sklearn_ap(values: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    y = labels.numpy().astype(int)
    return np.array([sklearn_metrics.average_precision_score(y, values[:, j].numpy()) for j in range(values.shape[1])])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])  # packed-key and gather paths
@pytest.mark.parametrize("n", [1, 2, 3, 7, 40, 257])
@pytest.mark.parametrize("levels", [2, 5, None])  # few distinct values (many ties) … continuous
def test_ap_matches_sklearn_with_ties(n, levels, dtype):
    g = torch.Generator().manual_seed(n * 31 + (levels or 0))
    cols = 40
    values = torch.randint(-1, levels, (n, cols), generator=g).float() if levels else torch.randn(n, cols, generator=g)
    values[:, 0] = 1.0  # a column with one value: every prompt tied
    values[: n // 2, 1], values[n // 2 :, 1] = -0.0, 0.0  # -0.0 and 0.0 tie, as in sklearn
    values[:, 2] = -values[:, 3].abs() * 1e-30  # tiny negatives
    values = values.to(dtype)
    labels = torch.rand(n, generator=g) < 0.3
    labels[0] = True
    ours = average_precision(values, labels)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), sklearn_ap(values.double(), labels), rtol=0, atol=1e-12)


def test_ap_all_positive_and_float64_inputs():
    values = torch.randn(9, 4, dtype=torch.float64)
    labels = torch.ones(9, dtype=torch.bool)
    np.testing.assert_allclose(average_precision(values, labels).numpy(), sklearn_ap(values, labels), atol=1e-12)


def test_ap_needs_a_positive_and_matching_labels():
    with pytest.raises(ValueError, match="at least one positive"):
        average_precision(torch.randn(4, 3), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="labels"):
        average_precision(torch.randn(4, 3), torch.ones(5, dtype=torch.bool))


@pytest.mark.parametrize("budget", [1, 64 * 30 * 7, 1 << 30])
@pytest.mark.parametrize("ties", [True, False])
def test_chunked_ap_equals_unchunked(budget, ties):
    g = torch.Generator().manual_seed(1)
    values = torch.randint(0, 4, (30, 101), generator=g).float() if ties else torch.randn(30, 101, generator=g)
    labels = torch.arange(30) % 3 == 0
    whole = average_precision(values, labels)
    chunked = two_class_scores("ap", values, labels, budget_bytes=budget)
    assert torch.equal(whole, chunked)


def test_top_k_ties_go_to_lower_layer_site_index():
    scores = torch.tensor([0.5, 0.9, 0.9, 0.1, 0.9, 0.2])
    assert select_flat(scores, 2).tolist() == [1, 2]
    assert select_flat(scores, 4).tolist() == [0, 1, 2, 4]
    assert select_flat(scores, 2, skip=2).tolist() == [0, 4]  # ranks 3..4


def test_both_takes_top_ceil_and_bottom_floor_without_overlap():
    scores = torch.tensor([0.5, 0.9, 0.9, 0.1, 0.9, 0.2])
    assert select_flat(scores, 3, "both").tolist() == [1, 2, 3]  # top 2, bottom 1
    assert select_flat(scores, 4, "both").tolist() == [1, 2, 3, 5]
    flat = torch.zeros(10)  # everything tied: top = lowest indices, bottom = lowest of the rest
    assert select_flat(flat, 4, "both").tolist() == [0, 1, 2, 3]
    assert select_flat(flat, 10, "both").tolist() == list(range(10))


def test_selection_errors():
    scores = torch.rand(22)
    with pytest.raises(NeuronSetError, match="larger than the model's 22 neurons"):
        select_flat(scores, 23)
    with pytest.raises(NeuronSetError, match="at least 1"):
        select_flat(scores, 0)
    with pytest.raises(NeuronSetError, match="unknown selection"):
        select_flat(scores, 2, "bottom")
    with pytest.raises(NeuronSetError, match="NaN"):
        select_flat(torch.full((22,), float("nan")), 2)


def test_layout_flat_order_is_layer_site_index():
    keys = [(layer, SITES.index(site), i) for layer, site, _, width in LAYOUT.blocks() for i in range(width)]
    assert keys == sorted(keys) and len(keys) == LAYOUT.total == 22
    flat = torch.arange(LAYOUT.total, dtype=torch.float32)
    parts = LAYOUT.split(flat)
    assert parts[(1, "up_proj")].tolist() == [15.0, 16.0, 17.0, 18.0]
    assert torch.equal(LAYOUT.join(parts), flat)
    grouped = LAYOUT.group(torch.tensor([0, 4, 10, 21]))
    assert {k: v.tolist() for k, v in grouped.items()} == {
        (0, "gate_proj"): [0],
        (0, "up_proj"): [0],
        (0, "down_proj"): [2],
        (1, "down_proj"): [2],
    }


def make_scores(seed: int = 0) -> Scores:
    g = torch.Generator().manual_seed(seed)
    meta = {"relation": "person_father", "model": {"name": "tiny"}, "method": "ap"}
    return Scores(LAYOUT, torch.rand(LAYOUT.total, generator=g), torch.randn(LAYOUT.total, generator=g), meta)


def test_scores_round_trip_is_deterministic(tmp_path):
    scores = make_scores()
    a = save_scores(scores, tmp_path / "a" / "person_father.safetensors")
    b = save_scores(make_scores(), tmp_path / "b" / "person_father.safetensors")
    assert a.read_bytes() == b.read_bytes()
    loaded = load_scores(a)
    assert loaded.layout == LAYOUT and loaded.relation == "person_father"
    assert torch.equal(loaded.ap, scores.ap) and torch.equal(loaded.means, scores.means)
    assert loaded.metadata["model"]["num_layers"] == 2  # the shape is always recorded


def test_scores_to_set_carries_aligned_scores_and_means(tmp_path):
    scores = make_scores()
    s = scores.to_neuron_set(5, metadata={"relation": "person_father"})
    assert len(s) == 5 and s.has_means
    top = torch.sort(scores.ap, descending=True, stable=True).indices[:5]
    assert sorted(LAYOUT.offset(layer, site) + i for layer, site, i in s.keys()) == sorted(top.tolist())
    for (layer, site), index in s.neurons.items():
        flat = index + LAYOUT.offset(layer, site)
        assert torch.equal(s.scores[(layer, site)], scores.ap[flat])
        assert torch.equal(s.means[(layer, site)], scores.means[flat])
    s.save(tmp_path / "set.safetensors")
    assert NeuronSet.load(tmp_path / "set.safetensors").keys() == s.keys()
    both = neuron_set_from_scores(LAYOUT, scores.ap, scores.means, 4, "both")
    assert len(both) == 4


def test_interrupted_scores_save_leaves_no_file(tmp_path, monkeypatch):
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(KeyboardInterrupt):
        save_scores(make_scores(), tmp_path / "s.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_bad_scores_files_fail_clearly(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(NeuronSetError, match="not found"):
        load_scores(tmp_path / "missing.safetensors")
    s = NeuronSet({(0, "gate_proj"): [1]}, {"model": {"num_layers": 2}})
    s.save(tmp_path / "set.safetensors")
    with pytest.raises(NeuronSetError, match="neuron set"):
        load_scores(tmp_path / "set.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(NeuronSetError, match="not a relspec scores file"):
        load_scores(tmp_path / "plain.safetensors")
    header = {"relspec": json.dumps({"format": "relspec-neuron-scores", "format_version": "1", "metadata": {"model": LAYOUT.metadata()}})}
    save_file({"layers.0.gate_proj.ap": torch.zeros(4)}, str(tmp_path / "short.safetensors"), metadata=header)
    with pytest.raises(NeuronSetError, match="missing per-site"):
        load_scores(tmp_path / "short.safetensors")
