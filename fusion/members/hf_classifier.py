"""HFClassifier: any AutoModelForSequenceClassification, with its own tokenizer."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..cache import OutputCache, Outputs
from ..data import TextData
from ..engine import resolve_dtype, run_model
from ..labels import apply_label_map
from .base import MEMBERS, Member
from .hf_source import HFSource, model_short_name


@MEMBERS.register("hf_classifier")
class HFClassifier(Member):
    """A fine-tuned sequence classifier from a local directory or the hub; frozen (nothing to fit).

    Args:
        model: a model directory or hub id.
        name: member name (default: the directory or repo name).
        revision: hub revision (branch, tag or commit).
        label_map: renames the model's labels (keys: its names or ids), e.g. ``{"LABEL_0": "negative"}``;
            needed when ``config.id2label`` only has placeholders.
        max_length: truncation in tokens (default: the model's limit).
        batch_size: at most this many rows per inference batch (default: only the token budget limits it).
        max_tokens: padded tokens per inference batch (default: from free GPU memory; 2,048 on CPU).
        dtype: weights' dtype for inference: "auto" (bfloat16 on GPUs that support it, float32 on CPU),
            "float32", "bfloat16" or "float16".
        device: where to run (default CUDA when present).
        trust_remote_code: allow custom modelling code from the repository (off by default).
        show_progress: progress bar during inference.

    Example:
        >>> member = HFClassifier("distilbert-base-uncased-finetuned-sst-2-english")  # doctest: +SKIP
        >>> member.output_labels(None)  # doctest: +SKIP
        ['NEGATIVE', 'POSITIVE']
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        name: str | None = None,
        revision: str | None = None,
        label_map: Mapping[str | int, str] | None = None,
        max_length: int | None = None,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        dtype: str = "auto",
        device: str | None = None,
        trust_remote_code: bool = False,
        show_progress: bool = True,
    ) -> None:
        super().__init__(name or model_short_name(model))
        self.source = HFSource(model, revision)
        self.label_map = dict(label_map) if label_map else None
        self.max_length, self.batch_size, self.device = max_length, batch_size, device
        self.max_tokens, self.dtype = max_tokens, dtype
        resolve_dtype(dtype, torch.device("cpu"))  # an unknown dtype fails here, not at the first run
        self.trust_remote_code, self.show_progress = trust_remote_code, show_progress
        self._model: torch.nn.Module | None = None
        self._tokenizer = None

    def _config_labels(self) -> list[str]:
        config = json.loads((self.source.local_dir / "config.json").read_text())
        id2label = config.get("id2label") or {str(i): f"LABEL_{i}" for i in range(config.get("num_labels", 2))}
        return [id2label[k] for k in sorted(id2label, key=int)]

    def output_labels(self, ensemble_labels: list[str] | None) -> list[str]:
        return apply_label_map(self.name, self._config_labels(), self.label_map)

    def fingerprint(self) -> str:
        settings = json.dumps({"max_length": self.max_length, "kind": self.kind}, sort_keys=True)
        return hashlib.sha256((self.source.fingerprint + settings).encode()).hexdigest()

    def load(self) -> tuple[torch.nn.Module, Any]:
        """The model (eval mode) and tokenizer, loaded once."""
        if self._model is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            path, remote = str(self.source.local_dir), self.trust_remote_code
            self._tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
            self._model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=remote).eval()
        return self._model, self._tokenizer

    def compute(self, data: TextData, cache: OutputCache) -> Outputs:
        model, tokenizer = self.load()
        return run_model(
            model, tokenizer, data.texts, lambda m, batch: {"logits": m(**batch).logits},
            batch_size=self.batch_size, max_tokens=self.max_tokens, max_length=self.max_length, device=self.device,
            dtype=self.dtype, tokens_key=(self.source.tokenizer_fingerprint, data.fingerprint), cache=cache,
            desc=f"{self.name}", show_progress=self.show_progress,
        )

    def torch_modules(self) -> list[torch.nn.Module]:
        return [self._model] if self._model is not None else []

    def to_config(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "name": self.name, **self.source.to_config(), "label_map": self.label_map,
            "max_length": self.max_length, "batch_size": self.batch_size, "max_tokens": self.max_tokens, "dtype": self.dtype,
            "trust_remote_code": self.trust_remote_code,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], directory: Path, **options: Any) -> HFClassifier:
        member = cls(
            config["model"], name=config["name"], revision=config.get("revision"), label_map=config.get("label_map"),
            max_length=config.get("max_length"), batch_size=config.get("batch_size"),
            max_tokens=config.get("max_tokens"), dtype=config.get("dtype", "auto"),
            trust_remote_code=config.get("trust_remote_code", False), show_progress=options.get("show_progress", True),
        )
        if options.get("verify_members", True):
            member.source.verify(config["weights_sha256"], member.name)
        return member

    def describe(self) -> str:
        return f"Hugging Face classifier `{self.source.model}`"
