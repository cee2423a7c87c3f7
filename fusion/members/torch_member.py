"""TorchMember: any PyTorch module on numeric inputs (images, feature vectors), trained by fusion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import OutputCache, Outputs
from ..data import TextData, holdout_split
from ..errors import ConfigError, DataError, NotFittedError
from ..heads import reinitialized_copy
from ..io import atomic_save_tensors, load_tensors, sha256_tensors
from ..training import TensorRows, TrainConfig, seeded, train
from .base import MEMBERS, Member

DEFAULT_TRAINING = TrainConfig(learning_rate=1e-3, max_epochs=100, batch_size=128, weight_decay=1e-4, patience=8)


def _loss(module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(module(batch["x"]), batch["y"], reduction="none")


@MEMBERS.register("torch")
class TorchMember(Member):
    """A user ``nn.Module`` mapping float inputs ``[rows, ...]`` to logits ``[rows, classes]``.

    ``fit`` re-initialises the module (seeded by ``train_config.seed``, so fits are reproducible) and trains it
    through fusion's training loop, holding out ``validation_fraction`` of the rows for early stopping. Saved
    by weights only: pass the same module class again when loading
    (``Ensemble.from_pretrained(dir, modules={"cnn": SmallCNN()})``).

    Example:
        >>> member = TorchMember(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), name="linear")
        >>> member.trainable
        True
    """

    def __init__(self, module: nn.Module, *, name: str | None = None, train_config: TrainConfig | None = None,
                 validation_fraction: float = 0.1, batch_size: int = 1024, show_progress: bool = True) -> None:
        if not isinstance(module, nn.Module):
            raise ConfigError(f"TorchMember needs a torch.nn.Module, got {type(module).__name__}.")
        super().__init__(name or type(module).__name__.lower())
        self.module, self.train_config = module, train_config or DEFAULT_TRAINING
        self.validation_fraction, self.batch_size, self.show_progress = validation_fraction, batch_size, show_progress
        self.module_class = f"{type(module).__module__}.{type(module).__qualname__}"
        self.labels_: list[str] | None = None

    @property
    def trainable(self) -> bool:
        return True

    @property
    def is_fitted(self) -> bool:
        return self.labels_ is not None

    def output_labels(self, ensemble_labels: list[str] | None) -> list[str] | None:
        return self.labels_

    def fingerprint(self) -> str:
        state = sha256_tensors(self.module.state_dict()) if self.is_fitted else "unfitted"
        spec = json.dumps({"class": self.module_class, "train": self.train_config.to_dict(),
                           "holdout": self.validation_fraction, "labels": self.labels_}, sort_keys=True)
        return hashlib.sha256(f"torch|{spec}|{state}".encode()).hexdigest()

    def _inputs(self, data: TextData) -> torch.Tensor:
        if not data.is_array:
            raise DataError(f"member {self.name!r} takes numeric inputs (an array [rows, ...]), not texts.")
        return torch.as_tensor(data.texts, dtype=torch.float32)

    def fit(self, train_data: TextData, label_names: list[str], cache: OutputCache) -> TorchMember:
        config = self.train_config
        config = TrainConfig.from_dict({**config.to_dict(), "show_progress": config.show_progress and self.show_progress})
        x, y = self._inputs(train_data), torch.as_tensor(train_data.labels, dtype=torch.long)
        with seeded(config.seed):
            self.module = reinitialized_copy(self.module)
        fit_rows, hold_rows = holdout_split(len(x), self.validation_fraction, config.seed)
        val = TensorRows(x=x[hold_rows], y=y[hold_rows]) if hold_rows is not None else None
        train(self.module, _loss, TensorRows(x=x[fit_rows], y=y[fit_rows]), config, val, desc=self.name)
        self.labels_, self.fitted_on_ = list(label_names), train_data.label_fingerprint
        return self

    def compute(self, data: TextData, cache: OutputCache) -> Outputs:
        if not self.is_fitted:
            raise NotFittedError(f"member {self.name!r} is not trained; call Ensemble.fit first.")
        x = self._inputs(data)
        self.module.eval()
        with torch.inference_mode():
            chunks = [self.module(part) for part in x.split(self.batch_size)] if len(x) else []
        logits = torch.cat(chunks) if chunks else torch.zeros((0, len(self.labels_)))
        return {"logits": logits.float()}

    def unfitted_copy(self) -> TorchMember:
        return TorchMember(reinitialized_copy(self.module), name=self.name, train_config=self.train_config,
                           validation_fraction=self.validation_fraction, batch_size=self.batch_size,
                           show_progress=self.show_progress)

    def torch_modules(self) -> list[nn.Module]:
        return [self.module]

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "module_class": self.module_class, "labels": self.labels_,
                "train_config": self.train_config.to_dict(), "validation_fraction": self.validation_fraction,
                "batch_size": self.batch_size, "fitted_on": self.fitted_on_}

    def save(self, directory: Path) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"member {self.name!r} is not fitted; fit the ensemble before saving it.")
        atomic_save_tensors(directory / "module.safetensors", self.module.state_dict())

    @classmethod
    def from_config(cls, config: dict[str, Any], directory: Path, **options: Any) -> TorchMember:
        module = (options.get("modules") or {}).get(config["name"])
        if module is None:
            raise ConfigError(
                f"member {config['name']!r} is a {config['module_class']} saved by weights only; pass the module "
                f"again: from_pretrained(..., modules={{{config['name']!r}: module}})."
            )
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        module.load_state_dict(load_tensors(directory / "module.safetensors", f"member {config['name']!r}",
                                            expected_shapes=expected))
        member = cls(module, name=config["name"], train_config=TrainConfig.from_dict(config["train_config"]),
                     validation_fraction=config["validation_fraction"], batch_size=config["batch_size"],
                     show_progress=options.get("show_progress", True))
        member.labels_, member.fitted_on_ = config["labels"], config.get("fitted_on")
        return member

    def describe(self) -> str:
        return f"PyTorch module `{self.module_class}` on numeric inputs"
