"""``positions=``: at which token positions ``relspec-hf`` ablates, under lm-eval's batching.

* ``all`` (default, the paper's): every position; weight edits are possible.
* ``prompt``: the request's prompt tokens only: a loglikelihood request's context, a
  generation request's prompt (the prefill), every input token of a rolling (perplexity) window.
* ``last``: only the last prompt token (the position that predicts the first answer token).
* ``generated``: only the answer tokens: a loglikelihood request's continuation tokens, the
  tokens ``generate`` produces (each is ablated where it is the input of a decoding step).

A weight edit changes every position, so these masks work through forward hooks: a forward
pre-hook on the set's first site (the first of them to run in every forward pass) sets ``PositionMask.current``
for that pass, and the site hooks of ``lm.ablation`` apply their edit where it is true.
``RelspecHFLM`` says what each pass holds (``rows`` for ``_model_call``, ``generating`` for
``_model_generate``); a pass outside those (a direct ``model(ids)``) is an error, never a guess.

Loglikelihood requests reach the model right-padded, several per row batch, and lm-eval's
``_loglikelihood_tokens`` never tells ``_model_call`` which row is which. ``plan_chunks``
therefore cuts the requests into batches itself, in lm-eval's own order (sorted by
``(-len(tokens), tokens)``, one row per ``context + continuation[:-1]`` when lm-eval's logits
cache is on), gives lm-eval one batch per call, and ``rows`` checks every row's tokens against
the plan before the pass (a mismatch is an error). Two requests with the same row but another
prompt length (``[a b]+[c]`` and ``[a]+[b c]``), which lm-eval would merge, go to different batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.util.suggest import did_you_mean

__all__ = ["POSITIONS", "PositionMask", "Row", "check_positions", "plan_chunks"]

POSITIONS = ("all", "prompt", "last", "generated")


def check_positions(positions: str) -> str:
    if positions not in POSITIONS:
        raise NeuronSetError(
            f"unknown positions {positions!r}; choose one of {', '.join(POSITIONS)}.{did_you_mean(str(positions), POSITIONS)}"
        )
    return positions


@dataclass(frozen=True)
class Row:
    """One row of a loglikelihood batch: its input tokens and how many of them are prompt."""

    tokens: tuple[int, ...]
    prompt: int


def _row(context: Sequence[int], continuation: Sequence[int], max_length: int, rolling: bool) -> Row:
    """The row lm-eval builds, ``(context + continuation)[-(max_length + 1):][:-1]``, and its prompt length."""
    full = list(context) + list(continuation)
    tokens = tuple(full[-(max_length + 1):][:-1])
    start = max(0, len(full) - (max_length + 1))  # tokens cut from the left
    return Row(tokens, len(tokens) if rolling else max(0, min(len(tokens), len(context) - start)))


def plan_chunks(
    requests: Sequence[tuple], max_length: int, batch_size: int, *, grouped: bool, rolling: bool = False
) -> list[tuple[list[int], list[Row]]]:
    """Batches of ``requests`` (lm-eval's ``(strings, context, continuation)`` triples): for each, the
    request indices and the rows lm-eval will build from them, in its order."""
    batch_size = max(1, int(batch_size))
    rows = [_row(r[1], r[2], max_length, rolling) for r in requests]
    keys = [tuple(r[1]) + tuple(r[2][:-1]) for r in requests]  # lm-eval's group key (one row per key)
    order = sorted(range(len(requests)), key=lambda i: (-(len(keys[i]) + 1), keys[i] + tuple(requests[i][2][-1:])))  # its sort
    chunks: list[tuple[list[int], list[Row]]] = []
    pending = order
    while pending:
        prompt_of: dict[tuple[int, ...], int] = {}  # this round: one prompt length per key
        this_round, later = [], []
        for i in pending:
            if prompt_of.setdefault(keys[i], rows[i].prompt) == rows[i].prompt:
                this_round.append(i)
            else:
                later.append(i)
        members: list[int] = []
        batch_rows: list[Row] = []
        for n, i in enumerate(this_round):
            new_row = not grouped or n == 0 or keys[i] != keys[this_round[n - 1]]  # sorted: equal keys are neighbours
            if new_row and len(batch_rows) == batch_size:  # lm-eval's batch: batch_size rows
                chunks.append((members, batch_rows))
                members, batch_rows = [], []
            members.append(i)
            if new_row:
                batch_rows.append(rows[i])
        chunks.append((members, batch_rows))
        pending = later
    return chunks


def _row_masks(rows: Sequence[Row], positions: str, width: int) -> torch.Tensor:
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, row in enumerate(rows):
        if positions == "prompt":
            mask[r, : row.prompt] = True
        elif positions == "last":
            if row.prompt:
                mask[r, row.prompt - 1] = True
        else:  # generated: the continuation tokens that are inputs
            mask[r, row.prompt : len(row.tokens)] = True
    return mask


class PositionMask:
    """The positions the current forward pass ablates: ``current`` is None (all), False (none)
    or a bool tensor [batch, sequence]."""

    def __init__(self, positions: str) -> None:
        self.positions = check_positions(positions)
        self.current: torch.Tensor | bool | None = None
        self._plan: tuple | None = None
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def on(self, device: torch.device) -> torch.Tensor | bool | None:
        """``current``, a tensor moved to ``device`` once per pass (sharded models)."""
        if not isinstance(self.current, torch.Tensor):
            return self.current
        if device not in self._on_device:
            self._on_device[device] = self.current.to(device)
        return self._on_device[device]

    def _fail(self, what: str) -> None:
        raise RuntimeError(f"relspec-hf positions={self.positions}: {what}")

    # ---- what the next forward passes hold (set by RelspecHFLM) ------------------------
    @contextmanager
    def _planned(self, plan: tuple) -> Iterator[None]:
        if self._plan is not None:
            self._fail("a forward pass started while another one's positions were still set")
        self._plan = plan
        try:
            yield
        finally:
            self._plan, self.current = None, None
            self._on_device.clear()

    def rows(self, rows: Sequence[Row], inputs: torch.Tensor):
        """One ``_model_call`` pass over right-padded rows; checks they are the planned ones."""
        batch = inputs.detach().cpu()
        if batch.dim() != 2 or batch.shape[0] != len(rows):
            self._fail(f"lm-eval passed a batch of shape {tuple(batch.shape)} for {len(rows)} planned rows")
        width = batch.shape[1]
        if rows and width != max(len(row.tokens) for row in rows):
            self._fail(f"lm-eval padded the batch to {width} positions, the planned rows to {max(len(row.tokens) for row in rows)}")
        for r, row in enumerate(rows):
            got = batch[r].tolist()
            if tuple(got[: len(row.tokens)]) != row.tokens or any(got[len(row.tokens):]):
                self._fail(f"row {r} of lm-eval's batch is not the planned request (is this lm-eval 0.4.13?)")
        return self._planned(("once", _row_masks(rows, self.positions, width)))

    def generating(self, attention_mask: torch.Tensor):
        """One ``generate`` call over left-padded prompts: its prefill, then one token per step."""
        return self._planned(("generate", attention_mask.detach().to("cpu", torch.bool), [0]))

    def probe(self):
        """Passes whose outputs nobody reads (lm-eval's batch-size detection): every position."""
        return self._planned(("probe",))

    # ---- the forward pre-hook on layer 0's MLP --------------------------------------------
    def start_forward(self, module, args) -> None:
        self._on_device.clear()
        hidden = args[0]
        batch, length = int(hidden.shape[0]), int(hidden.shape[1])
        plan = self._plan
        if plan is None:
            self._fail("a forward pass outside lm-eval's loglikelihood and generate_until requests, "
                       "where prompt and answer positions are unknown; use positions=all there")
        if plan[0] == "probe":
            self.current = None
        elif plan[0] == "once":
            mask = plan[1]
            if mask is None:
                self._fail("a second forward pass in one _model_call")
            if tuple(mask.shape) != (batch, length):
                self._fail(f"planned rows of shape {tuple(mask.shape)}, forward pass of ({batch}, {length})")
            self.current, self._plan = mask, ("once", None)
        else:
            self.current = self._generation_step(plan[1], plan[2], batch, length)

    def _generation_step(self, prompt: torch.Tensor, step: list[int], batch: int, length: int):
        first = step[0] == 0
        step[0] += 1
        if not first:
            if length != 1:
                self._fail(f"a decoding step over {length} positions (generate without a KV cache?)")
            return None if self.positions == "generated" else False
        if length != prompt.shape[1] or batch % prompt.shape[0]:
            self._fail(f"generate's first pass covers ({batch}, {length}), the prompts are {tuple(prompt.shape)} "
                       "(chunked prefill?)")
        if self.positions == "generated":
            return False
        real = prompt.repeat_interleave(batch // prompt.shape[0], dim=0)  # beams / return sequences follow their prompt
        if self.positions == "prompt":
            return real
        last = torch.zeros_like(real)
        has = real.any(dim=1)
        index = length - 1 - torch.flip(real, dims=[1]).to(torch.int8).argmax(dim=1)  # last real position
        last[has, index[has]] = True
        return last
