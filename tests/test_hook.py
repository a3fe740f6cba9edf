"""The import hook: lm-eval finds relspec-hf and our tasks, and the hook never breaks Python."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

import _relspec_lmeval_hook as hook
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
