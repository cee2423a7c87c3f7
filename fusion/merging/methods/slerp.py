"""``slerp``: spherical linear interpolation between two models' tensors (Shoemake 1985; mergekit's ``slerp``).

Each tensor is treated as one flat vector: with ``cos(theta)`` the cosine between the two (each normalised when
its norm exceeds 1e-8), the result is ``sin((1-t) theta) / sin(theta) * a + sin(t theta) / sin(theta) * b``;
when ``|cos(theta)| > 0.9995`` (nearly colinear) it is the linear interpolation ``(1-t) a + t b``, as in mergekit.

Differences from mergekit: mergekit's two models are the base and the other (``t=0`` gives the base); here slerp
takes exactly two models and no base, ``t=0`` giving the first. mergekit requires ``t`` and accepts a gradient of
values over layers; here ``t`` is one number, 0.5 unless given. mergekit computes in float32 NumPy, fusion in
float32 torch: results agree up to float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...config import is_number
from ..base import BASE_NEVER, MERGE_METHODS, MergeMethod, MergeMethodConfig, TensorContext

DOT_THRESHOLD = 0.9995  # mergekit's: above this |cos|, the two tensors count as colinear (lerp)
_NORM_EPS = 1e-8


def _direction(v: torch.Tensor) -> torch.Tensor:
    norm = v.norm()
    return v / norm if norm > _NORM_EPS else v


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``a`` (``t=0``) to ``b`` (``t=1``), linear when they are nearly colinear.

    Example:
        >>> slerp(0.5, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
        tensor([0.7071, 0.7071])
    """
    dot = float((_direction(a) * _direction(b)).sum())
    if abs(dot) > DOT_THRESHOLD:
        return (1 - t) * a + t * b
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    return (math.sin((1 - t) * theta) / sin_theta) * a + (math.sin(t * theta) / sin_theta) * b


@MERGE_METHODS.register("slerp")
class SlerpMerge(MergeMethod):
    """Spherical interpolation between exactly two models.

    Args:
        t: the interpolation factor: 0 gives the first model, 1 the second (0.5).

    Example:
        >>> SlerpMerge(t=0.0).merge_tensor([torch.ones(2), torch.zeros(2)], None, TensorContext("w"))
        tensor([1., 1.])
    """

    min_models: ClassVar[int] = 2
    max_models: ClassVar[int | None] = 2
    base: ClassVar[str] = BASE_NEVER

    @dataclass(frozen=True)
    class Config(MergeMethodConfig):
        t: float = 0.5

        constraints: ClassVar = {
            "weight": (lambda v: v is None, "None (slerp weighs its two models by t)"),
            "t": (is_number, "a finite number (0: the first model, 1: the second)"),
        }

    def merge_tensor(self, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                     context: TensorContext) -> torch.Tensor:
        self.check_models(len(tensors), base is not None)
        return slerp(float(self.config.t), tensors[0], tensors[1])
