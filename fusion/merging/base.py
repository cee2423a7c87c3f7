"""What every merge method shares: its config base, the per-tensor call, the registry.

A merge method combines *parameters*: one tensor of several fine-tunes of one checkpoint (and, for the task-vector
methods, the same tensor of their common base) into one tensor. It is a :class:`~fusion.config.Component` with
nothing learned: a frozen, typed config per method (``TiesMerge.Config``) whose fields are its parameters,
declared once; the model-level driver (:mod:`fusion.merging.merge`) streams tensors through
:meth:`MergeMethod.merge_tensor` one name at a time, so no method ever sees a whole model.

Methods that share their name with mergekit's compute the same tensors for the same parameters; where published
variants differ, the variant is a parameter (named in the method's docstring).

Example:
    >>> import torch
    >>> from fusion.merging import MERGE_METHODS
    >>> linear = MERGE_METHODS.get("linear")(weight=[1.0, 3.0])
    >>> linear.merge_tensor([torch.zeros(2), torch.ones(2)], None, TensorContext("w"))
    tensor([0.7500, 0.7500])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..config import Component, Config, digest, is_number
from ..errors import ConfigError
from ..registry import Registry

MERGE_METHODS: Registry[MergeMethod] = Registry("merge method")

BASE_NEVER, BASE_OPTIONAL, BASE_REQUIRED = "never", "optional", "required"


def _weights_ok(value: Any) -> bool:
    return value is None or (isinstance(value, (list, tuple)) and len(value) > 0 and all(is_number(v) for v in value))


@dataclass(frozen=True)
class TensorContext:
    """What a method may know about the tensor it merges, besides the tensors themselves.

    Attributes:
        name: the parameter's name in the checkpoints (``bert.encoder.layer.0.attention.self.query.weight``).
        is_embedding: the tensor is an input or output embedding matrix (rows per vocabulary entry).
        seed: the seed of this tensor's random draws (a method's ``seed`` mixed with ``name``, so a tensor's
            draws do not depend on the order tensors are merged in), or None for a method without randomness.
        statistics: what a whole-model pass computed, by method (TIES trimming over the whole model keeps its
            per-model magnitude thresholds here); empty for per-tensor methods.
    """

    name: str
    is_embedding: bool = False
    seed: int | None = None
    statistics: Mapping[str, Any] = field(default_factory=dict)

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A ``torch.Generator`` seeded with ``seed`` (ConfigError when the method has none)."""
        if self.seed is None:
            raise ConfigError(f"tensor {self.name!r}: a random merge method needs a seed.")
        return torch.Generator(device=device).manual_seed(self.seed)


@dataclass(frozen=True)
class MergeMethodConfig(Config):
    """Parameters every merge method shares.

    Attributes:
        weight: one weight per fine-tuned model, in the order the models are given (None: 1.0 each); what the
            weight means (a share of an average, a scale of a task vector) is the method's.
    """

    weight: list[float] | None = None

    constraints: ClassVar = {"weight": (_weights_ok, "None or a non-empty list of finite numbers, one per model")}


class MergeMethod(Component):
    """Combines one tensor of several models (and maybe their base) into one.

    Class attributes (what the driver checks before reading any tensor):
        base: ``"never"`` (the method ignores a base model: given one, the driver refuses), ``"optional"`` or
            ``"required"`` (task vectors are differences to the base).
        min_models / max_models: how many fine-tuned models the method takes (``slerp``: exactly two).
        random: the method draws random numbers (it then has a ``seed`` field; ``TensorContext.seed`` is set).
        whole_model_pass: the method needs :meth:`model_statistics` over every tensor before merging any.
    """

    Config: ClassVar[type[MergeMethodConfig]] = MergeMethodConfig
    base: ClassVar[str] = BASE_NEVER
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = None
    random: ClassVar[bool] = False
    whole_model_pass: ClassVar[bool] = False

    def weights(self, n_models: int) -> list[float]:
        """The per-model weights for ``n_models`` models (1.0 each when not given); ConfigError on a count
        mismatch."""
        weight = self.config.weight
        if weight is None:
            return [1.0] * n_models
        if len(weight) != n_models:
            raise ConfigError(f"merge method {self.kind!r}: weight has {len(weight)} values for {n_models} models; "
                              "give one weight per fine-tuned model (the base model takes none).")
        return [float(w) for w in weight]

    def check_models(self, n_models: int, has_base: bool) -> None:
        """Refuse a model count or base this method cannot merge (before any tensor is read)."""
        if n_models < self.min_models or (self.max_models is not None and n_models > self.max_models):
            wanted = (f"exactly {self.min_models}" if self.min_models == self.max_models
                      else f"at least {self.min_models}")
            raise ConfigError(f"merge method {self.kind!r} takes {wanted} fine-tuned models; got {n_models}.")
        if self.base == BASE_REQUIRED and not has_base:
            raise ConfigError(f"merge method {self.kind!r} merges task vectors (fine-tune minus base): give "
                              "base=... (the checkpoint the models were fine-tuned from).")
        if self.base == BASE_NEVER and has_base:
            raise ConfigError(f"merge method {self.kind!r} does not use a base model; drop base=..., or use a task-"
                              "vector method (task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs).")
        self.weights(n_models)

    def tensor_seed(self, name: str) -> int | None:
        """The seed of tensor ``name``'s random draws: the method's ``seed`` mixed with the name (None when the
        method draws nothing)."""
        if not self.random:
            return None
        return int(digest("merge seed", getattr(self.config, "seed", 0), name)[:15], 16)

    def model_statistics(self, deltas: Iterable[tuple[str, Sequence[torch.Tensor]]] | None = None
                         ) -> dict[str, Any]:
        """For ``whole_model_pass`` methods: statistics over every tensor of the models, computed before merging
        any (they reach :meth:`merge_tensor` as ``TensorContext.statistics``). Per-tensor methods have none.

        ``deltas`` streams the task vectors one tensor at a time: each item is ``(name, [delta_0, delta_1, ...])``,
        one float32 (or wider) tensor per fine-tuned model, ``model - base`` (the models' tensors themselves
        without a base), for every tensor the driver merges (heads aligned by label, vocabulary rows cut to the
        shared ones; buffers copied unmerged and a kept head are left out). Iterating it again streams the
        checkpoints again, so a method may make several passes (an exact whole-model quantile, say) while
        holding only what it keeps, never the models."""
        return {}

    def merge_tensor(self, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                     context: TensorContext) -> torch.Tensor:
        """The merged tensor from one same-shaped tensor per fine-tuned model (in float32 or wider) and the base's
        (None without a base). Returns a tensor of that shape; the driver casts it to the output dtype."""
        raise NotImplementedError
