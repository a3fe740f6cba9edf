"""The correctness check's results, kept so that no prompt is generated from twice.

The generation check is the expensive part of identification (on gemma-3-270m on a CPU,
minutes per relation). Its results are kept per prompt under the user cache
(``<cache>/answers/<key>.jsonl``), keyed by

- the model: its resolved folder's weight and config files (name, size, modification time),
  or for a hub id its name and revision, with the dtype and device type it ran in;
- the check: ``greedy-2`` (the generated text is kept, so another ``--correct-metric``
  needs no new generation) or ``choice`` with its seed and distractor count (the
  log-likelihood of every choice is kept);
- the prompt: the sha256 of its token ids (chat template and tokenizer included) and, for
  the choice check, of its choices.

So adding a relation, changing k, the cap, the negatives or the metric reuses every answer
already computed. A cached answer may come from another batch than a fresh run would put
the prompt in; padding moves logits by ~1e-6, so an answer at a near-tie could differ from
a fresh run's. ``relspec identify --no-cache`` neither reads nor writes it. Lines are
appended under a file lock (several processes may share the folder); a torn last line is
ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relspec_lmeval.util.cache import cache_root
from relspec_lmeval.util.hashing import json_sha256

__all__ = ["AnswerCache", "model_fingerprint", "prompt_key"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".json")


def model_fingerprint(source: str, revision: str | None, dtype: str, device_type: str) -> str:
    """What identifies the model's answers: its files (or hub name and revision), dtype, device type."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        files = sorted((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                       for p in folder.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
        what: Any = {"folder": str(folder.resolve()), "files": files}
    else:
        what = {"hub": source, "revision": revision}
    return json_sha256({"model": what, "dtype": dtype, "device": device_type})


def prompt_key(ids: Sequence[int], choices: Sequence[str] | None = None) -> str:
    return json_sha256({"ids": list(ids), **({"choices": list(choices)} if choices is not None else {})})


class AnswerCache:
    """Answers of one (model, check): ``get`` what is known, ``put`` what was computed."""

    def __init__(self, model: str, check: str, root: Path | None = None) -> None:
        self.path = (root or cache_root() / "answers") / f"{json_sha256({'model': model, 'check': check})[:32]}.jsonl"
        self.known: dict[str, Any] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.known[entry["p"]] = entry["a"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by an interrupted write

    def get(self, key: str) -> Any | None:
        return self.known.get(key)

    def put(self, answers: dict[str, Any]) -> None:
        """Append new answers (a cache that cannot be written is skipped, never an error)."""
        new = {k: v for k, v in answers.items() if k not in self.known}
        if not new:
            return
        self.known.update(new)
        try:
            from filelock import FileLock

            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock", timeout=60), self.path.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps({"p": k, "a": v}) + "\n" for k, v in new.items()))
                f.flush()
                os.fsync(f.fileno())
        except Exception:  # noqa: BLE001 - the cache only saves time; a read-only home must not fail the run
            return
