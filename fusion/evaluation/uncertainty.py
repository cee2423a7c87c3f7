"""Uncertainty: bootstrap confidence intervals of every metric and paired tests between two models.

Bootstrap: ``n_resamples`` resamples of the rows with replacement from ``numpy.random.default_rng(seed)``;
the same resamples serve every model, so differences between models are paired. Intervals are percentile
intervals (2.5th and 97.5th percentiles for 95%). Nothing is refitted: each model is reduced once to per-row
contributions (correct, log-loss, Brier, per-class true positives and predictions, per-bin calibration gaps),
a resample is a vector of row counts, and every metric of every model follows from one sparse product of the
counts with those contributions, in chunks of about four million counts.

Paired test: exact McNemar test, i.e. a two-sided binomial test with p = 1/2 on the discordant rows (one
model right, the other wrong); p = 1 when there are none. The paired bootstrap adds a 95% interval for the
accuracy difference.

Example:
    >>> import numpy as np
    >>> round(mcnemar_p_value(8, 2), 6)
    0.109375
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
from scipy import sparse

from .metrics import (
    ECE_BINS,
    METRICS,
    confidence_bins,
    ece_from_gap_sums,
    f1_from_counts,
    row_brier,
    row_log_loss,
)

logger = logging.getLogger(__name__)

CI_LEVEL = 0.95
_CHUNK_CELLS = 1 << 22  # rows x resamples drawn at once: bounds memory at ~64 MiB


def resample_counts(n_rows: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield ``[n_rows, chunk]`` float32 arrays: how often each row appears in each resample (columns sum to n_rows).

    The chunk size depends only on ``n_rows``, so the draws depend only on ``(n_rows, n_resamples, seed)``.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n_rows)
    for start in range(0, n_resamples, chunk):
        width = min(chunk, n_resamples - start)
        index = np.int32 if n_rows * width < 2**31 else np.int64  # int32 draws are ~3x faster
        rows = rng.integers(0, n_rows, size=(width, n_rows), dtype=index)
        flat = (rows * width + np.arange(width, dtype=index)[:, None]).ravel()
        yield np.bincount(flat, minlength=n_rows * width).reshape(n_rows, width).astype(np.float32)


def _contributions(proba: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, sparse.csr_matrix]:
    """Per-row contributions: dense ``[rows, 3]`` (correct, loss, brier) and sparse ``[rows, 2*classes + n_bins]``
    (true positive of the label's class | prediction | the confidence bin's ``correct - confidence``)."""
    n_rows, n_classes = proba.shape
    predicted, confidence = proba.argmax(1), proba.max(1)
    correct = (predicted == labels).astype(np.float64)
    dense = np.stack([correct, row_log_loss(proba, labels), row_brier(proba, labels)], axis=1)
    hit = np.flatnonzero(correct)  # a miss adds nothing to true positives: leave those entries out
    rows = np.concatenate([hit, np.arange(n_rows), np.arange(n_rows)])
    cols = np.concatenate([labels[hit], n_classes + predicted, 2 * n_classes + confidence_bins(confidence, n_bins)])
    data = np.concatenate([np.ones(len(hit)), np.ones(n_rows), correct - confidence])
    return dense, sparse.csr_matrix((data, (rows, cols)), shape=(n_rows, 2 * n_classes + n_bins))


def _metrics_from_sums(dense: np.ndarray, counts: np.ndarray, support: np.ndarray, n_rows: int) -> np.ndarray:
    """``[resamples, len(METRICS)]`` from one model's sums: dense ``[resamples, 3]``, counts ``[resamples, 2C+bins]``."""
    n_classes = support.shape[1]
    values = {
        "accuracy": dense[:, 0] / n_rows, "log_loss": dense[:, 1] / n_rows, "brier": dense[:, 2] / n_rows,
        "macro_f1": f1_from_counts(counts[:, :n_classes], counts[:, n_classes:2 * n_classes], support),
        "ece": ece_from_gap_sums(counts[:, 2 * n_classes:], n_rows),
    }
    return np.stack([values[name] for name in METRICS], axis=1)


def bootstrap_metrics(
    probas: dict[str, np.ndarray], labels: np.ndarray, n_resamples: int = 1000, seed: int = 0,
    n_bins: int = ECE_BINS,
) -> dict[str, np.ndarray]:
    """Every model's metrics on each bootstrap resample: ``{name: [n_resamples, len(METRICS)]}``.

    Example:
        >>> import numpy as np
        >>> proba, labels = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]), np.array([0, 1, 1])
        >>> bootstrap_metrics({"m": proba}, labels, n_resamples=5)["m"].shape
        (5, 5)
    """
    started, n_rows, n_models = time.perf_counter(), len(labels), len(probas)
    n_classes = next(iter(probas.values())).shape[1]
    support_columns = sparse.csr_matrix((np.ones(n_rows), (np.arange(n_rows), labels)), shape=(n_rows, n_classes))
    parts = [_contributions(p, labels, n_bins) for p in probas.values()]
    dense = np.concatenate([d for d, _ in parts], axis=1).T.copy()  # [3 * models, rows]
    # float32 halves the memory traffic of the sparse product, its cost; counts stay exact (< 2**24)
    grouped = sparse.hstack([support_columns, *(s for _, s in parts)], format="csr", dtype=np.float32).T.tocsr()
    width = 2 * n_classes + n_bins
    chunks: list[np.ndarray] = []
    for counts in resample_counts(n_rows, n_resamples, seed):
        dense_sums, grouped_sums = (dense @ counts.astype(np.float64)).T, np.asarray(grouped @ counts, dtype=np.float64).T
        support = grouped_sums[:, :n_classes]
        chunks.append(np.stack([
            _metrics_from_sums(dense_sums[:, 3 * i:3 * i + 3],
                               grouped_sums[:, n_classes + width * i:n_classes + width * (i + 1)], support, n_rows)
            for i in range(n_models)]))
    stacked = np.concatenate(chunks, axis=1) if chunks else np.zeros((n_models, 0, len(METRICS)))
    logger.debug("bootstrap: %d resamples x %d rows x %d models in %.2fs", n_resamples, n_rows, n_models,
                 time.perf_counter() - started)
    return {name: stacked[i] for i, name in enumerate(probas)}


def percentile_interval(samples: np.ndarray, level: float = CI_LEVEL) -> list[float]:
    """``[lo, hi]`` percentile interval of 1-D bootstrap samples."""
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def metric_intervals(samples: np.ndarray, level: float = CI_LEVEL) -> dict[str, list[float]]:
    """``{metric: [lo, hi]}`` from one model's ``[n_resamples, len(METRICS)]`` samples; empty without samples."""
    if samples.shape[0] == 0:
        return {}
    return {name: percentile_interval(samples[:, j], level) for j, name in enumerate(METRICS)}


def mcnemar_p_value(only_first_correct: int, only_second_correct: int) -> float:
    """Exact two-sided McNemar p-value from the two discordant counts (binomial test, p = 1/2)."""
    from scipy.stats import binomtest

    discordant = only_first_correct + only_second_correct
    if discordant == 0:
        return 1.0
    return float(binomtest(only_first_correct, discordant, 0.5, alternative="two-sided").pvalue)


def paired_test(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float | int]:
    """McNemar test of model a against model b from per-row correctness (booleans).

    Returns:
        ``{"p_value", "accuracy_delta" (a minus b), "only_a_correct", "only_b_correct"}``.
    """
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    return {"p_value": mcnemar_p_value(only_a, only_b),
            "accuracy_delta": float(np.mean(correct_a) - np.mean(correct_b)),
            "only_a_correct": only_a, "only_b_correct": only_b}
