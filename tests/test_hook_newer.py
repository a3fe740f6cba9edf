"""The import hook under an lm-eval of another shape (a fake package, first on sys.path), and the
entry points a newer lm-eval would read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from test_install import installed  # noqa: F401  (the fixture: the wheel, installed in a site dir)

REPO = Path(__file__).resolve().parents[1]

# The four patched modules, in a newer shape: each original gained a keyword the hook does not know.
NEWER = {
    "api/registry.py": """
        class _Registry(dict):
            def register(self, name, target=None):
                self[name] = target
        model_registry = _Registry(hf="HFLM")
        def get_model(model_name, strict=True):
            return model_registry[model_name], strict
    """,
    "api/model.py": """
        class CachingLM:
            def __init__(self, lm, cache_db, readonly=False):
                self.lm, self.readonly, self.dbdict = lm, readonly, {}
            def get_cache_hook(self):
                return "hook"
    """,
    "tasks/manager.py": """
        class TaskManager:
            def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None, lazy=False):
                self.include_path, self.lazy = include_path, lazy
    """,
    "_cli/harness.py": """
        class HarnessCLI:
            def execute(self, args, dry_run=False):
                return args.model, dry_run
    """,
}

# The same modules with signatures the hook cannot read its argument from.
UNKNOWN = {
    "api/registry.py": "model_registry = {}\ndef get_model(name):\n    return name\n",
    "api/model.py": "class CachingLM:\n    def __init__(self, model, db):\n        self.model = model\n",
    "tasks/manager.py": "class TaskManager:\n    def __init__(self, paths=None):\n        self.paths = paths\n",
    "_cli/harness.py": "class HarnessCLI:\n    def execute(self, namespace):\n        return namespace\n",
}


def fake_lm_eval(root: Path, modules: dict[str, str]) -> Path:
    for name in ("", "api", "tasks", "_cli"):
        (root / "lm_eval" / name).mkdir(parents=True, exist_ok=True)
        (root / "lm_eval" / name / "__init__.py").write_text("")
    for name, code in modules.items():
        (root / "lm_eval" / name).write_text(textwrap.dedent(code))
    return root


def run_with(fake: Path, code: str, **extra_env: str) -> subprocess.CompletedProcess:
    """A fresh interpreter with the fake lm_eval first on sys.path and this checkout's hook
    (the venv's .pth imports the first _relspec_lmeval_hook on the path: the checkout's)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])}
    env.pop("RELSPEC_DISABLE_HOOK", None)
    env.update(extra_env)
    script = f"import _relspec_lmeval_hook\n{textwrap.dedent(code)}"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)


def test_new_keywords_pass_through_every_wrapper(tmp_path):
    fake = fake_lm_eval(tmp_path, NEWER)
    result = run_with(fake, """
        import argparse, json
        from lm_eval.api import model, registry
        from lm_eval.tasks.manager import TaskManager
        from lm_eval._cli.harness import HarnessCLI

        class LM:
            relspec_cache_salt = "abc"
            def set_cache_hook(self, hook):
                self.hook = hook

        lm = LM()
        cache = model.CachingLM(lm, "db", readonly=True)
        cache.dbdict["key"] = 1
        out = {
            "model": registry.get_model("relspec-hf", strict=False),
            "hf": registry.get_model("hf"),
            "readonly": cache.readonly,
            "salted": list(cache.dbdict._inner),
            "hook": lm.hook,
            "tasks": [TaskManager(lazy=True).include_path, TaskManager(None, "/user").include_path, TaskManager(lazy=True).lazy],
            "execute": HarnessCLI().execute(argparse.Namespace(model="hf"), dry_run=True),
            "wrapped": [hasattr(f, "__wrapped__") for f in (registry.get_model, model.CachingLM.__init__, TaskManager.__init__, HarnessCLI.execute)],
        }
        print(json.dumps(out))
    """)
    assert result.returncode == 0 and "TypeError" not in result.stderr, result.stderr
    out = json.loads(result.stdout)
    from relspec_lmeval.util.resources import task_dir

    assert out["model"] == ["relspec_lmeval.lm.hflm:RelspecHFLM", False]  # registered, and strict= reached get_model
    assert out["hf"] == ["HFLM", True]
    assert out["readonly"] is True and out["salted"] == ["abc:key"] and out["hook"] == "hook"
    assert out["tasks"] == [[task_dir()], [task_dir(), "/user"], True]
    assert out["execute"] == ["hf", True]
    assert out["wrapped"] == [True, True, True, True]
    assert result.stderr == ""


def test_unknown_signatures_are_left_alone_with_one_warning_each(tmp_path):
    fake = fake_lm_eval(tmp_path, UNKNOWN)
    result = run_with(fake, """
        import lm_eval.api.registry as registry, lm_eval.api.model as model
        from lm_eval.tasks.manager import TaskManager
        from lm_eval._cli.harness import HarnessCLI

        for _ in range(2):  # used twice: still one warning per patch, from patch time
            assert registry.get_model("relspec-hf") == "relspec-hf" and model.CachingLM("m", "db").model == "m"
            assert TaskManager(paths="/p").paths == "/p" and HarnessCLI().execute("ns") == "ns"
        originals = (registry.get_model, model.CachingLM.__init__, TaskManager.__init__, HarnessCLI.execute)
        print(sum(hasattr(f, "__wrapped__") for f in originals))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0"]  # every original in place
    lines = result.stderr.splitlines()
    assert len(lines) == 4 and all(line.startswith("relspec-lmeval: import hook could not patch") for line in lines), lines
    for where, name in (("get_model", "model_name"), ("CachingLM.__init__", "lm"), ("TaskManager.__init__", "include_path"),
                        ("HarnessCLI.execute", "args")):
        assert sum(where in line and f"takes no '{name}' argument" in line for line in lines) == 1, (where, lines)


def test_forced_install_patches_what_was_imported_before(tmp_path):
    """`install(force=True)` (the `relspec_lmeval.cli.lmeval` entry) works under RELSPEC_DISABLE_HOOK=1,
    also on an lm-eval module imported before it, and patches nothing twice."""
    fake = fake_lm_eval(tmp_path, NEWER)
    result = run_with(fake, """
        import lm_eval.api.registry as registry
        before = hasattr(registry.get_model, "__wrapped__")
        _relspec_lmeval_hook.install(force=True)
        _relspec_lmeval_hook.install(force=True)
        from lm_eval.tasks.manager import TaskManager
        print(before, hasattr(registry.get_model, "__wrapped__"), hasattr(registry.get_model.__wrapped__, "__wrapped__"),
              hasattr(TaskManager.__init__, "__wrapped__"))
    """, RELSPEC_DISABLE_HOOK="1")
    assert result.stdout.split() == ["False", "True", "False", "True"], result.stderr


def test_tasks_entry_point_names_a_module_in_the_task_folder(installed):  # noqa: F811
    """A resolver that takes the entry point's module folder (upstream's task-plugin proposal)
    finds our YAMLs there; the model entry point names an importable module."""
    code = (
        f"import sys; sys.path.insert(0, {str(installed)!r})\n"
        "import importlib.metadata as md, importlib.util, pathlib\n"
        "eps = {(e.group, e.name): e for e in md.distribution('relspec-lmeval').entry_points}\n"
        "tasks = eps['lm_eval.tasks', 'relspec']\n"
        "print(pathlib.Path(importlib.util.find_spec(tasks.module).origin).parent)\n"
        "print(importlib.util.find_spec(eps['lm_eval.models', 'relspec-hf'].module).origin)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=installed, timeout=120)
    assert result.returncode == 0, result.stderr
    folder, model = (Path(line) for line in result.stdout.split())
    assert folder == installed / "relspec_lmeval" / "tasks"
    assert (folder / "relation_recall" / "relation_recall.yaml").is_file() and (folder / "_recall_base.yaml").is_file()
    assert model == installed / "relspec_lmeval" / "lm" / "hflm.py"
