"""The component contract: every member, head, fuser (and later merge method and gater) is a frozen, typed
config plus learned state.

- A **config** is a frozen dataclass per kind. Its fields are the component's parameters, declared once:
  the component's constructor, ``to_dict`` / ``from_dict``, ``clone()``, ``get_params`` / ``set_params``
  (scikit-learn's protocol), the fingerprint and the recipe schema are all derived from them. Value checks
  live in a ``constraints`` table (field -> (test, text)), cross-field checks in ``validate``.
- Fields that hold Python objects a JSON file cannot spell (a user's ``nn.Module``, a scikit-learn
  estimator) are declared with :func:`object_field`: the JSON gets a description, ``clone()`` a fresh copy,
  and loading takes the object back from :class:`LoadOptions`. The fingerprint sees more of the object than the
  JSON (``identify``): a module's layer attributes and the weights a fit starts from, an estimator's parameters.
- Fields that cannot change what a component computes (its name, progress bars, batch sizes) are declared
  with ``setting(...)`` and are left out of the fingerprint, so renaming a member keeps its cached outputs.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class ScaleConfig(Config):
    ...     factor: float = 1.0
    ...     constraints = {"factor": (is_number, "a finite number")}
    >>> ScaleConfig.from_dict(ScaleConfig(factor=2.0).to_dict()).factor
    2.0
    >>> ScaleConfig(factor="big")
    Traceback (most recent call last):
    ...
    fusion.errors.ConfigError: ScaleConfig.factor must be a finite number; got 'big'.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError, did_you_mean

__all__ = [
    "Config", "Component", "LoadOptions", "Check", "object_field", "setting", "coerced",
    "is_int", "is_number", "is_bool", "optional", "one_of", "at_least", "in_range", "digest",
]

C = TypeVar("C", bound="Config")
Check = tuple[Callable[[Any], bool], str]  # (test, what a valid value is, for the message)

_OBJECT, _SETTING, _COERCE, RECIPE_KEY = "fusion_object", "fusion_setting", "fusion_coerce", "fusion_recipe_key"
_FINGERPRINT = "_fingerprint_memo"  # where a config keeps its fingerprint once computed (not a field)


# --- value checks for constraint tables ------------------------------------------------------------------------


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def at_least(low: float, *, integer: bool = False) -> Callable[[Any], bool]:
    """``value >= low`` (an integer when ``integer``)."""
    return lambda v: (is_int(v) if integer else is_number(v)) and v >= low


def in_range(low: float, high: float, *, closed_high: bool = False) -> Callable[[Any], bool]:
    """``low <= value < high`` (``<= high`` when ``closed_high``)."""
    return lambda v: is_number(v) and low <= v and (v <= high if closed_high else v < high)


def one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, type(choices[0])) and v in choices


def optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """None, or a value passing ``test``."""
    return lambda v: v is None or test(v)


# --- field declarations ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """How a field holding a Python object is described in JSON and copied by ``clone()``."""

    describe: Callable[[Any], Any]
    copy: Callable[[Any], Any]
    load_hint: str  # how a user passes it back when loading, for the error message
    identify: Callable[[Any], Any] | None = None  # what the fingerprint hashes (default: ``describe``)


def object_field(*, describe: Callable[[Any], Any], copy: Callable[[Any], Any], load_hint: str,
                 identify: Callable[[Any], Any] | None = None, default: Any = dataclasses.MISSING,
                 **kwargs: Any) -> Any:
    """A config field holding a Python object (``nn.Module``, estimator) that JSON cannot spell.

    Args:
        describe: what ``to_dict`` (the saved JSON) records of the object.
        copy: a fresh copy for ``clone()``; it must keep what ``identify`` sees (a clone shares the fingerprint).
        load_hint: how a user passes the object back when loading (for the error message).
        identify: what the fingerprint hashes, when ``describe`` does not cover everything that changes outputs
            (a module's attributes and the weights a fit starts from); JSON-able, the same in every process.
    """
    metadata = {_OBJECT: ObjectSpec(describe, copy, load_hint, identify), **kwargs.pop("metadata", {})}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def setting(default: Any = None, **kwargs: Any) -> Any:
    """A field that cannot change what the component computes (left out of the fingerprint)."""
    return dataclasses.field(default=default, metadata={_SETTING: True, **kwargs.pop("metadata", {})}, **kwargs)


def coerced(convert: Callable[[Any], Any], default: Any = dataclasses.MISSING, *, recipe_key: str | None = None,
            **kwargs: Any) -> Any:
    """A field whose value is converted on construction (``head="mlp"`` -> ``MLPHeadConfig()``)."""
    metadata = {_COERCE: convert, **({RECIPE_KEY: recipe_key} if recipe_key else {})}
    if isinstance(default, (list, dict, set)):
        kwargs["default_factory"] = lambda: type(default)(default)
        default = dataclasses.MISSING
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def recipe_key(f: dataclasses.Field) -> str:
    """The key a recipe spells this field with (its name unless declared otherwise)."""
    return f.metadata.get(RECIPE_KEY, f.name)


def is_setting(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get(_SETTING))


def object_spec(f: dataclasses.Field) -> ObjectSpec | None:
    return f.metadata.get(_OBJECT)


def coercion(f: dataclasses.Field) -> Callable[[Any], Any] | None:
    """The conversion a :func:`coerced` field applies on construction, or None."""
    return f.metadata.get(_COERCE)


def digest(*parts: Any) -> str:
    """sha256 of the parts, each JSON-encoded with sorted keys: a fingerprint."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


# --- the config base class -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Base of every component's typed, frozen configuration.

    Subclasses are ``@dataclass(frozen=True)`` with typed fields, an optional ``constraints`` table and an
    optional ``validate()`` for checks that involve several fields. Nested configs (a head inside a member, a
    ``TrainConfig``) round-trip through ``to_dict`` / ``from_dict`` too; a nested config of a kind (a
    ``HeadConfig``) carries its ``kind``.
    """

    kind: ClassVar[str] = ""
    constraints: ClassVar[Mapping[str, Check]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # @dataclass adds no __eq__ / __hash__ where the class already has them: every config keeps these.
        cls.__eq__, cls.__hash__ = Config.__eq__, Config.__hash__  # type: ignore[method-assign]

    def __eq__(self, other: object) -> bool:
        """Same class and same ``to_dict()``: object fields compare by their description (a module's class and
        layers, an estimator's hash) as the saved JSON records them, so the fresh copies a ``clone()`` holds and
        the module passed again when loading compare equal to the originals."""
        if type(other) is not type(self):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            convert = f.metadata.get(_COERCE)
            if convert is not None:
                object.__setattr__(self, f.name, convert(getattr(self, f.name)))
        for name, (valid, requirement) in self.constraints.items():
            value = getattr(self, name)
            if not valid(value):
                raise ConfigError(f"{type(self).__qualname__}.{name} must be {requirement}; got {value!r}.")
        self.validate()

    def validate(self) -> None:
        """Checks across fields; raise ``ConfigError`` naming them."""

    # --- JSON ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-able values (objects as their descriptions, nested configs as dicts)."""
        return {f.name: _encode(getattr(self, f.name), f) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], objects: Mapping[str, Any] | None = None) -> C:
        """Rebuild from ``to_dict`` output; missing keys take their defaults, unknown keys are an error.

        Args:
            data: the dict (a ``kind`` key is accepted and must match).
            objects: values for object fields (``nn.Module``, estimators), by field name; a value given here
                for any field replaces the saved one (a custom head module for a ``head`` field).

        Raises:
            ConfigError: not a dict, an unknown key (with the closest valid one), a missing required key, a
                value of the wrong JSON type (``"cv": "5"`` for an int field), a missing object, or an invalid
                value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__qualname__}.from_dict expects a dict; got {type(data).__name__}.")
        data = dict(data)
        kind = data.pop("kind", cls.kind)
        if cls.kind and kind != cls.kind:
            raise ConfigError(f"{cls.__qualname__} is the config of kind {cls.kind!r}, not {kind!r}.")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in data if k not in fields)
        if unknown:
            raise ConfigError(f"unknown {cls.__qualname__} key(s) {unknown}; valid keys are: {', '.join(fields)}."
                              + did_you_mean(unknown[0], fields))
        hints = _hints(cls)
        objects = objects or {}
        missing = [name for name, f in fields.items() if name not in data and object_spec(f) is None
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            expected = _expected(hints.get(missing[0]))
            raise ConfigError(f"{cls.__qualname__} lacks the required key {missing[0]!r}"
                              + (f" ({expected})" if expected else "") + "; add it.")
        kwargs = {name: objects[name] if name in objects else _decode(value, hints.get(name), fields[name])
                  for name, value in data.items() if object_spec(fields[name]) is None or name in objects}
        for name, value in kwargs.items():
            # fields with a constraint get its (more precise) message from __post_init__
            if name not in objects and coercion(fields[name]) is None and name in hints and name not in cls.constraints:
                _check_type(cls, name, value, hints[name])
        kwargs.update(_objects(cls, fields, objects))
        return cls(**kwargs)

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def fresh(self: C) -> C:
        """A copy whose object fields are fresh copies (re-initialised modules, unfitted estimators)."""
        changes = {f.name: spec.copy(getattr(self, f.name)) for f in dataclasses.fields(self)
                   if (spec := object_spec(f)) is not None and getattr(self, f.name) is not None}
        if not changes:
            return self
        twin = dataclasses.replace(self, **changes)
        if _FINGERPRINT in self.__dict__:  # copies keep what the fingerprint sees (see object_field): not hashed again
            object.__setattr__(twin, _FINGERPRINT, self.__dict__[_FINGERPRINT])
        return twin

    def fingerprint_dict(self) -> dict[str, Any]:
        """What the fingerprint hashes: ``to_dict`` without the fields declared as ``setting``."""
        return {f.name: _encode(getattr(self, f.name), f, for_fingerprint=True)
                for f in dataclasses.fields(self) if not is_setting(f)}

    @property
    def fingerprint(self) -> str:
        """Hash of the kind and every field that can change what the component computes (computed once per
        config: hashing a module's weights is not free)."""
        if _FINGERPRINT not in self.__dict__:
            object.__setattr__(self, _FINGERPRINT, digest(type(self).kind, self.fingerprint_dict()))
        return self.__dict__[_FINGERPRINT]


def _encode(value: Any, f: dataclasses.Field | None = None, for_fingerprint: bool = False) -> Any:
    spec = object_spec(f) if f is not None else None
    if spec is not None:
        if value is None:
            return None
        return (spec.identify or spec.describe)(value) if for_fingerprint else spec.describe(value)
    if isinstance(value, Config):
        inner = value.fingerprint_dict() if for_fingerprint else value.to_dict()
        return {"kind": type(value).kind, **inner} if type(value).kind else inner
    if isinstance(value, (list, tuple)):
        return [_encode(v, for_fingerprint=for_fingerprint) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _encode(v, for_fingerprint=for_fingerprint) for k, v in value.items()}
    return value


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved: decode without it
        return {}


def _config_classes(annotation: Any) -> list[type[Config]]:
    """The Config classes an annotation allows (``HeadConfig | None`` -> [HeadConfig])."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, _UnionType) else (annotation,)
    return [a for a in options if inspect.isclass(a) and issubclass(a, Config)]


_UnionType = type(int | None)


def config_kinds(base: type[Config]) -> dict[str, type[Config]]:
    """Concrete configs of a kind below ``base`` (``HeadConfig`` -> {"linear": LinearHeadConfig, ...})."""
    found: dict[str, type[Config]] = {base.kind: base} if base.kind else {}
    for sub in base.__subclasses__():
        found.update(config_kinds(sub))
    return found


def _decode(value: Any, annotation: Any, f: dataclasses.Field) -> Any:
    if typing.get_origin(annotation) in (list, tuple) and isinstance(value, (list, tuple)):
        item = typing.get_args(annotation)[0] if typing.get_args(annotation) else Any
        items = [_decode(v, item, f) for v in value]
        return tuple(items) if typing.get_origin(annotation) is tuple else items
    classes = _config_classes(annotation)
    if not classes or not isinstance(value, Mapping):
        return value
    base, kinds = classes[0], config_kinds(classes[0])
    if not kinds or "kind" not in value or base.kind == value["kind"]:
        return base.from_dict(value)
    if value["kind"] not in kinds:
        raise ConfigError(f"{f.name}: unknown kind {value['kind']!r}; known kinds: {', '.join(sorted(kinds))}."
                          + did_you_mean(value["kind"], kinds))
    return kinds[value["kind"]].from_dict(value)


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               tuple: "a list", dict: "an object", type(None): "null"}


def _options(annotation: Any) -> tuple[Any, ...]:
    while hasattr(annotation, "__supertype__"):  # typing.NewType
        annotation = annotation.__supertype__
    if typing.get_origin(annotation) in (typing.Union, _UnionType):
        return tuple(o for a in typing.get_args(annotation) for o in _options(a))
    return (annotation,)


def _expected(annotation: Any) -> str:
    """What a value of ``annotation`` is, in words (``int | None`` -> ``an integer or null``)."""
    names = []
    for option in _options(annotation):
        origin = typing.get_origin(option) or option
        if inspect.isclass(origin) and issubclass(origin, Mapping):
            origin = dict
        name = _TYPE_NAMES.get(origin) or (f"a {option.__name__}" if inspect.isclass(option) else "")
        if not name:
            return ""  # Any, Callable, ...: no description
        names.append(name)
    return " or ".join(dict.fromkeys(names))


def _type_ok(value: Any, annotation: Any) -> bool:
    """Whether a decoded JSON value fits a field's annotation (unknown annotations accept anything)."""
    for option in _options(annotation):
        origin, args = typing.get_origin(option) or option, typing.get_args(option)
        if option is Any or not inspect.isclass(origin):
            return True
        if origin is type(None):
            ok = value is None
        elif origin is bool:
            ok = isinstance(value, bool)
        elif origin is int:
            ok = is_int(value)
        elif origin is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif origin in (list, tuple):
            ok = isinstance(value, (list, tuple)) and (not args or all(_type_ok(v, args[0]) for v in value))
        elif issubclass(origin, Mapping):
            ok = isinstance(value, Mapping) and (len(args) != 2 or all(_type_ok(v, args[1]) for v in value.values()))
        else:
            try:
                ok = isinstance(value, origin)
            except TypeError:
                ok = True
        if ok:
            return True
    return False


def _check_type(cls: type, name: str, value: Any, annotation: Any) -> None:
    if not _type_ok(value, annotation):
        expected = _expected(annotation) or f"of type {annotation}"
        raise ConfigError(f"{cls.__qualname__}.{name} must be {expected}; got {value!r} "
                          f"({type(value).__name__}). Fix that key.")


def _objects(cls: type[Config], fields: Mapping[str, dataclasses.Field], objects: Mapping[str, Any]) -> dict:
    found = {}
    for name, f in fields.items():
        spec = object_spec(f)
        if spec is None:
            continue
        if name in objects:
            found[name] = objects[name]
        elif f.default is dataclasses.MISSING:
            raise ConfigError(f"{cls.__qualname__}.{name} holds a Python object that a saved config cannot rebuild; "
                              f"pass it again when loading: {spec.load_hint}.")
    return found


# --- loading options -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadOptions:
    """What ``from_pretrained`` passes to every component it rebuilds (``Member.load``, ``Fuser.from_config``).

    Attributes:
        objects: Python objects that saved configs cannot rebuild, by component name (a member's name, or
            ``"fuser"``) then field name, e.g. ``{"cnn": {"module": SmallCNN()}, "minilm": {"head": MyHead()}}``.
        trusted_types: extra types to trust in skops files (scikit-learn estimators).
        verify_members: check referenced model weights against the sha256 recorded at save time.
        show_progress: progress bars of the loaded components.
        trust_remote_code: let the loaded Hugging Face members run their model's custom code. Only this
            decides: a ``trust_remote_code`` saved in a member's config is ignored (with a warning), since
            whoever wrote the folder must not choose to run code on the loading machine.
    """

    objects: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    trusted_types: tuple[str, ...] = ()
    verify_members: bool = True
    show_progress: bool = True
    trust_remote_code: bool = False

    def objects_for(self, name: str) -> dict[str, Any]:
        return dict(self.objects.get(name, {}))


# --- the component base class ----------------------------------------------------------------------------------


class Component:
    """A frozen config plus learned state; the constructor's parameters are the config's fields.

    ``Component(**fields)`` or ``Component(config)`` builds one; ``clone()`` a fresh, unfitted one from the
    same config; ``to_config()`` and the kind's loader (``Member.load``, ``Fuser.from_config``, both through
    ``config_from_dict``) round-trip through JSON. Learned tensors come out of
    ``state_dict()``. The ``fingerprint`` is computed once (from the config when unfitted, from config and
    learned state once fitted or loaded, see ``_set_fitted_fingerprint``) and never re-hashed per lookup.

    Subclasses set ``Config`` (their config class) and are registered by kind in a ``Registry``.
    """

    kind: ClassVar[str] = ""
    Config: ClassVar[type[Config]] = Config

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" in cls.__dict__:  # the constructor's signature is the config's
            params = list(inspect.signature(cls.Config).parameters.values())
            cls.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        if len(args) == 1 and not kwargs and isinstance(args[0], self.Config):
            config = args[0]
        else:
            config = self.Config(*args, **kwargs)
        self.config = config
        self._fingerprint: str | None = None

    def clone(self):
        """A fresh, unfitted component with the same config (object fields copied fresh)."""
        twin = type(self)(self.config.fresh())
        self._clone_into(twin)
        return twin

    def _clone_into(self, twin: Component) -> None:
        """Share what a clone may share (hashed checksums, a loaded frozen model); nothing learned."""

    # --- scikit-learn's estimator protocol, derived from the config's fields -------------------------------
    def __sklearn_clone__(self):
        """``sklearn.base.clone(component)`` is :meth:`clone` (one mechanism: fresh object fields, nothing learned)."""
        return self.clone()

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The config's fields by name (scikit-learn's ``get_params``). With ``deep``, a field holding an
        estimator (a ``SklearnMember``'s pipeline) adds its parameters as ``field__param``."""
        params = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}
        if deep:
            for name, value in list(params.items()):
                if hasattr(value, "get_params") and not inspect.isclass(value):
                    params.update({f"{name}__{key}": v for key, v in value.get_params(deep=True).items()})
        return params

    def set_params(self, **params: Any):
        """Change config fields (scikit-learn's ``set_params``; ``field__param`` sets a parameter of a field's
        estimator): the new config is validated and ``self`` becomes what the constructor builds from it.

        Raises:
            ConfigError: an unknown parameter (with the closest valid one), an invalid value (the config's own
                message), or a fitted component (its learned state would no longer match its config; change
                ``clone().set_params(...)`` instead).
        """
        if not params:
            return self
        if getattr(self, "is_fitted", False):
            raise ConfigError(f"{type(self).__name__}.set_params on a fitted component would leave its learned state "
                              f"out of date with its config; call clone().set_params({', '.join(params)}=...) and "
                              "fit that.")
        fields = {f.name: f for f in dataclasses.fields(self.config)}
        changes: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, _, inner = key.partition("__")
            if name not in fields:
                raise ConfigError(f"{type(self).__name__}.set_params: unknown parameter {key!r}; valid parameters "
                                  f"are: {', '.join(fields)}." + did_you_mean(name, fields))
            if inner:
                nested.setdefault(name, {})[inner] = value
            else:
                changes[name] = value
        for name, inner_params in nested.items():
            holder = changes.get(name, getattr(self.config, name))
            spec = object_spec(fields[name])
            if spec is None or not hasattr(holder, "set_params"):
                raise ConfigError(f"{type(self).__name__}.set_params: {name!r} holds no estimator with parameters of "
                                  f"its own, so {sorted(f'{name}__{k}' for k in inner_params)} cannot be set; set "
                                  f"{name}= itself.")
            changes[name] = (holder if name in changes else spec.copy(holder)).set_params(**inner_params)
        rebuilt = type(self)(self.config.replace(**changes))
        self.__dict__.clear()  # nothing learned is lost (refused when fitted); no cached model of the old config stays
        self.__dict__.update(rebuilt.__dict__)
        return self

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's tags: not a classifier on arrays (fusers take ``MemberOutputs``, members texts)."""
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=True),
                    input_tags=InputTags(two_d_array=False))

    def to_config(self) -> dict[str, Any]:
        """``{"kind": ..., **fields}``, JSON-able."""
        return {"kind": self.kind, **self.config.to_dict()}

    @classmethod
    def config_from_dict(cls, data: Mapping[str, Any], options: LoadOptions | None = None, name: str = ""):
        """The typed config from a saved dict, with object fields taken from ``options``."""
        objects = (options or LoadOptions()).objects_for(name or str(data.get("name", "")))
        return cls.Config.from_dict({k: v for k, v in data.items() if k != "kind"}, objects)

    @property
    def fingerprint(self) -> str:
        """A hash that changes whenever what this component computes could change; computed once."""
        if self._fingerprint is None:
            self._fingerprint = self._unfitted_fingerprint()
        return self._fingerprint

    def _unfitted_fingerprint(self) -> str:
        return digest(self.kind, self.config.fingerprint)

    def _set_fitted_fingerprint(self, state_hash: str) -> None:
        """Called once when fitted or loaded: the fingerprint covers the config and the learned state."""
        self._fingerprint = digest(self.kind, self.config.fingerprint, state_hash)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())
        return f"{type(self).__name__}({fields})"
