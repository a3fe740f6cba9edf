"""The pipelines benchmarks/peers.py compares: ours and the peers, each written the way a user would.

Every identification pipeline maps the same batches of token ids to a float32 [prompts,
neurons] matrix of per-prompt token means (flat order: layers, and inside a layer gate_proj,
up_proj, down_proj), then to an AP per neuron, then to the top k (ties to the lower flat
index). The peers never call relspec_lmeval; only the prompts and batches they are handed
come from it, so every tool sees identical tensors.
"""

from __future__ import annotations

import os
import pickle
import warnings
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

SITES = ("gate_proj", "up_proj", "down_proj")


# ---------------------------------------------------------------------------- inputs


def batches(encoded: list[list[int]], batch_size: int, pad_id: int) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(rows, input_ids, attention_mask) per batch: right padding, similar lengths together (ours)."""
    from relspec_lmeval.identify.tokens import length_batches, pad_batch

    return [(rows, *pad_batch([encoded[i] for i in rows], pad_id, "right", torch.device("cpu"))) for rows in length_batches(encoded, batch_size)]


def site_modules(model) -> list[tuple[int, str, torch.nn.Module]]:
    return [(layer, site, getattr(block.mlp, site)) for layer, block in enumerate(model.model.layers) for site in SITES]


def masked_mean(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[batch, tokens, width] → [batch, width]: mean over the real tokens (the obvious way)."""
    m = mask.unsqueeze(-1).to(out.dtype)
    return (out * m).sum(dim=1) / m.sum(dim=1)


def top_k(ap: np.ndarray, k: int) -> list[int]:
    """Flat indices of the k highest APs (float32, as our files rank), ties to the lower index."""
    order = np.argsort(-np.asarray(ap, dtype=np.float32), kind="stable")
    return sorted(int(i) for i in order[:k])


# ---------------------------------------------------------------------------- collection


def collect_ours(model, encoded, batch_size: int, pad_id: int) -> torch.Tensor:
    from relspec_lmeval.identify.activations import activation_matrix
    from relspec_lmeval.modelio.sites import model_shape

    return activation_matrix(model, encoded, model_shape(model), batch_size=batch_size, pad_id=pad_id, progress=False)


@torch.no_grad()
def collect_hooks(model, batches_, n: int) -> torch.Tensor:
    """Plain ``register_forward_hook``: keep each site's output, average after the forward."""
    outputs: dict[tuple[int, str], torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda mod, args, out, key=(layer, site): outputs.__setitem__(key, out.detach()))
        for layer, site, module in site_modules(model)
    ]
    rows_out = [None] * n
    try:
        for rows, ids, mask in batches_:
            model(input_ids=ids, attention_mask=mask)
            means = torch.cat([masked_mean(outputs[(layer, site)], mask) for layer, site, _ in site_modules(model)], dim=1)
            for r, row in zip(rows, means):
                rows_out[r] = row
    finally:
        for h in handles:
            h.remove()
    return torch.stack(rows_out)


def collect_nnsight(model, tokenizer, batches_, n: int, stop: bool = True) -> torch.Tensor:
    """nnsight 0.8: read every site's ``.output`` in a trace, reduce there, ``.save()``; stop after the last."""
    from nnsight import TransformersModel

    lm = TransformersModel(model, tokenizer=tokenizer)
    matrix = torch.empty((n, sum(m.out_features for _, _, m in site_modules(model))))
    with torch.no_grad():
        for rows, ids, mask in batches_:
            saved = []
            with lm.trace(ids, attention_mask=mask) as tracer:
                for block in lm.model.layers:
                    for site in SITES:
                        saved.append(masked_mean(getattr(block.mlp, site).output, mask).save())
                if stop:
                    tracer.stop()  # nothing after the last down_proj is needed
            matrix[rows] = torch.cat(saved, dim=1)
    return matrix


def tl_bridge(model, tokenizer):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(model.config._name_or_path or "model", hf_model=model, tokenizer=tokenizer, device="cpu")


def collect_transformer_lens(bridge, batches_, n: int) -> torch.Tensor:
    """TransformerLens 4.x: ``run_with_cache`` on a TransformerBridge with a names filter, then reduce."""
    layers = bridge.cfg.n_layers
    names = [f"blocks.{layer}.mlp.{part}.hook_out" for layer in range(layers) for part in ("gate", "in", "out")]
    wanted = set(names)
    matrix = None
    with torch.no_grad():
        for rows, ids, mask in batches_:
            _, cache = bridge.run_with_cache(ids, attention_mask=mask, names_filter=lambda name: name in wanted)
            means = torch.cat([masked_mean(cache[name], mask) for name in names], dim=1)
            if matrix is None:
                matrix = torch.empty((n, means.shape[1]))
            matrix[rows] = means
    return matrix


@torch.no_grad()
def collect_selfcond(model, batches_, n: int, folder: Path) -> dict[str, np.ndarray]:
    """The selfcond / lang_neuron recipe: hooks store each unit's pooled response, one pickle per batch,
    then all pickles are read back into {unit name: responses over the prompts}."""
    folder.mkdir(parents=True, exist_ok=True)
    current: dict[str, np.ndarray] = {}
    handles = []
    for layer, site, module in site_modules(model):
        name = f"model.layers.{layer}.mlp.{site}"

        def hook(mod, args, out, name=name):
            current[name] = masked_mean(out, current_mask[0]).cpu().numpy()

        handles.append(module.register_forward_hook(hook))
    current_mask = [None]
    order: list[int] = []
    try:
        for b, (rows, ids, mask) in enumerate(batches_):
            current_mask[0] = mask
            model(input_ids=ids, attention_mask=mask)
            with open(folder / f"responses_{b:05d}.pkl", "wb") as f:
                pickle.dump(dict(current), f)
            order.extend(rows)
    finally:
        for h in handles:
            h.remove()
    per_site: dict[str, list[np.ndarray]] = {}
    for path in sorted(folder.glob("responses_*.pkl")):
        with open(path, "rb") as f:
            for name, value in pickle.load(f).items():
                per_site.setdefault(name, []).append(value)
    inverse = np.argsort(order)
    responses = {}
    for layer, site, _ in site_modules(model):
        name = f"model.layers.{layer}.mlp.{site}"
        values = np.concatenate(per_site[name])[inverse]
        for unit in range(values.shape[1]):
            responses[f"{name}.{unit}"] = values[:, unit]
    return responses


# ---------------------------------------------------------------------------- AP


def ap_ours(matrix: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    from relspec_lmeval.identify.methods.chunking import two_class_scores

    return two_class_scores("ap", matrix, labels).numpy()


def ap_sklearn_loop(matrix: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    from sklearn.metrics import average_precision_score

    values, y = matrix.numpy(), labels.numpy().astype(int)
    return np.array([average_precision_score(y, values[:, j]) for j in range(values.shape[1])])


def _single_response_ap(unit_response, labels) -> float:
    from sklearn.metrics import average_precision_score

    return average_precision_score(y_true=labels, y_score=unit_response)


def ap_sklearn_pool(responses: dict[str, np.ndarray], labels: torch.Tensor, cpus: int | None = None) -> np.ndarray:
    """selfcond's expertise step: one ``average_precision_score`` per unit, in a process pool."""
    with Pool(cpus or os.cpu_count()) as pool:
        aps = pool.map(partial(_single_response_ap, labels=labels.numpy().astype(int)), responses.values())
    return np.asarray(aps)


def ap_torchmetrics(matrix: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """torchmetrics' vectorised multilabel AP: every neuron a label with the same targets.

    Values outside [0, 1] are passed through a sigmoid first (torchmetrics' own rule), which
    in float32 can merge nearly equal values into ties."""
    from torchmetrics.functional.classification import multilabel_average_precision

    target = labels.to(torch.long).unsqueeze(1).expand(-1, matrix.shape[1])
    return multilabel_average_precision(matrix, target, num_labels=matrix.shape[1], average="none", thresholds=None).double().numpy()


# ---------------------------------------------------------------------------- ablated evaluation


def zero_channels(acts: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return acts.index_fill(-1, index, 0.0)


def ablation_lms(folder: str, set_path: str, zero: dict[tuple[int, str], torch.Tensor], batch_size: int, nnsight: bool = True) -> dict:
    """The lm-eval models of the ablation comparison, each its own copy of the weights."""
    from lm_eval.models.hf_steered import SteeredModel
    from lm_eval.models.huggingface import HFLM

    from relspec_lmeval.lm.hflm import RelspecHFLM

    def ablate(envoy):
        for (layer, site), index in zero.items():
            getattr(envoy.model.layers[layer].mlp, site).output[..., index] = 0.0

    class ZeroSteered(SteeredModel):
        """lm-eval's ``steered`` model: its ``steer`` context registers the hooks around every call."""

        def __init__(self, pretrained, **kwargs):
            HFLM.__init__(self, pretrained=pretrained, **kwargs)  # no steer_path: the hook functions are ours
            self.hook_to_steer = {f"layers.{layer}.mlp.{site}": partial(zero_channels, index=index) for (layer, site), index in zero.items()}

    class NNsightHFLM(HFLM):
        """HFLM whose forward and generate run through nnsight traces of a model edited to zero the neurons."""

        def __init__(self, pretrained, **kwargs):
            from nnsight import TransformersModel

            super().__init__(pretrained=pretrained, **kwargs)
            traced = TransformersModel(self._model, tokenizer=self.tokenizer)
            with traced.edit() as (tracer, self.edited_forward):  # one forward: each site once
                ablate(self.edited_forward)
            with traced.edit() as (tracer, self.edited_generate):  # every step of a generation
                for _ in tracer.iter[:]:
                    ablate(self.edited_generate)

        def _model_call(self, inps, attn_mask=None, labels=None):
            with torch.no_grad(), self.edited_forward.trace(inps):
                logits = self.edited_forward.output.logits.save()
            return logits

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            from lm_eval.models.huggingface import stop_sequences_criteria

            generation_kwargs["temperature"] = generation_kwargs.get("temperature", 0.0)
            if generation_kwargs.get("temperature") == 0.0 and generation_kwargs.get("do_sample") is None:
                generation_kwargs["do_sample"] = False
            if generation_kwargs.get("do_sample") is False and generation_kwargs.get("temperature") == 0.0:
                generation_kwargs.pop("temperature")
            criteria = stop_sequences_criteria(self.tokenizer, stop, context.shape[1], context.shape[0])
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*was never reached")  # how the open-ended edit loop ends, by design
                with torch.no_grad(), self.edited_generate.generate(
                    context, max_length=max_length, stopping_criteria=criteria, pad_token_id=self.tokenizer.pad_token_id, use_cache=True, **generation_kwargs
                ) as tracer:
                    ids = tracer.result.save()
            return ids

    common = {"pretrained": folder, "device": "cpu", "batch_size": batch_size, "dtype": "float32"}
    lms = {
        "hf": lambda: HFLM(**common),
        "relspec-hf (weights)": lambda: RelspecHFLM(**common, neuron_set=set_path),
        "relspec-hf (hooks)": lambda: RelspecHFLM(**common, neuron_set=set_path, ablate_with="hooks"),
        "lm-eval steered (per-call hooks)": lambda: ZeroSteered(**common),
    }
    if nnsight:
        lms["nnsight"] = lambda: NNsightHFLM(**common)
    return lms
