"""Every third-party package that fusion's code imports is declared in pyproject.toml: an import that runs when a
module is imported must be a dependency, so an install from the package alone can import every module; an import
inside a function (an optional engine's) may come from an optional extra instead."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Imports(ast.NodeVisitor):
    """Top-level module names imported by a file, apart by whether the import runs on import (``eager``) or only
    when a function runs (``lazy``)."""

    def __init__(self) -> None:
        self.eager: set[str] = set()
        self.lazy: set[str] = set()
        self._depth = 0

    def _function(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, name: str) -> None:
        (self.lazy if self._depth else self.eager).add(name.split(".")[0])

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._add(node.module)


def _imported() -> tuple[set[str], set[str]]:
    """(modules imported on import, modules imported only inside functions) across fusion/, third-party only."""
    found = _Imports()
    for path in (ROOT / "fusion").rglob("*.py"):
        found.visit(ast.parse(path.read_text(encoding="utf-8")))
    own = set(sys.stdlib_module_names) | {"fusion", "__future__"}
    return found.eager - own, found.lazy - found.eager - own


def _names(specs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in specs}


def _declared() -> tuple[set[str], set[str]]:
    """The names in ``[project] dependencies`` and in every optional extra (read with patterns: tomllib is not in
    Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S)
    assert block is not None, "pyproject.toml has no [project] dependencies list"
    extras = re.search(r"^\[project\.optional-dependencies\]\n(.*?)(?=^\[)", text, re.M | re.S)
    optional = re.findall(r'"([^"]+)"', re.sub(r"#.*", "", extras.group(1))) if extras else []
    return _names(re.findall(r'"([^"]+)"', block.group(1))), _names(optional)


def _undeclared(modules: set[str], declared: set[str]) -> dict[str, list[str]]:
    providers = packages_distributions()
    undeclared = {}
    for module in modules:
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if dists and not dists & declared:
            undeclared[module] = sorted(dists)
    return undeclared


def test_every_imported_package_is_declared():
    eager, lazy = _imported()
    required, optional = _declared()
    assert _undeclared(eager, required) == {}, "imported on import but not in pyproject.toml dependencies"
    assert _undeclared(lazy, required | optional) == {}, "imported but in no dependency list or extra"
    assert "ray" in lazy and "ray" not in eager  # the optional engine's package is only imported when used
