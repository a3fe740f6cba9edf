"""Nothing lost, nothing silent (#11): no command loses a user's file, writes the shipped files,
leaves half an output behind or accepts a value that cannot work; every refusal is ONE
``relspec: error: ...`` line on stderr naming the thing, with exit status 2.

Each test names, in its docstring, the check in the package whose removal makes it fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from lm_eval.models.huggingface import HFLM

from relspec_lmeval.cli import main
from relspec_lmeval.data.templates import PAPER_RELATIONS
from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.lm.export import EXPORT_MARKER
from relspec_lmeval.lm.hflm import RelspecHFLM
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.resolve import resolve_set_path
from relspec_lmeval.util.files import atomic_write_text
from relspec_lmeval.util.resources import resource_dir, shipped_neuron_set

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "tiny", "num_layers": 2, "hidden_size": 32, "intermediate_size": 64}
WORDS = "paris france europe asia tennis guitar piano apple google star".split()
RELATIONS = ("company_hq", "landmark_country", "person_father")


# ---------------------------------------------------------------------------- helpers


def one_error(capsys, *names) -> str:
    """The single stderr line of a refused command; it must name each of ``names``."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("relspec: error:"), err
    for name in names:
        assert str(name) in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Every entry below ``root``: files by content hash, folders as such (staging leftovers show)."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Names, sizes and modification times: an overwritten file shows even under the same name."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def files_below(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def write_data(folder: Path, relations=RELATIONS, subjects: int = 10) -> Path:
    """A small LRE-format folder (half the subjects of each relation end up in P^det)."""
    folder.mkdir(parents=True, exist_ok=True)
    for r, name in enumerate(relations):
        spec = PAPER_RELATIONS[name]
        samples = [{"subject": f"{WORDS[j]} {WORDS[(j + r + 1) % 10]}", "object": WORDS[(3 * j + r) % 10].capitalize()} for j in range(subjects)]
        raw = {"name": name, "prompt_templates": list(spec.templates), "prompt_templates_zs": [], "properties": {}, "samples": samples}
        (folder / spec.file).write_text(json.dumps(raw), encoding="utf-8")
    return folder


def identify_argv(model: Path, data: Path, out: Path, relations: str | None = "company_hq,person_father", k: int = 5) -> list[str]:
    argv = ["identify", "--model", str(model), "--data", str(data), "--out", str(out), "--k", str(k), "--no-filter", "--quiet", "--batch-size", "8"]
    return argv + (["--relations", relations] if relations else [])


def raw_set_file(path: Path, block: object) -> Path:
    """A safetensors file with the given ``relspec`` metadata block (any JSON, or a raw string)."""
    from safetensors.torch import save_file

    text = block if isinstance(block, str) else json.dumps(block)
    save_file({"layers.0.up_proj.indices": torch.tensor([1, 2], dtype=torch.int64)}, str(path), metadata={"relspec": text})
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("lre"))


@pytest.fixture()
def set_file(tmp_path) -> Path:
    folder = tmp_path / "sets"
    folder.mkdir()
    return NeuronSet({(0, "gate_proj"): [1, 2], (1, "down_proj"): [3]}, {"relation": "company_ceo", "model": TINY}).save(folder / "ceo.safetensors")


@pytest.fixture()
def no_model_load(monkeypatch):
    """Any weight load fails the test: the error must be found before it."""
    import relspec_lmeval.identify.pipeline as pipeline
    import relspec_lmeval.modelio.load as load

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error was found")

    monkeypatch.setattr(pipeline, "load_model", refuse)
    monkeypatch.setattr(load, "load_model", refuse)


@pytest.fixture()
def no_weights(monkeypatch):
    """HFLM's own __init__ (which loads the weights) must not be reached."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("HFLM loaded the weights before the set was checked")

    monkeypatch.setattr(HFLM, "__init__", refuse)


@pytest.fixture()
def no_progress_bars():
    """Where the weights do load before the failure, transformers' progress bars are not error lines."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    yield
    if enabled:
        logging.enable_progress_bar()


@pytest.fixture()
def shipped(monkeypatch) -> Path:
    """The shipped neuron_sets folder (in a checkout: the repo's neuron_sets/), write protection on."""
    monkeypatch.delenv("RELSPEC_WRITE_SHIPPED", raising=False)
    return resource_dir("neuron_sets").resolve()


def export_argv(model: Path, neuron_set: Path, out: str | Path, *extra: str) -> list[str]:
    return ["export", "--model", str(model), "--neuron-set", str(neuron_set), "--out", str(out), *extra]


# ---------------------------------------------------------------------------- 1. export loses nothing


@pytest.mark.parametrize(
    ("out", "where"),
    [
        (".", "the working directory"),
        ("./", "the working directory"),
        ("{work}", "the working directory"),
        ("..", "a parent of the working directory"),
        ("{tmp}", "a parent of the working directory"),
        ("~", "the home directory"),
    ],
)
def test_export_force_never_replaces_the_working_directory_or_a_parent(out, where, tiny_llama_dir, set_file, tmp_path, monkeypatch, capsys):
    """Fails without the cwd/parent/home check in ``lm.export.check_export_target`` (staged_dir would swap the folder out)."""
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "notes.txt").write_text("my notes")
    (work / "sub" / "data.csv").write_text("1,2\n")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".bashrc").write_text("export PS1='$ '\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(work)
    out = out.format(work=work, tmp=tmp_path)
    before = snapshot(tmp_path)
    assert main(export_argv(tiny_llama_dir, set_file, out, "--force")) == 2
    one_error(capsys, f"--out {out}", where)
    assert snapshot(tmp_path) == before


def test_export_force_refuses_a_folder_of_user_files(tiny_llama_dir, set_file, tmp_path, capsys):
    """Fails without the marker check in ``check_export_target`` (``--force`` would replace any folder)."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("\\section{Results}")
    before = snapshot(tmp_path)
    assert main(export_argv(tiny_llama_dir, set_file, out, "--force")) == 2
    one_error(capsys, str(out), EXPORT_MARKER)
    assert snapshot(tmp_path) == before


def test_export_force_replaces_only_an_earlier_export(tiny_llama_dir, set_file, tmp_path, capsys, no_progress_bars):
    """An earlier export (marker listing its files) is replaced; one extra user file makes it off limits.

    Fails without the ``foreign`` files check in ``check_export_target``."""
    out = tmp_path / "ablated"
    argv = export_argv(tiny_llama_dir, set_file, out)
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2  # without --force, not even an earlier export is replaced
    one_error(capsys, str(out), "not empty")
    first = json.loads((out / EXPORT_MARKER).read_text())
    assert main([*argv, "--force"]) == 0
    capsys.readouterr()
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["format"] == "relspec-export" and marker["files"] == first["files"]
    assert set(marker["files"]) == files_below(out) - {EXPORT_MARKER}
    assert "config.json" in marker["files"] and any(f.endswith(".safetensors") for f in marker["files"])
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # the old folder, set aside, is gone

    (out / "my_eval_results.json").write_text("{}")
    before = snapshot(tmp_path)
    assert main([*argv, "--force"]) == 2
    one_error(capsys, str(out), "my_eval_results.json")
    assert snapshot(tmp_path) == before


def test_export_full_disk_keeps_the_old_export(tiny_llama_dir, set_file, tmp_path, monkeypatch, capsys, no_progress_bars):
    """A save that fails midway: one line, the earlier export intact, no staging folder beside it.

    Fails without ``util.files.staged_dir`` (saving into the target after removing it) and
    without its ``OutputError`` wrapping (the OSError would escape ``main`` as a traceback)."""
    import transformers

    out = tmp_path / "ablated"
    assert main(export_argv(tiny_llama_dir, set_file, out)) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)

    def full_disk(self, save_directory, *args, **kwargs):
        Path(save_directory, "model.safetensors").write_bytes(b"the first few bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full_disk)
    assert main(export_argv(tiny_llama_dir, set_file, out, "--force")) == 2
    one_error(capsys, "No space left on device", out.resolve())
    assert snapshot(tmp_path) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------- 2. shipped files are read-only


def test_random_of_a_shipped_set_writes_to_the_working_directory(shipped, tmp_path, monkeypatch, capsys):
    """Fails without ``refuse_shipped`` in ``identify.controls.default_folder`` (controls would go to the shipped random/)."""
    monkeypatch.chdir(tmp_path)
    before = listing(shipped)
    assert main(["random", "--like", "relspec-tiny/k384/person_father", "--seeds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "working directory" in printed and str(tmp_path.resolve() / "random") in printed
    assert sorted(p.name for p in (tmp_path / "random").iterdir()) == ["k384-seed0.safetensors", "k384-seed1.safetensors"]
    assert len(NeuronSet.load(tmp_path / "random" / "k384-seed1.safetensors")) == 384
    assert listing(shipped) == before


def test_select_on_shipped_scores_writes_to_the_working_directory(shipped, tmp_path, monkeypatch, capsys):
    """Fails without ``refuse_shipped`` in ``default_folder`` (the re-cut would go to neuron_sets/relspec-tiny/k5/)."""
    monkeypatch.chdir(tmp_path)
    before = listing(shipped)
    assert main(["select", "--k", "5", str(shipped / "relspec-tiny" / "scores" / "person_father.safetensors")]) == 0
    assert "working directory" in capsys.readouterr().out
    assert len(NeuronSet.load(tmp_path / "k5" / "person_father.safetensors")) == 5
    assert listing(shipped) == before


@pytest.mark.parametrize("inside", ["relspec-tiny/tmp_test_{pid}", "relspec-tiny/k384", "relspec-tiny"])
@pytest.mark.parametrize("command", ["random", "select", "identify"])
def test_out_inside_the_shipped_folder_is_refused(command, inside, shipped, tiny_llama_dir, data_dir, tmp_path, monkeypatch, capsys, no_model_load):
    """Fails without ``refuse_shipped(out)`` in ``controls.default_folder`` / ``pipeline.check_out_dir``."""
    monkeypatch.chdir(tmp_path)
    target = shipped / inside.format(pid=os.getpid())
    existed = target.exists()
    argv = {
        "random": ["random", "--like", "relspec-tiny/k384/person_father", "--seeds", "2", "--out", str(target)],
        "select": ["select", "--k", "5", str(shipped / "relspec-tiny" / "scores" / "person_father.safetensors"), "--out", str(target)],
        "identify": [*identify_argv(tiny_llama_dir, data_dir, target), "--force"],  # --force does not open them either
    }[command]
    before = listing(shipped)
    try:
        assert main(argv) == 2
        one_error(capsys, target, "shipped files")
        assert listing(shipped) == before
        assert target.exists() == existed
    finally:
        if not existed and target.exists():  # only with the check broken: leave the checkout clean
            import shutil

            shutil.rmtree(target)


# ---------------------------------------------------------------------------- 3. non-finite values


@pytest.mark.parametrize("factor", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_factor_is_refused(factor, tiny_llama_dir, set_file, no_weights):
    """Fails without the ``math.isfinite`` check in ``lm.ablation.AblationSpec``."""
    with pytest.raises(NeuronSetError, match="finite"):
        RelspecHFLM(pretrained=str(tiny_llama_dir), neuron_set=str(set_file), mode="scale", factor=factor, device="cpu")


def test_non_finite_factor_through_lm_evals_arguments(tiny_llama_dir, set_file, no_weights):
    from lm_eval.api.registry import get_model

    with pytest.raises(NeuronSetError, match="finite"):
        get_model("relspec-hf").create_from_arg_string(f"pretrained={tiny_llama_dir},neuron_set={set_file},mode=scale,factor=nan", {"device": "cpu"})


@pytest.mark.parametrize("factor", ["nan", "inf", "-inf"])
def test_export_non_finite_factor(factor, tiny_llama_dir, set_file, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(export_argv(tiny_llama_dir, set_file, out, "--mode", "scale", f"--factor={factor}")) == 2
    one_error(capsys, "finite", factor)
    assert not out.exists()


def test_nan_means_are_refused_with_mode_mean(tiny_llama_dir, tmp_path, no_weights):
    """Fails without the ``torch.isfinite`` check of the means in ``NeuronSet.validate``."""
    path = NeuronSet({(0, "up_proj"): [1, 2]}, {"model": TINY}, means={(0, "up_proj"): [0.5, float("nan")]}).save(tmp_path / "nan.safetensors")
    with pytest.raises(NeuronSetError, match="non-finite means") as exc:
        RelspecHFLM(pretrained=str(tiny_llama_dir), neuron_set=str(path), mode="mean", device="cpu")
    assert str(path) in str(exc.value)


# ---------------------------------------------------------------------------- 4. empty values


@pytest.mark.parametrize("value", ["", None, 0, False, "  ", "\t"])
def test_empty_neuron_set_value_is_an_error(value, tiny_llama_dir, no_weights):
    """Fails without the empty/non-text check in ``sets.resolve.load_sets`` (an empty value meaning "no set")."""
    with pytest.raises(NeuronSetError, match="names no neuron-set file"):
        RelspecHFLM(pretrained=str(tiny_llama_dir), neuron_set=value, device="cpu")


@pytest.mark.parametrize("value", ["none", "None", "", "0", "false"])
def test_empty_neuron_set_value_through_lm_evals_arguments(value, tiny_llama_dir, no_weights):
    from lm_eval.api.registry import get_model

    with pytest.raises(NeuronSetError, match="names no neuron-set file"):
        get_model("relspec-hf").create_from_arg_string(f"pretrained={tiny_llama_dir},neuron_set={value}", {"device": "cpu"})


def test_zero_neuron_set_needs_allow_empty(tiny_llama_dir, tmp_path, monkeypatch):
    """Fails without the ``holds no neurons`` check in ``NeuronSet.validate``."""
    path = NeuronSet({}, {"model": TINY}).save(tmp_path / "empty.safetensors")
    def refuse(self, *args, **kwargs):
        raise AssertionError("HFLM loaded the weights before the set was checked")

    with monkeypatch.context() as m:
        m.setattr(HFLM, "__init__", refuse)
        for refused in (False, "false"):
            with pytest.raises(NeuronSetError, match="holds no neurons") as exc:
                RelspecHFLM(pretrained=str(tiny_llama_dir), neuron_set=str(path), allow_empty=refused, device="cpu")
            assert str(path) in str(exc.value)
    for allowed in (True, "true"):
        info = RelspecHFLM(pretrained=str(tiny_llama_dir), neuron_set=str(path), allow_empty=allowed, device="cpu").relspec_info()
        assert info["empty"] is True and info["count"] == 0 and [s["count"] for s in info["sets"]] == [0]


# ---------------------------------------------------------------------------- 5. random controls of a set that does not fit


@pytest.mark.parametrize(
    ("neurons", "flags", "message"),
    [
        ({(5, "up_proj"): [1]}, ["--layer-matched"], "layer 5 out of range"),
        ({(0, "up_proj"): [100]}, [], "index 100 out of range"),
        ({(1, "down_proj"): [32]}, ["--layer-matched"], "index 32 out of range"),
    ],
    ids=["layer-matched, layer 5", "plain, index 100", "layer-matched, down_proj index 32"],
)
def test_random_like_a_set_that_does_not_fit_its_shape(neurons, flags, message, tmp_path, capsys):
    """Fails without ``neuron_set.validate(shape)`` in ``controls._shape_of`` (random draws ignore the set's indices)."""
    path = NeuronSet(neurons, {"relation": "bad", "model": TINY}).save(tmp_path / "bad.safetensors")
    before = snapshot(tmp_path)
    for out in ([], ["--out", str(tmp_path / "o")]):
        assert main(["random", "--like", str(path), "--seeds", "2", *flags, *out]) == 2
        one_error(capsys, path, message)
        assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------- 6. data folders


BAD_RELATION_FILES = {
    "empty samples": json.dumps({"name": "person_father", "prompt_templates": ["{}'s father is named"], "samples": []}),
    "no samples": json.dumps({"name": "person_father", "prompt_templates": ["{}'s father is named"]}),
    "malformed JSON": '{"name": "person_father", "samples": [{"subject": "paris',
    "not an object": "[]",
    "bad sample": json.dumps({"name": "person_father", "samples": [{"subject": "paris france", "object": 3}]}),
}


@pytest.mark.parametrize("relations", [None, "company_hq,landmark_country"])
@pytest.mark.parametrize("content", list(BAD_RELATION_FILES.values()), ids=list(BAD_RELATION_FILES))
def test_bad_relation_file_named_before_the_model_loads(content, relations, tiny_llama_dir, tmp_path, capsys, no_model_load):
    """Also when the bad relation only gives negatives. Fails without ``data.relations.read_relation_file``'s checks."""
    data = write_data(tmp_path / "data")
    bad = data / "person_father.json"
    bad.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    assert main(identify_argv(tiny_llama_dir, data, out, relations)) == 2
    one_error(capsys, bad)
    assert not out.exists()


# ---------------------------------------------------------------------------- 7. metadata of the wrong shape


BAD_METADATA = {
    "relspec block is a list": [{"format": "relspec-neuron-set", "format_version": "1", "metadata": {}}],
    "relspec block is not JSON": "{'format': 'relspec-neuron-set'",
    "metadata is a list": {"format": "relspec-neuron-set", "format_version": "1", "metadata": [TINY]},
    "model is a list": {"format": "relspec-neuron-set", "format_version": "1", "metadata": {"model": [2, 32, 64]}},
    "hidden_size is abc": {"format": "relspec-neuron-set", "format_version": "1", "metadata": {"model": {**TINY, "hidden_size": "abc"}}},
}


@pytest.mark.parametrize("command", ["info", "info --json", "random"])
@pytest.mark.parametrize("block", list(BAD_METADATA.values()), ids=list(BAD_METADATA))
def test_malformed_metadata_is_one_error_line(block, command, tmp_path, capsys):
    """Fails without the type checks in ``sets.fileformat.read_relspec_file`` / ``ModelShape.from_metadata``."""
    path = raw_set_file(tmp_path / "odd.safetensors", block)
    argv = {"info": ["info", str(path)], "info --json": ["info", "--json", str(path)],
            "random": ["random", "--like", str(path), "--seeds", "1", "--out", str(tmp_path / "o")]}[command]
    assert main(argv) == 2
    one_error(capsys, path)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("block", list(BAD_METADATA.values()), ids=list(BAD_METADATA))
def test_malformed_metadata_in_relspec_hf(block, tiny_llama_dir, tmp_path, no_weights):
    path = raw_set_file(tmp_path / "odd.safetensors", block)
    with pytest.raises(NeuronSetError) as exc:
        RelspecHFLM(pretrained=str(tiny_llama_dir), neuron_set=str(path), device="cpu")
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


# ---------------------------------------------------------------------------- 8. a full disk leaves whole outputs


def full_disk_error(kind: str) -> Exception:
    import safetensors

    if kind == "oserror":
        return OSError(28, "No space left on device")
    return safetensors.SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')


def fail_save_file_at(monkeypatch, call: int | None, kind: str) -> list[str]:
    """Make the ``call``-th safetensors write (counting from 1; None: none) write a few bytes and fail."""
    import safetensors.torch

    real = safetensors.torch.save_file
    calls: list[str] = []

    def flaky(tensors, filename, metadata=None):
        calls.append(str(filename))
        if len(calls) == call:
            Path(filename).write_bytes(b"half a file")
            raise full_disk_error(kind)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", flaky)
    return calls


def check_whole_relations(out: Path) -> set[str]:
    """Each relation has its set and its scores and is in summary.json, or has none of them; no temporaries."""
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {"relations": {}}
    complete = set()
    for relation in ("company_hq", "person_father"):
        has = {(out / f"{relation}.safetensors").is_file(), (out / "scores" / f"{relation}.safetensors").is_file(), relation in summary["relations"]}
        assert len(has) == 1, f"{relation}: set/scores/summary out of step in {sorted(files_below(out))}"
        if has == {True}:
            complete.add(relation)
            NeuronSet.load(out / f"{relation}.safetensors")  # and readable
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")] if out.exists() else []
    assert leftovers == []
    return complete


@pytest.mark.parametrize(("call", "kind"), [(1, "oserror"), (2, "safetensors"), (3, "oserror"), (4, "safetensors")])
def test_identify_full_disk_all_or_nothing_per_relation(call, kind, tiny_llama_dir, data_dir, tmp_path, monkeypatch, capsys, no_progress_bars):
    """Writes 1, 2: company_hq's scores and set; 3, 4: person_father's.

    Fails without ``StagedFiles`` grouping in ``identify.pipeline.identify`` (a relation's scores
    would stay without its set) and without ``StagedFiles.write``'s ``OutputError`` (traceback)."""
    calls = fail_save_file_at(monkeypatch, call, kind)
    out = tmp_path / "out"
    assert main(identify_argv(tiny_llama_dir, data_dir, out)) == 2
    one_error(capsys, "No space left on device", out)
    assert len(calls) == call
    assert check_whole_relations(out) == ({"company_hq"} if call > 2 else set())


def test_identify_full_disk_check_sees_a_normal_run(tiny_llama_dir, data_dir, tmp_path, monkeypatch):
    """The counting wrapper itself: without a failure both relations are written whole."""
    calls = fail_save_file_at(monkeypatch, None, "oserror")
    assert main(identify_argv(tiny_llama_dir, data_dir, tmp_path / "out")) == 0
    assert len(calls) == 4 and check_whole_relations(tmp_path / "out") == {"company_hq", "person_father"}


@pytest.mark.parametrize(("call", "kind"), [(1, "safetensors"), (2, "oserror"), (3, "safetensors"), (None, "")])
def test_select_full_disk_all_or_nothing(call, kind, shipped, tmp_path, monkeypatch, capsys):
    """Fails without the one ``StagedFiles`` around all cuts in ``controls.select_sets``."""
    scores = [shipped / "relspec-tiny" / "scores" / f"{r}.safetensors" for r in ("company_ceo", "company_hq", "person_father")]
    fail_save_file_at(monkeypatch, call, kind)
    out = tmp_path / "cut"
    code = main(["select", "--k", "5", *map(str, scores), "--out", str(out)])
    written = sorted(files_below(out)) if out.exists() else []
    if call is None:
        assert code == 0 and written == ["company_ceo.safetensors", "company_hq.safetensors", "person_father.safetensors"]
        return
    assert code == 2
    one_error(capsys, "No space left on device")
    assert written == []  # also no temporaries


# ---------------------------------------------------------------------------- 9. early checks


def test_identify_out_is_a_file_before_the_model_loads(tiny_llama_dir, data_dir, tmp_path, capsys, no_model_load):
    """Fails without the is-a-file check in ``pipeline.check_out_dir`` (the model would load first)."""
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    assert main(identify_argv(tiny_llama_dir, data_dir, existing)) == 2
    one_error(capsys, existing, "is a file")
    assert existing.read_text() == "keep me"


@pytest.mark.parametrize(
    ("neurons", "meta", "message"),
    [
        ({(0, "up_proj"): [0]}, {"model": {**TINY, "intermediate_size": 48}}, "intermediate_size=48"),
        ({(0, "up_proj"): [0]}, {"model": {**TINY, "num_layers": 6}}, "num_layers=6"),
        ({(0, "up_proj"): [64]}, {}, "index 64 out of range"),
    ],
    ids=["intermediate_size", "num_layers", "unrecorded shape, index"],
)
def test_relspec_hf_checks_the_set_before_the_weights_load(neurons, meta, message, tiny_llama_dir, tmp_path, no_weights):
    """Fails without ``_check_sets`` against the config in ``RelspecHFLM.__init__`` (HFLM would load first)."""
    path = NeuronSet(neurons, meta).save(tmp_path / "other.safetensors")
    with pytest.raises(NeuronSetError, match=message):
        RelspecHFLM(pretrained=str(tiny_llama_dir), neuron_set=str(path), device="cpu")


# ---------------------------------------------------------------------------- 10. short names stay inside the shipped folder


def test_short_names_cannot_leave_the_shipped_folder(shipped, tmp_path, monkeypatch):
    """Fails without ``_is_short_name``/``is_relative_to`` in ``util.resources._shipped``."""
    outside = tmp_path / "x.safetensors"
    NeuronSet({(0, "up_proj"): [1]}, {"model": TINY}).save(outside)
    escape = "relspec-tiny/" + os.path.relpath(tmp_path / "x", shipped / "relspec-tiny")
    assert ".." in escape and Path(os.path.normpath(shipped / (escape + ".safetensors"))) == outside  # it would reach the file
    elsewhere = tmp_path / "elsewhere"  # a working directory without relspec-tiny/, so the name is no path either
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(NeuronSetError, match="not found"):
        resolve_set_path(escape)
    for name in (escape, str(tmp_path / "x"), "/" + str(tmp_path / "x").lstrip("/"), "relspec-tiny/../relspec-tiny/person_father", "../neuron_sets/relspec-tiny/person_father"):
        assert shipped_neuron_set(name) is None, name
    assert shipped_neuron_set("relspec-tiny/person_father") == shipped / "relspec-tiny" / "person_father.safetensors"


# ---------------------------------------------------------------------------- 11. files get the umask's mode


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["umask022", "umask077", "umask002"])
def test_outputs_honour_the_umask(umask, mode, tiny_llama_dir, data_dir, tmp_path):
    """Fails without the ``os.chmod(tmp, file_mode())`` in ``StagedFiles.write`` (mkstemp's 0600 would stay)."""
    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        written = [
            NeuronSet({(0, "up_proj"): [1]}, {"model": TINY}).save(tmp_path / "set.safetensors"),
            atomic_write_text(tmp_path / "notes.txt", "hello"),
        ]
        assert main(identify_argv(tiny_llama_dir, data_dir, out, "company_hq")) == 0
        assert main(["random", "--like", str(out / "company_hq.safetensors"), "--seeds", "1"]) == 0
    finally:
        os.umask(old)
    written += [out / "company_hq.safetensors", out / "scores" / "company_hq.safetensors", out / "summary.json", out / "random" / "k5-seed0.safetensors"]
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {str(p): oct(mode) for p in written}


# ---------------------------------------------------------------------------- 12. declared dependencies


def test_matplotlib_is_a_dependency():
    """The wheel's metadata comes from pyproject.toml: ``relspec reproduce`` imports matplotlib."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {dep.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].split("!")[0].split("~")[0].strip().lower() for dep in project["dependencies"]}
    assert "matplotlib" in names
