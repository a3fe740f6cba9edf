"""As a user gets it: the built wheel carries the hook, tasks and sets, and the stock
``lm_eval`` command finds relspec-hf and our tasks with no flags, from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from relspec_lmeval.sets.neuron_set import NeuronSet

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout, installed into a site dir of its own.

    Under ``make test`` the venv holds the same wheel already (and wins on sys.path); run
    bare, the site dir's copy is the one lm_eval finds. Either way: a wheel, not the checkout.
    """
    pytest.importorskip("hatchling", reason="make test installs hatchling to build the wheel")
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work), str(REPO)],
        check=True, capture_output=True,
    )
    (wheel,) = work.glob("relspec_lmeval-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "relspec_lmeval_hook.pth" in names and "_relspec_lmeval_hook.py" in names
    assert "relspec_lmeval/tasks/relation_recall/relation_recall.yaml" in names
    assert "relspec_lmeval/tasks/utils.py" in names and "relspec_lmeval/neuron_sets/README.md" in names
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    return site


def lm_eval(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The console script's entry point, with the wheel's folder as a site dir (so its .pth runs)."""
    code = f"import site, sys; site.addsitedir({str(site)!r}); sys.argv = ['lm_eval', *sys.argv[1:]]; from lm_eval.__main__ import cli_evaluate; cli_evaluate()"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_stock_cli_lists_groups_and_runs_relspec_hf(installed, tiny_llama_dir, lre_dir, tmp_path):
    listing = lm_eval(installed, tmp_path, "ls", "groups")
    assert listing.returncode == 0, listing.stderr[-2000:]
    for group in ("relation_recall", "relation_recall_det", "relation_recall_t2", "relation_ppl", "relation_recall_de"):
        assert group in listing.stdout

    neurons = {(0, "gate_proj"): list(range(0, 64, 2))}
    set_path = NeuronSet(neurons, {"relation": "demo"}).save(tmp_path / "set.safetensors")
    out = tmp_path / "results"
    run = lm_eval(
        installed, tmp_path, "--model", "relspec-hf", "--model_args", f"pretrained={tiny_llama_dir},neuron_set={set_path}",
        "--tasks", "relation_recall_company_ceo", "--limit", "2", "--device", "cpu", "--output_path", str(out),
        "--metadata", json.dumps({"lre_dir": str(lre_dir)}),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (results,) = out.rglob("results_*.json")
    relspec = json.loads(results.read_text())["config"]["relspec"]
    assert relspec["sets"][0]["sha256"] == NeuronSet.load(set_path).sha256()


def test_stock_cli_error_is_one_line(installed, tiny_llama_dir, tmp_path):
    """A relspec error under the stock `lm_eval` is one line and exit 2, not a traceback."""
    run = lm_eval(
        installed, tmp_path, "--model", "relspec-hf", "--model_args", f"pretrained={tiny_llama_dir},neuron_set=none",
        "--tasks", "relation_recall_company_ceo", "--limit", "1", "--device", "cpu",
    )
    assert run.returncode == 2, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["lm_eval: error: relspec-hf: neuron_set='none' names no neuron-set file; give a file or shipped set name, "
                      "or leave neuron_set out for the unmodified model"], run.stderr[-3000:]
    assert "Traceback" not in run.stderr
