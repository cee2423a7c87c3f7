"""The Ray engine: an entry's missing shards computed as Ray Data batch inference on a Ray cluster.

Install the extra first: ``pip install "fusion-ensembles[ray]"`` (``fusion[ray]``); nothing here imports Ray
until a build runs, so the default, local engine never needs it.

One build is one Ray Data dataset with one item per missing shard (``shard``, ``start``, ``stop``), mapped by a
pool of actors (:class:`ShardWorker`, ``batch_size=1``). Each actor is constructed once with the job's function
and rows: it unpickles the member there (a member drops its loaded model when pickled, so each actor loads the
model once, through the member's own loader, on its first shard) and then computes ``run(rows of the shard)``,
the very function the local engine calls. It returns the outputs serialised as safetensors bytes (no pickle of
tensors), the seconds they took and an error text (the remote exception and its traceback; empty on success).
Ray does not keep the items' order: the driver takes the results as they come, checks each against the shard it
names (its index and row range), writes it with :meth:`fusion.cache.shards.ShardedEntry.write` and advances one
progress bar over all shards and workers. Shards that failed are tried again in a new round (new actors), at most
``retries`` times; then the build stops with a :class:`fusion.engines.ShardError` naming the member, the shard's
rows and the original error, and every finished shard stays written, so the next build computes only the others.

Example:
    >>> from fusion import Ensemble
    >>> ens = Ensemble(members, engine="ray")  # doctest: +SKIP
    >>> ens = Ensemble(members, engine=RayEngine(address="auto", num_gpus=0.5, retries=1))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import socket
import time
import traceback
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from .base import ENGINES, Engine, RowJob, shard_bar, shard_error

if TYPE_CHECKING:
    from ..cache.shards import ShardedEntry

logger = logging.getLogger(__name__)

INSTALL = 'pip install "fusion-ensembles[ray]"'  # the extra is named ``ray``: fusion[ray]


def import_ray() -> Any:
    """``ray`` with Ray Data, or a ConfigError saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"engine='ray' needs Ray Data, which is not installed ({err}); install the extra with "
                          f"{INSTALL} (i.e. fusion[ray]), or use engine='local'.") from err
    return ray


class RemoteError(Exception):
    """The error a shard raised on a Ray worker, as its text (the exception and its traceback there); what a
    :class:`fusion.engines.ShardError` from the Ray engine is chained from."""


class ShardWorker:
    """A Ray Data actor computing shards of one job: constructed once per actor, called once per shard.

    Args:
        run: ``cloudpickle`` bytes of the job's function (unpickled here, so that a function that cannot be
            unpickled on the worker is reported as that shard's error, like any other).
        data: ``[ObjectRef]`` of the job's rows (a list, so Ray hands over the reference and the rows are fetched
            from the object store once per actor).
    """

    def __init__(self, run: bytes, data: list) -> None:
        import ray
        from ray import cloudpickle

        from ..progress import set_progress

        set_progress(False)  # one bar, the driver's, over every shard and worker
        self.where = f"{socket.gethostname()} pid {os.getpid()}"
        self.error = ""
        try:
            self.run = cloudpickle.loads(run)
            self.data = ray.get(data[0])
        except Exception:  # reported for each shard this actor is given
            self.error = f"could not set up the job on the Ray worker ({self.where}):\n{traceback.format_exc()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from safetensors.torch import save

        blobs, seconds, errors = [], [], []
        for start, stop in zip(batch["start"], batch["stop"], strict=True):
            begin, blob, error = time.perf_counter(), b"", self.error
            if not error:
                try:
                    outputs = self.run(self.data.select(range(int(start), int(stop))))
                    # cloned: safetensors refuses tensors sharing memory (one output a view of another)
                    blob = save({name: t.detach().cpu().contiguous().clone() for name, t in outputs.items()})
                except Exception:
                    error = f"on the Ray worker {self.where}:\n{traceback.format_exc()}"
            blobs.append(blob)
            seconds.append(time.perf_counter() - begin)
            errors.append(error)
        return {"shard": batch["shard"], "start": batch["start"], "stop": batch["stop"],
                "outputs": np.array(blobs, dtype=object), "seconds": np.array(seconds, dtype=np.float64),
                "error": np.array(errors, dtype=object)}


def _brief(error: str) -> str:
    """The last line of a remote traceback: ``"RuntimeError: boom"``."""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else error


@ENGINES.register("ray")
class RayEngine(Engine):
    """Shards computed by Ray Data batch inference: a pool of actors, each loading the member once.

    Args:
        address: the Ray cluster. None: the one this process is already connected to (``ray.init()`` called
            before), else ``$RAY_ADDRESS``, else a new local instance (started once, kept for later builds);
            ``"auto"``: a running cluster of this machine; ``"ray://host:10001"``: a remote cluster.
        concurrency: actors per build. None: as many as the cluster's resources hold (its CPUs over ``num_cpus``,
            and with GPUs its GPUs over ``num_gpus``), never more than the shards to compute.
        num_gpus: GPUs per actor (fractions share a GPU). None: 1 when the cluster has GPUs, else 0.
        num_cpus: CPUs per actor (Ray also sets the actor's thread count from it).
        retries: how many more rounds the failed shards get before the build stops with a ``ShardError``.

    Raises:
        ConfigError: an invalid setting, or Ray Data not installed (with the command installing it).

    Every build starts its actors afresh (a few seconds each: the worker imports torch and fusion, then loads the
    model), so the engine pays off on entries large enough for many shards; ``shard_rows`` sets their size.

    Example:
        >>> RayEngine(concurrency=4, retries=1)  # doctest: +SKIP
        RayEngine(address=None, concurrency=4, num_gpus=None, num_cpus=1, retries=1)
    """

    local = False

    def __init__(self, address: str | None = None, concurrency: int | None = None, num_gpus: float | None = None,
                 num_cpus: float = 1, retries: int = 2) -> None:
        super().__init__(retries)
        if address is not None and not isinstance(address, str):
            raise ConfigError(f"RayEngine: address must be a string such as 'auto' or 'ray://host:10001', or None; "
                              f"got {address!r}.")
        if concurrency is not None and (not isinstance(concurrency, int) or isinstance(concurrency, bool)
                                        or concurrency < 1):
            raise ConfigError(f"RayEngine: concurrency must be an integer >= 1 (actors), or None for as many as the "
                              f"cluster holds; got {concurrency!r}.")
        for name, value, optional in (("num_gpus", num_gpus, True), ("num_cpus", num_cpus, False)):
            if (value is None and optional) or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                                and value >= 0):
                continue
            raise ConfigError(f"RayEngine: {name} must be a number >= 0 (per actor); got {value!r}.")
        if importlib.util.find_spec("ray") is None:  # found now, imported only when a build runs
            raise ConfigError(f"engine='ray' needs Ray Data, which is not installed; install the extra with {INSTALL} "
                              "(i.e. fusion[ray]), or use engine='local'.")
        self.address, self.concurrency, self.num_gpus, self.num_cpus = address, concurrency, num_gpus, num_cpus

    def __repr__(self) -> str:
        return (f"RayEngine(address={self.address!r}, concurrency={self.concurrency}, num_gpus={self.num_gpus}, "
                f"num_cpus={self.num_cpus}, retries={self.retries})")

    # --- the cluster ----------------------------------------------------------------------------------------
    def connect(self) -> Any:
        """``ray``, connected to the cluster (see ``address``)."""
        ray = import_ray()
        if not ray.is_initialized():
            where = self.address or os.environ.get("RAY_ADDRESS") or "a new local instance"
            logger.info("connecting to Ray: %s", where)
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING)
        return ray

    def resources(self, ray: Any, shards: int) -> tuple[int, float]:
        """``(actors, GPUs per actor)`` for a build of ``shards`` shards on the connected cluster."""
        available = ray.cluster_resources()
        gpus = self.num_gpus if self.num_gpus is not None else (1.0 if available.get("GPU", 0) >= 1 else 0.0)
        if gpus > available.get("GPU", 0):  # Ray would wait for it without end
            raise ConfigError(f"RayEngine: num_gpus={gpus} per actor, but the Ray cluster has "
                              f"{available.get('GPU', 0):g} GPU(s); pass num_gpus=0 (or None: 1 when it has GPUs).")
        if self.concurrency is not None:
            actors = self.concurrency
        else:
            fits = [available.get("CPU", 1) / self.num_cpus] if self.num_cpus > 0 else []
            if gpus > 0:
                fits.append(available.get("GPU", 0) / gpus)
            actors = int(min(fits)) if fits else shards
        return max(1, min(actors, shards)), gpus

    # --- a build --------------------------------------------------------------------------------------------
    def build(self, job: RowJob, entry: ShardedEntry, show_progress: bool = True) -> None:
        missing = entry.missing()
        if not missing:
            return
        ray = self.connect()
        from ray import cloudpickle

        try:
            run = cloudpickle.dumps(job.run)
        except Exception as err:
            raise ConfigError(f"{job.label}: its function {job.run!r} cannot be pickled for the Ray workers ({err}); "
                              "use the local engine, or make it picklable.") from err
        # the rows alone: a subset's parent (the whole dataset) need not travel
        data = ray.put(dataclasses.replace(job.data, parent=None, index=None))
        failures: dict[int, str] = {}
        with shard_bar(job, entry, show_progress) as bar, _quiet_data_logs(), warnings.catch_warnings():
            # Ray's own deprecation notices (its context's old fields, its remote arguments) are not the user's
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            for attempt in range(self.retries + 1):
                failures = self._round(ray, job, entry, missing, run, data, bar)
                if not failures:
                    return
                missing = sorted(failures)
                if attempt < self.retries:
                    logger.warning("%s: %d shard(s) failed on Ray (first: %s, %s); retrying them (%d of %d)", job.label,
                                   len(missing), entry.describe(missing[0]), _brief(failures[missing[0]]), attempt + 1,
                                   self.retries)
        first = missing[0]
        others = f" ({len(missing) - 1} other shard(s) failed too)" if len(missing) > 1 else ""
        raise shard_error(job, entry, first, self.retries + 1, _brief(failures[first]) + others) \
            from RemoteError(failures[first])

    def _round(self, ray: Any, job: RowJob, entry: ShardedEntry, shards: list[int], run: bytes, data: Any,
               bar: Any) -> dict[int, str]:
        """Compute ``shards`` once on a fresh actor pool; returns the error text of each shard that failed."""
        actors, gpus = self.resources(ray, len(shards))
        logger.info("%s: %d shard(s) on %d Ray actor(s) (%s CPU, %s GPU each)", job.label, len(shards), actors,
                    self.num_cpus, gpus)
        items = [{"shard": i, "start": entry.ranges[i][0], "stop": entry.ranges[i][1]} for i in shards]
        with _quiet_data_context(ray):  # a dataset copies the context when it is made
            # max_restarts=0: a dead actor (a crash, out of memory) fails this round, whose shards the next round
            # retries, rather than Ray restarting it without end (Ray 2.5x warns that such arguments will be named)
            results = ray.data.from_items(items).map_batches(
                ShardWorker, fn_constructor_args=(run, [data]), batch_size=1, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=self.num_cpus, num_gpus=gpus,
                max_restarts=0)
        pending, failures = set(shards), {}
        try:
            for row in results.iter_rows():
                index, error = self._take(row, entry, pending)
                if index is None:
                    continue
                if error:
                    failures[index] = error
                else:
                    self.computed += 1
                    bar.update()
        except Exception as err:  # Ray itself failed (a dead actor, a lost node): the shards not back failed
            first_line = (str(err).strip().splitlines() or [""])[0]
            summary = (f"Ray stopped before this shard came back ({type(err).__name__}: {first_line}); a worker that "
                       "crashed or ran out of memory is named in the Ray logs")
            logger.warning("%s: %s; %d shard(s) not computed", job.label, summary, len(pending))
            text = "".join(traceback.format_exception(err))
            failures.update(dict.fromkeys(pending, f"{text}\n{summary}"))  # _brief: the summary, the last line
        else:
            if pending:  # never expected: every item yields one row
                failures.update(dict.fromkeys(pending, "Ray Data returned no result for this shard"))
        return failures

    @staticmethod
    def _take(row: dict[str, Any], entry: ShardedEntry, pending: set[int]) -> tuple[int | None, str]:
        """Write one result row, checked against the shard it names: ``(index, "")`` once written, ``(index,
        error)`` if the shard failed, ``(None, "")`` for a row to ignore (a duplicate from a retried Ray task)."""
        from safetensors.torch import load

        index, rows = int(row["shard"]), (int(row["start"]), int(row["stop"]))
        if index not in pending:
            logger.warning("Ray Data returned shard %d (rows %d-%d) again, or unasked; ignored", index, *rows)
            return None, ""
        pending.discard(index)
        if rows != entry.ranges[index]:
            return index, f"Ray Data returned rows {rows[0]}-{rows[1]} as this shard"
        if row["error"]:
            return index, str(row["error"])
        try:
            entry.write(index, load(bytes(row["outputs"])), float(row["seconds"]))
        except Exception as err:  # outputs of the wrong row count, a full disk: the shard failed
            return index, f"{type(err).__name__}: {err}"
        return index, ""


@contextlib.contextmanager
def _quiet_data_context(ray: Any) -> Iterator[None]:
    """Ray Data without its own progress bars and start-up messages while a dataset is made (it keeps a copy of
    the context)."""
    context = ray.data.DataContext.get_current()
    settings = {"enable_progress_bars": False, "print_on_execution_start": False}
    before = {name: getattr(context, name) for name in settings if hasattr(context, name)}
    for name in before:
        setattr(context, name, settings[name])
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(context, name, value)


@contextlib.contextmanager
def _quiet_data_logs() -> Iterator[None]:
    """Ray Data's INFO logs and the warning that its progress bars are off (fusion draws the one bar) muted."""
    levels = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}
    before = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(max(level, logging.getLogger(name).getEffectiveLevel()))
    try:
        yield
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)
