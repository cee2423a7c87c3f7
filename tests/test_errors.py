"""Bad input and damaged files give FusionErrors that name the problem, the place and the fix."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import FakeMember, edit_saved_config, tfidf_member
from safetensors.torch import save_file

from fusion import (
    ChecksumError,
    ConfigError,
    DataError,
    Ensemble,
    HFClassifier,
    LabelMismatchError,
    MeanFuser,
    MemberOutputError,
    NotFittedError,
    PersistenceError,
    UnknownNameError,
)
from fusion.fusers import FUSERS
from fusion.io import sha256_file

TRAIN = {"text": ["good", "bad", "great", "awful", "fine", "poor"] * 4, "label": [1, 0, 1, 0, 1, 0] * 4}
LABELS = ["negative", "positive"]


def fake(name="fake", labels=LABELS, logits=lambda n: torch.zeros(n, 2)):
    return FakeMember(labels=labels, make_logits=logits, name=name)


@pytest.mark.parametrize(
    ("members", "train", "error", "match"),
    [
        (lambda: [tfidf_member()], {"txt": ["a"], "label": [0]}, DataError, r"no column 'text'.*\['txt', 'label'\]"),
        (lambda: [tfidf_member()], {"text": ["a"]}, DataError, "no column 'label'"),
        (lambda: [tfidf_member()], {"text": [], "label": []}, DataError, "no rows"),
        (lambda: [tfidf_member()], {"text": ["a", None], "label": [0, 1]}, DataError, "row 1 is NoneType"),
        (lambda: [tfidf_member()], {"text": ["a"], "label": [7]}, DataError, "label 7"),
        (lambda: [fake(labels=["neg", "pos"])], TRAIN, LabelMismatchError, r"\['neg', 'pos'\].*\['negative', 'positive'\].*label_map"),
        (lambda: [fake(), fake("short", logits=lambda n: torch.zeros(n - 1, 2))], TRAIN, MemberOutputError, "'short' returned outputs of shape"),
        (lambda: [fake("nan", logits=lambda n: torch.full((n, 2), float("nan")))], TRAIN, MemberOutputError, "'nan' produced NaN or inf"),
    ],
    ids=["missing-text-column", "missing-label-column", "empty", "none-text", "unknown-label", "label-set-mismatch",
         "row-count", "nan"],
)
def test_bad_fit_input(members, train, error, match):
    with pytest.raises(error, match=match):
        Ensemble(members(), labels=LABELS).fit(train)


def test_generic_label_names_need_a_map(generic_label_classifier_dir):
    member = HFClassifier(generic_label_classifier_dir, show_progress=False)
    with pytest.raises(LabelMismatchError, match=r"placeholder label names.*label_map=\{'LABEL_0'"):
        Ensemble([member], labels=LABELS).fit(TRAIN)
    mapped = HFClassifier(generic_label_classifier_dir, label_map={"LABEL_0": "negative", "LABEL_1": "positive"},
                          show_progress=False)
    assert Ensemble([mapped], labels=LABELS).fit(TRAIN).predict_proba(["good"]).shape == (1, 2)


@pytest.mark.parametrize("label_map", [None, {"LABEL_0": "negative", "LABEL_1": "positive"}],
                         ids=["no-label-map", "label-map"])
def test_classifier_without_trained_head_is_refused(bert_encoder_dir, label_map):
    """An encoder checkpoint has no classification weights: refused before any label check or output, with
    the missing weights named and HFEncoder suggested (transformers would draw a new random head each load)."""
    member = HFClassifier(bert_encoder_dir, name="enc", label_map=label_map, show_progress=False)
    expected = (r"member 'enc': checkpoint '.*bert_encoder.*' has no trained classification weights "
                r"\(missing: \['classifier.bias', 'classifier.weight'\]\).*HFEncoder\('.*', head=LinearHead\(\)\)")
    with pytest.raises(ConfigError, match=expected):
        Ensemble([member], labels=LABELS).fit(TRAIN)
    with pytest.raises(ConfigError, match=expected):
        member.load_model()  # the load report itself, whatever config.json declares


def test_classifier_with_its_head_loads_the_same_model_twice(bert_classifier_dir):
    first, second = (HFClassifier(bert_classifier_dir, show_progress=False).load_model()[0] for _ in range(2))
    assert first.config.architectures == ["BertForSequenceClassification"]
    assert torch.equal(first.classifier.weight, second.classifier.weight)


def test_predict_before_fit():
    with pytest.raises(NotFittedError, match="call Ensemble.fit"):
        Ensemble([tfidf_member()], labels=LABELS).predict_proba(["good"])


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Ensemble([]), ConfigError, "at least one member"),
        (lambda: Ensemble([fake("a"), fake("a")]), ConfigError, r"unique; \['a'\]"),
        (lambda: Ensemble([fake()], fuser="avg"), UnknownNameError, f"registered fusers are: {', '.join(FUSERS.names())}"),
        (lambda: Ensemble([fake()], fuser_data="test"), ConfigError, "fuser_data"),
        (lambda: Ensemble([fake()], cv=1), ConfigError, "cv"),
    ],
    ids=["no-members", "duplicate-names", "unknown-fuser", "fuser-data", "cv"],
)
def test_bad_ensemble_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.fixture
def saved(bert_classifier_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(bert_classifier_dir, model_dir)
    ens = Ensemble([HFClassifier(model_dir, name="bert", show_progress=False), tfidf_member()], fuser=MeanFuser())
    ens.fit(TRAIN)
    return ens.save_pretrained(tmp_path / "ens"), model_dir


def _edit_config(directory, edit):
    edit_saved_config(directory, edit)


def test_unknown_fuser_name_in_config(saved):
    directory, _ = saved
    _edit_config(directory, lambda c: c["fuser"].update(kind="meen"))
    with pytest.raises(UnknownNameError, match="unknown fuser 'meen'.*Did you mean 'mean'"):
        Ensemble.from_pretrained(directory)


def test_missing_fuser_file(saved):
    directory, _ = saved
    (directory / "fuser.safetensors").unlink()
    with pytest.raises(PersistenceError, match="fuser.safetensors is missing"):
        Ensemble.from_pretrained(directory)


def test_corrupted_fuser_file(saved):
    directory, _ = saved
    path = directory / "fuser.safetensors"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ChecksumError, match="fuser.safetensors.*changed or corrupted"):
        Ensemble.from_pretrained(directory)


def test_unreadable_file_with_matching_checksum(saved):
    directory, _ = saved
    path = directory / "fuser.safetensors"
    path.write_bytes(b"not a safetensors file")
    _edit_config(directory, lambda c: c["files"].update({"fuser.safetensors": sha256_file(path)}))
    with pytest.raises(PersistenceError, match="not a readable safetensors file"):
        Ensemble.from_pretrained(directory)


def test_shape_mismatched_fuser_state(saved):
    directory, _ = saved
    path = directory / "fuser.safetensors"
    save_file({"n_members_": torch.tensor(2), "n_classes_": torch.tensor(2), "weights_": torch.ones(3)}, str(path))
    _edit_config(directory, lambda c: c["files"].update({"fuser.safetensors": sha256_file(path)}))
    with pytest.raises(PersistenceError, match=r"shape mismatch weights_: file \(3,\) vs expected \(2,\)"):
        Ensemble.from_pretrained(directory)


def test_member_weights_changed_after_save(saved):
    directory, model_dir = saved
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    with pytest.raises(ChecksumError, match="member 'bert': weight files .* differ"):
        Ensemble.from_pretrained(directory)


def test_failed_save_leaves_nothing_behind(tmp_path):
    ens = Ensemble([tfidf_member()], labels=LABELS).fit(TRAIN)

    def broken_save(directory):
        (directory / "half-written").write_text("x")
        raise OSError("disk full")

    ens.members_[0].save = broken_save
    with pytest.raises(OSError, match="disk full"):
        ens.save_pretrained(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_version(tmp_path):
    ens = Ensemble([tfidf_member()], labels=LABELS).fit(TRAIN)
    ens.save_pretrained(tmp_path / "out")
    before = (tmp_path / "out" / "fusion_config.json").read_text()
    def broken_save(directory):
        raise PersistenceError("not fitted")

    ens.members_[0].save = broken_save
    with pytest.raises(PersistenceError, match="not fitted"):
        ens.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / "fusion_config.json").read_text() == before
    assert np.isfinite(Ensemble.from_pretrained(tmp_path / "out").predict_proba(["good"])).all()
