"""End-to-end behaviour of Ensemble: fit, predict, label alignment, caching, cross-fitting, save/reload."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from helpers import RunCounter, tfidf_member
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.model_selection import StratifiedKFold
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import make_pipeline

import fusion
from fusion import (
    ConfigError,
    DataError,
    Ensemble,
    HFClassifier,
    HFEncoder,
    LinearFuser,
    MeanFuser,
    MLPHead,
    NotFittedError,
    PersistenceError,
    SklearnMember,
    StackingFuser,
    VoteFuser,
)
from fusion.ensemble.crossfit import out_of_fold_outputs
from fusion.inputs import as_text_data


@pytest.fixture
def four_members(bert_classifier_dir, roberta_classifier_dir, bert_encoder_dir):
    return [
        HFClassifier(bert_classifier_dir, name="bert", show_progress=False),
        HFClassifier(roberta_classifier_dir, name="roberta", show_progress=False),
        HFEncoder(bert_encoder_dir, pooling="mean", head=MLPHead(hidden=16), name="encoder", show_progress=False),
        tfidf_member(),
    ]


def test_issue_example_fit_predict_save_reload(four_members, toy_sentiment, tmp_path):
    ens = Ensemble(four_members, fuser=LinearFuser(), labels=["negative", "positive"])
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    proba = ens.predict_proba(["a great film", "dull"])
    assert proba.shape == (2, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)
    assert set(ens.predict(["a great film", "dull"])) <= {"negative", "positive"}
    ens.save_pretrained(tmp_path / "ens")
    same = Ensemble.from_pretrained(tmp_path / "ens")
    texts = toy_sentiment["validation"]["text"]
    assert np.array_equal(same.predict_proba(texts), ens.predict_proba(texts))
    assert list(same.classes_) == ["negative", "positive"] and [m.name for m in same.members_] == [m.name for m in four_members]
    card = (tmp_path / "ens" / "README.md").read_text()
    assert "report/report.html" in card and "| linear (best) | fuser |" in card and "| bert |" in card
    html = (tmp_path / "ens" / "report" / "report.html").read_text()
    assert all(f'id="{section}"' in html for section in ("metrics", "reliability", "confusion", "cost"))
    assert same.report_.to_dict() == ens.report_.to_dict()
    assert {m.name for m in same.report_.models} == {"bert", "roberta", "encoder", "tfidf", "linear"}


def test_evaluate_compares_several_fitted_fusers(four_members, toy_sentiment, tmp_path):
    ens = Ensemble(four_members, fuser=StackingFuser(), labels=["negative", "positive"])
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    stacking = ens.fuser_
    ens.fuser = MeanFuser()
    ens.fit(toy_sentiment["train"])
    report = ens.evaluate(toy_sentiment["validation"], fusers={"stacking": stacking}, n_bootstrap=200)
    assert [m.name for m in report.fusers] == ["mean", "stacking"]
    expected = ens.score(toy_sentiment["validation"])["fuser:mean"]["accuracy"]
    assert report.model("mean").metrics["accuracy"] == pytest.approx(expected)
    assert {t.fuser for t in report.tests} == {"mean", "stacking"}
    assert all(s is not None for s in (report.model(n).seconds_per_1k for n in ("bert", "encoder", "tfidf")))
    assert report.weights_method == {"mean": "weights", "stacking": "permutation"}
    assert report.weights["mean"] == pytest.approx({m.name: 0.25 for m in four_members})
    assert sum(report.weights["stacking"].values()) == pytest.approx(1.0)


def test_fusion_evaluate_takes_members_or_precomputed_outputs(bert_classifier_dir, toy_sentiment):
    members = [HFClassifier(bert_classifier_dir, name="bert"), tfidf_member()]
    ens = Ensemble(members, fuser=LinearFuser(), labels=["negative", "positive"])
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    validation = toy_sentiment["validation"]
    report = fusion.evaluate(ens.members_, [ens.fuser_], validation, labels=["negative", "positive"], n_bootstrap=50)
    assert [m.name for m in report.members] == ["bert", "tfidf"] and [f.name for f in report.fusers] == ["linear"]
    assert report.model("linear").metrics["accuracy"] == pytest.approx(ens.score(validation)["fuser:linear"]["accuracy"])
    outputs = ens.member_outputs(validation)
    same = fusion.evaluate(outputs, {"lin": ens.fuser_}, validation["label"], labels=["negative", "positive"],
                           n_bootstrap=50)
    assert same.model("lin").metrics == report.model("linear").metrics
    assert same.model("bert").seconds_per_1k is None  # precomputed outputs carry no timing
    with pytest.raises(ConfigError, match=r"needs labels=\[label names\]"):
        fusion.evaluate(outputs, [ens.fuser_], validation["label"])
    with pytest.raises(NotFittedError, match="are not fitted"):
        fusion.evaluate(ens.members_, [StackingFuser()], validation)


def test_members_with_other_label_order_are_aligned_by_name(roberta_classifier_dir, toy_sentiment):
    member = HFClassifier(roberta_classifier_dir, name="roberta", show_progress=False)
    assert member.output_labels(None) == ["positive", "negative"]
    ens = Ensemble([member], labels=["negative", "positive"]).fit(toy_sentiment["train"])
    data = as_text_data(toy_sentiment["validation"], label_names=ens.labels_)
    raw = member.compute(data, ens.cache)["logits"]
    aligned = ens.member_outputs(data).logits[:, 0]
    assert torch.equal(aligned, raw[:, [1, 0]])


def test_second_fit_with_another_fuser_runs_no_model(four_members, toy_sentiment):
    ens = Ensemble(four_members, fuser=MeanFuser(), labels=["negative", "positive"])
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    counter = RunCounter(ens.members_)
    misses = ens.cache.misses
    for fuser in (StackingFuser(), LinearFuser(), VoteFuser()):
        ens.fuser = fuser
        ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    counter.remove()
    assert counter.calls == 0, "a model ran again although its outputs were cached"
    assert ens.cache.misses == misses
    # the counter does count: predicting on new rows runs every model once
    counter = RunCounter(ens.members_)
    ens.predict_proba(["entirely new text"])
    assert counter.calls >= 4


def test_disk_cache_is_shared_between_ensembles(bert_classifier_dir, toy_sentiment, tmp_path):
    first = Ensemble([HFClassifier(bert_classifier_dir, show_progress=False)], cache_dir=tmp_path / "cache")
    first.fit(toy_sentiment["train"], toy_sentiment["validation"])
    assert list((tmp_path / "cache").rglob("*.safetensors"))
    member = HFClassifier(bert_classifier_dir, show_progress=False)
    second = Ensemble([member], fuser=VoteFuser(), cache_dir=tmp_path / "cache")
    member.load_model()
    counter = RunCounter([member])
    second.fit(toy_sentiment["train"], toy_sentiment["validation"])
    assert counter.calls == 0 and second.cache.misses == 0


def test_fuser_trains_on_out_of_fold_outputs_of_trainable_members(toy_sentiment):
    ens = Ensemble([tfidf_member()], fuser=StackingFuser(), labels=["negative", "positive"], cv=4, seed=3)
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    assert ens.fuser_data_ == "train" and ens.metrics_["fuser_out_of_fold"] is False
    train = as_text_data(toy_sentiment["train"], label_names=ens.labels_)
    oof = out_of_fold_outputs(ens.members[0], train, ens.labels_, ens.cache, cv=4, seed=3)["logits"]
    # the same numbers by hand: each fold's rows predicted by a clone fitted on the other folds
    expected = np.empty((len(train), 2))
    for fit_rows, out_rows in StratifiedKFold(4, shuffle=True, random_state=3).split(train.texts, train.labels):
        model = tfidf_member().config.estimator.fit([train.texts[i] for i in fit_rows], train.labels[fit_rows])
        expected[out_rows] = model.predict_proba([train.texts[i] for i in out_rows])
    np.testing.assert_allclose(oof.exp().numpy(), expected, atol=1e-5)
    in_sample = ens.member_outputs(train).logits[:, 0]
    assert not torch.allclose(oof, in_sample, atol=1e-3), "OOF outputs must differ from in-sample outputs"


def test_frozen_members_fuse_on_validation_by_default(bert_classifier_dir, roberta_classifier_dir, toy_sentiment, tmp_path):
    members = [HFClassifier(d, show_progress=False) for d in (bert_classifier_dir, roberta_classifier_dir)]
    ens = Ensemble(members, fuser=LinearFuser()).fit(toy_sentiment["train"], toy_sentiment["validation"])
    assert ens.fuser_data_ == "validation" and ens.metrics_["fuser_out_of_fold"] is True
    ens.save_pretrained(tmp_path / "e")
    assert "out-of-fold" in (tmp_path / "e" / "README.md").read_text()


def test_multiclass_with_datasets_classlabel(bert_encoder_dir, toy_topics):
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["sports", "politics", "science"])})
    train = Dataset.from_dict(toy_topics["train"], features=features)
    validation = Dataset.from_dict(toy_topics["validation"], features=features)
    members = [HFEncoder(bert_encoder_dir, pooling="cls", name="enc", show_progress=False), tfidf_member()]
    ens = Ensemble(members, fuser=StackingFuser(passthrough=True)).fit(train, validation)
    assert list(ens.classes_) == ["sports", "politics", "science"]
    assert ens.predict_proba(validation).shape == (len(validation), 3)
    assert ens.metrics_["scores"]["fuser:stacking"]["accuracy"] > 0.6


def test_saved_config_records_members_by_reference(bert_classifier_dir, toy_sentiment, tmp_path):
    ens = Ensemble([HFClassifier(bert_classifier_dir, show_progress=False), tfidf_member()], fuser=MeanFuser())
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"]).save_pretrained(tmp_path / "e")
    config = json.loads((tmp_path / "e" / "fusion_config.json").read_text())
    hf = config["members"][0]
    assert hf["config"]["model"] == str(bert_classifier_dir)
    assert set(hf["fitted"]["source"]["weights_sha256"]) == {"model.safetensors"}
    assert config["fuser"]["kind"] == "mean" and config["labels"] == ["negative", "positive"]
    assert {"torch", "transformers", "fusion"} <= set(config["versions"])
    assert "members/1-tfidf/estimator.skops" in config["files"] and "fuser.safetensors" in config["files"]
    assert not list(tmp_path.glob(".e.*")), "no temporary folder is left behind"


SKOPS_TYPES = {"mlp": ["sklearn.neural_network._stochastic_optimizers.AdamOptimizer"],
               "hist": ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]}


@pytest.fixture(scope="module")
def saved_sklearn_stacking(tmp_path_factory, toy_sentiment):
    """Ensembles stacked by an MLPClassifier and a HistGradientBoostingClassifier, saved: (ensemble, folder)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.neural_network import MLPClassifier

    metas = {"mlp": MLPClassifier(hidden_layer_sizes=(8,), max_iter=300, random_state=0),
             "hist": HistGradientBoostingClassifier(max_iter=20, random_state=0)}
    saved = {}
    for name, meta in metas.items():
        members = [tfidf_member("a"), SklearnMember(make_pipeline(CountVectorizer(), MultinomialNB()), name="b")]
        ens = Ensemble(members, fuser=StackingFuser(meta=meta), cv=2, cache_dir="memory")
        directory = tmp_path_factory.mktemp("stacking") / name
        ens.fit(toy_sentiment["train"]).save_pretrained(directory)
        saved[name] = ens, directory
    return saved


@pytest.mark.parametrize("meta", ["mlp", "hist"])
def test_stacking_with_a_sklearn_meta_learner_saves_its_own_skops_file_and_reloads(saved_sklearn_stacking,
                                                                                    toy_sentiment, meta):
    ens, directory = saved_sklearn_stacking[meta]
    config = json.loads((directory / "fusion_config.json").read_text())
    assert "fuser/meta.skops" in config["files"]  # listed with its sha256, like every file loading reads
    assert "estimator_skops" not in config["fuser"]["state_shapes"]  # no longer a uint8 tensor
    loaded = Ensemble.from_pretrained(directory, cache_dir="memory", trusted_types=SKOPS_TYPES[meta])
    texts = toy_sentiment["validation"]["text"]
    np.testing.assert_array_equal(loaded.predict_proba(texts), ens.predict_proba(texts))
    assert type(loaded.fuser_.estimator_) is type(ens.fuser_.estimator_)


@pytest.mark.parametrize("meta", ["mlp", "hist"])
def test_stacking_meta_learner_of_untrusted_types_needs_trusted_types(saved_sklearn_stacking, meta):
    directory = saved_sklearn_stacking[meta][1]
    with pytest.raises(PersistenceError, match=rf"fuser: stacking meta-learner \(meta.skops\): contains types that "
                                               rf"skops does not trust by default: {re.escape(repr(SKOPS_TYPES[meta]))}"
                                               rf"\. If you trust this file, pass trusted_types="):
        Ensemble.from_pretrained(directory, cache_dir="memory")


def test_an_unlisted_file_in_the_fuser_folder_is_refused(saved_sklearn_stacking, tmp_path):
    import shutil

    directory = tmp_path / "copy"
    shutil.copytree(saved_sklearn_stacking["mlp"][1], directory)
    (directory / "fuser" / "extra.skops").write_bytes(b"not listed")
    with pytest.raises(PersistenceError, match=r"does not list 'fuser/extra.skops'"):
        Ensemble.from_pretrained(directory, cache_dir="memory", trusted_types=SKOPS_TYPES["mlp"])


def test_cache_records_from_scratch_cost_including_reused_entries(tmp_path):
    import time

    from fusion.cache.store import OutputCache

    cache = OutputCache(tmp_path)

    def slow_embeddings():
        time.sleep(0.2)
        return {"embeddings": torch.zeros(3, 2)}

    def head_outputs():  # reuses the embeddings entry, as an encoder head does
        cache.get_or_compute("backbone", "data", slow_embeddings, "embeddings")
        return {"logits": torch.zeros(3, 2)}

    cache.get_or_compute("backbone", "data", slow_embeddings, "embeddings")  # computed first, on its own
    cache.get_or_compute("member", "data", head_outputs)
    assert cache.seconds("backbone", "data", "embeddings") >= 0.2
    assert cache.seconds("member", "data") >= 0.2, "reusing cached embeddings must not make the member look free"
    assert OutputCache(tmp_path).get("member", "data") is not None
    reloaded = OutputCache(tmp_path)
    reloaded.get("member", "data")
    assert reloaded.seconds("member", "data") == cache.seconds("member", "data")


# ---------------------------------------------------------------- data users pass every day


def _tfidf_ensemble() -> Ensemble:
    return Ensemble([tfidf_member()], fuser=MeanFuser(), cache_dir="memory")


def test_fit_on_a_dataset_dict_takes_its_train_and_validation_splits(toy_sentiment):
    import datasets

    splits = datasets.DatasetDict({name: datasets.Dataset.from_dict(rows) for name, rows in toy_sentiment.items()})
    texts = toy_sentiment["validation"]["text"]
    ens = _tfidf_ensemble().fit(splits)
    explicit = _tfidf_ensemble().fit(toy_sentiment["train"], toy_sentiment["validation"])
    np.testing.assert_array_equal(ens.predict_proba(texts), explicit.predict_proba(texts))
    assert ens.metrics_["split"] == "validation" and ens.metrics_["rows"] == 80  # the validation split was used
    only_train = _tfidf_ensemble().fit(datasets.DatasetDict({"train": splits["train"]}))
    assert only_train.metrics_ is None


def test_a_dataset_dict_without_train_or_passed_to_predict_is_refused_naming_its_splits(toy_sentiment):
    import datasets

    splits = datasets.DatasetDict({name: datasets.Dataset.from_dict(rows) for name, rows in
                                   (("validation", toy_sentiment["validation"]), ("test", toy_sentiment["train"]))})
    with pytest.raises(DataError, match=r"splits \['validation', 'test'\] and no 'train' split; pass the split to "
                                        r"train on, e\.g\. fit\(ds\['validation'\], validation\)"):
        _tfidf_ensemble().fit(splits)
    ens = _tfidf_ensemble().fit(toy_sentiment["train"])
    with pytest.raises(DataError, match=r"^data: got a DatasetDict with the splits \['validation', 'test'\], not one "
                                        r"dataset; pass one split, e\.g\. ds\['test'\]\.$"):
        ens.predict_proba(splits)


@pytest.mark.parametrize("container", ["list", "array", "series", "names"])
def test_fit_takes_labels_as_a_second_argument(toy_sentiment, container):
    import pandas as pd

    train, texts = toy_sentiment["train"], toy_sentiment["validation"]["text"]
    labels = {"list": list(train["label"]), "array": np.asarray(train["label"]),
              "series": pd.Series(train["label"]),
              "names": [["negative", "positive"][y] for y in train["label"]]}[container]
    ens = _tfidf_ensemble().fit(train["text"], labels)
    np.testing.assert_array_equal(ens.predict_proba(texts), _tfidf_ensemble().fit(train).predict_proba(texts))
    if container == "names":
        assert list(ens.classes_) == ["negative", "positive"]


def test_labels_beside_a_dataset_or_of_another_length_are_refused(toy_sentiment):
    train = toy_sentiment["train"]
    with pytest.raises(DataError, match=r"second a sequence of labels; it is ambiguous which labels count.*"
                                        r"column 'label'"):
        _tfidf_ensemble().fit(train, train["label"])
    with pytest.raises(DataError, match=r"got 240 texts but 239 labels; pass one label per text"):
        _tfidf_ensemble().fit(train["text"], train["label"][:-1])


def test_a_pandas_series_of_texts_works_like_a_list(toy_sentiment):
    import pandas as pd

    train, texts = toy_sentiment["train"], toy_sentiment["validation"]["text"]
    ens = _tfidf_ensemble().fit(pd.Series(train["text"], name="review"), pd.Series(train["label"]))
    np.testing.assert_array_equal(ens.predict_proba(pd.Series(texts)), ens.predict_proba(texts))
    np.testing.assert_array_equal(ens.predict(pd.Series(texts, index=range(100, 180))), ens.predict(texts))
