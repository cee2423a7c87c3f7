"""Timing: medians of repetitions, with CUDA synchronisation and per-workload peak GPU memory."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds of each repetition, their median, and the peak GPU memory (MiB; None on CPU)."""

    seconds: list[float]
    peak_mib: float | None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """On CUDA, free what the previous workload left behind, so its memory does not count in the next peak
    (a full garbage collection costs a quarter of a second, so CPU runs skip it)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def measure(run: Callable[[], Any], repeats: int, device: torch.device,
            before: Callable[[], None] | None = None, after: Callable[[Any], None] | None = None) -> Timing:
    """Time ``run()`` ``repeats`` times; ``before()`` and ``after(result)`` run untimed around each repetition.

    Peak GPU memory is reset before each repetition and the largest peak is kept.
    """
    seconds, peak = [], 0
    for _ in range(repeats):
        if before is not None:
            before()
        release(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        start = time.perf_counter()
        result = run()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        if device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated(device))
        if after is not None:
            after(result)
        del result
    return Timing(seconds, peak / 2**20 if device.type == "cuda" else None)


def stopwatch(run: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``run()`` takes, GPU work included. A full garbage collection runs first, untimed: in a process
    that holds every earlier workload's objects, a collection falling inside a sub-second run would dominate it."""
    gc.collect()
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start
