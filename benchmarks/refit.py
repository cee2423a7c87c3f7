"""The cache-reuse group: the first build of a two-member ensemble against refitting only its fuser on the
cached member outputs (``ens.fuser = LinearFuser(); ens.fit(...)``)."""

from __future__ import annotations

from typing import Any

from .data import Corpus, Split
from .models import MAX_LENGTH, Encoder
from .results import Row
from .settings import Settings
from .timing import Timing, fresh_cache, fresh_state, release, stopwatch

FIRST = "first"
COMPUTED = "member outputs computed: "
NOTHING_COMPUTED = COMPUTED + "0"


def _ensemble(encoder: Encoder, corpus: Corpus, settings: Settings) -> Any:
    """An HFEncoder (frozen backbone, linear head) and TF-IDF + logistic regression, averaged by MeanFuser, with
    an empty memory-only cache (the default cache would find an earlier repetition's outputs on disk)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from fusion import Ensemble, HFEncoder, LinearHead, MeanFuser, SklearnMember

    encoder_member = HFEncoder(encoder.path, head=LinearHead(), max_length=MAX_LENGTH, device=str(settings.device),
                               show_progress=False, name="encoder")
    tfidf = SklearnMember(make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000)), name="tfidf")
    ensemble = Ensemble([encoder_member, tfidf], fuser=MeanFuser(), labels=corpus.label_names, seed=settings.seed)
    ensemble.cache = fresh_cache()
    return ensemble


def run(encoder: Encoder, corpus: Corpus, train: Split, validation: Split, settings: Settings) -> list[Row]:
    """Per repetition: a fresh ensemble's first ``fit``, then two fuser refits; medians over repetitions."""
    from fusion import LinearFuser

    stages = {
        FIRST: "first build: Ensemble.fit(train, validation), MeanFuser",
        "refit-val": "refit: ens.fuser = LinearFuser(); fit(train, validation) (report included)",
        "refit": "refit: ens.fuser = LinearFuser(); fit(train) (fuser only)",
    }
    seconds: dict[str, list[float]] = {key: [] for key in stages}
    computed = {key: 0 for key in stages}  # most member outputs computed (cache misses) in one repetition
    for _ in range(settings.repeats):
        print(f"  {encoder.label} + tfidf: first build and refits ...", flush=True)
        fresh_state()
        ensemble = _ensemble(encoder, corpus, settings)
        seconds[FIRST].append(stopwatch(lambda e=ensemble: e.fit(train.as_dict(), validation.as_dict()),
                                        settings.device))
        computed[FIRST] = max(computed[FIRST], ensemble.cache.misses)
        for key, with_validation in (("refit-val", True), ("refit", False)):
            ensemble.fuser = LinearFuser()
            splits = (train.as_dict(), validation.as_dict()) if with_validation else (train.as_dict(),)
            before = ensemble.cache.misses
            seconds[key].append(stopwatch(lambda e=ensemble, s=splits: e.fit(*s), settings.device))
            computed[key] = max(computed[key], ensemble.cache.misses - before)  # a refit must compute none
        del ensemble
        release(settings.device)
    model = f"2 ({encoder.label} + tfidf)"
    return [Row("refit", key, f"{label}; {COMPUTED}{computed[key]}", model,
                len(train), Timing(seconds[key], None), units=len(train), members=2)
            for key, label in stages.items()]
