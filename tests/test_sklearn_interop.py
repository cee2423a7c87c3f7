"""scikit-learn interop: components and the Ensemble follow the estimator protocol (get_params / set_params,
``sklearn.base.clone``, tags, ``score(X, y)``) where it makes sense for models of texts."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tfidf_member
from sklearn.base import clone, is_classifier
from sklearn.model_selection import cross_val_score
from sklearn.utils import estimator_checks

from fusion import Ensemble
from fusion.errors import ConfigError
from fusion.fusers import FUSERS, LinearFuser, MeanFuser


def test_clone_of_a_fuser_keeps_its_config_and_nothing_learned():
    spec = LinearFuser(per_class=True, train_config={"max_epochs": 7})
    fitted = spec.clone().fit(np.random.default_rng(0).normal(size=(12, 2, 3)), np.arange(12) % 3)
    twin = clone(fitted)
    assert type(twin) is LinearFuser and twin is not fitted
    assert twin.config == spec.config and twin.config.train_config.max_epochs == 7
    assert not twin.is_fitted


def test_component_params_round_trip_and_are_checked():
    fuser = LinearFuser()
    assert fuser.get_params(deep=False)["per_class"] is False
    assert fuser.set_params(per_class=True, constraint="unconstrained") is fuser
    assert fuser.get_params()["per_class"] is True and fuser.config.constraint == "unconstrained"
    with pytest.raises(ConfigError, match=r"constraint must be one of .*'simplex'.*got 'positive'"):
        fuser.set_params(constraint="positive")
    with pytest.raises(ConfigError, match="unknown parameter 'per_clas'.*per_class"):
        fuser.set_params(per_clas=True)
    assert fuser.config.constraint == "unconstrained"  # a refused change leaves the config as it was
    mean = MeanFuser(weights=[1, 1]).fit(np.zeros((2, 2, 2)), [0, 1])
    with pytest.raises(ConfigError, match="fitted.*clone\\(\\).set_params"):
        mean.set_params(weights=[2, 1])


def test_member_params_reach_into_its_estimator():
    member = tfidf_member("bow")
    params = member.get_params()
    assert params["name"] == "bow" and params["estimator__logisticregression__C"] == 1.0
    original = member.config.estimator
    member.set_params(estimator__logisticregression__C=0.5)
    assert member.config.estimator.get_params()["logisticregression__C"] == 0.5
    assert original.get_params()["logisticregression__C"] == 1.0  # the estimator given is not changed


@pytest.fixture
def ensemble():
    return Ensemble([tfidf_member("a"), tfidf_member("b")], LinearFuser(per_class=True), cv=3, cache_dir="memory")


def test_ensemble_is_a_classifier_with_params(ensemble):
    assert is_classifier(ensemble)
    params = ensemble.get_params()
    assert params["cv"] == 3 and params["fuser__per_class"] is True and [m.name for m in params["members"]] == ["a", "b"]
    assert set(ensemble.get_params(deep=False)) == {"members", "fuser", "labels", "text_column", "label_column",
                                                    "cache_dir", "engine", "fuser_data", "cv", "seed"}
    given = ensemble.fuser
    ensemble.set_params(cv=4, fuser__constraint="unconstrained")
    assert ensemble.cv == 4 and ensemble.get_params()["fuser__constraint"] == "unconstrained"
    assert given.config.constraint == "simplex"  # the fuser object passed in is not modified
    with pytest.raises(ConfigError, match="cv must be an integer number of folds, at least 2; got 1"):
        ensemble.set_params(cv=1)
    with pytest.raises(ConfigError, match="unknown parameter 'sed'.*seed"):
        ensemble.set_params(sed=1)
    assert ensemble.cv == 4


def test_clone_of_a_fitted_ensemble_is_unfitted_with_equal_params(ensemble, toy_sentiment):
    ensemble.fit(toy_sentiment["train"])
    twin = clone(ensemble)
    assert twin.fuser_ is None and twin.members_ is None and ensemble.fuser_ is not None
    assert twin.fuser is not ensemble.fuser and twin.fuser.config == ensemble.fuser.config
    assert [m.config for m in twin.members] == [m.config for m in ensemble.members]
    assert all(a is not b for a, b in zip(twin.members, ensemble.members, strict=True))
    assert twin.members[0].config.estimator is not ensemble.members[0].config.estimator
    assert {k: v for k, v in twin.get_params(deep=False).items() if k not in ("members", "fuser")} == \
        {k: v for k, v in ensemble.get_params(deep=False).items() if k not in ("members", "fuser")}


def test_score_with_labels_is_accuracy(ensemble, toy_sentiment):
    ensemble.fit(toy_sentiment["train"])
    texts, ids = toy_sentiment["validation"]["text"][:30], np.asarray(toy_sentiment["validation"]["label"][:30])
    predicted = ensemble.predict(texts)
    names = ensemble.classes_[ids]
    expected = sum(p == n for p, n in zip(predicted, names, strict=True)) / 30
    wrong = ensemble.classes_[1 - ids]
    assert ensemble.score(texts, ids) == pytest.approx(expected)
    assert ensemble.score(texts, list(names)) == pytest.approx(expected)  # label names work as well as ids
    assert ensemble.score(texts, wrong) == pytest.approx(1 - expected)


def test_repr_names_members_fuser_and_state(ensemble, toy_sentiment):
    text = repr(ensemble)
    assert text.splitlines()[0] == "Ensemble(fuser=linear(per_class=True), fuser_data='auto', cv=3, seed=0; not fitted)"
    assert text.splitlines()[1:] == ["  member a: scikit-learn `Pipeline`", "  member b: scikit-learn `Pipeline`"]
    ensemble.set_params(fuser=["mean", "linear"]).fit(toy_sentiment["train"])
    assert "fuser=mean, linear" in repr(ensemble) and "; fitted, fuser kept: " in repr(ensemble)


def test_cross_val_score(ensemble, toy_sentiment):
    scores = cross_val_score(ensemble, toy_sentiment["train"]["text"], toy_sentiment["train"]["label"], cv=3)
    assert len(scores) == 3 and all(0.5 < s <= 1 for s in scores)


# scikit-learn's own checks that apply to models of texts and of member outputs; the others (and why) are
# listed in the README's "scikit-learn interop" section.
COMMON_CHECKS = ["check_estimator_cloneable", "check_get_params_invariance", "check_estimator_repr",
                 "check_estimator_tags_renamed", "check_valid_tag_types", "check_mixin_order"]
FUSER_CHECKS = [*COMMON_CHECKS, "check_parameters_default_constructible"]


def _estimators():
    for kind in FUSERS.names():
        for check in FUSER_CHECKS + (["check_set_params"] if kind in ("mean", "pick", "vote") else []):
            yield pytest.param(FUSERS.get(kind)(), check, id=f"{kind}-{check}")
    for check in COMMON_CHECKS:
        yield pytest.param(Ensemble([tfidf_member("a")], cache_dir="memory"), check, id=f"ensemble-{check}")


@pytest.mark.parametrize(("estimator", "check"), list(_estimators()))
def test_scikit_learn_estimator_checks(estimator, check):
    getattr(estimator_checks, check)(type(estimator).__name__, clone(estimator))
