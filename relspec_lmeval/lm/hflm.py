"""``relspec-hf``: lm-eval's ``hf`` model with relation-specific neurons switched off.

``lm_eval --model relspec-hf --model_args pretrained=M,neuron_set=FILE[+FILE2],mode=zero``.
Everything else (batching, ``parallelize``, accelerate data parallel, dtype, PEFT, all
request types) is HFLM's own: this class only edits the loaded model once, after HFLM has
placed it, and reports what it did under the ``relspec`` key of the results' config.

With ``positions=prompt|last|generated`` (``lm.positions``) it also tells the hooks, before
each forward pass, which positions of which row are prompt and which answer: loglikelihood
requests go to HFLM's ``_loglikelihood_tokens`` in batches planned here (``plan_chunks``),
``_model_call`` checks each batch against its plan, ``_model_generate`` marks a ``generate``
call (prefill = prompt, then one generated token per step), ``loglikelihood_rolling`` makes
every position a prompt position, and batch-size detection passes ablate everywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from relspec_lmeval import __version__
from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.lm.ablation import Ablation, apply_ablation
from relspec_lmeval.lm.positions import PositionMask, Row, plan_chunks
from relspec_lmeval.lm.preflight import NOT_GIVEN, check_model_args, check_sets
from relspec_lmeval.modelio.load import default_device, resolve_pretrained
from relspec_lmeval.modelio.moe import eager_experts_for_float64
from relspec_lmeval.modelio.sites import find_mlps, model_shape
from relspec_lmeval.sets.neuron_set import NeuronSet, union_all
from relspec_lmeval.sets.resolve import load_sets
from relspec_lmeval.sets.shape import ModelShape

__all__ = ["RESULTS_KEY", "RelspecHFLM"]

RESULTS_KEY = "relspec"


class _BatchPlan:
    """The rows of the batch HFLM runs next, handed from ``_loglikelihood_tokens`` to ``_model_call``.

    HFLM's ``_loglikelihood_tokens`` pads each batch and calls ``_model_call(inps)`` itself, so
    the plan of that batch (``lm.positions.plan_chunks``) cannot travel as an argument: it is held
    while HFLM runs one planned chunk (``holding``) and taken once by the forward pass
    (``take``); a second pass in the same chunk, or one outside any, gets None and the
    pre-hook refuses it.
    """

    def __init__(self) -> None:
        self._rows: list[Row] | None = None

    @contextmanager
    def holding(self, rows: list[Row]) -> Iterator[None]:
        self._rows = rows
        try:
            yield
        finally:
            self._rows = None

    def take(self) -> list[Row] | None:
        rows, self._rows = self._rows, None
        return rows


@register_model("relspec-hf")
class RelspecHFLM(HFLM):
    """lm-eval's ``hf`` model with neuron sets switched off: ``lm_eval --model relspec-hf``.

    Takes HFLM's own arguments (``pretrained``, ``device``, ``dtype``, ``batch_size``, …) and the
    set's (``__init__``); pass the object to ``lm_eval.simple_evaluate(model=...)`` as any LM.
    ``relspec_info()`` is what the results record under ``config.relspec``.

    Example (relspec-tiny loads in about 2 s on a CPU):
        >>> from relspec_lmeval import RelspecHFLM
        >>> lm = RelspecHFLM(pretrained="relspec-tiny", neuron_set="relspec-tiny/person_father", device="cpu")
        >>> info = lm.relspec_info()
        >>> info["count"], info["mode"], info["applied_with"]
        (38, 'zero', ['weights'])
        >>> lm.set_neuron_sets(None)  # the unmodified model again, without reloading it
        >>> lm.relspec_info()["count"]
        0
    """

    def __init__(
        self,
        pretrained: Any,
        neuron_set: Any = NOT_GIVEN,
        mode: str = "zero",
        factor: float | None = None,
        ablate_with: str = "auto",
        allow_empty: Any = False,
        positions: str = "all",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            neuron_set: a neuron-set file, a shipped set name (``relspec-tiny/person_father``),
                or several joined with ``+`` (their union). Left out: the unmodified model.
            mode: ``zero`` (the paper's), ``scale`` (multiply by ``factor``), ``mean`` (set to
                the per-neuron means stored in the file) or ``dampen`` (multiply each neuron by
                its factor stored in the file: AurA's, written by ``relspec dampen``).
            ablate_with: ``auto`` (weight edits where exact, hooks elsewhere), ``weights`` or ``hooks``.
            allow_empty: accept a set with no neurons (recorded as such in the results).
            positions: ``all`` (default, the paper's), ``prompt``, ``last`` (the last prompt token)
                or ``generated`` (the answer tokens): where the neurons are switched off (hooks).

        Raises ``NeuronSetError`` (an empty ``neuron_set=`` value, a missing or malformed file,
        a set of another model shape, a bad mode or factor) before the weights are loaded.
        """
        # Everything that can be wrong with the set is checked before the (slow) model load
        # (lm.preflight: the lm_eval command runs the same check before its own slow start).
        gguf_file = kwargs.pop("gguf_file", None)  # a GGUF model loads from its cached plain checkpoint
        checked = check_model_args(pretrained, neuron_set, mode, factor, ablate_with, allow_empty, positions, kwargs.get("revision"), gguf_file,
                                   kwargs.get("dtype", "auto"))
        self.relspec_spec = checked.spec
        self.relspec_positions = PositionMask(positions) if positions != "all" else None
        self._relspec_plan = _BatchPlan()  # the rows of the next _model_call (positions != all)
        self._relspec_rolling = False
        self.relspec_allow_empty = checked.allow_empty
        self.relspec_sets: list[NeuronSet] = checked.sets
        self.relspec_ablation: Ablation | None = None
        self.relspec_source = {"pretrained": str(pretrained), "gguf_file": gguf_file} if gguf_file else None
        # HFLM's own default is "cuda", which a CPU-only torch cannot give, and lm_eval passes no
        # device when --device is left out: cuda when available, else cpu (modelio.load.default_device)
        # A device given is HFLM's to judge (under `accelerate launch` lm-eval passes cuda:N, which the
        # accelerator then overrides, also on CPU processes); only a missing one is chosen here.
        if not kwargs.get("device"):
            kwargs["device"] = default_device(None)[0]  # HFLM logs "Using device …"
        super().__init__(pretrained=resolve_pretrained(pretrained, gguf_file), **kwargs)
        eager_experts_for_float64(self._model)  # transformers' grouped_mm experts take no float64
        if self.relspec_sets:
            self.set_neuron_sets(self.relspec_sets)

    def _check_sets(self, sets: Sequence[NeuronSet], shape: ModelShape) -> None:
        check_sets(sets, shape, self.relspec_spec, self.relspec_allow_empty)

    def set_neuron_sets(self, neuron_sets: str | Sequence[NeuronSet] | None) -> None:
        """Switch to other neurons in place: undo the current ablation, apply ``neuron_sets``
        (a spec as for ``neuron_set=``, loaded sets, or None for the unmodified model).

        Lets one loaded model serve many ``simple_evaluate(model=lm)`` runs (``relspec
        reproduce``); ``relspec_info()`` and the cache salt follow the sets applied now.
        """
        sets = load_sets(neuron_sets) if isinstance(neuron_sets, str) else list(neuron_sets or [])
        if sets:  # a bad set fails here, with the current ablation still in place
            find_mlps(self._model)
            self._check_sets(sets, model_shape(self._model))
        if self.relspec_ablation is not None:
            self.relspec_ablation.remove()
            self.relspec_ablation = None
        self.relspec_sets = []  # if applying fails, the record says what the model is: unmodified
        if sets:
            self.relspec_ablation = apply_ablation(self._model, union_all(sets), self.relspec_spec, self.relspec_positions)
        self.relspec_sets = sets

    @property
    def relspec_cache_salt(self) -> str | None:
        """Extra cache key for ``--use_cache`` (read by the import hook's CachingLM patch)."""
        if not self.relspec_sets:
            return None
        info = self.relspec_info()
        key = [info["sets"], info["mode"], info["factor"]] + ([info["positions"]] if info["positions"] != "all" else [])
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    def relspec_info(self) -> dict[str, Any]:
        """The documented ``relspec`` block of the results JSON (see docs/file-format.md).

        ``count``, ``count_per_site`` and ``content_sha256`` are those of the neurons applied:
        the union of the sets (``A+B`` of overlapping sets switches a shared neuron off once);
        ``overlap`` is the sets' counts summed minus ``count``."""
        applied = union_all(self.relspec_sets) if self.relspec_sets else None
        info: dict[str, Any] = {"package_version": __version__}
        if self.relspec_source:  # a GGUF model: where its plain checkpoint came from
            info["model_source"] = self.relspec_source
        info.update(
            sets=[
                {
                    "path": str(s.path),
                    "sha256": s.sha256(),
                    "content_sha256": s.content_sha256(),
                    "count": len(s),
                    "count_per_site": s.count_per_site(),
                    "metadata": s.metadata,
                }
                for s in self.relspec_sets
            ],
            count=len(applied) if applied is not None else 0,
            count_per_site=applied.count_per_site() if applied is not None else {},
            overlap=sum(len(s) for s in self.relspec_sets) - len(applied) if applied is not None else 0,
            content_sha256=applied.content_sha256() if applied is not None else None,
            empty=applied is not None and not len(applied),
            mode=self.relspec_spec.mode if self.relspec_sets else None,
            factor=self.relspec_spec.factor,
            positions=self.relspec_spec.positions if self.relspec_sets else None,
            applied_with=self.relspec_ablation.methods if self.relspec_ablation else [],
        )
        return info

    def get_model_info(self) -> dict:
        return {**super().get_model_info(), RESULTS_KEY: self.relspec_info()}

    # ---- positions != all: tell the hooks what each forward pass holds ---------------------
    def _masking(self) -> PositionMask | None:
        return self.relspec_positions if self.relspec_ablation is not None and self.relspec_sets else None

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        masks = self._masking()
        if masks is None:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        if self.backend != "causal":
            raise NeuronSetError(f"positions={masks.positions} works with decoder-only (causal) models only")
        size = self.batch_size
        if size == "auto":  # as HFLM: the given size, else one detected on the longest request
            size = override_bs or (self._detect_batch_size([max(requests, key=lambda r: len(r[1]) + len(r[2]))], 0) if requests else 1)
        results: list = [None] * len(requests)
        chunks = plan_chunks(requests, self.max_length, size, grouped=bool(self.logits_cache), rolling=self._relspec_rolling)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        for indices, rows in chunks:
            with self._relspec_plan.holding(rows):
                answers = super()._loglikelihood_tokens([requests[i] for i in indices], disable_tqdm=True, override_bs=size)
            for i, answer in zip(indices, answers, strict=True):
                results[i] = answer
            bar.update(len(indices))
        bar.close()
        return results

    def _model_call(self, inps, attn_mask=None, labels=None):
        masks = self._masking()
        if masks is None:
            return super()._model_call(inps, attn_mask, labels)
        rows = self._relspec_plan.take()  # one pass per planned batch
        if rows is None:
            return super()._model_call(inps, attn_mask, labels)  # unplanned: the pre-hook refuses it
        with masks.rows(rows, inps):
            return super()._model_call(inps, attn_mask, labels)

    def _detect_batch_size(self, requests=None, pos: int = 0):
        masks = self._masking()
        if masks is None:
            return super()._detect_batch_size(requests, pos)
        with masks.probe():
            return super()._detect_batch_size(requests, pos)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        """Perplexity: a document has no answer, so every position is a prompt position."""
        self._relspec_rolling = True
        try:
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        finally:
            self._relspec_rolling = False

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        masks = self._masking()
        if masks is None:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        attention = generation_kwargs.get("attention_mask")
        with masks.generating(attention if attention is not None else torch.ones_like(context)):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
