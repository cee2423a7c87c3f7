"""What every fuser shares: the input container, the registry, fit/predict checks and persistence."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ConfigError, MemberOutputError, NotFittedError, PersistenceError
from ..registry import Registry

FUSERS: Registry[Fuser] = Registry("fuser")


@dataclass
class MemberOutputs:
    """Aligned outputs of all members on the same rows: what a fuser learns from.

    Attributes:
        logits: ``[rows, members, classes]`` scores in the ensemble's label order (log-probabilities for
            probabilistic members; any real scores otherwise).
        member_names: one per member.
        embeddings: per member, ``[rows, dim]`` or None.

    Example:
        >>> MemberOutputs(torch.zeros(4, 2, 3)).probabilities().shape
        torch.Size([4, 2, 3])
    """

    logits: torch.Tensor
    member_names: list[str] = field(default_factory=list)
    embeddings: list[torch.Tensor | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.logits = torch.as_tensor(self.logits, dtype=torch.float32)
        if self.logits.ndim != 3:
            raise MemberOutputError(
                f"member outputs must be [rows, members, classes], got shape {tuple(self.logits.shape)}."
            )
        self.member_names = self.member_names or [f"member{i}" for i in range(self.logits.shape[1])]
        self.embeddings = self.embeddings or [None] * self.logits.shape[1]
        if not torch.isfinite(self.logits).all():
            bad = sorted({self.member_names[m] for m in torch.nonzero(~torch.isfinite(self.logits))[:, 1].tolist()})
            raise MemberOutputError(f"members {bad} produced NaN or inf scores; check their inputs and weights.")

    @property
    def n_rows(self) -> int:
        return self.logits.shape[0]

    @property
    def n_members(self) -> int:
        return self.logits.shape[1]

    @property
    def n_classes(self) -> int:
        return self.logits.shape[2]

    def probabilities(self) -> torch.Tensor:
        """Per-member class probabilities, softmax over classes."""
        return self.logits.softmax(-1)

    def subset(self, rows: Sequence[int] | np.ndarray | torch.Tensor) -> MemberOutputs:
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        return MemberOutputs(self.logits[rows], self.member_names, [e[rows] if e is not None else None for e in self.embeddings])


def as_member_outputs(outputs: MemberOutputs | torch.Tensor | np.ndarray) -> MemberOutputs:
    """Accept MemberOutputs or a ``[rows, members, classes]`` array of scores."""
    return outputs if isinstance(outputs, MemberOutputs) else MemberOutputs(torch.as_tensor(np.asarray(outputs)))


class Fuser:
    """Base class: hyper-parameters in ``__init__`` (stored under the same names), learned state in ``_``.

    Subclasses register with ``@FUSERS.register("name")`` and implement ``_fit`` and ``_predict_proba``;
    learned tensors go in ``state_dict()`` so that ``save_pretrained`` can write them as safetensors.
    """

    name: ClassVar[str]
    uses_embeddings: ClassVar[bool] = False

    # --- hyper-parameters ---------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, read back from attributes of the same names."""
        return {p: getattr(self, p) for p in inspect.signature(type(self).__init__).parameters if p != "self"}

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}``; ``from_config`` rebuilds an equal, unfitted fuser."""
        return {"name": self.name, "params": self.get_params()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Fuser:
        fuser_cls = FUSERS.get(config.get("name", "<missing>"))
        params = dict(config.get("params", {}))
        allowed = set(inspect.signature(fuser_cls.__init__).parameters) - {"self"}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ConfigError(f"fuser {fuser_cls.name!r} has no parameters {unknown}; valid ones: {sorted(allowed)}.")
        return fuser_cls(**params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # --- learning -----------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "n_classes_")

    def fit(self, outputs: MemberOutputs | torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray) -> Fuser:
        """Learn from member outputs on labelled rows."""
        outputs = as_member_outputs(outputs)
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if labels.ndim != 1:
            raise MemberOutputError(
                f"{self.name}: labels must be a 1-D sequence of class ids (one per row); got shape {tuple(labels.shape)}."
            )
        if labels.shape != (outputs.n_rows,):
            raise MemberOutputError(f"{self.name}: {outputs.n_rows} rows of member outputs but {labels.shape[0]} labels.")
        if outputs.n_rows == 0:
            raise MemberOutputError(f"{self.name}: cannot fit on zero rows.")
        if labels.min() < 0 or labels.max() >= outputs.n_classes:
            raise MemberOutputError(f"{self.name}: labels must be ids in 0..{outputs.n_classes - 1}.")
        self.n_members_, self.n_classes_ = outputs.n_members, outputs.n_classes
        self._fit(outputs, labels)
        return self

    def _check_input(self, outputs: MemberOutputs | torch.Tensor | np.ndarray) -> MemberOutputs:
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit (or Ensemble.fit) first.")
        outputs = as_member_outputs(outputs)
        if (outputs.n_members, outputs.n_classes) != (self.n_members_, self.n_classes_):
            raise MemberOutputError(
                f"{self.name} was fitted on {self.n_members_} members x {self.n_classes_} classes, "
                f"but got {outputs.n_members} x {outputs.n_classes}."
            )
        return outputs

    def predict_proba(self, outputs: MemberOutputs | torch.Tensor | np.ndarray) -> np.ndarray:
        """Fused class probabilities ``[rows, classes]`` (float64, rows sum to one)."""
        proba = self._predict_proba(self._check_input(outputs)).double()
        return (proba / proba.sum(-1, keepdim=True)).numpy()

    def predict(self, outputs: MemberOutputs | torch.Tensor | np.ndarray) -> np.ndarray:
        """Fused class ids ``[rows]``."""
        return self.predict_proba(outputs).argmax(-1)

    def member_weights(self) -> np.ndarray | None:
        """Each member's share in the fused output, where the method defines one (for reports)."""
        return None

    def _fit(self, outputs: MemberOutputs, labels: torch.Tensor) -> None:
        raise NotImplementedError

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        raise NotImplementedError

    # --- persistence --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Learned state as tensors (sizes included), for safetensors."""
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; nothing to save.")
        return {"n_members_": torch.tensor(self.n_members_), "n_classes_": torch.tensor(self.n_classes_),
                **self._state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> Fuser:
        """Restore what ``state_dict`` returned."""
        try:
            self.n_members_, self.n_classes_ = int(state["n_members_"]), int(state["n_classes_"])
            self._load_state({k: v for k, v in state.items() if k not in ("n_members_", "n_classes_")})
        except KeyError as err:
            raise PersistenceError(f"{self.name} state lacks tensor {err}; the file belongs to another fuser.") from err
        except RuntimeError as err:  # torch's strict load_state_dict: wrong names or shapes
            raise PersistenceError(f"{self.name} state does not match this fuser: {err}") from err
        return self

    def _state(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass


class FixedWeightsFuser(Fuser):
    """Shared by fusers whose only state is fixed per-member weights (mean, vote): nothing is learned but
    their validation against the number of members, at ``fit``."""

    def __init__(self, weights: Sequence[float] | None = None) -> None:
        self.weights = list(weights) if weights is not None else None

    def _fit(self, outputs: MemberOutputs, labels: torch.Tensor) -> None:
        self.weights_ = check_weights(self.name, self.weights, outputs.n_members)

    def member_weights(self) -> np.ndarray:
        return self.weights_.numpy()

    def _state(self) -> dict[str, torch.Tensor]:
        return {"weights_": self.weights_}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.weights_ = state["weights_"]


def check_weights(name: str, weights: Sequence[float] | None, n_members: int) -> torch.Tensor:
    """Validate fixed per-member weights (None: uniform)."""
    if weights is None:
        return torch.full((n_members,), 1.0 / n_members)
    tensor = torch.as_tensor(list(weights), dtype=torch.float32)
    if tensor.shape != (n_members,) or not torch.isfinite(tensor).all() or (tensor < 0).any() or tensor.sum() <= 0:
        raise ConfigError(
            f"{name}: weights must be {n_members} non-negative numbers (one per member) with a positive sum; "
            f"got {list(weights)}."
        )
    return tensor / tensor.sum()
