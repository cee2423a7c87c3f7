"""TorchMember: any PyTorch module on numeric inputs (images, feature vectors), trained by fusion."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..cache.store import OutputCache, Outputs
from ..config import at_least, is_bool, object_field, setting
from ..errors import ConfigError, DataError
from ..inputs import TextData, holdout_split
from ..losses import features_loss
from ..train_config import TrainConfig
from ..training import TensorRows, seeded, train
from .base import FRACTION, MEMBERS, Member, MemberConfig, train_config_field, with_progress
from .heads import describe_module, identify_module, reinitialized_copy

DEFAULT_TRAINING = TrainConfig(learning_rate=1e-3, max_epochs=100, batch_size=128, weight_decay=1e-4, patience=8)


@MEMBERS.register("torch")
class TorchMember(Member):
    """A user ``nn.Module`` mapping float inputs ``[rows, ...]`` to logits ``[rows, classes]``.

    ``fit`` trains a re-initialised copy of the module (seeded by ``train_config.seed``, so fits are
    reproducible; the module you pass is never trained) through fusion's training loop, holding out
    ``validation_fraction`` of the rows for early stopping. Saved by weights only: pass the module again when
    loading (``Ensemble.from_pretrained(dir, objects={"cnn": {"module": SmallCNN()}})``).

    Args:
        module: the network (its class and layer structure are recorded; its weights are re-initialised).
        train_config: training settings (default ``DEFAULT_TRAINING``).
        validation_fraction: share of the training rows held out for early stopping.
        batch_size: rows per inference batch.
        name: member name (default: the module's class name, lower-cased).
        show_progress: progress bars.

    Example:
        >>> member = TorchMember(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), name="linear")
        >>> member.trainable
        True
    """

    @dataclass(frozen=True)
    class Config(MemberConfig):
        module: nn.Module = object_field(describe=describe_module, copy=reinitialized_copy, identify=identify_module,
                                         load_hint='from_pretrained(dir, objects={"MEMBER": {"module": module}})')
        train_config: TrainConfig = train_config_field(DEFAULT_TRAINING)
        validation_fraction: float = 0.1
        batch_size: int = setting(1024)
        show_progress: bool = setting(True)

        constraints: ClassVar = {"validation_fraction": FRACTION,
                                 "batch_size": (at_least(1, integer=True), "an integer >= 1"),
                                 "show_progress": (is_bool, "True or False")}

        def validate(self) -> None:
            if not isinstance(self.module, nn.Module):
                raise ConfigError(f"TorchMember needs a torch.nn.Module, got {type(self.module).__name__}.")

        def default_name(self) -> str:
            return type(self.module).__name__.lower()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.module_: nn.Module | None = None  # the trained copy

    @property
    def inputs(self) -> str:
        return "arrays"

    @property
    def trainable(self) -> bool:
        return True

    @property
    def learns_soft_targets(self) -> bool:
        return True

    def output_labels(self, ensemble_labels: list[str] | None) -> list[str] | None:
        return self.labels_

    def _inputs(self, data: TextData) -> torch.Tensor:
        if not data.is_array:
            raise DataError(f"member {self.name!r} takes numeric inputs (an array [rows, ...]), not texts.")
        return torch.as_tensor(data.texts, dtype=torch.float32)

    def _fit(self, train_data: TextData, label_names: list[str], cache: OutputCache) -> None:
        config = with_progress(self.config.train_config, self.config.show_progress)
        x, y = self._inputs(train_data), torch.as_tensor(train_data.labels, dtype=torch.long)
        with seeded(config.seed):
            module = reinitialized_copy(self.config.module)
        fit_rows, hold_rows = holdout_split(len(x), self.config.validation_fraction, config.seed)
        rows = {"x": x, "y": y}
        soft = train_data.soft_targets
        if soft is not None:  # a distillation student: the teacher's probabilities ride along with each row
            rows["soft_targets"] = torch.as_tensor(soft.probabilities, dtype=torch.float32)
        val = TensorRows(**{k: v[hold_rows] for k, v in rows.items()}) if hold_rows is not None else None
        train(module, functools.partial(features_loss, **(soft.loss_options if soft else {})), TensorRows(**{k: v[fit_rows] for k, v in rows.items()}),
              config, val, desc=self.name)
        self.module_ = module

    def compute(self, data: TextData, cache: OutputCache) -> Outputs:
        self._require_fitted()
        x = self._inputs(data)
        self.module_.eval()
        with torch.inference_mode():
            chunks = [self.module_(part) for part in x.split(self.config.batch_size)] if len(x) else []
        logits = torch.cat(chunks) if chunks else torch.zeros((0, len(self.labels_)))
        return {"logits": logits.float()}

    def torch_modules(self) -> list[nn.Module]:
        return [self.module_] if self.module_ is not None else []

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.module_.state_dict().items()} if self.module_ is not None else {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        module = reinitialized_copy(self.config.module)
        module.load_state_dict(dict(state))
        self.module_ = module.eval()

    def describe(self) -> str:
        return f"PyTorch module `{describe_module(self.config.module)['class']}` on numeric inputs"
