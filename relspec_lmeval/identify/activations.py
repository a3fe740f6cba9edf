"""Per-prompt neuron statistics, collected on the model's device during the forward pass.

A neuron's value for a prompt is its output averaged over the prompt's tokens (BOS
included, padding excluded through the attention mask). One forward hook per (layer,
site) of the layout (``ModelShape.sites``: the FFN's by default, attention projections when
asked) turns the [batch, tokens, width] output into [batch, width] means with one batched
matmul against the mask and writes them into a [batch, neurons] buffer: no Python loop
over neurons, prompts or tokens. A routed experts' site (``modelio.moe.ExpertSite``) is given each
expert's outputs at its tokens: a neuron's value is its mean over the prompt's tokens routed to its
expert, 0 for a prompt none of whose tokens is (``modelio.moe.routed_means``).

Two passes use it: ``activation_matrix`` (right-padded forward, one row per prompt: what AP
is computed from) and ``generate_with_means`` (left-padded greedy generation for the
correctness filter; the hooks fire in its prefill step only and add every prompt's row to
a running per-neuron sum, so the means over all of P^det come for free; a batch whose answers
are cached runs the same prefill alone, so the sums never depend on the cache).

Under ``accelerate launch`` each process takes every ``world``-th batch and the results are
summed across processes (``accelerate.utils.reduce``/``gather_object``; the prefill sums in batch
order, ``Processes.add_in_order``); models sharded with ``device_map`` work because each hook
moves its [batch, width] result to the buffer's device.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from relspec_lmeval.errors import ModelError
from relspec_lmeval.identify.early_stop import forward_until, stop_after
from relspec_lmeval.identify.tokens import length_batches, pad_batch, pad_token_id
from relspec_lmeval.modelio.moe import ExpertSite
from relspec_lmeval.modelio.routing import Routed, routed_means
from relspec_lmeval.modelio.sites import find_layers, site_modules
from relspec_lmeval.sets.shape import ModelShape
from relspec_lmeval.util.progress import progress

__all__ = ["HookedRecorder", "Processes", "activation_matrix", "forward_kwargs", "generate_with_means", "input_device"]

# ---------------------------------------------------------------------------- processes


class Processes:
    """This process's share of the prompts, and sums across ``accelerate launch`` processes."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        self.state = None
        if self.world > 1:
            from accelerate import PartialState

            self.state = PartialState()
            self.world, self.rank = self.state.num_processes, self.state.process_index

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        return self.state.device if self.state is not None else None

    def mine(self, batches: Sequence[Any]) -> list[Any]:
        return list(batches[self.rank :: self.world])

    def rounds(self, batches: Sequence[Any]) -> list[Any]:
        """This process's batch of each round of ``world`` batches (``[]`` past the end: all take part in every round)."""
        return [batches[i] if (i := step + self.rank) < len(batches) else [] for step in range(0, len(batches), self.world)]

    def add_in_order(self, total: torch.Tensor, part: torch.Tensor | None) -> None:
        """``total +=`` every process's ``part`` of this round in rank order, i.e. batch order: the float64
        additions one process makes over the same batches, so the sums are bit for bit the same for any
        number of processes (``part`` None: no batch here this round)."""
        rows = torch.zeros((self.world, total.numel()), dtype=total.dtype, device=total.device)
        if part is not None:
            rows[self.rank] = part
        for row in self.sum(rows):  # the other processes' rows are exact zeros here
            total += row

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return tensor
        from accelerate.utils import reduce

        device = self.device
        if device is None or tensor.device == device or device.type == "cpu":
            return reduce(tensor, reduction="sum")
        # a host-memory matrix: reduce it through the accelerator in row chunks
        step = max(1, (256 << 20) // max(1, tensor[0].numel() * tensor.element_size())) if tensor.dim() > 1 else tensor.numel()
        for start in range(0, tensor.shape[0], step):
            part = reduce(tensor[start : start + step].to(device), reduction="sum")
            tensor[start : start + step].copy_(part.cpu())
        return tensor

    def merge_lists(self, items: list[Any]) -> list[Any]:
        """Elementwise merge of per-process lists where each position is filled by one process."""
        if self.world == 1:
            return items
        from accelerate.utils import gather_object

        gathered = gather_object([items])
        merged = list(items)
        for part in gathered:
            for i, value in enumerate(part):
                if value is not None:
                    merged[i] = value
        return merged

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


# ---------------------------------------------------------------------------- the model


def input_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: its input embedding's device (the first shard under ``device_map``)."""
    return model.get_input_embeddings().weight.device


def stats_dtype(model: nn.Module) -> torch.dtype:
    """float32, or float64 for a float64 model (statistics never lose precision to bf16)."""
    return torch.promote_types(next(model.parameters()).dtype, torch.float32)


# ---------------------------------------------------------------------------- hooks


class HookedRecorder(AbstractContextManager):
    """Forward hooks that ``install`` adds on entering and that are always removed on leaving."""

    handles: list[Any]

    def install(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self.install()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class ActivationRecorder(HookedRecorder):
    """Forward hooks that write each prompt's per-neuron token mean into ``self.buffer``.

    Usage: ``with ActivationRecorder(model, layout) as rec: rec.arm(mask); model(...);
    rec.check()`` → ``rec.buffer`` [batch, neurons]. Only the first call of each hook after
    ``arm`` records (the prefill of a generation; decoding steps are ignored).
    """

    def __init__(self, model: nn.Module, layout: ModelShape, device: torch.device | None = None) -> None:
        self.model = model
        self.layout = layout
        self.device = device or input_device(model)
        self.dtype = stats_dtype(model)
        layers = len(find_layers(model))
        if layers != layout.num_layers:
            raise ModelError(f"model has {layers} decoder layers, layout expects {layout.num_layers}")
        self.modules = site_modules(model, [(layer, site) for layer, site, _, _ in layout.blocks()])
        self.handles: list[Any] = []
        self.buffer: torch.Tensor | None = None
        self._pending: set[int] = set()
        self._masks: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._mask: torch.Tensor | None = None

    def install(self) -> None:
        for layer, site, offset, width in self.layout.blocks():
            module = self.modules[(layer, site)]
            hook = self._routed_hook(offset, module) if isinstance(module, ExpertSite) else self._hook(offset, width)
            self.handles.append(module.register_forward_hook(hook))

    @property
    def last_module(self) -> nn.Module:
        """The site that fires last in a forward pass (the flat order is forward order: by default the last down_proj)."""
        return list(self.modules.values())[-1]

    def arm(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Prepare for one batch; returns the (zeroed) buffer the hooks will fill."""
        batch = attention_mask.shape[0]
        if self.buffer is None or self.buffer.shape[0] < batch:
            self.buffer = torch.empty((batch, self.layout.total), dtype=self.dtype, device=self.device)
        self._mask = attention_mask
        self._masks.clear()
        self._pending = {offset for _, _, offset, _ in self.layout.blocks()}
        return self.buffer[:batch]

    def check(self) -> torch.Tensor:
        if self._pending:
            raise RuntimeError(f"{len(self._pending)} sites produced no output in the forward pass")
        assert self._mask is not None and self.buffer is not None
        return self.buffer[: self._mask.shape[0]]

    def _weights(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # [batch, 1, tokens] mask and [batch, 1] 1/length, once per device per batch
        if device not in self._masks:
            assert self._mask is not None
            mask = self._mask.to(device=device, dtype=self.dtype)
            inverse_length = 1.0 / mask.sum(dim=1, keepdim=True).clamp_min(1.0)
            self._masks[device] = (mask.unsqueeze(1), inverse_length)
        return self._masks[device]

    def _hook(self, offset: int, width: int) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if offset not in self._pending:
                return None
            out = output[0] if isinstance(output, tuple) else output
            assert self._mask is not None and self.buffer is not None
            if out.dim() != 3 or tuple(out.shape[:2]) != tuple(self._mask.shape):
                return None  # not the prompt's forward (e.g. a decoding step)
            self._pending.discard(offset)
            mask, inverse_length = self._weights(out.device)
            means = torch.bmm(mask, out.to(self.dtype)).squeeze(1) * inverse_length  # [batch, width]
            self.buffer[: out.shape[0], offset : offset + width].copy_(means, non_blocking=True)
            return None

        return hook

    def _routed_hook(self, offset: int, site: ExpertSite) -> Callable:
        def hook(module: nn.Module, args: Any, routed: Routed) -> None:
            assert self._mask is not None and self.buffer is not None
            if offset not in self._pending or routed.num_tokens != self._mask.numel():
                return  # recorded already, or not the prompt's forward (a decoding step)
            self._pending.discard(offset)
            mask = self._mask.to(device=self.buffer.device, dtype=self.dtype)
            means = routed_means(routed, mask, site.width, site.num_experts)
            self.buffer[: mask.shape[0], offset : offset + site.out_features].copy_(means, non_blocking=True)

        return hook


# ---------------------------------------------------------------------------- passes


def forward_kwargs(model: nn.Module) -> dict[str, Any]:
    """Arguments that skip work the statistics do not need (the cache; logits but one)."""
    params = inspect.signature(model.forward).parameters
    kwargs: dict[str, Any] = {"use_cache": False}
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    elif "num_logits_to_keep" in params:
        kwargs["num_logits_to_keep"] = 1
    return kwargs


def _progress(total: int, desc: str, enabled: bool):
    return progress(total, desc, enabled, leave=False)


def _check_finite(values: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(values).all()):
        raise ModelError(
            f"non-finite neuron outputs in {what} (overflow in the model's dtype?); rerun with --dtype float32 or bfloat16"
        )


@torch.inference_mode()
def activation_matrix(
    model: nn.Module,
    encoded: Sequence[Sequence[int]],
    layout: ModelShape,
    *,
    batch_size: int,
    pad_id: int,
    matrix_device: torch.device | str = "cpu",
    processes: Processes | None = None,
    desc: str = "statistics",
    progress: bool = True,
) -> torch.Tensor:
    """[prompts, neurons] per-prompt token means (right padding; rows in ``encoded`` order)."""
    processes = processes or Processes()
    device = input_device(model)
    dtype = stats_dtype(model)
    matrix = torch.zeros((len(encoded), layout.total), dtype=dtype, device=matrix_device)
    kwargs = forward_kwargs(model)
    mine = processes.mine(length_batches(encoded, batch_size))
    with ActivationRecorder(model, layout, device) as recorder, stop_after(recorder.last_module), _progress(
        sum(len(b) for b in mine), desc, progress and processes.is_main
    ) as bar:
        for rows in mine:
            ids, mask = pad_batch([encoded[i] for i in rows], pad_id, "right", device)
            recorder.arm(mask)
            forward_until(model, input_ids=ids, attention_mask=mask, **kwargs)
            values = recorder.check()
            index = torch.tensor(rows, dtype=torch.long, device=matrix.device)
            matrix.index_copy_(0, index, values.to(matrix.device, non_blocking=True))
            bar.update(len(rows))
    matrix = processes.sum(matrix) if processes.world > 1 else matrix
    _check_finite(matrix, desc)
    return matrix


@torch.inference_mode()
def generate_with_means(
    model: nn.Module, tokenizer: Any, encoded: Sequence[Sequence[int]], layout: ModelShape | None, *, batch_size: int,
    max_new_tokens: int = 2, generate: bool = True, needed: Sequence[bool] | None = None, processes: Processes | None = None,
    desc: str = "correctness filter", progress: bool = True,
) -> tuple[list[str | None] | None, torch.Tensor | None]:
    """Greedy continuations (new tokens only, decoded) and the per-neuron sum of prompt means.

    The batches are ``length_batches`` of all of ``encoded``, whatever ``needed`` says: only a batch
    holding a prompt whose answer is ``needed`` generates (all its rows get their text, others stay
    None); any other runs ``generate``'s prefill alone, ended after the last recorded site, so its
    means are exactly those a generating batch records. ``generate=False``: sums only (a right-padded
    forward per batch); ``layout=None``: no sums. Returns (texts or None, float64 [neurons] sum or None).
    """
    from transformers import GenerationConfig

    processes = processes or Processes()
    device, pad = input_device(model), pad_token_id(tokenizer)
    texts: list[str | None] = [None] * len(encoded)
    total = torch.zeros(layout.total, dtype=torch.float64, device=device) if layout is not None else None
    batches = length_batches(encoded, batch_size)
    configs = [GenerationConfig(max_new_tokens=n, do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                                bos_token_id=tokenizer.bos_token_id) for n in (max_new_tokens, 1) if generate]  # generating, prefill
    kwargs = forward_kwargs(model)
    recorder = ActivationRecorder(model, layout, device) if layout is not None else None
    stop = stop_after(recorder.last_module) if recorder is not None and not generate else nullcontext()
    with recorder if recorder is not None else nullcontext(), stop, _progress(
        sum(len(b) for b in processes.mine(batches)), desc, progress and processes.is_main
    ) as bar:
        for rows in processes.rounds(batches):
            answer = generate and bool(rows) and (needed is None or any(needed[i] for i in rows))
            part = None
            if rows and (answer or recorder is not None):
                ids, mask = pad_batch([encoded[i] for i in rows], pad, "left" if generate else "right", device)
                if recorder is not None:
                    recorder.arm(mask)
                if answer:
                    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=configs[0])
                    for i, tokens in zip(rows, out[:, ids.shape[1] :].tolist()):
                        texts[i] = tokenizer.decode(tokens, skip_special_tokens=True)
                elif generate and recorder is not None:  # answers known: the same prefill, up to the last recorded site
                    with stop_after(recorder.last_module):
                        forward_until(model.generate, input_ids=ids, attention_mask=mask, generation_config=configs[1])
                else:  # means only: the pass may end at the last recorded site
                    forward_until(model, input_ids=ids, attention_mask=mask, **kwargs)
                if recorder is not None:
                    values = recorder.check()
                    _check_finite(values, desc)
                    part = values.sum(dim=0, dtype=torch.float64)
            if total is not None:
                processes.add_in_order(total, part)
            bar.update(len(rows))
    total = total.cpu() if total is not None else None
    return (processes.merge_lists(texts) if generate else None), total
