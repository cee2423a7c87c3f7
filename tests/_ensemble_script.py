"""Fits a small ensemble (trained head + scikit-learn member + a classifier, linear (L-BFGS) and stacking (AdamW)
fusers) over a cache of 16-row shards and saves its fused validation probabilities, the sharded entries (the
encoder's backbone pass and the classifier's outputs on the training rows) and the shards each process computed;
run in one process or under torchrun by ``tests/test_distributed.py``::

    python tests/_ensemble_script.py OUT.safetensors ENCODER_DIR CLASSIFIER_DIR CACHE_DIR
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_ensemble_script.py OUT ENCODER_DIR ...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("ACCELERATE_USE_CPU", "1")  # CPU + gloo even where CUDA exists
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from accelerate.state import PartialState  # noqa: E402
from helpers import tfidf_member  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tiny_models import make_toy_sentiment  # noqa: E402

from fusion import Ensemble, HFClassifier, HFEncoder, LinearFuser, MLPHead, StackingFuser, TrainConfig  # noqa: E402
from fusion.cache.store import OutputCache  # noqa: E402
from fusion.engines.local import finish_launch  # noqa: E402
from fusion.inputs import TextData  # noqa: E402

QUIET = {"show_progress": False}


def main(out: Path, encoder_dir: str, classifier_dir: str, cache_dir: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # as each process of the launch: the same kernels, bit for bit
    train, validation = make_toy_sentiment(120, 0), make_toy_sentiment(40, 1)
    head_config = TrainConfig(learning_rate=1e-2, max_epochs=15, batch_size=15, patience=None, **QUIET)
    members = [HFEncoder(encoder_dir, head=MLPHead(hidden=16, dropout=0.0), train_config=head_config, name="enc",
                         show_progress=False), tfidf_member(), HFClassifier(classifier_dir, name="clf", **QUIET)]
    ensemble = Ensemble(members, fuser=LinearFuser(), labels=["negative", "positive"], cv=3,
                        cache_dir=OutputCache(cache_dir, shard_rows=16))
    results = {}
    for fuser in (ensemble.fuser, StackingFuser(train_config={"batch_size": 25, "max_epochs": 50})):
        ensemble.fuser = fuser
        results[fuser.kind] = torch.from_numpy(ensemble.fit(train).predict_proba(validation))
    rows = TextData(train["text"])
    results["pooled"] = ensemble.members_[0].pooled(rows, ensemble.cache)["mean"]
    results["clf"] = ensemble.cache.get(ensemble.members_[2].fingerprint, rows.fingerprint)["logits"]
    state = PartialState()
    counts = torch.tensor([ensemble.cache.engine.computed])  # the shards this process wrote
    every = [torch.zeros_like(counts) for _ in range(state.num_processes)]
    if state.num_processes > 1:
        torch.distributed.all_gather(every, counts)
    else:
        every = [counts]
    if state.is_main_process:
        save_file({**results, "num_processes": torch.tensor(state.num_processes),
                   "shards": torch.cat(every)}, str(out))
    finish_launch()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:5])
