"""Model soups and merges against output ensembles of the same fine-tunes, in one report.

Fine-tune N classifiers from one checkpoint (all-MiniLM-L6-v2 by default) that differ only in their seed, on the
training rows minus a held-out slice; then build, from the same fine-tunes:

- weight-space merges (each one model's inference): the uniform soup (``linear``), the greedy soup (chosen on
  the held-out slice), TIES (onto the pretrained checkpoint) and the learned soup (coefficients trained on the
  held-out slice);
- output fusers (N models' inference): mean, linear and stacking, fitted on the held-out slice.

Everything is scored on the validation split, which nothing was trained or chosen on, in one report
(OUTPUT/report: accuracy with intervals, cost per 1,000 rows, accuracy against cost), and printed as a table.

    python recipes/soups_vs_ensembles.py                   # CPU: a small slice, a few minutes
    python recipes/soups_vs_ensembles.py --data ../shared/data/sst2 --train-rows 0 --holdout-rows 4000 \\
        --members 5 --epochs 1 --batch-size 32             # the anchor experiment, on a GPU

Anchors (five all-MiniLM-L6-v2 fine-tunes on SST-2, GPU, dev / test): best single member 0.9014 / 0.9066,
uniform soup 0.8911 / 0.9044, greedy soup 0.9014 / 0.9066, stacking 0.9071 / 0.9055. A greedy soup may keep a
single ingredient; its name says how many it kept (``greedy-soup-1-of-5``).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from finetune_then_fuse import fine_tuning_arguments, read_splits  # noqa: E402
from sst2_demo import minilm_path  # noqa: E402

from fusion import Ensemble, HFClassifier, TrainConfig, finetune_classifier, merge, set_progress  # noqa: E402

HERE = Path(__file__).resolve().parent
OUTPUT_FUSERS = ["mean", "linear", "stacking"]


def fine_tunes(model: str, train: dict, labels: list[str], n: int, output: Path, args: argparse.Namespace) -> list[Path]:
    """N fine-tunes of ``model`` differing only in their seed (a folder already there is reused)."""
    paths = []
    label_ids = [labels.index(y) if isinstance(y, str) else int(y) for y in train["label"]]
    for seed in range(n):
        path = output / f"ft-seed{seed}"
        if not (path / "config.json").is_file():
            config = TrainConfig(learning_rate=args.learning_rate, max_epochs=args.epochs, batch_size=args.batch_size,
                                 weight_decay=0.01, patience=None, seed=seed, lr_schedule="linear",
                                 warmup_fraction=0.06, show_progress=not args.quiet)
            finetune_classifier(model, train["text"], label_ids, labels, path, seed=seed, train_config=config,
                                max_length=args.max_length, validation_fraction=0.0)
        paths.append(path)
    return paths


def row(name: str, report, label: str | None = None) -> str:
    model = report.model(name)
    low, high = model.ci95.get("accuracy", (None, None))
    cost = report.full_seconds_per_1k(name)  # a fuser's includes running its members
    interval = f"[{low:.4f}, {high:.4f}]" if low is not None else ""
    return f"{label or name:<34} {model.metrics['accuracy']:.4f} {interval:<18} {'' if cost is None else f'{cost:.2f}':>8}"


def main() -> None:
    parser = fine_tuning_arguments(__doc__, "the soups and fusers are chosen on")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--density", type=float, default=0.5, help="TIES: share of each task vector kept")
    parser.add_argument("--output", type=Path, default=Path("out") / "soups")
    parser.add_argument("--cache-dir", default=None, help="the output cache (default: the cache home)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    set_progress(not args.quiet)

    labels, train, holdout, validation = read_splits(args, "the soups and fusers")

    base = args.model or minilm_path()
    paths = fine_tunes(base, train, labels, args.members, args.output, args)
    settings = {"max_length": args.max_length, "show_progress": not args.quiet}
    singles = [HFClassifier(p, name=p.name, **settings) for p in paths]
    soups = [
        merge(paths, "linear", name="uniform-soup", **settings),
        merge(paths, "greedy_soup", validation=holdout, cache_dir=args.cache_dir, **settings),
        merge(paths, "ties", base=base, density=args.density, name=f"ties-d{args.density:g}", **settings),
        merge(paths, "learned_soup", validation=holdout, **settings),
    ]
    # One ensemble holds every model; its fusers combine the fine-tunes and the soups, and its report has every
    # row with its cost. The fusers over the fine-tunes alone (the output-fusion anchors) are fitted apart.
    ensemble = Ensemble([*singles, *soups], fuser=OUTPUT_FUSERS, labels=labels, cache_dir=args.cache_dir)
    ensemble.fit(holdout, validation)
    outputs_only = Ensemble(singles, fuser=OUTPUT_FUSERS, labels=labels, cache_dir=args.cache_dir)
    outputs_only.fit(holdout, validation)
    report = ensemble.report_
    report.save(args.output / "report")
    fine_tune_report = outputs_only.report_

    print(f"\n{'model (validation)':<34} accuracy [95% CI]          s/1k rows")
    for member in singles + soups:
        print(row(member.name, report))
    for fuser in OUTPUT_FUSERS:
        print(row(fuser, fine_tune_report, f"fuser: {fuser} (fine-tunes)"))
    for fuser in OUTPUT_FUSERS:
        print(row(fuser, report, f"fuser: {fuser} (all models)"))
    greedy = soups[1].selection_
    print(f"\ngreedy soup: kept {len(greedy['kept'])} of {args.members} ({', '.join(greedy['kept'])}); held-out "
          "accuracy alone: " + ", ".join(f"{k} {v:.4f}" for k, v in greedy["accuracy"].items()))
    print("learned soup coefficients: " + ", ".join(
        f"{group} {[round(w, 3) for w in weights]}" for group, weights in soups[3].coefficients_.items()))
    print(f"report: {args.output / 'report' / 'report.html'}")


if __name__ == "__main__":
    main()
