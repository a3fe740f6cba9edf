"""The recall tasks' metrics: the paper's prefix check, and a lenient one for big vocabularies.

``acc`` (the paper's): the stripped generation is a non-empty prefix of a gold. It depends on
the tokenizer: with gemma's 262k-token vocabulary " Antarctica." is one word token plus ".",
so two generated tokens end in punctuation and fail; " Microsoft Corporation" fails for
"Microsoft". ``acc_lenient`` also accepts those: trailing punctuation is dropped, and a
generation that is a gold followed by a word boundary counts. Both are case-sensitive.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

__all__ = ["METRICS", "is_correct", "is_correct_lenient", "process_results"]

_TRAILING = re.compile(r"[\s.,;:!?\"'»)\]}…。、，！？]+$")


def is_correct(generated: str, golds: Iterable[str]) -> bool:
    """The paper's metric: the stripped generation is a non-empty prefix of a gold.

    Case-sensitive and character-based, so " Par" counts for "Paris" and "Paris." does not.
    """
    answer = generated.strip()
    return bool(answer) and any(gold.strip().startswith(answer) for gold in golds)


def is_correct_lenient(generated: str, golds: Iterable[str]) -> bool:
    """``is_correct`` after dropping trailing punctuation, or the gold followed by a word boundary.

    " Antarctica." and " Microsoft Corporation" (gold "Microsoft") count; " Parisian" does not.
    """
    answer = _TRAILING.sub("", generated.strip())
    if not answer:
        return False
    for gold in (g.strip() for g in golds):
        if gold.startswith(answer):
            return True
        if gold and answer.startswith(gold) and not answer[len(gold)].isalnum():
            return True
    return False


# name → check; identification's --correct-metric picks one, the recall tasks report all
METRICS: dict[str, Callable[[str, Iterable[str]], bool]] = {"acc": is_correct, "acc_lenient": is_correct_lenient}


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval ``process_results`` of the recall tasks: every metric of ``METRICS``."""
    return {name: float(check(results[0], doc["golds"])) for name, check in METRICS.items()}
