"""MeanFuser: soft vote, the (weighted) average of member probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import FUSERS, FixedWeightsFuser, MemberOutputs, WeightsConfig


@FUSERS.register("mean")
class MeanFuser(FixedWeightsFuser):
    """Average of member class probabilities, optionally with fixed weights.

    Args:
        weights: one non-negative weight per member (normalised to sum to one); None for equal weights.

    Example:
        >>> import torch
        >>> scores = torch.log(torch.tensor([[[0.9, 0.1], [0.3, 0.7]]]))
        >>> MeanFuser().fit(scores, [0]).predict_proba(scores).round(2).tolist()
        [[0.6, 0.4]]
    """

    @dataclass(frozen=True)
    class Config(WeightsConfig):
        """MeanFuser's config: the fixed member weights."""

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        return torch.einsum("nmc,m->nc", outputs.probabilities(), self.weights_)
