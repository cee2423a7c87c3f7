"""GatingFuser: a mixture of experts at the output level; a small network gives each row its own member weights.

The gate reads what the members said about a row (their log-probabilities, and with ``use_embeddings`` the
pooled embeddings of the members that have them, standardised on the fit rows) and outputs weights over the
members (a softmax at ``temperature``); the fused prediction is ``sum_m g_m(row) * p_m(row)``. It is trained
through the one training loop on the fuser's rows by log-loss, plus ``entropy`` times the gate's mean entropy
(above 0: sharper routing). With fewer than ``min_rows`` rows a per-row gate would overfit, so the gate falls
back to global weights (one learned weight per member, the same for every row), and says so in the log.

Example:
    >>> import torch
    >>> scores = torch.randn(64, 3, 2); labels = scores[:, 1].argmax(-1)  # member 1 is always right
    >>> fuser = GatingFuser(min_rows=10).fit(scores, labels)
    >>> int(fuser.member_weights().argmax())
    1
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..config import at_least, is_bool, is_number
from ..errors import MemberOutputError
from ..losses import per_example_cross_entropy
from ..train_config import TrainConfig
from ..training import TensorRows, seeded, train
from .base import FUSERS, Fuser, FuserConfig, MemberOutputs, training_field

logger = logging.getLogger(__name__)

DEFAULT_TRAINING = TrainConfig(learning_rate=0.01, max_epochs=200, batch_size=None, weight_decay=1e-4, patience=20,
                               min_delta=1e-5, show_progress=False)


class Gate(nn.Module):
    """Features ``[rows, in]`` -> gate logits ``[rows, members]`` (a one-hidden-layer MLP, or, when ``hidden``
    is 0, logits that do not depend on the row: the global-weights fallback)."""

    def __init__(self, in_features: int, n_members: int, hidden: int) -> None:
        super().__init__()
        self.net = (nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, n_members))
                    if hidden else None)
        self.bias = nn.Parameter(torch.zeros(n_members))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.bias.expand(len(features), -1)
        return logits + self.net(features) if self.net is not None else logits


class _Mixture(nn.Module):
    """What the training loop runs: the gate's weights mixing the members' probabilities, in log space."""

    def __init__(self, gate: Gate, temperature: float) -> None:
        super().__init__()
        self.gate, self.temperature = gate, temperature

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        log_g = (self.gate(batch["features"]) / self.temperature).log_softmax(-1)  # [rows, members]
        mixed = torch.logsumexp(batch["member_logp"] + log_g[:, :, None], dim=1)  # [rows, classes]
        return mixed, log_g


@FUSERS.register("gating")
class GatingFuser(Fuser):
    """Per-row member weights from a small gate network (an output-level mixture of experts).

    Args:
        hidden: the gate's hidden units.
        temperature: divides the gate's logits (below 1: sharper weights).
        entropy: weight of the gate's mean entropy in the loss (0: none; above 0: sharper routing).
        use_embeddings: the gate also reads the members' pooled embeddings, where members have them.
        min_rows: with fewer fit rows, global weights (the same for every row) instead of a per-row gate.
        train_config: training settings (a ``TrainConfig``, or a dict merged over ``DEFAULT_TRAINING``).

    Learned state: the gate's weights, the features' mean and scale, ``global_`` (1 when it fell back).
    """

    @dataclass(frozen=True)
    class Config(FuserConfig):
        hidden: int = 32
        temperature: float = 1.0
        entropy: float = 0.0
        use_embeddings: bool = True
        min_rows: int = 200
        train_config: TrainConfig = training_field(DEFAULT_TRAINING)

        constraints: ClassVar = {
            "hidden": (at_least(1, integer=True), "an integer >= 1"),
            "temperature": (lambda v: is_number(v) and v > 0, "a number above 0"),
            "entropy": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
            "use_embeddings": (is_bool, "True or False"),
            "min_rows": (at_least(0, integer=True), "an integer >= 0"),
        }

    sums_to_one = True

    def _features(self, outputs: MemberOutputs) -> torch.Tensor:
        parts = [outputs.logits.log_softmax(-1).flatten(1)]
        if self.config.use_embeddings:
            parts += [e.float() for e in outputs.embeddings if e is not None]
        return torch.cat(parts, 1)

    def _standardised(self, outputs: MemberOutputs) -> torch.Tensor:
        features = self._features(outputs)
        if features.shape[1] != self.mean_.shape[0]:
            raise MemberOutputError(f"gating: the gate was fitted on {self.mean_.shape[0]} features (member "
                                    f"log-probabilities and embeddings) and gets {features.shape[1]}; give it the "
                                    "members it was fitted on, with the same embeddings.")
        return (features - self.mean_) / self.scale_

    def _fit(self, outputs: MemberOutputs, labels: torch.Tensor) -> None:
        c = self.config
        features = self._features(outputs)
        self.mean_, self.scale_ = features.mean(0), features.std(0, unbiased=False).clamp_min(1e-6)
        fallback = len(labels) < c.min_rows
        if fallback:
            logger.info("gating: %d fit rows (< min_rows=%d): global member weights instead of a per-row gate",
                        len(labels), c.min_rows)
        self.global_ = torch.tensor(int(fallback))
        with seeded(c.train_config.seed):  # the gate's initial weights: the same fit twice gives the same gate
            self.gate_ = Gate(features.shape[1], outputs.n_members, 0 if fallback else c.hidden)
        standardised = (features - self.mean_) / self.scale_
        rows = TensorRows(features=standardised, member_logp=outputs.logits.log_softmax(-1), labels=labels)
        entropy = c.entropy

        def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            mixed, log_g = model(batch)
            nll = per_example_cross_entropy(mixed, batch["labels"], log_probabilities=True)
            return nll + entropy * -(log_g.exp() * log_g).sum(-1) if entropy else nll

        model = _Mixture(self.gate_, c.temperature)
        self.training_ = train(model, loss, rows, c.train_config, desc="gating fuser")
        self.gate_.eval()
        with torch.inference_mode():
            self.mean_weights_ = self.gate_weights_of(standardised).mean(0)

    def gate_weights_of(self, features: torch.Tensor) -> torch.Tensor:
        """The gate's member weights ``[rows, members]`` for standardised features."""
        return (self.gate_(features) / self.config.temperature).softmax(-1)

    def gate_weights(self, outputs: MemberOutputs | torch.Tensor | np.ndarray) -> np.ndarray:
        """Each row's member weights ``[rows, members]`` (rows sum to one): where the gate routes each row."""
        outputs = self._check_input(outputs)
        with torch.inference_mode():
            return self.gate_weights_of(self._standardised(outputs)).numpy()

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        with torch.inference_mode():
            logits = self.gate_(self._standardised(outputs)).double() / self.config.temperature
            weights = logits.softmax(-1)  # in float64, so that rows sum to one as closely as the probabilities
            return (outputs.probabilities(torch.float64) * weights[:, :, None]).sum(1)

    def member_weights(self) -> np.ndarray:
        """The gate's mean weight of each member over the fit rows."""
        return self.mean_weights_.numpy()

    def _state(self) -> dict[str, torch.Tensor]:
        return {**{f"gate.{k}": v.detach() for k, v in self.gate_.state_dict().items()}, "mean_": self.mean_,
                "scale_": self.scale_, "global_": self.global_, "mean_weights_": self.mean_weights_}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.mean_, self.scale_, self.global_ = state["mean_"], state["scale_"], state["global_"]
        self.mean_weights_ = state["mean_weights_"]
        self.gate_ = Gate(self.mean_.shape[0], self.n_members_, 0 if int(self.global_) else self.config.hidden)
        self.gate_.load_state_dict({k.removeprefix("gate."): v for k, v in state.items() if k.startswith("gate.")})
        self.gate_.eval()
