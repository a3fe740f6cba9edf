"""``relspec identify`` as a writer of folders (#20): the same bytes whatever is cached, one writer
per folder, one run per folder, and an unwritable ``--out`` found before the model loads.

The runs use the shipped relspec-tiny on a small cut of its world (3 relations, 120 P^det
prompts), which it answers correctly, so the correctness check and its answer cache matter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from relspec_lmeval.cli import main
from relspec_lmeval.identify.config import IdentifyConfig
from relspec_lmeval.identify.pipeline import identify
from relspec_lmeval.sets.folder import LOCK_FILE, SetsFolder

REPO = Path(__file__).resolve().parents[1]
WORLD = REPO / "models" / "relspec-tiny" / "world"
BOTH = "person_father,company_ceo"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """person_father, company_ceo and star_constellation of relspec-tiny's world, 48 subjects each."""
    folder = tmp_path_factory.mktemp("world")
    for name in ("person_father", "company_ceo", "star_constellation"):
        raw = json.loads((WORLD / f"{name}.json").read_text(encoding="utf-8"))
        raw["samples"] = raw["samples"][:48]
        (folder / f"{name}.json").write_text(json.dumps(raw), encoding="utf-8")
    return folder


def run(world: Path, out: Path, relations: str = BOTH, **kw) -> dict:
    base = dict(model="relspec-tiny", out=str(out), data=str(world), relations=relations, k=20, min_positives=5, batch_size=16,
                device="cpu", command="relspec identify (test)", progress=False, print_table=False)
    return identify(IdentifyConfig(**{**base, **kw}))


def argv(world: Path, out: Path, relations: str = BOTH, k: int = 20, *extra: str) -> list[str]:
    return ["identify", "--model", "relspec-tiny", "--data", str(world), "--relations", relations, "--k", str(k), "--out", str(out),
            "--min-positives", "5", "--batch-size", "16", "--device", "cpu", "--quiet", *extra]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def described(folder: Path) -> None:
    """summary.json lists exactly the sets and scores present, and its overlaps are theirs."""
    summary = json.loads((folder / "summary.json").read_text())
    listed = {e[key] for e in summary["relations"].values() for key in ("set_file", "scores_file")}
    present = {str(p.relative_to(folder)) for p in [*folder.glob("*.safetensors"), *folder.glob("scores/*.safetensors")]}
    assert listed == present
    assert sorted(summary["overlaps"]) == sorted(summary["relations"])
    for relation, entry in summary["relations"].items():
        meta = json.loads(load_file_metadata(folder / entry["set_file"]))["metadata"]
        assert meta["k"] == summary["parameters"]["k"] == entry["neurons"], relation
    assert not (folder / LOCK_FILE).exists()


def load_file_metadata(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()["relspec"]


def one_error(capsys, *names: str) -> str:
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("relspec: error:"), lines
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def no_model_load(monkeypatch):
    import relspec_lmeval.identify.pipeline as pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error was found")

    monkeypatch.setattr(pipeline, "load_model", refuse)


# ---------------------------------------------------------------------------- 1. the same bytes


def test_the_same_command_writes_the_same_bytes_whatever_is_cached(world, tmp_path, monkeypatch, capsys):
    """Fails before #20: the means came from the generation's prefill for new answers and from a
    right-padded forward, in other batches, for cached ones (``layers.0.down_proj.means`` differed)."""
    monkeypatch.setenv("RELSPEC_CACHE_DIR", str(tmp_path / "cache1"))
    run(world, tmp_path / "fresh")
    run(world, tmp_path / "cached")  # every answer from the cache
    assert "96 answers of the correctness check reused" in capsys.readouterr().err  # every answer of the 24 + 72 P^det
    fresh = files(tmp_path / "fresh")
    assert files(tmp_path / "cached") == fresh and len(fresh) == 5
    monkeypatch.setenv("RELSPEC_CACHE_DIR", str(tmp_path / "cache2"))
    run(world, tmp_path / "father", relations="person_father")  # caches the answers of its batches only
    run(world, tmp_path / "partial")
    err = capsys.readouterr().err
    assert "answers of the correctness check reused" in err and "96 answers" not in err
    assert files(tmp_path / "partial") == fresh
    # the means are over the whole pool, whichever relations are asked: the same in every run
    means = load_file(tmp_path / "father" / "scores" / "person_father.safetensors")
    assert all(torch.equal(means[key], load_file(tmp_path / "fresh" / "scores" / "company_ceo.safetensors")[key])
               for key in means if key.endswith(".means"))


def test_another_batch_size_gives_the_same_sets(world, tmp_path):
    """Padding moves float32 sums in the last bits; the sets stay, AP and means within 1e-5 (docs/identification.md)."""
    run(world, tmp_path / "b1", relations="person_father", batch_size=1)
    run(world, tmp_path / "b7", relations="person_father", batch_size=7)
    for name in ("person_father.safetensors", "scores/person_father.safetensors"):
        one, seven = load_file(tmp_path / "b1" / name), load_file(tmp_path / "b7" / name)
        assert one.keys() == seven.keys()
        for key in one:
            if key.endswith(".indices"):
                assert torch.equal(one[key], seven[key]), key
            else:
                torch.testing.assert_close(one[key], seven[key], rtol=0, atol=1e-5, msg=key)


@pytest.mark.multicore
def test_two_processes_with_a_partial_cache_write_the_bytes_of_one_fresh_process(world, tmp_path, monkeypatch):
    """The prefill sums are added in batch order for any process count (``Processes.add_in_order``);
    the second process count runs with some answers cached, the first with none."""
    monkeypatch.setenv("RELSPEC_CACHE_DIR", str(tmp_path / "fresh-cache"))
    run(world, tmp_path / "one")
    monkeypatch.setenv("RELSPEC_CACHE_DIR", str(tmp_path / "cache"))
    run(world, tmp_path / "father", relations="person_father")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "-m", "relspec_lmeval"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    done = subprocess.run([*launch, *argv(world, tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "answers of the correctness check reused" in done.stderr
    ours = files(tmp_path / "two")
    summary = json.loads(ours.pop("summary.json"))
    reference = files(tmp_path / "one")
    assert json.loads(reference.pop("summary.json"))["relations"] == summary["relations"]
    for name in reference:  # the command line differs: compare everything but it
        theirs = json.loads(load_file_metadata(tmp_path / "two" / name))
        mine = json.loads(load_file_metadata(tmp_path / "one" / name))
        assert {**theirs["metadata"], "command": None} == {**mine["metadata"], "command": None}, name
        a, b = load_file(tmp_path / "one" / name), load_file(tmp_path / "two" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


# ---------------------------------------------------------------------------- 2. one writer per folder


def test_a_second_writer_is_refused_before_the_model_loads(world, tmp_path, capsys, no_model_load):
    """Fails before #20: both runs wrote the folder; summary.json said 30 neurons where the file held 20."""
    out = tmp_path / "ns"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom relspec_lmeval.util.locks import folder_lock\n"
         f"with folder_lock(sys.argv[1], {LOCK_FILE!r}):\n    print('held', flush=True)\n    time.sleep(60)\n", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(argv(world, out)) == 2
        one_error(capsys, "another relspec command", f"(pid {holder.pid})", f"--out {out}")
        scores = tmp_path / "scores.safetensors"  # relspec select into that folder waits its turn too
        scores.write_bytes((REPO / "neuron_sets" / "relspec-tiny" / "scores" / "person_father.safetensors").read_bytes())
        assert main(["select", "--k", "5", str(scores), "--out", str(out)]) == 2
        one_error(capsys, "another relspec command", str(out))
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()


def test_commands_that_write_a_sets_folder_take_its_lock(world, tmp_path, capsys):
    out = tmp_path / "ns"
    run(world, out, relations="person_father")
    assert not (out / LOCK_FILE).exists()  # released, and removed
    set_file, scores = out / "person_father.safetensors", out / "scores" / "person_father.safetensors"
    with SetsFolder(out).lock():
        for command in (["random", "--like", str(set_file), "--seeds", "1"], ["select", "--k", "5", str(scores)]):
            assert main(command) == 2
            one_error(capsys, "another relspec command", f"(pid {os.getpid()})", str(out))
    assert main(["select", "--k", "5", str(scores)]) == 0 and (out / "k5" / "person_father.safetensors").is_file()


# ---------------------------------------------------------------------------- 3. one run per folder


def test_a_rerun_adds_to_a_matching_folder_and_is_refused_with_other_parameters(world, tmp_path, capsys, monkeypatch):
    """Fails before #20: the rerun's summary.json listed person_father only, company_ceo's files stayed."""
    out = tmp_path / "ns"
    assert main(argv(world, out)) == 0
    capsys.readouterr()
    before = files(out)
    assert main(argv(world, out, "person_father")) == 0
    assert "kept 1 relation(s)" in capsys.readouterr().err
    after = files(out)
    assert sorted(after) == sorted(before) and all(after[n] == before[n] for n in after if "company_ceo" in n)
    summary, earlier = (json.loads(f["summary.json"]) for f in (after, before))
    assert summary["relations"] == earlier["relations"] and summary["overlaps"] == earlier["overlaps"]
    described(out)
    before = after

    import relspec_lmeval.identify.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the refusal"))
    assert main(argv(world, out, "person_father", 30)) == 2
    one_error(capsys, f"--out {out}", "k=20 (this run: 30)", "--force")
    assert main([*argv(world, out, "person_father"), "--batch-size", "8"]) == 2
    one_error(capsys, "batch_size=16 (this run: 8)")
    assert files(out) == before
    monkeypatch.undo()

    assert main(["random", "--like", str(out / "company_ceo.safetensors"), "--seeds", "1"]) == 0
    assert main(["select", "--k", "5", str(out / "scores" / "company_ceo.safetensors")]) == 0
    assert main([*argv(world, out, "person_father", 30), "--force"]) == 0
    assert sorted(files(out)) == ["person_father.safetensors", "scores/person_father.safetensors", "summary.json"]
    described(out)


def test_an_interrupted_run_leaves_a_described_folder_of_one_run(world, tmp_path, monkeypatch):
    """Fails before #20 (the --force part): Ctrl-C after the first relation of a k 30 rerun left
    company_ceo's k 20 set beside person_father's k 30 one."""
    import relspec_lmeval.identify.pipeline as pipeline

    run(world, tmp_path / "fresh")
    run(world, tmp_path / "k20")
    real, calls = pipeline._two_class, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) % 2 == 0:  # after the first relation of the run was written
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_two_class", interrupted)
    first = ["person_father.safetensors", "scores/person_father.safetensors", "summary.json"]
    for out, kw in ((tmp_path / "ns", {}), (tmp_path / "k20", {"k": 30, "force": True})):
        with pytest.raises(KeyboardInterrupt):
            run(world, out, **kw)
        assert sorted(files(out)) == first
        described(out)
    monkeypatch.undo()
    run(world, tmp_path / "ns")  # the same command again: adds company_ceo
    assert files(tmp_path / "ns") == files(tmp_path / "fresh")


@pytest.mark.parametrize("damage", ["no summary", "unlisted set", "listed set missing"])
def test_a_folder_that_is_not_one_run_is_refused(damage, world, tmp_path, capsys, no_model_load):
    out = tmp_path / "ns"
    shipped = REPO / "neuron_sets" / "relspec-tiny"
    out.mkdir()
    (out / "scores").mkdir()
    for name in ("person_father.safetensors", "scores/person_father.safetensors"):
        (out / name).write_bytes((shipped / name).read_bytes())
    summary = json.loads((shipped / "summary.json").read_text())
    summary["relations"] = {"person_father": summary["relations"]["person_father"]}
    (out / "summary.json").write_text(json.dumps(summary))
    if damage == "no summary":
        (out / "summary.json").unlink()
    elif damage == "unlisted set":
        (out / "extra.safetensors").write_bytes((shipped / "person_mother.safetensors").read_bytes())
    else:
        (out / "scores" / "person_father.safetensors").unlink()
    before = files(out)
    assert main(argv(world, out, "person_father", 38)) == 2
    line = one_error(capsys, f"--out {out}", "--force")
    assert {"no summary": "no readable summary.json", "unlisted set": "extra.safetensors is not listed",
            "listed set missing": "is missing"}[damage] in line
    assert files(out) == before


# ---------------------------------------------------------------------------- 4. an --out that cannot be written


def test_a_dangling_symlink_out_is_refused_before_the_model_loads(world, tmp_path, capsys, no_model_load):
    """Fails before #20: the run ended only after every pass, when the first file was written."""
    out = tmp_path / "ns"
    out.symlink_to(tmp_path / "gone")
    assert main(argv(world, out)) == 2
    one_error(capsys, f"--out {out} is a symbolic link to {tmp_path / 'gone'}, which does not exist")


def test_an_out_that_cannot_be_created_is_refused_before_the_model_loads(world, tmp_path, capsys, no_model_load):
    (tmp_path / "a-file").write_text("keep")
    assert main(argv(world, tmp_path / "a-file" / "ns")) == 2
    one_error(capsys, f"cannot create --out {tmp_path / 'a-file' / 'ns'}", "Not a directory")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_out_is_refused_before_the_model_loads(world, tmp_path, capsys, no_model_load):
    out = tmp_path / "ns"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert main(argv(world, out)) == 2
        one_error(capsys, f"cannot write into --out {out}", "Permission denied")
    finally:
        out.chmod(0o700)


def test_an_out_the_kernel_refuses_to_write_is_refused_before_the_model_loads(world, tmp_path, capsys, monkeypatch, no_model_load):
    """As root (this machine) chmod does not stop writes: the kernel's refusal is simulated where the
    lock file is created, the probe every writer of a sets folder goes through."""
    import errno

    import relspec_lmeval.util.files as files_module

    real = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(LOCK_FILE):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files_module.os, "open", read_only)
    out = tmp_path / "ns"
    out.mkdir()
    start = time.perf_counter()
    assert main(argv(world, out)) == 2
    one_error(capsys, f"cannot write into --out {out}", "Read-only file system")
    assert time.perf_counter() - start < 30 and list(out.iterdir()) == []
