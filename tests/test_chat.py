"""Instruct and chat models: identification builds each prompt exactly as
``lm_eval --apply_chat_template [--system_instruction]`` does, records it, and reproduce passes it on."""

from __future__ import annotations

import json

import pytest
from conftest import build_tiny_llama
from test_identify import write_lre_folder

from relspec_lmeval.cli import main as cli_main
from relspec_lmeval.data.relations import build_docs
from relspec_lmeval.identify.chat import chat_prompts
from relspec_lmeval.identify.tokens import encode_prompts
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.util.resources import task_dir

TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}answer :{% endif %}"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("chat-llama")
    build_tiny_llama(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_prompts_equal_what_lm_eval_sends(chat_model, lre_env, system):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    from relspec_lmeval.lm.hflm import RelspecHFLM

    task = "relation_recall_det_person_father"
    lm = RelspecHFLM(pretrained=str(chat_model), device="cpu", batch_size=4)
    out = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=task_dir(), include_defaults=False), limit=3,
                          log_samples=True, apply_chat_template=True, system_instruction=system)
    sent = {s["doc_id"]: s["arguments"][0][0] for s in out["samples"][task]}
    ours = chat_prompts(build_docs("person_father", "det")[:3], AutoTokenizer.from_pretrained(chat_model), system)
    assert [sent[i] for i in range(3)] == ours
    assert ours[0].startswith("<s>system : Be brief. user : ") if system else ours[0].startswith("<s>user : ")
    ids = encode_prompts(lm.tokenizer, ours)
    assert all(row[0] == lm.tokenizer.bos_token_id and row[1] != lm.tokenizer.bos_token_id for row in ids)  # one BOS, as lm-eval


def test_identify_records_the_chat_form_and_reproduce_uses_it(chat_model, tmp_path, lre_env):
    data = write_lre_folder(tmp_path / "data", subjects=10)
    out = tmp_path / "sets"
    argv = ["identify", "--model", str(chat_model), "--data", str(data), "--out", str(out), "--no-filter", "--quiet", "--k", "10",
            "--relations", "person_father,star_constellation", "--apply-chat-template", "--system-instruction", "Be brief."]
    assert cli_main(argv) == 0
    form = NeuronSet.load(out / "person_father.safetensors").metadata["parameters"]["chat_template"]
    assert form["apply_chat_template"] is True and form["system_instruction"] == "Be brief." and len(form["template_sha256"]) == 64
    plain = tmp_path / "plain"
    assert cli_main([*argv[:6], str(plain), *argv[7:-3]]) == 0  # the same without the chat form
    assert "chat_template" not in NeuronSet.load(plain / "person_father.safetensors").metadata["parameters"]

    from relspec_lmeval.experiments.plan import ReproduceConfig, prepare
    from relspec_lmeval.experiments.runner import lm_eval_command

    inp = prepare(ReproduceConfig(model=str(chat_model), neuron_sets=str(out), suite="lre", out=str(tmp_path / "r"),
                                  relations="person_father,star_constellation", seeds=1, ks=[5], limit=2, det_limit=2))
    assert inp.chat == form
    from relspec_lmeval.experiments.plan import build_plan, make_sets

    make_sets(inp)
    command = lm_eval_command(inp.cfg, build_plan(inp)[0], inp.chat)
    assert "--apply_chat_template" in command and "--system_instruction 'Be brief.'" in command


def test_system_instruction_needs_the_chat_template(chat_model, tmp_path, capsys):
    code = cli_main(["identify", "--model", str(chat_model), "--out", str(tmp_path / "o"), "--system-instruction", "x"])
    assert code == 2 and "--system-instruction goes with --apply-chat-template" in capsys.readouterr().err


def test_a_tokenizer_without_a_template_is_one_error(tiny_llama_dir, tmp_path, lre_env, capsys):
    data = write_lre_folder(tmp_path / "data", subjects=10)
    code = cli_main(["identify", "--model", str(tiny_llama_dir), "--data", str(data), "--out", str(tmp_path / "o"), "--no-filter",
                     "--quiet", "--k", "10", "--relations", "person_father,star_constellation", "--apply-chat-template"])
    assert code == 2 and "has no chat template" in capsys.readouterr().err
    assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == '["data"]'
