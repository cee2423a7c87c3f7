"""The evaluation ``Report``: everything computed once, rendered to Markdown, HTML and JSON without recomputing.

JSON schema ``fusion.report/v1`` (``Report.to_dict``; ``Report.from_dict`` rebuilds an equal Report). Keys
appear in this order; floats are plain JSON numbers (never NaN); ``null`` means unknown or undefined.

- ``schema`` (str): ``"fusion.report/v1"``.
- ``title`` (str), ``split`` (str): free text; the split names the rows evaluated on (e.g. ``"validation"``).
- ``rows`` (int): number of labelled rows.
- ``labels`` (list[str]): label names in the ensemble's label order (class id = position).
- ``notes`` (list[str]): caveats shown in every rendering (the caller's, then automatic ones).
- ``bootstrap`` (object): ``{"resamples": int, "seed": int, "level": 0.95}``; 0 resamples: no intervals.
- ``ece_bins`` (int): number of equal-width confidence bins of ECE and the reliability diagram (15).
- ``metric_info`` (object): metric name -> ``{"header": str, "higher_is_better": bool | null, "description":
  str, "interval": "percentile" | "basic"}`` (no ``interval``: percentile), in column order: the metric table (:data:`fusion.evaluation.metrics.METRICS`) when the report was
  built. Reports written before this key existed get it on loading, from the table, for the metrics they hold.
- ``models`` (list[object]): members first (input order), then fusers, then students (models distilled from
  the ensemble, ``Ensemble.distill``: not members, so outside diversity, weights and ``cost_accuracy``); each:
    - ``name`` (str); ``kind`` (``"member"`` | ``"fuser"`` | ``"student"``).
    - ``metrics`` (object): one value per key of ``metric_info``, a float or null where undefined. The
      default table: ``accuracy``, ``macro_f1``, ``log_loss`` (natural log, probabilities clipped at 1e-15),
      ``brier`` (shown as "Brier (sum over classes)": mean over rows of the sum over classes of (p - onehot)^2,
      in [0, 2], twice scikit-learn's ``brier_score_loss`` with two classes), ``ece``
      (expected calibration error, ``ece_bins`` bins over the max probability), ``auroc`` (one-vs-rest macro
      AUROC over the classes among the labels, binary AUROC for two classes; null with one class only).
    - ``ci95`` (object): metric name -> ``[lo, hi]`` 95% bootstrap interval over the resamples where the
      metric is defined, of the kind its ``metric_info`` ``interval`` names: ``"percentile"``, or ``"basic"``
      (reverse percentile, for ECE; see :mod:`fusion.evaluation.uncertainty`); empty without resamples, and no
      key for a metric defined on none.
    - ``seconds_per_1k`` (float | null): wall seconds per 1,000 rows; a member's is running the model on its
      own (a cached backbone pass it shares with other members included), a fuser's is combining cached
      member outputs (add the ``cost_accuracy`` subset of all members for the fuser's full cost); a student's is
      running it alone (cached passes it reuses included).
    - ``per_class`` (object): label -> ``{"precision", "recall", "f1": float, "support": int}`` (0.0 where
      undefined).
    - ``reliability`` (object): per confidence bin, ``count`` (list[int]), ``confidence`` and ``accuracy``
      (list[float | null], null for empty bins).
- ``best_member`` (str), ``best_fuser`` (str | null): highest accuracy, ties broken by lower log-loss, then
  by input order; ``best_fuser`` is null when no fuser was evaluated.
- ``tests`` (list[object]): one per fuser, against ``best_member``, then one per student against
  ``best_fuser`` (else ``best_member``), the student in ``fuser``: ``fuser``, ``against`` (str), ``method``
  (``"mcnemar"``: exact two-sided McNemar test), ``p_value`` (float), ``accuracy_delta`` (fuser minus member),
  ``accuracy_delta_ci95`` (``[lo, hi]`` paired-bootstrap interval, or null), ``fuser_only_correct`` and
  ``member_only_correct`` (int: the discordant rows). p-values are not corrected for multiple fusers.
- ``diversity`` (object): ``members`` (list[str]); ``disagreement`` (list[list[float]]: share of rows where two
  members predict different classes); ``error_correlation`` (list[list[float | null]]: Pearson correlation
  of 0/1 error indicators; null where a member is right, or wrong, on every row).
- ``weights`` (object): fuser -> member -> weight or importance: the fuser's own weights where it has them
  (mean, vote, linear), otherwise permutation importance as shares summing to 1 (see ``weights_method``).
- ``weights_method`` (object): fuser -> ``"weights"`` or ``"permutation"``.
- ``cost_accuracy`` (list[object]): subsets of members: ``members`` (list[str]), ``accuracy`` (soft vote of
  the subset), ``seconds_per_1k`` (its members' own seconds plus each cached pass they share counted once,
  e.g. one backbone pass under two heads; null if one is unknown), ``pareto`` (bool).
- ``confusion`` (object): ``model`` (str: the best fuser, else the best member) and ``matrix``
  (list[list[int]]: row = true label, column = predicted label).
- ``member_usage`` (object): fuser -> member -> share of the rows that member was run on, for fusers that run
  some members on some rows only (a cascade); their full cost counts each member's for those rows only
  (:meth:`Report.full_seconds_per_1k`). Empty when no fuser does; reports written before this key read as empty.

Example:
    >>> import numpy as np
    >>> from fusion.evaluation import build_report
    >>> proba = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    >>> report = build_report({"a": proba}, {"mean": proba}, np.array([0, 1, 1, 1]), ["neg", "pos"], n_bootstrap=50)
    >>> report.best_fuser, Report.from_dict(report.to_dict()) == report
    ('mean', True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PersistenceError
from ..io import atomic_write_text

SCHEMA = "fusion.report/v1"
FILE_NAMES = {"html": "report.html", "md": "report.md", "json": "report.json"}


@dataclass
class ModelResult:
    """One member's or fuser's results (see the module docstring for each field)."""

    name: str
    kind: str
    metrics: dict[str, float | None]
    ci95: dict[str, list[float]]
    seconds_per_1k: float | None
    per_class: dict[str, dict[str, Any]]
    reliability: dict[str, list]


@dataclass
class PairedTest:
    """A fuser against the best single member, on the same rows."""

    fuser: str
    against: str
    method: str
    p_value: float
    accuracy_delta: float
    accuracy_delta_ci95: list[float] | None
    fuser_only_correct: int
    member_only_correct: int

    def summary(self) -> str:
        """One line: the accuracy gain in points with its paired 95% interval, and the test's p-value.

        Example:
            >>> PairedTest("stacking", "tfidf", "mcnemar", 0.0123, 0.031, [0.012, 0.05], 40, 6).summary()
            'vs tfidf: +3.1 [+1.2, +5.0] points, p=0.012'
        """
        interval = ("" if self.accuracy_delta_ci95 is None else
                    " [{:+.1f}, {:+.1f}]".format(*(100 * v for v in self.accuracy_delta_ci95)))
        return f"vs {self.against}: {100 * self.accuracy_delta:+.1f}{interval} points, p={self.p_value:.2g}"


@dataclass
class Report:
    """Evaluation of members and fusers on one labelled split; build it with ``build_report``.

    Attributes mirror the JSON schema of this module (``models`` and ``tests`` hold dataclasses).
    """

    title: str
    split: str
    rows: int
    labels: list[str]
    notes: list[str]
    bootstrap: dict[str, Any]
    ece_bins: int
    metric_info: dict[str, dict[str, Any]]
    models: list[ModelResult]
    best_member: str
    best_fuser: str | None
    tests: list[PairedTest] = field(default_factory=list)
    diversity: dict[str, list] = field(default_factory=dict)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    weights_method: dict[str, str] = field(default_factory=dict)
    cost_accuracy: list[dict[str, Any]] = field(default_factory=list)
    confusion: dict[str, Any] = field(default_factory=dict)
    member_usage: dict[str, dict[str, float]] = field(default_factory=dict)

    # --- lookups ------------------------------------------------------------------------------------
    def model(self, name: str) -> ModelResult:
        """The results of the member or fuser called ``name``."""
        for result in self.models:
            if result.name == name:
                return result
        raise ConfigError(f"no model {name!r} in this report; models: {[m.name for m in self.models]}.")

    @property
    def members(self) -> list[ModelResult]:
        return [m for m in self.models if m.kind == "member"]

    @property
    def fusers(self) -> list[ModelResult]:
        return [m for m in self.models if m.kind == "fuser"]

    @property
    def students(self) -> list[ModelResult]:
        """Models distilled from the ensemble (``Ensemble.distill``)."""
        return [m for m in self.models if m.kind == "student"]

    def full_seconds_per_1k(self, name: str) -> float | None:
        """What predicting with ``name`` costs per 1,000 rows: a member's or a student's own time; a fuser's
        combining time plus running every member (:meth:`members_seconds_per_1k`; None where a member's is
        unknown), or, for a fuser in ``member_usage`` (a cascade), each member's cost times the share of rows it
        ran on."""
        model = self.model(name)
        if model.kind != "fuser":
            return model.seconds_per_1k
        if name in self.member_usage:
            return self._usage_seconds(self.member_usage[name], model.seconds_per_1k or 0.0)
        members = self.members_seconds_per_1k()
        return None if members is None else members + (model.seconds_per_1k or 0.0)

    def _usage_seconds(self, usage: dict[str, float], own: float) -> float | None:
        """A fuser that runs members on some rows only: members in the order rows reach them (most used first; a
        cascade's stages are nested), each adding its cost over those before it (a pass they share counted once,
        from ``cost_accuracy``'s joint costs; else its own) times the share of rows it ran on."""
        joint = {frozenset(p["members"]): p["seconds_per_1k"] for p in self.cost_accuracy}
        costs = {m.name: m.seconds_per_1k for m in self.members}
        order = sorted((m for m, share in usage.items() if share > 0), key=lambda m: -usage[m])
        total, before = own, 0.0
        for k, member in enumerate(order):
            prefix = joint.get(frozenset(order[: k + 1]))
            if prefix is None:
                if costs.get(member) is None:
                    return None
                prefix = before + costs[member]
            total += (prefix - before) * usage[member]
            before = prefix
        return total

    def members_seconds_per_1k(self) -> float | None:
        """What running every member once costs per 1,000 rows: the ``cost_accuracy`` subset of all members
        (cached passes they share counted once), else (a report without it) the sum of the members' own."""
        names = [m.name for m in self.members]
        everyone = next((p for p in self.cost_accuracy if p["members"] == names), None)
        if everyone is not None:
            return everyone["seconds_per_1k"]
        costs = [m.seconds_per_1k for m in self.members]
        return None if None in costs else sum(costs)

    # --- JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``fusion.report/v1`` document (plain, JSON-ready types)."""
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Rebuild a Report from ``to_dict()`` output (e.g. a saved ``report.json``).

        Raises:
            PersistenceError: not a ``fusion.report/v1`` document, or a field is missing.
        """
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise PersistenceError(f"not a {SCHEMA} report (schema: {found!r}); re-create it with build_report.")
        try:
            fields = {k: data[k] for k in cls.__dataclass_fields__ if k not in ("metric_info", "member_usage")}
            fields["member_usage"] = data.get("member_usage", {})
            fields["models"] = [ModelResult(**m) for m in data["models"]]
            fields["tests"] = [PairedTest(**t) for t in data["tests"]]
            fields["metric_info"] = _renamed(data.get("metric_info")) or _metric_info_of(fields["models"])
        except (KeyError, TypeError) as err:
            raise PersistenceError(f"{SCHEMA} report is incomplete or has unexpected fields: {err}.") from err
        return cls(**fields)

    def to_json(self) -> str:
        """``to_dict()`` as indented JSON (UTF-8 text, key order as documented)."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def load(cls, path: str | os.PathLike) -> Report:
        """Read a saved ``report.json`` (or the directory holding it)."""
        from ..io import read_json

        path = Path(path)
        return cls.from_dict(read_json(path / FILE_NAMES["json"] if path.is_dir() else path, "evaluation report"))

    # --- renderings ---------------------------------------------------------------------------------
    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown: metric table, tests, diversity, weights, cost, per-class tables."""
        from .render import render_markdown

        return render_markdown(self)

    def to_html(self) -> str:
        """One self-contained HTML page: inline CSS, plots as embedded PNG, no scripts or external links."""
        from .render import render_html

        return render_html(self)

    def save(self, directory: str | os.PathLike, formats: Iterable[str] = ("html", "md", "json")) -> dict[str, Path]:
        """Write ``report.html``, ``report.md`` and/or ``report.json`` into ``directory``, each atomically.

        Returns:
            ``{format: path}`` of the files written.

        Raises:
            ConfigError: an unknown format.
        """
        formats = list(formats)
        unknown = sorted(set(formats) - set(FILE_NAMES))
        if unknown:
            raise ConfigError(f"unknown report formats {unknown}; valid ones: {sorted(FILE_NAMES)}.")
        render = {"html": self.to_html, "md": self.to_markdown, "json": self.to_json}
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = {}
        for fmt in formats:
            written[fmt] = directory / FILE_NAMES[fmt]
            atomic_write_text(written[fmt], render[fmt]())
        return written


def _renamed(metric_info: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
    """Stored ``metric_info`` with the entries whose header was ambiguous replaced by today's: "Brier" (since
    renamed "Brier (sum over classes)": it is twice scikit-learn's ``brier_score_loss`` with two classes)."""
    if not metric_info or metric_info.get("brier", {}).get("header") != "Brier":
        return metric_info
    from .metrics import METRICS

    return {**metric_info, "brier": {**metric_info["brier"], "header": METRICS["brier"].header,
                                     "description": METRICS["brier"].description}}


def _metric_info_of(models: list[ModelResult]) -> dict[str, dict[str, Any]]:
    """``metric_info`` for a report written before it was stored: today's table entries for its metrics, with
    the percentile intervals such reports hold."""
    from .metrics import METRICS

    names = models[0].metrics if models else {}
    unknown = {"higher_is_better": None, "description": ""}
    return {name: {**METRICS[name].info(), "interval": "percentile"} if name in METRICS
            else {"header": name, **unknown} for name in names}
