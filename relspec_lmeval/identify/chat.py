"""Prompts for instruct and chat models, exactly as ``lm_eval --apply_chat_template`` builds them.

Identification must see the text the evaluation sees. Rather than re-implementing lm-eval's
prompt assembly, the prompts are built by lm-eval's own ``Task.fewshot_context`` of one of our
recall tasks (all of them render ``{{prompt}}``), with the chat template applied the way
``HFLM.apply_chat_template`` applies it. Encoding then follows ``HFLM.tok_batch_encode``: a
string that starts with the BOS text gets no second BOS (``tokens.encode_prompts``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache, partial
from typing import Any

from relspec_lmeval.errors import ModelError
from relspec_lmeval.util.hashing import json_sha256

__all__ = ["chat_prompts", "chat_record"]

_TEMPLATE_TASK = "relation_recall_synthetic_det_company_ceo"  # any recall task (doc_to_text "{{prompt}}"); its data ships with the package


def _render(tokenizer: Any, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """``HFLM.apply_chat_template`` (lm-eval 0.4.13), without its model object."""
    import jinja2

    kwargs = {"tokenize": False, "add_generation_prompt": add_generation_prompt, "continue_final_message": not add_generation_prompt}
    try:
        return tokenizer.apply_chat_template(chat_history, **kwargs)
    except jinja2.exceptions.TemplateError:  # lm-eval's fallback: templates that reject a system turn
        return tokenizer.apply_chat_template([m for m in chat_history if m["role"] != "system"], **kwargs)


@lru_cache(maxsize=1)
def _template_task() -> Any:
    """The recall task whose ``fewshot_context`` builds the prompts, loaded once per process.

    lm-eval warns on every load that the task's ``metadata`` could come from ``--metadata``;
    that is noise here (one line per relation of the pool otherwise), so it is silenced."""
    import logging

    from lm_eval.tasks import TaskManager

    from relspec_lmeval.util.resources import task_dir

    logger = logging.getLogger("lm_eval.api.task")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return TaskManager(include_path=task_dir(), include_defaults=False).load([_TEMPLATE_TASK])["tasks"][_TEMPLATE_TASK]
    finally:
        logger.setLevel(level)


def chat_prompts(docs: Sequence[dict], tokenizer: Any, system_instruction: str | None = None) -> list[str]:
    """Each doc's prompt as the chat-templated string lm-eval sends to the model.

    Raises ``ModelError`` when the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("--apply-chat-template: this model's tokenizer has no chat template")
    task = _template_task()
    template = partial(_render, tokenizer)
    return [
        task.fewshot_context(dict(doc), 0, system_instruction=system_instruction, apply_chat_template=True, chat_template=template)
        for doc in docs
    ]


def chat_record(tokenizer: Any, system_instruction: str | None) -> dict[str, Any]:
    """What a set's metadata says about the prompts' chat form (``relspec reproduce`` reads it)."""
    return {"apply_chat_template": True, "system_instruction": system_instruction,
            "template_sha256": json_sha256(tokenizer.chat_template)}
