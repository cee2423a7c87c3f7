"""Scale-out, measured: a sharded member-output build in one process and in several, the cost of sharding
itself, and a killed build's resume.

Every build is all-MiniLM-L6-v2's backbone pass (the costly, sharded entry of an ``HFEncoder``) over the first N
SST-2 training texts, from an empty cache, in a fresh process (``benchmarks/scaleout_worker.py``):

* ``one file``: one process, ``shard_rows`` above N: the entry is computed in one go and written as one file;
* ``sharded``: one process, ``shard_rows`` rows per shard;
* ``P processes``: ``torchrun --nproc_per_node P``, the same shards split between the processes (on CPU each
  process gets ``cores / P`` threads, as torchrun sets; on a multi-GPU machine each process its own GPU);
* ``resume``: a sharded one-process build is killed once about half of its shards are written, then run again:
  the rerun's computed shards are counted;
* the cost of sharding itself, in one process with the model loaded once: the pass in one go against shards of
  several sizes.

Seconds are the build's own (model load included; the slowest process), medians over ``--repeats`` runs with
the workloads interleaved; ratios are between medians of this run. Each build's embeddings are compared with the
sharded one-process build's: exactly equal, or the largest absolute difference. The one-file build batches rows
across shard boundaries, so its padding, and its last bits, differ; ``tests/test_distributed.py`` checks bit equality
of 1 and 2 processes at equal thread counts.

The Ray engine's figures come from ``python -m benchmarks.ray_engine`` (a Ray cluster's start-up is its own
cost). The same command runs unchanged on a multi-GPU machine (P defaults to the number of GPUs there)::

    python -m benchmarks.scaleout                         # CPU: 4,000 rows, 1,000 per shard, 2 processes
    python -m benchmarks.scaleout --rows 50000 --shard-rows 5000    # a multi-GPU machine
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from .results import number, table

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("scaleout_worker.py")
DEFAULT_OUT = REPO / "benchmarks" / "RESULTS.md"
HEADING = "## Scale-out: sharded member-output builds in one process and several"


def launch(cache: Path, out: Path, rows: int, shard_rows: int, processes: int) -> subprocess.Popen:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    command = [sys.executable, *launcher, str(WORKER), "--cache", str(cache), "--rows", str(rows),
               "--shard-rows", str(shard_rows), "--out", str(out)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"} if not torch.cuda.is_available() else dict(os.environ)
    if processes > 1 and not torch.cuda.is_available():
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def build(directory: Path, name: str, rows: int, shard_rows: int, processes: int) -> dict:
    """One build from an empty cache; its seconds, shards computed per process, embeddings and launch wall time."""
    cache, out = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=directory)), directory / f"{name}.safetensors"
    start = time.perf_counter()
    process = launch(cache, out, rows, shard_rows, processes)
    _, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{name} failed:\n{err[-3000:]}")
    result = load_file(out)
    return {"seconds": float(result["seconds"][0]), "computed": result["computed"].tolist(), "mean": result["mean"],
            "wall": time.perf_counter() - start, "cache": cache}


def resume(directory: Path, rows: int, shard_rows: int) -> dict:
    """Kill a sharded build once half its shards are on disk, then rerun it; counts of both."""
    total = -(-rows // shard_rows)
    cache, out = Path(tempfile.mkdtemp(prefix="resume-", dir=directory)), directory / "resume.safetensors"
    process = launch(cache, out, rows, shard_rows, 1)
    deadline = time.monotonic() + 1800
    while process.poll() is None and time.monotonic() < deadline:
        if len(list(cache.rglob("rows-*.safetensors"))) >= total // 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    before = len(list(cache.rglob("rows-*.safetensors")))
    again = launch(cache, out, rows, shard_rows, 1)
    _, err = again.communicate()
    if again.returncode != 0:
        raise SystemExit(f"resume failed:\n{err[-3000:]}")
    result = load_file(out)
    return {"total": total, "before": before, "computed": int(result["computed"].sum()),
            "seconds": float(result["seconds"][0]), "mean": result["mean"]}


def compare(mean: torch.Tensor, reference: torch.Tensor) -> str:
    if torch.equal(mean, reference):
        return "identical"
    return f"max abs diff {float((mean - reference).abs().max()):.2e}"


def run(rows: int, shard_rows: int, processes: int, repeats: int, directory: Path) -> list[str]:
    workloads = {"one file, 1 process": (rows + 1, 1), "sharded, 1 process": (shard_rows, 1),
                 f"sharded, {processes} processes": (shard_rows, processes)}
    results: dict[str, list[dict]] = {name: [] for name in workloads}
    for repeat in range(repeats):
        for name, (size, count) in workloads.items():
            results[name].append(build(directory, f"{name.replace(' ', '').replace(',', '-')}-{repeat}", rows, size,
                                       count))
            print(f"  {name} #{repeat + 1}: {results[name][-1]['seconds']:.2f} s", flush=True)
    reference = results["sharded, 1 process"][0]["mean"]
    base = statistics.median(r["seconds"] for r in results["sharded, 1 process"])
    lines = []
    for name, runs in results.items():
        median = statistics.median(r["seconds"] for r in runs)
        wall = statistics.median(r["wall"] for r in runs)
        lines.append([name, str(workloads[name][1]), str(rows), str(min(workloads[name][0], rows)),
                      " + ".join(map(str, runs[0]["computed"])), number(median), number(rows / median),
                      number(base / median), number(wall), compare(runs[0]["mean"], reference)])
    resumed = resume(directory, rows, shard_rows)
    lines.append(["resume after a kill at about half (one run)", "1", str(rows), str(shard_rows),
                  f"{resumed['computed']} (of {resumed['total']}; {resumed['before']} on disk before)",
                  number(resumed["seconds"]), "", "", "", compare(resumed["mean"], reference)])
    ok = resumed["computed"] == resumed["total"] - resumed["before"]
    header = ["workload", "processes", "rows", "rows per shard", "shards computed", "median s", "rows/s",
              "x sharded 1 process", "launch wall s", "embeddings vs sharded 1 process"]
    return [table(header, lines), "",
            f"Resume: {resumed['before']} of {resumed['total']} shards were on disk when the build was killed; the rerun "
            f"computed {resumed['computed']} ({'exactly the missing ones' if ok else 'NOT just the missing ones'})."]


def shard_sizes(rows: int, sizes: Sequence[int], repeats: int) -> list[str]:
    """In one process, one loaded model: the backbone pass over the rows in one go against shards of each size (the
    shard functions alone, no cache), medians of ``repeats`` interleaved runs."""
    from benchmarks.data import load_corpus
    from benchmarks.models import minilm_path
    from fusion import HFEncoder, LinearHead
    from fusion.inputs import TextData
    from fusion.progress import set_progress

    set_progress(False)
    texts = load_corpus(REPO.parent / "shared" / "data" / "sst2").train.texts[:rows]
    member, data = HFEncoder(str(minilm_path()), head=LinearHead(), show_progress=False), TextData(texts)
    member.pooled_rows(data.select(range(min(rows, 64))))  # load the model once, outside the timings
    seconds: dict[int, list[float]] = {size: [] for size in (rows, *sizes)}
    for _ in range(repeats):
        for size in seconds:
            start = time.perf_counter()
            for first in range(0, rows, size):
                member.pooled_rows(data.select(range(first, min(first + size, rows))))
            seconds[size].append(time.perf_counter() - start)
    one = statistics.median(seconds[rows])
    lines = [[f"{size} ({-(-rows // size)} shard(s))", number(statistics.median(runs)),
              number(rows / statistics.median(runs)), number(statistics.median(runs) / one)]
             for size, runs in seconds.items()]
    return [f"The cost of sharding itself: the same pass over {rows} rows in one process, in one go and in shards "
            "(the model loaded once; each shard's rows are sorted by length and batched on their own, so small "
            "shards pad more):", "",
            table(["rows per shard", "median s", "rows/s", "x one go"], lines)]


def main(argv: Sequence[str] | None = None) -> int:
    from .foundation import write_section
    from .merging import provenance

    argv = list(sys.argv[1:] if argv is None else argv)
    cli = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__.split("\n\n")[0])
    gpus = torch.cuda.device_count()
    cli.add_argument("--rows", type=int, default=4000)
    cli.add_argument("--shard-rows", type=int, default=1000)
    cli.add_argument("--sizes", default="250,500,1000", help="shard sizes for the cost-of-sharding table")
    cli.add_argument("--processes", type=int, default=gpus if gpus > 1 else 2)
    cli.add_argument("--repeats", type=int, default=3)
    cli.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = cli.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fusion-scaleout-") as directory:
        body = run(args.rows, args.shard_rows, args.processes, args.repeats, Path(directory))
    body += ["", *shard_sizes(args.rows, [int(x) for x in args.sizes.split(",")], args.repeats)]
    lines = [HEADING, "", *provenance(argv, time.perf_counter() - start, "benchmarks.scaleout")]
    device = f"{gpus} GPU(s): {torch.cuda.get_device_name(0)}" if gpus else "CPU only"
    lines += [f"- device: {device}; the same command on a multi-GPU machine: `python -m benchmarks.scaleout "
              f"--rows 50000 --shard-rows 5000` (one process per GPU)", "", *body]
    print("\n".join(lines))
    write_section(args.out, HEADING, lines, preamble="# fusion benchmarks\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
