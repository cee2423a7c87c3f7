"""The benchmark's data: SST-2 splits read from CSV, seeded subsets, and row counts beyond the pool."""

from __future__ import annotations

import csv
import json
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


def read_split(path: Path) -> Split:
    """A ``text,label`` CSV file."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return Split([row["text"] for row in rows], [int(row["label"]) for row in rows])


def load_corpus(directory: Path) -> Corpus:
    """``train.csv``, ``validation.csv`` and ``labels.json`` (``{"0": "negative", ...}``) of ``directory``."""
    names = json.loads((directory / "labels.json").read_text())
    label_names = [names[key] for key in sorted(names, key=int)]
    return Corpus(read_split(directory / "train.csv"), read_split(directory / "validation.csv"), label_names)


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
