"""Library-wide control of fusion's progress bars and logs, and what a bar says about where it is.

    fusion.set_progress(False)               # or FUSION_DISABLE_PROGRESS_BARS=1 in the environment
    fusion.set_verbosity(logging.WARNING)    # the level of the "fusion" logger

The switch is read each time a bar starts, on top of each component's own ``show_progress``: a bar shows only
when both allow it. While it is off, transformers' own bars and load reports are silenced too around the model
loads fusion makes (``quiet_transformers``), and restored afterwards. The environment variable mirrors
``HF_HUB_DISABLE_PROGRESS_BARS``; a call to ``set_progress`` overrides it.

``stage("fold 2/5")`` names the part of the work a bar belongs to: a training bar started inside it reads
``"ft head (fold 2/5)"``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from contextvars import ContextVar

ENV_DISABLE = "FUSION_DISABLE_PROGRESS_BARS"
_TRUE = {"1", "true", "yes", "on"}

_enabled: bool | None = None  # None: follow the environment variable
_stages: ContextVar[tuple[str, ...]] = ContextVar("fusion_progress_stages", default=())


def set_progress(enabled: bool) -> None:
    """Show (``True``) or hide (``False``) every progress bar fusion draws, whatever each component's
    ``show_progress`` says; ``False`` also silences transformers' bars while fusion loads models."""
    global _enabled
    _enabled = bool(enabled)


def progress_enabled() -> bool:
    """Whether fusion may draw progress bars: ``set_progress``'s last value, else not ``$FUSION_DISABLE_PROGRESS_BARS``."""
    if _enabled is not None:
        return _enabled
    return os.environ.get(ENV_DISABLE, "").strip().lower() not in _TRUE


@contextlib.contextmanager
def progress_disabled() -> Iterator[None]:
    """``set_progress(False)`` inside, the previous setting (or the environment's) restored afterwards."""
    global _enabled
    before = _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = before


def set_verbosity(level: int | str) -> None:
    """Set the level of fusion's logger (``logging.WARNING`` hides fusion's INFO messages)."""
    logging.getLogger("fusion").setLevel(level)


@contextlib.contextmanager
def stage(label: str) -> Iterator[None]:
    """Name the work done inside (e.g. ``"fold 2/5"``) in the description of the bars it starts."""
    token = _stages.set((*_stages.get(), label))
    try:
        yield
    finally:
        _stages.reset(token)


def describe(desc: str) -> str:
    """``desc`` with the enclosing stages: ``"ft head (fold 2/5)"``."""
    stages = _stages.get()
    return f"{desc} ({', '.join(stages)})" if stages else desc


@contextlib.contextmanager
def quiet_transformers(always: bool = False) -> Iterator[None]:
    """While fusion's progress is off (or ``always``: around a load whose report says only what the caller
    expects, such as a new head's missing weights): transformers' progress bars off and its logs at ERROR (no
    "Loading weights" bars or load reports), then both restored as they were."""
    if progress_enabled() and not always:
        yield
        return
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
