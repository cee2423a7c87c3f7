"""HFEncoder: an AutoModel backbone, a pooling, and a custom PyTorch head trained by fusion."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..batching import TokenRows, cached_tokenize, pad_token_id
from ..cache import OutputCache, Outputs
from ..data import TextData, holdout_split
from ..engine import max_input_length, resolve_dtype, run_model
from ..errors import ConfigError, NotFittedError
from ..heads import Head, as_head
from ..io import load_tensors, sha256_tensors
from ..pooling import get_pooling
from ..training import TensorRows, TrainConfig, seeded, train
from .base import MEMBERS, Member
from .hf_source import HFSource, model_short_name

HEAD_TRAINING = TrainConfig(learning_rate=1e-3, max_epochs=200, batch_size=128, weight_decay=1e-4, patience=8)
# The usual fine-tuning recipe (linear warm-up over 6% of the run, then linear decay to zero), with
# length-grouped batches (less padding).
FINETUNE_TRAINING = TrainConfig(learning_rate=5e-5, max_epochs=2, batch_size=32, weight_decay=0.01, patience=1,
                                group_by_length=True, lr_schedule="linear", warmup_fraction=0.06)


class EncoderClassifier(nn.Module):
    """backbone -> pooling (-> L2 normalisation) -> head, as one module (for fine-tuning and inference)."""

    def __init__(self, backbone: nn.Module, pooling: str, normalize: bool, head: Head) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.pool, self.normalize = get_pooling(pooling), normalize

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        pooled = self.pool(self.backbone(**inputs).last_hidden_state, inputs["attention_mask"])
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.embed(batch))


def _head_loss(head: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(head(batch["x"]), batch["y"], reduction="none")


def _model_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch), batch["labels"], reduction="none")


@MEMBERS.register("hf_encoder")
class HFEncoder(Member):
    """A pretrained encoder with pooling and a trainable head; the backbone is frozen unless ``finetune=True``.

    With a frozen backbone, embeddings are computed once per dataset and cached, so training the head (or
    refitting it in cross-validation folds) never runs the backbone again.

    Args:
        model: backbone directory or hub id (loaded with ``AutoModel``).
        head: ``LinearHead()``, ``MLPHead(hidden=256)``, a head name, or any ``nn.Module`` ``[B, dim] -> [B, C]``.
        pooling: ``"mean"``, ``"cls"`` or ``"last"`` (last non-padding token).
        normalize: L2-normalise pooled embeddings.
        finetune: train the backbone together with the head.
        train_config: training settings (defaults: ``HEAD_TRAINING`` or ``FINETUNE_TRAINING``).
        validation_fraction: share of the training rows held out for early stopping.
        name / revision / max_length / batch_size / max_tokens / dtype / device / trust_remote_code /
            show_progress: as HFClassifier.

    Example:
        >>> member = HFEncoder("sentence-transformers/all-MiniLM-L6-v2", head=MLPHead(hidden=256))  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        head: Head | nn.Module | str = "linear",
        pooling: str = "mean",
        normalize: bool = False,
        finetune: bool = False,
        train_config: TrainConfig | None = None,
        validation_fraction: float = 0.1,
        name: str | None = None,
        revision: str | None = None,
        max_length: int | None = None,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        dtype: str = "auto",
        device: str | None = None,
        trust_remote_code: bool = False,
        show_progress: bool = True,
    ) -> None:
        super().__init__(name or f"{model_short_name(model)}-{pooling}")
        get_pooling(pooling)
        if not 0.0 <= validation_fraction < 1.0:
            raise ConfigError(f"member {self.name!r}: validation_fraction must be in [0, 1), got {validation_fraction}.")
        self.source = HFSource(model, revision)
        self.head = as_head(head)
        self.pooling, self.normalize, self.finetune = pooling, normalize, finetune
        self.train_config = train_config or (FINETUNE_TRAINING if finetune else HEAD_TRAINING)
        self.validation_fraction = validation_fraction
        self.max_length, self.batch_size, self.device = max_length, batch_size, device
        self.max_tokens, self.dtype = max_tokens, dtype
        resolve_dtype(dtype, torch.device("cpu"))  # an unknown dtype fails here, not at the first run
        self.trust_remote_code, self.show_progress = trust_remote_code, show_progress
        self.labels_: list[str] | None = None
        self.finetuned_ = False
        self._backbone: nn.Module | None = None
        self._tokenizer = None
        self._weights_dir: Path | None = None  # a saved fine-tuned backbone, instead of the source's weights

    # --- identity -----------------------------------------------------------------------------------
    @property
    def trainable(self) -> bool:
        return True

    @property
    def is_fitted(self) -> bool:
        return self.labels_ is not None and self.head.is_built

    def output_labels(self, ensemble_labels: list[str] | None) -> list[str] | None:
        return self.labels_

    def _backbone_fingerprint(self) -> str:
        weights = sha256_tensors(self._load()[0].state_dict()) if self.finetuned_ else self.source.fingerprint
        settings = json.dumps([self.pooling, self.normalize, self.max_length])
        return hashlib.sha256((weights + settings).encode()).hexdigest()

    def fingerprint(self) -> str:
        spec = json.dumps({"head": self.head.to_config(), "finetune": self.finetune,
                           "train": self.train_config.to_dict(), "holdout": self.validation_fraction}, sort_keys=True)
        state = sha256_tensors(self.head.state_dict()) if self.is_fitted else "unfitted"
        return hashlib.sha256(f"{self._backbone_fingerprint()}|{spec}|{self.labels_}|{state}".encode()).hexdigest()

    # --- models -------------------------------------------------------------------------------------
    def _load(self) -> tuple[nn.Module, Any]:
        if self._backbone is None:
            from transformers import AutoModel, AutoTokenizer

            path, remote = str(self._weights_dir or self.source.local_dir), self.trust_remote_code
            self._tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
            self._backbone = AutoModel.from_pretrained(path, trust_remote_code=remote).eval()
        return self._backbone, self._tokenizer

    def _tokens_key(self, data: TextData) -> tuple[str, str]:
        tokenizer_files = self._weights_dir or self.source.local_dir
        fingerprint = self.source.tokenizer_fingerprint if self._weights_dir is None else str(tokenizer_files)
        return fingerprint, data.fingerprint

    def _model(self) -> EncoderClassifier:
        return EncoderClassifier(self._load()[0], self.pooling, self.normalize, self.head)

    def torch_modules(self) -> list[nn.Module]:
        return [self._backbone] if self._backbone is not None else []

    def embeddings(self, data: TextData, cache: OutputCache) -> torch.Tensor:
        """Pooled backbone embeddings of ``data`` ``[rows, dim]``, computed once and cached.

        With a frozen backbone, a subset (a cross-fitting fold) is sliced from its parent's embeddings, so
        folds never rerun the backbone.
        """
        if data.parent is not None and not self.finetuned_:
            return self.embeddings(data.parent, cache)[torch.as_tensor(data.index)]

        def compute() -> dict[str, torch.Tensor]:
            model, tokenizer = self._model(), self._load()[1]
            return run_model(model, tokenizer, data.texts, lambda m, batch: {"embeddings": m.embed(batch)},
                             batch_size=self.batch_size, max_tokens=self.max_tokens, max_length=self.max_length,
                             device=self.device, dtype=self.dtype, tokens_key=self._tokens_key(data), cache=cache,
                             desc=f"{self.name}", show_progress=self.show_progress)

        return cache.get_or_compute(self._backbone_fingerprint(), data.fingerprint, compute, "embeddings")["embeddings"]

    # --- learning -----------------------------------------------------------------------------------
    def fit(self, train_data: TextData, label_names: list[str], cache: OutputCache) -> HFEncoder:
        config = dataclasses.replace(self.train_config, show_progress=self.train_config.show_progress and self.show_progress)
        fit_rows, hold_rows = holdout_split(len(train_data), self.validation_fraction, config.seed)
        labels = torch.as_tensor(train_data.labels, dtype=torch.long)
        if self.finetune:
            self._finetune(train_data, labels, fit_rows, hold_rows, len(label_names), config, cache)
        else:
            emb = self.embeddings(train_data, cache)
            with seeded(config.seed):
                self.head.build(emb.shape[1], len(label_names))
            rows = {"x": emb, "y": labels}
            val = TensorRows(**{k: v[hold_rows] for k, v in rows.items()}) if hold_rows is not None else None
            train(self.head, _head_loss, TensorRows(**{k: v[fit_rows] for k, v in rows.items()}), config, val,
                  desc=f"{self.name} head")
        self.labels_ = list(label_names)
        self.fitted_on_ = train_data.label_fingerprint
        return self

    def _finetune(self, data: TextData, labels: torch.Tensor, fit_rows: np.ndarray, hold_rows: np.ndarray | None,
                  n_classes: int, config: TrainConfig, cache: OutputCache) -> None:
        backbone, tokenizer = self._load()
        with seeded(config.seed):
            self.head.build(backbone.config.hidden_size, n_classes)
        # Tokenised once for the whole dataset (a cross-fitting fold reads its root's rows), under the key
        # inference uses too, so predicting on these texts afterwards does not tokenise them again.
        root, at = (data.parent, data.index) if data.parent is not None else (data, np.arange(len(data)))
        tokens = cached_tokenize(tokenizer, root.texts, max_input_length(backbone, tokenizer, self.max_length),
                                 self._tokens_key(root), cache)

        def rows(index: np.ndarray) -> TokenRows:
            return TokenRows(tokens, pad_token_id(tokenizer), labels[index], rows=at[index])

        val = rows(hold_rows) if hold_rows is not None else None
        train(self._model(), _model_loss, rows(fit_rows), config, val, desc=f"{self.name} fine-tune")
        self.finetuned_ = True

    def compute(self, data: TextData, cache: OutputCache) -> Outputs:
        if not self.is_fitted:
            raise NotFittedError(f"member {self.name!r}: its head is not trained; call Ensemble.fit (or member.fit) first.")
        emb = self.embeddings(data, cache)
        with torch.inference_mode():
            logits = self.head.eval()(emb)
        return {"logits": logits, "embeddings": emb}

    def unfitted_copy(self) -> HFEncoder:
        twin = HFEncoder(
            self.source.model, head=self.head.unbuilt_copy(), pooling=self.pooling, normalize=self.normalize,
            finetune=self.finetune, train_config=self.train_config, validation_fraction=self.validation_fraction,
            name=self.name, revision=self.source.revision, max_length=self.max_length, batch_size=self.batch_size,
            max_tokens=self.max_tokens, dtype=self.dtype, device=self.device, trust_remote_code=self.trust_remote_code, show_progress=self.show_progress,
        )
        twin.source = self.source  # shares the hashed checksums
        if not self.finetune and not self.finetuned_:  # a frozen backbone can be shared
            twin._backbone, twin._tokenizer = self._backbone, self._tokenizer
        return twin

    # --- persistence --------------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "name": self.name, **self.source.to_config(), "head": self.head.to_config(),
            "pooling": self.pooling, "normalize": self.normalize, "finetune": self.finetune,
            "finetuned": self.finetuned_, "train_config": self.train_config.to_dict(),
            "validation_fraction": self.validation_fraction, "labels": self.labels_, "max_length": self.max_length,
            "batch_size": self.batch_size, "max_tokens": self.max_tokens, "dtype": self.dtype,
            "trust_remote_code": self.trust_remote_code, "fitted_on": self.fitted_on_,
        }

    def save(self, directory: Path) -> None:
        from ..io import atomic_save_tensors

        if not self.is_fitted:
            raise NotFittedError(f"member {self.name!r} is not fitted; fit the ensemble before saving it.")
        atomic_save_tensors(directory / "head.safetensors", self.head.state_dict())
        if self.finetuned_:
            backbone, tokenizer = self._load()
            backbone.save_pretrained(directory / "backbone", safe_serialization=True)
            tokenizer.save_pretrained(directory / "backbone")

    @classmethod
    def from_config(cls, config: dict[str, Any], directory: Path, **options: Any) -> HFEncoder:
        head_config = config["head"]
        if head_config["name"] == "custom":
            module = (options.get("heads") or {}).get(config["name"])
            if module is None:
                raise ConfigError(
                    f"member {config['name']!r} has a custom head ({head_config['module_class']}) that cannot be "
                    f"rebuilt from JSON; pass it again: from_pretrained(..., heads={{{config['name']!r}: module}})."
                )
            head: Head = as_head(module)
            head.build(head_config["in_features"], head_config["n_classes"])
        else:
            head = Head.from_config(head_config)
        member = cls(
            config["model"], head=head, pooling=config["pooling"], normalize=config["normalize"],
            finetune=config["finetune"], train_config=TrainConfig.from_dict(config["train_config"]),
            validation_fraction=config["validation_fraction"], name=config["name"], revision=config.get("revision"),
            max_length=config.get("max_length"), batch_size=config.get("batch_size"),
            max_tokens=config.get("max_tokens"), dtype=config.get("dtype", "auto"),
            trust_remote_code=config.get("trust_remote_code", False), show_progress=options.get("show_progress", True),
        )
        if options.get("verify_members", True) and not config.get("finetuned"):
            member.source.verify(config["weights_sha256"], member.name)
        expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
        state = load_tensors(directory / "head.safetensors", f"member {member.name!r} head", expected_shapes=expected)
        head.load_state_dict(state)
        member.labels_, member.fitted_on_ = config["labels"], config.get("fitted_on")
        if config.get("finetuned"):
            member._weights_dir, member.finetuned_ = directory / "backbone", True
        return member

    def describe(self) -> str:
        mode = "fine-tuned" if self.finetune else "frozen"
        return f"`{self.source.model}` ({mode}), {self.pooling} pooling, {self.head.to_config()['name']} head"
