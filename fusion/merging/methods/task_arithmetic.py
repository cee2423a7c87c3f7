"""``task_arithmetic``: add the weighted task vectors to the base (Ilharco et al. 2023, "Editing models with task
arithmetic").

Same as mergekit's ``task_arithmetic``: ``base + lambda * sum_i w_i (t_i - base)``, divided by ``sum_i w_i``
when ``normalize`` (default False, as mergekit's). mergekit also accepts ``density`` and ``rescale`` here, which
change nothing without sparsification; fusion does not declare them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..base import MERGE_METHODS
from .task_vectors import TaskVectorConfig, TaskVectorMerge


@MERGE_METHODS.register("task_arithmetic")
class TaskArithmeticMerge(TaskVectorMerge):
    """The weighted sum of task vectors, added to the base.

    Args:
        weight: one scale per task vector (None: 1.0 each).
        normalize: divide by the sum of the weights (False).
        lambda_: scale of the merged task vector (1.0; ``lambda`` in recipes).

    Example:
        >>> import torch
        >>> from fusion.merging import TensorContext
        >>> base = torch.tensor([1.0, 1.0])
        >>> merge = TaskArithmeticMerge(weight=[1.0, 2.0], lambda_=0.5)
        >>> merge.merge_tensor([torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0])], base, TensorContext("w"))
        tensor([2., 2.])
    """

    @dataclass(frozen=True)
    class Config(TaskVectorConfig):
        pass
