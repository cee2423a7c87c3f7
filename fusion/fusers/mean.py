"""MeanFuser: soft vote, the (weighted) average of member probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import FUSERS, FixedWeightsFuser, MemberOutputs, WeightsConfig


@FUSERS.register("mean")
class MeanFuser(FixedWeightsFuser):
    """Average of member class probabilities, optionally with fixed weights.

    The average is taken in float64 (each member's softmax too), row by row: it equals scikit-learn's soft
    ``VotingClassifier`` (``np.average`` of the members' probabilities, with the same weights) exactly, and a
    row's result does not depend on the rows batched with it.

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

    sums_to_one = True
    default_candidate = 1

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        proba = outputs.probabilities(torch.float64).numpy()
        weights = None if self.config.weights is None else np.asarray(self.config.weights, dtype=np.float64)
        return torch.from_numpy(np.average(proba, axis=1, weights=weights))
