"""The member contract: a config (what the member is), learned state (what it learned), and outputs.

A member is a :class:`~fusion.config.Component`. Its config's fields are its constructor's parameters; what it
learns in ``fit`` (label names, head weights, a fine-tuned backbone, a fitted estimator) is learned state,
saved by ``save`` and restored by ``load``. The ensemble fits clones of the members it is given, so the
user's member objects stay specifications.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..cache.store import OutputCache, Outputs
from ..config import Check, Component, Config, LoadOptions, coerced, digest, in_range, setting
from ..errors import ConfigError, DataError, NotFittedError, PersistenceError
from ..inputs import TextData
from ..io import atomic_save_tensors, load_tensors, sha256_tensors
from ..registry import Registry
from ..train_config import TrainConfig

MEMBERS: Registry[Member] = Registry("member kind")

STATE_FILE = "state.safetensors"
FRACTION: Check = (in_range(0.0, 1.0), "a number in [0, 1)")  # validation_fraction


def train_config_field(default: TrainConfig | None) -> Any:
    """A ``train_config`` field: a ``TrainConfig``, its dict, or None for ``default``."""
    return coerced(lambda v: default if v is None else v if isinstance(v, TrainConfig) else TrainConfig.from_dict(v),
                   default)


def label_map_field() -> Any:
    """A ``label_map`` field: renames the member's own labels (keys: its label names or ids); None for none."""
    return coerced(lambda v: dict(v) if v else None, None)


def with_progress(config: TrainConfig, show_progress: bool) -> TrainConfig:
    """``config`` with its progress bar off when the member's is off."""
    return config.replace(show_progress=config.show_progress and show_progress)


@dataclass(frozen=True)
class MemberConfig(Config):
    """Base of every member's config: the instance ``name`` (keyword-only; it never changes the outputs, so
    it is not part of the fingerprint). A member kind fills in a default name in ``default_name``."""

    name: str | None = setting(None, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.name:
            object.__setattr__(self, "name", self.default_name())

    def default_name(self) -> str:
        return type(self).kind or "member"


class Member(Component, abc.ABC):
    """A model that turns inputs into class scores (and optionally embeddings).

    Outputs are a dict: ``"logits"`` ``[rows, classes]`` in the member's own label order (see
    ``output_labels``; for probabilistic members these are log-probabilities) and, where the member has
    them, ``"embeddings"`` ``[rows, dim]``. The Ensemble caches them under ``fingerprint`` and aligns labels by
    name.

    Subclasses declare ``Config`` (a ``MemberConfig``), register with ``@MEMBERS.register("kind")`` and
    implement ``compute`` and ``output_labels``; trainable ones implement ``_fit`` and ``state_dict``.
    """

    Config: ClassVar[type[MemberConfig]] = MemberConfig
    #: The member's outputs on a large dataset are cached in shards (``OutputCache.get_or_compute_rows``), computed
    #: by the cache's engine. False for a member whose costly pass is itself cached in shards (an encoder's
    #: backbone pass), so that its own outputs, cheap from that, are computed where they are asked for.
    sharded_outputs: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels_: list[str] | None = None  # the ensemble's label names, once fitted by fusion
        self.fitted_on_: str | None = None  # label fingerprint of the data it was fitted on

    def _reloadable(self) -> tuple[str, ...]:
        """Attributes holding what the member loads again from its files on first use (a model, a tokenizer):
        left out when the member is pickled (sent to a remote worker), which then loads them once itself."""
        return ()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in self._reloadable():
            state[name] = None
        return state

    def compute_rows(self, rows: TextData) -> Outputs:
        """``compute`` on ``rows`` alone, with a throwaway in-memory cache: what a shard of this member's outputs
        is (``fusion.engines.RowJob.run``), in this process or on a remote worker."""
        return self.compute(rows, OutputCache(memory_only=True))

    # --- what the member is -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name or ""

    @property
    def trainable(self) -> bool:
        """True when the member learns something from the ensemble's training data."""
        return False

    @property
    def learns_soft_targets(self) -> bool:
        """True when ``fit`` can learn from a teacher's probabilities (``TextData.soft_targets``, set by
        ``fusion.distill``) as well as hard labels, so the member can be a distillation student."""
        return False

    @property
    def inputs(self) -> str:
        """What the member reads: ``"texts"``, ``"arrays"`` (numeric features ``[rows, ...]``) or ``"any"``."""
        return "any"

    @property
    def expensive_to_fit(self) -> bool:
        """True when fitting costs model runs (fine-tuning): the ensemble then fits it once, not per fold."""
        return False

    @property
    def is_fitted(self) -> bool:
        """True when outputs can be computed."""
        return not self.trainable or self.labels_ is not None

    @abc.abstractmethod
    def output_labels(self, ensemble_labels: list[str] | None) -> list[str] | None:
        """Names of the output columns, in order (None if unknown until fitted)."""

    def describe(self) -> str:
        """One line for model cards and logs."""
        return f"{self.kind} {self.name}"

    # --- what the member does -----------------------------------------------------------------------------
    def fit(self, train: TextData, label_names: list[str], cache: OutputCache) -> Member:
        """Learn from ``train`` (labels are ids into ``label_names``); frozen members learn nothing.

        Fits this object in place: the Ensemble calls it on a ``clone()``, never on the user's member.
        """
        if train.soft_targets is not None and not (self.trainable and self.learns_soft_targets):
            raise ConfigError(refuse_student(self))
        if not self.trainable:
            return self
        self._fit(train, list(label_names), cache)
        self.labels_, self.fitted_on_ = list(label_names), train.label_fingerprint
        self._set_fitted_fingerprint(self.state_hash())
        return self

    def _fit(self, train: TextData, label_names: list[str], cache: OutputCache) -> None:
        """Learn the state (subclasses that train)."""

    @abc.abstractmethod
    def compute(self, data: TextData, cache: OutputCache) -> Outputs:
        """Run the model(s) over ``data``; may use ``cache`` for intermediate results (embeddings)."""

    def torch_modules(self) -> list[torch.nn.Module]:
        """The torch modules that run in ``compute`` (loaded ones only); used to count model runs."""
        return []

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"member {self.name!r} is not fitted; call Ensemble.fit (or fit a clone) first.")

    # --- learned state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Learned tensors (head or module weights), saved as safetensors."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned."""

    def state_hash(self) -> str:
        """Hash of the learned state (computed once per fit or load, for the fingerprint)."""
        return digest(self.labels_, sha256_tensors(self.state_dict()))

    def fitted_state(self) -> dict[str, Any]:
        """Learned state that is not tensors (JSON), saved beside the config."""
        return {"labels": self.labels_, "fitted_on": self.fitted_on_, "fingerprint": self.fingerprint,
                "shapes": {k: list(v.shape) for k, v in self.state_dict().items()}}

    def saved_config(self) -> dict[str, Any]:
        """The config as a saved ensemble records it (``config.to_dict()``; a member whose saved files make some
        field unnecessary may record it portably instead, as a merged member does with its sources)."""
        return self.config.to_dict()

    def save(self, directory: Path) -> dict[str, Any]:
        """Write the learned tensors (``state.safetensors``) and files into ``directory``; returns
        ``fitted_state()`` for the ensemble's config."""
        self._require_fitted()
        state = self.state_dict()
        if state:
            atomic_save_tensors(directory / STATE_FILE, state)
        self._save_files(directory)
        return self.fitted_state()

    def _save_files(self, directory: Path) -> None:
        """Learned state that is not tensors (a skops estimator, a fine-tuned backbone)."""

    @classmethod
    def load(cls, config: Mapping[str, Any], fitted: Mapping[str, Any], directory: Path,
             options: LoadOptions | None = None) -> Member:
        """Rebuild a saved member from its config, its ``fitted_state()`` and the files in ``directory``."""
        options = options or LoadOptions()
        restored = cls._objects_from_files(directory, fitted, options)
        member = cls(cls._saved_config(config, restored, options))
        return member._restore(fitted, directory, options, restored)

    def restore(self, fitted: Mapping[str, Any], directory: Path, options: LoadOptions | None = None) -> Member:
        """Put what ``save`` wrote (``directory``, with ``fitted_state()`` as ``fitted``) into this unfitted
        member, a clone of the spec that was fitted (how an ensemble reuses a fit from an earlier run)."""
        options = options or LoadOptions()
        return self._restore(fitted, directory, options, type(self)._objects_from_files(directory, fitted, options))

    def _restore(self, fitted: Mapping[str, Any], directory: Path, options: LoadOptions,
                 restored: Mapping[str, Any]) -> Member:
        self.labels_, self.fitted_on_ = fitted.get("labels"), fitted.get("fitted_on")
        self._load_files(directory, fitted, options, restored)
        self._load_tensors(directory, fitted)
        if fitted.get("fingerprint"):  # recorded when it was fitted; its files were verified by checksum
            self._fingerprint = fitted["fingerprint"]
        return self

    @classmethod
    def _saved_config(cls, config: Mapping[str, Any], restored: Mapping[str, Any], options: LoadOptions
                      ) -> MemberConfig:
        """The typed config, with object fields from ``options`` or else from the saved files (``restored``)."""
        name = str(config.get("name", ""))
        if restored:  # objects a saved file rebuilds (a scikit-learn estimator), unless the caller passes them
            options = dataclasses.replace(options, objects={**options.objects,
                                                            name: {**restored, **options.objects_for(name)}})
        try:
            return cls.config_from_dict(config, options, name)
        except ConfigError as err:  # name the member, in the message and in the load hint
            raise ConfigError(f"member {name!r}: " + str(err).replace('"MEMBER"', json.dumps(name))) from None

    def _load_tensors(self, directory: Path, fitted: Mapping[str, Any]) -> None:
        """Load ``state.safetensors`` (names and shapes checked against ``fitted``) into the member."""
        shapes = {k: tuple(v) for k, v in (fitted.get("shapes") or {}).items()}
        if not shapes:
            return
        state = load_tensors(directory / STATE_FILE, f"member {self.name!r}", expected_shapes=shapes)
        try:
            self.load_state_dict(state)
        except RuntimeError as err:  # torch's strict load: the module passed again has other layers
            raise PersistenceError(f"member {self.name!r}: the saved weights do not fit its module: {err}. "
                                   "Pass the same module class and sizes that were saved.") from err

    @classmethod
    def _objects_from_files(cls, directory: Path, fitted: Mapping[str, Any], options: LoadOptions) -> dict[str, Any]:
        """Objects the saved files hold, read once, by config field name: the defaults of those object fields
        (the caller's ``options.objects`` come first), and given to ``_load_files``."""
        return {}

    def _load_files(self, directory: Path, fitted: Mapping[str, Any], options: LoadOptions,
                    restored: Mapping[str, Any]) -> None:
        """Restore learned state that is not tensors, and prepare ``load_state_dict`` (build a head)."""


def refuse_student(member: Member) -> str:
    """Why ``member`` cannot be a distillation student (it learns nothing from soft targets), and what can."""
    return (f"member {member.name!r} ({type(member).__name__}, kind {member.kind!r}) cannot learn from an ensemble's "
            "soft labels, so it cannot be a distillation student; use a member that trains on them: HFEncoder "
            "(a head on a frozen or fine-tuned encoder) or TorchMember (any nn.Module on numeric inputs).")


def check_inputs(members: list[Member], data: TextData, where: str) -> None:
    """Refuse (DataError) data a member cannot read: numeric arrays for a text member, texts for an array one."""
    for index, member in enumerate(members):
        if member.inputs == "texts" and data.is_array:
            raise DataError(f"{where}: member [{index}] {member.name!r} reads texts, but the data is a numeric array of "
                            f"shape {tuple(data.texts.shape)}. Pass texts (a list of str, or a text column), or use "
                            "members that read arrays (TorchMember, a SklearnMember on features).")
        if member.inputs == "arrays" and not data.is_array:
            raise DataError(f"{where}: member [{index}] {member.name!r} reads numeric arrays [rows, ...], but the data "
                            "holds texts. Pass feature rows, or use members that read texts.")
