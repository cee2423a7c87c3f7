"""Distillation: the loss against hand-computed values; a student distilled from an ensemble's soft labels against
the same student trained on the (noisy, few) hard labels alone; HFEncoder students (frozen and fine-tuned);
refusal of students that cannot learn from soft targets; the student saved and loaded on its own; the report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import tfidf_member
from torch import nn

from fusion import ConfigError, Ensemble, HFClassifier, HFEncoder, MeanFuser, TorchMember, TrainConfig
from fusion.cache.store import OutputCache
from fusion.ensemble.distill import soft_labels
from fusion.ensemble.fitting import fitted_member
from fusion.inputs import as_text_data
from fusion.losses import distillation_loss

K, D = 5, 10
LABELS = [str(i) for i in range(K)]
TEACHER = TrainConfig(learning_rate=1e-2, max_epochs=25, batch_size=64, show_progress=False, patience=8)
STUDENT = TrainConfig(learning_rate=1e-2, max_epochs=60, batch_size=32, show_progress=False, patience=10)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- the loss

def test_distillation_loss_matches_hand_computed_values():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    labels = torch.tensor([0, 2])
    q = torch.softmax(logits, -1)
    entropy = -(soft * soft.log()).sum(-1)
    cross = -(soft * q.log()).sum(-1)
    # T = 1, alpha = 1: KL(p || q) = cross-entropy to the soft targets minus their entropy
    got = distillation_loss(logits, soft, labels, temperature=1.0, alpha=1.0)
    assert torch.allclose(got, cross - entropy, atol=1e-6)
    # alpha = 0: the hard labels' cross-entropy alone, whatever the temperature
    hard = -q[torch.arange(2), labels].log()
    assert torch.allclose(distillation_loss(logits, soft, labels, temperature=3.0, alpha=0.0), hard, atol=1e-6)
    # T = 2, alpha = 0.25, by hand for row 0: p_T = p**0.5 renormalised, q_T = softmax(logits / 2), times T**2
    p_t = torch.tensor([0.7, 0.2, 0.1]) ** 0.5
    p_t = p_t / p_t.sum()
    q_t = torch.softmax(torch.tensor([1.0, 0.0, -0.5]), -1)
    kl = float((p_t * (p_t / q_t).log()).sum())
    expected = 0.25 * 4 * kl + 0.75 * float(hard[0])
    got = distillation_loss(logits[:1], soft[:1], labels[:1], temperature=2.0, alpha=0.25)
    assert got.shape == (1,) and math.isclose(float(got[0]), expected, rel_tol=1e-5)
    # a row without a hard label (-1) gets the soft term alone (T**2 * KL), not scaled by alpha
    unlabelled = distillation_loss(logits[:1], soft[:1], torch.tensor([-1]), temperature=2.0, alpha=0.25)
    assert math.isclose(float(unlabelled[0]), 4 * kl, rel_tol=1e-5)
    # the student matching the softened teacher exactly costs nothing; soft targets of 0 stay 0 (no NaN)
    exact = distillation_loss(torch.log(soft), soft, torch.tensor([-1, -1]), temperature=3.0, alpha=1.0)
    assert torch.allclose(exact, torch.zeros(2), atol=1e-6)
    zeros = distillation_loss(logits, torch.tensor([[1.0, 0.0, 0.0]] * 2), labels, temperature=2.0, alpha=0.5)
    assert torch.isfinite(zeros).all()


def test_gradients_flow_into_the_student_only():
    logits = torch.zeros(2, 3, requires_grad=True)
    soft = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], requires_grad=True)
    distillation_loss(logits, soft, torch.tensor([0, -1]), temperature=2.0, alpha=0.5).sum().backward()
    assert logits.grad.abs().sum() > 0 and soft.grad is None


# ---------------------------------------------------------------- synthetic data: soft labels beat noisy hard labels

def blobs(n: int, seed: int, noise: float = 0.0) -> dict:
    """K Gaussian classes in D dimensions (fixed centres); ``noise``: share of labels flipped to another class."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(0, 1.0, (K, D)).astype(np.float32)
    labels = rng.integers(0, K, n)
    x = centres[labels] + rng.normal(0, 1.0, (n, D)).astype(np.float32)
    if noise:
        flipped = rng.random(n) < noise
        labels = np.where(flipped, (labels + rng.integers(1, K, n)) % K, labels)
    return {"x": x, "label": labels}


def net(hidden: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(D, hidden), nn.ReLU(), nn.Linear(hidden, K))


@pytest.fixture(scope="module")
def teacher():
    """Two TorchMembers fitted on 500 clean rows, mean-fused (cross-fitted, fuser on out-of-fold outputs)."""
    torch.set_num_threads(1)
    members = [TorchMember(net(), name="a", train_config=TEACHER),
               TorchMember(net(64), name="b", train_config=TEACHER.replace(seed=1))]
    ens = Ensemble(members, fuser=MeanFuser(), labels=LABELS, text_column="x", cv=2, cache_dir="memory")
    return ens.fit(blobs(500, 0))


def accuracy(proba: np.ndarray, data: dict) -> float:
    return float((proba.argmax(1) == data["label"]).mean())


def test_distilled_student_beats_the_same_student_on_hard_labels_alone(teacher):
    transfer, test = blobs(60, 5, noise=0.3), blobs(2000, 9)  # few rows, 30% of their labels wrong
    spec = TorchMember(net(), name="student", train_config=STUDENT)
    student = teacher.distill(spec, transfer)  # defaults: temperature 2, alpha 0.5
    assert student is teacher.students_["student"] and not spec.is_fitted, "the spec stays a specification"
    assert student.distillation_["soft_labels"] == "the ensemble's predictions"
    hard = spec.clone().fit(as_text_data(transfer, text_column="x", label_names=LABELS), LABELS,
                            OutputCache(memory_only=True))
    scores = {name: accuracy(Ensemble.from_member(m, text_column="x", cache_dir="memory").predict_proba(test), test)
              for name, m in (("distilled", student), ("hard", hard))}
    ensemble = accuracy(teacher.predict_proba(test), test)
    # measured: ensemble 0.882, distilled 0.842, hard labels alone 0.674
    assert ensemble > 0.85
    assert scores["distilled"] > scores["hard"] + 0.12, scores
    assert scores["distilled"] > ensemble - 0.06, (scores, ensemble)
    assert student.fingerprint != hard.fingerprint


def test_unlabelled_transfer_rows_learn_from_the_soft_labels_alone(teacher):
    transfer, test = blobs(60, 5), blobs(2000, 9)
    student = teacher.distill(TorchMember(net(), name="unlabelled", train_config=STUDENT), {"x": transfer["x"]},
                              temperature=2.0, alpha=1.0)
    assert student.distillation_["labelled_rows"] == 0
    proba = Ensemble.from_member(student, text_column="x", cache_dir="memory").predict_proba(test)
    assert accuracy(proba, test) > 0.8  # measured 0.87; no hard label was seen


def test_on_the_members_training_rows_the_soft_labels_are_out_of_fold(teacher):
    train = as_text_data(blobs(500, 0), text_column="x", label_names=LABELS)
    proba, source = soft_labels(teacher, train)
    assert source.startswith("out-of-fold")
    outputs, _ = teacher._fuser_rows("train", train, None)  # what the fuser learnt from
    assert np.allclose(proba, teacher.fuser_.predict_proba(outputs))
    in_sample = teacher.predict_proba(train)
    # in-sample outputs are overconfident: the out-of-fold soft labels give the true class less probability
    true = np.arange(len(train)), train.labels
    assert proba[true].mean() < in_sample[true].mean()
    other, other_source = soft_labels(teacher, as_text_data(blobs(50, 3), text_column="x", label_names=LABELS))
    assert other_source == "the ensemble's predictions" and other.shape == (50, K)


def test_on_the_rows_a_fuser_learnt_from_the_soft_labels_are_its_out_of_fold_predictions():
    ens = Ensemble([TorchMember(net(), name="a", train_config=TEACHER)], fuser="linear", labels=LABELS,
                   text_column="x", fuser_data="validation", cv=2, cache_dir="memory")
    validation = blobs(120, 2)
    ens.fit(blobs(300, 0), validation)
    rows = as_text_data(validation, text_column="x", label_names=LABELS)
    proba, source = soft_labels(ens, rows)
    assert source.startswith("the fuser's out-of-fold predictions")
    assert np.array_equal(proba, ens._cv_proba[ens._fuser_label()])
    assert not np.allclose(proba, ens.predict_proba(validation))  # not the fuser graded on its own fit rows


def test_distilling_on_the_training_rows_leaves_the_rows_prune_chooses_on_alone():
    """An ensemble whose fuser learnt from validation rows: the out-of-fold soft labels on the training rows must
    not replace the fuser rows that prune chooses members on and refits the fuser on."""
    ens = Ensemble([TorchMember(net(), name="a", train_config=TEACHER), TorchMember(net(), name="b",
                    train_config=TEACHER.replace(seed=1))], fuser="mean", labels=LABELS, text_column="x",
                   fuser_data="validation", cv=2, cache_dir="memory")
    train, validation = blobs(300, 0), blobs(120, 2)
    ens.fit(train, validation)
    outputs, labels = ens._fuser_outputs
    ens.distill(TorchMember(net(), name="student", train_config=STUDENT), train)
    assert ens._fuser_outputs[0] is outputs and len(ens._fuser_outputs[1]) == len(labels) == 120
    assert ens.prune(max_members=1).pruned_["rows"] == "the fuser's validation rows"


def test_a_distillation_fit_is_never_served_from_a_hard_label_fit_in_the_cache(tmp_path):
    cache = OutputCache(tmp_path / "cache")
    data = as_text_data(blobs(80, 1), text_column="x", label_names=LABELS)
    spec = TorchMember(net(), name="s", train_config=STUDENT.replace(max_epochs=5))
    hard = fitted_member(spec, data, LABELS, cache)
    soft = data.with_soft_targets(np.full((len(data), K), 1.0 / K), temperature=2.0, alpha=0.9)
    distilled = fitted_member(spec, soft, LABELS, cache)
    assert distilled.fingerprint != hard.fingerprint
    assert not torch.equal(distilled.module_[0].weight, hard.module_[0].weight)
    again = fitted_member(spec, soft, LABELS, cache)  # restored from the cache: the distilled fit, not the hard one
    assert again.fingerprint == distilled.fingerprint


# ---------------------------------------------------------------- refusal, saving, the report

def test_a_student_that_cannot_learn_from_soft_labels_is_refused(teacher, toy_sentiment, bert_classifier_dir):
    with pytest.raises(ConfigError, match=r"'clf' \(HFClassifier, kind 'hf_classifier'\) cannot learn.*HFEncoder"):
        teacher.distill(HFClassifier(bert_classifier_dir, name="clf"), blobs(20, 1))
    with pytest.raises(ConfigError, match=r"'sk' \(SklearnMember, kind 'sklearn'\) cannot learn from an ensemble's "
                                          r"soft labels.*use a member that trains on them: HFEncoder.*TorchMember"):
        teacher.distill(tfidf_member("sk"), blobs(20, 1))
    with pytest.raises(ConfigError, match="name 'a' is already a member's; pass name="):
        teacher.distill(TorchMember(net(), name="a"), blobs(20, 1))
    with pytest.raises(ConfigError, match="temperature must be a number > 0"):
        teacher.distill(TorchMember(net(), name="t"), blobs(20, 1), temperature=0)
    with pytest.raises(ConfigError, match=r"alpha.*must be in \[0, 1\]; got 1.5"):
        teacher.distill(TorchMember(net(), name="t"), blobs(20, 1), alpha=1.5)
    data = as_text_data(toy_sentiment["train"], label_names=["negative", "positive"])
    soft = data.with_soft_targets(np.full((len(data), 2), 0.5), temperature=1.0, alpha=0.5)
    with pytest.raises(ConfigError, match="cannot be a distillation student"):  # Member.fit refuses too
        tfidf_member("sk").fit(soft, ["negative", "positive"], OutputCache(memory_only=True))


def test_the_student_saves_and_loads_on_its_own(teacher, tmp_path):
    student = teacher.distill(TorchMember(net(), name="shipped", train_config=STUDENT), blobs(60, 5, noise=0.3))
    test = blobs(300, 9)
    alone = Ensemble.from_member(student, text_column="x")
    alone.save_pretrained(tmp_path / "student")
    loaded = Ensemble.from_pretrained(tmp_path / "student", objects={"shipped": {"module": net()}})
    assert [m.name for m in loaded.members_] == ["shipped"]
    assert np.array_equal(loaded.predict_proba(test), alone.predict_proba(test))
    direct = torch.softmax(student.compute(as_text_data(test, text_column="x"), teacher.cache)["logits"], -1)
    assert np.allclose(loaded.predict_proba(test), direct.numpy(), atol=1e-6)
    assert "distilled from an ensemble (temperature 2.0, alpha 0.5" in (tmp_path / "student" / "README.md").read_text()


def test_the_report_shows_the_student_with_its_cost_outside_the_members(teacher):
    student = teacher.distill(TorchMember(net(), name="reported", train_config=STUDENT), blobs(60, 5, noise=0.3))
    report = teacher.evaluate(blobs(400, 9), n_bootstrap=50)
    row = report.model("reported")
    assert row.kind == "student" and "reported" in [s.name for s in report.students]  # the module's teacher has others
    assert [m.name for m in report.members] == ["a", "b"]
    assert row.seconds_per_1k is not None and row.seconds_per_1k > 0
    assert report.full_seconds_per_1k("reported") == row.seconds_per_1k
    fuser = report.best_fuser
    assert report.full_seconds_per_1k(fuser) > report.model(fuser).seconds_per_1k  # all members + the fuser
    assert all("reported" not in p["members"] for p in report.cost_accuracy)
    assert all("reported" not in w for w in report.weights.values())
    assert report.diversity["members"] == ["a", "b"]
    test = next(t for t in report.tests if t.fuser == "reported")
    assert test.against == fuser
    rows = blobs(400, 9)
    expected = float((Ensemble.from_member(student, text_column="x", cache_dir="memory").predict_proba(rows).argmax(1)
                      == rows["label"]).mean())
    assert row.metrics["accuracy"] == pytest.approx(expected)
    markdown = report.to_markdown()
    assert "| reported | student |" in markdown and "distilled from this ensemble" in markdown
    assert "reported" in report.to_html()  # the plots draw students in their own colour
    assert type(report).from_dict(report.to_dict()) == report


# ---------------------------------------------------------------- HFEncoder students

def test_hf_encoder_students_distil_end_to_end(bert_encoder_dir, toy_sentiment):
    labels = ["negative", "positive"]
    ens = Ensemble([tfidf_member("tfidf")], labels=labels, cv=2, cache_dir="memory").fit(toy_sentiment["train"])
    head = TrainConfig(learning_rate=1e-2, max_epochs=20, batch_size=32, show_progress=False)
    frozen = ens.distill(HFEncoder(bert_encoder_dir, name="frozen", train_config=head, show_progress=False),
                         toy_sentiment["train"], temperature=2.0, alpha=0.7)
    assert frozen.distillation_["soft_labels"].startswith("out-of-fold")  # the teacher was fitted on these rows
    validation = toy_sentiment["validation"]
    proba = Ensemble.from_member(frozen, cache_dir="memory").predict_proba(validation["text"])
    assert proba.shape == (80, 2) and np.allclose(proba.sum(1), 1.0)
    hard = fitted_member(HFEncoder(bert_encoder_dir, name="frozen", train_config=head, show_progress=False),
                         as_text_data(toy_sentiment["train"], label_names=labels), labels, ens.cache)
    assert frozen.state_dict().keys() == hard.state_dict().keys()
    assert any(not torch.equal(frozen.state_dict()[k], hard.state_dict()[k]) for k in hard.state_dict())
    assert frozen.fingerprint != hard.fingerprint
    tune = TrainConfig(learning_rate=1e-3, max_epochs=1, batch_size=64, show_progress=False)
    tuned = ens.distill(HFEncoder(bert_encoder_dir, name="tuned", finetune=True, train_config=tune,
                                  show_progress=False), toy_sentiment["validation"])
    assert tuned.finetuned_ and set(ens.students_) == {"frozen", "tuned"}
    report = ens.evaluate(validation, n_bootstrap=0)
    assert [s.name for s in report.students] == ["frozen", "tuned"]


def test_build_report_takes_students_as_their_own_rows():
    from fusion import DataError, build_report

    a = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]])
    b = np.array([[0.6, 0.4], [0.6, 0.4], [0.2, 0.8], [0.6, 0.4]])
    student = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.3, 0.7]])  # right on every row
    labels = np.array([0, 1, 1, 1])
    report = build_report({"a": a, "b": b}, {"mean": (a + b) / 2}, labels, ["no", "yes"], n_bootstrap=0,
                          seconds={"a": 0.4, "b": 4.0, "mean": 0.004, "s": 0.2}, student_proba={"s": student})
    assert [(m.name, m.kind) for m in report.models] == [("a", "member"), ("b", "member"), ("mean", "fuser"),
                                                         ("s", "student")]
    assert report.model("s").metrics["accuracy"] == 1.0 and report.best_member == "a"  # a: 0.75, b: 0.5
    assert report.full_seconds_per_1k("s") == pytest.approx(50.0)  # 0.2 s over 4 rows
    assert report.full_seconds_per_1k("mean") == pytest.approx(1101.0)  # both members and the fuser
    assert [p["members"] for p in report.cost_accuracy] == [["a"], ["b"], ["a", "b"]]
    assert report.weights == {} and report.diversity["members"] == ["a", "b"]
    (test,) = [t for t in report.tests if t.fuser == "s"]
    assert (test.against, test.fuser_only_correct, test.member_only_correct) == ("mean", 1, 0)
    with pytest.raises(DataError, match="used by both a fuser and a student"):
        build_report({"a": a}, {"s": a}, labels, ["no", "yes"], n_bootstrap=0, student_proba={"s": student})
