"""``linear``: the weighted average of the models' tensors (a model soup; Wortsman et al. 2022).

Same as mergekit's ``linear``: ``sum_i w_i * t_i``, divided by ``sum_i w_i`` when ``normalize`` (the default;
a weight sum of 0 is left undivided, as mergekit does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...config import is_bool
from ..base import MERGE_METHODS, MergeMethod, MergeMethodConfig, TensorContext


@MERGE_METHODS.register("linear")
class LinearMerge(MergeMethod):
    """Weighted average of the models' tensors.

    Args:
        weight: one weight per model (None: equal weights, the uniform soup).
        normalize: divide by the sum of the weights (False: the weighted sum).

    Example:
        >>> import torch
        >>> LinearMerge().merge_tensor([torch.tensor([1.0]), torch.tensor([3.0])], None, TensorContext("w"))
        tensor([2.])
    """

    @dataclass(frozen=True)
    class Config(MergeMethodConfig):
        normalize: bool = True

        constraints: ClassVar = {**MergeMethodConfig.constraints, "normalize": (is_bool, "True or False")}

    def merge_tensor(self, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                     context: TensorContext) -> torch.Tensor:
        stacked = torch.stack(list(tensors))
        weights = torch.tensor(self.weights(len(tensors)), dtype=stacked.dtype).view(-1, *[1] * (stacked.ndim - 1))
        merged = (stacked * weights).sum(0)
        total = weights.sum()
        if self.config.normalize and total.abs() >= 1e-8:
            merged = merged / total
        return merged
