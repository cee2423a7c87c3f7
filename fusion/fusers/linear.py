"""LinearFuser: learned per-member weights and temperatures, fitted by minimising log-loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..training import TensorRows, TrainConfig, train
from .base import FUSERS, Fuser, MemberOutputs

CONSTRAINTS = ("simplex", "unconstrained")
# A few parameters and a smooth loss over all rows: quasi-Newton steps reach the optimum in a handful of
# epochs (each one L-BFGS step), where AdamW took hundreds and stopped short of it.
DEFAULT_TRAINING = TrainConfig(optimizer="lbfgs", learning_rate=1.0, max_epochs=100, batch_size=None, patience=2,
                               min_delta=1e-7, show_progress=False)


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

    def forward(self, logits: torch.Tensor) -> torch.Tensor:  # [N, M, C] -> [N, C] log-probabilities
        member_logp = (logits / self.log_temperature.exp()).log_softmax(-1)
        if self.constraint == "simplex":
            log_w = self.weight.log_softmax(0)  # mixture weights over members (per class if per_class)
            mixed = torch.logsumexp(member_logp + log_w, dim=1)
            return mixed.log_softmax(-1)  # renormalises when weights differ per class
        return ((member_logp * self.weight).sum(1) + self.bias).log_softmax(-1)


def _nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.nll_loss(model(batch["logits"]), batch["labels"], reduction="none")


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
        train_config: training settings, as a ``TrainConfig`` or its dict.

    Example:
        >>> import torch
        >>> scores = torch.randn(64, 3, 2); labels = scores[:, 0].argmax(-1)  # member 0 is always right
        >>> int(LinearFuser().fit(scores, labels).member_weights().argmax())
        0
    """

    def __init__(self, constraint: str = "simplex", per_class: bool = False, temperature: bool = True,
                 train_config: TrainConfig | dict[str, Any] | None = None) -> None:
        if constraint not in CONSTRAINTS:
            raise ConfigError(f"LinearFuser constraint must be one of {CONSTRAINTS}, got {constraint!r}.")
        self.constraint, self.per_class, self.temperature = constraint, bool(per_class), bool(temperature)
        self.train_config = train_config.to_dict() if isinstance(train_config, TrainConfig) else train_config
        self._config = TrainConfig.from_dict({**DEFAULT_TRAINING.to_dict(), **(self.train_config or {})})

    def _model(self, n_members: int, n_classes: int) -> LinearCombiner:
        return LinearCombiner(n_members, n_classes, self.constraint, self.per_class, self.temperature)

    def _fit(self, outputs: MemberOutputs, labels: torch.Tensor) -> None:
        model = self._model(outputs.n_members, outputs.n_classes)
        self.training_ = train(model, _nll, TensorRows(logits=outputs.logits, labels=labels), self._config,
                               desc="linear fuser")
        self.model_ = model.eval()

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        with torch.inference_mode():
            return self.model_(outputs.logits).exp()

    def member_weights(self) -> np.ndarray:
        weight = self.model_.weight.detach()
        weight = weight.softmax(0) if self.constraint == "simplex" else weight
        return weight.mean(1).numpy()

    def temperatures(self) -> np.ndarray:
        """Learned temperature of each member."""
        return self.model_.log_temperature.detach().exp().squeeze(1).numpy()

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.model_.state_dict().items()}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model_ = self._model(self.n_members_, self.n_classes_)
        self.model_.load_state_dict(state)
        self.model_.eval()
