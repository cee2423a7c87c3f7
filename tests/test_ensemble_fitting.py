"""How Ensemble.fit treats what it is given: specs stay untouched, clones are fitted, outputs are cached across
processes, fusers are chosen honestly, expensive members are fitted once, and the report is lazy."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FakeMember, tfidf_member
from tiny_models import make_toy_sentiment

from fusion import (
    Ensemble,
    HFClassifier,
    HFEncoder,
    LinearFuser,
    MeanFuser,
    MLPHead,
    PickFuser,
    SklearnMember,
    TrainConfig,
    VoteFuser,
)
from fusion.ensemble.crossfit import out_of_fold_fused
from fusion.evaluation.metrics import summary
from fusion.members.hf_encoder import HFEncoder as Encoder

QUIET = {"show_progress": False}
FAST_HEAD = TrainConfig(learning_rate=1e-2, max_epochs=5, batch_size=32, patience=None, show_progress=False)


def _encoder(directory, head, pooling="mean", name=None, **options):
    return HFEncoder(directory, head=head, pooling=pooling, train_config=FAST_HEAD, name=name, **QUIET, **options)


def test_fit_trains_clones_and_leaves_the_specs_untouched(bert_encoder_dir, toy_sentiment):
    head = torch.nn.Linear(32, 2)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    specs = [_encoder(bert_encoder_dir, head, name="custom"), tfidf_member()]
    fuser = LinearFuser()
    ens = Ensemble(specs, fuser=fuser, labels=["negative", "positive"], cv=2).fit(toy_sentiment["train"], toy_sentiment["validation"])
    assert all(not m.is_fitted for m in specs) and not fuser.is_fitted
    assert all(a is not b for a, b in zip(ens.members_, specs, strict=True)) and ens.fuser_ is not fuser
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items()), "the user's head module was trained"
    assert list(ens.classes_) == ["negative", "positive"]
    assert ens.members == specs and ens.fuser is fuser


def test_fitting_the_same_spec_twice_gives_independent_ensembles(bert_encoder_dir, toy_sentiment):
    specs = [_encoder(bert_encoder_dir, MLPHead(hidden=8), name="enc")]
    first = Ensemble(specs).fit(toy_sentiment["train"])
    second = Ensemble(specs).fit(toy_sentiment["train"])
    texts = ["a wonderful film", "a dull plot"]
    expected = second.predict_proba(texts)
    with torch.no_grad():
        for p in first.members_[0].head_.parameters():
            p.add_(1.0)
    assert first.members_[0].head_ is not second.members_[0].head_
    assert np.array_equal(second.predict_proba(texts), expected)


def test_one_head_object_in_two_encoders_gives_two_independent_heads(bert_encoder_dir, toy_sentiment):
    head = MLPHead(hidden=8)
    members = [_encoder(bert_encoder_dir, head, "mean", "mean"), _encoder(bert_encoder_dir, head, "cls", "cls")]
    ens = Ensemble(members).fit(toy_sentiment["train"])
    mean_head, cls_head = (m.head_ for m in ens.members_)
    assert mean_head is not cls_head and mean_head is not head
    assert not all(torch.equal(a, b) for a, b in zip(mean_head.state_dict().values(), cls_head.state_dict().values(),
                                                     strict=True))


SECOND_PROCESS = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    import transformers
    from helpers import tfidf_member
    from tiny_models import make_toy_sentiment
    from fusion import Ensemble, HFClassifier, HFEncoder, MLPHead, TrainConfig
    from fusion.cache import OutputCache

    calls = {{"n": 0}}
    for cls in (transformers.BertModel, transformers.BertForSequenceClassification):
        original = cls.forward
        def counted(self, *args, _original=original, **kwargs):
            calls["n"] += 1
            return _original(self, *args, **kwargs)
        cls.forward = counted
    head = TrainConfig(learning_rate=1e-2, max_epochs=3, batch_size=32, patience=None, show_progress=False)
    finetune = TrainConfig(learning_rate=1e-3, max_epochs=1, batch_size=32, patience=None, show_progress=False)
    members = [HFClassifier({classifier!r}, show_progress=False),
               HFEncoder({encoder!r}, head=MLPHead(hidden=8), train_config=head, show_progress=False),
               HFEncoder({encoder!r}, pooling="cls", train_config=head, show_progress=False), tfidf_member(),
               HFEncoder({encoder!r}, finetune=True, train_config=finetune, name="ft", show_progress=False)]
    # a prediction on fewer than small_call_rows rows writes no file; 2 rows count as a large call here
    ens = Ensemble(members, fuser=["mean", "linear"], cv=2, cache_dir=OutputCache(small_call_rows=2))
    ens.fit(make_toy_sentiment(60, 0), make_toy_sentiment(20, 1))
    proba = ens.predict_proba(["a great film", "a dull plot"]).tolist()
    print(json.dumps({{"forward_calls": calls["n"], "misses": ens.cache.misses, "proba": proba}}))
""")


@pytest.mark.slow
def test_a_second_process_over_the_same_models_and_data_runs_no_model(bert_classifier_dir, bert_encoder_dir,
                                                                        tmp_path, monkeypatch):
    monkeypatch.setenv("FUSION_CACHE", str(tmp_path / "cache"))
    script = tmp_path / "run.py"
    script.write_text(SECOND_PROCESS.format(tests=str(Path(__file__).parent), classifier=str(bert_classifier_dir),
                                            encoder=str(bert_encoder_dir)))

    def run() -> dict:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    assert first["forward_calls"] > 0
    assert second["forward_calls"] == 0, "the second process ran a model although every output was cached on disk"
    assert second["misses"] == 0
    assert np.allclose(first["proba"], second["proba"])


INTERRUPTED_BUILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from helpers import tfidf_member
    from tiny_models import make_toy_sentiment
    from fusion import Ensemble, SklearnMember

    fits, real_fit = [], SklearnMember._fit

    def fit(self, *args):  # the 4th fit is the third fold's (the 1st is the member's own): die there, as a kill would
        fits.append(1)
        if len(fits) == 4:
            os._exit(3)
        return real_fit(self, *args)

    SklearnMember._fit = fit
    Ensemble([tfidf_member()], fuser="linear", cv=3, labels=["negative", "positive"], cache_dir={cache!r}).fit(
        make_toy_sentiment(60, 0), make_toy_sentiment(20, 1))
""")


def build_units(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every fit and every output computation of scikit-learn members from now on."""
    units: list[str] = []
    for name in ("_fit", "compute"):
        real = getattr(SklearnMember, name)
        monkeypatch.setattr(SklearnMember, name, lambda self, *a, _real=real, _name=name: (
            units.append(_name.strip("_")), _real(self, *a))[1])
    return units


@pytest.mark.slow
def test_an_interrupted_build_redoes_only_the_entries_it_had_not_finished(tmp_path, monkeypatch):
    """A build killed in its third fold (after the member's fit and two folds were done) then run again fits only
    the third fold, and computes its outputs and the validation outputs; the fold entries make way for the whole
    out-of-fold entry, and the result is the one an uninterrupted build gives."""
    cache = tmp_path / "cache"
    script = tmp_path / "build.py"
    script.write_text(INTERRUPTED_BUILD.format(tests=str(Path(__file__).parent), cache=str(cache)))
    killed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == 3, killed.stderr[-2000:]
    assert len(list(cache.rglob("*fold*.safetensors"))) == 2, "the two finished folds were kept"
    units = build_units(monkeypatch)
    texts = make_toy_sentiment(20, 1)["text"]

    def build(cache_dir) -> Ensemble:
        ens = Ensemble([tfidf_member()], fuser="linear", cv=3, labels=["negative", "positive"], cache_dir=cache_dir)
        ens.fit(make_toy_sentiment(60, 0), make_toy_sentiment(20, 1))
        assert ens.report_ is not None
        return ens

    resumed = build(cache)  # as a new process would: a new cache object over the same folder
    # The third fold's fit and outputs, the fitted member on the training rows (its inference cost, for cascades
    # and prune), the validation rows.
    assert units == ["fit", "compute", "compute", "compute"], "the fit and the folds finished before the kill were redone"
    assert not list(cache.rglob("*fold*.safetensors"))
    units.clear()
    fresh = build("memory")
    assert units == ["fit", "fit", "compute", "fit", "compute", "fit", "compute", "compute", "compute"]  # the whole build
    assert np.allclose(resumed.predict_proba(texts), fresh.predict_proba(texts))


def test_a_fit_from_an_earlier_run_is_restored_from_the_cache(bert_encoder_dir, toy_sentiment, tmp_path, monkeypatch,
                                                               caplog):
    fits = []
    for cls in (Encoder, SklearnMember):
        monkeypatch.setattr(cls, "_fit", lambda self, *a, _original=cls._fit: (fits.append(self.name),
                                                                                _original(self, *a))[1])
    finetune = TrainConfig(learning_rate=1e-3, max_epochs=1, batch_size=32, patience=None, show_progress=False)

    def fitted(cache_dir) -> Ensemble:  # new member objects each time, as a second process would build them
        members = [HFEncoder(bert_encoder_dir, finetune=True, train_config=finetune, name="ft", **QUIET),
                   tfidf_member()]
        return Ensemble(members, labels=["negative", "positive"], cache_dir=cache_dir).fit(
            toy_sentiment["train"], toy_sentiment["validation"])

    texts = toy_sentiment["validation"]["text"]
    first = fitted(tmp_path / "cache")
    assert sorted(fits) == ["ft", "tfidf"]
    fits.clear()
    second = fitted(tmp_path / "cache")
    assert fits == [], "a member was fitted again although its fit was cached"
    assert np.array_equal(second.predict_proba(texts), first.predict_proba(texts))
    assert [m.fingerprint for m in second.members_] == [m.fingerprint for m in first.members_]
    for entry in (tmp_path / "cache").glob("*/fitted-*.safetensors"):
        entry.write_bytes(b"not a safetensors file")
    with caplog.at_level("WARNING"):
        fitted(tmp_path / "cache")
    assert sorted(fits) == ["ft", "tfidf"], "an unreadable cached fit must be fitted again, not trusted"
    fits.clear()
    fitted("memory")
    assert sorted(fits) == ["ft", "tfidf"]


def test_two_poolings_of_one_checkpoint_run_the_backbone_once(bert_encoder_dir, toy_sentiment, monkeypatch):
    calls = []
    original = Encoder._load

    def loaded(self):
        backbone, tokenizer = original(self)
        if not getattr(backbone, "_counted", False):
            backbone.register_forward_hook(lambda *a: calls.append(1))
            backbone._counted = True
        return backbone, tokenizer

    monkeypatch.setattr(Encoder, "_load", loaded)
    members = [_encoder(bert_encoder_dir, "linear", "mean", "a"), _encoder(bert_encoder_dir, MLPHead(hidden=8), "cls", "b")]
    Ensemble(members, cache_dir="memory").fit(toy_sentiment["train"])
    single = len(calls)
    calls.clear()
    Ensemble(members[:1], cache_dir="memory").fit(toy_sentiment["train"])
    assert single == len(calls) > 0, "the second pooling ran the backbone again"


def _kept_by_the_rule(selection: dict) -> str:
    """The selection rule: lowest log-loss among the best member and the fusers that beat it by more than noise."""
    scores, beats = selection["scores"], selection["beats_member"]
    member = next(label for label in scores if label.startswith("member: "))
    for label, better in beats.items():  # beating it by more than noise takes at least a higher accuracy
        assert not better or scores[label]["accuracy"] > scores[member]["accuracy"]
    eligible = [k for k in scores if k == member or beats[k]]
    return min(eligible, key=lambda k: scores[k]["log_loss"])


def test_several_fusers_are_chosen_by_cross_validated_log_loss_among_those_as_accurate_as_the_best_member(
        bert_classifier_dir, toy_sentiment):
    members = [HFClassifier(bert_classifier_dir, name="bert", **QUIET), tfidf_member()]
    ens = Ensemble(members, fuser=[MeanFuser(), "vote", LinearFuser()], cv=3)
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    selection = ens.selection_
    member = next(label for label in selection["scores"] if label.startswith("member: "))  # the best single member
    assert set(selection["scores"]) == {"mean", "vote", "linear", member} and selection["rows"] == "train"
    assert selection["metric"] == "log_loss"
    assert selection["chosen"] == _kept_by_the_rule(selection) and ens.fuser_ is ens.candidates_[selection["chosen"]]
    report = ens.report_
    assert {m.name for m in report.models if m.kind == "fuser"} == {"mean", "vote", "linear", member}
    assert any("cross-validated log-loss" in note for note in report.notes)


def test_no_fuser_named_compares_the_default_candidates_and_the_best_member(toy_sentiment):
    """Ensemble(members): mean, linear, stacking and caruana against the best member, by the same rule; with
    two noise members beside a strong one, the plain mean is less accurate than the strong member, and what is
    kept is no less accurate on held-out rows."""
    members = [tfidf_member("strong"), _noise_member("noise1", 1), _noise_member("noise2", 2)]
    ens = Ensemble(members, labels=["negative", "positive"], cv=3, cache_dir="memory").fit(toy_sentiment["train"])
    scores = ens.selection_["scores"]
    assert set(scores) == {"mean", "linear", "stacking", "caruana", "member: strong"}
    assert set(ens.selection_["beats_member"]) == {"mean", "linear", "stacking", "caruana"}
    assert ens.fuser is None and ens.get_params()["fuser"] is None  # the spec says "the default", not a list
    assert ens.selection_["chosen"] == _kept_by_the_rule(ens.selection_)
    mean_acc = scores["mean"]["accuracy"]
    assert mean_acc < scores["member: strong"]["accuracy"]  # the noise drags the plain mean down
    held_out = ens.score(toy_sentiment["validation"])
    strong = held_out["strong"]["accuracy"]
    assert held_out[f"fuser:{ens.fuser_.kind}"]["accuracy"] >= strong - 0.002


def test_expensive_members_are_fitted_once_and_the_fuser_is_cross_fitted_on_validation(bert_encoder_dir, toy_sentiment,
                                                                                         monkeypatch):
    fits = []
    original = Encoder._finetune
    monkeypatch.setattr(Encoder, "_finetune", lambda self, *a: (fits.append(1), original(self, *a))[1])
    finetune = TrainConfig(learning_rate=1e-3, max_epochs=1, batch_size=32, patience=None, show_progress=False)
    members = [HFEncoder(bert_encoder_dir, finetune=True, train_config=finetune, name="ft", **QUIET), tfidf_member()]
    ens = Ensemble(members, fuser=LinearFuser(), cv=4).fit(toy_sentiment["train"], toy_sentiment["validation"])
    assert len(fits) == 1, "the fine-tuned member was fitted more than once"
    assert ens.fuser_data_ == "validation"
    assert "prefit" in ens.member_fitting_["ft"]
    validation = ens._data(toy_sentiment["validation"], "validation", require_labels=True)
    outputs = ens.member_outputs(validation)
    honest = summary(out_of_fold_fused(LinearFuser(), outputs, validation.labels, 4, 0), validation.labels)
    assert ens.score(validation)["fuser:linear"] == pytest.approx(honest)
    assert ens.metrics_["scores"]["fuser:linear"] == pytest.approx(honest)
    in_sample = summary(ens.fuser_.predict_proba(outputs), validation.labels)
    assert in_sample["log_loss"] < honest["log_loss"], "in-sample scores of a fitted fuser should look better"
    assert any("out-of-fold" in note for note in ens.report_.notes)
    assert any("ft: fitted once on train (prefit)" in note for note in ens.report_.notes)


def test_integer_labels_without_names_use_the_ids(toy_sentiment):
    data = {"text": toy_sentiment["train"]["text"], "label": [int(x) for x in toy_sentiment["train"]["label"]]}
    ens = Ensemble([tfidf_member()], fuser=VoteFuser()).fit(data)
    assert list(ens.classes_) == ["0", "1"]
    assert set(ens.predict(["a great film"])) <= {"0", "1"}
    assert "ids are used as names" in ens.label_note_


def test_fit_builds_no_report_until_asked(toy_sentiment, monkeypatch):
    import fusion.evaluation.evaluate as evaluation

    built = []
    original = evaluation.build_report
    monkeypatch.setattr(evaluation, "build_report", lambda *a, **k: (built.append(1), original(*a, **k))[1])
    ens = Ensemble([tfidf_member()]).fit(toy_sentiment["train"], toy_sentiment["validation"])
    assert built == []
    assert ens.report_ is ens.report_ and len(built) == 1


def test_saved_config_is_the_ensemble_config(bert_classifier_dir, toy_sentiment, tmp_path):
    from fusion.ensemble.persistence import CONFIG_NAME, EnsembleConfig

    ens = Ensemble([HFClassifier(bert_classifier_dir, **QUIET), tfidf_member()], fuser=["mean", "linear"], cv=2)
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"]).save_pretrained(tmp_path / "e")
    raw = json.loads((tmp_path / "e" / CONFIG_NAME).read_text())
    config = EnsembleConfig.read(tmp_path / "e")
    assert config.to_dict() == {k: v for k, v in raw.items() if k != "checksum"}
    assert [m.kind_name for m in config.members] == ["hf_classifier", "sklearn"]
    assert config.selection["chosen"] == ens.selection_["chosen"]
    card = (tmp_path / "e" / "README.md").read_text()
    assert config.fuser.kind_name in card and "Chosen among candidates" in card


def _noise_member(name: str, seed: int) -> FakeMember:
    """A member whose confident probabilities are random: it knows nothing, and says so loudly."""
    return FakeMember(labels=["negative", "positive"], name=name,
                      make_logits=lambda n: 5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed + n)))


def test_a_single_member_that_beats_every_fuser_is_kept_alone(toy_sentiment):
    members = [tfidf_member("strong"), _noise_member("noise1", 1), _noise_member("noise2", 2)]
    ens = Ensemble(members, fuser=["mean", "vote"], labels=["negative", "positive"], cv=3, cache_dir="memory")
    ens.fit(toy_sentiment["train"])
    selection = ens.selection_
    scores = {label: s["accuracy"] for label, s in selection["scores"].items()}
    assert set(scores) == {"mean", "vote", "member: strong"}
    assert scores["member: strong"] > max(scores["mean"], scores["vote"])
    assert selection["chosen"] == "member: strong" and selection["member"] == "strong"
    assert isinstance(ens.fuser_, PickFuser) and ens.candidates_["member: strong"] is ens.fuser_
    texts = toy_sentiment["validation"]["text"]
    strong = ens.members_[0].compute(ens._data(texts, "data"), ens.cache)["logits"].softmax(-1).numpy()
    np.testing.assert_allclose(ens.predict_proba(texts), strong, atol=1e-6)  # the member's own probabilities
    assert any(note.startswith("The member strong alone beat every fuser, so it is kept")
               for note in ens._notes(ens._data(toy_sentiment["validation"], "evaluation", require_labels=True)))



def test_a_member_that_ties_a_fuser_on_accuracy_is_judged_by_log_loss(toy_sentiment):
    """Constant members change no argmax, so the mean ties the strong member on accuracy; the same rule as
    between fusers then decides: the lower cross-validated log-loss (the mean's is pulled towards 0.5)."""
    flat = [FakeMember(labels=["negative", "positive"], name=f"flat{i}", make_logits=lambda n: torch.zeros(n, 2))
            for i in range(2)]
    ens = Ensemble([tfidf_member("strong"), *flat], fuser=["mean", "vote"], labels=["negative", "positive"], cv=3,
                   cache_dir="memory").fit(toy_sentiment["train"])
    scores = ens.selection_["scores"]
    assert scores["mean"]["accuracy"] == scores["member: strong"]["accuracy"]
    assert scores["member: strong"]["log_loss"] < scores["mean"]["log_loss"]
    assert ens.selection_["chosen"] == "member: strong" and ens.selection_["member"] == "strong"
