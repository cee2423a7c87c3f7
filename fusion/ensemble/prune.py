"""Pruning an ensemble to a budget: the members on the accuracy-against-cost front that fit it.

The subsets of members are those of :func:`fusion.evaluation.cost.cost_accuracy` (soft-vote accuracy, joint
cost per 1,000 rows from the output cache, a pass several members share counted once), scored on the rows the
fuser learnt from (its out-of-fold or validation rows, as ``fit`` saw them) or on ``data`` when given. Among
the subsets within the limits, the most accurate is kept (ties: the cheaper, then the one with fewer members,
then the earlier in member order); a subset whose cost is unknown never meets a limit in seconds. The pruned
ensemble keeps the chosen members, already fitted, and refits the same fuser spec(s) on their columns of the
fuser's rows (choosing among candidates as ``fit`` does).

Example:
    >>> small = ens.prune(max_seconds_per_1k=2.0)  # doctest: +SKIP
    >>> small.pruned_["members"], small.pruned_["seconds_per_1k"]  # doctest: +SKIP
    (['tfidf', 'minilm'], 1.7)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import is_int, is_number
from ..errors import ConfigError, NotFittedError
from ..evaluation.cost import cost_accuracy
from ..inputs import TextData

if TYPE_CHECKING:
    from ..fusers import MemberOutputs
    from .ensemble import Ensemble


def _check_limits(max_seconds_per_1k: Any, max_members: Any) -> None:
    if max_seconds_per_1k is None and max_members is None:
        raise ConfigError("prune needs a limit: max_seconds_per_1k= (seconds per 1,000 rows) and/or max_members=.")
    if max_seconds_per_1k is not None and not (is_number(max_seconds_per_1k) and max_seconds_per_1k > 0):
        raise ConfigError(f"prune: max_seconds_per_1k must be a number of seconds per 1,000 rows above 0; got "
                          f"{max_seconds_per_1k!r}.")
    if max_members is not None and not (is_int(max_members) and max_members >= 1):
        raise ConfigError(f"prune: max_members must be an integer >= 1; got {max_members!r}.")


def choose_subset(points: list[dict], max_seconds_per_1k: float | None, max_members: int | None) -> dict:
    """The ``cost_accuracy`` point kept under the limits (see the module docstring).

    Raises:
        ConfigError: no subset within the limits; the message names the cheapest cost that is.

    Example:
        >>> points = [{"members": ["a"], "accuracy": 0.8, "seconds_per_1k": 1.0},
        ...           {"members": ["b"], "accuracy": 0.9, "seconds_per_1k": 5.0},
        ...           {"members": ["a", "b"], "accuracy": 0.9, "seconds_per_1k": 6.0}]
        >>> choose_subset(points, 5.5, None)["members"], choose_subset(points, None, 2)["members"]
        (['b'], ['b'])
    """
    sized = [p for p in points if max_members is None or len(p["members"]) <= max_members]
    fits = [p for p in sized if max_seconds_per_1k is None
            or (p["seconds_per_1k"] is not None and p["seconds_per_1k"] <= max_seconds_per_1k)]
    if not fits:
        known = [p["seconds_per_1k"] for p in sized if p["seconds_per_1k"] is not None]
        cheapest = (f"the cheapest subset{'' if max_members is None else f' of at most {max_members} members'} "
                    f"costs {min(known):.4g} s per 1,000 rows" if known else "no subset has a known cost (members "
                    "run before costs were recorded; compute their outputs through this cache)")
        raise ConfigError(f"prune: no subset of members fits max_seconds_per_1k={max_seconds_per_1k}: {cheapest}. "
                          "Raise the budget.")
    order = {id(p): i for i, p in enumerate(points)}
    return min(fits, key=lambda p: (-p["accuracy"], math.inf if p["seconds_per_1k"] is None else p["seconds_per_1k"],
                                    len(p["members"]), order[id(p)]))


def _rows(ensemble: Ensemble, data: Any) -> tuple[MemberOutputs | None, np.ndarray | None, str]:
    """The member outputs and labels the choice is made on, and what they are."""
    if data is not None:
        rows = data if isinstance(data, TextData) else ensemble._data(data, "prune data", require_labels=True)
        return ensemble.member_outputs(rows), rows.labels, "the given data"
    kept = ensemble._fuser_outputs
    if kept is None:
        return None, None, ""
    return kept[0], kept[1], f"the fuser's {ensemble.fuser_data_} rows"


def prune(ensemble: Ensemble, *, max_seconds_per_1k: float | None = None, max_members: int | None = None,
          data: Any = None) -> Ensemble:
    """A new fitted ensemble of the members that fit the limits (see the module docstring), with ``pruned_``
    recording the choice: ``members``, ``accuracy`` and ``seconds_per_1k`` of the subset kept, ``full`` (the
    same for every member), ``rows`` (what they were measured on) and ``limits``.

    Args:
        max_seconds_per_1k: the most the members kept may cost together, in seconds per 1,000 rows.
        max_members: the most members kept.
        data: labelled rows to choose on (default: the rows the fuser learnt from, kept by ``fit``); an ensemble
            loaded from disk has no such rows, and then its fusers are refitted on ``data``.

    Raises:
        ConfigError: no limit, a bad one, or no subset within them (naming the cheapest achievable cost).
        NotFittedError: an ensemble not fitted.
    """
    from .ensemble import Ensemble

    _check_limits(max_seconds_per_1k, max_members)
    if ensemble.fuser_ is None or ensemble.members_ is None:
        raise NotFittedError("prune needs a fitted ensemble; call fit(train, validation) first.")
    chosen_on, labels, rows = _rows(ensemble, data)
    fuser_rows = ensemble._fuser_outputs
    if chosen_on is None or (fuser_rows is None and data is None):
        raise ConfigError("prune: this ensemble keeps no fuser rows (it was loaded, not fitted here); pass data= "
                          "(labelled rows) to choose the members on and refit its fuser on.")
    names = chosen_on.member_names
    proba = {n: chosen_on.probabilities(torch.float64)[:, i].numpy() for i, n in enumerate(names)}
    costs = dict(zip(names, chosen_on.costs or [None] * len(names), strict=True))
    points = cost_accuracy(proba, np.asarray(labels), costs)
    best = choose_subset(points, max_seconds_per_1k, max_members)
    everyone = next(p for p in points if p["members"] == names)
    keep = [names.index(n) for n in best["members"]]

    fit_outputs, fit_labels = fuser_rows if fuser_rows is not None else (chosen_on, labels)
    subset_outputs = fit_outputs.members(keep)
    pruned = Ensemble([ensemble.members[i] for i in keep], ensemble.fuser, labels=ensemble.labels_,
                      text_column=ensemble.text_column, label_column=ensemble.label_column, cache_dir=ensemble.cache,
                      fuser_data=ensemble.fuser_data, cv=ensemble.cv, seed=ensemble.seed)
    mode = ensemble.fuser_data_ or "validation"
    pruned._set_fitted([ensemble.members_[i] for i in keep], None, list(ensemble.labels_))
    candidates = pruned._choose_fuser(subset_outputs, np.asarray(fit_labels), mode)
    pruned.label_note_ = ensemble.label_note_
    pruned.member_fitting_ = {n: r for n, r in ensemble.member_fitting_.items() if n in best["members"]}
    pruned._cv_proba = {c.label: c.cv_proba for c in candidates if mode == "validation" and fuser_rows is not None}
    pruned._validation, pruned._validation_facts = ensemble._validation, dict(ensemble._validation_facts)
    pruned.pruned_ = {
        "members": best["members"], "accuracy": best["accuracy"], "seconds_per_1k": best["seconds_per_1k"],
        "full": {"members": names, "accuracy": everyone["accuracy"], "seconds_per_1k": everyone["seconds_per_1k"]},
        "rows": rows, "limits": {"max_seconds_per_1k": max_seconds_per_1k, "max_members": max_members},
    }
    return pruned
