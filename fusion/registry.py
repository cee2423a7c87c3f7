"""A name -> class registry, so that adding a fuser, member kind or head touches one file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError, UnknownNameError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps registered names to classes; duplicates and unknown names are errors.

    Example:
        >>> heads = Registry("head")
        >>> @heads.register("linear")
        ... class Linear: ...
        >>> heads.get("linear") is Linear
        True
    """

    def __init__(self, kind: str, attribute: str = "kind") -> None:
        self.kind = kind
        self.attribute = attribute  # the class attribute that receives the registered name
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if name in self._items:
                raise ConfigError(
                    f"{self.kind} name {name!r} is already registered by {self._items[name].__qualname__}; "
                    f"choose another name for {cls.__qualname__}."
                )
            setattr(cls, self.attribute, name)
            config = cls.__dict__.get("Config")
            if config is not None:  # a component's config knows its kind too (nested configs carry it)
                config.kind = name
            self._items[name] = cls
            return cls

        return decorate

    def get(self, name: str) -> type[T]:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s are: {', '.join(sorted(self._items))}."
                + did_you_mean(name, self._items)
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
