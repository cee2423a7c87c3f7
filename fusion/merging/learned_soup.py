"""Learned soups: mixing coefficients of several fine-tunes learned on labelled held-out rows.

Wortsman et al. 2022 ("Model soups", the *learned soup*): the soup's parameters are ``sum_i a_i * theta_i``,
and the coefficients ``a`` are trained by gradient descent on the held-out rows' cross-entropy, one set per
model or one per layer. Here the coefficients of each group of tensors are a softmax over one logit per model
(a convex combination, starting from the uniform soup), trained through fusion's one training loop
(:func:`fusion.training.train`: a GPU when present); the fine-tunes' tensors stay frozen.

Learning holds every model's floating-point tensors at once (the forward pass mixes them), unlike the other
merge methods, which stream one tensor at a time. What it learns is a plain merge method,
:class:`LearnedSoupMerge` (the coefficients are its config), so the merged model itself is written by the
streaming driver, fingerprinted by the coefficients, and reproduced from its config alone. mergekit has no
learned soup; with one group (``granularity="model"``) the merge is mergekit's ``linear`` with the learned
coefficients as weights (they sum to one).

Example:
    >>> import torch
    >>> soup = LearnedSoupMerge(coefficients={"all": [0.25, 0.75]})
    >>> soup.merge_tensor([torch.zeros(2), torch.ones(2)], None, TensorContext("w"))
    tensor([0.7500, 0.7500])
    >>> tensor_group("bert.encoder.layer.3.attention.self.query.weight", "layer")
    'layer.3'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call

from ..config import one_of
from ..errors import ConfigError
from ..losses import per_example_cross_entropy
from ..train_config import TrainConfig
from ..training import Rows, train
from .base import MERGE_METHODS, MergeMethod, MergeMethodConfig, TensorContext

GRANULARITIES = ("model", "layer")
ALL = "all"  # the one group of granularity "model"
# the block index of a transformer layer's tensors: BERT/RoBERTa "layer.3.", GPT-2 "h.3.", LLaMA "layers.3."
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")

LEARNED_SOUP_TRAINING = TrainConfig(learning_rate=0.05, max_epochs=10, batch_size=32, patience=2,
                                    group_by_length=True)
"""The default training of the coefficients: few parameters, so a large step; early stopping on held-out rows."""


def tensor_group(name: str, granularity: str) -> str:
    """The group whose coefficients tensor ``name`` uses: ``"all"`` per model; per layer ``"layer.K"`` for a
    transformer block's tensors, ``"embeddings"`` for embedding tensors, ``"other"`` for the rest (pooler,
    classifier head, final norm)."""
    if granularity == "model":
        return ALL
    match = _LAYER.search(name)
    if match:
        return f"layer.{int(match.group(1))}"
    return "embeddings" if "embed" in name else "other"


def _coefficients_ok(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) > 0 and all(
        isinstance(w, (list, tuple)) and len(w) > 0 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                            and math.isfinite(x) for x in w) for w in value.values())


@MERGE_METHODS.register("learned_soup")
class LearnedSoupMerge(MergeMethod):
    """A soup whose coefficients were learned: per group of tensors, ``sum_i coefficients[group][i] * t_i``.

    Build it with :func:`learn_soup` (which trains the coefficients); the config alone reproduces the merge.

    Args:
        coefficients: group -> one coefficient per model (``"all"`` for one set per model; ``"layer.K"``,
            ``"embeddings"``, ``"other"`` per layer, see :func:`tensor_group`).
        granularity: ``"model"`` or ``"layer"``: how tensor names map to groups.

    Example:
        >>> import torch
        >>> soup = LearnedSoupMerge(coefficients={"layer.0": [1.0, 0.0], "embeddings": [0.5, 0.5],
        ...                                       "other": [0.0, 1.0]}, granularity="layer")
        >>> soup.merge_tensor([torch.zeros(1), torch.ones(1)], None, TensorContext("encoder.layer.0.w"))
        tensor([0.])
    """

    @dataclass(frozen=True)
    class Config(MergeMethodConfig):
        coefficients: dict[str, list[float]] | None = None
        granularity: str = "model"

        constraints: ClassVar = {
            **MergeMethodConfig.constraints,
            "coefficients": (_coefficients_ok, "a non-empty mapping of group -> one coefficient per model "
                                               "(learn it with fusion.merging.learn_soup)"),
            "granularity": (one_of(*GRANULARITIES), " or ".join(map(repr, GRANULARITIES))),
        }

        def validate(self) -> None:
            sizes = {len(w) for w in self.coefficients.values()}
            if len(sizes) != 1:
                raise ConfigError(f"LearnedSoupMerge.coefficients: every group needs one coefficient per model; "
                                  f"got sizes {sorted(sizes)}.")
            if self.weight is not None:
                raise ConfigError("LearnedSoupMerge.weight must be None: it takes coefficients, the learned "
                                  "weights.")

    min_models = 2

    def weights(self, n_models: int) -> list[float]:
        size = len(next(iter(self.config.coefficients.values())))
        if size != n_models:
            raise ConfigError(f"merge method 'learned_soup': its coefficients are for {size} models, not "
                              f"{n_models}; merge the models they were learned on, in the same order.")
        return [1.0] * n_models

    def merge_tensor(self, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                     context: TensorContext) -> torch.Tensor:
        group = tensor_group(context.name, self.config.granularity)
        if group not in self.config.coefficients:
            raise ConfigError(f"merge method 'learned_soup': no coefficients for group {group!r} (tensor "
                              f"{context.name!r}); it has {sorted(self.config.coefficients)}. Learn them again "
                              "on these models.")
        stacked = torch.stack(list(tensors))
        coefficients = torch.tensor(self.config.coefficients[group], dtype=stacked.dtype)
        return torch.einsum("m,m...->...", coefficients, stacked)


class SoupModule(nn.Module):
    """``skeleton`` run with each floating-point tensor replaced by a softmax-weighted mix of the models' tensors.

    Only the coefficient logits (``logits``, ``[groups, models]``) train; the models' tensors are frozen buffers.
    The skeleton stays in eval mode (no dropout): the coefficients are fitted to the soup as it will run.
    """

    def __init__(self, skeleton: nn.Module, state_dicts: Sequence[Mapping[str, torch.Tensor]], granularity: str):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ConfigError(f"learned soup granularity must be one of {GRANULARITIES}; got {granularity!r}.")
        self.skeleton = skeleton.eval().requires_grad_(False)
        # named_parameters/buffers list a tied tensor once, so a tied pair is mixed once and stays tied
        floating = [name for name, t in [*skeleton.named_parameters(), *skeleton.named_buffers()]
                    if t.is_floating_point()]
        self.names = floating
        groups = sorted({tensor_group(name, granularity) for name in floating})
        self.groups = groups
        self.group_index = [groups.index(tensor_group(name, granularity)) for name in floating]
        for i, name in enumerate(floating):
            missing = [m for m, state in enumerate(state_dicts) if name not in state]
            if missing:
                raise ConfigError(f"learned soup: model(s) {missing} have no tensor {name!r}; the models must share "
                                  "the architecture of the first.")
            self.register_buffer(f"stacked_{i}", torch.stack([state[name].float() for state in state_dicts]),
                                 persistent=False)
        self.logits = nn.Parameter(torch.zeros(len(groups), len(state_dicts)))

    def train(self, mode: bool = True) -> SoupModule:
        super().train(mode)
        self.skeleton.eval()
        return self

    def coefficients(self) -> torch.Tensor:
        """``[groups, models]`` mixing coefficients (each row sums to one)."""
        return torch.softmax(self.logits, dim=-1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        weights = self.coefficients()
        mixed = {name: torch.einsum("m,m...->...", weights[g], getattr(self, f"stacked_{i}"))
                 for i, (name, g) in enumerate(zip(self.names, self.group_index, strict=True))}
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return functional_call(self.skeleton, mixed, args=(), kwargs=inputs).logits


def _soup_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return per_example_cross_entropy(model(batch), batch["labels"])


def learn_coefficients(skeleton: nn.Module, state_dicts: Sequence[Mapping[str, torch.Tensor]], train_rows: Rows,
                       val_rows: Rows | None = None, *, granularity: str = "model",
                       config: TrainConfig | None = None, desc: str = "learned soup") -> LearnedSoupMerge:
    """Train the mixing coefficients of ``state_dicts`` (label-aligned fine-tunes of ``skeleton``'s architecture)
    on labelled token rows (``fusion.batching.TokenRows`` with labels), and return the merge method they define.

    Args:
        skeleton: a model of the fine-tunes' architecture (``AutoModelForSequenceClassification``) whose
            forward returns ``.logits``; its own weights are not used, its non-float buffers are.
        state_dicts: one per fine-tune, heads already in one label order.
        train_rows / val_rows: labelled rows to fit on, and to stop early on (None: the train loss).
        granularity: ``"model"`` (one coefficient per model) or ``"layer"`` (one per model and layer group).
        config: the training settings (default ``LEARNED_SOUP_TRAINING``).

    Returns:
        A :class:`LearnedSoupMerge` holding the coefficients (rounded to float32 precision), ready for the
        streaming driver.
    """
    if len(state_dicts) < 2:
        raise ConfigError(f"a learned soup mixes at least 2 models; got {len(state_dicts)}.")
    module = SoupModule(skeleton, state_dicts, granularity)
    train(module, _soup_loss, train_rows, config or LEARNED_SOUP_TRAINING, val_rows, desc=desc)
    weights = module.coefficients().detach().cpu()
    return LearnedSoupMerge(coefficients={g: [float(w) for w in weights[k]] for k, g in enumerate(module.groups)},
                            granularity=granularity)
