"""FeatureFuser: feature-level (late) fusion; a head trained on the members' pooled embeddings.

Each member contributes a block of features: its pooled embedding where it has one (an ``HFEncoder``), else its
log-probabilities; each block is standardised on the fit rows. ``combine="concat"`` concatenates the blocks;
``"attention"`` projects each block to ``hidden`` units and pools them with per-row attention weights over the
members (which ``member_weights`` reports, averaged over the fit rows). A head (one hidden layer, or linear with
``hidden=0`` under concat) maps the result to the classes. Trained through the one training loop by log-loss,
early-stopped on a held-out share (``validation_fraction``) of the fuser's rows.

Example:
    >>> import torch
    >>> scores = torch.randn(200, 2, 2); labels = scores[:, 0].argmax(-1)  # member 0 is always right
    >>> fuser = FeatureFuser(hidden=0).fit(scores, labels)
    >>> float((fuser.predict(scores) == labels.numpy()).mean()) > 0.9
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..config import at_least, in_range, one_of
from ..errors import ConfigError, MemberOutputError
from ..inputs import holdout_split
from ..losses import per_example_cross_entropy
from ..train_config import TrainConfig
from ..training import TensorRows, seeded, train
from .base import FUSERS, Fuser, FuserConfig, MemberOutputs, training_field

COMBINES = ("concat", "attention")
DEFAULT_TRAINING = TrainConfig(learning_rate=3e-3, max_epochs=300, batch_size=256, weight_decay=1e-3, patience=20,
                               min_delta=1e-5, show_progress=False)


class FeatureHead(nn.Module):
    """Member feature blocks ``[rows, sum(dims)]`` -> class logits ``[rows, classes]``."""

    def __init__(self, dims: list[int], n_classes: int, combine: str, hidden: int, dropout: float) -> None:
        super().__init__()
        self.dims, self.combine = list(dims), combine
        if combine == "attention":
            self.project = nn.ModuleList(nn.Linear(d, hidden) for d in dims)
            self.score = nn.Linear(hidden, 1)
            width = hidden
        else:
            width = sum(dims)
        self.head = (nn.Sequential(nn.Dropout(dropout), nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout),
                                   nn.Linear(hidden, n_classes)) if hidden and combine == "concat"
                     else nn.Sequential(nn.Dropout(dropout), nn.Linear(width, n_classes)))

    def attention(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row weights over members ``[rows, members]`` and the pooled vector ``[rows, hidden]``."""
        blocks = features.split(self.dims, dim=1)
        projected = torch.stack([torch.tanh(p(b)) for p, b in zip(self.project, blocks, strict=True)], 1)
        weights = self.score(projected).squeeze(-1).softmax(-1)
        return weights, (weights[:, :, None] * projected).sum(1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.attention(features)[1] if self.combine == "attention" else features)


@FUSERS.register("feature")
class FeatureFuser(Fuser):
    """A trained head on the members' pooled embeddings (their log-probabilities where they have none).

    Args:
        combine: ``"concat"`` (the blocks side by side) or ``"attention"`` (per-row attention over members).
        hidden: hidden units of the head (concat; 0: a linear head) or of each member's projection (attention).
        dropout: dropout on the head's inputs (and hidden layer).
        validation_fraction: share of the fuser's rows held out for early stopping (0: the train loss).
        train_config: training settings (a ``TrainConfig``, or a dict merged over ``DEFAULT_TRAINING``).

    Learned state: the head, each block's mean and scale, which members gave embeddings (``from_embedding_``).
    """

    @dataclass(frozen=True)
    class Config(FuserConfig):
        combine: str = "concat"
        hidden: int = 64
        dropout: float = 0.1
        validation_fraction: float = 0.1
        train_config: TrainConfig = training_field(DEFAULT_TRAINING)

        constraints: ClassVar = {
            "combine": (one_of(*COMBINES), " or ".join(map(repr, COMBINES))),
            "hidden": (at_least(0, integer=True), "an integer >= 0"),
            "dropout": (in_range(0.0, 1.0), "a number in [0, 1)"),
            "validation_fraction": (in_range(0.0, 1.0), "a number in [0, 1)"),
        }

        def validate(self) -> None:
            if self.combine == "attention" and self.hidden == 0:
                raise ConfigError("feature fuser: combine='attention' projects each member to hidden units; give "
                                  "hidden >= 1.")

    sums_to_one = True

    def _blocks(self, outputs: MemberOutputs) -> tuple[list[torch.Tensor], list[bool]]:
        embedded = [e is not None for e in outputs.embeddings]
        logp = outputs.logits.log_softmax(-1)
        return [e.float() if e is not None else logp[:, m] for m, e in enumerate(outputs.embeddings)], embedded

    def _features(self, outputs: MemberOutputs) -> torch.Tensor:
        blocks, embedded = self._blocks(outputs)
        dims = [b.shape[1] for b in blocks]
        if embedded != self.from_embedding_.bool().tolist() or dims != self.dims_.tolist():
            raise MemberOutputError(f"feature fuser: fitted on member features of sizes {self.dims_.tolist()} "
                                    f"(embeddings from {self.from_embedding_.bool().tolist()}); got sizes {dims} "
                                    f"(embeddings from {embedded}). Give it the members it was fitted on.")
        return (torch.cat(blocks, 1) - self.mean_) / self.scale_

    def _fit(self, outputs: MemberOutputs, labels: torch.Tensor) -> None:
        c = self.config
        blocks, embedded = self._blocks(outputs)
        self.from_embedding_ = torch.tensor(embedded, dtype=torch.uint8)
        self.dims_ = torch.tensor([b.shape[1] for b in blocks])
        raw = torch.cat(blocks, 1)
        self.mean_, self.scale_ = raw.mean(0), raw.std(0, unbiased=False).clamp_min(1e-6)
        features = self._features(outputs)
        fit_rows, hold_rows = holdout_split(len(labels), c.validation_fraction, c.train_config.seed)
        with seeded(c.train_config.seed):  # the head's initial weights
            self.head_ = self._head(outputs.n_classes)

        def pick(index: np.ndarray) -> TensorRows:
            index = torch.as_tensor(index)
            return TensorRows(features=features[index], labels=labels[index])

        self.training_ = train(self.head_, _loss, pick(fit_rows), c.train_config,
                               pick(hold_rows) if hold_rows is not None else None, desc="feature fuser")
        self.head_.eval()
        with torch.inference_mode():
            self.attention_ = (self.head_.attention(features)[0].mean(0) if c.combine == "attention"
                               else torch.zeros(0))

    def _head(self, n_classes: int) -> FeatureHead:
        c = self.config
        return FeatureHead(self.dims_.tolist(), n_classes, c.combine, c.hidden, c.dropout)

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        with torch.inference_mode():
            return self.head_(self._features(outputs)).double().softmax(-1)

    def member_weights(self) -> np.ndarray | None:
        """With attention: each member's mean attention weight over the fit rows; with concat, None."""
        return self.attention_.numpy() if self.config.combine == "attention" else None

    def _state(self) -> dict[str, torch.Tensor]:
        return {**{f"head.{k}": v.detach() for k, v in self.head_.state_dict().items()}, "mean_": self.mean_,
                "scale_": self.scale_, "dims_": self.dims_, "from_embedding_": self.from_embedding_,
                "attention_": self.attention_}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.mean_, self.scale_, self.dims_ = state["mean_"], state["scale_"], state["dims_"]
        self.from_embedding_, self.attention_ = state["from_embedding_"], state["attention_"]
        self.head_ = self._head(self.n_classes_)
        self.head_.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
        self.head_.eval()


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return per_example_cross_entropy(model(batch["features"]), batch["labels"])
