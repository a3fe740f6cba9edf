"""Issue 24: sets shared the way models are. ``hf://OWNER/REPO/PATH`` reads a set through the
Hugging Face cache, then exactly as a local file; every failure is one line. Offline only: the
cache is laid out here (``datasets--OWNER--REPO/refs/main``, ``snapshots/<commit>/PATH`` linking
into ``blobs/``), ``HF_HUB_OFFLINE=1``, and the online failures come from a stand-in download."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch

from relspec_lmeval.cli import main
from relspec_lmeval.errors import NeuronSetError
from relspec_lmeval.lm.hflm import RelspecHFLM
from relspec_lmeval.lm.preflight import check_model_args
from relspec_lmeval.sets.hub import parse_hub_name
from relspec_lmeval.sets.neuron_set import NeuronSet
from relspec_lmeval.sets.resolve import load_sets

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = {"name": "tiny", "num_layers": 2, "hidden_size": 32, "intermediate_size": 64}  # conftest's tiny_llama_dir


def cache_file(cache: Path, repo_id: str, path: str, source: Path, *, repo_type: str = "dataset", commit: str = COMMIT,
               ref: str = "main") -> Path:
    """Put ``source`` where huggingface_hub keeps ``repo_id``'s ``path`` at ``ref``: a blob, a snapshot link, a ref."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    blob = repo / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, blob)
    target = repo / "snapshots" / commit / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(os.path.relpath(blob, target.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit, encoding="utf-8")
    return target


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding dataset me/sets: tiny/ceo.safetensors (and the local original)."""
    cache = tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    meta = {"relation": "company_ceo", "method": "ap", "k": 4, "model": TINY}
    local = NeuronSet({(0, "gate_proj"): [1, 2], (1, "down_proj"): [3, 30]}, meta).save(tmp_path / "local" / "ceo.safetensors")
    cache_file(cache, "me/sets", "tiny/ceo.safetensors", local)
    wide = NeuronSet({(0, "up_proj"): [100]}, {"model": {**TINY, "intermediate_size": 128}}).save(tmp_path / "local" / "wide.safetensors")
    cache_file(cache, "me/sets", "tiny/wide.safetensors", wide)
    return {"cache": cache, "local": local}


@pytest.mark.parametrize("name", ["hf://me/sets/tiny/ceo", "hf://datasets/me/sets/tiny/ceo.safetensors",
                                  f"hf://me/sets@{COMMIT}/tiny/ceo", "HF://me/sets@main/tiny/ceo"])
def test_an_hf_name_loads_the_same_set_as_the_file(hub, name):
    (got,) = load_sets(name)
    local = NeuronSet.load(hub["local"])
    assert got.sha256() == local.sha256() and got.content_sha256() == local.content_sha256()
    assert got.metadata == local.metadata and got.neurons.keys() == local.neurons.keys()
    assert Path(got.path).parts[-4:] == ("snapshots", COMMIT, "tiny", "ceo.safetensors")  # the record names the commit


def test_a_tag_and_a_union_with_a_local_file(hub, tmp_path):
    other = "fedcba9876543210fedcba9876543210fedcba98"
    v1 = NeuronSet({(1, "up_proj"): [5]}, {"model": TINY}).save(tmp_path / "v1.safetensors")
    cache_file(hub["cache"], "me/sets", "tiny/ceo.safetensors", v1, commit=other, ref="v1")
    (tagged,) = load_sets("hf://me/sets@v1/tiny/ceo")
    assert len(tagged) == 1 and Path(tagged.path).parts[-3] == other
    both = load_sets(f"hf://me/sets/tiny/ceo+{hub['local']}")
    assert [len(s) for s in both] == [4, 4]


@pytest.mark.parametrize(("name", "says"), [
    ("hf://me/nothing/tiny/ceo", "dataset me/nothing is not in the Hugging Face cache"),
    ("hf://models/me/sets/tiny/ceo", "model me/sets is not in the Hugging Face cache"),
    ("hf://me/sets/tiny/cee", "the cached dataset me/sets has no file tiny/cee.safetensors"),
    ("hf://me/sets@v9/tiny/ceo", "revision v9 of dataset me/sets is not in the Hugging Face cache"),
])
def test_offline_and_not_cached_is_one_line_naming_it(hub, name, says):
    with pytest.raises(NeuronSetError) as exc:
        load_sets(name)
    message = str(exc.value)
    assert says in message and "HF_HUB_OFFLINE is set, so it is not downloaded" in message and "\n" not in message
    assert message.startswith("neuron-set hf://")
    if "cee" in name:
        assert "Did you mean: tiny/ceo.safetensors" in message


@pytest.mark.parametrize(("name", "says"), [
    ("hf://me", "no OWNER/REPO"),
    ("hf://me/sets", "no file path after OWNER/REPO"),
    ("hf://me/sets/", "no file path after OWNER/REPO"),
    ("hf://me/sets//a", "an empty, '.' or '..' part"),
    ("hf://me/sets/../../etc/passwd", "an empty, '.' or '..' part"),
    ("hf://me/se--ts/a", "repository 'se--ts' is not a Hub name"),
    ("hf://m e/sets/a", "owner 'm e' is not a Hub name"),
    ("hf://me/sets@/a", "an empty or spaced revision"),
])
def test_a_malformed_name_is_one_line(hub, name, says):
    with pytest.raises(NeuronSetError) as exc:
        load_sets(name)
    message = str(exc.value)
    assert message.startswith(f"malformed hf:// name {name!r}: {says}") and "\n" not in message
    assert message.endswith("expected hf://[datasets/|models/]OWNER/REPO[@REVISION]/PATH")


def test_a_pull_request_revision():
    ref = parse_hub_name("hf://me/sets@refs/pr/12/tiny/ceo")
    assert (ref.revision, ref.path) == ("refs/pr/12", "tiny/ceo.safetensors")
    assert parse_hub_name("hf://me/sets@refs%2Fpr%2F12/tiny/ceo") == ref


def test_relspec_hf_takes_an_hf_name_and_checks_it_against_the_model(hub, tiny_llama_dir):
    via_hub = RelspecHFLM(pretrained=str(tiny_llama_dir), neuron_set="hf://me/sets/tiny/ceo", device="cpu")
    via_file = RelspecHFLM(pretrained=str(tiny_llama_dir), neuron_set=str(hub["local"]), device="cpu")
    assert via_hub.relspec_info()["content_sha256"] == via_file.relspec_info()["content_sha256"]
    ids = torch.tensor([[1, 4, 8, 15, 16, 23, 42]])
    with torch.no_grad():
        assert torch.equal(via_hub.model(ids).logits, via_file.model(ids).logits)
    # the lm_eval command line's pre-flight reads it too, and checks the recorded model against the config
    assert len(check_model_args(pretrained=str(tiny_llama_dir), neuron_set="hf://me/sets/tiny/ceo").sets) == 1
    with pytest.raises(NeuronSetError, match="intermediate_size"):
        check_model_args(pretrained=str(tiny_llama_dir), neuron_set="hf://me/sets/tiny/wide")


def test_relspec_info_of_an_hf_name(hub, capsys):
    assert main(["info", "hf://me/sets/tiny/ceo"]) == 0
    assert "company_ceo" in capsys.readouterr().out
    assert main(["info", "hf://me/nothing/ceo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("relspec: error: neuron-set hf://datasets/me/nothing/ceo.safetensors: ")


def test_random_controls_of_an_hf_set_go_to_the_working_directory(hub, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(p.relative_to(hub["cache"]) for p in hub["cache"].rglob("*"))
    assert main(["random", "--like", "hf://me/sets/tiny/ceo", "--seeds", "1"]) == 0
    assert "shipped and downloaded (hf://) files are read-only" in capsys.readouterr().out
    assert (work / "random" / "k4-seed0.safetensors").is_file()
    assert sorted(p.relative_to(hub["cache"]) for p in hub["cache"].rglob("*")) == before  # the cache is huggingface_hub's


def _hub_error(cls):
    """A huggingface_hub HTTP error without a response (their constructors want one from a real request)."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, f"{cls.__name__}: 404 Client Error.\nmore lines")
    return exc


@pytest.mark.parametrize(("error", "says"), [
    ("GatedRepoError", "dataset me/sets is gated"),
    ("RepositoryNotFoundError", "no dataset repository me/sets on the Hugging Face Hub (or it is private"),
    ("RevisionNotFoundError", "dataset me/sets has no revision 'v2'"),
    ("RemoteEntryNotFoundError", "dataset me/sets at revision v2 has no file tiny/ceo.safetensors"),
    ("HfHubHTTPError", "the Hub refused the download (HfHubHTTPError: 404 Client Error.)"),
])
def test_online_failures_are_one_line(monkeypatch, tmp_path, error, says):
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "RELSPEC_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    calls = []

    def download(repo_id, filename, **kwargs):  # never the network: the Hub's answer, made up
        calls.append((repo_id, filename, kwargs))
        raise _hub_error(getattr(huggingface_hub.errors, error))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(NeuronSetError) as exc:
        load_sets("hf://me/sets@v2/tiny/ceo")
    assert says in str(exc.value) and "\n" not in str(exc.value)
    assert calls == [("me/sets", "tiny/ceo.safetensors", {"repo_type": "dataset", "revision": "v2", "cache_dir": str(tmp_path / "hub"),
                                                          "local_files_only": False})]


def test_unreachable_hub_and_not_cached(monkeypatch, tmp_path):
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "RELSPEC_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))

    def download(repo_id, filename, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub\n…")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(NeuronSetError, match=r"^neuron-set hf://datasets/me/sets/a.safetensors: the Hugging Face Hub could not be "
                                             r"reached and dataset me/sets is not in the Hugging Face cache .*\(check the connection\)\.$"):
        load_sets("hf://me/sets/a")
