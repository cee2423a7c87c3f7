"""``fusion.evaluate``: turn members (or an ensemble) + fitted fusers + labelled data into a Report."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import TextData
from .errors import ConfigError, NotFittedError
from .fusers import Fuser, MemberOutputs

if TYPE_CHECKING:
    from .ensemble import Ensemble
    from .evaluation import Report
    from .members.base import Member


def _named_fusers(fusers: Fuser | Sequence[Fuser] | Mapping[str, Fuser] | None) -> dict[str, Fuser]:
    if fusers is None:
        return {}
    if isinstance(fusers, Fuser):
        fusers = [fusers]
    named = dict(fusers) if isinstance(fusers, Mapping) else {}
    for fuser in [] if isinstance(fusers, Mapping) else fusers:
        name = fuser.name if fuser.name not in named else f"{fuser.name}-{len(named)}"
        named[name] = fuser
    unfitted = [name for name, f in named.items() if not f.is_fitted]
    if unfitted:
        raise NotFittedError(f"fusers {unfitted} are not fitted; fit them (or the ensemble) before evaluating.")
    return named


def _fuser_results(outputs: MemberOutputs, fusers: dict[str, Fuser]) -> tuple[dict, dict, dict]:
    proba, seconds, weights = {}, {}, {}
    for name, fuser in fusers.items():
        start = time.perf_counter()
        proba[name] = fuser.predict_proba(outputs)
        seconds[name] = time.perf_counter() - start
        member_weights = fuser.member_weights()
        if member_weights is not None:
            weights[name] = dict(zip(outputs.member_names, map(float, member_weights), strict=True))
    return proba, seconds, weights


def evaluate(
    source: Ensemble | Sequence[Member] | MemberOutputs,
    fusers: Fuser | Sequence[Fuser] | Mapping[str, Fuser] | None,
    data: Any,
    *,
    labels: Sequence[str] | None = None,
    **report_options: Any,
) -> Report:
    """Score members and fitted fusers on labelled data: metrics, uncertainty, diversity, cost.

    Args:
        source: an ``Ensemble``, a list of fitted members, or precomputed ``MemberOutputs``.
        fusers: fitted fusers to compare (a fuser, a list, or ``{name: fuser}``); with an Ensemble, its own
            fuser is included.
        data: labelled rows (anything ``Ensemble.fit`` accepts); with ``MemberOutputs``, the label ids.
        labels: label names (taken from the ensemble when ``source`` is one).
        **report_options: passed to ``fusion.evaluation.build_report`` (``n_bootstrap``, ``seed``, ``title``,
            ``split``, ``notes``).

    Example:
        >>> report = evaluate(ensemble, [LinearFuser().fit(...)], validation)  # doctest: +SKIP
        >>> report.save("out/report")  # doctest: +SKIP
    """
    from .ensemble import Ensemble
    from .evaluation import build_report

    named = _named_fusers(fusers)
    if isinstance(source, MemberOutputs):
        if labels is None:
            raise ConfigError("evaluate(MemberOutputs, ...) needs labels=[label names].")
        outputs, y, seconds = source, np.asarray(data), {}
    else:
        ensemble = source if isinstance(source, Ensemble) else Ensemble(list(source), labels=labels)
        if isinstance(source, Ensemble) and ensemble.fuser.is_fitted:
            named = {ensemble.fuser.name: ensemble.fuser, **named}
        rows = data if isinstance(data, TextData) else ensemble._data(data, "evaluation", require_labels=True)
        outputs, y, labels = ensemble.member_outputs(rows), rows.labels, ensemble.labels
        seconds = {m.name: s for m in ensemble.members
                   if (s := ensemble.cache.seconds(m.fingerprint(), rows.fingerprint)) is not None}
    member_proba = {name: outputs.probabilities()[:, i].double().numpy() for i, name in enumerate(outputs.member_names)}
    fuser_proba, fuser_seconds, weights = _fuser_results(outputs, named)
    return build_report(member_proba, fuser_proba, y, list(labels), seconds={**seconds, **fuser_seconds},
                        member_weights=weights, **report_options)
