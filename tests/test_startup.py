"""Issue 20: commands start at once, pick and say their device, stop on Ctrl-C in one line,
and do not pass on lm-eval's ``fatal: not a git repository``.

Start-up is checked by what is imported (torch, transformers, lm-eval), not by timing:
the timings are benchmarks/startup.py's (benchmarks/results/startup.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import default_signals

from relspec_lmeval.cli import EXIT_INTERRUPTED, main
from relspec_lmeval.errors import UsageError
from relspec_lmeval.modelio.load import default_device, load_model

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "lm_eval")

# Each argv ends before any work: help, or an error argparse or a config check finds.
QUICK_ENDS = {
    "--help": 0,
    "reproduce --help": 0,
    "info --help": 0,
    "convert lape --help": 0,
    "identify --bad-flag": 2,
    "select --k 0 x": 2,  # --k is checked by argparse, before the scores file is read
    "identify --model m --out o --k 0": 2,  # IdentifyConfig.check, before the pipeline imports torch
    "compare only-one": 2,
    "export --model m": 2,
    "card --help": 0,
    "card no-such-folder": 2,  # refused before the set files (and torch) are read
    "info relspec-tiny/landmark_country": 0,  # a set relspec wrote is read without torch (sets/quickinfo.py)
    "info --json gemma-3-270m/company_hq relspec-tiny/random/k38-seed0": 0,
    "info no-such-set": 2,
}

_PROBE = """
import json, sys
from relspec_lmeval.cli import main
argv = sys.argv[1].split()
try:
    code = main(argv)
except SystemExit as exc:  # argparse: --help, flag errors
    code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


def _probe(argv: str) -> dict:
    """``main(argv)`` in a fresh interpreter on this checkout: its exit status and what it imported."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _PROBE, argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("argv", list(QUICK_ENDS))
def test_help_and_input_errors_come_before_torch(argv):
    result = _probe(argv)
    assert result == {"code": QUICK_ENDS[argv], "heavy": []}


def test_select_k_is_checked_by_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["select", "--k", "0", "x"])
    assert exc.value.code == 2
    assert "argument --k: must be a positive integer, not '0'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- device


def test_default_device_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == ("cpu", "no CUDA available; --device to choose")
    assert default_device("cpu") == ("cpu", "as asked")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device()[0] == "cuda"


@pytest.mark.parametrize(("device", "says"), [("cuda", "sees no CUDA device"), ("cuda:1", "sees no CUDA device"),
                                              ("gpu", "is not a torch device")])
def test_a_device_torch_cannot_use_is_a_usage_error(monkeypatch, device, says):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match=says):
        default_device(device)


def test_reproduce_passes_the_device_and_says_it(monkeypatch, capsys):
    """lm-eval's HFLM defaults to device "cuda" even on a CPU-only torch: the runner always passes one."""
    from relspec_lmeval.experiments.plan import ReproduceConfig
    from relspec_lmeval.experiments.runner import lm_kwargs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = ReproduceConfig(model="relspec-tiny", neuron_sets="relspec-tiny", suite="synthetic", out="unused")
    assert lm_kwargs(cfg)["device"] == "cpu"
    assert capsys.readouterr().err == "relspec reproduce: device cpu (no CUDA available; --device to choose)\n"
    cfg.progress = False  # --quiet
    assert lm_kwargs(cfg)["device"] == "cpu" and capsys.readouterr().err == ""
    cfg.device = "cuda"
    with pytest.raises(UsageError, match="--device cuda: this torch sees no CUDA device"):
        lm_kwargs(cfg)


def test_load_model_picks_cpu_without_cuda_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, _ = load_model("relspec-tiny", who="relspec identify")
    assert next(model.parameters()).device.type == "cpu"
    assert "relspec identify: device cpu (no CUDA available; --device to choose)" in capsys.readouterr().err
    load_model("relspec-tiny", progress=False)
    assert "device" not in capsys.readouterr().err


# ---------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    from relspec_lmeval.cli import sets

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sets, "_cmd_info", interrupted)  # every command goes through cli.main
    assert main(["info", "x"]) == EXIT_INTERRUPTED == 130
    captured = capsys.readouterr()
    assert captured.err == "relspec: interrupted\n" and captured.out == ""


def test_sigint_during_identify(tmp_path):
    """A real Ctrl-C (SIGINT) once identify has started: one line, exit 130, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RELSPEC_CACHE_DIR": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "relspec_lmeval", "identify", "--model", "relspec-tiny", "--data",
            "relation_recall_synthetic_det", "--out", str(tmp_path / "sets"), "--device", "cpu", "--no-cache"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=default_signals)
    try:
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            seen.append(line)
            if "device cpu" in line or not line:  # the model is being loaded: the run has started
                break
        assert any("device cpu" in line for line in seen), "".join(seen)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)[::-1]
    finally:
        proc.kill()
    err = "".join(seen) + rest
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.rstrip().endswith("relspec: interrupted")
    assert not (tmp_path / "sets" / "summary.json").exists()


# ---------------------------------------------------------------------------- git noise


def test_lm_eval_git_hash_is_asked_quietly(tmp_path, monkeypatch, capfd):
    """lm-eval's own ``get_git_commit_hash`` lets git print ``fatal: not a git repository``
    outside a repository (stock lm-eval, every ``simple_evaluate``); ``relspec reproduce``'s
    session asks git once, with its stderr captured, and records the same value."""
    import lm_eval.evaluator as evaluator
    from lm_eval.loggers.utils import get_git_commit_hash

    from relspec_lmeval.experiments import runner

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # tmp_path is in no repository
    assert get_git_commit_hash() is None
    assert "not a git repository" in capfd.readouterr().err  # what every run printed before
    original = evaluator.get_git_commit_hash
    with runner._lm_eval_session():
        assert evaluator.get_git_commit_hash() is None and evaluator.get_git_commit_hash() is None
    assert evaluator.get_git_commit_hash is original
    assert capfd.readouterr().err == ""


def test_relspec_hf_from_python_picks_cpu_without_cuda(tiny_llama_dir, monkeypatch):
    """HFLM's own default is device="cuda"; RelspecHFLM(...) without a device must not need CUDA."""
    import torch

    from relspec_lmeval.lm.hflm import RelspecHFLM

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert RelspecHFLM(pretrained=str(tiny_llama_dir), batch_size=1).device.type == "cpu"
