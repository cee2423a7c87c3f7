"""The selection rule on hand-made candidates: the lowest cross-validated log-loss among the best member and the
fusers that beat it on cross-validated accuracy beyond noise (a 95% interval of the paired difference above 0)."""

from __future__ import annotations

import numpy as np

from fusion.ensemble.selection import Candidate, beats_member, best_candidate
from fusion.evaluation.metrics import summary
from fusion.fusers import MeanFuser, PickFuser

LABELS = np.array([0, 1] * 100)


def candidate(label: str, right: np.ndarray, sure: float, fuser=None) -> Candidate:
    """Out-of-fold probabilities that give the true label ``sure`` on the rows in ``right``, 1 - sure elsewhere."""
    p_true = np.where(right, sure, 1 - sure)
    proba = np.where(np.eye(2, dtype=bool)[LABELS], p_true[:, None], 1 - p_true[:, None])
    return Candidate(label, fuser or MeanFuser(), proba, summary(proba, LABELS), 0.0)


def rows_right(count: int, start: int = 0) -> np.ndarray:
    return (np.arange(len(LABELS)) >= start) & (np.arange(len(LABELS)) < start + count)


def test_a_gain_within_one_standard_error_keeps_the_member():
    member = candidate("member: a", rows_right(160), 0.7, PickFuser())
    # Right on 12 rows the member gets wrong, wrong on 10 it gets right: +1 point, its standard error 2.3 points.
    nearly = candidate("mean", rows_right(162, start=10), 0.9)
    assert nearly.cv_scores["log_loss"] < member.cv_scores["log_loss"]
    assert not beats_member(nearly, member, LABELS)
    assert best_candidate([nearly, member], LABELS).label == "member: a"


def test_among_fusers_that_beat_the_member_the_lowest_log_loss_wins():
    member = candidate("member: a", rows_right(150), 0.7, PickFuser())
    accurate = candidate("stacking", rows_right(190), 0.999)  # +20 points, overconfident on its mistakes
    calibrated = candidate("linear", rows_right(185), 0.85)  # +17.5 points, lower log-loss
    difference = (rows_right(185).astype(float) - rows_right(150))
    assert difference.mean() > difference.std(ddof=1) / np.sqrt(len(LABELS))  # beats it by hand, too
    assert calibrated.cv_scores["log_loss"] < accurate.cv_scores["log_loss"]
    assert best_candidate([accurate, calibrated, member], LABELS).label == "linear"


def test_a_fuser_with_a_lower_log_loss_but_fewer_rows_right_is_not_kept():
    member = candidate("member: a", rows_right(170), 0.99, PickFuser())  # right and sure, very wrong elsewhere
    hedging = candidate("mean", rows_right(160), 0.75)
    assert hedging.cv_scores["log_loss"] < member.cv_scores["log_loss"]
    assert best_candidate([hedging, member], LABELS).label == "member: a"
