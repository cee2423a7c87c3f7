"""Distillation: one student member trained on a fitted ensemble's soft labels, to ship one model's cost.

The soft labels are the ensemble's fused probabilities on the student's training rows. On the rows the
ensemble's members were fitted on, their in-sample outputs are overconfident (a member that memorised a row
teaches nothing about it), so there the soft labels are the fused out-of-fold member outputs, those the fuser
learnt from (``crossfit.py``; cached by the ensemble's fit). The student learns through its own ``fit`` (the one
training loop) with ``fusion.losses.distillation_loss`` (Hinton, Vinyals and Dean 2015, "Distilling the
Knowledge in a Neural Network"), and is fitted, cached and restored as any member is (``fitting.py``; the soft
targets are part of the rows' label fingerprint, so a hard-label fit is never reused for it).
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import is_number
from ..errors import ConfigError
from ..fusers import PickFuser
from ..inputs import TextData
from ..members.base import Member, check_inputs, refuse_student
from .fitting import fitted_member

if TYPE_CHECKING:
    from .ensemble import Ensemble

logger = logging.getLogger(__name__)

__all__ = ["distill", "member_ensemble", "soft_labels"]


def distill(ensemble: Ensemble, student: Member, train: Any, *, temperature: float = 2.0,
            alpha: float = 0.5) -> Member:
    """Fit a clone of ``student`` on ``train`` with the fitted ``ensemble``'s probabilities as soft targets.

    Args:
        ensemble: a fitted ensemble (the teacher).
        student: the member spec to train (never modified): a member that learns from soft targets,
            ``HFEncoder`` (frozen head or ``finetune=True``) or ``TorchMember``. Its name must differ from the
            ensemble's members'.
        train: the rows to learn from (anything ``Ensemble.fit`` accepts); labels are optional: rows without
            a label learn from the soft targets alone.
        temperature: softens the teacher's and the student's distributions (``T > 0``; 1 leaves them as they are).
        alpha: weight of the soft term against the hard labels' cross-entropy, in ``[0, 1]``.

    Returns:
        The fitted student, also kept in ``ensemble.students_[name]`` (reported beside the ensemble by
        ``Ensemble.evaluate``). Ship it alone with ``Ensemble.from_member(student).save_pretrained(dir)``.

    Raises:
        ConfigError: a student that cannot learn from soft targets (naming its kind), a name clash with a
            member, a temperature or alpha out of range.
        NotFittedError: the ensemble is not fitted.

    Example:
        >>> student = distill(ens, HFEncoder("prajjwal1/bert-tiny", name="student"), train)  # doctest: +SKIP
        >>> Ensemble.from_member(student).save_pretrained("out/student")  # doctest: +SKIP
    """
    ensemble._fitted_fuser()
    members = ensemble._fitted_members()
    _check_student(student, members, temperature, alpha)
    rows = ensemble._data(train, "distill")
    check_inputs([student], rows, "distill")
    soft, source = soft_labels(ensemble, rows)
    labels = rows.labels if rows.labels is not None else np.full(len(rows), -1, dtype=np.int64)
    data = TextData(rows.texts, labels, fingerprint=rows.fingerprint).with_soft_targets(soft, temperature, alpha)
    logger.info("distilling %d rows into student %s (temperature %s, alpha %s; soft labels: %s)", len(rows),
                student.name, temperature, alpha, source)
    fitted = fitted_member(student, data, list(ensemble.labels_), ensemble.cache)
    fitted.distillation_ = {"temperature": float(temperature), "alpha": float(alpha), "rows": len(rows),
                            "labelled_rows": int((labels >= 0).sum()), "soft_labels": source}
    ensemble.students_[student.name] = fitted
    return fitted


def _check_student(student: Any, members: list[Member], temperature: Any, alpha: Any) -> None:
    if not isinstance(student, Member):
        raise ConfigError(f"distill: the student must be a member (HFEncoder or TorchMember); got "
                          f"{type(student).__name__} ({student!r:.60}).")
    if not (student.trainable and student.learns_soft_targets):
        raise ConfigError("distill: " + refuse_student(student))
    if student.name in {m.name for m in members}:
        raise ConfigError(f"distill: the student's name {student.name!r} is already a member's; pass name= to the "
                          "student to tell them apart (it is reported beside the members).")
    if not (is_number(temperature) and temperature > 0):
        raise ConfigError(f"distill: temperature must be a number > 0 (1 leaves the probabilities as they are, "
                          f"2 to 5 is usual); got {temperature!r}.")
    if not (is_number(alpha) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"distill: alpha, the weight of the soft labels against the hard ones, must be in [0, 1]; "
                          f"got {alpha!r}.")


def soft_labels(ensemble: Ensemble, rows: TextData) -> tuple[np.ndarray, str]:
    """The ensemble's fused probabilities ``[rows, classes]`` on ``rows``, and where they come from.

    On the labelled rows the ensemble's trainable members were fitted on, the members' out-of-fold outputs
    (those the fuser learnt from with ``fuser_data="train"``, cached) fused by ``ensemble.fuser_``, so no
    member grades a row it was trained on; a member fitted once because it is expensive (fine-tuning) is not
    cross-fitted here: its in-sample outputs are used, with a warning. On the validation rows a fuser learnt from
    (``fuser_data="validation"``), the fuser's out-of-fold predictions there. Elsewhere, ``ensemble.predict_proba``.
    """
    members = ensemble._fitted_members()
    in_sample = [m for m in members if m.trainable and rows.labels is not None
                 and m.fitted_on_ == rows.label_fingerprint]
    if not in_sample:
        fused = ensemble._cv_proba.get(ensemble._fuser_label()) if ensemble._is_fuser_rows(rows) else None
        if fused is not None:  # the validation rows the fuser learnt from: its out-of-fold predictions there
            return np.asarray(fused, dtype=np.float64), f"the fuser's out-of-fold predictions ({ensemble.cv}-fold)"
        return np.asarray(ensemble.predict_proba(rows), dtype=np.float64), "the ensemble's predictions"
    expensive = [m.name for m in in_sample if m.expensive_to_fit]
    if expensive:
        logger.warning("distill: members %s were fitted on these rows and are too expensive to cross-fit, so their "
                       "soft labels are in-sample (overconfident); distil on other rows (e.g. unlabelled ones) to "
                       "avoid it", expensive)
        return np.asarray(ensemble.predict_proba(rows), dtype=np.float64), "in-sample member outputs"
    outputs, _ = ensemble._fuser_rows("train", rows, None)
    proba = np.asarray(ensemble._fitted_fuser().predict_proba(outputs), dtype=np.float64)
    return proba, f"out-of-fold member outputs ({ensemble.cv}-fold cross-fitting)"


def member_ensemble(cls: type[Ensemble], member: Member, *, text_column: str = "text", label_column: str = "label",
                    cache_dir: str | os.PathLike | None = None) -> Ensemble:
    """A fitted ensemble of ``member`` alone, its probabilities passed through (``PickFuser``): what a fitted member
    (a distilled student) is saved, loaded and served as (``Ensemble.from_member``)."""
    member._require_fitted()
    labels = member.labels_ or member.output_labels(None)
    if not labels:
        raise ConfigError(f"member {member.name!r} does not name its labels; fit it through an ensemble (or "
                          "fusion.distill) first.")
    fuser = PickFuser(member=member.name).load_state_dict({
        "n_members_": torch.tensor(1), "n_classes_": torch.tensor(len(labels)), "index_": torch.tensor(0),
        "accuracy_": torch.tensor([math.nan], dtype=torch.float64)})  # not measured: nothing was picked
    ensemble = cls([member], fuser, labels=list(labels), text_column=text_column, label_column=label_column,
                   cache_dir=cache_dir)._set_fitted([member], fuser, list(labels))
    how = getattr(member, "distillation_", None)
    ensemble.member_fitting_ = {member.name: (
        f"distilled from an ensemble (temperature {how['temperature']}, alpha {how['alpha']}, {how['rows']} rows; "
        f"soft labels: {how['soft_labels']})" if how else "fitted on its own")}
    return ensemble
