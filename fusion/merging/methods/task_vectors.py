"""Generalized task arithmetic: the one implementation behind ``task_arithmetic``, ``ties``, ``dare_linear``,
``dare_ties``, ``breadcrumbs`` and ``breadcrumbs_ties`` (mergekit's ``generalized_task_arithmetic.py``).

Every one of them merges one tensor the same way:

1. task vectors: ``delta_i = t_i - base`` for each fine-tuned model ``i``;
2. sparsification (the method's :meth:`TaskVectorMerge.sparsify`): TIES trims by magnitude, DARE drops at random,
   Breadcrumbs drops outliers and small entries; task arithmetic keeps everything;
3. weighting: ``w_i * delta_i``;
4. sign consensus (the ``*_ties`` methods and ``ties``): per entry, an elected sign (``consensus="sum"``: the
   sign of ``sum_i w_i delta_i``, 0 counting as +; ``"count"``: the sign held by more weighted deltas, a tie
   counting as +); only deltas of that sign are added;
5. ``mixed = sum_i w_i delta_i`` over the deltas kept, divided by the sum of their weights when ``normalize``
   (per entry with consensus: the weights of the deltas of the elected sign; a divisor of 0 is left as 1 —
   without consensus, one below 1e-8 in magnitude), times ``lambda``;
6. ``base + mixed``.

The methods differ in their sparsification, whether they elect signs, and their defaults (mergekit's registry):
``normalize`` is True for ``ties`` only, ``rescale`` is ``"l1"`` for the DARE methods only, ``density`` is 1.0
(no sparsification) unless given, ``gamma`` 0.01, ``lambda`` 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ...config import RECIPE_KEY, is_bool, is_number, one_of, optional
from ...errors import ConfigError
from ..base import BASE_REQUIRED, MergeMethod, MergeMethodConfig, TensorContext
from ..sparsify import RESCALE_TEXT, RESCALES, rescale_field

__all__ = ["TaskVectorConfig", "SparseConfig", "ConsensusConfig", "TaskVectorMerge", "sign_consensus",
           "per_model", "nth", "fraction_ok", "CONSENSUS_METHODS"]

CONSENSUS_METHODS = ("sum", "count")


def fraction_ok(low_open: bool) -> Any:
    """A constraint test: a number in (0, 1] (``low_open``) or [0, 1], or a non-empty list of them (one per model).

    Example:
        >>> fraction_ok(True)(0.5), fraction_ok(True)(0.0), fraction_ok(False)([0.0, 1.0])
        (True, False, True)
    """

    def one(v: Any) -> bool:
        return is_number(v) and (v > 0 if low_open else v >= 0) and v <= 1

    return lambda v: one(v) or (isinstance(v, (list, tuple)) and len(v) > 0 and all(one(x) for x in v))


@dataclass(frozen=True)
class TaskVectorConfig(MergeMethodConfig):
    """Parameters of every task-vector method.

    Attributes:
        weight: one scale per task vector (None: 1.0 each).
        normalize: divide the summed weighted task vectors by the sum of the weights (mergekit's default: False,
            True for ``ties``).
        lambda_: a scale of the merged task vector, after normalising (recipes and mergekit spell it ``lambda``).
    """

    normalize: bool = False
    lambda_: float = field(default=1.0, metadata={RECIPE_KEY: "lambda"})

    constraints: ClassVar = {**MergeMethodConfig.constraints, "normalize": (is_bool, "True or False"),
                             "lambda_": (is_number, "a finite number")}



@dataclass(frozen=True)
class SparseConfig(TaskVectorConfig):
    """Parameters of the methods that sparsify task vectors.

    Attributes:
        density: the fraction of each task vector's entries kept, in (0, 1]; one per model as a list, or one for
            all (mergekit's default 1.0 keeps everything).
        rescale: how the kept entries are rescaled (see :mod:`fusion.merging.sparsify`).
    """

    density: float | list[float] = 1.0
    rescale: str | None = rescale_field(None)

    constraints: ClassVar = {**TaskVectorConfig.constraints,
                             "density": (fraction_ok(True), "a number in (0, 1], or a list of them, one per model"),
                             "rescale": (optional(one_of(*RESCALES)), RESCALE_TEXT)}


@dataclass(frozen=True)
class ConsensusConfig(MergeMethodConfig):
    """The sign-election parameter of the TIES-style methods.

    Attributes:
        consensus: ``"sum"`` (the TIES paper's: the sign of the summed weighted deltas) or ``"count"`` (the sign
            of more weighted deltas).
    """

    consensus: str = "sum"

    constraints: ClassVar = {**MergeMethodConfig.constraints,
                             "consensus": (one_of(*CONSENSUS_METHODS), "'sum' or 'count'")}


def per_model(value: float | Sequence[float], n_models: int, parameter: str, kind: str) -> list[float]:
    """A parameter given once for all models or once per model, as one float per model.

    Example:
        >>> per_model(0.5, 2, "density", "ties"), per_model([0.2, 0.4], 2, "density", "ties")
        ([0.5, 0.5], [0.2, 0.4])
    """
    if isinstance(value, (list, tuple)):
        if len(value) != n_models:
            raise ConfigError(f"merge method {kind!r}: {parameter} has {len(value)} values for {n_models} models; give "
                              f"one {parameter} per fine-tuned model, or a single number for all.")
        return [float(v) for v in value]
    return [float(value)] * n_models


def nth(value: float | Sequence[float], model: int) -> float:
    """Model ``model``'s value of a parameter given once for all or once per model (checked by ``per_model``)."""
    return float(value[model]) if isinstance(value, (list, tuple)) else float(value)


def sign_consensus(weighted: torch.Tensor, method: str) -> torch.Tensor:
    """Which weighted deltas (stacked on dim 0) carry the elected sign of their entry (a bool mask; a zero delta
    never does). ``"sum"``: the sign of the sum; ``"count"``: the sign of more deltas; ties and zeros elect +.

    Example:
        >>> sign_consensus(torch.tensor([[1.0], [-3.0], [1.0]]), "sum").flatten().tolist()
        [False, True, False]
        >>> sign_consensus(torch.tensor([[1.0], [-3.0], [1.0]]), "count").flatten().tolist()
        [True, False, True]
    """
    sign = weighted.sign()
    votes = weighted.sum(0) if method == "sum" else sign.sum(0)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(sign.dtype)
    return sign == elected


class TaskVectorMerge(MergeMethod):
    """The shared implementation (not registered): subclasses choose the sparsification by overriding
    :meth:`sparsify` and elect signs when their config has a ``consensus`` field.

    Example:
        >>> import torch
        >>> from fusion.merging import MERGE_METHODS
        >>> ta = MERGE_METHODS.get("task_arithmetic")(weight=[1.0, 0.5])
        >>> ta.merge_tensor([torch.tensor([2.0]), torch.tensor([5.0])], torch.tensor([1.0]), TensorContext("w"))
        tensor([4.])
    """

    Config: ClassVar[type[TaskVectorConfig]] = TaskVectorConfig
    base: ClassVar[str] = BASE_REQUIRED

    def densities(self, n_models: int) -> list[float]:
        """One density per model (1.0 each for a method without sparsification)."""
        return per_model(getattr(self.config, "density", 1.0), n_models, "density", self.kind)

    def check_models(self, n_models: int, has_base: bool) -> None:
        super().check_models(n_models, has_base)
        self.densities(n_models)

    def sparsify(self, delta: torch.Tensor, model: int, density: float, context: TensorContext,
                 generator: torch.Generator | None) -> torch.Tensor:
        """Model ``model``'s task vector for this tensor after sparsification (here: unchanged)."""
        return delta

    def merge_tensor(self, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                     context: TensorContext) -> torch.Tensor:
        if base is None:
            raise ConfigError(f"tensor {context.name!r}: merge method {self.kind!r} needs the base model's tensor.")
        n = len(tensors)
        self.check_models(n, has_base=True)  # per-model parameter counts (cheap: no tensor is read)
        densities, weights = self.densities(n), self.weights(n)
        generator = context.generator() if self.random else None
        deltas = torch.stack([self.sparsify(t - base, i, densities[i], context, generator)
                              for i, t in enumerate(tensors)])
        w = torch.tensor(weights, dtype=deltas.dtype).view(-1, *[1] * base.ndim)
        weighted = deltas * w
        consensus = getattr(self.config, "consensus", None)
        if consensus is not None:
            keep = sign_consensus(weighted, consensus)
            mixed = (weighted * keep).sum(0)
            divisor = (w * keep).sum(0)
            divisor[divisor == 0] = 1
        else:
            mixed = weighted.sum(0)
            divisor = w.sum(0)
            divisor[divisor.abs() < 1e-8] = 1
        if self.config.normalize:
            mixed = mixed / divisor
        if self.config.lambda_ != 1:
            mixed = mixed * self.config.lambda_
        return base + mixed
