"""benchmarks/ and scripts/ use the package's public names only (docs/architecture.md).

Public: listed in its module's ``__all__``, or exported by the top-level ``relspec_lmeval``.
The scripts are read with ``ast``, never run: every ``from relspec_lmeval… import X`` and every
``m.X`` on a module ``m`` of the package bound by an import must name a public ``X`` (or a
submodule), and a public function or class they use has a docstring. Every module of the
package states its public names in ``__all__``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "relspec_lmeval"
SCRIPTS = sorted([*REPO.glob("benchmarks/*.py"), *REPO.glob("scripts/*.py")])


def _is_package_module(name: str) -> bool:
    return name == "relspec_lmeval" or name.startswith("relspec_lmeval.")


def _is_submodule(module: str, name: str) -> bool:
    if not hasattr(importlib.import_module(module), "__path__"):  # a plain module has no submodules
        return False
    return importlib.util.find_spec(f"{module}.{name}") is not None


def _documented(obj: object) -> bool:
    """A function or class has a docstring of its own (not the one ``dataclass`` writes: its signature)."""
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return True  # constants: their comment is their documentation
    doc = (obj.__doc__ or "").strip()
    return bool(doc) and not (inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("))


def _is_public(module: str, name: str) -> bool:
    """``name`` is in ``module.__all__``, or the top-level package exports that very object."""
    mod = importlib.import_module(module)
    if name in getattr(mod, "__all__", ()):
        return True
    top = importlib.import_module("relspec_lmeval")
    return name in top.__all__ and hasattr(mod, name) and getattr(top, name) is getattr(mod, name)


def violations(source: str, filename: str) -> list[str]:
    """``file:line: module.name …`` for each non-public name ``source`` takes from the package."""
    tree = ast.parse(source, filename=filename)
    found: list[tuple[int, str]] = []
    modules: dict[str, str] = {}  # local name → the package module it is bound to (for m.X)

    def check(module: str, name: str, line: int) -> None:
        if _is_submodule(module, name):
            return
        mod = importlib.import_module(module)
        if not _is_public(module, name):
            found.append((line, f"{filename}:{line}: {module}.{name} is not in {module}.__all__"))
        elif not hasattr(mod, name):
            found.append((line, f"{filename}:{line}: {module}.{name} is in {module}.__all__ but not defined there"))
        elif not _documented(getattr(mod, name)):
            found.append((line, f"{filename}:{line}: {module}.{name} is public but has no docstring"))

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and _is_package_module(node.module or ""):
            for alias in node.names:
                if alias.name == "*":
                    found.append((node.lineno, f"{filename}:{node.lineno}: from {node.module} import * (name what is used)"))
                    continue
                check(node.module, alias.name, node.lineno)
                if _is_submodule(node.module, alias.name):
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _is_package_module(alias.name):  # `import relspec_lmeval.x` binds relspec_lmeval; `… as m` binds m
                    modules[alias.asname or "relspec_lmeval"] = alias.name if alias.asname else "relspec_lmeval"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            check(modules[node.value.id], node.attr, node.lineno)
    return [text for _, text in sorted(found)]


def _defines_all(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    targets = [t for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign)) for t in (n.targets if isinstance(n, ast.Assign) else [n.target])]
    return any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets)


def _binds_names(path: Path) -> bool:
    """A package ``__init__`` with more than a docstring (and ``from __future__``)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) and
               not (isinstance(n, ast.ImportFrom) and n.module == "__future__") for n in body)


def test_every_module_states_its_public_names():
    lacking = [str(p.relative_to(REPO)) for p in sorted(PACKAGE.rglob("*.py"))
               if (p.name != "__init__.py" or _binds_names(p)) and not _defines_all(p)]
    assert not lacking, f"modules without __all__: {', '.join(lacking)}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_benchmarks_and_scripts_use_public_names_only(path):
    found = violations(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert not found, "not public (make the name public, with a docstring, or use a public one):\n" + "\n".join(found)


def test_the_check_finds_private_and_unlisted_names():
    """The check can fail: a private name, a helper not in ``__all__``, one used as ``m.X``, a star import."""
    bad = (
        "from relspec_lmeval.sets.shape import ModelShape, _scalar_never_public\n"
        "from relspec_lmeval.experiments.plan import _settings\n"
        "import relspec_lmeval.sets.shape as shape\n"
        "shape.SITES, shape._hidden\n"
        "from relspec_lmeval.sets import shape as sh\n"
        "sh._other\n"
        "from relspec_lmeval.errors import *\n"
        "from relspec_lmeval.sets.shape import NoSuchName\n"
    )
    assert violations(bad, "bad.py") == [
        "bad.py:1: relspec_lmeval.sets.shape._scalar_never_public is not in relspec_lmeval.sets.shape.__all__",
        "bad.py:2: relspec_lmeval.experiments.plan._settings is not in relspec_lmeval.experiments.plan.__all__",
        "bad.py:4: relspec_lmeval.sets.shape._hidden is not in relspec_lmeval.sets.shape.__all__",
        "bad.py:6: relspec_lmeval.sets.shape._other is not in relspec_lmeval.sets.shape.__all__",
        "bad.py:7: from relspec_lmeval.errors import * (name what is used)",
        "bad.py:8: relspec_lmeval.sets.shape.NoSuchName is not in relspec_lmeval.sets.shape.__all__",
    ]
    good = ("from relspec_lmeval import NeuronSet, __version__\nfrom relspec_lmeval.sets import shape\n"
            "from relspec_lmeval.sets.shape import ModelShape\nshape.SITES\n")
    assert violations(good, "good.py") == []


def test_a_public_function_or_class_needs_a_docstring_of_its_own():
    @dataclasses.dataclass
    class Bare:
        x: int

    def bare() -> None:
        pass

    assert not _documented(Bare) and not _documented(bare)  # dataclass's own "Bare(x: int)" is no docstring
    assert _documented(violations) and _documented(3)
