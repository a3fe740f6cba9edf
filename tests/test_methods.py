"""The other scores (--method auroc|mean-diff|lape) and AurA's dampening factors, each
against an independent reference: sklearn for AUROC, direct per-neuron formulas otherwise."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch

from relspec_lmeval.errors import UsageError
from relspec_lmeval.identify.dampen import dampen_factors
from relspec_lmeval.identify.methods.ap import average_precision
from relspec_lmeval.identify.methods.auroc import auroc
from relspec_lmeval.identify.methods.chunking import chunked_scores, two_class_scores
from relspec_lmeval.identify.methods.lape import (
    activation_probability,
    active_counts,
    lape,
    lape_entropy,
    lape_scores,
    lape_site_scores,
)
from relspec_lmeval.identify.methods.mean_diff import mean_difference
from relspec_lmeval.identify.methods.registry import DEFAULT_METHOD, METHODS
from relspec_lmeval.sets.shape import ModelShape

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def random_case(n: int, cols: int, levels: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-2, levels, (n, cols), generator=g).float() if levels else torch.randn(n, cols, generator=g)
    values[:, 0] = 1.0  # every prompt tied
    values[: n // 2, 1], values[n // 2 :, 1] = -0.0, 0.0  # -0.0 and 0.0 tie
    values[:, 2] = -values[:, 3].abs() * 1e-30  # tiny negatives
    labels = torch.rand(n, generator=g) < 0.3
    labels[0], labels[-1] = True, False
    return values, labels


# ---------------------------------------------------------------------------- AUROC


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])  # packed-key and sort paths
@pytest.mark.parametrize("n", [2, 3, 7, 40, 257])
@pytest.mark.parametrize("levels", [1, 3, None])  # integer values: many ties … continuous
def test_auroc_matches_sklearn_with_ties(n, levels, dtype):
    values, labels = random_case(n, 40, levels, n * 7 + (levels or 0))
    values = values.to(dtype)
    ours = auroc(values, labels)
    assert ours.dtype == torch.float64
    y = labels.numpy().astype(int)
    reference = [sklearn_metrics.roc_auc_score(y, values[:, j].double().numpy()) for j in range(values.shape[1])]
    np.testing.assert_allclose(ours.numpy(), reference, rtol=0, atol=1e-12)
    assert ours[0] == 0.5 and ours[1] == 0.5  # all tied: half of every pair


@pytest.mark.parametrize("budget", [1, 96 * 30 * 7, 1 << 30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_scores_equal_unchunked_bitwise(budget, dtype):
    ties, labels = random_case(30, 60, 3, 5)
    continuous, _ = random_case(30, 41, None, 6)
    values = torch.cat([ties, continuous], dim=1).to(dtype)
    whole = auroc(values, labels)
    chunked = two_class_scores("auroc", values, labels, budget_bytes=budget)
    assert chunked.dtype == torch.float64 and torch.equal(whole, chunked)
    for absolute in (False, True):
        whole = mean_difference(values, labels, absolute=absolute)
        chunked = chunked_scores(partial(mean_difference, absolute=absolute), METHODS["mean-diff"].bytes_per_element, values, labels,
                                 budget_bytes=budget)
        assert chunked.dtype == torch.float64 and torch.equal(whole, chunked)


def test_auroc_extremes_and_errors():
    labels = torch.tensor([True, True, False, False, False])
    values = torch.tensor([[5.0, 0.0], [4.0, 1.0], [1.0, 2.0], [0.0, 3.0], [2.0, 4.0]])
    assert auroc(values, labels).tolist() == [1.0, 0.0]
    with pytest.raises(UsageError, match="one positive and one negative"):
        auroc(values, torch.ones(5, dtype=torch.bool))
    with pytest.raises(UsageError, match="one positive and one negative"):
        mean_difference(values, torch.zeros(5, dtype=torch.bool))
    with pytest.raises(UsageError, match="labels"):
        auroc(values, torch.ones(4, dtype=torch.bool))


# ---------------------------------------------------------------------------- mean difference


@pytest.mark.parametrize("levels", [2, None])
def test_mean_difference_matches_direct_formula(levels):
    values, labels = random_case(23, 17, levels, 3)
    signed = mean_difference(values, labels)
    absolute = mean_difference(values, labels, absolute=True)
    v, y = values.double().numpy(), labels.numpy()
    for j in range(v.shape[1]):
        pos = [float(x) for x, is_pos in zip(v[:, j], y) if is_pos]
        neg = [float(x) for x, is_pos in zip(v[:, j], y) if not is_pos]
        direct = sum(pos) / len(pos) - sum(neg) / len(neg)
        assert signed[j].item() == pytest.approx(direct, abs=1e-12)
        assert absolute[j].item() == pytest.approx(abs(direct), abs=1e-12)


# ---------------------------------------------------------------------------- registry


def test_registry_two_class_methods_agree_with_their_functions():
    values, labels = random_case(20, 33, 3, 11)
    assert DEFAULT_METHOD == "ap" and set(METHODS) == {"ap", "auroc", "mean-diff", "lape"}
    assert torch.equal(two_class_scores("ap", values, labels), average_precision(values, labels))
    assert torch.equal(two_class_scores("auroc", values, labels), auroc(values, labels))
    assert torch.equal(two_class_scores("mean-diff", values, labels), mean_difference(values, labels))
    assert METHODS["lape"].kind == "multi-class" and METHODS["lape"].selects == ("top",)
    with pytest.raises(UsageError, match="not computed from the per-prompt matrix"):
        two_class_scores("lape", values, labels)
    with pytest.raises(UsageError, match="unknown method"):
        two_class_scores("gini", values, labels)


def test_scores_are_deterministic_run_to_run():
    for method in ("ap", "auroc", "mean-diff"):
        runs = [two_class_scores(method, *random_case(64, 200, 4, 9), budget_bytes=4096) for _ in range(2)]
        assert torch.equal(runs[0], runs[1]), method
    counts, tokens = random_counts(6, 300, 9, seed=4)
    first, second = lape(activation_probability(counts, tokens)), lape(activation_probability(counts, tokens))
    assert torch.equal(first.entropy, second.entropy) and torch.equal(first.selected, second.selected)


# ---------------------------------------------------------------------------- AurA


def test_dampen_factors_follow_aura():
    scores = torch.tensor([0.0, 0.25, 0.5, 0.5000001, 0.75, 0.9, 1.0], dtype=torch.float64)
    for alpha in (1.0, 0.5, 0.0):
        expected = [1 - alpha * (2 * a - 1) if a > 0.5 else 1.0 for a in scores.tolist()]
        np.testing.assert_allclose(dampen_factors(scores, alpha).numpy(), expected, rtol=0, atol=1e-15)
    assert dampen_factors(scores).tolist()[-1] == 0.0  # a perfect separator is silenced
    high = dampen_factors(scores, threshold=0.8).tolist()
    assert high[:5] == [1.0] * 5 and high[5:] == pytest.approx([0.2, 0.0], abs=1e-15)
    with pytest.raises(UsageError, match="alpha"):
        dampen_factors(scores, 1.5)
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        dampen_factors(torch.tensor([float("nan")]))


# ---------------------------------------------------------------------------- LAPE


def random_counts(relations: int, neurons: int, max_tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer counts, mostly low with a tail of high ones: many equal probabilities, zeros,
    neurons never active, specific neurons, identical neurons and permuted ones (exact ties)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(max_tokens // 2, max_tokens + 1, (relations,), generator=g)
    tokens[1] = tokens[0]  # relations 0 and 1 swapped give the same probabilities, permuted
    counts = (torch.rand(relations, neurons, generator=g) ** 3 * (tokens[:, None] + 1)).floor().long()
    counts = torch.minimum(counts, tokens[:, None])
    specific = torch.arange(30, 60)
    counts[:, specific] = 0
    counts[specific % relations, specific] = (tokens[specific % relations] * 0.9).long()  # active on one relation only
    counts[:, 5] = 0  # never active
    counts[:, 6] = counts[:, 7] = counts[:, 8]  # identical neurons
    counts[:, 60:90] = counts[:, 90:120]
    counts[0, 60:90], counts[1, 60:90] = counts[1, 90:120], counts[0, 90:120]  # permuted neurons: the same entropy
    return counts, tokens


def reference_lape(p: np.ndarray, top_rate: float, filter_rate: float, bar_ratio: float):
    """Tang et al.'s identify.py one neuron at a time, in plain Python."""
    relations, neurons = p.shape
    entropy = []
    for n in range(neurons):
        column = [float(x) for x in p[:, n]]
        total = sum(column)
        normed = [x / total if total > 0 else 0.0 for x in column]
        entropy.append(-sum(q * math.log(q) for q in normed if q > 0))
    flat = sorted(float(x) for x in p.flatten())

    def kth(rate):
        return flat[min(max(round(len(flat) * rate), 1), len(flat)) - 1]

    filter_value, bar = kth(filter_rate), kth(bar_ratio)
    kept = [any(p[r, n] > filter_value for r in range(relations)) for n in range(neurons)]
    ranked = sorted((e, n) for n, e in enumerate(entropy) if kept[n])  # ties: lower index first
    chosen = {n for _, n in ranked[: round(neurons * top_rate)]}
    assigned = np.array([[kept[n] and p[r, n] > bar for n in range(neurons)] for r in range(relations)])
    selected = np.array([[assigned[r, n] and n in chosen for n in range(neurons)] for r in range(relations)])
    return np.array(entropy), np.array(kept), assigned, selected


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rates", [(0.01, 0.95, 0.95), (0.2, 0.5, 0.8), (0.5, 0.9, 0.3)])
def test_lape_matches_tang_per_neuron(seed, rates):
    counts, tokens = random_counts(5, 400, 40, seed)
    p = activation_probability(counts, tokens)
    assert torch.equal(p, counts.double() / tokens.double()[:, None])
    ours = lape(p, top_rate=rates[0], filter_rate=rates[1], activation_bar_ratio=rates[2])
    entropy, kept, assigned, selected = reference_lape(p.numpy(), *rates)
    np.testing.assert_allclose(ours.entropy.numpy(), entropy, rtol=0, atol=1e-12)
    assert ours.entropy[5] == 0.0 and bool((ours.entropy[30:60] == 0.0).all())
    assert ours.entropy[6] == ours.entropy[7] == ours.entropy[8] and torch.equal(ours.entropy[60:90], ours.entropy[90:120])
    assert bool(ours.selected.any()) and not bool(ours.kept.all())  # not a vacuous case
    assert ours.kept.tolist() == kept.tolist()
    assert ours.assigned.tolist() == assigned.tolist()
    assert ours.selected.tolist() == selected.tolist()
    scores = lape_scores(p, top_rate=rates[0], filter_rate=rates[1], activation_bar_ratio=rates[2])
    for r in range(p.shape[0]):  # the faithful set is the top-|set| of the relation's score
        size = int(selected[r].sum())
        top = torch.argsort(scores[r], descending=True, stable=True)[:size]
        assert sorted(top.tolist()) == np.flatnonzero(selected[r]).tolist()
        assert torch.equal(scores[r][assigned[r]], -ours.entropy[assigned[r]])
        assert bool(torch.isneginf(scores[r][~torch.from_numpy(assigned[r])]).all())


def test_lape_entropy_is_permutation_invariant_bitwise():
    g = torch.Generator().manual_seed(3)
    p = torch.rand(12, 50, generator=g, dtype=torch.float64)
    shuffled = p[torch.randperm(12, generator=g)]
    assert torch.equal(lape_entropy(p), lape_entropy(shuffled))
    uniform = torch.full((4, 1), 0.3, dtype=torch.float64)
    assert lape_entropy(uniform).item() == pytest.approx(math.log(4), abs=1e-15)


def test_lape_input_errors():
    with pytest.raises(UsageError, match="0 ≤ active ≤ tokens"):
        activation_probability(torch.tensor([[3, 1]]), torch.tensor([2]))
    with pytest.raises(UsageError, match="tokens > 0"):
        activation_probability(torch.tensor([[0, 0]]), torch.tensor([0]))
    with pytest.raises(UsageError, match="one token count per relation"):
        activation_probability(torch.tensor([[0, 0]]), torch.tensor([1, 2]))
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        lape(torch.tensor([[1.5]]))
    with pytest.raises(UsageError, match="top_rate"):
        lape(torch.zeros(2, 2), top_rate=2.0)


def test_lape_site_scores_put_gate_neurons_on_their_site():
    layout = ModelShape(num_layers=2, hidden_size=3, intermediate_size=4)
    per_gate = torch.arange(8, dtype=torch.float64).unsqueeze(0)  # [1 relation, L·I]
    flat = lape_site_scores(layout, per_gate)
    parts = layout.split(flat[0])
    assert parts[(0, "gate_proj")].tolist() == [0, 1, 2, 3] and parts[(1, "gate_proj")].tolist() == [4, 5, 6, 7]
    assert all(bool(torch.isneginf(parts[(layer, s)]).all()) for layer in (0, 1) for s in ("up_proj", "down_proj"))
    assert layout.split(lape_site_scores(layout, per_gate, "up_proj", fill=0.0)[0])[(1, "up_proj")].tolist() == [4, 5, 6, 7]
    with pytest.raises(UsageError, match="intermediate width"):
        lape_site_scores(layout, per_gate, "down_proj")


# ---------------------------------------------------------------------------- the counting pass


def test_active_counts_match_per_prompt_reference():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(config).eval().double()
    layout = ModelShape(num_layers=2, hidden_size=16, intermediate_size=24)
    g = torch.Generator().manual_seed(1)
    encoded = [torch.randint(4, 40, (int(length),), generator=g).tolist() for length in torch.randint(1, 9, (7,), generator=g)]
    groups = [0, 2, 2, 1, 0, 2, 1]
    counts, tokens = active_counts(model, encoded, groups, 3, layout, batch_size=3, pad_id=0, progress=False)
    assert counts.dtype == torch.int64 and counts.shape == (3, 2 * 24)
    assert tokens.tolist() == [sum(len(encoded[i]) for i, gr in enumerate(groups) if gr == r) for r in range(3)]
    # reference: each prompt alone (no padding), gate outputs captured, act_fn > 0 counted per token
    expected = np.zeros((3, 48), dtype=np.int64)
    mlps = [layer.mlp for layer in model.model.layers]
    captured: dict[int, torch.Tensor] = {}
    handles = [m.gate_proj.register_forward_hook(lambda mod, a, out, i=i: captured.__setitem__(i, out)) for i, m in enumerate(mlps)]
    try:
        with torch.no_grad():
            for prompt, group in zip(encoded, groups):
                model(input_ids=torch.tensor([prompt]))
                for layer, mlp in enumerate(mlps):
                    active = (mlp.act_fn(captured[layer][0]) > 0).numpy()
                    for t in range(len(prompt)):
                        for j in range(24):
                            expected[group, layer * 24 + j] += int(active[t, j])
    finally:
        for handle in handles:
            handle.remove()
    assert counts.numpy().tolist() == expected.tolist()
    again = active_counts(model, encoded, groups, 3, layout, batch_size=2, pad_id=0, progress=False)
    assert torch.equal(again[0], counts) and torch.equal(again[1], tokens)
    lape(activation_probability(counts, tokens))  # the pass feeds the formula


def test_identify_offers_the_two_class_methods():
    """identify.config names them without importing torch; the registry is the source."""
    from relspec_lmeval.identify.config import IDENTIFY_METHODS

    assert IDENTIFY_METHODS == tuple(METHODS)
