"""A recipe's YAML as plain data that remembers where every key came from (a line, or a command-line option)."""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

KeyPath = tuple[Any, ...]


class RecipeError(ConfigError):
    """A recipe is invalid; the message starts with the file and the line (or command-line option) at fault."""

    def __init__(self, message: str, path: KeyPath = ()) -> None:
        super().__init__(message)
        self.path = path


def fmt(path: KeyPath) -> str:
    """``("members", 1, "head")`` -> ``members[1].head``."""
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else f".{key}" if text else str(key)
    return text or "the recipe"


def describe(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    if value is None:
        return "null"
    return f"{value!r} ({kinds.get(type(value), type(value).__name__)})"


# --- where values come from -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where a value was written: ``line 12`` of the recipe, or a command-line option; relative paths in it
    resolve against ``base``."""

    label: str
    base: Path


class Document:
    """A recipe's plain data, with the origin of every key and list item."""

    def __init__(self, name: str, data: Any, origins: dict[KeyPath, Origin]) -> None:
        self.name, self.data, self.origins = name, data, origins
        self.resolved: dict[KeyPath, str] = {}  # relative paths made absolute (for the saved recipe)

    def origin(self, path: KeyPath) -> Origin:
        for n in range(len(path), -1, -1):
            if path[:n] in self.origins:
                return self.origins[path[:n]]
        return Origin("", Path.cwd())

    def error(self, path: KeyPath, message: str) -> RecipeError:
        label = self.origin(path).label
        return RecipeError(f"{self.name}{' ' + label if label else ''}: {message}", path)

    def resolve_path(self, path: KeyPath, value: str, record: bool = True) -> Path:
        resolved = Path(value).expanduser()
        if not resolved.is_absolute():
            resolved = Path(os.path.normpath(self.origin(path).base / resolved))
        if record:
            self.resolved[path] = str(resolved)
        return resolved

    def set(self, dotted: str, value: Any, label: str, base: Path | None = None) -> None:
        """Set ``a.b.0.c`` to ``value`` (creating mappings on the way); its origin becomes ``label``."""
        keys = [int(k) if re.fullmatch(r"-?\d+", k) else k for k in dotted.split(".")]
        if not dotted or "" in keys:
            raise RecipeError(f"{label}: {dotted!r} is not a key path such as data.limit or members.0.model.")
        if not isinstance(self.data, dict):
            self.data = {}
        node, path = self.data, ()
        for depth, key in enumerate(keys):
            if isinstance(node, list):
                if not isinstance(key, int) or not -len(node) <= key < len(node):
                    raise RecipeError(f"{label}: {fmt(path)} is a list of {len(node)} items; {key!r} is not an index in it.")
                key %= len(node)
            elif isinstance(node, dict):
                key = key if key in node or not isinstance(key, int) else str(key)
                if depth < len(keys) - 1 and key not in node:
                    node[key] = {}
            else:
                raise RecipeError(f"{label}: {fmt(path)} is {describe(node)}, so {dotted!r} cannot be set.")
            path += (key,)
            if depth == len(keys) - 1:
                node[key] = value
            node = node[key]
        self.mark(path, value, Origin(label, base or Path.cwd()))

    def remove(self, path: KeyPath) -> None:
        parent = self.data
        for key in path[:-1]:
            parent = parent[key]
        parent.pop(path[-1], None)
        self.mark(path, None, None)

    def mark(self, path: KeyPath, value: Any, origin: Origin | None) -> None:
        for known in [p for p in self.origins if p[:len(path)] == path]:
            del self.origins[known]
        if origin is None:
            return
        self.origins[path] = origin
        children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, child in children:
            self.mark(path + (key,), child, origin)

    def resolved_data(self) -> Any:
        """The data with every relative path replaced by the absolute path it resolved to."""
        data = copy.deepcopy(self.data)
        for path, value in self.resolved.items():
            node = data
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        return data


def _plain(node: yaml.Node, path: KeyPath, doc: Document, loader: yaml.SafeLoader, base: Path) -> Any:
    doc.origins.setdefault(path, Origin(f"line {node.start_mark.line + 1}", base))
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise RecipeError(f"{doc.name} line {line}: keys in {fmt(path)} must be plain names.", path)
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                raise RecipeError(f"{doc.name} line {line}: key {key!r} appears twice in {fmt(path)}; keep one.", path)
            doc.origins[path + (key,)] = Origin(f"line {line}", base)
            out[key] = _plain(value_node, path + (key,), doc, loader, base)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, path + (i,), doc, loader, base) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def parse_yaml(text: str, name: str, base: Path) -> Document:
    """Parse YAML text into a Document that remembers the line of every key and list item."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{name}{where}: not valid YAML: {err.problem or err.context}.") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{name}: not valid YAML: {err}.") from None
    doc = Document(name, {}, {})
    if node is not None:
        doc.data = _plain(node, (), doc, yaml.SafeLoader(""), base)
    return doc
