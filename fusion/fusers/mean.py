"""MeanFuser: soft vote, the (weighted) average of member probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .base import FUSERS, Fuser, MemberOutputs, check_weights


@FUSERS.register("mean")
class MeanFuser(Fuser):
    """Average of member class probabilities, optionally with fixed weights.

    Args:
        weights: one non-negative weight per member (normalised to sum to one); None for equal weights.

    Example:
        >>> import torch
        >>> scores = torch.log(torch.tensor([[[0.9, 0.1], [0.3, 0.7]]]))
        >>> MeanFuser().fit(scores, [0]).predict_proba(scores).round(2).tolist()
        [[0.6, 0.4]]
    """

    def __init__(self, weights: Sequence[float] | None = None) -> None:
        self.weights = list(weights) if weights is not None else None

    def _fit(self, outputs: MemberOutputs, labels: torch.Tensor) -> None:
        self.weights_ = check_weights(self.name, self.weights, outputs.n_members)

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        return torch.einsum("nmc,m->nc", outputs.probabilities(), self.weights_)

    def member_weights(self) -> np.ndarray:
        return self.weights_.numpy()

    def _state(self) -> dict[str, torch.Tensor]:
        return {"weights_": self.weights_}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.weights_ = state["weights_"]
