"""``relspec convert`` on hostile inputs: one error line each, the flag it names, no torch warnings."""

from __future__ import annotations

import json
import pickle
import warnings

import pytest
import torch

from relspec_lmeval.cli import main
from relspec_lmeval.sets import convert


def _run(*argv) -> int:
    """``relspec convert …``, failing the test on any warning (pytest would otherwise swallow torch's)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["convert", *map(str, argv)])
    assert not caught, [str(w.message) for w in caught]
    return code


def _one_error(capsys, message: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("relspec: error:") and err.count("\n") == 1, err
    assert message in err, err
    return err


def test_deeply_nested_kn_json_is_one_line(tiny_llama_dir, tmp_path, capsys):
    source = tmp_path / "deep.json"
    source.write_text("[" * 100_000, encoding="utf-8")
    assert _run("kn", source, "--model", tiny_llama_dir, "--out", tmp_path / "out") == 2
    _one_error(capsys, "deep.json is nested too deeply to be a knowledge-neurons file")
    assert not (tmp_path / "out").exists()


def test_deeply_nested_kn_item_is_one_line(tiny_llama_dir, tmp_path, capsys):
    source = tmp_path / "item.json"
    source.write_text('{"u1": [' + "[" * 900 + "]" * 900 + "]}", encoding="utf-8")
    assert _run("kn", source, "--model", tiny_llama_dir, "--out", tmp_path / "out") == 2
    _one_error(capsys, "uuid u1, item 0: expected [layer, index] (two integers)")


def test_absurdly_big_kn_json_is_refused_unread(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    source = tmp_path / "big.json"
    source.write_text(json.dumps({"u1": [[0, 1]] * 100}), encoding="utf-8")
    monkeypatch.setattr(convert, "KN_MAX_BYTES", 100)
    monkeypatch.setattr(type(source), "read_text", lambda *a, **k: pytest.fail("the file was read"))
    assert _run("kn", source, "--model", tiny_llama_dir, "--out", tmp_path / "out") == 2
    _one_error(capsys, "big.json is 0.0 GiB; a knowledge-neurons neurons file is far smaller")


@pytest.mark.parametrize("protocol", [4, 5])
def test_plain_pickle_pth_prints_only_our_line(protocol, tiny_llama_dir, tmp_path, capsys):
    source = tmp_path / "plain.pth"
    source.write_bytes(pickle.dumps([[torch.tensor([1]).tolist(), [2]]], protocol=protocol))
    assert _run("lape", source, "--model", tiny_llama_dir, "--out", tmp_path / "out") == 2
    _one_error(capsys, "plain.pth is not a file torch.load(weights_only=True) can read")
    assert not (tmp_path / "out").exists()


def test_plain_pickle_is_named_as_such(tiny_llama_dir, tmp_path, capsys):
    source = tmp_path / "plain.pth"
    source.write_bytes(pickle.dumps({"mask": [[1]]}, protocol=4))
    assert _run("lape", source, "--model", tiny_llama_dir, "--out", tmp_path / "out") == 2
    _one_error(capsys, "a plain pickle.dump file, not a torch.save one")


def test_a_readable_lape_file_loads_without_warnings(tiny_llama_dir, tmp_path, capsys):
    source = tmp_path / "ok.pth"
    torch.save([[torch.tensor([1]), torch.tensor([2])]], source)
    assert _run("lape", source, "--model", tiny_llama_dir, "--out", tmp_path / "out") == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["kn", "{kn}", "--uuids", "u1,u1"], "--uuids repeats u1: 'u1,u1'"),
    (["kn", "{kn}", "--uuids", "u1,,u2"], "--uuids must be comma-separated non-empty names"),
    (["lape", "{lape}", "--names", "en,en"], "--names repeats en: 'en,en'"),
    (["lape", "{lape}", "--names", "en,"], "--names must be comma-separated non-empty names"),
])
def test_list_flags_are_named_in_their_errors(argv, message, tiny_llama_dir, tmp_path, capsys):
    kn = tmp_path / "kn.json"
    kn.write_text(json.dumps({"u1": [[0, 1]], "u2": [[1, 3]]}), encoding="utf-8")
    lape = tmp_path / "m.pth"
    torch.save([[torch.tensor([1]), torch.tensor([2])]] * 2, lape)
    argv = [a.format(kn=kn, lape=lape) for a in argv]
    assert _run(*argv, "--model", tiny_llama_dir, "--out", tmp_path / "out") == 2
    err = _one_error(capsys, message)
    assert ("--names" in err) == ("--names" in argv)
