"""Custom PyTorch heads that turn a pooled embedding into class logits, usable on any backbone.

A head is a component: a frozen config (``MLPHead(hidden=256).config``) plus the layers ``build(in_features,
n_classes)`` creates once the member knows its embedding size and number of classes. Any user
``torch.nn.Module`` mapping ``[batch, dim] -> [batch, classes]`` works too (``CustomHead``): it is saved by
weights only, so loading needs the module passed again.

Members keep a head's *config*; each fit builds a new head from it, so one head object given to two members
gives two independently trained heads, and the object the user passed is never trained.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import Component, Config, at_least, in_range, object_field
from ..errors import ConfigError
from ..io import sha256_tensors
from ..registry import Registry
from ..training import seeded

HEADS: Registry[Head] = Registry("head")

_DROPOUT = (in_range(0.0, 1.0), "a number in [0, 1)")


@dataclass(frozen=True)
class HeadConfig(Config):
    """Base of every head's config."""


class Head(Component, nn.Module):
    """Base class: the config holds the hyper-parameters, ``build(in_features, n_classes)`` the layers."""

    Config: ClassVar[type[HeadConfig]] = HeadConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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

    @staticmethod
    def from_head_config(config: HeadConfig) -> Head:
        """A new, unbuilt head of the config's kind (``build`` creates fresh layers; nothing is shared)."""
        return HEADS.get(config.kind)(config)


@HEADS.register("linear")
class LinearHead(Head):
    """Dropout then one linear layer (logistic regression on the embedding).

    Args:
        dropout: dropout before the layer, in [0, 1).

    Example:
        >>> LinearHead().build(8, 3)(torch.zeros(2, 8)).shape
        torch.Size([2, 3])
    """

    @dataclass(frozen=True)
    class Config(HeadConfig):
        dropout: float = 0.0

        constraints: ClassVar = {"dropout": _DROPOUT}

    def _layers(self, in_features: int, n_classes: int) -> nn.Module:
        return nn.Sequential(nn.Dropout(self.config.dropout), nn.Linear(in_features, n_classes))


@HEADS.register("mlp")
class MLPHead(Head):
    """``layers`` hidden layers of width ``hidden`` with GELU and dropout, then a linear output layer.

    Args:
        hidden: width of each hidden layer (>= 1).
        layers: number of hidden layers (>= 1).
        dropout: dropout after each hidden layer, in [0, 1).

    Example:
        >>> MLPHead(hidden=16).build(8, 2)(torch.zeros(4, 8)).shape
        torch.Size([4, 2])
    """

    @dataclass(frozen=True)
    class Config(HeadConfig):
        hidden: int = 256
        layers: int = 1
        dropout: float = 0.1

        constraints: ClassVar = {"hidden": (at_least(1, integer=True), "an integer >= 1"),
                                 "layers": (at_least(1, integer=True), "an integer >= 1"), "dropout": _DROPOUT}

    def _layers(self, in_features: int, n_classes: int) -> nn.Module:
        modules: list[nn.Module] = []
        width = in_features
        for _ in range(self.config.layers):
            modules += [nn.Linear(width, self.config.hidden), nn.GELU(), nn.Dropout(self.config.dropout)]
            width = self.config.hidden
        return nn.Sequential(*modules, nn.Linear(width, n_classes))


def reinitialized_copy(module: nn.Module) -> nn.Module:
    """A deep copy with every layer re-initialised (layers without ``reset_parameters`` keep their weights)."""
    fresh = copy.deepcopy(module)
    for layer in fresh.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return fresh


def module_class(module: nn.Module) -> str:
    """``package.module.ClassName`` of a module, as saved configs record it."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


def describe_module(module: nn.Module) -> dict[str, str]:
    """What a saved config records of a user module: its class and layer structure (not its weights)."""
    return {"class": module_class(module), "structure": repr(module)}


def _plain(value: Any) -> Any:
    """A layer attribute in a JSON-able form that is the same in every process (objects by their type)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    named = value if callable(value) and hasattr(value, "__qualname__") else type(value)
    return f"{getattr(named, '__module__', '')}.{named.__qualname__}"


def identify_module(module: nn.Module) -> dict[str, Any]:
    """What a fingerprint hashes of a user module: :func:`describe_module`, every layer's public attributes (a
    constant that ``repr`` does not show, such as a scale factor) and the weights a fit starts from.

    Fits train a re-initialised copy (:func:`reinitialized_copy`, seeded by the training seed), so the
    weights hashed are those of such a copy under a fixed seed: layers with ``reset_parameters`` hash alike
    whatever their current weights (so a clone shares the fingerprint, in every process), and the tensors a
    fit keeps (layers without ``reset_parameters``, buffers) tell two modules apart.
    """
    with seeded(0):
        start = reinitialized_copy(module)
    attributes, tensors = {}, {f"state.{k}": v for k, v in start.state_dict().items()}
    for path, layer in start.named_modules():
        public = {}
        for name, value in vars(layer).items():
            if name.startswith("_") or name == "training":
                continue
            if isinstance(value, torch.Tensor):
                tensors[f"attribute.{path}.{name}"] = value
            else:
                public[name] = _plain(value)
        attributes[path or "."] = [module_class(layer), public]
    return {**describe_module(module), "attributes": attributes, "start_sha256": sha256_tensors(tensors)}


@HEADS.register("custom")
class CustomHead(Head):
    """Wraps a user module ``[batch, dim] -> [batch, classes]``; ``build`` uses a re-initialised copy of it.

    Saved by weights only: pass the module again when loading
    (``Ensemble.from_pretrained(dir, objects={"member name": {"head": module}})``).

    Example:
        >>> CustomHead(module=nn.Linear(8, 2)).build(8, 2)(torch.zeros(1, 8)).shape
        torch.Size([1, 2])
    """

    @dataclass(frozen=True)
    class Config(HeadConfig):
        module: nn.Module = object_field(describe=describe_module, copy=reinitialized_copy, identify=identify_module,
                                         load_hint='from_pretrained(dir, objects={"MEMBER": {"head": module}})')

        def validate(self) -> None:
            if not isinstance(self.module, nn.Module):
                raise ConfigError(f"CustomHead needs a torch.nn.Module, got {type(self.module).__name__}.")

    def _layers(self, in_features: int, n_classes: int) -> nn.Module:
        return reinitialized_copy(self.config.module)  # the user's module itself is never trained


def head_config(head: HeadConfig | Head | nn.Module | str | dict[str, Any]) -> HeadConfig:
    """Accept a head config, a Head, a registered head name, a saved head dict, or any user module."""
    if isinstance(head, HeadConfig):
        return head
    if isinstance(head, Head):
        return head.config
    if isinstance(head, str):
        if head == CustomHead.kind:
            raise ConfigError("head 'custom' needs a module: pass the torch.nn.Module itself as head= "
                              f"(or a head name: {', '.join(n for n in HEADS.names() if n != CustomHead.kind)}).")
        return HEADS.get(head).Config()
    if isinstance(head, dict):
        return HEADS.get(head.get("kind", "<missing>")).Config.from_dict(head)
    if isinstance(head, nn.Module):
        return CustomHead.Config(module=head)
    raise ConfigError(f"head must be a Head, a head name {HEADS.names()} or a torch.nn.Module, got {type(head).__name__}.")
