"""LinearFuser: learned per-member weights and temperatures, fitted by minimising log-loss."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..config import is_bool, one_of
from ..losses import per_example_cross_entropy
from ..train_config import TrainConfig
from ..training import TensorRows, TrainingError, train
from .base import FUSERS, Fuser, FuserConfig, MemberOutputs, training_field

CONSTRAINTS = ("simplex", "unconstrained")
# A few parameters and a smooth loss over all rows: quasi-Newton steps reach the optimum in a handful of
# epochs (each one L-BFGS step), where AdamW took hundreds and stopped short of it.
DEFAULT_TRAINING = TrainConfig(optimizer="lbfgs", learning_rate=1.0, max_epochs=100, batch_size=None, patience=2,
                               min_delta=1e-7, show_progress=False)
# If L-BFGS diverges (a non-finite loss or parameters, e.g. a line search thrown off by extreme scores), the fit
# starts again from uniform weights with AdamW's small, bounded steps: slower, but it cannot overshoot to NaN.
FALLBACK_TRAINING = TrainConfig(optimizer="adamw", learning_rate=0.05, max_epochs=500, batch_size=None, patience=10,
                                min_delta=1e-6, show_progress=False)
_BOOL = (is_bool, "True or False")
logger = logging.getLogger(__name__)


LOG_TEMPERATURE_BOUND = 5.0


class LinearCombiner(nn.Module):
    """log p(class) from member scores: weights w (per member, or per member and class), temperatures T."""

    def __init__(self, n_members: int, n_classes: int, constraint: str, per_class: bool, temperature: bool) -> None:
        super().__init__()
        self.constraint, self.learn_temperature = constraint, temperature
        shape = (n_members, n_classes) if per_class else (n_members, 1)
        start = 0.0 if constraint == "simplex" else 1.0 / n_members  # uniform weights either way
        self.weight = nn.Parameter(torch.full(shape, start))
        self.log_temperature = nn.Parameter(torch.zeros(n_members, 1), requires_grad=temperature)
        self.bias = nn.Parameter(torch.zeros(n_classes), requires_grad=constraint == "unconstrained")

    def temperature(self) -> torch.Tensor:
        """Per-member temperatures, kept within [e^-5, e^5]: a member whose scores are nearly constant would
        otherwise drive its temperature to 0 and the line search into inf/NaN."""
        return self.log_temperature.clamp(-LOG_TEMPERATURE_BOUND, LOG_TEMPERATURE_BOUND).exp()

    def forward(self, logits: torch.Tensor) -> torch.Tensor:  # [N, M, C] -> [N, C] log-probabilities
        member_logp = (logits / self.temperature()).log_softmax(-1)
        if self.constraint == "simplex":
            log_w = self.weight.log_softmax(0)  # mixture weights over members (per class if per_class)
            mixed = torch.logsumexp(member_logp + log_w, dim=1)
            return mixed.log_softmax(-1)  # renormalises when weights differ per class
        return ((member_logp * self.weight).sum(1) + self.bias).log_softmax(-1)


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return per_example_cross_entropy(model(batch["logits"]), batch["labels"], log_probabilities=True)


@FUSERS.register("linear")
class LinearFuser(Fuser):
    """A learned linear combination of members, with a temperature per member.

    ``constraint="simplex"`` mixes member probabilities with non-negative weights summing to one
    (``p = sum_m w_m softmax(z_m / T_m)``); ``"unconstrained"`` adds temperature-scaled member
    log-probabilities with real weights and a class bias (``softmax(sum_m w_m log_softmax(z_m / T_m) + b)``).
    ``per_class=True`` learns one weight per member and class. Trained by minimising log-loss through the
    shared training loop (full batch, L-BFGS, by default; ``train_config={"optimizer": "adamw",
    "batch_size": 256, "learning_rate": 0.05}`` for mini-batches of very many rows).

    Args:
        constraint: ``"simplex"`` or ``"unconstrained"``.
        per_class: one weight per (member, class) instead of per member.
        temperature: learn a temperature per member (else all are 1).
        train_config: training settings: a ``TrainConfig``, or a dict of some of its fields merged over
            ``DEFAULT_TRAINING``.

    Example:
        >>> import torch
        >>> scores = torch.randn(64, 3, 2); labels = scores[:, 0].argmax(-1)  # member 0 is always right
        >>> int(LinearFuser().fit(scores, labels).member_weights().argmax())
        0
    """

    default_candidate = 2

    @dataclass(frozen=True)
    class Config(FuserConfig):
        constraint: str = "simplex"
        per_class: bool = False
        temperature: bool = True
        train_config: TrainConfig = training_field(DEFAULT_TRAINING)

        constraints: ClassVar = {"constraint": (one_of(*CONSTRAINTS), f"one of {CONSTRAINTS}"),
                                 "per_class": _BOOL, "temperature": _BOOL}

    def _model(self, n_members: int, n_classes: int) -> LinearCombiner:
        c = self.config
        return LinearCombiner(n_members, n_classes, c.constraint, c.per_class, c.temperature)

    def _fit(self, outputs: MemberOutputs, labels: torch.Tensor) -> None:
        rows, config = TensorRows(logits=outputs.logits, labels=labels), self.config.train_config
        model = self._model(outputs.n_members, outputs.n_classes)
        try:
            self.training_ = train(model, _loss, rows, config, desc="linear fuser")
            problem = None if _finite(model) else "its parameters became NaN or inf"
        except TrainingError as err:
            if config.optimizer != "lbfgs":
                raise
            problem = str(err)
        if problem is not None:
            if config.optimizer != "lbfgs":
                raise TrainingError(f"linear fuser: {problem}; try a lower learning_rate (now {config.learning_rate}).")
            logger.warning("linear fuser: L-BFGS diverged (%s); fitting again from uniform weights with AdamW "
                           "(learning_rate %s, up to %d epochs)", problem, FALLBACK_TRAINING.learning_rate,
                           FALLBACK_TRAINING.max_epochs)
            model = self._model(outputs.n_members, outputs.n_classes)
            fallback = FALLBACK_TRAINING.replace(seed=config.seed, show_progress=config.show_progress)
            self.training_ = train(model, _loss, rows, fallback, desc="linear fuser (AdamW fallback)")
            if not _finite(model):
                raise TrainingError("linear fuser: both L-BFGS and the AdamW fallback diverged; check the member "
                                    "scores for extreme values.")
        self.model_ = model.eval()

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        with torch.inference_mode():
            return self.model_(outputs.logits).exp()

    def member_weights(self) -> np.ndarray:
        weight = self.model_.weight.detach()
        weight = weight.softmax(0) if self.config.constraint == "simplex" else weight
        return weight.mean(1).numpy()

    def temperatures(self) -> np.ndarray:
        """Learned temperature of each member."""
        return self.model_.temperature().detach().squeeze(1).numpy()

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.model_.state_dict().items()}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model_ = self._model(self.n_members_, self.n_classes_)
        self.model_.load_state_dict(state)
        self.model_.eval()
