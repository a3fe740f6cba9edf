"""Writing outputs so that nothing is half-written and nothing of the user's is lost.

* ``atomic_write_text`` / ``atomic_write``: one file, through a temporary file beside it
  and a rename: readers see the old file or the new one, never a part.
* ``StagedFiles``: several files that belong together (a relation's set, its scores and
  the summary that lists them) are all written to temporary names first and moved into
  place only when every one was written; a failure (a full disk) removes the temporaries
  and leaves the folder as it was.
* ``staged_dir``: a folder built beside its target and swapped in at the end; the old
  folder is kept until the new one is in place.

Files get the mode an ordinary ``open(path, "w")`` would give (0666 less the umask), not
the 0600 of ``tempfile``. Every failure to write is an ``OutputError`` naming the path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from relspec_lmeval.errors import OutputError, RelspecError

__all__ = ["StagedFiles", "atomic_write", "atomic_write_text", "file_mode", "staged_dir"]


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it
    os.umask(mask)
    return mask


def file_mode() -> int:
    """0666 less the process umask: the mode ``open(..., "w")`` gives a new file."""
    return 0o666 & ~_umask()


def _describe(exc: BaseException) -> str:
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
            raise OutputError(f"cannot write {path}: {_describe(exc)}") from None
        tmp = Path(name)
        self._staged.append((tmp, path))
        try:
            writer(tmp)
            os.chmod(tmp, file_mode())
        except Exception as exc:  # safetensors reports a full disk as SafetensorError
            raise OutputError(f"could not write {path}: {_describe(exc)}; nothing was written") from None
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


@contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Build a folder beside ``target`` and put it in ``target``'s place when the block ends.

    An existing ``target`` is renamed aside first and deleted only after the new folder is
    in place; on an error the staging folder is removed and ``target`` is untouched. The
    caller decides whether ``target`` may be replaced at all.
    """
    target = Path(target).resolve()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 is not what mkdir gives
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {_describe(exc)}") from None
    try:
        yield staging
        aside = None
        if target.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)) / target.name
            os.replace(target, aside)
        try:
            os.replace(staging, target)
        except BaseException:
            if aside is not None:
                os.replace(aside, target)  # put the old folder back
            raise
        if aside is not None:
            shutil.rmtree(aside.parent, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, RelspecError):  # a full disk, in any library's words
            raise OutputError(f"could not write {target}: {_describe(exc)}; {target} is unchanged") from None
        raise
