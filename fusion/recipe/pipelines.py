"""The scikit-learn pipelines a recipe can name (``kind: sklearn`` members, ``pipeline: {name: ...}``)."""

from __future__ import annotations

from typing import Any, Literal

from ..registry import Registry

PIPELINES: Registry[Any] = Registry("scikit-learn pipeline")


def _tfidf(ngram_range: tuple[int, int], min_df: int, max_features: int | None, sublinear_tf: bool, analyzer: str):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=tuple(ngram_range), min_df=min_df, max_features=max_features,
                           sublinear_tf=sublinear_tf, analyzer=analyzer)


@PIPELINES.register("tfidf_logreg")
def tfidf_logreg(ngram_range: tuple[int, int] = (1, 2), min_df: int = 1, max_features: int | None = None,
                 sublinear_tf: bool = True, analyzer: Literal["word", "char", "char_wb"] = "word", C: float = 1.0,
                 max_iter: int = 2000, class_weight: Literal["balanced"] | None = None):
    """TF-IDF n-grams + logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(_tfidf(ngram_range, min_df, max_features, sublinear_tf, analyzer),
                         LogisticRegression(C=C, max_iter=max_iter, class_weight=class_weight))


@PIPELINES.register("tfidf_svm")
def tfidf_svm(ngram_range: tuple[int, int] = (1, 2), min_df: int = 1, max_features: int | None = None,
              sublinear_tf: bool = True, analyzer: Literal["word", "char", "char_wb"] = "word", C: float = 1.0,
              calibration_folds: int = 3):
    """TF-IDF n-grams + a linear SVM, with probabilities from sigmoid calibration."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    return make_pipeline(_tfidf(ngram_range, min_df, max_features, sublinear_tf, analyzer),
                         CalibratedClassifierCV(LinearSVC(C=C), cv=calibration_folds))


@PIPELINES.register("tfidf_nb")
def tfidf_nb(ngram_range: tuple[int, int] = (1, 2), min_df: int = 1, max_features: int | None = None,
             sublinear_tf: bool = True, analyzer: Literal["word", "char", "char_wb"] = "word", alpha: float = 1.0):
    """TF-IDF n-grams + complement naive Bayes."""
    from sklearn.naive_bayes import ComplementNB
    from sklearn.pipeline import make_pipeline

    return make_pipeline(_tfidf(ngram_range, min_df, max_features, sublinear_tf, analyzer), ComplementNB(alpha=alpha))
