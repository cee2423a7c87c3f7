"""OutputCache: member outputs stored once per (member fingerprint, data fingerprint, variant).

Entries live in memory and, when a directory is given, as safetensors files
``<dir>/<member fp>/<variant>-<data fp>.safetensors``. The cache is disposable: an unreadable or foreign file
is logged and recomputed, never trusted.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from .io import atomic_save_tensors

logger = logging.getLogger(__name__)

Outputs = dict[str, torch.Tensor]


class OutputCache:
    """Remembers what each member said about each dataset, so no model runs twice on the same rows.

    Args:
        directory: where to persist entries; ``None`` keeps them in memory only.
        max_memory_entries: entries kept in memory, least recently used dropped first (files on disk stay),
            so a long-running service that predicts on ever new texts does not grow without bound.

    Attributes:
        hits / misses: lookups answered from the cache / computed.

    Each entry also records the wall-clock seconds it cost to compute from scratch (``seconds``): the time
    of its own computation plus the recorded cost of any cached entries it reused (an encoder head reusing
    cached embeddings still costs what the backbone took), so reports can state inference cost honestly.

    Example:
        >>> cache = OutputCache()
        >>> cache.get_or_compute("member-fp", "data-fp", lambda: {"logits": torch.zeros(2, 3)})["logits"].shape
        torch.Size([2, 3])
    """

    def __init__(self, directory: str | os.PathLike | None = None, max_memory_entries: int = 256) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_memory_entries = max_memory_entries
        self._memory: OrderedDict[tuple[str, str, str], Outputs] = OrderedDict()
        self._seconds: dict[tuple[str, str, str], float] = {}
        self._reused: list[float] = []  # per computation in progress: recorded cost of the entries it reused
        self.hits = 0
        self.misses = 0

    def _path(self, member_fp: str, data_fp: str, variant: str) -> Path:
        assert self.directory is not None
        return self.directory / member_fp[:24] / f"{variant}-{data_fp[:24]}.safetensors"

    def get(self, member_fp: str, data_fp: str, variant: str = "outputs") -> Outputs | None:
        """The stored entry, or None."""
        key = (member_fp, data_fp, variant)
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        if self.directory is None:
            return None
        path = self._path(*key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if (meta.get("member"), meta.get("data"), meta.get("variant")) != key:
                    logger.warning("cache file %s belongs to another entry; recomputing", path)
                    return None
                outputs = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
                if "seconds" in meta:
                    self._seconds[key] = float(meta["seconds"])
        except Exception as err:  # a cache is disposable: never fail a run because of it
            logger.warning("cache file %s is unreadable (%s); recomputing", path, err)
            return None
        self._remember(key, outputs)
        return outputs

    def _remember(self, key: tuple[str, str, str], outputs: Outputs) -> None:
        self._memory[key] = outputs
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_memory_entries:
            self._memory.popitem(last=False)

    def seconds(self, member_fp: str, data_fp: str, variant: str = "outputs") -> float | None:
        """Recorded cost of computing an entry from scratch, or None if unknown."""
        return self._seconds.get((member_fp, data_fp, variant))

    def put(
        self, member_fp: str, data_fp: str, outputs: Outputs, variant: str = "outputs", seconds: float | None = None
    ) -> None:
        """Store an entry (atomically on disk), with the seconds it cost to compute if known."""
        key = (member_fp, data_fp, variant)
        outputs = {name: tensor.detach().cpu().contiguous() for name, tensor in outputs.items()}
        self._remember(key, outputs)
        if seconds is not None:
            self._seconds[key] = seconds
        if self.directory is not None:
            meta = {"member": member_fp, "data": data_fp, "variant": variant}
            if seconds is not None:
                meta["seconds"] = repr(seconds)
            atomic_save_tensors(self._path(member_fp, data_fp, variant), outputs, meta)

    def get_or_compute(
        self, member_fp: str, data_fp: str, compute: Callable[[], Outputs], variant: str = "outputs"
    ) -> Outputs:
        """Return the cached entry, computing and storing it first if absent."""
        cached = self.get(member_fp, data_fp, variant)
        if cached is not None:
            self.hits += 1
            if self._reused:
                self._reused[-1] += self._seconds.get((member_fp, data_fp, variant), 0.0)
            return cached
        self.misses += 1
        self._reused.append(0.0)
        start = time.perf_counter()
        try:
            outputs = {name: tensor.detach().cpu().contiguous() for name, tensor in compute().items()}
        finally:
            seconds = time.perf_counter() - start + self._reused.pop()
        self.put(member_fp, data_fp, outputs, variant, seconds)
        return outputs

    def clear_memory(self) -> None:
        """Forget in-memory entries (files on disk stay)."""
        self._memory.clear()
