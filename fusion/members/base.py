"""The small protocol every member follows, and the registry of member kinds."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..cache import OutputCache, Outputs
from ..data import TextData
from ..registry import Registry

MEMBERS: Registry[Member] = Registry("member kind", attribute="kind")


class Member(abc.ABC):
    """A model that turns texts into class scores (and optionally embeddings).

    Outputs are a dict: ``"logits"`` ``[rows, classes]`` in the member's own label order (see
    ``output_labels``; for probabilistic members these are log-probabilities) and, where the member has
    them, ``"embeddings"`` ``[rows, dim]``. The Ensemble caches them and aligns labels by name.

    Subclasses register with ``@MEMBERS.register("kind")`` and implement the abstract methods.
    """

    kind: ClassVar[str]

    def __init__(self, name: str | None) -> None:
        self.name = name or ""
        self.fitted_on_: str | None = None  # label fingerprint of the data this member was fitted on by fusion

    # --- what the member is -------------------------------------------------------------------------
    @property
    def trainable(self) -> bool:
        """True when the member learns something from the ensemble's training data."""
        return False

    @property
    def is_fitted(self) -> bool:
        """True when outputs can be computed."""
        return True

    @abc.abstractmethod
    def output_labels(self, ensemble_labels: list[str] | None) -> list[str] | None:
        """Names of the output columns, in order (None if unknown until fitted)."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A hash that changes whenever the member's outputs could change (weights, settings, head)."""

    # --- what the member does -----------------------------------------------------------------------
    def fit(self, train: TextData, label_names: list[str], cache: OutputCache) -> Member:
        """Learn from ``train`` (labels are ids into ``label_names``); frozen members do nothing."""
        return self

    @abc.abstractmethod
    def compute(self, data: TextData, cache: OutputCache) -> Outputs:
        """Run the model(s) over ``data``; may use ``cache`` for intermediate results (embeddings)."""

    def unfitted_copy(self) -> Member:
        """A copy that has not learned anything yet (for cross-fitting)."""
        return self

    def torch_modules(self) -> list[torch.nn.Module]:
        """The torch modules that run in ``compute`` (loaded ones only); used to count model runs."""
        return []

    # --- persistence --------------------------------------------------------------------------------
    @abc.abstractmethod
    def to_config(self) -> dict[str, Any]:
        """JSON-able description: kind, name, source, settings, checksums of referenced weights."""

    def save(self, directory: Path) -> None:
        """Write the member's own learned files (heads, fine-tuned weights, estimators) into ``directory``.

        Members that learn nothing (a frozen HFClassifier is saved by reference) write nothing.
        """
        return None

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: dict[str, Any], directory: Path, **options: Any) -> Member:
        """Rebuild a saved member; ``directory`` holds what ``save`` wrote."""

    def describe(self) -> str:
        """One line for model cards and logs."""
        return f"{self.kind} {self.name}"
