"""The fine-tuning group: transformers' Trainer (default, and batch 128 + length grouping) against fusion's
training loop, one epoch each on the same rows, with validation accuracy."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .data import Corpus, Split
from .inference import encoder_counts
from .models import MAX_LENGTH, Encoder
from .results import Row
from .settings import Settings
from .timing import fresh_cache, measure, release

ANCHORS = ("trainer", "trainer-128")


def _tokenized(tokenizer: Any, split: Split) -> Any:
    import datasets

    def encode(batch: dict[str, list]) -> Any:
        return tokenizer(batch["text"], truncation=True, max_length=MAX_LENGTH)

    return datasets.Dataset.from_dict(split.as_dict()).map(encode, batched=True, remove_columns=["text"])


def _trainer_arguments(settings: Settings, output_dir: str, batch_size: int, lr: float, grouped: bool) -> Any:
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    grouping: dict[str, Any] = {}
    if grouped:  # transformers 5 replaced group_by_length by train_sampling_strategy
        grouping = {"group_by_length": True} if "group_by_length" in fields else {
            "train_sampling_strategy": "group_by_length"}
    bf16 = settings.on_cuda and torch.cuda.is_bf16_supported()
    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=batch_size, per_device_eval_batch_size=128,
        learning_rate=lr, num_train_epochs=1, bf16=bf16, use_cpu=not settings.on_cuda, report_to=[],
        save_strategy="no", logging_strategy="no", eval_strategy="no", disable_tqdm=True, seed=settings.seed,
        **grouping)


def trainer_run(encoder: Encoder, corpus: Corpus, train: Split, settings: Settings, batch_size: int, lr: float,
                grouped: bool) -> Callable[[], Any]:
    """Load, tokenise and train one epoch with ``Trainer``; returns the trainer (timed as a whole)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, set_seed
    from transformers.trainer_callback import PrinterCallback

    def run() -> Any:
        set_seed(settings.seed)
        model = AutoModelForSequenceClassification.from_pretrained(encoder.path, num_labels=len(corpus.label_names))
        tokenizer = AutoTokenizer.from_pretrained(encoder.path)
        with tempfile.TemporaryDirectory() as output_dir:
            args = _trainer_arguments(settings, output_dir, batch_size, lr, grouped)
            trainer = Trainer(model=model, args=args, train_dataset=_tokenized(tokenizer, train),
                              processing_class=tokenizer)
            trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict
            trainer.train()
        return trainer

    return run


def trainer_accuracy(trainer: Any, validation: Split) -> float:
    """Validation accuracy of a trained ``Trainer``'s model."""
    logits = trainer.predict(_tokenized(trainer.processing_class, validation)).predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    return float((np.asarray(logits).argmax(-1) == np.asarray(validation.labels)).mean())


def fusion_run(encoder: Encoder, corpus: Corpus, train: Split, settings: Settings, batch_size: int,
               lr: float) -> Callable[[], Any]:
    """``HFEncoder(finetune=True, head=LinearHead())`` fitted for one epoch on every row (no hold-out), with
    the member's default fine-tuning recipe (``FINETUNE_TRAINING``) at this batch size and learning rate."""
    from fusion import HFEncoder, LinearHead
    from fusion.inputs import as_text_data
    from fusion.members.hf_encoder import FINETUNE_TRAINING

    def run() -> Any:
        config = dataclasses.replace(FINETUNE_TRAINING, learning_rate=lr, max_epochs=1, batch_size=batch_size,
                                     patience=None, seed=settings.seed, show_progress=False)
        member = HFEncoder(encoder.path, finetune=True, head=LinearHead(), train_config=config,
                           validation_fraction=0.0, max_length=MAX_LENGTH, device=str(settings.device),
                           show_progress=False)
        data = as_text_data(train.as_dict(), label_names=corpus.label_names)
        return member.fit(data, corpus.label_names, fresh_cache())

    return run


def fusion_accuracy(member: Any, corpus: Corpus, validation: Split) -> float:
    """Validation accuracy of a fine-tuned member."""
    from fusion.inputs import as_text_data

    logits = member.compute(as_text_data(validation.as_dict(), label_names=corpus.label_names), fresh_cache())
    return float((logits["logits"].argmax(1).numpy() == np.asarray(validation.labels)).mean())


def run(encoder: Encoder, corpus: Corpus, train: Split, validation: Split, settings: Settings) -> list[Row]:
    """Each workload ``settings.repeats`` times; median seconds and median validation accuracy."""
    params, tokens = encoder_counts(encoder, train.texts)
    workloads = [
        ("trainer", "(t1) Trainer default: batch 32, lr 5e-5", trainer_run(encoder, corpus, train, settings, 32, 5e-5,
                                                                           False), trainer_accuracy),
        ("trainer-128", "(t2) Trainer batch 128, group_by_length, lr 1e-4",
         trainer_run(encoder, corpus, train, settings, 128, 1e-4, True), trainer_accuracy),
        ("fusion-32", "fusion loop: HFEncoder finetune defaults (batch 32, lr 5e-5, length-grouped)",
         fusion_run(encoder, corpus, train, settings, 32, 5e-5), None),
        ("fusion-128", "fusion loop: HFEncoder finetune, batch 128, lr 1e-4, length-grouped",
         fusion_run(encoder, corpus, train, settings, 128, 1e-4), None),
    ]
    rows = []
    for key, label, runner, score in workloads:
        print(f"  {encoder.label}: {label} ...", flush=True)
        accuracies: list[float] = []

        def evaluate(result: Any, score: Any = score, accuracies: list[float] = accuracies) -> None:
            accuracies.append(score(result, validation) if score else fusion_accuracy(result, corpus, validation))

        timing = measure(runner, settings.repeats, settings.device, after=evaluate)
        rows.append(Row("finetune", key, label, encoder.label, len(train), timing, units=len(train),
                        flops=6.0 * params * tokens, accuracy=float(np.median(accuracies))))
        release(settings.device)
    return rows
