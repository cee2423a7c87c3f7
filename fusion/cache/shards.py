"""Sharded cache entries: a member's outputs over a large dataset as fixed row-range shards plus a manifest.

An entry of ``n`` rows computed with ``shard_rows`` rows per shard lives in one folder beside where its single
file would be::

    <directory>/<member fp[:24]>/<variant>-<data fp[:24]>.shards/
        rows-000000000-000004096.safetensors    one shard: rows [0, 4096), written atomically
        rows-000004096-000008192.safetensors
        ...
        manifest.json                            written last: fingerprints, row count, ranges, checksums

Each shard file holds the outputs of its rows and, in its metadata, the entry's key, its range, the
``sha256_tensors`` checksum of its tensors and the seconds it took. A shard is written beside its name and
renamed into place, so a builder killed mid-write leaves nothing, and two builders writing the same shard
(two processes of one launch resuming, a Ray task retried) each leave a complete, identical file: a duplicate
write is harmless. A build that stops (a killed process, a lost node) resumes by computing only the shards
whose files are missing; a shard whose checksum does not match (truncated, flipped bits) is logged, deleted and
computed again, never read. The manifest is written once every shard is there; a reader trusts an entry only
through it, and still checks every shard against the manifest's checksum.

Reading an entry concatenates the shards in row order, so it gives exactly the rows the single-process build
gives, whichever process or worker computed each shard (each shard is computed by the same function of the
same rows, see :class:`fusion.engines.RowJob`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import ConfigError
from ..io import atomic_save_tensors, atomic_write_text, sha256_tensors

logger = logging.getLogger(__name__)

Outputs = dict[str, torch.Tensor]
Key = tuple[str, str, str]

SHARDS_SUFFIX = ".shards"  # the entry's folder: the single file's name with this suffix instead of .safetensors
MANIFEST = "manifest.json"
FORMAT = 1
_WIDTH = 9  # digits of a row number in a shard's file name (sorting by name sorts by row)


def shard_ranges(n_rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """The fixed row ranges ``[start, stop)`` of an entry of ``n_rows`` rows, ``shard_rows`` rows each (the last
    may be shorter); one empty range for an empty dataset.

    Example:
        >>> shard_ranges(10, 4)
        [(0, 4), (4, 8), (8, 10)]
    """
    if not isinstance(shard_rows, int) or isinstance(shard_rows, bool) or shard_rows < 1:
        raise ConfigError(f"shard_rows must be an integer >= 1; got {shard_rows!r}.")
    if n_rows == 0:
        return [(0, 0)]
    return [(start, min(start + shard_rows, n_rows)) for start in range(0, n_rows, shard_rows)]


@dataclass(frozen=True)
class Shard:
    """One finished shard as read from its file."""

    start: int
    stop: int
    outputs: Outputs
    checksum: str
    seconds: float


class ShardedEntry:
    """One entry's shard folder: which shards are done, writing one, reading them all back in order.

    Args:
        folder: the entry's ``.shards`` folder (created on the first write).
        key: ``(member fingerprint, data fingerprint, variant)``, recorded in every shard and the manifest.
        n_rows: the dataset's row count.
        shard_rows: rows per shard for a new build; an entry whose manifest was written with another shard size
            is read as it was written.

    Example:
        >>> import tempfile
        >>> entry = ShardedEntry(Path(tempfile.mkdtemp()) / "e.shards", ("m", "d", "outputs"), 5, 2)
        >>> for i, (a, b) in enumerate(entry.ranges):
        ...     _ = entry.write(i, {"logits": torch.arange(a, b, dtype=torch.float32)[:, None]}, seconds=0.1)
        >>> entry.finish(label="demo")
        >>> entry.read()[0]["logits"].flatten().tolist()
        [0.0, 1.0, 2.0, 3.0, 4.0]
    """

    def __init__(self, folder: Path, key: Key, n_rows: int, shard_rows: int) -> None:
        self.folder, self.key, self.n_rows = Path(folder), key, n_rows
        manifest = self._manifest()
        self.shard_rows = int(manifest["shard_rows"]) if manifest is not None else shard_rows
        self.ranges = shard_ranges(n_rows, self.shard_rows)

    @classmethod
    def existing(cls, folder: Path, key: Key) -> ShardedEntry | None:
        """The entry whose manifest is in ``folder``, with the row count and shard size it records; None if there
        is no manifest for ``key`` there (the entry's shards are verified when read)."""
        path = Path(folder) / MANIFEST
        if not path.is_file():
            return None
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
            n_rows, shard_rows = int(recorded["rows"]), int(recorded["shard_rows"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        entry = cls(folder, key, n_rows, shard_rows)
        return entry if entry.complete else None

    # --- names ----------------------------------------------------------------------------------------------
    def path(self, index: int) -> Path:
        start, stop = self.ranges[index]
        return self.folder / f"rows-{start:0{_WIDTH}d}-{stop:0{_WIDTH}d}.safetensors"

    def describe(self, index: int) -> str:
        """``"rows 4096-8192 of 20000"``: a shard for people (errors, logs)."""
        start, stop = self.ranges[index]
        return f"rows {start}-{stop} of {self.n_rows}"

    # --- state ----------------------------------------------------------------------------------------------
    def _manifest(self) -> dict | None:
        """The manifest if it describes this very entry, else None (absent, foreign or unreadable)."""
        path = self.folder / MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            member, data, variant = self.key
            ok = (manifest.get("format") == FORMAT and manifest.get("member") == member and manifest.get("data") == data
                  and manifest.get("variant") == variant and manifest.get("rows") == self.n_rows
                  and len(manifest.get("shards", [])) == len(shard_ranges(self.n_rows, int(manifest["shard_rows"]))))
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning("cache manifest %s is unreadable (%s); its shards are checked again", path, err)
            return None
        if not ok:
            logger.warning("cache manifest %s describes another entry; its shards are checked again", path)
            return None
        return manifest

    @property
    def complete(self) -> bool:
        """True when the manifest is written (every shard was there when it was)."""
        return self._manifest() is not None

    def _header(self, index: int) -> dict[str, str] | None:
        """The shard file's metadata if the file exists and names this entry and range (tensors not read)."""
        path = self.path(index)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
        except Exception as err:  # a truncated header, a foreign file: recompute it
            logger.warning("cache shard %s is unreadable (%s); computing it again", path, err)
            self._drop(index)
            return None
        start, stop = self.ranges[index]
        if (meta.get("member"), meta.get("data"), meta.get("variant")) != self.key or \
                (meta.get("start"), meta.get("stop")) != (str(start), str(stop)) or "checksum" not in meta:
            logger.warning("cache shard %s belongs to another entry; computing it again", path)
            self._drop(index)
            return None
        return meta

    def has(self, index: int) -> bool:
        """Whether shard ``index`` has an intact-looking file (its header is checked; its tensors are checked
        against their checksum when read)."""
        return self._header(index) is not None

    def written(self) -> int:
        """How many of the entry's shard files exist (names only: a cheap count for progress, nothing verified)."""
        names = {self.path(i).name for i in range(len(self.ranges))}
        return sum(1 for path in self.folder.glob("rows-*.safetensors") if path.name in names) \
            if self.folder.is_dir() else 0

    def missing(self) -> list[int]:
        """Indices of the shards still to compute."""
        return [i for i in range(len(self.ranges)) if not self.has(i)]

    def _drop(self, index: int) -> None:
        with contextlib.suppress(OSError):
            self.path(index).unlink()
        with contextlib.suppress(OSError):  # the entry is no longer complete
            (self.folder / MANIFEST).unlink()

    # --- writing --------------------------------------------------------------------------------------------
    def write(self, index: int, outputs: Mapping[str, torch.Tensor], seconds: float) -> str:
        """Write shard ``index`` atomically (a duplicate write replaces it with the same content); returns its
        checksum. Refuses outputs whose row count is not the shard's."""
        start, stop = self.ranges[index]
        tensors = {name: t.detach().cpu().contiguous() for name, t in outputs.items()}
        wrong = {name: tuple(t.shape) for name, t in tensors.items() if t.ndim == 0 or t.shape[0] != stop - start}
        if wrong:
            raise ValueError(f"shard {self.describe(index)} must hold {stop - start} rows per output; got {wrong}")
        checksum = sha256_tensors(tensors)
        member, data, variant = self.key
        meta = {"member": member, "data": data, "variant": variant, "start": str(start), "stop": str(stop),
                "checksum": checksum, "seconds": repr(float(seconds))}
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(self.path(index), tensors, meta)
        return checksum

    def finish(self, label: str | None = None) -> None:
        """Write the manifest (atomically), once every shard is there; checks each shard's header first."""
        shards = []
        for i, (start, stop) in enumerate(self.ranges):
            meta = self._header(i)
            if meta is None:
                raise FileNotFoundError(f"cannot finish {self.folder}: shard {self.describe(i)} is missing")
            shards.append({"start": start, "stop": stop, "file": self.path(i).name, "checksum": meta["checksum"],
                           "seconds": float(meta.get("seconds", "0"))})
        member, data, variant = self.key
        manifest = {"format": FORMAT, "member": member, "data": data, "variant": variant, "rows": self.n_rows,
                    "shard_rows": self.shard_rows, "shards": shards, "label": label}
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    # --- reading --------------------------------------------------------------------------------------------
    def read_shard(self, index: int, expected: str | None = None) -> Shard | None:
        """Shard ``index`` with its tensors verified against its checksum (and ``expected``, the manifest's);
        None, with the file deleted, if it is missing or damaged, so that the next build recomputes it."""
        meta = self._header(index)
        if meta is None:
            return None
        path = self.path(index)
        try:
            with safe_open(str(path), framework="pt") as handle:
                # cloned: tensors mapped from a file are not aligned, and kernels on unaligned memory round
                # differently (see OutputCache._read)
                outputs = {name: handle.get_tensor(name).clone() for name in handle.keys()}  # noqa: SIM118
        except Exception as err:
            logger.warning("cache shard %s is unreadable (%s); computing it again", path, err)
            self._drop(index)
            return None
        checksum = sha256_tensors(outputs)
        if checksum != meta["checksum"] or (expected is not None and checksum != expected):
            logger.warning("cache shard %s is damaged (its tensors do not match their checksum); computing it again",
                           path)
            self._drop(index)
            return None
        start, stop = self.ranges[index]
        return Shard(start, stop, outputs, checksum, float(meta.get("seconds", "0")))

    def read(self) -> tuple[Outputs, float, str | None] | None:
        """``(outputs in row order, total seconds, label)`` of a complete entry, every shard verified; None if the
        entry is not complete or a shard is damaged (that shard's file is then deleted, so only it is rebuilt)."""
        manifest = self._manifest()
        if manifest is None:
            return None
        shards = []
        for i, recorded in enumerate(manifest["shards"]):
            shard = self.read_shard(i, recorded.get("checksum"))
            if shard is None:
                return None
            shards.append(shard)
        names = list(shards[0].outputs)
        outputs = {name: torch.cat([s.outputs[name] for s in shards]) for name in names}
        return outputs, sum(s.seconds for s in shards), manifest.get("label")
