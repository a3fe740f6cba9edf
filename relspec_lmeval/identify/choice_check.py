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
  (``tokens.encode_prompts``: the tokenizer's own special tokens, one BOS), and the
  continuation tokens are the whole's tokens after the context's length;
- the score is the summed log-probability of the continuation tokens; the doc is correct when
  the first arg-max is the gold (``numpy.argmax``'s tie rule).

Docs are batched by context length; each context runs once and its choices share its
key/value cache (``_doc_scores``). Under ``accelerate launch`` each process scores every
``world``-th batch and the scores are merged.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from relspec_lmeval.identify.activations import Processes, forward_kwargs, input_device
from relspec_lmeval.identify.tokens import encode_prompts, length_batches, pad_batch
from relspec_lmeval.util.progress import progress

__all__ = ["choice_correct", "choice_scores", "encode_pairs", "winner"]


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


def _cache_arg(model: nn.Module) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _sum_logprobs(logits: torch.Tensor, targets: Sequence[int]) -> float:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return float(logprobs.gather(1, torch.tensor(list(targets), device=logprobs.device)[:, None]).sum())


def _doc_scores(model: nn.Module, ctxs: Sequence[list[int]], conts: Sequence[list[list[int]]], pad_id: int) -> list[list[float]]:
    """Scores of every choice of a batch of docs, the context computed once per doc.

    The contexts run once (left-padded, explicit positions, the last position's logits: the
    first continuation token); continuations longer than one token then run on a copy of the
    key/value cache re-indexed to one row per choice. Equal to one forward per pair up to
    float rounding (the tests compare with lm-eval to 1e-4)."""
    import copy

    device = input_device(model)
    ids, mask = pad_batch(list(ctxs), pad_id, "left", device)
    # forward_kwargs: logits for the last position only (the first continuation token), here with the cache kept
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                **{**forward_kwargs(model), "use_cache": True})
    cache = getattr(out, "cache", None)  # transformers ≥5.2x names it cache
    cache = out.past_key_values if cache is None else cache
    if isinstance(cache, tuple):  # older transformers may return the legacy tuple form
        from transformers import DynamicCache

        cache = DynamicCache.from_legacy_cache(cache)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    scores = [[float(first[j, c[0]]) for c in cs] for j, cs in enumerate(conts)]
    longer = [(j, k) for j, cs in enumerate(conts) for k, c in enumerate(cs) if len(c) > 1]
    for start in range(0, len(longer), max(1, len(ctxs))):  # as many rows as the context batch
        part = longer[start : start + len(ctxs)]
        rows = torch.tensor([j for j, _ in part], device=device)
        tail_cache = copy.deepcopy(cache)
        tail_cache.batch_select_indices(rows)
        tails = [conts[j][k][:-1] for j, k in part]
        tail_ids, tail_mask = pad_batch(tails, pad_id, "right", device)
        positions = mask.sum(-1)[rows][:, None] + torch.arange(tail_ids.shape[1], device=device)[None]
        logits = model(input_ids=tail_ids, attention_mask=torch.cat([mask[rows], tail_mask], 1), position_ids=positions,
                       use_cache=True, **{_cache_arg(model): tail_cache}).logits
        for n, (j, k) in enumerate(part):
            cont = conts[j][k]
            scores[j][k] += _sum_logprobs(logits[n, : len(cont) - 1], cont[1:])
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
    ctxs, conts = [], []
    for context, doc in zip(contexts, docs):
        pairs = encode_pairs(tokenizer, [context] * len(doc["choices"]), [delimiter + c for c in doc["choices"]])
        ctxs.append(pairs[0][0])  # the same context tokens for every choice of the doc
        conts.append([cont for _, cont in pairs])
    per_doc: list[list[float] | None] = [None] * len(docs)
    mine = processes.mine(length_batches(ctxs, batch_size))
    show = show and processes.is_main
    with torch.inference_mode(), progress(sum(len(b) for b in mine), desc, show, leave=False) as bar:
        for rows in mine:
            for i, scores in zip(rows, _doc_scores(model, [ctxs[i] for i in rows], [conts[i] for i in rows], pad_id)):
                per_doc[i] = scores
            bar.update(len(rows))
    return [list(s) for s in processes.merge_lists(per_doc)]


def choice_correct(model: nn.Module, tokenizer: Any, contexts: Sequence[str], docs: Sequence[dict], **kwargs: Any) -> list[bool]:
    """Whether each doc's gold (``choices[target]``) has the first highest score (``choice_scores``' arguments)."""
    per_doc = choice_scores(model, tokenizer, contexts, docs, **kwargs)
    return [winner(s) == doc["target"] for s, doc in zip(per_doc, docs)]


def winner(scores: Sequence[float]) -> int:
    """The first index of the highest score (``numpy.argmax``, as lm-eval's ``acc``)."""
    return max(range(len(scores)), key=lambda c: (scores[c], -c))
