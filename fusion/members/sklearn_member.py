"""SklearnMember: any scikit-learn estimator or pipeline with ``predict_proba`` on raw text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NewType

import joblib
import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SklearnNotFitted
from sklearn.utils.validation import check_is_fitted

from ..cache.store import OutputCache, Outputs
from ..config import RECIPE_KEY, LoadOptions, digest, object_field
from ..errors import ConfigError
from ..inputs import TextData
from ..io import load_skops, save_skops
from ..labels import apply_label_map
from .base import MEMBERS, Member, MemberConfig, label_map_field

PROBA_FLOOR = 1e-12  # log-probabilities stay finite when a class never occurred in a fold
ESTIMATOR_FILE = "estimator.skops"
# Attributes that differ between processes for the same estimator: scikit-learn's text vectorizers remember
# ``id(stop_words)`` (a memory address) when fitted.
VOLATILE_ATTRIBUTES = frozenset({"_stop_words_id"})

SklearnEstimator = NewType("SklearnEstimator", object)
"""The type of a scikit-learn estimator field; a recipe spells it as a named pipeline (``PIPELINES``)."""


def _is_fitted(estimator: Any) -> bool:
    try:
        check_is_fitted(estimator)
        return True
    except (SklearnNotFitted, TypeError):
        return False


def _fresh_estimator(estimator: Any) -> Any:
    """An unfitted estimator is cloned; a pre-fitted one is used as is (fusion never refits it)."""
    return estimator if _is_fitted(estimator) else clone(estimator)


def _stable_state(value: Any) -> Any:
    """An estimator's attributes (nested estimators, lists and dicts walked) without ``VOLATILE_ATTRIBUTES``, arrays
    by dtype, shape and bytes."""
    if hasattr(value, "get_params") and hasattr(value, "__dict__"):
        attributes = {k: _stable_state(v) for k, v in vars(value).items() if k not in VOLATILE_ATTRIBUTES}
        return f"{type(value).__module__}.{type(value).__qualname__}", attributes
    if isinstance(value, (list, tuple)):
        return [_stable_state(v) for v in value]
    if isinstance(value, dict):
        return {k: _stable_state(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):  # by value: equal arrays with other strides (a reloaded copy) hash alike
        return value.tolist() if value.dtype == object else (str(value.dtype), value.shape, value.tobytes())
    return value


def estimator_hash(estimator: Any) -> str:
    """A hash of an estimator's parameters and fitted state that is the same in every process.

    Example:
        >>> from sklearn.linear_model import LogisticRegression
        >>> estimator_hash(LogisticRegression()) == estimator_hash(LogisticRegression())
        True
    """
    return joblib.hash(_stable_state(estimator))


def _describe_estimator(estimator: Any) -> dict[str, str]:
    return {"class": f"{type(estimator).__module__}.{type(estimator).__qualname__}", "sha256": estimator_hash(estimator)}


@MEMBERS.register("sklearn")
class SklearnMember(Member):
    """A scikit-learn classifier over raw texts (e.g. TF-IDF + logistic regression) or feature arrays.

    An unfitted estimator is fitted by the ensemble on its training data (a clone: yours is untouched); a
    fitted one is used as is. Outputs are log-probabilities. Saved with skops (no pickle).

    Args:
        estimator: anything with ``fit(texts, labels)`` and ``predict_proba(texts)``; a recipe names one of
            ``fusion.recipe.PIPELINES`` under the key ``pipeline``.
        label_map: for a pre-fitted estimator, renames its ``classes_`` to the ensemble's label names.
        name: member name (default: the estimator's class name, lower-cased).

    Example:
        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.feature_extraction.text import TfidfVectorizer
        >>> from sklearn.linear_model import LogisticRegression
        >>> member = SklearnMember(make_pipeline(TfidfVectorizer(), LogisticRegression()), name="tfidf")
        >>> member.trainable
        True
    """

    @dataclass(frozen=True)
    class Config(MemberConfig):
        estimator: SklearnEstimator = object_field(
            describe=_describe_estimator, copy=_fresh_estimator, metadata={RECIPE_KEY: "pipeline"},
            load_hint='from_pretrained(dir, objects={"MEMBER": {"estimator": estimator}})')
        label_map: Mapping[Any, str] | None = label_map_field()

        def validate(self) -> None:
            if not (hasattr(self.estimator, "fit") and hasattr(self.estimator, "predict_proba")):
                raise ConfigError(
                    f"SklearnMember needs an estimator with fit and predict_proba; {type(self.estimator).__name__} "
                    "lacks one. For SVMs use probability=True or wrap in CalibratedClassifierCV."
                )

        def default_name(self) -> str:
            return type(self.estimator).__name__.lower()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainable = not _is_fitted(self.config.estimator)
        self.estimator_ = None if self._trainable else self.config.estimator

    @property
    def inputs(self) -> str:
        """``"texts"`` when the estimator (or its pipeline's first step) is a scikit-learn text vectorizer."""
        from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer
        from sklearn.pipeline import Pipeline

        first = self.config.estimator
        while isinstance(first, Pipeline) and first.steps:
            first = first.steps[0][1]
        return "texts" if isinstance(first, (CountVectorizer, HashingVectorizer)) else "any"

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
        if all(isinstance(c, (int, np.integer)) for c in classes) and ensemble_labels and not self.config.label_map:
            return [ensemble_labels[int(c)] for c in classes]  # integer classes are ids of the ensemble's labels
        return apply_label_map(self.name, [str(c) for c in classes], self.config.label_map)

    def _fit(self, train: TextData, label_names: list[str], cache: OutputCache) -> None:
        self.estimator_ = clone(self.config.estimator).fit(train.texts, train.labels)

    def state_hash(self) -> str:
        return digest(self.labels_, estimator_hash(self.estimator_))

    def compute(self, data: TextData, cache: OutputCache) -> Outputs:
        self._require_fitted()
        proba = np.asarray(self.estimator_.predict_proba(data.texts), dtype=np.float64)
        if self.labels_ is not None:  # fitted by fusion: one column per ensemble label, even if unseen in a fold
            full = np.zeros((len(data), len(self.labels_)))
            full[:, np.asarray(self.estimator_.classes_, dtype=np.int64)] = proba
            proba = full
        return {"logits": torch.from_numpy(np.log(np.clip(proba, PROBA_FLOOR, 1.0))).float()}

    def fitted_state(self) -> dict[str, Any]:
        return {**super().fitted_state(), "trainable": self._trainable}

    def _save_files(self, directory: Path) -> None:
        save_skops(self.estimator_, directory / ESTIMATOR_FILE)

    @classmethod
    def _objects_from_files(cls, directory: Path, fitted: Mapping[str, Any], options: LoadOptions) -> dict[str, Any]:
        return {"estimator": load_skops(directory / ESTIMATOR_FILE, f"member in {directory.name!r}",
                                        list(options.trusted_types))}

    def _load_files(self, directory: Path, fitted: Mapping[str, Any], options: LoadOptions,
                    restored: Mapping[str, Any]) -> None:
        self.estimator_ = restored["estimator"]  # the saved estimator is the learned state, whatever was passed
        self._trainable = bool(fitted.get("trainable"))
        if self._trainable and _is_fitted(self.config.estimator):  # fitted by fusion: the spec is unfitted
            self.config = self.config.replace(estimator=clone(self.config.estimator))

    def describe(self) -> str:
        return f"scikit-learn `{type(self.config.estimator).__name__}`"

