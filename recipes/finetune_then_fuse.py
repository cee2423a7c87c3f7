"""Fine-tune several members from one checkpoint (different seeds / learning rates), then fuse them.

The set-up of the SST-2 anchor numbers (../shared/data/sst2/README.md): each member fine-tunes
all-MiniLM-L6-v2 (mean pooling + linear head) through fusion's one Accelerate training loop on the training rows
minus a held-out slice; fusers are fitted on that held-out slice; everything is scored on the validation split,
which nothing was trained on.

    python recipes/finetune_then_fuse.py                       # CPU: a small slice, a few minutes
    python recipes/finetune_then_fuse.py --data ../shared/data/sst2 --train-rows 0 --holdout-rows 4000 \\
        --members 5 --epochs 1 --batch-size 32                 # the anchor experiment, on a GPU

Anchors (H100, five fine-tunes): single members 0.8807-0.9025, soft vote 0.8956, majority vote 0.8979,
linear + temperature 0.9014, stacking 0.9071.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from sst2_demo import minilm_path, print_table, read_labels, read_split  # noqa: E402

from fusion import (  # noqa: E402
    Ensemble,
    HFEncoder,
    LinearFuser,
    LinearHead,
    MeanFuser,
    StackingFuser,
    TrainConfig,
    VoteFuser,
)

HERE = Path(__file__).resolve().parent
LEARNING_RATES = (5e-5, 1e-4, 3e-5, 7e-5, 2e-5)


def split(data: dict, train_rows: int, holdout_rows: int, seed: int) -> tuple[dict, dict]:
    """A seeded held-out slice for the fusers, and (up to ``train_rows``, 0 = all) rows for the members."""
    order = np.random.default_rng(seed).permutation(len(data["text"]))
    held, rest = order[:holdout_rows], order[holdout_rows:]
    rest = rest[:train_rows] if train_rows else rest
    pick = lambda rows: {k: [v[i] for i in rows] for k, v in data.items()}  # noqa: E731
    return pick(rest), pick(held)


def members(model: str, n: int, epochs: int, batch_size: int, max_length: int, quiet: bool) -> list[HFEncoder]:
    return [
        HFEncoder(model, head=LinearHead(), pooling="mean", finetune=True, max_length=max_length,
                  name=f"finetune-{i}-lr{LEARNING_RATES[i % len(LEARNING_RATES)]:g}-seed{i}",
                  train_config=TrainConfig(learning_rate=LEARNING_RATES[i % len(LEARNING_RATES)], max_epochs=epochs,
                                           batch_size=batch_size, weight_decay=0.01, patience=None, seed=i,
                                           show_progress=not quiet),
                  validation_fraction=0.0, show_progress=not quiet)
        for i in range(n)
    ]


def fine_tuning_arguments(doc: str, held_out_for: str) -> argparse.ArgumentParser:
    """The options of the recipes that fine-tune members from one checkpoint and hold rows out for fusing."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE / "data" / "sst2_sample")
    parser.add_argument("--model", default=None, help="checkpoint to fine-tune (default: the packaged MiniLM)")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--train-rows", type=int, default=1500, help="rows each member trains on (0 = all)")
    parser.add_argument("--holdout-rows", type=int, default=500, help=f"rows {held_out_for}")
    parser.add_argument("--validation-rows", type=int, default=0, help="score on this many rows (0 = all)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--quiet", action="store_true")
    return parser


def read_splits(args: argparse.Namespace, held_out_for: str) -> tuple[list[str], dict, dict, dict]:
    """The labels, the rows to fine-tune on, the held-out slice and the validation rows, as the options say."""
    labels = read_labels(args.data)
    train, holdout = split(read_split(args.data, "train"), args.train_rows, args.holdout_rows, seed=0)
    validation = read_split(args.data, "validation")
    if args.validation_rows:
        validation = {k: v[: args.validation_rows] for k, v in validation.items()}
    print(f"{len(train['text'])} rows to fine-tune on, {len(holdout['text'])} held out for {held_out_for}, "
          f"{len(validation['text'])} validation rows")
    return labels, train, holdout, validation


def main() -> None:
    args = fine_tuning_arguments(__doc__, "the fusers are fitted on").parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()

    labels, train, holdout, validation = read_splits(args, "the fusers")

    ensemble = Ensemble(members(args.model or minilm_path(), args.members, args.epochs, args.batch_size,
                                args.max_length, args.quiet), labels=labels, fuser_data="validation")
    rows = []
    for fuser in (MeanFuser(), VoteFuser(), LinearFuser(), StackingFuser()):
        ensemble.fuser = fuser
        start = time.perf_counter()
        ensemble.fit(train, holdout)  # members fine-tune once; the held-out slice trains the fuser
        seconds = time.perf_counter() - start
        scores = ensemble.score(validation)
        if not rows:
            rows += [(name, s) for name, s in scores.items() if not name.startswith("fuser:")]
        rows.append((f"fuser: {fuser.kind} ({seconds:.1f} s)", scores[f"fuser:{fuser.kind}"]))
    print_table(rows)
    print("(validation split; members fine-tuned on the training rows, fusers fitted on the held-out slice)")


if __name__ == "__main__":
    main()
