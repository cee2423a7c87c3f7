"""One exception hierarchy for everything fusion raises on bad input or bad state.

Every message says what was wrong, where (member, file, column) and what to do about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "FusionError",
    "DataError",
    "LabelMismatchError",
    "MemberOutputError",
    "NotFittedError",
    "ConfigError",
    "UnknownNameError",
    "PersistenceError",
    "ChecksumError",
    "ResourceError",
    "closest",
    "did_you_mean",
]


class FusionError(Exception):
    """Base class of every error fusion raises on purpose."""


class DataError(FusionError, ValueError):
    """A dataset is empty, lacks a column, or holds values fusion cannot use."""


class LabelMismatchError(FusionError, ValueError):
    """Members, data or a saved ensemble disagree on the label set."""


class MemberOutputError(FusionError, ValueError):
    """A member produced outputs of the wrong shape, row count, or with NaN/inf."""


class NotFittedError(FusionError, RuntimeError):
    """An object that learns from data was used before ``fit``."""


class ResourceError(FusionError, RuntimeError):
    """The hardware cannot do what was asked (e.g. one input does not fit in GPU memory)."""


class ConfigError(FusionError, ValueError):
    """A constructor argument or a configuration value is invalid."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup used a name that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class PersistenceError(FusionError, OSError):
    """A saved file is missing, unreadable, corrupted, or has unexpected tensors/shapes."""


class ChecksumError(PersistenceError):
    """A file's sha256 differs from the one recorded when the ensemble was saved."""


def closest(name: object, choices: Iterable[str]) -> str | None:
    """The choice closest to ``name`` (difflib's ratio), or None when none is close.

    Example:
        >>> closest("linaer", ["linear", "mean"])
        'linear'
    """
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return close[0] if close else None


def did_you_mean(name: object, choices: Iterable[str], template: str = " Did you mean {!r}?", none: str = "") -> str:
    """``template`` filled with the closest of ``choices`` to ``name``, or ``none`` when nothing is close.

    Example:
        >>> did_you_mean("linaer", ["linear", "mean"])
        " Did you mean 'linear'?"
        >>> did_you_mean("x", ["linear"], "; did you mean {!r}?", ".")
        '.'
    """
    match = closest(name, choices)
    return template.format(match) if match is not None else none
