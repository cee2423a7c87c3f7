"""The per-example losses the training loop minimises (one definition each)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["per_example_cross_entropy"]


def per_example_cross_entropy(scores: torch.Tensor, labels: torch.Tensor, *, log_probabilities: bool = False
                              ) -> torch.Tensor:
    """Cross-entropy of each row, shape ``[rows]`` (what ``fusion.training.train`` expects from a loss).

    Args:
        scores: ``[rows, classes]`` logits, or log-probabilities when ``log_probabilities``.
        labels: ``[rows]`` class ids.
        log_probabilities: the scores are already normalised (skip the softmax).

    Example:
        >>> per_example_cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3])).tolist() == [1.3862943649291992] * 2
        True
    """
    if log_probabilities:
        return F.nll_loss(scores, labels, reduction="none")
    return F.cross_entropy(scores, labels, reduction="none")
