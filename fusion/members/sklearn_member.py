"""SklearnMember: any scikit-learn estimator or pipeline with ``predict_proba`` on raw text."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SklearnNotFitted
from sklearn.utils.validation import check_is_fitted

from ..cache import OutputCache, Outputs
from ..data import TextData
from ..errors import ConfigError, NotFittedError, PersistenceError
from ..labels import apply_label_map
from .base import MEMBERS, Member

PROBA_FLOOR = 1e-12  # log-probabilities stay finite when a class never occurred in a fold


def _is_fitted(estimator: Any) -> bool:
    try:
        check_is_fitted(estimator)
        return True
    except (SklearnNotFitted, TypeError):
        return False


@MEMBERS.register("sklearn")
class SklearnMember(Member):
    """A scikit-learn classifier over raw texts (e.g. TF-IDF + logistic regression).

    An unfitted estimator is fitted by the ensemble on its training data (cloned, so yours is untouched); a
    fitted one is used as is. Outputs are log-probabilities. Saved with skops (no pickle).

    Args:
        estimator: anything with ``fit(texts, labels)`` and ``predict_proba(texts)``.
        name: member name (default: the estimator's class name, lower-cased).
        label_map: for a pre-fitted estimator, renames its ``classes_`` to the ensemble's label names.

    Example:
        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.feature_extraction.text import TfidfVectorizer
        >>> from sklearn.linear_model import LogisticRegression
        >>> member = SklearnMember(make_pipeline(TfidfVectorizer(), LogisticRegression()), name="tfidf")
    """

    def __init__(self, estimator: Any, *, name: str | None = None, label_map: Mapping[Any, str] | None = None) -> None:
        if not (hasattr(estimator, "fit") and hasattr(estimator, "predict_proba")):
            raise ConfigError(
                f"SklearnMember needs an estimator with fit and predict_proba; {type(estimator).__name__} lacks one. "
                "For SVMs use probability=True or wrap in CalibratedClassifierCV."
            )
        super().__init__(name or type(estimator).__name__.lower())
        self.label_map = dict(label_map) if label_map else None
        prefitted = _is_fitted(estimator)
        self.estimator = estimator
        self._trainable = not prefitted
        self.labels_: list[str] | None = None  # ensemble labels when fitted by fusion
        self._set_fitted(estimator if prefitted else None)

    def _set_fitted(self, estimator: Any) -> None:
        # Hashed once here rather than per lookup: hashing a fitted pipeline costs milliseconds to seconds.
        self.estimator_ = estimator
        state = joblib.hash(estimator) if estimator is not None else "unfitted:" + joblib.hash(self.estimator)
        self._state_hash = state

    @property
    def trainable(self) -> bool:
        return self._trainable

    @property
    def is_fitted(self) -> bool:
        return self.estimator_ is not None

    def output_labels(self, ensemble_labels: list[str] | None) -> list[str] | None:
        if self.labels_ is not None:
            return self.labels_
        if self.estimator_ is None:
            return None
        classes = list(self.estimator_.classes_)
        if all(isinstance(c, (int, np.integer)) for c in classes) and ensemble_labels and not self.label_map:
            return [ensemble_labels[int(c)] for c in classes]  # integer classes are ids of the ensemble's labels
        return apply_label_map(self.name, [str(c) for c in classes], self.label_map)

    def fingerprint(self) -> str:
        return hashlib.sha256(f"sklearn|{self._state_hash}|{self.labels_}|{self.label_map}".encode()).hexdigest()

    def fit(self, train: TextData, label_names: list[str], cache: OutputCache) -> SklearnMember:
        if not self._trainable:
            return self
        estimator = clone(self.estimator)
        estimator.fit(train.texts, train.labels)
        self.labels_ = list(label_names)
        self._set_fitted(estimator)
        self.fitted_on_ = train.label_fingerprint
        return self

    def compute(self, data: TextData, cache: OutputCache) -> Outputs:
        if self.estimator_ is None:
            raise NotFittedError(f"member {self.name!r}: the estimator is not fitted; call Ensemble.fit first.")
        proba = np.asarray(self.estimator_.predict_proba(data.texts), dtype=np.float64)
        if self.labels_ is not None:  # fitted by fusion: one column per ensemble label, even if unseen in a fold
            full = np.zeros((len(data), len(self.labels_)))
            full[:, np.asarray(self.estimator_.classes_, dtype=np.int64)] = proba
            proba = full
        return {"logits": torch.from_numpy(np.log(np.clip(proba, PROBA_FLOOR, 1.0))).float()}

    def unfitted_copy(self) -> SklearnMember:
        return SklearnMember(clone(self.estimator), name=self.name, label_map=self.label_map) if self._trainable else self

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "estimator": type(self.estimator).__name__,
                "label_map": self.label_map, "labels": self.labels_, "trainable": self._trainable,
                "fitted_on": self.fitted_on_}

    def save(self, directory: Path) -> None:
        import skops.io

        if self.estimator_ is None:
            raise NotFittedError(f"member {self.name!r} is not fitted; fit the ensemble before saving it.")
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(fd)
        try:
            skops.io.dump(self.estimator_, tmp)
            os.replace(tmp, directory / "estimator.skops")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @classmethod
    def from_config(cls, config: dict[str, Any], directory: Path, **options: Any) -> SklearnMember:
        estimator = load_skops(directory / "estimator.skops", f"member {config['name']!r}", options.get("trusted_types"))
        member = cls(estimator, name=config["name"], label_map=config.get("label_map"))
        member.labels_, member._trainable = config.get("labels"), config.get("trainable", False)
        member.fitted_on_ = config.get("fitted_on")
        if member._trainable:  # keep an unfitted spec for cross-fitting, and the fitted estimator for outputs
            member.estimator = clone(estimator)
            member._set_fitted(estimator)
        return member

    def describe(self) -> str:
        return f"scikit-learn `{type(self.estimator).__name__}`"


def load_skops(path: Path, what: str, trusted_types: list[str] | None = None) -> Any:
    """Load a skops file (see ``load_skops_bytes``)."""
    if not path.is_file():
        raise PersistenceError(f"{what}: {path} is missing; restore it or save the ensemble again.")
    return load_skops_bytes(path.read_bytes(), f"{what} ({path.name})", trusted_types)


def load_skops_bytes(data: bytes, what: str, trusted_types: list[str] | None = None) -> Any:
    """Load skops bytes, refusing types outside skops' defaults unless the caller trusts them by name."""
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as err:
        raise PersistenceError(f"{what}: not a readable skops file ({err}).") from err
    refused = sorted(set(untrusted) - set(trusted_types or []))
    if refused:
        raise PersistenceError(
            f"{what}: contains types that skops does not trust by default: {refused}. If you trust this file, "
            f"pass trusted_types={refused} to from_pretrained."
        )
    try:
        return skops.io.loads(data, trusted=untrusted or None)
    except Exception as err:
        raise PersistenceError(f"{what}: not a readable skops file ({err}).") from err
