"""CaruanaFuser: the greedy selection against one computed by hand, ties to the earliest member, the best prefix
kept, any metric by name, seeded bagging, and the weights in the report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fusion import CaruanaFuser
from fusion.errors import ConfigError

LABELS = torch.tensor([0, 0, 1, 1])


def _member(right: list[float]) -> list[list[float]]:
    """Rows where the member gives the label probability ``right[i]`` (two classes)."""
    return [[p, 1 - p] if y == 0 else [1 - p, p] for p, y in zip(right, LABELS.tolist(), strict=True)]


# A is right with 0.65 everywhere; B with 0.95 on rows 0-1 and 0.45 on rows 2-3; C the reverse of B.
A, B, C = _member([0.65] * 4), _member([0.95, 0.95, 0.45, 0.45]), _member([0.45, 0.45, 0.95, 0.95])
SCORES = torch.log(torch.tensor([A, B, C]).permute(1, 0, 2))  # [rows, members, classes]


def mean_log_loss(*label_probabilities: float) -> float:
    return -sum(math.log(p) for p in label_probabilities) / len(label_probabilities)


def test_the_selection_is_the_one_computed_by_hand():
    fuser = CaruanaFuser(rounds=3).fit(SCORES, LABELS)
    # round 1: A 0.431, B 0.425, C 0.425 -> B (a tie with C goes to the earlier member)
    # round 2: B+A 0.411 (rows at 0.8 and 0.55), B+B 0.425, B+C 0.357 (every row at 0.7) -> C
    # round 3: +A 0.381 (every row at 0.683), +B 0.364, +C 0.364 -> B (the tie again to the earlier)
    expected = [mean_log_loss(0.95, 0.45), mean_log_loss(0.7), mean_log_loss((2 * 0.95 + 0.45) / 3, (2 * 0.45 + 0.95) / 3)]
    assert fuser.order_.tolist() == [1, 2, 1]
    np.testing.assert_allclose(fuser.scores_.numpy(), expected, rtol=1e-7)  # the inputs are float32
    # the best prefix is the first two selections (0.357 < 0.364): B once, C once
    assert fuser.counts_.tolist() == [0.0, 1.0, 1.0] and fuser.member_weights().tolist() == [0.0, 0.5, 0.5]
    proba = fuser.predict_proba(SCORES)
    np.testing.assert_allclose(proba[:, 0], [0.7, 0.7, 0.3, 0.3], rtol=1e-7)


def test_any_metric_by_name_in_its_direction():
    accuracy = CaruanaFuser(rounds=2, metric="accuracy").fit(SCORES, LABELS)
    assert accuracy.order_.tolist()[0] == 0  # every member is right on every row alone: the earliest wins
    assert accuracy.member_weights().tolist() == [1.0, 0.0, 0.0]  # the shortest best prefix
    with pytest.raises(ConfigError, match="metric 'logloss' is not in the metric table.*Did you mean 'log_loss'"):
        CaruanaFuser(metric="logloss")


def test_bagging_is_seeded_and_averages_the_bags():
    first = CaruanaFuser(rounds=5, bags=6, bag_fraction=0.67, seed=3).fit(SCORES, LABELS)
    again = CaruanaFuser(rounds=5, bags=6, bag_fraction=0.67, seed=3).fit(SCORES, LABELS)
    other = CaruanaFuser(rounds=5, bags=6, bag_fraction=0.67, seed=4).fit(SCORES, LABELS)
    assert torch.equal(first.weights_, again.weights_) and first.weights_.sum().item() == pytest.approx(1.0)
    bags = first._bags(3)
    assert len(bags) == 6 and all(len(b) == 2 for b in bags) and bags != other._bags(3)


def test_the_report_shows_the_selection_weights(toy_sentiment):
    from helpers import tfidf_member

    from fusion import Ensemble

    ens = Ensemble([tfidf_member("a"), tfidf_member("b")], fuser="caruana", cache_dir="memory", cv=2)
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    weights = dict(zip(["a", "b"], ens.fuser_.member_weights().tolist(), strict=True))
    assert sum(weights.values()) == pytest.approx(1.0)
    assert ens.report_.weights["caruana"] == pytest.approx(weights)
