"""The local engine: shards computed in this process, or shared between the processes of one launch.

Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1) every process calls the same build in lockstep
(an ensemble's fit already runs so): Accelerate's ``split_between_processes`` gives each process a contiguous
block of the entry's shards, each computes those of its block still missing, and all wait for each other before
anyone reads the entry. Every shard is computed by the same function of the same rows, so the entry equals one
process's bit for bit on CPU (``tests/test_distributed.py``). A process whose shard failed tells the
others through one all-reduce, so they all raise instead of waiting.
"""

from __future__ import annotations

import os

import torch

from .base import ENGINES, Engine, RowJob, ShardError, compute_shard, shard_bar


def launch_state():
    """Accelerate's process state under a multi-process launch, else None (one process: no state is created)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from ..training import process_state  # here: training imports the cache, which imports the engines

    state = process_state()
    return state if state.num_processes > 1 else None


def is_main_process() -> bool:
    """True in a single process, and in the main process of a multi-process launch (the one that saves)."""
    state = launch_state()
    return state is None or state.is_main_process


def finish_launch() -> None:
    """End this process's part in a multi-process launch (nothing in one process): wait for every process, then
    close the process group, so that no process exits while another still works (a process leaving with its
    group's threads running can abort, and torchrun then stops the others)."""
    state = launch_state()
    if state is not None:
        state.wait_for_everyone()
        torch.distributed.destroy_process_group()


@ENGINES.register("local")
class LocalEngine(Engine):
    """Shards in this process, one after another (or each process of a launch its block of them).

    Example:
        >>> LocalEngine(retries=1)
        LocalEngine(retries=1)
    """

    def build(self, job: RowJob, entry, show_progress: bool = True) -> None:
        state = launch_state()
        if state is None:
            with shard_bar(job, entry, show_progress) as bar:
                for index in entry.missing():
                    compute_shard(job, entry, index, self.retries)
                    self.computed += 1
                    bar.update()
            return
        failure: ShardError | None = None
        with shard_bar(job, entry, show_progress and state.is_main_process) as bar, \
                state.split_between_processes(list(range(len(entry.ranges)))) as mine:
            for index in mine:
                if entry.has(index):
                    continue
                try:
                    compute_shard(job, entry, index, self.retries)
                except ShardError as err:
                    failure = err
                    break
                self.computed += 1
                if state.is_main_process:  # every process's shards, counted by their files
                    bar.n = entry.written()
                    bar.refresh()
        failed = torch.tensor([0.0 if failure is None else 1.0], device=state.device)
        torch.distributed.all_reduce(failed)
        if failure is not None:
            raise failure
        if failed.item():
            raise ShardError(f"{job.label}: another process of this launch failed to compute its shards (its error "
                             f"is in its own log); the finished shards are kept in {entry.folder}.")
