"""scripts/verdict_matrix.py: the cross-model verdict table says what each report's verdicts.json says."""

import doctest
import json

from conftest import load_script


def _report(tmp_path, name, model, rows):
    folder = tmp_path / name
    (folder / "tables").mkdir(parents=True)
    (folder / "tables" / "verdicts.json").write_text(json.dumps(rows))
    (folder / "report.md").write_text(f"# Relation-specific neurons: {model} (lre suite)\n\nbody\n")
    return folder


def test_columns_per_model_rows_per_finding(tmp_path, capsys):
    vm = load_script("verdict_matrix")
    a = _report(tmp_path, "ra", "model-a", [
        {"finding": "1. middle layers", "verdict": "agrees", "metric": "—"},
        {"finding": "2. own drop", "verdict": "cannot tell", "metric": "—"},
    ])
    b = _report(tmp_path, "rb", "model-b", [
        {"finding": "2. own drop", "verdict": "disagrees", "metric": "logprob"},
        {"finding": "8. perplexity", "verdict": "agrees", "metric": "perplexity"},
    ])
    assert vm.main([str(a), str(b)]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert lines[0] == "| finding | model-a | model-b |"
    assert lines[2] == "| 1. middle layers | agrees | — |"
    assert lines[3] == "| 2. own drop | cannot tell | disagrees (logprob) |"
    assert lines[4] == "| 8. perplexity | — | agrees (perplexity) |"


def test_missing_verdicts_is_one_line(tmp_path):
    vm = load_script("verdict_matrix")
    try:
        vm.main([str(tmp_path)])
    except SystemExit as e:
        assert "verdicts.json not found" in str(e)
    else:
        raise AssertionError("no error for a folder without verdicts.json")


def test_examples():
    vm = load_script("verdict_matrix")
    assert doctest.testmod(vm).failed == 0
