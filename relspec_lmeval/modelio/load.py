"""Finding and loading a model: shipped names, packaged GGUF names, GGUF files, configs, weights.

Every command resolves its model through ``resolve_pretrained``: a shipped model name
(``relspec-tiny``) becomes its installed folder, a packaged GGUF name (``gemma-3-270m``) or
a folder plus ``gguf_file`` becomes the cached plain checkpoint of that GGUF file
(``modelio.gguf``); hub ids, paths and model objects pass through. Everything that can be
checked from the config (``load_config``) is checked before the weights load; a model that
cannot be found is a ``ModelError`` naming it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from relspec_lmeval.errors import ModelError, UsageError
from relspec_lmeval.modelio.dtype import parse_dtype
from relspec_lmeval.modelio.gguf import converted_folder, packaged_gguf, quiet_transformers
from relspec_lmeval.util.resources import shipped_model

__all__ = ["default_device", "load_config", "load_model", "meta_skeleton", "resolve_pretrained", "say_device"]

CHOOSE = "--device to choose"


def default_device(device: str | None = None) -> tuple[str, str]:
    """The device a command loads its model on, and why (for ``say_device``).

    The one asked for, else cuda when torch sees a GPU, else cpu. lm-eval's ``HFLM`` defaults
    to ``"cuda"`` even on a CPU-only torch (and fails deep in transformers), so every command
    that loads a model asks here. A device torch cannot use is a ``UsageError`` now, before the
    weights load, not an ``AssertionError`` from inside the load."""
    import torch

    if not device:
        if torch.cuda.is_available():
            return "cuda", f"CUDA available; {CHOOSE}"
        return "cpu", f"no CUDA available; {CHOOSE}"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps …)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise UsageError(f"--device {device}: this torch sees no CUDA device; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise UsageError(f"--device {device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device, "as asked"


def say_device(who: str, device: str, why: str, show: bool = True) -> None:
    """One line on stderr: which device ``who`` runs on and why (nothing under ``--quiet``)."""
    if show:
        print(f"{who}: device {device} ({why})", file=sys.stderr, flush=True)


def resolve_pretrained(pretrained: Any, gguf_file: str | None = None, progress: bool = True) -> Any:
    """The folder (or hub id) transformers should load for ``pretrained`` (see the module doc)."""
    if not isinstance(pretrained, str):
        return pretrained
    if gguf_file:
        return str(converted_folder(pretrained, gguf_file, progress))
    shipped = shipped_model(pretrained)
    if shipped is not None:
        return str(shipped)
    packaged = packaged_gguf(pretrained)
    if packaged is not None:
        return str(converted_folder(packaged.parent, packaged.name, progress))
    return pretrained


def load_config(model: str, revision: str | None = None, gguf_file: str | None = None, progress: bool = True) -> Any:
    """The transformers config of ``model``; ``ModelError`` if there is none."""
    from transformers import AutoConfig

    source = resolve_pretrained(model, gguf_file, progress)
    if isinstance(source, str) and source.startswith(("/", ".", "~")) and not Path(source).expanduser().exists():
        raise ModelError(f"model folder not found: {model}")
    try:
        return AutoConfig.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load the config of model {model!r}: {first}") from None


def load_model(
    model: str, *, revision: str | None = None, dtype: str = "auto", device: str | None = None, device_map: str | None = None,
    gguf_file: str | None = None, progress: bool = True, who: str = "relspec",
) -> tuple[Any, Any]:
    """The model (eval mode, placed on ``device`` or by ``device_map``) and its tokenizer.

    Without ``device_map`` the device is ``default_device(device)``, said on stderr as ``who``;
    ``progress=False`` (``--quiet``) silences that line and transformers' own loading bars."""
    if device_map:
        say_device(who, f"map {device_map}", "--device-map", progress)
    else:
        device, why = default_device(device)
        say_device(who, device, why, progress)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_pretrained(model, gguf_file, progress)
    kwargs: dict[str, Any] = {"revision": revision, "dtype": parse_dtype(dtype)}
    if device_map:
        kwargs["device_map"] = device_map
    with quiet_transformers(not progress):
        loaded = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if not device_map:
        loaded.to(device)
    loaded.eval()
    from relspec_lmeval.modelio.moe import eager_experts_for_float64

    eager_experts_for_float64(loaded)  # transformers' grouped_mm experts take no float64
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    return loaded, tokenizer


def meta_skeleton(config: Any) -> Any:
    """The model of ``config`` on the meta device (no weights, no memory): its modules can be
    checked before a slow load. None for a model transformers cannot build from its config
    alone (``relspec-hf`` checks that one when it loads)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - any failure here only means: check it at load time
        return None
