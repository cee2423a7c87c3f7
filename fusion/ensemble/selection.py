"""Fitting several candidate fusers on the same member outputs and keeping the best, honestly.

Each candidate is scored on out-of-fold fused predictions (K folds over the rows fusers learn from), never
on rows it was fitted on, then refitted on all of them. When several candidates are compared, the best single
member is one more (``PickFuser``, listed last, named ``"member: NAME"``: in each fold, the member most
accurate on the other folds). The winner has the lowest cross-validated log-loss among that member and the
fusers whose cross-validated accuracy beats it beyond noise (the 95% interval of the paired per-row
difference above 0; an exact tie: the first listed), so the member alone is kept otherwise.
``Ensemble(members)`` with no fuser named compares ``default_fusers()`` this way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..evaluation.metrics import summary
from ..fusers import FUSERS, Fuser, MemberOutputs, PickFuser, default_fusers
from .crossfit import out_of_fold_fused

__all__ = ["Candidate", "as_fusers", "with_member_candidate", "candidate_labels", "fit_candidates",
           "best_candidate", "member_candidate", "beats_member"]


@dataclass
class Candidate:
    """One fitted candidate fuser.

    Attributes:
        label: its name in tables (the kind, with ``-2``, ``-3`` for repeats).
        fuser: fitted on all the rows fusers learn from.
        cv_proba: out-of-fold fused probabilities on those rows (None when not computed).
        cv_scores: accuracy and log-loss of ``cv_proba``.
        seconds: time to cross-fit and fit it.
    """

    label: str
    fuser: Fuser
    cv_proba: np.ndarray | None
    cv_scores: dict[str, float] | None
    seconds: float


def as_fusers(fuser: Fuser | str | Sequence[Fuser | str] | None) -> list[Fuser]:
    """Specs as a list: a fuser, a registered kind, or a list of them; None: ``default_fusers()``."""
    if fuser is None:
        return default_fusers()
    items = [fuser] if isinstance(fuser, (Fuser, str)) else fuser
    if not isinstance(items, Sequence):
        items = [items]
    for index, item in enumerate(items):
        if not isinstance(item, (Fuser, str)):
            where = f"fuser[{index}]" if items is fuser else "fuser"
            raise ConfigError(f"{where} is {type(item).__name__} ({item!r:.60}); pass a Fuser (e.g. LinearFuser()), "
                              f"a registered fuser kind ({', '.join(FUSERS.names())}) or a list of them.")
    return [FUSERS.get(f)() if isinstance(f, str) else f for f in items]


def with_member_candidate(fusers: list[Fuser]) -> list[Fuser]:
    """The candidates, plus the best single member (``PickFuser()``, last) when several are compared and none
    is a ``PickFuser`` already: a single fuser the user asked for is kept as asked."""
    if len(fusers) < 2 or any(isinstance(f, PickFuser) for f in fusers):
        return list(fusers)
    return [*fusers, PickFuser()]


def candidate_labels(fusers: Sequence[Fuser]) -> list[str]:
    """Unique table names: the kind, then ``kind-2``, ``kind-3`` for repeats."""
    seen: dict[str, int] = {}
    labels = []
    for fuser in fusers:
        seen[fuser.kind] = seen.get(fuser.kind, 0) + 1
        labels.append(fuser.kind if seen[fuser.kind] == 1 else f"{fuser.kind}-{seen[fuser.kind]}")
    return labels


def fit_candidates(fusers: Sequence[Fuser], outputs: MemberOutputs, labels: np.ndarray, *, cv: int, seed: int,
                   cross_validate: bool) -> list[Candidate]:
    """Fit a clone of every spec on all rows; with ``cross_validate``, also its out-of-fold predictions."""
    candidates = []
    for label, spec in zip(candidate_labels(fusers), fusers, strict=True):
        start = time.perf_counter()
        proba = out_of_fold_fused(spec, outputs, labels, cv, seed) if cross_validate else None
        fitted = spec.clone().fit(outputs, labels)
        scores = summary(proba, labels) if proba is not None else None
        label = fitted.table_label(outputs.member_names) or label
        candidates.append(Candidate(label, fitted, proba, scores, time.perf_counter() - start))
    return candidates


def member_candidate(candidates: Sequence[Candidate]) -> Candidate | None:
    """The best-single-member candidate (an unnamed ``PickFuser``), if one is compared."""
    return next((c for c in candidates if isinstance(c.fuser, PickFuser) and c.fuser.config.member is None), None)


Z_95 = 1.959964  # the normal quantile of a two-sided 95% interval


def beats_member(candidate: Candidate, member: Candidate, labels: np.ndarray) -> bool:
    """True when ``candidate``'s cross-validated accuracy beats the best member's beyond noise: the normal 95%
    interval of their paired per-row difference lies above 0 (gain > 1.96 standard errors; the report's paired
    intervals ask the same of held-out rows). A gain that row-to-row noise could explain does not count, as
    on new rows it is as likely to be a loss.

    Example:
        >>> labels = np.array([0, 0, 1, 1, 1, 1, 0, 0])
        >>> def cand(predicted):  # a candidate whose out-of-fold prediction is ``predicted`` on every row
        ...     return Candidate("c", None, np.eye(2)[predicted], {}, 0.0)
        >>> member = cand(np.array([0, 0, 1, 1, 0, 0, 1, 1]))  # right on 4 of 8 rows
        >>> beats_member(cand(np.array([0, 0, 1, 1, 1, 1, 1, 1])), member, labels)  # 2 more right: +0.25 < 1.96 * 0.16
        False
        >>> beats_member(cand(labels), member, labels)  # 4 more right: +0.5 > 1.96 * 0.19
        True
    """
    difference = ((candidate.cv_proba.argmax(1) == labels).astype(float)
                  - (member.cv_proba.argmax(1) == labels).astype(float))
    gain = difference.mean()
    error = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else np.inf
    return bool(gain > Z_95 * error)


def best_candidate(candidates: Sequence[Candidate], labels: np.ndarray | None = None) -> Candidate:
    """The lowest cross-validated log-loss among the best single member and the fusers that beat it on
    cross-validated accuracy by more than noise (``beats_member``); an exact tie goes to the first listed.
    Without a member candidate (or ``labels``), the lowest log-loss of all.

    Example:
        >>> labels = np.array([0, 1] * 50)
        >>> right = np.eye(2)[labels] * 0.8 + 0.1  # every row right, 0.9 sure
        >>> member = Candidate("member: a", PickFuser(), np.where(np.arange(100)[:, None] < 80, right, 1 - right),
        ...                    {"accuracy": 0.8, "log_loss": 0.53}, 0.0)
        >>> mean = Candidate("mean", None, right, {"accuracy": 1.0, "log_loss": 0.11}, 0.0)
        >>> best_candidate([mean, member], labels).label  # +20 points, far beyond noise
        'mean'
    """
    if len(candidates) == 1 or candidates[0].cv_scores is None:
        return candidates[0]
    member = member_candidate(candidates)
    if member is None or labels is None:
        return min(candidates, key=lambda c: c.cv_scores["log_loss"])
    eligible = [c for c in candidates if c is member or beats_member(c, member, np.asarray(labels))]
    return min(eligible, key=lambda c: c.cv_scores["log_loss"])
