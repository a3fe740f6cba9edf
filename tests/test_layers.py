"""The package's shape (docs/architecture.md): imports go one way, no private cross-imports,
modules short enough to read in one sitting, and every user error is a RelspecError."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "relspec_lmeval"
# Higher layers may import lower ones, never the reverse (same-layer imports are allowed,
# but must not form cycles between packages; checked below).
LAYERS = {"cli": 4, "identify": 3, "experiments": 3, "lm": 3, "sets": 2, "data": 2, "modelio": 2, "util": 1, "errors": 0}
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _package(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path) -> list[ast.ImportFrom]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("relspec_lmeval")]


def _target(node: ast.ImportFrom) -> str:
    parts = node.module.split(".")
    if len(parts) == 1:  # `from relspec_lmeval import __version__`: a constant at the very bottom
        return "errors" if all(a.name == "__version__" for a in node.names) else "__init__"
    return parts[1]


def test_imports_point_down_and_name_no_private_names():
    wrong = []
    for path in _modules():
        here = _package(path)
        if here not in LAYERS:
            continue  # __init__ and __main__ sit on top
        for node in _imports(path):
            there = _target(node)
            if LAYERS.get(there, 99) > LAYERS[here]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {node.module} (layer {there} is above {here})")
            wrong += [f"{path.relative_to(PACKAGE)} imports private {node.module}.{a.name}" for a in node.names
                      if a.name.startswith("_") and a.name != "__version__"]
    assert not wrong, "\n".join(wrong)


def test_no_cycles_between_packages():
    edges: dict[str, set[str]] = {}
    for path in _modules():
        here = _package(path)
        for node in _imports(path):
            there = _target(node)
            if there != here and here in LAYERS and there in LAYERS:
                edges.setdefault(here, set()).add(there)

    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges.get(start, ()))

    cycles = sorted(f"{a} -> {b} -> … -> {a}" for a, targets in edges.items() for b in targets if reaches(b, a))
    assert not cycles, cycles


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_short(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it by concept"


def test_package_raises_no_bare_value_errors():
    """User errors are RelspecError subclasses (the CLI prints those as one line); a bare
    ValueError/RuntimeError raised by our code would be a traceback."""
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                if node.exc.func.id in ("ValueError", "FileNotFoundError", "OSError", "KeyError"):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} raises {node.exc.func.id}")
    assert not found, "\n".join(found)


def test_public_api():
    import relspec_lmeval

    for name in relspec_lmeval.__all__:
        assert getattr(relspec_lmeval, name) is not None, name
    with pytest.raises(AttributeError):
        relspec_lmeval.no_such_name  # noqa: B018
