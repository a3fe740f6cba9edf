"""Progress where users look: a bar on a terminal, plain lines in logs (nohup, CI).

A tqdm bar in a log file is a mess of carriage returns, and hiding it leaves a long run
silent. Off a terminal, ``progress`` prints one line when a phase starts, one every
``LOG_EVERY`` seconds, and one when it ends, with counts, rate and elapsed time.
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["LOG_EVERY", "progress"]

LOG_EVERY = 60.0  # seconds between lines in a log


class _Lines:
    def __init__(self, total: int, desc: str, unit: str, stream: Any, initial: int = 0) -> None:
        # a desc that names the command already ("relspec reproduce") is not prefixed twice
        self.total, self.desc, self.unit, self.stream = total, desc if desc.startswith("relspec") else f"relspec: {desc}", unit, stream
        self.done = initial
        self.start = self.last = time.monotonic()

    def _line(self, what: str) -> None:
        elapsed = time.monotonic() - self.start
        rate = f", {self.done / elapsed:.1f} {self.unit}/s" if elapsed > 0 and self.done else ""
        self.stream.write(f"{self.desc}: {what} {self.done}/{self.total} {self.unit}s, {elapsed:.0f} s{rate}\n")
        self.stream.flush()

    def __enter__(self) -> _Lines:
        self.stream.write(f"{self.desc}: {self.total} {self.unit}s\n")
        self.stream.flush()
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self.last >= LOG_EVERY:
            self.last = time.monotonic()
            self._line("at")

    def set_postfix_str(self, text: str) -> None:  # tqdm's API, used by the reproduce bar
        return None

    def __exit__(self, *exc: Any) -> None:
        self._line("done" if exc[0] is None else "stopped at")


def progress(total: int, desc: str, enabled: bool = True, unit: str = "prompt", stream: Any = None, **tqdm_kwargs: Any):
    """A context manager with ``update(n)``: a tqdm bar on a terminal, log lines elsewhere, nothing when disabled."""
    stream = stream or sys.stderr
    if enabled and not getattr(stream, "isatty", lambda: False)():
        return _Lines(total, desc, unit, stream, tqdm_kwargs.get("initial", 0))
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=stream, dynamic_ncols=True, **tqdm_kwargs)
