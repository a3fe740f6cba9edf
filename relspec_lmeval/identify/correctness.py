"""Step 1 of identification: which P^det prompts the model answers, and every neuron's mean.

One pass over the P^det of the whole pool, in the same batches whatever is asked or cached:
greedy 2-token generation (the paper's check, ``correct_by="generate"``), whose prefill also sums
every neuron's prompt means; or, with ``correct_by="choice"``, a means-only pass and the
``relation_choice`` comparison (``choice_check``). Only a batch holding a prompt of the relations
asked for whose answer is not in the ``AnswerCache`` generates (every answer it gives is kept);
the others run the same prefill alone. So the means are over the whole pool and bit for bit the
same whichever relations are asked and whichever answers are cached, and a cached answer was
generated in the batch a fresh run would generate it in (at the same ``--batch-size``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from relspec_lmeval.data.choice import CHOICE_SEED, DISTRACTORS, with_choices
from relspec_lmeval.data.metrics import METRICS
from relspec_lmeval.identify.activations import generate_with_means
from relspec_lmeval.identify.answer_cache import AnswerCache, prompt_key
from relspec_lmeval.identify.choice_check import choice_scores, winner
from relspec_lmeval.identify.config import MAX_NEW_TOKENS, IdentifyConfig
from relspec_lmeval.identify.pool import Pool

__all__ = ["Answers", "check_answers", "check_name", "first_line"]


def first_line(text: str) -> str:
    """The generation up to the first newline (the recall tasks' ``until``)."""
    return text.split("\n", 1)[0]


def check_name(cfg: IdentifyConfig) -> str:
    """The check as the cache and the metadata name it."""
    if cfg.correct_by == "choice":
        return f"choice/{CHOICE_SEED}/{DISTRACTORS}/{'chat' if cfg.apply_chat_template else 'plain'}"
    return f"greedy-{MAX_NEW_TOKENS}"


@dataclass
class Answers:
    correct: dict[str, list[bool]]
    means: torch.Tensor  # float32 [neurons], over the prompts of ``flat``
    flat: list[tuple[str, int]]  # every P^det prompt of the pool
    timings: dict[str, float] = field(default_factory=dict)
    cached: int = 0  # prompts whose answer came from the cache


def check_answers(
    cfg: IdentifyConfig, pool: Pool, selected: Sequence[str], model: Any, tokenizer: Any, shape: Any,
    encoded: dict[str, list[list[int]]], texts_of: dict[str, list[str]], run_batches: Callable[[Callable[[int], Any]], Any],
    processes: Any, pad: int, cache: AnswerCache | None,
) -> Answers:
    """Correctness of every P^det prompt of ``selected`` (others: True, never checked) and the means over the pool."""
    chosen = set(selected)
    flat = pool.flat()
    keys = [prompt_key(encoded[r][i]) for r, i in flat]
    generate = cfg.filter and cfg.correct_by == "generate"
    use_cache = cache is not None and generate
    known = {j: text for j, text in ((j, cache.get(key)) for j, key in enumerate(keys)) if text is not None} if use_cache else {}
    needed = [r in chosen and j not in known for j, (r, _) in enumerate(flat)]
    cached = sum(1 for j, (r, _) in enumerate(flat) if r in chosen and j in known)
    answers = Answers({r: [True] * len(docs) for r, docs in pool.docs.items()}, torch.zeros(0), flat, cached=cached)

    start = time.perf_counter()
    new, total = run_batches(lambda bs: generate_with_means(
        model, tokenizer, [encoded[r][i] for r, i in flat], shape, batch_size=bs, generate=generate, needed=needed,
        max_new_tokens=MAX_NEW_TOKENS, processes=processes, desc="filter + means" if generate else "means", progress=cfg.progress))
    answers.timings["filter_and_means" if generate else "means"] = time.perf_counter() - start
    answers.means = (total / len(flat)).to(torch.float32)
    if generate:
        fresh = {j: text for j, text in enumerate(new) if text is not None}
        if cache is not None and processes.is_main:
            cache.put({keys[j]: text for j, text in fresh.items()})
        texts = {**fresh, **known}  # a known answer is the record, whichever batch gave it
        check = METRICS[cfg.correct_metric]
        for j, (r, i) in enumerate(flat):
            if r in chosen:
                answers.correct[r][i] = check(first_line(texts[j]), pool.docs[r][i]["golds"])
    elif cfg.filter:  # --correct-by choice: the gold wins relation_choice's log-likelihood comparison
        start = time.perf_counter()
        for r in selected:
            answers.correct[r] = _choice_correct(cfg, pool, r, model, tokenizer, encoded, texts_of, run_batches, processes, pad,
                                                 cache, answers)
        answers.timings["choice_check"] = time.perf_counter() - start
    return answers


def _choice_correct(cfg: IdentifyConfig, pool: Pool, relation: str, model: Any, tokenizer: Any, encoded: dict, texts_of: dict,
                    run_batches: Callable, processes: Any, pad: int, cache: AnswerCache | None, answers: Answers) -> list[bool]:
    docs = with_choices(pool.docs[relation], pool.objects[relation])
    keys = [prompt_key(encoded[relation][i], doc["choices"]) for i, doc in enumerate(docs)]
    scores: dict[int, list[float]] = {}
    if cache is not None:
        scores = {i: s for i, s in ((i, cache.get(k)) for i, k in enumerate(keys)) if s is not None}
        answers.cached += len(scores)
    todo = [i for i in range(len(docs)) if i not in scores]
    if todo:
        new = run_batches(lambda bs: choice_scores(
            model, tokenizer, [texts_of[relation][i] for i in todo], [docs[i] for i in todo], chat=cfg.apply_chat_template,
            batch_size=bs, pad_id=pad, processes=processes, desc=f"choice check {relation}", show=cfg.progress))
        scores.update(zip(todo, new))
        if cache is not None and processes.is_main:
            cache.put({keys[i]: s for i, s in zip(todo, new)})
    return [winner(scores[i]) == doc["target"] for i, doc in enumerate(docs)]
