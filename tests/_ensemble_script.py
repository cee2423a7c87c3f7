"""Fits a small ensemble (trained head + scikit-learn member, linear (L-BFGS) and stacking (AdamW) fusers) and saves its
fused validation probabilities; run in one process or under torchrun by ``tests/test_distributed.py``::

    python tests/_ensemble_script.py OUT.safetensors ENCODER_DIR
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_ensemble_script.py OUT ENCODER_DIR
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

from fusion import Ensemble, HFEncoder, LinearFuser, MLPHead, StackingFuser, TrainConfig  # noqa: E402

QUIET = {"show_progress": False}


def main(out: Path, encoder_dir: str) -> None:
    torch.manual_seed(0)
    train, validation = make_toy_sentiment(120, 0), make_toy_sentiment(40, 1)
    head_config = TrainConfig(learning_rate=1e-2, max_epochs=15, batch_size=15, patience=None, **QUIET)
    members = [HFEncoder(encoder_dir, head=MLPHead(hidden=16, dropout=0.0), train_config=head_config, name="enc",
                         show_progress=False), tfidf_member()]
    ensemble = Ensemble(members, fuser=LinearFuser(),
                        labels=["negative", "positive"], cv=3)
    results = {}
    for fuser in (ensemble.fuser, StackingFuser(train_config={"batch_size": 25, "max_epochs": 50})):
        ensemble.fuser = fuser
        results[fuser.kind] = torch.from_numpy(ensemble.fit(train).predict_proba(validation))
    state = PartialState()
    if state.is_main_process:
        save_file({**results, "num_processes": torch.tensor(state.num_processes)}, str(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
