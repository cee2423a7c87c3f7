"""PickFuser: no combination at all; one member's probabilities passed through (the best one on the fit rows,
or a named one). As a candidate it lets an ensemble keep a single member when no fuser beats it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..config import optional
from ..errors import ConfigError
from .base import FUSERS, Fuser, FuserConfig, MemberOutputs


def _member_name(value: object) -> bool:
    return isinstance(value, str) and bool(value)


@FUSERS.register("pick")
class PickFuser(Fuser):
    """One member's class probabilities, unchanged.

    Args:
        member: the name of the member to pass through; None (default) picks, at ``fit``, the member with the
            best accuracy on the fit rows (ties: lower log-loss, then the first member).

    Learned state: ``index_`` (the member kept) and each member's accuracy on the fit rows (``accuracy_``).

    Example:
        >>> import torch
        >>> scores = torch.log(torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.3, 0.7], [0.6, 0.4]]]))
        >>> PickFuser().fit(scores, [0, 1]).predict_proba(scores).round(2).tolist()  # member 0 is right twice
        [[0.9, 0.1], [0.3, 0.7]]
    """

    @dataclass(frozen=True)
    class Config(FuserConfig):
        member: str | None = None

        constraints: ClassVar = {"member": (optional(_member_name), "None, or a member's name (a non-empty string)")}

    def _fit(self, outputs: MemberOutputs, labels: torch.Tensor) -> None:
        proba = outputs.probabilities().double()  # [rows, members, classes]
        self.accuracy_ = (proba.argmax(-1) == labels[:, None]).double().mean(0)
        if self.config.member is not None:
            if self.config.member not in outputs.member_names:
                raise ConfigError(f"pick: member {self.config.member!r} is not among the members "
                                  f"{outputs.member_names}; pass one of them, or member=None for the most accurate.")
            self.index_ = torch.tensor(outputs.member_names.index(self.config.member))
            return
        picked = proba[torch.arange(len(labels)), :, labels]  # [rows, members]: each member's probability of the label
        log_loss = -picked.clamp_min(1e-15).log().mean(0)
        order = sorted(range(outputs.n_members), key=lambda m: (-float(self.accuracy_[m]), float(log_loss[m]), m))
        self.index_ = torch.tensor(order[0])

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        return outputs.probabilities()[:, int(self.index_)]

    def member_weights(self) -> np.ndarray:
        weights = np.zeros(self.n_members_)
        weights[int(self.index_)] = 1.0
        return weights

    def table_label(self, member_names: list[str]) -> str:
        """``"member: NAME"``: the member kept, for tables and the ensemble's selection."""
        return f"member: {member_names[int(self.index_)]}"

    def _state(self) -> dict[str, torch.Tensor]:
        return {"index_": self.index_, "accuracy_": self.accuracy_}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.index_, self.accuracy_ = state["index_"], state["accuracy_"]
