"""Shared test helpers: small scikit-learn members, model-run counters, fake members with bad outputs."""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from fusion import SklearnMember
from fusion.config import object_field
from fusion.members.base import Member, MemberConfig


def tfidf_member(name: str = "tfidf") -> SklearnMember:
    return SklearnMember(make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=500)), name=name)


class RunCounter:
    """Counts forward passes of every torch module a member runs and predict_proba calls of sklearn members."""

    def __init__(self, members: list[Member]) -> None:
        self.calls = 0
        self._handles = []
        for member in members:
            for module in member.torch_modules():
                self._handles.append(module.register_forward_hook(self._count))
            estimator = getattr(member, "estimator_", None)
            if estimator is not None:
                original = estimator.predict_proba

                def counted(*args: Any, _original=original, **kwargs: Any):
                    self.calls += 1
                    return _original(*args, **kwargs)

                estimator.predict_proba = counted

    def _count(self, *args: Any) -> None:
        self.calls += 1

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class FakeMember(Member):
    """A member whose outputs are whatever the test says (wrong row counts, NaN, ...); not registered."""

    kind = "fake"

    @dataclass(frozen=True)
    class Config(MemberConfig):
        kind: ClassVar[str] = "fake"
        labels: list[str]
        make_logits: Callable[[int], Any] = object_field(describe=repr, copy=lambda fn: fn,
                                                         load_hint="a fake member cannot be loaded")

    def output_labels(self, ensemble_labels):
        return self.config.labels

    def compute(self, data, cache):
        return {"logits": torch.as_tensor(self.config.make_logits(len(data)), dtype=torch.float32)}


def write_csv(path: Path, data: Mapping[str, Sequence], extra: Mapping[str, Sequence] | None = None) -> None:
    """Columns (``data`` then ``extra``) as a CSV file with a header row."""
    columns = {**data, **(extra or {})}
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values(), strict=True))


def edit_saved_config(directory: Path, change: Callable[[dict], Any], reseal: bool = True) -> None:
    """Apply ``change`` to a saved ensemble's ``fusion_config.json``. With ``reseal`` the config's own checksum is
    recomputed, as a forger would, so that the test reaches the defences behind the checksum."""
    import json

    from fusion.ensemble.persistence import seal

    path = directory / "fusion_config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(seal(config) if reseal else config))


def rival_ensembles(encoder_dir: Path, data: Mapping[str, Any]) -> list:
    """Two fitted ensembles of one structure (a fine-tuned encoder whose backbone is saved in the folder, a TF-IDF
    member, a linear fuser), the second trained on flipped labels: a load that mixed files of the two would give
    probabilities matching neither. Their reports are computed here, not by each process that saves them."""
    from fusion import Ensemble, HFEncoder, LinearFuser, TrainConfig

    finetune = TrainConfig(learning_rate=1e-3, max_epochs=1, batch_size=32, patience=None, show_progress=False)
    ensembles = []
    for flip in (False, True):
        train = dict(data["train"])
        if flip:
            train["label"] = [1 - label for label in train["label"]]
        members = [HFEncoder(encoder_dir, finetune=True, train_config=finetune, name="ft", show_progress=False),
                   tfidf_member()]
        ens = Ensemble(members, fuser=LinearFuser(), labels=["negative", "positive"], cache_dir="memory")
        ens.fit(train, data["validation"])
        assert ens.report_ is not None
        ensembles.append(ens)
    return ensembles
