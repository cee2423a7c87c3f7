"""VoteFuser: hard (optionally weighted) majority vote with a deterministic tie-break."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .base import FUSERS, FixedWeightsFuser, MemberOutputs, WeightsConfig


@FUSERS.register("vote")
class VoteFuser(FixedWeightsFuser):
    """Each member votes for its top class; the class with the most (weighted) votes wins.

    ``predict_proba`` returns the vote shares (so a unanimous vote gives probability 1, and log-loss punishes
    confident mistakes). Ties in ``predict`` go to the tied class with the highest mean member probability,
    then to the lowest class id.

    Args:
        weights: one non-negative vote weight per member; None for one vote each.

    Example:
        >>> import torch
        >>> scores = torch.log(torch.tensor([[[0.9, 0.1], [0.4, 0.6]]]))  # one vote each: a tie
        >>> VoteFuser().fit(scores, [0]).predict(scores).tolist()  # class 0 has the higher mean probability
        [0]
    """

    @dataclass(frozen=True)
    class Config(WeightsConfig):
        """VoteFuser's config: the fixed vote weights."""

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        votes = F.one_hot(outputs.logits.argmax(-1), outputs.n_classes).float()
        return torch.einsum("nmc,m->nc", votes, self.weights_)

    def predict(self, outputs) -> np.ndarray:
        outputs = self._check_input(outputs)
        shares = self._predict_proba(outputs)
        tied = shares >= shares.max(-1, keepdim=True).values - 1e-6
        mean_proba = outputs.probabilities().mean(1)
        return torch.where(tied, mean_proba, torch.full_like(mean_proba, -1.0)).argmax(-1).numpy()
