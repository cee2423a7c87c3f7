"""Report plots as PNG bytes (SVG with ``fmt="svg"``, its text kept as text), drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas.

pyplot is never imported and ``matplotlib.use`` never called: a user's interactive backend and pyplot's
figure registry stay untouched, and each figure is garbage once its bytes are written (nothing to close).
Every function takes plain data (what the JSON report holds), so a saved report re-renders identically.
Names are never cut: long ones wrap at their separators, and the layout makes room for them.
"""

from __future__ import annotations

import io
import re
import textwrap
from collections.abc import Sequence
from itertools import cycle

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import ScalarFormatter

DPI = 110
MEMBER_COLOR, FUSER_COLOR, PARETO_COLOR = "#7a869a", "#d9480f", "#1864ab"
STUDENT_COLOR = "#2b8a3e"  # models distilled from the ensemble
PALETTE = ["#d9480f", "#1864ab", "#2b8a3e", "#862e9c", "#0b7285", "#c2255c", "#e67700", "#5c940d"]


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure, fmt: str = "png") -> bytes:
    """The figure as PNG bytes, or SVG (``fmt="svg"``) whose text stays text (searchable, testable)."""
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "fusion"}):
        figure.savefig(buffer, format=fmt, dpi=DPI, metadata={"Software": None} if fmt == "png" else {"Date": None})
    figure.clear()
    return buffer.getvalue()


def _wrap(name: str, width: int = 22) -> str:
    r"""``name`` whole, on lines of about ``width`` characters broken after ``-``, ``_``, ``/``, ``.`` or spaces.

    Example:
        >>> _wrap("minilm-cls-mlp-classifier-head", 16)
        'minilm-cls-mlp-\nclassifier-head'
    """
    lines: list[str] = []
    for piece in re.findall(r"[^-_/. ]*[-_/. ]?", name):
        if lines and len(lines[-1]) + len(piece) <= width:
            lines[-1] += piece
        elif piece:
            lines.append(piece)
    return "\n".join(lines) or name


def metric_intervals_png(names: Sequence[str], kinds: Sequence[str], accuracy: Sequence[float],
                         intervals: Sequence[Sequence[float] | None], fmt: str = "png") -> bytes:
    """Accuracy of each model with its 95% interval (members grey, fusers orange, students green, told apart by a
    legend)."""
    lines = sum(_wrap(n).count("\n") + 1 for n in names)
    figure = _figure(6.4, 1.3 + 0.2 * lines + 0.12 * len(names))
    axes = figure.add_subplot()
    ys = np.arange(len(names))[::-1]
    for y, kind, acc, ci in zip(ys, kinds, accuracy, intervals, strict=True):
        color = {"fuser": FUSER_COLOR, "student": STUDENT_COLOR}.get(kind, MEMBER_COLOR)
        if ci is not None:
            axes.plot(ci, [y, y], color=color, linewidth=2.5, alpha=0.5, solid_capstyle="butt")
        axes.plot([acc], [y], "o", color=color, markersize=6)
    axes.set_yticks(ys, [_wrap(n) for n in names], fontsize=8)
    axes.set_xlabel("accuracy (dot) with 95% bootstrap interval")
    axes.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], marker="o", color=color, linewidth=2.5, alpha=0.8, label=label)
               for label, color in (("members", MEMBER_COLOR), ("fusers", FUSER_COLOR), ("students", STUDENT_COLOR))
               if label[:-1] in kinds]
    figure.legend(handles=handles, loc="outside upper center", ncols=3, fontsize=8, frameon=False)
    return _png(figure, fmt)


def reliability_png(curves: dict[str, dict[str, list]], counts_of: str, fmt: str = "png") -> bytes:
    """Reliability diagram: accuracy against confidence per bin for each curve; bin counts of ``counts_of``."""
    figure = _figure(5.6, 5.2)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="#adb5bd", linewidth=1, label="perfect calibration")
    for color, (name, bins) in zip(cycle(PALETTE), curves.items(), strict=False):
        pairs = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"], strict=True) if c is not None]
        if pairs:
            xs, ys = zip(*pairs, strict=True)
            top.plot(xs, ys, marker="o", markersize=4, color=color, label=_wrap(name, 40))
    top.set_ylabel("accuracy in bin")
    top.set_ylim(0, 1.02)
    top.legend(fontsize=8, loc="upper left")
    top.grid(alpha=0.3)
    counts = curves[counts_of]["count"]
    width = 1.0 / len(counts)
    bottom.bar((np.arange(len(counts)) + 0.5) * width, counts, width=width * 0.9, color=PALETTE[0], alpha=0.7)
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel(f"rows of\n{_wrap(counts_of, 16)}", fontsize=8)
    return _png(figure, fmt)


def _heatmap(axes, matrix: np.ndarray, labels: Sequence[str], *, vmin: float, vmax: float, cmap: str,
             fmt: str, annotate: bool) -> None:
    colours = matplotlib.colormaps[cmap].with_extremes(bad="#e9ecef")  # a copy: the registry stays untouched
    axes.imshow(np.ma.masked_invalid(matrix), vmin=vmin, vmax=vmax, cmap=colours)
    ticks = [_wrap(x, 18) for x in labels]
    axes.set_xticks(range(len(labels)), ticks, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(labels)), ticks, fontsize=8)
    if annotate:
        middle = (vmin + vmax) / 2
        for (i, j), value in np.ndenumerate(matrix):
            text = "n/a" if np.isnan(value) else format(value, fmt).replace("-0.00", "0.00")
            dark = not np.isnan(value) and (value > middle if cmap != "RdBu_r" else abs(value) > 0.6)
            axes.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")


def confusion_png(matrix: Sequence[Sequence[int]], labels: Sequence[str], model: str, fmt: str = "png") -> bytes:
    """Confusion matrix (counts annotated; colour = share of the true class's rows)."""
    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = min(9.0, 2.6 + 0.45 * len(labels))
    figure = _figure(size + 0.8, size)
    axes = figure.add_subplot()
    _heatmap(axes, shares, labels, vmin=0, vmax=1, cmap="Blues", fmt=".2f", annotate=False)
    if len(labels) <= 20:
        for (i, j), count in np.ndenumerate(counts):
            axes.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=8,
                      color="white" if shares[i, j] > 0.5 else "black")
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    axes.set_title(f"{_wrap(model, 48)} (colour: share of row)", fontsize=9)
    return _png(figure, fmt)


def weights_png(weights: dict[str, dict[str, float]], members: Sequence[str], fmt: str = "png") -> bytes:
    """Grouped bars: each fuser's weight or importance per member."""
    figure = _figure(max(5.0, 1.2 + 0.6 * len(members) * max(1, len(weights)) ** 0.5), 3.6)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(weights))
    xs = np.arange(len(members))
    for k, (color, (fuser, per_member)) in enumerate(zip(cycle(PALETTE), weights.items(), strict=False)):
        heights = [per_member.get(m, 0.0) for m in members]
        axes.bar(xs - 0.4 + width * (k + 0.5), heights, width=width * 0.95, color=color, label=_wrap(fuser, 40))
    axes.axhline(0, color="#495057", linewidth=0.8)
    axes.set_xticks(xs, [_wrap(m, 18) for m in members], rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("weight / importance")
    axes.legend(fontsize=8, title="fusers", title_fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _png(figure, fmt)


def disagreement_png(members: Sequence[str], disagreement: Sequence[Sequence[float]],
                     error_correlation: Sequence[Sequence[float | None]], fmt: str = "png") -> bytes:
    """Two heatmaps: pairwise disagreement (0..1) and error correlation (-1..1, grey = undefined)."""
    size = min(7.0, 2.4 + 0.5 * len(members))
    figure = _figure(2 * size + 1.0, size)
    left, right = figure.subplots(1, 2)
    annotate = len(members) <= 12
    agree = np.asarray(disagreement, dtype=float)
    _heatmap(left, agree, members, vmin=0, vmax=max(0.05, float(agree.max())), cmap="Oranges", fmt=".2f",
             annotate=annotate)
    left.set_title("disagreement (share of rows)", fontsize=9)
    correlation = np.array([[np.nan if v is None else v for v in row] for row in error_correlation], dtype=float)
    _heatmap(right, correlation, members, vmin=-1, vmax=1, cmap="RdBu_r", fmt=".2f", annotate=annotate)
    right.set_title("error correlation (Pearson)", fontsize=9)
    return _png(figure, fmt)


def cost_png(points: Sequence[dict], fusers: Sequence[tuple[str, float, float | None]], fmt: str = "png") -> bytes:
    """Accuracy against cost per 1,000 rows: member subsets (grey), Pareto front (blue, numbered; a key under
    the plot names each point's members in full), fusers (stars).

    Without known costs the x axis is the number of members in the subset.
    """
    known = all(p["seconds_per_1k"] is not None for p in points)

    def x_of(p: dict) -> float:
        return p["seconds_per_1k"] if known else len(p["members"])

    front = sorted((x_of(p), p["accuracy"], p["members"]) for p in points if p["pareto"])
    key = [line for rank, (_, _, names) in enumerate(front, 1)
           for line in textwrap.wrap(f"{rank}: {' + '.join(names)}", 100, subsequent_indent="    ",
                                     break_on_hyphens=False)]
    figure = _figure(6.4, 4.2 + 0.16 * (len(key) + 1))
    axes, legend = figure.subplots(2, 1, height_ratios=[4.0, 0.1 + 0.16 * (len(key) + 1)]) if key else (
        figure.add_subplot(), None)
    axes.scatter([x_of(p) for p in points], [p["accuracy"] for p in points], s=18, color=MEMBER_COLOR,
                 alpha=0.6, label="members: soft vote of a subset")
    if front:
        axes.plot([f[0] for f in front], [f[1] for f in front], marker="o", color=PARETO_COLOR,
                  label="Pareto front (numbered, see key)")
        for rank, (x, y, _) in enumerate(front, 1):
            axes.annotate(str(rank), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                          color=PARETO_COLOR)
    placed = [(name, acc, cost) for name, acc, cost in fusers if known and cost is not None]
    for color, (name, accuracy, cost) in zip(cycle(p for p in PALETTE if p != PARETO_COLOR), placed, strict=False):
        axes.scatter([cost], [accuracy], marker="*", s=150, color=color, zorder=3, edgecolors="white",
                     linewidths=0.5, label=f"fuser: {_wrap(name, 40)}")
    axes.margins(x=0.08, y=0.08)
    axes.set_xlabel("seconds per 1,000 rows" if known else "members in subset (costs unknown)")
    axes.set_ylabel("accuracy")
    if known and len(points) > 1 and max(x_of(p) for p in points) > 20 * max(min(x_of(p) for p in points), 1e-9):
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    if legend is not None:
        legend.axis("off")
        legend.text(0, 1, "Pareto front:\n" + "\n".join(key), va="top", ha="left", fontsize=7.5,
                    color=PARETO_COLOR, transform=legend.transAxes)
    return _png(figure, fmt)
