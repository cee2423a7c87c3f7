"""Classification metrics on probability matrices (numpy), shared by the ensemble, model cards and reports."""

from __future__ import annotations

import numpy as np

LOG_LOSS_EPS = 1e-15  # probabilities are clipped to [eps, 1] so a confident mistake costs ~34.5, not inf


def accuracy(proba: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class is the label."""
    return float((np.asarray(proba).argmax(1) == np.asarray(labels)).mean())


def log_loss(proba: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true class (natural log)."""
    proba = np.asarray(proba, dtype=np.float64)
    picked = proba[np.arange(len(proba)), np.asarray(labels)]
    return float(-np.log(np.clip(picked, LOG_LOSS_EPS, 1.0)).mean())


def summary(proba: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The metrics shown in model cards and the demo table."""
    return {"accuracy": accuracy(proba, labels), "log_loss": log_loss(proba, labels)}
