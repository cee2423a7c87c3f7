"""Evaluation of members and fusers: metrics, uncertainty, diversity, cost, and rendered reports.

Modules: ``metrics`` (the metric table ``METRICS``: one ``Metric`` record per metric, used by the table, the
bootstrap and the renderings), ``ranking`` (AUROC), ``uncertainty`` (bootstrap intervals, McNemar),
``diversity``, ``cost``, ``checks`` (input validation), ``compute`` (``build_report``: every number, once),
``report`` (the ``Report``: JSON schema, save/load), ``sections`` / ``render`` / ``plots`` (Markdown and
HTML), and ``evaluate`` (``fusion.evaluate`` and ``fusion.permutation_importance``: models + data -> Report;
imported by ``fusion``, not here, since it needs the ensemble and fusers).

``build_report`` computes everything once; the ``Report`` renders to Markdown, JSON (schema
``fusion.report/v1``, documented in :mod:`fusion.evaluation.report`) and one self-contained HTML page.

Example:
    >>> import numpy as np
    >>> from fusion.evaluation import build_report
    >>> a, b = np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([[0.7, 0.3], [0.2, 0.8]])
    >>> report = build_report({"a": a, "b": b}, {"mean": (a + b) / 2}, np.array([0, 1]), ["neg", "pos"],
    ...                       n_bootstrap=20)
    >>> report.best_fuser
    'mean'
    >>> paths = report.save(tmp_path)  # doctest: +SKIP
"""

from .compute import build_report
from .metrics import (
    ECE_BINS,
    METRICS,
    Metric,
    accuracy,
    all_metrics,
    auroc,
    brier,
    confusion_matrix,
    ece,
    log_loss,
    macro_f1,
    per_class,
    register_metric,
    reliability,
    summary,
    unregister_metric,
)
from .report import SCHEMA, ModelResult, PairedTest, Report

__all__ = [
    "build_report", "Report", "ModelResult", "PairedTest", "SCHEMA",
    "ECE_BINS", "METRICS", "Metric", "register_metric", "unregister_metric",
    "accuracy", "all_metrics", "auroc", "brier", "confusion_matrix", "ece", "log_loss", "macro_f1",
    "per_class", "reliability", "summary",
]
