"""Classification metrics on probability matrices (numpy), each defined once in the metric table ``METRICS``.

Every function takes ``proba`` ``[rows, classes]`` (rows sum to one, the ensemble's label order) and
``labels`` ``[rows]`` integer class ids. Probabilities get ``build_report``'s check
(:func:`fusion.evaluation.checks.check_proba`): logits or scores (negative values, rows not summing to one
within ``PROBA_ATOL``) raise ``MemberOutputError``; the values are used as given. The prediction of a row is its most probable class (first on ties).

Definitions (point estimates from ``sklearn.metrics`` where it has the same definition; the bootstrap's
vectorised path is checked against them for every metric by ``tests/test_metrics.py``):
    accuracy: share of rows whose prediction is the label (``accuracy_score``).
    macro_f1: unweighted mean of per-class F1 over the classes that occur among the labels or predictions
        (``f1_score(average="macro", zero_division=0)``, without ``labels=``).
    log_loss: mean negative natural log of the label's probability, clipped to ``[1e-15, 1]`` so that a
        certain mistake costs about 34.5 rather than infinity. Hand-written: scikit-learn's ``log_loss``
        clips at its input dtype's epsilon since 1.5 (36.04 for a certain mistake in float64, 15.9 in float32).
    brier: multi-class Brier score, the mean over rows of ``sum_k (p_k - onehot_k)^2``; in ``[0, 2]``
        (``brier_score_loss(scale_by_half=False)``). For two classes it is twice ``brier_score_loss``'s default.
    ece: expected calibration error with ``n_bins`` equal-width bins over the confidence (max probability);
        bin ``b`` holds confidences in ``(b/n, (b+1)/n]``; ``sum_b (n_b / rows) * |accuracy_b - confidence_b|``.
        Hand-written: scikit-learn has no ECE (``calibration_curve`` bins one class's probability).
    auroc: area under the ROC curve (ties count one half): ``roc_auc_score`` of each class that occurs among
        the labels, macro-averaged; see :mod:`fusion.evaluation.ranking` for its bootstrap path.

The table: a :class:`Metric` holds a metric's name, report header, direction and description, and how it
is computed: either from per-row contributions summed over rows (``rows`` + ``total``: the bootstrap sums
them for every resample in one matrix product) or from all rows at once (``whole``: the bootstrap calls it
on every resample), and, where a library computes the same definition, its ``point`` estimate on all rows. The report's metric table (:func:`all_metrics`), its bootstrap intervals
(:func:`fusion.evaluation.uncertainty.bootstrap_metrics`) and its renderings all read ``METRICS``, so
``register_metric`` is the only step needed to add a column.

Example:
    >>> import numpy as np
    >>> proba, labels = np.array([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2]]), np.array([0, 1, 1])
    >>> round(accuracy(proba, labels), 4), round(brier(proba, labels), 4), auroc(proba, labels)
    (0.6667, 0.54, 1.0)
    >>> [m.header for m in METRICS.values()]
    ['accuracy', 'macro-F1', 'log-loss', 'Brier (sum over classes)', 'ECE', 'AUROC']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import sklearn.metrics
from scipy import sparse

from ..errors import ConfigError, UnknownNameError, did_you_mean
from .checks import check_labels, check_proba
from .ranking import macro_auroc

LOG_LOSS_EPS = 1e-15
ECE_BINS = 15
RANKING = ("accuracy", "log_loss")  # reports rank models by these, so the table always keeps them

Contributions = np.ndarray | sparse.csr_matrix  # [rows, k] per-row contributions, dense or sparse


# How a metric's bootstrap interval is formed (``Metric.interval``), in the words the report uses.
INTERVALS = {"percentile": "percentile bootstrap", "basic": "basic (reverse-percentile) bootstrap"}


@dataclass(frozen=True)
class Metric:
    """One metric of the report: its names, its direction, and how it is computed.

    Give either ``rows`` and ``total`` (a metric that decomposes over rows) or ``whole`` (one that does not).

    Attributes:
        name: key in ``ModelResult.metrics`` and the JSON report.
        header: column header in rendered reports.
        higher_is_better: direction (accuracy: True; losses: False).
        description: one line shown under the report's metric table ("" for none).
        rows: ``(proba, labels) -> [rows, k]`` contributions (numpy array, or scipy sparse matrix when mostly
            zeros: summed in float32, so keep exact sums of small integers or tolerate float32 rounding).
        total: ``(sums [..., k], n_rows) -> [...]``: the metric from the contributions summed over rows
            (leading axes: resamples).
        whole: ``(proba, labels) -> float``: the metric on all rows at once, NaN where undefined.
        point: ``(proba, labels) -> float``: the point estimate on all rows from a library with the same
            definition (scikit-learn); None to use ``rows``/``total`` or ``whole``. Those stay the bootstrap's
            path and must agree with it to float precision (:meth:`resampled_value` computes them).
        interval: how its bootstrap interval is formed: ``"percentile"`` (the resamples' 2.5th and 97.5th
            percentiles) or ``"basic"`` (the reverse percentile one, ``2 * value - `` those percentiles, for a
            biased statistic whose resamples sit on the far side of its value, as ECE's above it).
        lowest: the smallest value the metric can take (a basic interval is clipped to it); None for none.

    Example:
        >>> import numpy as np
        >>> confident = Metric("confidence", "mean confidence", True, rows=lambda p, y: p.max(1)[:, None],
        ...                    total=lambda sums, n: sums[..., 0] / n)
        >>> confident(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 0]))
        0.75
    """

    name: str
    header: str
    higher_is_better: bool
    description: str = ""
    rows: Callable[[np.ndarray, np.ndarray], Contributions] | None = None
    total: Callable[[np.ndarray, int], np.ndarray] | None = None
    whole: Callable[[np.ndarray, np.ndarray], float] | None = None
    point: Callable[[np.ndarray, np.ndarray], float] | None = None
    interval: str = "percentile"
    lowest: float | None = None

    def __post_init__(self) -> None:
        if self.interval not in INTERVALS:
            raise ConfigError(f"metric {self.name!r}: interval must be one of {sorted(INTERVALS)}; got "
                              f"{self.interval!r}.")
        if (self.rows is None) != (self.total is None) or (self.total is None) == (self.whole is None):
            raise ConfigError(f"metric {self.name!r}: give either rows and total (a metric summed over rows) "
                              "or whole (a metric of all rows at once), not both nor neither.")

    @property
    def decomposable(self) -> bool:
        """True when the metric follows from per-row sums (the bootstrap's fast path)."""
        return self.whole is None

    def __call__(self, proba: np.ndarray, labels: np.ndarray) -> float | None:
        """The metric on all rows; None where it is undefined (AUROC with one class among the labels)."""
        proba, labels = _inputs(proba, labels)
        value = self.point(proba, labels) if self.point is not None else self._bootstrap_path(proba, labels)
        return float(value) if np.isfinite(value) else None

    def resampled_value(self, proba: np.ndarray, labels: np.ndarray) -> float | None:
        """The metric as the bootstrap computes it on each resample (``rows``/``total`` or ``whole``), for
        checking it against ``point``; None where undefined."""
        value = self._bootstrap_path(*_inputs(proba, labels))
        return float(value) if np.isfinite(value) else None

    def _bootstrap_path(self, proba: np.ndarray, labels: np.ndarray) -> float:
        if self.whole is not None:
            return self.whole(proba, labels)
        return self.total(column_sums(self.rows(proba, labels)), len(labels))

    def sort_key(self, value: float | None) -> float:
        """Orders values best first (``sorted(values, key=metric.sort_key)``); undefined values last."""
        if value is None or not np.isfinite(value):
            return math.inf
        return -value if self.higher_is_better else value

    def info(self) -> dict[str, Any]:
        """What a rendering needs: ``{"header", "higher_is_better", "description", "interval"}`` (stored in
        reports)."""
        return {"header": self.header, "higher_is_better": self.higher_is_better, "description": self.description,
                "interval": self.interval}


def _inputs(proba: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    proba = check_proba(proba, len(labels), renormalise=False)  # build_report's check: logits refused alike
    return proba, check_labels(labels, proba.shape[1])


def column_sums(contributions: Contributions) -> np.ndarray:
    """Float64 sums over the rows of a dense or sparse ``[rows, k]`` contribution matrix."""
    if sparse.issparse(contributions):
        return np.asarray(contributions.sum(axis=0), dtype=np.float64).ravel()
    return contributions.sum(axis=0)


# --- definitions: per-row contributions and their totals ----------------------------------------------------


def mean_total(sums: np.ndarray, n_rows: int) -> np.ndarray:
    """The mean of a single per-row contribution, from its sum."""
    return sums[..., 0] / n_rows


def row_log_loss(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row negative log-probability of the label (clipped at ``LOG_LOSS_EPS``)."""
    picked = proba[np.arange(len(proba)), labels]
    return -np.log(np.clip(picked, LOG_LOSS_EPS, 1.0))


def row_brier(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row ``sum_k (p_k - onehot_k)^2``."""
    squared = (proba**2).sum(1)
    return squared - 2.0 * proba[np.arange(len(proba)), labels] + 1.0


def _row_correct(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (proba.argmax(1) == labels).astype(np.float64)[:, None]


def _row_class_counts(proba: np.ndarray, labels: np.ndarray) -> sparse.csr_matrix:
    """``[rows, 3 * classes]``: per row a one-hot true positive (when right) | prediction | label."""
    n_rows, n_classes = proba.shape
    predicted = proba.argmax(1)
    hit = np.flatnonzero(predicted == labels)  # a miss adds nothing to true positives: leave those entries out
    rows = np.concatenate([hit, np.arange(n_rows), np.arange(n_rows)])
    cols = np.concatenate([labels[hit], n_classes + predicted, 2 * n_classes + labels])
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_rows, 3 * n_classes))


def f1_from_counts(true_pos: np.ndarray, predicted: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Macro-F1 from per-class counts (last axis: classes); classes with no rows and no predictions are skipped."""
    denominator = predicted + support
    present = denominator > 0
    f1 = np.divide(2.0 * true_pos, denominator, out=np.zeros(np.shape(denominator)), where=present)
    return (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1)


def _macro_f1_total(sums: np.ndarray, n_rows: int) -> np.ndarray:
    return f1_from_counts(*np.split(sums, 3, axis=-1))


def confidence_bins(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin id of each confidence: bin ``b`` holds ``(b/n_bins, (b+1)/n_bins]`` (0 also goes to bin 0)."""
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def _row_calibration_gaps(proba: np.ndarray, labels: np.ndarray, n_bins: int) -> sparse.csr_matrix:
    """``[rows, n_bins]``: each row's ``correct - confidence`` in the column of its confidence bin."""
    confidence = proba.max(1)
    gaps = (proba.argmax(1) == labels) - confidence
    n_rows = len(proba)
    return sparse.csr_matrix((gaps, (np.arange(n_rows), confidence_bins(confidence, n_bins))), shape=(n_rows, n_bins))


def ece_from_gap_sums(gap_sums: np.ndarray, n_rows: float) -> np.ndarray:
    """ECE from per-bin sums of ``correct - confidence`` (last axis: bins); broadcasts over leading axes."""
    return np.abs(gap_sums).sum(-1) / n_rows


def ece_metric(n_bins: int = ECE_BINS) -> Metric:
    """The ECE table entry for ``n_bins`` confidence bins (the table holds ``ECE_BINS``)."""
    return Metric("ece", "ECE", False, f"{n_bins} equal-width confidence bins; biased upward (a calibrated "
                  "model still scores above 0), so its interval is the basic bootstrap one, which corrects for that",
                  rows=partial(_row_calibration_gaps, n_bins=n_bins), total=ece_from_gap_sums, interval="basic",
                  lowest=0.0)


# --- point estimates from scikit-learn (same definitions; see the module docstring) --------------------------


def _sk_accuracy(proba: np.ndarray, labels: np.ndarray) -> float:
    return sklearn.metrics.accuracy_score(labels, proba.argmax(1))


def _sk_macro_f1(proba: np.ndarray, labels: np.ndarray) -> float:
    return sklearn.metrics.f1_score(labels, proba.argmax(1), average="macro", zero_division=0.0)


def _sk_brier(proba: np.ndarray, labels: np.ndarray) -> float:
    return sklearn.metrics.brier_score_loss(labels, proba, labels=np.arange(proba.shape[1]), scale_by_half=False)


def _sk_auroc(proba: np.ndarray, labels: np.ndarray) -> float:
    """``roc_auc_score`` per class among the labels, macro-averaged (scikit-learn's multi-class one raises when
    a class is absent from the labels; with every class present the two agree)."""
    columns = [1] if proba.shape[1] == 2 else range(proba.shape[1])
    scores = [sklearn.metrics.roc_auc_score(labels == k, proba[:, k]) for k in columns
              if 0 < np.count_nonzero(labels == k) < len(labels)]
    return float(np.mean(scores)) if scores else math.nan


ACCURACY = Metric("accuracy", "accuracy", True, rows=_row_correct, total=mean_total, point=_sk_accuracy)
MACRO_F1 = Metric("macro_f1", "macro-F1", True, "unweighted mean of per-class F1",
                  rows=_row_class_counts, total=_macro_f1_total, point=_sk_macro_f1)
LOG_LOSS = Metric("log_loss", "log-loss", False, "natural log",
                  rows=lambda p, y: row_log_loss(p, y)[:, None], total=mean_total)
BRIER = Metric("brier", "Brier (sum over classes)", False, "mean over rows of the sum over classes of "
               "(p - onehot)^2, in [0, 2]; with two classes twice scikit-learn's brier_score_loss",
               rows=lambda p, y: row_brier(p, y)[:, None], total=mean_total, point=_sk_brier)
ECE = ece_metric(ECE_BINS)
AUROC = Metric("auroc", "AUROC", True, "the second class's with two classes, else one-vs-rest and macro-averaged "
               "over the classes among the labels", whole=macro_auroc, point=_sk_auroc)

METRICS: dict[str, Metric] = {m.name: m for m in (ACCURACY, MACRO_F1, LOG_LOSS, BRIER, ECE, AUROC)}


# --- the table ----------------------------------------------------------------------------------------------


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to ``METRICS``: reports built afterwards compute, bootstrap and render it.

    Raises:
        ConfigError: the name is taken.

    Example:
        >>> toy = register_metric(Metric("toy", "toy", True, whole=lambda proba, labels: 0.5))
        >>> list(METRICS)[-1], unregister_metric("toy") is toy
        ('toy', True)
    """
    if metric.name in METRICS:
        raise ConfigError(f"metric {metric.name!r} is already in the table; choose another name or "
                          "unregister_metric it first.")
    METRICS[metric.name] = metric
    return metric


def unregister_metric(name: str) -> Metric:
    """Remove a metric from ``METRICS`` and return it (``accuracy`` and ``log_loss`` stay: models are ranked by them).

    Raises:
        UnknownNameError: no such metric. ConfigError: ``name`` is one of ``RANKING``.
    """
    if name in RANKING:
        raise ConfigError(f"metric {name!r} cannot be removed: reports rank models by {' and '.join(RANKING)}.")
    if name not in METRICS:
        raise UnknownNameError(f"unknown metric {name!r}; the table holds {', '.join(METRICS)}."
                               + did_you_mean(name, METRICS))
    return METRICS.pop(name)


def all_metrics(proba: np.ndarray, labels: np.ndarray, metrics: Iterable[Metric] | None = None) -> dict[str, float | None]:
    """Every metric of ``METRICS`` (or of ``metrics``), in table order; None where undefined.

    Example:
        >>> import numpy as np
        >>> list(all_metrics(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1])))
        ['accuracy', 'macro_f1', 'log_loss', 'brier', 'ece', 'auroc']
    """
    return {metric.name: metric(proba, labels) for metric in (METRICS.values() if metrics is None else metrics)}


def summary(proba: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The metrics shown in model cards and the demo table: ``{"accuracy", "log_loss"}``."""
    return {"accuracy": accuracy(proba, labels), "log_loss": log_loss(proba, labels)}


# --- each metric as a plain function ------------------------------------------------------------------------


def accuracy(proba: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class is the label."""
    return ACCURACY(proba, labels)


def macro_f1(proba: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1 (classes present among labels or predictions)."""
    return MACRO_F1(proba, labels)


def log_loss(proba: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true class (natural log)."""
    return LOG_LOSS(proba, labels)


def brier(proba: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over rows of the squared distance to the one-hot label."""
    return BRIER(proba, labels)


def ece(proba: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error over ``n_bins`` equal-width confidence bins."""
    return ece_metric(n_bins)(proba, labels)


def auroc(proba: np.ndarray, labels: np.ndarray) -> float | None:
    """One-vs-rest macro AUROC (binary AUROC for two classes); None with fewer than two classes among the labels."""
    return AUROC(proba, labels)


# --- breakdowns: per class and per confidence bin -----------------------------------------------------------


def per_class(proba: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict[str, dict[str, float]]:
    """``{label: {"precision", "recall", "f1", "support"}}`` in label order; support is an int row count; 0.0
    where a ratio has no rows (``sklearn.metrics.precision_recall_fscore_support(zero_division=0)``)."""
    proba, labels = _inputs(proba, labels)
    precision, recall, f1, support = sklearn.metrics.precision_recall_fscore_support(
        labels, proba.argmax(1), labels=np.arange(proba.shape[1]), zero_division=0.0)
    return {
        name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]), "support": int(support[k])}
        for k, name in enumerate(label_names)
    }


def confusion_matrix(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[classes, classes]`` counts: row = true class, column = predicted class (``sklearn.metrics.confusion_matrix``)."""
    proba, labels = _inputs(proba, labels)
    return sklearn.metrics.confusion_matrix(labels, proba.argmax(1), labels=np.arange(proba.shape[1]))


def reliability(proba: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list]:
    """Per confidence bin: ``count`` (int), mean ``confidence`` and ``accuracy`` (None for empty bins).

    Hand-written: ``sklearn.calibration.calibration_curve`` bins one class's probability, not the confidence."""
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
