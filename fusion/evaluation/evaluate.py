"""``fusion.evaluate``: turn members (or an ensemble) + fitted fusers + labelled data into a Report.

This is the glue between models and :func:`fusion.evaluation.build_report`: it runs the members (through the
ensemble's output cache), the fusers, and their member weights (``permutation_importance`` for fusers
without weights of their own), then hands the probabilities to ``build_report``, with each member's recorded
cost (``OutputCache.cost``: a backbone pass several members share is counted once for them together).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ConfigError, NotFittedError
from ..fusers import Fuser, MemberOutputs
from ..inputs import TextData
from .compute import build_report
from .metrics import log_loss

if TYPE_CHECKING:
    from ..ensemble.ensemble import Ensemble
    from ..members.base import Member
    from .report import Report


def _named_fusers(fusers: Fuser | Sequence[Fuser] | Mapping[str, Fuser] | None) -> dict[str, Fuser]:
    if fusers is None:
        return {}
    if isinstance(fusers, Fuser):
        fusers = [fusers]
    named = dict(fusers) if isinstance(fusers, Mapping) else {}
    for fuser in [] if isinstance(fusers, Mapping) else fusers:
        name = fuser.kind if fuser.kind not in named else f"{fuser.kind}-{len(named)}"
        named[name] = fuser
    unfitted = [name for name, f in named.items() if not f.is_fitted]
    if unfitted:
        raise NotFittedError(f"fusers {unfitted} are not fitted; fit them (or the ensemble) before evaluating.")
    return named


def permutation_importance(fuser: Fuser, outputs: MemberOutputs, labels: Sequence[int] | np.ndarray, *,
                           repeats: int = 3, seed: int = 0) -> np.ndarray:
    """Each member's importance to a fitted fuser, as shares summing to 1 (all 0 if nothing matters).

    A member's importance is the rise in the fuser's log-loss when that member's outputs (scores and
    embeddings) are shuffled across rows, so they no longer match the other members' or the labels; it is
    averaged over ``repeats`` shuffles (seeded) and negative rises count as 0. Works for any fuser, which is
    what reports use for fusers without weights of their own (stacking).

    Hand-written rather than ``sklearn.inspection.permutation_importance``, which shuffles one feature column at
    a time: a member is a block (its scores for every class, and its embeddings) that must move as one.

    Example:
        >>> import torch
        >>> scores = torch.randn(300, 3, 2); labels = scores[:, 0].argmax(-1).numpy()
        >>> from fusion.fusers import StackingFuser
        >>> shares = permutation_importance(StackingFuser().fit(scores, labels), MemberOutputs(scores), labels)
        >>> int(shares.argmax()), round(float(shares.sum()), 6)
        (0, 1.0)
    """
    labels = np.asarray(labels)
    base = log_loss(fuser.predict_proba(outputs), labels)
    rng = np.random.default_rng(seed)
    rises = np.zeros(outputs.n_members)
    for _ in range(repeats):
        order = torch.as_tensor(rng.permutation(outputs.n_rows))
        for m in range(outputs.n_members):
            logits = outputs.logits.clone()
            logits[:, m] = outputs.logits[order, m]
            embeddings = [e if e is None or i != m else e[order] for i, e in enumerate(outputs.embeddings)]
            shuffled = MemberOutputs(logits, outputs.member_names, embeddings)
            rises[m] += log_loss(fuser.predict_proba(shuffled), labels) - base
    rises = np.clip(rises / max(repeats, 1), 0.0, None)
    return rises / rises.sum() if rises.sum() > 0 else rises


def _fuser_results(outputs: MemberOutputs, fusers: dict[str, Fuser], labels: np.ndarray,
                   fused: Mapping[str, np.ndarray]) -> tuple[dict, ...]:
    proba, seconds, weights, methods = {}, {}, {}, {}
    for name, fuser in fusers.items():
        start = time.perf_counter()
        proba[name] = fuser.predict_proba(outputs)
        seconds[name] = time.perf_counter() - start
        if name in fused:  # out-of-fold predictions on the rows the fuser learnt from
            proba[name] = fused[name]
        shares, methods[name] = fuser.member_weights(), "weights"
        if shares is None:
            shares, methods[name] = permutation_importance(fuser, outputs, labels), "permutation"
        weights[name] = dict(zip(outputs.member_names, map(float, shares), strict=True))
    return proba, seconds, weights, methods


def data_facts(data: Any) -> dict[str, str]:
    """``data_name`` and ``split`` of a Hugging Face ``Dataset`` (or anything with ``info.dataset_name`` /
    ``info.builder_name`` and ``split``), for the report's title; empty for plain rows."""
    info = getattr(data, "info", None)
    name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
    config = getattr(info, "config_name", None)
    split = getattr(data, "split", None)
    facts = {"data_name": f"{name}/{config}" if name and config and config != "default" else name,
             "split": str(split) if split else None}
    return {k: v for k, v in facts.items() if isinstance(v, str) and v}


def evaluate(
    source: Ensemble | Sequence[Member] | MemberOutputs,
    fusers: Fuser | Sequence[Fuser] | Mapping[str, Fuser] | None,
    data: Any,
    *,
    labels: Sequence[str] | None = None,
    fused: Mapping[str, np.ndarray] | None = None,
    **report_options: Any,
) -> Report:
    """Score members and fitted fusers on labelled data: metrics, uncertainty, diversity, cost.

    Args:
        source: an ``Ensemble``, a list of fitted members, or precomputed ``MemberOutputs``.
        fusers: fitted fusers to score (a fuser, a list, or ``{name: fuser}``); ``Ensemble.evaluate`` passes
            its own fuser and the other candidates.
        data: labelled rows (anything ``Ensemble.fit`` accepts); with ``MemberOutputs``, the label ids.
        labels: label names (taken from the ensemble when ``source`` is one).
        fused: precomputed fused probabilities by fuser name that replace ``predict_proba`` on these rows
            (out-of-fold predictions on the rows a fuser learnt from).
        **report_options: passed to ``fusion.evaluation.build_report`` (``n_bootstrap``, ``seed``, ``title``,
            ``split``, ``notes``, ``data_name``); ``data_name`` and ``split`` default to what a Hugging Face
            ``Dataset`` says of itself (``info.dataset_name``, ``split``), for the report's title.

    Example:
        >>> report = evaluate(ensemble, [LinearFuser().fit(...)], validation)  # doctest: +SKIP
        >>> report.save("out/report")  # doctest: +SKIP
    """
    from ..ensemble.ensemble import Ensemble  # the ensemble module imports this one

    named = _named_fusers(fusers)
    if isinstance(source, MemberOutputs):
        if labels is None:
            raise ConfigError("evaluate(MemberOutputs, ...) needs labels=[label names].")
        outputs, y, seconds = source, np.asarray(data), {}
    else:
        ensemble = source if isinstance(source, Ensemble) else Ensemble(list(source))._set_fitted(
            list(source), None, list(labels or []))
        if isinstance(source, Ensemble) and source.fuser_ is not None and source.fuser_ not in named.values():
            named = {source._fuser_label(): source.fuser_, **named}
        rows = data if isinstance(data, TextData) else ensemble._data(data, "evaluation", require_labels=True)
        outputs, y, labels = ensemble.member_outputs(rows), rows.labels, ensemble.labels_
        seconds = {m.name: c for m in ensemble.members_  # own and shared apart: shared passes count once
                   if (c := ensemble.cache.cost(m.fingerprint, rows.fingerprint)) is not None}
    member_proba = {name: outputs.probabilities(torch.float64)[:, i].numpy() for i, name in enumerate(outputs.member_names)}
    fuser_proba, fuser_seconds, weights, methods = _fuser_results(outputs, named, np.asarray(y), fused or {})
    usage = {name: dict(zip(outputs.member_names, map(float, shares), strict=True)) for name, fuser in named.items()
             if (shares := fuser.member_usage(outputs)) is not None}  # a cascade runs some members on some rows
    report_options = {**data_facts(data), **report_options}
    students = source.students_ if isinstance(source, Ensemble) else {}
    student_proba, student_seconds = _student_results(source, students, rows) if students else ({}, {})
    if students:
        report_options["notes"] = [*report_options.get("notes", []), _students_note(students)]
    return build_report(member_proba, fuser_proba, y, list(labels),
                        seconds={**seconds, **fuser_seconds, **student_seconds}, member_weights=weights,
                        weights_method=methods, member_usage=usage, student_proba=student_proba,
                        **report_options)


def _student_results(ensemble: Ensemble, students: Mapping[str, Member], rows: TextData) -> tuple[dict, dict]:
    """Each distilled student's probabilities on ``rows`` and its recorded cost there (``OutputCache.cost``:
    its own computation plus the cached passes it reuses, since a student runs alone)."""
    proba, seconds = {}, {}
    for name, student in students.items():
        outputs = ensemble._stack([student], [ensemble._raw_outputs(student, rows)], len(rows))
        proba[name] = outputs.probabilities(torch.float64)[:, 0].numpy()
        if (cost := ensemble.cache.cost(student.fingerprint, rows.fingerprint)) is not None:
            seconds[name] = cost
    return proba, seconds


def _students_note(students: Mapping[str, Member]) -> str:
    def how(student: Member) -> str:
        facts = getattr(student, "distillation_", None)
        return (f"{student.name} (temperature {facts['temperature']}, alpha {facts['alpha']}, {facts['rows']} rows, "
                f"soft labels from {facts['soft_labels']})" if facts else student.name)

    return ("Students, single models distilled from this ensemble's soft labels (Hinton et al. 2015), are reported "
            "beside it and are not members (no weights, diversity or cost subsets): "
            + "; ".join(how(s) for s in students.values()) + ".")
