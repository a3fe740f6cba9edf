"""``identify --correct-by choice``: the choice check computes lm-eval's ``relation_choice`` numbers."""

from __future__ import annotations

import json

import pytest
from conftest import build_tiny_llama
from test_identify import PAPER_RELATIONS, WORDS, write_lre_folder

from relspec_lmeval.cli import main as cli_main
from relspec_lmeval.data.choice import build_choice_docs
from relspec_lmeval.identify.chat import chat_prompts
from relspec_lmeval.identify.choice_check import choice_correct, choice_scores
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.util.resources import task_dir

RELATION = "person_father"
TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}answer : {% endif %}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("choice-llama")
    build_tiny_llama(path, seed=3)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = TEMPLATE  # ends in a space: lm-eval moves it into the continuation
    tokenizer.save_pretrained(path)
    return path


def _two_word_objects() -> dict[tuple[str, str], str]:
    """Objects of 1 to 3 tokens for RELATION, so continuations of several tokens are scored too."""
    r = list(PAPER_RELATIONS).index(RELATION)  # write_lre_folder's subject names
    subjects = [f"{WORDS[j % 10]} {WORDS[(j + r) % 10]}" + (f" {WORDS[j // 10]}" if j >= 10 else "") for j in range(40)]
    return {(RELATION, s): " ".join(WORDS[(j + n) % 10].capitalize() for n in range(1 + j % 3)) for j, s in enumerate(subjects)}


@pytest.fixture(params=["one-token", "several-tokens"])
def world(request, tmp_path, lre_env, monkeypatch):
    """A small LRE-format folder that the tiny tokenizer covers word for word (no ties from unknown words)."""
    objects = _two_word_objects() if request.param == "several-tokens" else None
    folder = write_lre_folder(tmp_path / request.param, objects=objects, subjects=40)
    monkeypatch.setenv("RELSPEC_LRE_DIR", str(folder))
    return folder


def _lm_eval_scores(model_dir, chat: bool) -> list[list[float]]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from relspec_lmeval.lm.hflm import RelspecHFLM

    task = f"relation_choice_{RELATION}"
    lm = RelspecHFLM(pretrained=str(model_dir), device="cpu", batch_size=7)
    out = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=task_dir(), include_defaults=False),
                          log_samples=True, apply_chat_template=chat)
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return [[float(r[0]) for r in s["filtered_resps"]] for s in samples]


@pytest.mark.parametrize("chat", [False, True])
def test_scores_equal_lm_eval_multiple_choice(model_dir, world, chat):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    theirs = _lm_eval_scores(model_dir, chat)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    docs = build_choice_docs(RELATION, "eva", data_dir=world)
    contexts = chat_prompts(docs, tokenizer) if chat else [d["prompt"] for d in docs]
    ours = choice_scores(model, tokenizer, contexts, docs, chat=chat, batch_size=5, pad_id=3, show=False)
    assert len(ours) == len(theirs) == len(docs) > 3
    several = any(" " in c for d in docs for c in d["choices"])
    assert several == (world.name == "several-tokens")  # both paths of choice_check._doc_scores are compared
    for a, b in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-4)
    correct = choice_correct(model, tokenizer, contexts, docs, chat=chat, batch_size=5, pad_id=3, show=False)
    expected = [max(range(len(s)), key=lambda c, s=s: (s[c], -c)) == d["target"] for s, d in zip(theirs, docs)]
    assert correct == expected and 0 < sum(correct) < len(correct)  # a random model gets some, not all


def test_identify_correct_by_choice_takes_the_choice_winners_as_positives(model_dir, world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "sets"
    argv = ["identify", "--model", str(model_dir), "--data", str(world), "--out", str(out), "--quiet", "--k", "10",
            "--relations", RELATION, "--correct-by", "choice", "--min-positives", "1", "--batch-size", "4"]
    assert cli_main(argv) == 0
    meta = NeuronSet.load(out / f"{RELATION}.safetensors").metadata
    assert meta["parameters"]["filter"] == "choice" and meta["parameters"]["choice"]["distractors"] == 9
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    docs = build_choice_docs(RELATION, "det", data_dir=world)
    expected = choice_correct(model, tokenizer, [d["prompt"] for d in docs], docs, chat=False, batch_size=3, pad_id=3, show=False)
    assert meta["data"]["correct"] == meta["data"]["positives"] == sum(expected) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["relations"][RELATION]["correct"] == sum(expected)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--no-filter"], "--correct-by choice is a correctness check"),
     (["--correct-metric", "acc_lenient"], "--correct-metric goes with --correct-by generate")],
)
def test_correct_by_choice_conflicts_are_one_line(model_dir, world, tmp_path, capsys, extra, message):
    argv = ["identify", "--model", str(model_dir), "--data", str(world), "--out", str(tmp_path / "o"), "--quiet",
            "--correct-by", "choice", *extra]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()
