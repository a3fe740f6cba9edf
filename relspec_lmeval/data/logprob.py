"""``relation_logprob``: how much probability the model gives the gold object after the prompt.

Greedy 2-token recall is 0 or 1 per document; on a model that knows few facts (gemma-3-270m
answers 0–2 of 50 P^eva prompts of most relations) it has no power. The gold's
log-probability moves continuously, so an ablation that lowers it is visible even where no
answer flips. Each doc is a recall doc (same prompts, same split) whose lm-eval
``multiple_choice`` requests are, for every gold object of the subject, the whole object and
its first token as the model's tokenizer splits it (``" Jap"`` of ``" Japan"``); lm-eval
scores each continuation after the prompt (with its ``" "`` delimiter) by log-likelihood.

Per doc (``process_results``), over the subject's golds (the best one counts, as ``acc``
accepts any gold):

- ``logprob``: the largest log-probability of a whole gold object (nats);
- ``logprob_first``: the largest log-probability of a gold's first token (nats);
- ``greedy``: 1 when some gold is the greedy continuation, token by token.

The first token needs the model's tokenizer: it is loaded from the task metadata's
``tokenizer`` (``--metadata '{"tokenizer": NAME}'``) or else ``pretrained`` (lm-eval puts the
model args there on the command line), resolved as ``relspec-hf`` resolves models (shipped
and packaged GGUF names included). Which token it is is checked by encoding the prompt with
and without the gold, the way lm-eval's ``HFLM`` splits a request.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from relspec_lmeval.data.relations import as_dataset, build_docs, task_data_dir
from relspec_lmeval.errors import DataError

__all__ = ["METRICS", "build_logprob_docs", "custom_logprob_dataset", "first_token", "process_logprob_results"]

METRICS = ("logprob", "logprob_first", "greedy")


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str, revision: str | None, gguf_file: str | None) -> Any:
    from transformers import AutoTokenizer

    from relspec_lmeval.modelio.load import resolve_pretrained

    source = resolve_pretrained(name, gguf_file, progress=False)
    for noisy in ("transformers.tokenization_utils_base", "transformers.convert_slow_tokenizer"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return AutoTokenizer.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"relation_logprob: cannot load the tokenizer of {name!r} to find each gold's first token: {first}") from None


def first_token(tokenizer: Any, prompt: str, gold: str) -> str:
    """The text of the gold's first token after ``prompt`` (the choice, without lm-eval's " " delimiter).

    lm-eval scores ``prompt`` + ``" "`` + choice and keeps the tokens past the prompt's own;
    the returned text, so scored, is exactly one token, the first of ``" " + gold``.
    """
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt + " " + gold, add_special_tokens=False)["input_ids"]
    if whole[: len(context)] != context or len(whole) == len(context):
        return gold  # the prompt's last token merges with the answer: score the whole gold
    text = tokenizer.decode(whole[len(context) : len(context) + 1])
    choice = text[1:] if text.startswith(" ") else text
    again = tokenizer(prompt + " " + choice, add_special_tokens=False)["input_ids"]
    return choice if again == whole[: len(context) + 1] else gold


def build_logprob_docs(
    relation: str, tokenizer: Any, split: str = "eva", template_set: str = "main", language: str = "en",
    data_dir: str | Path | None = None,
) -> list[dict]:
    """The recall docs of ``relation`` with ``choices``: every gold, then every gold's first token."""
    docs = []
    for doc in build_docs(relation, split, template_set, language, data_dir):
        firsts = [first_token(tokenizer, doc["prompt"], gold) for gold in doc["golds"]]
        docs.append({**doc, "choices": [*doc["golds"], *firsts], "target": 0})
    return docs


def custom_logprob_dataset(
    relation: str, split: str = "eva", template_set: str = "main", language: str = "en", data_dir: str | None = None,
    lre_dir: str | None = None, tokenizer: str | None = None, pretrained: Any = None, revision: str | None = None,
    gguf_file: str | None = None, **_metadata: Any,
):
    """lm-eval ``custom_dataset`` for the log-probability tasks (same data rules as recall)."""
    name = tokenizer or pretrained
    if not isinstance(name, str) or not name:
        raise DataError(
            "relation_logprob needs the model's tokenizer to find each gold's first token: run it with "
            "--model_args pretrained=NAME, or pass --metadata '{\"tokenizer\": \"NAME\"}'"
        )
    loaded = _tokenizer(name, revision, None if tokenizer else gguf_file)
    return as_dataset(build_logprob_docs(relation, loaded, split, template_set, language, task_data_dir(data_dir, lre_dir, relation)))


def process_logprob_results(doc: dict, results: list) -> dict[str, float]:
    """lm-eval ``process_results``: ``results`` holds (log-likelihood, is_greedy) per choice."""
    golds = len(doc["golds"])
    whole, first = results[:golds], results[golds : 2 * golds]
    return {
        "logprob": max(float(ll) for ll, _ in whole),
        "logprob_first": max(float(ll) for ll, _ in first),
        "greedy": float(any(bool(greedy) for _, greedy in whole)),
    }
