"""positions=all|prompt|last|generated: batched relspec-hf against a slow per-request reference.

The reference runs each request alone (batch 1, no padding, no KV cache) through a fresh
copy of the model with a hook that edits the set's channels at exactly the intended
positions; relspec-hf runs them through lm-eval's own batching (batch size 3, unequal
lengths, so right padding for loglikelihood, left padding for generation).
"""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from transformers import AutoModelForCausalLM

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.lm.ablation import AblationSpec
from relspec_lmeval.lm.hflm import RelspecHFLM
from relspec_lmeval.lm.positions import plan_chunks
from relspec_lmeval.modelio.sites import site_modules
from relspec_lmeval.sets.neuron_set import NeuronSet

WIDTHS = {"gate_proj": 64, "up_proj": 64, "down_proj": 32}
NEURONS = {(layer, site): list(range(layer, width, 2)) for layer in range(2) for site, width in WIDTHS.items()}
FACTORS = {key: torch.linspace(0.1, 0.9, len(v)) for key, v in NEURONS.items()}
MEANS = {key: torch.linspace(-0.5, 0.5, len(v)) for key, v in NEURONS.items()}
MODEL = {"num_layers": 2, "hidden_size": 32, "intermediate_size": 64}
POSITIONS = ["all", "prompt", "last", "generated"]

LOGLIKELIHOOD = [
    ("the ceo of apple is", " the father of the company"),
    ("paris is a city in", " france"),
    ("paris is a city in", " europe"),  # same context, one token: lm-eval's logits cache serves both
    ("she plays", " the guitar and the piano"),
    ("who is the mother of the ceo of the company", " apple"),
    ("the ceo of", " apple is"),  # the same tokens as the next one, another prompt length
    ("the ceo of apple", " is"),
    ("the star is part of the", " constellation"),
]
# lm-eval 0.4.13's logits cache puts requests 5 and 6 in one group (same context + continuation[:-1])
# and gathers request 6's one token from the group's first continuation position, not its last;
# positions != all never groups requests with different prompt lengths, so it scores both right.
MERGED = 6
GENERATE = ["the ceo of apple is", "paris is", "who is the mother of the ceo of the company", "she plays the", "tennis"]
ROLLING = ["the ceo of apple is the father of the company", "paris is a city", "she plays the guitar and the piano in asia"]


@pytest.fixture(scope="module")
def set_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sets") / "half.safetensors"
    return NeuronSet(NEURONS, {"model": MODEL}, means=MEANS, factors=FACTORS).save(path)


def edit(selected: torch.Tensor, key, mode: str) -> torch.Tensor:
    if mode == "zero":
        return torch.zeros_like(selected)
    if mode == "scale":
        return selected * 0.3
    if mode == "dampen":
        return selected * FACTORS[key]
    return MEANS[key].expand_as(selected).clone()


class Reference:
    """A fresh copy of the model whose hooks edit the set's channels at ``self.where`` (a set of positions)."""

    def __init__(self, model_dir, mode: str, neurons: dict | None = None) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.where: set[int] = set()
        neurons = NEURONS if neurons is None else neurons
        for key, module in site_modules(self.model, neurons).items():
            module.register_forward_hook(self._hook(key, torch.tensor(neurons[key]), mode))

    def _hook(self, key, index, mode):
        def hook(module, args, out):
            assert out.shape[0] == 1  # one request, no padding
            for t in sorted(self.where):
                out[0, t, index] = edit(out[0, t, index], key, mode)
            return out
        return hook

    def logits(self, ids: list[int], where) -> torch.Tensor:
        self.where = set(where)
        with torch.no_grad():
            return self.model(torch.tensor([ids])).logits[0].float()


def intended(positions: str, prompt: int, length: int) -> range | list[int]:
    """The positions of an input of ``length`` tokens, the first ``prompt`` of them prompt, that get the edit."""
    return {"all": range(length), "prompt": range(prompt), "last": [prompt - 1] if prompt else [],
            "generated": range(prompt, length)}[positions]


def reference_loglikelihood(ref: Reference, lm, positions: str) -> list[tuple[float, bool]]:
    out = []
    for context, continuation in LOGLIKELIHOOD:
        ctx, cont = lm._encode_pair(context, continuation)
        ids = (ctx + cont)[:-1]
        logprobs = torch.log_softmax(ref.logits(ids, intended(positions, len(ctx), len(ids))), dim=-1)
        rows = logprobs[len(ctx) - 1 :]
        out.append((float(rows[torch.arange(len(cont)), torch.tensor(cont)].sum()), bool((rows.argmax(-1) == torch.tensor(cont)).all())))
    return out


def reference_generate(ref: Reference, lm, positions: str, steps: int) -> list[str]:
    out = []
    for prompt in GENERATE:
        ids = lm.tok_batch_encode([prompt])[0][0].tolist()
        start = len(ids)
        for _ in range(steps):
            nxt = int(ref.logits(ids, intended(positions, start, len(ids)))[-1].argmax())
            if nxt == lm.eot_token_id:
                break
            ids.append(nxt)
        out.append(lm.tok_decode(ids[start:]))
    return out


def reference_rolling(ref: Reference, lm, positions: str) -> list[float]:
    out = []
    for text in ROLLING:
        ids = [lm.prefix_token_id, *lm.tok_encode(text)]
        inp = ids[:-1]  # every input position is a prompt position
        logprobs = torch.log_softmax(ref.logits(inp, intended(positions, len(inp), len(inp))), dim=-1)
        out.append(float(logprobs[torch.arange(len(inp)), torch.tensor(ids[1:])].sum()))
    return out


def requests(kind: str, args: list) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def generate_args(steps: int) -> list[tuple]:
    return [(p, {"until": ["zzz"], "max_gen_toks": steps, "do_sample": False}) for p in GENERATE]


@pytest.mark.parametrize("positions", POSITIONS)
def test_positions_match_the_slow_reference(tiny_llama_dir, set_file, positions):
    lm = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=3, neuron_set=str(set_file), positions=positions)
    assert lm.relspec_info()["positions"] == positions
    assert lm.relspec_info()["applied_with"] == (["weights"] if positions == "all" else ["hooks"])
    ref = Reference(tiny_llama_dir, "zero")
    got = lm.loglikelihood(requests("loglikelihood", LOGLIKELIHOOD))
    want = reference_loglikelihood(ref, lm, positions)
    for i, ((g, g_greedy), (w, w_greedy)) in enumerate(zip(got, want, strict=True)):
        if positions == "all" and i == MERGED:
            continue  # HFLM's own path: lm-eval 0.4.13 scores this one at the wrong position (see MERGED)
        assert g == pytest.approx(w, abs=1e-4) and g_greedy == w_greedy
    steps = 5
    assert lm.generate_until(requests("generate_until", generate_args(steps))) == reference_generate(ref, lm, positions, steps)
    rolling = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in ROLLING]))
    assert rolling == pytest.approx(reference_rolling(ref, lm, positions), abs=1e-4)


ATTENTION = {(0, "q_proj"): [0, 3, 17], (0, "v_proj"): list(range(0, 32, 4)), (1, "k_proj"): [5], (1, "o_proj"): [2, 30],
             (1, "down_proj"): [1]}


@pytest.mark.parametrize("positions", ["all", "prompt", "last", "generated"])
def test_attention_sites_under_positions_match_the_slow_reference(tiny_llama_dir, tmp_path, positions):
    """Attention sites too: the mask starts at the set's first site (layer 0's q_proj, before any MLP runs)."""
    path = NeuronSet(ATTENTION, {"model": MODEL}).save(tmp_path / "attention.safetensors")
    lm = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=3, neuron_set=str(path), positions=positions)
    assert lm.relspec_info()["applied_with"] == (["weights"] if positions == "all" else ["hooks"])
    ref = Reference(tiny_llama_dir, "zero", ATTENTION)
    got = lm.loglikelihood(requests("loglikelihood", LOGLIKELIHOOD))
    want = reference_loglikelihood(ref, lm, positions)
    for i, ((g, g_greedy), (w, w_greedy)) in enumerate(zip(got, want, strict=True)):
        if positions == "all" and i == MERGED:
            continue
        assert g == pytest.approx(w, abs=1e-4) and g_greedy == w_greedy
    assert lm.generate_until(requests("generate_until", generate_args(4))) == reference_generate(ref, lm, positions, 4)
    plain = Reference(tiny_llama_dir, "zero", {})
    assert [x for x, _ in want] != pytest.approx([x for x, _ in reference_loglikelihood(plain, lm, positions)], abs=1e-4)


def test_the_positions_differ_from_each_other_and_from_the_original(tiny_llama_dir, set_file):
    """The comparison above means something: each choice of positions changes other numbers."""
    lm = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=3)
    ref = Reference(tiny_llama_dir, "zero")
    results = {p: [x for x, _ in reference_loglikelihood(ref, lm, p)] for p in POSITIONS}
    plain = [x for x, _ in lm.loglikelihood(requests("loglikelihood", LOGLIKELIHOOD))]
    for a in POSITIONS:
        assert results[a] != pytest.approx(plain, abs=1e-3)
        for b in POSITIONS:
            if a < b:
                assert results[a] != pytest.approx(results[b], abs=1e-3)
    generations = {p: tuple(reference_generate(ref, lm, p, 5)) for p in POSITIONS}
    assert len(set(generations.values())) >= 3


def test_lm_eval_run_records_positions(tiny_llama_dir, set_file, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval_helpers import write_smoke_tasks

    tasks = TaskManager(include_path=str(write_smoke_tasks(tmp_path / "tasks")), include_defaults=False)
    lm = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=4, neuron_set=str(set_file), positions="last", mode="dampen")
    out = simple_evaluate(model=lm, tasks=["relspec_smoke_gen", "relspec_smoke_ppl"], task_manager=tasks, device="cpu")
    info = out["config"]["relspec"]
    assert info["positions"] == "last" and info["mode"] == "dampen" and info["applied_with"] == ["hooks"]


@pytest.mark.parametrize(("mode", "positions"), [("scale", "prompt"), ("dampen", "last"), ("mean", "generated"), ("dampen", "prompt")])
def test_other_modes_under_a_position_mask(tiny_llama_dir, set_file, mode, positions):
    factor = 0.3 if mode == "scale" else None
    lm = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=3, neuron_set=str(set_file), positions=positions,
                     mode=mode, factor=factor)
    ref = Reference(tiny_llama_dir, mode)
    got = lm.loglikelihood(requests("loglikelihood", LOGLIKELIHOOD))
    for (g, _), (w, _) in zip(got, reference_loglikelihood(ref, lm, positions), strict=True):
        assert g == pytest.approx(w, abs=1e-4)
    assert lm.generate_until(requests("generate_until", generate_args(4))) == reference_generate(ref, lm, positions, 4)


def test_without_the_logits_cache_and_with_auto_batch_size(tiny_llama_dir, set_file):
    ref = Reference(tiny_llama_dir, "zero")
    for kwargs in ({"batch_size": 2, "logits_cache": False}, {"batch_size": "auto", "max_batch_size": 4}):
        lm = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=str(set_file), positions="prompt", **kwargs)
        got = lm.loglikelihood(requests("loglikelihood", LOGLIKELIHOOD))
        for (g, _), (w, _) in zip(got, reference_loglikelihood(ref, lm, "prompt"), strict=True):
            assert g == pytest.approx(w, abs=1e-4)


def test_plan_keeps_lm_evals_order_and_splits_ambiguous_rows():
    reqs = [(None, [5, 6], [7]), (None, [5], [6, 7]), (None, [1, 2, 3], [4]), (None, [1, 2, 3], [9]), (None, [8], [9])]
    chunks = plan_chunks(reqs, max_length=100, batch_size=2, grouped=True)
    # longest first; [1 2 3]+[4] and +[9] are one row (one key); [5 6]+[7] and [5]+[6 7] never share a batch
    assert [indices for indices, _ in chunks] == [[2, 3, 0], [4], [1]]
    assert [[(r.tokens, r.prompt) for r in rows] for _, rows in chunks] == [[((1, 2, 3), 3), ((5, 6), 2)], [((8,), 1)], [((5, 6), 1)]]
    ungrouped = plan_chunks(reqs, max_length=100, batch_size=2, grouped=False)
    assert [indices for indices, _ in ungrouped] == [[2, 3], [0, 4], [1]]
    truncated = plan_chunks([(None, [1, 2, 3, 4, 5], [6, 7])], max_length=4, batch_size=1, grouped=True)
    assert [(r.tokens, r.prompt) for r in truncated[0][1]] == [((3, 4, 5, 6), 3)]  # two prompt tokens cut from the left
    assert [(r.tokens, r.prompt) for r in plan_chunks(reqs[:1], 100, 1, grouped=True, rolling=True)[0][1]] == [((5, 6), 2)]


def test_recorded_and_errors(tiny_llama_dir, set_file):
    with pytest.raises(NeuronSetError, match="unknown positions 'promt'.*Did you mean 'prompt'"):
        RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=str(set_file), positions="promt")
    with pytest.raises(NeuronSetError, match="positions=last needs hooks"):
        RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=str(set_file), positions="last", ablate_with="weights")
    with pytest.raises(NeuronSetError, match="needs a PositionMask"):
        from relspec_lmeval.lm.ablation import apply_ablation

        apply_ablation(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), NeuronSet.load(set_file), AblationSpec(positions="prompt"))
    lm = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=str(set_file), positions="generated")
    with pytest.raises(RuntimeError, match="positions=generated: a forward pass outside lm-eval's"):
        lm.model(torch.tensor([[1, 5, 9]]))
    plain = RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", neuron_set=str(set_file))
    assert plain.relspec_info()["positions"] == "all" and plain.relspec_cache_salt != lm.relspec_cache_salt
    assert RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu").relspec_info()["positions"] is None


def test_beam_search_batched_equals_one_request_at_a_time(tiny_llama_dir, set_file):
    args = [(p, {"until": ["zzz"], "max_gen_toks": 4, "do_sample": False, "num_beams": 2}) for p in GENERATE]
    for positions in ("prompt", "last"):
        batched, alone = (RelspecHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=size, neuron_set=str(set_file),
                                      positions=positions) for size in (3, 1))
        assert batched.generate_until(requests("generate_until", args)) == alone.generate_until(requests("generate_until", args))
