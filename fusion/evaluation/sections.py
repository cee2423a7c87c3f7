"""The report's sections as plain tables, texts and plot makers, shared by the Markdown and HTML renderers.

The metric table shows the metrics the report holds, with the headers, directions and descriptions stored in
``Report.metric_info`` (copied from the metric table ``METRICS`` when the report was built), so a metric added
with ``register_metric`` gets its column here without any change to this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import Report

@dataclass
class Table:
    """Cells as display strings; the first column names the row."""

    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    text_columns: int = 1  # leading columns of text (left-aligned); the others hold numbers


@dataclass
class Section:
    """One titled part of the report; ``plot`` (HTML only) returns PNG bytes, or is None."""

    id: str
    title: str
    text: str
    tables: list[Table] = field(default_factory=list)
    plot: Callable[[], bytes] | None = None
    plot_alt: str = ""


def number(value: float | None, digits: int = 4) -> str:
    """Fixed-point text, ``n/a`` for None."""
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.000"


def p_value(value: float) -> str:
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def _with_ci(value: float, ci: list[float] | None) -> str:
    """The value, then its interval after a line break (HTML: second line; Markdown: same line)."""
    return number(value) if not ci else f"{number(value)}\n[{number(ci[0])}, {number(ci[1])}]"


def _label(report: Report, name: str) -> str:
    return f"{name} (best)" if name in (report.best_member, report.best_fuser) else name


def metric_table(report: Report) -> Table:
    """One row per model: every metric of ``report.metric_info`` with its 95% interval, and seconds per 1,000 rows."""
    rows = [[_label(report, m.name), m.kind, *(_with_ci(m.metrics.get(k), m.ci95.get(k)) for k in report.metric_info),
             number(report.full_seconds_per_1k(m.name), 3)] for m in report.models]
    headers = [info["header"] for info in report.metric_info.values()]
    return Table(["model", "kind", *headers, "s / 1k rows"], rows, text_columns=2)


def metric_notes(metric_info: dict[str, dict]) -> str:
    """Which way each metric is better, then each metric's description, as sentences.

    Example:
        >>> from fusion.evaluation.metrics import ACCURACY, LOG_LOSS
        >>> metric_notes({"accuracy": ACCURACY.info(), "log_loss": LOG_LOSS.info()})
        'Higher is better: accuracy. Lower is better: log-loss. log-loss: natural log.'
    """
    sentences = []
    for direction, word in ((True, "Higher"), (False, "Lower")):
        headers = [info["header"] for info in metric_info.values() if info.get("higher_is_better") is direction]
        sentences += [f"{word} is better: {', '.join(headers)}."] if headers else []
    sentences += [f"{info['header']}: {info['description']}." for info in metric_info.values() if info.get("description")]
    return " ".join(sentences)


def interval_methods(metric_info: dict[str, dict]) -> str:
    """Which bootstrap interval each metric's brackets hold (stored reports without the key: percentile).

    Example:
        >>> from fusion.evaluation.metrics import ACCURACY, ECE, LOG_LOSS
        >>> interval_methods({"accuracy": ACCURACY.info(), "log_loss": LOG_LOSS.info(), "ece": ECE.info()})
        'percentile bootstrap, except ECE: basic (reverse-percentile) bootstrap'
    """
    from .metrics import INTERVALS

    methods = {name: info.get("interval", "percentile") for name, info in metric_info.items()}
    others = [f"{metric_info[name]['header']}: {INTERVALS[method]}" for name, method in methods.items()
              if method != "percentile"]
    return INTERVALS["percentile"] + (f", except {'; '.join(others)}" if others else "")


def _tests_section(report: Report) -> Section:
    rows = [[t.fuser, t.against, f"{t.accuracy_delta:+.4f}",
             "n/a" if t.accuracy_delta_ci95 is None else f"[{t.accuracy_delta_ci95[0]:+.4f}, {t.accuracy_delta_ci95[1]:+.4f}]",
             str(t.fuser_only_correct), str(t.member_only_correct), p_value(t.p_value)] for t in report.tests]
    text = ("Each fuser against the best single member on the same rows: exact two-sided McNemar test on the rows "
            "where exactly one of the two is right; the interval of the accuracy difference is a paired bootstrap. "
            "p-values are not corrected for testing several fusers.") if rows else "No fusers were evaluated."
    if report.students:
        text += (" Each student (a model distilled from the ensemble) is tested the same way against its teacher, "
                 "the best fuser, in the fuser column.")
    table = Table(["fuser", "against", "Δ accuracy", "95% CI of Δ", "only fuser right", "only member right",
                   "p-value"], rows, text_columns=2)
    return Section("tests", "Fusers against the best member", text, [table] if rows else [])


def _reliability_section(report: Report) -> Section:
    shown = [n for n in dict.fromkeys([report.best_fuser, report.best_member, *(f.name for f in report.fusers)]) if n]
    shown = shown[:6]
    first = report.model(shown[0])
    bins = first.reliability
    edges = [(b / report.ece_bins, (b + 1) / report.ece_bins) for b in range(report.ece_bins)]
    rows = [[f"({lo:.2f}, {hi:.2f}]", str(c), number(conf), number(acc)] for (lo, hi), c, conf, acc
            in zip(edges, bins["count"], bins["confidence"], bins["accuracy"], strict=True) if c]
    curves = {n: report.model(n).reliability for n in shown}

    def plot() -> bytes:
        from .plots import reliability_png

        return reliability_png(curves, first.name)

    text = (f"Accuracy against confidence (max probability) in {report.ece_bins} equal-width bins; points on the "
            "diagonal are calibrated. ECE is the row-weighted mean gap.")
    return Section("reliability", "Reliability", text, [Table(["confidence bin", "rows", "mean confidence",
                   "accuracy"], rows, f"Bins of {first.name}")], plot, "reliability diagram")


def _confusion_section(report: Report) -> Section:
    model, matrix = report.confusion["model"], report.confusion["matrix"]
    rows = [[f"true {label}", *map(str, counts)] for label, counts in zip(report.labels, matrix, strict=True)]

    def plot() -> bytes:
        from .plots import confusion_png

        return confusion_png(matrix, report.labels, model)

    return Section("confusion", f"Confusion matrix of {model}", "Rows: true label; columns: predicted label.",
                   [Table(["", *(f"pred {x}" for x in report.labels)], rows)], plot, "confusion matrix")


def _per_class_section(report: Report) -> Section:
    f1 = Table(["label", "support", *(m.name for m in report.models)],
               [[label, str(report.models[0].per_class[label]["support"]),
                 *(number(m.per_class[label]["f1"]) for m in report.models)] for label in report.labels],
               "F1 per class and model")
    focus = report.model(report.best_fuser or report.best_member)
    detail = Table(["label", "precision", "recall", "F1", "support"],
                   [[label, *(number(focus.per_class[label][k]) for k in ("precision", "recall", "f1")),
                     str(focus.per_class[label]["support"])] for label in report.labels], f"Per class: {focus.name}")
    return Section("per-class", "Per-class metrics", "0.0 where a metric is undefined (no rows or no predictions "
                   "of the class).", [f1, detail])


def _disagreement_section(report: Report) -> Section:
    div = report.diversity
    disagree = Table(["", *div["members"]], [[m, *(number(v, 3) for v in row)]
                                            for m, row in zip(div["members"], div["disagreement"], strict=True)], "Disagreement")
    correlate = Table(["", *div["members"]], [[m, *(number(v, 3) for v in row)]
                                             for m, row in zip(div["members"], div["error_correlation"], strict=True)],
                      "Error correlation")

    def plot() -> bytes:
        from .plots import disagreement_png

        return disagreement_png(div["members"], div["disagreement"], div["error_correlation"])

    text = ("Disagreement: share of rows where two members predict different labels. Error correlation: Pearson "
            "correlation of their 0/1 error indicators (n/a when a member is right, or wrong, on every row); "
            "members whose errors correlate less have more to gain from fusion.")
    return Section("disagreement", "Member diversity", text, [disagree, correlate], plot, "disagreement heatmap")


def _weights_section(report: Report) -> Section:
    members = report.diversity["members"]
    if not report.weights:
        return Section("weights", "Fuser weights", "No fuser reported member weights or importances.")
    table = Table(["member", *report.weights], [[m, *(number(w.get(m)) for w in report.weights.values())]
                                                for m in members])

    def plot() -> bytes:
        from .plots import weights_png

        return weights_png(report.weights, members)

    own = [f for f, m in report.weights_method.items() if m == "weights"]
    permuted = [f for f, m in report.weights_method.items() if m == "permutation"]
    text = "Each member's share in each fuser."
    if own:
        text += f" {', '.join(own)}: the fuser's own member weights."
    if permuted:
        text += (f" {', '.join(permuted)}: permutation importance, the rise in log-loss when that member's outputs "
                 "are shuffled across rows (averaged over repeats, negatives as 0), as shares of the total.")
    return Section("weights", "Fuser weights", text, [table], plot, "bar chart of fuser weights")


def _cost_section(report: Report) -> Section:
    points = report.cost_accuracy
    front = [p for p in points if p["pareto"]]
    shown = front or sorted(points, key=lambda p: -p["accuracy"])[:5]
    caption = "Pareto front" if front else "Most accurate subsets (costs unknown)"
    table = Table(["members", "accuracy", "s / 1k rows"], [
        [" + ".join(p["members"]), number(p["accuracy"]), number(p["seconds_per_1k"], 3)]
        for p in sorted(shown, key=lambda p: (p["seconds_per_1k"] or 0.0, p["accuracy"]))], caption)
    fusers = [(f.name, f.metrics["accuracy"], report.full_seconds_per_1k(f.name)) for f in report.fusers]

    def plot() -> bytes:
        from .plots import cost_png

        return cost_png(points, fusers)

    text = (f"Soft vote (mean probability) of {len(points)} subsets of members; cost is their seconds per 1,000 "
            "rows, a cached pass they share (one backbone under several heads) counted once. The table lists the "
            "Pareto front (no subset is both cheaper and more accurate); fusers (stars) cost all members plus their "
            "own combining time. All subsets are in report.json.")
    for name, usage in report.member_usage.items():
        shares = ", ".join(f"{member} {share:.0%}" for member, share in usage.items())
        text += (f" {name} runs members on some rows only (a cascade); share of rows reaching each member: {shares}; "
                 "its cost counts each member's for those rows only.")
    return Section("cost", "Accuracy against inference cost", text, [table], plot, "accuracy against cost")


def sections(report: Report) -> list[Section]:
    """Every section in display order (the metric table comes first)."""
    def metric_plot() -> bytes:
        from .plots import metric_intervals_png

        return metric_intervals_png([m.name for m in report.models], [m.kind for m in report.models],
                                    [m.metrics["accuracy"] for m in report.models],
                                    [m.ci95.get("accuracy") for m in report.models])

    intervals = (f"95% bootstrap intervals from {report.bootstrap['resamples']} resamples of the rows (seed "
                 f"{report.bootstrap['seed']}) in brackets: {interval_methods(report.metric_info)}. "
                 if report.bootstrap["resamples"] else "")
    metrics = Section("metrics", "Metrics", f"{intervals}{metric_notes(report.metric_info)} Seconds per 1,000 rows: "
                      "a fuser's include running all its members, a cached pass they share counted once"
                      + ("; a student's (distilled from the ensemble) is running it alone." if report.students else "."),
                      [metric_table(report)], metric_plot, "accuracy with intervals")
    return [metrics, _tests_section(report), _reliability_section(report), _confusion_section(report),
            _per_class_section(report), _disagreement_section(report), _weights_section(report),
            _cost_section(report)]
