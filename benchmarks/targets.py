"""The issue's targets, checked against the rows of this run (never against numbers from elsewhere)."""

from __future__ import annotations

from collections.abc import Sequence

from .refit import NOTHING_COMPUTED
from .results import Row, number, table
from .scaling import LINEAR_TOLERANCE

END_TO_END_VS_DEVICE = 0.70
END_TO_END_VS_PIPELINE = 20.0
FINETUNE_SPEEDUP = 4.0
FINETUNE_ACCURACY_DROP = 0.003
REFIT_SPEEDUP = 100.0


def _find(rows: Sequence[Row], group: str, key: str, model: str | None = None) -> Row | None:
    return next((r for r in rows if r.group == group and r.key == key and model in (None, r.model)), None)


def _status(ok: bool | None, gpu_only: bool, on_cuda: bool) -> str:
    if ok is None:
        return "not run"
    if gpu_only and not on_cuda:
        return "n/a on CPU"
    return "met" if ok else "not met"


def _inference_lines(rows: Sequence[Row], on_cuda: bool) -> list[list[str]]:
    lines = []
    for model in dict.fromkeys(r.model for r in rows if r.group == "inference"):
        member, device = _find(rows, "inference", "member", model), _find(rows, "inference", "d", model)
        pipe = _find(rows, "inference", "a", model)
        share = member.rate / device.rate if member and device else None
        lines.append([f"{model}: end-to-end member >= {END_TO_END_VS_DEVICE:.0%} of device-only (d)",
                      cell(share, "x of (d)"), _status(None if share is None else share >= END_TO_END_VS_DEVICE,
                                                       True, on_cuda)])
        if pipe is None:  # the pipeline anchor runs on the small encoder only
            continue
        speedup = member.rate / pipe.rate if member else None
        lines.append([f"{model}: end-to-end member >= {END_TO_END_VS_PIPELINE:.0f}x the pipeline (a)",
                      cell(speedup, "x"), _status(None if speedup is None else speedup >= END_TO_END_VS_PIPELINE,
                                                   True, on_cuda)])
    return lines


def _finetune_lines(rows: Sequence[Row], on_cuda: bool) -> list[list[str]]:
    base = _find(rows, "finetune", "trainer")
    lines = []
    for key in ("fusion-32", "fusion-128"):
        row = _find(rows, "finetune", key)
        ok, measured = None, "n/a"
        if row and base and row.accuracy is not None and base.accuracy is not None:
            speedup, drop = row.rate / base.rate, base.accuracy - row.accuracy
            ok = speedup >= FINETUNE_SPEEDUP and drop <= FINETUNE_ACCURACY_DROP
            measured = f"{number(speedup)}x examples/s, accuracy {(row.accuracy - base.accuracy) * 100:+.1f} pt"
        lines.append([f"{row.workload if row else key}: >= {FINETUNE_SPEEDUP:.0f}x Trainer default (t1) examples/s, "
                      f"accuracy at most {FINETUNE_ACCURACY_DROP * 100:.1f} pt lower", measured,
                      _status(ok, True, on_cuda)])
    return lines


def _refit_lines(rows: Sequence[Row], on_cuda: bool) -> list[list[str]]:
    first = _find(rows, "refit", "first")
    lines = []
    for key in ("refit-val", "refit"):
        row = _find(rows, "refit", key)
        speedup = first.seconds / row.seconds if first and row else None
        ok = None if speedup is None else speedup >= REFIT_SPEEDUP and row.workload.endswith(NOTHING_COMPUTED)
        lines.append([f"{row.workload if row else key}: >= {REFIT_SPEEDUP:.0f}x faster than the first build, "
                      "no member run", cell(speedup, "x"), _status(ok, False, on_cuda)])
    return lines


def linearity(rows: Sequence[Row]) -> float | None:
    """Per-unit cost (seconds per row x member) at the largest size over that at the smallest."""
    scaled = [r for r in rows if r.group == "scaling"]
    if len(scaled) < 2:
        return None
    small, large = min(scaled, key=lambda r: r.units), max(scaled, key=lambda r: r.units)
    return small.rate / large.rate


def _scaling_lines(rows: Sequence[Row], on_cuda: bool) -> list[list[str]]:
    ratio = linearity(rows)
    return [[f"cost linear in members x examples (per-unit cost at the largest size <= {LINEAR_TOLERANCE}x the "
             "smallest)", cell(ratio, "x"), _status(None if ratio is None else ratio <= LINEAR_TOLERANCE, False,
                                                     on_cuda)]]


def cell(value: float | None, suffix: str) -> str:
    """``n/a`` or the value with a suffix."""
    return "n/a" if value is None else f"{number(value)}{suffix}"


def targets_table(rows: Sequence[Row], on_cuda: bool) -> str:
    """One line per target: what it asks, what this run measured, met / not met / n/a on CPU / not run."""
    lines = (_inference_lines(rows, on_cuda) + _finetune_lines(rows, on_cuda) + _refit_lines(rows, on_cuda)
             + _scaling_lines(rows, on_cuda))
    return table(["target", "measured", "status"], lines)
