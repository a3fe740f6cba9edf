"""Finding and loading a model: shipped names, packaged GGUF names, GGUF files, configs, weights.

Every command resolves its model through ``resolve_pretrained``: a shipped model name
(``relspec-tiny``) becomes its installed folder, a packaged GGUF name (``gemma-3-270m``) or
a folder plus ``gguf_file`` becomes the cached plain checkpoint of that GGUF file
(``modelio.gguf``); hub ids, paths and model objects pass through. Everything that can be
checked from the config (``load_config``) is checked before the weights load; a model that
cannot be found is a ``ModelError`` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relspec_lmeval.errors import ModelError
from relspec_lmeval.modelio.dtype import parse_dtype
from relspec_lmeval.modelio.gguf import converted_folder, packaged_gguf, quiet_transformers
from relspec_lmeval.util.resources import shipped_model

__all__ = ["load_config", "load_model", "meta_skeleton", "resolve_pretrained"]


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
    gguf_file: str | None = None, progress: bool = True,
) -> tuple[Any, Any]:
    """The model (eval mode, placed on ``device`` or by ``device_map``) and its tokenizer.

    ``progress=False`` also silences transformers' own loading bars (``--quiet``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    source = resolve_pretrained(model, gguf_file, progress)
    kwargs: dict[str, Any] = {"revision": revision, "dtype": parse_dtype(dtype)}
    if device_map:
        kwargs["device_map"] = device_map
    with quiet_transformers(not progress):
        loaded = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if not device_map:
        loaded.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    loaded.eval()
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
