"""``build_report``: compute every number of an evaluation report once, from probabilities and labels.

The metrics are those of the table :data:`fusion.evaluation.metrics.METRICS` when the report is built: each
model gets every metric, its bootstrap interval, and the report records how to show each one (``metric_info``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from ..cache.store import EntryCost
from ..errors import DataError
from .checks import (
    check_label_names,
    check_labels,
    check_model_names,
    check_n_bootstrap,
    check_proba,
    check_seconds,
    check_weight_methods,
    check_weights,
)
from .cost import EXHAUSTIVE_LIMIT, as_cost, cost_accuracy
from .diversity import member_diversity
from .metrics import (
    ACCURACY,
    ECE_BINS,
    LOG_LOSS,
    METRICS,
    Metric,
    all_metrics,
    confusion_matrix,
    per_class,
    reliability,
)
from .report import ModelResult, PairedTest, Report
from .uncertainty import CI_LEVEL, bootstrap_metrics, metric_intervals, paired_test, percentile_interval

logger = logging.getLogger(__name__)


def build_report(
    member_proba: Mapping[str, np.ndarray],
    fuser_proba: Mapping[str, np.ndarray],
    labels: np.ndarray,
    label_names: list[str],
    *,
    seconds: Mapping[str, float | EntryCost] | None = None,
    member_weights: Mapping[str, Mapping[str, float]] | None = None,
    weights_method: Mapping[str, str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    title: str | None = None,
    split: str = "validation",
    notes: list[str] | None = None,
    data_name: str | None = None,
    member_usage: Mapping[str, Mapping[str, float]] | None = None,
    student_proba: Mapping[str, np.ndarray] | None = None,
) -> Report:
    """Evaluate members and fusers on the same labelled rows.

    Args:
        member_proba: member name -> ``[rows, classes]`` probabilities in the ensemble's label order.
        fuser_proba: fuser name -> ``[rows, classes]`` probabilities (may be empty).
        labels: ``[rows]`` integer class ids.
        label_names: one name per class, in label order.
        seconds: model name -> wall seconds it took on these rows (members: running the model; fusers:
            combining cached outputs); a model left out gets ``seconds_per_1k = None``. A member's may be an
            ``EntryCost`` (``OutputCache.cost``): its own seconds and the cached passes it shares with other
            members (one backbone pass under two heads), counted once for a fuser and for each subset in
            ``cost_accuracy``; a plain number is all the model's own.
        member_weights: fuser name -> {member name: weight or importance}.
        weights_method: fuser name -> ``"weights"`` (the fuser's own, the default) or ``"permutation"``
            (permutation importance shares, see ``fusion.permutation_importance``).
        n_bootstrap: bootstrap resamples for the 95% intervals (0: no intervals).
        seed: seed of ``numpy.random.default_rng`` drawing the resamples.
        title, split: shown in every rendering; the default title names the ensemble and the data
            (:func:`default_title`).
        data_name: the dataset's name (e.g. ``"glue/sst2"``) for the default title; None when unknown.
        notes: caveats shown in every rendering (e.g. that a fuser was trained on these rows).
        member_usage: fuser name -> {member name: share of these rows it ran the member on}, for fusers that run
            some members on some rows only (``CascadeFuser``, ``Fuser.member_usage``): the fuser's full cost then
            counts each member's cost for those rows only.
        student_proba: student name -> ``[rows, classes]`` probabilities of models distilled from the ensemble
            (``Ensemble.distill``): rows of kind ``"student"`` with their own cost (``seconds``), outside the
            members' diversity, weights and ``cost_accuracy`` subsets, each tested against the best fuser.

    Returns:
        A Report; see :mod:`fusion.evaluation.report` for its fields and JSON schema.

    Raises:
        DataError: labels empty, not integer ids, or out of range; no members; clashing or unknown names.
        MemberOutputError: probabilities of the wrong shape, with NaN/inf, or rows not summing to one.
        ConfigError: ``n_bootstrap`` negative or not an integer.

    Example:
        >>> import numpy as np
        >>> a = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
        >>> b = np.array([[0.6, 0.4], [0.2, 0.8], [0.2, 0.8]])
        >>> fused = (a + b) / 2
        >>> report = build_report({"a": a, "b": b}, {"mean": fused}, np.array([0, 1, 1]), ["no", "yes"],
        ...                       seconds={"a": 0.3, "b": 3.0}, n_bootstrap=100)
        >>> report.best_member, report.model("mean").metrics["accuracy"], report.model("a").seconds_per_1k
        ('b', 1.0, 100.0)
    """
    label_names = check_label_names(label_names)
    labels = check_labels(labels, len(label_names))
    check_model_names(member_proba, {**fuser_proba, **(student_proba or {})})
    members = {n: check_proba(p, len(labels), f"member {n!r}", len(label_names)) for n, p in member_proba.items()}
    fusers = {n: check_proba(p, len(labels), f"fuser {n!r}", len(label_names)) for n, p in fuser_proba.items()}
    clash = sorted(set(fusers) & set(student_proba or {}))
    if clash:
        raise DataError(f"names {clash} are used by both a fuser and a student; give the students distinct names.")
    students = {n: check_proba(p, len(labels), f"student {n!r}", len(label_names))
                for n, p in (student_proba or {}).items()}
    costs = _costs_per_1k(seconds, [*members, *fusers, *students], len(labels))
    per_1k = {n: c.total for n, c in costs.items()}
    weights = check_weights(member_weights, list(fusers), list(members))
    methods = check_weight_methods(weights_method, weights)
    n_bootstrap = check_n_bootstrap(n_bootstrap)

    probas, metrics = {**members, **fusers, **students}, list(METRICS.values())
    samples = bootstrap_metrics(probas, labels, n_bootstrap, seed, metrics)
    kinds = {**dict.fromkeys(members, "member"), **dict.fromkeys(fusers, "fuser"), **dict.fromkeys(students, "student")}
    models = [_model_result(n, kinds[n], p, labels, label_names, samples[n], per_1k.get(n), metrics)
              for n, p in probas.items()]
    best_member = _best([m for m in models if m.kind == "member"])
    best_fuser = _best([m for m in models if m.kind == "fuser"]) if fusers else None
    # a fuser that returns the best member's own probabilities (the member-alone candidate) has nothing to test
    tests = [_test(f, best_member, probas, labels, samples) for f in fusers
             if not np.array_equal(probas[f], probas[best_member])]
    tests += [_test(s, best_fuser or best_member, probas, labels, samples) for s in students]  # student vs teacher
    diversity = member_diversity(members, labels)
    confused = best_fuser or best_member
    return Report(
        title=str(default_title(list(members), list(fusers), split, data_name) if title is None else title),
        split=str(split), rows=len(labels), labels=label_names,
        notes=[str(n) for n in notes or []] + _automatic_notes(diversity, len(members), n_bootstrap),
        bootstrap={"resamples": n_bootstrap, "seed": int(seed), "level": CI_LEVEL}, ece_bins=ECE_BINS,
        metric_info={m.name: m.info() for m in metrics}, models=models, best_member=best_member,
        best_fuser=best_fuser, tests=tests, diversity=diversity, weights=weights, weights_method=methods,
        cost_accuracy=cost_accuracy(members, labels, {n: costs.get(n) for n in members}),
        confusion={"model": confused, "matrix": confusion_matrix(probas[confused], labels).tolist()},
        member_usage=_usage(member_usage, list(fusers), list(members)),
    )


def _usage(member_usage: Mapping[str, Mapping[str, float]] | None, fusers: list[str],
           members: list[str]) -> dict[str, dict[str, float]]:
    """``member_usage`` checked: known fusers and members, shares in [0, 1]."""
    usage = {}
    for fuser, shares in (member_usage or {}).items():
        unknown = [n for n in shares if n not in members]
        if fuser not in fusers or unknown:
            raise DataError(f"member_usage names {fuser if fuser not in fusers else unknown!r}, not a fuser and its "
                            f"members of this report (fusers: {fusers}; members: {members}).")
        if not all(0.0 <= float(s) <= 1.0 for s in shares.values()):
            raise DataError(f"member_usage[{fuser!r}]: shares of rows must be in [0, 1]; got {dict(shares)}.")
        usage[fuser] = {member: float(shares[member]) for member in members if member in shares}
    return usage


def default_title(members: list[str], fusers: list[str], split: str, data_name: str | None = None) -> str:
    """What a report is about: its members and fusers, and the data (name when known, and split).

    Example:
        >>> default_title(["minilm-mean-linear", "tfidf-logreg"], ["stacking"], "validation", "glue/sst2")
        'Ensemble of minilm-mean-linear + tfidf-logreg, fused by stacking, on glue/sst2 (validation split)'
    """
    shown = " + ".join(members) if len(members) <= 4 else f"{' + '.join(members[:3])} + {len(members) - 3} more"
    fused = f", fused by {', '.join(fusers)}" if fusers else ""
    data = f"{data_name} ({split} split)" if data_name else f"the {split} split"
    return f"Ensemble of {shown}{fused}, on {data}"


def _costs_per_1k(seconds: Mapping[str, float | EntryCost] | None, known: list[str],
                  rows: int) -> dict[str, EntryCost]:
    """Each timed model's cost per 1,000 rows, every part of it converted (totals checked like plain seconds)."""
    costs = {name: as_cost(value) for name, value in (seconds or {}).items()}
    check_seconds({name: cost.total for name, cost in costs.items()}, known)
    return {name: cost.map(lambda s: s * 1000.0 / rows) for name, cost in costs.items()}


def _model_result(
    name: str, kind: str, proba: np.ndarray, labels: np.ndarray, label_names: list[str],
    samples: dict[str, np.ndarray], seconds_per_1k: float | None, metrics: list[Metric],
) -> ModelResult:
    values = all_metrics(proba, labels, metrics)
    return ModelResult(
        name=name, kind=kind, metrics=values,
        ci95=metric_intervals(samples, values=values, metrics={m.name: m for m in metrics}),
        seconds_per_1k=seconds_per_1k, per_class=per_class(proba, labels, label_names),
        reliability=reliability(proba, labels, ECE_BINS),
    )


def _best(models: list[ModelResult]) -> str:
    """Highest accuracy; ties: lower log-loss, then the earlier model."""
    def key(i: int) -> tuple[float, float, int]:
        scores = models[i].metrics
        return ACCURACY.sort_key(scores["accuracy"]), LOG_LOSS.sort_key(scores["log_loss"]), i

    return models[min(range(len(models)), key=key)].name


def _test(
    fuser: str, member: str, probas: dict[str, np.ndarray], labels: np.ndarray,
    samples: dict[str, dict[str, np.ndarray]],
) -> PairedTest:
    correct_f, correct_m = probas[fuser].argmax(1) == labels, probas[member].argmax(1) == labels
    result = paired_test(correct_f, correct_m)
    deltas = samples[fuser]["accuracy"] - samples[member]["accuracy"]
    return PairedTest(
        fuser=fuser, against=member, method="mcnemar", p_value=result["p_value"],
        accuracy_delta=result["accuracy_delta"],
        accuracy_delta_ci95=percentile_interval(deltas) if len(deltas) else None,
        fuser_only_correct=result["only_a_correct"], member_only_correct=result["only_b_correct"],
    )


def _automatic_notes(diversity: dict, n_members: int, n_bootstrap: int) -> list[str]:
    notes = []
    correlation = diversity["error_correlation"]
    constant = [m for i, m in enumerate(diversity["members"]) if correlation[i][i] is None]
    if constant:
        notes.append(f"Error correlation is undefined (n/a) for {', '.join(constant)}: right, or wrong, on every row.")
    if n_bootstrap == 0:
        notes.append("No confidence intervals: n_bootstrap=0.")
    if n_members > EXHAUSTIVE_LIMIT:
        notes.append(f"Cost/accuracy: {n_members} members, so single members plus greedy forward selection "
                     f"rather than all {2**n_members - 1} subsets.")
    return notes
