"""``model_stock``: Model Stock (Jang et al. 2024, "Model Stock: all we need is just a few fine-tuned models"):
interpolate between the average of the fine-tunes and the base, by a ratio set by the angle between the task
vectors.

Same as mergekit's ``model_stock``: with ``N`` fine-tunes ``w_i``, base ``w_0`` and ``cos(theta)`` the mean over
pairs ``i < j`` of the cosine between ``w_i - w_0`` and ``w_j - w_0`` (the product of norms clamped below at 1e-6,
the cosine to [-1, 1]), ``t = N cos(theta) / (1 + (N - 1) cos(theta))`` and the result is
``t * mean_i(w_i) + (1 - t) * w_0``. With ``filter_wise=False`` (mergekit's default) each tensor is one vector;
with ``filter_wise=True`` each row (the last dimension; a 1-D tensor is one row) gets its own angle and ratio.
mergekit's check "at least 3 models (base plus two+ others)" is ``base`` required and at least 2 models here.
Like mergekit, a mean cosine of exactly ``-1 / (N - 1)`` divides by zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import ClassVar

import torch

from ...config import is_bool
from ...errors import ConfigError
from ..base import BASE_REQUIRED, MERGE_METHODS, MergeMethod, MergeMethodConfig, TensorContext


def stock_ratio(offsets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Model Stock's ``t`` from the task vectors (the angle over their last dimension): one value per row,
    shape ``(..., 1)``.

    Example:
        >>> stock_ratio([torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])])  # cos = 1/sqrt(2), N = 2
        tensor([0.8284])
    """
    cosines = [((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-6)).clamp(-1, 1)
               for a, b in combinations(offsets, 2)]
    cos = torch.stack(cosines).mean(0).unsqueeze(-1)
    n = len(offsets)
    return n * cos / (1 + (n - 1) * cos)


@MERGE_METHODS.register("model_stock")
class ModelStockMerge(MergeMethod):
    """Average of the fine-tunes pulled towards the base by the angle between their task vectors.

    Args:
        filter_wise: one angle per row instead of one per tensor (False).

    Example:
        >>> base = torch.zeros(2)
        >>> models = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]  # orthogonal: cos 0, t 0
        >>> ModelStockMerge().merge_tensor(models, base, TensorContext("w"))
        tensor([0., 0.])
    """

    base: ClassVar[str] = BASE_REQUIRED
    min_models: ClassVar[int] = 2

    @dataclass(frozen=True)
    class Config(MergeMethodConfig):
        filter_wise: bool = False

        constraints: ClassVar = {
            "weight": (lambda v: v is None, "None (model_stock's ratio comes from the angle between task vectors)"),
            "filter_wise": (is_bool, "True or False"),
        }

    def merge_tensor(self, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                     context: TensorContext) -> torch.Tensor:
        if base is None:
            raise ConfigError(f"tensor {context.name!r}: model_stock needs the base model's tensor.")
        self.check_models(len(tensors), True)
        shape = base.shape
        if self.config.filter_wise:
            w0 = base.unsqueeze(0) if base.ndim == 1 else base
            ws = [w.unsqueeze(0) if w.ndim == 1 else w for w in tensors]
        else:
            w0, ws = base.reshape(-1), [w.reshape(-1) for w in tensors]
        t = stock_ratio([w - w0 for w in ws])
        average = torch.stack(ws).mean(0)
        return (t * average + (1 - t) * w0).reshape(shape)
