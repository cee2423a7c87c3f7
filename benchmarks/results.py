"""Measured rows and the markdown tables they render to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .timing import Timing

NA = "n/a"


@dataclass(frozen=True)
class Row:
    """One workload's measurement: median seconds over repetitions and what it processed.

    ``units`` is what the rate counts (sentences, examples, rows x members); ``flops`` the useful floating-point
    operations of one repetition (None where not meaningful).
    """

    group: str
    key: str
    workload: str
    model: str
    rows: int
    timing: Timing
    units: int
    flops: float | None = None
    accuracy: float | None = None
    members: int | None = None

    @property
    def seconds(self) -> float:
        return self.timing.median

    @property
    def rate(self) -> float:
        return self.units / self.seconds

    @property
    def tflops(self) -> float | None:
        return None if self.flops is None else self.flops / self.seconds / 1e12


def number(value: float | None, digits: int = 3) -> str:
    """A table cell: ``n/a`` for None, else ``digits`` significant figures (plain notation)."""
    if value is None:
        return NA
    if value == 0 or abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}".replace(",", "")
    return f"{value:.{digits}g}" if abs(value) >= 1e-4 else f"{value:.2e}"


def table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def _ratio(row: Row, rows: Sequence[Row], key: str) -> str:
    anchor = next((r for r in rows if r.key == key and r.model == row.model), None)
    return NA if anchor is None else number(row.rate / anchor.rate)


def inference_table(rows: Sequence[Row], anchors: Sequence[str]) -> str:
    """Sentences/s, useful TFLOP/s, ratio to each anchor of the same encoder, peak GPU memory."""
    header = ["workload", "encoder", "rows", "median s", "sentences/s", "useful TFLOP/s",
              *(f"x ({key})" for key in anchors), "peak GPU MiB"]
    lines = [[r.workload, r.model, str(r.rows), number(r.seconds), number(r.rate), number(r.tflops),
              *(_ratio(r, rows, key) for key in anchors), number(r.timing.peak_mib)] for r in rows]
    return table(header, lines)


def finetune_table(rows: Sequence[Row], anchors: Sequence[str]) -> str:
    """Examples/s, training TFLOP/s, validation accuracy, ratio to each Trainer anchor."""
    header = ["workload", "encoder", "rows", "median s", "examples/s", "useful TFLOP/s", "val accuracy",
              *(f"x ({key})" for key in anchors), "peak GPU MiB"]
    lines = [[r.workload, r.model, str(r.rows), number(r.seconds), number(r.rate), number(r.tflops),
              number(r.accuracy, 4), *(_ratio(r, rows, key) for key in anchors), number(r.timing.peak_mib)]
             for r in rows]
    return table(header, lines)


def refit_table(rows: Sequence[Row], first_key: str) -> str:
    """Seconds of the first build and of refits on cached outputs, with the speed-up."""
    first = next((r for r in rows if r.key == first_key), None)
    header = ["workload", "members", "train rows", "median s", "x faster than first build"]
    lines = [[r.workload, r.model, str(r.rows), number(r.seconds),
              NA if first is None else number(first.seconds / r.seconds)] for r in rows]
    return table(header, lines)


def scaling_table(rows: Sequence[Row]) -> str:
    """Seconds, rows x members per second and per-unit cost relative to the smallest size."""
    smallest = min(rows, key=lambda r: (r.units, r.seconds), default=None)
    header = ["workload", "members", "rows", "median s", "rows*members/s", "us per row*member",
              "per-unit cost vs smallest"]
    lines = [[r.workload, str(r.members), str(r.rows), number(r.seconds), number(r.rate),
              number(1e6 / r.rate), number(smallest.rate / r.rate) if smallest else NA] for r in rows]
    return table(header, lines)

