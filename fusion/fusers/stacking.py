"""StackingFuser: a meta-learner on member outputs (torch logistic regression / MLP, or any sklearn classifier)."""

from __future__ import annotations

import importlib
import json
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import clone

from ..data import holdout_split
from ..errors import ConfigError, MemberOutputError
from ..heads import Head, LinearHead, MLPHead
from ..training import TensorRows, TrainConfig, seeded, train
from .base import FUSERS, Fuser, MemberOutputs

FEATURES = ("proba", "log_proba", "logits")
DEFAULT_TRAINING = TrainConfig(learning_rate=1e-2, max_epochs=300, batch_size=512, weight_decay=1e-2, patience=15,
                               show_progress=False)


def _sklearn_spec(estimator: Any) -> dict[str, Any]:
    cls = type(estimator)
    if not cls.__module__.startswith("sklearn."):
        raise ConfigError(f"StackingFuser meta must be 'logreg', 'mlp' or a scikit-learn classifier, got {cls.__name__}.")
    params = estimator.get_params(deep=False)
    int_keyed = sorted(k for k, v in params.items() if isinstance(v, dict) and any(not isinstance(x, str) for x in v))
    if int_keyed:  # JSON would turn {0: 2.0} into {"0": 2.0}, and the reloaded estimator would differ
        raise ConfigError(f"StackingFuser meta {cls.__name__}: parameters {int_keyed} are dicts with non-string keys, "
                          "which JSON cannot keep; use string class names or leave them at their defaults.")
    try:
        params = json.loads(json.dumps(params))  # the form the config will have after a save (tuples -> lists)
    except TypeError as err:
        raise ConfigError(f"StackingFuser meta {cls.__name__}: parameters must be JSON-serialisable ({err}).") from err
    return {"sklearn": f"{cls.__module__}.{cls.__qualname__}", "params": params}


def _sklearn_from_spec(spec: dict[str, Any]) -> Any:
    module, _, name = spec["sklearn"].rpartition(".")
    if not module.startswith("sklearn."):
        raise ConfigError(f"StackingFuser meta {spec['sklearn']!r}: only scikit-learn classes can be rebuilt.")
    return getattr(importlib.import_module(module), name)(**spec["params"])


def _meta_loss(head: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(head(batch["x"]), batch["y"], reduction="none")


@FUSERS.register("stacking")
class StackingFuser(Fuser):
    """Learns a classifier whose inputs are the members' outputs (and optionally their embeddings).

    When the Ensemble trains members itself, it trains this fuser on out-of-fold member outputs from K-fold
    cross-fitting (``Ensemble(cv=K)``), so the meta-learner never sees a member's output on rows that member
    was trained on.

    Args:
        meta: ``"logreg"`` (torch logistic regression), ``"mlp"``, or an unfitted scikit-learn classifier with
            ``predict_proba`` (JSON-serialisable parameters), e.g. ``LogisticRegression(C=0.5)``.
        features: member outputs as ``"proba"``, ``"log_proba"`` or raw ``"logits"``.
        passthrough: also feed the members' pooled embeddings.
        hidden: hidden width for ``meta="mlp"``.
        standardize: scale features to zero mean and unit variance (statistics from the training rows).
        validation_fraction: share of rows held out for early stopping of torch meta-learners.
        train_config: torch training settings, as a ``TrainConfig`` or its dict.

    Example:
        >>> import torch
        >>> scores = torch.randn(200, 3, 2); labels = scores[:, 1].argmax(-1)
        >>> float((StackingFuser().fit(scores, labels).predict(scores) == labels.numpy()).mean()) > 0.9
        True
    """

    def __init__(self, meta: str | Any = "logreg", features: str = "log_proba", passthrough: bool = False,
                 hidden: int = 64, standardize: bool = True, validation_fraction: float = 0.1,
                 train_config: TrainConfig | dict[str, Any] | None = None) -> None:
        if isinstance(meta, dict):
            meta = _sklearn_from_spec(meta)
        if isinstance(meta, str) and meta not in ("logreg", "mlp"):
            raise ConfigError(f"StackingFuser meta must be 'logreg', 'mlp' or a scikit-learn classifier, got {meta!r}.")
        if features not in FEATURES:
            raise ConfigError(f"StackingFuser features must be one of {FEATURES}, got {features!r}.")
        self.meta_spec = meta if isinstance(meta, str) else _sklearn_spec(meta)
        self._sklearn_meta = None if isinstance(meta, str) else meta
        self.features, self.passthrough, self.hidden = features, bool(passthrough), int(hidden)
        self.standardize, self.validation_fraction = bool(standardize), float(validation_fraction)
        self.train_config = train_config.to_dict() if isinstance(train_config, TrainConfig) else train_config
        self._config = TrainConfig.from_dict({**DEFAULT_TRAINING.to_dict(), **(self.train_config or {})})

    @property
    def meta(self) -> str | dict[str, Any]:
        """``"logreg"``, ``"mlp"``, or the JSON spec of a scikit-learn meta-learner (what ``to_config`` stores)."""
        return self.meta_spec

    @property
    def uses_embeddings(self) -> bool:  # type: ignore[override]
        return self.passthrough

    def _raw_features(self, outputs: MemberOutputs) -> torch.Tensor:
        scores = {"proba": outputs.probabilities(), "log_proba": outputs.logits.log_softmax(-1),
                  "logits": outputs.logits}[self.features]
        parts = [scores.reshape(outputs.n_rows, -1)]
        if self.passthrough:
            embeddings = [e for e in outputs.embeddings if e is not None]
            if not embeddings:
                raise MemberOutputError("StackingFuser(passthrough=True) needs members with embeddings (HFEncoder).")
            parts += [e.float() for e in embeddings]
        return torch.cat(parts, dim=1)

    def _features(self, outputs: MemberOutputs) -> torch.Tensor:
        x = self._raw_features(outputs)
        if x.shape[1] != self.mean_.shape[0]:
            raise MemberOutputError(f"stacking was fitted on {self.mean_.shape[0]} features, got {x.shape[1]}.")
        return (x - self.mean_) / self.std_

    def _new_head(self) -> Head:
        return LinearHead() if self.meta_spec == "logreg" else MLPHead(hidden=self.hidden, dropout=0.1)

    def _fit(self, outputs: MemberOutputs, labels: torch.Tensor) -> None:
        x = self._raw_features(outputs)
        self.mean_ = x.mean(0) if self.standardize else torch.zeros(x.shape[1])
        self.std_ = x.std(0).clamp(min=1e-6) if self.standardize and len(x) > 1 else torch.ones(x.shape[1])
        x = (x - self.mean_) / self.std_
        if self._sklearn_meta is not None:
            self.estimator_ = clone(self._sklearn_meta).fit(x.numpy(), labels.numpy())
            return
        with seeded(self._config.seed):
            head = self._new_head().build(x.shape[1], outputs.n_classes)
        fit_rows, hold_rows = holdout_split(len(x), self.validation_fraction, self._config.seed)
        val = TensorRows(x=x[hold_rows], y=labels[hold_rows]) if hold_rows is not None else None
        self.training_ = train(head, _meta_loss, TensorRows(x=x[fit_rows], y=labels[fit_rows]), self._config, val,
                               desc="stacking fuser")
        self.head_ = head.eval()

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        x = self._features(outputs)
        if self._sklearn_meta is not None:
            proba = np.zeros((len(x), self.n_classes_))
            proba[:, self.estimator_.classes_] = self.estimator_.predict_proba(x.numpy())
            return torch.from_numpy(proba)
        with torch.inference_mode():
            return self.head_(x).softmax(-1)

    def _state(self) -> dict[str, torch.Tensor]:
        state = {"mean_": self.mean_, "std_": self.std_}
        if self._sklearn_meta is not None:
            import skops.io

            state["estimator_skops"] = torch.frombuffer(bytearray(skops.io.dumps(self.estimator_)), dtype=torch.uint8)
        else:
            state.update({f"head.{k}": v.detach() for k, v in self.head_.state_dict().items()})
        return state

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.mean_, self.std_ = state["mean_"], state["std_"]
        if self._sklearn_meta is not None:
            from ..members.sklearn_member import load_skops_bytes

            self.estimator_ = load_skops_bytes(state["estimator_skops"].numpy().tobytes(), "stacking meta-learner")
            return
        self.head_ = self._new_head().build(self.mean_.shape[0], self.n_classes_)
        self.head_.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        self.head_.eval()
