"""CaruanaFuser: greedy forward ensemble selection with replacement (Caruana et al. 2004), as AutoGluon uses it.

Starting from an empty ensemble, each round adds the member (again, if it is the best choice) whose addition
makes the average of the selected members' probabilities score best on the fuser's rows; after ``rounds``
rounds, the best prefix of the selection is kept. A member's weight is how many times it was selected, over the
selections kept. With ``bags``, the selection runs on that many random subsets of the members and the weights
are averaged (the paper's bagged ensemble selection), seeded.

Example:
    >>> import torch
    >>> scores = torch.log(torch.tensor([[[0.6, 0.4], [0.9, 0.1]], [[0.6, 0.4], [0.2, 0.8]]]))
    >>> CaruanaFuser(rounds=3).fit(scores, [0, 1]).member_weights().tolist()
    [0.0, 1.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..config import at_least, in_range, is_int
from ..errors import ConfigError, did_you_mean
from .base import FUSERS, Fuser, FuserConfig, MemberOutputs


def _select(proba: np.ndarray, labels: np.ndarray, members: list[int], rounds: int, metric) -> tuple[list[int], list[float]]:
    """One greedy selection among ``members``: the member picked each round and the score after it (the metric's
    sort key: lower is better). Ties go to the earliest member."""
    total = np.zeros(proba.shape[::2], dtype=np.float64)  # [rows, classes]: the sum of the selected members
    order, scores = [], []
    for size in range(1, rounds + 1):
        best, best_key = members[0], math.inf
        for m in members:
            key = metric.sort_key(metric((total + proba[:, m]) / size, labels))
            if key < best_key:  # strictly better: a tie keeps the earlier member
                best, best_key = m, key
        total += proba[:, best]
        order.append(best)
        scores.append(best_key)
    return order, scores


@FUSERS.register("caruana")
class CaruanaFuser(Fuser):
    """Greedy forward selection of members with replacement; weights are the selection counts.

    Args:
        rounds: selections made (25, AutoGluon's default); the best prefix of them is kept.
        metric: the metric the selection optimises, by name in ``fusion.evaluation.METRICS`` (default
            ``"log_loss"``; ``"accuracy"``, ``"brier"``, ...), in its own direction.
        bags: 0 for one selection over all members; else that many selections, each on a random share
            ``bag_fraction`` of the members, their weights averaged.
        bag_fraction: the share of members in a bag (at least one member).
        seed: the bags' draws.

    Learned state: ``weights_`` (``[members]``, summing to one), ``counts_`` (how often each member was kept,
    summed over bags), ``order_`` and ``scores_`` (the member picked each round and the metric after it, of the
    selection over all members; empty with bags).
    """

    @dataclass(frozen=True)
    class Config(FuserConfig):
        rounds: int = 25
        metric: str = "log_loss"
        bags: int = 0
        bag_fraction: float = 0.5
        seed: int = 0

        constraints: ClassVar = {
            "rounds": (at_least(1, integer=True), "an integer >= 1"),
            "bags": (at_least(0, integer=True), "an integer >= 0 (0: no bagging)"),
            "bag_fraction": (in_range(0.0, 1.0, closed_high=True), "a number in (0, 1]"),
            "seed": (is_int, "an integer"),
        }

        def validate(self) -> None:
            from ..evaluation.metrics import METRICS

            if self.metric not in METRICS:
                raise ConfigError(f"caruana: metric {self.metric!r} is not in the metric table; use one of "
                                  f"{', '.join(METRICS)}." + did_you_mean(self.metric, METRICS))
            if self.bag_fraction <= 0:
                raise ConfigError("caruana: bag_fraction must be above 0 (a share of the members).")

    sums_to_one = True
    default_candidate = 4

    def _fit(self, outputs: MemberOutputs, labels: torch.Tensor) -> None:
        from ..evaluation.metrics import METRICS

        metric, c = METRICS[self.config.metric], self.config
        proba, y = outputs.probabilities(torch.float64).numpy(), labels.numpy()
        n = outputs.n_members
        counts, weights = np.zeros(n), np.zeros(n)
        bags = [list(range(n))] if c.bags == 0 else self._bags(n)
        for members in bags:
            order, scores = _select(proba, y, members, c.rounds, metric)
            kept = order[: int(np.argmin(scores)) + 1]  # the best prefix; ties: the shortest
            bag_counts = np.bincount(kept, minlength=n).astype(np.float64)
            counts += bag_counts
            weights += bag_counts / bag_counts.sum() / len(bags)
            if c.bags == 0:
                self.order_, self.scores_ = torch.tensor(order), torch.tensor(scores, dtype=torch.float64)
        if c.bags:
            self.order_, self.scores_ = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
        self.counts_, self.weights_ = torch.from_numpy(counts), torch.from_numpy(weights)

    def _bags(self, n: int) -> list[list[int]]:
        rng = np.random.default_rng(self.config.seed)
        size = max(1, int(round(self.config.bag_fraction * n)))
        return [sorted(rng.choice(n, size=size, replace=False).tolist()) for _ in range(self.config.bags)]

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        proba = outputs.probabilities(torch.float64).numpy()
        return torch.from_numpy(np.average(proba, axis=1, weights=self.weights_.numpy()))

    def member_weights(self) -> np.ndarray:
        return self.weights_.numpy()

    def _state(self) -> dict[str, torch.Tensor]:
        return {"weights_": self.weights_, "counts_": self.counts_, "order_": self.order_, "scores_": self.scores_}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.weights_, self.counts_ = state["weights_"], state["counts_"]
        self.order_, self.scores_ = state["order_"], state["scores_"]
