"""The lm-eval task configs: generated files, indexing, loading, and a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import LRE_DIR, load_script

from relspec_lmeval.data.relations import RELATIONS, build_docs, docs_hash
from relspec_lmeval.util.resources import task_dir

pytestmark = pytest.mark.usefixtures("lre_env")  # every test reads the local LRE copy


REPO = Path(__file__).resolve().parents[1]
LANG_GROUPS = [f"relation_recall_{lang}" for lang in ("de", "es", "fr", "zh", "ja")]
GROUPS = ["relation_recall", "relation_recall_det", "relation_recall_t2", "relation_ppl", *LANG_GROUPS]


def _make_tasks():
    return load_script("make_tasks")


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=task_dir(), include_defaults=False)


# ---------------------------------------------------------------- generated files


def test_committed_task_files_equal_the_generator_output():
    folder = Path(task_dir())
    on_disk = {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8") for p in folder.rglob("*.yaml")}
    assert on_disk == _make_tasks().render(), "run `python scripts/make_tasks.py` and commit tasks/"


def test_generator_check_mode_and_stale_files(tmp_path):
    make_tasks = _make_tasks()
    assert make_tasks.main(["--out", str(tmp_path)]) == 0
    assert make_tasks.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "mine.yaml").write_text("task: mine\n")  # hand-written: kept
    (tmp_path / "relation_recall" / "relation_recall_old.yaml").write_text(make_tasks.HEADER + "task: old\n")
    assert make_tasks.main(["--check", "--out", str(tmp_path)]) == 1
    make_tasks.main(["--out", str(tmp_path)])
    assert (tmp_path / "mine.yaml").exists()
    assert not (tmp_path / "relation_recall" / "relation_recall_old.yaml").exists()


# ---------------------------------------------------------------- indexing and loading


def test_groups_and_subtasks_are_indexed(task_manager):
    assert set(GROUPS) <= set(task_manager.all_groups)
    for group in GROUPS:
        for relation in RELATIONS:
            assert f"{group}_{relation}" in task_manager.all_subtasks


def _docs(task):
    return [dict(doc) for doc in task.test_docs()]


def test_groups_load_with_their_docs(task_manager):
    loaded = task_manager.load(["relation_recall", "relation_recall_t2", "relation_ppl", *LANG_GROUPS])
    for name, group in loaded["groups"].items():
        assert name in GROUPS
        assert loaded["group_map"][name] == [f"{name}_{relation}" for relation in RELATIONS]
        assert [(m.metric, m.weight_by_size) for m in group.aggregate_metric_list] == (
            [("word_perplexity", False), ("byte_perplexity", False), ("bits_per_byte", False)]
            if name == "relation_ppl"
            else [("acc", False), ("acc_lenient", False)]
        )
    by_name = loaded["tasks"]
    assert len(by_name) == 8 * 12
    for relation in RELATIONS:
        english = _docs(by_name[f"relation_recall_{relation}"])
        assert len(english) == 50 and docs_hash(english) == docs_hash(build_docs(relation))
        for group in ["relation_recall_t2", *LANG_GROUPS]:
            other = _docs(by_name[f"{group}_{relation}"])
            assert [(d["subject"], d["golds"]) for d in other] == [(d["subject"], d["golds"]) for d in english]
        assert 1 <= len(_docs(by_name[f"relation_ppl_{relation}"])) <= 50
    task = by_name["relation_recall_company_ceo"]
    assert task.OUTPUT_TYPE == "generate_until"
    assert task.config.generation_kwargs == {"until": ["\n"], "max_gen_toks": 2, "do_sample": False}
    assert task.doc_to_text(_docs(task)[0]) == "Simon & Schuster's CEO is? Answer:"


def test_det_task_matches_build_docs(task_manager):
    task = task_manager.load("relation_recall_det_person_father")["tasks"]["relation_recall_det_person_father"]
    assert docs_hash(_docs(task)) == docs_hash(build_docs("person_father", "det"))


def test_relative_data_dir_is_anchored_to_the_package(monkeypatch, tmp_path):
    """A task's data_dir ("models/<world>") names a package resource, whatever the CWD."""
    from relspec_lmeval.data.relations import custom_dataset
    from relspec_lmeval.util import resources as _resources

    world = tmp_path / "models" / "world"
    world.mkdir(parents=True)
    samples = [{"subject": f"Zorb {i}", "object": f"Quux {i % 4}"} for i in range(20)]
    rel = {"prompt_templates": ["{} was made by"], "prompt_templates_zs": [], "samples": samples}
    (world / "zorb_maker.json").write_text(json.dumps(rel))
    real = _resources.resource_dir
    monkeypatch.setattr(_resources, "resource_dir", lambda name: tmp_path / name if name == "models" else real(name))
    monkeypatch.chdir(tmp_path / "models")  # "models/world" is not a path from here
    data = custom_dataset(relation="zorb_maker", data_dir="models/world", lre_dir="/ignored", version=1.0)
    assert len(data["test"]) == 10 and data["test"][0]["prompt"].endswith(" was made by? Answer:")


# ---------------------------------------------------------------- a real lm-eval run


def _parrot_llama(path: Path, answer: str = " Richard\n") -> Path:
    """A tiny random Llama whose every next token is ``answer``.

    Same embedding for every token and zeroed attention/MLP outputs make the last hidden
    state constant, so a lm_head row along it wins every argmax. The newline ends the
    answer through the tasks' ``until``; greedy 2-token generation gives " Richard".
    """
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(["The CEO of Simon & Schuster is? Answer: Richard. London, Paris"], trainer)
    tok.add_tokens([AddedToken(answer, normalized=False)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=len(fast), max_position_embeddings=256,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:] = model.model.embed_tokens.weight[0]
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[fast.convert_tokens_to_ids(answer)] = model.model.embed_tokens.weight[0]
    model.save_pretrained(path)
    return path


def test_simple_evaluate_runs_from_another_directory(monkeypatch, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model_dir = _parrot_llama(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RELSPEC_LRE_DIR")  # found only through --metadata lre_dir
    manager = TaskManager(include_path=task_dir(), include_defaults=False, metadata={"lre_dir": str(LRE_DIR)})
    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=8)
    out = simple_evaluate(
        model=lm,
        tasks=["relation_recall", "relation_ppl_company_hq"],
        limit=3,
        task_manager=manager,
        log_samples=True,
    )
    results = out["results"]
    ceo = out["samples"]["relation_recall_company_ceo"]
    assert [s["doc"]["golds"][0] for s in ceo] == ["Richard E. Snyder", "Daniel Zhang", "Jacques Aschenbroich"]
    assert [s["filtered_resps"][0] for s in ceo] == [" Richard"] * 3  # stopped at "\n", space kept
    assert [s["acc"] for s in ceo] == [1.0, 0.0, 0.0]
    assert results["relation_recall_company_ceo"]["acc,none"] == pytest.approx(1 / 3)
    subtasks = [results[f"relation_recall_{r}"]["acc,none"] for r in RELATIONS]
    assert results["relation_recall"]["acc,none"] == pytest.approx(sum(subtasks) / 12)
    ppl = results["relation_ppl_company_hq"]
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert math.isfinite(ppl[f"{metric},none"]) and ppl[f"{metric},none"] > 0
