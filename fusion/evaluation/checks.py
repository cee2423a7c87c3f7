"""Validation of report inputs: every problem raises a FusionError that names the model, the row and a fix."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import ConfigError, DataError, MemberOutputError

PROBA_ATOL = 1e-4  # rows may sum to 1 +- this (float32 softmax); they are then renormalised exactly


def check_labels(labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Return ``labels`` as a 1-D int64 array of class ids in ``0..n_classes-1``.

    Raises:
        DataError: not 1-D, empty, not integers, or an id out of range.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"labels must be a 1-D array of class ids (one per row); got shape {arr.shape}.")
    if arr.size == 0:
        raise DataError("labels are empty: evaluation needs at least one labelled row.")
    if arr.dtype.kind not in "iu":
        raise DataError(
            f"labels must be integer class ids, got dtype {arr.dtype}; map label names to ids in the "
            "ensemble's label order first."
        )
    if n_classes is not None:
        bad = np.flatnonzero((arr < 0) | (arr >= n_classes))
        if bad.size:
            raise DataError(
                f"label {arr[bad[0]]} at row {bad[0]} is out of range: class ids must be in 0..{n_classes - 1} "
                f"({n_classes} classes); {bad.size} rows are affected."
            )
    return arr.astype(np.int64, copy=False)


def check_proba(
    proba: np.ndarray, n_rows: int, name: str = "probabilities", n_classes: int | None = None,
    *, renormalise: bool = True,
) -> np.ndarray:
    """Return ``proba`` as float64 ``[n_rows, classes]``: the one check of probabilities, shared by
    ``build_report`` and every public metric function. With ``renormalise`` (build_report) rows are divided by
    their sums; without (a metric function) the values are kept as given, ties between classes included.

    Raises:
        MemberOutputError: wrong shape or row count, NaN/inf, negative values, or rows not summing to one
            within ``PROBA_ATOL`` (logits passed instead of probabilities).
    """
    try:
        arr = np.asarray(proba, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MemberOutputError(f"{name}: probabilities are not a numeric array ({err}).") from err
    if arr.ndim != 2:
        raise MemberOutputError(f"{name}: probabilities must be [rows, classes]; got shape {arr.shape}.")
    if arr.shape[0] != n_rows:
        raise MemberOutputError(
            f"{name}: {arr.shape[0]} rows of probabilities but {n_rows} labels; pass outputs on the same rows."
        )
    if n_classes is not None and arr.shape[1] != n_classes:
        raise MemberOutputError(
            f"{name}: {arr.shape[1]} classes of probabilities but {n_classes} label names; use the ensemble's "
            "label order for every model."
        )
    if not np.isfinite(arr).all():
        row = int(np.flatnonzero(~np.isfinite(arr).all(1))[0])
        raise MemberOutputError(f"{name}: NaN or inf probabilities at row {row}; check the model's outputs.")
    return _checked(arr, name, renormalise)


def _checked(arr: np.ndarray, name: str, renormalise: bool) -> np.ndarray:
    if (arr < -PROBA_ATOL).any():
        row = int(np.flatnonzero((arr < -PROBA_ATOL).any(1))[0])
        raise MemberOutputError(f"{name}: negative probability at row {row}; pass softmax outputs, not logits.")
    sums = arr.sum(1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > PROBA_ATOL)
    if bad.size:
        raise MemberOutputError(
            f"{name}: probabilities of row {bad[0]} sum to {sums[bad[0]]:.6g}, not 1 ({bad.size} rows off by more "
            f"than {PROBA_ATOL}); pass softmax outputs (probabilities), not logits or scores."
        )
    if not renormalise:
        return arr
    arr = np.clip(arr, 0.0, None)
    return arr / arr.sum(1, keepdims=True)


def check_model_names(members: Mapping[str, object], fusers: Mapping[str, object]) -> None:
    """Members are required; names are non-empty strings, unique across members and fusers."""
    if not members:
        raise DataError("no member probabilities given: a report needs at least one member.")
    for name in [*members, *fusers]:
        if not isinstance(name, str) or not name:
            raise DataError(f"model names must be non-empty strings; got {name!r}.")
    shared = sorted(set(members) & set(fusers))
    if shared:
        raise DataError(f"names {shared} are used by both a member and a fuser; give fusers distinct names.")


def check_label_names(label_names: list[str]) -> list[str]:
    """At least two label names, all distinct strings."""
    names = [str(x) for x in label_names]
    if len(names) < 2:
        raise DataError(f"a classification report needs at least two label names; got {names}.")
    if len(set(names)) != len(names):
        raise DataError(f"label names must be distinct; got {names}.")
    return names


def check_seconds(seconds: Mapping[str, float] | None, known: list[str]) -> dict[str, float]:
    """Wall seconds per model name: known names, finite and non-negative."""
    out: dict[str, float] = {}
    for name, value in (seconds or {}).items():
        if name not in known:
            raise DataError(f"seconds given for unknown model {name!r}; known models: {known}.")
        if not np.isfinite(value) or value < 0:
            raise DataError(f"seconds for {name!r} must be a finite, non-negative number; got {value!r}.")
        out[name] = float(value)
    return out


def check_weights(
    weights: Mapping[str, Mapping[str, float]] | None, fusers: list[str], members: list[str]
) -> dict[str, dict[str, float]]:
    """Per-fuser member weights: known fuser and member names, finite numbers."""
    out: dict[str, dict[str, float]] = {}
    for fuser, per_member in (weights or {}).items():
        if fuser not in fusers:
            raise DataError(f"weights given for unknown fuser {fuser!r}; fusers: {fusers}.")
        unknown = sorted(set(per_member) - set(members))
        if unknown:
            raise DataError(f"weights of fuser {fuser!r} name unknown members {unknown}; members: {members}.")
        if not all(np.isfinite(w) for w in per_member.values()):
            raise DataError(f"weights of fuser {fuser!r} must be finite numbers; got {dict(per_member)}.")
        out[fuser] = {m: float(per_member[m]) for m in members if m in per_member}
    return out


WEIGHT_METHODS = ("weights", "permutation")


def check_weight_methods(methods: Mapping[str, str] | None, weights: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """How each fuser's weights were obtained (default ``"weights"``: the fuser's own)."""
    methods = dict(methods or {})
    unknown = sorted(set(methods) - set(weights))
    if unknown:
        raise DataError(f"weight methods given for fusers without weights {unknown}; fusers with weights: {list(weights)}.")
    bad = {f: m for f, m in methods.items() if m not in WEIGHT_METHODS}
    if bad:
        raise DataError(f"weight methods must be one of {WEIGHT_METHODS}; got {bad}.")
    return {f: methods.get(f, "weights") for f in weights}


def check_n_bootstrap(n_bootstrap: int) -> int:
    """A non-negative int (0 turns confidence intervals off)."""
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ConfigError(f"n_bootstrap must be a non-negative integer (0: no intervals); got {n_bootstrap!r}.")
    return int(n_bootstrap)
