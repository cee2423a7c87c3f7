"""HFEncoder: an AutoModel backbone, a pooling, and a custom PyTorch head trained by fusion."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..batching import TokenRows, cached_tokenize, pad_token_id
from ..cache.store import OutputCache, Outputs
from ..config import LoadOptions, coerced, digest, is_bool, one_of
from ..engine import max_input_length, run_model
from ..engines.base import RowJob
from ..inputs import SoftTargets, TextData, holdout_split
from ..io import sha256_tensors
from ..losses import features_loss, targets_loss
from ..progress import quiet_transformers
from ..train_config import TrainConfig
from ..training import TensorRows, seeded, train
from .base import FRACTION, MEMBERS, train_config_field, with_progress
from .heads import Head, HeadConfig, head_config
from .hf_model import HFMember, HFModelConfig
from .hf_source import HFSource, model_label, model_short_name
from .pooling import POOLINGS, get_pooling

HEAD_TRAINING = TrainConfig(learning_rate=1e-3, max_epochs=200, batch_size=128, weight_decay=1e-4, patience=8)
# The usual fine-tuning recipe (linear warm-up over 6% of the run, then linear decay to zero), with
# length-grouped batches (less padding).
FINETUNE_TRAINING = TrainConfig(learning_rate=5e-5, max_epochs=2, batch_size=32, weight_decay=0.01, patience=1,
                                group_by_length=True, lr_schedule="linear", warmup_fraction=0.06)
BACKBONE_DIR = "backbone"
POOLED = "pooled"  # cache variant: every pooling of the backbone's last hidden states, one forward pass


class EncoderClassifier(nn.Module):
    """backbone -> pooling (-> L2 normalisation) -> head, as one module (for fine-tuning)."""

    def __init__(self, backbone: nn.Module, pooling: str, normalize: bool, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.pooling, self.normalize = pooling, normalize

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = pool_all(self.backbone, batch, (self.pooling,))[self.pooling]
        return self.head(F.normalize(pooled, dim=-1) if self.normalize else pooled)


def pool_all(backbone: nn.Module, batch: dict[str, torch.Tensor], poolings=tuple(POOLINGS)) -> dict[str, torch.Tensor]:
    """One forward pass of ``backbone``, pooled every way in ``poolings``."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    hidden = backbone(**inputs).last_hidden_state
    return {name: get_pooling(name)(hidden, inputs["attention_mask"]) for name in poolings}


@MEMBERS.register("hf_encoder")
class HFEncoder(HFMember):
    """A pretrained encoder with pooling and a trainable head; the backbone is frozen unless ``finetune=True``.

    With a frozen backbone, the backbone runs once per dataset and its pooled outputs (every pooling) are
    cached under the backbone's fingerprint: training the head, refitting it in cross-validation folds, or a
    second member with another pooling or head on the same checkpoint never runs the backbone again.

    Args:
        model: backbone directory, hub id or ``package:MODULE`` (loaded with ``AutoModel``).
        head: ``LinearHead()``, ``MLPHead(hidden=256)``, a head name, a head config, or any ``nn.Module``
            ``[B, dim] -> [B, C]``. Only its configuration is kept: every fit trains a new head.
        pooling: ``"mean"``, ``"cls"`` or ``"last"`` (last non-padding token).
        normalize: L2-normalise pooled embeddings.
        finetune: train the backbone together with the head.
        train_config: training settings (default: ``HEAD_TRAINING``, or ``FINETUNE_TRAINING`` when fine-tuning).
        validation_fraction: share of the training rows held out for early stopping.
        name: member name (default ``<model>-<pooling>``).
        revision / max_length / batch_size / max_tokens / dtype / device / trust_remote_code / show_progress:
            see ``HFModelConfig``.

    Example:
        >>> member = HFEncoder("sentence-transformers/all-MiniLM-L6-v2", head=MLPHead(hidden=256))  # doctest: +SKIP
    """

    sharded_outputs = False  # its costly pass, the backbone's, is the sharded entry (``pooled``)

    @dataclass(frozen=True)
    class Config(HFModelConfig):
        head: HeadConfig = coerced(head_config, "linear")
        pooling: str = "mean"
        normalize: bool = False
        finetune: bool = False
        train_config: TrainConfig | None = train_config_field(None)
        validation_fraction: float = 0.1

        constraints: ClassVar = {**HFModelConfig.constraints,
                                 "pooling": (one_of(*POOLINGS), f"one of {sorted(POOLINGS)}"),
                                 "normalize": (is_bool, "True or False"), "finetune": (is_bool, "True or False"),
                                 "validation_fraction": FRACTION}

        def default_name(self) -> str:
            return f"{model_short_name(self.model)}-{self.pooling}"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_: Head | None = None
        self.finetuned_ = False
        self._backbone: nn.Module | None = None
        self._tokenizer = None
        self._weights: HFSource | None = None  # a saved fine-tuned backbone, instead of the source's files
        self._backbone_fp: str | None = None

    def _clone_into(self, twin: HFEncoder) -> None:
        super()._clone_into(twin)
        if not self.config.finetune and not self.finetuned_:  # a frozen backbone can be shared
            twin._backbone, twin._tokenizer = self._backbone, self._tokenizer

    # --- identity -------------------------------------------------------------------------------------------
    @property
    def trainable(self) -> bool:
        return True

    @property
    def expensive_to_fit(self) -> bool:
        return self.config.finetune

    @property
    def learns_soft_targets(self) -> bool:
        return True

    @property
    def training(self) -> TrainConfig:
        """The training settings in effect (the config's, or the default for this mode)."""
        default = FINETUNE_TRAINING if self.config.finetune else HEAD_TRAINING
        return with_progress(self.config.train_config or default, self.config.show_progress)

    @property
    def is_fitted(self) -> bool:
        return self.labels_ is not None and self.head_ is not None

    def output_labels(self, ensemble_labels: list[str] | None) -> list[str] | None:
        return self.labels_

    @property
    def backbone_fingerprint(self) -> str:
        """The backbone's identity for its cached pooled outputs: the source files (or the fine-tuned weights,
        hashed once after fine-tuning), the truncation length and the dtype; poolings and heads share it."""
        if self._backbone_fp is None:
            self._backbone_fp = self._backbone_digest(self.source.fingerprint)
        return self._backbone_fp

    def _backbone_digest(self, weights: str) -> str:
        dtype = str(self.config.resolved_dtype).removeprefix("torch.")  # "auto" as resolved on this machine
        return digest("backbone", weights, self.config.max_length, dtype)

    def state_hash(self) -> str:
        return digest(self.labels_, sha256_tensors(self.state_dict()), self.backbone_fingerprint)

    def _rekey(self, dtype: str) -> None:
        super()._rekey(dtype)
        if self._backbone_fp is not None:  # the cached backbone pass was recorded in the other dtype too
            self._backbone_fp = digest(self._backbone_fp, "computed in", dtype)

    # --- models ---------------------------------------------------------------------------------------------
    def _load(self) -> tuple[nn.Module, Any]:
        if self._backbone is None:
            from transformers import AutoModel, AutoTokenizer

            path, remote = str(self._files.local_dir), self.config.trust_remote_code
            with quiet_transformers():  # no "Loading weights" bar or load report while fusion's progress is off
                self._tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
                self._backbone = AutoModel.from_pretrained(path, trust_remote_code=remote).eval()
        return self._backbone, self._tokenizer

    @property
    def _files(self) -> HFSource:
        """Where the backbone and tokenizer are read from: a saved fine-tuned backbone, else the source."""
        return self._weights or self.source

    def _tokens_key(self, data: TextData) -> tuple[str, str]:
        return self._files.tokenizer_fingerprint, data.fingerprint

    def torch_modules(self) -> list[nn.Module]:
        return [self._backbone] if self._backbone is not None else []

    def pooled(self, data: TextData, cache: OutputCache) -> Outputs:
        """Every pooling of the backbone's outputs on ``data`` (``{"mean": [rows, dim], ...}``), cached.

        With a frozen backbone, a subset (a cross-fitting fold) is sliced from its parent's outputs, so folds
        never rerun the backbone.
        """
        if data.parent is not None and not self.finetuned_:
            index = torch.as_tensor(data.index)
            return {name: value[index] for name, value in self.pooled(data.parent, cache).items()}

        label = f"hf_encoder backbone {self.source.model}" + (" (fine-tuned)" if self.finetuned_ else "")
        job = RowJob((self.backbone_fingerprint, data.fingerprint, POOLED), data, self.pooled_rows, label)
        return cache.get_or_compute_rows(job, lambda: self._pool(data.texts, self._tokens_key(data), cache))

    def pooled_rows(self, rows: TextData) -> Outputs:
        """Every pooling of the backbone's outputs on ``rows`` alone (a shard of the cached backbone pass)."""
        return self._pool(rows.texts, None, None)

    def _pool(self, texts: list[str], tokens_key: tuple[str, str] | None, cache: OutputCache | None) -> Outputs:
        backbone, tokenizer = self._load()
        return run_model(backbone, tokenizer, texts, lambda m, batch: pool_all(m, batch), tokens_key=tokens_key,
                         cache=cache, desc=self.name, **self.inference_options())

    def _reloadable(self) -> tuple[str, ...]:
        # a backbone fine-tuned here and not saved yet exists only in memory: it travels with the member
        in_memory_only = self.finetuned_ and self._weights is None
        return () if in_memory_only else ("_backbone", "_tokenizer")

    def embeddings(self, data: TextData, cache: OutputCache) -> torch.Tensor:
        """Pooled (and, with ``normalize``, L2-normalised) embeddings of ``data`` ``[rows, dim]``."""
        pooled = self.pooled(data, cache)[self.config.pooling]
        return F.normalize(pooled, dim=-1) if self.config.normalize else pooled

    # --- learning -------------------------------------------------------------------------------------------
    def _new_head(self, in_features: int, n_classes: int, seed: int) -> Head:
        with seeded(seed):
            return Head.from_head_config(self.config.head).build(in_features, n_classes)

    def _fit(self, train_data: TextData, label_names: list[str], cache: OutputCache) -> None:
        config = self.training
        fit_rows, hold_rows = holdout_split(len(train_data), self.config.validation_fraction, config.seed)
        labels = torch.as_tensor(train_data.labels, dtype=torch.long)
        soft = train_data.soft_targets  # set when this member is a distillation student (fusion.distill)
        soft_rows = None if soft is None else torch.as_tensor(soft.probabilities, dtype=torch.float32)
        if self.config.finetune:
            self._finetune(train_data, labels, soft_rows, fit_rows, hold_rows, len(label_names), config, cache)
            return
        emb = self.embeddings(train_data, cache)
        head = self._new_head(emb.shape[1], len(label_names), config.seed)
        rows = {"x": emb, "y": labels, **({"soft_targets": soft_rows} if soft_rows is not None else {})}
        val = TensorRows(**{k: v[hold_rows] for k, v in rows.items()}) if hold_rows is not None else None
        train(head, functools.partial(features_loss, **(soft.loss_options if soft else {})), TensorRows(**{k: v[fit_rows] for k, v in rows.items()}),
              config, val, desc=f"{self.name} head")
        self.head_ = head

    def _finetune(self, data: TextData, labels: torch.Tensor, soft_rows: torch.Tensor | None, fit_rows: np.ndarray,
                  hold_rows: np.ndarray | None, n_classes: int, config: TrainConfig, cache: OutputCache) -> None:
        backbone, tokenizer = self._load()
        head = self._new_head(backbone.config.hidden_size, n_classes, config.seed)
        # Tokenised once for the whole dataset (a cross-fitting fold reads its root's rows), under the key
        # inference uses too, so predicting on these texts afterwards does not tokenise them again.
        root, at = (data.parent, data.index) if data.parent is not None else (data, np.arange(len(data)))
        tokens = cached_tokenize(tokenizer, root.texts, max_input_length(backbone, tokenizer, self.config.max_length),
                                 self._tokens_key(root), cache=cache)

        def rows(index: np.ndarray) -> TokenRows:
            return TokenRows(tokens, pad_token_id(tokenizer), labels[index], rows=at[index],
                             soft_targets=None if soft_rows is None else soft_rows[index])

        val = rows(hold_rows) if hold_rows is not None else None
        model = EncoderClassifier(backbone, self.config.pooling, self.config.normalize, head)
        loss = functools.partial(_model_loss, soft=data.soft_targets)
        train(model, loss, rows(fit_rows), config, val, desc=f"{self.name} fine-tune")
        self.head_, self.finetuned_ = head, True
        self._backbone_fp = self._backbone_digest(sha256_tensors(backbone.state_dict()))  # hashed once, here

    def compute(self, data: TextData, cache: OutputCache) -> Outputs:
        self._require_fitted()
        emb = self.embeddings(data, cache)
        with torch.inference_mode():
            logits = self.head_.eval()(emb)
        return {"logits": logits, "embeddings": emb}

    # --- learned state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.head_.state_dict().items()} if self.head_ is not None else {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.head_.load_state_dict(dict(state))
        self.head_.eval()

    def fitted_state(self) -> dict[str, Any]:
        head = self.head_
        return {**super().fitted_state(), "finetuned": self.finetuned_, "backbone_fingerprint": self.backbone_fingerprint,
                "head_sizes": [head.in_features, head.n_classes] if head is not None else None}

    def _save_files(self, directory: Path) -> None:
        if self.finetuned_:
            backbone, tokenizer = self._load()
            backbone.save_pretrained(directory / BACKBONE_DIR, safe_serialization=True)
            tokenizer.save_pretrained(directory / BACKBONE_DIR)

    def _load_files(self, directory: Path, fitted: Mapping[str, Any], options: LoadOptions,
                    restored: Mapping[str, Any]) -> None:
        if fitted.get("finetuned"):
            self._weights, self.finetuned_ = HFSource(directory / BACKBONE_DIR), True
            # Read the saved backbone now, within the load: a save replacing the folder later cannot change it.
            self._load()
            _ = self._weights.tokenizer_fingerprint
        else:
            self._verify_source(fitted, options)
        self._backbone_fp = fitted.get("backbone_fingerprint")
        in_features, n_classes = fitted["head_sizes"]
        self.head_ = Head.from_head_config(self.config.head).build(in_features, n_classes)

    def local_model_dir(self) -> Path | None:
        """As ``HFMember.local_model_dir``; None once fine-tuned (its backbone is saved with the member)."""
        return None if self.finetuned_ else super().local_model_dir()

    def describe(self) -> str:
        mode = "fine-tuned" if self.config.finetune else "frozen"
        return f"`{model_label(self.source.model)}` ({mode}), {self.config.pooling} pooling, {self.config.head.kind} head"


def _model_loss(model: nn.Module, batch: dict[str, torch.Tensor], soft: SoftTargets | None = None) -> torch.Tensor:
    return targets_loss(model(batch), batch["labels"], batch.get("soft_targets"), **(soft.loss_options if soft else {}))
