"""Hyper-parameters of the training loop (:func:`fusion.training.train`): validated, JSON round-trip."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config import Check, Config, at_least, is_bool, is_number, one_of, optional, setting
from .errors import ConfigError

__all__ = ["TrainConfig"]

_PRECISIONS = ("auto", "no", "fp16", "bf16")
_OPTIMIZERS = ("adamw", "lbfgs")
_SCHEDULES = ("constant", "linear")
_POSITIVE_INT = at_least(1, integer=True)

_CHECKS: dict[str, Check] = {
    "learning_rate": (lambda v: is_number(v) and v > 0, "a finite number > 0"),
    "max_epochs": (_POSITIVE_INT, "an integer >= 1"),
    "batch_size": (optional(_POSITIVE_INT), "None (full batch) or an integer >= 1"),
    "weight_decay": (at_least(0), "a finite number >= 0"),
    "grad_accumulation": (_POSITIVE_INT, "an integer >= 1"),
    "patience": (optional(_POSITIVE_INT), "None (never stop early) or an integer >= 1"),
    "min_delta": (at_least(0), "a finite number >= 0"),
    "max_grad_norm": (optional(lambda v: is_number(v) and v > 0), "None (no clipping) or a number > 0"),
    "mixed_precision": (one_of(*_PRECISIONS), f"one of {_PRECISIONS}"),
    "seed": (at_least(0, integer=True), "an integer >= 0"),
    "max_tokens": (optional(_POSITIVE_INT), "None (no token budget) or an integer >= 1"),
    "group_by_length": (is_bool, "True or False"),
    "compile": (is_bool, "True or False"),
    "optimizer": (one_of(*_OPTIMIZERS), f"one of {_OPTIMIZERS}"),
    "lr_schedule": (one_of(*_SCHEDULES), f"one of {_SCHEDULES}"),
    "warmup_fraction": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "show_progress": (is_bool, "True or False"),
}


@dataclass(frozen=True)
class TrainConfig(Config):
    """Hyper-parameters of :func:`train`; validated on construction, round-trips through a JSON-able dict.

    Attributes:
        learning_rate: AdamW learning rate.
        max_epochs: Upper bound on passes over the training rows.
        batch_size: GLOBAL rows per micro-batch (one forward/backward), over all processes; None = all rows.
            An optimizer step sees ``batch_size * grad_accumulation`` rows.
        weight_decay: AdamW (decoupled) weight decay.
        grad_accumulation: Micro-batches per optimizer step (with ``batch_size=None``: the full batch cut
            into this many micro-batches, to save memory).
        patience: Epochs without an improvement > ``min_delta`` of the monitored loss before stopping;
            None never stops early.
        min_delta: Smallest decrease of the monitored loss that counts as an improvement.
        max_grad_norm: Clip the global gradient norm to this; None does not clip.
        mixed_precision: "auto" (bf16 on a CUDA device that supports it, else "no"), "no", "fp16", "bf16".
            Accelerate runs "fp16" as fp32 on CPU.
        seed: Seeds torch's RNG for the run (dropout), restoring the caller's RNG state afterwards, and, as
            ``seed + epoch``, each epoch's row permutation.
        show_progress: A progress bar over epochs on the main process.
        max_tokens: For rows with lengths (tokenised text): at most this many padded tokens per micro-batch,
            as well as at most ``batch_size`` rows; implies length grouping.
        group_by_length: For rows with lengths: micro-batches of similar length (less padding), still
            shuffled every epoch (see ``fusion.batching.grouped_micro_batches``). No effect on a full batch
            (``batch_size=None`` and no ``max_tokens``).
        compile: ``torch.compile`` the model (the training wrapper around it; default backend "inductor").
        optimizer: ``"adamw"`` (mini-batches), or ``"lbfgs"`` for small full-batch problems (fusers): each
            epoch is one L-BFGS step (up to 20 iterations, strong Wolfe line search, step size
            ``learning_rate``, 1.0 is the usual choice); needs ``batch_size=None`` and no weight decay,
            gradient clipping, token budget or fp16.
        lr_schedule: ``"constant"``, or ``"linear"``: decays to zero at the end of ``max_epochs`` (as
            transformers' Trainer does), usual for fine-tuning. AdamW only.
        warmup_fraction: Share of ``max_epochs`` over which the learning rate rises linearly from zero
            (either schedule). AdamW only.

    Raises:
        ConfigError: A value is out of range or of the wrong type; the message names the field.

    Example:
        >>> TrainConfig.from_dict(TrainConfig(batch_size=32).to_dict()).batch_size
        32
    """

    learning_rate: float = 1e-3
    max_epochs: int = 100
    batch_size: int | None = None
    weight_decay: float = 0.0
    grad_accumulation: int = 1
    patience: int | None = 10
    min_delta: float = 1e-4
    max_grad_norm: float | None = None
    mixed_precision: str = "auto"
    seed: int = 0
    show_progress: bool = setting(True)
    max_tokens: int | None = None
    group_by_length: bool = False
    compile: bool = False
    optimizer: str = "adamw"
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.0

    constraints: ClassVar = _CHECKS

    def validate(self) -> None:
        if self.optimizer == "lbfgs":
            clashes = {"batch_size": self.batch_size, "max_tokens": self.max_tokens,
                       "max_grad_norm": self.max_grad_norm, "weight_decay": self.weight_decay or None,
                       "mixed_precision": "fp16" if self.mixed_precision == "fp16" else None,
                       "lr_schedule": "linear" if self.lr_schedule == "linear" else None,
                       "warmup_fraction": self.warmup_fraction or None}
            clashes = {k: v for k, v in clashes.items() if v is not None}
            if clashes:
                raise ConfigError(
                    f"TrainConfig(optimizer='lbfgs') trains on the full batch without weight decay, clipping, fp16 or "
                    f"a learning-rate schedule; it cannot use {clashes}. Leave those at their defaults, or use optimizer='adamw'."
                )
