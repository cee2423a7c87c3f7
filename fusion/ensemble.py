"""Ensemble: members + one fuser; fit, predict, evaluate, save_pretrained / from_pretrained."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .cache import OutputCache, Outputs
from .crossfit import out_of_fold_outputs
from .data import TextData, as_text_data, column_values, dataset_label_names
from .errors import ConfigError, DataError, MemberOutputError, NotFittedError
from .evaluation import metrics
from .fusers import FUSERS, Fuser, MeanFuser, MemberOutputs
from .labels import alignment
from .members.base import Member

if TYPE_CHECKING:
    from .evaluation import Report

logger = logging.getLogger(__name__)

FUSER_DATA = ("auto", "train", "validation")


class Ensemble:
    """Several members and one fuser, trained and shipped together.

    Members run once per dataset; their outputs are cached (in memory, and on disk under ``cache_dir``), so
    refitting with another fuser runs no model.

    Args:
        members: the models to combine (``HFClassifier``, ``HFEncoder``, ``SklearnMember``, ...).
        fuser: a ``Fuser`` or a registered fuser name (default ``MeanFuser()``).
        labels: the ensemble's label names, in id order. Default: the training data's ClassLabel names, its
            string labels (sorted), or the first member that names its labels.
        text_column / label_column: column names in the data.
        cache_dir: persist member outputs here (default: memory only).
        fuser_data: rows the fuser learns from. ``"train"``: out-of-fold outputs on the training rows
            (trainable members are cross-fitted with ``cv`` folds), keeping the validation split clean for
            reporting. ``"validation"``: outputs on the validation split (classic blending; validation metrics
            are then in-sample for the fuser). ``"auto"``: ``"train"`` if any member is trained here, else
            ``"validation"`` when one is given.
        cv: folds for cross-fitting.
        seed: seeds the folds.

    Example:
        >>> ens = Ensemble([HFClassifier("a"), SklearnMember(pipeline)], fuser=LinearFuser())  # doctest: +SKIP
        >>> ens.fit(train, validation).predict(["a great film"])  # doctest: +SKIP
        array(['positive'], dtype='<U8')
    """

    def __init__(
        self,
        members: Sequence[Member],
        fuser: Fuser | str | None = None,
        *,
        labels: Sequence[str] | None = None,
        text_column: str = "text",
        label_column: str = "label",
        cache_dir: str | os.PathLike | None = None,
        fuser_data: str = "auto",
        cv: int = 5,
        seed: int = 0,
    ) -> None:
        if not members:
            raise ConfigError("an Ensemble needs at least one member.")
        duplicates = [n for n, k in Counter(m.name for m in members).items() if k > 1]
        if duplicates:
            raise ConfigError(f"member names must be unique; {duplicates} repeat. Pass name= to tell them apart.")
        if fuser_data not in FUSER_DATA:
            raise ConfigError(f"fuser_data must be one of {FUSER_DATA}, got {fuser_data!r}.")
        if cv < 2:
            raise ConfigError(f"cv must be at least 2 folds, got {cv}.")
        self.members = list(members)
        self.fuser = FUSERS.get(fuser)() if isinstance(fuser, str) else (fuser or MeanFuser())
        self.labels = list(labels) if labels is not None else None
        self.text_column, self.label_column = text_column, label_column
        self.cache = OutputCache(cache_dir)
        self.fuser_data, self.cv, self.seed = fuser_data, cv, seed
        self.fuser_data_: str | None = None
        self.metrics_: dict[str, Any] | None = None
        self.report_: Report | None = None

    @property
    def classes_(self) -> np.ndarray:
        """Label names in id order (scikit-learn's name for them)."""
        if self.labels is None:
            raise NotFittedError("the ensemble's labels are not known yet; call fit or pass labels=.")
        return np.asarray(self.labels)

    # --- data and labels ----------------------------------------------------------------------------
    def _data(self, data: Any, where: str, require_labels: bool = False) -> TextData:
        return as_text_data(data, text_column=self.text_column, label_column=self.label_column,
                            label_names=self.labels, require_labels=require_labels, where=where)

    def _resolve_labels(self, train: Any) -> None:
        if self.labels is not None:
            return
        declared = dataset_label_names(train, self.label_column)
        values = [] if isinstance(train, (str, Sequence)) else column_values(train, self.label_column, "train")
        if declared:
            self.labels = declared
        elif values and all(isinstance(v, str) for v in values):
            self.labels = sorted(set(values))
        else:
            named = next((names for m in self.members if (names := m.output_labels(None))), None)
            if named is None:
                raise DataError("cannot tell the label names: the labels are ids and no member names them. "
                                "Pass Ensemble(..., labels=['negative', 'positive', ...]).")
            self.labels = list(named)
            logger.info("label ids are read as %s (the label names of the first member that has them)", self.labels)

    # --- member outputs -----------------------------------------------------------------------------
    def _raw_outputs(self, member: Member, data: TextData) -> Outputs:
        return self.cache.get_or_compute(member.fingerprint(), data.fingerprint, lambda: member.compute(data, self.cache))

    def _aligned(self, member: Member, raw: Outputs, n_rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = raw["logits"]
        names = member.output_labels(self.labels)
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
        return logits[:, alignment(member.name, names, self.labels)], raw.get("embeddings")

    def _stack(self, raw: list[Outputs], n_rows: int) -> MemberOutputs:
        aligned = [self._aligned(m, r, n_rows) for m, r in zip(self.members, raw, strict=True)]
        return MemberOutputs(torch.stack([a[0] for a in aligned], 1), [m.name for m in self.members],
                             [a[1] for a in aligned])

    def member_outputs(self, data: Any) -> MemberOutputs:
        """Aligned outputs of every member on ``data`` (from the cache when already computed)."""
        data = data if isinstance(data, TextData) else self._data(data, "data")
        self._check_members_fitted()
        return self._stack([self._raw_outputs(m, data) for m in self.members], len(data))

    def _check_members_fitted(self) -> None:
        unfitted = [m.name for m in self.members if not m.is_fitted]
        if unfitted:
            raise NotFittedError(f"members {unfitted} are not fitted; call Ensemble.fit(train, validation) first.")

    # --- fitting ------------------------------------------------------------------------------------
    def _trained_here(self, member: Member, train: TextData) -> bool:
        return member.trainable and member.fitted_on_ == train.label_fingerprint

    def _resolve_fuser_data(self, has_validation: bool) -> str:
        if self.fuser_data == "auto":
            return "train" if any(m.trainable for m in self.members) or not has_validation else "validation"
        if self.fuser_data == "validation" and not has_validation:
            raise ConfigError("fuser_data='validation' needs a validation split: call fit(train, validation).")
        return self.fuser_data

    def fit(self, train: Any, validation: Any | None = None) -> Ensemble:
        """Fit trainable members on ``train``, then the fuser; report metrics on ``validation``.

        Members already fitted on the same training data are kept, and cached outputs are reused, so calling
        ``fit`` again after changing ``ens.fuser`` trains only the fuser.

        Raises:
            DataError / LabelMismatchError / MemberOutputError: bad data, labels or member outputs.
        """
        self._resolve_labels(train)
        train_data = self._data(train, "train", require_labels=True)
        val_data = self._data(validation, "validation", require_labels=True) if validation is not None else None
        mode = self._resolve_fuser_data(val_data is not None)
        for member in self.members:
            if member.trainable and not self._trained_here(member, train_data):
                logger.info("fitting member %s", member.name)
                member.fit(train_data, self.labels, self.cache)
        if mode == "train":
            raw = [out_of_fold_outputs(m, train_data, self.labels, self.cache, self.cv, self.seed)
                   if self._trained_here(m, train_data) else self._raw_outputs(m, train_data) for m in self.members]
            fuser_rows, fuser_labels = self._stack(raw, len(train_data)), train_data.labels
        else:
            fuser_rows, fuser_labels = self.member_outputs(val_data), val_data.labels
        logger.info("fitting fuser %s on %d %s rows", self.fuser.name, len(fuser_labels), mode)
        self.fuser.fit(fuser_rows, fuser_labels)
        self.fuser_data_ = mode
        self.metrics_, self.report_ = None, None
        if val_data is not None:
            in_sample = mode == "validation"
            self.metrics_ = {"split": "validation", "rows": len(val_data), "fuser_in_sample": in_sample,
                             "scores": self.score(val_data)}
            note = ["The fuser was fitted on these rows: its scores are in-sample (optimistic)."] if in_sample else []
            self.report_ = self.evaluate(val_data, notes=note)
        return self

    # --- prediction ---------------------------------------------------------------------------------
    def predict_proba(self, data: Any) -> np.ndarray:
        """Fused class probabilities ``[rows, labels]`` for texts, a dataset or a dict of columns."""
        if not self.fuser.is_fitted:
            raise NotFittedError("the ensemble's fuser is not fitted; call Ensemble.fit(train, validation) first.")
        return self.fuser.predict_proba(self.member_outputs(data))

    def predict(self, data: Any) -> np.ndarray:
        """Predicted label names."""
        if not self.fuser.is_fitted:
            raise NotFittedError("the ensemble's fuser is not fitted; call Ensemble.fit(train, validation) first.")
        return self.classes_[self.fuser.predict(self.member_outputs(data))]

    def evaluate(self, data: Any, fusers: Any = None, **report_options: Any) -> Report:
        """The full evaluation report on labelled ``data``: metrics with bootstrap intervals, paired tests of the
        fuser against the best member, calibration, diversity, weights, and accuracy against inference cost.

        Args:
            data: labelled rows.
            fusers: other fitted fusers over the same members to compare (a list or ``{name: fuser}``).
            **report_options: ``n_bootstrap``, ``seed``, ``title``, ``split``, ``notes`` (see
                ``fusion.evaluation.build_report``).

        Example:
            >>> ens.evaluate(validation).save("out/report")  # report.html, report.md, report.json  # doctest: +SKIP
        """
        from .evaluation.evaluate import evaluate

        return evaluate(self, fusers, data, **report_options)

    def score(self, data: Any) -> dict[str, dict[str, float]]:
        """Accuracy and log-loss of every member and of the fuser on labelled ``data`` (fast; no report).

        Returns:
            ``{name: {"accuracy": ..., "log_loss": ...}}``; members first, then ``"fuser:<name>"``.
        """
        data = data if isinstance(data, TextData) else self._data(data, "evaluation", require_labels=True)
        outputs = self.member_outputs(data)
        scores = {name: metrics.summary(outputs.probabilities()[:, i].double().numpy(), data.labels)
                  for i, name in enumerate(outputs.member_names)}
        scores[f"fuser:{self.fuser.name}"] = metrics.summary(self.fuser.predict_proba(outputs), data.labels)
        return scores

    # --- persistence --------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config JSON, safetensors weights, skops estimators and a model card; atomically."""
        from .persistence import save_ensemble

        return save_ensemble(self, Path(directory))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **options: Any) -> Ensemble:
        """Load a saved ensemble, verifying checksums, tensor names and shapes.

        Options: ``cache_dir``, ``heads`` (custom head modules by member name), ``modules`` (TorchMember
        modules by member name), ``trusted_types`` (extra
        skops types), ``verify_members`` (check referenced model weights; default True), ``show_progress``.
        """
        from .persistence import load_ensemble

        return load_ensemble(cls, Path(directory), **options)
