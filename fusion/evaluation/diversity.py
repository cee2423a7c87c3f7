"""Diversity of members: how often they disagree, and how their mistakes co-occur.

disagreement[i][j]: share of rows where members i and j predict different classes (0 on the diagonal).
error_correlation[i][j]: Pearson correlation between the 0/1 error indicators of members i and j (the phi
coefficient). It is undefined (None) when either member is right on every row or wrong on every row: a
constant indicator has no variance. Low error correlation is what makes fusing worthwhile.

Example:
    >>> import numpy as np
    >>> disagreement(np.array([[0, 1, 1, 0], [0, 1, 0, 0]]))
    [[0.0, 0.25], [0.25, 0.0]]
"""

from __future__ import annotations

import numpy as np


def disagreement(predictions: np.ndarray) -> list[list[float]]:
    """Pairwise share of rows with different predictions, from ``[members, rows]`` class ids."""
    predictions = np.asarray(predictions)
    n_members = len(predictions)
    matrix = np.zeros((n_members, n_members))
    for i in range(n_members):
        matrix[i] = (predictions[i][None, :] != predictions).mean(1)
    return matrix.tolist()


def error_correlation(errors: np.ndarray) -> list[list[float | None]]:
    """Pairwise Pearson correlation of ``[members, rows]`` 0/1 error indicators; None where undefined."""
    errors = np.asarray(errors, dtype=np.float64)
    centred = errors - errors.mean(1, keepdims=True)
    std = np.sqrt((centred**2).mean(1))
    covariance = centred @ centred.T / errors.shape[1]
    defined = std > 0
    out: list[list[float | None]] = []
    for i in range(len(errors)):
        row: list[float | None] = []
        for j in range(len(errors)):
            if not (defined[i] and defined[j]):
                row.append(None)
            else:
                row.append(1.0 if i == j else float(np.clip(covariance[i, j] / (std[i] * std[j]), -1.0, 1.0)))
        out.append(row)
    return out


def member_diversity(member_proba: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, list]:
    """``{"members", "disagreement", "error_correlation"}`` for members' probability matrices."""
    predictions = np.stack([p.argmax(1) for p in member_proba.values()])
    return {"members": list(member_proba), "disagreement": disagreement(predictions),
            "error_correlation": error_correlation(predictions != labels[None, :])}
