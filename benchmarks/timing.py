"""Timing: medians of repetitions, with CUDA synchronisation, per-workload peak GPU memory, and process-wide
state reset before each repetition."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fusion.cache.store import OutputCache


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


def fresh_state() -> None:
    """Forget what an earlier repetition left in the process: Accelerate's singletons (so each run builds its
    Accelerator). fusion keeps nothing process-wide: each repetition gets its own :func:`fresh_cache`."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def fresh_cache() -> OutputCache:
    """An empty memory-only ``OutputCache``: nothing from an earlier repetition or run (fusion's default cache
    persists on disk), so fusion tokenises and runs every model from raw text."""
    from fusion import OutputCache

    return OutputCache(memory_only=True)


def measure(run: Callable[[], Any], repeats: int, device: torch.device,
            after: Callable[[Any], None] | None = None) -> Timing:
    """Time ``run()`` ``repeats`` times, each after :func:`fresh_state`; ``after(result)`` runs untimed after
    each repetition.

    Peak GPU memory is reset before each repetition and the largest peak is kept.
    """
    seconds, peak = [], 0
    for _ in range(repeats):
        fresh_state()
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
