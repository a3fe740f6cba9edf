"""Prompts as token ids, and those ids as padded batches: what every pass of identification feeds the model.

Apart from ``identify.activations`` (the hooks and the passes) because the benchmarks and
``scripts/train_tiny.py`` feed their models exactly the batches identification does, with
the same BOS, order and padding, so that their numbers compare with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["encode_prompts", "length_batches", "pad_batch", "pad_token_id"]


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, as lm-eval's ``HFLM.tok_encode`` makes them for the recall tasks.

    The tokenizer's own special-token behaviour decides the BOS: Llama's and Gemma's add one
    (the paper's "BOS always prepended"), Qwen2's add none and lm-eval evaluates without one,
    so identification does too (a forced ``<|endoftext|>`` first cut Qwen2.5-Coder-0.5B's
    P^det recall of person_pro_sport from 3 in 16 to 2 in 268). A prompt that already starts
    with the BOS text (a chat template's output) is encoded without special tokens, as HFLM
    does, so it has one BOS, not two. A trailing EOS some tokenizers append is dropped.

    Args:
        tokenizer: a transformers tokenizer.
        prompts: the prompt texts.

    Returns:
        One list of token ids per prompt, in ``prompts`` order.

    Example:
        >>> from transformers import AutoTokenizer
        >>> from relspec_lmeval.identify.tokens import encode_prompts
        >>> from relspec_lmeval.modelio.load import resolve_pretrained
        >>> tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained("relspec-tiny"))
        >>> encode_prompts(tokenizer, ["Bo is", "<s>Bo is"])  # one BOS either way
        [[1, 254, 130], [1, 254, 130]]
    """
    bos_text = getattr(tokenizer, "bos_token", None)
    prompts = list(prompts)
    if bos_text and any(p.startswith(bos_text) for p in prompts):  # chat-templated: one call per prompt
        encoded = [tokenizer(p, add_special_tokens=not p.startswith(bos_text))["input_ids"] for p in prompts]
    else:
        encoded = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [list(ids[:-1]) if eos is not None and eos != bos and len(ids) > 1 and ids[-1] == eos else list(ids) for ids in encoded]


def length_batches(encoded: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Prompt positions grouped into batches of similar length (longest first; ties by position, so deterministic).

    Args:
        encoded: the prompts' token ids (``encode_prompts``).
        batch_size: prompts per batch (the last batch may be smaller).

    Returns:
        Batches of positions into ``encoded``.

    Example:
        >>> from relspec_lmeval.identify.tokens import length_batches
        >>> length_batches([[1], [1, 2, 3], [1, 2], [4, 5, 6]], 2)
        [[1, 3], [2, 0]]
    """
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, side: str, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids as one padded ``[rows, longest]`` batch and its attention mask.

    Args:
        rows: each prompt's token ids.
        pad_id: the id that fills the padding (``pad_token_id``).
        side: ``"left"`` (generation: every row ends at the last column) or ``"right"``.
        device: where the tensors go.

    Returns:
        ``(input_ids, attention_mask)``, both ``torch.long``; the mask is 1 on tokens, 0 on padding.

    Example:
        >>> from relspec_lmeval.identify.tokens import pad_batch
        >>> ids, mask = pad_batch([[5, 6, 7], [8]], 0, "left", "cpu")
        >>> ids.tolist(), mask.tolist()
        ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if side == "left":
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        else:
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS, else its UNK, else 0.

    Padding is masked out of every statistic, so any id works; the tokenizer's own is the one
    generation expects.

    Args:
        tokenizer: a transformers tokenizer (or anything with ``pad_token_id``, ``eos_token_id``, ``unk_token_id``).

    Returns:
        The id, an ``int``.

    Example:
        >>> from types import SimpleNamespace
        >>> from relspec_lmeval.identify.tokens import pad_token_id
        >>> pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=2, unk_token_id=None))
        2
    """
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0
