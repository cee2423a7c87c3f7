"""The benchmark's data: SST-2 splits (read by fusion.dataio), seeded subsets, and row counts beyond the pool."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Split:
    """Texts and integer labels of one split."""

    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def __add__(self, other: Split) -> Split:
        return Split(self.texts + other.texts, self.labels + other.labels)

    def as_dict(self) -> dict[str, list]:
        """The ``{"text", "label"}`` columns fusion and datasets accept."""
        return {"text": self.texts, "label": self.labels}


@dataclass(frozen=True)
class Corpus:
    """The train and validation splits and the label names (in id order)."""

    train: Split
    validation: Split
    label_names: list[str]


def load_corpus(directory: Path) -> Corpus:
    """``train`` and ``validation`` of a dataset directory, read as fusion reads it (``fusion.dataio``), with
    integer labels in the order of ``labels.json``."""
    from fusion.datafiles import DataSpec, load_data

    splits = load_data(DataSpec(path=directory))
    names = splits.labels or sorted({str(v) for v in splits.train["label"]})
    ids = {name: i for i, name in enumerate(names)}

    def split(table: dict[str, list]) -> Split:
        return Split(list(table["text"]), [ids[str(v)] for v in table["label"]])

    return Corpus(split(splits.train), split(splits.validation), names)


def sample(split: Split, n: int | None, seed: int) -> Split:
    """``n`` rows drawn without replacement under ``seed`` (all rows, in order, when ``n`` is None or too big)."""
    if n is None or n >= len(split):
        return split
    index = sorted(random.Random(seed).sample(range(len(split)), n))
    return Split([split.texts[i] for i in index], [split.labels[i] for i in index])


def cycled(split: Split, n: int) -> Split:
    """The first ``n`` rows, starting over from the top when ``n`` exceeds the split (for scaling runs)."""
    index = [i % len(split) for i in range(n)]
    return Split([split.texts[i] for i in index], [split.labels[i] for i in index])
