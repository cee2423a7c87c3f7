"""``breadcrumbs`` and ``breadcrumbs_ties``: Model Breadcrumbs (Davari & Belilovsky 2024): drop both the largest
entries of each task vector (outliers, the ``gamma`` fraction) and the smallest ones, keeping a ``density``
fraction, then add the task vectors (``breadcrumbs``) or merge them TIES-style with sign election
(``breadcrumbs_ties``).

Same as mergekit's ``breadcrumbs`` / ``breadcrumbs_ties`` (``magnitude_outliers`` sparsification; ``density=1.0``,
which keeps everything, and ``gamma=0.01``; ``normalize=False``; ``rescale=None``; ``lambda=1.0``;
``breadcrumbs_ties`` elects signs with ``consensus="sum"``): see :mod:`fusion.merging.methods.task_vectors` for
the steps and :func:`fusion.merging.sparsify.magnitude_outliers` for the one place this differs from mergekit
(a tensor with ``int(gamma * numel) == 0``, which mergekit zeroes entirely). Variants as parameters: ``rescale``
(``"l1"`` is mergekit's ``rescale: true``) and ``consensus="count"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..base import MERGE_METHODS, TensorContext
from ..sparsify import magnitude_outliers
from .task_vectors import ConsensusConfig, SparseConfig, TaskVectorMerge, fraction_ok, nth, per_model


@MERGE_METHODS.register("breadcrumbs")
class BreadcrumbsMerge(TaskVectorMerge):
    """Drop outliers and small entries, then add the weighted task vectors.

    Args:
        weight: one scale per task vector (None: 1.0 each).
        density: fraction of each task vector kept (1.0; a list for one per model).
        gamma: fraction of largest-magnitude entries dropped (0.01; a list for one per model).
        rescale: None, ``"l1"`` or ``"inverse_density"`` (None).
        normalize: divide by the sum of the weights (False).
        lambda_: scale of the merged task vector (1.0; ``lambda`` in recipes).

    Example:
        >>> import torch
        >>> merge = BreadcrumbsMerge(density=0.4, gamma=0.2)
        >>> merge.merge_tensor([torch.tensor([1.0, -5.0, 3.0, 2.0, 4.0])], torch.zeros(5), TensorContext("w"))
        tensor([0., 0., 3., 0., 4.])
    """

    @dataclass(frozen=True)
    class Config(SparseConfig):
        gamma: float | list[float] = 0.01

        constraints: ClassVar = {**SparseConfig.constraints,
                                 "gamma": (fraction_ok(False), "a number in [0, 1], or a list of them, one per model")}

    def check_models(self, n_models: int, has_base: bool) -> None:
        super().check_models(n_models, has_base)
        per_model(self.config.gamma, n_models, "gamma", self.kind)

    def sparsify(self, delta: torch.Tensor, model: int, density: float, context: TensorContext,
                 generator: torch.Generator | None) -> torch.Tensor:
        return magnitude_outliers(delta, density, gamma=nth(self.config.gamma, model), rescale=self.config.rescale)


@MERGE_METHODS.register("breadcrumbs_ties")
class BreadcrumbsTiesMerge(BreadcrumbsMerge):
    """Drop outliers and small entries, elect signs, add the deltas of the elected sign.

    Args: those of :class:`BreadcrumbsMerge`, and ``consensus``: ``"sum"`` (the TIES paper's) or ``"count"``.

    Example:
        >>> import torch
        >>> models = [torch.tensor([1.0, -2.0]), torch.tensor([-3.0, 1.0])]
        >>> BreadcrumbsTiesMerge().merge_tensor(models, torch.zeros(2), TensorContext("w"))
        tensor([-3., -2.])
    """

    @dataclass(frozen=True)
    class Config(ConsensusConfig, BreadcrumbsMerge.Config):
        constraints: ClassVar = {**BreadcrumbsMerge.Config.constraints, **ConsensusConfig.constraints}
