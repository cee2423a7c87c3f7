"""Tests of fusion.evaluation: metrics against scikit-learn and hand-computed values, bootstrap and McNemar,
diversity, cost/accuracy subsets, the report's JSON round trip and its Markdown and HTML renderings."""

from __future__ import annotations

import base64
import json
import re
import sys
from math import comb

import matplotlib
import numpy as np
import pytest
import sklearn.metrics
import torch

from fusion.cache.store import EntryCost
from fusion.errors import ConfigError, DataError, MemberOutputError, PersistenceError
from fusion.evaluation import (
    Report,
    accuracy,
    all_metrics,
    auroc,
    brier,
    build_report,
    confusion_matrix,
    ece,
    log_loss,
    macro_f1,
    per_class,
    reliability,
    summary,
)
from fusion.evaluation.cost import cost_accuracy, pareto_front
from fusion.evaluation.diversity import disagreement, error_correlation, member_diversity
from fusion.evaluation.evaluate import permutation_importance
from fusion.evaluation.metrics import confidence_bins
from fusion.evaluation.uncertainty import bootstrap_metrics, mcnemar_p_value, paired_test, resample_counts
from fusion.fusers import MemberOutputs, StackingFuser

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTION_IDS = ["metrics", "reliability", "confusion", "weights", "disagreement", "cost", "tests", "per-class"]


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def synthetic(n_rows: int = 300, n_classes: int = 3, n_members: int = 3, seed: int = 0):
    """Members of rising skill with independent noise; fusers: their mean and a weighted mean."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n_rows)
    members = {}
    for i in range(n_members):
        logits = rng.normal(size=(n_rows, n_classes))
        logits[np.arange(n_rows), labels] += 0.8 + 0.5 * i
        members[f"m{i}"] = softmax(logits)
    stack = np.stack(list(members.values()))
    weights = np.arange(1, n_members + 1) / np.arange(1, n_members + 1).sum()
    fusers = {"mean": stack.mean(0), "weighted": np.einsum("m,mnc->nc", weights, stack)}
    return members, fusers, labels, dict(zip(members, weights.tolist(), strict=True))


def make_report(n_classes: int = 3, **options) -> Report:
    members, fusers, labels, weights = synthetic(n_classes=n_classes)
    options.setdefault("n_bootstrap", 200)
    return build_report(
        members, fusers, labels, [f"label{k}" for k in range(n_classes)],
        seconds={"m0": 0.03, "m1": 0.3, "m2": 0.6, "mean": 0.001, "weighted": 0.002},
        member_weights={"weighted": weights}, notes=["fusers scored in-sample"], **options,
    )


@pytest.fixture(scope="module")
def report() -> Report:
    return make_report()


# ---------------------------------------------------------------- metrics


@pytest.mark.parametrize("n_classes", [2, 4])
def test_metrics_agree_with_sklearn(n_classes):
    rng = np.random.default_rng(n_classes)
    proba = rng.dirichlet(np.ones(n_classes), size=250)
    labels = rng.integers(0, n_classes, 250)
    predicted = proba.argmax(1)
    assert accuracy(proba, labels) == pytest.approx(sklearn.metrics.accuracy_score(labels, predicted))
    assert macro_f1(proba, labels) == pytest.approx(sklearn.metrics.f1_score(labels, predicted, average="macro"))
    assert log_loss(proba, labels) == pytest.approx(sklearn.metrics.log_loss(labels, proba, labels=range(n_classes)))
    onehot = np.eye(n_classes)[labels]
    assert brier(proba, labels) == pytest.approx(((proba - onehot) ** 2).sum(1).mean())
    expected = confusion_matrix(proba, labels)
    np.testing.assert_array_equal(expected, sklearn.metrics.confusion_matrix(labels, predicted, labels=range(n_classes)))


def test_binary_brier_is_twice_sklearns_positive_class_score():
    proba = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    labels = np.array([0, 1, 1, 0])
    assert brier(proba, labels) == pytest.approx(2 * sklearn.metrics.brier_score_loss(labels, proba[:, 1]), rel=1e-12)
    rng = np.random.default_rng(3)
    positive = rng.random(500)
    random_labels = rng.integers(0, 2, 500)
    assert brier(np.stack([1 - positive, positive], 1), random_labels) == pytest.approx(
        2 * sklearn.metrics.brier_score_loss(random_labels, positive), rel=1e-12)
    # by hand: 2 * mean of (0.1^2, 0.3^2, 0.6^2, 0.8^2) = 2 * 1.1 / 4
    assert brier(proba, labels) == pytest.approx(0.55)


def test_macro_f1_skips_classes_absent_from_labels_and_predictions_like_sklearn():
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]])
    labels = np.array([0, 1, 1, 1])  # class 2 never occurs nor is predicted
    # class 0: tp 1, predicted 2, support 1 -> F1 2/3; class 1: tp 2, predicted 2, support 3 -> F1 4/5
    assert macro_f1(proba, labels) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert macro_f1(proba, labels) == pytest.approx(sklearn.metrics.f1_score(labels, proba.argmax(1), average="macro"))


def test_per_class_matches_sklearn_with_zero_for_undefined():
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]])
    labels = np.array([0, 1, 1, 2])
    table = per_class(proba, labels, ["a", "b", "c"])
    p, r, f, s = sklearn.metrics.precision_recall_fscore_support(
        labels, proba.argmax(1), labels=[0, 1, 2], zero_division=0
    )
    for k, name in enumerate("abc"):
        assert table[name] == pytest.approx({"precision": p[k], "recall": r[k], "f1": f[k], "support": s[k]})
    assert table["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


ECE_PROBA = np.array([[0.9, 0.1], [0.92, 0.08], [0.25, 0.75], [0.3, 0.7], [0.45, 0.55]])
ECE_LABELS = np.array([0, 1, 0, 1, 0])


def test_ece_on_a_hand_computed_example():
    # confidences .9 (right) and .92 (wrong) share bin 13; .75 (wrong) bin 11; .7 (right) bin 10; .55 (wrong) bin 8
    expected = (abs(1 - (0.9 + 0.92)) + abs(0 - 0.75) + abs(1 - 0.7) + abs(0 - 0.55)) / 5
    assert expected == pytest.approx(0.484)
    assert ece(ECE_PROBA, ECE_LABELS) == pytest.approx(expected)
    bins = reliability(ECE_PROBA, ECE_LABELS)
    assert bins["count"][13] == 2 and bins["accuracy"][13] == pytest.approx(0.5)
    assert bins["confidence"][13] == pytest.approx(0.91)
    assert bins["count"][0] == 0 and bins["accuracy"][0] is None and sum(bins["count"]) == 5


def test_confidence_bins_are_right_closed():
    np.testing.assert_array_equal(confidence_bins(np.array([1.0, 0.5, 0.95, 0.0])), [14, 7, 14, 0])
    # with 4 bins the edges are exact in binary: (0, .25], (.25, .5], (.5, .75], (.75, 1]
    np.testing.assert_array_equal(confidence_bins(np.array([0.25, 0.5, 0.75, 1.0, 0.26]), 4), [0, 1, 2, 3, 1])


def test_ece_of_a_perfectly_calibrated_constant_predictor_is_zero():
    proba = np.tile([0.75, 0.25], (8, 1))
    labels = np.array([0, 0, 0, 1, 0, 0, 0, 1])  # right on 6 of 8 rows at confidence 0.75
    assert ece(proba, labels) == pytest.approx(0.0)


def test_summary_is_the_model_card_subset_of_all_metrics():
    assert summary(ECE_PROBA, ECE_LABELS) == {
        "accuracy": pytest.approx(0.4), "log_loss": pytest.approx(log_loss(ECE_PROBA, ECE_LABELS))
    }
    assert list(all_metrics(ECE_PROBA, ECE_LABELS)) == ["accuracy", "macro_f1", "log_loss", "brier", "ece", "auroc"]


# ---------------------------------------------------------------- uncertainty


def test_bootstrap_resamples_equal_direct_recomputation():
    members, fusers, labels, _ = synthetic(n_rows=120)
    probas = {**members, **fusers}
    samples = bootstrap_metrics(probas, labels, n_resamples=6, seed=3)
    counts = np.concatenate(list(resample_counts(len(labels), 6, 3)), axis=1)
    assert counts.shape == (120, 6) and (counts.sum(0) == 120).all()
    for j in range(6):
        rows = np.repeat(np.arange(len(labels)), counts[:, j].astype(int))
        for name, proba in probas.items():
            direct = all_metrics(proba[rows], labels[rows])
            resampled = {metric: values[j] for metric, values in samples[name].items()}
            assert resampled == pytest.approx(direct, rel=1e-6, abs=1e-9)


def test_bootstrap_interval_contains_estimate_narrows_with_rows_and_is_seeded():
    widths = {}
    for n_rows in (200, 5000):
        members, _, labels, _ = synthetic(n_rows=n_rows, n_members=1)
        report = build_report(members, {}, labels, ["a", "b", "c"], n_bootstrap=300, seed=1)
        result = report.model("m0")
        for metric, (lo, hi) in result.ci95.items():
            assert lo <= result.metrics[metric] <= hi, metric
        widths[n_rows] = result.ci95["accuracy"][1] - result.ci95["accuracy"][0]
    assert widths[5000] < widths[200] / 3  # width shrinks like 1/sqrt(rows): about 5x here
    members, _, labels, _ = synthetic(n_rows=200, n_members=1)
    first = bootstrap_metrics(members, labels, 100, seed=7)["m0"]
    again, other = (bootstrap_metrics(members, labels, 100, seed=s)["m0"] for s in (7, 8))
    assert all(np.array_equal(first[m], again[m]) for m in first)
    assert not np.array_equal(first["accuracy"], other["accuracy"])


def test_mcnemar_p_value_is_the_exact_binomial_value():
    # 8 vs 2 discordant rows: p = 2 * P(X <= 2), X ~ Binomial(10, 1/2)
    expected = 2 * sum(comb(10, k) for k in range(3)) / 2**10
    assert expected == pytest.approx(0.109375)
    assert mcnemar_p_value(8, 2) == pytest.approx(expected)
    assert mcnemar_p_value(2, 8) == pytest.approx(expected)
    assert mcnemar_p_value(5, 5) == pytest.approx(1.0)
    assert mcnemar_p_value(0, 0) == 1.0


def test_paired_test_counts_discordant_rows():
    a = np.array([True] * 8 + [False] * 2 + [True] * 5 + [False] * 5)
    b = np.array([False] * 8 + [True] * 2 + [True] * 5 + [False] * 5)
    result = paired_test(a, b)
    assert (result["only_a_correct"], result["only_b_correct"]) == (8, 2)
    assert result["accuracy_delta"] == pytest.approx((13 - 7) / 20)
    assert result["p_value"] == pytest.approx(0.109375)


def test_the_member_alone_candidate_is_not_tested_against_itself():
    members, fusers, labels, _ = synthetic()
    report = build_report(members, {**fusers, "member: m2": members["m2"].copy()}, labels, ["a", "b", "c"],
                          n_bootstrap=50)
    assert report.best_member == "m2" and [t.fuser for t in report.tests] == ["mean", "weighted"]
    assert report.model("member: m2").metrics == report.model("m2").metrics  # still a row of the table


def test_report_tests_each_fuser_against_the_best_member(report):
    assert report.best_member == "m2"
    assert [t.fuser for t in report.tests] == ["mean", "weighted"]
    for test in report.tests:
        assert test.against == "m2" and test.method == "mcnemar"
        fuser, member = report.model(test.fuser), report.model("m2")
        assert test.accuracy_delta == pytest.approx(fuser.metrics["accuracy"] - member.metrics["accuracy"])
        assert test.accuracy_delta == pytest.approx((test.fuser_only_correct - test.member_only_correct) / report.rows)
        assert test.p_value == pytest.approx(mcnemar_p_value(test.fuser_only_correct, test.member_only_correct))
        assert test.accuracy_delta_ci95[0] <= test.accuracy_delta <= test.accuracy_delta_ci95[1]


# ---------------------------------------------------------------- diversity and cost


def test_disagreement_and_error_correlation_on_crafted_predictions():
    labels = np.array([0, 1, 1, 0])
    predictions = np.array([[0, 1, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]])
    assert disagreement(predictions) == [[0.0, 0.25, 0.5], [0.25, 0.0, 0.75], [0.5, 0.75, 0.0]]
    corr = error_correlation(predictions != labels)
    # errors: m0 none (undefined), m1 [0,0,1,0], m2 [1,0,0,1]: cov -1/8, stds sqrt(3)/4 and 1/2
    assert corr[0] == [None, None, None] and corr[1][0] is None
    assert corr[1][2] == pytest.approx(-1 / np.sqrt(3)) and corr[2][1] == corr[1][2]
    assert corr[1][1] == corr[2][2] == 1.0
    probas = {f"m{i}": np.eye(2)[p] for i, p in enumerate(predictions)}
    assert member_diversity(probas, labels)["members"] == ["m0", "m1", "m2"]


def test_undefined_error_correlation_is_noted_in_the_report():
    labels = np.array([0, 1, 1, 0])
    perfect, other = np.eye(2)[labels], np.eye(2)[[0, 1, 0, 0]]
    report = build_report({"perfect": perfect, "other": other}, {}, labels, ["a", "b"], n_bootstrap=10)
    assert report.diversity["error_correlation"][0] == [None, None]
    assert any("perfect" in note and "undefined" in note for note in report.notes)
    assert report.best_fuser is None and report.confusion["model"] == "perfect" and report.tests == []


@pytest.mark.parametrize("n_members", [1, 3, 4])
def test_cost_accuracy_scores_every_non_empty_subset(n_members):
    members, _, labels, _ = synthetic(n_members=n_members)
    points = cost_accuracy(members, labels, {name: float(i + 1) for i, name in enumerate(members)})
    assert len(points) == 2**n_members - 1
    assert {tuple(p["members"]) for p in points} == {tuple(p["members"]) for p in points if p["members"]}
    everything = next(p for p in points if len(p["members"]) == n_members)
    vote = np.mean(list(members.values()), axis=0).argmax(1)
    assert everything["accuracy"] == pytest.approx((vote == labels).mean())
    assert everything["seconds_per_1k"] == pytest.approx(sum(range(1, n_members + 1)))


def test_pareto_front_marks_undominated_points_with_known_cost():
    points = [(1.0, 0.5), (2.0, 0.6), (3.0, 0.55), (None, 0.9), (2.0, 0.6), (1.0, 0.4)]
    assert pareto_front(points) == [True, True, False, False, True, False]


def test_cost_accuracy_falls_back_to_greedy_selection_beyond_eight_members():
    members, _, labels, _ = synthetic(n_members=9, n_rows=100)
    points = cost_accuracy(members, labels, {})
    assert len(points) == 9 + 8  # the single members, then one greedy subset per size from 2 to 9
    assert all(p["seconds_per_1k"] is None and not p["pareto"] for p in points)
    report = build_report(members, {}, labels, ["a", "b", "c"], n_bootstrap=0)
    assert any("greedy" in note for note in report.notes)


def test_seconds_become_per_thousand_rows(report):
    assert report.model("m1").seconds_per_1k == pytest.approx(0.3 * 1000 / 300)
    assert report.model("weighted").seconds_per_1k == pytest.approx(0.002 * 1000 / 300)
    members, fusers, labels, _ = synthetic()
    partial = build_report(members, fusers, labels, ["a", "b", "c"], seconds={"m0": 0.3}, n_bootstrap=0)
    assert partial.model("m0").seconds_per_1k == pytest.approx(1.0) and partial.model("m1").seconds_per_1k is None
    assert all(p["seconds_per_1k"] is None for p in partial.cost_accuracy if "m1" in p["members"])


def test_a_fusers_full_cost_includes_running_every_member(report):
    members_per_1k = sum(report.model(m).seconds_per_1k for m in ("m0", "m1", "m2"))
    assert report.full_seconds_per_1k("m1") == report.model("m1").seconds_per_1k
    assert report.full_seconds_per_1k("weighted") == pytest.approx(members_per_1k + 0.002 * 1000 / 300)
    row = next(line for line in report.to_markdown().splitlines() if "| fuser |" in line and line.startswith("| weighted"))
    assert row.endswith(f"| {members_per_1k + 0.002 * 1000 / 300:.3f} |")  # not the bare combining time


def test_a_pass_two_members_share_is_counted_once_for_fusers_and_subsets():
    """m0 and m1 are two heads on one 0.6 s backbone pass; m2 shares nothing (a plain number: all its own)."""
    members, fusers, labels, _ = synthetic()  # 300 rows: seconds * 10 / 3 per 1,000 rows
    seconds = {"m0": EntryCost(0.03, {"backbone": 0.6}), "m1": EntryCost(0.3, {"backbone": 0.6}), "m2": 0.09,
               "mean": 0.003}
    report = build_report(members, fusers, labels, ["a", "b", "c"], seconds=seconds, n_bootstrap=0)
    assert [report.model(m).seconds_per_1k for m in ("m0", "m1", "m2")] == pytest.approx([2.1, 3.0, 0.3])  # standalone
    cost = {tuple(p["members"]): p["seconds_per_1k"] for p in report.cost_accuracy}
    assert cost[("m0", "m1")] == pytest.approx(3.1)  # (0.03 + 0.3 + 0.6) * 10 / 3, not 2.1 + 3.0
    assert cost[("m0", "m2")] == pytest.approx(2.4) and cost[("m0", "m1", "m2")] == pytest.approx(3.4)
    assert report.full_seconds_per_1k("mean") == pytest.approx(3.41)  # every member once, plus combining
    assert report.full_seconds_per_1k("weighted") == pytest.approx(3.4)  # no time of its own given
    assert Report.from_dict(report.to_dict()).full_seconds_per_1k("mean") == pytest.approx(3.41)
    row = next(line for line in report.to_markdown().splitlines() if line.startswith("| mean | fuser |"))
    assert row.endswith("| 3.410 |")


def test_a_fuser_of_two_heads_on_one_checkpoint_runs_the_backbone_once(bert_encoder_dir, toy_sentiment):
    from fusion import Ensemble, HFEncoder, MeanFuser, MLPHead, TrainConfig

    fast = TrainConfig(learning_rate=1e-2, max_epochs=5, batch_size=32, patience=None, show_progress=False)
    heads = [("mean", torch.nn.Linear(32, 2)), ("cls", MLPHead(hidden=8))]
    members = [HFEncoder(bert_encoder_dir, head=head, pooling=pooling, name=f"{pooling}-head", train_config=fast,
                         show_progress=False) for pooling, head in heads]
    ens = Ensemble(members, fuser=MeanFuser(), labels=["negative", "positive"], cv=2).fit(toy_sentiment["train"])
    report = ens.evaluate(toy_sentiment["validation"], n_bootstrap=0)
    alone = report.model("mean-head").seconds_per_1k + report.model("cls-head").seconds_per_1k
    assert report.full_seconds_per_1k("mean") < alone, "the shared backbone pass was counted once per member"
    assert report.cost_accuracy[-1]["members"] == ["mean-head", "cls-head"]
    assert report.cost_accuracy[-1]["seconds_per_1k"] < alone


def test_permutation_importance_gives_nothing_to_a_member_whose_rows_are_all_alike():
    torch.manual_seed(0)
    informative = torch.randn(400, 1, 2)
    labels = informative[:, 0].argmax(-1).numpy()
    constant = torch.tensor([0.3, -0.3]).expand(400, 1, 2)  # shuffling its rows changes nothing
    outputs = MemberOutputs(torch.cat([informative, constant], 1), ["signal", "constant"])
    fuser = StackingFuser().fit(outputs, labels)
    np.testing.assert_array_equal(permutation_importance(fuser, outputs, labels), [1.0, 0.0])
    noise = MemberOutputs(torch.cat([informative, torch.randn(400, 1, 2)], 1), ["signal", "noise"])
    shares = permutation_importance(StackingFuser().fit(noise, labels), noise, labels, repeats=2, seed=1)
    assert shares[0] > 0.9 and shares.sum() == pytest.approx(1.0)


def test_best_model_ties_break_on_log_loss():
    labels = np.array([0, 1, 0, 1])
    sharp = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.6, 0.4]])
    soft = np.array([[0.6, 0.4], [0.4, 0.6], [0.6, 0.4], [0.6, 0.4]])  # same accuracy, higher log-loss
    report = build_report({"soft": soft, "sharp": sharp}, {}, labels, ["a", "b"], n_bootstrap=0)
    assert report.model("soft").metrics["accuracy"] == report.model("sharp").metrics["accuracy"]
    assert report.best_member == "sharp"


# ---------------------------------------------------------------- report, JSON, renderings


def test_report_json_round_trip_is_exact(report, tmp_path):
    data = json.loads(report.to_json())
    assert data["schema"] == "fusion.report/v1"
    assert list(data)[:6] == ["schema", "title", "split", "rows", "labels", "notes"]
    assert Report.from_dict(data) == report
    paths = report.save(tmp_path / "out")
    assert {p.name for p in paths.values()} == {"report.html", "report.md", "report.json"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json", "report.md"]
    assert Report.load(tmp_path / "out") == report
    assert Report.load(paths["json"]).to_html() == paths["html"].read_text(encoding="utf-8")


def test_report_fields_follow_the_schema(report):
    data = report.to_dict()
    model = data["models"][0]
    assert set(model) == {"name", "kind", "metrics", "ci95", "seconds_per_1k", "per_class", "reliability"}
    assert list(model["metrics"]) == ["accuracy", "macro_f1", "log_loss", "brier", "ece", "auroc"]
    assert list(data["metric_info"]) == list(model["metrics"])
    assert data["metric_info"]["log_loss"] == {"header": "log-loss", "higher_is_better": False,
                                               "description": "natural log", "interval": "percentile"}
    assert set(model["ci95"]) == set(model["metrics"])
    assert [m["kind"] for m in data["models"]] == ["member"] * 3 + ["fuser"] * 2
    assert data["weights"] == {"weighted": pytest.approx({"m0": 1 / 6, "m1": 2 / 6, "m2": 3 / 6})}
    assert data["weights_method"] == {"weighted": "weights"}
    assert data["confusion"]["model"] == data["best_fuser"]
    assert np.array(data["confusion"]["matrix"]).sum() == data["rows"]
    assert len(data["cost_accuracy"]) == 7 and any(p["pareto"] for p in data["cost_accuracy"])
    assert data["bootstrap"] == {"resamples": 200, "seed": 0, "level": 0.95}


def test_from_dict_refuses_other_documents(report):
    with pytest.raises(PersistenceError, match="not a fusion.report/v1 report"):
        Report.from_dict({"schema": "something/v9"})
    incomplete = report.to_dict()
    del incomplete["models"]
    with pytest.raises(PersistenceError, match="incomplete"):
        Report.from_dict(incomplete)


def test_save_refuses_unknown_formats(report, tmp_path):
    with pytest.raises(ConfigError, match="valid ones"):
        report.save(tmp_path, formats=("pdf",))


def test_html_is_self_contained_with_every_section_and_valid_pngs(report):
    backend = matplotlib.get_backend()
    pyplot_before = "matplotlib.pyplot" in sys.modules
    page = report.to_html()
    for section in SECTION_IDS:
        assert f'id="{section}"' in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 6  # metrics, reliability, confusion, weights, disagreement, cost
    assert all(base64.b64decode(image).startswith(PNG_SIGNATURE) for image in images)
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert matplotlib.get_backend() == backend
    assert pyplot_before or "matplotlib.pyplot" not in sys.modules


def test_html_escapes_caller_text():
    members, fusers, labels, _ = synthetic()
    hostile = "<script>alert(1)</script>"
    report = build_report(members, fusers, labels, ["a", hostile, "c"], title=hostile, notes=[hostile],
                          n_bootstrap=0)
    page = report.to_html()
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "No confidence intervals" in page


def test_markdown_has_the_metric_table_and_notes(report):
    text = report.to_markdown()
    assert "| model | kind | accuracy | macro-F1 | log-loss | Brier (sum over classes) | ECE | AUROC | s / 1k rows |" in text
    assert "Higher is better: accuracy, macro-F1, AUROC. Lower is better: log-loss, Brier (sum over classes), ECE." in text
    m2 = report.model("m2")
    lo, hi = m2.ci95["accuracy"]
    assert f"| m2 (best) | member | {m2.metrics['accuracy']:.4f} [{lo:.4f}, {hi:.4f}] |" in text
    assert "> - fusers scored in-sample" in text
    for heading in ("## Metrics", "## Fusers against the best member", "## Per-class metrics", "## Member diversity"):
        assert heading in text


def test_the_report_and_model_card_say_which_brier_score(report, toy_sentiment, tmp_path):
    from helpers import tfidf_member

    from fusion import Ensemble
    from fusion.fusers import MeanFuser

    definition = ("Brier (sum over classes): mean over rows of the sum over classes of (p - onehot)^2, in [0, 2]; "
                  "with two classes twice scikit-learn's brier_score_loss.")
    for text in (report.to_markdown(), report.to_html()):
        assert definition.replace("'", "&#x27;") in text or definition in text
        assert "| Brier |" not in text and "<th>Brier</th>" not in text
    assert "<th>Brier (sum over classes)</th>" in report.to_html()
    ens = Ensemble([tfidf_member("a"), tfidf_member("b")], fuser=MeanFuser(), labels=["negative", "positive"])
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    ens.save_pretrained(tmp_path / "ens")
    card = (tmp_path / "ens" / "README.md").read_text()
    assert "| Brier (sum over classes) |" in card and definition in card


def test_multiclass_report_has_per_class_metrics_for_every_model():
    report = make_report(n_classes=4)
    members, fusers, labels, _ = synthetic(n_classes=4)
    for name, proba in {**members, **fusers}.items():
        table = report.model(name).per_class
        assert list(table) == ["label0", "label1", "label2", "label3"]
        f1 = sklearn.metrics.f1_score(labels, proba.argmax(1), average=None, labels=range(4))
        assert [table[label]["f1"] for label in table] == pytest.approx(f1)
        assert sum(table[label]["support"] for label in table) == 300
    assert "label3" in report.to_markdown() and 'id="per-class"' in report.to_html()


def test_binary_report():
    report = make_report(n_classes=2, n_bootstrap=100)
    members, _, labels, _ = synthetic(n_classes=2)
    m0 = report.model("m0")
    assert m0.metrics["brier"] == pytest.approx(2 * sklearn.metrics.brier_score_loss(labels, members["m0"][:, 1]))
    assert m0.metrics["macro_f1"] == pytest.approx(
        sklearn.metrics.f1_score(labels, members["m0"].argmax(1), average="macro")
    )
    assert np.array(report.confusion["matrix"]).shape == (2, 2)


def test_without_bootstrap_there_are_no_intervals():
    report = make_report(n_bootstrap=0)
    assert all(m.ci95 == {} for m in report.models)
    assert all(t.accuracy_delta_ci95 is None for t in report.tests)
    assert Report.from_dict(json.loads(report.to_json())) == report
    m0_row = next(line for line in report.to_markdown().splitlines() if line.startswith("| m0 |"))
    assert "[" not in m0_row and f"{report.model('m0').metrics['accuracy']:.4f}" in m0_row


# ---------------------------------------------------------------- bad input

GOOD = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
LABELS = np.array([0, 1, 1])


@pytest.mark.parametrize(
    ("members", "fusers", "labels", "names", "extra", "error", "match"),
    [
        ({"a": GOOD[:2]}, {}, LABELS, ["x", "y"], {}, MemberOutputError, "member 'a': 2 rows .* but 3 labels"),
        ({"a": GOOD * 1.1}, {}, LABELS, ["x", "y"], {}, MemberOutputError, "sum to 1.1, not 1"),
        ({"a": np.log(GOOD)}, {}, LABELS, ["x", "y"], {}, MemberOutputError, "negative probability"),
        ({"a": GOOD}, {"f": GOOD[:, :1]}, LABELS, ["x", "y"], {}, MemberOutputError, "fuser 'f': 1 classes"),
        ({"a": np.where(GOOD == 0.5, np.nan, GOOD)}, {}, LABELS, ["x", "y"], {}, MemberOutputError, "NaN"),
        ({"a": GOOD[0]}, {}, LABELS, ["x", "y"], {}, MemberOutputError, r"must be \[rows, classes\]"),
        ({"a": GOOD}, {}, np.array([0, 2, 1]), ["x", "y"], {}, DataError, "label 2 at row 1 is out of range"),
        ({"a": GOOD}, {}, np.array([0, -1, 1]), ["x", "y"], {}, DataError, "out of range"),
        ({"a": GOOD[:0]}, {}, LABELS[:0], ["x", "y"], {}, DataError, "labels are empty"),
        ({"a": GOOD}, {}, np.array([0.0, 1.0, 1.0]), ["x", "y"], {}, DataError, "integer class ids"),
        ({"a": GOOD}, {}, LABELS[:, None], ["x", "y"], {}, DataError, "1-D"),
        ({}, {"f": GOOD}, LABELS, ["x", "y"], {}, DataError, "at least one member"),
        ({"a": GOOD}, {"a": GOOD}, LABELS, ["x", "y"], {}, DataError, "both a member and a fuser"),
        ({"a": GOOD}, {}, LABELS, ["x"], {}, DataError, "at least two label names"),
        ({"a": GOOD}, {}, LABELS, ["x", "x"], {}, DataError, "distinct"),
        ({"a": GOOD}, {}, LABELS, ["x", "y"], {"seconds": {"b": 1.0}}, DataError, "unknown model 'b'"),
        ({"a": GOOD}, {}, LABELS, ["x", "y"], {"seconds": {"a": -1.0}}, DataError, "non-negative"),
        ({"a": GOOD}, {"f": GOOD}, LABELS, ["x", "y"], {"member_weights": {"g": {"a": 1.0}}}, DataError,
         "unknown fuser 'g'"),
        ({"a": GOOD}, {"f": GOOD}, LABELS, ["x", "y"], {"member_weights": {"f": {"b": 1.0}}}, DataError,
         r"unknown members \['b'\]"),
        ({"a": GOOD}, {"f": GOOD}, LABELS, ["x", "y"], {"member_weights": {"f": {"a": 1.0}},
                                                        "weights_method": {"f": "guess"}}, DataError,
         "weight methods must be one of"),
        ({"a": GOOD}, {}, LABELS, ["x", "y"], {"n_bootstrap": -1}, ConfigError, "n_bootstrap"),
    ],
    ids=["rows", "sum", "logits", "classes", "nan", "1d-proba", "label-high", "label-negative", "empty",
         "float-labels", "2d-labels", "no-members", "name-clash", "one-label", "duplicate-labels",
         "seconds-unknown", "seconds-negative", "weights-fuser", "weights-member", "weights-method", "bootstrap"],
)
def test_bad_input_is_refused_with_a_clear_message(members, fusers, labels, names, extra, error, match):
    with pytest.raises(error, match=match):
        build_report(members, fusers, labels, names, **extra)


def test_metric_functions_refuse_mismatched_rows():
    with pytest.raises(MemberOutputError, match="2 rows of probabilities but 3 labels"):
        accuracy(GOOD[:2], LABELS)
    with pytest.raises(DataError, match="out of range"):
        log_loss(GOOD, np.array([0, 1, 5]))


# ---------------------------------------------------------------- ECE's interval: basic bootstrap


def binary_scores(seed: int, sharpen: float, n: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """Two classes whose score d ~ N(+-1.5, 2) has true log-odds 1.5 d: probabilities from ``sharpen * d``
    are calibrated at 1.5 and overconfident above it."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    d = rng.normal(1.5, np.sqrt(2), n) * np.where(labels == 1, 1, -1)
    positive = 1 / (1 + np.exp(-sharpen * d))
    return np.stack([1 - positive, positive], 1), labels


def test_ece_interval_is_the_basic_bootstrap_one_and_contains_the_estimate():
    proba, labels = binary_scores(seed=3, sharpen=1.7)  # mildly overconfident, 800 rows
    report = build_report({"m": proba}, {}, labels, ["neg", "pos"], n_bootstrap=1000, seed=0)
    value, (lo, hi) = report.model("m").metrics["ece"], report.model("m").ci95["ece"]
    samples = bootstrap_metrics({"m": proba}, labels, 1000, 0)["m"]["ece"]
    assert 0.04 < (samples < value).mean() < 0.07  # the estimate sits low among its resamples (ECE is biased up)
    q_lo, q_hi = np.percentile(samples, [2.5, 97.5])
    assert q_lo < value < q_lo + 0.1 * (q_hi - q_lo)  # so the percentile interval sits above it
    assert (lo, hi) == pytest.approx((max(2 * value - q_hi, 0.0), 2 * value - q_lo), rel=1e-12)
    assert lo <= value <= hi and (lo + hi) / 2 < value  # the basic interval moves down by the estimated bias
    text = "95% bootstrap intervals from 1000 resamples of the rows (seed 0) in brackets: percentile bootstrap, " \
           "except ECE: basic (reverse-percentile) bootstrap."
    assert text in report.to_markdown()
    assert report.metric_info["ece"]["interval"] == "basic" and report.metric_info["accuracy"]["interval"] == "percentile"


def test_ece_interval_reaches_the_true_value_of_a_calibrated_model_where_the_percentile_one_cannot():
    basic = percentile = 0
    for seed in range(10):  # labels drawn from the probabilities: the true ECE is 0
        rng = np.random.default_rng(seed)
        positive = rng.beta(0.6, 0.6, 800)
        proba, labels = np.stack([1 - positive, positive], 1), (rng.random(800) < positive).astype(int)
        report = build_report({"m": proba}, {}, labels, ["neg", "pos"], n_bootstrap=200, seed=seed)
        basic += report.model("m").ci95["ece"][0] == 0.0
        samples = bootstrap_metrics({"m": proba}, labels, 200, seed)["m"]["ece"]
        percentile += np.percentile(samples, 2.5) <= 0.0
    assert percentile == 0 and basic >= 5


# ---------------------------------------------------------------- public metric functions refuse logits as build_report does

PUBLIC_METRICS = {
    "accuracy": accuracy, "macro_f1": macro_f1, "log_loss": log_loss, "brier": brier, "ece": ece,
    "auroc": auroc,
    "all_metrics": all_metrics, "summary": summary, "confusion_matrix": confusion_matrix,
    "reliability": reliability, "per_class": lambda p, y: per_class(p, y, ["x", "y", "z"]),
}
LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 1.3, -0.4], [-2.0, 0.3, 1.1]])  # negative, rows not summing to one
SCORES = np.array([[2.0, 1.0, 0.5], [0.1, 1.3, 0.4], [0.2, 0.3, 1.1]])  # non-negative, rows not summing to one


@pytest.mark.parametrize("scores", [LOGITS, SCORES], ids=["logits", "scores"])
@pytest.mark.parametrize("name", PUBLIC_METRICS)
def test_public_metric_functions_refuse_logits_like_build_report(name, scores):
    labels = np.array([0, 1, 2])
    with pytest.raises(MemberOutputError) as report_error:
        build_report({"probabilities": scores}, {}, labels, ["x", "y", "z"], n_bootstrap=0)
    with pytest.raises(MemberOutputError) as metric_error:
        PUBLIC_METRICS[name](scores, labels)
    expected = str(report_error.value).replace("member 'probabilities'", "probabilities")
    assert str(metric_error.value) == expected
    assert "not logits" in expected


# ---------------------------------------------------------------- plots and title name everything in full

LONG_MEMBERS = ["minilm-cls-mlp-classifier-head", "minilm-mean-linear-classifier", "tfidf-logreg"]


def long_named_report() -> Report:
    members, fusers, labels, _ = synthetic()
    members = dict(zip(LONG_MEMBERS, members.values(), strict=True))
    return build_report(members, fusers, labels, ["label0", "label1", "label2"], n_bootstrap=50,
                        seconds={LONG_MEMBERS[0]: 3.7, LONG_MEMBERS[1]: 3.7, LONG_MEMBERS[2]: 0.02,
                                 "mean": 0.01, "weighted": 0.01}, split="test", data_name="glue/sst2")


def svg_text(svg: bytes) -> str:
    """The SVG's text elements, joined (lines of a wrapped label become one string again)."""
    return "".join(re.findall(r"<text[^>]*>([^<]*)</text>", svg.decode()))


def test_plots_name_every_member_in_full_and_tell_members_from_fusers():
    from fusion.evaluation import plots

    report = long_named_report()
    models = report.models
    intervals = svg_text(plots.metric_intervals_png([m.name for m in models], [m.kind for m in models],
                                                    [m.metrics["accuracy"] for m in models],
                                                    [m.ci95.get("accuracy") for m in models], fmt="svg"))
    assert all(name in intervals for name in LONG_MEMBERS) and "…" not in intervals
    assert "members" in intervals and "fusers" in intervals
    fusers = [(f.name, f.metrics["accuracy"], report.full_seconds_per_1k(f.name)) for f in report.fusers]
    cost = svg_text(plots.cost_png(report.cost_accuracy, fusers, fmt="svg"))
    front = [p for p in report.cost_accuracy if p["pareto"]]
    assert len(front) >= 2 and any(len(p["members"]) >= 2 for p in front)
    for rank, point in enumerate(sorted(front, key=lambda p: (p["seconds_per_1k"], p["accuracy"])), 1):
        assert f"{rank}: {' + '.join(point['members'])}" in cost  # each Pareto point names its members
    assert not re.search(r"\d+ members", cost)  # no point labelled only by its size
    assert "fuser: mean" in cost and "members: soft vote of a subset" in cost
    weights = svg_text(plots.weights_png({"weighted": {m: 1 / 3 for m in LONG_MEMBERS}}, LONG_MEMBERS, fmt="svg"))
    assert all(name in weights for name in LONG_MEMBERS)
    heat = svg_text(plots.disagreement_png(LONG_MEMBERS, report.diversity["disagreement"],
                                           report.diversity["error_correlation"], fmt="svg"))
    assert all(name in heat for name in LONG_MEMBERS)


def test_report_title_names_the_ensemble_and_the_data():
    report = long_named_report()
    expected = ("Ensemble of minilm-cls-mlp-classifier-head + minilm-mean-linear-classifier + tfidf-logreg, "
                "fused by mean, weighted, on glue/sst2 (test split)")
    assert report.title == expected
    assert f"<h1>{expected}</h1>" in report.to_html() and report.to_markdown().startswith(f"# {expected}\n")
    members, _, labels, _ = synthetic()
    assert build_report(members, {}, labels, ["a", "b", "c"], n_bootstrap=0).title == \
        "Ensemble of m0 + m1 + m2, on the validation split"


def test_evaluate_takes_the_data_name_and_split_from_a_hugging_face_dataset(toy_sentiment):
    datasets = pytest.importorskip("datasets")
    from helpers import tfidf_member

    from fusion import Ensemble, evaluate
    from fusion.fusers import MeanFuser

    ens = Ensemble([tfidf_member("a"), tfidf_member("b")], fuser=MeanFuser(), labels=["negative", "positive"])
    ens.fit(toy_sentiment["train"], toy_sentiment["validation"])
    info = datasets.DatasetInfo(dataset_name="toy_reviews", config_name="plain")
    data = datasets.Dataset.from_dict(dict(toy_sentiment["validation"]), info=info, split="test")
    report = evaluate(ens, None, data, n_bootstrap=0)
    assert report.title == "Ensemble of a + b, fused by mean, on toy_reviews/plain (test split)"
    assert report.split == "test"


def test_the_fit_report_and_ensemble_evaluate_name_the_dataset(toy_sentiment):
    datasets = pytest.importorskip("datasets")
    from helpers import tfidf_member

    from fusion import Ensemble
    from fusion.fusers import MeanFuser

    info = datasets.DatasetInfo(dataset_name="toy_reviews")
    validation = datasets.Dataset.from_dict(dict(toy_sentiment["validation"]), info=info, split="validation")
    ens = Ensemble([tfidf_member("a"), tfidf_member("b")], fuser=MeanFuser(), labels=["negative", "positive"])
    ens.fit(toy_sentiment["train"], validation)
    assert ens.report_.title == "Ensemble of a + b, fused by mean, on toy_reviews (validation split)"
    assert ens.evaluate(validation, n_bootstrap=0).title == ens.report_.title
