"""Leftovers, races, modes and paths of ``relspec export`` and the GGUF conversion cache (#20).

* SIGTERM / SIGHUP inside a staged write removes the staging folder; what a killed process left
  (its pid is dead) is removed by the next staged write into the same parent, nothing else is.
* ``--force`` (and a plain export) checks the target again right before the swap: a file or folder
  that appeared while the weights loaded is never deleted.
* Every file and folder written gets 0666 / 0777 less the umask.
* ``gguf_file`` stays inside the model folder unless absolute, and must be a GGUF file.

Each test names, in its docstring, the check in the package whose removal makes it fail.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import transformers
from conftest import REPO, default_signals

import relspec_lmeval.modelio.gguf as gguf_mod
import relspec_lmeval.util.files as files
from relspec_lmeval.cli import main
from relspec_lmeval.errors import ModelError
from relspec_lmeval.lm.export import EXPORT_MARKER
from relspec_lmeval.lm.hflm import RelspecHFLM
from relspec_lmeval.modelio.gguf import MARKER, converted_folder
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.util.files import Terminated, staged_dir, staging_prefix

TINY = {"name": "tiny", "num_layers": 2, "hidden_size": 32, "intermediate_size": 64}
OLD = time.time() - 3600  # an mtime well past files.STALE_AFTER_S
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------- helpers


def tree(root: Path) -> dict[str, str]:
    """Every entry below ``root``: files by content, folders as such (staging leftovers show)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else p.read_bytes().hex()[:64] for p in sorted(root.rglob("*"))}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    """The pid of a process that has ended (reaped, so no process has it)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def temp_name(name: str, pid: int, kind: str = "staging", rand: str = "abcd1234") -> str:
    """A temporary's name as ``staged_dir`` makes it, for process ``pid`` of this host."""
    return staging_prefix(name).replace(f".{os.getpid()}-", f".{pid}-") + f"{rand}.{kind}"


def make_temp(parent: Path, name: str, pid: int, kind: str = "staging", age: float = OLD, **kw) -> Path:
    path = parent / temp_name(name, pid, kind, **kw)
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"gigabytes")
    os.utime(path, (age, age))
    return path


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the child ended early: {proc.communicate()[1][-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("the child never got ready")
        time.sleep(0.05)


def one_error(capsys, *names) -> str:
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("relspec: error:"), lines
    for name in names:
        assert str(name) in lines[0], f"{name!r} not in: {lines[0]}"
    return lines[0]


def modes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root.parent)): oct(stat.S_IMODE(p.lstat().st_mode)) for p in [root, *root.rglob("*")]}


def expected_modes(root: Path, umask: int) -> dict[str, str]:
    return {str(p.relative_to(root.parent)): oct((0o777 if p.is_dir() else 0o666) & ~umask) for p in [root, *root.rglob("*")]}


@pytest.fixture()
def set_file(tmp_path) -> Path:
    (tmp_path / "sets").mkdir()
    return NeuronSet({(0, "gate_proj"): [1, 2], (1, "down_proj"): [3]}, {"relation": "company_ceo", "model": TINY}).save(
        tmp_path / "sets" / "ceo.safetensors")


@pytest.fixture()
def no_progress_bars():
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    yield
    if enabled:
        logging.enable_progress_bar()


def export_argv(model: Path, neuron_set: Path, out: Path, *extra: str) -> list[str]:
    return ["export", "--model", str(model), "--neuron-set", str(neuron_set), "--out", str(out), *extra]


# ---------------------------------------------------------------------------- 1. SIGTERM, and what SIGKILL leaves

STAGED_CHILD = """
import pathlib, sys, time
from relspec_lmeval.util.files import staged_dir
target, ready = map(pathlib.Path, sys.argv[1:])
with staged_dir(target) as staging:
    (staging / "model.safetensors").write_bytes(b"x" * 100000)
    ready.touch()
    time.sleep(120)
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("earlier", [False, True], ids=["new", "replacing"])
def test_a_signal_during_a_staged_write_leaves_nothing(signame, earlier, tmp_path):
    """A real child process, signalled while it writes: it ends by the signal, the staging folder is
    gone and an earlier target is as it was. Fails without ``files.signals_unwind`` in ``staged_dir``
    (the default action would end the process with the staging folder beside the target)."""
    parent = tmp_path / "parent"
    parent.mkdir()
    target, ready = parent / "ablated", tmp_path / "ready"
    if earlier:
        target.mkdir()
        (target / "config.json").write_text("{}")
    before = tree(parent)
    proc = subprocess.Popen([sys.executable, "-c", STAGED_CHILD, str(target), str(ready)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)
    wait_for(ready, proc)
    assert hidden(parent)  # the staging folder is there while it writes
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -getattr(signal, signame), err  # ends as the signal would have ended it
    assert "Traceback" not in err, err
    assert tree(parent) == before and hidden(parent) == []


def test_sigterm_unwinds_to_the_callers_own_handler(tmp_path):
    """In this process: a handler installed before the staged write gets the signal after the cleanup,
    and comes back afterwards. Fails without the re-delivery in ``files.signals_unwind``."""
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with pytest.raises(Terminated):
            with staged_dir(tmp_path / "out") as staging:
                (staging / "a.bin").write_bytes(b"1")
                signal.raise_signal(signal.SIGTERM)
                time.sleep(5)  # never reached: the handler raises at once
        assert seen == [signal.SIGTERM]
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGTERM, None)  # the caller's own handler is back
        assert seen == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert list(tmp_path.iterdir()) == []


def test_a_staged_write_in_a_thread_works(tmp_path):
    """Signal handlers can only be set in the main thread: elsewhere the write goes on without them."""
    errors = []

    def write():
        try:
            with staged_dir(tmp_path / "out") as staging:
                (staging / "a.txt").write_text("1")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    worker = threading.Thread(target=write)
    worker.start()
    worker.join()
    assert errors == [] and (tmp_path / "out" / "a.txt").read_text() == "1"


def test_stale_staging_of_dead_processes_is_removed_and_nothing_else(tmp_path):
    """What SIGKILL leaves (the pid is dead): removed by the next staged write into the parent; a live
    process's, a young one, another host's and names not of our form stay.
    Fails without ``files.remove_stale_staging`` in ``staged_dir``."""
    dead = dead_pid()
    stale = [make_temp(tmp_path, "ablated", dead), make_temp(tmp_path, "other.model", dead, rand="zz_99abc")]
    kept = [
        make_temp(tmp_path, "ablated", os.getppid()),  # alive
        make_temp(tmp_path, "ablated", dead, age=time.time(), rand="young123"),  # too young to judge
    ]
    other_host = tmp_path / f".ablated.{dead}-00000000.abcd1234.staging"
    for name in (other_host.name, ".ablated.staging", f".ablated.{dead}.abcd1234.staging", "ablated.backup"):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (OLD, OLD))
    user_file = tmp_path / temp_name("notes", dead, rand="abcdefgh")
    user_file.write_text("a file of ours by its name: removed too")
    os.utime(user_file, (OLD, OLD))
    with staged_dir(tmp_path / "ablated") as staging:
        (staging / "config.json").write_text("{}")
    names = {p.name for p in tmp_path.iterdir()}
    assert not any(p.name in names for p in [*stale, user_file])
    assert {p.name for p in kept} | {other_host.name, ".ablated.staging", f".ablated.{dead}.abcd1234.staging", "ablated.backup", "ablated"} == names


def test_an_old_folder_set_aside_by_a_killed_process_comes_back(tmp_path):
    """Killed between the two renames: the earlier target sits in ``.NAME.<pid>-<host>.<rand>.old/NAME``.
    With no target, it is put back, not deleted. Fails without the ``kind == "old"`` branch."""
    dead = dead_pid()
    aside = tmp_path / temp_name("ablated", dead, "old")
    (aside / "ablated").mkdir(parents=True)
    (aside / "ablated" / "config.json").write_text('{"earlier": 1}')
    os.utime(aside, (OLD, OLD))
    assert files.remove_stale_staging(tmp_path) == [aside]
    assert (tmp_path / "ablated" / "config.json").read_text() == '{"earlier": 1}' and hidden(tmp_path) == []


# ---------------------------------------------------------------------------- 2. --force checks again at the swap


def drop_during_load(monkeypatch, action) -> None:
    """``action()`` runs while the weights load, as a user writing into the output folder would."""
    real = transformers.AutoModelForCausalLM.from_pretrained

    def loading(*args, **kwargs):
        action()
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", loading)


@pytest.mark.parametrize("what", ["file", "empty folder"])
def test_force_keeps_what_was_written_into_the_target_during_the_load(what, tiny_llama_dir, set_file, tmp_path, monkeypatch,
                                                                      capsys, no_progress_bars):
    """Fails without ``may_replace`` (``check_replaceable(late=True)``) at the swap: the folder was
    checked only before the load, and the swap deleted what appeared since."""
    out = tmp_path / "ablated"
    assert main(export_argv(tiny_llama_dir, set_file, out)) == 0
    capsys.readouterr()
    new = out / ("my_results.json" if what == "file" else "keep")
    drop_during_load(monkeypatch, lambda: new.write_text("{}") if what == "file" else new.mkdir())
    before_load = tree(out)
    assert main(export_argv(tiny_llama_dir, set_file, out, "--force")) == 2
    one_error(capsys, out, new.name, "changed while the export ran")
    assert new.exists() and {k: v for k, v in tree(out).items() if k != new.name} == before_load
    assert hidden(tmp_path) == []  # the staged checkpoint was discarded


def test_an_empty_subfolder_makes_the_target_off_limits_before_the_load(tiny_llama_dir, set_file, tmp_path, capsys, no_progress_bars):
    """Fails without folders in ``export._entries_below`` (only files were compared with the marker)."""
    out = tmp_path / "ablated"
    assert main(export_argv(tiny_llama_dir, set_file, out)) == 0
    (out / "empty").mkdir()
    capsys.readouterr()
    assert main(export_argv(tiny_llama_dir, set_file, out, "--force")) == 2
    one_error(capsys, out, "empty/")
    assert (out / "empty").is_dir()


def test_a_folder_made_during_the_load_without_force_is_kept(tiny_llama_dir, set_file, tmp_path, monkeypatch, capsys, no_progress_bars):
    """No target at the first check, the user's folder at the swap: refused, not swapped out and deleted."""
    out = tmp_path / "ablated"

    def make():
        out.mkdir()
        (out / "thesis.tex").write_text("mine")

    drop_during_load(monkeypatch, make)
    assert main(export_argv(tiny_llama_dir, set_file, out)) == 2
    one_error(capsys, out, "not empty", "changed while the export ran")
    assert tree(out) == {"thesis.tex": b"mine".hex()} and hidden(tmp_path) == []


def test_force_replaces_an_earlier_export_with_subfolders(tiny_llama_dir, set_file, tmp_path, capsys, no_progress_bars):
    """Folders the marker's files are in are the export's own: ``--force`` still replaces it."""
    out = tmp_path / "ablated"
    assert main(export_argv(tiny_llama_dir, set_file, out)) == 0
    (out / "sub").mkdir()
    (out / "sub" / "extra.json").write_text("{}")
    marker = (out / EXPORT_MARKER).read_text().replace('"files": [', '"files": [\n  "sub/extra.json",')
    (out / EXPORT_MARKER).write_text(marker)
    assert main(export_argv(tiny_llama_dir, set_file, out, "--force")) == 0
    assert not (out / "sub").exists() and hidden(tmp_path) == []


# ---------------------------------------------------------------------------- 3. the umask


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_export_honours_the_umask(umask, tiny_llama_dir, set_file, tmp_path, no_progress_bars):
    """Fails without ``files._set_modes`` in ``staged_dir`` (safetensors writes its shards 0600)."""
    out = tmp_path / "ablated"
    old = os.umask(umask)
    try:
        assert main(export_argv(tiny_llama_dir, set_file, out)) == 0
    finally:
        os.umask(old)
    assert any(name.endswith(".safetensors") for name in modes(out))
    assert modes(out) == expected_modes(out, umask)


# ---------------------------------------------------------------------------- 4. the GGUF cache


@pytest.fixture(scope="module")
def gguf_folder(tmp_path_factory) -> Path:
    """A folder holding ``tiny.gguf`` (a random 2-layer Llama) and nothing else."""
    from gguf_writer import tiny_llama, write_gguf

    model, tokenizer = tiny_llama(seed=3)
    folder = tmp_path_factory.mktemp("gguf-model")
    write_gguf(model, tokenizer, folder / "tiny.gguf")
    return folder


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RELSPEC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "cache"


def digest_folder(cache: Path, file: Path) -> Path:
    return cache / "gguf" / hashlib.sha256(file.read_bytes()).hexdigest()[:16]


GGUF_CHILD = """
import pathlib, sys, time
from transformers import PreTrainedModel
from relspec_lmeval.modelio.gguf import converted_folder
folder, ready = sys.argv[1:]
def slow_save(self, directory, *args, **kwargs):
    pathlib.Path(directory, "model.safetensors").write_bytes(b"x" * 100000)
    pathlib.Path(ready).touch()
    time.sleep(120)
PreTrainedModel.save_pretrained = slow_save
converted_folder(folder, "tiny.gguf", progress=False)
"""


def test_sigterm_during_a_gguf_conversion_leaves_nothing(gguf_folder, cache, tmp_path):
    """A real conversion in a child process, ended by SIGTERM while it saves: no partial folder in the
    cache; the next conversion works. Fails without ``staged_dir`` (and its signals) in ``gguf._build``."""
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", GGUF_CHILD, str(gguf_folder), str(ready)], env={**ENV, "RELSPEC_CACHE_DIR": str(cache)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)
    wait_for(ready, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err
    target = digest_folder(cache, gguf_folder / "tiny.gguf")
    assert hidden(cache / "gguf") == [] and not target.exists()
    assert converted_folder(gguf_folder, "tiny.gguf", progress=False) == target and (target / MARKER).is_file()


def test_a_killed_conversions_staging_goes_at_the_next_load(gguf_folder, cache):
    """Even when the next call finds its conversion cached. Fails without ``remove_stale_staging`` in
    ``converted_folder``."""
    target = converted_folder(gguf_folder, "tiny.gguf", progress=False)
    stale = make_temp(target.parent, "0123456789abcdef", dead_pid())
    live = make_temp(target.parent, "0123456789abcdef", os.getppid())
    assert converted_folder(gguf_folder, "tiny.gguf", progress=False) == target
    assert hidden(target.parent) == [live.name] and not stale.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_the_gguf_cache_honours_the_umask(umask, gguf_folder, cache):
    """Fails without ``staged_dir`` in ``gguf._build`` (mkdtemp's folder is 0700, shards 0600)."""
    old = os.umask(umask)
    try:
        target = converted_folder(gguf_folder, "tiny.gguf", progress=False)
    finally:
        os.umask(old)
    assert modes(target) == expected_modes(target, umask)
    assert oct(stat.S_IMODE((cache / "gguf").stat().st_mode)) == oct(0o777 & ~umask)


def test_the_assembled_packaged_file_honours_the_umask(gguf_folder, cache, monkeypatch):
    """A packaged model's chunks, assembled into the cache: not mkstemp's 0600. Fails without the
    ``os.chmod`` in ``gguf._assemble``."""
    import shutil
    import types

    package = types.ModuleType("relspec_test_umask_pkg")
    package.MODEL_NAME = "umask-model.gguf"
    package.assemble = lambda path, overwrite=False: shutil.copyfile(gguf_folder / "tiny.gguf", path)
    monkeypatch.setitem(sys.modules, package.__name__, package)
    monkeypatch.setitem(gguf_mod.PACKAGED, "umask-model", gguf_mod.PackagedGGUF(package.__name__, "pip install x", "a fake"))
    old = os.umask(0o022)
    try:
        assembled = gguf_mod.packaged_gguf("umask-model")
    finally:
        os.umask(old)
    assert oct(stat.S_IMODE(assembled.stat().st_mode)) == "0o644" and hidden(assembled.parent) == []


# ---------------------------------------------------------------------------- 5. gguf_file paths


@pytest.fixture()
def outside(gguf_folder, tmp_path) -> tuple[Path, Path]:
    """(a model folder, a real GGUF file beside it, outside it)."""
    import shutil

    model = tmp_path / "model"
    model.mkdir()
    shutil.copyfile(gguf_folder / "tiny.gguf", tmp_path / "outside.gguf")
    return model, tmp_path / "outside.gguf"


@pytest.fixture()
def no_hashing(monkeypatch):
    """Hashing (slow on a real model) must not start before the path is refused."""
    monkeypatch.setattr(gguf_mod, "file_sha256", lambda path: pytest.fail(f"{path} was hashed before the check"))


@pytest.mark.parametrize("how", ["dotdot", "symlink"])
def test_a_relative_gguf_file_outside_the_model_folder_is_refused(how, outside, cache, no_hashing, set_file, tmp_path, capsys):
    """Fails without the ``is_relative_to`` check in ``gguf.gguf_path`` (``../`` was read)."""
    model, file = outside
    name = "../outside.gguf"
    if how == "symlink":
        name = "link.gguf"
        (model / name).symlink_to(file)
    with pytest.raises(ModelError, match="outside the model folder"):
        converted_folder(model, name)
    with pytest.raises(ModelError, match="outside the model folder"):
        RelspecHFLM(pretrained=str(model), gguf_file=name, device="cpu")
    out = tmp_path / "out"
    assert main(["export", "--model", str(model), "--gguf-file", name, "--neuron-set", str(set_file), "--out", str(out)]) == 2
    one_error(capsys, name, "outside the model folder", model)
    assert not out.exists() and not cache.exists()


def test_an_absolute_gguf_path_is_read_as_given(outside, cache):
    model, file = outside
    assert converted_folder(model, str(file), progress=False) == digest_folder(cache, file)


@pytest.mark.parametrize("where", ["absolute", "inside"])
def test_a_file_that_is_not_gguf_is_refused_before_hashing(where, outside, cache, no_hashing, set_file, tmp_path, capsys):
    """``/etc/hostname`` (or any non-GGUF file) as ``gguf_file``: refused by its first bytes, before
    it is hashed or handed to transformers. Fails without the magic check in ``gguf.gguf_path``."""
    model, _ = outside
    if where == "absolute":
        file = Path("/etc/hostname")
        if not file.is_file():
            file = tmp_path / "hostname"
            file.write_text("myhost\n")
        name = str(file)
    else:
        file = model / "notes.gguf"
        file.write_text("just some text\n")
        name = file.name
    with pytest.raises(ModelError, match="is not a GGUF file"):
        converted_folder(model, name)
    out = tmp_path / "out"
    assert main(["export", "--model", str(model), "--gguf-file", name, "--neuron-set", str(set_file), "--out", str(out)]) == 2
    one_error(capsys, file, "is not a GGUF file")
    assert not out.exists() and not cache.exists()


def test_export_refuses_a_dangling_link_or_unwritable_out_before_the_weights_load(tmp_path, capsys, monkeypatch):
    """As identify --out: a symbolic link to nothing is not followed, a place that cannot be
    written is said before the (slow) load, not after it."""
    import transformers

    from relspec_lmeval.cli import main
    from relspec_lmeval.sets.neuron_set import NeuronSet

    def no_load(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    tiny = {"name": "relspec-tiny", "num_layers": 6, "hidden_size": 128, "intermediate_size": 256}
    good = NeuronSet({(0, "gate_proj"): [1, 2]}, {"model": tiny}).save(tmp_path / "good.safetensors")
    (tmp_path / "dl").symlink_to(tmp_path / "gone")
    (tmp_path / "a-file").write_text("keep")
    for out, expected in ((tmp_path / "dl", "is a symbolic link to"), (tmp_path / "a-file" / "o", "Not a directory")):
        assert main(["export", "--model", "relspec-tiny", "--neuron-set", str(good), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "gone").exists() and (tmp_path / "a-file").read_text() == "keep"
