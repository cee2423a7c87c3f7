"""Builds sharded member outputs (two classifiers and an encoder's backbone pass on 60 rows, 10 per shard) and a
mean fuser's predictions on them, in one process or under torchrun; run by ``tests/test_shards.py``::

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_shard_launch_script.py \
        CACHE OUT BERT_CLASSIFIER ROBERTA_CLASSIFIER BERT_ENCODER
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("ACCELERATE_USE_CPU", "1")  # CPU + gloo even where CUDA exists
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tiny_models import make_toy_sentiment  # noqa: E402

import fusion.engines.local as local  # noqa: E402
from fusion import Ensemble, HFClassifier, HFEncoder, LinearHead  # noqa: E402
from fusion.cache.store import OutputCache  # noqa: E402
from fusion.engines.local import finish_launch  # noqa: E402
from fusion.inputs import TextData  # noqa: E402
from fusion.training import process_state  # noqa: E402

QUIET = {"show_progress": False}


def main(cache_dir: str, out: Path, bert: str, roberta: str, encoder: str) -> None:
    torch.set_num_threads(1)
    computed = []
    original = local.compute_shard

    def counted(job, entry, index, retries):
        computed.append((job.key, index))
        original(job, entry, index, retries)

    local.compute_shard = counted
    rows = make_toy_sentiment(60, 3)
    cache = OutputCache(cache_dir, shard_rows=10)
    members = [HFClassifier(bert, name="bert", **QUIET), HFClassifier(roberta, name="roberta", **QUIET)]
    ens = Ensemble(members, fuser="mean", labels=["negative", "positive"], cache_dir=cache).fit(rows)
    proba = torch.from_numpy(ens.predict_proba(rows))
    data = TextData(rows["text"])
    pooled = HFEncoder(encoder, head=LinearHead(), name="enc", **QUIET).pooled(data, cache)
    state = process_state()
    counts = torch.tensor([len(computed)], dtype=torch.int64)
    if state.num_processes > 1:
        gathered = [torch.zeros_like(counts) for _ in range(state.num_processes)]
        torch.distributed.all_gather(gathered, counts)
    else:
        gathered = [counts, torch.zeros_like(counts)]
    if state.is_main_process:
        clf = ens.member_outputs(data)
        save_file({"clf": clf.logits.contiguous(), "pooled_mean": pooled["mean"], "pooled_cls": pooled["cls"],
                   "proba": proba, "num_processes": torch.tensor(state.num_processes),
                   "shards_rank0": gathered[0][0], "shards_rank1": gathered[1][0]}, str(out))
    finish_launch()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:6])
