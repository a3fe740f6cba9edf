"""``relation_logprob``: the gold's log-probability, checked against the model computed by hand."""

from __future__ import annotations

import logging

import pytest
import torch

from relspec_lmeval.data.logprob import build_logprob_docs, custom_logprob_dataset, first_token, process_logprob_results
from relspec_lmeval.data.tasks import find_group, quiet_metadata_notes
from relspec_lmeval.errors import DataError
from relspec_lmeval.util.resources import resource_dir, task_dir

WORLD = "models/relspec-tiny/world"


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resource_dir("models") / "relspec-tiny"
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_first_token_is_one_token_and_the_first_of_the_gold(tiny):
    _, tok = tiny
    docs = build_logprob_docs("person_father", tok, data_dir=resource_dir("models") / "relspec-tiny" / "world")
    assert len(docs) == 50
    for doc in docs:
        golds = doc["golds"]
        assert doc["choices"][: len(golds)] == golds
        for gold, first in zip(golds, doc["choices"][len(golds) :]):
            context = tok(doc["prompt"], add_special_tokens=False)["input_ids"]
            whole = tok(doc["prompt"] + " " + gold, add_special_tokens=False)["input_ids"]
            scored = tok(doc["prompt"] + " " + first, add_special_tokens=False)["input_ids"]
            assert scored == whole[: len(context) + 1]  # exactly the gold's first token past the prompt
    assert any(d["choices"][0] != d["choices"][1] for d in docs)  # multi-token golds exist in this world


def test_first_token_falls_back_to_the_gold_when_the_prompt_merges_with_it():
    class Merging:  # a tokenizer whose last prompt token swallows the answer's start
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text.replace(": J", "#")]}

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    assert first_token(Merging(), "Answer:", "Japan") == "Japan"


def test_process_results_takes_the_best_gold():
    doc = {"golds": ["Paris", "Lyon"]}
    results = [(-3.0, False), (-1.5, True), (-0.5, False), (-0.7, True)]  # wholes, then first tokens
    assert process_logprob_results(doc, results) == {"logprob": -1.5, "logprob_first": -0.5, "greedy": 1.0}
    assert process_logprob_results({"golds": ["x"]}, [(-2.0, False), (-1.0, True)])["greedy"] == 0.0


def test_without_a_tokenizer_the_task_says_how_to_give_one():
    with pytest.raises(DataError, match="--metadata '\\{\"tokenizer\""):
        custom_logprob_dataset("person_father", data_dir=WORLD)


def test_groups_exist_where_recall_has_them():
    for name in ("relation_logprob", "relation_logprob_det", "relation_logprob_t2", "relation_logprob_de", "relation_logprob_synthetic"):
        assert find_group(name).kind == "logprob"


def _by_hand(model, tok, prompt: str, continuation: str) -> tuple[float, bool]:
    """log P(continuation | BOS + prompt) and whether each of its tokens is the argmax, computed directly."""
    context = tok(prompt)["input_ids"]  # with BOS, as lm-eval's HFLM encodes
    whole = tok(prompt + continuation)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].log_softmax(-1)
    rows = logits[len(context) - 1 : len(whole) - 1]
    target = torch.tensor(whole[len(context) :])
    return float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())


def test_lm_eval_run_equals_the_log_probability_computed_by_hand(tiny):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tok = tiny
    task = "relation_logprob_synthetic_company_hq"
    manager = TaskManager(include_path=task_dir(), include_defaults=False, metadata={"pretrained": "relspec-tiny"})
    lm = HFLM(pretrained=str(resource_dir("models") / "relspec-tiny"), device="cpu", batch_size=8)
    out = simple_evaluate(model=lm, tasks=[task], limit=6, task_manager=manager, log_samples=True)
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    assert len(samples) == 6
    for s in samples:
        doc = s["doc"]
        wholes = [_by_hand(model, tok, doc["prompt"], " " + g) for g in doc["golds"]]
        firsts = [_by_hand(model, tok, doc["prompt"], " " + f) for f in doc["choices"][len(doc["golds"]) :]]
        assert s["logprob"] == pytest.approx(max(w[0] for w in wholes), abs=1e-4)
        assert s["logprob_first"] == pytest.approx(max(f[0] for f in firsts), abs=1e-4)
        assert s["greedy"] == float(any(w[1] for w in wholes))
        assert s["logprob_first"] >= s["logprob"] - 1e-5  # a prefix is at least as likely
    mean = sum(s["logprob"] for s in samples) / len(samples)
    assert out["results"][task]["logprob,none"] == pytest.approx(mean)


def test_lm_evals_metadata_note_is_dropped_for_our_tasks_only(caplog):
    quiet_metadata_notes()
    quiet_metadata_notes()  # idempotent
    logger = logging.getLogger("lm_eval.api.task")
    assert sum(type(f).__name__ == "_OurMetadataNotes" for f in logger.filters) == 1
    note = ": Custom kwargs can be passed to `--metadata` in console (as json string) or to the TaskManager."
    with caplog.at_level(logging.WARNING, logger="lm_eval.api.task"):
        logger.warning("relation_recall_company_ceo" + note)
        logger.warning("someone_elses_task" + note)
        logger.warning("relation_recall_company_ceo: something else entirely")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["someone_elses_task" + note, "relation_recall_company_ceo: something else entirely"]
