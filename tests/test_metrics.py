"""Tests of the metric table (fusion.evaluation.metrics.METRICS): AUROC against scikit-learn, bootstrap
intervals unchanged by the table, metrics registered at run time reaching every rendering, and reports
written before the table still loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sklearn.metrics
from test_evaluation import make_report, synthetic

from fusion.errors import ConfigError, UnknownNameError
from fusion.evaluation import (
    METRICS,
    Metric,
    Report,
    auroc,
    build_report,
    register_metric,
    uncertainty,
    unregister_metric,
)
from fusion.evaluation.metrics import ACCURACY, LOG_LOSS, mean_total
from fusion.evaluation.uncertainty import bootstrap_metrics

ORIGINAL = ("accuracy", "macro_f1", "log_loss", "brier", "ece")  # the metrics reports had before the table

# ---------------------------------------------------------------- bootstrap values from before the metric table

# make_report() (3 classes, 300 rows, 200 resamples, seed 0) with the code of commit 9bbffa5: per model, the 95%
# intervals of ORIGINAL in order; then each fuser's paired interval of the accuracy difference.
GOLDEN_CI95 = {
    "m0": [[0.47983333333333333, 0.5833333333333334], [0.47141445740943383, 0.5734966198414081],
           [0.900800192534004, 1.0591260121432444], [0.5229463293981669, 0.6236040985859205],
           [0.08154267418524251, 0.15942004514997826]],
    "m1": [[0.6365833333333334, 0.7401666666666668], [0.6320434524206453, 0.7397421177160634],
           [0.642283196443667, 0.7646823868068654], [0.3727163920496143, 0.4598669297741329],
           [0.05407297409822545, 0.13226510901190341]],
    "m2": [[0.8033333333333333, 0.8833333333333333], [0.8039176238963469, 0.8828491044947724],
           [0.425997139783488, 0.5278688083937937], [0.22814618317342603, 0.30076264514131595],
           [0.09270423282682896, 0.16426167944570386]],
    "mean": [[0.84325, 0.92], [0.8395769798944178, 0.918596455402993],
             [0.5663610973101821, 0.6259024173941962], [0.29830873933784396, 0.34419325949501534],
             [0.26900624828537306, 0.33476747217277686]],
    "weighted": [[0.8699166666666667, 0.93675], [0.8698477769081644, 0.9350594323822539],
                 [0.5047809469920482, 0.5668045867027908], [0.25788061763063586, 0.3038662279218367],
                 [0.25540961941207446, 0.3183772006382545]],
}
GOLDEN_DELTA_CI95 = {"mean": [-0.010083333333333328, 0.08333333333333326],
                     "weighted": [0.033333333333333326, 0.08999999999999997]}
# Sums over every resample of every model of each metric of ORIGINAL, same commit: a binary case, and a case
# drawn in many chunks (_CHUNK_CELLS = 1000: three resamples per chunk).
GOLDEN_SUMS = {
    "binary": [324.8266666666668, 324.02005844517794, 180.51608962890128, 113.88810648441176, 52.38004106737672],
    "chunked": [194.77333333333323, 194.5336656927824, 159.6514324125741, 89.63358371805525, 45.19260196857154],
}


def test_bootstrap_intervals_of_the_original_metrics_are_unchanged():
    """The resamples are unchanged; ECE's interval is now the basic one formed from the same percentiles."""
    report = make_report()
    for model, intervals in GOLDEN_CI95.items():
        ci95, ece = report.model(model).ci95, report.model(model).metrics["ece"]
        lo, hi = intervals[ORIGINAL.index("ece")]
        expected = [[max(2 * ece - hi, 0.0), max(2 * ece - lo, 0.0)] if m == "ece" else interval
                    for m, interval in zip(ORIGINAL, intervals, strict=True)]
        np.testing.assert_allclose([ci95[m] for m in ORIGINAL], expected, rtol=1e-12, atol=0)
    for test in report.tests:
        np.testing.assert_allclose(test.accuracy_delta_ci95, GOLDEN_DELTA_CI95[test.fuser], rtol=1e-12, atol=0)


@pytest.mark.parametrize(("case", "rows", "classes", "members", "resamples", "seed", "chunk_cells"),
                         [("binary", 150, 2, 2, 100, 11, None), ("chunked", 300, 3, 3, 50, 3, 1000)])
def test_bootstrap_samples_of_the_original_metrics_are_unchanged(
    monkeypatch, case, rows, classes, members, resamples, seed, chunk_cells
):
    if chunk_cells:
        monkeypatch.setattr(uncertainty, "_CHUNK_CELLS", chunk_cells)
    member_proba, fusers, labels, _ = synthetic(n_rows=rows, n_classes=classes, n_members=members,
                                                seed=5 if case == "binary" else 3)
    samples = bootstrap_metrics({**member_proba, **fusers}, labels, resamples, seed)
    sums = [sum(s[m].sum() for s in samples.values()) for m in ORIGINAL]
    np.testing.assert_allclose(sums, GOLDEN_SUMS[case], rtol=1e-12, atol=0)


# ---------------------------------------------------------------- AUROC


@pytest.mark.parametrize("n_classes", [2, 3])
def test_auroc_equals_sklearn_on_random_data(n_classes):
    rng = np.random.default_rng(n_classes)
    proba = rng.dirichlet(np.ones(n_classes), size=400)
    proba[:50] = np.round(proba[:50], 1)  # some tied scores
    proba /= proba.sum(1, keepdims=True)
    labels = rng.integers(0, n_classes, 400)
    expected = (sklearn.metrics.roc_auc_score(labels, proba[:, 1]) if n_classes == 2
                else sklearn.metrics.roc_auc_score(labels, proba, multi_class="ovr", average="macro"))
    assert auroc(proba, labels) == pytest.approx(expected, rel=1e-12)


def test_auroc_leaves_out_classes_absent_from_the_labels():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(3), size=200)
    labels = rng.integers(0, 2, 200)  # class 2 never occurs: it has no AUROC of its own
    per_class = [sklearn.metrics.roc_auc_score(labels == k, proba[:, k]) for k in (0, 1)]
    assert auroc(proba, labels) == pytest.approx(np.mean(per_class), rel=1e-12)


@pytest.mark.parametrize("proba", [np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])])
def test_auroc_is_undefined_with_one_class_among_the_labels(proba):
    assert auroc(proba, np.array([1, 1])) is None


def test_auroc_interval_contains_the_estimate():
    report = make_report(n_bootstrap=300)
    for model in report.models:
        lo, hi = model.ci95["auroc"]
        assert lo <= model.metrics["auroc"] <= hi and 0.5 < lo < hi <= 1.0, model.name


def test_auroc_undefined_on_some_resamples_keeps_report_valid():
    labels = np.array([0, 0, 0, 0, 1])  # many resamples of 5 rows miss the only positive
    proba = np.array([[0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.4, 0.6], [0.3, 0.7]])
    samples = bootstrap_metrics({"m": proba}, labels, 200, seed=0)["m"]["auroc"]
    assert np.isnan(samples).any() and not np.isnan(samples).all()
    report = build_report({"m": proba}, {}, labels, ["a", "b"], n_bootstrap=200)
    lo, hi = report.model("m").ci95["auroc"]
    assert lo <= report.model("m").metrics["auroc"] <= hi
    single = build_report({"m": proba}, {}, np.zeros(5, dtype=int), ["a", "b"], n_bootstrap=50)
    assert single.model("m").metrics["auroc"] is None and "auroc" not in single.model("m").ci95
    assert Report.from_dict(json.loads(single.to_json())) == single
    row = next(line for line in single.to_markdown().splitlines() if line.startswith("| m (best) |"))
    assert row.split(" | ")[-2] == "n/a"  # the AUROC column, before seconds


# ---------------------------------------------------------------- the table


def _mean_confidence_rows(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return proba.max(1)[:, None]


TOYS = [
    Metric("mean_confidence", "toy mean", True, "average max probability",
           rows=_mean_confidence_rows, total=mean_total),
    Metric("median_confidence", "toy median", True, whole=lambda proba, labels: np.median(proba.max(1))),
]


@pytest.fixture(params=TOYS, ids=["decomposable", "whole-sample"])
def toy(request):
    metric = register_metric(request.param)
    yield metric
    unregister_metric(metric.name)


def test_a_registered_metric_reaches_every_part_of_the_report(toy):
    members, fusers, labels, _ = synthetic()
    report = build_report(members, fusers, labels, ["a", "b", "c"], n_bootstrap=50)
    data = json.loads(report.to_json())
    assert list(data["metric_info"])[-1] == toy.name and data["metric_info"][toy.name]["header"] == toy.header
    m0 = report.model("m0")
    assert m0.metrics[toy.name] == pytest.approx(toy(members["m0"], labels))
    assert m0.ci95[toy.name][0] <= m0.metrics[toy.name] <= m0.ci95[toy.name][1]
    text = report.to_markdown()
    assert f"| AUROC | {toy.header} | s / 1k rows |" in text and f"Higher is better: accuracy, macro-F1, AUROC, {toy.header}." in text
    assert f"<th>{toy.header}</th>" in report.to_html()
    assert Report.from_dict(data).to_markdown() == text


def test_a_removed_metric_leaves_new_reports(toy):
    unregister_metric(toy.name)
    try:
        report = make_report(n_bootstrap=10)
        assert toy.name not in report.metric_info and toy.header not in report.to_markdown()
    finally:
        register_metric(toy)


def test_samples_of_a_whole_sample_metric_are_the_metric_on_each_resample():
    members, _, labels, _ = synthetic(n_rows=60)
    samples = bootstrap_metrics(members, labels, 4, seed=2)
    counts = np.concatenate(list(uncertainty.resample_counts(60, 4, 2)), axis=1)
    for j in range(4):
        rows = np.repeat(np.arange(60), counts[:, j].astype(int))
        for name, proba in members.items():
            assert samples[name]["auroc"][j] == auroc(proba[rows], labels[rows])


@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (lambda: register_metric(METRICS["brier"]), ConfigError, "already in the table"),
        (lambda: unregister_metric("accuracy"), ConfigError, "rank models by accuracy and log_loss"),
        (lambda: unregister_metric("aurco"), UnknownNameError, "Did you mean 'auroc'"),
        (lambda: Metric("x", "x", True), ConfigError, "either rows and total .* or whole"),
        (lambda: Metric("x", "x", True, rows=_mean_confidence_rows), ConfigError, "either rows and total"),
        (lambda: Metric("x", "x", True, rows=_mean_confidence_rows, total=mean_total, whole=np.mean), ConfigError,
         "not both"),
    ],
    ids=["duplicate", "ranking-metric", "unknown", "no-definition", "rows-without-total", "both"],
)
def test_table_misuse_is_refused(action, error, match):
    with pytest.raises(error, match=match):
        action()
    assert list(METRICS) == ["accuracy", "macro_f1", "log_loss", "brier", "ece", "auroc"]


def test_sort_key_puts_the_better_value_first():
    assert sorted([0.7, None, 0.9], key=ACCURACY.sort_key) == [0.9, 0.7, None]
    assert sorted([0.7, 0.3], key=LOG_LOSS.sort_key) == [0.3, 0.7]


# ---------------------------------------------------------------- reports written before the metric table

# build_report({"a": a}, {"mean": (a + b) / 2}, [0, 1, 1], ["neg", "pos"], n_bootstrap=10, seconds={"a": 0.01})
# written by commit 9bbffa5: no "metric_info", no "auroc".
REPORT_BEFORE_METRIC_TABLE = (
    '{"schema":"fusion.report/v1","title":"fusion evaluation","split":"validation","rows":3,"labels":["neg","'
    'pos"],"notes":[],"bootstrap":{"resamples":10,"seed":0,"level":0.95},"ece_bins":15,"models":[{"name":"a",'
    '"kind":"member","metrics":{"accuracy":0.6666666666666666,"macro_f1":0.6666666666666666,"log_loss":0.4987'
    '0307570903244,"brier":0.3266666666666667,"ece":0.3666666666666667},"ci95":{"accuracy":[0.333333333333333'
    '3,1.0],"macro_f1":[0.25,1.0],"log_loss":[0.2231435513142097,0.7197372814488416],"brier":[0.0800000000000'
    '0007,0.5325000000000001],"ece":[0.20000000794728598,0.49250001919766273]},"seconds_per_1k":3.33333333333'
    '33335,"per_class":{"neg":{"precision":0.5,"recall":1.0,"f1":0.6666666666666666,"support":1},"pos":{"prec'
    'ision":1.0,"recall":0.5,"f1":0.6666666666666666,"support":2}},"reliability":{"count":[0,0,0,0,0,0,0,0,1,'
    '0,1,1,0,0,0],"confidence":[null,null,null,null,null,null,null,null,0.6,null,0.7,0.8,null,null,null],"acc'
    'uracy":[null,null,null,null,null,null,null,null,0.0,null,1.0,1.0,null,null,null]}},{"name":"mean","kind"'
    ':"fuser","metrics":{"accuracy":1.0,"macro_f1":1.0,"log_loss":0.3925518320028542,"brier":0.22166666666666'
    '668,"ece":0.31666666666666665},"ci95":{"accuracy":[1.0,1.0],"macro_f1":[1.0,1.0],"log_loss":[0.348041367'
    '7946799,0.5174496484833244],"brier":[0.18000000000000005,0.32999999999999996],"ece":[0.28333333134651184'
    ',0.399999996026357]},"seconds_per_1k":null,"per_class":{"neg":{"precision":1.0,"recall":1.0,"f1":1.0,"su'
    'pport":1},"pos":{"precision":1.0,"recall":1.0,"f1":1.0,"support":2}},"reliability":{"count":[0,0,0,0,0,0'
    ',0,0,1,0,1,1,0,0,0],"confidence":[null,null,null,null,null,null,null,null,0.55,null,0.7,0.8,null,null,nu'
    'll],"accuracy":[null,null,null,null,null,null,null,null,1.0,null,1.0,1.0,null,null,null]}}],"best_member'
    '":"a","best_fuser":"mean","tests":[{"fuser":"mean","against":"a","method":"mcnemar","p_value":1.0,"accur'
    'acy_delta":0.33333333333333337,"accuracy_delta_ci95":[0.0,0.6666666666666667],"fuser_only_correct":1,"me'
    'mber_only_correct":0}],"diversity":{"members":["a"],"disagreement":[[0.0]],"error_correlation":[[1.0]]},'
    '"weights":{},"weights_method":{},"cost_accuracy":[{"members":["a"],"accuracy":0.6666666666666666,"second'
    's_per_1k":3.3333333333333335,"pareto":true}],"confusion":{"model":"mean","matrix":[[1,0],[0,2]]}}'
)


def test_a_report_written_before_the_metric_table_loads_and_renders(tmp_path):
    (tmp_path / "report.json").write_text(REPORT_BEFORE_METRIC_TABLE, encoding="utf-8")
    report = Report.load(tmp_path)
    assert list(report.metric_info) == list(ORIGINAL)
    assert report.metric_info["brier"] == METRICS["brier"].info()
    text = report.to_markdown()
    assert "| model | kind | accuracy | macro-F1 | log-loss | Brier (sum over classes) | ECE | s / 1k rows |" in text
    assert "| a (best) | member | 0.6667 [0.3333, 1.0000] |" in text and "AUROC" not in text
    assert Report.from_dict(json.loads(report.to_json())) == report
    assert 'id="metrics"' in report.to_html()


def test_a_report_with_a_metric_no_longer_in_the_table_renders_its_name():
    data = json.loads(REPORT_BEFORE_METRIC_TABLE)
    for model in data["models"]:
        model["metrics"]["retired"] = 0.5
    report = Report.from_dict(data)
    assert report.metric_info["retired"] == {"header": "retired", "higher_is_better": None, "description": ""}
    assert "| ECE | retired | s / 1k rows |" in report.to_markdown()


def test_a_stored_report_whose_brier_header_was_ambiguous_shows_which_brier_score():
    data = json.loads(REPORT_BEFORE_METRIC_TABLE)
    data["metric_info"] = {name: {**METRICS[name].info(), "header": "Brier" if name == "brier" else METRICS[name].header}
                           for name in ORIGINAL}
    report = Report.from_dict(data)
    assert report.metric_info["brier"]["header"] == "Brier (sum over classes)"
    assert "| Brier (sum over classes) |" in report.to_markdown()


# ---------------------------------------------------------------- point estimates from scikit-learn, bootstrap path


def _awkward_cases():
    """Random probabilities with ties, a class absent from the labels, a class never predicted, two classes."""
    rng = np.random.default_rng(7)
    for n_classes, absent in ((2, None), (3, None), (4, 3), (5, 0)):
        proba = rng.dirichlet(np.ones(n_classes) * 0.7, size=257)
        proba[:40] = np.round(proba[:40], 1)
        proba /= proba.sum(1, keepdims=True)
        labels = rng.integers(0, n_classes, 257)
        if absent is not None:
            labels[labels == absent] = (absent + 1) % n_classes
            proba[:, absent] *= 0.01  # almost never predicted either
            proba /= proba.sum(1, keepdims=True)
        yield proba, labels


@pytest.mark.parametrize("name", list(METRICS))
def test_every_metrics_bootstrap_path_equals_its_point_estimate(name):
    """What the bootstrap computes on each resample (rows/total or whole) is the metric reported as the point
    estimate (scikit-learn's where it has the definition), so intervals are around the same quantity."""
    metric = METRICS[name]
    for proba, labels in _awkward_cases():
        point, resampled = metric(proba, labels), metric.resampled_value(proba, labels)
        assert (point is None) == (resampled is None)
        assert resampled == pytest.approx(point, rel=1e-12, abs=1e-15), (name, proba.shape[1])


@pytest.mark.parametrize(("name", "expected"), [
    ("accuracy", lambda p, y: sklearn.metrics.accuracy_score(y, p.argmax(1))),
    ("macro_f1", lambda p, y: sklearn.metrics.f1_score(y, p.argmax(1), average="macro", zero_division=0.0)),
    ("brier", lambda p, y: sklearn.metrics.brier_score_loss(y, p, labels=range(p.shape[1]), scale_by_half=False)),
])
def test_point_estimates_are_scikit_learns_where_the_definition_is_the_same(name, expected):
    for proba, labels in _awkward_cases():
        assert METRICS[name](proba, labels) == expected(proba, labels)  # the same call: equal to the last bit


def test_per_class_and_confusion_matrix_are_scikit_learns():
    from fusion.evaluation import confusion_matrix, per_class
    for proba, labels in _awkward_cases():
        k = proba.shape[1]
        names = [f"c{i}" for i in range(k)]
        precision, recall, f1, support = sklearn.metrics.precision_recall_fscore_support(
            labels, proba.argmax(1), labels=range(k), zero_division=0.0)
        got = per_class(proba, labels, names)
        assert [got[n]["f1"] for n in names] == list(f1) and [got[n]["support"] for n in names] == list(support)
        assert [got[n]["precision"] for n in names] == list(precision)
        assert [got[n]["recall"] for n in names] == list(recall)
        np.testing.assert_array_equal(confusion_matrix(proba, labels),
                                      sklearn.metrics.confusion_matrix(labels, proba.argmax(1), labels=range(k)))


def test_log_loss_is_hand_written_for_a_fixed_clip():
    """scikit-learn's log_loss clips at its input dtype's epsilon; fusion's at 1e-15 whatever the dtype."""
    proba, labels = np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([1, 0])
    expected = (-np.log(1e-15) - np.log(0.5)) / 2
    assert LOG_LOSS(proba, labels) == pytest.approx(expected, rel=1e-12)
    assert LOG_LOSS(proba.astype(np.float32), labels) == pytest.approx(expected, rel=1e-12)
    assert sklearn.metrics.log_loss(labels, proba.astype(np.float32), labels=[0, 1]) < expected - 5
