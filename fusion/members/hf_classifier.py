"""HFClassifier: any AutoModelForSequenceClassification, with its own tokenizer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cache.store import OutputCache, Outputs
from ..config import LoadOptions
from ..engine import run_model
from ..errors import ConfigError
from ..inputs import TextData
from ..labels import apply_label_map, config_labels
from ..progress import quiet_transformers
from .base import MEMBERS, label_map_field
from .hf_model import HFMember, HFModelConfig
from .hf_source import model_label


@MEMBERS.register("hf_classifier")
class HFClassifier(HFMember):
    """A fine-tuned sequence classifier from a local directory or the hub; frozen (nothing to fit).

    Args:
        model: a model directory, hub id or ``package:MODULE``.
        label_map: renames the model's labels (keys: its names or ids), e.g. ``{"LABEL_0": "negative"}``;
            needed when ``config.id2label`` only has placeholders.
        name: member name (default: the directory or repo name).
        revision / max_length / batch_size / max_tokens / dtype / device / trust_remote_code / show_progress:
            see ``HFModelConfig``.

    Example:
        >>> member = HFClassifier("distilbert-base-uncased-finetuned-sst-2-english")  # doctest: +SKIP
        >>> member.output_labels(None)  # doctest: +SKIP
        ['NEGATIVE', 'POSITIVE']
    """

    @dataclass(frozen=True)
    class Config(HFModelConfig):
        label_map: Mapping[str | int, str] | None = label_map_field()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: torch.nn.Module | None = None
        self._tokenizer = None

    def _clone_into(self, twin: HFClassifier) -> None:
        super()._clone_into(twin)
        twin._model, twin._tokenizer = self._model, self._tokenizer  # frozen: safe to share

    def _config_labels(self) -> list[str]:
        return config_labels(json.loads((self.source.local_dir / "config.json").read_text()))

    def output_labels(self, ensemble_labels: list[str] | None) -> list[str]:
        if not self._declares_classifier():
            self.load_model()  # confirms (and refuses) a checkpoint without a trained head before any label check
        return apply_label_map(self.name, self._config_labels(), self.config.label_map)

    def _declares_classifier(self) -> bool:
        """False when ``config.json`` names architectures and none is a sequence classifier (an encoder
        checkpoint such as ``BertModel``): a cheap hint, confirmed by the load report in ``load_model``."""
        architectures = json.loads((self.source.local_dir / "config.json").read_text()).get("architectures") or []
        return not architectures or any(str(a).endswith("ForSequenceClassification") for a in architectures)

    def load_model(self) -> tuple[torch.nn.Module, Any]:
        """The model (eval mode) and tokenizer, loaded once (``load`` rebuilds a saved member).

        Raises:
            ConfigError: the checkpoint lacks weights the model needs (an encoder without a classification
                head): transformers would initialise them at random on every load.
        """
        if self._model is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            path, remote = str(self.source.local_dir), self.config.trust_remote_code
            with quiet_transformers():  # no "Loading weights" bar or load report while fusion's progress is off
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    path, trust_remote_code=remote, output_loading_info=True)
                self._refuse_new_weights(info)
                self._tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
            self._model = model.eval()
        return self._model, self._tokenizer

    def _refuse_new_weights(self, info: Mapping[str, Any]) -> None:
        """Raise ConfigError if transformers reports weights missing from the checkpoint: they are newly
        initialised at random, so predictions would be at chance and change on every load. (Weights of another
        shape already make transformers raise, since ``ignore_mismatched_sizes`` is off.)"""
        missing = sorted(str(k) for k in info.get("missing_keys") or ())
        if missing:
            raise ConfigError(
                f"member {self.name!r}: checkpoint {self.source.model!r} has no trained classification weights "
                f"(missing: {missing}); transformers would initialise them at random on every load, so predictions "
                "would be at chance and differ between loads. For an encoder checkpoint, train a head on it: "
                f"HFEncoder({self.source.model!r}, head=LinearHead()); or point HFClassifier at a fine-tuned "
                "sequence-classification checkpoint."
            )

    def compute(self, data: TextData, cache: OutputCache) -> Outputs:
        model, tokenizer = self.load_model()
        return run_model(model, tokenizer, data.texts, lambda m, batch: {"logits": m(**batch).logits},
                         tokens_key=(self.source.tokenizer_fingerprint, data.fingerprint), cache=cache,
                         desc=self.name, **self.inference_options())

    def torch_modules(self) -> list[torch.nn.Module]:
        return [self._model] if self._model is not None else []

    def _reloadable(self) -> tuple[str, ...]:
        return ("_model", "_tokenizer")

    def _load_files(self, directory: Path, fitted: Mapping[str, Any], options: LoadOptions,
                    restored: Mapping[str, Any]) -> None:
        self._verify_source(fitted, options)

    def describe(self) -> str:
        return f"Hugging Face classifier `{model_label(self.source.model)}`"
