"""One build of the scale-out benchmark (``benchmarks/scaleout.py``): all-MiniLM-L6-v2's backbone pass over the
first N SST-2 training texts into a cache entry, in one process or in each process of a torchrun launch.

    python benchmarks/scaleout_worker.py --cache DIR --rows 2000 --shard-rows 250 --out RESULT.safetensors
    python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/scaleout_worker.py ...

The main process writes the pooled embeddings, the build's seconds (from before the build to after it, model
load included, the slowest process) and the shards each process computed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from benchmarks.data import load_corpus  # noqa: E402
from benchmarks.models import minilm_path  # noqa: E402
from fusion import HFEncoder, LinearHead  # noqa: E402
from fusion.cache.store import OutputCache  # noqa: E402
from fusion.engines.local import launch_state  # noqa: E402
from fusion.inputs import TextData  # noqa: E402
from fusion.progress import set_progress  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sst2"


def main() -> None:
    cli = argparse.ArgumentParser()
    cli.add_argument("--cache", required=True)
    cli.add_argument("--rows", type=int, required=True)
    cli.add_argument("--shard-rows", type=int, required=True)
    cli.add_argument("--out", required=True)
    cli.add_argument("--model", default=None, help="encoder folder (default: all-MiniLM-L6-v2)")
    args = cli.parse_args()
    set_progress(False)
    texts = load_corpus(DATA).train.texts[: args.rows]
    member = HFEncoder(str(args.model or minilm_path()), head=LinearHead(), show_progress=False)
    state = launch_state()
    if state is not None:
        state.wait_for_everyone()
    start = time.perf_counter()
    cache = OutputCache(args.cache, shard_rows=args.shard_rows)
    pooled = member.pooled(TextData(texts), cache)
    seconds = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    counts = torch.tensor([cache.engine.computed], dtype=torch.int64)  # the shards this process wrote
    if state is not None:
        every = [torch.zeros_like(counts, device=state.device) for _ in range(state.num_processes)]
        torch.distributed.all_gather(every, counts.to(state.device))
        slowest = seconds.to(state.device)
        torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
        seconds = slowest.cpu()
    else:
        every = [counts]
    if state is None or state.is_main_process:
        save_file({"mean": pooled["mean"].contiguous(), "seconds": seconds,
                   "computed": torch.cat([c.cpu() for c in every])}, args.out)


if __name__ == "__main__":
    main()
