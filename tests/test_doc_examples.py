"""The examples in the docstrings run: every public name's (``relspec_lmeval.__all__``), and every
other docstring example in the package. Each runs with empty globals (an example imports what it
uses) in an empty working folder; none needs a fixture, a download or more than a second or two.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import relspec_lmeval

PACKAGE = Path(relspec_lmeval.__file__).resolve().parent
PUBLIC = [name for name in relspec_lmeval.__all__ if name != "__version__"]
# Public names whose definitions live in modules this change did not touch; their proposed
# examples wait for those modules (remove a name here when its docstring gains one).
WITHOUT_EXAMPLE: set[str] = set()  # public names whose docstring has no example yet (none)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _examples(obj: object, name: str) -> list[doctest.DocTest]:
    tests = doctest.DocTestFinder(recurse=True).find(obj, name, globs={})
    return [t for t in tests if t.examples]


def _run(tests: list[doctest.DocTest], folder: Path, monkeypatch) -> None:
    monkeypatch.chdir(folder)  # an example that writes a file writes it here
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed (the doctest report is above)"


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>> " in path.read_text(encoding="utf-8"):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _public(name: str) -> object:
    """The object ``relspec_lmeval.<name>`` names, from the module that defines it (see the xfail below)."""
    return getattr(importlib.import_module(relspec_lmeval._EXPORTS[name]), name)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_examples_run(name, tmp_path, monkeypatch):
    tests = _examples(_public(name), name)
    if name in WITHOUT_EXAMPLE:
        assert not tests, f"{name} has an example now: remove it from WITHOUT_EXAMPLE"
        pytest.skip(f"{name}'s docstring has no example yet")
    assert tests, f"relspec_lmeval.{name}'s docstring has no example (Args/Returns/Example, as the others)"
    _run(tests, tmp_path, monkeypatch)


@pytest.mark.parametrize("module", _modules_with_examples())
def test_module_examples_run(module, tmp_path, monkeypatch):
    """The other examples (helpers, registries); the public names' ran above."""
    found = _examples(importlib.import_module(module), module)
    assert found, f"{module} mentions '>>> ' but doctest finds no example in it"
    depth = len(module.split("."))
    tests = [t for t in found if t.name.split(".")[depth:depth + 1] not in [[n] for n in PUBLIC]]
    if not tests:
        pytest.skip(f"{module}'s examples are those of public names")
    _run(tests, tmp_path, monkeypatch)


def test_public_names_are_the_objects_they_name():
    """Also after identify/'s modules are imported (the public function is identify_sets, not identify)."""
    import relspec_lmeval.identify.config  # noqa: F401  (what ``from relspec_lmeval import IdentifyConfig`` does)

    for name in PUBLIC:
        assert getattr(relspec_lmeval, name) is _public(name), name
