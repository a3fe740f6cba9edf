"""relation_choice: the recall prompts as multiple choice (data/choice.py and its task groups)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relspec_lmeval.data.choice import DISTRACTORS, build_choice_docs, chance_level
from relspec_lmeval.data.relations import RELATIONS, build_docs, relation_objects
from relspec_lmeval.util.resources import task_dir

WORLD = Path(__file__).resolve().parents[1] / "models" / "relspec-tiny" / "world"


@pytest.mark.parametrize("relation", RELATIONS)
def test_choice_docs_hold_the_gold_and_no_other_gold(lre_env, relation):
    docs = build_choice_docs(relation)
    plain = build_docs(relation)
    objects = set(relation_objects(relation))
    assert [d["prompt"] for d in docs] == [d["prompt"] for d in plain]  # the same P^eva prompts
    for doc in docs:
        choices = doc["choices"]
        assert choices[doc["target"]] == doc["golds"][0]
        assert len(choices) == len(set(choices)) == min(DISTRACTORS + 1, len(objects - set(doc["golds"])) + 1)
        assert not set(choices) - {doc["golds"][0]} & set(doc["golds"])  # never another gold of the subject
        assert set(choices) <= objects
    assert build_choice_docs(relation) == docs  # deterministic
    assert 0.1 - 1e-9 <= chance_level(docs) <= 0.5


def test_gold_position_varies(lre_env):
    targets = {d["target"] for d in build_choice_docs("company_hq")}
    assert len(targets) > 3


def test_choice_groups_through_lm_eval_on_relspec_tiny():
    """relspec-tiny knows its world: it picks the gold far above chance, and the task is what build_choice_docs gives."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    task = "relation_choice_synthetic_landmark_country"
    manager = TaskManager(include_path=task_dir(), include_defaults=False)
    assert {"relation_choice", "relation_choice_synthetic"} <= set(manager.all_groups)
    loaded = manager.load([task])["tasks"][task]
    assert [dict(d) for d in loaded.test_docs()] == build_choice_docs("landmark_country", data_dir=WORLD)
    out = simple_evaluate(model="relspec-hf", model_args="pretrained=relspec-tiny", tasks=[task], device="cpu", batch_size=50,
                          task_manager=manager)
    result = out["results"][task]
    chance = chance_level(build_choice_docs("landmark_country", data_dir=WORLD))
    assert result["acc,none"] >= 0.9 > 2 * chance and "acc_norm,none" in result
