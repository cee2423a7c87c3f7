"""AUROC: how well a model's probabilities rank the rows of a class above the others.

It does not decompose over rows (each row is ranked against all others), so the metric table computes it on
all rows at once and the bootstrap recomputes it on every resample.

Definition: the AUROC of class ``k`` is the Mann-Whitney statistic of ``proba[:, k]`` between the rows
labelled ``k`` and the others: the share of (positive, negative) pairs ranked correctly, ties counting one
half (the trapezoidal area under the ROC curve, as ``sklearn.metrics.roc_auc_score``). With two classes it
is the AUROC of the second class (class 1, as scikit-learn's binary AUROC; class 0's is the same). With more,
it is the one-vs-rest macro average over the classes that occur among the labels without being every label:
a class absent from the labels has no positives, so no AUROC, and is left out (scikit-learn raises instead);
with all classes present this is ``roc_auc_score(labels, proba, multi_class="ovr", average="macro")``. It is
undefined (NaN) when fewer than two classes occur among the labels.

Example:
    >>> import numpy as np
    >>> macro_auroc(np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.3, 0.7]]), np.array([0, 1, 1, 0]))
    0.5
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def macro_auroc(proba: np.ndarray, labels: np.ndarray) -> float:
    """One-vs-rest macro AUROC of ``[rows, classes]`` probabilities (binary: of class 1); NaN when undefined.

    Args:
        proba: ``[rows, classes]`` scores (probabilities; only their order within each column matters).
        labels: ``[rows]`` integer class ids.

    Returns:
        The AUROC in ``[0, 1]``, or NaN with fewer than two classes among the labels.

    Example:
        >>> import numpy as np
        >>> proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
        >>> macro_auroc(proba, np.array([0, 1, 2, 0]))
        1.0
        >>> math.isnan(macro_auroc(proba, np.array([1, 1, 1, 1])))
        True
    """
    columns = np.array([1]) if proba.shape[1] == 2 else np.arange(proba.shape[1])
    positive = labels[:, None] == columns[None, :]
    n_pos = positive.sum(0)
    n_neg = len(labels) - n_pos
    defined = (n_pos > 0) & (n_neg > 0)
    if not defined.any():
        return math.nan
    rank_sums = np.where(positive, rankdata(proba[:, columns], axis=0), 0.0).sum(0)
    pairs = np.maximum(n_pos * n_neg, 1)
    return float(((rank_sums - n_pos * (n_pos + 1) / 2.0) / pairs)[defined].mean())
