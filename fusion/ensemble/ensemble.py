"""Ensemble: member specs + fuser specs; ``fit`` trains clones, then predict, evaluate, save and load.

The flow a newcomer learns: members -> cache -> fusers -> ensemble -> report. ``Ensemble(members, fuser)``
keeps what it was given untouched, as scikit-learn does: ``fit`` fits clones into ``members_`` and
``fuser_`` (and ``classes_``), so the same specs can be fitted again, elsewhere, with other data.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..cache.store import OutputCache, Outputs
from ..engines import Engine, RowJob, make_engine
from ..errors import ConfigError, DataError, MemberOutputError, NotFittedError, did_you_mean
from ..evaluation import metrics
from ..evaluation.evaluate import data_facts
from ..fusers import Fuser, MemberOutputs, PickFuser
from ..inputs import TextData, as_text_data, column_values, dataset_label_names, fit_arguments
from ..labels import alignment
from ..members.base import Member, check_inputs
from .crossfit import folds, out_of_fold_outputs
from .fitting import fitted_member
from .selection import (
    Candidate,
    as_fusers,
    beats_member,
    best_candidate,
    fit_candidates,
    member_candidate,
    with_member_candidate,
)

if TYPE_CHECKING:
    from ..evaluation import Report

logger = logging.getLogger(__name__)

FUSER_DATA = ("auto", "train", "validation")
MEMORY = "memory"  # cache_dir value for a cache that lives in memory only


def make_cache(cache_dir: str | os.PathLike | OutputCache | None, engine: str | Engine | None = None) -> OutputCache:
    """The output cache: the default cache home (None), a directory, ``"memory"``, or a given cache; computing its
    sharded entries with ``engine`` (None: ``"local"`` for a cache made here; a given cache's own engine, which
    any other ``engine`` replaces)."""
    if isinstance(cache_dir, OutputCache):
        if engine is not None:
            cache_dir.engine = make_engine(engine)
        return cache_dir
    if cache_dir == MEMORY:
        return OutputCache(memory_only=True, engine=engine)
    return OutputCache(cache_dir, engine=engine)


class Ensemble:
    """Several members and one fuser (or several candidates, the best kept), trained and shipped together.

    Members run once per dataset; their outputs are cached on disk (under the cache home, see
    ``fusion.cache.default_cache_dir``) so a second script, or a second ensemble over the same models and
    data, runs no model again.

    Args:
        members: the member specs (``HFClassifier``, ``HFEncoder``, ``SklearnMember``, ...); never modified.
        fuser: a ``Fuser``, a registered fuser kind, or a list of them. With several, every candidate is fitted
            and cross-validated on the fuser's rows, the best single member being one more (``PickFuser``,
            ``"member: NAME"``); the kept one has the lowest cross-validated log-loss among that member and the
            fusers more accurate than it beyond noise (a 95% paired interval above 0), so the member alone is kept when no
            fuser beats it by more than noise (``selection.py``).
            None (default): the registered default candidates (``fusion.fusers.default_fusers()``: mean,
            linear, stacking, caruana) compared that way, an ensemble that does not lose to its best member.
        labels: the label names, in id order. Default: the training data's ClassLabel names, its string
            labels (sorted), the first member that names its labels, or else the ids themselves.
        text_column / label_column: column names in the data.
        cache_dir: where member outputs are cached: None for the cache home, a directory, or ``"memory"``.
        engine: what computes members' passes over large datasets, shard by shard (``OutputCache``'s
            ``shard_rows``): ``"local"`` (this process, or each process of an ``accelerate launch`` its share),
            ``"ray"`` (Ray Data batch inference on a Ray cluster; the ``fusion[ray]`` extra, see
            ``fusion.engines.ray.RayEngine``), or an ``fusion.engines.Engine``. None: ``"local"``, or the engine
            of an ``OutputCache`` given as ``cache_dir``. Like ``cache_dir``, where outputs are computed is not
            part of what is learnt: outputs are the same, and it is not saved with the ensemble.
        fuser_data: the rows fusers learn from. ``"train"``: out-of-fold member outputs on the training rows
            (each trainable member cross-fitted with ``cv`` folds). ``"validation"``: member outputs on the
            validation split; the fuser is then cross-fitted over ``cv`` folds of those rows for the report,
            so its reported scores are out-of-fold too. ``"auto"``: ``"validation"`` when a member is expensive
            to fit (fine-tuning: fitted once, never per fold) and a validation split is given; else
            ``"train"`` if a member is trained here; else ``"validation"`` when one is given.
        cv: folds for cross-fitting (members and fusers) and for choosing among candidate fusers.
        seed: seeds the folds.

    Attributes (after ``fit``):
        members_: fitted clones of the members. fuser_: the fitted fuser kept. classes_: label names.
        candidates_: every fitted candidate fuser by table name. selection_: how the fuser was chosen.
        fuser_data_: the rows the fuser learnt from. member_fitting_: per member, how it was fitted.

    Example:
        >>> ens = Ensemble([HFClassifier("a"), SklearnMember(pipeline)], fuser=["mean", "linear"])  # doctest: +SKIP
        >>> ens.fit(train, validation).predict(["a great film"])  # doctest: +SKIP
        array(['positive'], dtype='<U8')
    """

    def __init__(
        self,
        members: Sequence[Member],
        fuser: Fuser | str | Sequence[Fuser | str] | None = None,
        *,
        labels: Sequence[str] | None = None,
        text_column: str = "text",
        label_column: str = "label",
        cache_dir: str | os.PathLike | None = None,
        engine: str | Engine | None = None,
        fuser_data: str = "auto",
        cv: int = 5,
        seed: int = 0,
    ) -> None:
        _check_arguments(members, labels, cv, seed)
        duplicates = [n for n, k in Counter(m.name for m in members).items() if k > 1]
        if duplicates:
            raise ConfigError(f"member names must be unique; {duplicates} repeat. Pass name= to tell them apart.")
        if fuser_data not in FUSER_DATA:
            raise ConfigError(f"fuser_data must be one of {FUSER_DATA}, got {fuser_data!r}.")
        self.members = list(members)
        self.fuser = fuser
        self.fusers = as_fusers(self.fuser)  # validates names now, not at fit
        self.labels = list(labels) if labels is not None else None
        self.text_column, self.label_column = text_column, label_column
        self.cache_dir, self.engine = cache_dir, engine
        self.cache = make_cache(cache_dir, engine)
        self.fuser_data, self.cv, self.seed = fuser_data, cv, seed
        self._reset_fitted()

    def _reset_fitted(self) -> None:
        self.members_: list[Member] | None = None
        self.fuser_: Fuser | None = None
        self.labels_: list[str] | None = None
        self.candidates_: dict[str, Fuser] = {}
        self.selection_: dict[str, Any] | None = None
        self.fuser_data_: str | None = None
        self.member_fitting_: dict[str, str] = {}
        self.label_note_: str | None = None
        self._cv_proba: dict[str, np.ndarray] = {}  # out-of-fold fused predictions on the validation rows
        self._validation: TextData | None = None
        self._validation_facts: dict[str, str] = {}
        self._report: Report | None = None
        self._metrics: dict[str, Any] | None = None
        self._members_key: tuple | None = None
        self._fuser_outputs: tuple[MemberOutputs, np.ndarray] | None = None
        self.students_: dict[str, Member] = {}  # distilled students by name (``distill``)

    def _set_fitted(self, members: list[Member], fuser: Fuser | None, labels: list[str]) -> Ensemble:
        """Use members (and a fuser) that are already fitted, e.g. loaded from disk."""
        self.members_, self.fuser_, self.labels_ = list(members), fuser, list(labels)
        self._members_key = None
        return self

    @property
    def classes_(self) -> np.ndarray:
        """Label names in id order (scikit-learn's name for them)."""
        if self.labels_ is None:
            raise NotFittedError("the ensemble is not fitted; call fit(train, validation) first.")
        return np.asarray(self.labels_)

    # --- data and labels ----------------------------------------------------------------------------------
    def _data(self, data: Any, where: str, require_labels: bool = False) -> TextData:
        rows = as_text_data(data, text_column=self.text_column, label_column=self.label_column,
                            label_names=self.labels_ or self.labels, require_labels=require_labels, where=where)
        check_inputs(self.members_ or self.members, rows, where)
        return rows

    def _label_names(self, train: Any) -> list[str]:
        if self.labels is not None:
            return list(self.labels)
        declared = dataset_label_names(train, self.label_column)
        if declared:
            return declared
        values = [] if isinstance(train, (str, Sequence)) else column_values(train, self.label_column, "train")
        if values and all(isinstance(v, str) for v in values):
            return sorted(set(values))
        named = next((names for m in self.members if (names := m.output_labels(None))), None)
        if named is not None:
            logger.info("label ids are read as %s (the label names of the first member that has them)", named)
            return list(named)
        ids = sorted({int(v) for v in values})
        if ids and ids[0] < 0:
            raise DataError(f"train: label ids must be >= 0; got {ids[0]}. Pass Ensemble(..., labels=[...]).")
        self.label_note_ = (f"The labels have no names, so their ids are used as names: "
                            f"{', '.join(map(str, range(ids[-1] + 1)))}.")
        logger.info(self.label_note_)
        return [str(i) for i in range(ids[-1] + 1)] if ids else []

    # --- member outputs -----------------------------------------------------------------------------------
    def _raw_outputs(self, member: Member, data: TextData) -> Outputs:
        label = f"{member.kind} {member.name}"
        compute = functools.partial(member.compute, data, self.cache)
        if not member.sharded_outputs:
            return self.cache.get_or_compute(member.fingerprint, data.fingerprint, compute, label=label)
        job = RowJob((member.fingerprint, data.fingerprint, "outputs"), data, member.compute_rows, label)
        return self.cache.get_or_compute_rows(job, compute)

    def _aligned(self, member: Member, raw: Outputs, n_rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = raw["logits"]
        names = member.output_labels(self.labels_)
        if logits.ndim != 2 or logits.shape[0] != n_rows or names is None or logits.shape[1] != len(names):
            raise MemberOutputError(
                f"member {member.name!r} returned outputs of shape {tuple(logits.shape)} for {n_rows} rows and "
                f"labels {names}; every member must give one row of scores per example, one column per label."
            )
        bad = (~torch.isfinite(logits)).any(1)
        if bad.any():
            raise MemberOutputError(
                f"member {member.name!r} produced NaN or inf scores on {int(bad.sum())} of {n_rows} rows (first: row "
                f"{int(bad.nonzero()[0])}). Check its weights and dtype (fp16 overflow is a common cause)."
            )
        return logits[:, alignment(member.name, names, self.labels_)], raw.get("embeddings")

    def _stack(self, members: list[Member], raw: list[Outputs], n_rows: int, data: TextData | None = None) -> MemberOutputs:
        aligned = [self._aligned(m, r, n_rows) for m, r in zip(members, raw, strict=True)]
        return MemberOutputs(torch.stack([a[0] for a in aligned], 1), [m.name for m in members],
                             [a[1] for a in aligned], None if data is None else self._member_costs(members, data))

    def _member_costs(self, members: list[Member], data: TextData) -> list[Any] | None:
        """Each member's recorded cost on ``data`` per 1,000 rows (an ``EntryCost``; None where unknown), for
        cost-aware fusers; None when no member's is known."""
        costs = [self.cache.cost(m.fingerprint, data.fingerprint) for m in members]
        per_1k = [None if c is None else c.map(lambda s: s * 1000.0 / max(len(data), 1)) for c in costs]
        return None if all(c is None for c in per_1k) else per_1k

    def _fitted_members(self) -> list[Member]:
        if self.members_ is None:
            raise NotFittedError("the ensemble is not fitted; call Ensemble.fit(train, validation) first.")
        return self.members_

    def member_outputs(self, data: Any) -> MemberOutputs:
        """Aligned outputs of every fitted member on ``data`` (from the cache when already computed)."""
        members = self._fitted_members()
        data = data if isinstance(data, TextData) else self._data(data, "data")
        return self._stack(members, [self._raw_outputs(m, data) for m in members], len(data), data)

    # --- fitting ------------------------------------------------------------------------------------------
    def _resolve_fuser_data(self, has_validation: bool) -> str:
        expensive = [m.name for m in self.members if m.trainable and m.expensive_to_fit]
        if self.fuser_data == "auto":
            if has_validation and expensive:
                return "validation"
            if expensive:
                logger.warning("members %s are expensive to fit and no validation split was given, so they are "
                               "cross-fitted (fitted %d times); pass fit(train, validation) to fit them once",
                               expensive, self.cv + 1)
            return "train" if any(m.trainable for m in self.members) or not has_validation else "validation"
        if self.fuser_data == "validation" and not has_validation:
            raise ConfigError("fuser_data='validation' needs a validation split: call fit(train, validation).")
        return self.fuser_data

    def _check_fit_rows(self, mode: str, train: TextData, validation: TextData | None) -> None:
        """Enough rows and classes for what ``fit`` will do, checked before anything is trained."""
        trainable = any(m.trainable for m in self.members)
        classes = np.unique(train.labels)
        if trainable and len(classes) < 2:
            raise DataError(f"train: all {len(train)} rows have the label {self.labels_[classes[0]]!r}; members learn "
                            f"from rows of at least 2 classes (labels: {self.labels_}). Add rows of another label.")
        crossfit = (mode == "validation" or trainable or len(as_fusers(self.fuser)) > 1)
        rows, where = (validation, "validation") if mode == "validation" else (train, "train")
        if crossfit and len(rows) < self.cv:
            raise DataError(f"{where}: {len(rows)} rows, fewer than the cv={self.cv} folds of cross-fitting, which "
                            f"needs at least {self.cv} rows. Add rows, or pass a smaller cv= (at least 2).")
        if mode == "train" and trainable:
            for number, (fit_rows, _) in enumerate(folds(train.labels, self.cv, self.seed)):
                if len(np.unique(train.labels[fit_rows])) < 2:
                    raise DataError(f"train: with cv={self.cv}, the training rows of fold {number} hold a single "
                                    f"class ({len(classes)} classes, {min(np.unique(train.labels, return_counts=True)[1])} "
                                    f"rows in the smallest); give every class at least {self.cv} rows, or pass a smaller cv=.")

    def _fit_members(self, train: TextData) -> list[Member]:
        """Fitted clones of the specs: the previous fit's when the specs and data are the same, else each
        trainable spec fitted, or its fit from an earlier run restored from the cache (``fitting.py``)."""
        key = (tuple(m.fingerprint for m in self.members), train.label_fingerprint, tuple(self.labels_))
        if self._members_key == key and self.members_ is not None:
            return self.members_
        fitted = [fitted_member(spec, train, self.labels_, self.cache) if spec.trainable else spec.clone()
                  for spec in self.members]
        self._members_key = key
        return fitted

    def _member_fitting(self, mode: str) -> dict[str, str]:
        def rule(m: Member) -> str:
            if not m.trainable:
                return "frozen (pre-trained; nothing fitted here)"
            if mode == "train":
                return f"fitted on train; the fuser saw its {self.cv}-fold out-of-fold outputs"
            return "fitted once on train (prefit); the fuser learnt from validation outputs"

        return {m.name: rule(m) for m in self.members_}

    def _fuser_rows(self, mode: str, train: TextData, validation: TextData | None) -> tuple[MemberOutputs, np.ndarray]:
        if mode == "validation":
            rows = self.member_outputs(validation), validation.labels
        else:
            raw = [out_of_fold_outputs(spec, train, self.labels_, self.cache, self.cv, self.seed) if fitted.trainable
                   else self._raw_outputs(fitted, train) for spec, fitted in zip(self.members, self.members_, strict=True)]
            self._measure_costs(train)
            rows = self._stack(self.members_, raw, len(train), train), train.labels
        return rows

    def _measure_costs(self, train: TextData) -> None:
        """Run each fitted trainable member once over the training rows, so that its inference cost there is
        recorded (its out-of-fold outputs cost training, not inference): cost-aware fusers (``cascade``) and
        ``prune`` read it. Cheap beside cross-fitting: a head reads the cached backbone pass."""
        for member in self.members_:
            if member.trainable and self.cache.cost(member.fingerprint, train.fingerprint) is None:
                self._raw_outputs(member, train)

    def fit(self, train: Any, validation: Any | None = None) -> Ensemble:
        """Fit clones of the members on ``train``, then the fuser (choosing among candidates); the validation
        report is built when first asked for (``report_``, ``evaluate``, ``save_pretrained``).

        Members fitted earlier by this ensemble on the same data are kept, and member outputs come from the
        cache, so calling ``fit`` again after changing ``ens.fuser`` trains only fusers.

        ``train`` may be a ``DatasetDict``: its ``"train"`` split, and its ``"validation"`` split unless
        ``validation`` is given. ``fit(texts, labels)`` takes a flat sequence of labels (list, array, pandas
        Series) as the second argument, scikit-learn style (see ``fusion.inputs.fit_arguments``).

        Raises:
            DataError / LabelMismatchError / MemberOutputError: bad data, labels or member outputs.
        """
        train, validation = fit_arguments(train, validation, text_column=self.text_column,
                                          label_column=self.label_column)
        self.label_note_ = None
        labels = self._label_names(train)
        if self.labels_ != labels:
            self._members_key = None
        self.labels_ = labels
        train_data = self._data(train, "train", require_labels=True)
        val_data = self._data(validation, "validation", require_labels=True) if validation is not None else None
        mode = self._resolve_fuser_data(val_data is not None)
        self._check_fit_rows(mode, train_data, val_data)
        self.members_ = self._fit_members(train_data)
        self.fusers = as_fusers(self.fuser)
        outputs, labels_ids = self._fuser_rows(mode, train_data, val_data)
        logger.info("fitting %d fuser(s) on %d %s rows", len(self.fusers), len(labels_ids), mode)
        candidates = self._choose_fuser(outputs, labels_ids, mode)
        self.member_fitting_ = self._member_fitting(mode)
        self._cv_proba = {c.label: c.cv_proba for c in candidates if mode == "validation"}
        self._validation, self._report, self._metrics = val_data, None, None
        self.students_ = {}  # students distilled from an earlier fit learnt from another ensemble
        self._validation_facts = data_facts(validation) if validation is not None else {}  # for report_'s title
        return self

    def _choose_fuser(self, outputs: MemberOutputs, labels: np.ndarray, mode: str) -> list[Candidate]:
        """Fit every candidate fuser (and the best member) on the fuser's rows and keep the best (``selection.py``):
        sets ``fuser_``, ``fuser_data_``, ``candidates_``, ``selection_`` and the rows kept for ``prune``; returns
        the candidates."""
        candidates = fit_candidates(with_member_candidate(self.fusers), outputs, labels, cv=self.cv, seed=self.seed,
                                    cross_validate=len(self.fusers) > 1 or mode == "validation")
        best = best_candidate(candidates, labels)
        self.fuser_, self.fuser_data_ = best.fuser, mode
        self.candidates_ = {c.label: c.fuser for c in candidates}
        self.selection_ = _selection(candidates, best, mode, self.cv, labels) if len(candidates) > 1 else None
        self._fuser_outputs = (outputs, labels)  # what prune chooses members on and refits fusers on
        return candidates

    # --- prediction ---------------------------------------------------------------------------------------
    def _fitted_fuser(self) -> Fuser:
        if self.fuser_ is None:
            raise NotFittedError("the ensemble's fuser is not fitted; call Ensemble.fit(train, validation) first.")
        return self.fuser_

    def predict_proba(self, data: Any) -> np.ndarray:
        """Fused class probabilities ``[rows, labels]`` for texts, a dataset or a dict of columns. A fuser that
        needs some members on some rows only (``cascade``) runs each member on those rows only."""
        lazy = self._lazy_proba(data)
        return self._fitted_fuser().predict_proba(self._prediction_outputs(data)) if lazy is None else lazy

    def predict(self, data: Any) -> np.ndarray:
        """Predicted label names."""
        lazy = self._lazy_proba(data)
        if lazy is not None:
            return self.classes_[lazy.argmax(1)]
        return self.classes_[self._fitted_fuser().predict(self._prediction_outputs(data))]

    def prune(self, *, max_seconds_per_1k: float | None = None, max_members: int | None = None,
              data: Any = None) -> Ensemble:
        """A new fitted ensemble of the members on the accuracy-against-cost front that fit the limits, its fuser
        refitted on their outputs; ``pruned_`` records the choice (see ``fusion.ensemble.prune``).

        Example:
            >>> ens.prune(max_seconds_per_1k=2.0).pruned_["members"]  # doctest: +SKIP
            ['tfidf', 'minilm']
        """
        from .prune import prune

        return prune(self, max_seconds_per_1k=max_seconds_per_1k, max_members=max_members, data=data)

    def _lazy_proba(self, data: Any) -> np.ndarray | None:
        """``Fuser.lazy_predict`` with members run (through the cache) on the rows it asks for; None when the fuser
        needs every member on every row. A member whose outputs on all of ``data`` are cached already is sliced."""
        fuser = self._fitted_fuser()
        if type(fuser).lazy_predict is Fuser.lazy_predict:
            return None
        rows = data if isinstance(data, TextData) else self._data(data, "data")
        members = self._fitted_members()

        selected: list[tuple[np.ndarray, TextData]] = []  # rows already asked for, as data of their own

        def rows_at(at: np.ndarray) -> TextData:
            """``at`` as data of its own; within rows asked for before (a later stage's), their subset, so a
            backbone pass several members share is sliced, not run again."""
            for positions, data in reversed(selected):
                lookup = np.full(len(rows), -1, dtype=np.int64)
                lookup[positions] = np.arange(len(positions))
                if (lookup[at] >= 0).all():
                    return data.subset(lookup[at])
            selected.append((at, rows.select(at)))
            return selected[-1][1]

        def run_member(index: int, at: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
            member, at = members[index], np.asarray(at, dtype=np.int64)
            whole = self.cache.get(member.fingerprint, rows.fingerprint)
            if whole is not None or len(at) == len(rows):
                logits, embeddings = self._aligned(member, self._raw_outputs(member, rows) if whole is None else whole, len(rows))
                return logits[at], None if embeddings is None else embeddings[at]
            part = rows_at(at)
            return self._aligned(member, self._raw_outputs(member, part), len(part))

        with self.cache.small_call(len(rows)):
            proba = fuser.lazy_predict(run_member, len(rows))
        return None if proba is NotImplemented else np.asarray(proba)

    def _prediction_outputs(self, data: Any) -> MemberOutputs:
        """``member_outputs`` for a prediction call: one on few rows writes no cache file (``OutputCache.small_call``)."""
        rows = data if isinstance(data, TextData) else self._data(data, "data")
        with self.cache.small_call(len(rows)):
            return self.member_outputs(rows)

    # --- distillation -------------------------------------------------------------------------------------
    def distill(self, student: Member, train: Any, **options: Any) -> Member:
        """Train a clone of ``student`` (an ``HFEncoder`` or ``TorchMember``) on this fitted ensemble's soft labels
        over ``train``: one model at one model's cost. Kept in ``students_`` and reported by ``evaluate`` beside
        the ensemble and its best member; options: ``temperature`` (2.0), ``alpha`` (0.5, the soft term's weight).
        See ``fusion.ensemble.distill.distill``.

        Example:
            >>> student = ens.distill(HFEncoder("prajjwal1/bert-tiny", name="student"), train)  # doctest: +SKIP
            >>> ens.evaluate(test).model("student").seconds_per_1k  # doctest: +SKIP
            >>> Ensemble.from_member(student).save_pretrained("out/student")  # doctest: +SKIP
        """
        from .distill import distill

        return distill(self, student, train, **options)

    @classmethod
    def from_member(cls, member: Member, **options: Any) -> Ensemble:
        """A fitted ensemble of one fitted member (a distilled student), passed through by ``PickFuser``, so it saves,
        loads and predicts as any ensemble: ``Ensemble.from_member(student).save_pretrained(dir)``; ``options``:
        ``text_column``, ``label_column``, ``cache_dir`` as for the constructor."""
        from .distill import member_ensemble

        return member_ensemble(cls, member, **options)

    # --- evaluation ---------------------------------------------------------------------------------------
    def _fuser_label(self) -> str:
        return next((label for label, f in self.candidates_.items() if f is self.fuser_), self._fitted_fuser().kind)

    def _notes(self, data: TextData) -> list[str]:
        notes = [self.label_note_] if self.label_note_ else []
        if self.fuser_data_ == "train":
            notes.append(f"Fusers learnt from out-of-fold member outputs on the training rows ({self.cv}-fold "
                         "cross-fitting); nothing was trained on these rows.")
        elif self._is_fuser_rows(data):
            notes.append(f"Fusers learnt from these rows; their scores here are out-of-fold ({self.cv}-fold "
                         "cross-fitting of each fuser over these rows), so they are not in-sample.")
        if self.selection_:
            notes.append(_selection_note(self.selection_))
        if self.member_fitting_:
            notes.append("How members were fitted: " + "; ".join(f"{name}: {rule}" for name, rule in
                                                                self.member_fitting_.items()) + ".")
        return notes

    def _is_fuser_rows(self, data: TextData) -> bool:
        return (self.fuser_data_ == "validation" and self._validation is not None
                and data.label_fingerprint == self._validation.label_fingerprint)

    def evaluate(self, data: Any, fusers: Any = None, **report_options: Any) -> Report:
        """The full evaluation report on labelled ``data``: metrics with bootstrap intervals, paired tests of the
        fuser against the best member, calibration, diversity, weights, and accuracy against inference cost.

        Args:
            data: labelled rows.
            fusers: other fitted fusers to compare (a list or ``{name: fuser}``); default: the other candidates.
            **report_options: ``n_bootstrap``, ``seed``, ``title``, ``split``, ``notes`` (see
                ``fusion.evaluation.build_report``).

        Example:
            >>> ens.evaluate(validation).save("out/report")  # report.html, report.md, report.json  # doctest: +SKIP
        """
        from ..evaluation.evaluate import evaluate

        report_options = {**data_facts(data), **report_options}  # a Dataset's name and split, for the title
        rows = data if isinstance(data, TextData) else self._data(data, "evaluation", require_labels=True)
        named = {self._fuser_label(): self._fitted_fuser(), **self._others(fusers)}
        fused = {k: v for k, v in self._cv_proba.items() if k in named} if self._is_fuser_rows(rows) else {}
        notes = [*self._notes(rows), *report_options.pop("notes", [])]
        return evaluate(self, named, rows, fused=fused, notes=notes, **report_options)

    def _others(self, fusers: Any) -> dict[str, Fuser]:
        if fusers is not None:
            return fusers if isinstance(fusers, dict) else {f"{f.kind}-{i}": f for i, f in enumerate(fusers, 2)}
        return {label: f for label, f in self.candidates_.items() if f is not self.fuser_}

    @property
    def report_(self) -> Report | None:
        """The report on the validation split given to ``fit``, built on first use (None without one)."""
        if self._report is None and self._validation is not None:
            self._report = self.evaluate(self._validation, **self._validation_facts)
        return self._report

    @report_.setter
    def report_(self, report: Report | None) -> None:
        self._report = report

    @property
    def metrics_(self) -> dict[str, Any] | None:
        """Accuracy and log-loss per member and of the fuser on the validation split given to ``fit``."""
        if self._metrics is None and self._validation is not None:
            self._metrics = {"split": "validation", "rows": len(self._validation),
                             "fuser_out_of_fold": self.fuser_data_ == "validation",
                             "scores": self.score(self._validation)}
        return self._metrics

    @metrics_.setter
    def metrics_(self, value: dict[str, Any] | None) -> None:
        self._metrics = value

    def score(self, data: Any, y: Any = None) -> dict[str, dict[str, float]] | float:
        """Accuracy and log-loss of every member and of the fuser on labelled ``data`` (fast; no report); or,
        called as scikit-learn does, ``score(texts, y)``: the ensemble's accuracy, a float.

        On the rows the fuser learnt from (``fuser_data="validation"``), the fuser's scores are out-of-fold.

        Returns:
            ``{name: {"accuracy": ..., "log_loss": ...}}``; members first, then ``"fuser:<kind>"``. With ``y``
            (label names or ids, one per text): the fraction of ``predict(texts)`` equal to ``y``.
        """
        if y is not None:
            rows = self._data({self.text_column: list(data), self.label_column: np.asarray(y).tolist()}, "score",
                              require_labels=True)
            return float(np.mean(self._fitted_fuser().predict(self._prediction_outputs(rows)) == rows.labels))
        data = data if isinstance(data, TextData) else self._data(data, "evaluation", require_labels=True)
        outputs = self.member_outputs(data)
        scores = {name: metrics.summary(outputs.probabilities()[:, i].double().numpy(), data.labels)
                  for i, name in enumerate(outputs.member_names)}
        fused = self._cv_proba.get(self._fuser_label()) if self._is_fuser_rows(data) else None
        proba = fused if fused is not None else self._fitted_fuser().predict_proba(outputs)
        scores[f"fuser:{self._fitted_fuser().kind}"] = metrics.summary(proba, data.labels)
        return scores

    # --- scikit-learn's estimator protocol ---------------------------------------------------------------
    _estimator_type = "classifier"  # what scikit-learn before 1.6 reads; later versions read __sklearn_tags__

    @classmethod
    def _get_param_names(cls) -> list[str]:
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments by name (scikit-learn's ``get_params``); with ``deep`` and a ``Fuser`` as
        ``fuser``, its parameters too, as ``fuser__<field>``."""
        params = {name: getattr(self, name) for name in self._get_param_names()}
        if deep and isinstance(self.fuser, Fuser):
            params.update({f"fuser__{key}": value for key, value in self.fuser.get_params(deep=True).items()})
        return params

    def set_params(self, **params: Any) -> Ensemble:
        """Change constructor arguments (scikit-learn's ``set_params``), checked as the constructor checks them;
        ``fuser__<field>`` changes a clone of the fuser (the fuser object given is never modified). What was
        fitted stays until the next ``fit``, as in scikit-learn.

        Raises:
            ConfigError: an unknown parameter (with the closest valid one) or an invalid value.
        """
        names = self._get_param_names()
        given, nested = self.get_params(deep=False), {}
        for key, value in params.items():
            name, _, inner = key.partition("__")
            if name not in names:
                raise ConfigError(f"Ensemble.set_params: unknown parameter {key!r}; valid parameters are: "
                                  f"{', '.join(names)}." + did_you_mean(name, names))
            if inner and not (name == "fuser" and isinstance(given["fuser"], Fuser)):
                raise ConfigError(f"Ensemble.set_params: {key!r} names a parameter inside {name!r}, which holds no "
                                  f"component with parameters ({given[name]!r:.60}); set {name}= itself.")
            if inner:
                nested[inner] = value
            else:
                given[name] = value
        if nested:
            given["fuser"] = given["fuser"].clone().set_params(**nested)
        checked = type(self)(**given)
        for name in names:
            setattr(self, name, getattr(checked, name))
        self.fusers = checked.fusers
        if "cache_dir" in params:
            self.cache = checked.cache
        elif "engine" in params and not isinstance(self.cache_dir, OutputCache):  # a given cache: set by make_cache
            self.cache.engine = checked.cache.engine
        return self

    def __sklearn_clone__(self) -> Ensemble:
        """``sklearn.base.clone``: an unfitted ensemble of fresh clones of the members and fuser specs, sharing the
        output cache and engine (where outputs are kept and computed is not a parameter of what is learnt)."""
        from sklearn.base import clone

        return type(self)(**{name: value if name in ("cache_dir", "engine") else clone(value, safe=False)
                             for name, value in self.get_params(deep=False).items()})

    def __sklearn_tags__(self) -> Any:
        """A classifier whose inputs are texts (a list or 1-D array of strings), not a 2-D numeric array."""
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags(), input_tags=InputTags(two_d_array=False, string=True))

    def __repr__(self) -> str:
        fusers = ", ".join(_short_repr(f) for f in self.fusers)
        state = "not fitted" if self.fuser_ is None else f"fitted, fuser kept: {_short_repr(self.fuser_)}"
        lines = [f"Ensemble(fuser={fusers}, fuser_data={self.fuser_data!r}, cv={self.cv}, seed={self.seed}; {state})"]
        return "\n".join([*lines, *(f"  member {m.name}: {m.describe()}" for m in self.members)])

    # --- persistence --------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, *, overwrite: bool = False,
                        card_data: dict[str, Any] | None = None, bundle_models: bool = False) -> Path:
        """Write config JSON, safetensors weights, skops estimators, the report and a model card; atomically.

        A folder that exists and is neither empty nor a saved ensemble is refused (its contents would be
        replaced) unless ``overwrite=True``. ``card_data`` adds model card metadata that fusion cannot know
        (``huggingface_hub.ModelCardData`` fields such as ``license``, ``datasets``, ``language``,
        ``model_name``, plus ``dataset_name`` for the evaluation results).

        Members are referenced as they were given: hub ids with the commit they resolved to, ``package:``
        models by name. A member whose model is a folder of this machine is saved with that path (a warning
        says so) unless ``bundle_models=True`` copies the folder into the ensemble, which then loads anywhere;
        an ensemble loaded from such a copy keeps it on every later save.

        Example:
            >>> ens.save_pretrained("out/ens", card_data={"license": "mit", "datasets": ["stanfordnlp/sst2"]})  # doctest: +SKIP
            >>> ens.save_pretrained("out/portable", bundle_models=True)  # doctest: +SKIP
        """
        from .persistence import save_ensemble

        return save_ensemble(self, Path(directory), overwrite, card_data, bundle_models)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    revision: str | None = None, commit_message: str | None = None,
                    card_data: dict[str, Any] | None = None, bundle_models: bool = False) -> str:
        """Upload the ensemble, as ``save_pretrained`` writes it, to the hub repository ``repo_id`` (created if
        needed); returns the commit URL. Members must reference hub models (or installed packages, or be
        fine-tuned, which saves their backbone inside): a folder of this machine is refused unless
        ``bundle_models=True`` uploads a copy of it inside the ensemble.

        Example:
            >>> ens.push_to_hub("me/sst2-ensemble", card_data={"license": "mit"})  # doctest: +SKIP
            >>> Ensemble.from_pretrained("me/sst2-ensemble")  # doctest: +SKIP
        """
        from .persistence import push_ensemble

        return push_ensemble(self, repo_id, private=private, token=token, revision=revision,
                             commit_message=commit_message, card_data=card_data, bundle_models=bundle_models)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, engine: str | Engine | None = None,
                        **options: Any) -> Ensemble:
        """Load a saved ensemble, verifying checksums, tensor names and shapes.

        Args:
            directory: what ``save_pretrained`` wrote, or a hub repository id (``ORG/NAME``) that
                ``push_to_hub`` wrote (downloaded once into the Hugging Face cache).
            revision: with a hub id: a branch, tag or commit.
            cache_dir: the output cache (None: the cache home; ``"memory"``: memory only).
            engine: what computes member outputs on large datasets (``"local"``, ``"ray"``), as for the
                constructor; never saved with the ensemble.
            **options: ``fusion.config.LoadOptions`` fields: ``objects`` (Python objects a saved config cannot
                rebuild, by member name: ``{"cnn": {"module": SmallCNN()}}``), ``trusted_types`` (extra skops
                types), ``verify_members`` (check referenced model weights; default True), ``show_progress``,
                ``trust_remote_code`` (run custom modelling code from model repositories: only when this call
                passes True, whatever the saved config says).
        """
        from .persistence import load_ensemble, load_options, resolve_saved

        checked = load_options(options)  # bad options fail before anything is downloaded
        ensemble = load_ensemble(cls, resolve_saved(directory, revision), checked, cache_dir)
        return ensemble if engine is None else ensemble.set_params(engine=engine)


def _selection(candidates: list[Candidate], best: Candidate, mode: str, cv: int,
               labels: np.ndarray | None = None) -> dict[str, Any]:
    member = best.label.removeprefix("member: ") if isinstance(best.fuser, PickFuser) else None
    alone = member_candidate(candidates)
    beats = ({c.label: beats_member(c, alone, labels) for c in candidates if c is not alone}
             if alone is not None and labels is not None else None)
    return {"rows": mode, "cv": cv, "metric": "log_loss", "chosen": best.label,
            "member": member,  # the single member kept when it beat every fuser; else None
            "beats_member": beats,  # per fuser: more accurate than the best member beyond noise
            "scores": {c.label: c.cv_scores for c in candidates}}


def _selection_note(selection: dict[str, Any]) -> str:
    scores = ", ".join(f"{k} {v['log_loss']:.4f} / {v['accuracy']:.4f}" for k, v in selection["scores"].items())
    kept = (f"The member {selection['member']} alone beat every fuser, so it is kept and no fusion is applied: it"
            if selection.get("member") else selection["chosen"])
    if selection.get("metric", "accuracy") == "accuracy":  # an ensemble saved before log-loss selection
        return (f"{kept} was chosen among the candidates by {selection['cv']}-fold cross-validated accuracy on the "
                f"{selection['rows']} rows, not by its score on these rows.")
    return (f"{kept} was chosen among the candidates by {selection['cv']}-fold cross-validated log-loss on the "
            f"{selection['rows']} rows, among the best single member and the fusers more accurate there than it by "
            f"more than noise (a 95% paired interval of the gain above 0; log-loss / accuracy: {scores}), not by its "
            "score on these rows.")



def _short_repr(fuser: Fuser) -> str:
    """A fuser's kind with the fields that differ from its defaults: ``linear(per_class=True)``."""
    try:
        defaults = type(fuser).Config().to_dict()
    except ConfigError:  # a fuser without defaults for every field: show them all
        defaults = {}
    changed = {k: v for k, v in fuser.config.to_dict().items() if defaults.get(k, object()) != v}
    return fuser.kind + (f"({', '.join(f'{k}={v!r}' for k, v in changed.items())})" if changed else "")


def _check_arguments(members: Any, labels: Any, cv: Any, seed: Any) -> None:
    """The constructor's arguments, refused with a ConfigError naming the one at fault and what it accepts."""
    if isinstance(members, Member) or not isinstance(members, Sequence) or isinstance(members, str):
        raise ConfigError(f"members must be a list of members (HFClassifier, HFEncoder, SklearnMember, TorchMember, "
                          f"...); got {type(members).__name__}. Wrap a single member in a list.")
    if not members:
        raise ConfigError("an Ensemble needs at least one member.")
    for index, member in enumerate(members):
        if not isinstance(member, Member):
            raise ConfigError(f"members[{index}] is {type(member).__name__} ({member!r:.60}), not a member; pass "
                              "member objects such as HFClassifier(...), HFEncoder(...), SklearnMember(estimator) or "
                              "TorchMember(module).")
    if not (isinstance(cv, int) and not isinstance(cv, bool)) or cv < 2:
        raise ConfigError(f"cv must be an integer number of folds, at least 2; got {cv!r}.")
    if not (isinstance(seed, int) and not isinstance(seed, bool)):
        raise ConfigError(f"seed must be an integer; got {seed!r}.")
    if labels is not None:
        if isinstance(labels, str) or not isinstance(labels, Sequence) or not all(isinstance(n, str) for n in labels):
            raise ConfigError(f"labels must be a list of label names (strings) in id order; got {labels!r}.")
        repeated = [name for name, count in Counter(labels).items() if count > 1]
        if repeated:
            raise ConfigError(f"labels: duplicate label {repeated[0]!r} in {list(labels)}; every label name must be "
                              "distinct.")
