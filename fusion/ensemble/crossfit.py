"""Out-of-fold outputs: K-fold cross-fitting of trainable members on the training rows, and of fusers on the
rows they learn from (so a report or a selection never scores a model on rows it was fitted on)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold

from ..cache.store import OutputCache, Outputs
from ..fusers import Fuser, MemberOutputs
from ..inputs import TextData
from ..members.base import Member
from ..progress import stage

logger = logging.getLogger(__name__)


def folds(labels: np.ndarray, cv: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K folds when every class has at least ``cv`` rows, else plain shuffled K folds."""
    counts = np.bincount(labels)
    if counts[counts > 0].min() >= cv:
        splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    else:
        logger.warning("a class has fewer than cv=%d rows; using unstratified folds", cv)
        splitter = KFold(n_splits=cv, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def out_of_fold_outputs(
    member: Member, train: TextData, label_names: list[str], cache: OutputCache, cv: int, seed: int
) -> Outputs:
    """Outputs of ``member`` on every training row, each from a copy trained on the other folds.

    Cached by the member's unfitted fingerprint and the labelled data, so a later fit (another fuser) trains
    no fold again. Each fold's outputs are an entry of their own while the folds are built, so a build that
    is interrupted (killed, out of memory) trains only the folds it had not finished when it is run again;
    once every fold is done, their entries make way for the whole one.
    """
    spec = member.clone()
    variant = f"oof-cv{cv}-seed{seed}"
    splits = folds(train.labels, cv, seed)

    def fold_outputs(k: int, fit_rows: np.ndarray, out_rows: np.ndarray) -> Outputs:
        logger.info("cross-fitting member %s: fold %d/%d", member.name, k + 1, cv)
        with stage(f"fold {k + 1}/{cv}"):  # the fold's bars say which fold they are
            fold_member = spec.clone().fit(train.subset(fit_rows), label_names, cache)
            return fold_member.compute(train.subset(out_rows), cache)

    def compute() -> Outputs:
        result: dict[str, torch.Tensor] = {}
        for k, (fit_rows, out_rows) in enumerate(splits):
            outputs = cache.get_or_compute(
                spec.fingerprint, train.label_fingerprint, lambda k=k, f=fit_rows, o=out_rows: fold_outputs(k, f, o),
                f"{variant}-fold{k}", label=f"{member.kind} {member.name} (out-of-fold, fold {k + 1}/{cv})")
            for name, value in outputs.items():
                if name not in result:
                    result[name] = torch.empty((len(train), *value.shape[1:]), dtype=value.dtype)
                result[name][torch.as_tensor(out_rows)] = value
        return result

    outputs = cache.get_or_compute(spec.fingerprint, train.label_fingerprint, compute, variant,
                                   label=f"{member.kind} {member.name} (out-of-fold)")
    for k in range(len(splits)):  # the whole entry is written: the folds' are no longer needed
        cache.discard(spec.fingerprint, train.label_fingerprint, f"{variant}-fold{k}")
    return outputs


def out_of_fold_fused(fuser: Fuser, outputs: MemberOutputs, labels: np.ndarray, cv: int, seed: int) -> np.ndarray:
    """Fused probabilities ``[rows, classes]`` of every row from a clone of ``fuser`` fitted on the other folds.

    Example:
        >>> import torch
        >>> from fusion.fusers import MeanFuser
        >>> scores = torch.randn(20, 2, 3)
        >>> out_of_fold_fused(MeanFuser(), MemberOutputs(scores), scores[:, 0].argmax(-1).numpy(), 5, 0).shape
        (20, 3)
    """
    proba = np.zeros((outputs.n_rows, outputs.n_classes))
    for fit_rows, out_rows in folds(labels, cv, seed):
        fold = fuser.clone().fit(outputs.subset(fit_rows), labels[fit_rows])
        proba[out_rows] = fold.predict_proba(outputs.subset(out_rows))
    return proba
