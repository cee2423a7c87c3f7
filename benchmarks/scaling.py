"""The scaling group: the cost of building an ensemble as members x examples grows, with tiny encoders built
from configs (hidden 32, 2 layers), each with its own tokenizer, so every member does its own work."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from .data import Corpus, cycled
from .models import MAX_LENGTH, save_tiny_encoder, word_piece_tokenizer
from .results import Row
from .settings import Settings
from .timing import fresh_cache, measure, release

TOKENIZER_TEXTS = 3000
LINEAR_TOLERANCE = 1.25  # per-unit cost at the largest size may be at most this times that at the smallest


def tiny_members(corpus: Corpus, count: int, directory: Path) -> list[Path]:
    """``count`` tiny encoders with distinct weights and distinct WordPiece vocabularies."""
    texts = corpus.train.texts[:TOKENIZER_TEXTS]
    return [save_tiny_encoder(directory / f"tiny-{i}", word_piece_tokenizer(texts, 2000 + 16 * i), seed=i)
            for i in range(count)]


def _ensemble(paths: list[Path], corpus: Corpus, settings: Settings) -> Any:
    from fusion import Ensemble, HFEncoder, LinearHead, MeanFuser, TrainConfig

    config = TrainConfig(learning_rate=1e-3, max_epochs=2, batch_size=1024, patience=None, seed=settings.seed,
                         show_progress=False)
    members = [HFEncoder(path, head=LinearHead(), train_config=config, max_length=MAX_LENGTH, name=f"tiny-{i}",
                         device=str(settings.device), show_progress=False) for i, path in enumerate(paths)]
    ensemble = Ensemble(members, fuser=MeanFuser(), labels=corpus.label_names, seed=settings.seed)
    ensemble.cache = fresh_cache()  # every repetition computes everything (the default cache persists on disk)
    return ensemble


def run(corpus: Corpus, settings: Settings, directory: Path) -> list[Row]:
    """``Ensemble.fit(train)`` (embeddings, heads, 5-fold cross-fitting, fuser) at every grid point."""
    paths = tiny_members(corpus, max(settings.scale_members), directory)
    rows = []
    for n_rows, n_members in itertools.product(settings.scale_rows, settings.scale_members):
        print(f"  scaling: {n_members} members x {n_rows} rows ...", flush=True)
        train = cycled(corpus.train, n_rows).as_dict()

        def build(chosen: list[Path] = paths[:n_members], train: dict = train) -> None:
            _ensemble(chosen, corpus, settings).fit(train)

        timing = measure(build, settings.repeats, settings.device)
        rows.append(Row("scaling", f"scale-{n_members}x{n_rows}",
                        "Ensemble.fit(train): tiny encoders, linear heads, 5-fold cross-fitting, MeanFuser",
                        "tiny (hidden 32, 2 layers)", n_rows, timing, units=n_rows * n_members, members=n_members))
        release(settings.device)
    return rows
