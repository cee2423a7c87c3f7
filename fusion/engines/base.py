"""What every engine shares: the row-wise job it runs, retries, the error a failed shard raises, one progress bar.

An engine computes the missing shards of a sharded cache entry (:class:`fusion.cache.shards.ShardedEntry`).
It never decides what to compute or how outputs are stored: the cache hands it a :class:`RowJob` and the entry,
and reads the shards back once the engine returns. Engines are registered in ``ENGINES`` by name.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, FusionError
from ..progress import describe, progress_enabled
from ..registry import Registry

if TYPE_CHECKING:
    from ..cache.shards import ShardedEntry
    from ..inputs import TextData

logger = logging.getLogger(__name__)

Outputs = dict[str, torch.Tensor]
ENGINES: Registry[Engine] = Registry("engine", attribute="name")


class ShardError(FusionError, RuntimeError):
    """A shard kept failing: names the member, the shard's rows and the original error (chained)."""


@dataclass(frozen=True)
class RowJob:
    """A row-wise computation whose outputs go to one cache entry: the outputs on any rows are the same function
    of those rows alone, so the entry can be computed shard by shard, anywhere, and concatenated.

    Attributes:
        key: the cache entry: ``(member fingerprint, data fingerprint, variant)``.
        data: every row of the entry.
        run: ``run(rows) -> {name: tensor with one row per input row}`` for ``rows = data.select(range)``. It must
            pickle (a bound method of a member does: members drop their loaded models when pickled and load them
            again, once, on first use), so that a remote worker can run it.
        label: who computes it, for people (progress bars, errors, ``fusion cache info``).
    """

    key: tuple[str, str, str]
    data: TextData
    run: Callable[[TextData], Outputs]
    label: str

    def rows(self, start: int, stop: int) -> TextData:
        return self.data.select(range(start, stop))


def compute_shard(job: RowJob, entry: ShardedEntry, index: int, retries: int) -> None:
    """Compute shard ``index`` of ``entry`` in this process and write it, trying up to ``1 + retries`` times.

    Raises:
        ShardError: every try failed; finished shards stay written.
    """
    start, stop = entry.ranges[index]
    for attempt in range(retries + 1):
        begin = time.perf_counter()
        try:
            outputs = job.run(job.rows(start, stop))
            entry.write(index, outputs, time.perf_counter() - begin)
            return
        except Exception as err:  # a shard's failure is reported with where it happened
            if attempt < retries:
                logger.warning("%s: shard %s failed (%r); retrying (%d of %d)", job.label, entry.describe(index), err,
                               attempt + 1, retries)
                continue
            raise shard_error(job, entry, index, retries + 1, repr(err)) from err


def shard_error(job: RowJob, entry: ShardedEntry, index: int, tries: int, error: str) -> ShardError:
    done = len(entry.ranges) - len(entry.missing())
    return ShardError(
        f"{job.label}: computing its outputs on {entry.describe(index)} failed {tries} time(s): {error}. The "
        f"{done} finished shard(s) of {len(entry.ranges)} are kept in {entry.folder}; fix the cause and run again: "
        "only the missing shards are computed."
    )


@contextmanager
def shard_bar(job: RowJob, entry: ShardedEntry, show: bool = True) -> Iterator[tqdm]:
    """One progress bar over all of an entry's shards, whoever computes them (starts at those already done)."""
    total = len(entry.ranges)
    with tqdm(total=total, initial=total - len(entry.missing()), desc=describe(f"{job.label} shards"), unit="shard",
              disable=not (show and progress_enabled()), leave=False) as bar:
        yield bar


class Engine(abc.ABC):
    """Computes the missing shards of an entry.

    Attributes:
        name: the registered name (``"local"``, ``"ray"``).
        local: True when shards run in this process (or the processes of this launch), so an entry small enough
            for one shard is simply computed here, unsharded; a remote engine shards every entry it is given.
        retries: how many times a failing shard is tried again before the build stops with a ``ShardError``.
        computed: the shards this engine has written so far (in this process: its own share under a launch).
    """

    name: ClassVar[str]
    local: ClassVar[bool] = True

    def __init__(self, retries: int = 2) -> None:
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ConfigError(f"{type(self).__name__}: retries must be an integer >= 0; got {retries!r}.")
        self.retries = retries
        self.computed = 0

    @abc.abstractmethod
    def build(self, job: RowJob, entry: ShardedEntry, show_progress: bool = True) -> None:
        """Compute and write every shard of ``entry`` that is missing; return when all are written.

        Raises:
            ShardError: a shard failed ``1 + retries`` times (the shards written so far are kept).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(retries={self.retries})"


def make_engine(engine: str | Engine | None) -> Engine:
    """An engine from its registered name (``None``: ``"local"``) or an ``Engine`` as given.

    Example:
        >>> make_engine("local").name
        'local'
    """
    if isinstance(engine, Engine):
        return engine
    if engine is None:
        engine = "local"
    if not isinstance(engine, str):
        raise ConfigError(f"engine must be a registered engine name ({', '.join(ENGINES.names())}) or an Engine; "
                          f"got {type(engine).__name__}.")
    return ENGINES.get(engine)()
