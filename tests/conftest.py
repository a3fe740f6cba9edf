"""Shared fixtures: tiny random Llamas with an offline tokenizer, and the LRE data folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Before torch loads (its OpenMP runtime reads these once). Waiting threads sleep instead of
# spinning: with a spinning default, a 2-thread op on 2 shared cores waits a time slice for the
# core its partner spins on, and a tiny model's identify took 118 s instead of 13 s (a 2-thread
# identify under another job's load). Subprocesses inherit both; one thread each, as the
# in-process fixture ``one_thread`` below; results do not depend on it
# (test_tiny.py::test_identify_gives_the_same_bytes_on_1_and_2_threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Installed wheels load the hook from relspec_lmeval_hook.pth at start-up; a source checkout
# (``python -m pytest`` from the repo root) loads it here, before any test imports lm-eval.
import _relspec_lmeval_hook  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

if Path(_relspec_lmeval_hook.__file__).resolve() != REPO / "_relspec_lmeval_hook.py":
    # The .pth of an installed copy loaded that copy at start-up: test this checkout's hook.
    import importlib.util

    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _relspec_lmeval_hook._Finder)]
    _spec = importlib.util.spec_from_file_location("_relspec_lmeval_hook", REPO / "_relspec_lmeval_hook.py")
    _relspec_lmeval_hook = importlib.util.module_from_spec(_spec)
    sys.modules["_relspec_lmeval_hook"] = _relspec_lmeval_hook
    _spec.loader.exec_module(_relspec_lmeval_hook)
LRE_DIR = Path(os.environ.get("RELSPEC_LRE_DIR") or REPO.parent / "shared" / "data" / "lre")

# A small English vocabulary: enough for the tasks' prompts to tokenize into known words.
CORPUS = (
    "the a of is in on was by which who what where name named company ceo headquartered city "
    "continent country father mother works as plays instrument sport position product created "
    "part constellation answer paris france europe asia tennis guitar piano apple google star "
    "their they it its are and to for with from that this at his her has had"
).split()


def default_signals() -> None:
    """``preexec_fn`` for a child a test signals: SIGINT, SIGTERM and SIGHUP at their defaults. A suite
    started under ``nohup`` or as a background job of a plain shell passes SIGHUP / SIGINT on as ignored,
    and the child would (rightly) keep ignoring them."""
    import signal

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)


def load_script(name: str):
    """``scripts/<name>.py`` as a module (scripts import their siblings, so scripts/ goes on the path)."""
    import importlib.util
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def build_tokenizer(path: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(CORPUS)) + list("?:.,'!"))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(path)
    return fast


def build_tiny_llama(path: Path, *, layers: int = 2, hidden: int = 32, ffn: int = 64, seed: int = 0, mlp_bias: bool = False,
                     kv_heads: int = 4, attention_bias: bool = False):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        mlp_bias=mlp_bias,
        attention_bias=attention_bias,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(path)
    return path


@pytest.fixture(scope="session")
def default_task_manager():
    """lm-eval's default ``TaskManager()`` (its own ~15,000 tasks, ours added by the hook), as
    ``simple_evaluate`` builds when given none: indexing takes 7-10 s, so once per session."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


@pytest.fixture(scope="session")
def lre_dir() -> Path:
    if not (LRE_DIR / "company_ceo.json").is_file():
        pytest.skip(f"LRE data not found at {LRE_DIR}; set RELSPEC_LRE_DIR")
    return LRE_DIR


@pytest.fixture()
def lre_env(lre_dir, monkeypatch, tmp_path_factory) -> Path:
    """Read the local LRE copy; never download, never touch the user's cache."""
    monkeypatch.setenv("RELSPEC_LRE_DIR", str(lre_dir))
    monkeypatch.setenv("RELSPEC_OFFLINE", "1")
    monkeypatch.setenv("RELSPEC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("RELSPEC_LRE_URL", raising=False)
    return lre_dir


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """Each test its own user cache (answers of the correctness check, conversions): tests stay
    independent of their order and never touch ``~/.cache``. Fixtures may set another."""
    monkeypatch.setenv("RELSPEC_CACHE_DIR", str(tmp_path_factory.mktemp("user-cache")))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny tensors on 2 shared cores: one thread avoids oversubscription (ops ~100x slower otherwise)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
