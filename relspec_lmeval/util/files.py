"""Writing outputs so that nothing is half-written and nothing of the user's is lost.

* ``atomic_write_text`` / ``atomic_write``: one file, through a temporary file beside it
  and a rename: readers see the old file or the new one, never a part.
* ``StagedFiles``: several files that belong together (a relation's set, its scores and
  the summary that lists them) are all written to temporary names first and moved into
  place only when every one was written; a failure (a full disk) removes the temporaries
  and leaves the folder as it was.
* ``staged_dir``: a folder built beside its target and swapped in at the end; the old
  folder is kept until the new one is in place. SIGTERM and SIGHUP unwind it like Ctrl-C
  (the staging folder goes, then the process ends by the signal as it would have); the
  temporaries' names carry the owner's pid and host, so the next staged write into the same
  parent removes what a killed (SIGKILL) process left (``remove_stale_staging``).

Files get the mode an ordinary ``open(path, "w")`` would give (0666 less the umask), not
the 0600 of ``tempfile`` or safetensors, and folders that of ``mkdir`` (0777 less the umask).
Every failure to write is an ``OutputError`` naming the path.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from relspec_lmeval.errors import OutputError, RelspecError

__all__ = [
    "StagedFiles", "Terminated", "atomic_write", "atomic_write_text", "describe", "dir_mode", "file_mode",
    "remove_stale_staging", "signals_unwind", "staged_dir", "staging_prefix",
]


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it
    os.umask(mask)
    return mask


def file_mode() -> int:
    """0666 less the process umask: the mode ``open(..., "w")`` gives a new file."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """0777 less the process umask: the mode ``mkdir`` gives a new folder."""
    return 0o777 & ~_umask()


def describe(exc: BaseException) -> str:
    """An OS error in the words a user reads (its strerror), any other exception's message."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__


class StagedFiles:
    """Files written under temporary names, moved into place together by ``commit``.

    ``with StagedFiles() as staged: staged.write(path, writer)`` commits on success and
    discards everything on an exception. ``writer(tmp_path)`` writes the file's content.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def write(self, path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {describe(exc)}") from None
        tmp = Path(name)
        self._staged.append((tmp, path))
        try:
            writer(tmp)
            os.chmod(tmp, file_mode())
        except Exception as exc:  # safetensors reports a full disk as SafetensorError
            raise OutputError(f"could not write {path}: {describe(exc)}; nothing was written") from None
        return path

    def write_text(self, path: str | os.PathLike, text: str) -> Path:
        return self.write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def commit(self) -> None:
        for tmp, path in self._staged:
            os.replace(tmp, path)
        self._staged.clear()

    def discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Write one file through ``writer(tmp_path)`` and a rename."""
    with StagedFiles() as staged:
        return staged.write(path, writer)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ---------------------------------------------------------------------------- signals


_UNWINDING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived during a staged write: unwinds (like ``KeyboardInterrupt``, not
    caught by ``except Exception``) so that the temporaries are removed before the process ends."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


class _Unwind:
    """The state of one ``signals_unwind`` block: the first signal seen, and whether to wait."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.deferred = False  # set for the final swap: it runs to its end, the signal waits

    def handler(self, signum: int, frame: object) -> None:
        first = self.pending is None
        if first:
            self.pending = signum
        if first and not self.deferred:  # a second signal must not cut the cleanup short
            raise Terminated(signum)


@contextmanager
def signals_unwind() -> Iterator[_Unwind]:
    """SIGTERM and SIGHUP raise ``Terminated`` inside the block instead of ending the process on
    the spot, so ``finally`` and ``except BaseException`` cleanups run; on the way out the old
    handlers come back and the signal is delivered again to them (the default one ends the process
    with the signal's status, as without this block). Only in the main thread (Python's rule), and
    a signal that is ignored (``nohup``) or handled outside Python stays as it is."""
    state = _Unwind()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    old = {}
    for signum in _UNWINDING:
        previous = signal.getsignal(signum)
        if previous is signal.SIG_DFL or callable(previous):
            old[signum] = previous
            signal.signal(signum, state.handler)
    try:
        yield state
    finally:
        for signum, previous in old.items():
            signal.signal(signum, previous)
        if state.pending is not None:
            signal.raise_signal(state.pending)


# ---------------------------------------------------------------------------- staging folders


# .NAME.<pid>-<host>.<8 random>.staging (the new folder) or .old (the one it replaces, set aside)
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.[a-z0-9_]{8}\.(?P<kind>staging|old)$")
STALE_AFTER_S = 10.0  # a temporary younger than this is never removed, whoever made it


def _host_tag() -> str:
    """8 hex digits of the host name: a pid means nothing on another machine sharing the folder (NFS)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def staging_prefix(name: str) -> str:
    """``.NAME.<pid>-<host>.``: the start of a temporary's name, which says whose it is."""
    return f".{name}.{os.getpid()}-{_host_tag()}."


def _dead(pid: int) -> bool:
    """True only when no process ``pid`` exists here (a process of another user exists)."""
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def remove_stale_staging(parent: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that dead processes of this host left in ``parent``; return them.

    Only names of ``staging_prefix``'s form are looked at, only those whose process is gone and
    that are older than ``STALE_AFTER_S``. A set-aside old folder whose target is missing (the
    process died between the two renames) is put back instead of deleted."""
    parent = Path(parent)
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    removed, host, now = [], _host_tag(), time.time()
    for entry in entries:
        match = _STAGING.match(entry.name)
        try:
            stale = bool(match) and match["host"] == host and now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
        except OSError:
            continue
        if not stale or not _dead(int(match["pid"])):
            continue
        path = Path(entry.path)
        aside, target = path / match["name"], parent / match["name"]
        try:  # best effort: what cannot be removed must not stop the write that is starting
            if match["kind"] == "old" and aside.is_dir() and not os.path.lexists(target):
                os.replace(aside, target)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def _set_modes(folder: Path) -> None:
    """Every folder and file below ``folder`` gets the mode mkdir and open would have given it
    (writers such as safetensors create their files 0600)."""
    folders, files = dir_mode(), file_mode()
    os.chmod(folder, folders)
    for root, dirs, names in os.walk(folder):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), folders)
        for name in names:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), files)


def _swap(staging: Path, target: Path) -> None:
    """Put ``staging`` in ``target``'s place; an existing ``target`` is set aside until then."""
    aside = None
    if os.path.lexists(target):
        aside = Path(tempfile.mkdtemp(prefix=staging_prefix(target.name), suffix=".old", dir=target.parent)) / target.name
        os.replace(target, aside)
    try:
        os.replace(staging, target)
    except BaseException:
        if aside is not None:
            os.replace(aside, target)  # put the old folder back
        raise
    if aside is not None:
        shutil.rmtree(aside.parent, ignore_errors=True)


@contextmanager
def staged_dir(target: str | os.PathLike, may_replace: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Build a folder beside ``target`` and put it in ``target``'s place when the block ends.

    An existing ``target`` is renamed aside first and deleted only after the new folder is in
    place; on an error, Ctrl-C, SIGTERM or SIGHUP the staging folder is removed and ``target``
    is untouched. ``may_replace(target)`` runs right before the swap and raises to refuse it
    (``target`` may have changed while the block ran); the caller decides what may be replaced.
    """
    target = Path(target).resolve()
    with signals_unwind() as unwind:
        unwind.deferred = True  # a signal now would leave the new staging folder unnamed: it waits
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(target.parent)
            staging = Path(tempfile.mkdtemp(prefix=staging_prefix(target.name), suffix=".staging", dir=target.parent))
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {describe(exc)}") from None
        unwind.deferred = False
        try:
            if unwind.pending is not None:
                raise Terminated(unwind.pending)
            yield staging
            unwind.deferred = True  # from here on a signal waits until the swap is done
            _set_modes(staging)
            if may_replace is not None:
                may_replace(target)
            _swap(staging, target)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, Exception) and not isinstance(exc, RelspecError):  # a full disk, in any library's words
                raise OutputError(f"could not write {target}: {describe(exc)}; {target} is unchanged") from None
            raise
