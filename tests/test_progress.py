"""Progress off a terminal is plain lines with counts, rate and elapsed time (util.progress)."""

from __future__ import annotations

import io

from relspec_lmeval.util import progress as progress_module


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_when_not_a_terminal(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(progress_module, "LOG_EVERY", 0.0)  # a line at every update
    with progress_module.progress(10, "statistics person_father", stream=stream) as bar:
        bar.update(4)
        bar.update(6)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "relspec: statistics person_father: 10 prompts"
    assert lines[1].startswith("relspec: statistics person_father: at 4/10 prompts, ")
    assert lines[-1].startswith("relspec: statistics person_father: done 10/10 prompts, ") and "prompt/s" in lines[-1]
    assert "\r" not in stream.getvalue()


def test_bar_on_a_terminal_and_silence_when_disabled():
    terminal = Terminal()
    with progress_module.progress(3, "filter", stream=terminal) as bar:
        bar.update(3)
    assert "\r" in terminal.getvalue() and "relspec: filter" not in terminal.getvalue()  # tqdm's bar
    quiet = io.StringIO()
    with progress_module.progress(3, "filter", enabled=False, stream=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""
