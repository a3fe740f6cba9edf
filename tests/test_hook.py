"""The import hook: lm-eval finds relspec-hf and our tasks, and the hook never breaks Python."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import types

import pytest

import _relspec_lmeval_hook as hook
from relspec_lmeval.errors import DataError, NeuronSetError, UsageError
from relspec_lmeval.lm import preflight
from relspec_lmeval.util.resources import task_dir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code: str, **env) -> subprocess.CompletedProcess:
    """A fresh interpreter that loads the hook as the installed .pth line does."""
    environment = {**os.environ, "PYTHONPATH": REPO_ROOT, **env}
    return subprocess.run([sys.executable, "-c", f"import _relspec_lmeval_hook\n{code}"], capture_output=True, text=True, env=environment, timeout=300)


def test_registry_and_task_manager_are_patched():
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    assert get_model("relspec-hf").__name__ == "RelspecHFLM"
    assert get_model("hf").__name__ == "HFLM"  # the built-in table is still filled
    assert task_dir() in [str(p) for p in TaskManager(include_defaults=False).include_path]
    user = TaskManager(include_path="/tmp/user_tasks", include_defaults=False).include_path
    assert [str(p) for p in user] == [task_dir(), "/tmp/user_tasks"]  # user's folder last: it wins


def _fake_manager(init):
    """A module like lm_eval.tasks.manager whose TaskManager has the given __init__."""
    module = types.ModuleType("fake_lm_eval_tasks_manager")
    module.TaskManager = type("TaskManager", (), {"__init__": init})
    return module


def test_task_manager_without_include_path_is_left_alone(capsys):
    # Another lm-eval's TaskManager without include_path: constructing it must still work.
    def __init__(self, verbosity=None, include_defaults=True):
        self.args = (verbosity, include_defaults)

    module = _fake_manager(__init__)
    hook._patch_task_manager(module)
    assert module.TaskManager().args == (None, True)
    assert module.TaskManager("INFO", include_defaults=False).args == ("INFO", False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "relspec-lmeval: import hook could not" in err and "include_path" in err


def test_task_manager_include_path_given_positionally(capsys):
    def __init__(self, verbosity=None, include_path=None, include_defaults=True):
        self.args = (verbosity, include_path, include_defaults)

    module = _fake_manager(__init__)
    hook._patch_task_manager(module)
    assert module.TaskManager("INFO", "/tmp/user_tasks").args == ("INFO", [task_dir(), "/tmp/user_tasks"], True)
    assert module.TaskManager("INFO", ["/a", "/b"], False).args == ("INFO", [task_dir(), "/a", "/b"], False)
    assert module.TaskManager("INFO", include_path="/a").args == ("INFO", [task_dir(), "/a"], True)
    assert module.TaskManager().args == (None, [task_dir()], True)
    assert capsys.readouterr().err == ""


def test_fresh_interpreter_resolves_both_models():
    result = python("from lm_eval.api.registry import get_model; print(get_model('hf').__name__, get_model('relspec-hf').__name__)")
    assert result.stdout.split() == ["HFLM", "RelspecHFLM"], result.stderr


def test_disable_switch():
    result = python("from lm_eval.api.registry import get_model; get_model('relspec-hf')", RELSPEC_DISABLE_HOOK="1")
    assert result.returncode != 0 and "relspec-hf" in result.stderr and "no model for this name" in result.stderr


def test_errors_inside_a_patch_are_one_warning(capsys):
    class Loader:
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            module.loaded = True

        def get_source(self, name):
            return "source"

    def broken(module):
        raise RuntimeError("lm-eval changed")

    loader = hook._PatchingLoader(Loader(), broken)
    module = types.ModuleType("lm_eval.api.registry")
    loader.exec_module(module)
    assert module.loaded and loader.get_source("x") == "source"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not patch lm_eval.api.registry" in err and "lm-eval changed" in err


def test_broken_environment_still_starts_python():
    # A finder that raises while our finder asks it must not stop the import itself.
    result = python(
        "import sys\n"
        "class Bad:\n    calls = 0\n    def find_spec(self, name, *a):\n"
        "        if name == 'lm_eval.api.registry' and not Bad.calls:\n            Bad.calls += 1\n            raise RuntimeError('bad finder')\n"
        "sys.meta_path.insert(1, Bad())\n"
        "import lm_eval.api.registry\nprint('ok')"
    )
    assert "ok" in result.stdout and "could not look up lm_eval.api.registry" in result.stderr


@pytest.mark.parametrize("module", sorted(hook._PATCHES))
def test_patch_targets_exist_in_this_lm_eval(module):
    # If lm-eval renames these, the hook would silently do nothing: fail here instead.
    import importlib

    mod = importlib.import_module(module)
    assert any(isinstance(f, hook._Finder) for f in sys.meta_path)
    targets = {"lm_eval.api.registry": "get_model", "lm_eval.tasks.manager": "TaskManager", "lm_eval.api.model": "CachingLM",
               "lm_eval._cli.harness": "HarnessCLI"}
    obj = getattr(mod, targets[module])
    patched = (obj.execute if module == "lm_eval._cli.harness" else obj.__init__) if isinstance(obj, type) else obj
    assert hasattr(patched, "__wrapped__")


# ---------------------------------------------------------------- the lm_eval pre-flight


def run_args(model_args: dict | str | None = None, tasks=("relation_recall_synthetic_person_father",), **extra) -> argparse.Namespace:
    """What lm-eval 0.4.13's `run` parser gives HarnessCLI.execute (model_args and metadata already dicts)."""
    values = {"command": "run", "model": "relspec-hf", "model_args": model_args, "tasks": list(tasks), "metadata": None, "config": None}
    return argparse.Namespace(**{**values, **extra})


def _fake_harness(calls: list) -> types.ModuleType:
    module = types.ModuleType("fake_lm_eval_cli_harness")
    module.HarnessCLI = type("HarnessCLI", (), {"execute": lambda self, args: calls.append(args)})
    return module


def test_preflight_refuses_a_bad_set_before_lm_eval_runs(capsys):
    calls: list = []
    module = _fake_harness(calls)
    hook._patch_cli(module)
    with pytest.raises(SystemExit) as exit_info:
        module.HarnessCLI().execute(run_args({"pretrained": "relspec-tiny", "neuron_set": "/nonexistent"}))
    assert exit_info.value.code == 2 and calls == []  # lm-eval's own execute never started
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lm_eval: error: relspec-hf: neuron-set file not found: '/nonexistent'")
    for bad, message in (({"mode": "zap"}, "unknown mode 'zap'"), ({"mode": "scale"}, "mode=scale needs factor"),
                         ({"positions": "last", "ablate_with": "weights"}, "needs hooks"), ({"allow_empty": "maybe"}, "allow_empty")):
        with pytest.raises(NeuronSetError, match=message):
            preflight.check_cli_args(run_args({"pretrained": "relspec-tiny", **bad}))


@pytest.mark.parametrize("key", ["device", "batch_size", "max_batch_size"])
def test_preflight_sends_cli_owned_args_to_the_command_line(key):
    # lm-eval passes these itself; inside model_args they would crash with "multiple values for keyword argument"
    with pytest.raises(UsageError, match=f"{key}= belongs on lm_eval's command line \\(--{key} 4\\)"):
        preflight.check_cli_args(run_args({"pretrained": "relspec-tiny", key: "4"}))


def test_preflight_checks_a_set_against_the_model_config():
    with pytest.raises(NeuronSetError):  # a set of gemma-3-270m does not fit relspec-tiny
        preflight.check_cli_args(run_args({"pretrained": "relspec-tiny", "neuron_set": "gemma-3-270m/company_hq"}))
    preflight.check_cli_args(run_args({"pretrained": "relspec-tiny", "neuron_set": "relspec-tiny/person_father", "mode": "zero"}))


def test_preflight_reads_a_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: relspec-hf\nmodel_args: pretrained=relspec-tiny,neuron_set=/nonexistent\ntasks: relation_recall\n")
    with pytest.raises(NeuronSetError, match="/nonexistent"):
        preflight.check_cli_args(run_args(None, (), model=None, config=str(config)))


def test_preflight_leaves_other_models_and_tasks_alone(lre_env, tmp_path):
    preflight.check_cli_args(run_args({"neuron_set": "/nonexistent"}, model="hf"))  # not ours to check
    preflight.check_cli_args(run_args({"pretrained": "relspec-tiny"}, ("hellaswag", str(tmp_path / "my_task.yaml"))))
    preflight.check_cli_args(run_args({"pretrained": "relspec-tiny"}, ("relation_recall", "relation_ppl_synthetic*")))


@pytest.mark.parametrize("where", ["empty RELSPEC_LRE_DIR", "offline cache", "failed download"])
def test_preflight_names_the_file_a_task_needs(where, monkeypatch, tmp_path):
    monkeypatch.delenv("RELSPEC_LRE_DIR", raising=False)
    monkeypatch.setenv("RELSPEC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RELSPEC_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    if where == "empty RELSPEC_LRE_DIR":
        monkeypatch.setenv("RELSPEC_LRE_DIR", str(tmp_path / "empty"))
    elif where == "failed download":
        monkeypatch.delenv("RELSPEC_OFFLINE")
        monkeypatch.setenv("RELSPEC_LRE_URL", (tmp_path / "empty").as_uri())  # a mirror without the files
    args = run_args({"pretrained": "relspec-tiny"}, ("relation_recall_product_company",))
    with pytest.raises(DataError, match="task relation_recall_product_company needs the relation file product_by_company.json") as info:
        preflight.check_cli_args(args)
    assert "city_in_country" not in str(info.value)  # the alphabetically first file, which this task does not read
    if where == "failed download":
        assert "Could not download" in str(info.value) and "product_by_company.json:" in str(info.value)


def test_preflight_that_breaks_warns_and_continues(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("lm-eval changed its namespace")

    monkeypatch.setattr(preflight, "check_cli_args", broken)
    calls: list = []
    module = _fake_harness(calls)
    hook._patch_cli(module)
    module.HarnessCLI().execute(run_args({"pretrained": "relspec-tiny"}))
    assert len(calls) == 1  # the run goes on
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not run the relspec-hf pre-flight (RuntimeError: lm-eval changed its namespace)" in err


def test_entry_without_the_pth_fails_a_bad_set_fast():
    """`python -m relspec_lmeval.cli.lmeval` installs the hook although RELSPEC_DISABLE_HOOK=1
    turned the .pth's off: the bad set is one line and exit 2 before lm-eval's run starts."""
    argv = ["run", "--model", "relspec-hf", "--model_args", "pretrained=relspec-tiny,neuron_set=/nonexistent",
            "--tasks", "relation_recall_synthetic_person_father", "--device", "cpu"]
    code = (
        "import runpy, sys, time\n"
        f"sys.argv = ['lmeval', *{argv!r}]\n"
        "start = time.perf_counter()\n"
        "try:\n    runpy.run_module('relspec_lmeval.cli.lmeval', run_name='__main__')\n"
        "except SystemExit as exc:\n    status = exc.code\n"
        "import lm_eval.api.registry as registry, lm_eval.tasks.manager as manager\n"
        "print(status, 'lm_eval.evaluator' in sys.modules, hasattr(registry.get_model, '__wrapped__'),"
        " hasattr(manager.TaskManager.__init__, '__wrapped__'), round(time.perf_counter() - start, 1))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": REPO_ROOT, "RELSPEC_DISABLE_HOOK": "1"})
    status, evaluator, registry, manager, seconds = result.stdout.split()
    assert (status, evaluator, registry, manager) == ("2", "False", "True", "True"), result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lm_eval: error: relspec-hf: neuron-set file not found: '/nonexistent'"), lines
    print(f"entry: failed after {seconds} s")


def test_relspec_lm_eval_subcommand_hands_every_argument_to_lm_eval(monkeypatch):
    from relspec_lmeval.cli import lmeval

    seen = []
    monkeypatch.setattr(lmeval, "main", lambda argv: seen.append(argv) or 0)
    parser = argparse.ArgumentParser(prog="relspec")
    lmeval.add_parser(parser.add_subparsers(dest="command", required=True))
    for argv in (["--model", "relspec-hf", "--tasks", "relation_recall", "-h"], ["ls", "tasks"], ["--help"], []):
        args = parser.parse_args(["lm-eval", *argv])
        assert args.func(args) == 0 and seen[-1] == argv
    from relspec_lmeval.cli import main

    assert main(["lm-eval", "ls", "groups", "--help"]) == 0 and seen[-1] == ["ls", "groups", "--help"]  # wired into relspec
