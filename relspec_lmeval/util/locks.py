"""Output folders that are safe to write: checked before the slow work, and one writer at a time.

* ``probe_writable``: a folder about to be made or replaced can be written (not a symbolic link
  to nothing, not on a read-only file system, not without permission): said before a model
  loads, not after the whole run; nothing is left behind.
* ``folder_lock``: held while a command writes a folder; a second writer refuses at once.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from relspec_lmeval.errors import OutputError
from relspec_lmeval.util.files import describe, file_mode

__all__ = ["folder_lock", "probe_writable"]


def probe_writable(folder: str | os.PathLike, flag: str = "--out") -> None:
    """``OutputError`` now when ``folder`` (to be created, or written into) could not be written later.

    Its nearest existing ancestor must be a folder in which a file can be created (one is, and
    is removed at once); a symbolic link to nothing is refused, not followed.
    """
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise OutputError(f"{flag} {folder} is a symbolic link to {os.readlink(folder)}, which does not exist")
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise OutputError(f"cannot create {flag} {folder}: Not a directory ({existing} is a file)")
    try:
        fd, name = tempfile.mkstemp(prefix=".relspec-probe.", dir=existing)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise OutputError(f"cannot write into {flag} {folder}: {describe(exc)}") from None



def _holder(lock: Path) -> str:
    """`` (pid N)`` of the process that holds ``lock``, as it wrote it there; "" when unknown."""
    try:
        return f" (pid {int(lock.read_text(encoding='utf-8').split()[0])})"
    except (OSError, ValueError, IndexError):
        return ""


@contextmanager
def folder_lock(folder: str | os.PathLike, lock_name: str, flag: str = "--out") -> Iterator[Path]:
    """Hold ``folder/lock_name`` (``filelock``, never waiting) while a command writes ``folder``.

    A second relspec command that would write the same folder at the same time refuses at once,
    before its slow work, in one ``OutputError`` line (with the holder's pid): two runs writing one
    folder would leave files of one and a summary of the other. Taking the lock also checks that the
    folder can be written (a symbolic link to nothing, a read-only file system, no permission: one
    line naming ``flag`` and the folder), before the model loads rather than after the whole run.
    A folder created here and still empty at the end is removed again (a run that fails early
    leaves nothing); the lock file is removed when the lock is released (the kernel releases the
    lock of a killed process, so a leftover file never blocks).
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    probe_writable(folder, flag)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {flag} {folder}: {describe(exc)}") from None
    path = folder / lock_name
    lock = FileLock(str(path), timeout=0)
    try:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, file_mode()))  # can anything be written there?
            lock.acquire()
        except Timeout:
            raise OutputError(f"another relspec command{_holder(path)} is writing {flag} {folder}; wait until it ends, "
                              "or write to another folder") from None
        except OSError as exc:
            raise OutputError(f"cannot write into {flag} {folder}: {describe(exc)}") from None
        try:
            path.write_text(f"{os.getpid()}\n", encoding="utf-8")
            yield folder
        finally:
            path.unlink(missing_ok=True)  # while still held: a waiting peer sees the unlinked file and refuses
            lock.release()
    finally:
        if created:
            try:
                folder.rmdir()  # only if nothing was written
            except OSError:
                pass
