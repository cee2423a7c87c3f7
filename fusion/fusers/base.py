"""What every fuser shares: its config base, the input container, the registry, fit/predict checks and
persistence.

A fuser is a :class:`~fusion.config.Component`: a frozen, typed config per kind (``LinearFuser.Config``) whose
fields are the constructor's parameters, plus the state it learns in ``fit`` (tensors, through
``state_dict()``; anything else, such as a scikit-learn meta-learner, as files through ``save_files`` /
``load_files``). ``fuser.kind`` is the registered kind (``"linear"``); fusers have no instance name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..config import Component, Config, LoadOptions, coerced, coercion, is_number, optional
from ..errors import ConfigError, MemberOutputError, NotFittedError, PersistenceError
from ..io import sha256_tensors
from ..registry import Registry
from ..train_config import TrainConfig

FUSERS: Registry[Fuser] = Registry("fuser")


def default_fusers() -> list[Fuser]:
    """Fresh specs of every registered kind with a ``default_candidate`` rank, in rank order: what an
    ``Ensemble`` compares when no fuser is named (the best single member is one more candidate).

    Example:
        >>> [f.kind for f in default_fusers()]
        ['mean', 'linear', 'stacking', 'caruana']
    """
    kinds = sorted((FUSERS.get(k).default_candidate, k) for k in FUSERS.names() if FUSERS.get(k).default_candidate > 0)
    return [FUSERS.get(kind)() for _, kind in kinds]


@dataclass
class MemberOutputs:
    """Aligned outputs of all members on the same rows: what a fuser learns from.

    Attributes:
        logits: ``[rows, members, classes]`` scores in the ensemble's label order (log-probabilities for
            probabilistic members; any real scores otherwise).
        member_names: one per member.
        embeddings: per member, ``[rows, dim]`` or None.
        costs: per member, what running it costs in seconds per 1,000 rows (a number, or an
            :class:`~fusion.cache.store.EntryCost` whose shared passes count once for members run together), None
            where unknown; ``costs`` None when no member's is known. ``Ensemble`` fills it from its output cache;
            cost-aware fusers (``cascade``) read it.

    Example:
        >>> MemberOutputs(torch.zeros(4, 2, 3)).probabilities().shape
        torch.Size([4, 2, 3])
    """

    logits: torch.Tensor
    member_names: list[str] = field(default_factory=list)
    embeddings: list[torch.Tensor | None] = field(default_factory=list)
    costs: list[Any] | None = None

    def __post_init__(self) -> None:
        self.logits = torch.as_tensor(self.logits, dtype=torch.float32)
        if self.logits.ndim != 3:
            raise MemberOutputError(
                f"member outputs must be [rows, members, classes], got shape {tuple(self.logits.shape)}."
            )
        self.member_names = self.member_names or [f"member{i}" for i in range(self.logits.shape[1])]
        self.embeddings = self.embeddings or [None] * self.logits.shape[1]
        if self.costs is not None:
            self.costs = list(self.costs)
            if len(self.costs) != self.logits.shape[1]:
                raise MemberOutputError(f"costs: {len(self.costs)} values for {self.logits.shape[1]} members; give one "
                                        "per member (None where unknown).")
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

    def probabilities(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Per-member class probabilities, softmax over classes (computed in ``dtype``, default the scores')."""
        return self.logits.to(dtype or self.logits.dtype).softmax(-1)

    def subset(self, rows: Sequence[int] | np.ndarray | torch.Tensor) -> MemberOutputs:
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        return MemberOutputs(self.logits[rows], self.member_names, [e[rows] if e is not None else None for e in self.embeddings],
                             self.costs)

    def members(self, index: Sequence[int]) -> MemberOutputs:
        """The members at ``index`` (in that order), with their names, embeddings and costs.

        Example:
            >>> MemberOutputs(torch.zeros(4, 3, 2), costs=[1.0, None, 3.0]).members([2, 0]).costs
            [3.0, 1.0]
        """
        index = [int(i) for i in index]
        return MemberOutputs(self.logits[:, index], [self.member_names[i] for i in index],
                             [self.embeddings[i] for i in index],
                             None if self.costs is None else [self.costs[i] for i in index])


def as_member_outputs(outputs: MemberOutputs | torch.Tensor | np.ndarray) -> MemberOutputs:
    """Accept MemberOutputs or a ``[rows, members, classes]`` array of scores."""
    return outputs if isinstance(outputs, MemberOutputs) else MemberOutputs(torch.as_tensor(np.asarray(outputs)))


# --- configs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuserConfig(Config):
    """Base of every fuser's config: each kind nests its own ``class Config(FuserConfig)``."""


def training_field(default: TrainConfig) -> Any:
    """A ``train_config`` field: a ``TrainConfig`` as given, a partial dict merged over ``default``, or None
    for ``default``; always stored as the full ``TrainConfig``.

    Example:
        >>> @dataclass(frozen=True)
        ... class Demo(Config):
        ...     train_config: TrainConfig = training_field(TrainConfig(max_epochs=7))
        >>> Demo(train_config={"seed": 3}).train_config.max_epochs
        7
    """

    def convert(value: TrainConfig | Mapping[str, Any] | None) -> TrainConfig:
        if value is None or isinstance(value, TrainConfig):
            return default if value is None else value
        if not isinstance(value, Mapping):
            raise ConfigError(f"train_config must be a TrainConfig, a dict of its fields or None; got "
                              f"{type(value).__name__}.")
        return TrainConfig.from_dict({**default.to_dict(), **value})

    return coerced(convert, default)


# --- the fuser -------------------------------------------------------------------------------------------------


class Fuser(Component):
    """Base class: the config holds the hyper-parameters, fitted attributes end in ``_``.

    Subclasses nest ``class Config(FuserConfig)``, register with ``@FUSERS.register("kind")`` and implement
    ``_fit`` and ``_predict_proba``; learned tensors go in ``_state()`` so that ``state_dict()`` can be
    written as safetensors. ``Fuser(**fields)`` and ``Fuser(config)`` both build one.
    """

    Config: ClassVar[type[FuserConfig]] = FuserConfig
    uses_embeddings: ClassVar[bool] = False
    # True where ``_predict_proba`` returns float64 probability rows already (an average of them): dividing
    # by the row sum again would move them off the reference value by rounding.
    sums_to_one: ClassVar[bool] = False
    # Above 0 for the kinds ``Ensemble(members)`` compares when no fuser is named (``default_fusers``), in
    # this order (an exact tie goes to the earlier): kinds quick to cross-fit on cached outputs and sound on a
    # few hundred rows. Gating and feature fusion need more rows and minutes of training, so they are named.
    default_candidate: ClassVar[int] = 0

    # --- config ---------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any], options: LoadOptions | None = None) -> Fuser:
        """An unfitted fuser from ``to_config()`` output, looked up by kind in ``FUSERS``.

        Args:
            config: ``{"kind": ..., **fields}``; the format-1 form ``{"name": ..., "params": {...}}`` (what a
                ``fusion_config.json`` of format version 1 holds) is accepted too.
            options: load options; ``options.objects["fuser"]`` gives objects a config cannot rebuild.

        Returns:
            A new, unfitted fuser of that kind.

        Raises:
            UnknownNameError: an unknown kind (listing the registered ones, with a did-you-mean).
            ConfigError: no kind, an unknown field, or an invalid value.

        Example:
            >>> Fuser.from_config({"kind": "linear", "per_class": True}).config.per_class
            True
        """
        data = _current_form(config)
        kind = data.pop("kind", None)
        if kind is None:
            raise ConfigError(f"a fuser config needs a 'kind' (one of {', '.join(FUSERS.names())}); got the keys "
                              f"{sorted(map(str, data))}.")
        fuser_cls = FUSERS.get(kind)
        if not issubclass(fuser_cls, cls):
            raise ConfigError(f"{cls.__name__}.from_config got kind {kind!r}, a {fuser_cls.__name__}; call "
                              "Fuser.from_config for any kind.")
        return fuser_cls(fuser_cls.config_from_dict(_coerced_first(fuser_cls.Config, data), options, name="fuser"))

    # --- learning -------------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "n_classes_")

    def fit(self, outputs: MemberOutputs | torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray) -> Fuser:
        """Learn from member outputs on labelled rows (in place); sets the fitted ``fingerprint``.

        Raises:
            MemberOutputError: labels that are not one class id per row.
        """
        outputs = as_member_outputs(outputs)
        labels = self._check_labels(outputs, labels)
        self._fit(outputs, labels)
        self.n_members_, self.n_classes_ = outputs.n_members, outputs.n_classes  # fitted only once _fit succeeded
        self._set_fitted_fingerprint(self.state_hash())
        return self

    def _check_labels(self, outputs: MemberOutputs, labels: Sequence[int] | np.ndarray) -> torch.Tensor:
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if labels.ndim != 1:
            raise MemberOutputError(
                f"{self.kind}: labels must be a 1-D sequence of class ids (one per row); got shape {tuple(labels.shape)}."
            )
        if labels.shape != (outputs.n_rows,):
            raise MemberOutputError(f"{self.kind}: {outputs.n_rows} rows of member outputs but {labels.shape[0]} labels.")
        if outputs.n_rows == 0:
            raise MemberOutputError(f"{self.kind}: cannot fit on zero rows.")
        if labels.min() < 0 or labels.max() >= outputs.n_classes:
            raise MemberOutputError(f"{self.kind}: labels must be ids in 0..{outputs.n_classes - 1}.")
        return labels

    def _check_input(self, outputs: MemberOutputs | torch.Tensor | np.ndarray) -> MemberOutputs:
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit (or Ensemble.fit) first.")
        outputs = as_member_outputs(outputs)
        if (outputs.n_members, outputs.n_classes) != (self.n_members_, self.n_classes_):
            raise MemberOutputError(
                f"{self.kind} was fitted on {self.n_members_} members x {self.n_classes_} classes, "
                f"but got {outputs.n_members} x {outputs.n_classes}."
            )
        return outputs

    def predict_proba(self, outputs: MemberOutputs | torch.Tensor | np.ndarray) -> np.ndarray:
        """Fused class probabilities ``[rows, classes]`` (float64, rows sum to one)."""
        proba = self._predict_proba(self._check_input(outputs)).double()
        return proba.numpy() if self.sums_to_one else (proba / proba.sum(-1, keepdim=True)).numpy()

    def predict(self, outputs: MemberOutputs | torch.Tensor | np.ndarray) -> np.ndarray:
        """Fused class ids ``[rows]``."""
        return self.predict_proba(outputs).argmax(-1)

    def member_weights(self) -> np.ndarray | None:
        """Each member's share in the fused output, where the method defines one (for reports)."""
        return None

    def member_usage(self, outputs: MemberOutputs | torch.Tensor | np.ndarray) -> np.ndarray | None:
        """The share of ``outputs``' rows each member is run on when predicting them (``[members]``), for fusers
        that run some members on some rows only (``cascade``); None: every member on every row."""
        return None

    def lazy_predict(self, run_member: Callable[[int, np.ndarray], tuple[torch.Tensor, torch.Tensor | None]],
                     n_rows: int) -> Any:
        """Fused probabilities ``[rows, classes]`` computed by asking for member outputs only where needed, or
        ``NotImplemented`` (the default) for fusers that need every member on every row.

        ``run_member(m, rows)`` returns member ``m``'s aligned scores ``[len(rows), classes]`` on the given row
        positions and its embeddings (or None); ``Ensemble.predict_proba`` passes one that runs the member on
        those rows only.
        """
        return NotImplemented

    def table_label(self, member_names: list[str]) -> str | None:
        """A fitted fuser's name in tables when its kind says too little (``PickFuser``: ``"member: NAME"``)."""
        return None

    def _fit(self, outputs: MemberOutputs, labels: torch.Tensor) -> None:
        raise NotImplementedError

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        raise NotImplementedError

    # --- learned state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Learned state as tensors (sizes included), for safetensors.

        Raises:
            NotFittedError: before ``fit``.
        """
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; nothing to save.")
        return {"n_members_": torch.tensor(self.n_members_), "n_classes_": torch.tensor(self.n_classes_),
                **self._state()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> Fuser:
        """Restore what ``state_dict`` returned (in place); sets the fitted ``fingerprint``.

        Raises:
            PersistenceError: the state lacks a tensor or has other shapes (another fuser's state).
        """
        try:
            self.n_members_, self.n_classes_ = int(state["n_members_"]), int(state["n_classes_"])
            self._load_state({k: v for k, v in state.items() if k not in ("n_members_", "n_classes_")})
        except KeyError as err:
            raise PersistenceError(f"{self.kind} state lacks tensor {err}; the file belongs to another fuser.") from err
        except RuntimeError as err:  # torch's strict load_state_dict: wrong names or shapes
            raise PersistenceError(f"{self.kind} state does not match this fuser: {err}") from err
        self._set_fitted_fingerprint(self.state_hash())
        return self

    def state_hash(self) -> str:
        """Hash of the learned state (computed once per fit or load, for the ``fingerprint``)."""
        return sha256_tensors(self.state_dict())

    def save_files(self, directory: Path) -> None:
        """Write learned state that is not tensors (a scikit-learn meta-learner as skops) into ``directory``
        (the saved ensemble's ``fuser/`` folder, which exists); most fusers write nothing.

        Raises:
            NotFittedError: before ``fit``.
        """
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; nothing to save.")

    def load_files(self, directory: Path, options: LoadOptions | None = None) -> Fuser:
        """Read what ``save_files`` wrote in ``directory`` (in place), before ``load_state_dict``; ``options``
        carries ``trusted_types`` for skops files."""
        return self

    def _state(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass


def _current_form(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"kind": ..., **fields}``; a format-1 ``{"name": ..., "params": {...}}`` is mapped to it."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"a fuser config is a dict {{'kind': ..., **fields}}; got {type(config).__name__}.")
    if "name" in config and "kind" not in config:
        return {"kind": config["name"], **(config.get("params") or {})}
    return dict(config)


def _coerced_first(config: type[FuserConfig], data: dict[str, Any]) -> dict[str, Any]:
    """Saved dicts of coerced fields converted by the field itself (a partial ``train_config`` merges over the
    kind's default), before ``from_dict`` decodes the rest."""
    convert = {f.name: coercion(f) for f in dataclasses.fields(config)}
    return {k: convert[k](v) if isinstance(v, Mapping) and convert.get(k) else v for k, v in data.items()}


# --- fixed per-member weights ----------------------------------------------------------------------------------

WEIGHTS_TEXT = "None, or a list of non-negative numbers (one per member) with a positive sum"


def valid_weights(weights: Any) -> bool:
    """A non-empty list (or tuple) of finite non-negative numbers with a positive sum."""
    return (isinstance(weights, (list, tuple)) and all(is_number(w) and w >= 0 for w in weights)
            and sum(weights) > 0)


def _weights_list(value: Any) -> Any:
    """Arrays and tuples of weights become a list (others are left for the constraint to refuse)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class WeightsConfig(FuserConfig):
    """Config of the fusers whose only parameter is fixed per-member weights (mean, vote).

    Attributes:
        weights: one non-negative weight per member (normalised to sum to one); None for equal weights.
    """

    weights: list[float] | None = coerced(_weights_list, None)

    constraints: ClassVar = {"weights": (optional(valid_weights), WEIGHTS_TEXT)}


class FixedWeightsFuser(Fuser):
    """Shared by fusers whose only state is fixed per-member weights (mean, vote): nothing is learned but
    their check against the number of members, at ``fit``."""

    Config: ClassVar[type[WeightsConfig]] = WeightsConfig

    def _fit(self, outputs: MemberOutputs, labels: torch.Tensor) -> None:
        self.weights_ = check_weights(self.kind, self.config.weights, outputs.n_members)

    def member_weights(self) -> np.ndarray:
        return self.weights_.numpy()

    def _state(self) -> dict[str, torch.Tensor]:
        return {"weights_": self.weights_}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.weights_ = state["weights_"]


def check_weights(name: str, weights: Sequence[float] | None, n_members: int) -> torch.Tensor:
    """Validate fixed per-member weights (None: uniform) and normalise them to sum to one.

    Raises:
        ConfigError: not ``n_members`` non-negative finite numbers with a positive sum.

    Example:
        >>> check_weights("mean", [3, 1], 2).tolist()
        [0.75, 0.25]
    """
    if weights is None:
        return torch.full((n_members,), 1.0 / n_members)
    if not valid_weights(weights) or len(weights) != n_members:
        raise ConfigError(
            f"{name}: weights must be {n_members} non-negative numbers (one per member) with a positive sum; "
            f"got {list(weights)}."
        )
    tensor = torch.as_tensor(list(weights), dtype=torch.float32)
    return tensor / tensor.sum()
