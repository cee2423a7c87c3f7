"""``dare_linear`` and ``dare_ties``: DARE (Yu et al. 2024, "Language models are Super Mario"): drop each entry
of each task vector at random with probability ``1 - density`` and rescale the rest, then add the task vectors
(``dare_linear``) or merge them TIES-style with sign election (``dare_ties``).

Same as mergekit's ``dare_linear`` / ``dare_ties`` (random drop; ``rescale="l1"``, mergekit's ``rescale: true``;
``normalize=False``; ``density=1.0``; ``lambda=1.0``; ``dare_ties`` elects signs with ``consensus="sum"``): see
:mod:`fusion.merging.methods.task_vectors` for the steps. Variants as parameters:

- ``rescale="l1"`` (mergekit) multiplies the kept entries so each task vector keeps its L1 norm;
  ``rescale="inverse_density"`` (the paper) divides them by ``density`` (``1 / (1 - p)``); None does not rescale.
- ``consensus="count"`` (``dare_ties``): elect the sign held by more weighted deltas.

Random: each tensor's masks come from a generator seeded by ``seed`` and the tensor's name (one mask per model,
drawn in model order), so a merge is reproducible and independent of tensor order. mergekit draws from torch's
global random stream, which cannot be reproduced here: the same ``density`` drops a different (equally likely)
set of entries than mergekit does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...config import at_least
from ..base import MERGE_METHODS, TensorContext
from ..sparsify import random_drop, rescale_field
from .task_vectors import ConsensusConfig, SparseConfig, TaskVectorMerge


@MERGE_METHODS.register("dare_linear")
class DareLinearMerge(TaskVectorMerge):
    """Drop and rescale, then add the weighted task vectors.

    Args:
        weight: one scale per task vector (None: 1.0 each).
        density: probability of keeping each entry (1.0; a list for one per model).
        rescale: ``"l1"`` (mergekit), ``"inverse_density"`` (the paper) or None (``"l1"``).
        normalize: divide by the sum of the weights (False).
        lambda_: scale of the merged task vector (1.0; ``lambda`` in recipes).
        seed: seed of the random drops (0).

    Example:
        >>> import torch
        >>> merge = DareLinearMerge(density=0.5, rescale="inverse_density", seed=1)
        >>> context = TensorContext("w", seed=merge.tensor_seed("w"))
        >>> merged = merge.merge_tensor([torch.ones(6)], torch.zeros(6), context)
        >>> sorted(set(merged.tolist())) in ([0.0, 2.0], [0.0], [2.0])
        True
    """

    random: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Config(SparseConfig):
        rescale: str | None = rescale_field("l1")
        seed: int = 0

        constraints: ClassVar = {**SparseConfig.constraints, "seed": (at_least(0, integer=True), "an integer >= 0")}

    def sparsify(self, delta: torch.Tensor, model: int, density: float, context: TensorContext,
                 generator: torch.Generator | None) -> torch.Tensor:
        assert generator is not None  # random methods always get one (merge_tensor)
        return random_drop(delta, density, generator=generator, rescale=self.config.rescale)


@MERGE_METHODS.register("dare_ties")
class DareTiesMerge(DareLinearMerge):
    """Drop and rescale, elect signs, add the deltas of the elected sign.

    Args: those of :class:`DareLinearMerge`, and ``consensus``: ``"sum"`` (the TIES paper's) or ``"count"``.

    Example:
        >>> import torch
        >>> merge = DareTiesMerge()  # density 1.0: nothing dropped, TIES without trim, not normalised
        >>> models = [torch.tensor([1.0, -2.0]), torch.tensor([-3.0, 1.0])]
        >>> merge.merge_tensor(models, torch.zeros(2), TensorContext("w", seed=merge.tensor_seed("w")))
        tensor([-3., -2.])
    """

    @dataclass(frozen=True)
    class Config(ConsensusConfig, DareLinearMerge.Config):
        constraints: ClassVar = {**DareLinearMerge.Config.constraints, **ConsensusConfig.constraints}
