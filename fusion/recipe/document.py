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
        where = f"{self.name} {label}"  # the recipe too: an override is read against one
        if not dotted or "" in keys:
            raise RecipeError(f"{where}: {dotted!r} is not a key path such as data.limit or members.0.model.")
        if not isinstance(self.data, dict):
            self.data = {}
        node, path, created = self.data, (), []
        for depth, key in enumerate(keys):
            if isinstance(node, list):
                if not isinstance(key, int) or not -len(node) <= key < len(node):
                    raise RecipeError(f"{where}: {fmt(path)} is a list of {len(node)} items; {key!r} is not an index in it.")
                key %= len(node)
            elif isinstance(node, dict):
                key = key if key in node or not isinstance(key, int) else str(key)
                if depth < len(keys) - 1 and key not in node:
                    node[key] = {}
                    created.append(path + (key,))
            else:
                raise RecipeError(f"{where}: {fmt(path)} is {describe(node)}, so {dotted!r} cannot be set.")
            path += (key,)
            if depth == len(keys) - 1:
                node[key] = value
            node = node[key]
        origin = Origin(label, base or Path.cwd())
        self.mark(path, value, origin)
        for made in created:  # a mapping the override created is reported at the override, not the recipe's top
            self.origins[made] = origin

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


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of settings; anything near this is not one
MAX_RECIPE_REPEATS = 2_000  # values read again through an alias: bounds an alias bomb (aliases of aliases)


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class _Budget:
    """Counts the values read more than once (through aliases), and the nodes being expanded (a recursive alias
    repeats one of them)."""

    def __init__(self) -> None:
        self.repeats, self.seen, self.open = 0, set(), set()


def _plain(node: yaml.Node, path: KeyPath, doc: Document, loader: yaml.SafeLoader, base: Path,
           budget: _Budget) -> Any:
    line = node.start_mark.line + 1
    if id(node) in budget.seen:
        budget.repeats += 1
        if budget.repeats > MAX_RECIPE_REPEATS:
            raise RecipeError(f"{doc.name} line {line}: aliases repeat more than {MAX_RECIPE_REPEATS} values (aliases "
                              "of aliases grow without bound); write the recipe with fewer aliases.", path)
    budget.seen.add(id(node))
    if id(node) in budget.open:
        raise RecipeError(f"{doc.name} line {line}: {fmt(path)} is an alias that contains itself; a recipe cannot "
                          "be recursive. Write the value out.", path)
    doc.origins.setdefault(path, Origin(f"line {line}", base))
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if node.tag not in _PLAIN_TAGS:  # the safe loader would construct it; a tagged collection is not plain
            raise yaml.constructor.ConstructorError(None, None, f"tag {node.tag!r}", node.start_mark)
        budget.open.add(id(node))
        try:
            return _collection(node, path, doc, loader, base, budget)
        finally:
            budget.open.discard(id(node))
    return loader.construct_object(node, deep=True)


def _collection(node: yaml.Node, path: KeyPath, doc: Document, loader: yaml.SafeLoader, base: Path,
                budget: _Budget) -> Any:
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
            out[key] = _plain(value_node, path + (key,), doc, loader, base, budget)
        return out
    return [_plain(item, path + (i,), doc, loader, base, budget) for i, item in enumerate(node.value)]


def parse_yaml(text: str, name: str, base: Path) -> Document:
    """Parse YAML text into a Document that remembers the line of every key and list item.

    Only plain data is read (YAML's safe loader: a ``!!python/...`` tag is refused, naming its line), and the
    document is bounded: at most ``MAX_RECIPE_BYTES`` of text and ``MAX_RECIPE_REPEATS`` values read again through
    aliases, and no alias inside itself, so an alias bomb is refused at once instead of filling memory.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{name}: {size} bytes, more than a recipe may hold ({MAX_RECIPE_BYTES}); is it the "
                          "right file?")
    doc = Document(name, {}, {})
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            loader = yaml.SafeLoader("")
            doc.data = _plain(node, (), doc, loader, base, _Budget())
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        tag = f" {err.problem.split('tag ')[-1]}" if err.problem and "tag " in err.problem else ""
        raise RecipeError(f"{name}{where}: the tag{tag} is not allowed: a recipe holds plain data (mappings, "
                          "lists, strings, numbers, booleans); remove the tag.") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{name}{where}: not valid YAML: {err.problem or err.context}.") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{name}: not valid YAML: {err}.") from None
    except RecursionError:  # nesting deeper than Python's stack (e.g. a merge key inside itself)
        raise RecipeError(f"{name}: the YAML nests too deeply or refers to itself; write the values out.") from None
    return doc
