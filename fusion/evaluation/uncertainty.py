"""Uncertainty: bootstrap confidence intervals of every metric and paired tests between two models.

Bootstrap: ``n_resamples`` resamples of the rows with replacement from ``numpy.random.default_rng(seed)``;
the same resamples serve every model and every metric, so differences between models are paired. Intervals
are percentile intervals (2.5th and 97.5th percentiles for 95%) over the resamples where the metric is
defined (AUROC is not on a resample holding one class only), except for metrics whose ``Metric.interval`` is
``"basic"`` (ECE): the basic (reverse-percentile) bootstrap interval ``[2v - q97.5, 2v - q2.5]`` around the
value ``v``, clipped at the metric's lowest value. ECE is biased upward (sampling noise looks like
miscalibration), and a resample adds that bias again: for a well-calibrated model most resamples lie above
the value and a percentile interval sits above it, while the basic one moves down by the estimated bias. Nothing is refitted. Metrics of the table
(:data:`fusion.evaluation.metrics.METRICS`) that decompose over rows are computed for every model and resample
at once: each model is reduced once to per-row contributions (``Metric.rows``), a resample is a vector of row
counts, and the sums follow from one product of the counts with the contributions (dense ones in float64,
sparse ones in float32), in chunks of about four million counts. Whole-sample metrics (``Metric.whole``:
AUROC) are recomputed on the rows of each resample instead: correct for any metric, but slower.

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
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
from scipy import sparse

from .metrics import METRICS, Metric

logger = logging.getLogger(__name__)

CI_LEVEL = 0.95
_CHUNK_CELLS = 1 << 22  # rows x resamples drawn at once: bounds memory at ~64 MiB

Samples = dict[str, dict[str, np.ndarray]]  # model -> metric -> [n_resamples] values (NaN where undefined)


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


class _RowSums:
    """Every model's per-row contributions to every decomposable metric, side by side, ready for resampling.

    Dense contributions form one float64 ``[columns, rows]`` matrix and sparse ones one float32 sparse
    matrix (float32 halves the memory traffic of the sparse product, its cost; sums of counts stay exact
    below 2**24 rows); ``blocks`` says where each (model, metric) pair's columns lie.
    """

    def __init__(self, probas: Mapping[str, np.ndarray], labels: np.ndarray, metrics: list[Metric]) -> None:
        self.metrics, self.n_rows = {m.name: m for m in metrics}, len(labels)
        parts: dict[bool, list] = {False: [], True: []}  # is sparse -> [rows, k] blocks
        self.blocks: dict[tuple[str, str], tuple[bool, slice]] = {}
        for model, proba in probas.items():
            for metric in metrics:
                block = metric.rows(proba, labels)
                kind = sparse.issparse(block)
                start = sum(b.shape[1] for b in parts[kind])
                self.blocks[model, metric.name] = (kind, slice(start, start + block.shape[1]))
                parts[kind].append(block)
        self.dense = np.concatenate(parts[False], axis=1).T.copy() if parts[False] else np.zeros((0, self.n_rows))
        self.sparse = (sparse.hstack(parts[True], format="csr", dtype=np.float32).T.tocsr() if parts[True]
                       else sparse.csr_matrix((0, self.n_rows), dtype=np.float32))

    def values(self, counts: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
        """``{(model, metric): [chunk] values}`` on the resamples whose row counts are ``counts`` ``[rows, chunk]``."""
        sums = {False: (self.dense @ counts.astype(np.float64)).T,
                True: np.asarray(self.sparse @ counts, dtype=np.float64).T}
        return {(model, name): self.metrics[name].total(sums[kind][:, columns], self.n_rows)
                for (model, name), (kind, columns) in self.blocks.items()}


def _whole_sample_values(
    probas: Mapping[str, np.ndarray], labels: np.ndarray, metrics: list[Metric], counts: np.ndarray
) -> dict[tuple[str, str], np.ndarray]:
    """``{(model, metric): [chunk] values}`` of whole-sample metrics, each computed on every resample's rows."""
    values = {(model, m.name): np.empty(counts.shape[1]) for model in probas for m in metrics}
    for j in range(counts.shape[1] if metrics else 0):
        rows = np.repeat(np.arange(len(labels)), counts[:, j].astype(np.int64))
        for model, proba in probas.items():
            picked, picked_labels = proba[rows], labels[rows]
            for metric in metrics:
                values[model, metric.name][j] = metric.whole(picked, picked_labels)
    return values


def bootstrap_metrics(
    probas: Mapping[str, np.ndarray], labels: np.ndarray, n_resamples: int = 1000, seed: int = 0,
    metrics: Iterable[Metric] | None = None,
) -> Samples:
    """Every model's metrics on each bootstrap resample.

    Args:
        probas: model name -> ``[rows, classes]`` probabilities (checked by the caller).
        labels: ``[rows]`` integer class ids.
        n_resamples: number of resamples (0: empty samples).
        seed: seed of the resamples; the same seed gives the same draws for every model and metric.
        metrics: the metrics to resample (default: the table ``METRICS``, in its order).

    Returns:
        ``{model: {metric: [n_resamples] values}}``, NaN where a metric is undefined on a resample.

    Example:
        >>> import numpy as np
        >>> proba, labels = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]), np.array([0, 1, 1])
        >>> samples = bootstrap_metrics({"m": proba}, labels, n_resamples=5)["m"]
        >>> list(samples)[:3], samples["accuracy"].shape
        (['accuracy', 'macro_f1', 'log_loss'], (5,))
    """
    started, metrics = time.perf_counter(), list(METRICS.values() if metrics is None else metrics)
    row_sums = _RowSums(probas, labels, [m for m in metrics if m.decomposable])
    whole = [m for m in metrics if not m.decomposable]
    chunks = [{**row_sums.values(counts), **_whole_sample_values(probas, labels, whole, counts)}
              for counts in resample_counts(len(labels), n_resamples, seed)]
    logger.debug("bootstrap: %d resamples x %d rows x %d models in %.2fs", n_resamples, len(labels), len(probas),
                 time.perf_counter() - started)
    return {model: {m.name: np.concatenate([c[model, m.name] for c in chunks]) if chunks else np.zeros(0)
                    for m in metrics} for model in probas}


def percentile_interval(samples: np.ndarray, level: float = CI_LEVEL) -> list[float]:
    """``[lo, hi]`` percentile interval of 1-D bootstrap samples."""
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def basic_interval(samples: np.ndarray, value: float, level: float = CI_LEVEL,
                   lowest: float | None = None) -> list[float]:
    """``[lo, hi]`` basic (reverse-percentile) bootstrap interval: ``2 * value`` minus the percentile interval's
    ends, swapped; both ends clipped at ``lowest`` when given.

    Example:
        >>> basic_interval(np.array([0.2, 0.3, 0.4]), 0.25, level=0.0)
        [0.2, 0.2]
    """
    lo, hi = percentile_interval(samples, level)
    ends = [2.0 * value - hi, 2.0 * value - lo]
    return [max(end, lowest) for end in ends] if lowest is not None else ends


def metric_intervals(samples: Mapping[str, np.ndarray], level: float = CI_LEVEL,
                     values: Mapping[str, float | None] | None = None,
                     metrics: Mapping[str, Metric] | None = None) -> dict[str, list[float]]:
    """``{metric: [lo, hi]}`` from one model's ``{metric: samples}``, over the resamples where it is defined.

    A metric without any defined sample (none drawn, or undefined on every resample) gets no interval. A
    metric of ``metrics`` (default the table) whose ``interval`` is ``"basic"`` and whose value on all rows is
    in ``values`` gets the basic interval; every other one the percentile interval.
    """
    metrics = METRICS if metrics is None else metrics
    finite = {name: values_[np.isfinite(values_)] for name, values_ in samples.items()}
    intervals = {}
    for name, drawn in finite.items():
        metric, value = metrics.get(name), (values or {}).get(name)
        if not drawn.size:
            continue
        if metric is not None and metric.interval == "basic" and value is not None:
            intervals[name] = basic_interval(drawn, value, level, metric.lowest)
        else:
            intervals[name] = percentile_interval(drawn, level)
    return intervals


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
