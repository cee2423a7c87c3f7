"""Pooling of token hidden states into one vector per example (masks respected; right padding)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ConfigError

Pooling = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the non-padding token states."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first token's state ([CLS] / <s>)."""
    return hidden[:, 0]


def last_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last non-padding token's state (decoder models); assumes right padding."""
    last = mask.long().sum(1).clamp(min=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


POOLINGS: dict[str, Pooling] = {"mean": mean_pool, "cls": cls_pool, "last": last_pool}


def get_pooling(name: str) -> Pooling:
    """Look up a pooling by name; an unknown name lists the valid ones."""
    if name not in POOLINGS:
        raise ConfigError(f"unknown pooling {name!r}; choose one of {sorted(POOLINGS)}.")
    return POOLINGS[name]
