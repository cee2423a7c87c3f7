"""``ties``: TIES-Merging (Yadav et al. 2023, "Resolving interference when merging models"): trim each task
vector to its largest entries, elect a sign per entry, average the deltas that agree with it.

Same as mergekit's ``ties`` (magnitude trim, ``consensus="sum"``, ``normalize=True``, ``density=1.0``,
``rescale=None``, ``lambda=1.0``): see :mod:`fusion.merging.methods.task_vectors` for the steps. Variants as
parameters:

- ``trim="tensor"`` (mergekit): each tensor of each task vector keeps its ``int(density * numel)`` largest
  entries. ``trim="model"`` (the original TIES code): each task vector is trimmed once over the whole model: one
  magnitude threshold per model, over all its tensors (computed by :meth:`TiesMerge.model_statistics` in a first
  pass over the model; :func:`fusion.merging.sparsify.model_threshold` says how), so a layer with large updates
  keeps more of its entries than one with small updates.
- ``consensus="count"``: elect the sign held by more weighted deltas instead of the sign of their sum.
- ``rescale``: mergekit's ``rescale: true`` is ``"l1"``.

The original code's merge step differs from mergekit's in two corner cases that fusion, like mergekit, does not
follow: an entry whose deltas sum to exactly 0 gets the model-wide majority sign there (+ here), and it averages
over the non-zero kept deltas without weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...config import one_of
from ...errors import ConfigError
from ..base import MERGE_METHODS, TensorContext
from ..sparsify import magnitude, magnitude_threshold, model_threshold
from .task_vectors import ConsensusConfig, SparseConfig, TaskVectorMerge

THRESHOLDS = "ties_thresholds"  # the key of the per-model thresholds in TensorContext.statistics


@MERGE_METHODS.register("ties")
class TiesMerge(TaskVectorMerge):
    """Trim, elect sign, disjoint mean.

    Args:
        weight: one scale per task vector (None: 1.0 each).
        density: fraction of each task vector kept (1.0; a list for one per model).
        consensus: ``"sum"`` (the paper's) or ``"count"``.
        trim: ``"tensor"`` (mergekit: per tensor) or ``"model"`` (the original code: over the whole model).
        normalize: divide by the summed weights of the deltas of the elected sign (True).
        rescale: None, ``"l1"`` or ``"inverse_density"`` (None).
        lambda_: scale of the merged task vector (1.0; ``lambda`` in recipes).

    Example:
        >>> import torch
        >>> base = torch.zeros(3)
        >>> models = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-3.0, 1.0, 0.25])]
        >>> TiesMerge().merge_tensor(models, base, TensorContext("w"))
        tensor([-3.0000, -2.0000,  0.3750])
        >>> TiesMerge(density=0.5).merge_tensor(models, base, TensorContext("w"))
        tensor([-3., -2.,  0.])
    """

    @dataclass(frozen=True)
    class Config(ConsensusConfig, SparseConfig):
        normalize: bool = True
        trim: str = "tensor"

        constraints: ClassVar = {**SparseConfig.constraints, **ConsensusConfig.constraints,
                                 "trim": (one_of("tensor", "model"), "'tensor' (mergekit) or 'model' (original TIES)")}

    @property
    def whole_model_pass(self) -> bool:  # type: ignore[override]
        """True with ``trim="model"``: the thresholds need every tensor of every task vector first."""
        return self.config.trim == "model"

    def model_statistics(self, deltas: Iterable[tuple[str, Sequence[torch.Tensor]]] | None = None
                         ) -> dict[str, Any]:
        """With ``trim="model"``: ``{"ties_thresholds": [one magnitude threshold per model]}`` from the streamed
        task vectors (``(name, [fine-tune minus base, one per model])``, see ``MergeMethod.model_statistics``):
        one pass per model over the stream, holding one model's magnitudes at a time."""
        if not self.whole_model_pass:
            return {}
        if deltas is None:
            raise ConfigError("ties with trim='model' needs every model's task vectors (name -> fine-tune minus "
                              "base) for its thresholds; pass them to model_statistics, or use trim='tensor'.")
        first = next(iter(deltas), None)
        if first is None:
            raise ConfigError("ties with trim='model': the models have no tensor to merge.")
        densities = self.densities(len(first[1]))
        return {THRESHOLDS: [model_threshold((tensors[m] for _, tensors in deltas if tensors[m].is_floating_point()),
                                             density) for m, density in enumerate(densities)]}

    def sparsify(self, delta: torch.Tensor, model: int, density: float, context: TensorContext,
                 generator: torch.Generator | None) -> torch.Tensor:
        rescale = self.config.rescale
        if not self.whole_model_pass:
            return magnitude(delta, density, rescale=rescale, name=context.name)
        thresholds = context.statistics.get(THRESHOLDS)
        if thresholds is None:
            raise ConfigError(f"tensor {context.name!r}: ties with trim='model' merges with the per-model thresholds "
                              "of a first pass over the whole model; give TensorContext.statistics the dict that "
                              "model_statistics returned.")
        return magnitude_threshold(delta, thresholds[model], density, rescale=rescale)
