"""Finding and loading a model: shipped names, configs (cheap, checked first), weights.

Everything that can be checked from the config (``load_config``) is checked before the
slow weight load; a model that cannot be found is a ``ModelError`` naming it.
"""

from __future__ import annotations

from typing import Any

from relspec_lmeval.errors import ModelError
from relspec_lmeval.modelio.dtype import parse_dtype
from relspec_lmeval.util.resources import shipped_model

__all__ = ["load_config", "load_model", "resolve_pretrained"]


def resolve_pretrained(pretrained: Any) -> Any:
    """``relspec-tiny`` → the installed model folder; hub ids, paths and model objects pass through."""
    if isinstance(pretrained, str):
        shipped = shipped_model(pretrained)
        if shipped is not None:
            return str(shipped)
    return pretrained


def load_config(model: str, revision: str | None = None) -> Any:
    """The transformers config of ``model`` (a hub id, folder or shipped name); ``ModelError`` if none."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_pretrained(model), revision=revision)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load the config of model {model!r}: {first}") from None


def load_model(
    model: str, *, revision: str | None = None, dtype: str = "auto", device: str | None = None, device_map: str | None = None
) -> tuple[Any, Any]:
    """The model (eval mode, placed on ``device`` or by ``device_map``) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_pretrained(model)
    kwargs: dict[str, Any] = {"revision": revision, "dtype": parse_dtype(dtype)}
    if device_map:
        kwargs["device_map"] = device_map
    loaded = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if not device_map:
        loaded.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    loaded.eval()
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    return loaded, tokenizer
