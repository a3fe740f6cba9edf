"""Issue 24: ``relspec card FOLDER`` writes a Hugging Face dataset card of a sets folder, read from
its summary.json and set files; it refuses a folder without summary.json, an existing README.md
without --force, and the shipped folders."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from relspec_lmeval.cli import main
from relspec_lmeval.sets.hub import parse_hub_name
from relspec_lmeval.util.resources import resource_dir

SHIPPED = resource_dir("neuron_sets") / "relspec-tiny"


@pytest.fixture()
def folder(tmp_path):
    """A copy of relspec-tiny's sets: summary.json, the sets and one re-cut (not the scores or controls)."""
    copy = tmp_path / "relspec-tiny-sets"
    shutil.copytree(SHIPPED, copy, ignore=shutil.ignore_patterns("scores", "random", "README.md"))
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


def _header_and_body(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def test_card_names_the_model_method_k_and_relations(folder, capsys):
    assert main(["card", str(folder), "--repo", "me/tiny-sets"]) == 0
    assert f"hf upload me/tiny-sets {folder} --repo-type dataset" in capsys.readouterr().out
    header, body = _header_and_body((folder / "README.md").read_text(encoding="utf-8"))
    assert header["tags"][:2] == ["relspec-lmeval", "neuron-set"] and header["viewer"] is False
    assert header["pretty_name"] == "Relation-specific neurons of relspec-tiny" and "license" not in header
    assert set(header) <= {"pretty_name", "tags", "language", "license", "viewer"}  # dataset-card keys only
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert "`relspec-tiny` (LlamaForCausalLM, llama; 6 layers" in body and "| method | ap |" in body
    assert "| k | 38 per relation" in body and "| sites | gate_proj, up_proj, down_proj |" in body
    for relation, entry in summary["relations"].items():
        assert f"| {relation} | {entry['det_prompts']} | {entry['correct']} | {entry['positives']} | {entry['negatives']} | 38 |" in body
    assert summary["command"] in body and "`k384/`" in body and "`scores/`" not in body
    line = next(x for x in body.splitlines() if x.startswith("lm_eval --model relspec-hf"))
    name = line.split("neuron_set=")[1].split()[0]
    assert parse_hub_name(name).repo_id == "me/tiny-sets" and (folder / parse_hub_name(name).path).is_file()


def test_card_with_a_license_and_the_placeholder_repo(folder):
    assert main(["card", str(folder), "--license", "mit"]) == 0
    header, body = _header_and_body((folder / "README.md").read_text(encoding="utf-8"))
    assert header["license"] == "mit" and "neuron_set=hf://OWNER/REPO/" in body


def test_card_refuses_a_folder_without_summary(tmp_path, capsys):
    (tmp_path / "sets").mkdir()
    assert main(["card", str(tmp_path / "sets")]) == 2
    err = capsys.readouterr().err
    assert err == f"relspec: error: {tmp_path / 'sets'} has no summary.json (a card describes a folder `relspec identify --out` wrote)\n"
    assert not (tmp_path / "sets" / "README.md").exists()


def test_card_keeps_a_readme_unless_forced(folder, capsys):
    (folder / "README.md").write_text("mine\n", encoding="utf-8")
    assert main(["card", str(folder)]) == 2
    assert capsys.readouterr().err == f"relspec: error: {folder / 'README.md'} exists; --force to replace it\n"
    assert (folder / "README.md").read_text(encoding="utf-8") == "mine\n"
    assert main(["card", str(folder), "--force"]) == 0
    assert (folder / "README.md").read_text(encoding="utf-8").startswith("---\n")


def test_card_never_writes_the_shipped_folders(monkeypatch, capsys):
    monkeypatch.delenv("RELSPEC_WRITE_SHIPPED", raising=False)
    assert main(["card", str(SHIPPED), "--force"]) == 2
    assert "is inside relspec-lmeval's shipped files" in capsys.readouterr().err
    assert not (SHIPPED / "README.md").exists()


@pytest.mark.parametrize(("change", "says"), [
    ("repo", "--repo 'nobody' is not OWNER/REPO"),
    ("missing_set", "lists person_father.safetensors for person_father, which is not in the folder"),
    ("not_json", "summary.json is not readable JSON"),
])
def test_card_refusals_are_one_line(folder, capsys, change, says):
    argv = ["card", str(folder)]
    if change == "repo":
        argv += ["--repo", "nobody"]
    elif change == "missing_set":
        (folder / "person_father.safetensors").unlink()
    else:
        (folder / "summary.json").write_text("{", encoding="utf-8")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert not (folder / "README.md").exists()
