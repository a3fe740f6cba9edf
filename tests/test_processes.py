"""More than one process: ``accelerate launch --cpu --num_processes 2`` gives what one process gives.

Identification shards the prompts across processes and sums the statistics
(``identify.activations.Processes``): the files must be byte for byte those of one process.
Evaluation through lm-eval's own data parallelism must give the same metrics. Two processes
fit the 2-core CI machine; each test starts real processes (tens of seconds). The one-process
side runs in this process (the same command through ``cli.main``, the same evaluation through
``simple_evaluate`` on our tasks alone): what is tested is the launched pair, and an
interpreter start plus the indexing of lm-eval's own 15,000 tasks (~15 s) bought nothing for
the reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.multicore

RELATIONS = "person_plays_instrument,company_ceo"
SET = "relspec-tiny/k384/person_plays_instrument"
TASKS = "relation_recall_synthetic_person_plays_instrument,relation_choice_synthetic_person_plays_instrument"


def _launch_two(argv: list[str], cwd: Path) -> None:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    # each run its own answer cache: both compute everything
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "RELSPEC_CACHE_DIR": str(cwd / "cache")}
    done = subprocess.run([*launch, "-m", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture()
def two_dirs(tmp_path, lre_env):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    return tmp_path / "one", tmp_path / "two"


def test_identify_with_two_processes_writes_the_same_bytes(two_dirs, monkeypatch):
    from relspec_lmeval.cli import main

    argv = ["identify", "--model", "relspec-tiny", "--data", "relation_recall_synthetic_det", "--relations", RELATIONS,
            "--k", "100", "--out", "sets", "--quiet", "--device", "cpu", "--batch-size", "16"]
    one, two = two_dirs
    with monkeypatch.context() as mp:  # one thread (conftest's one_thread), its own answer cache, as the launched pair
        mp.chdir(one)
        mp.setenv("RELSPEC_CACHE_DIR", str(one / "cache"))
        assert main(argv) == 0
    _launch_two(["relspec_lmeval", *argv], two)
    files = sorted(p.relative_to(one) for p in (one / "sets").rglob("*") if p.is_file())
    assert len(files) == 5  # two sets, two scores files, summary.json
    assert sorted(p.relative_to(two) for p in (two / "sets").rglob("*") if p.is_file()) == files
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def _metrics(results: dict) -> dict:
    return {task: {k: v for k, v in entry.items() if k.endswith(",none") and "stderr" not in k} for task, entry in results.items()}


def test_lm_eval_with_two_processes_gives_the_same_metrics(two_dirs, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model_args = f"pretrained=relspec-tiny,neuron_set={SET}"
    one, two = two_dirs
    with monkeypatch.context() as mp:  # what `lm_eval --model relspec-hf ...` runs in one process (--cpu: the pair's device)
        mp.chdir(one)
        mp.setenv("RELSPEC_CACHE_DIR", str(one / "cache"))
        out = simple_evaluate(model="relspec-hf", model_args=model_args, tasks=TASKS.split(","), batch_size=16, limit=40,
                              device="cpu", task_manager=TaskManager(include_defaults=False))  # ours (the hook): the same task configs
    _launch_two(["lm_eval", "--model", "relspec-hf", "--model_args", model_args, "--tasks", TASKS, "--batch_size", "16",
                 "--limit", "40", "--output_path", "out"], two)
    (path,) = (two / "out").rglob("results_*.json")
    first, second = _metrics(out["results"]), _metrics(json.loads(path.read_text())["results"])
    assert first == second
    recall = first["relation_recall_synthetic_person_plays_instrument"]["acc,none"]
    assert recall < 0.9  # the set is applied in both (relspec-tiny answers 1.00 without it)
