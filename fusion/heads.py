"""Custom PyTorch heads that turn a pooled embedding into class logits, usable on any backbone.

A head is declared without sizes (``MLPHead(hidden=256)``) and built once the member knows its embedding
size and number of classes. Any user ``torch.nn.Module`` mapping ``[batch, dim] -> [batch, classes]`` works too.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import nn

from .errors import ConfigError
from .registry import Registry

HEADS: Registry[Head] = Registry("head")


class Head(nn.Module):
    """Base class: hyper-parameters in ``__init__``, layers created by ``build(in_features, n_classes)``."""

    name: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.in_features: int | None = None
        self.n_classes: int | None = None

    def build(self, in_features: int, n_classes: int) -> Head:
        """Create the layers for the given sizes (replacing any earlier ones)."""
        self.in_features, self.n_classes = int(in_features), int(n_classes)
        self.net = self._layers(self.in_features, self.n_classes)
        return self

    def _layers(self, in_features: int, n_classes: int) -> nn.Module:
        raise NotImplementedError

    @property
    def is_built(self) -> bool:
        return self.in_features is not None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.is_built:
            raise ConfigError(f"{type(self).__name__} is not built yet: call build(in_features, n_classes) first.")
        return self.net(features)

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able)."""
        return {}

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.hparams(), "in_features": self.in_features, "n_classes": self.n_classes}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Head:
        head = HEADS.get(config["name"])(**config.get("params", {}))
        if config.get("in_features") is not None:
            head.build(config["in_features"], config["n_classes"])
        return head

    def unbuilt_copy(self) -> Head:
        """A fresh head with the same hyper-parameters and no weights."""
        return HEADS.get(self.name)(**self.hparams())


@HEADS.register("linear")
class LinearHead(Head):
    """Dropout then one linear layer (logistic regression on the embedding).

    Example:
        >>> LinearHead().build(8, 3)(torch.zeros(2, 8)).shape
        torch.Size([2, 3])
    """

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"LinearHead dropout must be in [0, 1), got {dropout}.")
        self.dropout = dropout

    def _layers(self, in_features: int, n_classes: int) -> nn.Module:
        return nn.Sequential(nn.Dropout(self.dropout), nn.Linear(in_features, n_classes))

    def hparams(self) -> dict[str, Any]:
        return {"dropout": self.dropout}


@HEADS.register("mlp")
class MLPHead(Head):
    """``layers`` hidden layers of width ``hidden`` with GELU and dropout, then a linear output layer.

    Example:
        >>> MLPHead(hidden=16).build(8, 2)(torch.zeros(4, 8)).shape
        torch.Size([4, 2])
    """

    def __init__(self, hidden: int = 256, layers: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        if hidden < 1 or layers < 1 or not 0.0 <= dropout < 1.0:
            raise ConfigError(
                f"MLPHead needs hidden >= 1, layers >= 1 and 0 <= dropout < 1; got {hidden}, {layers}, {dropout}."
            )
        self.hidden, self.layers, self.dropout = hidden, layers, dropout

    def _layers(self, in_features: int, n_classes: int) -> nn.Module:
        modules: list[nn.Module] = []
        width = in_features
        for _ in range(self.layers):
            modules += [nn.Linear(width, self.hidden), nn.GELU(), nn.Dropout(self.dropout)]
            width = self.hidden
        return nn.Sequential(*modules, nn.Linear(width, n_classes))

    def hparams(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "layers": self.layers, "dropout": self.dropout}


class CustomHead(Head):
    """Wraps a user module; it is saved by weights only, so loading needs the same module passed again."""

    name = "custom"

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.net = module
        self.module_class = f"{type(module).__module__}.{type(module).__qualname__}"

    def build(self, in_features: int, n_classes: int) -> Head:
        self.in_features, self.n_classes = int(in_features), int(n_classes)
        return self

    def to_config(self) -> dict[str, Any]:
        return {"name": "custom", "module_class": self.module_class, "in_features": self.in_features,
                "n_classes": self.n_classes}

    def unbuilt_copy(self) -> Head:
        return CustomHead(reinitialized_copy(self.net))


def reinitialized_copy(module: nn.Module) -> nn.Module:
    """A deep copy with every layer re-initialised (layers without ``reset_parameters`` keep their weights)."""
    fresh = copy.deepcopy(module)
    for layer in fresh.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return fresh


def as_head(head: Head | nn.Module | str) -> Head:
    """Accept a Head, a registered head name, or any user module."""
    if isinstance(head, Head):
        return head
    if isinstance(head, str):
        return HEADS.get(head)()
    if isinstance(head, nn.Module):
        return CustomHead(head)
    raise ConfigError(f"head must be a Head, a head name {HEADS.names()} or a torch.nn.Module, got {type(head).__name__}.")
