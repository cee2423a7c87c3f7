"""StackingFuser: a meta-learner on member outputs (torch logistic regression / MLP, or an allow-listed sklearn
classifier)."""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import joblib
import numpy as np
import torch

from ..config import LoadOptions, at_least, coerced, digest, in_range, is_bool, one_of
from ..errors import ConfigError, MemberOutputError, PersistenceError
from ..inputs import holdout_split
from ..io import load_skops, load_skops_bytes, save_skops, sha256_tensors
from ..losses import per_example_cross_entropy
from ..members.heads import Head, LinearHead, MLPHead
from ..train_config import TrainConfig
from ..training import TensorRows, seeded, train
from .base import FUSERS, Fuser, FuserConfig, MemberOutputs, training_field

FEATURES = ("proba", "log_proba", "logits")
TORCH_METAS = ("logreg", "mlp")
META_TEXT = "'logreg', 'mlp' or a scikit-learn classifier"
DEFAULT_TRAINING = TrainConfig(learning_rate=1e-2, max_epochs=300, batch_size=512, weight_decay=1e-2, patience=15,
                               show_progress=False)
_BOOL = (is_bool, "True or False")
META_FILE = "meta.skops"  # a scikit-learn meta-learner, written by save_files (the ensemble's fuser/meta.skops)
_LEGACY_SKOPS = "estimator_skops"  # where saves before META_FILE kept its skops bytes: a uint8 state tensor


# The only scikit-learn classes a meta spec may name (public dotted names). A spec is rebuilt by calling the
# class with the config's parameters, so a config someone else saved must not name anything else: no function,
# no meta-estimator taking another estimator, nothing outside this list. Each has ``predict_proba``.
SKLEARN_METAS = (
    "sklearn.discriminant_analysis.LinearDiscriminantAnalysis",
    "sklearn.ensemble.ExtraTreesClassifier",
    "sklearn.ensemble.GradientBoostingClassifier",
    "sklearn.ensemble.HistGradientBoostingClassifier",
    "sklearn.ensemble.RandomForestClassifier",
    "sklearn.linear_model.LogisticRegression",
    "sklearn.naive_bayes.GaussianNB",
    "sklearn.neighbors.KNeighborsClassifier",
    "sklearn.neural_network.MLPClassifier",
    "sklearn.svm.SVC",
)
_ALLOWED_TEXT = ", ".join(SKLEARN_METAS)
_FIX = (f"the allowed scikit-learn classifiers are: {_ALLOWED_TEXT}. Use one of these (or meta='logreg' / 'mlp'), "
        "or build the StackingFuser in Python and pass an estimator object of one of these classes; an estimator "
        "passed in Python is saved as such a spec too, so it must also be one of these classes.")


def _allowed_class(path: str) -> tuple[str, type] | None:
    """The public name and class of an allow-listed meta-learner named by ``path`` (its public dotted name, or the
    ``module.Class`` of the defining module that older saves wrote); ``None`` if ``path`` names anything else.
    Only the allow-listed public modules are ever imported, never a module the path names."""
    from sklearn.base import ClassifierMixin

    name = path.rpartition(".")[2]
    public = next((p for p in SKLEARN_METAS if p.rpartition(".")[2] == name), None)
    if public is None or not path.startswith("sklearn."):
        return None
    module, _, attr = public.rpartition(".")
    cls = getattr(importlib.import_module(module), attr, None)
    if not inspect.isclass(cls) or not issubclass(cls, ClassifierMixin):
        return None
    if path != public and path != f"{cls.__module__}.{cls.__qualname__}":
        return None
    return public, cls


def _refuse(what: str) -> ConfigError:
    return ConfigError(f"StackingFuser meta {what} is not an allowed meta-learner; {_FIX}")


def _plain_json(value: Any, where: str) -> None:
    """Refuse anything but JSON values (str, number, bool, None, lists and string-keyed dicts of them), and any
    dict that looks like a nested estimator spec."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _plain_json(item, where)
        return
    if isinstance(value, Mapping):
        if "sklearn" in value:
            raise ConfigError(f"StackingFuser meta parameter {where!r} holds a nested estimator spec "
                              f"{dict(value)!r}; parameters must be plain JSON values (numbers, strings, lists).")
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"StackingFuser meta parameter {where!r} has the non-string key {key!r}; "
                                  "parameters must be plain JSON values.")
            _plain_json(item, where)
        return
    raise ConfigError(f"StackingFuser meta parameter {where!r} is a {type(value).__name__}; parameters must be "
                      "plain JSON values (numbers, strings, booleans, null, lists and string-keyed dicts).")


def _sklearn_spec(estimator: Any) -> dict[str, Any]:
    """``{"sklearn": "module.Class", "params": {...}}`` of an unfitted scikit-learn classifier (JSON as saved)."""
    cls = type(estimator)
    if not cls.__module__.startswith("sklearn."):
        raise ConfigError(f"StackingFuser.Config.meta must be {META_TEXT}; got a {cls.__module__}.{cls.__qualname__}.")
    path = f"{cls.__module__}.{cls.__qualname__}"
    allowed = _allowed_class(path)
    if allowed is None or allowed[1] is not cls:
        raise _refuse(repr(path))
    public = allowed[0]
    params = estimator.get_params(deep=False)
    int_keyed = sorted(k for k, v in params.items() if isinstance(v, dict) and any(not isinstance(x, str) for x in v))
    if int_keyed:  # JSON would turn {0: 2.0} into {"0": 2.0}, and the reloaded estimator would differ
        raise ConfigError(f"StackingFuser meta {cls.__name__}: parameters {int_keyed} are dicts with non-string keys, "
                          "which JSON cannot keep; use string class names or leave them at their defaults.")
    try:
        params = json.loads(json.dumps(params))  # the form the config will have after a save (tuples -> lists)
    except TypeError as err:
        raise ConfigError(f"StackingFuser meta {cls.__name__}: parameters must be JSON-serialisable ({err}).") from err
    for key, value in params.items():
        _plain_json(value, key)
    if not hasattr(estimator, "predict_proba"):
        raise ConfigError(f"StackingFuser meta {cls.__name__} has no predict_proba with these parameters "
                          "(for SVC, pass probability=True).")
    return {"sklearn": public, "params": params}


def _sklearn_from_spec(spec: Mapping[str, Any]) -> Any:
    """A new, unfitted estimator from ``_sklearn_spec`` output: only allow-listed scikit-learn classifier classes
    (``SKLEARN_METAS``), called with plain JSON parameters, so loading a config never runs code it names."""
    path, params = spec.get("sklearn"), spec.get("params", {})
    if not isinstance(path, str) or not isinstance(params, Mapping) or set(spec) - {"sklearn", "params"}:
        raise ConfigError(f"StackingFuser meta spec must be {{'sklearn': 'sklearn.module.Class', 'params': {{...}}}}; "
                          f"got {dict(spec)!r}.")
    allowed = _allowed_class(path)
    if allowed is None:
        raise _refuse(repr(path))
    cls = allowed[1]
    for key, value in params.items():
        if not isinstance(key, str):
            raise ConfigError(f"StackingFuser meta {path!r}: parameter names must be strings; got {key!r}.")
        _plain_json(value, key)
    try:
        return cls(**params)
    except TypeError as err:
        raise ConfigError(f"StackingFuser meta {path!r} cannot be rebuilt ({err}); check its parameters against "
                          "the installed scikit-learn.") from err


def _meta(value: Any) -> str | dict[str, Any]:
    """``"logreg"`` / ``"mlp"`` as given; a scikit-learn classifier (or its spec) as its JSON spec."""
    if isinstance(value, str):
        return value
    return _sklearn_spec(_sklearn_from_spec(value) if isinstance(value, Mapping) else value)


def _loss(head: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return per_example_cross_entropy(head(batch["x"]), batch["y"])


@FUSERS.register("stacking")
class StackingFuser(Fuser):
    """Learns a classifier whose inputs are the members' outputs (and optionally their embeddings).

    When the Ensemble trains members itself, it trains this fuser on out-of-fold member outputs from K-fold
    cross-fitting (``Ensemble(cv=K)``), so the meta-learner never sees a member's output on rows that member
    was trained on.

    Args:
        meta: ``"logreg"`` (torch logistic regression), ``"mlp"``, or an unfitted scikit-learn classifier of a
            class in ``SKLEARN_METAS`` with ``predict_proba`` (plain JSON parameters), e.g.
            ``LogisticRegression(C=0.5)``; the config stores it as ``{"sklearn": "module.Class", "params": {...}}``
            and each fit builds a new one from that. Loading rebuilds only allow-listed classes, so a saved config
            cannot make fusion call anything else.
        features: member outputs as ``"proba"``, ``"log_proba"`` or raw ``"logits"``.
        passthrough: also feed the members' pooled embeddings.
        hidden: hidden width for ``meta="mlp"`` (>= 1).
        standardize: scale features to zero mean and unit variance (statistics from the training rows).
        validation_fraction: share of rows held out for early stopping of torch meta-learners, in [0, 1).
        train_config: torch training settings: a ``TrainConfig``, or a dict of some of its fields merged over
            ``DEFAULT_TRAINING``.

    Example:
        >>> import torch
        >>> scores = torch.randn(200, 3, 2); labels = scores[:, 1].argmax(-1)
        >>> float((StackingFuser().fit(scores, labels).predict(scores) == labels.numpy()).mean()) > 0.9
        True
    """

    default_candidate = 3

    @dataclass(frozen=True)
    class Config(FuserConfig):
        meta: str | dict[str, Any] = coerced(_meta, "logreg")
        features: str = "log_proba"
        passthrough: bool = False
        hidden: int = 64
        standardize: bool = True
        validation_fraction: float = 0.1
        train_config: TrainConfig = training_field(DEFAULT_TRAINING)

        constraints: ClassVar = {
            "meta": (lambda v: isinstance(v, dict) or v in TORCH_METAS, META_TEXT),
            "features": (one_of(*FEATURES), f"one of {FEATURES}"),
            "passthrough": _BOOL, "standardize": _BOOL,
            "hidden": (at_least(1, integer=True), "an integer >= 1"),
            "validation_fraction": (in_range(0.0, 1.0), "a number in [0, 1)"),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.estimator_: Any = None  # a fitted scikit-learn meta-learner
        self._trusted_types: tuple[str, ...] = ()  # load_files' skops types, for a legacy state tensor

    @property
    def uses_embeddings(self) -> bool:  # type: ignore[override]
        return self.config.passthrough

    @property
    def _sklearn(self) -> bool:
        return isinstance(self.config.meta, dict)

    def _raw_features(self, outputs: MemberOutputs) -> torch.Tensor:
        scores = {"proba": outputs.probabilities(), "log_proba": outputs.logits.log_softmax(-1),
                  "logits": outputs.logits}[self.config.features]
        parts = [scores.reshape(outputs.n_rows, -1)]
        if self.config.passthrough:
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
        return LinearHead() if self.config.meta == "logreg" else MLPHead(hidden=self.config.hidden, dropout=0.1)

    def _fit(self, outputs: MemberOutputs, labels: torch.Tensor) -> None:
        x = self._raw_features(outputs)
        standardize = self.config.standardize
        self.mean_ = x.mean(0) if standardize else torch.zeros(x.shape[1])
        self.std_ = x.std(0).clamp(min=1e-6) if standardize and len(x) > 1 else torch.ones(x.shape[1])
        x = (x - self.mean_) / self.std_
        if self._sklearn:
            self.estimator_ = _sklearn_from_spec(self.config.meta).fit(x.numpy(), labels.numpy())
            return
        config = self.config.train_config
        with seeded(config.seed):
            head = self._new_head().build(x.shape[1], outputs.n_classes)
        fit_rows, hold_rows = holdout_split(len(x), self.config.validation_fraction, config.seed)
        val = TensorRows(x=x[hold_rows], y=labels[hold_rows]) if hold_rows is not None else None
        self.training_ = train(head, _loss, TensorRows(x=x[fit_rows], y=labels[fit_rows]), config, val,
                               desc="stacking fuser")
        self.head_ = head.eval()

    def _predict_proba(self, outputs: MemberOutputs) -> torch.Tensor:
        x = self._features(outputs)
        if self._sklearn:
            proba = np.zeros((len(x), self.n_classes_))
            proba[:, self.estimator_.classes_] = self.estimator_.predict_proba(x.numpy())
            return torch.from_numpy(proba)
        with torch.inference_mode():
            return self.head_(x).softmax(-1)

    def _state(self) -> dict[str, torch.Tensor]:
        state = {"mean_": self.mean_, "std_": self.std_}
        if not self._sklearn:
            state.update({f"head.{k}": v.detach() for k, v in self.head_.state_dict().items()})
        return state

    def save_files(self, directory: Path) -> None:
        """A scikit-learn meta-learner goes to ``directory/meta.skops`` (read back by ``load_files``)."""
        super().save_files(directory)
        if self._sklearn:
            save_skops(self.estimator_, directory / META_FILE)

    def load_files(self, directory: Path, options: LoadOptions | None = None) -> StackingFuser:
        """Read the scikit-learn meta-learner from ``directory/meta.skops``, trusting only skops' default types
        and ``options.trusted_types`` (a refused type is a PersistenceError naming it)."""
        self._trusted_types = tuple((options or LoadOptions()).trusted_types)
        if self._sklearn and (directory / META_FILE).is_file():
            self.estimator_ = load_skops(directory / META_FILE, "fuser: stacking meta-learner", self._trusted_types)
        return self

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.mean_, self.std_ = state["mean_"], state["std_"]
        if self._sklearn:
            if _LEGACY_SKOPS in state:  # saved before meta.skops existed
                self.estimator_ = load_skops_bytes(state[_LEGACY_SKOPS].numpy().tobytes(),
                                                   "fuser: stacking meta-learner", self._trusted_types)
            if self.estimator_ is None:
                raise PersistenceError(f"stacking fuser: the scikit-learn meta-learner ({META_FILE}) was not read; "
                                       "call load_files(folder, options) before load_state_dict, or load the whole "
                                       "ensemble with Ensemble.from_pretrained.")
            return
        self.head_ = self._new_head().build(self.mean_.shape[0], self.n_classes_)
        self.head_.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        self.head_.eval()

    def state_hash(self) -> str:
        """The tensors' hash; a scikit-learn meta-learner is hashed as an object (its skops bytes carry memory
        ids and timestamps), so identical fits share a fingerprint."""
        if not self._sklearn:
            return super().state_hash()
        return digest(sha256_tensors(self.state_dict()), joblib.hash(self.estimator_))
