"""Classification metrics on probability matrices (numpy): the point estimates used by reports and model cards.

Every function takes ``proba`` ``[rows, classes]`` (rows sum to one, the ensemble's label order) and
``labels`` ``[rows]`` integer class ids. The prediction of a row is its most probable class (first on ties).

Definitions:
    accuracy: share of rows whose prediction is the label.
    log_loss: mean negative natural log of the label's probability, clipped to ``[1e-15, 1]`` so that a
        certain mistake costs about 34.5 rather than infinity.
    brier: multi-class Brier score, the mean over rows of ``sum_k (p_k - onehot_k)^2``; in ``[0, 2]``. For
        two classes it is twice scikit-learn's ``brier_score_loss`` of the positive class.
    ece: expected calibration error with ``n_bins`` equal-width bins over the confidence (max probability);
        bin ``b`` holds confidences in ``(b/n, (b+1)/n]``; ``sum_b (n_b / rows) * |accuracy_b - confidence_b|``.
    macro_f1: unweighted mean of per-class F1 over the classes that occur among the labels or predictions
        (what ``sklearn.metrics.f1_score(average="macro")`` does without ``labels=``).
    per_class: precision, recall, F1 and support per class; 0.0 where undefined (no predictions or no rows
        of that class), as scikit-learn's ``zero_division=0``.

Example:
    >>> import numpy as np
    >>> proba, labels = np.array([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2]]), np.array([0, 1, 1])
    >>> round(accuracy(proba, labels), 4), round(brier(proba, labels), 4)
    (0.6667, 0.54)
"""

from __future__ import annotations

import numpy as np

from .checks import check_labels, check_proba

LOG_LOSS_EPS = 1e-15
ECE_BINS = 15
METRICS = ("accuracy", "macro_f1", "log_loss", "brier", "ece")  # every model's headline metrics, in order


def _inputs(proba: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    proba = check_proba(proba, len(labels), normalised=False)
    return proba, check_labels(labels, proba.shape[1])


def accuracy(proba: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class is the label."""
    proba, labels = _inputs(proba, labels)
    return float((proba.argmax(1) == labels).mean())


def row_log_loss(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row negative log-probability of the label (clipped at ``LOG_LOSS_EPS``)."""
    picked = proba[np.arange(len(proba)), labels]
    return -np.log(np.clip(picked, LOG_LOSS_EPS, 1.0))


def log_loss(proba: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true class (natural log)."""
    proba, labels = _inputs(proba, labels)
    return float(row_log_loss(proba, labels).mean())


def row_brier(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row ``sum_k (p_k - onehot_k)^2``."""
    squared = (proba**2).sum(1)
    return squared - 2.0 * proba[np.arange(len(proba)), labels] + 1.0


def brier(proba: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over rows of the squared distance to the one-hot label."""
    proba, labels = _inputs(proba, labels)
    return float(row_brier(proba, labels).mean())


def confidence_bins(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin id of each confidence: bin ``b`` holds ``(b/n_bins, (b+1)/n_bins]`` (0 also goes to bin 0)."""
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def ece_from_gap_sums(gap_sums: np.ndarray, n_rows: float) -> np.ndarray:
    """ECE from per-bin sums of ``correct - confidence`` (last axis: bins); broadcasts over leading axes."""
    return np.abs(gap_sums).sum(-1) / n_rows


def ece(proba: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error over ``n_bins`` equal-width confidence bins."""
    proba, labels = _inputs(proba, labels)
    confidence = proba.max(1)
    gaps = (proba.argmax(1) == labels) - confidence
    sums = np.bincount(confidence_bins(confidence, n_bins), weights=gaps, minlength=n_bins)
    return float(ece_from_gap_sums(sums, len(labels)))


def f1_from_counts(true_pos: np.ndarray, predicted: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Macro-F1 from per-class counts (last axis: classes); classes with no rows and no predictions are skipped."""
    denominator = predicted + support
    present = denominator > 0
    f1 = np.divide(2.0 * true_pos, denominator, out=np.zeros(np.shape(denominator)), where=present)
    return (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1)


def class_counts(proba: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class true positives, predicted counts and support."""
    n_classes, predicted = proba.shape[1], proba.argmax(1)
    true_pos = np.bincount(labels[predicted == labels], minlength=n_classes)
    return true_pos, np.bincount(predicted, minlength=n_classes), np.bincount(labels, minlength=n_classes)


def macro_f1(proba: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1 (classes present among labels or predictions)."""
    proba, labels = _inputs(proba, labels)
    return float(f1_from_counts(*class_counts(proba, labels)))


def per_class(proba: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict[str, dict[str, float]]:
    """``{label: {"precision", "recall", "f1", "support"}}`` in label order; support is an int row count."""
    proba, labels = _inputs(proba, labels)
    true_pos, predicted, support = (c.astype(np.float64) for c in class_counts(proba, labels))
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    f1 = np.divide(2 * true_pos, predicted + support, out=np.zeros_like(true_pos), where=(predicted + support) > 0)
    return {
        name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]), "support": int(support[k])}
        for k, name in enumerate(label_names)
    }


def confusion_matrix(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[classes, classes]`` counts: row = true class, column = predicted class."""
    proba, labels = _inputs(proba, labels)
    n_classes = proba.shape[1]
    flat = labels * n_classes + proba.argmax(1)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def reliability(proba: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list]:
    """Per confidence bin: ``count`` (int), mean ``confidence`` and ``accuracy`` (None for empty bins)."""
    proba, labels = _inputs(proba, labels)
    confidence, bins = proba.max(1), confidence_bins(proba.max(1), n_bins)
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(bins, weights=(proba.argmax(1) == labels).astype(float), minlength=n_bins)
    return {
        "count": [int(c) for c in count],
        "confidence": [float(s / c) if c else None for s, c in zip(conf_sum, count, strict=True)],
        "accuracy": [float(s / c) if c else None for s, c in zip(correct_sum, count, strict=True)],
    }


def all_metrics(proba: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, float]:
    """The five headline metrics of ``METRICS``, in that order.

    Example:
        >>> import numpy as np
        >>> sorted(all_metrics(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1])))
        ['accuracy', 'brier', 'ece', 'log_loss', 'macro_f1']
    """
    values = {"accuracy": accuracy(proba, labels), "macro_f1": macro_f1(proba, labels),
              "log_loss": log_loss(proba, labels), "brier": brier(proba, labels), "ece": ece(proba, labels, n_bins)}
    return {name: values[name] for name in METRICS}


def summary(proba: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The metrics shown in model cards and the demo table: ``{"accuracy", "log_loss"}``."""
    return {"accuracy": accuracy(proba, labels), "log_loss": log_loss(proba, labels)}
