"""``identify --correct-by choice``: positives are the prompts the model answers in ``relation_choice``.

For a model that knows few facts, greedy 2-token generation finds too few positives; the
multiple-choice check asks instead whether the gold object gets the highest log-likelihood
among the same choices ``relation_choice`` offers (``data.choice.with_choices``: the gold and
up to 9 other objects of the relation). It reproduces lm-eval 0.4.13's ``multiple_choice``
``acc`` request by request:

- the continuation is ``" " + choice`` (``""`` under ``--apply-chat-template``, where lm-eval
  drops the target delimiter), and trailing whitespace of the context moves into it
  (``TemplateLM._encode_pair``);
- context and context+continuation are tokenised the way the recall prompts are
  (``activations.encode_prompts``: the tokenizer's own special tokens, one BOS), and the
  continuation tokens are the whole's tokens after the context's length;
- the score is the summed log-probability of the continuation tokens; the doc is correct when
  the first arg-max is the gold (``numpy.argmax``'s tie rule).

Pairs are batched by length, right-padded; under ``accelerate launch`` each process scores
every ``world``-th batch and the scores are merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from relspec_lmeval.identify.activations import Processes, encode_prompts, input_device, length_batches, pad_batch
from relspec_lmeval.util.progress import progress

__all__ = ["choice_correct", "choice_scores", "encode_pairs"]


def encode_pairs(tokenizer: Any, contexts: Sequence[str], continuations: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) of each pair, as ``TemplateLM._encode_pair`` splits them."""
    moved_ctx, moved_cont = [], []
    for context, continuation in zip(contexts, continuations):
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        moved_ctx.append(context)
        moved_cont.append(continuation)
    ctx_ids = encode_prompts(tokenizer, moved_ctx)
    whole_ids = encode_prompts(tokenizer, [c + k for c, k in zip(moved_ctx, moved_cont)])
    return [(ctx, whole[len(ctx) :]) for ctx, whole in zip(ctx_ids, whole_ids)]


def _scores(model: nn.Module, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
            processes: Processes, desc: str, show: bool) -> list[float | None]:
    """Summed log-probability of each pair's continuation (this process's batches; None elsewhere)."""
    device = input_device(model)
    inputs = [(ctx + cont)[:-1] for ctx, cont in pairs]
    scores: list[float | None] = [None] * len(pairs)
    mine = processes.mine(length_batches(inputs, batch_size))
    with torch.inference_mode(), progress(sum(len(b) for b in mine), desc, show, unit="pair", leave=False) as bar:
        for rows in mine:
            ids, mask = pad_batch([inputs[i] for i in rows], pad_id, "right", device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            for j, i in enumerate(rows):
                ctx, cont = pairs[i]
                start = len(ctx) - 1  # the position whose logits predict the first continuation token
                logprobs = torch.log_softmax(logits[j, start : start + len(cont)].float(), dim=-1)
                target = torch.tensor(cont, device=logprobs.device)
                scores[i] = float(logprobs.gather(1, target[:, None]).sum())
            bar.update(len(rows))
    return scores


def choice_scores(
    model: nn.Module,
    tokenizer: Any,
    contexts: Sequence[str],
    docs: Sequence[dict],
    *,
    chat: bool,
    batch_size: int,
    pad_id: int,
    processes: Processes | None = None,
    desc: str = "choice check",
    show: bool = True,
) -> list[list[float]]:
    """Per doc, the log-likelihood of each of ``docs[i]["choices"]`` given ``contexts[i]`` (lm-eval's numbers)."""
    processes = processes or Processes()
    delimiter = "" if chat else " "
    owner, flat_ctx, flat_cont = [], [], []
    for i, (context, doc) in enumerate(zip(contexts, docs)):
        for choice in doc["choices"]:
            owner.append(i)
            flat_ctx.append(context)
            flat_cont.append(delimiter + choice)
    pairs = encode_pairs(tokenizer, flat_ctx, flat_cont)
    scores = processes.merge_lists(_scores(model, pairs, batch_size, pad_id, processes, desc, show and processes.is_main))
    per_doc: list[list[float]] = [[] for _ in docs]
    for i, score in zip(owner, scores):
        per_doc[i].append(float(score))
    return per_doc


def choice_correct(model: nn.Module, tokenizer: Any, contexts: Sequence[str], docs: Sequence[dict], **kwargs: Any) -> list[bool]:
    """Whether each doc's gold (``choices[target]``) has the first highest score (``choice_scores``' arguments)."""
    per_doc = choice_scores(model, tokenizer, contexts, docs, **kwargs)
    return [max(range(len(s)), key=lambda c, s=s: (s[c], -c)) == doc["target"] for s, doc in zip(per_doc, docs)]
