"""Hyper-parameters of the training loop (:func:`fusion.training.train`): validated, JSON round-trip."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from .errors import ConfigError

__all__ = ["TrainConfig"]

_PRECISIONS = ("auto", "no", "fp16", "bf16")
_OPTIMIZERS = ("adamw", "lbfgs")
_SCHEDULES = ("constant", "linear")


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "learning_rate": (lambda v: _num(v) and v > 0, "a finite number > 0"),
    "max_epochs": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: v is None or (_int(v) and v >= 1), "None (full batch) or an integer >= 1"),
    "weight_decay": (lambda v: _num(v) and v >= 0, "a finite number >= 0"),
    "grad_accumulation": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "patience": (lambda v: v is None or (_int(v) and v >= 1), "None (never stop early) or an integer >= 1"),
    "min_delta": (lambda v: _num(v) and v >= 0, "a finite number >= 0"),
    "max_grad_norm": (lambda v: v is None or (_num(v) and v > 0), "None (no clipping) or a number > 0"),
    "mixed_precision": (lambda v: isinstance(v, str) and v in _PRECISIONS, f"one of {_PRECISIONS}"),
    "seed": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "max_tokens": (lambda v: v is None or (_int(v) and v >= 1), "None (no token budget) or an integer >= 1"),
    "group_by_length": (lambda v: isinstance(v, bool), "True or False"),
    "compile": (lambda v: isinstance(v, bool), "True or False"),
    "optimizer": (lambda v: isinstance(v, str) and v in _OPTIMIZERS, f"one of {_OPTIMIZERS}"),
    "lr_schedule": (lambda v: isinstance(v, str) and v in _SCHEDULES, f"one of {_SCHEDULES}"),
    "warmup_fraction": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "show_progress": (lambda v: isinstance(v, bool), "True or False"),
}


@dataclass
class TrainConfig:
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
        compile: ``torch.compile`` the model (through Accelerate's dynamo backend "inductor").
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
    show_progress: bool = True
    max_tokens: int | None = None
    group_by_length: bool = False
    compile: bool = False
    optimizer: str = "adamw"
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name, (valid, requirement) in _CHECKS.items():
            if not valid(getattr(self, name)):
                raise ConfigError(f"TrainConfig.{name} must be {requirement}; got {getattr(self, name)!r}.")
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

    def to_dict(self) -> dict:
        """All fields as a JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from :meth:`to_dict` output; missing keys take their defaults.

        Raises:
            ConfigError: ``d`` is not a dict, has a key that is not a field (the message lists the valid
                keys and the closest match), or holds an invalid value.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"TrainConfig.from_dict expects a dict; got {type(d).__name__}.")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in d if k not in valid)
        if unknown:
            close = difflib.get_close_matches(unknown[0], valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown TrainConfig key(s) {unknown}; valid keys are: {', '.join(valid)}.{hint}"
            )
        return cls(**d)
