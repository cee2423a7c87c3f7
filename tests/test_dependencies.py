"""Every third-party package that fusion's code imports is declared in pyproject.toml's dependencies, so an
install from the package alone can import every module."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_top_level_modules() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "fusion").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"fusion", "__future__"}


def _declared() -> set[str]:
    """The names in ``[project] dependencies`` (read with a pattern: tomllib is not in Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S)
    assert block is not None, "pyproject.toml has no [project] dependencies list"
    specs = re.findall(r'"([^"]+)"', block.group(1))
    return {re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in specs}


def test_every_imported_package_is_declared():
    providers = packages_distributions()
    declared = _declared()
    undeclared = {}
    for module in _imported_top_level_modules():
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if dists and not dists & declared:
            undeclared[module] = sorted(dists)
    assert undeclared == {}, f"imported but not in pyproject.toml dependencies: {undeclared}"
